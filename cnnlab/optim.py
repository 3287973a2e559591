"""Optimizer and learning-rate scheduler builders; one small function per scheduler option."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnlab.config import instantiate


@dataclass(frozen=True)
class RunLength:
    """What a scheduler may need to know about the run it schedules."""

    total_steps: int
    steps_per_epoch: int
    max_epochs: int


def build_optimizer(node: Any, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return instantiate(node, params=params)


def build_scheduler(node: Any, optimizer: torch.optim.Optimizer, run: RunLength) -> dict | None:
    """A Lightning lr_scheduler dict (scheduler + interval), or None for a constant lr."""
    if node.get("_target_") is None:
        return None
    return instantiate(node, optimizer=optimizer, run=run)


# ------------------------------------------------------------------ schedulers

class ExpDecay:
    """decay_rate ** (step / decay_steps), the exponent floored when staircase."""

    def __init__(self, decay_rate: float, decay_steps: int, staircase: bool):
        self.decay_rate, self.decay_steps, self.staircase = decay_rate, decay_steps, staircase

    def __call__(self, step: int) -> float:
        exponent = step / self.decay_steps
        if self.staircase:
            exponent = math.floor(exponent)
        return self.decay_rate ** exponent


def exp_decay(optimizer: torch.optim.Optimizer, run: RunLength, decay_rate: float = 0.96, decay_steps: int = 100,
              staircase: bool = False) -> dict:
    """Exponential decay per optimizer step: lr * decay_rate ^ (global_step / decay_steps)."""
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, ExpDecay(decay_rate, decay_steps, staircase))
    return {"scheduler": schedule, "interval": "step"}


def step(optimizer: torch.optim.Optimizer, run: RunLength, step_size: int = 1, gamma: float = 0.5) -> dict:
    """Multiply the lr by gamma every step_size epochs."""
    return {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size, gamma), "interval": "epoch"}
