"""Optimizers and learning-rate schedules: one small function per scheduler option, linear warmup in front of any.

Every schedule is stepped once per optimizer step (Lightning `interval: step`), so warmup can precede any of them
and the lr is exact at every step; `step` and `plateau` still act at epoch boundaries. The module only hands over
the run's length and monitored metric (`RunLength.of`); interval and monitor are set here, never by the user.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from cnnlab.config import instantiate
from cnnlab.errors import ConfigError

# Keys of an optimizer / scheduler node that cnnlab reads itself and never passes to the `_target_`.
DECAY_EXCLUSION_KEY = "no_decay_bias_and_norm"
WARMUP_KEYS = ("warmup_steps", "warmup_fraction")
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


@dataclass(frozen=True)
class RunLength:
    """What a scheduler needs to know about its run: its length in optimizer steps and the monitored metric."""

    total_steps: int | None  # optimizer steps in the whole run; None when the run has no set end
    steps_per_epoch: int  # optimizer steps per epoch: batches / accumulation, rounded up (Lightning steps on the last)
    batches_per_epoch: int
    monitor: str = "val/acc"
    mode: str = "max"

    @classmethod
    def of(cls, trainer: Any, monitor: str, mode: str) -> RunLength:
        """The run a Lightning Trainer is about to fit (loads the training dataloader if not loaded yet)."""
        total = trainer.estimated_stepping_batches
        if trainer.train_dataloader is None:  # max_epochs=-1: the estimate returned without loading the data
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        per_epoch = getattr(trainer.train_dataloader, "batches_per_epoch", None)
        if per_epoch is not None:  # steps_per_execution: Lightning counts chunks; a step is a batch
            batches = per_epoch
            if math.isfinite(total) and trainer.max_epochs not in (None, -1):
                total = per_epoch * max(trainer.max_epochs, 1)
                total = min(total, trainer.max_steps) if trainer.max_steps != -1 else total
        batches = int(batches) if math.isfinite(batches) else 1
        return cls(total_steps=int(total) if math.isfinite(total) else None,
                   steps_per_epoch=math.ceil(batches / trainer.accumulate_grad_batches),
                   batches_per_epoch=batches, monitor=monitor, mode=mode)

    @classmethod
    def nominal(cls, cfg: Any, mode: str) -> RunLength:
        """A long stand-in run to check option values before any data is loaded (length checks wait for fit)."""
        max_steps, max_epochs = cfg.trainer.get("max_steps", -1), cfg.trainer.get("max_epochs")
        total = max_steps if max_steps != -1 else None if max_epochs == -1 else 10**9
        return cls(total_steps=total, steps_per_epoch=1000, batches_per_epoch=1000, monitor=cfg.monitor, mode=mode)


# ------------------------------------------------------------------ optimizers

# Ranges of the torch/Lion optimizer arguments, checked before the optimizer is built so that a bad value is
# reported with its key (the optimizers themselves raise a ValueError or an assert without it).
_RANGES: dict[str, tuple[Any, str]] = {
    "lr": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "eps": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "momentum": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "dampening": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "alpha": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "rho": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "lr_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "initial_accumulator_value": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "momentum_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "betas": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
              "two numbers in [0, 1), e.g. [0.9, 0.999]"),
}


def parameter_groups(model: nn.Module, no_decay_bias_and_norm: bool = False) -> list[dict[str, Any]]:
    """The trainable parameters as optimizer groups; biases and norm-layer parameters get weight_decay 0 if asked."""
    decay: list[nn.Parameter] = []
    exempt: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            is_exempt = no_decay_bias_and_norm and (name == "bias" or isinstance(module, NORM_LAYERS))
            (exempt if is_exempt else decay).append(param)
    if not exempt:
        return [{"params": decay}]
    # Named groups show up as lr-OPTIMIZER/decay and lr-OPTIMIZER/no_decay in TensorBoard.
    return [g for g in ({"params": decay, "name": "decay"}, {"params": exempt, "name": "no_decay", "weight_decay": 0.0})
            if g["params"]]


def build_optimizer(node: Any, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over the model's trainable parameters; a bad value is a ConfigError."""
    for key, (ok, allowed) in _RANGES.items():
        if key in node:
            value = node[key]
            value = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
            _require(ok(value), f"optimizer.{key}", value, allowed)
    exclude = node.get(DECAY_EXCLUSION_KEY, False)
    _require(isinstance(exclude, bool), f"optimizer.{DECAY_EXCLUSION_KEY}", exclude, "true or false")
    # Plain lists, not OmegaConf ones: optimizer state goes into checkpoints that are loaded weights-only.
    make = instantiate(node, drop=(DECAY_EXCLUSION_KEY,), _partial_=True, _convert_="all")
    try:
        return make(parameter_groups(model, exclude))
    except (TypeError, ValueError) as error:  # e.g. nesterov without momentum, or an argument the class lacks
        raise ConfigError("optimizer", message=f"optimizer ({node.get('_target_')}): {error}") from None


