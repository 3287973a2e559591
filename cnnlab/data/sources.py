"""Find and read each dataset into uint8 image tensors (N, C, H, W) and int64 labels; nothing else reads files.

Every file-backed dataset looks in the same order: `data_dir` (torchvision's layout or a plain folder named after
the dataset), then system folders (Debian's dataset packages), then torchvision's download into `data_dir`.
Found nowhere: DatasetNotFound, one line naming every place looked and how to get the files.
"""

from __future__ import annotations

import gzip
import os
import pickle
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from cnnlab.data.arrays import Arrays
from cnnlab.data.folders import scan
from cnnlab.errors import ConfigError
from cnnlab.machine import worker_count

Found = TypeVar("Found")


class DatasetNotFound(ConfigError):
    """The dataset's files were found nowhere and could not be downloaded."""

    def __init__(self, name: str, looked: list[str], how: str):
        super().__init__(
            "dataset", name,
            message=f"dataset {name!r} not found: looked in {', '.join(looked)}; {how}",
        )


def _expand(data_dir: str | os.PathLike) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(str(data_dir))))


def _try_download(fetch: Callable[[], object]) -> str | None:
    """Run a torchvision download; None on success, else a short note on why it failed."""
    if os.environ.get("CNNLAB_OFFLINE", "").strip() not in ("", "0"):
        return "download skipped (CNNLAB_OFFLINE is set)"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)  # a firewall that drops packets must not hang the run forever
    try:
        fetch()
    except Exception as error:  # no network, blocked mirror, read-only folder, checksum mismatch
        return f"download ({type(error).__name__})"
    finally:
        socket.setdefaulttimeout(previous)
    return None


def locate(name: str, folders: Sequence[Path], match: Callable[[Path], Found | None],
           fetch: Callable[[], object] | None, fetched: Sequence[Path], how: str) -> Found:
    """The first folder where `match` finds the files; else download and look in `fetched`; else DatasetNotFound."""
    for folder in folders:
        found = match(folder)
        if found is not None:
            return found
    looked = [str(f) for f in dict.fromkeys(folders)]
    if fetch is not None:
        failure = _try_download(fetch)
        if failure is None:
            for folder in fetched:
                found = match(folder)
                if found is not None:
                    return found
            failure = "download (files missing afterwards)"
        looked.append(failure)
    raise DatasetNotFound(name, looked, how)


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


def _idx_stems(prefix: str = "") -> dict[str, str]:
    return {
        "train_images": f"{prefix}train-images-idx3-ubyte",
        "train_labels": f"{prefix}train-labels-idx1-ubyte",
        "test_images": f"{prefix}{'test' if prefix else 't10k'}-images-idx3-ubyte",
        "test_labels": f"{prefix}{'test' if prefix else 't10k'}-labels-idx1-ubyte",
    }


def _idx_match(stems: dict[str, str]) -> Callable[[Path], Arrays | None]:
    def match(folder: Path) -> Arrays | None:
        found = {}
        for key, stem in stems.items():
            candidate = next((c for c in (folder / stem, folder / f"{stem}.gz") if c.is_file()), None)
            if candidate is None:
                return None
            found[key] = candidate
        images = {k: torch.from_numpy(read_idx(found[k]).copy()).unsqueeze(1) for k in ("train_images", "test_images")}
        labels = {k: torch.from_numpy(read_idx(found[k]).astype(np.int64)) for k in ("train_labels", "test_labels")}
        return Arrays(images["train_images"], labels["train_labels"], images["test_images"], labels["test_labels"])

    return match


def mnist_family(name: str, torchvision_class: str, data_dir: str, system_dirs: Sequence[str] = (),
                 download: bool = True, how: str = "", prefix: str = "", **torchvision_kwargs: Any) -> Arrays:
    """IDX files in data_dir (torchvision's layout or plain files), then system folders, then a download."""
    root = _expand(data_dir)
    raw = root / torchvision_class / "raw"
    folders = [raw, root / name, root / name.replace("_", "-"), root, *(Path(d) for d in system_dirs)]

    def fetch() -> None:
        import torchvision.datasets as tvd

        for train in (True, False):
            getattr(tvd, torchvision_class)(root=str(root), train=train, download=True, **torchvision_kwargs)

    return locate(name, folders, _idx_match(_idx_stems(prefix)), fetch if download else None, [raw],
                  how or _idx_how(name, root, prefix))


# Where each IDX dataset is published (the addresses torchvision downloads from).
IDX_HOMES = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist",
    "kmnist": "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
}


