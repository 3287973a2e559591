"""Data: IDX files read by the real loader, seeded stratified splits, batched augmentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_mnist_like

from cnnlab.config import ConfigError
from cnnlab.data.augment import RandomCrop, RandomFlip
from cnnlab.data.datamodule import ImageDataModule, InMemoryLoader, stratified_split
from cnnlab.data.sources import digits, fashion_mnist, mnist_family, synthetic


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_are_read_from_data_dir(tmp_path: Path, gz: bool):
    make_mnist_like(tmp_path / "fashion_mnist", train=50, test=20, gz=gz)
    arrays = fashion_mnist(str(tmp_path), system_dirs=(), download=False)
    assert arrays.train_images.shape == (50, 1, 28, 28) and arrays.train_images.dtype == torch.uint8
    assert arrays.test_labels.shape == (20,) and arrays.test_labels.dtype == torch.int64
    assert set(arrays.train_labels.tolist()) == set(range(10))


def test_torchvision_layout_is_found(tmp_path: Path):
    make_mnist_like(tmp_path / "FashionMNIST" / "raw", train=20, test=10, gz=False)
    assert len(fashion_mnist(str(tmp_path), system_dirs=(), download=False).train_labels) == 20


def test_truncated_idx_is_a_clear_error(tmp_path: Path):
    folder = make_mnist_like(tmp_path / "fashion_mnist", train=20, test=10, gz=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ConfigError, match="truncated or corrupt"):
        fashion_mnist(str(tmp_path), system_dirs=(), download=False)


def test_not_found_names_every_place_looked(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        mnist_family("fashion_mnist", "FashionMNIST", str(tmp_path), ("/nowhere",), download=False, how="do X")
    message = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and "/nowhere" in message and "do X" in message


def test_stratified_split_is_seeded_and_keeps_class_balance():
    labels = torch.arange(1000) % 10
    keep, held = stratified_split(labels, 0.2, seed=3)
    assert len(held) == 200 and torch.bincount(labels[held]).tolist() == [20] * 10
    assert torch.equal(held, stratified_split(labels, 0.2, seed=3)[1])
    assert not torch.equal(held, stratified_split(labels, 0.2, seed=4)[1])
    assert len(set(keep.tolist()) & set(held.tolist())) == 0


def test_digits_get_a_seeded_test_split_and_are_resized():
    module = ImageDataModule(digits, channels=1, image_size=28, num_classes=10, class_names=None, mean=None,
                             std=None, batch_size=32, val_fraction=0.1, test_fraction=0.3, data_seed=0)
    module.setup()
    sizes = module.split_sizes()
    assert sum(sizes.values()) == 1797
    assert abs(sizes["test"] - 0.3 * 1797) < 10
    images, labels = next(iter(module.train_dataloader()))
    assert images.shape == (32, 1, 28, 28) and images.dtype == torch.uint8


def test_loader_order_depends_on_seed_and_epoch_only():
    images, labels = torch.zeros(100, 1, 2, 2, dtype=torch.uint8), torch.arange(100)
    a = InMemoryLoader(images, labels, 10, shuffle=True, seed=1)
    b = InMemoryLoader(images, labels, 10, shuffle=True, seed=1)
    first_a, first_b = [y for _, y in a], [y for _, y in b]
    assert all(torch.equal(x, y) for x, y in zip(first_a, first_b))
    second_a = [y for _, y in a]
    assert not torch.equal(first_a[0], second_a[0])
    assert sorted(torch.cat(second_a).tolist()) == list(range(100))


def test_augmentation_touches_only_training_batches():
    module = ImageDataModule(lambda: synthetic(num_train=64, num_test=16, image_size=8), channels=1, image_size=8,
                             num_classes=10, class_names=None, mean=[0.0], std=[1.0], batch_size=16,
                             val_fraction=0.25, data_seed=0)
    module.augmentation.transforms.append(RandomFlip(p=1.0))
    module.setup()
    batch = next(iter(module.val_dataloader()))
    plain = module.normalize(batch[0])
    assert torch.equal(module.normalize(batch[0], augment=True), plain.flip(-1))
    module.trainer = None
    assert torch.equal(module.on_after_batch_transfer(batch, 0)[0], plain)


def test_random_crop_shifts_each_image_within_padding():
    images = torch.rand(64, 3, 8, 8)
    out = RandomCrop(padding=2)(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    # each output is the input shifted by at most 2 pixels with zeros entering: interior 4x4 came from the input
    shifted = sum(not torch.equal(o, i) for o, i in zip(out, images))
    assert shifted > 40
    zero_padding = RandomCrop(padding=0)(images)
    assert torch.equal(zero_padding, images)


@pytest.mark.parametrize("stop_after", [0, 3, 10])
def test_loader_resumes_where_its_state_says(stop_after: int):
    images, labels = torch.zeros(95, 1, 2, 2, dtype=torch.uint8), torch.arange(95)
    straight = InMemoryLoader(images, labels, 10, shuffle=True, seed=3)
    expected = [y for _, y in straight] + [y for _, y in straight]  # two epochs of 10 batches (the last one short)
    first = InMemoryLoader(images, labels, 10, shuffle=True, seed=3)
    seen = [y for _, (_, y) in zip(range(stop_after), first)]
    resumed = InMemoryLoader(images, labels, 10, shuffle=True, seed=3)
    resumed.load_state_dict(first.state_dict())  # 10 batches done: the next epoch starts whole
    while len(seen) < 20:
        seen += [y for _, y in resumed]
    assert len(seen) == 20 and all(torch.equal(x, y) for x, y in zip(seen, expected))


def test_augmentation_random_state_travels_in_state_dict():
    def augmentation() -> torch.nn.Module:
        from cnnlab.data.augment import Augmentation

        return Augmentation([RandomFlip(p=0.5), RandomCrop(padding=2)], seed=7)

    images = torch.rand(32, 1, 8, 8)
    original = augmentation()
    original(images)
    state = original.state_dict()
    expected = original(images)
    restored = augmentation()
    restored.load_state_dict(state)
    assert torch.equal(restored(images), expected)
    assert not torch.equal(augmentation()(images), expected)  # a fresh one starts over from the seed


def test_synthetic_multilabel_gives_0_1_vectors_and_a_seeded_random_split():
    arrays = synthetic(num_train=200, num_test=20, image_size=8, num_classes=5, multilabel=True)
    labels = arrays.train_labels
    assert labels.shape == (200, 5) and labels.dtype == torch.float32
    assert set(labels.unique().tolist()) == {0.0, 1.0} and (labels.sum(1) >= 1).all()
    assert 1.2 < labels.sum(1).mean() < 2.2  # each class present about 30% of the time, at least one per image
    keep, held = stratified_split(labels, 0.25, seed=3)
    assert len(held) == 50 and len(keep) == 150 and not set(keep.tolist()) & set(held.tolist())
    assert torch.equal(held, stratified_split(labels, 0.25, seed=3)[1])
    assert not torch.equal(held, stratified_split(labels, 0.25, seed=4)[1])
