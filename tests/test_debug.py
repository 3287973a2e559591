"""Debug modes (conf/debug/) and the learning-rate finder."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from cnnlab.cli import main
from cnnlab.config import CONF_DIR


@pytest.mark.slow
def test_overfit_drives_training_loss_to_zero(tmp_path: Path):
    run = tmp_path / "run"
    assert main(["train", "dataset=synthetic", "model=mlp", "debug=overfit", "trainer.max_epochs=25",
                 "progress_bar=none", f"hydra.run.dir={run}"]) == 0
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert all(int(r["step"]) == 4 * int(r["epoch"]) for r in rows)  # 4 fixed batches per epoch
    assert float(rows[-1]["train_loss"]) < 0.01 < float(rows[0]["train_loss"])
    assert json.loads((run / "summary.json").read_text())["debug"] == "overfit"


# What each mode does to a run on 1,800 training images in batches of 8 (225 batches an epoch): (optimizer steps,
# epochs in metrics.csv, checkpoints written). fdr: 5 batches, one epoch row, no checkpoints; limit: 10% of
# the batches (22) for 2 epochs; overfit: the same 4 batches for its 1 epoch here; profiler: 50 batches, 1 epoch.
DEBUG_EFFECTS = {"fdr": (5, 1, False), "limit": (44, 2, True), "overfit": (4, 1, True), "profiler": (50, 1, True)}


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(p.stem for p in (CONF_DIR / "debug").glob("*.yaml")))
def test_every_debug_mode_runs_and_is_marked(tmp_path: Path, mode: str):
    run = tmp_path / "run"
    extra = ["trainer.max_epochs=1"] if mode == "overfit" else []
    assert main(["train", "dataset=synthetic", "model=mlp", f"debug={mode}", "progress_bar=none",
                 "dataset.source.num_train=2000", "batch_size=8", *extra, f"hydra.run.dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["debug"] == mode and summary["status"] == "completed"
    steps, epochs, checkpoints = DEBUG_EFFECTS[mode]
    assert (summary["steps"], summary["epochs"]) == (steps, epochs)
    assert (run / "checkpoints" / "last.ckpt").is_file() == checkpoints
    if mode == "profiler":
        report = next(run.glob("*profile*.txt"))
        assert "run_training_epoch" in report.read_text()


@pytest.mark.slow
def test_lr_find_suggests_a_finite_lr_and_writes_its_plot(tmp_path: Path, capsys):
    out = tmp_path / "lrf"
    assert main(["lr-find", "--steps", "40", "--output", str(out), "dataset=synthetic", "model=mlp"]) == 0
    result = json.loads((out / "lr_find.json").read_text())
    assert math.isfinite(result["suggested_lr"]) and 1e-7 <= result["suggested_lr"] <= 1
    assert (out / "lr_find.png").read_bytes().startswith(b"\x89PNG")
    printed = capsys.readouterr().out
    assert f"use: cnnlab train dataset=synthetic model=mlp optimizer.lr={result['suggested_lr']:.3g}" in printed


def test_lr_find_bad_range_is_one_line(capsys):
    assert main(["lr-find", "--min-lr", "1", "--max-lr", "0.1", "dataset=synthetic"]) == 2
    assert capsys.readouterr().err.strip().startswith("cnnlab: error: --min-lr=1.0")
