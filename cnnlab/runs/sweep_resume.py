"""Continuing an interrupted multirun: `cnnlab train -m resume=SWEEP_DIR`.

`resume_args` turns the command into the sweep's own overrides (from SWEEP_DIR/multirun.yaml) with the same sweep
folder and `hydra/sweeper=resumable`. `ResumableSweeper` is Hydra's basic sweeper (same jobs, same numbers, same
folders) whose launcher only gets the jobs that are not done:
- a completed job (summary.json "completed") is left alone, its folder not touched;
- an interrupted job with a `checkpoints/last.ckpt` continues from it exactly (as `resume=RUN_DIR` does);
- a job that never started, or stopped before its first checkpoint, runs;
- a failed job runs again only with `rerun_failed=true`.
Jobs are launched in runs of consecutive numbers, so any launcher (basic, joblib) numbers them as the first launch.
No torch here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper

from cnnlab.config import TRUST_FLAG, check_saved_overrides
from cnnlab.errors import ConfigError
from cnnlab.runs.layout import LAST, RUN_OVERRIDES, SUMMARY_FILE, shown
from cnnlab.runs.read import read_summary

SWEEP_CONFIG = "multirun.yaml"  # Hydra writes the sweep's config here
# What `resume=SWEEP_DIR` accepts beside it: whether failed jobs run again, and Hydra's own settings (launcher...).
RESUME_KEYS = ("rerun_failed",)
_PLAIN = re.compile(r"^[\w./:@~+-]*$")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _quote(value: str) -> str:
    return value if _PLAIN.match(value) else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / SWEEP_CONFIG).is_file()


# Hydra settings a resumed sweep takes back from its multirun.yaml: the launcher and its plain settings, the mode.
SAFE_HYDRA_KEYS = ("hydra/launcher", "hydra.launcher.", "hydra.mode")
TRUST_ENV = "CNNLAB_TRUST"  # set by `cnnlab train --trust` (cnnlab/cli/train.py)


def resume_command(sweep_dir: Path) -> str:
    """The command that continues the sweep in `sweep_dir`."""
    return f"cnnlab train -m resume={shown(sweep_dir)}"


def resume_args(args: list[str]) -> list[str]:
    """`-m resume=SWEEP_DIR [rerun_failed=true] [hydra...]` -> the sweep's overrides, folder and resumable sweeper."""
    import yaml

    chosen = [a for a in args if "=" in a and _key(a) == "resume"]
    value = chosen[0].split("=", 1)[1]
    sweep_dir = Path(value).expanduser().resolve()
    try:  # read as plain data: a sweep folder is untrusted input
        saved = yaml.safe_load((sweep_dir / SWEEP_CONFIG).read_text()) or {}
        hydra = saved["hydra"]
        task, hydra_overrides = list(hydra["overrides"]["task"]), list(hydra["overrides"]["hydra"])
        sweeper = str((hydra.get("sweeper") or {}).get("_target_", ""))
    except (OSError, KeyError, TypeError, yaml.YAMLError) as error:
        raise ConfigError("resume", value, message=f"resume={value}: not a sweep folder written by cnnlab train -m "
                                                   f"({sweep_dir / SWEEP_CONFIG}: {error})") from None
    if "optuna" in sweeper.lower():
        raise ConfigError("resume", value, message=f"resume={value}: an Optuna search resumes through its study "
                                                   "storage: run the same command again")
    rerun_failed = "false"
    extra = []
    for arg in args:
        if arg in chosen or arg in ("-m", "--multirun"):
            continue
        key = _key(arg)
        if key == "rerun_failed":
            rerun_failed = arg.split("=", 1)[1] if "=" in arg else "true"
        elif key.startswith("hydra.") or key.startswith("hydra/"):
            extra.append(arg)
        else:
            raise ConfigError(key, arg.split("=", 1)[-1], message=(
                f"{arg}: a resumed sweep keeps its jobs' overrides; only rerun_failed=true and hydra settings "
                "(e.g. hydra/launcher=joblib) may be given"))
    if rerun_failed not in ("true", "false"):
        raise ConfigError("rerun_failed", rerun_failed, "true or false")
    own = ("hydra.sweep.dir", "hydra/sweeper", "hydra.sweeper.rerun_failed")
    keep = [o for o in hydra_overrides if _key(o) not in own and _key(o) not in {_key(e) for e in extra}]
    if os.environ.get(TRUST_ENV) != "1":  # a sweep folder is data: it may choose a launcher, never run code
        source = sweep_dir / SWEEP_CONFIG
        check_saved_overrides(task, source)
        for override in keep:
            if not _key(override).startswith(SAFE_HYDRA_KEYS) or "_target_" in override:
                raise ConfigError(_key(override), override, message=(
                    f"{source} sets Hydra's {override}, which a resumed sweep does not take from a folder: nothing "
                    f"was run; give it on the command line, or add {TRUST_FLAG} if you trust this folder"))
    return ["-m", *task, *keep, *extra, f"hydra.sweep.dir={_quote(str(sweep_dir))}", "hydra/sweeper=resumable",
            f"hydra.sweeper.rerun_failed={rerun_failed}"]


