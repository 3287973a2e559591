"""steps_per_execution: K optimizer steps per Lightning step are the same steps as K=1, to the bit."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, cnnlab, make_image_folder

from cnnlab.cli import main
from cnnlab.data.chunks import Chunk, ChunkedLoader, limited_batches
from cnnlab.data.datamodule import InMemoryLoader
from cnnlab.train.checkpoint import load_checkpoint
from cnnlab.train.executions import CALL_SHARE, LIGHTNING_CALL_S, MAX_STEPS, steps_for

# 200 images, 180 to train on in batches of 16: 12 steps an epoch, the last one short (4 images); dropout draws
# from the global generator between the augmentation's draws, so a change in their order would show.
RUN = ["dataset=synthetic", "dataset.image_size=8", "dataset.num_classes=3", "dataset.source.num_train=200",
       "dataset.source.num_test=24", "model=mlp", "model.hidden=[16]", "model.dropout=0.2", "batch_size=16",
       "trainer.max_epochs=2", "trainer.deterministic=true", "progress_bar=none", "test=false"]


def train(run: Path, *overrides: str) -> dict:
    assert main(["train", *RUN, *overrides, f"hydra.run.dir={run}"]) == 0
    return load_checkpoint(run / "checkpoints" / "last.ckpt")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in csv.DictReader(handle)]


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of a run: (step, value) points by tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def lr_points(run: Path) -> list[tuple[int, float]]:
    (tag,) = [t for t in scalars(run) if t.startswith("lr-")]
    return scalars(run)[tag]


# ------------------------------------------------------------------ the same steps as K=1

@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ["scheduler=exp_decay", "scheduler.decay_steps=5"],
    ["scheduler=onecycle", "scheduler.warmup_steps=4", "trainer.gradient_clip_val=0.05", "loss.label_smoothing=0.1",
     "augmentation=mixup"],
    ["scheduler=cosine", "augmentation=flip", "ema.enabled=true", "ema.decay=0.9",
     "trainer.gradient_clip_val=0.5", "+trainer.gradient_clip_algorithm=value"],
    ["scheduler=plateau", "scheduler.patience=0", "scheduler.factor=0.5", "trainer.max_epochs=4",
     "optimizer.lr=0.5"],
    ["trainer.precision=bf16-mixed", "trainer.gradient_clip_val=0.05", "scheduler=exp_decay"],
], ids=["exp_decay", "onecycle-clip-smoothing-mixup", "cosine-ema-clip_value", "plateau", "bf16-clip"])
def test_four_steps_per_call_give_the_weights_of_one(tmp_path: Path, overrides: list[str]):
    one = train(tmp_path / "k1", *overrides)
    four = train(tmp_path / "k4", "steps_per_execution=4", *overrides)
    assert one["global_step"] == 24 * (2 if "trainer.max_epochs=4" in overrides else 1)
    assert_same_weights(one, four)
    assert one["optimizer_states"][0]["param_groups"][0]["lr"] == four["optimizer_states"][0]["param_groups"][0]["lr"]
    assert rows(tmp_path / "k1") == rows(tmp_path / "k4")  # epoch metrics and the lr column
    # every curve, at the same steps: the lr of each step, the epoch metrics at the step they were logged
    assert scalars(tmp_path / "k1") == scalars(tmp_path / "k4")
    summary = json.loads((tmp_path / "k4" / "summary.json").read_text())
    assert summary["speed"]["steps_per_execution"] == 4
    assert load_checkpoint(tmp_path / "k4" / "checkpoints" / "last.ckpt")["cnnlab"]["steps_per_execution"] == 4
    if "scheduler=plateau" in overrides:  # the plateau did act, after validation, at the same epochs
        lrs = {float(row["lr"]) for row in rows(tmp_path / "k4")}
        assert len(lrs) > 1


@pytest.mark.slow
def test_tensorboard_holds_one_lr_point_per_optimizer_step(tmp_path: Path):
    run = tmp_path / "run"
    train(run, "steps_per_execution=5", "scheduler=exp_decay", "scheduler.decay_rate=0.5", "scheduler.decay_steps=3",
          "optimizer.lr=0.01")
    points = lr_points(run)
    assert [step for step, _ in points] == list(range(24))  # 12 steps an epoch, in calls of 5, 5 and 2
    for step, lr in points:  # exp_decay: the lr step s uses is lr * rate ** (s / decay_steps)
        assert lr == pytest.approx(0.01 * 0.5 ** (step / 3), rel=1e-5)


@pytest.mark.slow
def test_max_steps_not_a_multiple_of_k_stops_there(tmp_path: Path):
    run = tmp_path / "run"
    checkpoint = train(run, "trainer.max_steps=10", "steps_per_execution=4")
    assert checkpoint["global_step"] == 10
    assert json.loads((run / "summary.json").read_text())["steps"] == 10
    assert_same_weights(checkpoint, train(tmp_path / "k1", "trainer.max_steps=10"))
    # The third call took 2 of its 4 batches and left the other two undrawn: the loader stands at batch 10.
    (state,) = [s for key, s in checkpoint["callbacks"].items() if key.startswith("ResumeState")]
    assert state["train_loader"] == {"epoch": 0, "batches_done": 10}


@pytest.mark.slow
def test_a_run_stopped_mid_call_at_max_steps_continues_exactly(tmp_path: Path):
    endless = ["trainer.max_epochs=-1", "steps_per_execution=4"]
    reference = train(tmp_path / "reference", *endless, "trainer.max_steps=30")
    run = tmp_path / "run"
    assert train(run, *endless, "trainer.max_steps=13")["global_step"] == 13  # one batch into epoch 2's first call
    assert main(["train", f"resume={run}", "trainer.max_steps=30"]) == 0
    assert_same_weights(load_checkpoint(run / "checkpoints" / "last.ckpt"), reference)
    assert rows(run) == rows(tmp_path / "reference")  # the cut epoch's training metrics cover all of it


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_execution", ["1", "4"])
def test_a_run_cut_short_by_max_steps_resumes_inside_its_epoch(tmp_path: Path, steps_per_execution: str):
    """Lightning ends an epoch cut short by max_steps with its epoch-end hooks; the run trained on from there must
    still finish that epoch and then train max_epochs' last one (not count the epoch's rest as the next)."""
    spe = f"steps_per_execution={steps_per_execution}"
    reference = train(tmp_path / "reference", spe)  # 2 epochs of 12 steps
    run = tmp_path / "run"
    assert train(run, spe, "trainer.max_steps=5")["global_step"] == 5
    assert [r["epoch"] for r in rows(run)] == ["1"]  # the cut epoch's row, at step 5
    assert main(["train", f"resume={run}"]) == 0  # max_steps reached already: nothing more, nothing lost
    assert [(r["epoch"], r["step"]) for r in rows(run)] == [("1", "5")]
    assert json.loads((run / "summary.json").read_text())["steps"] == 5
    assert main(["train", f"resume={run}", "trainer.max_steps=-1"]) == 0
    assert_same_weights(load_checkpoint(run / "checkpoints" / "last.ckpt"), reference)
    assert rows(run) == rows(tmp_path / "reference")
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_a_callback_that_replaces_the_schedule_is_followed(tmp_path: Path):
    swa = ["trainer.max_epochs=3", "+callbacks.swa._target_=pytorch_lightning.callbacks.StochasticWeightAveraging",
           "+callbacks.swa.swa_lrs=0.01"]
    one = train(tmp_path / "k1", *swa)
    four = train(tmp_path / "k4", *swa, "steps_per_execution=4")
    assert_same_weights(one, four)
    assert rows(tmp_path / "k1") == rows(tmp_path / "k4")
    assert len({row["lr"] for row in rows(tmp_path / "k4")}) > 1  # SWA's own schedule moved the lr


@pytest.mark.slow
def test_an_interrupt_lands_between_calls_and_resumes_to_the_same_weights(tmp_path: Path):
    args = [*RUN, "steps_per_execution=4", "scheduler=exp_decay", "augmentation=flip"]
    reference = tmp_path / "reference"
    assert main(["train", *args, f"hydra.run.dir={reference}"]) == 0
    run = tmp_path / "run"
    result = cnnlab("train", *args, "fault_injection.signal_at_step=14", f"hydra.run.dir={run}")
    assert result.returncode == 143, result.stderr
    # Step 14 is in the call of steps 13-16 (epoch 2 begins at 13): the stop comes after it, mid-epoch.
    assert "interrupted by SIGTERM at epoch 2, step 16" in result.stderr
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 16
    assert main(["train", f"resume={run}"]) == 0
    assert_same_weights(load_checkpoint(run / "checkpoints" / "last.ckpt"),
                        load_checkpoint(reference / "checkpoints" / "last.ckpt"))
    assert rows(run) == rows(reference)
    assert scalars(run) == scalars(reference)


@pytest.mark.slow
def test_limit_train_batches_counts_batches_not_calls(tmp_path: Path):
    one = train(tmp_path / "k1", "trainer.limit_train_batches=5")
    three = train(tmp_path / "k3", "trainer.limit_train_batches=5", "steps_per_execution=3")
    assert one["global_step"] == 10
    assert_same_weights(one, three)
    half = train(tmp_path / "half", "trainer.limit_train_batches=0.5", "steps_per_execution=4")
    assert half["global_step"] == 12  # int(12 * 0.5) a epoch, as Lightning counts a fraction


@pytest.mark.slow
def test_a_non_finite_loss_in_a_call_names_its_step(tmp_path: Path, capfd: pytest.CaptureFixture):
    run = tmp_path / "run"
    code = main(["train", *RUN, "steps_per_execution=4", "fault_injection.nan_at_step=7", f"hydra.run.dir={run}"])
    err = capfd.readouterr().err
    assert code == 1
    # The weights break as the call holding step 7 begins (steps 5-8): its first step is the first bad one.
    assert "non-finite training loss at step 5 (epoch 1, batch 5); the last finite loss was" in err
    assert "at step 4" in err


@pytest.mark.slow
def test_auto_measures_the_step_and_records_its_choice(tmp_path: Path):
    run = tmp_path / "run"
    auto = train(run, "steps_per_execution=auto", "trainer.max_epochs=1")
    speed = json.loads((run / "summary.json").read_text())["speed"]
    assert speed["step_ms"] > 0  # the machine's speed decides K: only its agreement with the rule is fixed
    assert speed["steps_per_execution"] == steps_for(speed["step_ms"] / 1000)
    assert auto["cnnlab"]["steps_per_execution"] == speed["steps_per_execution"]
    assert_same_weights(auto, train(tmp_path / "k1", "trainer.max_epochs=1"))


@pytest.mark.slow
@pytest.mark.parametrize("seconds, expected", [(2e-4, steps_for(2e-4)), (0.5, 1)])
def test_auto_takes_many_steps_for_a_fast_model_and_one_for_a_slow_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        seconds: float, expected: int):
    import cnnlab.train.executions as executions

    monkeypatch.setattr(executions, "measure_step", lambda *args, **kwargs: seconds)
    run = tmp_path / "run"
    checkpoint = train(run, "steps_per_execution=auto", "trainer.max_epochs=1")
    assert json.loads((run / "summary.json").read_text())["speed"]["steps_per_execution"] == expected
    assert checkpoint["cnnlab"]["steps_per_execution"] == expected and checkpoint["global_step"] == 12
    assert expected == 1 or expected > 12  # one call for the whole 12-step epoch


@pytest.mark.slow
def test_an_image_tree_streamed_from_disk_takes_k_batches_from_its_loader(tmp_path: Path):
    root = make_image_folder(tmp_path / "pets", per_class=24)
    args = ["dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=16", "dataset.source.cache=false",
            "num_workers=0", "model=mlp", "model.hidden=[8]", "batch_size=4", "trainer.max_epochs=2",
            "trainer.deterministic=true", "progress_bar=none", "test=false"]
    one, three = tmp_path / "k1", tmp_path / "k3"
    assert main(["train", *args, f"hydra.run.dir={one}"]) == 0
    assert main(["train", *args, "steps_per_execution=3", f"hydra.run.dir={three}"]) == 0
    assert_same_weights(load_checkpoint(one / "checkpoints" / "last.ckpt"),
                        load_checkpoint(three / "checkpoints" / "last.ckpt"))
    auto = tmp_path / "auto"
    assert main(["train", *args, "steps_per_execution=auto", f"hydra.run.dir={auto}"]) == 0
    assert json.loads((auto / "summary.json").read_text())["speed"]["steps_per_execution"] == 1  # decoding dominates


HOOK_COUNTER = """
import json
import pathlib

