"""Runs written by cnnlab 0.1 (before the regroup moved classes) still evaluate, predict, resume and compare.

tests/data/legacy-0.1 holds two real run folders made by 0.1: `finished` (2 epochs) and `interrupted` (SIGTERM at
step 8 of 18). Their configs name `cnnlab.losses.nll` and `cnnlab.optim.cosine`, which live in cnnlab.train now.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cnnlab.cli import main
from cnnlab.config import current_name, upgrade

LEGACY = Path(__file__).resolve().parent / "data" / "legacy-0.1"


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    shutil.copytree(LEGACY, tmp_path / "legacy")
    return tmp_path / "legacy"


def test_the_fixture_names_the_old_targets():
    config = yaml.safe_load((LEGACY / "finished" / ".hydra" / "config.yaml").read_text())
    assert config["loss"]["_target_"] == "cnnlab.losses.nll"
    assert config["scheduler"]["_target_"] == "cnnlab.optim.cosine"
    assert current_name("cnnlab.losses.nll") == "cnnlab.train.losses.nll"
    assert current_name("cnnlab.models.classic.MLP") == "cnnlab.models.classic.MLP"
    assert upgrade({"a": [{"_target_": "cnnlab.optim.step"}]}) == {"a": [{"_target_": "cnnlab.train.optim.step"}]}


def test_old_run_evaluates_to_its_recorded_test_metrics(legacy: Path, capsys: pytest.CaptureFixture):
    assert main(["eval", str(legacy / "finished")]) == 0
    report = json.loads((legacy / "finished" / "eval" / "best_test.json").read_text())
    recorded = json.loads((legacy / "finished" / "summary.json").read_text())["test"]
    assert report["samples"] == 24
    assert report["metrics"]["acc"] == pytest.approx(recorded["test/acc"], abs=1e-6)
    assert report["metrics"]["loss"] == pytest.approx(recorded["test/loss"], abs=1e-5)


def test_old_run_predicts(legacy: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("L", (8, 8), color=200).save(image)
    assert main(["predict", str(legacy / "finished"), str(image), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and len(rows[0]["predictions"]) == 3
    assert sum(c["probability"] for c in rows[0]["predictions"]) == pytest.approx(1.0, abs=1e-4)


def test_old_interrupted_run_resumes_to_the_end(legacy: Path, capsys: pytest.CaptureFixture):
    run = legacy / "interrupted"
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert main(["train", f"resume={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 18 and summary["epochs"] == 3
    assert summary["resumed_from"]["step"] == 8


def test_old_runs_compare_side_by_side(legacy: Path, capsys: pytest.CaptureFixture):
    assert main(["compare", str(legacy), "--format", "csv", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 3  # a header and one row per run
