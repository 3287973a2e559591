"""Losses: the teaching material's numbers, torch's references, soft targets, heads, class weights, training."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from cnnlab.cli import main
from cnnlab.config import CONF_DIR, instantiate
from cnnlab.errors import ConfigError
from cnnlab.train.losses import (
    balanced_weights,
    binary_cross_entropy,
    cross_entropy,
    focal,
    kl_divergence,
    mean_absolute_error,
    mean_squared_error,
    multi_margin,
    nll,
)
from cnnlab.train.module import EpochMeans

LOSSES = sorted(path.stem for path in (CONF_DIR / "loss").glob("*.yaml"))


def objective(name: str, num_classes: int = 5, multilabel: bool = False, **options):
    """The objective a run with loss=NAME builds (its YAML's defaults, overridden by options)."""
    node = OmegaConf.merge(OmegaConf.load(CONF_DIR / "loss" / f"{name}.yaml"), options)
    return instantiate(node).for_task(num_classes, multilabel)


def random_batch(batch: int = 16, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, classes, generator=generator) * 2, torch.randint(0, classes, (batch,),
                                                                                generator=generator)


# ---------------------------------------------------------------- the teaching material's numbers

DOG, CAT = 0, 1
LABELS = torch.tensor([DOG, CAT, DOG])
GOOD = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.4, 0.6]])
WORSE = torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])


def test_softmax_of_2_and_5():
    probs = cross_entropy().for_task(2).probabilities(torch.tensor([[2.0, 5.0]]))
    assert torch.allclose(probs, torch.tensor([[0.047, 0.953]]), atol=5e-4)


@pytest.mark.parametrize(("predictions", "mse", "ce"), [(GOOD, 0.25, 0.38), (WORSE, 0.71, 1.06)])
def test_seed_predictions_give_the_seed_losses_and_error(predictions, mse, ce):
    # The network's raw outputs are log-probabilities here: softmax(log p) = p, so both losses see these predictions.
    raw = predictions.log()
    assert round(mean_squared_error().for_task(2)(raw, LABELS).item(), 2) == mse
    assert round(cross_entropy().for_task(2)(raw, LABELS).item(), 2) == ce
    assert round(nll().for_task(2)(raw, LABELS).item(), 2) == ce
    for loss in (mean_squared_error(), cross_entropy()):
        means = EpochMeans()
        means.update(loss.for_task(2)(raw, LABELS), loss.for_task(2).probabilities(raw), LABELS)
        assert math.isclose(1 - means.compute()["acc"].item(), 1 / 3, rel_tol=1e-6)


# ---------------------------------------------------------------- torch's reference implementations

def test_ce_on_logits_equals_nll_on_log_softmax():
    logits, target = random_batch(classes=10)
    assert torch.allclose(cross_entropy().for_task(10)(logits, target), nll().for_task(10)(logits, target))
    assert torch.allclose(nll().for_task(10)(logits, target), F.nll_loss(F.log_softmax(logits, 1), target))


def test_cross_entropy_matches_torch_with_smoothing_and_weights():
    logits, target = random_batch()
    weight = [0.5, 1.0, 2.0, 1.5, 3.0]
    ours = cross_entropy(label_smoothing=0.1, class_weights=weight).for_task(5)(logits, target)
    reference = nn.CrossEntropyLoss(weight=torch.tensor(weight), label_smoothing=0.1)(logits, target)
    assert torch.allclose(ours, reference)


def test_nll_matches_torch_with_weights():
    logits, target = random_batch()
    weight = [0.5, 1.0, 2.0, 1.5, 3.0]
    reference = nn.NLLLoss(weight=torch.tensor(weight))(F.log_softmax(logits, 1), target)
    assert torch.allclose(nll(class_weights=weight).for_task(5)(logits, target), reference)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("weight", [None, [0.5, 1.0, 2.0, 1.5, 3.0]])
def test_multi_margin_matches_torch(p, weight):
    logits, target = random_batch()
    reference = nn.MultiMarginLoss(p=p, margin=0.7, weight=None if weight is None else torch.tensor(weight))
    ours = multi_margin(p=p, margin=0.7, class_weights=weight).for_task(5)
    assert torch.allclose(ours(logits, target), reference(logits, target))
    # Soft targets: one-hot vectors give the same value through the all-targets-at-once formula.
    assert torch.allclose(ours(logits, F.one_hot(target, 5).float()), reference(logits, target))


def test_bce_is_one_vs_all_against_one_hot_targets():
    logits, target = random_batch()
    reference = nn.BCEWithLogitsLoss()(logits, F.one_hot(target, 5).float())
    assert torch.allclose(binary_cross_entropy().for_task(5)(logits, target), reference)


