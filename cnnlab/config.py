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


def monitor_mode(cfg: Any) -> str:
    """`min` or `max` for the monitored metric: taken from its name unless given."""
    if cfg.monitor_mode != "auto":
        return cfg.monitor_mode
    return "min" if "loss" in cfg.monitor else "max"
