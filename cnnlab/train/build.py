"""The one way to turn a composed config into objects: used by train, eval, predict and resume alike."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.config import META_KEYS, instantiate, monitor_mode
from cnnlab.data.augment import build_augmentation
from cnnlab.data.datamodule import ImageDataModule
from cnnlab.errors import ConfigError
from cnnlab.machine import worker_count
from cnnlab.models import knobs
from cnnlab.train.executions import manual as manual_steps
from cnnlab.train.losses import HEADS, Objective, WrappedLoss
from cnnlab.train.module import ClassifierModule

# Hydra's own keys of a node (how to call the target), passed through as they are.
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
# What the dataset tells the model, passed as keywords only to a class whose signature takes them. Runs saved
# before 0.2 carry them in their model config (as interpolations of the dataset's): the dataset's values win.
DATASET_KEYS = ("in_channels", "num_classes", "image_size")
# The keys of a loss node that cnnlab's wrapper of a plain loss reads (never passed to the loss itself).
LOSS_INPUT = "input"


def locate(group: str, node: dict[str, Any]) -> tuple[str, Any]:
    """The node's `_target_` and the object it names; one ConfigError line when it cannot be imported."""
    target = node.get("_target_")
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{group}._target_", target, "the dotted path of a class or function (mypkg.MyNet)")
    try:
        return target, _import(target)
    except Exception as error:  # ImportError, AttributeError, or whatever the user's module raised on import
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise ConfigError(f"{group}._target_", target, message=(
            f"{group}._target_={target} cannot be imported ({reason}): is its package installed or on "
            "PYTHONPATH?")) from None


