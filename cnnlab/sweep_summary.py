"""The sweep summary: after every job of a multirun, and at its end, the sweep folder gets
sweep_summary.md / .csv (the `cnnlab compare` table, failed runs and why) and sweep_curves.png.

Registered as a Hydra callback in conf/train.yaml (hydra.callbacks.sweep_summary).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from cnnlab.compare import Comparison, compare, load, plot_overlay, print_table, to_csv, to_markdown
from cnnlab.rundir import find_runs
from cnnlab.runlog import atomic_write_text  # the callback runs inside training, where Lightning is loaded

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