def _idx_how(name: str, root: Path, prefix: str = "") -> str:
    """What to download and where to put it: the four IDX file names, their address, the folder."""
    files = ", ".join(f"{stem}.gz" for stem in _idx_stems(prefix).values())
    home = IDX_HOMES.get(name)
    source = f" from {home}" if home else ""
    return f"download {files}{source} into {root / name}, or run once with internet access"


def mnist(data_dir: str, system_dirs: Sequence[str] = ("/usr/share/datasets/mnist",), download: bool = True) -> Arrays:
    """MNIST handwritten digits."""
    return mnist_family("mnist", "MNIST", data_dir, system_dirs, download)


def fashion_mnist(data_dir: str, system_dirs: Sequence[str] = ("/usr/share/datasets/fashion-mnist",),
                  download: bool = True) -> Arrays:
    """Fashion-MNIST from data_dir, Debian's dataset-fashion-mnist package, or a download."""
    return mnist_family(
        "fashion_mnist", "FashionMNIST", data_dir, system_dirs, download,
        how=("install Debian's package (apt-get install dataset-fashion-mnist), or "
             + _idx_how("fashion_mnist", _expand(data_dir))),
    )


def kmnist(data_dir: str, system_dirs: Sequence[str] = ("/usr/share/datasets/kmnist",),
           download: bool = True) -> Arrays:
    """Kuzushiji-MNIST: ten cursive hiragana characters."""
    return mnist_family("kmnist", "KMNIST", data_dir, system_dirs, download)


EMNIST_SPLITS = ("balanced", "byclass", "bymerge", "digits", "letters", "mnist")


def emnist(split: str, data_dir: str, system_dirs: Sequence[str] = ("/usr/share/datasets/emnist",),
           download: bool = True) -> Arrays:
    """EMNIST (one split); images turned upright (the files store them transposed), `letters` labels from 0."""
    if split not in EMNIST_SPLITS:
        raise ConfigError("dataset.split", split, "one of " + ", ".join(EMNIST_SPLITS))
    root = _expand(data_dir)
    raw = root / "EMNIST" / "raw"
    folders = [raw, root / "emnist", root / "emnist" / "gzip", root, *(Path(d) for d in system_dirs)]

    def fetch() -> None:
        import torchvision.datasets as tvd

        tvd.EMNIST(root=str(root), split=split, train=True, download=True)

    arrays = locate("emnist", folders, _idx_match(_idx_stems(f"emnist-{split}-")), fetch if download else None,
                    [raw], f"unpack EMNIST's gzip.zip (the emnist-{split}-*-ubyte.gz files) into "
                           f"{root / 'emnist'} or run once with internet access (a 535 MB download)")
    arrays.train_images = arrays.train_images.transpose(-1, -2).contiguous()
    arrays.test_images = arrays.test_images.transpose(-1, -2).contiguous()
    if split == "letters":  # the files number the 26 letters 1..26
        arrays.train_labels, arrays.test_labels = arrays.train_labels - 1, arrays.test_labels - 1
    return arrays


