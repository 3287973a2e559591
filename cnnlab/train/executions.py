"""`steps_per_execution`: K optimizer steps in one Lightning training step (Keras's name for the same idea).

Lightning spends about half a millisecond of Python per training step whatever the model (its hooks, callbacks,
progress tracking; scripts/bench_overhead.py): a fifth to two fifths of a small model's step on a CPU, and more
than the step itself on a GPU. With K > 1 the training loader hands Lightning chunks of K batches
(cnnlab/data/chunks.py) and ClassifierModule, in manual optimisation, takes each batch of a chunk through
Lightning's own per-batch path and makes one optimizer step for it: per step, the same batches, augmentation
draws, learning rates, gradient clipping, precision, EMA, non-finite check and epoch metrics as K=1, while
Lightning's per-call cost is paid once per K steps. Checkpoints and interrupts land between chunks.

- `1` (the default) is Lightning's automatic optimisation, exactly as before this setting existed.
- An integer K > 1: K steps per call. `trainer.accumulate_grad_batches` > 1 and `trainer.overfit_batches` are
  refused with it (manual optimisation has neither), and so is validation inside an epoch
  (`trainer.val_check_interval`), which Lightning would place and act on by calls.
- `auto`: manual optimisation, with K picked before training from the measured time of a few forward/backward
  passes of the model on a training batch (weights, buffers and random state put back afterwards): the smallest K
  for which Lightning's per-call cost (LIGHTNING_CALL_S) stays under CALL_SHARE (2%) of a call, at most MAX_STEPS; 1
  for models whose steps are long, for image trees streamed from disk and with gradient accumulation. A resumed
  run keeps the K it was trained with (recorded in its checkpoints).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from cnnlab.errors import ConfigError

AUTO = "auto"
# Lightning's per-call cost in a cnnlab run: the time between two calls of the module's training step that is spent
# outside it (Lightning's loop, hooks and cnnlab's callbacks), 0.74-0.78 ms on the 2-core CPU of README
# "Performance" (the MLP on Fashion-MNIST, K=16, one thread); a faster machine has faster model steps too, so the
# ratio, which is what K follows, moves less than either.
LIGHTNING_CALL_S = 0.8e-3
# The most of a call Lightning's own cost may take under `auto`. 2%, not 5%: the per-step costs that stay (the
# batch hand-over, the epoch metrics, the lr of every step for TensorBoard) take a few % of a small model's step
# already, and a larger K costs nothing but a coarser interrupt (K steps of a fast model are a fraction of a second).
CALL_SHARE = 0.02
MAX_STEPS = 64  # auto's ceiling: interrupts, checkpoints and the progress bar wait at most this many steps


def requested(cfg: Any) -> int | str:
    """The configured steps_per_execution as 1, an integer K > 1 or "auto" (validated by `check`)."""
    value = cfg.get("steps_per_execution", 1)
    return AUTO if value == AUTO else int(value)


def manual(cfg: Any) -> bool:
    """Whether the run optimises manually (ClassifierModule's chunked steps): every value but 1, except `auto` with
    gradient accumulation or overfit_batches, which stays on Lightning's automatic optimisation (K=1)."""
    value = requested(cfg)
    if value == 1:
        return False
    if value == AUTO:
        return not _needs_automatic(cfg.trainer)
    return True


def _needs_automatic(trainer: Any) -> str | None:
    """The trainer setting that needs Lightning's automatic optimisation, if any: gradient accumulation and
    overfit_batches (which manual optimisation does not have), and validation inside an epoch (a
    val_check_interval other than 1.0), which Lightning would place, count and act on in calls, not steps."""
    if (trainer.get("accumulate_grad_batches") or 1) != 1:
        return "trainer.accumulate_grad_batches"
    if trainer.get("overfit_batches"):
        return "trainer.overfit_batches"
    interval = trainer.get("val_check_interval")
    if interval is not None and not (isinstance(interval, float) and interval == 1.0):
        return "trainer.val_check_interval"
    return None


def check(cfg: Any) -> None:
    """ConfigError for a steps_per_execution value, or a combination, that cannot run."""
    value = cfg.get("steps_per_execution", 1)
    if value == AUTO:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("steps_per_execution", value, "auto or an integer >= 1 (optimizer steps per Lightning step)")
    if value == 1:
        return
    blocker = _needs_automatic(cfg.trainer)
    if blocker is not None:
        raise ConfigError("steps_per_execution", value, message=(
            f"steps_per_execution={value} does not combine with {blocker}={cfg.trainer.get(blocker.split('.')[1])}"
            " (several steps per Lightning step use manual optimisation, without gradient accumulation or "
            "overfit_batches, and validate between epochs only): use steps_per_execution=1 or auto, which then "
            "runs one step per call"))


def check_resume(cfg: Any, saved: dict[str, Any], checkpoint: str) -> None:
    """ConfigError when a resumed run would change between Lightning's automatic and cnnlab's manual optimisation
    (their step counters are kept apart in a checkpoint: the step count would restart at 0)."""
    from omegaconf import OmegaConf

    before = OmegaConf.create(saved) if isinstance(saved, dict) else saved
    if "trainer" not in before:
        return
    was_manual = manual(before)
    if was_manual != manual(cfg):
        raise ConfigError("steps_per_execution", cfg.get("steps_per_execution", 1), message=(
            f"steps_per_execution={cfg.get('steps_per_execution', 1)} differs from the "
            f"{before.get('steps_per_execution', 1)!r} that {checkpoint} was trained with; a resumed run keeps it"))


def steps_for(step_seconds: float) -> int:
    """auto's K for a model whose step takes `step_seconds`: Lightning's call cost <= CALL_SHARE of a call."""
    if step_seconds <= 0:
        return MAX_STEPS
    needed = LIGHTNING_CALL_S * (1 - CALL_SHARE) / (CALL_SHARE * step_seconds)
    return max(1, min(MAX_STEPS, math.ceil(needed - 1e-9)))


def measure_step(module: Any, datamodule: Any, device: torch.device, repeats: int = 5) -> float | None:
    """Seconds of a forward and backward pass of the model on one training batch (normalised, not augmented): the
    fastest of `repeats` after a warm-up, the least disturbed by other work (just one for a model far too slow for
    K > 1); None when the training split streams from disk. The weights' gradients, the buffers (BatchNorm
    statistics) and every random generator are put back as they were."""
    images, labels = datamodule.splits["train"]
    if not isinstance(images, torch.Tensor):
        return None
    batch = datamodule.normalize(images[: datamodule.batch_size].to(device)), labels[: datamodule.batch_size].to(device)
    model = module.model
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    grads = {name: None if p.grad is None else p.grad.detach().clone() for name, p in model.named_parameters()}
    was_training = model.training
    on_cuda = device.type == "cuda"
    times: list[float] = []
    long_step = 2 * LIGHTNING_CALL_S * (1 - CALL_SHARE) / CALL_SHARE  # twice the step time that already means K=1
    with torch.random.fork_rng(devices=[device] if on_cuda else []):
        model.train()
        for attempt in range(repeats + 1):  # one warm-up pass
            if on_cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            loss, _, _ = module._step(batch)
            loss.backward()
            if on_cuda:
                torch.cuda.synchronize(device)
            if attempt >= 1:
                times.append(time.perf_counter() - start)
                if times[-1] > long_step:  # a slow model: K=1 whatever the other passes say; spare their time
                    break
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
        for name, parameter in model.named_parameters():
            parameter.grad = grads[name]
    model.train(was_training)
    return min(times)


def resolve(cfg: Any, module: Any, datamodule: Any, device: torch.device,
            resumed: dict[str, Any] | None = None, world_size: int = 1) -> tuple[int, float | None]:
    """(K, measured step seconds or None): the steps per Lightning call for this run. Under DDP `auto` is 1: each
    process would measure its own K, and processes taking different numbers of Lightning steps wait on each other
    for ever."""
    if not manual(cfg):
        return 1, None
    if resumed is not None and (resumed.get("cnnlab") or {}).get("steps_per_execution"):
        return int(resumed["cnnlab"]["steps_per_execution"]), None  # the run's own K: chunks line up on resume
    value = requested(cfg)
    if value != AUTO:
        return int(value), None
    if world_size > 1:
        return 1, None
    module.to(device)  # where Lightning puts it next; the step is timed there
    seconds = measure_step(module, datamodule, device)
    if seconds is None:
        return 1, None
    return steps_for(seconds), seconds


def install(trainer: Any, module: Any, datamodule: Any, steps: int) -> None:
    """Hand the run's K to the module and the loader, and move the Trainer settings manual optimisation does itself
    (gradient clipping, limit_train_batches) from Lightning to cnnlab."""
    if module.automatic_optimization:
        return
    module.steps_per_call = steps
    module.clip = (trainer.gradient_clip_val, trainer.gradient_clip_algorithm)
    if trainer.gradient_clip_val:
        module.on_before_optimizer_step = module.clip_before_step  # the hook only where there is clipping to do
    trainer.gradient_clip_val = None
    datamodule.steps_per_call = steps
    datamodule.train_limit = trainer.limit_train_batches  # normalised by Lightning: an int or a float fraction
    trainer.limit_train_batches = 1.0
