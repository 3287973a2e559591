"""Stopping a run on a signal: SIGINT (Ctrl-C) and SIGTERM (what cluster schedulers send).

`StopRequest` turns them into a request to stop at the next safe point; `GracefulStop` then saves
`checkpoints/last.ckpt` and ends the run as `RunInterrupted`. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(Exception):
    """The run stopped on a signal: after saving a resumable checkpoint, or at once (`at_once`) on a second one."""

    def __init__(self, signal_name: str, epoch: int, step: int, checkpoint: Path | None, at_once: bool = False):
        self.signal_name, self.epoch, self.step, self.checkpoint = signal_name, epoch, step, checkpoint
        self.at_once = at_once
        how = f"stopped at once by a second {signal_name}" if at_once else f"interrupted by {signal_name}"
        super().__init__(f"{how} at epoch {epoch}, step {step}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process stopped by that signal."""
        return 128 + int(signal.Signals[self.signal_name])


# ------------------------------------------------------------------ signals

class StopRequest:
    """While active, SIGINT and SIGTERM only record a request to stop; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
            self.install()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def install(self) -> None:
        """(Re)claim the signals: Lightning puts its own SIGTERM handler in place during fit and test."""
        if self._previous:
            for sig in SIGNALS:
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name


class GracefulStop(Checkpoint):
    """After a stop request: save `last.ckpt` at the next safe point and raise RunInterrupted.

    Mid-epoch, the safe point is the end of the current training step. In the epoch's last step the run first
    finishes the epoch (validation, its metrics.csv row and TensorBoard points), saves at the epoch's end like
    the epoch checkpoints, and stops as the next epoch (or the end of training) begins. Being a `Checkpoint`,
    Lightning runs it after the other callbacks, so the ModelCheckpoints have seen the epoch first.
    """

    def __init__(self, request: StopRequest, checkpoint: Path):
        self.request, self.checkpoint = request, Path(checkpoint)
        self.saved_at: int | None = None  # the global step of the checkpoint saved
        self.saved_epoch = 0  # and the epoch (from 1) its last step belonged to

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.request.install()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.request.install()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.request.signal_name and batch_idx + 1 < trainer.num_training_batches:
            self._save(trainer)
            self.stop(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.request.signal_name:
            self._save(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.request.signal_name and self.saved_at == trainer.global_step:
            self.stop(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.request.signal_name:
            if self.saved_at != trainer.global_step:
                self._save(trainer)
            self.stop(trainer)

    def _save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.checkpoint)
        self.saved_at, self.saved_epoch = trainer.global_step, trainer.current_epoch + 1

    def stop(self, trainer: pl.Trainer) -> None:
        """End the run, naming the checkpoint to resume from."""
        saved = self.saved_at == trainer.global_step
        epoch = self.saved_epoch if saved else trainer.current_epoch + 1
        raise RunInterrupted(self.request.signal_name or "SIGINT", epoch, trainer.global_step,
                             self.checkpoint if self.checkpoint.exists() else None)


def raise_if_stop_requested(trainer: pl.Trainer) -> None:
    """After fit and test: a signal that came during the last validation or the test still ends the run."""
    for callback in trainer.callbacks:
        if isinstance(callback, GracefulStop) and callback.request.signal_name:
            callback.stop(trainer)
