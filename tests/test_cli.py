"""The command line: help, listing, and one clear line with exit code 2 for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import cnnlab

from cnnlab.cli import main
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
    assert "_target_: cnnlab.train.losses.nll" in result.stdout


# The bad-input catalogue: each case is one line on stderr naming the key, the bad value and what is allowed,
# exit code 2, no traceback, and nothing in the run folder but Hydra's record and the log. "{tmp}" is a folder
# holding the files of `bad_files` (a corrupt checkpoint, a run folder, ...).
# Left to the helpers who build them: a loss that cannot serve the task (multi_margin on multi-label data), an
# imagefolder with one class or an empty class, a file given to predict that is not an image.
BAD_INPUT = [
    (["model=nope"], "model=nope: no such option; choose one of: "
                     + ", ".join(sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))),
    (["no_such_key=1"], "unknown key 'no_such_key'"),
    (["batch_size=abc"], "batch_size='abc'"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc'"),
    (["seeds.init=x"], "seeds.init='x' is not allowed: an integer"),
    (["optimizer.lr=-1"], "optimizer.lr=-1 is not allowed: a positive number"),
    (["optimizer.lr=0"], "optimizer.lr=0"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1"),
    (["batch_size=0"], "batch_size=0 is not allowed: a positive integer"),
    (["batch_size=-3"], "batch_size=-3"),
    (["val_fraction=1.5"], "val_fraction=1.5 is not allowed: a number strictly between 0 and 1"),
    (["val_fraction=0"], "val_fraction=0"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 is not allowed: an integer >= 1"),
    (["trainer.max_steps=0"], "trainer.max_steps=0"),
    (["trainer.precision=13"], "trainer.precision=13 is not allowed: one of 32-true, 16-mixed, bf16-mixed"),
    (["trainer.accelerator=tpu"], "trainer.accelerator='tpu' is not allowed: one of auto, cpu, gpu"),
    (["trainer.devices=0"], "trainer.devices=0"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0 is not allowed: an integer >= 1"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1"),
    (["monitor_mode=up"], "monitor_mode='up' is not allowed: one of min, max, auto"),
    (["dataset.num_classes=1"], "dataset.num_classes=1 is not allowed: an integer >= 2"),
    (["model.activation=swishy"], "model.activation='swishy' is not allowed: one of relu, leaky_relu"),
    (["model.dropout=1.5"], "model.dropout=1.5 is not allowed: a rate in [0, 1)"),
    (["model.init=foo"], "model.init='foo' is not allowed: one of default"),
    (["dataset.image_size=8", "model=lenet5"], "model lenet5 needs images of at least 24x24 pixels, got 8x8"),
    (["fault_injection.signal=SIGKILL"], "fault_injection.signal='SIGKILL' is not allowed: SIGINT or SIGTERM"),
    (["fault_injection.nan_at_step=0"], "fault_injection.nan_at_step=0"),
    (["dataset=fashion_mnist", "data_dir={tmp}/empty", "dataset.source.system_dirs=[]",
      "dataset.source.download=false"], "dataset 'fashion_mnist' not found: looked in {tmp}/empty"),
    (["data_dir={tmp}/a_file"], "data_dir='{tmp}/a_file' is not allowed: a folder (this is a file)"),
    (["resume={tmp}/not_a_run"], "resume='{tmp}/not_a_run' is not allowed: a run folder written by cnnlab train"),
    (["resume={tmp}/run_without_checkpoint"], "the run has no checkpoints/last.ckpt to continue from"),
    (["resume={tmp}/run", "optimizer.lr=0.1"], "optimizer.lr=0.1: a resumed run keeps its saved config; only"),
    (["-m", "resume={tmp}/run"], "continues one run: leave out -m"),
    (["ckpt_path={tmp}/missing.ckpt"], "ckpt_path='{tmp}/missing.ckpt' is not allowed: an existing checkpoint"),
    (["ckpt_path={tmp}/corrupt.ckpt"], "cannot read checkpoint {tmp}/corrupt.ckpt: the"),
    (["ckpt_path={tmp}/foreign.ckpt"], "{tmp}/foreign.ckpt is not a cnnlab checkpoint"),
    (["ckpt_path={tmp}/other_config.ckpt"], "batch_size=64 differs from the 32 that {tmp}/other_config.ckpt was"),
    (["dataset.image_size=8", "model=vgg11"], "model vgg11 needs images of at least 16x16 pixels, got 8x8"),
]


def bad_files(tmp: Path) -> None:
    """The files the catalogue's cases point at."""
    import torch

    (tmp / "a_file").write_text("not a folder")
    (tmp / "not_a_run").mkdir()
    (tmp / "corrupt.ckpt").write_bytes(b"PK\x03\x04 this is no checkpoint")
    torch.save({"weights": torch.zeros(2)}, tmp / "foreign.ckpt")
    torch.save({"state_dict": {}, "global_step": 0, "cnnlab": {"config": {"batch_size": 32}, "num_classes": 10}},
               tmp / "other_config.ckpt")
    for name in ("run", "run_without_checkpoint"):
        (tmp / name / ".hydra").mkdir(parents=True)
        (tmp / name / ".hydra" / "config.yaml").write_text("batch_size: 64\n")
        (tmp / name / ".hydra" / "overrides.yaml").write_text("- dataset=synthetic\n")
    (tmp / "run" / "checkpoints").mkdir()
    torch.save({"state_dict": {}, "global_step": 0, "cnnlab": {"config": {"batch_size": 64}, "num_classes": 10}},
               tmp / "run" / "checkpoints" / "last.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "expected"), BAD_INPUT, ids=[" ".join(o) for o, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capfd: pytest.CaptureFixture, overrides: list[str],
                                          expected: str):
    bad_files(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    overrides = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    resuming = any(o.startswith("resume=") for o in overrides)
    run = tmp_path / "new_run"
    code = main(["train", *([] if resuming else ["dataset=synthetic"]), "progress_bar=none", f"hydra.run.dir={run}",
                 *overrides])
    stderr = capfd.readouterr().err
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("cnnlab: error: ")
    assert expected.replace("{tmp}", str(tmp_path)) in lines[0]
    # Nothing written but Hydra's record of the command and the log; the other files untouched.
    assert not run.exists() or {p.name for p in run.iterdir()} <= {".hydra", "train.log"}
    assert sorted(p for p in tmp_path.rglob("*") if not p.is_relative_to(run)) == before


def test_unknown_command_exits_2():
    result = cnnlab("fly")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "cnnlab: error: unknown command 'fly'; choose one of: train, eval, predict, compare, list, lr-find, data, "
        "init, export, inspect (see cnnlab --help)")


@pytest.mark.parametrize("command", [["eval", "RUN"], ["predict", "RUN", "x.png"], ["compare", "RUN"], ["lr-find"],
                                     ["data", "show"]], ids=lambda c: c[0])
def test_every_command_parses_options_the_same_way(command: list[str], capsys: pytest.CaptureFixture):
    """One parser style for every command: an unknown option is one line naming the command, exit 2."""
    assert main([*command, "--bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"cnnlab: error: cnnlab {command[0]}") and "--bogus" in err[0]
