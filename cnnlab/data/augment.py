"""Training-only augmentation on whole batches on the training device, with per-image randomness.

Each transform takes a float batch in [0, 1] of shape (B, C, H, W) and a torch.Generator, so augmentation has its
own seed and draws a different random setting for every image of the batch. Geometric and colour transforms are
batched tensor ops; RandAugment / AutoAugment draw a per-image plan and run torchvision's own operations once per
group of images that drew the same operation. Mixers (mixup, cutmix) act on the batch and turn the int labels into
float (B, C) soft targets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.data.arrays import GRAY_WEIGHTS
from cnnlab.errors import ConfigError


def _uniform(batch: int, generator: torch.Generator | None, device: torch.device, low: float = 0.0,
             high: float = 1.0) -> Tensor:
    return low + (high - low) * torch.rand(batch, generator=generator, device=device)


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _check_probability(p: float) -> None:
    _check(0.0 <= p <= 1.0, "p", p, "a probability between 0 and 1")


def _grayscale(images: Tensor) -> Tensor:
    if images.shape[1] == 1:
        return images
    weights = torch.tensor(GRAY_WEIGHTS, device=images.device, dtype=images.dtype)
    return (images * weights[None, :, None, None]).sum(1, keepdim=True)


class RandomFlip(nn.Module):
    """Flip each image horizontally (and/or vertically) with probability p."""

    def __init__(self, p: float = 0.5, horizontal: bool = True, vertical: bool = False):
        super().__init__()
        _check_probability(p)
        self.p, self.horizontal, self.vertical = p, horizontal, vertical

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        for enabled, dim in ((self.horizontal, -1), (self.vertical, -2)):
            if enabled:
                flip = _uniform(images.shape[0], generator, images.device) < self.p
                images = torch.where(flip[:, None, None, None], images.flip(dim), images)
        return images


class RandomCrop(nn.Module):
    """Zero-pad each side by `padding` pixels, then crop a random window of the original size per image."""

    def __init__(self, padding: int = 4):
        super().__init__()
        _check(isinstance(padding, int) and padding >= 0, "padding", padding, "an integer >= 0")
        self.padding = padding

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.padding <= 0:
            return images
        batch, _, height, width = images.shape
        pad = self.padding
        padded = nn.functional.pad(images, (pad, pad, pad, pad))
        top = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=images.device)
        left = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=images.device)
        rows = (top[:, None] + torch.arange(height, device=images.device))[:, :, None]
        cols = (left[:, None] + torch.arange(width, device=images.device))[:, None, :]
        index = torch.arange(batch, device=images.device)[:, None, None]
        return padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2).contiguous()


class RandomAffine(nn.Module):
    """Per-image rotation (degrees), scale, translation (fraction of the size) and x-shear (degrees), zero fill.

    One (B, 2, 3) matrix per image, applied with affine_grid + grid_sample (bilinear) in a single batched call.
    """

    def __init__(self, degrees: float = 15.0, translate: float = 0.1, scale: Sequence[float] = (0.9, 1.1),
                 shear: float = 10.0, p: float = 1.0):
        super().__init__()
        _check(degrees >= 0, "degrees", degrees, "a number of degrees >= 0")
        _check(0 <= translate <= 1, "translate", translate, "a fraction of the image size between 0 and 1")
        _check(len(scale) == 2 and 0 < scale[0] <= scale[1], "scale", list(scale), "[low, high] with 0 < low <= high")
        _check(0 <= shear < 90, "shear", shear, "a number of degrees between 0 and 90")
        _check_probability(p)
        self.degrees, self.translate, self.scale, self.shear, self.p = degrees, translate, tuple(scale), shear, p

    def matrices(self, batch: int, height: int, width: int, generator: torch.Generator | None,
                 device: torch.device) -> Tensor:
        """affine_grid's (B, 2, 3) matrices: output coordinates -> input coordinates, both normalised."""
        angle = torch.deg2rad(_uniform(batch, generator, device, -self.degrees, self.degrees))
        scale = _uniform(batch, generator, device, *self.scale)
        shear = torch.deg2rad(_uniform(batch, generator, device, -self.shear, self.shear))
        shift = torch.stack([_uniform(batch, generator, device, -self.translate, self.translate) * width,
                             _uniform(batch, generator, device, -self.translate, self.translate) * height], 1)
        cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
        # forward map in pixel units about the centre: rotation @ shear @ scale
        forward = torch.stack([torch.stack([cos, cos * tan - sin], 1), torch.stack([sin, sin * tan + cos], 1)], 1)
        inverse = torch.linalg.inv(forward * scale[:, None, None])
        half = torch.tensor([width / 2, height / 2], device=device)
        linear = inverse * half[None, None, :] / half[None, :, None]  # D^-1 A^-1 D for D = diag(half)
        offset = -(inverse @ shift[:, :, None]).squeeze(2) / half
        return torch.cat([linear, offset[:, :, None]], 2)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch, _, height, width = images.shape
        theta = self.matrices(batch, height, width, generator, images.device)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.p >= 1:
            return moved
        apply = _uniform(batch, generator, images.device) < self.p
        return torch.where(apply[:, None, None, None], moved, images)


