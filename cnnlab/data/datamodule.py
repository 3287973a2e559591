"""ImageDataModule: seeded stratified splits, uint8 batches, batched normalisation and augmentation on the device.

Datasets that fit in memory are one uint8 tensor sliced by InMemoryLoader (the fast path); image trees too large
for that stream through StreamingLoader (DataLoader workers decoding files). Both yield the same batches in the
same seeded order, and both hand uint8 to `on_after_batch_transfer`, where everything else happens batched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from cnnlab.data import folders
from cnnlab.data.arrays import Arrays, fit_images
from cnnlab.data.augment import Augmentation
from cnnlab.data.chunks import Chunk, ChunkedLoader
from cnnlab.data.folders import FileDataset, ImageFiles, check_batch, collate
from cnnlab.errors import ConfigError

NORMALIZED_MAX_BYTES = 2 * 1024**3  # the most float32 memory a split normalised up front may take


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (keep, held_out): `fraction` of each class held out, chosen by a seeded permutation.

    Per-class counts are rounded so that they add up to round(fraction * N) (largest remainder, ties broken by the
    seed): a class too small to give up a whole image still contributes, so tiny sets keep a non-empty split.
    """
    generator = torch.Generator().manual_seed(seed)
    if labels.ndim == 2:  # multi-label 0/1 rows have no single class to stratify by: a seeded random split
        order = torch.randperm(len(labels), generator=generator)
        count = int(round(len(labels) * fraction))
        return torch.sort(order[count:]).values, torch.sort(order[:count]).values
    classes, sizes = torch.unique(labels, return_counts=True)
    exact = sizes.double() * fraction
    counts = exact.floor().long()
    missing = int(round(len(labels) * fraction)) - int(counts.sum())
    if missing > 0:
        tie_break = torch.randperm(len(classes), generator=generator)
        remainder = (exact - counts)[tie_break]
        counts[tie_break[torch.argsort(remainder, descending=True, stable=True)[:missing]]] += 1
    keep, held = [], []
    for cls, count in zip(classes, counts.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held.append(members[:count])
        keep.append(members[count:])
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(held)).values


def stratified_folds(labels: Tensor, folds: int, seed: int) -> list[Tensor]:
    """`folds` disjoint index sets covering every sample once, each class spread evenly over them (fold sizes and
    each class's share differ by at most one), chosen by a seeded permutation: k-fold cross-validation's folds.

    Each class's members are shuffled and dealt out in turn, continuing where the previous class stopped, so
    the folds stay within one sample of each other in size.
    """
    generator = torch.Generator().manual_seed(seed)
    if labels.ndim == 2:  # multi-label rows have no single class to stratify by: a seeded random deal
        order = torch.randperm(len(labels), generator=generator)
    else:
        order = torch.cat([members[torch.randperm(len(members), generator=generator)]
                           for members in (torch.nonzero(labels == cls).flatten() for cls in torch.unique(labels))])
    return [torch.sort(order[fold::folds]).values for fold in range(folds)]


def epoch_order(count: int, shuffle: bool, seed: int, epoch: int) -> Tensor:
    """The sample order of one epoch: the same for the same seed and epoch, whatever else differs."""
    if not shuffle:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(count, generator=generator)


