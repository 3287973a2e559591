"""Shared fixtures: tiny datasets in real on-disk formats and ways to call the real CLI."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

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
                    seed: int = 0, gz: bool = True) -> Path:
    """Tiny learnable Fashion-MNIST-format files: each class is a bright horizontal band at its own height."""
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

    for prefix, count in (("train", train), ("t10k", test)):
        images, labels = make(count)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return folder


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
