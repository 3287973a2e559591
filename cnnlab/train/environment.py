"""Speed settings of a run (conf/train.yaml): CPU threads, DataLoader workers, torch.compile, data on the GPU.

Every default is chosen for the machine the run is on; README "Performance" has the measured effect of each.
No torch import at module level: config validation reads COMPILE_MODES before torch is needed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cnnlab.errors import ConfigError
from cnnlab.machine import available_cpus, worker_count

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


_TORCH_DEFAULT: list[int] = []  # torch's own thread count, read before cnnlab first changes it


def thread_count(value: Any) -> int:
    """torch intra-op threads: `auto` is the available CPUs, but never more than torch's own default (its count of
    physical cores, or OMP_NUM_THREADS: hyper-threads and efficiency cores would only slow it down)."""
    if value not in (None, "auto"):
        return int(value)
    return min(available_cpus(), _TORCH_DEFAULT[0]) if _TORCH_DEFAULT else available_cpus()


def set_threads(value: Any) -> int:
    """Set torch's CPU threads (run_environment also exports an explicit count for the run's duration)."""
    import torch

    if not _TORCH_DEFAULT:
        _TORCH_DEFAULT.append(torch.get_num_threads())
    count = thread_count(value)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def compile_mode(value: Any) -> str | None:
    """None (no torch.compile) for false, `default` for true, else the named mode."""
    if value is False or value is None:
        return None
    return "default" if value is True else str(value)


def compile_model(module: Any, value: Any, on_gpu: bool) -> None:
    """torch.compile the network in place (nn.Module.compile: its state_dict keys, so checkpoints, stay the same).

    The first steps are slow while it compiles. Inductor builds C++ on the CPU and, through Triton, a small C
    launcher on a GPU: without that compiler it would fail at the first step with a long trace.
    """
    mode = compile_mode(value)
    if mode is None:
        return
    names = ("CC", "gcc", "clang", "cc") if on_gpu else ("CXX", "g++", "clang++", "c++")
    candidates = [os.environ.get(names[0], "")] + list(names[1:])
    if not any(shutil.which(name) for name in candidates if name):
        kind, package = ("C", "gcc") if on_gpu else ("C++", "g++")
        raise ConfigError("compile", value, message=(
            f"compile={value} on the {'GPU' if on_gpu else 'CPU'} needs a {kind} compiler ({names[1]} or "
            f"{names[2]}) on PATH, or {names[0]} set to one; install one (e.g. apt-get install {package}) or leave "
            "compile=false"))
    module.model.compile(mode=mode)


def settings(cfg: Any, trainer: Any) -> dict[str, Any]:
    """What summary.json records of a run's speed settings (data_on_device is added once the loaders exist)."""
    import torch

    return {"device": str(trainer.strategy.root_device), "precision": str(trainer.precision),
            "threads": torch.get_num_threads(), "num_workers": worker_count(cfg.get("num_workers")),
            "channels_last": bool(cfg.get("channels_last", False)), "compile": compile_mode(cfg.get("compile"))}


@contextmanager
def run_environment(cfg: Any, trainer: Any) -> Iterator[None]:
    """Environment variables for the run's duration, put back afterwards (the next job of a sweep in this process
    starts from the user's own environment).

    - OMP_NUM_THREADS = an explicit `threads` count: Lightning's DDP launcher would otherwise replace it by
      CPUs / processes (what `auto` leaves it to do), and DDP processes cnnlab starts inherit it.
    - PYTORCH_NVML_BASED_CUDA_CHECK unset on a CPU run (cnnlab.train.fastpaths.cpu_cuda_check).
    """
    from pytorch_lightning.accelerators import CPUAccelerator

    from cnnlab.train.fastpaths import cpu_cuda_check

    saved = os.environ.get("OMP_NUM_THREADS")
    threads = cfg.get("threads", "auto")
    if threads not in (None, "auto"):
        os.environ["OMP_NUM_THREADS"] = str(thread_count(threads))
    try:
        with cpu_cuda_check(isinstance(trainer.accelerator, CPUAccelerator)):
            yield
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def quiet_libraries() -> None:
    """Drop library chatter that says nothing about this run (tips, deprecations inside Lightning)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")  # resume
    # An epoch cut short (trainer.max_steps, max_time) ends without validation, so the best-checkpoint callback has
    # no monitored value at that epoch's end: expected (validate checks the `monitor` key before training).
    warnings.filterwarnings("ignore", message=r".*ModelCheckpoint\(monitor=.*could not find the monitored key.*")

    class _NoTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Tip:" not in record.getMessage()

    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoTips())
    # Big photos are fine to train on (they are resized); a glyph a font lacks (a non-Latin class name in a
    # figure) is drawn as a box: neither is something the user can act on in this run.
    warnings.filterwarnings("ignore", message=r".*exceeds limit of .* pixels, could be decompression bomb DOS.*")
    warnings.filterwarnings("ignore", message=r"Glyph .* missing from font.*")
    # Lightning imported before Hydra set up logging keeps a handler of its own: its INFO lines ("GPU available")
    # would reach the console; leave them to train.log, like the rest.
    for name in ("pytorch_lightning", "lightning_fabric"):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler:
                handler.setLevel(logging.WARNING)
    # DDP: the epoch metrics are torchmetrics states reduced over the ranks before they are logged, so Lightning's
    # advice to log them with sync_dist=True (printed by every rank but 0) does not apply.
    warnings.filterwarnings("ignore", message=r".*It is recommended to use `self.log\(.*sync_dist=True.*")
