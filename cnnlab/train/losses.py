"""Losses and the output head each needs: the objective applies the head, so users never pair them by hand.

Each loss is one function returning an Objective. `head` (a key of HEADS) is the one place that decides
  - what the loss reads from the model's raw output: the logits, log_softmax or softmax of them;
  - how many output units the model needs (a sigmoid head on a two-class task needs a single logit);
  - the class probabilities that metrics, the confusion matrix and `predict` see, whatever the loss;
  - whether multi-label 0/1 targets can be represented (only independent per-class sigmoids can).

Targets: int64 class indices (B,), or float (B, C) vectors: class probabilities after mixup/cutmix, or 0/1
labels on multi-label data. Every loss takes both; losses with a torch reference for index targets call it.

Class weights (`class_weights: balanced` or a list, one number per class; losses whose YAML has the key):
  ce, nll, multi_margin  torch's `weight=`: each sample weighted by its class (index targets: weighted mean,
                         as torch does; soft targets: the class weights inside the sum over classes, mean over
                         samples, as torch's cross_entropy does for probability targets)
  bce                    the weight of each class's positive term (torch's `pos_weight`); on a two-class task
                         with one logit, [w0, w1] weight the samples of class 0 and class 1
  balanced               n_samples / (n_classes * count) from the training split's labels (scikit-learn's rule);
                         on multi-label data negatives / positives per label
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.errors import ConfigError


def _softmax_probabilities(raw: Tensor, multilabel: bool) -> Tensor:
    return F.softmax(raw.float(), dim=1)


def _sigmoid_probabilities(raw: Tensor, multilabel: bool) -> Tensor:
    """Per-label sigmoids (multi-label); [1 - p, p] for one logit; else sigmoids normalised to sum to 1."""
    probs = torch.sigmoid(raw.float())
    if multilabel:
        return probs
    if probs.shape[1] == 1:
        return torch.cat([1 - probs, probs], dim=1)
    return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)


@dataclass(frozen=True)
class Head:
    """What a loss reads from the raw output, and what users see of it as class probabilities."""

    loss_input: Callable[[Tensor], Tensor]
    probabilities: Callable[[Tensor, bool], Tensor]  # (raw, multilabel) -> (B, num_classes)
    multilabel: bool = False  # independent per-class outputs: can say "several classes at once"
    one_logit_for_two_classes: bool = False
    # The probabilities' order of the classes is the raw outputs' (softmax): the predicted class is the argmax of
    # the raw output, and the training metrics need no probabilities (~25 us a step on a small model's CPU step).
    ranks_like_raw: bool = False

    def units(self, num_classes: int, multilabel: bool) -> int:
        return 1 if self.one_logit_for_two_classes and num_classes == 2 and not multilabel else num_classes


HEADS: dict[str, Head] = {
    "logits": Head(lambda raw: raw, _softmax_probabilities, ranks_like_raw=True),
    "log_probs": Head(lambda raw: F.log_softmax(raw, dim=1), _softmax_probabilities, ranks_like_raw=True),
    "probs": Head(lambda raw: F.softmax(raw, dim=1), _softmax_probabilities, ranks_like_raw=True),
    # The loss gets the logits and applies the sigmoid itself, in its numerically stable log-sigmoid form.
    "sigmoid": Head(lambda raw: raw, _sigmoid_probabilities, multilabel=True, one_logit_for_two_classes=True),
}


class Objective(nn.Module):
    """A loss on head(raw output); knows the task (classes, multi-label) and holds the class weights.

    An nn.Module so that its class-weight buffer follows the model to its device and into checkpoints.
    """

    def __init__(self, name: str, head: str, fn: Callable[..., Tensor], class_weights: Any = None):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; one of {sorted(HEADS)}")
        self.name, self.head, self.fn = name, head, fn
        self.class_weights = class_weights  # the config value: None, "balanced" or a list
        self.num_classes: int | None = None
        self.multilabel = False
        self.register_buffer("class_weight", None)

    def output_units(self, num_classes: int, multilabel: bool = False) -> int:
        """How many outputs the model needs for this loss on this task."""
        return HEADS[self.head].units(num_classes, multilabel)

    def for_task(self, num_classes: int, multilabel: bool = False) -> Objective:
        """Check the loss fits the task (ConfigError if not) and set up its class weights; returns self."""
        if multilabel and not HEADS[self.head].multilabel:
            raise ConfigError("loss", self.name, message=(
                f"loss={self.name} cannot learn multi-label targets (its {self.head} head scores one class per "
                "image): use a per-class sigmoid loss, loss=bce or loss=focal"))
        self.num_classes, self.multilabel = num_classes, multilabel
        weights = self.class_weights
        if weights is None:
            self.class_weight = None
        elif weights == "balanced":
            self.class_weight = torch.ones(num_classes)  # filled from the training labels by fit_class_weights
        elif _is_weight_list(weights, num_classes):
            self.class_weight = torch.tensor([float(w) for w in weights])
        else:
            raise ConfigError("loss.class_weights", weights,
                              f"balanced, or a list of {num_classes} positive numbers (one per class), or null")
        return self

    @property
    def needs_class_counts(self) -> bool:
        return self.class_weights == "balanced"

    def fit_class_weights(self, train_labels: Tensor) -> None:
        """`class_weights: balanced`: weights from the training split's labels."""
        weights = balanced_weights(train_labels, self.num_classes, self.multilabel)
        self.class_weight.copy_(weights.to(self.class_weight))

    def forward(self, raw: Tensor, target: Tensor) -> Tensor:
        """The loss of the raw model output against the targets."""
        weight = {} if self.class_weights is None else {"weight": self.class_weight}
        return self.fn(HEADS[self.head].loss_input(raw), target, **weight)

    def probabilities(self, raw: Tensor) -> Tensor:
        """Class probabilities (B, num_classes) for metrics and prediction; per-label ones on multi-label data."""
        return HEADS[self.head].probabilities(raw, self.multilabel)

    def decision_scores(self, raw: Tensor) -> Tensor:
        """What the epoch accuracy decides on (EpochMeans): scores whose argmax is the predicted class (the raw
        output itself where the head's probabilities rank classes as it does), per-label probabilities on
        multi-label data."""
        head = HEADS[self.head]
        return raw if head.ranks_like_raw and not self.multilabel else head.probabilities(raw, self.multilabel)

    def extra_repr(self) -> str:
        return f"name={self.name}, head={self.head}, class_weights={self.class_weights}"


