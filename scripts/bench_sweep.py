"""Does a job's cost grow with the number of jobs before it? Prints the per-job wall time at chosen jobs of a sweep.

Runs one real `cnnlab train -m seed=...` sweep of tiny one-epoch runs (synthetic 8x8 data, a 16-unit MLP,
test=false), then reads each job's start from its `.hydra/config.yaml` (Hydra writes it as the job starts): a job's
wall time is the next job's start minus its own, so it includes everything between two jobs (the sweep summary
written after each job, Hydra's own work). Its training time (summary.json duration_s) is printed beside it, and
the overhead is the difference. A few more jobs than the last one asked are run, so that every job asked has a
next one. Goal (issue 20): the job at 500 costs no more than 1.2x the job at 10.

    python scripts/bench_sweep.py                           # jobs 10, 100 and 500 (~10 minutes on 2 CPUs)
    python scripts/bench_sweep.py --at 2,10 --window 1      # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = ["dataset=synthetic", "dataset.image_size=8", "dataset.num_classes=3", "dataset.source.num_train=96",
        "dataset.source.num_test=24", "model=mlp", "model.hidden=[16]", "trainer.max_epochs=1", "test=false",
        "progress_bar=none"]


def run_sweep(sweep_dir: Path, jobs: int) -> float:
    """Run the sweep; returns its wall time in seconds."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "cnnlab", "train", "-m", f"seed=range(0,{jobs})", *TINY,
               f"hydra.sweep.dir={sweep_dir}"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    return time.perf_counter() - started


def job_times(sweep_dir: Path, jobs: int) -> list[tuple[float, float]]:
    """(wall s, training s) of jobs 0..jobs-2, from the start stamps of consecutive jobs."""
    starts = [(sweep_dir / str(job) / ".hydra" / "config.yaml").stat().st_mtime for job in range(jobs)]
    times = []
    for job in range(jobs - 1):
        summary = json.loads((sweep_dir / str(job) / "summary.json").read_text())
        times.append((starts[job + 1] - starts[job], float(summary.get("duration_s") or 0.0)))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at", default="10,100,500", help="the jobs to report, counted from 1 (default 10,100,500)")
    parser.add_argument("--window", type=int, default=5, help="median over this many jobs ending at each (5)")
    parser.add_argument("--keep", type=Path, help="run the sweep in this folder and keep it (default: a temp folder)")
    options = parser.parse_args()
    marks = sorted(int(a) for a in options.at.split(","))
    jobs = marks[-1] + 1  # the last job asked needs a next one to be timed
    with tempfile.TemporaryDirectory() as tmp:
        sweep_dir = options.keep or Path(tmp) / "sweep"
        total = run_sweep(sweep_dir, jobs)
        times = job_times(sweep_dir, jobs)
    print(f"{jobs} jobs in {total:.1f} s (one-epoch synthetic/mlp runs, test=false)")
    print(f"{'job':>6} {'wall s':>8} {'training s':>11} {'overhead s':>11}   (median of {options.window} jobs)")
    first = None
    for mark in marks:
        window = times[max(0, mark - options.window):mark]
        wall = statistics.median(w for w, _ in window)
        train = statistics.median(t for _, t in window)
        first = first or wall
        print(f"{mark:>6} {wall:>8.2f} {train:>11.2f} {wall - train:>11.2f}   {wall / first:.2f}x job {marks[0]}")


if __name__ == "__main__":
    main()