class ColorJitter(nn.Module):
    """Per-image brightness, contrast and saturation factors drawn from [max(0, 1 - x), 1 + x] (torchvision's)."""

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4):
        super().__init__()
        for key, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            _check(value >= 0, key, value, "a number >= 0")
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def _factor(self, amount: float, batch: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        return _uniform(batch, generator, device, max(0.0, 1 - amount), 1 + amount)[:, None, None, None]

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch, device = images.shape[0], images.device
        if self.brightness:
            images = images * self._factor(self.brightness, batch, generator, device)
        if self.contrast:
            mean = _grayscale(images.clamp(0, 1)).mean((1, 2, 3), keepdim=True)
            images = (images - mean) * self._factor(self.contrast, batch, generator, device) + mean
        if self.saturation and images.shape[1] == 3:
            gray = _grayscale(images.clamp(0, 1))
            images = (images - gray) * self._factor(self.saturation, batch, generator, device) + gray
        return images.clamp(0, 1)


class RandomErasing(nn.Module):
    """With probability p, erase one random rectangle per image (area `scale`, aspect `ratio`) to `value`."""

    def __init__(self, p: float = 0.5, scale: Sequence[float] = (0.02, 0.33), ratio: Sequence[float] = (0.3, 3.3),
                 value: float | str = 0.0):
        super().__init__()
        _check_probability(p)
        _check(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, "scale", list(scale),
               "[low, high] fractions of the image area, 0 < low <= high <= 1")
        _check(len(ratio) == 2 and 0 < ratio[0] <= ratio[1], "ratio", list(ratio), "[low, high] with 0 < low <= high")
        _check(value == "random" or isinstance(value, (int, float)), "value", value, "a number or 'random'")
        self.p, self.scale, self.ratio, self.value = p, tuple(scale), tuple(ratio), value

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch, _, height, width = images.shape
        device = images.device
        area = _uniform(batch, generator, device, *self.scale) * height * width
        aspect = torch.exp(_uniform(batch, generator, device, math.log(self.ratio[0]), math.log(self.ratio[1])))
        box_h = torch.sqrt(area * aspect).round().clamp(1, height)
        box_w = torch.sqrt(area / aspect).round().clamp(1, width)
        top = (_uniform(batch, generator, device) * (height - box_h + 1)).floor()
        left = (_uniform(batch, generator, device) * (width - box_w + 1)).floor()
        apply = _uniform(batch, generator, device) < self.p
        rows, cols = torch.arange(height, device=device), torch.arange(width, device=device)
        in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
        in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
        mask = (in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None])[:, None]
        if self.value == "random":
            fill = torch.rand(images.shape, generator=generator, device=device)
        else:
            fill = torch.full((), float(self.value), device=device)
        return torch.where(mask, fill, images)


# ---------------------------------------------------------------- torchvision's policies, per image, grouped