def _import(dotted: str) -> Any:
    """The object a dotted path names: the longest importable module prefix, then attributes (nested classes)."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name) and cut > 1:
                continue  # this prefix is not a module: maybe a class holding the next part
            raise
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    return importlib.import_module(dotted)


def _parameters(target: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """The keyword parameters `target` takes, and whether it takes any keyword (**kwargs or no signature)."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return {}, True
    params = {name: p for name, p in signature.parameters.items() if p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return params, any(p.kind == inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())


def _takes(target: Any, key: str) -> bool:
    params, any_keyword = _parameters(target)
    return any_keyword or key in params


def _unknown_key(group: str, target: str, key: str, value: Any, params: dict[str, inspect.Parameter]) -> ConfigError:
    takes = ", ".join(params) or "no keywords"
    return ConfigError(f"{group}.{key}", value, message=(
        f"{group}.{key}={value!r}: {target} takes no keyword {key!r} (it takes: {takes}); remove the key or add "
        "the keyword to its signature"))


def check_keywords(group: str, node: dict[str, Any], required: bool = False) -> Any:
    """The object the node's `_target_` names, once every key of the node is a keyword it takes and (`required`)
    every keyword without a default is given; else one ConfigError line."""
    target, obj = locate(group, node)
    params, any_keyword = _parameters(obj)
    for key, value in node.items():
        if key not in HYDRA_KEYS and key not in META_KEYS and not any_keyword and key not in params:
            raise _unknown_key(group, target, key, value, params)
    missing = [name for name, p in params.items() if p.default is inspect.Parameter.empty and name not in node]
    if required and missing and "_args_" not in node:
        raise ConfigError(f"{group}.{missing[0]}", None, message=(
            f"{target} needs {group}.{missing[0]} (no default in its signature): add +{group}.{missing[0]}=VALUE"))
    return obj


def model_arguments(cfg: DictConfig, units: int) -> tuple[dict[str, Any], str | None]:
    """The model node to instantiate, fitted to its class's signature, and the init scheme cnnlab applies itself.

    The dataset's channels and image size, and the loss's output units, go in only as keywords the class takes;
    a knob at its neutral value is left out for a class without it (`init` is applied to any class instead);
    every other key must be a keyword of the class: else one ConfigError line naming the target and the key.
    """
    node = OmegaConf.to_container(cfg.model, resolve=True)
    target, obj = locate("model", node)
    params, any_keyword = _parameters(obj)
    derived = {"in_channels": cfg.dataset.channels, "num_classes": units, "image_size": cfg.dataset.image_size}
    kept: dict[str, Any] = {key: node[key] for key in HYDRA_KEYS if key in node}
    generic_init = None
    for key, value in node.items():
        if key in HYDRA_KEYS or key in META_KEYS or key in DATASET_KEYS:
            continue
        if any_keyword or key in params:
            kept[key] = value
        elif key in knobs.NEUTRAL and value in knobs.NEUTRAL[key]:
            continue
        elif key == "init":
            knobs.check_init(value)
            generic_init = value
        elif key in knobs.NEUTRAL:
            raise ConfigError(f"model.{key}", value, message=(
                f"model.{key}={value!r}: {target} has no {key} knob (it takes: {', '.join(params) or 'no keywords'})"
                f"; leave model.{key} at {knobs.NEUTRAL[key][0]!r} or add a {key!r} keyword to the class"))
        else:
            raise _unknown_key("model", target, key, value, params)
    kept.update({key: value for key, value in derived.items() if any_keyword or key in params})
    if "_args_" not in kept:
        missing = [name for name, p in params.items() if p.default is inspect.Parameter.empty and name not in kept]
        if missing:
            raise ConfigError(f"model.{missing[0]}", None, message=(
                f"{target} needs model.{missing[0]} (no default in its signature): add it to the model config, "
                f"e.g. +model.{missing[0]}=VALUE"))
    return kept, generic_init


def model_name(cfg: DictConfig) -> str:
    """The model's `_target_`, as errors name it."""
    return str(cfg.model.get("_target_"))


def build_objective(cfg: DictConfig) -> Objective:
    """The loss, checked against the task (ConfigError for a loss that cannot learn it).

    A catalogue loss (conf/loss/) returns an Objective with its own head. Anything else the node builds must be a
    callable `loss(outputs, targets)` (a torch.nn loss, a function, a partial): it is wrapped with the head named
    by `loss.input` (logits by default), and `loss.class_weights` reaches it as torch's `weight=`.
    """
    node = OmegaConf.to_container(cfg.loss, resolve=True)
    for key in META_KEYS:
        node.pop(key, None)
    head = node.pop(LOSS_INPUT, None)
    target, obj = locate("loss", node)
    params, any_keyword = _parameters(obj)
    wrapper_weights = node.pop("class_weights", None) if not (any_keyword or "class_weights" in params) else None
    check_keywords("loss", node)
    if inspect.isfunction(obj) and not node.get("_partial_"):
        # A function that still needs (outputs, targets) after the config's keys is the loss itself, not a factory.
        required = [name for name, p in params.items() if p.default is inspect.Parameter.empty and name not in node]
        if len(required) >= 2:
            node["_partial_"] = True
    loss = instantiate(node)
    task = (cfg.dataset.num_classes, cfg.dataset.get("multilabel", False))
    if isinstance(loss, Objective):
        if head is not None:
            raise ConfigError(f"loss.{LOSS_INPUT}", head, message=(
                f"loss.{LOSS_INPUT}={head}: {target} is a catalogue loss with its own head ({loss.head}); "
                f"loss.{LOSS_INPUT} is for plain losses (a torch.nn loss or a function)"))
        if wrapper_weights is not None:
            raise _unknown_key("loss", target, "class_weights", wrapper_weights, params)
        return loss.for_task(*task)
    if not callable(loss):
        raise ConfigError("loss._target_", target, message=(
            f"loss._target_={target} built a {type(loss).__name__}, not a loss: a catalogue loss or a callable "
            "loss(outputs, targets)"))
    head = "logits" if head is None else head
    if head not in HEADS:
        raise ConfigError(f"loss.{LOSS_INPUT}", head, "one of " + ", ".join(HEADS))
    return WrappedLoss(target.rsplit(".", 1)[-1], head, loss, wrapper_weights).for_task(*task)


def build_model(cfg: DictConfig) -> nn.Module:
    """The configured network, its weights drawn from the init seed alone (same weights whatever the loss).

    Its output units are the loss's choice (one logit for `bce` on two classes), not the config's num_classes.
    """
    units = build_objective(cfg).output_units(cfg.dataset.num_classes, cfg.dataset.get("multilabel", False))
    node, generic_init = model_arguments(cfg, units)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seeds.init)
        model = instantiate(node)
        if not isinstance(model, nn.Module):
            raise ConfigError("model._target_", model_name(cfg), message=(
                f"model._target_={model_name(cfg)} built a {type(model).__name__}, not a torch.nn.Module"))
        if generic_init is not None:
            knobs.initialize(model, generic_init)
    return model


