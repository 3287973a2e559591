"""Schedulers: the lr a real Trainer run ends its epochs with matches the closed-form formula."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from cnnlab.cli import main
from cnnlab.optim import ExpDecay


def lr_by_epoch(run: Path) -> dict[int, tuple[int, float]]:
    with (run / "metrics.csv").open() as handle:
        return {int(r["epoch"]): (int(r["step"]), float(r["lr"])) for r in csv.DictReader(handle)}


@pytest.mark.parametrize("staircase", [False, True])
def test_exp_decay_lr_follows_the_formula(tmp_path: Path, staircase: bool):
    run = tmp_path / "run"
    code = main(["train", "dataset=synthetic", "model=mlp", "scheduler=exp_decay", "scheduler.decay_rate=0.5",
                 "scheduler.decay_steps=5", f"scheduler.staircase={staircase}", "optimizer.lr=0.01",
                 "trainer.max_epochs=2", "test=false", "progress_bar=none", f"hydra.run.dir={run}"])
    assert code == 0
    rows = lr_by_epoch(run)
    assert [step for step, _ in rows.values()] == [8, 16]  # 461 training images / batch 64 -> 8 steps
    for step, lr in rows.values():
        exponent = step // 5 if staircase else step / 5
        assert lr == pytest.approx(0.01 * 0.5 ** exponent, rel=1e-5)


def test_exp_decay_factor():
    assert ExpDecay(0.96, 100, staircase=False)(250) == pytest.approx(0.96 ** 2.5)
    assert ExpDecay(0.96, 100, staircase=True)(250) == pytest.approx(0.96 ** 2)


def test_step_scheduler_halves_each_epoch(tmp_path: Path):
    run = tmp_path / "run"
    code = main(["train", "dataset=synthetic", "model=mlp", "scheduler=step", "scheduler.gamma=0.5",
                 "optimizer=sgd", "optimizer.lr=0.1", "trainer.max_epochs=3", "test=false", "progress_bar=none",
                 f"hydra.run.dir={run}"])
    assert code == 0
    # lr recorded at the end of epoch e, after the epoch-interval scheduler stepped e times
    assert [lr for _, lr in lr_by_epoch(run).values()] == pytest.approx([0.05, 0.025, 0.0125])


def test_sgd_options_reach_torch(tmp_path: Path):
    from omegaconf import OmegaConf

    from cnnlab.config import CONF_DIR
    from cnnlab.optim import build_optimizer

    node = OmegaConf.load(CONF_DIR / "optimizer" / "sgd.yaml")
    node.nesterov = True
    optimizer = build_optimizer(node, torch.nn.Linear(2, 2))
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["nesterov"] is True and optimizer.defaults["momentum"] == 0.9
