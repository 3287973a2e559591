"""Hyperparameter search with Optuna (`hparams_search=optuna`): the study's direction and its storage.

The search itself is hydra-optuna-sweeper's: it asks Optuna for a trial, launches `cnnlab train` with the trial's
overrides (through whichever Hydra launcher is configured) and tells Optuna the value `cnnlab.train.run` returned,
the best value of the monitored metric. This module supplies what the sweeper cannot know by itself:
which way is better for the monitored metric, and a storage that exists and can be reached before the first trial.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cnnlab.config import ConfigError, monitor_mode, report

STORAGES = "sqlite:///PATH, or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"


def direction(*, _root_: DictConfig) -> str:
    """Optuna's direction for the monitored metric: `minimize` when lower is better (`monitor_mode`)."""
    return "minimize" if monitor_mode(_root_) == "min" else "maximize"


def study_storage(storage: str | None, sweep_dir: str) -> str:
    """The storage URL given by the user, else SQLite in the sweep folder (so the same command resumes the study)."""
    return str(storage) if storage else f"sqlite:///{sweep_dir}/optuna.db"


def register_resolvers() -> None:
    """Make `${cnnlab.direction:}` and `${cnnlab.study_storage:...}` available to conf/hparams_search/optuna.yaml."""
    OmegaConf.register_new_resolver("cnnlab.direction", direction, replace=True)
    OmegaConf.register_new_resolver("cnnlab.study_storage", study_storage, replace=True)


def hide_password(url: str) -> str:
    """The storage URL with any password replaced by ***, for messages and logs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str) -> Any:
    """Open (and create, for SQLite) an Optuna storage; a user-fixable problem becomes one ConfigError line."""
    import optuna

    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)  # SQLite creates the file but not its folder
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as error:  # SQLAlchemy/driver errors: the server is down, the password is wrong, ...
        reason = " ".join(str(getattr(error, "orig", None) or error).split())[:300]
        raise ConfigError("storage", hide_password(url), message=(
            f"storage={hide_password(url)}: cannot open the Optuna study storage ({reason}); "
            f"allowed: {STORAGES} on a reachable server")) from None


class StudyStorage(Callback):
    """Hydra callback: before the sweep starts, open the study's storage so that a bad one fails in one line."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        storage = config.hydra.sweeper.get("storage")
        try:
            if storage:
                open_storage(str(storage))
        except ConfigError as error:
            # Hydra turns a callback's exceptions into warnings and goes on; a bad storage must stop the search.
            raise SystemExit(report(str(error))) from None
