"""Training-only augmentation on whole batches on the training device, with per-image randomness.

Each transform takes a float batch in [0, 1] of shape (B, C, H, W) and a torch.Generator on the batch's
device, so augmentation has its own seed and costs no per-sample Python.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _uniform(batch: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(batch, generator=generator, device=device)


class RandomFlip(nn.Module):
    """Flip each image horizontally (and/or vertically) with probability p."""

    def __init__(self, p: float = 0.5, horizontal: bool = True, vertical: bool = False):
        super().__init__()
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


class Augmentation(nn.Module):
    """The configured transforms applied in order to training batches."""

    def __init__(self, transforms: list[nn.Module], seed: int):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
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
        if not self.transforms:
            return images
        generator = self.generator(images.device)
        for transform in self.transforms:
            images = transform(images, generator)
        return images
