"""Augmentation: every option per image, seeded, training-only; mixup/cutmix soft targets the losses accept."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cnnlab.cli.data import compose_config
from cnnlab.config import CONF_DIR
from cnnlab.data.augment import (
    Augmentation,
    AutoAugment,
    ColorJitter,
    CutMix,
    MixUp,
    RandAugment,
    RandomAffine,
    RandomErasing,
    build_augmentation,
)
from cnnlab.data.datamodule import ImageDataModule
from cnnlab.data.sources import synthetic
from cnnlab.errors import ConfigError
from cnnlab.train.losses import cross_entropy

OPTIONS = sorted(p.stem for p in (CONF_DIR / "augmentation").glob("*.yaml"))
MIXERS = ("mixup", "cutmix")


@functools.cache
def _augmentation_node(option: str):
    return compose_config([f"augmentation={option}"])[0].augmentation


def _augmentation(option: str, seed: int = 0) -> Augmentation:
    return build_augmentation(_augmentation_node(option), seed=seed)


def _datamodule(option: str) -> ImageDataModule:
    module = ImageDataModule(lambda: synthetic(num_train=80, num_test=20, channels=3, image_size=16), channels=3,
                             image_size=16, num_classes=10, class_names=None, mean=[0.5], std=[0.25], batch_size=16,
                             val_fraction=0.25, augmentation=_augmentation(option))
    module.setup()
    return module


@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_is_seeded_and_keeps_shape_and_range(option: str):
    images, labels = torch.rand(16, 3, 16, 16), torch.arange(16) % 10
    out_a, target_a = _augmentation(option, seed=1).mix(_augmentation(option, seed=1)(images), labels, 10)
    first = _augmentation(option, seed=1)
    out_b, target_b = first.mix(first(images), labels, 10)
    assert out_a.shape == images.shape and out_a.dtype == torch.float32
    assert float(out_a.min()) >= 0 and float(out_a.max()) <= 1
    assert torch.equal(out_a, out_b) and torch.equal(target_a, target_b)
    other = _augmentation(option, seed=2)
    out_c, _ = other.mix(other(images), labels, 10)
    assert torch.equal(out_a, images) == (option == "none")
    assert torch.equal(out_a, out_c) == (option == "none")


@pytest.mark.parametrize("option", [o for o in OPTIONS if o not in (*MIXERS, "none")])
def test_each_image_of_a_batch_gets_its_own_draw(option: str):
    images = torch.rand(1, 3, 16, 16).expand(32, -1, -1, -1).contiguous()
    out = _augmentation(option)(images)
    distinct = {tuple(image.flatten().tolist()) for image in out}
    if option == "flip":  # two outcomes (p=0.5): both occur, in binomial proportions (P(outside 6..26) < 1e-3)
        flipped = int(sum(torch.equal(image, images[0].flip(-1)) for image in out))
        assert len(distinct) == 2 and 6 <= flipped <= 26, flipped
    else:  # a draw per image: the images it changed differ from each other (policies and crop offsets draw from
        # a few discrete choices, so some coincide there)
        changed = {tuple(image.flatten().tolist()) for image in out if not torch.equal(image, images[0])}
        share = 0.25 if option in ("autoaugment", "randaugment", "crop", "standard") else 0.9
        assert len(changed) >= 8, f"only {len(changed)} of 32 images changed"
        changed_count = int(sum(not torch.equal(image, images[0]) for image in out))
        assert len(changed) >= share * changed_count, (
            f"{changed_count} images changed but only {len(changed)} differently: draws are shared across images")


@pytest.mark.parametrize("option", OPTIONS)
def test_augmentation_touches_only_the_training_split(option: str):
    module = _datamodule(option)
    module.trainer = SimpleNamespace(training=False)  # what Lightning's trainer says while validating or testing
    for split in ("val", "test"):
        images, labels = next(iter(getattr(module, f"{split}_dataloader")()))
        plain = (images.float() / 255 - 0.5) / 0.25
        out, targets = module.on_after_batch_transfer((images, labels), 0)
        assert torch.allclose(out, plain) and torch.equal(targets, labels)
    images, labels = next(iter(module.train_dataloader()))
    module.trainer = SimpleNamespace(training=True)
    out, targets = module.on_after_batch_transfer((images, labels), 0)
    plain = (images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(out, plain) == (option == "none")
    assert targets.shape == ((16, 10) if option in MIXERS else (16,))


@pytest.mark.parametrize("mixer", [MixUp(alpha=0.4), CutMix(alpha=1.0)], ids=["mixup", "cutmix"])
def test_mixing_gives_soft_targets_the_losses_accept(mixer):
    labels = torch.arange(8)  # one class per image: a target row tells which two images went in, and how much
    images = (torch.arange(8).float() / 8)[:, None, None, None].expand(8, 1, 10, 10).contiguous()
    mixed, targets = mixer(images, labels, 8, torch.Generator().manual_seed(0))
    assert targets.dtype == torch.float32 and targets.shape == (8, 8)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    for i in range(8):
        lam = float(targets[i, i])
        partner = int(torch.topk(targets[i], 2).indices[1]) if lam < 1 else i
        expected = lam * images[i, 0, 0, 0] + (1 - lam) * images[partner, 0, 0, 0]
        if isinstance(mixer, CutMix):  # the target weight is the share of pixels kept from the image itself
            assert math.isclose(float((mixed[i] == images[i, 0, 0, 0]).float().mean()), lam, abs_tol=1e-6)
        else:
            assert torch.allclose(mixed[i], expected.expand_as(mixed[i]))
    assert (targets.max(1).values < 1).sum() >= 4, "most images were mixed with another"
    logits = torch.randn(8, 8)
    expected_loss = -(targets * F.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(F.cross_entropy(logits, targets), expected_loss)
    assert torch.allclose(cross_entropy()(logits, targets), expected_loss)


def test_bad_augmentation_settings_name_the_key():
    cfg, _ = compose_config(["augmentation=erasing", "augmentation.transforms.erasing.p=1.5"])
    with pytest.raises(ConfigError, match=r"augmentation.transforms.erasing.p=1.5 is not allowed: a probability"):
        build_augmentation(cfg.augmentation, seed=0)


def test_affine_identity_keeps_the_image_and_zoom_out_shrinks_it():
    images = torch.rand(4, 3, 12, 12)
    identity = RandomAffine(degrees=0, translate=0, scale=(1, 1), shear=0)
    assert torch.allclose(identity(images, torch.Generator()), images, atol=1e-5)
    ones = torch.ones(4, 1, 20, 20)
    half = RandomAffine(degrees=0, translate=0, scale=(0.5, 0.5), shear=0)(ones, torch.Generator())
    assert torch.allclose(half.mean((1, 2, 3)), torch.full((4,), 0.25), atol=0.02)


def test_affine_matrices_are_rotations_in_pixel_space_whatever_the_aspect():
    affine = RandomAffine(degrees=180, translate=0.0, scale=(1, 1), shear=0)
    theta = affine.matrices(16, 10, 20, torch.Generator().manual_seed(0), torch.device("cpu"))
    half = torch.tensor([20 / 2, 10 / 2])
    pixel = half[None, :, None] * theta[:, :, :2] / half[None, None, :]  # back from normalised coordinates
    assert torch.allclose(pixel @ pixel.transpose(1, 2), torch.eye(2).expand(16, -1, -1), atol=1e-5)
    assert torch.allclose(theta[:, :, 2], torch.zeros(16, 2))
    assert len({round(float(a), 4) for a in torch.atan2(pixel[:, 1, 0], pixel[:, 0, 0])}) == 16


def test_color_brightness_scales_each_image_by_its_own_factor():
    images = torch.full((16, 3, 4, 4), 0.5)
    out = ColorJitter(brightness=0.5, contrast=0, saturation=0)(images, torch.Generator().manual_seed(0))
    factors = out[:, 0, 0, 0] / 0.5
    assert torch.allclose(out, factors[:, None, None, None] * 0.5)
    assert float(factors.min()) >= 0.5 and float(factors.max()) <= 1.5 and len(set(factors.tolist())) == 16


def test_erasing_blanks_one_rectangle_per_image():
    out = RandomErasing(p=1.0, scale=(0.1, 0.2), ratio=(0.5, 2.0))(torch.ones(16, 1, 20, 20),
                                                                    torch.Generator().manual_seed(0))
    for image in out[:, 0]:
        rows, cols = torch.nonzero(image == 0, as_tuple=True)
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert len(rows) == height * width  # a solid rectangle
        assert 0.05 <= len(rows) / 400 <= 0.3


@pytest.mark.parametrize("policy", [RandAugment(), AutoAugment("cifar10")], ids=["randaugment", "autoaugment"])
def test_policies_grouped_equal_torchvision_applied_per_image(policy):
    images = torch.rand(24, 3, 16, 16)
    plan = policy.plan(24, 16, 16, torch.Generator().manual_seed(5))
    grouped = policy(images, torch.Generator().manual_seed(5))
    pixels = images.mul(255).round().to(torch.uint8)
    expected = []
    for index, image in enumerate(pixels):
        for slot in plan:
            if slot[index] is not None:
                op, magnitude = slot[index]
                image = policy.transform._apply_image_or_video_transform(
                    image, op, magnitude, interpolation=policy.transform.interpolation, fill=policy.transform._fill)
        expected.append(image)
    assert torch.equal(grouped, torch.stack(expected).float() / 255)
    assert len({step for slot in plan for step in slot}) > 5  # the images really drew different operations
