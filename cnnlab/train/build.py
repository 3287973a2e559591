"""The one way to turn a composed config into objects: used by train, eval, predict and resume alike."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.config import instantiate, monitor_mode
from cnnlab.data.augment import build_augmentation
from cnnlab.data.datamodule import ImageDataModule
from cnnlab.machine import worker_count
from cnnlab.train.losses import Objective
from cnnlab.train.module import ClassifierModule


def build_objective(cfg: DictConfig) -> Objective:
    """The loss, checked against the task (ConfigError for a loss that cannot learn it)."""
    return instantiate(cfg.loss).for_task(cfg.dataset.num_classes, multilabel=cfg.dataset.get("multilabel", False))


def build_model(cfg: DictConfig) -> nn.Module:
    """The configured network, its weights drawn from the init seed alone (same weights whatever the loss).

    Its output units are the loss's choice (one logit for `bce` on two classes), not the config's num_classes.
    """
    units = build_objective(cfg).output_units(cfg.dataset.num_classes, cfg.dataset.get("multilabel", False))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seeds.init)
        return instantiate(cfg.model, num_classes=units)


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


def build_module(cfg: DictConfig, model: nn.Module | None = None) -> ClassifierModule:
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
    )


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python data (safe to store in a weights-only checkpoint)."""
    return OmegaConf.to_container(cfg, resolve=True)
