"""The networks of the teaching material: Keras-book LeNet, classic LeNet-5, the cats-vs-dogs CNN and an MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnnlab.errors import ConfigError
from cnnlab.models import knobs, sizing


class ImageClassifier(nn.Module):
    """features -> flatten -> classifier; the flattened size is measured once with a dummy image."""

    name = "model"

    def __init__(self, in_channels: int, image_size: int):
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size

    def feature_size(self, features: nn.Module) -> int:
        """Number of features `features` produces for one image; a clear error if the image is too small."""
        out = sizing.probe(features, self.in_channels, self.image_size)
        if out is None:
            raise sizing.too_small(self.name, self.image_size, self.smallest_input(features))
        return out.numel()

    def smallest_input(self, features: nn.Module) -> int:
        return sizing.smallest_size(features, self.in_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class TwoConvNet(ImageClassifier):
    """conv -> maxpool 2/2 -> conv -> maxpool 2/2 -> flatten -> dense -> output: Keras-book LeNet and simple_cnn."""

    filters: tuple[int, int] = (20, 50)
    kernel = 5
    hidden = 500
    default_input = (1, 10, 28)  # in_channels, num_classes, image_size when not given

    def __init__(self, in_channels: int | None = None, num_classes: int | None = None, image_size: int | None = None,
                 activation: str = "relu", dropout: float = 0.0, batch_norm: bool = False, init: str = "default"):
        channels, classes, size = (given if given is not None else default for given, default in
                                   zip((in_channels, num_classes, image_size), self.default_input))
        super().__init__(channels, size)
        knobs.check_dropout(dropout)
        first, second = self.filters
        self.features = nn.Sequential(
            *knobs.conv_block(channels, first, self.kernel, activation, batch_norm),
            nn.MaxPool2d(2, 2),
            *knobs.conv_block(first, second, self.kernel, activation, batch_norm),
            nn.MaxPool2d(2, 2),
        )
        self.classifier = nn.Sequential(
            *knobs.dense_block(self.feature_size(self.features), self.hidden, activation, batch_norm, dropout),
            nn.Linear(self.hidden, classes),
        )
        knobs.initialize(self, init, activation)


class KerasLeNet(TwoConvNet):
    """Keras-book LeNet: conv 20@5x5, maxpool 2/2, conv 50@5x5, maxpool 2/2, dense 500, dense classes."""

    name = "lenet"


class LeNet5(ImageClassifier):
    """LeCun et al. 1998: C1 6@5x5, S2, C3 16@5x5, S4, C5 120@5x5, F6 84, output; images under 32 px are padded."""

    name = "lenet5"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 32, activation: str = "relu",
                 pool: str = "avg", dropout: float = 0.0, batch_norm: bool = False, init: str = "default"):
        super().__init__(in_channels, image_size)
        knobs.check_dropout(dropout)
        if pool not in ("avg", "max"):
            raise ConfigError("model.pool", pool, "avg or max")
        subsample = nn.AvgPool2d if pool == "avg" else nn.MaxPool2d
        # The 1998 network reads 32x32 images; MNIST-sized ones are zero-padded to that in C1.
        padding = (32 - image_size + 1) // 2 if 24 <= image_size < 32 else 0
        self.features = nn.Sequential(
            *knobs.conv_block(in_channels, 6, 5, activation, batch_norm, padding=padding),  # C1
            subsample(2, 2),  # S2
            *knobs.conv_block(6, 16, 5, activation, batch_norm),  # C3
            subsample(2, 2),  # S4
            *knobs.conv_block(16, 120, 5, activation, batch_norm),  # C5
        )
        self.classifier = nn.Sequential(
            *knobs.dense_block(self.feature_size(self.features), 84, activation, batch_norm, dropout),  # F6
            nn.Linear(84, num_classes),
        )
        knobs.initialize(self, init, activation)

    def smallest_input(self, features: nn.Module) -> int:
        return 24  # 24-31 px are padded up to the 32 px the network reads; smaller images are not


class MLP(ImageClassifier):
    """Fully connected network on the flattened image (784-400-256-10 on MNIST-sized input)."""

    name = "mlp"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 hidden: Sequence[int] = (400, 256), activation: str = "relu", dropout: float = 0.0,
                 batch_norm: bool = False, init: str = "default"):
        super().__init__(in_channels, image_size)
        knobs.check_dropout(dropout)
        if not all(isinstance(h, int) and h >= 1 for h in hidden):
            raise ConfigError("model.hidden", list(hidden), "a list of positive layer widths")
        self.features = nn.Identity()
        sizes = [in_channels * image_size * image_size, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes, sizes[1:]):
            layers += knobs.dense_block(fan_in, fan_out, activation, batch_norm, dropout)
        self.classifier = nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes))
        knobs.initialize(self, init, activation)


class SimpleCNN(TwoConvNet):
    """The cats-vs-dogs network: conv 32@3x3, maxpool 2/2, conv 32@3x3, maxpool 2/2, dense 128, output (64x64x3)."""

    name = "simple_cnn"
    filters, kernel, hidden = (32, 32), 3, 128
    default_input = (3, 2, 64)
