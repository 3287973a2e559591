"""k-fold cross-validation: `cnnlab train cv.folds=K` (cnnlab/cli/train.py, cnnlab/data/datamodule.py)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY
from omegaconf import OmegaConf

from cnnlab.cli import main
from cnnlab.data.datamodule import stratified_folds


def test_stratified_folds_cover_every_sample_once_and_spread_each_class():
    labels = torch.tensor([0] * 20 + [1] * 7 + [2] * 3 + [3] * 1)
    folds = stratified_folds(labels, 4, seed=5)
    together = torch.cat(folds)
    assert sorted(together.tolist()) == list(range(len(labels)))  # disjoint, and all of them
    assert max(len(f) for f in folds) - min(len(f) for f in folds) <= 1
    for cls, size in ((0, 20), (1, 7), (2, 3), (3, 1)):
        counts = [int((labels[f] == cls).sum()) for f in folds]
        assert sum(counts) == size and max(counts) - min(counts) <= 1, (cls, counts)
    assert all(torch.equal(a, b) for a, b in zip(folds, stratified_folds(labels, 4, seed=5)))
    assert not all(torch.equal(a, b) for a, b in zip(folds, stratified_folds(labels, 4, seed=6)))


def _validation_indices(run: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(val indices, train indices, training-set labels) of a run, rebuilt from its saved config."""
    from cnnlab.train.build import build_datamodule

    datamodule = build_datamodule(OmegaConf.load(run / ".hydra" / "config.yaml"))
    datamodule.setup("fit")
    labels = torch.empty(len(datamodule.split_indices["train"]) + len(datamodule.split_indices["val"]),
                         dtype=torch.long)
    for split in ("train", "val"):
        labels[datamodule.split_indices[split]] = datamodule.splits[split][1]
    return datamodule.split_indices["val"], datamodule.split_indices["train"], labels


@pytest.mark.slow
def test_cv_folds_trains_one_run_per_fold_and_compare_groups_them(tmp_path: Path, capsys: pytest.CaptureFixture):
    sweep = tmp_path / "cv"
    # a single-run command line: cv.folds turns it into a multirun of the 3 folds
    assert main(["train", "cv.folds=3", *TINY, f"hydra.sweep.dir={sweep}"]) == 0
    runs = sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file())
    assert [p.name for p in runs] == ["0", "1", "2"]
    folds, labels = [], None
    for fold, run in enumerate(runs):
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["cv"] == {"folds": 3, "fold": fold}
        assert "test/acc" in summary["test"] and summary["best_checkpoint"]  # each fold's best checkpoint tested
        val, train, labels = _validation_indices(run)
        assert summary["split_sizes"] == {"train": len(train), "val": len(val), "test": 24}
        assert not set(val.tolist()) & set(train.tolist())
        folds.append(val)
    together = torch.cat(folds).tolist()
    assert sorted(together) == list(range(len(labels)))  # disjoint folds covering the training split once
    for cls in range(3):
        counts = [int((labels[f] == cls).sum()) for f in folds]
        assert max(counts) - min(counts) <= 1, counts  # each fold stratified
    rows = list(csv.DictReader(io.StringIO((sweep / "sweep_summary.csv").read_text())))
    assert len(rows) == 1 and rows[0]["folds"] == "3" and rows[0]["runs"] == "0 1 2"
    capsys.readouterr()
    assert main(["compare", str(sweep), "--format", "md", "--no-plot"]) == 0
    markdown = capsys.readouterr().out
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| folds | runs | best val/acc |") and len(table) == 3
    assert table[2].startswith("| 3 | 0, 1, 2 | ") and " ± " in table[2]
    assert "runs that differ only by cross-validation fold are grouped" in markdown
    assert "cv.folds=3" in markdown  # the same in all runs


@pytest.mark.parametrize(("args", "expected"), [
    (["cv.folds=1"], "cv.folds=1 is not allowed: one whole number of folds, 2 or more"),
    (["cv.folds=3,5"], "cv.folds=3,5 is not allowed: one whole number of folds"),
    (["cv.folds=3", "cv.fold=3"], "cv.fold=3 is not allowed: a fold number from 0 to 2 (cv.folds=3)"),
])
def test_bad_folds_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                           expected: str):
    assert main(["train", *args, *TINY, f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cnnlab: error: ") and expected in err[0]


@pytest.mark.slow
def test_cv_composes_with_a_multirun_and_folds_are_paired(tmp_path: Path):
    sweep = tmp_path / "cv"
    assert main(["train", "-m", "loss=ce,nll", "cv.folds=2", *TINY, f"hydra.sweep.dir={sweep}"]) == 0
    overrides = [OmegaConf.load(sweep / str(job) / ".hydra" / "overrides.yaml") for job in range(4)]
    assert [(o[0], o[-1]) for o in overrides] == [("loss=ce", "cv.fold=0"), ("loss=ce", "cv.fold=1"),
                                                  ("loss=nll", "cv.fold=0"), ("loss=nll", "cv.fold=1")]
    rows = list(csv.DictReader(io.StringIO((sweep / "sweep_summary.csv").read_text())))
    assert sorted((r["loss"], r["folds"]) for r in rows) == [("ce", "2"), ("nll", "2")]
    # ce and nll compute the same function on the same folds: paired, and identical
    assert {r["evidence"] for r in rows} == {"baseline", "no difference: identical with 2 folds"}
