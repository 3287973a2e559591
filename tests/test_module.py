"""ClassifierModule: metrics read the objective's probabilities, soft targets by argmax, multi-label F1 and mAP."""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cnnlab.cli import main
from cnnlab.losses import binary_cross_entropy, cross_entropy
from cnnlab.module import ClassifierModule


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
