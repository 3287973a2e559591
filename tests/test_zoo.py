"""torchvision networks adapted to the dataset: stems, channels, pretrained weights, knobs and what they refuse."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn

from cnnlab.cli import main
from cnnlab.errors import ConfigError
from cnnlab.models.summary import summarize
from cnnlab.models.zoo import torchvision_model


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def kinds(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules()}


def test_small_images_get_a_stride_1_stem_and_keep_their_resolution():
    small = torchvision_model("resnet18", in_channels=3, num_classes=10, image_size=32)
    assert (small.conv1.kernel_size, small.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(small.maxpool, nn.Identity)
    rows, total, _ = summarize(small, (3, 32, 32))
    assert total == 11_173_962  # the CIFAR ResNet-18 of the literature
    assert next(r.output_shape for r in rows if r.name == "layer4.1.bn2") == (512, 4, 4)
    large = torchvision_model("resnet18", in_channels=3, num_classes=10, image_size=64)
    assert (large.conv1.kernel_size, large.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(large.maxpool, nn.MaxPool2d)
    forced = torchvision_model("resnet18", 3, 10, image_size=64, stem="small")
    assert forced.conv1.kernel_size == (3, 3)


def test_dataset_channels_reach_the_first_conv():
    gray = torchvision_model("mobilenet_v2", in_channels=1, num_classes=7, image_size=28)
    assert gray.features[0][0].in_channels == 1 and gray.features[0][0].stride == (1, 1)
    assert gray(torch.zeros(2, 1, 28, 28)).shape == (2, 7)
    four = torchvision_model("resnet18", in_channels=4, num_classes=3, image_size=64)
    assert four.conv1.weight.shape == (64, 4, 7, 7)


@pytest.mark.parametrize(("arch", "kwargs", "smallest"), [
    ("vgg11", {}, 16),  # four max-pools remain after the small stem
    ("alexnet", {"stem": "imagenet"}, 63),  # 11x11 stride-4 conv and three 3x3 max-pools
])
@pytest.mark.slow
def test_too_small_image_names_model_size_and_smallest(arch: str, kwargs: dict, smallest: int):
    size = 8 if smallest == 16 else 32
    with pytest.raises(ConfigError) as error:
        torchvision_model(arch, 3, 10, image_size=size, **kwargs)
    assert str(error.value) == (f"model {arch} needs images of at least {smallest}x{smallest} pixels, got "
                                f"{size}x{size}: set dataset.image_size={smallest} or larger")
    assert torchvision_model(arch, 3, 10, image_size=smallest, **kwargs) is not None


def test_activation_replaces_every_hidden_activation_and_keeps_gates():
    gelu = torchvision_model("resnet18", 3, 10, 32, activation="gelu")
    assert nn.GELU in kinds(gelu) and nn.ReLU not in kinds(gelu)
    mobile = torchvision_model("mobilenet_v3_large", 3, 10, 32, activation="elu")
    assert nn.ELU in kinds(mobile) and not kinds(mobile) & {nn.ReLU, nn.Hardswish}
    assert nn.Hardsigmoid in kinds(mobile)  # squeeze-excitation gates are not hidden activations
    squeeze = torchvision_model("squeezenet1_1", 3, 10, 32, activation="tanh")
    assert not any(isinstance(m, nn.ReLU) for m in squeeze.features.modules())
    assert isinstance(squeeze.classifier[2], nn.ReLU)  # SqueezeNet's ReLU on class scores is part of its output
    assert squeeze(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("arch", ["googlenet", "densenet121"])
def test_activation_that_the_forward_hard_codes_is_refused(arch: str):
    with pytest.raises(ConfigError, match=rf"model.activation=gelu: {arch}'s forward calls relu itself.*"
                                          r"set model.activation=default"):
        torchvision_model(arch, 3, 10, 32, activation="gelu", options={"init_weights": True} if arch == "googlenet"
                          else {})


@pytest.mark.slow
def test_batch_norm_picks_the_variant_or_is_refused():
    vgg = torchvision_model("vgg11", 3, 10, 32, batch_norm=True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in vgg.modules()) == 8
    assert nn.BatchNorm2d not in kinds(torchvision_model("vgg11", 3, 10, 32, batch_norm=False))
    with pytest.raises(ConfigError, match="model.batch_norm=false: torchvision builds resnet18 with batch norm only"):
        torchvision_model("resnet18", 3, 10, 32, batch_norm=False)
    with pytest.raises(ConfigError, match="model.batch_norm=true: torchvision has no batch-norm variant of squeeze"):
        torchvision_model("squeezenet1_1", 3, 10, 32, batch_norm=True)


def test_dropout_sets_the_rate_or_adds_a_layer_before_the_classifier():
    squeeze = torchvision_model("squeezenet1_1", 3, 10, 32, dropout=0.3)
    assert [m.p for m in squeeze.modules() if isinstance(m, nn.Dropout)] == [0.3]
    assert [m.p for m in torchvision_model("squeezenet1_1", 3, 10, 32).modules() if isinstance(m, nn.Dropout)] == [0.5]
    resnet = torchvision_model("resnet18", 3, 10, 32, dropout=0.2)
    assert isinstance(resnet.fc[0], nn.Dropout) and resnet.fc[0].p == 0.2 and resnet.fc[1].out_features == 10
    assert not any(isinstance(m, nn.Dropout) for m in torchvision_model("resnet18", 3, 10, 32, dropout=0.0).modules())


@pytest.mark.parametrize(("init", "std"), [
    ("default", (2 / (64 * 9)) ** 0.5),  # He, fan-out: what torchvision's ResNets use
    ("lecun", (1 / 27) ** 0.5),
    ("he", (2 / 27) ** 0.5),
    ("xavier", 2 ** 0.5 * (2 / (27 + 64 * 9)) ** 0.5),
])
def test_init_sets_the_first_layer_statistics(init: str, std: float):
    torch.manual_seed(0)
    weight = torchvision_model("resnet18", 3, 10, 32, init=init).conv1.weight  # 64 x 3 x 3 x 3
    assert weight.std().item() == pytest.approx(std, rel=0.08)
    assert abs(weight.mean().item()) < std / 10


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"arch": "resnet9000"}, "model.arch='resnet9000' is not allowed: a torchvision classification model"),
    ({"stem": "cifar"}, "model.stem='cifar' is not allowed: one of auto, small, imagenet"),
    ({"activation": "swish"}, "model.activation='swish' is not allowed: default or one of relu, leaky_relu"),
    ({"dropout": 1.5}, "model.dropout=1.5 is not allowed"),
    ({"init": "orthogonal"}, "model.init='orthogonal' is not allowed"),
    ({"pretrained": True, "init": "he"}, "model.init='he' is not allowed: default when model.pretrained=true"),
    ({"options": {"wings": 2}}, "model.options={'wings': 2}: resnet18: "),
])
def test_bad_options_are_config_errors(kwargs: dict, message: str):
    with pytest.raises(ConfigError) as error:
        torchvision_model(**{"arch": "resnet18", "num_classes": 10, "image_size": 32, **kwargs})
    assert str(error.value).startswith(message)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """An empty torch hub cache, and a download that fails as it does offline (no network is touched)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = SimpleNamespace(folder=tmp_path / "torch" / "hub" / "checkpoints", downloads=[])

    def offline(url: str, *args, **kwargs):
        hub.downloads.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return hub


