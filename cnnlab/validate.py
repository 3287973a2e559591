"""Checks of a composed config: every user-fixable mistake becomes a ConfigError before any file is written.

Top of the library layers (it dry-runs the optimizer and schedule from cnnlab.train); nothing below imports it.
"""

from __future__ import annotations

import math
import os
from typing import Any

from cnnlab.config import monitor_mode
from cnnlab.errors import ConfigError, config_error_in


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate(cfg: Any) -> None:
    """Raise ConfigError for the first user-fixable mistake in a composed config."""
    batch_size = cfg.batch_size
    _check(isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1,
           "batch_size", batch_size, "a positive integer")
    vf = cfg.val_fraction
    _check(_is_number(vf) and 0 < vf < 1, "val_fraction", vf, "a number strictly between 0 and 1")
    tf = cfg.dataset.get("test_fraction")
    if tf is not None:
        _check(_is_number(tf) and 0 < tf < 1, "dataset.test_fraction", tf, "a number strictly between 0 and 1")
    lr = cfg.optimizer.get("lr")
    _check(_is_number(lr) and lr > 0, "optimizer.lr", lr, "a positive number")
    wd = cfg.optimizer.get("weight_decay", 0.0)
    _check(_is_number(wd) and wd >= 0, "optimizer.weight_decay", wd, "a number >= 0")
    epochs = cfg.trainer.get("max_epochs")
    if epochs is not None and epochs != -1:
        _check(isinstance(epochs, int) and epochs >= 1, "trainer.max_epochs", epochs, "an integer >= 1 (or -1)")
    steps = cfg.trainer.get("max_steps", -1)
    _check(isinstance(steps, int) and (steps == -1 or steps >= 1), "trainer.max_steps", steps,
           "an integer >= 1, or -1 for no limit")
    _check(cfg.monitor_mode in ("min", "max", "auto"), "monitor_mode", cfg.monitor_mode, "one of min, max, auto")
    _check(isinstance(cfg.seed, int), "seed", cfg.seed, "an integer")
    _check_choices(cfg)
    _check_run(cfg)
    _check_trainer(cfg.trainer)

    try:  # derived by resolvers (an image tree's classes, a label set): their user errors reach the user as such
        derived = {key: cfg.dataset.get(key) for key in ("channels", "num_classes", "image_size", "class_names")}
    except Exception as error:
        found = config_error_in(error)
        if found is not None:
            raise found from None
        raise
    for key in ("channels", "num_classes", "image_size"):
        value = derived[key]
        low = 2 if key == "num_classes" else 1
        _check(isinstance(value, int) and value >= low, f"dataset.{key}", value, f"an integer >= {low}")
    from cnnlab.train.optim import check_config  # imports torch: only once a run is being validated

    check_config(cfg, monitor_mode(cfg))


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


