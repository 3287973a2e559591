"""How a run fails and what it leaves: a non-finite loss, injected faults, and summary.json's status.

- `FiniteLossGuard` stops the run at a non-finite training loss (`NonFiniteLoss`), before any checkpoint would
  store the broken weights.
- `FaultInjection` (the `fault_injection` keys in conf/train.yaml) sends a signal or breaks the weights at a chosen
  step, to try the recovery paths.
- `recorded` writes summary.json as "interrupted" or "failed" when the run raises; `ended` reports it as one line
  with the exit code (in a sweep, a failed run is recorded and the sweep goes on).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from cnnlab.data.chunks import Chunk
from cnnlab.errors import FileWriteError, file_write_error_in, report, user_message
from cnnlab.runs.layout import SUMMARY_FILE, last_checkpoint, shown
from cnnlab.runs.read import best_epoch, read_metrics, read_summary
from cnnlab.runs.write import write_summary
from cnnlab.train.interrupts import GracefulStop, RunInterrupted


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite."""


# ------------------------------------------------------------------ non-finite loss

class FiniteLossGuard(pl.Callback):
    """Stops training at a NaN or infinite loss, naming the step and the last finite loss.

    Each step only keeps its loss tensor; they are checked together (one host sync) every `check_every` steps, at
    each epoch's end and before every checkpoint is written, so training pays no per-step sync or tensor work and
    no checkpoint ever holds broken weights.
    """

    def __init__(self, check_every: int = 50):
        self.check_every = max(1, check_every)
        self.losses: list[torch.Tensor] = []  # the losses of the steps not yet checked
        self.pending: list[tuple[int, int, int]] = []  # their (step, epoch, batch)
        self.scale = 1  # Lightning divides the loss by accumulate_grad_batches; the message shows the real one
        self.last_good: tuple[int, float] | None = None  # (step, loss) of the last checked finite step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        self.scale = trainer.accumulate_grad_batches
        if isinstance(batch, Chunk):  # steps_per_execution: one loss per step of the chunk, the last at global_step
            count = len(loss)
            for offset in range(count):
                self.losses.append(loss[offset])
                self.pending.append((trainer.global_step - count + offset + 1, trainer.current_epoch + 1,
                                     batch.first + offset + 1))
        else:
            self.losses.append(loss.detach())
            self.pending.append((trainer.global_step, trainer.current_epoch + 1, batch_idx + 1))
        if len(self.pending) >= self.check_every or batch_idx + 1 >= trainer.num_training_batches:
            self.check()

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.check()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check()

    def check(self) -> None:
        """Raise NonFiniteLoss if a step since the last check had a non-finite loss."""
        if not self.pending:
            return
        losses = torch.stack(self.losses).float() * self.scale
        bad = (~torch.isfinite(losses)).nonzero()
        pending, self.losses, self.pending = self.pending, [], []
        if len(bad) == 0:
            self.last_good = (pending[-1][0], float(losses[-1]))
            return
        first = int(bad[0])
        step, epoch, batch = pending[first]
        if first > 0:
            self.last_good = (pending[first - 1][0], float(losses[first - 1]))
        before = (f"the last finite loss was {self.last_good[1]:.6g} at step {self.last_good[0]}"
                  if self.last_good else "no step had a finite loss")
        raise NonFiniteLoss(f"non-finite training loss at step {step} (epoch {epoch}, batch {batch}); {before}")


# ------------------------------------------------------------------ fault injection

class FaultInjection(pl.Callback):
    """Sends `signal_name` to this process, or fills the first weight tensor with NaN, as training step N begins."""

    def __init__(self, signal_at_step: int | None = None, signal_name: str = "SIGTERM",
                 nan_at_step: int | None = None):
        self.signal_at_step, self.signal_name, self.nan_at_step = signal_at_step, signal_name, nan_at_step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # The steps about to run, counted from 1: one, or a chunk's (steps_per_execution, whose faults land at the
        # chunk's start: a signal is answered between chunks anyway).
        first = trainer.global_step + 1
        steps = range(first, first + (len(batch) if isinstance(batch, Chunk) else 1))
        if self.signal_at_step in steps:
            os.kill(os.getpid(), signal.Signals[self.signal_name])
        if self.nan_at_step in steps:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(math.nan)


# ------------------------------------------------------------------ how a run ended

