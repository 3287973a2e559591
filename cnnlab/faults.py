"""Faults a run survives: SIGINT/SIGTERM, a non-finite loss, a failing job in a sweep.

- `StopRequest` turns SIGINT (Ctrl-C) and SIGTERM (what cluster schedulers send) into a request to stop at the next
  safe point; `GracefulStop` then saves `checkpoints/last.ckpt` and ends the run as `RunInterrupted`. A second
  Ctrl-C stops at once.
- `ResumeState` puts into every checkpoint what Lightning does not: RNG states and partly accumulated epoch
  metrics, so a run resumed mid-epoch continues exactly where it stopped.
- `FiniteLossGuard` stops the run at a non-finite training loss (`NonFiniteLoss`), before any checkpoint would
  store the broken weights.
- `FaultInjection` (the `fault_injection` keys in conf/train.yaml) sends a signal or breaks the weights at a chosen
  step, to try the recovery paths.
- `SweepFailures` (a Hydra callback) makes `cnnlab train -m` end with exit code 1 when some of its runs failed.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.experimental.callback import Callback as HydraCallback
from pytorch_lightning.callbacks import Checkpoint
from torchmetrics import Metric

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


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite."""


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


# ------------------------------------------------------------------ exact resume

def rng_states() -> dict[str, Any]:
    """Every global random generator's state, as tensors and plain lists (loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def metric_states(module: torch.nn.Module) -> dict[str, Any]:
    """The accumulated state of every torchmetrics metric of `module` that has seen data."""
    states = {}
    for name, metric in module.named_modules():
        if isinstance(metric, Metric) and metric.update_count > 0:
            values = {key: [v.detach().clone() for v in value] if isinstance(value, list) else value.detach().clone()
                      for key, value in metric.metric_state.items()}
            states[name] = {"state": values, "update_count": metric.update_count}
    return states


def set_metric_states(module: torch.nn.Module, states: dict[str, Any]) -> None:
    metrics = dict(module.named_modules())
    for name, saved in states.items():
        metric = metrics.get(name)
        if metric is None:  # a checkpoint from an older cnnlab (other metric names): the epoch's means restart
            continue
        for key, value in saved["state"].items():
            device = metric.device
            setattr(metric, key, [v.to(device) for v in value] if isinstance(value, list) else value.to(device))
        metric._update_count = saved["update_count"]
        metric._computed = None


class ResumeState(pl.Callback):
    """Saves what Lightning's own checkpoint leaves out; puts it back just before the first resumed step.

    That is the RNG states, partly accumulated metrics, and the training loader's position: Lightning saves the
    latter too, but never loads it back when `configure_optimizers` has already asked for the loader (to size
    a schedule through `estimated_stepping_batches`), as ours does.
    """

    def __init__(self) -> None:
        self.trainer: pl.Trainer | None = None
        self.loaded: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"rng": rng_states(), "metrics": {}}
        if self.trainer is not None:
            epoch_loop = self.trainer.fit_loop.epoch_loop
            if epoch_loop.batch_progress.current.completed < self.trainer.num_training_batches:  # mid-epoch
                state["metrics"] = metric_states(self.trainer.lightning_module)
            loader = self.trainer.train_dataloader
            if hasattr(loader, "state_dict"):
                state["train_loader"] = loader.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loaded = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The model is on its device, the sanity check is over, and the first batch is not drawn yet.
        if self.loaded is None:
            return
        loader = trainer.train_dataloader
        if "train_loader" in self.loaded and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(self.loaded["train_loader"])
        set_metric_states(pl_module, self.loaded["metrics"])
        set_rng_states(self.loaded["rng"])
        self.loaded = None


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
        step = trainer.global_step + 1  # the step about to run, counted from 1
        if step == self.signal_at_step:
            os.kill(os.getpid(), signal.Signals[self.signal_name])
        if step == self.nan_at_step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(math.nan)


def callbacks(cfg: Any, run_dir: Path, request: StopRequest) -> list[pl.Callback]:
    """The fault-handling callbacks of one run (GracefulStop last, so a checkpoint it saves follows the others)."""
    result: list[pl.Callback] = [ResumeState(), FiniteLossGuard()]
    inject = cfg.get("fault_injection") or {}
    if inject.get("signal_at_step") is not None or inject.get("nan_at_step") is not None:
        result.append(FaultInjection(inject.get("signal_at_step"), inject.get("signal", "SIGTERM"),
                                     inject.get("nan_at_step")))
    result.append(GracefulStop(request, Path(run_dir) / "checkpoints" / "last.ckpt"))
    return result


# ------------------------------------------------------------------ how a run ended

def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, (RunInterrupted, NonFiniteLoss)) or type(error).__name__ == "ConfigError":
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@contextmanager
def recorded(run_dir: Path, summary: dict[str, Any], started: float, trainer: pl.Trainer) -> Iterator[None]:
    """Write summary.json with status "interrupted" or "failed" (and the progress so far) if the block raises."""
    from cnnlab.runlog import best_epoch, read_metrics, write_summary

    try:
        yield
    except BaseException as error:
        if isinstance(error, (KeyboardInterrupt, SystemExit)):  # Lightning turns a Ctrl-C into SystemExit(1)
            error = _stopped_at_once(error, trainer, run_dir)
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
        if interrupted:
            summary["resume"] = f"cnnlab train resume={_shown(run_dir)}"
        if trainer.is_global_zero:
            write_summary(run_dir, summary)
        raise error from None


def _stopped_at_once(error: BaseException, trainer: pl.Trainer, run_dir: Path) -> RunInterrupted:
    requested = [c.request.signal_name for c in trainer.callbacks if isinstance(c, GracefulStop)]
    name = requested[0] if requested and requested[0] else "SIGINT" if isinstance(error, KeyboardInterrupt) else \
        "SIGTERM"
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    return RunInterrupted(name, trainer.current_epoch + 1, trainer.global_step, last if last.is_file() else None,
                          at_once=True)


def _checkpoint_step(path: Path) -> int | None:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step")


def _last_good(run_dir: Path) -> str:
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    if not path.is_file():
        return "no checkpoint had been written yet"
    return f"the last good checkpoint, {_shown(path)} (step {_checkpoint_step(path)}), stays"


def ended(error: BaseException, run_dir: Path, base_summary: dict[str, Any]) -> float | None:
    """How `cnnlab train` reports a run that raised: one line on stderr, and the exit code (via SystemExit).

    Interrupts stop a sweep too; in a sweep, other failures are recorded in the run's summary.json, logged with
    their traceback in its train.log, and the sweep goes on (SweepFailures sets the exit code at its end).
    """
    import logging

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from cnnlab.config import report, user_message
    from cnnlab.runlog import SUMMARY_FILE, read_summary, write_summary

    if isinstance(error, RunInterrupted):
        if error.checkpoint is None:
            saved = "no checkpoint was saved yet"
        elif error.at_once:
            saved = f"nothing saved now, the last checkpoint is {_shown(error.checkpoint)} (step " \
                    f"{_checkpoint_step(error.checkpoint)})"
        else:
            saved = f"saved {_shown(error.checkpoint)}"
        print(f"cnnlab: {error}; {saved}; resume with: cnnlab train resume={_shown(run_dir)}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
    if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: the CLI reports them
        raise error
    user_error = user_message(error)
    message = user_error or _one_line(error)
    if isinstance(error, NonFiniteLoss):
        message += f"; {_last_good(run_dir)}"
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        summary_path = Path(run_dir) / SUMMARY_FILE
        summary = read_summary(run_dir) if summary_path.is_file() else dict(base_summary)
        summary.update({"status": "failed", "error": message})
        write_summary(run_dir, summary)
        if user_error is None and not isinstance(error, NonFiniteLoss):
            logging.getLogger(__name__).error("run failed", exc_info=error)
        report(f"run {_shown(run_dir)} failed: {message}")
        return None
    if user_error is not None:
        raise SystemExit(report(user_error)) from None
    if isinstance(error, NonFiniteLoss):
        report(message)
        raise SystemExit(1) from None
    raise error


# ------------------------------------------------------------------ sweeps

class SweepFailures(HydraCallback):
    """At the end of `cnnlab train -m`: one line naming how many runs failed, and exit code 1 if any did."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from cnnlab.runlog import SUMMARY_FILE, read_summary

        sweep_dir = Path(str(config.hydra.sweep.dir))
        runs = [path.parent for path in sorted(sweep_dir.rglob(SUMMARY_FILE))
                if (path.parent / ".hydra").is_dir() and path.stat().st_mtime >= self.started - 1]
        failed = [run for run in runs if read_summary(run).get("status") == "failed"]
        if failed:
            names = ", ".join(str(run.relative_to(sweep_dir)) for run in failed)
            print(f"cnnlab: {len(failed)} of {len(runs)} runs failed ({names}); each one's summary.json says why "
                  f"(sweep folder {sweep_dir})", file=sys.stderr)
            raise SystemExit(1)
