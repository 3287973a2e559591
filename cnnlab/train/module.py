"""ClassifierModule: the training step, the loss/head pairing, metrics, and optimizer/scheduler wiring."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.optim import lr_scheduler
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MultilabelAccuracy,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

from cnnlab.data.chunks import Chunk
from cnnlab.data.datamodule import ImageDataModule
from cnnlab.data.tta import views
from cnnlab.train.ema import build_ema, ema_enabled
from cnnlab.train.fastpaths import EpochMeans, LeanSteps, StepHooks
from cnnlab.train.losses import Objective
from cnnlab.train.optim import RunLength, build_optimizer, build_scheduler


def multilabel_scores(num_classes: int) -> dict[str, Metric]:
    """Macro F1 at threshold 0.5, per-label F1 (`f1_label` -> test/f1_label_<i>) and mAP (macro average precision)."""
    return {
        "f1": MultilabelF1Score(num_classes, threshold=0.5, average="macro"),
        "f1_label": MultilabelF1Score(num_classes, threshold=0.5, average="none"),
        "map": MultilabelAveragePrecision(num_classes, average="macro"),
    }


def logged_names(multilabel: bool = False, ema: bool = False) -> list[str]:
    """The per-epoch metrics ClassifierModule logs in training, by name: what `monitor` may choose from."""
    names = ["train/loss", "train/acc", "val/loss", "val/acc"]
    if multilabel:
        names += [f"val/{name}" for name in ("f1", "map")]  # multilabel_scores but the per-label f1_label
    if ema:
        names += ["val_ema/loss", "val_ema/acc"]  # the weights' moving average, validated beside them
    return names


def test_metrics(num_classes: int, multilabel: bool = False) -> MetricCollection:
    """Accuracy (top-1, top-5 where classes > 5), macro precision / recall / F1 and AUC-ROC; multi-label: F1, mAP."""
    if multilabel:
        return MetricCollection({"acc": MultilabelAccuracy(num_classes, threshold=0.5, average="micro"),
                                 **multilabel_scores(num_classes)})
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


class ClassifierModule(LeanSteps, pl.LightningModule):
    """A model trained with one objective; logs `<split>/loss` and `<split>/acc` per epoch."""

    def __init__(self, model: nn.Module, objective: Objective, num_classes: int, optimizer: Any,
                 scheduler: Any, monitor: str = "val/acc", mode: str = "max", config: dict | None = None,
                 channels_last: bool = False, ema: Any = None, manual_steps: bool = False):
        super().__init__()
        # steps_per_execution (cnnlab/train/executions.py): with manual_steps, each training step takes a Chunk of
        # steps_per_call batches and makes one optimizer step for each (executions.install sets the count and the
        # gradient clipping, which Lightning leaves to a manually optimised module).
        self.automatic_optimization = not manual_steps
        self.steps_per_call = 1
        self.clip: tuple[float | None, Any] = (None, None)
        self._hooks: StepHooks | bool | None = None  # the chunks' step path, chosen once per fit
        self.schedules: list[dict[str, Any]] = []  # the lr-scheduler configs of configure_optimizers
        self.run_length: RunLength | None = None  # the run the schedule was sized for, kept in checkpoints
        self._plateau_due = False  # a ReduceLROnPlateau step waits for the validation that follows its batch
        self.model, self.objective, self.num_classes = model, objective, num_classes
        # NHWC memory layout for convolutions (faster on GPUs with tensor cores, and with bf16); same numbers.
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer_cfg, self.scheduler_cfg = optimizer, scheduler
        self.monitor, self.mode = monitor, mode
        self.config = config  # plain data, saved inside checkpoints for eval/predict/resume
        self.multilabel = objective.multilabel
        # Logged once per epoch, not per step: Lightning's self.log costs ~0.7 ms a call, the largest per-step cost
        # next to a small model's own step (scripts/bench_overhead.py).
        self.train_means = EpochMeans(self.multilabel)
        self.val_means = EpochMeans(self.multilabel)
        self.val_scores = MetricCollection({k: v for k, v in multilabel_scores(num_classes).items()
                                            if k != "f1_label"}, prefix="val/") if self.multilabel else None
        self.test_scores = test_metrics(num_classes, self.multilabel)
        self.test_confusion = None if self.multilabel else MulticlassConfusionMatrix(num_classes)
        self.confusion: Tensor | None = None
        self.test_samples = 0  # images seen by the last test (eval reports it)
        # Test-time augmentation (cnnlab/data/tta.py) of the test step and `predict`; `eval` and `predict` set it
        # (after checking the dataset allows it): probabilities averaged over the views, the loss of the image alone.
        self.tta = "none"
        # The weights' moving average (cnnlab/train/ema.py): updated after each optimizer step, validated beside
        # the weights (val_ema/*), saved in checkpoints as the `ema.` entries; the test step uses it when
        # `ema.evaluate` (eval, predict, export and inspect get its weights through cnnlab/train/trained.py).
        self.ema = build_ema(self.model, ema) if ema_enabled(ema) else None
        self.test_with_ema = self.ema is not None and bool(ema.get("evaluate", True))
        self.val_ema_means = EpochMeans(self.multilabel) if self.ema is not None else None

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and self.objective.needs_class_counts and datamodule is not None:
            self.objective.fit_class_weights(datamodule.train_labels())

    def forward(self, images: Tensor) -> Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def forward_ema(self, images: Tensor) -> Tensor:
        """The averaged network's output."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.ema.module(images)

    def _test_forward(self, images: Tensor) -> Tensor:
        return self.forward_ema(images) if self.test_with_ema else self(images)

    # ------------------------------------------------------------ steps
    def _step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Loss, the raw output (detached) and the targets the metrics compare its decisions with."""
        images, labels = batch
        raw = self(images)
        return self.objective(raw, labels), raw.detach(), self._metric_targets(labels)

    def _metric_targets(self, labels: Tensor) -> Tensor:
        """Class indices (argmax of mixup/cutmix target vectors), or 0/1 label vectors on multi-label data."""
        if self.multilabel:
            return (labels >= 0.5).long()
        return labels.argmax(1) if labels.ndim == 2 else labels

    def training_step(self, batch: tuple[Tensor, Tensor] | Chunk, batch_idx: int) -> Any:
        if isinstance(batch, Chunk):
            return self._chunk_steps(batch)
        loss, raw, targets = self._step(batch)
        self.train_means.update(loss, self.objective.decision_scores(raw), targets)
        return loss

    def _chunk_steps(self, chunk: Chunk) -> dict[str, Tensor]:
        """One optimizer step for each batch of the chunk, each as Lightning's automatic optimisation makes it: the
        batch through Lightning's per-batch path (input conversion, device, normalisation and augmentation), the
        loss, zero_grad, backward (scaled under mixed precision), the optimizer step (clipping, in
        on_before_optimizer_step, and the loss scaler's unscale and update inside it), the moving average, then the
        step-interval schedules. Stops at trainer.max_steps without drawing the chunk's remaining batches.
        Returns the chunk's per-step losses as {"loss": (steps,)} for the callbacks (FiniteLossGuard)."""
        trainer = self.trainer
        optimizer = self.optimizers()
        if trainer.max_steps is not None and trainer.max_steps >= 0:
            chunk.size = max(0, min(chunk.size, trainer.max_steps - trainer.global_step))
        if self._hooks is None:  # once per fit: Lightning's own path, or its lean equivalent where that is the same
            self._hooks = StepHooks(trainer, self) if StepHooks.applies(trainer) else False
        hooks, datamodule, device = self._hooks, trainer.datamodule, trainer.strategy.root_device
        lean_transfer = bool(hooks) and type(datamodule).on_before_batch_transfer is \
            pl.LightningDataModule.on_before_batch_transfer and isinstance(datamodule, ImageDataModule)
        losses, sizes, outcomes = [], [], []  # the epoch metrics take the chunk's steps together, at its end
        for offset, raw in enumerate(chunk):
            if lean_transfer:  # what Lightning's path calls here (fp32: no input conversion; the datamodule's hooks)
                batch = datamodule.on_after_batch_transfer(datamodule.transfer_batch_to_device(raw, device, 0), 0)
            else:
                batch = trainer.precision_plugin.convert_input(raw)
                batch = self._on_before_batch_transfer(batch, dataloader_idx=0)
                batch = trainer.strategy.batch_to_device(batch, dataloader_idx=0)
            optimizer.zero_grad()  # before the forward pass: the last step's gradients are freed before it allocates
            loss, raw, targets = self._step(batch)
            sizes.append(len(targets))
            outcomes.append(self.train_means.step_outcome(self.objective.decision_scores(raw), targets))
            if hooks:
                hooks.backward(loss)
                hooks.step(optimizer)
            else:
                self.manual_backward(loss)
                optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            losses.append(loss.detach())
            index = chunk.first + offset  # the batch's place in the epoch, as Lightning's batch_idx counts it
            self._step_schedules(index, last=index + 1 == chunk.epoch_batches)
        self.train_means.add_steps(losses, sizes, outcomes)
        if losses:
            # Lightning counts the steps its loggers see (the x axis of every logged metric) once per call, after
            # the callbacks' on_train_batch_end: count each optimizer step of the chunk, before those callbacks (one
            # may save a checkpoint), so that curves and checkpoints line up with K=1's.
            trainer.fit_loop.epoch_loop._batches_that_stepped += len(losses) - 1
        return {"loss": torch.stack(losses) if losses else torch.zeros(0, device=self.device)}

    def _step_schedules(self, batch_index: int, last: bool) -> None:
        """Lightning's schedule stepping after batch `batch_index` of the epoch (which manual optimisation leaves to
        the module), over Lightning's live list (a callback such as StochasticWeightAveraging may replace it): a
        step-interval schedule every `frequency` batches, an epoch-interval one after the epoch's last batch;
        ReduceLROnPlateau waits for the validation that follows (on_validation_end)."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == "step":
                due = (batch_index + 1) % config.frequency == 0
            else:
                due = last and (self.trainer.current_epoch + 1) % config.frequency == 0
            if not due:
                continue
            if isinstance(config.scheduler, lr_scheduler.ReduceLROnPlateau):
                self._plateau_due = True
            else:
                self.lr_scheduler_step(config.scheduler, None)

    def _step_plateaus(self) -> None:
        if not self._plateau_due:
            return
        self._plateau_due = False
        monitors = {id(c["scheduler"]): c.get("monitor") for c in self.schedules}  # manual mode drops the key
        for config in self.trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, lr_scheduler.ReduceLROnPlateau):
                value = self.trainer.callback_metrics.get(monitors.get(id(config.scheduler)) or self.monitor)
                if value is not None:
                    self.lr_scheduler_step(config.scheduler, value)

    def on_train_start(self) -> None:
        self._hooks = None  # this fit's callbacks and plugins decide the chunks' step path

    def on_validation_end(self) -> None:
        if not self.automatic_optimization and not self.trainer.sanity_checking:
            self._step_plateaus()

    def clip_before_step(self, optimizer: Any) -> None:
        """Manual optimisation's gradient clipping, as the module's on_before_optimizer_step hook (set by
        executions.install when clipping is asked for): where Lightning's automatic optimisation clips, after the
        loss scaler's unscale and the callbacks' on_before_optimizer_step, which see the gradients unclipped."""
        self.configure_gradient_clipping(optimizer, self.clip[0], self.clip[1])

    def epoch_train_metrics(self) -> dict[str, Tensor]:
        """The training loss and accuracy of the epoch so far (reduced over DDP ranks by the metrics)."""
        if self.train_means.update_count == 0:
            return {}
        return {f"train/{name}": value for name, value in self.train_means.compute().items()}

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization:
            self._step_plateaus()  # no validation ran after the plateau's batch: the last value it logged
        for name, value in self.epoch_train_metrics().items():
            self.log(name, value)
        self.train_means.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, raw, targets = self._step(batch)
        self.val_means.update(loss, self.objective.decision_scores(raw), targets)
        if self.ema is not None:
            averaged = self.forward_ema(batch[0])
            self.val_ema_means.update(self.objective(averaged, batch[1]), self.objective.decision_scores(averaged),
                                      targets)
        if self.val_scores is not None:
            self.val_scores.update(self.objective.probabilities(raw), targets)
            self.log_dict(self.val_scores, on_epoch=True, batch_size=len(targets))

    def on_validation_epoch_end(self) -> None:
        if self.val_means.update_count:
            for name, value in self.val_means.compute().items():
                self.log(f"val/{name}", value, prog_bar=True)
        self.val_means.reset()
        if self.val_ema_means is not None:
            if self.val_ema_means.update_count:
                for name, value in self.val_ema_means.compute().items():
                    self.log(f"val_ema/{name}", value)
            self.val_ema_means.reset()

    def on_test_epoch_start(self) -> None:
        self.test_samples = 0

    def class_probabilities(self, images: Tensor, raw: Tensor | None = None) -> Tensor:
        """Class probabilities of normalised images, averaged over the `tta` views (`raw`: the output for the
        images themselves, when already computed)."""
        outputs = [self._test_forward(view) for view in views(images, self.tta)[1:]]
        outputs.insert(0, self._test_forward(images) if raw is None else raw)
        probs = [self.objective.probabilities(output.detach()) for output in outputs]
        return probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        raw = self._test_forward(images)  # as _step, with the probabilities averaged over the tta views
        loss, targets = self.objective(raw, labels), self._metric_targets(labels)
        probs = self.class_probabilities(images, raw)
        self.test_samples += len(targets)
        self.test_scores.update(probs, targets)
        if self.test_confusion is not None:
            self.test_confusion.update(probs, targets)
        self.log("test/loss", loss, on_epoch=True, batch_size=len(targets), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        for name, value in self.test_scores.compute().items():
            if value.ndim:  # per-label values: one entry each
                for index, item in enumerate(value):
                    self.log(f"test/{name}_{index}", item, sync_dist=True)
            else:
                self.log(f"test/{name}", value, sync_dist=True)  # already reduced over ranks: the mean keeps it
        self.test_scores.reset()
        if self.test_confusion is not None:
            self.confusion = self.test_confusion.compute().cpu()
            self.test_confusion.reset()

    # ------------------------------------------------------------ optimisation
    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.optimizer_cfg, self.model)
        self.run_length = RunLength.of(self.trainer, self.monitor, self.mode)
        schedulers = build_scheduler(self.scheduler_cfg, optimizer, self.run_length)
        # Manual optimisation (steps_per_execution) steps them itself (_step_schedules); Lightning keeps them in
        # checkpoints, and would only warn about the keys it does not use then.
        self.schedules = schedulers
        if not self.automatic_optimization:
            schedulers = [{k: v for k, v in c.items() if k not in ("monitor", "strict")} for c in schedulers]
        return ([optimizer], schedulers) if schedulers else optimizer

    # ------------------------------------------------------------ checkpoints carry the config as plain data
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["cnnlab"] = {"config": self.config, "num_classes": self.num_classes}
        if self.run_length is not None:  # what the schedule was sized for (resume.check_schedule_length)
            checkpoint["cnnlab"]["run_steps"] = self.run_length.total_steps
            checkpoint["cnnlab"]["steps_per_epoch"] = self.run_length.steps_per_epoch
        if not self.automatic_optimization:  # the run's K, kept on resume so that its chunks line up
            checkpoint["cnnlab"]["steps_per_execution"] = self.steps_per_call
