"""The Lightning callbacks of one run, and the one that writes metrics.csv and curves.png as it goes."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping

from cnnlab.config import META_KEYS, instantiate
from cnnlab.data.chunks import Chunk
from cnnlab.errors import ConfigError
from cnnlab.runs.layout import CHECKPOINT_DIR, CURVES_FILE, last_checkpoint
from cnnlab.runs.read import read_metrics
from cnnlab.runs.write import plot_curves, write_metrics
from cnnlab.train.failures import FaultInjection, FiniteLossGuard
from cnnlab.train.fastpaths import EpochCheckpoint, LearningRates
from cnnlab.train.interrupts import GracefulStop, StopRequest
from cnnlab.train.resume import ResumeState


class RunLog(pl.Callback):
    """Appends a metrics.csv row at the end of every training epoch and draws curves.png at the end of fit."""

    def __init__(self, run_dir: Path, title: str = ""):
        self.run_dir, self.title = Path(run_dir), title
        self.rows: list[dict[str, Any]] = read_metrics(self.run_dir)
        self._epoch_start = time.perf_counter()
        self.first_step_at: float | None = None  # wall-clock time of the first training batch (start-up cost)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        # Callbacks' epoch-end hooks run before the module's, which logs the training metrics: ask the module.
        own = getattr(pl_module, "epoch_train_metrics", dict)()
        metrics = {**trainer.callback_metrics, **own}

        def value(key: str) -> float | None:
            return float(metrics[key]) if key in metrics else None

        row = {
            "epoch": trainer.current_epoch + 1,  # 1-based: the number of epochs done
            "step": trainer.global_step,
            "train_loss": value("train/loss"),
            "train_acc": value("train/acc"),
            "val_loss": value("val/loss"),
            "val_acc": value("val/acc"),
            "val_ema_loss": value("val_ema/loss"),
            "val_ema_acc": value("val_ema/acc"),
            "lr": trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None,
            "epoch_time_s": round(time.perf_counter() - self._epoch_start, 3),
        }
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        write_metrics(self.run_dir, self.rows)
        logging.getLogger("cnnlab").info(epoch_line(row, trainer.max_epochs))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.rows:
            plot_curves(self.rows, self.run_dir / CURVES_FILE, self.title)


def epoch_line(row: dict[str, Any], max_epochs: int | None = None) -> str:
    """One epoch's row as a line of train.log: `epoch 2/10: train_loss 0.4123 ... lr 0.001 (3.2s)`."""
    total = f"/{max_epochs}" if max_epochs is not None and max_epochs > 0 else ""
    figures = [f"{key} {row[key]:.4f}" for key in ("train_loss", "train_acc", "val_loss", "val_acc")
               if row.get(key) is not None]
    if row.get("lr") is not None:
        figures.append(f"lr {row['lr']:.3g}")
    return f"epoch {row['epoch']}{total}: {', '.join(figures)} ({row['epoch_time_s']:.1f}s)"


def run_callbacks(cfg: Any, run_dir: Path, mode: str, title: str, stop: StopRequest) -> list[Any]:
    """The run's own callbacks (checkpoints, logs, fault handling with GracefulStop last, progress bar), with the
    user's callbacks from the `callbacks` config group after cnnlab's logs and before its fault handling."""
    callbacks: list[Any] = [
        EpochCheckpoint(dirpath=run_dir / CHECKPOINT_DIR, filename="best", monitor=cfg.monitor, mode=mode,
                        save_top_k=1, enable_version_counter=False, auto_insert_metric_name=False),
        # Every epoch's end (Lightning's save_last only follows the best): what resume and failures fall back on.
        # Lightning would save it after validations only when they skip epochs (check_val_every_n_epoch > 1).
        EpochCheckpoint(dirpath=run_dir / CHECKPOINT_DIR, filename="last", enable_version_counter=False,
                        save_on_train_epoch_end=True if (cfg.trainer.get("check_val_every_n_epoch") or 1) != 1
                        else None),
        LearningRates(),
        RunLog(run_dir, title=title),
        *user_callbacks(cfg),
        *fault_callbacks(cfg, run_dir, stop),
    ]
    extras = cfg.get("tensorboard") or {}
    if extras.get("histograms_every") or extras.get("grad_norm") or extras.get("misclassified"):
        from cnnlab.train.tensorboard import TensorBoardExtras

        callbacks.append(TensorBoardExtras(extras.get("histograms_every") or 0, bool(extras.get("grad_norm")),
                                           extras.get("misclassified") or 0))
    if cfg.early_stopping.enabled:
        # Checked right after each validation, not at the training epoch's end: an epoch cut short by max_steps
        # has no validation, and would stop the run with a missing metric (epoch 1) or count a stale one.
        callbacks.append(EarlyStopping(monitor=cfg.monitor, mode=mode, patience=cfg.early_stopping.patience,
                                       min_delta=cfg.early_stopping.min_delta, check_on_train_epoch_end=False))
    bar = cfg.progress_bar
    if bar == "auto":
        bar = "rich" if sys.stdout.isatty() else "none"
    if bar in ("rich", "tqdm"):
        callbacks.append(progress_bar(bar))
    return callbacks