def test_pretrained_weights_load_from_the_hub_cache(hub: SimpleNamespace):
    imagenet = torchvision.models.squeezenet1_1()  # stands in for the downloaded ImageNet weights
    hub.folder.mkdir(parents=True)
    torch.save(imagenet.state_dict(), hub.folder / "squeezenet1_1-b8a52dc0.pth")
    model = torchvision_model("squeezenet1_1", in_channels=3, num_classes=5, image_size=64, pretrained=True)
    assert torch.equal(model.features[0].weight, imagenet.features[0].weight)
    assert torch.equal(model.features[12].expand3x3.weight, imagenet.features[12].expand3x3.weight)
    assert model.classifier[1].out_channels == 5  # a new classifier for our classes
    gray = torchvision_model("squeezenet1_1", in_channels=1, num_classes=5, image_size=28, pretrained=True)
    # a 3x3 stem keeps its weights at stride 1, summed over the RGB channels for one-channel images
    assert torch.allclose(gray.features[0].weight, imagenet.features[0].weight.sum(1, keepdim=True))
    assert hub.downloads == []


def test_pretrained_without_weights_offline_is_one_clear_line(hub: SimpleNamespace):
    with pytest.raises(ConfigError) as error:
        torchvision_model("resnet18", 3, 10, 32, pretrained=True)
    path = hub.folder / "resnet18-f37072fd.pth"
    assert str(error.value) == (
        f"model.pretrained=true: the torchvision weights of resnet18 are not in {path} and could not be downloaded "
        "(URLError: <urlopen error [Errno -2] Name or service not known>); put the file from "
        "https://download.pytorch.org/models/resnet18-f37072fd.pth there, or set model.pretrained=false")
    assert hub.downloads == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=f"model.pretrained=true: {path} is not a usable weights file for resnet18"):
        torchvision_model("resnet18", 3, 10, 32, pretrained=True)


@pytest.mark.slow
def test_train_resnet18_on_small_colour_images(tmp_path: Path, capsys: pytest.CaptureFixture):
    run = tmp_path / "run"
    code = main(["train", "model=resnet18", "dataset=synthetic", "dataset.image_size=32", "dataset.channels=3",
                 "batch_size=4", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                 "trainer.limit_test_batches=1", "progress_bar=none", f"hydra.run.dir={run}"])
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert summary["params"] == 11_173_962
    assert "11,173,962 parameters" in capsys.readouterr().out
    assert "layer4.1.conv2" in (run / "model_summary.txt").read_text()
