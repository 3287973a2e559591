"""Quiet by default: a successful run prints only what cnnlab means to say; train.log keeps what the console shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.cli import main

TINY = ["dataset=synthetic", "dataset.image_size=8", "dataset.num_classes=3", "dataset.source.num_train=96",
        "dataset.source.num_test=24", "model=mlp", "model.hidden=[16]", "trainer.max_epochs=1", "progress_bar=none"]


@pytest.mark.slow
def test_design_card_run_is_quiet_and_its_log_keeps_the_console_lines(tmp_path: Path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "cnnlab", "train", "model=lenet", "loss=nll", "scheduler=exp_decay",
                           "dataset=synthetic", "dataset.source.num_train=96", "dataset.source.num_test=24",
                           "trainer.max_epochs=2", f"hydra.run.dir={run}"], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no library warnings, no Lightning INFO lines
    assert "INFO" not in done.stdout and "GPU available" not in done.stdout
    assert "Epoch 2/2" in done.stdout and "Epoch 1/1" not in done.stdout  # counted from 1, like metrics.csv
    log = (run / "train.log").read_text()
    console = [line for line in done.stdout.splitlines() if line.split(":")[0] in ("done", "diagnosis", "run folder")]
    assert len(console) == 3
    for line in console:
        assert line in log
    assert "epoch 1/2: train_loss " in log and "epoch 2/2: train_loss " in log


def test_tqdm_bar_counts_epochs_from_one(tmp_path: Path, capsys):
    assert main(["train", *TINY, "trainer.max_epochs=2", "progress_bar=tqdm", f"hydra.run.dir={tmp_path}/r"]) == 0
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert "Epoch 2/2" in shown and "Epoch 0" not in shown


@pytest.mark.slow
def test_a_sweep_prints_the_layer_table_once(tmp_path: Path, capsys):
    assert main(["train", "-m", *TINY, "seed=1,2,3", f"hydra.sweep.dir={tmp_path}/sweep"]) == 0
    assert capsys.readouterr().out.count("Model summary: mlp") == 1
    assert len(list((tmp_path / "sweep").glob("*/model_summary.txt"))) == 3


@pytest.mark.slow
def test_the_error_of_a_failed_sweep_job_is_in_its_train_log(tmp_path: Path, capsys):
    assert main(["train", "-m", *TINY, "optimizer.lr=0.01,-1", f"hydra.sweep.dir={tmp_path}/sweep"]) != 0
    log = (tmp_path / "sweep" / "1" / "train.log").read_text()
    assert "error: optimizer.lr=-1 is not allowed: a positive number" in log


@pytest.mark.slow
def test_lr_find_prints_no_progress_bar_or_library_warning(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "cnnlab", "lr-find", *TINY[:-2], "--steps", "10"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no "Finding best initial lr" bar, no max_epochs warning, no Lightning log line
    assert done.stdout.startswith(("suggested learning rate: ", "lr-find: no suggestion"))


@pytest.mark.slow
def test_ddp_ranks_print_no_library_advice(tmp_path: Path):
    """Two CPU processes: no "Initializing distributed" lines, no sync_dist advice from rank 1 (its epoch metrics
    are reduced over the ranks already); rank 0's notes are in train.log."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "cnnlab", "train", *TINY, "trainer.accelerator=cpu",
                           "trainer.devices=2", "trainer.strategy=ddp", "hydra.run.dir=run"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "Initializing distributed" in (tmp_path / "run" / "train.log").read_text()


def test_a_failed_run_keeps_its_error_in_train_log(tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "optimizer=sgd", "optimizer.lr=1e30", f"hydra.run.dir={run}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnlab: error: non-finite training loss")
    assert "error: " + err.removeprefix("cnnlab: error: ") in (run / "train.log").read_text()


@pytest.mark.slow
def test_a_run_cut_short_by_max_steps_is_quiet(tmp_path: Path):
    """The epoch cut short ends without validation: no warning that the best-checkpoint metric is missing."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "cnnlab", "train", *TINY, "trainer.max_steps=3", "batch_size=8",
                           "hydra.run.dir=run"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 3
