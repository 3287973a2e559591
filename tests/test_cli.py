"""The command line: help, listing, and one clear line with exit code 2 for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import cnnlab

from cnnlab.config import CONF_DIR


def test_help_lists_commands():
    result = cnnlab("--help")
    assert result.returncode == 0
    assert "train" in result.stdout and "list" in result.stdout


def test_list_names_every_option_with_its_description():
    result = cnnlab("list")
    assert result.returncode == 0
    for yaml_file in CONF_DIR.glob("*/*.yaml"):
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(yaml_file.stem + " "))
        assert len(line.split(None, 1)) == 2, f"{yaml_file} has no description"


def test_list_shows_one_option():
    result = cnnlab("list", "loss", "nll")
    assert result.returncode == 0
    assert "_target_: cnnlab.losses.nll" in result.stdout


BAD_INPUT = [
    (["model=nope"], "model=nope: no such option; choose one of: lenet, lenet5, mlp"),
    (["optimizer.lr=-1"], "optimizer.lr=-1"),
    (["optimizer.lr=0"], "optimizer.lr=0"),
    (["batch_size=0"], "batch_size=0"),
    (["batch_size=-3"], "batch_size=-3"),
    (["val_fraction=1.5"], "val_fraction=1.5"),
    (["val_fraction=0"], "val_fraction=0"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0"),
    (["batch_size=abc"], "batch_size='abc'"),
    (["no_such_key=1"], "unknown key 'no_such_key'"),
    (["model.activation=swishy"], "model.activation='swishy'"),
    (["dataset.image_size=8", "model=lenet5"], "needs images of at least"),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD_INPUT, ids=[" ".join(o) for o, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, overrides: list[str], expected: str):
    result = cnnlab("train", "dataset=synthetic", "progress_bar=none", f"hydra.run.dir={tmp_path / 'run'}",
                    *overrides)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cnnlab: error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_command_exits_2():
    result = cnnlab("fly")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "cnnlab: error: unknown command 'fly'; choose one of: train, list, compare (see cnnlab --help)")
