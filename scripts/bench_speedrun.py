"""The Fashion-MNIST speedrun, timed like a user: wall clock from command to test result, for several seeds.

Runs `python -m cnnlab train experiment=fashion_mnist_speedrun seed=S hydra.run.dir=TMP` (plus --extra overrides)
once per seed, one after the other, and times each process from just before it starts to its exit (the test result
is written at the end). While it runs, the run folder's metrics.csv is polled every 0.2 s: an epoch's time is the
moment its row (written right after that epoch's validation) first appeared, counted from the command's start, so
it holds everything before it (start-up, data loading, earlier epochs, checkpoints). An epoch whose row the poll
missed (none should) gets the time computed from the run folder instead: summary.json's first_step_at (the unix
time of the first training batch) plus the epoch_time_s of it and the epochs before it, which leaves out the
short gaps between epochs. Printed per seed and as mean ± std: total wall seconds, start-up (command to first
training batch), time to validation accuracy >= 92% and >= 93% (val is the preset's held-out part of the training
split; the test set is touched once, at the end), best val acc and test acc. Where the preset tests with
test-time augmentation (`tta`), the test accuracy on the images alone is measured too, after the timed run, with
`cnnlab eval RUN tta=none`.

    python scripts/bench_speedrun.py                            # seeds 0 1 2 (about 7 minutes on 2 CPUs)
    python scripts/bench_speedrun.py --seeds 0 --extra trainer.max_epochs=2 --plot curves.png
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PRESET = "fashion_mnist_speedrun"
MARKS = (0.92, 0.93)
POLL_S = 0.2
ZOOM_FLOOR = 85.0  # the curves are drawn from here up: the first epochs would squeeze the 92-94% region


def run_rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv's rows so far (none before the first epoch ends, or while the file is half written)."""
    try:
        with open(run_dir / "metrics.csv", newline="") as handle:
            return [row for row in csv.DictReader(handle) if row.get("epoch_time_s")]
    except (OSError, csv.Error):
        return []


def run_once(seed: int, extra: list[str], run_dir: Path) -> tuple[float, float, dict[int, float]]:
    """Train one seed; returns (unix start, wall seconds, {epoch: seconds from start when its row appeared})."""
    command = [sys.executable, "-m", "cnnlab", "train", f"experiment={PRESET}", f"seed={seed}", *extra,
               "progress_bar=none", f"hydra.run.dir={run_dir}"]
    seen: dict[int, float] = {}
    started_unix, started = time.time(), time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    while process.poll() is None:
        time.sleep(POLL_S)
        now = time.perf_counter() - started
        for row in run_rows(run_dir):
            seen.setdefault(int(row["epoch"]), now)
    wall = time.perf_counter() - started
    errors = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        sys.exit(f"seed {seed}: cnnlab train exited with {process.returncode}\n{errors[-3000:]}")
    return started_unix, wall, seen


def read_run(run_dir: Path, started_unix: float, wall: float, seen: dict[int, float] | None = None) -> dict[str, Any]:
    """One run's figures from its folder: start-up, per-epoch (seconds from start, val_acc), marks, test acc."""
    seen = seen or {}
    summary = json.loads((run_dir / "summary.json").read_text())
    startup = float(summary["first_step_at"]) - started_unix
    epochs, elapsed = [], startup
    for row in run_rows(run_dir):
        elapsed += float(row["epoch_time_s"])
        epoch = int(row["epoch"])
        val = float(row["val_acc"]) if row.get("val_acc") else math.nan
        epochs.append((epoch, seen.get(epoch, elapsed), val))
    reached = {mark: next((at for _, at, val in epochs if val >= mark), None) for mark in MARKS}
    test = (summary.get("test") or {}).get("test/acc")
    return {"wall": wall, "startup": startup, "epochs": epochs, "reached": reached, "tta": summary.get("test_tta"),
            "train": sum(float(row["epoch_time_s"]) for row in run_rows(run_dir)),
            "best_val": max((val for _, _, val in epochs), default=math.nan),
            "test": float(test) if test is not None else math.nan}


def plain_test_accuracy(run_dir: Path) -> float:
    """The run's test accuracy on the images alone (`cnnlab eval RUN tta=none`), after the timed run: what the test
    gives without the preset's test-time augmentation."""
    out = run_dir / "eval_plain"
    subprocess.run([sys.executable, "-m", "cnnlab", "eval", str(run_dir), "tta=none", "--out", str(out)],
                   check=True, capture_output=True)
    report = json.loads(next(out.glob("*_test.json")).read_text())
    return float(report["metrics"]["acc"])


