"""ImageDataModule: in-memory uint8 tensors, seeded stratified splits, batched normalisation on the device."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from cnnlab.data.augment import Augmentation
from cnnlab.data.sources import Arrays


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (keep, held_out): `fraction` of each class held out, chosen by a seeded permutation."""
    generator = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        count = int(round(len(members) * fraction))
        held.append(members[:count])
        keep.append(members[count:])
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(held)).values


def fit_images(images: Tensor, channels: int, size: int) -> Tensor:
    """Resize (antialiased bilinear) and convert channel count once, on the whole uint8 tensor."""
    if images.shape[1] != channels:
        if images.shape[1] == 1:
            images = images.expand(-1, channels, -1, -1)
        elif channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114])[: images.shape[1]]
            images = (images.float() * weights[None, :, None, None]).sum(1, keepdim=True) / weights.sum()
            images = images.round().clamp(0, 255).to(torch.uint8)
        else:
            raise ValueError(f"cannot convert {images.shape[1]} channels to {channels}")
    if images.shape[-2:] != (size, size):
        out = []
        for chunk in images.split(4096):
            resized = torch.nn.functional.interpolate(chunk.float(), size=(size, size), mode="bilinear",
                                                      antialias=True, align_corners=False)
            out.append(resized.round().clamp(0, 255).to(torch.uint8))
        images = torch.cat(out)
    return images.contiguous()


class InMemoryLoader:
    """Batches of (uint8 images, labels) sliced from tensors; reshuffled each epoch with a seeded order.

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
        self.epoch = 0

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
        if not self.shuffle:
            return torch.arange(len(self.labels))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.labels), generator=generator)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._shard(self.order(self.epoch))
        self.epoch += 1
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start: start + self.batch_size]
            yield self.images[index], self.labels[index]


class ImageDataModule(pl.LightningDataModule):
    """Train/val/test splits of one dataset, held in memory as uint8 and normalised batch-wise on device."""

    def __init__(self, source: Callable[[], Arrays], *, channels: int, image_size: int, num_classes: int,
                 class_names: Sequence[str] | None, mean: Sequence[float] | None, std: Sequence[float] | None,
                 batch_size: int, val_fraction: float, test_fraction: float | None = None,
                 data_seed: int = 0, augmentation: Augmentation | None = None):
        super().__init__()
        self.source = source
        self.channels, self.image_size, self.num_classes = channels, image_size, num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.mean_cfg, self.std_cfg = mean, std
        self.batch_size, self.val_fraction, self.test_fraction = batch_size, val_fraction, test_fraction
        self.data_seed = data_seed
        self.augmentation = augmentation or Augmentation([], seed=0)
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self.mean = self.std = None

    # ------------------------------------------------------------ loading and splitting
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        arrays = self.source()
        train_x = fit_images(arrays.train_images, self.channels, self.image_size)
        train_y = arrays.train_labels
        if arrays.test_images is None:
            fraction = self.test_fraction if self.test_fraction is not None else 0.3
            keep, held = stratified_split(train_y, fraction, self.data_seed + 1)
            test_x, test_y = train_x[held], train_y[held]
            train_x, train_y = train_x[keep], train_y[keep]
        else:
            test_x = fit_images(arrays.test_images, self.channels, self.image_size)
            test_y = arrays.test_labels
        keep, held = stratified_split(train_y, self.val_fraction, self.data_seed)
        self.splits = {
            "train": (train_x[keep], train_y[keep]),
            "val": (train_x[held], train_y[held]),
            "test": (test_x, test_y),
        }
        self._set_statistics(self.splits["train"][0])

    def _set_statistics(self, train_images: Tensor) -> None:
        if self.mean_cfg is None or self.std_cfg is None:
            values = train_images.float().div_(255).transpose(0, 1).reshape(self.channels, -1)
            mean, std = values.mean(1), values.std(1).clamp_min(1e-6)
        else:
            mean, std = torch.tensor(self.mean_cfg, dtype=torch.float32), torch.tensor(self.std_cfg,
                                                                                        dtype=torch.float32)
            if mean.numel() == 1 and self.channels > 1:
                mean, std = mean.repeat(self.channels), std.repeat(self.channels)
        self.mean, self.std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    def split_sizes(self) -> dict[str, int]:
        return {name: len(labels) for name, (_, labels) in self.splits.items()}

    # ------------------------------------------------------------ loaders
    def _loader(self, split: str, shuffle: bool) -> InMemoryLoader:
        images, labels = self.splits[split]
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        return InMemoryLoader(images, labels, self.batch_size, shuffle=shuffle, seed=self.data_seed,
                              rank=rank, world_size=world_size)

    def train_dataloader(self) -> InMemoryLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> InMemoryLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> InMemoryLoader:
        return self._loader("test", shuffle=False)

    # ------------------------------------------------------------ on-device transforms
    def normalize(self, images: Tensor, augment: bool = False) -> Tensor:
        """uint8 (B, C, H, W) -> float in [0, 1] -> augmented (training only) -> standardised, on its device."""
        images = images.float().div_(255)
        if augment:
            images = self.augmentation(images)
        return (images - self.mean.to(images.device)) / self.std.to(images.device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.normalize(images, augment=training), labels
