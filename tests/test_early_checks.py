"""Checks that used to come late or never (cnnlab/validate.py): refused before the first run file is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY

from cnnlab.cli import main


@pytest.mark.parametrize(("overrides", "words"), [
    (["+trainer.max_epoch=3"], ["trainer.max_epoch", "did you mean trainer.max_epochs"]),
    (["+trainer.default_root_dir=/tmp/x"], ["trainer.default_root_dir", "set by cnnlab"]),
    (["monitor=val/nope"], ["monitor='val/nope'", "val/acc"]),
    (["dataset.class_names=[a,b]"], ["dataset.class_names", "3 names"]),
    (["seed=-1"], ["seed=-1", "2**32-1"]),
    (["seed=4294967296"], ["seed=4294967296"]),
    (["seeds.data=-1"], ["seeds.data=-1", "2**32-1"]),
    (["trainer.limit_train_batches=0"], ["trainer.limit_train_batches=0", "trains nothing"]),
    (["trainer.limit_train_batches=0.0"], ["trainer.limit_train_batches=0.0"]),
])
def test_refused_before_any_run_file(tmp_path: Path, capsys: pytest.CaptureFixture, overrides: list[str],
                                     words: list[str]):
    run = tmp_path / "run"
    assert main(["train", *TINY, *overrides, f"hydra.run.dir={run}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: "), lines
    for word in words:
        assert word in lines[0]
    assert not run.exists()  # nothing written, not even Hydra's record of the refused run


def test_the_largest_seed_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture):
    from cnnlab.config import compose
    from cnnlab.validate import validate

    validate(compose([*TINY, "seed=4294967295", "seeds.data=0"]))
