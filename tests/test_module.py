"""ClassifierModule: metrics read the objective's probabilities, soft targets by argmax, multi-label F1 and mAP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cnnlab.cli import main
from cnnlab.train.losses import binary_cross_entropy, cross_entropy
from cnnlab.train.module import ClassifierModule


def validate(module: ClassifierModule, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    loader = DataLoader(TensorDataset(images, labels), batch_size=len(labels))
    return trainer.validate(module, dataloaders=loader, verbose=False)[0]


def test_accuracy_on_soft_targets_uses_their_argmax():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    images, labels = torch.randn(12, 4), torch.randint(0, 3, (12,))
    soft = 0.6 * F.one_hot(labels, 3).float() + 0.4 * F.one_hot((labels + 1) % 3, 3).float()
    module = ClassifierModule(model, cross_entropy().for_task(3), 3, optimizer=None, scheduler=None)
    expected = (model(images).argmax(1) == labels).float().mean().item()
    hard, mixed = validate(module, images, labels), validate(module, images, soft)
    assert hard["val/acc"] == mixed["val/acc"] == expected
    assert mixed["val/loss"] > hard["val/loss"]  # the loss itself sees the soft targets


def test_one_logit_bce_metrics_see_two_classes():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    images, labels = torch.randn(10, 4), torch.randint(0, 2, (10,))
    module = ClassifierModule(model, binary_cross_entropy().for_task(2), 2, optimizer=None, scheduler=None)
    expected = ((model(images)[:, 0] > 0).long() == labels).float().mean().item()
    assert validate(module, images, labels)["val/acc"] == expected


def test_multilabel_run_reports_per_label_f1_and_map(tmp_path: Path):
    run = tmp_path / "run"
    code = main(["train", "loss=bce", "dataset=synthetic", "dataset.multilabel=true", "dataset.num_classes=4",
                 "dataset.source.num_train=128", "dataset.source.num_test=32", "trainer.max_epochs=2",
                 "progress_bar=none", f"hydra.run.dir={run}"])
    assert code == 0
    test = json.loads((run / "summary.json").read_text())["test"]
    assert {f"test/f1_label_{i}" for i in range(4)} <= set(test)
    assert {"test/acc", "test/f1", "test/map", "test/loss"} <= set(test)
    assert "test/auroc" not in test  # single-label metrics do not apply
    assert all(0 <= value <= 1 for key, value in test.items() if key != "test/loss")
    assert test["test/map"] > 0.5, "labels are present 30% of the time: a learned ranking beats that"


def test_epoch_means_equal_torchmetrics_over_uneven_batches():
    from torchmetrics import MeanMetric
    from torchmetrics.classification import MulticlassAccuracy, MultilabelAccuracy

    from cnnlab.train.module import EpochMeans

    torch.manual_seed(0)
    means, labelwise = EpochMeans(), EpochMeans(multilabel=True)
    mean_loss, top1 = MeanMetric(), MulticlassAccuracy(5, average="micro")
    label_acc = MultilabelAccuracy(5, threshold=0.5, average="micro")
    for size in (7, 64, 3):
        probs, targets = torch.rand(size, 5).softmax(1), torch.randint(0, 5, (size,))
        loss = torch.rand(())
        means.update(loss, probs, targets)
        mean_loss.update(loss, weight=size)
        top1.update(probs, targets)
        label_probs, label_targets = torch.rand(size, 5), torch.randint(0, 2, (size, 5))
        labelwise.update(loss, label_probs, label_targets)
        label_acc.update(label_probs, label_targets)
    result = means.compute()
    assert torch.isclose(result["loss"], mean_loss.compute())
    assert torch.isclose(result["acc"], top1.compute())
    assert torch.isclose(labelwise.compute()["acc"], label_acc.compute())
    means.reset()
    assert means.update_count == 0 and int(means.samples) == 0


def test_gradient_clipping_by_value_bounds_every_update(tmp_path: Path):
    from cnnlab.config import compose
    from cnnlab.train.build import build_model
    from cnnlab.train.checkpoint import load_checkpoint

    overrides = ["dataset=synthetic", "model=mlp", "optimizer=sgd", "optimizer.lr=1.0", "optimizer.momentum=0.0"]
    run = tmp_path / "run"
    assert main(["train", *overrides, "trainer.max_steps=1", "trainer.gradient_clip_val=0.001",
                 "+trainer.gradient_clip_algorithm=value", "test=false", "progress_bar=none",
                 f"hydra.run.dir={run}"]) == 0
    before = build_model(compose(overrides)).state_dict()
    after = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    moves = [(after[f"model.{name}"] - weight).abs().max().item() for name, weight in before.items()]
    assert max(moves) == pytest.approx(0.001, rel=1e-3)  # lr 1 x gradients clipped to +-0.001
