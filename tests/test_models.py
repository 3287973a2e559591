"""Models: exact parameter counts, knobs, and a clear error for images too small for a network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.config import ConfigError
from cnnlab.models.classic import MLP, KerasLeNet, LeNet5


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_teaching_material():
    assert count(KerasLeNet(1, 10, 28)) == 431_080
    assert count(LeNet5(1, 10, 32)) == 61_706
    assert count(LeNet5(1, 10, 28)) == 61_706  # MNIST-sized input is padded in C1, not re-shaped
    assert count(MLP(1, 10, 28)) == 784 * 400 + 400 + 400 * 256 + 256 + 256 * 10 + 10


@pytest.mark.parametrize("cls", [KerasLeNet, LeNet5, MLP])
def test_forward_gives_one_logit_per_class(cls):
    model = cls(in_channels=3, num_classes=7, image_size=32)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_too_small_image_names_the_smallest_size():
    with pytest.raises(ConfigError, match=r"model lenet5 needs images of at least 24x24 pixels, got 8x8"):
        LeNet5(1, 10, image_size=8)
    with pytest.raises(ConfigError, match=r"model lenet needs images of at least 16x16 pixels, got 15x15"):
        KerasLeNet(1, 10, image_size=15)
    assert KerasLeNet(1, 10, image_size=16)(torch.zeros(1, 1, 16, 16)).shape == (1, 10)


def test_knobs_change_the_module():
    plain = KerasLeNet(activation="relu")
    assert any(isinstance(m, nn.ReLU) for m in plain.modules())
    tanh = KerasLeNet(activation="tanh", batch_norm=True, dropout=0.5)
    assert any(isinstance(m, nn.Tanh) for m in tanh.modules())
    assert not any(isinstance(m, nn.ReLU) for m in tanh.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in tanh.modules())
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in tanh.modules())


def test_init_schemes_set_the_weight_statistics():
    torch.manual_seed(0)
    lecun = MLP(1, 10, 28, hidden=[2000], init="lecun")
    std = lecun.classifier[0].weight.std().item()
    assert abs(std - (1 / 784) ** 0.5) < 0.002
    he = MLP(1, 10, 28, hidden=[2000], init="he")
    assert abs(he.classifier[0].weight.std().item() - (2 / 784) ** 0.5) < 0.002
    assert torch.all(he.classifier[0].bias == 0)


def test_unknown_activation_is_a_config_error():
    with pytest.raises(ConfigError, match="model.activation='swish'"):
        MLP(activation="swish")
