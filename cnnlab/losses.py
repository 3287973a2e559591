"""Losses and the output head each needs: the module applies the head, so users never pair them by hand.

Each loss is one function returning an Objective. `head` names what the loss reads:
  logits     the raw model output
  log_probs  log_softmax of it
  probs      softmax of it
  sigmoid    per-class sigmoid of it
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

HEADS: dict[str, Callable[[Tensor], Tensor]] = {
    "logits": lambda raw: raw,
    "log_probs": lambda raw: F.log_softmax(raw, dim=1),
    "probs": lambda raw: F.softmax(raw, dim=1),
    "sigmoid": torch.sigmoid,
}


@dataclass(frozen=True)
class Objective:
    """A loss function on head(raw output) and integer class targets."""

    name: str
    head: str
    fn: Callable[[Tensor, Tensor], Tensor]

    def __call__(self, raw: Tensor, target: Tensor) -> Tensor:
        return self.fn(HEADS[self.head](raw), target)

    def probabilities(self, raw: Tensor) -> Tensor:
        """Class probabilities for metrics and prediction (softmax of the raw output)."""
        return F.softmax(raw.float(), dim=1)


def cross_entropy(label_smoothing: float = 0.0) -> Objective:
    """Softmax cross-entropy on logits."""
    return Objective("ce", "logits", partial(F.cross_entropy, label_smoothing=label_smoothing))


def nll() -> Objective:
    """Negative log-likelihood on log-probabilities."""
    return Objective("nll", "log_probs", F.nll_loss)