def spread(values: list[float | None], digits: int = 1, scale: float = 1.0) -> str:
    """mean ± std of the values, `-` for a missing one (a mark never reached counts as missing: n shown)."""
    known = [v * scale for v in values if v is not None and not math.isnan(v)]
    if not known:
        return "-"
    text = f"{statistics.mean(known):.{digits}f}"
    if len(known) > 1:
        text += f" ± {statistics.stdev(known):.{digits}f}"
    return text + (f" (n={len(known)})" if len(known) < len(values) else "")


def table(results: dict[int, dict[str, Any]]) -> str:
    """The per-seed lines and the mean ± std line."""
    tta = next((r["tta"] for r in results.values() if r["tta"]), None)
    head = ("seed", "wall s", "start-up s", "train+val s", "val>=92% at s", "val>=93% at s", "best val %",
            f"test % (tta {tta})" if tta else "test %", *(["test % (images alone)"] if tta else []))
    lines = [" | ".join(head), " | ".join("---" for _ in head)]

    def cell(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
        return "-" if value is None or math.isnan(value) else f"{value * scale:.{digits}f}"

    for seed, r in results.items():
        lines.append(" | ".join([str(seed), cell(r["wall"]), cell(r["startup"]), cell(r["train"]),
                                 cell(r["reached"][0.92]), cell(r["reached"][0.93]), cell(r["best_val"], 2, 100),
                                 cell(r["test"], 2, 100), *([cell(r.get("plain"), 2, 100)] if tta else [])]))
    rows = list(results.values())
    lines.append(" | ".join(["mean ± std", spread([r["wall"] for r in rows]), spread([r["startup"] for r in rows]),
                             spread([r["train"] for r in rows]),
                             spread([r["reached"][0.92] for r in rows]), spread([r["reached"][0.93] for r in rows]),
                             spread([r["best_val"] for r in rows], 2, 100), spread([r["test"] for r in rows], 2, 100),
                             *([spread([r.get("plain") for r in rows], 2, 100)] if tta else [])]))
    return "\n".join("| " + line + " |" for line in lines)


def plot(results: dict[int, dict[str, Any]], path: Path) -> None:
    """val_acc against seconds from the command's start, one line per seed, the test accuracy at the wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for seed, r in results.items():
        line, = ax.plot([at for _, at, _ in r["epochs"]], [val * 100 for _, _, val in r["epochs"]], marker="o",
                        markersize=3, label=f"seed {seed}: val")
        ax.plot([r["wall"]], [r["test"] * 100], marker="*", markersize=10, color=line.get_color(), linestyle="none",
                label=f"seed {seed}: test {r['test'] * 100:.2f}% at {r['wall']:.0f} s")
    for mark in MARKS:
        ax.axhline(mark * 100, color="grey", linewidth=0.6, linestyle="--")
    shown = [val * 100 for r in results.values() for _, _, val in r["epochs"] + [(0, 0, r["test"])]
             if not math.isnan(val)]
    bottom = min(shown, default=0.0) - 1
    if max(shown, default=0.0) > ZOOM_FLOOR + 5:
        bottom = max(bottom, ZOOM_FLOOR)
    ax.set(xlabel="seconds from the command's start", ylabel="accuracy %", xlim=(0, None),
           ylim=(bottom, max(shown, default=100.0) + 0.5), title=f"cnnlab train experiment={PRESET}")
    if any(value < bottom for value in shown):  # zoomed on the marks: say what the zoom leaves out
        ax.text(0.01, 0.01, f"epochs under {bottom:.0f}% are below the chart", transform=ax.transAxes, fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per seed (0 1 2)")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run, e.g. threads=2")
    parser.add_argument("--plot", type=Path, help="write val acc against wall seconds for the seeds to this PNG")
    parser.add_argument("--keep", type=Path, help="keep the run folders under this folder (default: a temp folder)")
    options = parser.parse_args()
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = options.keep or Path(tmp)
        for seed in options.seeds:
            run_dir = base / f"seed{seed}"
            started_unix, wall, seen = run_once(seed, options.extra, run_dir)
            results[seed] = read_run(run_dir, started_unix, wall, seen)
            r = results[seed]
            if r["tta"]:  # the test averaged views: its accuracy on the images alone too (not timed)
                r["plain"] = plain_test_accuracy(run_dir)
            tested = f"test acc {r['test'] * 100:.2f}%" + (
                f" (tta {r['tta']}; images alone {r['plain'] * 100:.2f}%)" if r["tta"] else "")
            print(f"seed {seed}: {wall:.1f} s, {tested}, val "
                  + " ".join(f"{val * 100:.2f}@{at:.0f}s" for _, at, val in r["epochs"]), flush=True)
    print(f"\nload average after the runs: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, CPUs: {os.cpu_count()}")
    print(table(results))
    if options.plot:
        plot(results, options.plot)
        print(f"curves: {options.plot}")


if __name__ == "__main__":
    main()