# ------------------------------------------------------------------ schedulers

def build_scheduler(node: Any, optimizer: torch.optim.Optimizer, run: RunLength) -> list[dict[str, Any]]:
    """Lightning lr-scheduler configs for the configured schedule with its warmup (empty for a constant lr)."""
    warmup = warmup_steps(node, run)
    main = None
    if node.get("_target_") is not None:
        # The schedule runs over what is left after the warmup (a cosine still ends at its floor on the last step).
        rest = replace(run, total_steps=None if run.total_steps is None else run.total_steps - warmup)
        main = instantiate(node, drop=WARMUP_KEYS, optimizer=optimizer, run=rest)
    ramp = linear_warmup(optimizer, warmup) if warmup else None
    if isinstance(main, lr_scheduler.ReduceLROnPlateau):
        # Stepped on the epoch's last batch, right after validation.
        plateau = {"scheduler": main, "interval": "step", "frequency": run.batches_per_epoch,
                   "monitor": run.monitor, "strict": True}
        return ([{"scheduler": ramp, "interval": "step"}] if ramp else []) + [plateau]
    if ramp is not None and main is not None:
        main = lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
    schedule = main if main is not None else ramp
    return [] if schedule is None else [{"scheduler": schedule, "interval": "step"}]


def lr_tags(optimizers: Sequence[torch.optim.Optimizer]) -> list[str]:
    """TensorBoard tags of the lr of every parameter group, LearningRateMonitor's names: `lr-Adam`; with several
    groups `lr-Adam/<group name>` (`decay`, `no_decay`) or `lr-Adam/pgN`; `lr-Adam-1` for a second Adam.
    The same whatever the schedule, so the runs of a sweep line up."""
    tags, seen = [], {}
    for optimizer in optimizers:
        name = type(optimizer).__name__
        base = f"lr-{name}" + (f"-{seen[name]}" if name in seen else "")
        seen[name] = seen.get(name, 0) + 1
        groups = optimizer.param_groups
        if len(groups) == 1:
            tags.append(base)
        else:
            tags += [f"{base}/{group.get('name') or f'pg{i + 1}'}" for i, group in enumerate(groups)]
    return tags


# cnnlab's schedules whose shape is set by the run's length (their torch schedulers keep it in their state).
_SIZED_BY_RUN = ("cnnlab.train.optim.multistep", "cnnlab.train.optim.cosine", "cnnlab.train.optim.onecycle")


def sized_by_run(node: Any) -> str | None:
    """What of the schedule config is sized by the run's length (`scheduler=onecycle`, `scheduler.warmup_fraction`),
    or None: a resumed run keeps the restored schedule, so it cannot change its length under it."""
    if node.get("warmup_fraction"):
        return "scheduler.warmup_fraction"
    target = node.get("_target_")
    return f"scheduler={str(target).rsplit('.', 1)[-1]}" if target in _SIZED_BY_RUN else None


def _total(run: RunLength, what: str) -> int:
    if run.total_steps is None:
        raise ConfigError("trainer.max_epochs", -1,
                          f"a finite run (trainer.max_epochs or trainer.max_steps) for {what}")
    return run.total_steps


