"""Models: exact parameter counts, a training step for every catalogue model, knobs, too-small images."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn

from cnnlab.config import CONF_DIR
from cnnlab.errors import ConfigError
from cnnlab.models.classic import MLP, KerasLeNet, LeNet5, SimpleCNN
from cnnlab.models.fast import FastCNN, Residual
from cnnlab.models.summary import summarize
from cnnlab.train.build import build_model

CATALOGUE = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml"))


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_teaching_material():
    assert count(KerasLeNet(1, 10, 28)) == 431_080
    assert count(LeNet5(1, 10, 32)) == 61_706
    assert count(LeNet5(1, 10, 28)) == 61_706  # MNIST-sized input is padded in C1, not re-shaped
    assert count(MLP(1, 10, 28)) == 784 * 400 + 400 + 400 * 256 + 256 + 256 * 10 + 10 == 419_226
    assert count(MLP(1, 10, 28, hidden=[32])) == 784 * 32 + 32 + 32 * 10 + 10
    # cats vs dogs on 64x64x3: 896 + 9,248 + 802,944 (14*14*32 -> 128) + the output layer
    assert count(SimpleCNN(3, 2, 64)) == 813_346
    assert count(SimpleCNN(3, 1, 64)) == 813_217  # the Keras original's single sigmoid unit


@pytest.mark.parametrize("cls", [KerasLeNet, LeNet5, MLP, SimpleCNN])
def test_forward_gives_one_logit_per_class(cls):
    model = cls(in_channels=3, num_classes=7, image_size=32)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_too_small_image_names_the_smallest_size():
    with pytest.raises(ConfigError, match=r"model lenet5 needs images of at least 24x24 pixels, got 8x8"):
        LeNet5(1, 10, image_size=8)
    with pytest.raises(ConfigError, match=r"model lenet needs images of at least 16x16 pixels, got 15x15"):
        KerasLeNet(1, 10, image_size=15)
    assert KerasLeNet(1, 10, image_size=16)(torch.zeros(1, 1, 16, 16)).shape == (1, 10)
    with pytest.raises(ConfigError, match=r"model simple_cnn needs images of at least 10x10 pixels, got 9x9"):
        SimpleCNN(3, 2, image_size=9)


def test_knobs_change_the_module():
    plain = KerasLeNet(activation="relu")
    assert any(isinstance(m, nn.ReLU) for m in plain.modules())
    tanh = KerasLeNet(activation="tanh", batch_norm=True, dropout=0.5)
    assert any(isinstance(m, nn.Tanh) for m in tanh.modules())
    assert not any(isinstance(m, nn.ReLU) for m in tanh.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in tanh.modules())
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in tanh.modules())
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Dropout)) for m in SimpleCNN().modules())
    elu = SimpleCNN(activation="elu", batch_norm=True)
    assert sum(isinstance(m, nn.ELU) for m in elu.modules()) == 3
    assert sum(isinstance(m, nn.BatchNorm2d) for m in elu.modules()) == 2


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


def model_config(name: str, channels: int, size: int, classes: int = 5) -> DictConfig:
    """The composed run config for `model=name` on synthetic images of the given shape."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"model={name}", "dataset=synthetic", f"dataset.channels={channels}",
                                           f"dataset.image_size={size}", f"dataset.num_classes={classes}"])


@pytest.mark.slow
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)], ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("name", CATALOGUE)
def test_every_catalogue_model_takes_a_training_step(name: str, channels: int, size: int):
    model = build_model(model_config(name, channels, size))
    rows, total, trainable = summarize(model, (channels, size, size))
    assert total == trainable == count(model)
    # the table follows the forward pass: the last layer run gives the 5 logits (SqueezeNet's as 5x1x1), and the
    # layers run hold the parameters (all of them, but for auxiliary heads an eval-mode pass skips, as in GoogLeNet)
    assert rows and math.prod(rows[-1].output_shape) == 5
    run_params = sum({row.name: row.params for row in rows}.values())
    assert 0.8 * total <= run_params <= total
    first = next(model.parameters())
    before = first.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    images = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    logits = model(images)
    assert logits.shape == (2, 5)
    loss = F.cross_entropy(logits, torch.tensor([0, 3]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(first.detach(), before), "the first layer's weights did not move"


def test_fast_cnn_counts_and_shapes():
    # conv 1->32 (288 + BN 64), conv 32->64 (18,432 + 128), residual 64->64 (36,864 + 128), conv 64->128
    # (73,728 + 256), residual 128->128 (147,456 + 256), linear 128->10 (1,290): 278,890, as the YAML says
    assert count(FastCNN(1, 10, 28)) == 278_890
    assert count(FastCNN(1, 10, 28, widths=[8, 16], depth=0)) == 72 + 16 + 8 * 16 * 9 + 32 + 16 * 10 + 10
    model = FastCNN(in_channels=3, num_classes=7, image_size=32, widths=[8, 16, 32], depth=2, dropout=0.2)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 1 + 2 * (1 + 2)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.2 for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in FastCNN(batch_norm=False).modules())
    # a residual conv adds its input back: zeroed, it passes the stage's activations through unchanged
    residual = next(m for m in model.modules() if isinstance(m, Residual))
    nn.init.zeros_(residual.body[0].weight)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(residual.eval()(x), x + residual.body(x)) and torch.allclose(residual(x), x)


def test_fast_cnn_refuses_bad_knobs_and_too_small_images():
    with pytest.raises(ConfigError, match=r"model fast_cnn needs images of at least 4x4 pixels, got 3x3"):
        FastCNN(1, 10, image_size=3)
    assert FastCNN(1, 10, image_size=4)(torch.zeros(2, 1, 4, 4)).shape == (2, 10)
    with pytest.raises(ConfigError, match=r"model.widths"):
        FastCNN(widths=[32, 0])
    with pytest.raises(ConfigError, match=r"model.depth"):
        FastCNN(depth=-1)
