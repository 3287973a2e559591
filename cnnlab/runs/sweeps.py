"""Sweeps (`cnnlab train -m`): Hydra callbacks registered in conf/train.yaml and conf/hparams_search/optuna.yaml.

- `SweepSummary`: after every job of a multirun, and at its end, the sweep folder gets sweep_summary.md / .csv
  (the `cnnlab compare` table, failed runs and why) and sweep_curves.png.
- `SweepFailures`: the sweep ends with exit code 1 and one line when some of its runs failed.
- `StudyStorage`: an Optuna search's storage is opened before the first trial, so a bad one fails in one line.
  The search itself is hydra-optuna-sweeper's; `cnnlab.direction` and `cnnlab.study_storage` (cnnlab/resolvers.py)
  supply the study's direction and a default storage in the sweep folder (so the same command resumes it).
"""

from __future__ import annotations

import copy
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from cnnlab.errors import ConfigError, report
from cnnlab.runs.compare import Comparison, compare, load, plot_overlay, print_table, to_csv, to_markdown
from cnnlab.runs.layout import METRICS_FILE, SUMMARY_FILE, find_runs, is_run_dir
from cnnlab.runs.params_plot import plot_params
from cnnlab.runs.read import Run, read_run, read_summary
from cnnlab.runs.sweep_resume import resume_command
from cnnlab.runs.write import atomic_write_text

STORAGES = "sqlite:///PATH, or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"

SWEEP_FILES = {"md": "sweep_summary.md", "csv": "sweep_summary.csv", "png": "sweep_curves.png",
               "params": "sweep_params.png"}


def write_sweep_summary(sweep_dir: Path, errors: dict[Path, str] | None = None, cache: RunCache | None = None,
                        plot: bool = True) -> Comparison | None:
    """Write the summary files of the runs under `sweep_dir`; `errors`: reasons Hydra saw for failed jobs.

    With a `cache`, run folders are found and read once, then again only when their summary.json or metrics.csv
    changes; `plot=False` leaves sweep_curves.png as it is (redrawing it is most of a summary's cost)."""
    sweep_dir = Path(sweep_dir)
    folders = cache.folders(sweep_dir) if cache is not None else find_runs(sweep_dir)
    if not folders:
        return None
    comparison = compare(load([sweep_dir], errors, read=cache.read if cache else read_run, folders=folders))
    if plot or not (sweep_dir / SWEEP_FILES["png"]).is_file():
        plot_overlay(comparison, sweep_dir / SWEEP_FILES["png"])
        plot_params(comparison, sweep_dir / SWEEP_FILES["params"])
    markdown = to_markdown(comparison) + f"\n![validation curves]({SWEEP_FILES['png']})\n"
    atomic_write_text(sweep_dir / SWEEP_FILES["md"], f"# Sweep summary: {sweep_dir}\n\n{markdown}")
    atomic_write_text(sweep_dir / SWEEP_FILES["csv"], to_csv(comparison))
    return comparison


class RunCache:
    """The run folders of one sweep, read once and again only when they change, so that the summary written after
    every job costs about the same at job 500 as at job 10 (it used to re-read every run folder and rglob the
    sweep folder, every job)."""

    def __init__(self) -> None:
        self.found: list[Path] = []
        self.known: set[Path] = set()
        self.runs: dict[Path, tuple[tuple[int, ...], Run]] = {}

    def add(self, folder: Path) -> None:
        """A job's folder, as Hydra reports it (no search of the sweep folder)."""
        folder = Path(folder).resolve()
        if folder not in self.known and is_run_dir(folder):
            self.known.add(folder)
            self.found.append(folder)

    def folders(self, sweep_dir: Path) -> list[Path]:
        if not self.found:  # the first time (or a resumed sweep): the runs already there
            for folder in find_runs(sweep_dir):
                self.add(folder)
        root = Path(sweep_dir).resolve()

        def natural(path: Path) -> list:  # job 2 before job 10
            parts = (path.relative_to(root) if path.is_relative_to(root) else path).parts
            return [int(part) if part.isdigit() else part for part in parts]

        return sorted(self.found, key=natural)

    def read(self, folder: Path) -> Run:
        stamp = tuple((folder / name).stat().st_mtime_ns if (folder / name).is_file() else -1
                      for name in (SUMMARY_FILE, METRICS_FILE))
        cached = self.runs.get(folder)
        if cached is None or cached[0] != stamp:
            cached = (stamp, read_run(folder))
            self.runs[folder] = cached
        return copy.copy(cached[1])  # load() may mark a copy failed; the cached one stays as read