def warmup_steps(node: Any, run: RunLength) -> int:
    """The number of warmup steps from `warmup_steps` or `warmup_fraction` (of the run's optimizer steps)."""
    steps, fraction = node.get("warmup_steps", 0), node.get("warmup_fraction", 0.0)
    _require(_is_integer(steps) and steps >= 0, "scheduler.warmup_steps", steps, "an integer >= 0 (optimizer steps)")
    _require(_is_number(fraction) and 0 <= fraction < 1, "scheduler.warmup_fraction", fraction, "a number in [0, 1)")
    if fraction:
        _require(steps == 0, "scheduler.warmup_steps", steps, "0 when scheduler.warmup_fraction is set (give one)")
        steps = max(1, math.floor(fraction * _total(run, "scheduler.warmup_fraction")))
    if steps and run.total_steps is not None:
        _require(steps < run.total_steps, "scheduler.warmup_steps", steps,
                 f"the whole run has only {run.total_steps} optimizer steps; give a warmup shorter than the run "
                 f"(or scheduler.warmup_fraction, a share of it)")
    return steps


def linear_warmup(optimizer: torch.optim.Optimizer, steps: int) -> lr_scheduler.LinearLR:
    """Optimizer step k (1-based) of the warmup uses lr * k / steps: the full lr on the last warmup step."""
    return lr_scheduler.LinearLR(optimizer, start_factor=1.0 / steps, end_factor=1.0, total_iters=steps - 1)


class ExpDecay:
    """decay_rate ** (step / decay_steps), the exponent floored when staircase."""

    def __init__(self, decay_rate: float, decay_steps: int, staircase: bool):
        self.decay_rate, self.decay_steps, self.staircase = decay_rate, decay_steps, staircase

    def __call__(self, step: int) -> float:
        exponent = step / self.decay_steps
        if self.staircase:
            exponent = math.floor(exponent)
        return self.decay_rate ** exponent


def exp_decay(optimizer: torch.optim.Optimizer, run: RunLength, decay_rate: float = 0.96, decay_steps: int = 100,
              staircase: bool = False) -> lr_scheduler.LRScheduler:
    """Exponential decay per optimizer step: lr * decay_rate ^ (global_step / decay_steps)."""
    _require(_is_number(decay_rate) and decay_rate > 0, "scheduler.decay_rate", decay_rate, "a number > 0")
    _require(_is_number(decay_steps) and decay_steps > 0, "scheduler.decay_steps", decay_steps, "a number > 0")
    _require(isinstance(staircase, bool), "scheduler.staircase", staircase, "true or false")
    return lr_scheduler.LambdaLR(optimizer, ExpDecay(decay_rate, decay_steps, staircase))


def step(optimizer: torch.optim.Optimizer, run: RunLength, step_size: int = 1,
         gamma: float = 0.5) -> lr_scheduler.LRScheduler:
    """Multiply the lr by gamma every step_size epochs."""
    _require(_is_integer(step_size) and step_size >= 1, "scheduler.step_size", step_size, "an integer >= 1 (epochs)")
    _require(_is_number(gamma) and gamma > 0, "scheduler.gamma", gamma, "a number > 0")
    return lr_scheduler.StepLR(optimizer, step_size * run.steps_per_epoch, gamma)


def multistep(optimizer: torch.optim.Optimizer, run: RunLength, milestones: Any = (0.33, 0.66),
              gamma: float = 0.1) -> lr_scheduler.LRScheduler:
    """Multiply the lr by gamma at each milestone, given as a fraction of the run's optimizer steps."""
    fractions = list(milestones) if isinstance(milestones, Sequence) and not isinstance(milestones, str) else []
    _require(bool(fractions) and all(_is_number(f) and 0 < f < 1 for f in fractions)
             and all(a < b for a, b in zip(fractions, fractions[1:])), "scheduler.milestones", milestones,
             "increasing fractions of the run in (0, 1), e.g. [0.33, 0.66]")
    _require(_is_number(gamma) and gamma > 0, "scheduler.gamma", gamma, "a number > 0")
    total = _total(run, "scheduler=multistep")
    return lr_scheduler.MultiStepLR(optimizer, [round(f * total) for f in fractions], gamma)


