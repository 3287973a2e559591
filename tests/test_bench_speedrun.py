"""scripts/bench_speedrun.py's reading of a run folder: epoch times from the command's start, the 92%/93% marks,
the test accuracy and the mean ± std table (a hand-made run folder; the benchmark itself is not run here)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from cnnlab.runs.layout import COLUMNS
from cnnlab.runs.write import write_metrics

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_speedrun.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_speedrun", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(run_dir: Path, started: float, vals: list[float], epoch_s: float, test: float | None) -> None:
    """A run folder as cnnlab writes it: metrics.csv rows and summary.json with first_step_at and the test."""
    run_dir.mkdir(parents=True)
    rows = [{"epoch": i + 1, "step": 10 * (i + 1), "train_loss": 0.5, "train_acc": 0.9, "val_loss": 0.4,
             "val_acc": val, "lr": 0.1, "epoch_time_s": epoch_s} for i, val in enumerate(vals)]
    write_metrics(run_dir, rows)
    summary = {"status": "completed", "first_step_at": started + 5.0}
    if test is not None:
        summary["test"] = {"test/acc": test, "test/loss": 0.3}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_read_run_times_each_epoch_from_the_command_start(bench, tmp_path: Path):
    run = tmp_path / "run"
    fake_run(run, 1000.0, [0.90, 0.925, 0.921, 0.935], 10.0, 0.931)
    assert (run / "metrics.csv").read_text().splitlines()[0].split(",") == list(COLUMNS)
    # no polled times: start-up (first_step_at - start) plus the epochs' epoch_time_s so far
    result = bench.read_run(run, 1000.0, 52.0)
    assert result["startup"] == pytest.approx(5.0) and result["train"] == pytest.approx(40.0)
    assert [at for _, at, _ in result["epochs"]] == pytest.approx([15.0, 25.0, 35.0, 45.0])
    assert result["reached"][0.92] == pytest.approx(25.0) and result["reached"][0.93] == pytest.approx(45.0)
    assert result["test"] == pytest.approx(0.931) and result["best_val"] == pytest.approx(0.935)
    # a polled time (when the row appeared in metrics.csv) wins over the computed one
    polled = bench.read_run(run, 1000.0, 52.0, {2: 26.4})
    assert polled["reached"][0.92] == pytest.approx(26.4) and polled["epochs"][2][1] == pytest.approx(35.0)


def test_a_mark_never_reached_and_a_missing_test_are_dashes(bench, tmp_path: Path):
    fake_run(tmp_path / "a", 0.0, [0.91, 0.925], 20.0, 0.92)
    fake_run(tmp_path / "b", 0.0, [0.93, 0.94], 10.0, None)
    a, b = bench.read_run(tmp_path / "a", 0.0, 50.0), bench.read_run(tmp_path / "b", 0.0, 30.0)
    assert a["reached"][0.93] is None and math.isnan(b["test"])
    lines = bench.table({0: a, 1: b}).splitlines()
    assert lines[2] == "| 0 | 50.0 | 5.0 | 40.0 | 45.0 | - | 92.50 | 92.00 |"
    assert lines[3] == "| 1 | 30.0 | 5.0 | 20.0 | 15.0 | 15.0 | 94.00 | - |"
    # mean ± std over the seeds that have the figure, with how many when some lack it
    assert lines[4] == ("| mean ± std | 40.0 ± 14.1 | 5.0 ± 0.0 | 30.0 ± 14.1 | 30.0 ± 21.2 | 15.0 (n=1) "
                        "| 93.25 ± 1.06 | 92.00 (n=1) |")
