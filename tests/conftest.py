"""Shared fixtures: tiny datasets in real on-disk formats and ways to call the real CLI."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

# Keep tests quiet and offline: no progress bars, no downloads, small thread pools on a 2-core machine.
os.environ.setdefault("CNNLAB_DATA_DIR", str(REPO / ".pytest_cache" / "no-data-here"))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file (gzipped when the name ends in .gz), the MNIST family's format."""
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def make_mnist_like(folder: Path, train: int = 300, test: int = 100, size: int = 28, classes: int = 10,
                    seed: int = 0, gz: bool = True, prefix: str = "", test_name: str = "t10k") -> Path:
    """Tiny learnable Fashion-MNIST-format files: each class is a bright horizontal band at its own height.

    `prefix` and `test_name` give EMNIST's names (prefix "emnist-balanced-", test_name "test").
    """
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""

    def make(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = (np.arange(count) % classes).astype(np.uint8)
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(count, size, size), dtype=np.uint8)
        band = size // classes
        for i, label in enumerate(labels):
            images[i, label * band: label * band + band, :] = 220
        return images, labels

    for name, count in (("train", train), (test_name, test)):
        images, labels = make(count)
        write_idx(folder / f"{prefix}{name}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}{name}-labels-idx1-ubyte{suffix}", labels)
    return folder


def _colour_images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """(N, size, size, 3) uint8: a noisy colour per class, so classes are told apart and look different."""
    palette = rng.integers(0, 256, size=(int(labels.max()) + 1, 3))
    noise = rng.integers(-20, 21, size=(len(labels), size, size, 3))
    return np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def make_cifar_like(data_dir: Path, hundred: bool = False, per_batch: int = 40, test: int = 30,
                    seed: int = 0) -> Path:
    """Tiny CIFAR python pickles in torchvision's layout: cifar-10-batches-py/ or cifar-100-python/."""
    import pickle

    rng = np.random.default_rng(seed)
    classes = 100 if hundred else 10

    def batch(count: int) -> dict:
        fine = np.arange(count) % classes
        rng.shuffle(fine)
        data = _colour_images(fine, 32, rng).transpose(0, 3, 1, 2).reshape(count, 3072)  # rows of R, G, B planes
        if hundred:
            return {"data": data, "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist()}
        return {"data": data, "labels": fine.tolist(), "batch_label": "tiny"}

    folder = data_dir / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)
    files = {"train": per_batch * 5, "test": test} if hundred else {
        **{f"data_batch_{i}": per_batch for i in range(1, 6)}, "test_batch": test}
    for name, count in files.items():
        with (folder / name).open("wb") as handle:
            pickle.dump(batch(count), handle, protocol=2)  # the CIFAR files are protocol-2 pickles
    return folder


def make_svhn_mat(folder: Path, train: int = 60, test: int = 20, seed: int = 0) -> Path:
    """Tiny SVHN cropped-digit .mat files: X (32, 32, 3, N) uint8, y (N, 1) with 10 standing for digit 0."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train_32x32.mat", train), ("test_32x32.mat", test)):
        digits = np.arange(count) % 10
        rng.shuffle(digits)
        images = _colour_images(digits, 32, rng).transpose(1, 2, 3, 0)
        savemat(folder / name, {"X": images, "y": np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]})
    return folder


def make_image_folder(root: Path, classes: tuple[str, ...] = ("cats", "dogs"), per_class: int = 10,
                      seed: int = 0) -> Path:
    """A folder-per-class tree of small PNG and JPEG files of different sizes (cats vs dogs in miniature)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            height, width = int(rng.integers(20, 48)), int(rng.integers(20, 48))
            colour = np.array([200 * (label % 2), 120, 200 * (1 - label % 2)])
            pixels = np.clip(colour + rng.integers(-30, 31, size=(height, width, 3)), 0, 255).astype(np.uint8)
            suffix = ".png" if i % 2 else ".jpg"
            Image.fromarray(pixels).save(root / name / f"{name}.{i}{suffix}")
    return root


@pytest.fixture
def fashion_dir(tmp_path: Path) -> Path:
    """A data_dir holding tiny Fashion-MNIST IDX files where cnnlab looks for them."""
    make_mnist_like(tmp_path / "data" / "fashion_mnist")
    return tmp_path / "data"


def cnnlab(*args: str, cwd: Path | None = None, env: dict | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real `cnnlab` command in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "cnnlab.cli", *args], cwd=cwd, env=full_env, text=True,
                          capture_output=True, timeout=timeout)


QUICK = ["progress_bar=none", "trainer.max_epochs=1"]
# A run of a few steps on generated 8x8 images: for tests about what happens around training.
TINY = ["dataset=synthetic", "dataset.image_size=8", "dataset.num_classes=3", "dataset.source.num_train=96",
        "dataset.source.num_test=24", "model=mlp", "model.hidden=[16]", "trainer.max_epochs=1", "progress_bar=none"]


def make_emnist_like(folder: Path, split: str = "balanced", classes: int = 47, train: int = 94, test: int = 47,
                     first_label: int = 0) -> Path:
    """Tiny EMNIST IDX files (emnist-SPLIT-{train,test}-...-ubyte.gz); `letters` numbers its classes from 1."""
    rng = np.random.default_rng(1)
    for name, count in (("train", train), ("test", test)):
        labels = (np.arange(count) % classes + first_label).astype(np.uint8)
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        write_idx(folder / f"emnist-{split}-{name}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"emnist-{split}-{name}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="session")
def formats_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data_dir with a tiny copy of every file-backed dataset, each in its real format and usual place."""
    root = tmp_path_factory.mktemp("data")
    make_mnist_like(root / "MNIST" / "raw", train=100, test=30, gz=False)  # torchvision's layout
    make_mnist_like(root / "kmnist", train=100, test=30)
    make_mnist_like(root / "fashion_mnist", train=100, test=30)
    make_emnist_like(root / "emnist")
    make_cifar_like(root)
    make_cifar_like(root, hundred=True)
    make_svhn_mat(root / "svhn")
    make_image_folder(root / "pets", per_class=12)
    return root

@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short `cnnlab train` on synthetic data (in-process), shared by the eval, predict and checkpoint tests.

    A scheduler and early stopping put their state into the checkpoints too, so loading them is tested whole.
    """
    from cnnlab.cli import main

    run = tmp_path_factory.mktemp("trained") / "run"
    code = main(["train", "dataset=synthetic", "progress_bar=none", "trainer.max_epochs=1", "scheduler=exp_decay",
                 "early_stopping.enabled=true", f"hydra.run.dir={run}"])
    assert code == 0
    return run


def run_cli(capsys: pytest.CaptureFixture, *args: Any) -> tuple[int, str, str]:
    """`cnnlab ARGS` in this process: (exit code, stdout, stderr)."""
    from cnnlab.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished TINY run, one per test module."""
    from cnnlab.cli import main

    run = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", *TINY, f"hydra.run.dir={run}"]) == 0
    return run
