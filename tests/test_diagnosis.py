"""The fitting diagnosis: constructed histories get the right verdict; every run's summary carries one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnlab.cli import main
from cnnlab.runs.diagnosis import diagnose, early_stop_epoch
from cnnlab.runs.read import read_metrics


def history(train_loss, val_loss, train_acc, val_acc):
    return [{"epoch": i + 1, "train_loss": tl, "val_loss": vl, "train_acc": ta, "val_acc": va}
            for i, (tl, vl, ta, va) in enumerate(zip(train_loss, val_loss, train_acc, val_acc))]


OVERFIT = history(
    train_loss=[1.0, 0.6, 0.4, 0.25, 0.15, 0.08],
    val_loss=[1.0, 0.7, 0.6, 0.65, 0.75, 0.9],
    train_acc=[0.70, 0.80, 0.88, 0.93, 0.96, 0.99],
    val_acc=[0.68, 0.77, 0.80, 0.80, 0.79, 0.78],
)
UNDERFIT = history(
    train_loss=[2.2, 2.1, 2.05, 2.0],
    val_loss=[2.2, 2.1, 2.06, 2.01],
    train_acc=[0.20, 0.28, 0.31, 0.33],
    val_acc=[0.21, 0.27, 0.30, 0.33],
)
IMPROVING = history(
    train_loss=[1.0, 0.7, 0.5], val_loss=[1.0, 0.75, 0.55], train_acc=[0.7, 0.8, 0.85], val_acc=[0.68, 0.78, 0.83])


def test_overfitting_is_named_with_its_first_epoch():
    result = diagnose(OVERFIT, monitor="val_acc", mode="max", patience=2)
    assert result["verdict"] == "overfitting"
    assert result["overfitting_from_epoch"] == 4
    assert result["val_loss_min_epoch"] == 3
    assert result["best_epoch"] == 3  # 0.80 first reached at epoch 3
    assert result["early_stopping_epoch"] == 5
    assert abs(result["acc_gap"] - 0.21) < 1e-9
    assert "overfitting from epoch 4" in result["message"]
    assert "would have stopped at epoch 5" in result["message"]


def test_underfitting_when_training_accuracy_is_low():
    result = diagnose(UNDERFIT, monitor="val_acc", mode="max")
    assert result["verdict"] == "underfitting"
    assert result["overfitting_from_epoch"] is None
    assert result["reached_acc"] == 0.33
    assert "the best accuracy reached is only 0.330 (validation, epoch 4) after 4 epochs" in result["message"]


def test_overfitting_when_validation_loss_rises_whatever_else_improves():
    # validation accuracy still creeps up and training loss falls, but validation loss has risen for 3 epochs
    rows = history(train_loss=[1.0, 0.5, 0.3, 0.2, 0.1, 0.05], val_loss=[1.0, 0.6, 0.5, 0.56, 0.62, 0.7],
                   train_acc=[0.7, 0.85, 0.9, 0.95, 0.97, 0.99], val_acc=[0.7, 0.8, 0.84, 0.845, 0.85, 0.855])
    result = diagnose(rows, monitor="val_acc", mode="max", overfit_epochs=2)
    assert result["verdict"] == "overfitting"
    assert result["overfitting_from_epoch"] == 4 and result["val_loss_min_epoch"] == 3
    assert "validation loss has risen since its minimum at epoch 3 (+0.200 by epoch 6" in result["message"]
    # one epoch of rise is not yet the configured two
    assert diagnose(rows[:4], overfit_epochs=2)["verdict"] != "overfitting"
    assert diagnose(rows[:4], overfit_epochs=1)["verdict"] == "overfitting"


def test_noisy_rising_validation_loss_is_overfitting():
    rows = history(train_loss=[1.0, 0.6, 0.4, 0.3, 0.2, 0.15, 0.1, 0.08],
                   val_loss=[1.0, 0.7, 0.6, 0.68, 0.64, 0.75, 0.72, 0.85],
                   train_acc=[0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98],
                   val_acc=[0.7, 0.76, 0.8, 0.79, 0.8, 0.78, 0.79, 0.77])
    result = diagnose(rows, overfit_epochs=2)
    assert result["verdict"] == "overfitting" and result["overfitting_from_epoch"] == 4


def test_flat_and_noisy_flat_validation_loss_is_not_overfitting():
    flat = history(train_loss=[0.5] * 6, val_loss=[0.5] * 6, train_acc=[0.9] * 6, val_acc=[0.88] * 6)
    assert diagnose(flat)["verdict"] == "good fit"
    # converged, epoch-to-epoch noise of +-2%: the minimum at epoch 3 is chance, not the start of overfitting
    noisy = history(train_loss=[0.6, 0.5, 0.45, 0.44, 0.43, 0.42], val_loss=[0.6, 0.51, 0.49, 0.50, 0.51, 0.50],
                    train_acc=[0.85, 0.88, 0.9, 0.9, 0.91, 0.91], val_acc=[0.84, 0.87, 0.88, 0.88, 0.87, 0.88])
    result = diagnose(noisy)
    assert result["verdict"] == "good fit" and result["overfitting_from_epoch"] is None
    assert "val_acc peaked at epoch 3" in result["message"]


def test_one_epoch_at_high_validation_accuracy_is_not_underfitting():
    # the epoch's training accuracy averages over the epoch while the model learned: 0.62 beside val 0.98
    rows = history(train_loss=[1.1], val_loss=[0.07], train_acc=[0.62], val_acc=[0.98])
    result = diagnose(rows, underfit_acc=0.7)
    assert result["verdict"] == "still improving"
    assert result["reached_acc"] == 0.98


def test_still_improving_and_empty_history():
    assert diagnose(IMPROVING)["verdict"] == "still improving"
    assert diagnose(IMPROVING)["early_stopping_epoch"] is None
    assert diagnose([])["verdict"] == "unknown"


def test_early_stop_epoch_follows_min_delta_and_mode():
    losses = [(1, 1.0), (2, 0.99), (3, 0.985), (4, 0.98)]
    assert early_stop_epoch(losses, "min", patience=2, min_delta=0.0) is None
    assert early_stop_epoch(losses, "min", patience=2, min_delta=0.05) == 3


def test_summary_and_console_carry_the_diagnosis(tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert main(["train", "dataset=synthetic", "model=mlp", "trainer.max_epochs=2", "progress_bar=none",
                 f"hydra.run.dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["diagnosis"]["verdict"] in {"still improving", "good fit", "overfitting", "underfitting"}
    assert summary["diagnosis"]["final_val_acc"] == summary["final"]["val_acc"]
    assert summary["debug"] is None
    assert "diagnosis: " + summary["diagnosis"]["message"] in capsys.readouterr().out


@pytest.mark.slow
def test_a_real_overfit_run_is_called_overfitting(tmp_path: Path):
    """debug=overfit on digits: training accuracy reaches 1 on 4 fixed batches, validation loss turns upwards
    while validation accuracy still creeps up; the verdict follows the loss."""
    run = tmp_path / "run"
    assert main(["train", "dataset=digits", "debug=overfit", "batch_size=16", "optimizer.lr=0.01",
                 "trainer.max_epochs=15", "test=false", "progress_bar=none", f"hydra.run.dir={run}"]) == 0
    rows = read_metrics(run)
    losses = [r["val_loss"] for r in rows]
    low = losses.index(min(losses))
    assert low <= len(rows) - 3  # the curve itself: at least two epochs of rise after the minimum
    assert all(loss > losses[low] * 1.05 for loss in losses[-2:])
    diagnosis = json.loads((run / "summary.json").read_text())["diagnosis"]
    assert diagnosis["verdict"] == "overfitting"
    assert diagnosis["val_loss_min_epoch"] == rows[low]["epoch"]
    assert diagnosis["overfitting_from_epoch"] == rows[low]["epoch"] + 1
    assert rows[-1]["train_acc"] == 1.0
