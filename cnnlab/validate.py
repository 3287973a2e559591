"""Checks of a composed config: every user-fixable mistake becomes a ConfigError before any file is written.

Top of the library layers (it dry-runs the optimizer and schedule from cnnlab.train); nothing below imports it.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
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
    _check_seed("seed", cfg.seed)
    _check_ema(cfg)
    extras = cfg.get("tensorboard") or {}
    for key in ("histograms_every", "misclassified"):
        _check(_is_int(extras.get(key, 0), 0), f"tensorboard.{key}", extras.get(key), "an integer >= 0 (0: off)")
    _check(isinstance(extras.get("grad_norm", False), bool), "tensorboard.grad_norm", extras.get("grad_norm"),
           "true or false")
    _check_choices(cfg)
    _check_tta(cfg)
    _check_run(cfg)
    _check_trainer(cfg.trainer)
    _check_monitor(cfg)
    from cnnlab.train.executions import check as check_steps_per_execution

    check_steps_per_execution(cfg)

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
    names = derived["class_names"]
    if names is not None:
        names = list(names)
        _check(len(names) == derived["num_classes"], "dataset.class_names", names,
               f"one name per class: {derived['num_classes']} names (dataset.num_classes), not {len(names)}")
    from cnnlab.train.optim import check_config  # imports torch: only once a run is being validated

    check_config(cfg, monitor_mode(cfg))
    _check_components(cfg)


# Trainer arguments cnnlab sets itself; the first two have config groups of their own.
OWN_TRAINER_KEYS = {
    "logger": "loggers are the logger config group: logger=csv, logger=[tensorboard,csv], ~logger, or "
              "+logger.NAME._target_=CLASS (docs/extending.md)",
    "callbacks": "callbacks are the callbacks config group: +callbacks.NAME._target_=CLASS +callbacks.NAME.ARG=VALUE "
                 "(docs/extending.md); the run's own callbacks stay on",
    "default_root_dir": "the run folder is Hydra's: set hydra.run.dir=PATH",
    "enable_progress_bar": "set progress_bar=rich, tqdm or none",
    "enable_model_summary": "cnnlab prints its own model summary",
    "plugins": "cnnlab sets its checkpoint plugin itself",
}


def _check_components(cfg: Any) -> None:
    """The model and loss fit their classes' signatures; callbacks and loggers name importable classes."""
    from cnnlab.train.build import check_keywords, check_model_and_loss
    from cnnlab.train.callbacks import callback_nodes
    from cnnlab.train.loggers import in_run_folder, logger_nodes

    check_model_and_loss(cfg)
    loggers = {name: in_run_folder(name, node, Path("run")) for name, node in logger_nodes(cfg).items()}
    for group, nodes in (("callbacks", callback_nodes(cfg)), ("logger", loggers)):
        for name, node in nodes.items():
            target = str(node["_target_"])
            if target.rsplit(".", 1)[-1] == "MLFlowLogger":
                import importlib.util

                if importlib.util.find_spec("mlflow") is None:
                    raise ConfigError(f"logger.{name}", target, message=(
                        f"logger.{name} ({target}) needs the mlflow package, which is not installed: "
                        "pip install 'cnnlab[mlflow]'"))
            check_keywords(f"{group}.{name}", node, required=True)


def _check_tta(cfg: Any) -> None:
    from cnnlab.data.tta import check_for_dataset

    check_for_dataset(cfg.get("tta", "none"), cfg.dataset)


def _check_ema(cfg: Any) -> None:
    ema = cfg.get("ema")
    enabled = ema is not None and ema.get("enabled", False)
    if str(cfg.monitor).startswith("val_ema/") and not enabled:
        raise ConfigError("monitor", cfg.monitor, message=(
            f"monitor={cfg.monitor} watches the weights' moving average: set ema.enabled=true, or monitor "
            f"{cfg.monitor.replace('val_ema/', 'val/')}"))
    if not enabled:
        return
    _check(isinstance(ema.enabled, bool), "ema.enabled", ema.enabled, "true or false")
    decay = ema.get("decay")
    _check(_is_number(decay) and 0 <= decay <= 1, "ema.decay", decay, "a number from 0 to 1 (e.g. 0.9998)")
    for key in ("warmup_gamma", "warmup_power"):
        value = ema.get(key, 1.0)
        _check(_is_number(value) and value > 0, f"ema.{key}", value, "a positive number")
    for key in ("warmup", "evaluate"):
        _check(isinstance(ema.get(key, False), bool), f"ema.{key}", ema.get(key), "true or false")


