"""Data: every real on-disk format read by its loader, lookup order, splits, image folders, `cnnlab data show`."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import make_cifar_like, make_emnist_like, make_image_folder, make_mnist_like, make_svhn_mat

from cnnlab.cli import main
from cnnlab.cli.data import compose_config
from cnnlab.data.augment import RandomCrop, RandomFlip
from cnnlab.data.datamodule import ImageDataModule, InMemoryLoader, stratified_split
from cnnlab.data.show import title
from cnnlab.data.sources import (
    cifar10,
    cifar100,
    digits,
    emnist,
    fashion_mnist,
    kmnist,
    mnist,
    mnist_family,
    svhn,
    synthetic,
)
from cnnlab.errors import ConfigError
from cnnlab.train.build import build_datamodule
from cnnlab.validate import validate


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

# ---------------------------------------------------------------- each real format, read by its loader

def test_cifar10_pickles_are_read_plane_by_plane(tmp_path: Path):
    make_cifar_like(tmp_path, per_batch=20, test=10)
    arrays = cifar10(str(tmp_path), system_dirs=(), download=False)
    assert arrays.train_images.shape == (100, 3, 32, 32) and arrays.train_images.dtype == torch.uint8
    assert arrays.test_images.shape == (10, 3, 32, 32) and arrays.train_labels.dtype == torch.int64
    assert set(arrays.train_labels.tolist()) == set(range(10))
    # each image is one colour plus +-20 noise: only a correct (N, 3, 32, 32) reading keeps the channels flat
    assert float(arrays.train_images.float().std(dim=(2, 3)).max()) < 15


def test_cifar100_fine_and_coarse_labels(tmp_path: Path):
    make_cifar_like(tmp_path, hundred=True)
    fine = cifar100("fine", str(tmp_path), system_dirs=(), download=False)
    coarse = cifar100("coarse", str(tmp_path), system_dirs=(), download=False)
    assert fine.train_images.shape == (200, 3, 32, 32) and int(fine.train_labels.max()) == 99
    assert torch.equal(coarse.train_labels, fine.train_labels // 5) and int(coarse.test_labels.max()) <= 19
    with pytest.raises(ConfigError, match="dataset.labels='medium'.*fine, coarse"):
        cifar100("medium", str(tmp_path), system_dirs=(), download=False)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_dataset_pickle_cannot_run_code(tmp_path: Path):
    folder = make_cifar_like(tmp_path, per_batch=4, test=4)
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": _RunsCode()}, protocol=2))
    with pytest.raises(ConfigError, match="data_batch_3 is not a CIFAR python batch.*posix.system is not allowed"):
        cifar10(str(tmp_path), system_dirs=(), download=False)


def test_svhn_mat_files_map_label_10_to_digit_0(tmp_path: Path):
    make_svhn_mat(tmp_path / "svhn", train=30, test=10)
    arrays = svhn(str(tmp_path), system_dirs=(), download=False)
    assert arrays.train_images.shape == (30, 3, 32, 32) and arrays.test_images.shape == (10, 3, 32, 32)
    assert sorted(set(arrays.train_labels.tolist())) == list(range(10))
    assert float(arrays.train_images.float().std(dim=(2, 3)).max()) < 15


def test_emnist_images_are_turned_upright_and_letters_count_from_zero(tmp_path: Path):
    folder = make_emnist_like(tmp_path / "emnist", split="letters", classes=26, train=52, test=26, first_label=1)
    arrays = emnist("letters", str(tmp_path), system_dirs=(), download=False)
    from cnnlab.data.sources import read_idx

    stored = torch.from_numpy(read_idx(folder / "emnist-letters-train-images-idx3-ubyte.gz").copy())
    assert torch.equal(arrays.train_images[:, 0], stored.transpose(1, 2))
    assert arrays.train_labels.min() == 0 and arrays.train_labels.max() == 25
    with pytest.raises(ConfigError, match="dataset.split='nope'"):
        emnist("nope", str(tmp_path), download=False)


@pytest.mark.parametrize(("loader", "folder"), [(mnist, "MNIST/raw"), (kmnist, "KMNIST/raw"), (kmnist, "kmnist"),
                                                (fashion_mnist, "FashionMNIST/raw")])
def test_idx_datasets_are_found_in_data_dir(tmp_path: Path, loader, folder: str):
    make_mnist_like(tmp_path / folder, train=20, test=10)
    arrays = loader(str(tmp_path), system_dirs=(), download=False)
    assert arrays.train_images.shape == (20, 1, 28, 28) and len(arrays.test_labels) == 10


def test_data_dir_comes_before_system_folders(tmp_path: Path):
    make_mnist_like(tmp_path / "data" / "mnist", train=20, test=10)
    make_mnist_like(tmp_path / "system", train=40, test=10)
    assert len(mnist(str(tmp_path / "data"), system_dirs=(str(tmp_path / "system"),)).train_labels) == 20
    assert len(mnist(str(tmp_path / "none"), system_dirs=(str(tmp_path / "system"),)).train_labels) == 40


@pytest.mark.parametrize(("loader", "expected"), [
    (lambda d: cifar10(d, system_dirs=("/nowhere/cifar10",)), ["cifar-10-batches-py", "/nowhere/cifar10",
                                                                "cifar-10-python.tar.gz"]),
    (lambda d: cifar100("fine", d), ["cifar-100-python", "cifar-100-python.tar.gz"]),
    (lambda d: svhn(d), ["svhn", "train_32x32.mat"]),
    (lambda d: emnist("digits", d), ["EMNIST/raw", "emnist-digits-*-ubyte.gz"]),
    (lambda d: kmnist(d), ["KMNIST/raw", "/usr/share/datasets/kmnist"]),
])
def test_offline_and_not_found_names_every_place_and_what_to_do(tmp_path: Path, monkeypatch, loader, expected):
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    with pytest.raises(ConfigError) as info:
        loader(str(tmp_path))
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message
    assert "download skipped (CNNLAB_OFFLINE is set)" in message and "internet" in message
    for text in expected:
        assert text in message


def test_offline_not_found_exits_2_with_one_line(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    code = main(["train", "dataset=cifar10", f"data_dir={tmp_path}", "progress_bar=none",
                 f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: dataset 'cifar10' not found: looked in")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------- every dataset option, through the config

DATASETS = [
    (["dataset=mnist"], 1, 28, 10, "0"),
    (["dataset=kmnist"], 1, 28, 10, "o"),
    (["dataset=fashion_mnist", "dataset.source.system_dirs=[]"], 1, 28, 10, "T-shirt/top"),
    (["dataset=emnist"], 1, 28, 47, "0"),
    (["dataset=cifar10"], 3, 32, 10, "airplane"),
    (["dataset=cifar100"], 3, 32, 100, "apple"),
    (["dataset=cifar100", "dataset.labels=coarse"], 3, 32, 20, "aquatic_mammals"),
    (["dataset=svhn"], 3, 32, 10, "0"),
    (["dataset=imagefolder", "dataset.root={root}/pets"], 3, 64, 2, "cats"),
    (["dataset=digits"], 1, 28, 10, "0"),
    (["dataset=synthetic"], 1, 28, 10, "0"),
]


def _datamodule(formats_dir: Path, overrides: list[str], seed: int = 0) -> tuple[ImageDataModule, object]:
    overrides = [o.format(root=formats_dir) for o in overrides]
    cfg, _ = compose_config([*overrides, f"data_dir={formats_dir}", f"seed={seed}", "batch_size=16"])
    validate(cfg)
    module = build_datamodule(cfg)
    module.setup("fit")
    return module, cfg


@pytest.mark.parametrize(("overrides", "channels", "size", "classes", "first_name"), DATASETS,
                         ids=[" ".join(d[0]) for d in DATASETS])
def test_every_dataset_knows_its_shape_classes_and_splits(formats_dir: Path, monkeypatch, overrides, channels, size,
                                                          classes, first_name):
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    module, cfg = _datamodule(formats_dir, overrides)
    assert (cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.num_classes) == (channels, size, classes)
    assert len(module.class_names) == classes and module.class_names[0] == first_name
    assert module.mean.shape == module.std.shape == (1, channels, 1, 1)
    images, labels = next(iter(module.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape[1:] == (channels, size, size)
    assert labels.dtype == torch.int64 and int(labels.max()) < classes
    sizes = module.split_sizes()
    assert min(sizes.values()) > 0
    train_and_val = sizes["train"] + sizes["val"]
    assert sizes["val"] == round(cfg.val_fraction * train_and_val)
    if cfg.dataset.get("test_fraction"):  # no official test split: a seeded one
        assert sizes["test"] == round(cfg.dataset.test_fraction * (train_and_val + sizes["test"]))
    # the model gets the dataset's numbers as keywords (the loss's output units: one per class for ce)
    from cnnlab.train.build import model_arguments

    kwargs, _ = model_arguments(cfg, classes)
    assert (kwargs["in_channels"], kwargs["num_classes"], kwargs["image_size"]) == (channels, classes, size)


@pytest.mark.parametrize("overrides", [["dataset=cifar10"], ["dataset=imagefolder", "dataset.root={root}/pets"],
                                       ["dataset=digits"]], ids=["cifar10", "imagefolder", "digits"])
def test_splits_are_the_same_for_the_same_seed_and_differ_for_another(formats_dir: Path, overrides):
    def val_labels_and_pixels(seed: int) -> tuple[list, list]:
        module, _ = _datamodule(formats_dir, overrides, seed=seed)
        images, labels = module.splits["val"]
        return labels.tolist(), [float(v) for v in module.val_dataloader().__iter__().__next__()[0].float().mean(
            (1, 2, 3))]

    first, again, other = val_labels_and_pixels(1), val_labels_and_pixels(1), val_labels_and_pixels(2)
    assert first == again
    assert first[1] != other[1]


def test_a_label_the_config_does_not_allow_is_a_clear_error(formats_dir: Path):
    with pytest.raises(ConfigError, match="dataset.num_classes=5 does not fit the data: its labels run from 0 to 9"):
        _datamodule(formats_dir, ["dataset=cifar10", "dataset.num_classes=5", "dataset.class_names=null"])


# ---------------------------------------------------------------- image folders

def test_image_folder_streamed_and_cached_give_the_same_batches(formats_dir: Path):
    root = ["dataset=imagefolder", "dataset.root={root}/pets", "dataset.image_size=24"]
    cached, _ = _datamodule(formats_dir, [*root, "dataset.source.cache=true"])
    streamed, _ = _datamodule(formats_dir, [*root, "dataset.source.cache=false", "num_workers=1"])
    assert isinstance(cached.splits["train"][0], torch.Tensor)
    assert not isinstance(streamed.splits["train"][0], torch.Tensor)
    assert torch.equal(cached.mean, streamed.mean) and torch.equal(cached.std, streamed.std)
    for split in ("train", "val", "test"):
        loaders = [getattr(m, f"{split}_dataloader")() for m in (cached, streamed)]
        for _ in range(2):  # the same seeded order every epoch
            batches = [list(loader) for loader in loaders]
            assert len(batches[0]) == len(batches[1]) == len(loaders[0]) > 0
            for (a, ya), (b, yb) in zip(*batches):
                assert torch.equal(a, b) and torch.equal(ya, yb) and a.shape[1:] == (3, 24, 24)


@pytest.mark.slow
def test_image_folder_with_its_own_test_folder(tmp_path: Path):
    make_image_folder(tmp_path / "tree" / "train", per_class=6)
    make_image_folder(tmp_path / "tree" / "test", per_class=3, seed=1)
    module, cfg = _datamodule(tmp_path, ["dataset=imagefolder", f"dataset.root={tmp_path / 'tree'}",
                                         "dataset.channels=1"])
    assert list(cfg.dataset.class_names) == ["cats", "dogs"]
    assert module.split_sizes() == {"train": 11, "val": 1, "test": 6}
    assert next(iter(module.test_dataloader()))[0].shape[1:] == (1, 64, 64)


def _tree(tmp_path: Path, kind: str) -> Path:
    root = make_image_folder(tmp_path / "tree", per_class=3)
    if kind == "one class":
        for file in (root / "dogs").iterdir():
            file.unlink()
        (root / "dogs").rmdir()
    elif kind == "empty class":
        (root / "birds").mkdir()
        (root / "birds" / "notes.txt").write_text("not an image")
    elif kind == "missing":
        return tmp_path / "nope"
    return root


@pytest.mark.parametrize(("kind", "message"), [
    ("one class", "needs one sub-folder per class and at least two classes; found only 'cats'"),
    ("empty class", "class folder {root}/birds holds no images"),
    ("missing", "dataset.root='{root}' is not a folder"),
])
def test_image_folder_mistakes_are_config_errors(tmp_path: Path, kind: str, message: str):
    root = _tree(tmp_path, kind)
    with pytest.raises(ConfigError) as info:
        _datamodule(tmp_path, ["dataset=imagefolder", f"dataset.root={root}"])
    assert message.format(root=root) in str(info.value)


def test_image_folder_mistake_exits_2_with_one_line(tmp_path: Path, capsys):
    root = _tree(tmp_path, "one class")
    code = main(["train", "dataset=imagefolder", f"dataset.root={root}", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "at least two classes" in err[0]


@pytest.mark.parametrize("cache", ["true", "false"])
def test_a_file_that_is_not_an_image_is_named(tmp_path: Path, cache: str):
    root = make_image_folder(tmp_path / "tree", per_class=4)
    (root / "dogs" / "dogs.2.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(ConfigError, match=r"dogs\.2\.jpg is not a readable image"):
        module, _ = _datamodule(tmp_path, ["dataset=imagefolder", f"dataset.root={root}",
                                           f"dataset.source.cache={cache}", "val_fraction=0.3"])
        for split in ("train", "val", "test"):
            list(getattr(module, f"{split}_dataloader")())


# ---------------------------------------------------------------- cnnlab data show

def test_data_show_writes_a_png_grid(tmp_path: Path, capsys):
    out = tmp_path / "grid.png"
    code = main(["data", "show", "dataset=synthetic", "augmentation=[standard,cutmix]", "--count", "6",
                 "--out", str(out)])
    assert code == 0
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 5000
    stdout = capsys.readouterr().out
    assert "synthetic (augmentation=standard+cutmix): 1 channel(s), 28x28, 10 classes" in stdout
    assert f"wrote 6 augmented training samples to {out}" in stdout


def test_data_show_titles_are_class_names_or_mixing_weights():
    names = ["cat", "dog", "bird"]
    assert title(torch.tensor(1), names) == "dog"
    assert title(torch.tensor([0.3, 0.0, 0.7]), names) == "bird 0.70\ncat 0.30"


@pytest.mark.parametrize(("args", "expected"), [(["show", "--count", "0"], "--count=0"),
                                                (["show", "dataset=nope"], "dataset=nope: no such option"),
                                                (["draw"], "data='draw'")])
def test_data_show_bad_input_exits_2(capsys, args: list[str], expected: str):
    assert main(["data", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]


@pytest.mark.slow
def test_train_streams_an_image_folder_end_to_end(tmp_path: Path):
    import json

    root = make_image_folder(tmp_path / "pets", per_class=10)
    run = tmp_path / "run"
    code = main(["train", "dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=32",
                 "dataset.source.cache=false", "model=mlp", "augmentation=[standard,color]", "batch_size=4",
                 "trainer.max_epochs=1", "progress_bar=none", f"hydra.run.dir={run}"])
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["split_sizes"] == {"train": 13, "val": 1, "test": 6}
    assert summary["steps"] == 4 and 0 <= summary["test"]["test/acc"] <= 1
