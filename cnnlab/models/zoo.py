"""torchvision's classification networks adapted to the dataset: channels, class count, small images and the knobs.

One adapter, `torchvision_model`, serves every conf/model/*.yaml that names a torchvision `arch`; what differs
between networks is found on the built module (its first conv, first max-pool, classifier layer, batch norm,
dropout and activation modules), so a new torchvision network needs only its YAML.
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnlab.errors import ConfigError
from cnnlab.models import knobs, sizing

STEMS = ("auto", "small", "imagenet")
# With stem=auto, images below this size get the small-image stem (3x3 stride-1 first conv, no first max-pool):
# the ImageNet stem divides the image by 4 before the first block, which leaves a 32 px image 8x8 pixels.
SMALL_BELOW = 64
# The hidden-layer activations torchvision networks are built with; the sigmoid gates of squeeze-excitation
# blocks are not among them and stay as they are.
HIDDEN_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU)
ACTIVATION_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.hardtanh, F.hardswish, F.silu, F.gelu,
                        torch.Tensor.relu, torch.Tensor.relu_}


def torchvision_model(arch: str, in_channels: int = 3, num_classes: int = 1000, image_size: int = 224,
                      stem: str = "auto", pretrained: bool = False, activation: str = "default",
                      dropout: float | None = None, batch_norm: bool | None = None, init: str = "default",
                      options: dict[str, Any] | None = None) -> nn.Module:
    """torchvision's `arch` with the dataset's channels and classes, a small-image stem where needed, and the knobs.

    `activation`, `dropout` and `batch_norm` left at default/None keep torchvision's choices; a knob the network
    cannot honour (batch_norm=false on a ResNet, a new activation where the forward calls F.relu) is a ConfigError.
    """
    _check_options(arch, stem, pretrained, activation, dropout, batch_norm, init)
    name = f"{arch}_bn" if batch_norm and f"{arch}_bn" in _architectures() else arch
    model = _build(name, num_classes, pretrained, dict(options or {}))
    _check_batch_norm(model, name, batch_norm)
    head = _head(model)
    _adapt_stem(model, in_channels, small=stem == "small" or (stem == "auto" and image_size < SMALL_BELOW))
    if activation != "default":
        _replace_activations(model, head, activation)
    if dropout is not None:
        _set_dropout(model, head, dropout)
    knobs.initialize(model, init, "relu" if activation == "default" else activation)
    if sizing.probe(model, in_channels, image_size) is None:
        raise sizing.too_small(name, image_size, sizing.smallest_size(model, in_channels))
    if activation != "default":
        _check_no_functional_activations(model, name, activation, in_channels, image_size)
    return model


def _architectures() -> list[str]:
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def _check_options(arch: str, stem: str, pretrained: bool, activation: str, dropout: float | None,
                   batch_norm: bool | None, init: str) -> None:
    """Every knob's value is checked before a (possibly large) network is built."""
    if arch not in _architectures():
        raise ConfigError("model.arch", arch, "a torchvision classification model (torchvision.models.list_models())")
    if stem not in STEMS:
        raise ConfigError("model.stem", stem, "one of " + ", ".join(STEMS))
    if not isinstance(pretrained, bool):
        raise ConfigError("model.pretrained", pretrained, "true or false")
    if batch_norm is not None and not isinstance(batch_norm, bool):
        raise ConfigError("model.batch_norm", batch_norm, "true or false")
    if activation != "default" and activation not in knobs.ACTIVATIONS:
        raise ConfigError("model.activation", activation, "default or one of " + ", ".join(knobs.ACTIVATIONS))
    if dropout is not None:
        knobs.check_dropout(dropout)
    knobs.check_init(init)
    if pretrained and init != "default":
        raise ConfigError("model.init", init, "default when model.pretrained=true (it would overwrite the weights)")


def _build(name: str, num_classes: int, pretrained: bool, options: dict[str, Any]) -> nn.Module:
    """The torchvision network; pretrained, every layer but the classifier gets torchvision's ImageNet weights.

    The weights come through torchvision's own builder (which fixes up old key names) into a network built with
    our options; entries that network lacks (GoogLeNet's auxiliary classifiers) are left out.
    """
    import torchvision.models

    builder = torchvision.models.get_model_builder(name)
    try:
        model = builder(weights=None, num_classes=num_classes, **options)
    except (TypeError, ValueError) as error:  # an option the builder does not take, or a value it refuses
        raise ConfigError("model.options", options, message=f"model.options={options}: {name}: {error}") from None
    if not pretrained:
        return model
    weights = torchvision.models.get_model_weights(name).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file():
        _download(weights.url, path, name)
    try:
        reference = builder(weights=weights).state_dict()
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise ConfigError("model.pretrained", True, message=(
            f"model.pretrained=true: {path} is not a usable weights file for {name} ({error}); delete it and "
            f"put the file from {weights.url} there")) from None
    head = _head(model) + "."
    try:
        missing, _ = model.load_state_dict({k: v for k, v in reference.items() if not k.startswith(head)},
                                           strict=False)
        problems = [f"no weights for {key}" for key in missing if not key.startswith(head)]
    except RuntimeError as error:  # shapes differ
        problems = [f"another shape for {key}" for key in re.findall(r"size mismatch for ([\w.]+)", str(error))]
        problems = problems or [str(error).splitlines()[0]]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ConfigError("model.options", options, message=(
            f"model.pretrained=true: torchvision's weights of {name} do not fit the network built with "
            f"model.options={options}: {', '.join(problems[:3])}{more}"))
    return model