SEED_MAX = 2**32 - 1  # numpy's generators take seeds in 0..2**32-1; torch and Python take those too


def _check_seed(key: str, value: Any) -> None:
    """One rule for `seed` and every `seeds.*`."""
    _check(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEED_MAX, key, value,
           f"an integer from 0 to {SEED_MAX} (2**32-1)")


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


PRECISIONS = ("32-true", "32", 32, "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "64", 64, "16", 16,
              "bf16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


PROGRESS_BARS = ("rich", "tqdm", "none", "auto")
SWITCHES = ("test", "shuffle", "channels_last", "early_stopping.enabled")


def _check_choices(cfg: Any) -> None:
    """The run-level settings with a fixed set of values: the progress bar, the switches, early stopping and the
    fitting diagnosis."""
    from omegaconf import OmegaConf

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
        _check_seed(f"seeds.{key}", value)
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
    cv = cfg.get("cv") or {}
    folds, fold = cv.get("folds"), cv.get("fold")
    _check(folds is None or _is_int(folds, 2), "cv.folds", folds, "null or a whole number of folds, 2 or more")
    if folds is not None:
        _check(_is_int(fold, 0) and fold < folds, "cv.fold", fold, f"a fold number from 0 to {folds - 1} "
                                                                   f"(cv.folds={folds})")
    else:
        _check(fold is None, "cv.fold", fold, "null unless cv.folds is set (cnnlab train cv.folds=K sets both)")


# Trainer arguments cnnlab sets itself from other keys (a value in trainer.* would clash with them).
# callbacks and logger are left to the callbacks/ and logger/ config groups.
SET_BY_CNNLAB = {"default_root_dir": "hydra.run.dir", "plugins": "cnnlab's atomic checkpoints",
                 "enable_model_summary": "cnnlab's own model summary", "enable_progress_bar": "progress_bar"}


def _check_monitor(cfg: Any) -> None:
    """The monitored metric must be one the module logs (else it is found missing only after a whole epoch)."""
    from cnnlab.train.module import logged_names

    ema = bool((cfg.get("ema") or {}).get("enabled", False))
    if str(cfg.monitor).startswith("val_ema/") and not ema:
        return  # _check_ema says what to do
    names = logged_names(bool(cfg.dataset.get("multilabel", False)), ema=ema)
    _check(cfg.monitor in names, "monitor", cfg.monitor, "a metric the run logs: " + ", ".join(names))


def _trainer_arguments() -> set[str]:
    import inspect

    import pytorch_lightning as pl

    return {name for name in inspect.signature(pl.Trainer.__init__).parameters if name != "self"}


def _check_trainer(trainer: Any) -> None:
    """The Trainer settings Lightning would otherwise reject only after the run folder has filled up."""
    for key, instead in OWN_TRAINER_KEYS.items():
        if key in trainer:
            raise ConfigError(f"trainer.{key}", trainer.get(key), message=f"trainer.{key} is set by cnnlab: {instead}")
    known = _trainer_arguments()
    for key in trainer:
        if key == "description" or key in OWN_TRAINER_KEYS:
            continue
        _check(key not in SET_BY_CNNLAB, f"trainer.{key}", trainer.get(key),
               f"cnnlab sets it (from {SET_BY_CNNLAB.get(key)}); leave it out")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            raise ConfigError(f"trainer.{key}", trainer.get(key), message=(
                f"trainer.{key}: pytorch_lightning.Trainer takes no argument {key!r}"
                + (f" (did you mean trainer.{close[0]}?)" if close else "")))
    limit = trainer.get("limit_train_batches")
    _check(limit is None or not (_is_number(limit) and limit == 0), "trainer.limit_train_batches", limit,
           "more than 0 (0 trains nothing; use a fraction like 0.1 or a batch count >= 1)")
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


