"""The user's own model classes and losses (docs/extending.md): a package of the user's on sys.path, named by
`_target_`, trains a few steps, evaluates, and its mistakes are one line each."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cnnlab.cli import main
from cnnlab.config import compose
from cnnlab.errors import ConfigError

TINY = ["dataset=synthetic", "dataset.image_size=8", "dataset.num_classes=3", "dataset.source.num_train=96",
        "dataset.source.num_test=24", "trainer.max_epochs=1", "progress_bar=none"]

USER_PACKAGE = '''
import torch
import torch.nn.functional as F
from torch import nn


class MyNet(nn.Module):
    """Takes in_channels and num_classes, not image_size; `width` is its own key."""

    def __init__(self, width: int, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(F.relu(self.conv(x))), 1))


class FixedNet(nn.Module):
    """No dataset keywords at all: made for 1x8x8 images and 3 classes."""

    def __init__(self, hidden: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x):
        return self.body(x)


class Everything(nn.Module):
    """Takes any keyword (**kwargs): gets all three dataset values."""

    def __init__(self, **kwargs):
        super().__init__()
        self.given = dict(kwargs)
        self.linear = nn.Linear(kwargs["in_channels"] * kwargs["image_size"] ** 2, kwargs["num_classes"])

    def forward(self, x):
        return self.linear(torch.flatten(x, 1))


def smooth_nll(log_probs, target, eps: float = 0.1):
    """A plain loss function on log-probabilities (class-index targets)."""
    return (1 - eps) * F.nll_loss(log_probs, target) - eps * log_probs.mean()


def weighted_ce(logits, target, weight=None):
    return F.cross_entropy(logits, target, weight=weight)
'''


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package `mynets_<n>` of the user's, importable from a folder on sys.path; returns its name."""
    name = f"mynets_{tmp_path.name.replace('-', '_')}"
    folder = tmp_path / "src" / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(textwrap.dedent(USER_PACKAGE))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    return name


def _train(tmp_path: Path, *overrides: str) -> tuple[int, Path]:
    run = tmp_path / "run"
    return main(["train", *TINY, *overrides, f"hydra.run.dir={run}"]), run


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cnnlab: error:")]
    assert len(err) == 1
    return err[0]


# ------------------------------------------------------------------ models

def test_a_user_model_class_with_its_own_key_trains_and_evaluates(tmp_path: Path, user_package: str, capsys):
    code, run = _train(tmp_path, f"model._target_={user_package}.MyNet", "+model.width=6")
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 1
    assert summary["params"] == 1 * 6 * 9 + 6 + 6 * 3 + 3  # conv 1->6 3x3, head 6->3: the dataset's 3 classes
    table = (run / "model_summary.txt").read_text()
    assert "conv" in table and "head" in table and "6x6x6" in table  # the layer summary of the user's class
    # A class named on the command line is in no config folder of the user's: the saved config is data, so eval
    # runs it only when told the run is trusted (a class from the user's conf/ folder needs no flag).
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{user_package}.MyNet" in err and "--trust" in err and not (run / "eval").exists()
    assert main(["eval", str(run), "--trust"]) == 0
    for command in (["export", str(run), "--format", "torchscript"], ["inspect", str(run)]):  # the same rule
        assert main(command) == 2 and "--trust" in capsys.readouterr().err
        assert main([*command, "--trust"]) == 0
    report = json.loads((run / "eval" / "best_test.json").read_text())
    assert report["samples"] == 24 and report["metrics"]["acc"] == pytest.approx(summary["test"]["test/acc"])


def test_the_dataset_reaches_a_class_only_as_keywords_it_takes(user_package: str):
    from cnnlab.train.build import build_model, model_arguments

    cfg = compose([*TINY, f"model._target_={user_package}.FixedNet"])
    kwargs, init = model_arguments(cfg, 3)
    assert kwargs == {"_target_": f"{user_package}.FixedNet"} and init is None  # lenet's neutral knobs left out
    cfg = compose([*TINY, "dataset.channels=2", f"model._target_={user_package}.Everything"])
    model = build_model(cfg)
    assert {k: model.given[k] for k in ("in_channels", "num_classes", "image_size")} == {
        "in_channels": 2, "num_classes": 3, "image_size": 8}
    assert model.given["activation"] == "relu"  # **kwargs takes every key of the node


