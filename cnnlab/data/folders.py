"""Folder-per-class image trees (`dataset=imagefolder`): class discovery, decoding, and the per-image Dataset.

`root/CLASS/*.jpg` (classes = sub-folders, sorted), or `root/train/CLASS/...` plus `root/test/CLASS/...` for an
official test split. Images are decoded with Pillow, converted to the configured channels and resized to
`image_size` once at decode time; the result is a uint8 tensor like every other dataset's, so normalisation and
augmentation stay batched on the training device. Small trees are decoded once into memory (`cache`), large ones
stream from disk through DataLoader workers.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cnnlab.data.arrays import Arrays
from cnnlab.data.images import IMAGE_EXTENSIONS, decode_image, is_image
from cnnlab.errors import ConfigError

ROOT_KEY = "dataset.root"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """Where a tree's class folders are: `train` always, `test` when the tree brings its own test split."""

    classes: list[str]
    train: Path
    test: Path | None


def _list_dir(folder: Path) -> list[os.DirEntry]:
    try:
        return sorted(os.scandir(folder), key=lambda entry: entry.name)
    except PermissionError:
        raise ConfigError(ROOT_KEY, str(folder), message=f"{ROOT_KEY}: {folder} is not readable") from None


def class_folders(folder: Path) -> list[str]:
    """The sorted class folder names under `folder`; at least two, none of them without images."""
    names = [e.name for e in _list_dir(folder) if e.is_dir() and not e.name.startswith(".")]
    if len(names) < 2:
        found = f"only {names[0]!r}" if names else "none"
        raise ConfigError(ROOT_KEY, str(folder), message=(
            f"{ROOT_KEY}={str(folder)!r} needs one sub-folder per class and at least two classes; found {found}"))
    for name in names:
        if not any(e.is_file() and is_image(e.name) for e in _list_dir(folder / name)):
            raise ConfigError(ROOT_KEY, str(folder), message=(
                f"{ROOT_KEY}: class folder {folder / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})"))
    return names


def layout(root: str | os.PathLike | None) -> Layout:
    """Check the tree under `root` and find its classes; every user mistake is a ConfigError on dataset.root."""
    if root is None or str(root).strip() == "":
        raise ConfigError(ROOT_KEY, None, "the folder holding one sub-folder per class: add dataset.root=PATH")
    path = Path(os.path.expandvars(os.path.expanduser(str(root))))
    if not path.is_dir():
        raise ConfigError(ROOT_KEY, str(root), message=(
            f"{ROOT_KEY}={str(root)!r} is not a folder: give the folder that holds one sub-folder per class"))
    if (path / "train").is_dir() and (path / "test").is_dir():
        classes = class_folders(path / "train")
        test_classes = class_folders(path / "test")
        if test_classes != classes:
            raise ConfigError(ROOT_KEY, str(root), message=(
                f"{ROOT_KEY}: {path / 'test'} has classes {test_classes}, but {path / 'train'} has {classes}"))
        return Layout(classes, path / "train", path / "test")
    return Layout(class_folders(path), path, None)


# ---------------------------------------------------------------- files and decoding

@dataclass
class ImageFiles:
    """Image paths decoded on demand to uint8 (channels, image_size, image_size); indexable like a tensor."""

    paths: np.ndarray  # of str
    channels: int
    image_size: int

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: torch.Tensor) -> ImageFiles:
        return ImageFiles(self.paths[np.asarray(index, dtype=np.int64)], self.channels, self.image_size)

    @property
    def nbytes(self) -> int:
        return len(self) * self.channels * self.image_size ** 2

    def decode(self, num_workers: int = 0, batch_size: int = 256) -> torch.Tensor:
        """Every image decoded into one uint8 (N, C, H, W) tensor, using DataLoader workers."""
        labels = torch.zeros(len(self), dtype=torch.int64)
        if num_workers > 0:
            end_workers_at_exit()
        loader = DataLoader(FileDataset(self, labels), batch_size=batch_size, num_workers=num_workers,
                            collate_fn=collate, worker_init_fn=ignore_stop_signals,
                            multiprocessing_context=worker_context() if num_workers > 0 else None)
        out = torch.empty(len(self), self.channels, self.image_size, self.image_size, dtype=torch.uint8)
        start = 0
        for batch in loader:
            images, _ = check_batch(batch)
            out[start: start + len(images)] = images
            start += len(images)
        return out