PRECISIONS = ("32-true", "32", 32, "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "64", 64, "16", 16,
              "bf16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


PROGRESS_BARS = ("rich", "tqdm", "none", "auto")
# The metrics every run logs once per epoch (cnnlab/train/module.py), and the multi-label scores.
MONITORS = ("val/acc", "val/loss", "train/acc", "train/loss", "val/f1", "val/map")
SWITCHES = ("test", "shuffle", "channels_last", "early_stopping.enabled")


def _check_choices(cfg: Any) -> None:
    """The run-level settings with a fixed set of values: the progress bar, the switches, early stopping and the
    fitting diagnosis."""
    from omegaconf import OmegaConf

    monitor = cfg.get("monitor", "val/acc")
    _check(monitor in MONITORS, "monitor", monitor,
           "one of " + ", ".join(MONITORS) + " (val/f1 and val/map on multi-label data)")
    bar = cfg.get("progress_bar", "rich")
    _check(bar in PROGRESS_BARS, "progress_bar", bar, "one of " + ", ".join(PROGRESS_BARS))
    for key in SWITCHES:
        value = OmegaConf.select(cfg, key, default=False)
        _check(isinstance(value, bool), key, value, "true or false")
    stopping = cfg.get("early_stopping") or {}
    patience, min_delta = stopping.get("patience", 1), stopping.get("min_delta", 0.0)
    _check(_is_int(patience, 1), "early_stopping.patience", patience, "an integer >= 1 (epochs)")
    _check(_is_number(min_delta) and min_delta >= 0, "early_stopping.min_delta", min_delta, "a number >= 0")
    diagnosis = cfg.get("diagnosis") or {}
    underfit, overfit = diagnosis.get("underfit_acc", 0.7), diagnosis.get("overfit_epochs", 2)
    _check(_is_number(underfit) and 0 <= underfit <= 1, "diagnosis.underfit_acc", underfit,
           "a number between 0 and 1 (an accuracy)")
    _check(_is_int(overfit, 1), "diagnosis.overfit_epochs", overfit, "an integer >= 1 (epochs)")


def _check_run(cfg: Any) -> None:
    """Seeds, the data folder and the fault-injection keys."""
    for key, value in (cfg.get("seeds") or {}).items():
        _check(isinstance(value, int) and not isinstance(value, bool), f"seeds.{key}", value, "an integer")
    data_dir = os.path.expanduser(os.path.expandvars(str(cfg.get("data_dir") or "")))
    if data_dir and os.path.exists(data_dir):  # a missing one is created when a dataset is downloaded into it
        _check(os.path.isdir(data_dir), "data_dir", data_dir, "a folder (this is a file)")
        _check(os.access(data_dir, os.R_OK | os.X_OK), "data_dir", data_dir, "a folder you may read")
    from cnnlab.train.environment import COMPILE_MODES

    threads, workers = cfg.get("threads", "auto"), cfg.get("num_workers", "auto")
    _check(threads == "auto" or _is_int(threads, 1), "threads", threads, "auto or an integer >= 1")
    _check(workers == "auto" or _is_int(workers, 0), "num_workers", workers, "auto or an integer >= 0")
    compile_value = cfg.get("compile", False)
    _check(isinstance(compile_value, bool) or compile_value in COMPILE_MODES, "compile", compile_value,
           "true, false or a torch.compile mode: " + ", ".join(COMPILE_MODES))
    _check(cfg.get("data_on_device", "auto") in ("auto", True, False), "data_on_device", cfg.get("data_on_device"),
           "auto, true or false")
    inject = cfg.get("fault_injection") or {}
    for key in ("signal_at_step", "nan_at_step"):
        step = inject.get(key)
        _check(step is None or _is_int(step, 1), f"fault_injection.{key}", step, "null or a training step >= 1")
    _check(inject.get("signal", "SIGTERM") in ("SIGINT", "SIGTERM"), "fault_injection.signal", inject.get("signal"),
           "SIGINT or SIGTERM")


def _check_trainer(trainer: Any) -> None:
    """The Trainer settings Lightning would otherwise reject only after the run folder has filled up."""
    precision = trainer.get("precision", "32-true")
    _check(precision in PRECISIONS, "trainer.precision", precision,
           "one of 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true, 64-true")
    accelerator = trainer.get("accelerator", "auto")
    _check(accelerator in ACCELERATORS, "trainer.accelerator", accelerator, "one of " + ", ".join(ACCELERATORS))
    devices = trainer.get("devices", "auto")
    _check(devices in ("auto", -1) or _is_int(devices, 1) or (isinstance(devices, str) and devices.strip() != "0")
           or (not isinstance(devices, (int, str)) and len(devices) > 0),
           "trainer.devices", devices, "auto, -1 (all), a count >= 1 or a list of device indices")
    accumulate = trainer.get("accumulate_grad_batches", 1)
    _check(_is_int(accumulate, 1), "trainer.accumulate_grad_batches", accumulate, "an integer >= 1")
    clip = trainer.get("gradient_clip_val")
    _check(clip is None or (_is_number(clip) and clip >= 0), "trainer.gradient_clip_val", clip, "null or a number >= 0")


