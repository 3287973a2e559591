"""EMA of the weights (cnnlab/train/ema.py): the arithmetic, checkpoints and resume, and eval/predict using it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import cnnlab

from cnnlab.cli import main
from cnnlab.cli.common import restore_checked
from cnnlab.config import compose
from cnnlab.train.build import build_datamodule, build_module
from cnnlab.train.checkpoint import load_checkpoint
from cnnlab.train.ema import warmup_decay
from cnnlab.train.trained import build_trained_module

TINY = ["dataset=synthetic", "dataset.image_size=8", "dataset.num_classes=3", "dataset.source.num_train=200",
        "dataset.source.num_test=24", "model=mlp", "model.hidden=[16]", "batch_size=32", "progress_bar=none"]


class StepWeights(pl.Callback):
    """The network's weights and buffers after every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})


def train_steps(overrides: list[str], steps: int) -> tuple[object, list[dict[str, torch.Tensor]]]:
    cfg = compose([*TINY, "model.batch_norm=true", "model.dropout=0.2", *overrides])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    module = build_module(cfg)
    recorder = StepWeights()
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[recorder], accelerator="cpu")
    trainer.fit(module, datamodule=datamodule)
    return module, recorder.steps


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_equals_the_reference_computed_by_hand(warmup: bool):
    decay = 0.9
    module, steps = train_steps(["ema.enabled=true", f"ema.decay={decay}", f"ema.warmup={str(warmup).lower()}",
                                 "ema.warmup_gamma=1.0", "ema.warmup_power=0.5"], steps=5)
    assert len(steps) == 5 and int(module.ema.n_averaged) == 5
    floats = [name for name, value in steps[0].items() if value.is_floating_point()]
    assert any("running_mean" in name for name in floats)  # batch-norm statistics are averaged too
    reference = {name: steps[0][name].double() for name in floats}  # the first update copies the weights
    for t, weights in enumerate(steps[1:], start=1):
        d = min(decay, 1 - (1 + t) ** -0.5) if warmup else decay
        for name in floats:
            reference[name] = d * reference[name] + (1 - d) * weights[name].double()
    averaged = module.ema.module.state_dict()
    for name in floats:
        assert torch.allclose(averaged[name].double(), reference[name], atol=1e-6, rtol=0), name
    first = next(name for name in floats if name.endswith("weight"))
    assert not torch.allclose(averaged[first], steps[-1][first])  # an average, not the last weights
    if warmup:  # timm's decays at updates 1..4: 0.29, 0.42, 0.5, 0.55 (all under 0.9)
        assert [round(warmup_decay(t, decay, 1.0, 0.5), 2) for t in (1, 2, 3, 4)] == [0.29, 0.42, 0.5, 0.55]


def test_without_ema_nothing_changes():
    module, _ = train_steps([], steps=2)
    assert module.ema is None and not any(k.startswith("ema.") for k in module.state_dict())


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ema") / "run"
    assert main(["train", *TINY, "trainer.max_epochs=3", "ema.enabled=true", "ema.decay=0.8",
                 "monitor=val_ema/acc", f"hydra.run.dir={run}"]) == 0
    return run


def test_run_validates_both_and_checkpoints_the_average(ema_run: Path):
    with (ema_run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:8] == ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "val_ema_loss",
                                 "val_ema_acc"]
    assert all(row["val_ema_acc"] and row["val_acc"] for row in rows)
    assert any(row["val_ema_loss"] != row["val_loss"] for row in rows)
    summary = json.loads((ema_run / "summary.json").read_text())
    assert summary["monitor"] == "val_ema/acc"
    assert summary["best"]["val_ema_acc"] == max(float(row["val_ema_acc"]) for row in rows)
    checkpoint = load_checkpoint(ema_run / "checkpoints" / "last.ckpt")
    assert int(checkpoint["state_dict"]["ema.n_averaged"]) == checkpoint["global_step"]


@pytest.mark.slow
def test_eval_with_ema_reproduces_val_ema_acc(ema_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    code = main(["eval", str(ema_run), "split=val", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "best_val.json").read_text())
    summary = json.loads((ema_run / "summary.json").read_text())
    assert report["metrics"]["acc"] == pytest.approx(summary["best"]["val_ema_acc"], abs=1e-6)
    # predict, export and inspect read module.model: it holds the averaged weights
    restored = restore_checked(ema_run)
    module = build_trained_module(restored)
    for name, value in module.model.state_dict().items():
        assert torch.equal(value, restored.checkpoint["state_dict"][f"ema.module.{name}"]), name
    # ema.evaluate=false: the trained weights
    module = build_trained_module(restore_checked(ema_run, ["ema.evaluate=false"]))
    for name, value in module.model.state_dict().items():
        assert torch.equal(value, restored.checkpoint["state_dict"][f"model.{name}"]), name


@pytest.mark.slow
def test_ema_survives_interrupt_and_resume_bit_exactly(tmp_path: Path):
    args = [*TINY, "trainer.max_epochs=2", "ema.enabled=true", "ema.decay=0.7", "ema.warmup=true",
            "trainer.deterministic=true", "test=false"]
    reference = tmp_path / "reference"
    assert main(["train", *args, f"hydra.run.dir={reference}"]) == 0
    run = tmp_path / "run"
    result = cnnlab("train", *args, "fault_injection.signal_at_step=8", f"hydra.run.dir={run}")
    assert result.returncode == 143, result.stderr  # SIGTERM mid-epoch 2 (6 steps an epoch)
    interrupted = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert int(interrupted["state_dict"]["ema.n_averaged"]) == interrupted["global_step"] == 8
    assert main(["train", f"resume={run}"]) == 0
    resumed = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    expected = load_checkpoint(reference / "checkpoints" / "last.ckpt")["state_dict"]
    assert any(name.startswith("ema.module.") for name in expected)
    for name, value in expected.items():
        assert torch.equal(resumed[name], value), name
    with (run / "metrics.csv").open() as a, (reference / "metrics.csv").open() as b:
        strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]  # noqa: E731
        assert strip(csv.DictReader(a)) == strip(csv.DictReader(b))


@pytest.mark.parametrize("overrides, message", [
    (["monitor=val_ema/acc"], "monitor=val_ema/acc watches the weights' moving average: set ema.enabled=true"),
    (["ema.enabled=true", "ema.decay=1.5"], "ema.decay=1.5 is not allowed: a number from 0 to 1"),
    (["ema.enabled=true", "ema.warmup_gamma=0"], "ema.warmup_gamma=0 is not allowed"),
])
def test_bad_ema_settings_are_one_line(overrides: list[str], message: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture):
    code = main(["train", *TINY, *overrides, f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