import pytorch_lightning as pl
import torch


class Hooks(pl.Callback):
    # Records every per-step hook call and what it sees: one call per optimizer step, whatever K.
    def __init__(self):
        self.seen = []

    def on_before_backward(self, trainer, module, loss):
        self.seen.append(("before_backward", trainer.global_step, bool(loss.requires_grad)))

    def on_after_backward(self, trainer, module):
        grad = next(module.parameters()).grad
        self.seen.append(("after_backward", trainer.global_step, grad is not None))

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.seen.append(("before_optimizer_step", trainer.global_step, isinstance(optimizer, torch.optim.Adam)))

    def on_train_end(self, trainer, module):
        pathlib.Path(trainer.default_root_dir, "hooks.json").write_text(json.dumps(self.seen))
"""


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])  # the lean path, and Lightning's own
def test_a_users_callback_sees_every_step_hook_once_per_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             precision: str):
    package = tmp_path / "src" / "myhooks"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(HOOK_COUNTER)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    seen = {}
    for k in (1, 4):
        run = tmp_path / f"k{k}"
        train(run, f"steps_per_execution={k}", "+callbacks.hooks._target_=myhooks.Hooks", "trainer.max_steps=10",
              f"trainer.precision={precision}")
        seen[k] = json.loads((run / "hooks.json").read_text())
    assert len(seen[1]) == 30 and seen[4] == seen[1]
    assert seen[1][:3] == [["before_backward", 0, True], ["after_backward", 0, True],
                           ["before_optimizer_step", 0, True]]
    assert seen[1][-1] == ["before_optimizer_step", 9, True]


# ------------------------------------------------------------------ refusals

@pytest.mark.parametrize("overrides, message", [
    (["steps_per_execution=0"], "steps_per_execution=0 is not allowed: auto or an integer >= 1"),
    (["steps_per_execution=fast"], "steps_per_execution='fast' is not allowed: auto or an integer >= 1"),
    (["steps_per_execution=4", "trainer.accumulate_grad_batches=2"],
     "steps_per_execution=4 does not combine with trainer.accumulate_grad_batches=2"),
    (["steps_per_execution=4", "+trainer.val_check_interval=8"],
     "steps_per_execution=4 does not combine with trainer.val_check_interval=8"),
    (["steps_per_execution=4", "+trainer.val_check_interval=0.5"],
     "steps_per_execution=4 does not combine with trainer.val_check_interval=0.5"),
])
def test_bad_settings_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, overrides: list[str], message: str):
    code = main(["train", *TINY, *overrides, f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_a_resume_may_not_switch_between_one_and_several_steps(tmp_path: Path, capsys: pytest.CaptureFixture):
    run = tmp_path / "run"
    assert main(["train", *TINY, "trainer.max_epochs=1", f"hydra.run.dir={run}"]) == 0
    capsys.readouterr()
    code = main(["train", f"resume={run}", "trainer.max_epochs=2", "steps_per_execution=4"])
    err = capsys.readouterr().err
    assert code == 2 and "steps_per_execution=4: a resumed run keeps its saved config" in err
    assert len(err.strip().splitlines()) == 1


def test_a_run_saved_before_the_setting_existed_keeps_one_step(tmp_path: Path):
    from omegaconf import OmegaConf

    from cnnlab.errors import ConfigError
    from cnnlab.train.executions import check_resume

    saved = {"trainer": {"accumulate_grad_batches": 1}}  # no steps_per_execution key: a 0.2-era run
    check_resume(OmegaConf.create({"steps_per_execution": 1, "trainer": {}}), saved, "old.ckpt")
    with pytest.raises(ConfigError, match="steps_per_execution=auto differs from the 1 that old.ckpt"):
        check_resume(OmegaConf.create({"steps_per_execution": "auto", "trainer": {}}), saved, "old.ckpt")


# ------------------------------------------------------------------ pieces

def test_auto_keeps_lightnings_call_under_its_share():
    for step in (1e-5, 1e-4, 3e-4, 1e-3, 3e-3):
        k = steps_for(step)
        assert k == MAX_STEPS or LIGHTNING_CALL_S / (k * step + LIGHTNING_CALL_S) <= CALL_SHARE + 1e-9
        assert k == 1 or LIGHTNING_CALL_S / ((k - 1) * step + LIGHTNING_CALL_S) > CALL_SHARE  # the smallest such K
    assert steps_for(0.05) == 1  # a long step: Lightning's call is lost in it
    assert steps_for(1e-7) == MAX_STEPS


def test_chunks_cover_the_epoch_in_order_and_resume_by_batches():
    images, labels = torch.arange(100).view(100, 1, 1, 1).to(torch.uint8), torch.arange(100)
    inner = InMemoryLoader(images, labels, batch_size=10, shuffle=True, seed=3)
    expected = [batch[1].tolist() for batch in InMemoryLoader(images, labels, batch_size=10, shuffle=True, seed=3)]
    loader = ChunkedLoader(inner, steps=4)
    assert len(loader) == 3 and loader.batches_per_epoch == 10
    assert [(c.first, c.size, len(list(c))) for c in loader] == [(0, 4, 4), (4, 4, 4), (8, 2, 2)]
    # a chunk is lazy: drawn as the chunks are consumed one after another, like Lightning does
    inner = InMemoryLoader(images, labels, batch_size=10, shuffle=True, seed=3)
    taken = [batch[1].tolist() for chunk in ChunkedLoader(inner, steps=4) for batch in chunk]
    assert taken == expected
    # stopping after 6 batches (a call cut short by max_steps) leaves the loader at batch 6
    inner = InMemoryLoader(images, labels, batch_size=10, shuffle=True, seed=3)
    chunked = ChunkedLoader(inner, steps=4)
    iterator = iter(chunked)
    list(next(iterator))
    second = next(iterator)
    second.size = 2
    list(second)
    assert chunked.state_dict() == {"epoch": 0, "batches_done": 6}
    resumed = ChunkedLoader(InMemoryLoader(images, labels, batch_size=10, shuffle=True, seed=3), steps=4)
    resumed.load_state_dict(chunked.state_dict())
    rest = [batch[1].tolist() for chunk in resumed for batch in chunk]
    assert rest == expected[6:]


def test_a_limited_epoch_ends_at_its_limit():
    images, labels = torch.zeros(100, 1, 1, 1, dtype=torch.uint8), torch.arange(100)
    loader = ChunkedLoader(InMemoryLoader(images, labels, batch_size=10, shuffle=False), steps=4, limit=5)
    assert [len(list(chunk)) for chunk in loader] == [4, 1]
    loader.load_state_dict({"epoch": 0, "batches_done": 5})  # saved at the (limited) epoch's end
    assert [(c.first, len(list(c))) for c in loader] == [(0, 4), (4, 1)] and loader.loader.epoch == 2
    assert limited_batches(12, 0.5) == 6 and limited_batches(12, 0.01) == 1 and limited_batches(12, 40) == 12
    assert isinstance(next(iter(loader)), Chunk)


def test_the_lean_step_path_is_taken_only_where_it_is_lightnings_own():
    import pytorch_lightning as pl

    from cnnlab.train.fastpaths import StepHooks

    def trainer(**kwargs: object) -> pl.Trainer:
        return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, **kwargs)

    assert StepHooks.applies(trainer())
    assert not StepHooks.applies(trainer(precision="bf16-mixed"))  # a loss scaler / autocast plugin: Lightning's path
    assert not StepHooks.applies(trainer(profiler="simple"))  # the profiler times Lightning's own calls


@pytest.mark.slow
def test_the_progress_bar_counts_batches_not_calls(tmp_path: Path, capfd: pytest.CaptureFixture):
    run = tmp_path / "run"
    assert main(["train", *[a for a in RUN if a != "progress_bar=none"], "progress_bar=tqdm", "trainer.max_epochs=1",
                 "steps_per_execution=5", f"hydra.run.dir={run}"]) == 0
    out, err = capfd.readouterr()
    lines = (out + err).replace("\r", "\n").splitlines()
    counts = {line.split("|")[2].split()[0] for line in lines if line.startswith("Epoch 1/1:") and line.count("|") >= 2}
    assert "12/12" in counts and not any(count.endswith("/3") for count in counts)  # 12 batches in 3 calls


@pytest.mark.slow
def test_a_cut_inside_an_epochs_last_call_skips_that_epochs_rest_when_training_on(tmp_path: Path):
    """K=4 on 12-batch epochs: a stop at step 10 falls inside the third and last call, which Lightning counts as
    done; training on skips batches 11 and 12 and trains the next epoch whole (it trained nothing more before)."""
    run = tmp_path / "run"
    assert train(run, "steps_per_execution=4", "trainer.max_steps=10")["global_step"] == 10
    assert main(["train", f"resume={run}", "trainer.max_steps=-1"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 10 + 12
    assert [(r["epoch"], r["step"]) for r in rows(run)] == [("1", "10"), ("2", "22")]