def test_a_class_without_dataset_keywords_trains(tmp_path: Path, user_package: str, capsys):
    code, run = _train(tmp_path, f"model._target_={user_package}.FixedNet", "+model.hidden=5")
    assert code == 0
    assert json.loads((run / "summary.json").read_text())["params"] == 64 * 5 + 5 + 5 * 3 + 3


def test_a_key_the_class_does_not_take_is_one_line(tmp_path: Path, user_package: str, capsys):
    code, run = _train(tmp_path, f"model._target_={user_package}.MyNet", "+model.width=6", "+model.depth=3")
    assert code == 2
    line = _one_line_error(capsys)
    assert f"{user_package}.MyNet" in line and "'depth'" in line and "width, num_classes, in_channels" in line
    assert not (run / "model_summary.txt").exists()  # refused before the run wrote anything of its own


def test_a_missing_required_keyword_and_a_knob_the_class_lacks_are_one_line(tmp_path: Path, user_package: str,
                                                                             capsys):
    assert _train(tmp_path, f"model._target_={user_package}.MyNet")[0] == 2
    assert "needs model.width" in _one_line_error(capsys)
    assert _train(tmp_path, f"model._target_={user_package}.MyNet", "+model.width=6", "model.dropout=0.5")[0] == 2
    line = _one_line_error(capsys)
    assert "model.dropout=0.5" in line and "has no dropout knob" in line


def test_init_applies_to_a_class_without_the_keyword(user_package: str):
    from cnnlab.train.build import build_model

    default = build_model(compose([*TINY, f"model._target_={user_package}.FixedNet"]))
    xavier = build_model(compose([*TINY, f"model._target_={user_package}.FixedNet", "model.init=xavier"]))
    assert not torch.equal(default.body[1].weight, xavier.body[1].weight)
    assert torch.count_nonzero(xavier.body[1].bias) == 0  # cnnlab's init zeroes the biases
    bound = (6 / (64 + 8)) ** 0.5 * torch.nn.init.calculate_gain("relu")  # xavier_uniform's bound with relu gain
    assert float(xavier.body[1].weight.detach().abs().max()) <= bound


def test_an_image_too_small_for_the_class_is_one_line_naming_model_and_shape(tmp_path: Path, user_package: str,
                                                                             capsys):
    code, run = _train(tmp_path, f"model._target_={user_package}.MyNet", "+model.width=4", "dataset.image_size=2")
    assert code == 2
    line = _one_line_error(capsys)
    assert f"model {user_package}.MyNet" in line and "(1, 1, 2, 2)" in line
    assert not (run / "model_summary.txt").exists() and not (run / "summary.json").exists()


def test_a_class_with_the_wrong_number_of_outputs_is_one_line(tmp_path: Path, user_package: str, capsys):
    code, _ = _train(tmp_path, f"model._target_={user_package}.FixedNet", "dataset.num_classes=4")
    assert code == 2
    line = _one_line_error(capsys)
    assert "(1, 3)" in line and "(1, 4)" in line and f"{user_package}.FixedNet" in line


def test_a_target_that_cannot_be_imported_is_one_line(tmp_path: Path, capsys):
    assert _train(tmp_path, "model._target_=no_such_package_xyz.Net")[0] == 2
    assert "No module named 'no_such_package_xyz'" in _one_line_error(capsys)


# ------------------------------------------------------------------ losses

def _objective(*overrides: str):
    from cnnlab.train.build import build_objective

    return build_objective(compose([*TINY, *overrides]))


def test_a_torch_loss_is_wrapped_on_logits_with_its_own_keywords():
    objective = _objective("loss._target_=torch.nn.CrossEntropyLoss", "loss.label_smoothing=0.2")
    logits, target = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    assert objective.head == "logits" and objective.output_units(3) == 3
    assert float(objective(logits, target)) == pytest.approx(float(F.cross_entropy(logits, target,
                                                                                    label_smoothing=0.2)))
    assert torch.allclose(objective.probabilities(logits), logits.softmax(1))


def test_class_weights_reach_a_torch_loss_as_weight():
    objective = _objective("loss._target_=torch.nn.CrossEntropyLoss", "loss.class_weights=[1,2,3]")
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    weight = torch.tensor([1.0, 2.0, 3.0])
    assert float(objective(logits, target)) == pytest.approx(float(F.cross_entropy(logits, target, weight=weight)))
    balanced = _objective("loss._target_=torch.nn.CrossEntropyLoss", "loss.class_weights=balanced")
    balanced.fit_class_weights(torch.tensor([0, 0, 0, 0, 1, 2]))  # 6 / (3 * count)
    assert torch.allclose(balanced.fn.weight, torch.tensor([0.5, 2.0, 2.0]))


