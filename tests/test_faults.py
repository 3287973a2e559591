"""Faults through the real CLI: SIGTERM/SIGINT then resume (exactly), a non-finite loss, a sweep with failing runs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import cnnlab

from cnnlab.cli import main
from cnnlab.train.checkpoint import load_checkpoint

# Small, but with everything a resume must restore: dropout (global RNG), flips (augmentation RNG), Adam's moments,
# a per-step lr schedule, a shuffled order, and a short last batch (230 training images in batches of 32: 8 steps).
RUN = ["dataset=synthetic", "dataset.source.num_train=256", "batch_size=32", "model=mlp", "model.dropout=0.3",
       "augmentation=flip", "scheduler=exp_decay", "scheduler.decay_steps=5", "trainer.max_epochs=2",
       "trainer.deterministic=true", "test=false", "progress_bar=none"]


def metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in csv.DictReader(handle)]


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", *RUN, f"hydra.run.dir={run}"]) == 0
    return run


@pytest.mark.parametrize(("signal_name", "step", "exit_code", "epoch"), [
    ("SIGTERM", 11, 143, 2),  # mid-epoch, after an epoch boundary
    ("SIGINT", 8, 130, 1),  # during the epoch's last step: the stop waits for its validation and metrics row
])
@pytest.mark.slow
def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path: Path, uninterrupted: Path, signal_name: str,
                                                           step: int, exit_code: int, epoch: int):
    run = tmp_path / "run"
    result = cnnlab("train", *RUN, f"fault_injection.signal_at_step={step}", f"fault_injection.signal={signal_name}",
                    f"hydra.run.dir={run}")
    assert result.returncode == exit_code, result.stderr
    assert result.stderr.strip() == (
        f"cnnlab: interrupted by {signal_name} at epoch {epoch}, step {step}; saved {run}/checkpoints/last.ckpt; "
        f"resume with: cnnlab train resume={run}")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == step
    assert summary["error"] == f"interrupted by {signal_name} at epoch {epoch}, step {step}"
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == step
    assert len(metrics(run)) == step // 8

    assert main(["train", f"resume={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"]["step"] == step
    assert metrics(run) == metrics(uninterrupted)  # bit for bit, but for epoch_time_s
    resumed = load_checkpoint(run / "checkpoints" / "last.ckpt")
    reference = load_checkpoint(uninterrupted / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == reference["global_step"] == 16
    for name, weights in reference["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], weights), name
    assert tensorboard_scalars(run) == tensorboard_scalars(uninterrupted)


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path,
                                                                            capfd: pytest.CaptureFixture):
    run = tmp_path / "run"
    code = main(["train", *RUN, "trainer.max_epochs=3", "fault_injection.nan_at_step=11", f"hydra.run.dir={run}"])
    lines = capfd.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith("cnnlab: error: non-finite training loss at step 11 (epoch 2, batch 3); "
                               "the last finite loss was ")
    assert lines[0].endswith(f"at step 10; the last good checkpoint, {run}/checkpoints/last.ckpt (step 8), stays")
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 8
    assert all(torch.isfinite(w).all() for w in last["state_dict"].values())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"].startswith("non-finite training loss at step 11 (epoch 2, batch 3)")
    assert [row["epoch"] for row in metrics(run)] == ["1"]


def test_a_diverging_learning_rate_is_caught_at_its_first_step(tmp_path: Path, capfd: pytest.CaptureFixture):
    code = main(["train", *RUN, "optimizer=sgd", "optimizer.lr=1e30", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capfd.readouterr().err.strip()
    assert code == 1
    # Step 1 is computed with the initial weights; its update with lr 1e30 breaks step 2.
    assert err.startswith("cnnlab: error: non-finite training loss at step 2 (epoch 1, batch 2)")
    assert err.endswith("at step 1; no checkpoint had been written yet")
    last = float(err.split("the last finite loss was ")[1].split()[0])
    assert math.isfinite(last) and last > 1.0


@pytest.mark.slow
def test_failing_runs_do_not_stop_a_sweep(tmp_path: Path, capfd: pytest.CaptureFixture):
    sweep = tmp_path / "sweep"
    # lenet5 cannot take 16-pixel images; the second NaN setting breaks the weights at step 2.
    code = main(["train", "-m", *RUN, "trainer.max_epochs=1", "dataset.image_size=16", "model=lenet5,mlp",
                 "fault_injection.nan_at_step=null,2", f"hydra.sweep.dir={sweep}"])
    lines = capfd.readouterr().err.strip().splitlines()
    assert code == 1
    assert lines[-1] == (f"cnnlab: 3 of 4 runs failed (0, 1, 3); each one's summary.json says why "
                         f"(sweep folder {sweep})")
    assert len(lines) == 4 and all(line.startswith(f"cnnlab: error: run {sweep}/") for line in lines[:3])
    summaries = {int(p.parent.name): json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert [summaries[i]["status"] for i in range(4)] == ["failed", "failed", "completed", "failed"]
    assert "model lenet5 needs images of at least 24x24 pixels" in summaries[0]["error"]
    assert summaries[0]["choices"]["model"] == "lenet5"
    assert summaries[3]["error"].startswith("non-finite training loss at step 2")
    assert summaries[2]["error"] is None and (sweep / "2" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_resume_with_more_epochs_continues_a_finished_run(tmp_path: Path, uninterrupted: Path):
    run = tmp_path / "run"
    short = [o for o in RUN if not o.startswith("trainer.max_epochs=")]
    assert main(["train", *short, "trainer.max_epochs=1", f"hydra.run.dir={run}"]) == 0
    assert main(["train", f"resume={run}", "trainer.max_epochs=2"]) == 0
    assert metrics(run) == metrics(uninterrupted)
    resumed = load_checkpoint(run / "checkpoints" / "last.ckpt")
    reference = load_checkpoint(uninterrupted / "checkpoints" / "last.ckpt")
    assert all(torch.equal(resumed["state_dict"][k], v) for k, v in reference["state_dict"].items())
    assert "trainer.max_epochs=2" in (run / ".hydra" / "overrides.yaml").read_text()


def test_metric_states_of_an_older_checkpoint_are_skipped_by_name():
    from cnnlab.train.module import EpochMeans
    from cnnlab.train.resume import set_metric_states

    module = torch.nn.Module()
    module.train_means = EpochMeans()
    set_metric_states(module, {"train_loss": {"state": {"mean_value": torch.tensor(1.0)}, "update_count": 3}})
    assert module.train_means.update_count == 0
