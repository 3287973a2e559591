"""Several processes on one machine for Lightning DDP (`trainer.devices=N trainer.strategy=ddp`).

Lightning's `ddp` starts the other local ranks by running the script again (`sys.argv`), which under Hydra and the
`cnnlab train` command would lose the subcommand, pick the wrong run folder inside a multirun, or start a whole
sweep again. So cnnlab starts them itself, the way torchrun would: ranks 1..N-1 run `cnnlab train` with this job's
overrides in this job's run folder (single-run mode, writing no Hydra files), with Lightning's documented
environment variables (MASTER_ADDR, MASTER_PORT, NODE_RANK, LOCAL_RANK, WORLD_SIZE). Lightning then sees processes
created externally and only joins them. Clusters (SLURM's srun, torchrun) create processes themselves: untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cnnlab

ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def needs_local_ranks(trainer: Any) -> bool:
    """True when Lightning would start the other local ranks by re-running the script."""
    from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

    strategy = trainer.strategy
    return (isinstance(strategy.launcher, _SubprocessScriptLauncher)
            and not strategy.cluster_environment.creates_processes_externally
            and strategy.num_processes > 1)


def rank_command(local_rank: int) -> list[str]:
    """`cnnlab train` for one more local rank of the running Hydra job: same overrides, same run folder."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    run_dir = str(Path(hydra.runtime.output_dir).resolve()).replace('"', '\\"')
    return [sys.executable, "-m", "cnnlab.cli", "train", *hydra.overrides.task,
            f'hydra.run.dir="{run_dir}"', "hydra.mode=RUN", "hydra.output_subdir=null",
            f"hydra.job.name=rank_{local_rank}", "hydra/job_logging=none", "hydra/hydra_logging=none"]


def _watch(procs: list[subprocess.Popen], done: threading.Event) -> None:
    """A rank that fails leaves the others waiting in a collective forever: stop them all, this process too."""
    while not done.wait(1.0):
        failed = [(rank, p.returncode) for rank, p in enumerate(procs, 1) if p.poll() not in (None, 0)]
        if failed and not done.is_set():
            rank, code = failed[0]
            print(f"cnnlab: error: DDP rank {rank} exited with code {code}; stopping the other ranks", file=sys.stderr)
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            os._exit(1)


@contextmanager
def local_ranks(trainer: Any) -> Iterator[None]:
    """Run the body as local rank 0 with ranks 1..N-1 started beside it (a no-op when none are needed)."""
    import torch.distributed

    if not needs_local_ranks(trainer):
        joined = torch.distributed.is_available() and torch.distributed.is_initialized()  # the caller's own group
        yield
        # A rank that leaves its process group to the interpreter's teardown can abort there ("terminate called
        # without an active exception" from gloo's threads): each rank leaves the group this run made itself once
        # its work is done. Only on success: after a failure the other ranks may still be inside a collective.
        if not joined and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        return

    strategy = trainer.strategy
    environment = strategy.cluster_environment
    saved = {key: os.environ.get(key) for key in ENV_KEYS}
    os.environ.update(MASTER_ADDR=environment.main_address, MASTER_PORT=str(environment.main_port),
                      NODE_RANK=str(environment.node_rank()), LOCAL_RANK="0",
                      WORLD_SIZE=str(strategy.num_processes * strategy.num_nodes))
    # The ranks import the same cnnlab as this process, wherever they are started from.
    package_root = str(Path(cnnlab.__file__).resolve().parent.parent)
    python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    procs = [subprocess.Popen(rank_command(rank), env={**os.environ, "LOCAL_RANK": str(rank),
                                                        "PYTHONPATH": python_path})
             for rank in range(1, strategy.num_processes)]
    done = threading.Event()
    threading.Thread(target=_watch, args=(procs, done), daemon=True, name="cnnlab-ranks").start()
    try:
        yield
        for proc in procs:
            proc.wait()
    finally:
        done.set()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # the next job of a multirun starts its own group
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
