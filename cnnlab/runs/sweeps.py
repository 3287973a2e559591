"""Sweeps (`cnnlab train -m`): Hydra callbacks registered in conf/train.yaml and conf/hparams_search/optuna.yaml.

- `SweepSummary`: after every job of a multirun, and at its end, the sweep folder gets sweep_summary.md / .csv
  (the `cnnlab compare` table, failed runs and why) and sweep_curves.png.
- `SweepFailures`: the sweep ends with exit code 1 and one line when some of its runs failed.
- `StudyStorage`: an Optuna search's storage is opened before the first trial, so a bad one fails in one line.
  The search itself is hydra-optuna-sweeper's; `cnnlab.direction` and `cnnlab.study_storage` (cnnlab/resolvers.py)
  supply the study's direction and a default storage in the sweep folder (so the same command resumes it).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from cnnlab.errors import ConfigError, report
from cnnlab.runs.compare import Comparison, compare, load, plot_overlay, print_table, to_csv, to_markdown
from cnnlab.runs.layout import SUMMARY_FILE, find_runs, is_run_dir
from cnnlab.runs.read import read_summary
from cnnlab.runs.write import atomic_write_text

STORAGES = "sqlite:///PATH, or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"

SWEEP_FILES = {"md": "sweep_summary.md", "csv": "sweep_summary.csv", "png": "sweep_curves.png"}


def write_sweep_summary(sweep_dir: Path, errors: dict[Path, str] | None = None) -> Comparison | None:
    """Write the summary files of the runs under `sweep_dir`; `errors`: reasons Hydra saw for failed jobs."""
    sweep_dir = Path(sweep_dir)
    if not find_runs(sweep_dir):
        return None
    comparison = compare(load([sweep_dir], errors))
    plot_overlay(comparison, sweep_dir / SWEEP_FILES["png"])
    markdown = to_markdown(comparison) + f"\n![validation curves]({SWEEP_FILES['png']})\n"
    atomic_write_text(sweep_dir / SWEEP_FILES["md"], f"# Sweep summary: {sweep_dir}\n\n{markdown}")
    atomic_write_text(sweep_dir / SWEEP_FILES["csv"], to_csv(comparison))
    return comparison


def one_line(error: BaseException) -> str:
    """`Type: message` on one line."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class SweepSummary(Callback):
    """Keeps the sweep summary current after every job, so it exists even when Hydra stops on a failed job."""

    def __init__(self) -> None:
        self.errors: dict[Path, str] = {}

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        hydra = HydraConfig.get()
        if hydra.mode != RunMode.MULTIRUN:
            return
        if job_return.status == JobStatus.FAILED:
            self.errors[Path(hydra.runtime.output_dir).resolve()] = one_line(job_return._return_value)
        try:
            write_sweep_summary(Path(hydra.sweep.dir), self.errors)
        except Exception as error:  # a summary must never take the sweep down with it
            logging.getLogger(__name__).warning("sweep summary not written: %s", one_line(error))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        comparison = write_sweep_summary(sweep_dir, self.errors)
        if comparison is not None:
            print_table(comparison)
            print(f"sweep summary: {sweep_dir / SWEEP_FILES['md']} (and .csv, {SWEEP_FILES['png']})")


class SweepFailures(Callback):
    """At the end of `cnnlab train -m`: one line naming how many runs failed, and exit code 1 if any did."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        runs = [path.parent for path in sorted(sweep_dir.rglob(SUMMARY_FILE))
                if is_run_dir(path.parent) and path.stat().st_mtime >= self.started - 1]
        failed = [run for run in runs if read_summary(run).get("status") == "failed"]
        if failed:
            names = ", ".join(str(run.relative_to(sweep_dir)) for run in failed)
            print(f"cnnlab: {len(failed)} of {len(runs)} runs failed ({names}); each one's summary.json says why "
                  f"(sweep folder {sweep_dir})", file=sys.stderr)
            raise SystemExit(1)


def hide_password(url: str) -> str:
    """The storage URL with any password replaced by ***, for messages and logs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str) -> Any:
    """Open (and create, for SQLite) an Optuna storage; a user-fixable problem becomes one ConfigError line."""
    import optuna

    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)  # SQLite creates the file but not its folder
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as error:  # SQLAlchemy/driver errors: the server is down, the password is wrong, ...
        reason = " ".join(str(getattr(error, "orig", None) or error).split())[:300]
        raise ConfigError("storage", hide_password(url), message=(
            f"storage={hide_password(url)}: cannot open the Optuna study storage ({reason}); "
            f"allowed: {STORAGES} on a reachable server")) from None


class StudyStorage(Callback):
    """Hydra callback: before the sweep starts, open the study's storage so that a bad one fails in one line."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        storage = config.hydra.sweeper.get("storage")
        try:
            if storage:
                open_storage(str(storage))
        except ConfigError as error:
            # Hydra turns a callback's exceptions into warnings and goes on; a bad storage must stop the search.
            raise SystemExit(report(str(error))) from None