# ---------------------------------------------------------------- CIFAR (python pickles)

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: a dataset file must not be able to run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a dataset file")
        if module == "numpy.core.multiarray":  # pickles written by numpy 1.x
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR python batch: a dict with `data` (N, 3072) uint8 and label lists, keys as str."""
    try:
        with path.open("rb") as handle:
            data = _ArrayUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise ConfigError("dataset", str(path), message=f"{path} is not a CIFAR python batch ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError("dataset", str(path), message=f"{path} is not a CIFAR python batch (not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _cifar_match(base: str, train_files: Sequence[str], test_file: str,
                 label_key: str) -> Callable[[Path], Arrays | None]:
    def read(folder: Path, files: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batches = [read_cifar_pickle(folder / f) for f in files]
        try:
            images = np.concatenate([np.asarray(b["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches])
            labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
        except (KeyError, ValueError) as error:
            raise ConfigError("dataset", str(folder),
                              message=f"{folder} holds CIFAR batches without {error} as expected") from None
        return torch.from_numpy(images), torch.from_numpy(labels)

    def match(folder: Path) -> Arrays | None:
        for candidate in (folder / base, folder):
            if all((candidate / f).is_file() for f in (*train_files, test_file)):
                return Arrays(*read(candidate, train_files), *read(candidate, [test_file]))
        return None

    return match


def _cifar(name: str, torchvision_class: str, base: str, train_files: Sequence[str], test_file: str, label_key: str,
           data_dir: str, system_dirs: Sequence[str], download: bool, archive: str) -> Arrays:
    root = _expand(data_dir)
    folders = [root / base, root / name, *(Path(d) for d in system_dirs)]

    def fetch() -> None:
        import torchvision.datasets as tvd

        getattr(tvd, torchvision_class)(root=str(root), train=True, download=True)

    return locate(name, folders, _cifar_match(base, train_files, test_file, label_key), fetch if download else None,
                  [root / base], f"download {archive} (https://www.cs.toronto.edu/~kriz/cifar.html) and unpack it "
                                 f"into {root}, or run once with internet access")


def cifar10(data_dir: str, system_dirs: Sequence[str] = ("/usr/share/datasets/cifar10",),
            download: bool = True) -> Arrays:
    """CIFAR-10: 50,000 + 10,000 colour 32x32 images, 10 classes (the python pickles)."""
    return _cifar("cifar10", "CIFAR10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                  "labels", data_dir, system_dirs, download, "cifar-10-python.tar.gz")


CIFAR100_LABELS = ("fine", "coarse")


def cifar100(labels: str, data_dir: str, system_dirs: Sequence[str] = ("/usr/share/datasets/cifar100",),
             download: bool = True) -> Arrays:
    """CIFAR-100 with its 100 fine or 20 coarse (superclass) labels."""
    if labels not in CIFAR100_LABELS:
        raise ConfigError("dataset.labels", labels, "one of " + ", ".join(CIFAR100_LABELS))
    return _cifar("cifar100", "CIFAR100", "cifar-100-python", ["train"], "test", f"{labels}_labels",
                  data_dir, system_dirs, download, "cifar-100-python.tar.gz")


# ---------------------------------------------------------------- SVHN (.mat)

def read_svhn_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One SVHN cropped-digits .mat file: X (32, 32, 3, N) -> (N, 3, 32, 32); label 10 means digit 0."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
        images, labels = np.asarray(mat["X"], dtype=np.uint8), np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    except (KeyError, ValueError, TypeError, OSError, NotImplementedError) as error:
        raise ConfigError("dataset", str(path), message=f"{path} is not an SVHN .mat file ({error})") from None
    if images.ndim != 4 or images.shape[3] != len(labels):
        raise ConfigError("dataset", str(path), message=f"{path}: X and y sizes do not match")
    labels[labels == 10] = 0
    return torch.from_numpy(images.transpose(3, 2, 0, 1).copy()), torch.from_numpy(labels)


def svhn(data_dir: str, system_dirs: Sequence[str] = ("/usr/share/datasets/svhn",), download: bool = True,
         extra: bool = False) -> Arrays:
    """SVHN house-number digits (cropped 32x32 format); `extra` adds the 531,131 easier training images."""
    root = _expand(data_dir)
    files = ["train_32x32.mat", "test_32x32.mat"] + (["extra_32x32.mat"] if extra else [])
    folders = [root / "svhn", root, *(Path(d) for d in system_dirs)]

    def match(folder: Path) -> Arrays | None:
        if not all((folder / f).is_file() for f in files):
            return None
        train_images, train_labels = read_svhn_mat(folder / "train_32x32.mat")
        if extra:
            extra_images, extra_labels = read_svhn_mat(folder / "extra_32x32.mat")
            train_images = torch.cat([train_images, extra_images])
            train_labels = torch.cat([train_labels, extra_labels])
        return Arrays(train_images, train_labels, *read_svhn_mat(folder / "test_32x32.mat"))

    def fetch() -> None:
        import torchvision.datasets as tvd

        for split in ("train", "test", "extra")[: len(files)]:
            tvd.SVHN(root=str(root / "svhn"), split=split, download=True)

    return locate("svhn", folders, match, fetch if download else None, [root / "svhn"],
                  f"download {', '.join(files)} (http://ufldl.stanford.edu/housenumbers/) into {root / 'svhn'}, "
                  "or run once with internet access")


# ---------------------------------------------------------------- folders of images

def imagefolder(root: str, channels: int, image_size: int, cache: bool | str = "auto", cache_max_mb: float = 2048,
                num_workers: int | str = "auto") -> Arrays:
    """A folder-per-class image tree: decoded into memory when it fits, else streamed (cnnlab.data.folders)."""
    return scan(root, channels, image_size, cache, cache_max_mb, worker_count(num_workers))


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