class InMemoryLoader:
    """Batches of (uint8 images, labels) sliced from tensors; reshuffled each epoch with a seeded order.

    It is resumable (Lightning saves `state_dict()` in checkpoints): the state is the epoch being read and how many
    of its batches were handed out, so a run resumed mid-epoch reads exactly the batches it had not seen.

    Under DDP each of `world_size` processes takes every world_size-th sample of the epoch's order, from its `rank`
    (Lightning adds no DistributedSampler to a loader that is not a DataLoader). A shuffled (training) order is first
    padded from its start, as DistributedSampler does, so every rank takes the same number of steps; an evaluation
    order is not, so each sample is counted exactly once.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0  # the epoch the next iterator reads
        self.start = 0  # the batch the next iterator starts at (non-zero only after load_state_dict)
        self.position = (0, 0)  # (epoch, batches handed out) of the iterator being read

    def _shard(self, order: Tensor) -> Tensor:
        if self.world_size == 1:
            return order
        if self.shuffle:
            order = torch.cat([order, order[: -len(order) % self.world_size]])
        return order[self.rank:: self.world_size]

    def __len__(self) -> int:
        n = len(self._shard(torch.arange(len(self.labels))))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self, epoch: int) -> Tensor:
        """The sample order of one epoch: the same for the same seed and epoch, whatever else differs."""
        return epoch_order(len(self.labels), self.shuffle, self.seed, epoch)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # A generator: nothing is read (and the epoch does not advance) until the first batch is drawn.
        epoch, start = self.epoch, self.start
        self.epoch, self.start, self.position = epoch + 1, 0, (epoch, start)
        order = self._shard(self.order(epoch)).to(self.images.device)  # data on a GPU: cut batches there
        for batch in range(start, len(self)):
            index = order[batch * self.batch_size: (batch + 1) * self.batch_size]
            self.position = (epoch, batch + 1)
            yield self.images[index], self.labels[index]

    def state_dict(self) -> dict[str, int]:
        epoch, done = self.position
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, done = state["epoch"], state["batches_done"]
        if done >= len(self):  # saved at the end of an epoch: the next one starts afresh
            epoch, done = epoch + 1, 0
        self.epoch, self.start, self.position = epoch, done, (epoch, done)


class _EpochBatches:
    """Batch sampler giving InMemoryLoader's seeded per-epoch order, so streamed and in-memory batches match."""

    def __init__(self, count: int, batch_size: int, shuffle: bool, seed: int):
        self.count, self.batch_size, self.shuffle, self.seed = count, batch_size, shuffle, seed
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(self.count / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_order(self.count, self.shuffle, self.seed, self.epoch)
        self.epoch += 1
        yield from (chunk.tolist() for chunk in order.split(self.batch_size))


class StreamingLoader:
    """Batches of (uint8 images, labels) decoded from files by DataLoader workers, in InMemoryLoader's order."""

    def __init__(self, files: ImageFiles, labels: Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                 num_workers: int = 0):
        self.batches = _EpochBatches(len(labels), batch_size, shuffle, seed)
        if num_workers > 0:
            folders.end_workers_at_exit()
        context = folders.worker_context() if num_workers > 0 else None
        # Workers live across epochs, except inside a joblib (loky) job: its process ends through multiprocessing's
        # own exit path, which would wait forever for workers that ignore SIGTERM; there they end with each epoch.
        self.loader = DataLoader(FileDataset(files, labels), batch_sampler=self.batches, num_workers=num_workers,
                                 collate_fn=collate, persistent_workers=num_workers > 0 and context is None,
                                 worker_init_fn=folders.ignore_stop_signals, multiprocessing_context=context,
                                 pin_memory=torch.cuda.is_available())

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for batch in self.loader:
            yield check_batch(batch)


class ImageDataModule(pl.LightningDataModule):
    """Train/val/test splits of one dataset as uint8, normalised (and, for training, augmented) batch-wise on device."""

    def __init__(self, source: Callable[[], Arrays], *, channels: int, image_size: int, num_classes: int,
                 class_names: Sequence[str] | None, mean: Sequence[float] | None, std: Sequence[float] | None,
                 batch_size: int, val_fraction: float, test_fraction: float | None = None,
                 data_seed: int = 0, shuffle: bool = True, augmentation: Augmentation | None = None,
                 num_workers: int = 0, stats_samples: int = 2000, data_on_device: bool | str = "auto",
                 cv_folds: int | None = None, cv_fold: int | None = None):
        super().__init__()
        self.cv_folds, self.cv_fold = cv_folds, cv_fold  # k-fold CV: validate on fold cv_fold of cv_folds
        self.source = source
        self.channels, self.image_size, self.num_classes = channels, image_size, num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.mean_cfg, self.std_cfg = mean, std
        self.batch_size, self.val_fraction, self.test_fraction = batch_size, val_fraction, test_fraction
        self.data_seed, self.shuffle = data_seed, shuffle
        self.num_workers, self.stats_samples = num_workers, stats_samples
        self.data_on_device = data_on_device
        self._device_splits: dict[str, tuple[Tensor, Tensor]] = {}  # splits copied to the training device
        self._normalized: dict[str, tuple[Tensor, Tensor]] = {}  # splits normalised up front (CPU runs)
        self.augmentation = augmentation or Augmentation([], seed=0)
        self.splits: dict[str, tuple[Tensor | ImageFiles, Tensor]] = {}
        # positions in the training set (after any test hold-out) of the train and val splits
        self.split_indices: dict[str, Tensor] = {}
        self.mean = self.std = None
        # steps_per_execution (cnnlab/train/executions.py sets these on a manually optimised run): training batches
        # come in chunks of steps_per_call, the first train_limit batches of each epoch (limit_train_batches).
        self.steps_per_call: int | None = None
        self.train_limit: int | float | None = None

    # ------------------------------------------------------------ loading and splitting
    def _fit(self, images: Tensor | ImageFiles) -> Tensor | ImageFiles:
        return images if isinstance(images, ImageFiles) else fit_images(images, self.channels, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        arrays = self.source()
        train_x, train_y = self._fit(arrays.train_images), arrays.train_labels
        if arrays.test_images is None:
            fraction = self.test_fraction if self.test_fraction is not None else 0.3
            keep, held = stratified_split(train_y, fraction, self.data_seed + 1)
            test_x, test_y = train_x[held], train_y[held]
            train_x, train_y = train_x[keep], train_y[keep]
        else:
            test_x, test_y = self._fit(arrays.test_images), arrays.test_labels
        self._check_labels(torch.cat([train_y, test_y]))
        keep, held = self._validation_split(train_y)
        if len(held) == 0 or len(keep) == 0:
            raise ConfigError("val_fraction", self.val_fraction, message=(
                f"val_fraction={self.val_fraction} leaves an empty split of {len(train_y)} training images "
                f"in {self.num_classes} classes: raise or lower it"))
        self.split_indices = {"train": keep, "val": held}
        self.splits = {
            "train": (train_x[keep], train_y[keep]),
            "val": (train_x[held], train_y[held]),
            "test": (test_x, test_y),
        }
        self._set_statistics(self.splits["train"][0])

    def _validation_split(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(train, val) indices of the training set: fold cv_fold under k-fold CV, else a val_fraction split."""
        if not self.cv_folds:
            return stratified_split(labels, self.val_fraction, self.data_seed)
        if self.cv_fold is None or not 0 <= self.cv_fold < self.cv_folds:
            raise ConfigError("cv.fold", self.cv_fold, f"a fold number from 0 to {self.cv_folds - 1} "
                                                       f"(cv.folds={self.cv_folds})")
        if self.cv_folds > len(labels):
            raise ConfigError("cv.folds", self.cv_folds, message=(
                f"cv.folds={self.cv_folds} is more folds than the {len(labels)} training images: lower it"))
        held = stratified_folds(labels, self.cv_folds, self.data_seed)[self.cv_fold]
        mask = torch.ones(len(labels), dtype=torch.bool)
        mask[held] = False
        return torch.nonzero(mask).flatten(), held

    def _check_labels(self, labels: Tensor) -> None:
        lowest, highest = int(labels.min()), int(labels.max())
        if lowest < 0 or highest >= self.num_classes:
            raise ConfigError("dataset.num_classes", self.num_classes, message=(
                f"dataset.num_classes={self.num_classes} does not fit the data: its labels run from {lowest} to "
                f"{highest}, expected 0..{self.num_classes - 1}"))

    def _set_statistics(self, train_images: Tensor | ImageFiles) -> None:
        configured = self.mean_cfg is not None and self.std_cfg is not None
        if configured and len(self.mean_cfg) in (1, self.channels) and len(self.std_cfg) in (1, self.channels):
            mean = torch.tensor(self.mean_cfg, dtype=torch.float32).expand(self.channels).clone()
            std = torch.tensor(self.std_cfg, dtype=torch.float32).expand(self.channels).clone()
        else:  # not given, or given for another channel count: measure them on the training split
            if isinstance(train_images, ImageFiles):  # a seeded sample is enough for large trees on disk
                count = min(len(train_images), self.stats_samples)
                sample = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(self.data_seed))
                train_images = train_images[sample[:count].sort().values].decode(self.num_workers)
            values = train_images.float().div_(255).transpose(0, 1).reshape(self.channels, -1)
            mean, std = values.mean(1), values.std(1).clamp_min(1e-6)
        self.mean, self.std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    def train_labels(self) -> Tensor:
        """The training split's labels (what `class_weights: balanced` counts)."""
        return self.splits["train"][1]

    def split_sizes(self) -> dict[str, int]:
        return {name: len(labels) for name, (_, labels) in self.splits.items()}

    # ------------------------------------------------------------ loaders
    def _loader(self, split: str, shuffle: bool) -> InMemoryLoader | StreamingLoader:
        images, labels = self.splits[split]
        if isinstance(images, ImageFiles):
            return StreamingLoader(images, labels, self.batch_size, shuffle=shuffle, seed=self.data_seed,
                                   num_workers=self.num_workers)
        images, labels = self._on_device(split) or self._normalized_up_front(split) or (images, labels)
        rank, world_size = getattr(self.trainer, "global_rank", 0), getattr(self.trainer, "world_size", 1)
        return InMemoryLoader(images, labels, self.batch_size, shuffle=shuffle, seed=self.data_seed,
                              rank=rank, world_size=world_size)

    def _normalized_up_front(self, split: str) -> tuple[Tensor, Tensor] | None:
        """On a CPU run, a split no augmentation touches, normalised once as float32 (4x its uint8 size, up to
        NORMALIZED_MAX_BYTES) so that batches are only cut from it: converting and standardising every batch cost
        the MLP ~0.7 ms a step on 2 CPUs, a fifth of its step (scripts/bench_overhead.py). The same numbers: the
        same element-wise operations, done once. On a GPU, batches travel as uint8 and are converted there."""
        strategy = getattr(self.trainer, "strategy", None)
        if strategy is None or strategy.root_device.type != "cpu":
            return None
        if split == "train" and (len(self.augmentation.transforms) or len(self.augmentation.mixers)):
            return None
        if split not in self._normalized:
            images, labels = self.splits[split]
            if images.dtype != torch.uint8 or 4 * images.nbytes > NORMALIZED_MAX_BYTES:
                return None
            self._normalized[split] = (self.normalize(images), labels)
        return self._normalized[split]

    def splits_on_device(self) -> list[str]:
        """The splits kept on the training device so far (data_on_device)."""
        return sorted(self._device_splits)

    def _on_device(self, split: str) -> tuple[Tensor, Tensor] | None:
        """The split copied once to the GPU being trained on, when `data_on_device` asks for it (auto: a CUDA
        device with four times the split's size free), so no batch is copied from the host; else None."""
        strategy = getattr(self.trainer, "strategy", None)
        device = strategy.root_device if strategy is not None else None
        if self.data_on_device is False or device is None or device.type == "cpu":
            return None
        if split not in self._device_splits:
            images, labels = self.splits[split]
            if self.data_on_device == "auto":
                if device.type != "cuda" or 4 * (images.nbytes + labels.nbytes) > torch.cuda.mem_get_info(device)[0]:
                    return None
            self._device_splits[split] = (images.to(device), labels.to(device))
        return self._device_splits[split]

    def train_dataloader(self) -> InMemoryLoader | StreamingLoader | ChunkedLoader:
        loader = self._loader("train", shuffle=self.shuffle)
        if self.steps_per_call is not None:
            return ChunkedLoader(loader, self.steps_per_call, self.train_limit)
        return loader

    def val_dataloader(self) -> InMemoryLoader | StreamingLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> InMemoryLoader | StreamingLoader:
        return self._loader("test", shuffle=False)

    # ------------------------------------------------------------ state saved in checkpoints (Lightning's hooks)
    def state_dict(self) -> dict[str, Any]:
        """The augmentation's random state (exact resume) and the normalisation statistics as plain floats (so
        predict needs no training data to reproduce them)."""
        state: dict[str, Any] = {"augmentation": self.augmentation.state_dict()}
        if self.mean is not None and self.std is not None:
            state.update(mean=self.mean.flatten().tolist(), std=self.std.flatten().tolist())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "augmentation" in state:
            self.augmentation.load_state_dict(state["augmentation"])
        if state.get("mean") is not None and state.get("std") is not None:
            self.mean = torch.tensor(state["mean"], dtype=torch.float32).view(1, -1, 1, 1)
            self.std = torch.tensor(state["std"], dtype=torch.float32).view(1, -1, 1, 1)

    # ------------------------------------------------------------ on-device transforms
    def augment(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Training only: per-image transforms on float [0, 1] images, then batch mixing (soft (B, C) targets)."""
        return self.augmentation.mix(self.augmentation(images), labels, self.num_classes)

    def standardize(self, images: Tensor) -> Tensor:
        return (images - self.mean.to(images.device)) / self.std.to(images.device)

    def normalize(self, images: Tensor, augment: bool = False) -> Tensor:
        """uint8 (B, C, H, W) -> float in [0, 1] -> augmented (training only) -> standardised, on its device."""
        images = images.float().div_(255)
        if augment:
            images = self.augmentation(images)
        return self.standardize(images)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """(images, labels) to the device, non-blocking from pinned memory on a GPU; nothing to do when they are
        there already (data_on_device, CPU runs). Lightning's generic version walks the batch's structure at every
        step (~40 us). A Chunk (steps_per_execution) passes as it is: the module moves each of its batches."""
        if isinstance(batch, Chunk):
            return batch
        images, labels = batch
        if images.device == device:
            return images, labels
        non_blocking = device.type == "cuda"
        return images.to(device, non_blocking=non_blocking), labels.to(device, non_blocking=non_blocking)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, Chunk):  # its batches come here one by one, as the module takes them
            return batch
        images, labels = batch
        if images.is_floating_point():  # cut from a split normalised up front (_normalized_up_front)
            return images, labels
        images = images.float().div_(255)
        if self.trainer is not None and self.trainer.training:
            images, labels = self.augment(images, labels)
        return self.standardize(images), labels