@dataclass(frozen=True)
class BadImage:
    """Stands in for a file that could not be decoded, so the main process raises one clear error."""

    path: str
    reason: str


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker start: SIGINT and SIGTERM are the main process's to handle.

    A Ctrl-C or a scheduler's SIGTERM reaches the whole process group; a worker that died of it would end the run
    with a traceback instead of the main process's checkpoint and one line. The main process stops the workers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def worker_context() -> Any:
    """The multiprocessing context for DataLoader workers: None (torch's default) in an ordinary process; a standard
    one where the process's default start method is another library's, as in a joblib (loky) job of a multirun,
    whose Popen cannot start torch's workers ("'Process' object has no attribute 'env'")."""
    import multiprocessing

    if multiprocessing.get_start_method(allow_none=True) in (None, "fork", "spawn", "forkserver"):
        return None
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


@functools.cache
def end_workers_at_exit() -> None:
    """Once per process: at exit, kill the DataLoader workers still alive.

    multiprocessing ends daemonic children at exit with SIGTERM, which our workers ignore, and then waits for
    them; persistent workers of a run stopped by a signal are still there then. This atexit handler, registered
    after multiprocessing's own, runs before it.
    """
    import atexit
    import multiprocessing

    def kill_workers() -> None:
        # torch's SIGCHLD handler would report each worker killed here as a failure: the run is over.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for child in multiprocessing.active_children():
            if child.daemon:
                child.kill()
                child.join(timeout=5)

    atexit.register(kill_workers)


class FileDataset(Dataset):
    """(uint8 image, label) per index: the per-sample path for trees too large to hold in memory."""

    def __init__(self, files: ImageFiles, labels: torch.Tensor):
        self.files, self.labels = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path = str(self.files.paths[index])
        try:
            image = decode_image(path, self.files.channels, self.files.image_size)
        except Exception as error:  # Pillow raises OSError, ValueError, SyntaxError... for a file that is not an image
            return BadImage(path, f"{type(error).__name__}: {error}"), -1
        return image, int(self.labels[index])


def collate(items: list[tuple[Any, int]]) -> Any:
    """Stack a batch, or pass on the first BadImage in it."""
    for image, _ in items:
        if isinstance(image, BadImage):
            return image
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])


def check_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch itself, or the ConfigError naming the file that is not an image."""
    if isinstance(batch, BadImage):
        raise ConfigError(ROOT_KEY, batch.path, message=f"{batch.path} is not a readable image ({batch.reason})")
    return batch


def _files_of(folder: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        for entry in _list_dir(folder / name):
            if entry.is_file() and is_image(entry.name):
                paths.append(entry.path)
                labels.append(label)
    return paths, labels


def scan(root: str, channels: int, image_size: int, cache: bool | str = "auto", cache_max_mb: float = 2048,
         num_workers: int = 0) -> Any:
    """The tree's files as Arrays: decoded into memory when `cache` says so (auto: when they fit), else ImageFiles."""
    if channels not in (1, 3):
        raise ConfigError("dataset.channels", channels, "1 (grayscale) or 3 (RGB) for image folders")
    if cache not in (True, False, "auto"):
        raise ConfigError("dataset.cache", cache, "true, false or auto (decode into memory when it fits)")
    tree = layout(root)
    splits = [tree.train] + ([tree.test] if tree.test is not None else [])
    arrays = []
    for folder in splits:
        paths, labels = _files_of(folder, tree.classes)
        arrays += [ImageFiles(np.array(paths, dtype=object), channels, image_size), torch.tensor(labels)]
    total = sum(len(a) * channels * image_size ** 2 for a in arrays[::2])
    if cache is True or (cache == "auto" and total <= cache_max_mb * 2 ** 20):
        log.info("decoding %d images from %s into memory (%.0f MB)", sum(len(a) for a in arrays[::2]), root,
                 total / 2 ** 20)
        arrays[::2] = [files.decode(num_workers) for files in arrays[::2]]
    return Arrays(*arrays)