def cosine(optimizer: torch.optim.Optimizer, run: RunLength, min_lr_fraction: float = 0.0) -> lr_scheduler.LRScheduler:
    """Cosine annealing per optimizer step from lr to lr * min_lr_fraction, reached on the run's last step."""
    _require(_is_number(min_lr_fraction) and 0 <= min_lr_fraction <= 1, "scheduler.min_lr_fraction",
             min_lr_fraction, "a number in [0, 1]")
    group = optimizer.param_groups[0]
    lr = group.get("initial_lr", group["lr"])
    total = _total(run, "scheduler=cosine")
    return lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=min_lr_fraction * lr)


def onecycle(optimizer: torch.optim.Optimizer, run: RunLength, pct_start: float = 0.3, div_factor: float = 25.0,
             final_div_factor: float = 1e4, anneal_strategy: str = "cos", three_phase: bool = False,
             cycle_momentum: bool = True, base_momentum: float = 0.85,
             max_momentum: float = 0.95) -> lr_scheduler.LRScheduler:
    """1cycle: up from lr/div_factor to the optimizer's lr (the peak), then down to lr/div_factor/final_div_factor."""
    _require(_is_number(pct_start) and 0 < pct_start < 1, "scheduler.pct_start", pct_start, "a number in (0, 1)")
    for key, value in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
        _require(_is_number(value) and value > 0, f"scheduler.{key}", value, "a number > 0")
    _require(anneal_strategy in ("cos", "linear"), "scheduler.anneal_strategy", anneal_strategy, "cos or linear")
    _require(isinstance(cycle_momentum, bool), "scheduler.cycle_momentum", cycle_momentum, "true or false")
    for key, value in (("base_momentum", base_momentum), ("max_momentum", max_momentum)):
        _require(_is_number(value) and 0 <= value < 1, f"scheduler.{key}", value, "a number in [0, 1)")
    # Momentum (or Adam's beta1) is cycled only where the optimizer uses one.
    has_momentum = "betas" in optimizer.defaults or optimizer.defaults.get("momentum", 0) > 0
    return lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g.get("initial_lr", g["lr"]) for g in optimizer.param_groups],
        total_steps=_total(run, "scheduler=onecycle"), pct_start=pct_start, anneal_strategy=anneal_strategy,
        cycle_momentum=cycle_momentum and has_momentum, base_momentum=base_momentum, max_momentum=max_momentum,
        div_factor=div_factor, final_div_factor=final_div_factor, three_phase=three_phase)


def plateau(optimizer: torch.optim.Optimizer, run: RunLength, factor: float = 0.1, patience: int = 3,
            threshold: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0) -> lr_scheduler.ReduceLROnPlateau:
    """Multiply the lr by factor once the monitored validation metric has not improved for `patience` epochs."""
    _require(_is_number(factor) and 0 < factor < 1, "scheduler.factor", factor, "a number in (0, 1)")
    _require(_is_integer(patience) and patience >= 0, "scheduler.patience", patience, "an integer >= 0 (epochs)")
    _require(_is_number(threshold) and threshold >= 0, "scheduler.threshold", threshold, "a number >= 0")
    _require(_is_integer(cooldown) and cooldown >= 0, "scheduler.cooldown", cooldown, "an integer >= 0 (epochs)")
    _require(_is_number(min_lr) and min_lr >= 0, "scheduler.min_lr", min_lr, "a number >= 0")
    return lr_scheduler.ReduceLROnPlateau(optimizer, mode=run.mode, factor=factor, patience=patience,
                                          threshold=threshold, cooldown=cooldown, min_lr=min_lr)


# ------------------------------------------------------------------ checking a config before the run starts

def check_config(cfg: Any, mode: str) -> None:
    """Build the configured optimizer and schedule once on a stand-in model: bad values fail before data loads."""
    optimizer = build_optimizer(cfg.optimizer, nn.Linear(1, 1))
    build_scheduler(cfg.scheduler, optimizer, RunLength.nominal(cfg, mode))