class WrappedLoss(Objective):
    """Any `loss(outputs, targets)` (a torch.nn loss, a function) on the head its config names (`loss.input`).

    The head's transform is applied to the raw output before the loss sees it (logits as they are, log_softmax,
    softmax); with the sigmoid head the targets come shaped like the logits (one-hot floats, the class-1 column for
    a single logit), as torch's BCEWithLogitsLoss takes them. Otherwise targets are passed as they come: class
    indices, or probability vectors after mixup/cutmix. Class weights reach the loss as torch's `weight=`: the
    `weight` buffer of a torch loss, or a `weight=` keyword of a function; a loss with neither refuses them.
    """

    def __init__(self, name: str, head: str, loss: Callable[..., Tensor], class_weights: Any = None):
        super().__init__(name, head, loss, class_weights)
        self.weight_route = _weight_route(loss)

    def for_task(self, num_classes: int, multilabel: bool = False) -> Objective:
        if self.class_weights is not None and self.weight_route is None:
            raise ConfigError("loss.class_weights", self.class_weights, message=(
                f"loss.class_weights={self.class_weights!r}: {self.name} takes no weight= (neither a torch loss's "
                "weight nor a weight keyword), so class weights cannot reach it; remove loss.class_weights"))
        super().for_task(num_classes, multilabel)
        if self.weight_route == "buffer" and self.class_weight is not None:
            self.fn.weight = self.class_weight.clone()
        return self

    def fit_class_weights(self, train_labels: Tensor) -> None:
        super().fit_class_weights(train_labels)
        if self.weight_route == "buffer":
            self.fn.weight.copy_(self.class_weight.to(self.fn.weight))

    def forward(self, raw: Tensor, target: Tensor) -> Tensor:
        if self.head == "sigmoid":
            target = _sigmoid_targets(target, raw)
        inputs = HEADS[self.head].loss_input(raw)
        if self.weight_route == "keyword" and self.class_weights is not None:
            return self.fn(inputs, target, weight=self.class_weight)
        return self.fn(inputs, target)


def _weight_route(loss: Callable[..., Tensor]) -> str | None:
    """How class weights reach a plain loss: its `weight` buffer (torch losses), a `weight=` keyword, or not at all."""
    if isinstance(loss, nn.Module) and "weight" in loss._buffers:
        return "buffer"
    call = loss.forward if isinstance(loss, nn.Module) else loss
    try:
        parameters = inspect.signature(call).parameters
    except (TypeError, ValueError):
        return None
    if "weight" in parameters or any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return "keyword"
    return None


def _is_weight_list(weights: Any, num_classes: int) -> bool:
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or len(weights) != num_classes:
        return False
    return all(isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < float("inf") for w in weights)


def balanced_weights(labels: Tensor, num_classes: int, multilabel: bool) -> Tensor:
    """scikit-learn's n_samples / (n_classes * count); negatives / positives per label for multi-label data."""
    if multilabel:
        positives = labels.float().sum(0)
        return (len(labels) - positives).clamp_min(1) / positives.clamp_min(1)
    counts = torch.bincount(labels, minlength=num_classes).float()
    return len(labels) / (num_classes * counts.clamp_min(1))


