"""The fitting diagnosis: constructed histories get the right verdict; every run's summary carries one."""

from __future__ import annotations

import json
from pathlib import Path

from cnnlab.cli import main
from cnnlab.runs.diagnosis import diagnose, early_stop_epoch


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
    assert "training accuracy is only 0.330" in result["message"]


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
