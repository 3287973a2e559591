"""The knobs every model shares: activation, weight init, batch norm and dropout."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from cnnlab.errors import ConfigError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "selu": lambda: nn.SELU(inplace=True),
    "prelu": nn.PReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}

INITS = ("default", "kaiming", "he", "xavier", "glorot", "lecun")

# The value of each knob that changes nothing. A model class without the knob's keyword (a user's own network)
# is built without it while it has this value; `init` applies to any network (`initialize`); another knob set on
# a class that cannot take it is a one-line error (cnnlab.train.build).
NEUTRAL: dict[str, tuple] = {
    "activation": ("relu", "default"),
    "dropout": (0, None),
    "batch_norm": (False,),
    "init": ("default",),
}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name."""
    if name not in ACTIVATIONS:
        raise ConfigError("model.activation", name, "one of " + ", ".join(ACTIVATIONS))
    return ACTIVATIONS[name]()


def check_init(name: str) -> None:
    if name not in INITS:
        raise ConfigError("model.init", name, "one of " + ", ".join(INITS))


def check_dropout(rate: float) -> None:
    if not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ConfigError("model.dropout", rate, "a rate in [0, 1)")


def initialize(model: nn.Module, scheme: str, nonlinearity: str = "relu") -> None:
    """Re-initialise conv and linear weights (biases to zero) with the named scheme; `default` keeps torch's."""
    check_init(scheme)
    if scheme == "default":
        return
    gain_name = nonlinearity if nonlinearity in ("relu", "leaky_relu", "tanh", "sigmoid", "selu") else "relu"
    for module in model.modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        weight = module.weight
        if scheme in ("kaiming", "he"):
            nn.init.kaiming_normal_(weight, nonlinearity="leaky_relu" if gain_name == "leaky_relu" else "relu")
        elif scheme in ("xavier", "glorot"):
            nn.init.xavier_uniform_(weight, gain=nn.init.calculate_gain(gain_name))
        else:  # lecun: normal with variance 1 / fan_in
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
            nn.init.normal_(weight, 0.0, 1.0 / math.sqrt(fan_in))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def conv_block(in_channels: int, out_channels: int, kernel: int, act: str, batch_norm: bool,
               padding: int = 0) -> list[nn.Module]:
    """conv -> (batch norm) -> activation; the conv drops its bias when batch norm follows."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel, padding=padding, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(activation(act))
    return layers


def dense_block(in_features: int, out_features: int, act: str, batch_norm: bool, dropout: float) -> list[nn.Module]:
    """linear -> (batch norm) -> activation -> (dropout)."""
    layers: list[nn.Module] = [nn.Linear(in_features, out_features, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(out_features))
    layers.append(activation(act))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return layers
