"""Lightning pieces replaced to save time per training step, each with the cost it removes (measured on a
2-core CPU with scripts/bench_overhead.py; a small model's own step takes ~1-3 ms there).

| replacement            | replaces                                  | cost removed per step                      |
|------------------------|-------------------------------------------|--------------------------------------------|
| EpochMeans             | MeanMetric + Accuracy + self.log per step | ~0.25 ms metrics, ~0.7 ms per log call     |
|   .add_steps           | EpochMeans.update per step of a chunk     | ~0.1 ms (steps_per_execution)              |
| LearningRates          | LearningRateMonitor                       | ~0.3 ms (a logger call per step)           |
| CallbackGroup          | one Lightning callback per cnnlab callback | ~18 us per callback                       |
| EpochCheckpoint        | ModelCheckpoint's per-batch checks        | ~30 us per checkpoint callback             |
| LeanSteps              | LightningModule.configure_gradient_clipping with nothing to clip | ~30 us          |
| cpu_cuda_check         | PYTORCH_NVML_BASED_CUDA_CHECK on CPU runs | ~60 us (Adam asks for CUDA every step)     |
| StepHooks              | manual_backward + LightningOptimizer.step in steps_per_execution's chunks | ~0.2 ms |

Everything else in cnnlab uses Lightning's own pieces as their users know them. Each replacement is tested to
give the same results as the piece it replaces (tests/test_fastpaths.py), and the private Lightning and
torchmetrics names they lean on are checked by tests/test_private_apis.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import Tensor
from torchmetrics import Metric

from cnnlab.train.optim import lr_tags


class EpochMeans(Metric):
    """The sample-weighted mean loss and the accuracy of one epoch, kept as running sums on the loss's device.

    Multi-class accuracy is top-1; multi-label accuracy is the fraction of label decisions (thresholded at 0.5) that
    are right. Updated every step, so it is a few in-place additions: torchmetrics' MeanMetric and
    MulticlassAccuracy cost ~0.25 ms a step on a small model (input checks, one-hot statistics). compute() reduces
    the sums over DDP ranks, and the states travel in mid-epoch checkpoints (cnnlab.faults.ResumeState).
    """

    full_state_update = False

    def __init__(self, multilabel: bool = False):
        super().__init__()
        self.multilabel = multilabel
        self.add_state("loss_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("samples", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("decisions", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, loss: Tensor, probs: Tensor, targets: Tensor) -> None:
        """`loss` is the batch mean; `probs` (B, C): class probabilities, or any scores that rank the classes as
        they do (Objective.decision_scores); `targets` as ClassifierModule._step returns them."""
        self.loss_sum += loss.detach().float() * len(targets)
        self.samples += len(targets)
        correct, decisions = self.hits(probs, targets)
        self.correct += correct
        self.decisions += decisions

    def hits(self, probs: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        """(right decisions as a tensor, decisions) of one batch."""
        if self.multilabel:
            return ((probs > 0.5) == targets.bool()).sum(), targets.numel()  # torchmetrics' rule: > threshold
        return (probs.argmax(1) == targets).sum(), len(targets)

    def step_outcome(self, probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """What `add_steps` keeps of one step: (predicted classes, targets), or for multi-label data its hits."""
        if self.multilabel:
            correct, decisions = self.hits(probs, targets)
            return correct, torch.tensor(decisions)
        return probs.argmax(1), targets

    def add_steps(self, losses: list[Tensor], sizes: list[int], outcomes: list[tuple[Tensor, Tensor]]) -> None:
        """Several steps at once (steps_per_execution's chunk), as `update` of each in turn would add them: the
        losses weighted and summed in the same order (the same float rounding), the counts exactly; a few tensor
        operations per chunk rather than eight per step and one torchmetrics call (~0.1 ms a step on a 2-core CPU)."""
        if not losses:
            return
        weighted = torch.stack(losses).float() * torch.tensor(sizes, device=losses[0].device)
        for value in weighted:  # one addition at a time, as `update` makes them
            self.loss_sum += value
        self.samples += sum(sizes)
        first, second = (torch.cat([outcome[i].reshape(-1) for outcome in outcomes]) for i in (0, 1))
        if self.multilabel:  # (hits, decisions) of each step
            self.correct += first.sum()
            self.decisions += int(second.sum())
        else:  # predicted classes and targets of each step
            self.correct += (first == second).sum()
            self.decisions += len(second)
        self._update_count += len(losses)  # what torchmetrics' update wrapper counts, once per batch
        self._computed = None

    def compute(self) -> dict[str, Tensor]:
        return {"loss": self.loss_sum / self.samples, "acc": self.correct / self.decisions}


class LearningRates(pl.Callback):
    """The lr of every parameter group at every optimizer step, in TensorBoard under the tags of optim.lr_tags.

    Lightning's LearningRateMonitor sends each step's lr through the loggers as the batch begins, which cost ~0.3 ms a
    step (the largest per-step cost next to a small model's own work). This reads the rates into a list and hands
    them to the loggers every `flush_every` steps, at each epoch's end, before a checkpoint is written and when
    training stops or fails, so TensorBoard ends up with the same points.
    """

    def __init__(self, flush_every: int = 200):
        self.flush_every = flush_every
        self.tags: list[str] = []
        self.pending: list[tuple[int, list[float]]] = []  # (step, lr of each group) not yet written
        self.last_step = -1

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        # Once per optimizer step (after gradient accumulation, and for each of several steps in one Lightning
        # step: steps_per_execution), before the schedulers move on: the rate this step uses.
        step = trainer.global_step
        if step == self.last_step:  # a second optimizer of the same step: recorded with the first
            return
        self.last_step = step
        optimizers = trainer.optimizers
        self.pending.append((step, [group["lr"] for each in optimizers for group in each.param_groups]))
        if len(self.pending) >= self.flush_every:
            self.flush(trainer)

    def flush(self, trainer: pl.Trainer) -> None:
        if not self.pending:
            return
        if not self.tags:
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
        from pytorch_lightning.callbacks import Checkpoint, ProgressBar

        def groupable(callback: pl.Callback) -> bool:  # Lightning finds its checkpoints and progress bar by type
            return (type(callback).__module__.startswith("cnnlab.")
                    and not isinstance(callback, (Checkpoint, ProgressBar))
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




class EpochCheckpoint(ModelCheckpoint):
    """ModelCheckpoint saving at epoch ends only, without its per-step costs (~30 us a step each, measured).

    Lightning rebuilds a checkpoint callback's state_key (a repr of its settings) at every hook call and runs its
    step-based save checks after every batch; neither can change the outcome for one that saves per epoch.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        # ModelCheckpoint's own key, so checkpoints written before this class existed restore the best score.
        self._key = super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    @property
    def state_key(self) -> str:
        return self._key

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        return None

    # Relocatable runs: the checkpoint records its paths relative to the checkpoint folder (dirpath "."), so a
    # copied or moved run resumes from its new place and never reads or writes the old one. Not a speed matter,
    # but this is cnnlab's one ModelCheckpoint class.
    def state_dict(self) -> dict[str, Any]:
        return relative_paths(super().state_dict(), str(self.dirpath))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(absolute_paths(state_dict, str(self.dirpath)))


PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


def _relative(path: Any, folder: str) -> Any:
    if not isinstance(path, str) or not path:
        return path
    try:
        return os.path.relpath(path, folder) if os.path.isabs(path) else path
    except ValueError:  # another drive (Windows)
        return path


def relative_paths(state: dict[str, Any], dirpath: str) -> dict[str, Any]:
    """A ModelCheckpoint state with its paths relative to its own folder (recorded as dirpath ".")."""
    state = dict(state)
    for key in PATH_KEYS:
        state[key] = _relative(state.get(key), dirpath)
    if isinstance(state.get("best_k_models"), dict):
        state["best_k_models"] = {_relative(k, dirpath): v for k, v in state["best_k_models"].items()}
    state["dirpath"] = "."
    return state


def _here(path: Any, saved_dir: str, dirpath: str) -> Any:
    """A recorded path as it lies in this checkpoint folder; a file the old folder held is taken from this one."""
    if not isinstance(path, str) or not path:
        return path
    if not os.path.isabs(path):
        return os.path.join(dirpath, path)
    relative = os.path.relpath(path, saved_dir) if saved_dir not in ("", ".") else os.path.basename(path)
    if relative.startswith(".."):  # outside the old checkpoint folder: keep only its name, in this one
        relative = os.path.basename(path)
    return os.path.join(dirpath, relative)


def absolute_paths(state: dict[str, Any], dirpath: str) -> dict[str, Any]:
    """A saved ModelCheckpoint state (relative, or absolute from an older run or another place) in this folder."""
    state = dict(state)
    saved_dir = state.get("dirpath") or "."
    for key in PATH_KEYS:
        if key in state:
            state[key] = _here(state[key], str(saved_dir), dirpath)
    if isinstance(state.get("best_k_models"), dict):
        state["best_k_models"] = {_here(k, str(saved_dir), dirpath): v for k, v in state["best_k_models"].items()}
    state["dirpath"] = dirpath
    return state




class LeanSteps:
    """LightningModule mixin: gradient clipping only when there is something to clip.

    Lightning's own path checks its settings at every step (~30 us) even with nothing to clip.
    """

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        if gradient_clip_val:
            super().configure_gradient_clipping(optimizer, gradient_clip_val,  # type: ignore[misc]
                                                gradient_clip_algorithm)


class StepHooks:
    """The optimizer-step half of Lightning's manual optimisation, for steps_per_execution's chunks, without the cost
    of its dispatch (~0.2 ms a step on a 2-core CPU, measured against the same steps through manual_backward and
    LightningOptimizer.step: a tenth of the MLP's step).

    `backward` and `step` call what Lightning's `manual_backward` and `LightningOptimizer.step` call, in its order
    (on_before_backward, the module's `backward` hook, on_after_backward; the optimizer-step progress that counts
    global_step, on_before_optimizer_step, the optimizer's step), but each hook only on the callbacks and module
    that define it, as CallbackGroup does. Used only where Lightning's own path adds nothing else: one device, the
    plain fp32 precision plugin (no loss scaler), no profiler; `applies` says so, else Lightning's path is taken.
    """

    HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")

    def __init__(self, trainer: pl.Trainer, module: pl.LightningModule):
        self.trainer, self.module = trainer, module
        self.takers: dict[str, list[Any]] = {}
        for hook in self.HOOKS:
            base = getattr(pl.Callback, hook)
            self.takers[hook] = [getattr(c, hook) for c in trainer.callbacks
                                 if getattr(getattr(c, hook), "__func__", getattr(c, hook)) is not base]
            own = getattr(module, hook)  # the class's, or one set on the instance (ClassifierModule's clipping)
            if getattr(own, "__func__", own) is not getattr(pl.LightningModule, hook):
                self.takers[hook].append(lambda _trainer, _module, *args, own=own: own(*args))

    @staticmethod
    def applies(trainer: pl.Trainer) -> bool:
        from pytorch_lightning.plugins.precision import Precision
        from pytorch_lightning.profilers import PassThroughProfiler
        from pytorch_lightning.strategies import SingleDeviceStrategy

        return (type(trainer.strategy) is SingleDeviceStrategy and type(trainer.precision_plugin) is Precision
                and type(trainer.profiler) is PassThroughProfiler)

    def _call(self, hook: str, *args: Any) -> None:
        takers = self.takers[hook]
        if not takers:
            return
        module = self.module
        previous = module._current_fx_name
        object.__setattr__(module, "_current_fx_name", hook)  # what self.log checks, as Lightning sets it
        for taker in takers:
            taker(self.trainer, module, *args)
        object.__setattr__(module, "_current_fx_name", previous)

    def backward(self, loss: Tensor) -> None:
        self._call("on_before_backward", loss)
        self.module.backward(loss)
        self._call("on_after_backward")

    def step(self, optimizer: Any) -> None:
        """`optimizer`: the LightningOptimizer the module's `optimizers()` returns."""
        optimizer._on_before_step()  # the manual loop's step progress: trainer.global_step
        self._call("on_before_optimizer_step", optimizer.optimizer)
        optimizer.optimizer.step()
        optimizer._on_after_step()


NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


@contextmanager
def cpu_cuda_check(on_cpu: bool) -> Iterator[None]:
    """On a CPU run, PYTORCH_NVML_BASED_CUDA_CHECK unset for the run's duration, then put back.

    Lightning sets it (so that checking for CUDA does not break later forks); with it, torch.cuda.is_available()
    tries to load NVML at each call, and Adam/AdamW ask at every step (Optimizer._accelerator_graph_capture_health_
    check): ~60 us a step on a machine without a GPU driver. A run on the CPU never forks a CUDA user, so the plain
    check (~1 us) is safe.
    """
    saved = os.environ.get(NVML_CHECK)
    if on_cpu:
        os.environ.pop(NVML_CHECK, None)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(NVML_CHECK, None)
        else:
            os.environ[NVML_CHECK] = saved