class _Policy(nn.Module):
    """A torchvision v2 auto-augment policy with a per-image draw, run once per group of identical operations.

    torchvision's transform draws ONE setting per call, so calling it on a batch would give every image the same
    operations; calling it per image costs a Python round trip per image. Here the per-image plan (operation and
    signed magnitude, exactly as torchvision draws them) comes from our generator, and torchvision's operation
    runs once on each group of images that drew the same one.
    """

    draws_on_host = True  # the plan is drawn on the CPU so grouping never waits for the device

    def __init__(self, transform: Any):
        super().__init__()
        self.transform = transform
        self._magnitudes: dict[tuple, list[float] | None] = {}

    def plan(self, batch: int, height: int, width: int, generator: torch.Generator) -> list[list[tuple | None]]:
        """For each operation slot, each image's (operation, magnitude), or None to leave it as it is."""
        raise NotImplementedError

    def _magnitude(self, op: str, bins: int, index: int | None, negative: bool, height: int, width: int) -> float:
        """torchvision's magnitude for bin `index` of `op`, negated when the op is signed and the draw says so."""
        key = (op, bins, height, width)
        magnitudes_fn, signed = self.transform._AUGMENTATION_SPACE[op]
        if key not in self._magnitudes:
            values = magnitudes_fn(bins, height, width)
            self._magnitudes[key] = None if values is None else [float(v) for v in values]
        magnitudes = self._magnitudes[key]
        if magnitudes is None or index is None:
            return 0.0
        return -magnitudes[index] if signed and negative else magnitudes[index]

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch, _, height, width = images.shape
        pixels = images.mul(255).round_().to(torch.uint8)  # torchvision's operations are defined on uint8
        for slot in self.plan(batch, height, width, generator):
            groups: dict[tuple, list[int]] = {}
            for index, step in enumerate(slot):
                if step is not None and step[0] != "Identity":
                    groups.setdefault(step, []).append(index)
            for (op, magnitude), members in groups.items():
                index = torch.tensor(members, device=images.device)
                pixels[index] = self.transform._apply_image_or_video_transform(
                    pixels[index], op, magnitude, interpolation=self.transform.interpolation, fill=self.transform._fill)
        return pixels.float().div_(255)


