"""A look inside a network: its conv stages, their feature maps, Grad-CAM heat maps and its first-layer filters.

Works on any nn.Module (the seed networks, the torchvision ones, a user's own) by watching one forward pass with
hooks, never by knowing a network's class:

- a *conv stage* is a run of modules, in the order they finish, whose output keeps one spatial size and which
  holds at least one Conv2d; the stage is read at the module that finishes last at that size (LeNet: the ReLU
  after each conv; a ResNet: `layer1`..`layer4`; a block's own residual sum is inside it);
- Grad-CAM (Selvaraju et al. 2017) weighs a stage's channels by the mean gradient of a class score over their
  pixels, keeps the positive part of the weighted sum and resizes it to the input (bilinear).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.errors import ConfigError


@dataclass(frozen=True)
class Stage:
    name: str  # the module's name in model.named_modules()
    channels: int
    size: tuple[int, int]  # (height, width) of its output


def _watch(model: nn.Module, images: Tensor) -> list[tuple[str, nn.Module, Tensor]]:
    """(name, module, output) of every module that returned a tensor, in the order they finished."""
    seen: list[tuple[str, nn.Module, Tensor]] = []
    _forward_watched(model, images, {name for name, _ in model.named_modules() if name},
                     lambda name, mod, output: seen.append((name, mod, output)))
    return seen


def _forward_watched(model: nn.Module, images: Tensor, names: set[str], note: Any) -> None:
    """One eval-mode, no-grad forward pass calling note(name, module, output) for each named module that returns a
    tensor; the model's mode and hooks are as before afterwards."""
    handles = [module.register_forward_hook(
        lambda mod, _inputs, output, name=name: note(name, mod, output) if isinstance(output, Tensor) else None)
        for name, module in model.named_modules() if name in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(images)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def conv_stages(model: nn.Module, images: Tensor) -> list[Stage]:
    """The network's conv stages, input side first (empty for a network without convolutions, e.g. an MLP)."""
    stages: list[Stage] = []
    group_size, has_conv, last = None, False, None
    for name, module, output in [*_watch(model, images[:1]), ("", None, None)]:
        size = tuple(output.shape[-2:]) if output is not None and output.ndim == 4 else None
        if size != group_size:  # a new spatial size (or the end): close the group before it
            if has_conv and last is not None:
                stages.append(last)
            group_size, has_conv, last = size, False, None
        if size is not None:
            has_conv = has_conv or isinstance(module, nn.Conv2d)
            last = Stage(name, int(output.shape[1]), size)
    # A module reused at several places (a shared ReLU) is one stage: keep the place it is read last.
    unique = {stage.name: stage for stage in stages}
    return [stage for stage in stages if unique[stage.name] is stage]


def find_layer(model: nn.Module, images: Tensor, name: str | None) -> Stage:
    """The stage `name` (any module with a 4-D output), or the last conv stage; ConfigError if there is none."""
    stages = conv_stages(model, images)
    if name is None:
        if not stages:
            raise ConfigError("--layer", None, message=(
                f"{type(model).__name__} has no convolution layers: no feature maps or Grad-CAM to draw"))
        return stages[-1]
    outputs = {n: out for n, _, out in _watch(model, images[:1])}
    if name not in outputs or outputs[name].ndim != 4:
        choices = ", ".join(stage.name for stage in stages) or "none (no convolutions)"
        raise ConfigError("--layer", name, message=(
            f"--layer {name}: not a module of {type(model).__name__} with a 4-D (image-like) output; "
            f"its conv stages are {choices}"))
    output = outputs[name]
    return Stage(name, int(output.shape[1]), tuple(output.shape[-2:]))


def feature_maps(model: nn.Module, images: Tensor, stages: list[Stage]) -> dict[str, Tensor]:
    """Each stage's output for the images, (B, C, h, w), on the CPU."""
    captured: dict[str, Tensor] = {}
    _forward_watched(model, images, {stage.name for stage in stages},
                     lambda name, _mod, output: captured.__setitem__(name, output.detach().float().cpu().clone()))
    return captured


def grad_cam(model: nn.Module, images: Tensor, layer: str, classes: Tensor) -> Tensor:
    """Grad-CAM maps (B, H, W) in [0, 1] at the input's size, for class `classes[i]` of image i, read at `layer`.

    A map is all zeros where no pixel of the layer pushes the class score up.
    """
    module = model.get_submodule(layer)
    captured: list[Tensor] = []
    handle = module.register_forward_hook(lambda _mod, _inputs, output: captured.append(output))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            scores = model(images.detach().requires_grad_(False))
            activations = captured[-1]  # a reused module: the last call is the stage
            chosen = scores.gather(1, classes.view(-1, 1).to(scores.device)).sum()
            (gradients,) = torch.autograd.grad(chosen, activations)
    finally:
        model.train(was_training)
        handle.remove()
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations.detach()).sum(dim=1, keepdim=True)).float()
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).cpu()


def first_layer_filters(model: nn.Module, channels: int, image_size: int) -> tuple[str, Tensor] | None:
    """(name, weights) of the first layer that reads the image, as (N, C, kh, kw) pictures in [0, 1]:
    a Conv2d's kernels, or a first Linear layer's rows reshaped to the image (an MLP's templates)."""
    first = next(((name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if first is None:
        return None
    name, module = first
    weights = module.weight.detach().float().cpu()
    if isinstance(module, nn.Linear):
        if module.in_features != channels * image_size * image_size:
            return None
        weights = weights.view(-1, channels, image_size, image_size)
    low = weights.flatten(1).min(dim=1).values.view(-1, 1, 1, 1)
    high = weights.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    return name, (weights - low) / (high - low).clamp_min(1e-12)


def most_confidently_wrong(probabilities: Tensor, labels: Tensor, count: int) -> Tensor:
    """Indices of up to `count` wrongly classified images, the most confident (in the wrong class) first."""
    confidence, predicted = probabilities.max(dim=1)
    wrong = (predicted != labels).nonzero().flatten()
    order = confidence[wrong].argsort(descending=True, stable=True)
    return wrong[order][:count]


def per_class_accuracy(probabilities: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Accuracy on each class's images (NaN for a class without images)."""
    hits = (probabilities.argmax(dim=1) == labels).float()
    total = torch.bincount(labels, minlength=num_classes).float()
    right = torch.bincount(labels, weights=hits, minlength=num_classes)
    return torch.where(total > 0, right / total.clamp_min(1), torch.full_like(total, float("nan")))