def _download(url: str, path: Path, name: str) -> None:
    """Fetch torchvision's weights into the hub cache as torchvision would, or say in one line why not."""
    match = torch.hub.HASH_REGEX.search(path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), hash_prefix=match.group(1) if match else None)
    except OSError as error:  # offline, or the cache folder cannot be written
        raise ConfigError("model.pretrained", True, message=(
            f"model.pretrained=true: the torchvision weights of {name} are not in {path} and could not be "
            f"downloaded ({type(error).__name__}: {error}); put the file from {url} there, "
            "or set model.pretrained=false")) from None


def _check_batch_norm(model: nn.Module, name: str, batch_norm: bool | None) -> None:
    has = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if batch_norm is None or batch_norm == has:
        return
    if has:
        raise ConfigError("model.batch_norm", False, message=(
            f"model.batch_norm=false: torchvision builds {name} with batch norm only; set model.batch_norm=true"))
    raise ConfigError("model.batch_norm", True, message=(
        f"model.batch_norm=true: torchvision has no batch-norm variant of {name}; set model.batch_norm=false"))


def _head(model: nn.Module) -> str:
    """The name of the classifier layer: the last Linear or Conv2d (SqueezeNet classifies with a 1x1 conv)."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attribute, module)


def _first(model: nn.Module, kind: type[nn.Module]) -> tuple[str, Any] | None:
    return next(((name, m) for name, m in model.named_modules() if isinstance(m, kind)), None)


def _adapt_stem(model: nn.Module, in_channels: int, small: bool) -> None:
    """First conv takes `in_channels`; for small images it becomes 3x3 stride 1 and the first max-pool goes.

    Weights are kept where the kernel keeps its shape (adapted to the channel count as timm does: summed for one
    channel, repeated and rescaled for others); a new kernel shape gets He init (fan-out, as torchvision's ResNets).
    """
    name, old = _first(model, nn.Conv2d)
    geometry = ((3, 3), (1, 1), (1, 1)) if small else (old.kernel_size, old.stride, old.padding)
    if in_channels != old.in_channels or geometry != (old.kernel_size, old.stride, old.padding):
        new = nn.Conv2d(in_channels, old.out_channels, *geometry, bias=old.bias is not None)
        with torch.no_grad():
            if new.weight.shape[2:] == old.weight.shape[2:]:
                new.weight.copy_(_adapt_channels(old.weight, in_channels))
                if old.bias is not None:
                    new.bias.copy_(old.bias)
            else:
                nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
                if new.bias is not None:
                    nn.init.zeros_(new.bias)
        _set(model, name, new)
    pool = _first(model, nn.MaxPool2d)
    if small and pool is not None:
        _set(model, pool[0], nn.Identity())


def _adapt_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def _replace_activations(model: nn.Module, head: str, activation: str) -> None:
    """Every hidden activation module before the classifier becomes `activation` (in place where the old was)."""
    for name, module in list(model.named_modules()):
        if name == head:
            break  # activations after the classifier (SqueezeNet's ReLU on class scores) belong to the output
        if isinstance(module, HIDDEN_ACTIVATIONS):
            new = knobs.activation(activation)
            if hasattr(new, "inplace"):
                new.inplace = getattr(module, "inplace", False)
            _set(model, name, new)


def _set_dropout(model: nn.Module, head: str, rate: float) -> None:
    """The rate of every dropout layer; a network without one gets one in front of its classifier."""
    layers = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    for layer in layers:
        layer.p = rate
    if not layers and rate > 0:
        _set(model, head, nn.Sequential(nn.Dropout(rate), model.get_submodule(head)))


class _ActivationCalls(TorchFunctionMode):
    """Records activation functions called outside activation modules (a forward that hard-codes F.relu)."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.outside: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in ACTIVATION_FUNCTIONS and self.depth == 0:
            self.outside.add(func.__name__)
        return func(*args, **(kwargs or {}))


def _check_no_functional_activations(model: nn.Module, name: str, activation: str, in_channels: int,
                                     image_size: int) -> None:
    calls = _ActivationCalls()
    kinds = (*HIDDEN_ACTIVATIONS, *{type(make()) for make in knobs.ACTIVATIONS.values()})
    handles = []
    for module in model.modules():
        if isinstance(module, kinds):
            handles.append(module.register_forward_pre_hook(lambda *_: setattr(calls, "depth", calls.depth + 1)))
            handles.append(module.register_forward_hook(lambda *_: setattr(calls, "depth", calls.depth - 1)))
    try:
        with calls:
            sizing.probe(model, in_channels, image_size)
    finally:
        for handle in handles:
            handle.remove()
    if calls.outside:
        raise ConfigError("model.activation", activation, message=(
            f"model.activation={activation}: {name}'s forward calls {', '.join(sorted(calls.outside))} itself, "
            "so its activations cannot be changed; set model.activation=default"))