class RandAugment(_Policy):
    """RandAugment (torchvision v2): `num_ops` operations per image, each at `magnitude` out of the bins."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31,
                 interpolation: str = "nearest"):
        from torchvision.transforms import v2

        _check(isinstance(num_ops, int) and num_ops >= 0, "num_ops", num_ops, "an integer >= 0")
        _check(isinstance(magnitude, int) and 0 <= magnitude < num_magnitude_bins, "magnitude", magnitude,
               f"an integer from 0 to {num_magnitude_bins - 1} (num_magnitude_bins - 1)")
        super().__init__(v2.RandAugment(num_ops, magnitude, num_magnitude_bins, interpolation=interpolation))
        self.ops = list(self.transform._AUGMENTATION_SPACE)

    def plan(self, batch: int, height: int, width: int, generator: torch.Generator) -> list[list[tuple | None]]:
        t = self.transform
        slots = []
        for _ in range(t.num_ops):
            ops = torch.randint(len(self.ops), (batch,), generator=generator).tolist()
            negative = (torch.rand(batch, generator=generator) <= 0.5).tolist()
            slots.append([(self.ops[o], self._magnitude(self.ops[o], t.num_magnitude_bins, t.magnitude, n, height,
                                                        width)) for o, n in zip(ops, negative)])
        return slots


class AutoAugment(_Policy):
    """AutoAugment (torchvision v2) with one of its learned policies: imagenet, cifar10 or svhn."""

    POLICIES = ("imagenet", "cifar10", "svhn")

    def __init__(self, policy: str = "imagenet", interpolation: str = "nearest"):
        from torchvision.transforms import v2

        _check(policy in self.POLICIES, "policy", policy, "one of " + ", ".join(self.POLICIES))
        super().__init__(v2.AutoAugment(v2.AutoAugmentPolicy(policy), interpolation=interpolation))

    def plan(self, batch: int, height: int, width: int, generator: torch.Generator) -> list[list[tuple | None]]:
        policies = self.transform._policies
        chosen = torch.randint(len(policies), (batch,), generator=generator).tolist()
        slots = []
        for slot in range(2):
            applied = torch.rand(batch, generator=generator).tolist()
            negative = (torch.rand(batch, generator=generator) <= 0.5).tolist()
            steps: list[tuple | None] = []
            for image in range(batch):
                op, probability, index = policies[chosen[image]][slot]
                steps.append((op, self._magnitude(op, 10, index, negative[image], height, width))
                             if applied[image] <= probability else None)
            slots.append(steps)
        return slots


# ---------------------------------------------------------------- batch mixing

def soft_targets(labels: Tensor, num_classes: int) -> Tensor:
    """Float (B, C) class-probability targets from int (B,) labels; soft targets pass through."""
    return labels.float() if labels.ndim == 2 else F.one_hot(labels, num_classes).float()


def _beta(alpha: float, generator: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw seeded from our generator (torch's Beta cannot take a generator)."""
    seed = int(torch.randint(2 ** 62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


class _Mixer(nn.Module):
    def __init__(self, alpha: float):
        super().__init__()
        _check(isinstance(alpha, (int, float)) and alpha > 0, "alpha", alpha, "a number > 0 (Beta(alpha, alpha))")
        self.alpha = float(alpha)

    def pair(self, batch: int, generator: torch.Generator, device: torch.device) -> tuple[float, Tensor]:
        return _beta(self.alpha, generator), torch.randperm(batch, generator=generator).to(device)


class MixUp(_Mixer):
    """mixup: each image blended with another of the batch by lambda ~ Beta(alpha, alpha), targets likewise."""

    def forward(self, images: Tensor, labels: Tensor, num_classes: int, generator: torch.Generator) -> tuple:
        lam, partner = self.pair(images.shape[0], generator, images.device)
        targets = soft_targets(labels, num_classes)
        return images * lam + images[partner] * (1 - lam), targets * lam + targets[partner] * (1 - lam)


class CutMix(_Mixer):
    """CutMix: a box of area ~ (1 - lambda) pasted from another image of the batch; targets by the box's area."""

    def forward(self, images: Tensor, labels: Tensor, num_classes: int, generator: torch.Generator) -> tuple:
        batch, _, height, width = images.shape
        lam, partner = self.pair(batch, generator, images.device)
        cut = math.sqrt(1 - lam)
        box_h, box_w = int(height * cut), int(width * cut)
        cy, cx = (int(v) for v in torch.randint(0, 2 ** 31, (2,), generator=generator) % torch.tensor([height, width]))
        top, bottom = max(cy - box_h // 2, 0), min(cy + box_h - box_h // 2, height)
        left, right = max(cx - box_w // 2, 0), min(cx + box_w - box_w // 2, width)
        mixed = images.clone()
        mixed[:, :, top:bottom, left:right] = images[partner][:, :, top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (height * width)
        targets = soft_targets(labels, num_classes)
        return mixed, targets * lam + targets[partner] * (1 - lam)


# ---------------------------------------------------------------- the configured pipeline

class Augmentation(nn.Module):
    """The configured transforms applied in order to training batches, then one of the mixers (if any)."""

    def __init__(self, transforms: list[nn.Module], seed: int, mixers: Sequence[nn.Module] = ()):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)
        self.mixers = nn.ModuleList(mixers)
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device | str) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    # The generators' states travel in state_dict(), so a resumed run draws the same augmentations.
    def get_extra_state(self) -> dict[str, Tensor]:
        return {device: generator.get_state() for device, generator in self._generators.items()}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        for device, generator_state in state.items():
            try:
                self.generator(torch.device(device)).set_state(generator_state)
            except RuntimeError:  # saved on a device this machine lacks: that one starts from the seed
                self._generators.pop(device, None)

    def forward(self, images: Tensor) -> Tensor:
        for transform in self.transforms:
            on_host = getattr(transform, "draws_on_host", False)
            images = transform(images, self.generator("cpu" if on_host else images.device))
        return images

    def mix(self, images: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
        """(images, labels) unchanged without mixers; else mixed images and float (B, C) soft targets."""
        if not self.mixers:
            return images, labels
        generator = self.generator("cpu")
        mixer = self.mixers[int(torch.randint(len(self.mixers), (1,), generator=generator))]
        return mixer(images, labels, num_classes, generator)


def _build_each(node: Any, prefix: str) -> list[nn.Module]:
    from omegaconf import DictConfig, ListConfig

    from cnnlab.config import instantiate

    if node is None:
        return []
    named = node.items() if isinstance(node, (dict, DictConfig)) else enumerate(node) if isinstance(
        node, (list, ListConfig)) else None
    if named is None:
        raise ConfigError(prefix, node, "a mapping of name: {_target_: ..., options}")
    built = []
    for name, spec in named:
        try:
            built.append(instantiate(spec))
        except ConfigError as error:  # name the full key the user would type
            raise ConfigError(f"{prefix}.{name}.{error.key}", error.value, error.allowed) from None
    return built


def build_augmentation(node: Any, seed: int) -> Augmentation:
    """The Augmentation of an `augmentation` config node: `transforms` in order, then one of `mix` per batch."""
    return Augmentation(_build_each(node.get("transforms"), "augmentation.transforms"), seed=seed,
                        mixers=_build_each(node.get("mix"), "augmentation.mix"))