def check_model_and_loss(cfg: DictConfig) -> None:
    """ConfigError for a loss or model node that does not fit its target (validate.py, before files are written)."""
    units = build_objective(cfg).output_units(cfg.dataset.num_classes, cfg.dataset.get("multilabel", False))
    model_arguments(cfg, units)


def input_shape(cfg: DictConfig) -> tuple[int, int, int]:
    """One image as the model sees it: (channels, height, width)."""
    return cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size


def summarize_model(model: nn.Module, cfg: DictConfig, units: int) -> tuple[list[Any], int, int]:
    """The layer summary from one forward pass of a blank image: the input-size check that works for any class.

    A model that cannot take the dataset's images, or gives other than `units` outputs for one, is one ConfigError
    line naming the model and the input shape.
    """
    from cnnlab.models.summary import summarize

    shape = (1, *input_shape(cfg))
    outputs: list[Any] = []
    hook = model.register_forward_hook(lambda _module, _inputs, out: outputs.append(out))
    try:
        rows, total, trainable = summarize(model, shape[1:])
    except ConfigError:
        raise
    except Exception as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:240]
        raise ConfigError("model", model_name(cfg), message=(
            f"model {model_name(cfg)} fails on one blank input of shape {shape} (dataset.channels x "
            f"dataset.image_size): {reason}")) from None
    finally:
        hook.remove()
    out = outputs[-1] if outputs else None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, units):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError("model", model_name(cfg), message=(
            f"model {model_name(cfg)} gives {got} for one input of shape {shape}; the loss needs a tensor of shape "
            f"(1, {units}) (one score per class): does it use the num_classes it is given?"))
    return rows, total, trainable


def build_datamodule(cfg: DictConfig) -> ImageDataModule:
    dataset = cfg.dataset
    return ImageDataModule(
        source=instantiate(dataset.source, _partial_=True),
        channels=dataset.channels, image_size=dataset.image_size, num_classes=dataset.num_classes,
        class_names=dataset.get("class_names"), mean=dataset.get("mean"), std=dataset.get("std"),
        batch_size=cfg.batch_size, val_fraction=cfg.val_fraction, test_fraction=dataset.get("test_fraction"),
        data_seed=cfg.seeds.data, shuffle=cfg.get("shuffle", True),
        augmentation=build_augmentation(cfg.augmentation, seed=cfg.seeds.augment),
        num_workers=worker_count(cfg.get("num_workers")),
        data_on_device=cfg.get("data_on_device", "auto"),
        cv_folds=OmegaConf.select(cfg, "cv.folds", default=None),
        cv_fold=OmegaConf.select(cfg, "cv.fold", default=None),
    )


def build_module(cfg: DictConfig, model: nn.Module | None = None, manual: bool | None = None) -> ClassifierModule:
    """The LightningModule of a config; `manual`: its steps_per_execution optimisation (default: what the config
    asks; False for Lightning's own loops over plain batches, such as the lr finder)."""
    return ClassifierModule(
        model=model if model is not None else build_model(cfg),
        objective=build_objective(cfg),
        num_classes=cfg.dataset.num_classes,
        optimizer=cfg.optimizer,
        scheduler=cfg.scheduler,
        monitor=cfg.monitor,
        mode=monitor_mode(cfg),
        config=plain_config(cfg),
        channels_last=cfg.get("channels_last", False),
        ema=cfg.get("ema"),
        manual_steps=manual_steps(cfg) if manual is None else manual,
    )


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python data (safe to store in a weights-only checkpoint)."""
    return OmegaConf.to_container(cfg, resolve=True)
