"""The input-size guarantee every model gives: an image too small for it is a one-line ConfigError, not a crash."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnnlab.errors import ConfigError

LARGEST_PROBE = 512


def probe(module: nn.Module, channels: int, size: int) -> Tensor | None:
    """`module`'s output for one blank size x size image (in eval mode), or None when it cannot take that size."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, channels, size, size))
    except (RuntimeError, ValueError):
        return None
    finally:
        module.train(was_training)
    return out if out.numel() > 0 else None


def smallest_size(module: nn.Module, channels: int) -> int:
    """The smallest square image `module` takes, or LARGEST_PROBE + 1 if none up to LARGEST_PROBE does.

    Sizes double from 1 until one fits, then a binary search finds the edge: few probes, all of them small.
    """
    fits = 1
    while probe(module, channels, fits) is None:
        if fits >= LARGEST_PROBE:
            return LARGEST_PROBE + 1
        fits = min(2 * fits, LARGEST_PROBE)
    low = fits // 2 + 1
    while low < fits:  # fits works; everything below low does not
        middle = (low + fits) // 2
        if probe(module, channels, middle) is None:
            low = middle + 1
        else:
            fits = middle
    return fits


def too_small(name: str, size: int, smallest: int) -> ConfigError:
    """The one-line error for an image below the model's smallest input."""
    return ConfigError(
        "dataset.image_size", size,
        message=(f"model {name} needs images of at least {smallest}x{smallest} pixels, got {size}x{size}: "
                 f"set dataset.image_size={smallest} or larger"),
    )
