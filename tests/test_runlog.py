"""runlog.CallbackGroup: one callback for Lightning, each hook passed to the members that define it."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping
from torch.utils.data import DataLoader, TensorDataset

from cnnlab.train.callbacks import RunLog
from cnnlab.train.failures import FiniteLossGuard
from cnnlab.train.fastpaths import CallbackGroup, EpochCheckpoint, LearningRates
from cnnlab.train.resume import ResumeState


class Recorder(pl.Callback):
    def __init__(self, name: str, calls: list[str]):
        self.name, self.calls = name, calls

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.calls.append(f"{self.name}.batch_end({batch_idx})")


class EpochRecorder(Recorder):
    def on_train_epoch_end(self, trainer, pl_module):
        self.calls.append(f"{self.name}.epoch_end")


def test_a_group_passes_each_hook_to_the_members_that_define_it_in_order():
    calls: list[str] = []
    group = CallbackGroup([Recorder("a", calls), EpochRecorder("b", calls)])
    group.on_train_batch_end(None, None, None, None, 3)
    group.on_train_epoch_end(None, None)
    group.on_validation_end(None, None)  # nobody defines it: the base no-op
    assert calls == ["a.batch_end(3)", "b.batch_end(3)", "b.epoch_end"]
    assert group.on_validation_end.__func__ is pl.Callback.on_validation_end


def test_grouped_keeps_checkpoints_stateful_and_library_callbacks_apart(tmp_path: Path):
    lrs, log, guard = LearningRates(), RunLog(tmp_path), FiniteLossGuard()
    best, resume, stop = EpochCheckpoint(dirpath=tmp_path), ResumeState(), EarlyStopping(monitor="val/acc")
    grouped = CallbackGroup.grouped([best, lrs, log, stop, resume, guard])
    assert [type(c).__name__ for c in grouped] == ["EpochCheckpoint", "CallbackGroup", "EarlyStopping", "ResumeState"]
    assert grouped[1].members == [lrs, log, guard]
    assert CallbackGroup.flat(grouped) == [best, lrs, log, guard, stop, resume]


def test_grouped_callbacks_still_act_in_a_real_fit(tmp_path: Path):
    calls: list[str] = []

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(TensorDataset(torch.ones(12, 2)), batch_size=4)
    group = CallbackGroup([Recorder("a", calls), EpochRecorder("b", calls)])
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[group], default_root_dir=tmp_path)
    trainer.fit(Tiny(), train_dataloaders=data)
    assert calls == ["a.batch_end(0)", "b.batch_end(0)", "a.batch_end(1)", "b.batch_end(1)", "a.batch_end(2)",
                     "b.batch_end(2)", "b.epoch_end"]