def test_a_plain_function_loss_with_its_head_and_keyword(user_package: str):
    for partial in ([], ["+loss._partial_=true"]):  # a function still needing (outputs, targets) is the loss
        objective = _objective(f"loss._target_={user_package}.smooth_nll", "~loss.label_smoothing", "+loss.eps=0.3",
                               "+loss.input=log_probs", *partial)
        logits, target = torch.randn(4, 3), torch.tensor([2, 0, 1, 1])
        log_probs = logits.log_softmax(1)
        expected = 0.7 * F.nll_loss(log_probs, target) - 0.3 * log_probs.mean()
        assert objective.head == "log_probs" and float(objective(logits, target)) == pytest.approx(float(expected))
    weighted = _objective(f"loss._target_={user_package}.weighted_ce", "~loss.label_smoothing",
                          "loss.class_weights=[1,1,4]")
    logits, target = torch.randn(4, 3), torch.tensor([2, 0, 1, 2])
    assert float(weighted(logits, target)) == pytest.approx(float(F.cross_entropy(
        logits, target, weight=torch.tensor([1.0, 1.0, 4.0]))))


@pytest.mark.slow
def test_loss_mistakes_are_one_line(user_package: str):
    with pytest.raises(ConfigError, match="smooth_nll takes no weight="):
        _objective(f"loss._target_={user_package}.smooth_nll", "~loss.label_smoothing", "loss.class_weights=[1,1,1]")
    with pytest.raises(ConfigError, match="catalogue loss with its own head"):
        _objective("+loss.input=probs")
    with pytest.raises(ConfigError, match="loss.input='soft' is not allowed: one of logits"):
        _objective("loss._target_=torch.nn.CrossEntropyLoss", "+loss.input=soft")
    with pytest.raises(ConfigError, match="KLDivLoss takes no keyword 'label_smoothing'"):
        _objective("loss._target_=torch.nn.KLDivLoss")
    with pytest.raises(ConfigError, match="multi-label"):
        _objective("loss._target_=torch.nn.CrossEntropyLoss", "dataset.multilabel=true")


def test_a_sigmoid_head_gives_a_torch_bce_loss_its_targets_shaped_like_the_logits():
    objective = _objective("loss._target_=torch.nn.BCEWithLogitsLoss", "~loss.label_smoothing",
                           "+loss.input=sigmoid")
    logits, target = torch.randn(4, 3), torch.tensor([2, 0, 1, 1])
    expected = F.binary_cross_entropy_with_logits(logits, F.one_hot(target, 3).float())
    assert float(objective(logits, target)) == pytest.approx(float(expected))


@pytest.mark.parametrize("loss", [["loss._target_=torch.nn.CrossEntropyLoss", "loss.label_smoothing=0.1"],
                                  ["loss._target_={pkg}.smooth_nll", "~loss.label_smoothing", "+loss._partial_=true",
                                   "+loss.input=log_probs"]], ids=["torch-ce", "function"])
def test_a_plain_loss_trains_a_few_steps_and_evaluates(tmp_path: Path, user_package: str, loss: list[str], capsys):
    code, run = _train(tmp_path, "model=mlp", "model.hidden=[16]", *[o.format(pkg=user_package) for o in loss])
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert 0 < summary["test"]["test/loss"] < 10
    assert main(["eval", str(run), "--trust"]) == 0
    report = json.loads((run / "eval" / "best_test.json").read_text())
    assert report["metrics"]["loss"] == pytest.approx(summary["test"]["test/loss"], abs=1e-5)


@pytest.mark.slow
def test_a_user_model_with_a_torch_loss_resumes_and_predicts(tmp_path: Path, user_package: str, capsys):
    from PIL import Image

    code, run = _train(tmp_path, f"model._target_={user_package}.MyNet", "+model.width=4", "batch_size=32",
                       "trainer.max_epochs=2", "loss._target_=torch.nn.CrossEntropyLoss",
                       "fault_injection.signal_at_step=4")
    assert code != 0 and json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert main(["train", f"resume={run}", "--trust"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6 and summary["resumed_from"]["step"] == 4
    image = tmp_path / "x.png"
    Image.new("L", (8, 8), color=120).save(image)
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--format", "json", "--trust"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sum(c["probability"] for c in rows[0]["predictions"]) == pytest.approx(1.0, abs=1e-4)
