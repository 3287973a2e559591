"""A dataset as tensors (`Arrays`) and the one conversion every image goes through (`fit_images`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from cnnlab.errors import ConfigError

# ITU-R 601 luma, as Pillow's convert("L"): every RGB-to-gray conversion in cnnlab uses these.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass
class Arrays:
    """A dataset's images and labels; `test_*` is None without an official test split.

    Labels are int64 (N,) or, multi-label, float 0/1 (N, classes).

    Images are uint8 (N, C, H, W) tensors, or `ImageFiles` (cnnlab.data.folders) for sets decoded on demand.
    """

    train_images: Any
    train_labels: torch.Tensor
    test_images: Any = None
    test_labels: torch.Tensor | None = None



def fit_images(images: Tensor, channels: int, size: int) -> Tensor:
    """Resize (antialiased bilinear) and convert channel count once, on the whole uint8 tensor."""
    if images.shape[1] != channels:
        if images.shape[1] == 1:
            images = images.expand(-1, channels, -1, -1)
        elif channels == 1:
            weights = torch.tensor(GRAY_WEIGHTS)[: images.shape[1]]
            images = (images.float() * weights[None, :, None, None]).sum(1, keepdim=True) / weights.sum()
            images = images.round().clamp(0, 255).to(torch.uint8)
        else:
            raise ConfigError("dataset.channels", channels,
                              f"1 or {images.shape[1]}: the images have {images.shape[1]} channels")
    if images.shape[-2:] != (size, size):
        out = []
        for chunk in images.split(4096):
            resized = torch.nn.functional.interpolate(chunk.float(), size=(size, size), mode="bilinear",
                                                      antialias=True, align_corners=False)
            out.append(resized.round().clamp(0, 255).to(torch.uint8))
        images = torch.cat(out)
    return images.contiguous()
