"""Test-time augmentation: the views of a batch whose class probabilities `eval` and `predict` average.

  none        the image itself
  flip        the image and its horizontal mirror (2 views)
  shift       the image and the image moved by `shift_pixels` up, down, left and right (5 views)
  flip_shift  both: the image and its mirror, each unmoved and moved four ways (10 views)

Moved images keep their size: the edge rows or columns are repeated into the space left behind. A dataset whose
classes change under a mirror (digits, characters) says `flip_ok: false` in its YAML, and flips are refused there.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from cnnlab.errors import ConfigError

MODES = ("none", "flip", "shift", "flip_shift")


def check_tta(mode: str, flip_ok: bool, dataset: str = "this dataset") -> None:
    """ConfigError for an unknown mode, or a flip on a dataset that does not allow them."""
    if mode not in MODES:
        raise ConfigError("tta", mode, "one of " + ", ".join(MODES))
    if "flip" in mode and not flip_ok:
        raise ConfigError("tta", mode, message=(
            f"tta={mode}: {dataset} does not allow flips (dataset.flip_ok=false: a mirrored image shows another "
            "class or none); use tta=shift or tta=none"))


def check_for_dataset(mode: str, dataset: Any) -> None:
    """check_tta against a dataset config: its `flip_ok`, true or false (configs saved before the key existed allow
    flips)."""
    flip_ok = dataset.get("flip_ok", True)
    if not isinstance(flip_ok, bool):  # a string "false" would read as true
        raise ConfigError("dataset.flip_ok", flip_ok, "true or false")
    source = str(dataset.get("source", {}).get("_target_", "this dataset")).rsplit(".", 1)[-1]
    check_tta(mode, flip_ok, f"dataset {source}")


def shift_pixels(image_size: int) -> int:
    """How far `shift` moves an image: a sixteenth of its side, at least one pixel (2 px on CIFAR's 32)."""
    return max(1, image_size // 16)


def _shift(images: Tensor, down: int, right: int) -> Tensor:
    height, width = images.shape[-2:]
    pad = max(abs(down), abs(right))
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    top, left = pad - down, pad - right
    return padded[..., top: top + height, left: left + width]


def views(images: Tensor, mode: str) -> list[Tensor]:
    """The batches to average over, the images themselves first."""
    bases = [images, images.flip(-1)] if "flip" in mode else [images]
    if "shift" not in mode:
        return bases
    step = shift_pixels(images.shape[-1])
    moves = [(-step, 0), (step, 0), (0, -step), (0, step)]
    return [view for base in bases for view in (base, *(_shift(base, down, right) for down, right in moves))]
