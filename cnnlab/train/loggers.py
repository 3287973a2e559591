"""The run's Lightning loggers, from the `logger` config group: tensorboard (default), csv, mlflow, or any other.

`logger=csv`, `logger=[tensorboard,csv]` (Hydra's list of options) or `+logger.NAME._target_=...` choose them;
`~logger` runs with none. The built-in ones write inside the run folder (runs/layout.py LOGGER_DIRS) unless
their node says otherwise; a relative `save_dir` is taken inside the run folder too. Whatever the loggers, the run
folder's own files (metrics.csv, summary.json, curves.png) are written by cnnlab's callbacks, not by a logger.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cnnlab.config import instantiate
from cnnlab.errors import ConfigError
from cnnlab.runs.layout import LOGGER_DIRS

# Loggers that take (save_dir, name, version): their files go to RUN_DIR/<name>/, one folder across resumes.
_NAMED_FOLDER = ("TensorBoardLogger", "CSVLogger")


def logger_nodes(cfg: Any) -> dict[str, dict[str, Any]]:
    """The `logger` node's entries as plain dicts (descriptions and null entries left out)."""
    from cnnlab.train.callbacks import named_nodes

    return named_nodes(cfg, "logger", "logger=csv, logger=[tensorboard,csv], ~logger, or "
                                      "+logger.NAME._target_=CLASS")


def in_run_folder(name: str, entry: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The logger node with its files placed inside the run folder (the built-in ones' folders, a relative
    save_dir), and MLflow's run name and file-store opt-out; changes `entry` in place and returns it."""
    class_name = str(entry["_target_"]).rsplit(".", 1)[-1]
    folder = LOGGER_DIRS.get(name)
    save_dir = entry.get("save_dir")
    if save_dir is None and folder is not None:
        if class_name in _NAMED_FOLDER:
            entry.update(save_dir=str(run_dir), name=entry.get("name", folder), version=entry.get("version", ""))
        else:
            entry["save_dir"] = str(run_dir / folder)
    elif save_dir is not None and not Path(str(save_dir)).expanduser().is_absolute():
        entry["save_dir"] = str(run_dir / str(save_dir))
    if class_name == "MLFlowLogger":
        if entry.get("run_name") is None:
            entry["run_name"] = run_dir.name
        if entry.get("tracking_uri") is None:
            # MLflow 3 keeps its file store in "maintenance mode" and refuses it unless this opt-out is set;
            # a file store in the run folder is what this option is for (no server, no database).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return entry


def build_loggers(cfg: Any, run_dir: Path) -> list[Any]:
    """The configured loggers, writing inside the run folder."""
    from pytorch_lightning.loggers import Logger

    loggers = []
    for name, entry in logger_nodes(cfg).items():
        logger = instantiate(in_run_folder(name, entry, run_dir))
        if not isinstance(logger, Logger):
            raise ConfigError(f"logger.{name}._target_", entry["_target_"], message=(
                f"logger.{name}._target_={entry['_target_']} built a {type(logger).__name__}, not a Lightning "
                "logger (pytorch_lightning.loggers.Logger)"))
        loggers.append(logger)
    return loggers


def log_figure(loggers: list[Any], tag: str, figure: Any) -> None:
    """A matplotlib figure to every logger that keeps figures (TensorBoard, MLflow); closes it."""
    import matplotlib.pyplot as plt

    for logger in loggers:
        kind = type(logger).__name__
        if kind == "TensorBoardLogger":
            logger.experiment.add_figure(tag, figure, close=False)
        elif kind == "MLFlowLogger":
            logger.experiment.log_figure(logger.run_id, figure, f"{tag}.png")
    plt.close(figure)


def log_hyperparameters(loggers: list[Any], params: dict[str, Any], metrics: dict[str, float], step: int) -> None:
    """The run's settings and final numbers to every logger (TensorBoard's HPARAMS tab pairs them); then finalize."""
    for logger in loggers:
        if type(logger).__name__ == "TensorBoardLogger":
            logger.log_hyperparams(params, metrics)
        else:
            logger.log_hyperparams(params)
            if metrics:
                logger.log_metrics(metrics, step=step)
        logger.finalize("success")
