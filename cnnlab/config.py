"""Where the configs live, how a config node becomes an object, and the names that moved between versions.

Imports only cnnlab.errors; checks of a composed config live in cnnlab/validate.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cnnlab.errors import config_error_in

# The built-in configs, shipped inside the package (package data).
CONF_DIR = Path(__file__).resolve().parent / "conf"
GROUPS = ("model", "loss", "optimizer", "scheduler", "dataset", "augmentation", "trainer")

# The user's own config folders: `conf/` in the working folder when present, then CNNLAB_CONFIG_PATH (folders
# separated by the OS path separator, like PATH). Each holds group folders (model/, loss/, dataset/, ...) beside
# the built-in ones; an option with a built-in name shadows it.
CONFIG_PATH_ENV = "CNNLAB_CONFIG_PATH"
LOCAL_CONF = "conf"


def user_config_dirs() -> list[Path]:
    """The user's config folders for this process, resolved, in search order (existing folders only)."""
    candidates = [Path.cwd() / LOCAL_CONF] + [Path(p).expanduser() for p in
                                               os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep) if p.strip()]
    found: list[Path] = []
    for folder in candidates:
        folder = folder.resolve()
        if folder.is_dir() and folder != CONF_DIR.resolve() and folder not in found:
            found.append(folder)
    return found


# Keys that describe an option for people (`cnnlab list`) or for cnnlab itself; never passed to `_target_`.
META_KEYS = ("description",)

# Dotted names that moved in cnnlab 0.2 (the regroup): configs saved by runs of 0.1 name the old ones.
MOVED = {
    "cnnlab.losses.": "cnnlab.train.losses.",
    "cnnlab.optim.": "cnnlab.train.optim.",
    "cnnlab.faults.SweepFailures": "cnnlab.runs.sweeps.SweepFailures",
    "cnnlab.sweep_summary.SweepSummary": "cnnlab.runs.sweeps.SweepSummary",
    "cnnlab.search.StudyStorage": "cnnlab.runs.sweeps.StudyStorage",
}


def current_name(target: str) -> str:
    """The dotted name a `_target_` has now (unchanged unless it moved)."""
    for old, new in MOVED.items():
        if target == old or (old.endswith(".") and target.startswith(old)):
            return new + target[len(old):]
    return target


def upgrade(node: Any) -> Any:
    """A saved config (plain data) with every moved `_target_` renamed, in place; returns it."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                node[key] = current_name(value)
            else:
                upgrade(value)
    elif isinstance(node, list):
        for item in node:
            upgrade(item)
    return node


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


def monitor_mode(cfg: Any) -> str:
    """`min` or `max` for the monitored metric: taken from its name unless given."""
    if cfg.monitor_mode != "auto":
        return cfg.monitor_mode
    return "min" if "loss" in cfg.monitor else "max"
