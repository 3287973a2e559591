"""ClassifierModule: the training step, the loss/head pairing, metrics, and optimizer/scheduler wiring."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from cnnlab.losses import Objective
from cnnlab.optim import RunLength, build_optimizer, build_scheduler


def test_metrics(num_classes: int) -> MetricCollection:
    """Accuracy (top-1, top-5 where classes > 5), macro precision / recall / F1 and AUC-ROC."""
    metrics: dict[str, Any] = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "precision": MulticlassPrecision(num_classes, average="macro"),
        "recall": MulticlassRecall(num_classes, average="macro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
        "auroc": MulticlassAUROC(num_classes, average="macro"),
    }
    if num_classes > 5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics)


class ClassifierModule(pl.LightningModule):
    """A model trained with one objective; logs `<split>/loss` and `<split>/acc` per epoch."""

    def __init__(self, model: nn.Module, objective: Objective, num_classes: int, optimizer: Any,
                 scheduler: Any, monitor: str = "val/acc", mode: str = "max", config: dict | None = None):
        super().__init__()
        self.model, self.objective, self.num_classes = model, objective, num_classes
        self.optimizer_cfg, self.scheduler_cfg = optimizer, scheduler
        self.monitor, self.mode = monitor, mode
        self.config = config  # plain data, saved inside checkpoints for eval/predict/resume
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_scores = test_metrics(num_classes)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.confusion: Tensor | None = None

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    # ------------------------------------------------------------ steps
    def _step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        images, labels = batch
        raw = self.model(images)
        return self.objective(raw, labels), raw, labels

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, raw, labels = self._step(batch)
        self.train_acc.update(raw.detach(), labels)
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, batch_size=len(labels), sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, raw, labels = self._step(batch)
        self.val_acc.update(raw, labels)
        self.log("val/loss", loss, on_epoch=True, batch_size=len(labels), prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, batch_size=len(labels), prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, raw, labels = self._step(batch)
        probs = self.objective.probabilities(raw)
        self.test_scores.update(probs, labels)
        self.test_confusion.update(probs, labels)
        self.log("test/loss", loss, on_epoch=True, batch_size=len(labels), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        for name, value in self.test_scores.compute().items():
            self.log(f"test/{name}", value, sync_dist=True)  # already reduced over ranks: the mean keeps it
        self.test_scores.reset()
        self.confusion = self.test_confusion.compute().cpu()
        self.test_confusion.reset()

    # ------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.optimizer_cfg, self.model)
        trainer = self.trainer
        total = int(trainer.estimated_stepping_batches)
        epochs = max(1, trainer.max_epochs or 1)
        run = RunLength(total_steps=total, steps_per_epoch=max(1, total // epochs), max_epochs=epochs)
        scheduler = build_scheduler(self.scheduler_cfg, optimizer, run)
        if scheduler is None:
            return optimizer
        scheduler.setdefault("monitor", self.monitor)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # ------------------------------------------------------------ checkpoints carry the config as plain data
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["cnnlab"] = {"config": self.config, "num_classes": self.num_classes}