def job_state(job_dir: Path, overrides: Sequence[str]) -> str:
    """done, resume, failed or new: what a resumed sweep does with one job (checked against its saved overrides)."""
    import yaml

    if not (job_dir / RUN_OVERRIDES).is_file():
        return "new"
    saved = [str(o) for o in yaml.safe_load((job_dir / RUN_OVERRIDES).read_text()) or []]
    if [o for o in saved if _key(o) != "ckpt_path"] != [o for o in overrides if _key(o) != "ckpt_path"]:
        raise ConfigError("resume", str(job_dir.parent), message=(
            f"resume={shown(job_dir.parent)}: job {job_dir.name} ran with {' '.join(saved)}, but the sweep now "
            f"makes it {' '.join(overrides)}; the sweep's jobs cannot change: start a new sweep"))
    status = read_summary(job_dir).get("status") if (job_dir / SUMMARY_FILE).is_file() else None
    if status == "completed":
        return "done"
    if status == "failed":
        return "failed"
    return "resume" if (job_dir / LAST).is_file() else "new"


class _SkippingLauncher:
    """Launches only the jobs a resumed sweep still needs, in runs of consecutive job numbers."""

    def __init__(self, launcher: Any, sweep_dir: Path, rerun_failed: bool):
        self.launcher, self.sweep_dir, self.rerun_failed = launcher, sweep_dir, rerun_failed

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        import logging

        results: list[Any] = []
        pending: list[list[str]] = []
        start = initial_job_idx
        for index, overrides in enumerate(job_overrides, start=initial_job_idx):
            job_dir = self.sweep_dir / str(index)
            state = job_state(job_dir, overrides)
            run = state in ("new", "resume") or (state == "failed" and self.rerun_failed)
            if run and not pending:
                start = index
            if run:
                extra = [f"ckpt_path={_quote(str(job_dir / LAST))}"] if state == "resume" else []
                pending.append([*overrides, *extra])
                logging.getLogger(__name__).info("job %d: %s", index, "continued from its last.ckpt"
                                                 if state == "resume" else "run again" if state == "failed" else "run")
                continue
            logging.getLogger(__name__).info("job %d: %s, kept", index, state)
            if pending:
                results += self.launcher.launch(pending, initial_job_idx=start)
                pending = []
        if pending:
            results += self.launcher.launch(pending, initial_job_idx=start)
        return results


class ResumableSweeper(Sweeper):
    """Hydra's basic sweeper, continuing the sweep in hydra.sweep.dir (conf/hydra/sweeper/resumable.yaml).

    It wraps a BasicSweeper rather than subclassing it: Hydra's plugin scan re-executes its core plugin modules,
    so the class imported here at import time may no longer be the one its own methods refer to.
    """

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None,
                 rerun_failed: bool = False):
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        super().__init__()
        self.basic = BasicSweeper(max_batch_size=max_batch_size, params=params)
        self.rerun_failed = rerun_failed

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from omegaconf import OmegaConf

        subdir = str(OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir"))
        if subdir != "${hydra.job.num}":
            raise ConfigError("hydra.sweep.subdir", subdir, message=(
                "resume=SWEEP_DIR needs each job in SWEEP_DIR/<job number> (hydra.sweep.subdir=${hydra.job.num})"))
        self.basic.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.basic.launcher = _SkippingLauncher(self.basic.launcher, Path(str(config.hydra.sweep.dir)),
                                                self.rerun_failed)

    def sweep(self, arguments: list[str]) -> Any:
        return self.basic.sweep(arguments)