def dense_targets(target: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """Float (B, C) target vectors: one-hot for class indices, as given for soft or multi-label targets."""
    if target.ndim == 1:
        return F.one_hot(target, num_classes).to(dtype)
    return target.to(dtype)


def _sigmoid_targets(target: Tensor, logits: Tensor) -> Tensor:
    """Targets shaped like the logits: one-vs-all vectors, or the class-1 column when one logit scores two classes."""
    classes = 2 if logits.shape[1] == 1 else logits.shape[1]
    dense = dense_targets(target, classes, logits.dtype)
    return dense[:, 1:] if logits.shape[1] == 1 else dense


# ---------------------------------------------------------------- the losses (one function each)

def cross_entropy(label_smoothing: float = 0.0, class_weights: Any = None) -> Objective:
    """Softmax cross-entropy on logits (torch's cross_entropy; takes probability targets as they are)."""
    _check_fraction("loss.label_smoothing", label_smoothing)

    def loss(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)

    return Objective("ce", "logits", loss, class_weights)


def nll(class_weights: Any = None) -> Objective:
    """Negative log-likelihood of the target class on log_softmax outputs."""

    def loss(log_probs: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        if target.ndim == 1:
            return F.nll_loss(log_probs, target, weight=weight)
        weighted = target if weight is None else target * weight
        return -(weighted * log_probs).sum(1).mean()

    return Objective("nll", "log_probs", loss, class_weights)


def binary_cross_entropy(class_weights: Any = None) -> Objective:
    """Sigmoid cross-entropy: one logit for two classes, one-vs-all for more, per label on multi-label data."""

    def loss(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        target = _sigmoid_targets(target, logits)
        if weight is not None and logits.shape[1] == 1:
            # [w0, w1] weight the samples of class 0 and 1: w0 * BCE with the positive term weighted w1 / w0.
            return weight[0] * F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight[1:] / weight[0])
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)

    return Objective("bce", "sigmoid", loss, class_weights)


def multi_margin(p: int = 1, margin: float = 1.0, class_weights: Any = None) -> Objective:
    """Multi-class hinge (torch's multi_margin_loss); soft targets get the target-weighted mean of its values."""
    if p not in (1, 2):
        raise ConfigError("loss.p", p, "1 or 2")
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or margin < 0:
        raise ConfigError("loss.margin", margin, "a number >= 0")

    def loss(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        if target.ndim == 1:
            return F.multi_margin_loss(logits, target, p=p, margin=margin, weight=weight)
        classes = logits.shape[1]
        # hinge[b, y] = sum_{i != y} max(0, margin - x[b, y] + x[b, i])^p / C: the loss were the target y.
        gaps = (margin - logits.unsqueeze(2) + logits.unsqueeze(1)).clamp_min(0).pow(p)
        hinge = (gaps.sum(2) - margin**p) / classes  # drops the i == y term, which is margin^p
        if weight is not None:
            hinge = hinge * weight
        return (target.to(hinge.dtype) * hinge).sum(1).mean()

    return Objective("multi_margin", "logits", loss, class_weights)


def mean_squared_error() -> Objective:
    """Squared error between softmax probabilities and one-hot targets, summed over classes, mean over samples."""

    def loss(probs: Tensor, target: Tensor) -> Tensor:
        return (probs - dense_targets(target, probs.shape[1], probs.dtype)).pow(2).sum(1).mean()

    return Objective("mse", "probs", loss)


def mean_absolute_error() -> Objective:
    """Absolute error between softmax probabilities and one-hot targets, summed over classes, mean over samples."""

    def loss(probs: Tensor, target: Tensor) -> Tensor:
        return (probs - dense_targets(target, probs.shape[1], probs.dtype)).abs().sum(1).mean()

    return Objective("l1", "probs", loss)


def kl_divergence(label_smoothing: float = 0.0) -> Objective:
    """KL(target || softmax): the target one-hot (or soft), smoothed towards uniform by label_smoothing."""
    _check_fraction("loss.label_smoothing", label_smoothing)

    def loss(log_probs: Tensor, target: Tensor) -> Tensor:
        classes = log_probs.shape[1]
        dense = dense_targets(target, classes, log_probs.dtype)
        if label_smoothing:
            dense = dense * (1 - label_smoothing) + label_smoothing / classes
        return F.kl_div(log_probs, dense, reduction="batchmean")

    return Objective("kl", "log_probs", loss)


def focal(gamma: float = 2.0, alpha: float | None = 0.25) -> Objective:
    """Sigmoid focal loss (Lin et al. 2017, torchvision's): one-vs-all like bce, easy examples down-weighted."""
    if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or gamma < 0:
        raise ConfigError("loss.gamma", gamma, "a number >= 0")
    if alpha is not None and not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
        raise ConfigError("loss.alpha", alpha, "a number in [0, 1], or null for no positive/negative balancing")

    def loss(logits: Tensor, target: Tensor) -> Tensor:
        from torchvision.ops import sigmoid_focal_loss

        return sigmoid_focal_loss(logits, _sigmoid_targets(target, logits), alpha=-1 if alpha is None else alpha,
                                  gamma=gamma, reduction="mean")

    return Objective("focal", "sigmoid", loss)


def _check_fraction(key: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise ConfigError(key, value, "a number in [0, 1)")
