"""Speed settings of a run (conf/train.yaml): CPU threads, DataLoader workers, torch.compile, data kept on the GPU.

Every default is chosen for the machine the run is on; README "Performance" has the measured effect of each.
No torch import at module level: config validation reads COMPILE_MODES before torch is needed.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MAX_AUTO_WORKERS = 8


def available_cpus() -> int:
    """The CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota (containers, CI).

    torch's own default counts the machine's cores, so a container limited to 2 CPUs on a 64-core host would run
    32 threads that take turns on 2 CPUs.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(count, quota) if quota else count)


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs allowed by the cgroup (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), rounded up; None when unlimited."""
    candidates = [(root / "cpu.max", None), (root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us")]
    for first, second in candidates:
        try:
            if second is None:
                quota, period = first.read_text().split()[:2]
            else:
                quota, period = first.read_text().strip(), second.read_text().strip()
            if quota in ("max", "-1"):
                return None
            return max(1, math.ceil(int(quota) / int(period)))
        except (OSError, ValueError):
            continue
    return None


_TORCH_DEFAULT: list[int] = []  # torch's own thread count, read before cnnlab first changes it


def thread_count(value: Any) -> int:
    """torch intra-op threads: `auto` is the available CPUs, but never more than torch's own default (its count of
    physical cores, or OMP_NUM_THREADS: hyper-threads and efficiency cores would only slow it down)."""
    if value not in (None, "auto"):
        return int(value)
    return min(available_cpus(), _TORCH_DEFAULT[0]) if _TORCH_DEFAULT else available_cpus()


def worker_count(value: Any) -> int:
    """DataLoader workers for images decoded from disk: `auto` leaves one CPU to the training loop (at most 8)."""
    if value in (None, "auto"):
        return max(0, min(MAX_AUTO_WORKERS, available_cpus() - 1))
    return int(value)


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
        from cnnlab.config import ConfigError

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
    - PYTORCH_NVML_BASED_CUDA_CHECK unset on a CPU run. Lightning sets it (so that checking for CUDA does not break
      later forks); with it, torch.cuda.is_available() tries to load NVML at each call, and Adam/AdamW ask at every
      step (Optimizer._accelerator_graph_capture_health_check): ~60 us a step on a machine without a GPU driver.
      A run on the CPU never forks a CUDA user, so the plain check (~1 us) is safe.
    """
    from pytorch_lightning.accelerators import CPUAccelerator

    saved = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", _NVML_CHECK)}
    threads = cfg.get("threads", "auto")
    if threads not in (None, "auto"):
        os.environ["OMP_NUM_THREADS"] = str(thread_count(threads))
    if isinstance(trainer.accelerator, CPUAccelerator):
        os.environ.pop(_NVML_CHECK, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
