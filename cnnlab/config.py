"""Where the configs live, how a config node becomes an object, and validation of a composed config."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "loss", "optimizer", "scheduler", "dataset", "augmentation", "trainer")

# Keys that describe an option for people (`cnnlab list`) or for cnnlab itself; never passed to `_target_`.
META_KEYS = ("description",)


class ConfigError(Exception):
    """A mistake the user can fix: the message names the key, the bad value and what is allowed."""

    def __init__(self, key: str, value: Any = None, allowed: str = "", message: str | None = None):
        self.key, self.value, self.allowed = key, value, allowed
        if message is None:
            message = f"{key}={value!r} is not allowed" + (f": {allowed}" if allowed else "")
        super().__init__(message)


def report(message: str) -> int:
    """Print a user error as one line on stderr; returns the exit code for it (2)."""
    import sys

    print("cnnlab: error: " + " ".join(str(message).split()), file=sys.stderr)
    return 2


# Hydra groups whose options come from optional plugins: a missing option names the extra that installs them.
PLUGIN_EXTRAS = {
    "hydra/sweeper": " (optuna comes with pip install -e '.[search]')",
    "hydra/launcher": " (joblib and slurm come with pip install -e '.[launchers]')",
}


def user_message(error: BaseException) -> str | None:
    """The one-line message for a user-fixable error anywhere in the exception chain, else None."""
    import re

    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConfigError):
            return str(current)
        if isinstance(current, MissingConfigException) and current.options:
            missing = current.missing_cfg_file or ""
            group, _, option = missing.rpartition("/")
            hint = PLUGIN_EXTRAS.get(group, "")
            return f"{group}={option}: no such option; choose one of: {', '.join(current.options)}{hint}"
        if type(current).__name__ == "MisconfigurationException":  # Lightning's word on a Trainer setting
            return f"trainer: {current}"
        current = current.__cause__ or current.__context__
    if isinstance(error, (HydraException, OmegaConfBaseException)):
        text = str(error).split("Config search path")[0]
        text = re.sub(r"Set the environment variable HYDRA_FULL_ERROR.*", "", text)
        key = re.search(r"Key '([^']+)' is not in struct", str(error.__cause__ or ""))
        if "Could not override" in text and key:
            name = key.group(1)
            return f"unknown key '{name}': not in the config (add a new key with +{name}=VALUE)"
        if not text.strip() and error.__cause__ is not None:
            text = f"{type(error.__cause__).__name__}: {error.__cause__}"
        return text
    return None


def compose(overrides: list[str], job_name: str = "cnnlab") -> Any:
    """The config `cnnlab train` would run with these overrides (Hydra's compose API on the same conf/).

    Hydra's runtime config is registered (so `${hydra:...}` values resolve and HydraConfig.get() answers, the group
    choices included) and the `hydra` node is dropped, as in a `cnnlab train` job's config.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=job_name):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def instantiate(node: Any, drop: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` for one option node, leaving out the descriptive keys."""
    from hydra.utils import instantiate as hydra_instantiate
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    for key in (*META_KEYS, *drop):
        container.pop(key, None)
    try:
        return hydra_instantiate(container, **kwargs)
    except Exception as error:
        # Hydra wraps what the target raised; a user error inside must reach the user as itself.
        found = config_error_in(error)
        if found is not None:
            raise found from None
        raise


def config_error_in(error: BaseException) -> ConfigError | None:
    """The ConfigError that Hydra or OmegaConf wrapped (a target's or a resolver's), else None."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ConfigError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


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
    from cnnlab.optim import check_config  # imports torch: only once a run is being validated

    check_config(cfg, monitor_mode(cfg))


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


PRECISIONS = ("32-true", "32", 32, "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "64", 64, "16", 16,
              "bf16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def _check_run(cfg: Any) -> None:
    """Seeds, the data folder and the fault-injection keys."""
    import os

    for key, value in (cfg.get("seeds") or {}).items():
        _check(isinstance(value, int) and not isinstance(value, bool), f"seeds.{key}", value, "an integer")
    data_dir = os.path.expanduser(os.path.expandvars(str(cfg.get("data_dir") or "")))
    if data_dir and os.path.exists(data_dir):  # a missing one is created when a dataset is downloaded into it
        _check(os.path.isdir(data_dir), "data_dir", data_dir, "a folder (this is a file)")
        _check(os.access(data_dir, os.R_OK | os.X_OK), "data_dir", data_dir, "a folder you may read")
    from cnnlab.speed import COMPILE_MODES

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


def monitor_mode(cfg: Any) -> str:
    """`min` or `max` for the monitored metric: taken from its name unless given."""
    if cfg.monitor_mode != "auto":
        return cfg.monitor_mode
    return "min" if "loss" in cfg.monitor else "max"