def one_line(error: BaseException) -> str:
    """`Type: message` on one line."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class SweepSummary(Callback):
    """Keeps the sweep summary current as jobs end (every job at first, then on a schedule that keeps its share of
    the sweep's time small, and at once after a failed job), so it exists even when Hydra stops on a failure."""

    def __init__(self, plot_every_jobs: int = 10, plot_every_s: float = 60.0, write_share: float = 0.05) -> None:
        self.errors: dict[Path, str] = {}
        self.cache = RunCache()
        self.plot_every_jobs, self.plot_every_s = plot_every_jobs, plot_every_s
        self.jobs, self.plotted_at = 0, 0.0
        # The table is rebuilt from every run, so its cost grows with the sweep: after the first jobs it is
        # rewritten only once the time since the last write is 1/write_share times what that write took (at most
        # write_share of the sweep's time goes to it), at once after a failed job, and at the sweep's end.
        self.write_share, self.written_at, self.write_cost = write_share, 0.0, 0.0

    def _write_now(self, failed: bool) -> bool:
        if failed or self.jobs <= self.plot_every_jobs:
            return True
        return time.time() - self.written_at >= self.write_cost / self.write_share

    def _plot_now(self) -> bool:
        """The curves are redrawn every `plot_every_jobs` jobs or `plot_every_s` seconds, and at the sweep's end."""
        due = self.jobs % self.plot_every_jobs == 1 or time.time() - self.plotted_at >= self.plot_every_s
        if due:
            self.plotted_at = time.time()
        return due

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        hydra = HydraConfig.get()
        if hydra.mode != RunMode.MULTIRUN:
            return
        output_dir = Path(hydra.runtime.output_dir)
        if job_return.status == JobStatus.FAILED:
            self.errors[output_dir.resolve()] = one_line(job_return._return_value)
        try:
            sweep_dir = Path(hydra.sweep.dir)
            self.cache.folders(sweep_dir)  # the runs already there (a resumed sweep), once; then only sorts
            self.cache.add(output_dir)
            self.jobs += 1
            if not self._write_now(job_return.status == JobStatus.FAILED):
                return
            started = time.time()
            write_sweep_summary(sweep_dir, self.errors, self.cache, plot=self._plot_now())
            self.written_at, self.write_cost = time.time(), time.time() - started
        except Exception as error:  # a summary must never take the sweep down with it
            logging.getLogger(__name__).warning("sweep summary not written: %s", one_line(error))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        comparison = write_sweep_summary(sweep_dir, self.errors, self.cache)
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
        # A resumed sweep answers for all its jobs, kept ones too; a new one for the runs it wrote.
        resumed = str(config.hydra.sweeper.get("_target_", "")).endswith("ResumableSweeper")
        runs = [path.parent for path in sorted(sweep_dir.rglob(SUMMARY_FILE))
                if is_run_dir(path.parent) and (resumed or path.stat().st_mtime >= self.started - 1)]
        failed = [run for run in runs if read_summary(run).get("status") == "failed"]
        if failed:
            names = ", ".join(str(run.relative_to(sweep_dir)) for run in failed)
            hint = "; to run them again: " + resume_command(sweep_dir) + " rerun_failed=true" if resumed else ""
            print(f"cnnlab: {len(failed)} of {len(runs)} runs failed ({names}); each one's summary.json says why "
                  f"(sweep folder {sweep_dir}){hint}", file=sys.stderr)
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
