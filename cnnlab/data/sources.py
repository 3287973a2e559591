"""Find and read each dataset into uint8 image tensors (N, C, H, W) and int64 labels; nothing else reads files."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnlab.config import ConfigError


@dataclass
class Arrays:
    """A dataset's images as uint8 (N, C, H, W) and labels as int64 (N,) or, multi-label, float 0/1 (N, classes).

    `test_*` is None without an official test split.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None


class DatasetNotFound(ConfigError):
    """The dataset's files were found nowhere and could not be downloaded."""

    def __init__(self, name: str, looked: list[str], how: str):
        super().__init__(
            "dataset", name,
            message=f"dataset {name!r} not found: looked in {', '.join(looked)}; {how}",
        )


# ---------------------------------------------------------------- IDX (MNIST family)

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the format of MNIST, Fashion-MNIST, KMNIST and EMNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ConfigError("dataset", str(path), message=f"{path} is not an IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    array = np.frombuffer(data, dtype=_IDX_TYPES[data[2]], offset=offset)
    if array.size != int(np.prod(dims)):
        raise ConfigError("dataset", str(path), message=f"{path} is truncated or corrupt (IDX size mismatch)")
    return array.reshape(dims)


_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_idx_set(folder: Path) -> dict[str, Path] | None:
    found = {}
    for key, stem in _MNIST_FILES.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _idx_arrays(files: dict[str, Path]) -> Arrays:
    def images(path: Path) -> torch.Tensor:
        return torch.from_numpy(read_idx(path).copy()).unsqueeze(1)  # (N, 1, H, W)

    def labels(path: Path) -> torch.Tensor:
        return torch.from_numpy(read_idx(path).astype(np.int64))

    return Arrays(images(files["train_images"]), labels(files["train_labels"]),
                  images(files["test_images"]), labels(files["test_labels"]))


def _expand(data_dir: str | os.PathLike) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(str(data_dir))))


def mnist_family(name: str, torchvision_class: str, data_dir: str, system_dirs: tuple[str, ...] = (),
                 download: bool = True, how: str = "") -> Arrays:
    """Look in data_dir (torchvision's layout or plain files), then system folders, then download."""
    root = _expand(data_dir)
    candidates = [root / torchvision_class / "raw", root / name, root / name.replace("_", "-"), root]
    candidates += [Path(d) for d in system_dirs]
    for folder in candidates:
        files = _find_idx_set(folder)
        if files:
            return _idx_arrays(files)
    looked = [str(c) for c in dict.fromkeys(candidates)]
    if download:
        try:
            import torchvision.datasets as tvd

            getattr(tvd, torchvision_class)(root=str(root), train=True, download=True)
            getattr(tvd, torchvision_class)(root=str(root), train=False, download=True)
        except Exception as error:  # no network, blocked mirror, read-only folder
            looked.append(f"download ({type(error).__name__})")
        else:
            files = _find_idx_set(root / torchvision_class / "raw")
            if files:
                return _idx_arrays(files)
    raise DatasetNotFound(name, looked, how or f"put the IDX files in {root / name} or go online")


def fashion_mnist(data_dir: str, system_dirs: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",),
                  download: bool = True) -> Arrays:
    """Fashion-MNIST from data_dir, Debian's dataset-fashion-mnist package, or a download."""
    return mnist_family(
        "fashion_mnist", "FashionMNIST", data_dir, tuple(system_dirs), download,
        how=("install Debian's package (apt-get install dataset-fashion-mnist), put the four "
             f"*-ubyte.gz files in {_expand(data_dir) / 'fashion_mnist'}, or run once with internet access"),
    )


# ---------------------------------------------------------------- offline sets

def digits() -> Arrays:
    """scikit-learn's 8x8 digits (values 0..16) scaled to uint8; it has no official test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return Arrays(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(bunch.target.astype(np.int64)))


def synthetic(num_train: int = 512, num_test: int = 128, channels: int = 1, image_size: int = 28,
              num_classes: int = 10, noise: float = 0.35, seed: int = 0, multilabel: bool = False) -> Arrays:
    """Seeded images: a smooth random prototype per class plus per-image noise and a small shift.

    multilabel: each image holds a random non-empty subset of the classes (each present with probability 0.3),
    drawn as the sum of their centred prototypes; labels are float 0/1 vectors (N, num_classes).
    """
    generator = torch.Generator().manual_seed(seed)
    coarse = max(2, image_size // 4)
    prototypes = torch.rand(num_classes, channels, coarse, coarse, generator=generator)
    prototypes = torch.nn.functional.interpolate(prototypes, size=(image_size, image_size), mode="bilinear",
                                                 align_corners=False)

    def make(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        if multilabel:
            return _multilabel_images(count, prototypes, noise, generator)
        labels = torch.arange(count) % num_classes
        labels = labels[torch.randperm(count, generator=generator)]
        images = prototypes[labels] + noise * torch.randn(count, channels, image_size, image_size,
                                                          generator=generator)
        return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels

    train_images, train_labels = make(num_train)
    test_images, test_labels = make(num_test)
    return Arrays(train_images, train_labels, test_images, test_labels)


def _multilabel_images(count: int, prototypes: torch.Tensor, noise: float,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images showing a random non-empty subset of the classes, and their float 0/1 label vectors."""
    num_classes = len(prototypes)
    labels = (torch.rand(count, num_classes, generator=generator) < 0.3).float()
    empty = torch.nonzero(labels.sum(1) == 0).flatten()
    labels[empty, torch.randint(0, num_classes, (len(empty),), generator=generator)] = 1.0
    clean = 0.5 + torch.einsum("nk,kchw->nchw", labels, prototypes - 0.5)
    images = clean + noise * torch.randn(clean.shape, generator=generator)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels
