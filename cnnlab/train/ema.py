"""The exponential moving average of a network's weights (`ema.*` in conf/train.yaml), as timm trains with it.

torch's AveragedModel keeps the copy (a submodule of the LightningModule, so checkpoints save it and a resume
restores it exactly) and its EMA function does the arithmetic: after the first optimizer step the copy equals the
weights, after every later one ema = decay * ema + (1 - decay) * weights. Buffers (batch-norm statistics) are
averaged alike. timm's optional warmup lowers the decay of the first steps: at update t (counting from 0),
decay_t = min(decay, 1 - (1 + t / warmup_gamma) ** -warmup_power), so the average forgets the random init quickly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def warmup_decay(step: int, decay: float, gamma: float, power: float) -> float:
    """timm ModelEmaV3's decay at update `step` with warmup (its min_decay 0)."""
    return max(0.0, min(decay, 1.0 - (1.0 + step / gamma) ** -power))


def ema_function(decay: float, warmup: bool = False, gamma: float = 1.0, power: float = 2 / 3) -> Callable[..., None]:
    """AveragedModel's multi_avg_fn: torch's EMA function with a fixed decay, or the decay of the warmup at the
    number of updates done so far (AveragedModel passes it)."""
    if not warmup:
        return get_ema_multi_avg_fn(decay)

    def update(averaged: list[Tensor], current: list[Tensor], updates: Tensor) -> None:
        get_ema_multi_avg_fn(warmup_decay(int(updates), decay, gamma, power))(averaged, current, updates)

    return update


def build_ema(model: nn.Module, ema: Any) -> AveragedModel:
    """The averaged copy of `model` for the `ema` config node (enabled, decay, warmup, warmup_gamma, warmup_power)."""
    function = ema_function(float(ema.get("decay", 0.9998)), bool(ema.get("warmup", False)),
                            float(ema.get("warmup_gamma", 1.0)), float(ema.get("warmup_power", 2 / 3)))
    averaged = AveragedModel(model, multi_avg_fn=function, use_buffers=True)
    averaged.requires_grad_(False)  # never trained: the optimizer and DDP leave it alone
    return averaged


def ema_enabled(ema: Any) -> bool:
    return bool(ema is not None and ema.get("enabled", False))


@torch.no_grad()
def copy_averaged_weights(averaged: AveragedModel, model: nn.Module) -> None:
    """Put the averaged weights (and buffers) into `model`: what eval, predict, export and inspect then use."""
    model.load_state_dict(averaged.module.state_dict())