def test_bce_on_two_classes_reads_one_logit():
    loss = binary_cross_entropy().for_task(2)
    assert loss.output_units(2) == 1 and loss.output_units(5) == 5 and loss.output_units(2, multilabel=True) == 2
    logit, target = torch.randn(8, 1), torch.randint(0, 2, (8,))
    assert torch.allclose(loss(logit, target), nn.BCEWithLogitsLoss()(logit, target.float().unsqueeze(1)))
    probs = loss.probabilities(logit)
    assert probs.shape == (8, 2) and torch.allclose(probs.sum(1), torch.ones(8))
    assert torch.allclose(probs[:, 1], torch.sigmoid(logit[:, 0]))
    # [w0, w1] weight the samples of each class, as a per-sample weight would.
    weighted = binary_cross_entropy(class_weights=[0.5, 2.0]).for_task(2)(logit, target)
    per_sample = torch.tensor([0.5, 2.0])[target].unsqueeze(1)
    reference = nn.BCEWithLogitsLoss(weight=per_sample)(logit, target.float().unsqueeze(1))
    assert torch.allclose(weighted, reference)


def test_bce_on_multilabel_targets_uses_positive_weights():
    logits, labels = torch.randn(8, 4), (torch.rand(8, 4) > 0.5).float()
    weight = [1.0, 2.0, 3.0, 0.5]
    ours = binary_cross_entropy(class_weights=weight).for_task(4, multilabel=True)(logits, labels)
    assert torch.allclose(ours, nn.BCEWithLogitsLoss(pos_weight=torch.tensor(weight))(logits, labels))
    probs = binary_cross_entropy().for_task(4, multilabel=True).probabilities(logits)
    assert torch.allclose(probs, torch.sigmoid(logits))  # per label, thresholded at 0.5 by the metrics


def test_mse_and_l1_sum_over_classes_and_average_over_samples():
    logits, target = random_batch()
    probs, one_hot = F.softmax(logits, 1), F.one_hot(target, 5).float()
    assert torch.allclose(mean_squared_error().for_task(5)(logits, target),
                          F.mse_loss(probs, one_hot, reduction="sum") / len(target))
    assert torch.allclose(mean_absolute_error().for_task(5)(logits, target),
                          F.l1_loss(probs, one_hot, reduction="sum") / len(target))


def test_kl_matches_torch_and_equals_ce_against_one_hot():
    logits, target = random_batch()
    log_probs = F.log_softmax(logits, 1)
    smoothed = F.one_hot(target, 5).float() * 0.8 + 0.2 / 5
    ours = kl_divergence(label_smoothing=0.2).for_task(5)(logits, target)
    assert torch.allclose(ours, nn.KLDivLoss(reduction="batchmean")(log_probs, smoothed))
    entropy = -(smoothed * smoothed.log()).sum(1).mean()
    assert torch.allclose(ours, F.cross_entropy(logits, target, label_smoothing=0.2) - entropy, atol=1e-6)
    assert torch.allclose(kl_divergence().for_task(5)(logits, target), F.cross_entropy(logits, target))


def test_focal_matches_torchvision_and_is_bce_without_focusing():
    logits, target = random_batch()
    one_hot = F.one_hot(target, 5).float()
    ours = focal(gamma=2.0, alpha=0.25).for_task(5)(logits, target)
    assert torch.allclose(ours, sigmoid_focal_loss(logits, one_hot, alpha=0.25, gamma=2.0, reduction="mean"))
    plain = focal(gamma=0.0, alpha=None).for_task(5)(logits, target)
    assert torch.allclose(plain, binary_cross_entropy().for_task(5)(logits, target))


# ---------------------------------------------------------------- soft targets (mixup/cutmix)

@pytest.mark.parametrize("name", LOSSES)
def test_one_hot_vectors_give_the_same_loss_as_class_indices(name):
    loss = objective(name)
    logits, target = random_batch()
    assert torch.allclose(loss(logits, F.one_hot(target, 5).float()), loss(logits, target), atol=1e-6)


@pytest.mark.parametrize("name", ["ce", "nll", "multi_margin", "bce"])
def test_mixed_targets_give_the_mixed_loss(name):
    # For losses linear in the target, mixup's lam * loss(a) + (1 - lam) * loss(b) is the loss of the mixed target.
    loss = objective(name)
    logits, first = random_batch(seed=1)
    second = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(2))
    mixed = 0.3 * F.one_hot(first, 5).float() + 0.7 * F.one_hot(second, 5).float()
    expected = 0.3 * loss(logits, first) + 0.7 * loss(logits, second)
    assert torch.allclose(loss(logits, mixed), expected, atol=1e-6)


def test_nll_with_soft_targets_follows_torch_cross_entropy():
    logits, _ = random_batch()
    soft = F.softmax(torch.randn(16, 5), 1)
    weight = [0.5, 1.0, 2.0, 1.5, 3.0]
    reference = F.cross_entropy(logits, soft, weight=torch.tensor(weight))
    assert torch.allclose(nll(class_weights=weight).for_task(5)(logits, soft), reference)


# ---------------------------------------------------------------- the task decides what fits

@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_gives_probabilities_over_the_classes(name):
    loss = objective(name, num_classes=2)
    raw = torch.randn(6, loss.output_units(2))
    probs = loss.probabilities(raw)
    assert probs.shape == (6, 2) and torch.allclose(probs.sum(1), torch.ones(6))


