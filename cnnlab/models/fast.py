"""A small, fast CNN for short CPU trainings (the Fashion-MNIST speedrun, docs/speedrun.md).

Built like the ResNet-ish / airbench-style networks of the speedrun literature, sized for a CPU: one cheap conv at
full resolution, then each stage halves the image (max-pool) before its convs, so the wide convs run on small
images; batch norm after every conv, residual convs inside a stage, a global max-pool and one linear layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnnlab.errors import ConfigError
from cnnlab.models import knobs
from cnnlab.models.classic import ImageClassifier


class Residual(nn.Module):
    """x + f(x)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class FastCNN(ImageClassifier):
    """stem conv widths[0] at full size; per further stage: max-pool 2/2, conv to widths[i], `depth` residual convs;
    global max-pool, (dropout), linear. 3x3 convs, batch norm after each (bias-free convs)."""

    name = "fast_cnn"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 widths: Sequence[int] = (32, 64, 128), depth: int = 1, activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = True, init: str = "default"):
        super().__init__(in_channels, image_size)
        knobs.check_dropout(dropout)
        widths = list(widths)
        if len(widths) < 1 or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
            raise ConfigError("model.widths", widths, "a non-empty list of positive conv widths, one per stage")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise ConfigError("model.depth", depth, "a whole number >= 0 of residual convs per stage after the first")

        def conv(fan_in: int, fan_out: int) -> list[nn.Module]:
            return knobs.conv_block(fan_in, fan_out, 3, activation, batch_norm, padding=1)

        layers: list[nn.Module] = conv(in_channels, widths[0])
        for fan_in, fan_out in zip(widths, widths[1:]):
            layers += [nn.MaxPool2d(2, 2), *conv(fan_in, fan_out)]
            layers += [Residual(nn.Sequential(*conv(fan_out, fan_out))) for _ in range(depth)]
        layers += [nn.AdaptiveMaxPool2d(1)]
        self.features = nn.Sequential(*layers)
        self.feature_size(self.features)  # a clear error for an image too small for the pools
        head: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        self.classifier = nn.Sequential(*head, nn.Linear(widths[-1], num_classes))
        knobs.initialize(self, init, activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