def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, (RunInterrupted, NonFiniteLoss, FileWriteError)) or type(error).__name__ == "ConfigError":
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@contextmanager
def recorded(run_dir: Path, summary: dict[str, Any], started: float, trainer: pl.Trainer) -> Iterator[None]:
    """Write summary.json with status "interrupted" or "failed" (and the progress so far) if the block raises."""
    try:
        yield
    except BaseException as error:
        if isinstance(error, (KeyboardInterrupt, SystemExit)):  # Lightning turns a Ctrl-C into SystemExit(1)
            error = _stopped_at_once(error, trainer, run_dir)
        error = file_write_error_in(error) or error  # a full disk, say, wherever it surfaced
        rows = read_metrics(run_dir)
        interrupted = isinstance(error, RunInterrupted)
        summary.update({
            "status": "interrupted" if interrupted else "failed",
            "error": _one_line(error),
            "epochs": len(rows),
            "steps": trainer.global_step,
            "best": best_epoch(rows, summary["monitor"].replace("/", "_"), summary["mode"]),
            "final": rows[-1] if rows else None,
            "duration_s": round(time.time() - started, 2),
        })
        if interrupted or isinstance(error, FileWriteError):
            summary["resume"] = f"cnnlab train resume={shown(run_dir)}"
        if trainer.is_global_zero:
            try:
                write_summary(run_dir, summary)
            except FileWriteError:  # the disk that failed the run may fail this too: the error line still comes
                pass
        raise error from None


def _stopped_at_once(error: BaseException, trainer: pl.Trainer, run_dir: Path) -> RunInterrupted:
    requested = [c.request.signal_name for c in trainer.callbacks if isinstance(c, GracefulStop)]
    name = requested[0] if requested and requested[0] else "SIGINT" if isinstance(error, KeyboardInterrupt) else \
        "SIGTERM"
    last = last_checkpoint(run_dir)
    return RunInterrupted(name, trainer.current_epoch + 1, trainer.global_step, last if last.is_file() else None,
                          at_once=True)


def _checkpoint_step(path: Path) -> int | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step")
    except Exception:  # noqa: BLE001 - a message about a failure must not fail itself
        return None


def _last_good(run_dir: Path) -> str:
    path = last_checkpoint(run_dir)
    if not path.is_file():
        return "no checkpoint had been written yet"
    return f"the last good checkpoint, {shown(path)} (step {_checkpoint_step(path)}), stays"


def ended(error: BaseException, run_dir: Path, base_summary: dict[str, Any]) -> float | None:
    """How `cnnlab train` reports a run that raised: one line on stderr, and the exit code (via SystemExit).

    Interrupts stop a sweep too; in a sweep, other failures are recorded in the run's summary.json, logged with
    their traceback in its train.log, and the sweep goes on (SweepFailures sets the exit code at its end).
    """
    import logging

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if isinstance(error, RunInterrupted):
        if error.checkpoint is None:
            saved = "no checkpoint was saved yet"
        elif error.at_once:
            saved = f"nothing saved now, the last checkpoint is {shown(error.checkpoint)} (step " \
                    f"{_checkpoint_step(error.checkpoint)})"
        else:
            saved = f"saved {shown(error.checkpoint)}"
        command = f"cnnlab train resume={shown(run_dir)}"
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # the whole sweep: kept jobs, this one continued, the rest
            from cnnlab.runs.sweep_resume import resume_command

            command = f"{resume_command(Path(HydraConfig.get().sweep.dir))} (this run alone: {command})"
        print(f"cnnlab: {error}; {saved}; resume with: {command}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
    if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: the CLI reports them
        raise error
    error = file_write_error_in(error) or error
    user_error = user_message(error)
    message = user_error or _one_line(error)
    if isinstance(error, (NonFiniteLoss, FileWriteError)):
        message += f"; {_last_good(run_dir)}"
    if isinstance(error, FileWriteError):
        message += f"; free space or fix the folder, then resume with: cnnlab train resume={shown(run_dir)}"
    logging.getLogger("cnnlab").info("error: %s", " ".join(message.split()))  # train.log keeps the console's line
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        summary_path = Path(run_dir) / SUMMARY_FILE
        summary = read_summary(run_dir) if summary_path.is_file() else dict(base_summary)
        summary.update({"status": "failed", "error": message})
        try:
            write_summary(run_dir, summary)
        except FileWriteError:
            pass
        if user_error is None and not isinstance(error, NonFiniteLoss):
            logging.getLogger(__name__).error("run failed", exc_info=error)
        report(f"run {shown(run_dir)} failed: {message}")
        return None
    if user_error is not None:
        from cnnlab.runs.lock import discard_unused

        discard_unused(run_dir)  # refused by a check before any run file: no half-made folder stays behind
        raise SystemExit(report(user_error)) from None
    if isinstance(error, (NonFiniteLoss, FileWriteError)):
        report(message)
        raise SystemExit(1) from None
    raise error
