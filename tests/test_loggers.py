"""The `logger` and `callbacks` config groups (cnnlab/train/loggers.py, cnnlab/train/callbacks.py): any set of
loggers, the user's Lightning callbacks, and a run folder that is complete whatever they are."""

from __future__ import annotations

import csv
import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

from cnnlab.cli import main
from cnnlab.runs.layout import COLUMNS, CURVES_FILE, METRICS_FILE, SUMMARY_FILE, TB_DIR

TINY = ["dataset=synthetic", "dataset.image_size=8", "dataset.num_classes=3", "dataset.source.num_train=96",
        "dataset.source.num_test=24", "model=mlp", "model.hidden=[16]", "trainer.max_epochs=2", "progress_bar=none"]

CALLBACK = '''
import json
import pytorch_lightning as pl


class WriteOnEnd(pl.Callback):
    """Writes the step and epoch count to `path` when training ends."""

    def __init__(self, path: str):
        self.path = path

    def on_train_end(self, trainer, pl_module):
        with open(self.path, "w") as handle:
            json.dump({"step": trainer.global_step, "epoch": trainer.current_epoch}, handle)
'''


def _train(run: Path, *overrides: str) -> int:
    return main(["train", *TINY, *overrides, f"hydra.run.dir={run}"])


def _assert_run_folder_complete(run: Path) -> None:
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2 and summary["steps"] == 4
    with (run / METRICS_FILE).open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and tuple(rows[0]) == COLUMNS
    assert all(float(r["val_loss"]) > 0 for r in rows)
    assert (run / CURVES_FILE).stat().st_size > 1000


def test_csv_logger_alone_writes_its_files_and_the_run_folder_stays_complete(tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert _train(run, "logger=csv") == 0
    _assert_run_folder_complete(run)
    assert not (run / TB_DIR).exists()
    with (run / "csv" / "metrics.csv").open() as handle:
        logged = list(csv.DictReader(handle))
    val_losses = [float(r["val/loss"]) for r in logged if r.get("val/loss")]
    with (run / METRICS_FILE).open() as handle:
        assert val_losses == pytest.approx([float(r["val_loss"]) for r in csv.DictReader(handle)], rel=1e-4)
    assert any(r.get("hparams/test/acc") for r in logged)  # the final numbers reach a non-TensorBoard logger
    assert "model: mlp" in (run / "csv" / "hparams.yaml").read_text()


@pytest.mark.slow
def test_several_loggers_at_once_and_none(tmp_path: Path, capsys):
    both = tmp_path / "both"
    assert _train(both, "logger=[tensorboard,csv]") == 0
    _assert_run_folder_complete(both)
    assert list((both / TB_DIR).glob("events.out.tfevents.*")) and (both / "csv" / "metrics.csv").is_file()
    none = tmp_path / "none"
    assert _train(none, "~logger") == 0
    _assert_run_folder_complete(none)
    assert not (none / TB_DIR).exists() and not (none / "csv").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                    reason="the mlflow extra is not installed (pip install 'cnnlab[mlflow]')")
def test_mlflow_logger_writes_a_file_store_in_the_run_folder(tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert _train(run, "logger=mlflow") == 0
    _assert_run_folder_complete(run)
    assert not (run / TB_DIR).exists()
    (metrics_dir,) = [p for p in (run / "mlruns").rglob("metrics") if p.is_dir()]
    logged = {p.relative_to(metrics_dir).as_posix() for p in metrics_dir.rglob("*") if p.is_file()}
    assert {"val/loss", "train/loss", "test/acc", "hparams/test/acc"} <= logged
    val_losses = [float(line.split()[1]) for line in (metrics_dir / "val" / "loss").read_text().splitlines()]
    with (run / METRICS_FILE).open() as handle:
        assert val_losses == pytest.approx([float(r["val_loss"]) for r in csv.DictReader(handle)], rel=1e-4)
    assert list((run / "mlruns").rglob("confusion_matrix.png"))
    assert any(p.read_text().strip() == "mlp" for p in (run / "mlruns").rglob("params/model"))


def test_mlflow_without_the_package_is_one_line(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    run = tmp_path / "run"
    assert _train(run, "logger=mlflow") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cnnlab: error: logger.mlflow") and "pip install 'cnnlab[mlflow]'" in err[-1]
    assert not (run / "model_summary.txt").exists()


def test_a_user_callback_runs_beside_the_runs_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    package = tmp_path / "src" / "mycallbacks_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(CALLBACK))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    run, marker = tmp_path / "run", tmp_path / "ended.json"
    assert _train(run, "+callbacks.ended._target_=mycallbacks_pkg.WriteOnEnd", f"+callbacks.ended.path={marker}",
                  "+callbacks.swa._target_=pytorch_lightning.callbacks.StochasticWeightAveraging",
                  "+callbacks.swa.swa_lrs=0.01") == 0
    assert json.loads(marker.read_text()) == {"step": 4, "epoch": 2}
    _assert_run_folder_complete(run)  # checkpoints, metrics.csv and the rest stay on
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.parametrize("override, points_to", [
    ("+trainer.logger=false", "logger=[tensorboard,csv]"),
    ("+trainer.callbacks=[]", "+callbacks.NAME._target_=CLASS"),
    ("+callbacks.bad=3", "callbacks.bad=3 is not allowed: a node with the _target_"),
    ("+callbacks.bad._target_=no_such_module_xyz.Callback", "cannot be imported"),
    ("+callbacks.bad._target_=collections.OrderedDict", "not a Lightning callback"),
    ("logger=csv +logger.csv.colour=red", "logger.csv.colour='red': pytorch_lightning.loggers.CSVLogger takes no"),
    ("+callbacks.swa._target_=pytorch_lightning.callbacks.StochasticWeightAveraging", "needs"),
])
def test_trainer_logger_and_callbacks_and_bad_entries_are_one_line(tmp_path: Path, override: str, points_to: str,
                                                                   capsys):
    run = tmp_path / "run"
    assert _train(run, *override.split()) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cnnlab: error:")]
    assert len(err) == 1 and points_to in err[0]
