"""Optimizers and schedules: the lr a real Trainer run uses at each step matches the closed-form formula."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cnnlab.cli import main
from cnnlab.config import CONF_DIR
from cnnlab.errors import ConfigError
from cnnlab.train.optim import ExpDecay, RunLength, build_optimizer, build_scheduler

# dataset=synthetic: 461 training images / batch 64 -> 8 optimizer steps per epoch
STEPS_PER_EPOCH = 8
QUICK = ["dataset=synthetic", "model=mlp", "test=false", "progress_bar=none"]


def train(run: Path, *overrides: str) -> None:
    assert main(["train", *QUICK, f"hydra.run.dir={run}", *overrides]) == 0


def lr_by_epoch(run: Path) -> dict[int, tuple[int, float]]:
    with (run / "metrics.csv").open() as handle:
        return {int(r["epoch"]): (int(r["step"]), float(r["lr"])) for r in csv.DictReader(handle)}


def lr_per_step(run: Path) -> list[float]:
    """The lr TensorBoard holds for each optimizer step: entry i is the lr step i + 1 used (i steps done)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    (tag,) = [t for t in events.Tags()["scalars"] if t.startswith("lr-")]
    steps = [(e.step, e.value) for e in events.Scalars(tag)]
    assert [s for s, _ in steps] == list(range(len(steps)))  # logged at every optimizer step
    return [v for _, v in steps]


# ------------------------------------------------------------------ schedules in a real run