@pytest.mark.parametrize("classes", [2, 5])
@pytest.mark.parametrize("name", LOSSES)
def test_the_epoch_accuracy_decides_as_the_probabilities_do(name, classes):
    """The training metrics skip the probabilities where the raw output ranks the classes as they do: the same
    hits, for every loss's head, the one-logit sigmoid on two classes included."""
    loss = objective(name, num_classes=classes)
    raw = torch.randn(64, loss.output_units(classes), generator=torch.Generator().manual_seed(classes)) * 3
    targets = torch.randint(0, classes, (64,), generator=torch.Generator().manual_seed(1))
    means = EpochMeans()
    assert torch.equal(means.step_outcome(loss.decision_scores(raw), targets)[0], loss.probabilities(raw).argmax(1))
    shortcut = loss.decision_scores(raw) is raw
    assert shortcut == (loss.head in ("logits", "log_probs", "probs"))  # softmax heads only


def test_multilabel_decisions_are_the_thresholded_probabilities():
    loss = objective("bce", num_classes=4, multilabel=True)
    raw = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loss.decision_scores(raw), loss.probabilities(raw))


@pytest.mark.parametrize("name", LOSSES)
def test_multilabel_data_needs_a_sigmoid_loss(name):
    if name in ("bce", "focal"):
        assert objective(name, multilabel=True).multilabel
        return
    with pytest.raises(ConfigError, match=f"loss={name} cannot learn multi-label targets.*loss=bce"):
        objective(name, multilabel=True)


@pytest.mark.parametrize("weights", [[1.0, 2.0], "often", [1, 2, 3, 4, -5], [1, 2, 3, 4, True]])
def test_bad_class_weights_are_config_errors(weights):
    with pytest.raises(ConfigError, match="loss.class_weights.*5 positive numbers"):
        cross_entropy(class_weights=weights).for_task(5)


def test_balanced_weights_are_scikit_learns():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 0, 1, 0])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels.numpy())
    assert torch.allclose(balanced_weights(labels, 3, multilabel=False), torch.tensor(expected, dtype=torch.float32))
    multilabel = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    # negatives / positives per label
    assert torch.allclose(balanced_weights(multilabel, 2, multilabel=True), torch.tensor([1 / 3, 3.0]))


# ---------------------------------------------------------------- training with each loss

SMOKE = ["dataset=synthetic", "dataset.source.num_train=96", "dataset.source.num_test=32", "batch_size=16",
         "trainer.max_epochs=1", "progress_bar=none"]


@pytest.mark.slow
@pytest.mark.parametrize("name", LOSSES)
def test_training_with_each_loss(tmp_path: Path, name: str):
    run = tmp_path / "run"
    assert main(["train", f"loss={name}", *SMOKE, f"hydra.run.dir={run}"]) == 0
    with (run / "metrics.csv").open() as handle:
        row = next(csv.DictReader(handle))
    assert math.isfinite(float(row["train_loss"])) and math.isfinite(float(row["val_loss"]))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["choices"]["loss"] == name
    assert 0 <= summary["test"]["test/acc"] <= 1 and "test/auroc" in summary["test"]


def test_bce_on_two_classes_trains_a_one_logit_lenet(tmp_path: Path):
    run = tmp_path / "run"
    assert main(["train", "loss=bce", "dataset.num_classes=2", *SMOKE, f"hydra.run.dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["params"] == 431_080 - 9 * 501  # the 10-class LeNet less nine output units
    assert 0 <= summary["test"]["test/acc"] <= 1


def test_balanced_class_weights_come_from_the_training_labels(tmp_path: Path):
    from cnnlab.train.build import build_datamodule
    from cnnlab.train.checkpoint import load_checkpoint

    run = tmp_path / "run"
    # 100 images of 3 classes: 34, 33, 33, of which 30, 30, 30 train after the stratified validation split.
    overrides = ["loss=ce", "loss.class_weights=balanced", "dataset.num_classes=3", "dataset.source.num_train=100",
                 *SMOKE[2:]]
    assert main(["train", "dataset=synthetic", *overrides, f"hydra.run.dir={run}"]) == 0
    saved = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]["objective.class_weight"]
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    labels = datamodule.train_labels()
    assert torch.bincount(labels).tolist() == [30, 30, 30]
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels.numpy())
    assert torch.allclose(saved, torch.tensor(expected, dtype=torch.float32))


@pytest.mark.slow
def test_a_loss_that_cannot_learn_the_task_stops_before_training(tmp_path: Path, capsys):
    run = tmp_path / "run"
    code = main(["train", "loss=multi_margin", "dataset.multilabel=true", *SMOKE, f"hydra.run.dir={run}"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["cnnlab: error: loss=multi_margin cannot learn multi-label targets (its logits head scores "
                     "one class per image): use a per-class sigmoid loss, loss=bce or loss=focal"]
    assert not (run / "metrics.csv").exists() and not (run / "checkpoints").exists()
