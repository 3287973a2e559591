"""TensorBoard extras of a run (`tensorboard.*` in conf/train.yaml), all off by default (each costs time):

  histograms_every: N   weight and gradient histograms (weights/<name>, gradients/<name>) every N epochs
  grad_norm: true       the L2 norm of all gradients before every optimizer step (train/grad_norm; a host sync a step)
  misclassified: N      a grid of up to N misclassified validation images per epoch, captioned with true and
                        predicted class (val/misclassified; the first N the validation meets)
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor


def _writer(trainer: pl.Trainer) -> Any:
    """The SummaryWriter of the run's TensorBoard logger, or None (no logger, or another rank)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
            return logger.experiment
    return None


class TensorBoardExtras(pl.Callback):
    def __init__(self, histograms_every: int = 0, grad_norm: bool = False, misclassified: int = 0):
        self.histograms_every, self.grad_norm, self.misclassified = histograms_every, grad_norm, misclassified
        self._wrong: list[tuple[Tensor, int, int]] = []

    # ------------------------------------------------------------ gradient norm, every step
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        writer = _writer(trainer)
        if writer is None:
            return
        epoch = trainer.current_epoch + 1
        if self.histograms_every and epoch % self.histograms_every == 0 \
                and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:  # the epoch's last step
            for name, parameter in pl_module.model.named_parameters():
                if parameter.grad is not None:
                    writer.add_histogram(f"gradients/{name}", parameter.grad.detach().float().cpu(), epoch)
        if not self.grad_norm:
            return
        grads = [p.grad.detach() for p in pl_module.model.parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
            writer.add_scalar("train/grad_norm", float(norm), trainer.global_step + 1)  # the step it leads to

    # ------------------------------------------------------------ histograms, every N epochs
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = _writer(trainer)
        epoch = trainer.current_epoch + 1
        if not self.histograms_every or writer is None or epoch % self.histograms_every:
            return
        for name, parameter in pl_module.model.named_parameters():
            writer.add_histogram(f"weights/{name}", parameter.detach().float().cpu(), epoch)

    # ------------------------------------------------------------ misclassified validation images, every epoch
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._wrong = []

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.misclassified or trainer.sanity_checking or len(self._wrong) >= self.misclassified \
                or getattr(pl_module, "multilabel", False):
            return
        images, labels = batch
        predicted = pl_module(images).argmax(1)
        for index in (predicted != labels).nonzero().flatten()[: self.misclassified - len(self._wrong)].tolist():
            self._wrong.append((images[index].detach().float().cpu(), int(labels[index]), int(predicted[index])))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = _writer(trainer)
        if not self.misclassified or trainer.sanity_checking or writer is None:
            return
        from cnnlab.runs.pictures import labelled_figure

        datamodule = trainer.datamodule
        names = list(getattr(datamodule, "class_names", [])) or [str(i) for i in range(pl_module.num_classes)]
        if self._wrong:
            stacked = torch.stack([image for image, _, _ in self._wrong])
            mean, std = datamodule.mean.cpu(), datamodule.std.cpu()
            shown = (stacked * std + mean).clamp(0, 1).numpy()  # undo the normalisation for display
        else:
            shown = torch.zeros(0).numpy()
        captions = [f"true {names[true]}\npred {names[pred]}" for _, true, pred in self._wrong]
        epoch = trainer.current_epoch + 1
        figure = labelled_figure(shown, captions, f"misclassified validation images, epoch {epoch}")
        writer.add_figure("val/misclassified", figure, epoch, close=True)
        self._wrong = []
