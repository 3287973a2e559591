"""Results that do not lie: eval refuses another network than the one trained and never overwrites the plain
report with one made under other settings; compare shows an unreadable run as a row with its reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cnnlab.cli import main


@pytest.mark.parametrize("override", ["model.activation=tanh", "model.hidden=[32]", "+model.extra=1",
                                      "loss.label_smoothing=0.3", "dataset.num_classes=4", "seeds.init=3"])
def test_eval_refuses_another_network(tiny_run: Path, capsys: pytest.CaptureFixture, override: str):
    before = sorted((tiny_run / "eval").glob("*")) if (tiny_run / "eval").exists() else []
    assert main(["eval", str(tiny_run), override]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and override in lines[0] and "network is fixed" in lines[0]
    assert (sorted((tiny_run / "eval").glob("*")) if (tiny_run / "eval").exists() else []) == before


def test_eval_with_overrides_writes_a_new_file_that_records_them(tiny_run: Path, capsys: pytest.CaptureFixture):
    assert main(["eval", str(tiny_run)]) == 0
    plain = tiny_run / "eval" / "best_test.json"
    plain_bytes = plain.read_bytes()
    assert json.loads(plain_bytes)["overrides"] == []

    assert main(["eval", str(tiny_run), "batch_size=7"]) == 0  # loading only: the same numbers, the plain file
    assert json.loads(plain.read_text())["overrides"] == ["batch_size=7"]
    assert json.loads(plain.read_text())["metrics"] == pytest.approx(json.loads(plain_bytes)["metrics"], rel=1e-5)

    assert main(["eval", str(tiny_run), "trainer.limit_test_batches=1", "batch_size=8"]) == 0
    others = list((tiny_run / "eval").glob("best_test_*.json"))
    assert len(others) == 1 and others[0].name != plain.name
    assert json.loads(others[0].read_text())["overrides"] == ["trainer.limit_test_batches=1", "batch_size=8"]
    assert json.loads(others[0].read_text())["samples"] < json.loads(plain.read_text())["samples"]
    assert json.loads(plain.read_text())["overrides"] == ["batch_size=7"]  # the plain report was left alone


@pytest.mark.parametrize(("damage", "reason"), [
    ("summary.json", "summary.json cannot be read"),
    ("metrics.csv", "metrics.csv cannot be read"),
    (".hydra/config.yaml", "config.yaml cannot be read"),
])
def test_compare_shows_an_unreadable_run_and_goes_on(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     damage: str, reason: str):
    for name in ("a", "b"):
        shutil.copytree(tiny_run, tmp_path / name)
    (tmp_path / "b" / damage).write_bytes(b"\x00{not: [valid\n,,\xff")
    assert main(["compare", str(tmp_path), "--format", "csv", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 3  # a header and both runs
    assert main(["compare", str(tmp_path), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert reason in " ".join(out.split())