@pytest.mark.slow
@pytest.mark.parametrize("staircase", [False, True])
def test_exp_decay_lr_follows_the_formula(tmp_path: Path, staircase: bool):
    run = tmp_path / "run"
    train(run, "scheduler=exp_decay", "scheduler.decay_rate=0.5", "scheduler.decay_steps=5",
          f"scheduler.staircase={staircase}", "optimizer.lr=0.01", "trainer.max_epochs=2")
    rows = lr_by_epoch(run)
    assert [step for step, _ in rows.values()] == [8, 16]
    for step, lr in rows.values():
        exponent = step // 5 if staircase else step / 5
        assert lr == pytest.approx(0.01 * 0.5 ** exponent, rel=1e-5)
    per_step = lr_per_step(run)
    assert len(per_step) == 16
    for i, lr in enumerate(per_step):
        assert lr == pytest.approx(0.01 * 0.5 ** (i // 5 if staircase else i / 5), rel=1e-5)


def test_exp_decay_factor():
    assert ExpDecay(0.96, 100, staircase=False)(250) == pytest.approx(0.96 ** 2.5)
    assert ExpDecay(0.96, 100, staircase=True)(250) == pytest.approx(0.96 ** 2)


@pytest.mark.parametrize("trainer, steps, lrs", [
    (["trainer.max_epochs=3"], [8, 16, 24], [0.05, 0.025, 0.0125]),
    # 8 batches, an optimizer step every 3 -> 3 steps per epoch (the last batch steps too)
    (["trainer.max_epochs=3", "trainer.accumulate_grad_batches=3"], [3, 6, 9], [0.05, 0.025, 0.0125]),
    # a max_steps cap must not shrink the epoch (it did: steps per epoch were total // max_epochs);
    # the third epoch stops after 4 of its 8 steps, so its lr is still the second epoch's
    (["trainer.max_epochs=5", "trainer.max_steps=20"], [8, 16, 20], [0.05, 0.025, 0.025]),
])
def test_step_scheduler_halves_each_epoch(tmp_path: Path, trainer: list[str], steps: list[int], lrs: list[float]):
    run = tmp_path / "run"
    train(run, "scheduler=step", "scheduler.gamma=0.5", "optimizer=sgd", "optimizer.lr=0.1", *trainer)
    rows = lr_by_epoch(run)
    assert [step for step, _ in rows.values()] == steps
    # lr at the end of epoch e: halved once per finished epoch
    assert [lr for _, lr in rows.values()] == pytest.approx(lrs)


def test_multistep_divides_by_ten_at_a_third_and_two_thirds(tmp_path: Path):
    run = tmp_path / "run"
    train(run, "scheduler=multistep", "optimizer.lr=0.01", "trainer.max_epochs=2")
    total = 2 * STEPS_PER_EPOCH
    first, second = round(0.33 * total), round(0.66 * total)  # steps 5 and 11 of 16
    lrs = lr_per_step(run)
    for i, lr in enumerate(lrs):
        assert lr == pytest.approx(0.01 * 0.1 ** ((i >= first) + (i >= second)), rel=1e-6)
    assert lrs[first - 1] == pytest.approx(0.01) and lrs[first] == pytest.approx(0.001)
    assert lr_by_epoch(run)[2][1] == pytest.approx(1e-4)


def test_warmup_ramps_linearly_in_front_of_a_constant_lr(tmp_path: Path):
    run = tmp_path / "run"
    train(run, "scheduler=none", "scheduler.warmup_steps=4", "optimizer.lr=0.01", "trainer.max_epochs=2")
    lrs = lr_per_step(run)
    assert lrs[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])  # step k of the warmup uses lr * k / 4
    assert lrs[4:] == pytest.approx([0.01] * 12)


@pytest.mark.parametrize("warmup", [0, 4])
def test_cosine_ends_at_its_floor(tmp_path: Path, warmup: int):
    run = tmp_path / "run"
    total, lr, floor = 2 * STEPS_PER_EPOCH, 0.01, 0.001
    train(run, "scheduler=cosine", "scheduler.min_lr_fraction=0.1", f"scheduler.warmup_fraction={warmup / total}",
          f"optimizer.lr={lr}", "trainer.max_epochs=2")
    lrs = lr_per_step(run)
    for i, value in enumerate(lrs):
        if i < warmup:
            expected = lr * (i + 1) / warmup
        else:  # the cosine runs over the steps left after the warmup
            expected = floor + (lr - floor) * (1 + math.cos(math.pi * (i - warmup) / (total - warmup))) / 2
        assert value == pytest.approx(expected, rel=1e-5), i
    assert lr_by_epoch(run)[2][1] == pytest.approx(floor, rel=1e-5)  # after the last step


def test_onecycle_peaks_at_the_optimizer_lr(tmp_path: Path):
    run = tmp_path / "run"
    train(run, "scheduler=onecycle", "scheduler.pct_start=0.25", "optimizer=sgd", "optimizer.lr=0.1",
          "trainer.max_epochs=2")
    lrs = lr_per_step(run)
    total, peak_step = 16, 0.25 * 16 - 1  # torch's OneCycleLR: the rise ends at pct_start * total - 1
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == peak_step
    for i in range(1, 4):
        assert lrs[i] == pytest.approx(0.1 / 25 + (0.1 - 0.1 / 25) * (1 - math.cos(math.pi * i / peak_step)) / 2)
    assert lrs[total - 1] == pytest.approx(0.1 / 25 / 1e4, rel=1e-3)


def test_plateau_reduces_after_patience_epochs_without_improvement(tmp_path: Path):
    run = tmp_path / "run"
    # lr 1e-6: val/acc stays where it is, so every epoch after the first is one without improvement
    train(run, "scheduler=plateau", "scheduler.patience=1", "scheduler.factor=0.1", "scheduler.warmup_steps=3",
          "optimizer=sgd", "optimizer.momentum=0", "optimizer.lr=1e-6", "trainer.max_epochs=4")
    rows = lr_by_epoch(run)
    with (run / "metrics.csv").open() as handle:
        assert len({r["val_acc"] for r in csv.DictReader(handle)}) == 1
    # epoch 1 sets the best, epochs 2 and 3 do not improve: more than `patience` -> reduced after epoch 3
    assert [lr for _, lr in rows.values()] == pytest.approx([1e-6, 1e-6, 1e-7, 1e-7])
    lrs = lr_per_step(run)
    assert lrs[:3] == pytest.approx([1e-6 / 3, 2e-6 / 3, 1e-6])  # the warmup in front of it
    assert lrs[23] == pytest.approx(1e-6) and lrs[24] == pytest.approx(1e-7)


def test_plateau_takes_its_mode_from_the_monitored_metric(tmp_path: Path):
    run = tmp_path / "run"
    # val/loss falls every epoch: with mode min (from the name) no reduction; mode max would cut it after epoch 2
    train(run, "scheduler=plateau", "scheduler.patience=0", "monitor=val/loss", "trainer.max_epochs=3")
    with (run / "metrics.csv").open() as handle:
        losses = [float(r["val_loss"]) for r in csv.DictReader(handle)]
    assert losses[0] > losses[1] > losses[2]
    assert [lr for _, lr in lr_by_epoch(run).values()] == pytest.approx([1e-3] * 3)
    node = OmegaConf.load(CONF_DIR / "scheduler" / "plateau.yaml")
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    (config,) = build_scheduler(node, optimizer, RunLength(100, 10, 10, monitor="val/loss", mode="min"))
    assert config["scheduler"].mode == "min" and config["monitor"] == "val/loss"


# ------------------------------------------------------------------ optimizers

OPTIMIZERS = sorted(p.stem for p in (CONF_DIR / "optimizer").glob("*.yaml"))


def tiny_problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A fixed 2-class problem and a small network with a bias and a norm layer."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 4, generator=generator)
    labels = (inputs @ torch.tensor([1.0, -2.0, 0.5, 1.0]) > 0).long()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    return model, inputs, labels


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_lowers_the_loss(name: str):
    assert {"sgd", "adam", "adamw", "nadam", "rmsprop", "adagrad", "adadelta", "lion"} <= set(OPTIMIZERS)
    node = OmegaConf.load(CONF_DIR / "optimizer" / f"{name}.yaml")
    model, inputs, labels = tiny_problem()
    optimizer = build_optimizer(node, model)
    loss_fn = torch.nn.CrossEntropyLoss()
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(loss_fn(model(inputs), labels).item())
    assert losses[-1] < losses[0], losses
    # its state goes into checkpoints, which cnnlab loads weights-only (no pickled OmegaConf objects)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["param_groups"][0]["lr"] == node.lr


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_weight_decay_everywhere_and_bias_norm_exclusion(name: str):
    node = OmegaConf.load(CONF_DIR / "optimizer" / f"{name}.yaml")
    node.weight_decay = 0.05
    model, _, _ = tiny_problem()
    (group,) = build_optimizer(node, model).param_groups
    assert group["weight_decay"] == 0.05 and len(group["params"]) == 6

    node.no_decay_bias_and_norm = True
    decay, no_decay = build_optimizer(node, model).param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    # the two Linear weights decay; both biases and the BatchNorm weight and bias do not
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert len(no_decay["params"]) == 4


def test_lion_steps_by_the_sign_of_its_momentum():
    """Lion's rule (lion-pytorch): from zero momentum, the first update is -lr * sign(gradient), after decoupled
    weight decay w *= 1 - lr * wd; the second follows sign(beta1 * m + (1 - beta1) * g) with m = (1 - beta2) * g1."""
    node = OmegaConf.load(CONF_DIR / "optimizer" / "lion.yaml")
    node.lr, node.weight_decay = 0.1, 0.5
    layer = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    optimizer = build_optimizer(node, layer)
    g1, g2 = torch.tensor([[0.3, -0.1, 0.0]]), torch.tensor([[-1.0, -1.0, 2.0]])
    w = layer.weight.detach().clone()
    for grad in (g1, g2):
        layer.weight.grad = grad.clone()
        optimizer.step()
    beta1, beta2 = 0.9, 0.99
    w = w * (1 - 0.1 * 0.5) - 0.1 * torch.sign((1 - beta1) * g1)
    momentum = (1 - beta2) * g1
    w = w * (1 - 0.1 * 0.5) - 0.1 * torch.sign(beta1 * momentum + (1 - beta1) * g2)
    assert torch.allclose(layer.weight.detach(), w, atol=1e-6), (layer.weight, w)


def test_sgd_options_reach_torch():
    node = OmegaConf.load(CONF_DIR / "optimizer" / "sgd.yaml")
    node.nesterov = True
    optimizer = build_optimizer(node, torch.nn.Linear(2, 2))
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["nesterov"] is True and optimizer.defaults["momentum"] == 0.9


# ------------------------------------------------------------------ bad values: one line, exit 2, before training

@pytest.mark.parametrize("overrides, expected", [
    (["scheduler=exp_decay", "scheduler.decay_steps=0"], "scheduler.decay_steps=0 is not allowed: a number > 0"),
    (["scheduler=step", "scheduler.gamma=-0.5"], "scheduler.gamma=-0.5 is not allowed: a number > 0"),
    (["scheduler=multistep", "scheduler.milestones=[0.7,0.3]"], "scheduler.milestones="),
    (["scheduler=cosine", "scheduler.warmup_fraction=1.0"], "scheduler.warmup_fraction=1.0 is not allowed"),
    (["scheduler.warmup_steps=4", "scheduler.warmup_fraction=0.1"], "scheduler.warmup_steps=4"),
    (["scheduler.warmup_steps=-1"], "scheduler.warmup_steps=-1"),
    (["scheduler=plateau", "scheduler.factor=1.5"], "scheduler.factor=1.5"),
    (["scheduler=onecycle", "scheduler.pct_start=0"], "scheduler.pct_start=0"),
    (["scheduler=cosine", "trainer.max_epochs=-1"], "a finite run"),
    (["optimizer=adam", "optimizer.betas=[0.9,1.2]"], "optimizer.betas=[0.9, 1.2]"),
    (["optimizer=adadelta", "optimizer.rho=2"], "optimizer.rho=2"),
    (["optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=true"], "Nesterov momentum requires a momentum"),
    # known only once the data is loaded: 16 optimizer steps in the run
    (["scheduler.warmup_steps=16", "trainer.max_epochs=2"], "the whole run has only 16 optimizer steps"),
])
@pytest.mark.slow
def test_bad_values_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, overrides: list[str],
                                 expected: str):
    run = tmp_path / "run"
    assert main(["train", *QUICK, f"hydra.run.dir={run}", *overrides]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: ") and expected in lines[0], lines
    assert not (run / "metrics.csv").exists()


def test_schedule_length_errors_name_the_key():
    node = OmegaConf.load(CONF_DIR / "scheduler" / "none.yaml")
    node.warmup_steps = 10
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="scheduler.warmup_steps=10 is not allowed: the whole run has only 10 optim"):
        build_scheduler(node, optimizer, RunLength(10, 5, 5))


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "scheduler").glob("*.yaml")))
def test_each_schedule_state_loads_weights_only(name: str):
    node = OmegaConf.load(CONF_DIR / "scheduler" / f"{name}.yaml")
    node.warmup_steps = 2
    optimizer = build_optimizer(OmegaConf.load(CONF_DIR / "optimizer" / "adam.yaml"), torch.nn.Linear(2, 2))
    configs = build_scheduler(node, optimizer, RunLength(20, 5, 5))
    assert configs and all(c["interval"] == "step" for c in configs)
    for _ in range(3):
        optimizer.step()
        for config in configs:
            scheduler = config["scheduler"]
            is_plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
            scheduler.step(1.0) if is_plateau else scheduler.step()
    buffer = io.BytesIO()
    torch.save([c["scheduler"].state_dict() for c in configs], buffer)
    buffer.seek(0)
    assert len(torch.load(buffer, weights_only=True)) == len(configs)


def test_lr_tags_name_groups_and_repeated_optimizers():
    from cnnlab.train.optim import lr_tags

    one, two = nn.Linear(2, 2), nn.Linear(2, 2)
    grouped = torch.optim.AdamW([{"params": one.parameters(), "name": "decay"},
                                 {"params": two.parameters(), "name": "no_decay"}])
    unnamed = torch.optim.AdamW([{"params": [one.weight]}, {"params": [one.bias]}])
    assert lr_tags([torch.optim.SGD(one.parameters())]) == ["lr-SGD"]
    assert lr_tags([grouped, unnamed]) == ["lr-AdamW/decay", "lr-AdamW/no_decay", "lr-AdamW-1/pg1", "lr-AdamW-1/pg2"]


def test_each_parameter_group_has_its_lr_at_every_step(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(run, "optimizer=adamw", "optimizer.no_decay_bias_and_norm=true", "scheduler=cosine", "trainer.max_epochs=2")
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    decay, exempt = (events.Scalars(f"lr-AdamW/{name}") for name in ("decay", "no_decay"))
    assert [e.step for e in decay] == [e.step for e in exempt] == list(range(16))
    assert [e.value for e in decay] == [e.value for e in exempt]
    assert decay[0].value > decay[-1].value
