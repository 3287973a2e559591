"""Resume: which overrides a resumed run gets, what it refuses, and metrics.csv trimmed to the checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnlab.errors import ConfigError
from cnnlab.runs.read import read_metrics
from cnnlab.runs.write import write_metrics
from cnnlab.train.resume import check_same_config, hydra_args, trim_metrics


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "my run"  # a space: the paths must reach Hydra quoted
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (run / ".hydra" / "overrides.yaml").write_text("- model=mlp\n- trainer.max_epochs=2\n- ckpt_path=/old.ckpt\n")
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": {}, "global_step": 5, "cnnlab": {"config": {"seed": 1}, "num_classes": 10}},
               run / "checkpoints" / "last.ckpt")
    return run


def test_resume_recomposes_the_runs_overrides_in_its_folder(run_dir: Path):
    args = hydra_args([f"resume={run_dir}", "trainer.max_epochs=5", "progress_bar=none"])
    assert args == ["model=mlp", "trainer.max_epochs=5", "progress_bar=none", f"hydra.run.dir='{run_dir}'",
                    f"ckpt_path='{run_dir}/checkpoints/last.ckpt'"]


def test_ckpt_path_inside_a_run_folder_continues_that_run(run_dir: Path):
    best = run_dir / "checkpoints" / "best.ckpt"
    best.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
    assert hydra_args([f"ckpt_path={best}"])[-2:] == [f"hydra.run.dir='{run_dir}'", f"ckpt_path='{best}'"]


def test_a_checkpoint_outside_any_run_starts_a_new_folder(tmp_path: Path, run_dir: Path):
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
    assert hydra_args(["model=mlp", f"ckpt_path={loose}"]) == ["model=mlp", f"ckpt_path={loose}"]


def test_without_resume_the_arguments_pass_untouched():
    assert hydra_args(["-m", "loss=ce,nll"]) == ["-m", "loss=ce,nll"]


def test_only_run_length_device_and_output_keys_may_change_on_resume():
    saved = {"optimizer": {"lr": 0.01}, "trainer": {"max_epochs": 2}, "data_dir": "/a"}
    check_same_config({"optimizer": {"lr": 0.01}, "trainer": {"max_epochs": 9}, "data_dir": "/b", "new": 1}, saved,
                      "x.ckpt")
    with pytest.raises(ConfigError, match=r"optimizer.lr=0.1 differs from the 0.01 that x.ckpt was trained with"):
        check_same_config({"optimizer": {"lr": 0.1}, "trainer": {"max_epochs": 2}}, saved, "x.ckpt")


def test_metrics_rows_past_the_checkpoint_are_dropped(tmp_path: Path):
    rows = [{"epoch": e, "step": 8 * e, "train_loss": 1.0 / e} for e in (1, 2, 3)]
    write_metrics(tmp_path, rows)
    trim_metrics(tmp_path, {"global_step": 20})  # a checkpoint taken mid-epoch 3
    assert [(r["epoch"], r["step"]) for r in read_metrics(tmp_path)] == [(1, 8), (2, 16)]


def _lengths(scheduler: dict, before: tuple, after: tuple, recorded: dict | None) -> None:
    from omegaconf import OmegaConf

    from cnnlab.train.resume import check_schedule_length

    cfg = OmegaConf.create({"scheduler": scheduler, "trainer": {"max_epochs": after[0], "max_steps": after[1]}})
    saved = {"trainer": {"max_epochs": before[0], "max_steps": before[1]}}
    check_schedule_length(cfg, saved, {"cnnlab": recorded or {}}, "run/checkpoints/last.ckpt")


ONECYCLE = {"_target_": "cnnlab.train.optim.onecycle"}


@pytest.mark.parametrize("scheduler, after", [
    (ONECYCLE, (2, -1)),  # 5 -> 22 steps: past a one-cycle's end
    (ONECYCLE, (-1, -1)),  # no end at all
    ({"_target_": "cnnlab.train.optim.cosine"}, (2, 8)),
    ({"_target_": "cnnlab.train.optim.exp_decay", "warmup_fraction": 0.1}, (2, 8)),
])
def test_a_resume_cannot_train_past_a_schedule_sized_by_the_run(scheduler: dict, after: tuple):
    with pytest.raises(ConfigError, match=r"was sized for the 5 optimizer steps .* resume for at most that long"):
        _lengths(scheduler, (2, 5), after, {"run_steps": 5, "steps_per_epoch": 11})


def test_schedule_length_allows_shorter_runs_unsized_schedules_and_old_checkpoints():
    recorded = {"run_steps": 22, "steps_per_epoch": 11}
    _lengths(ONECYCLE, (2, -1), (2, 10), recorded)  # stopping earlier under the same schedule
    _lengths({"_target_": "cnnlab.train.optim.exp_decay"}, (2, -1), (5, -1), recorded)  # not sized by the run
    _lengths(ONECYCLE, (2, -1), (5, -1), None)  # written before the length was recorded: not checked
    _lengths(ONECYCLE, (2, -1), (2, -1), recorded)  # the same settings
    _lengths(ONECYCLE, (2, 5), (3, 5), {"run_steps": 5, "steps_per_epoch": 11})  # max_steps still bounds it


@pytest.mark.slow
def test_training_on_past_a_one_cycle_is_one_line_and_leaves_the_run_as_it_was(tmp_path: Path, capsys):
    from conftest import TINY

    from cnnlab.cli import main

    run = tmp_path / "run"
    assert main(["train", *TINY, "scheduler=onecycle", "batch_size=8", "trainer.max_steps=5",
                 f"hydra.run.dir={run}"]) == 0
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file() and path.name != "train.log"}
    capsys.readouterr()
    assert main(["train", f"resume={run}", "trainer.max_steps=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnlab: error: scheduler=onecycle was sized for the 5 optimizer steps") and "\n" not in err
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file() and path.name != "train.log"} \
        == before  # train.log keeps the error line, as for every refused command
    assert "error: scheduler=onecycle was sized" in (run / "train.log").read_text()
    assert main(["train", f"resume={run}", "trainer.max_steps=5"]) == 0  # as long as it was: fine


@pytest.mark.slow
def test_early_stopping_in_a_run_cut_short_by_max_steps(tmp_path: Path):
    """The epoch cut short has no validation: early stopping checks after validations only (it stopped the run with
    "metric val/acc not available" before), and the run trains on from there."""
    from conftest import TINY

    from cnnlab.cli import main

    run = tmp_path / "run"
    args = [*TINY, "trainer.max_epochs=2", "batch_size=8", "early_stopping.enabled=true", "early_stopping.patience=5"]
    assert main(["train", *args, "trainer.max_steps=5", f"hydra.run.dir={run}"]) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert main(["train", f"resume={run}", "trainer.max_steps=-1"]) == 0
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2]
    assert main(["train", *args, f"hydra.run.dir={tmp_path / 'straight'}"]) == 0
    straight = read_metrics(tmp_path / "straight")
    assert [row["val_acc"] for row in read_metrics(run)] == [row["val_acc"] for row in straight]


@pytest.mark.slow
def test_validation_every_second_epoch_still_checkpoints_every_epoch(tmp_path: Path):
    """Lightning saves a checkpoint callback's file after validation only when validation skips epochs: the last
    checkpoint is written at every epoch's end all the same (there was none before epoch 2's validation)."""
    from conftest import TINY

    from cnnlab.cli import main

    args = [*TINY, "trainer.max_epochs=2", "batch_size=8", "+trainer.check_val_every_n_epoch=2"]
    run = tmp_path / "run"
    assert main(["train", *args, "trainer.max_steps=15", f"hydra.run.dir={run}"]) == 0  # cut inside epoch 2
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 15
    assert main(["train", f"resume={run}", "trainer.max_steps=-1"]) == 0
    assert main(["train", *args, f"hydra.run.dir={tmp_path / 'straight'}"]) == 0
    resumed, straight = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=False)
                         for r in (run, tmp_path / "straight"))
    assert resumed["global_step"] == straight["global_step"] == 22
    for name, value in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), name