class CountsSteps:
    """Progress-bar mixin: the bar counts training batches (optimizer steps) when Lightning's calls take several
    (steps_per_execution), not the calls."""

    @property
    def total_train_batches(self) -> int | float:
        per_epoch = getattr(self.trainer.train_dataloader, "batches_per_epoch", None)  # type: ignore[attr-defined]
        return per_epoch if per_epoch is not None else super().total_train_batches  # type: ignore[misc]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if isinstance(batch, Chunk):
            batch_idx = batch.first + batch.taken - 1  # the last batch the call trained on
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # type: ignore[misc]


def progress_bar(kind: str) -> pl.Callback:
    """Lightning's rich or tqdm bar, counting epochs from 1 like metrics.csv and the done line (`Epoch 1/3`), and
    training batches (CountsSteps)."""
    if kind == "rich":
        from pytorch_lightning.callbacks import RichProgressBar

        class OneBasedRich(CountsSteps, RichProgressBar):
            def _get_train_description(self, current_epoch: int) -> str:
                text = f"Epoch {current_epoch + 1}"
                if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
                    text += f"/{self.trainer.max_epochs}"
                return text

        return OneBasedRich()
    from pytorch_lightning.callbacks import TQDMProgressBar

    class OneBasedTqdm(CountsSteps, TQDMProgressBar):
        def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:  # Lightning's, one-based
            if self._leave:
                self.train_progress_bar = self.init_train_tqdm()
            batches = self.total_train_batches
            self.train_progress_bar.reset(total=None if batches == float("inf") else batches)
            self.train_progress_bar.initial = 0
            total = f"/{trainer.max_epochs}" if trainer.max_epochs is not None and trainer.max_epochs > 0 else ""
            self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}{total}")

    return OneBasedTqdm()


def named_nodes(cfg: Any, group: str, example: str) -> dict[str, dict[str, Any]]:
    """The entries of a group of named `_target_` nodes (`callbacks`, `logger`) as plain dicts, descriptions and
    null entries (which switch one off) left out; one ConfigError line for a node of another shape."""
    from omegaconf import OmegaConf

    node = cfg.get(group)
    if node is None:
        return {}
    if not OmegaConf.is_dict(node):
        raise ConfigError(group, OmegaConf.to_container(node) if OmegaConf.is_config(node) else node, message=(
            f"{group}: a node of named {group} entries, e.g. {example}"))
    found = {}
    for name, entry in OmegaConf.to_container(node, resolve=True).items():
        if name in META_KEYS or entry is None:
            continue
        if not isinstance(entry, dict) or "_target_" not in entry:
            raise ConfigError(f"{group}.{name}", entry, f"a node with the _target_ of a Lightning {group} class")
        found[name] = entry
    return found


def callback_nodes(cfg: Any) -> dict[str, dict[str, Any]]:
    """The `callbacks` node's entries (the user's Lightning callbacks) as plain dicts."""
    return named_nodes(cfg, "callbacks", "+callbacks.swa._target_=pytorch_lightning.callbacks."
                                         "StochasticWeightAveraging +callbacks.swa.swa_lrs=0.01")


def user_callbacks(cfg: Any) -> list[pl.Callback]:
    """The user's callbacks from the `callbacks` config group, in the order of its keys."""
    callbacks = []
    for name, entry in callback_nodes(cfg).items():
        callback = instantiate(entry)
        if not isinstance(callback, pl.Callback):
            raise ConfigError(f"callbacks.{name}._target_", entry["_target_"], message=(
                f"callbacks.{name}._target_={entry['_target_']} built a {type(callback).__name__}, not a Lightning "
                "callback (pytorch_lightning.Callback)"))
        callbacks.append(callback)
    return callbacks


def fault_callbacks(cfg: Any, run_dir: Path, request: StopRequest) -> list[pl.Callback]:
    """The fault-handling callbacks of one run (GracefulStop last, so a checkpoint it saves follows the others)."""
    result: list[pl.Callback] = [ResumeState(), FiniteLossGuard()]
    inject = cfg.get("fault_injection") or {}
    if inject.get("signal_at_step") is not None or inject.get("nan_at_step") is not None:
        result.append(FaultInjection(inject.get("signal_at_step"), inject.get("signal", "SIGTERM"),
                                     inject.get("nan_at_step")))
    result.append(GracefulStop(request, last_checkpoint(run_dir)))
    return result
