"""What a run writes into its folder as it goes: metrics.csv, curves.png, summary.json (the run-folder contract).

Run folder layout (documented in README.md):
  .hydra/              the composed config, Hydra's overrides and choices
  tb/                  TensorBoard events
  checkpoints/         best.ckpt (by the monitored metric) and last.ckpt
  metrics.csv          one row per epoch
  summary.json         choices, best / final / test metrics, parameters, duration, status
  curves.png           loss and accuracy, train vs validation
  model_summary.txt    the layer table printed at start
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

# The readers live in rundir.py (no torch) so that `cnnlab compare` can read run folders instantly.
from cnnlab.rundir import (  # noqa: F401  (re-exported: train.py and resume read them from here)
    COLUMNS,
    CURVES_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    best_epoch,
    read_metrics,
    read_summary,
)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to a temporary file beside `path`, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    lines = [",".join(COLUMNS)]
    for row in rows:
        lines.append(",".join("" if row.get(c) is None else f"{row[c]:.6g}" if isinstance(row[c], float)
                              else str(row[c]) for c in COLUMNS))
    atomic_write_text(Path(run_dir) / METRICS_FILE, "\n".join(lines) + "\n")


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Loss and accuracy per epoch, train vs validation, side by side in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            points = [(r["epoch"], r[f"{split}_{metric}"]) for r in rows if r.get(f"{split}_{metric}") is not None]
            if points:
                ax.plot(*zip(*points), style, label=f"{'validation' if split == 'val' else 'train'}", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_figure(matrix: Any, class_names: list[str], title: str = "") -> Any:
    """A matplotlib figure of a confusion matrix (rows true, columns predicted), counts written in small ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(matrix)
    size = max(4, 0.5 * len(class_names))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=90)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= 20:
        threshold = counts.max() / 2 if counts.size else 0
        for (row, col), count in np.ndenumerate(counts):
            ax.text(col, row, str(int(count)), ha="center", va="center", fontsize=7,
                    color="white" if count > threshold else "black")
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


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
            "lr": trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None,
            "epoch_time_s": round(time.perf_counter() - self._epoch_start, 3),
        }
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        write_metrics(self.run_dir, self.rows)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.rows:
            plot_curves(self.rows, self.run_dir / CURVES_FILE, self.title)


class LearningRates(pl.Callback):
    """The lr of every parameter group at every optimizer step, in TensorBoard under the tags of optim.lr_tags.

    Lightning's LearningRateMonitor sends each step's lr through the loggers as the step begins, which cost ~0.3 ms a
    step (the largest per-step cost next to a small model's own work). This reads the rates into a list and hands
    them to the loggers every `flush_every` steps, at each epoch's end, before a checkpoint is written and when
    training stops or fails, so TensorBoard ends up with the same points.
    """

    def __init__(self, flush_every: int = 200):
        self.flush_every = flush_every
        self.tags: list[str] = []
        self.pending: list[tuple[int, list[float]]] = []  # (step, lr of each group) not yet written
        self.last_step = -1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        step = trainer.global_step
        if step == self.last_step:  # gradient accumulation: several batches, one optimizer step
            return
        self.last_step = step
        optimizers = trainer.optimizers
        self.pending.append((step, [group["lr"] for optimizer in optimizers for group in optimizer.param_groups]))
        if len(self.pending) >= self.flush_every:
            self.flush(trainer)

    def flush(self, trainer: pl.Trainer) -> None:
        if not self.pending:
            return
        if not self.tags:
            from cnnlab.optim import lr_tags

            self.tags = lr_tags(trainer.optimizers)
        pending, self.pending = self.pending, []
        for logger in trainer.loggers:
            for step, rates in pending:
                logger.log_metrics(dict(zip(self.tags, rates)), step=step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flush(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.flush(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flush(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.flush(trainer)


class CallbackGroup(pl.Callback):
    """Callbacks that Lightning sees as one: each hook is passed on only to the members that define it, in order.

    Lightning calls every hook of every callback at every step, defined or not: ~18 us per callback per step
    (measured with no-op callbacks), which is felt next to a small model's step. `grouped` gathers cnnlab's
    stateless callbacks into one; Checkpoints and callbacks with a state_dict stay apart, as Lightning orders and
    keys those itself.
    """

    HOOKS = tuple(name for name in vars(pl.Callback) if name.startswith("on_") or name in ("setup", "teardown"))

    def __init__(self, members: list[pl.Callback]):
        self.members = members
        for hook in self.HOOKS:
            takers = [getattr(m, hook) for m in members if getattr(type(m), hook) is not getattr(pl.Callback, hook)]
            if takers:
                setattr(self, hook, self._fan_out(takers))

    @staticmethod
    def _fan_out(takers: list[Any]) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            for taker in takers:
                taker(*args, **kwargs)

        return call

    @property
    def state_key(self) -> str:
        return "CallbackGroup[" + ",".join(member.state_key for member in self.members) + "]"

    @staticmethod
    def grouped(callbacks: list[pl.Callback]) -> list[pl.Callback]:
        """The same callbacks, cnnlab's stateless ones gathered into one group where the first of them stood."""
        from pytorch_lightning.callbacks import Checkpoint

        def groupable(callback: pl.Callback) -> bool:
            return (type(callback).__module__.startswith("cnnlab.") and not isinstance(callback, Checkpoint)
                    and type(callback).state_dict is pl.Callback.state_dict)

        members = [c for c in callbacks if groupable(c)]
        if len(members) < 2:
            return callbacks
        first = callbacks.index(members[0])
        rest = [c for c in callbacks if not groupable(c)]
        return rest[:first] + [CallbackGroup(members)] + rest[first:]

    @staticmethod
    def flat(callbacks: list[pl.Callback]) -> list[pl.Callback]:
        """The callbacks with every group replaced by its members."""
        return [m for c in callbacks for m in (c.members if isinstance(c, CallbackGroup) else [c])]


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(Path(run_dir) / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=False) + "\n")
