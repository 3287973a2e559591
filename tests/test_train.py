"""End to end through the real CLI: a run folder with every promised file, multirun, Fashion-MNIST files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import QUICK, cnnlab

from cnnlab.cli import main

RUN_FILES = ["metrics.csv", "summary.json", "curves.png", "model_summary.txt", ".hydra/config.yaml",
             "checkpoints/best.ckpt", "checkpoints/last.ckpt"]


@pytest.mark.slow
def test_train_writes_the_whole_run_folder(tmp_path: Path):
    run = tmp_path / "run"
    result = cnnlab("train", "dataset=synthetic", "progress_bar=none", "trainer.max_epochs=2",
                    f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "curves.png").read_bytes().startswith(b"\x89PNG")
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                             "epoch_time_s"]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["train_loss"]) > 0 and 0 <= float(r["val_acc"]) <= 1 for r in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["choices"]["dataset"] == "synthetic" and summary["choices"]["model"] == "lenet"
    assert summary["params"] == 431_080
    assert summary["epochs"] == 2
    assert summary["best"]["val_acc"] == max(float(r["val_acc"]) for r in rows)
    assert 0 <= summary["test"]["test/acc"] <= 1
    assert summary["test"]["test/acc"] > 0.5, "synthetic classes are easy: the model must learn them"
    assert summary["duration_s"] > 0
    assert "431,080 parameters" in result.stdout


@pytest.mark.slow
def test_multirun_makes_one_folder_per_job(tmp_path: Path):
    sweep = tmp_path / "sweep"
    result = cnnlab("train", "-m", "loss=ce,nll", "dataset=synthetic", *QUICK, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == 2
    assert {json.loads(s.read_text())["choices"]["loss"] for s in summaries} == {"ce", "nll"}


@pytest.mark.slow
def test_fashion_mnist_is_read_from_data_dir(tmp_path: Path, fashion_dir: Path):
    run = tmp_path / "run"
    code = main(["train", "dataset=fashion_mnist", f"data_dir={fashion_dir}", "dataset.source.system_dirs=[]",
                 "dataset.source.download=false", "trainer.max_epochs=2", "progress_bar=none",
                 f"hydra.run.dir={run}"])
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    # 300 training images, 10% held out per class for validation; the official 100 test images.
    assert summary["split_sizes"] == {"train": 270, "val": 30, "test": 100}
    assert summary["test"]["test/acc"] > 0.9


@pytest.mark.slow
def test_missing_dataset_offline_is_one_line(tmp_path: Path):
    result = cnnlab("train", "dataset=fashion_mnist", f"data_dir={tmp_path / 'empty'}",
                    "dataset.source.system_dirs=[/nonexistent/fashion]", "dataset.source.download=false",
                    "progress_bar=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "dataset 'fashion_mnist' not found" in lines[0]
    assert str(tmp_path / "empty") in lines[0] and "/nonexistent/fashion" in lines[0]
    assert "apt-get install dataset-fashion-mnist" in lines[0]


def test_cfg_job_prints_composed_config_without_training(tmp_path: Path):
    result = cnnlab("train", "model=mlp", "--cfg", "job")
    assert result.returncode == 0
    assert "_target_: cnnlab.models.classic.MLP" in result.stdout
    assert "init: ${seed}" in result.stdout  # interpolations shown as written, not resolved
    assert "logger:\n  tensorboard:\n    _target_: pytorch_lightning.loggers.TensorBoardLogger" in result.stdout
