"""Fair comparisons: what build.py makes from a config depends on the seeds, never on the loss.

Each test trains through the real `cnnlab train` (in-process) and records, at the first training step, the
weights the model starts from and then every batch the model is given (after on-device augmentation).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnlab.cli import main
from cnnlab.train.module import ClassifierModule

# Random crops make the batches depend on the augmentation seed too; 3 small batches x 2 epochs.
FAST = ["dataset=synthetic", "augmentation=crop", "batch_size=16", "trainer.max_epochs=2",
        "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1", "test=false", "progress_bar=none"]
RUNS = {
    "ce": ["loss=ce", "seed=7"],
    "nll": ["loss=nll", "seed=7"],
    "init": ["loss=ce", "seed=7", "seeds.init=8"],
    "data": ["loss=ce", "seed=7", "seeds.data=8"],
    "augment": ["loss=ce", "seed=7", "seeds.augment=8"],
}
Record = tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]


def train_and_record(overrides: list[str], run_dir: Path) -> Record:
    """Train with the overrides; return (initial weights, [(images, labels) of every training step])."""
    seen: dict = {"weights": None, "batches": []}
    original = ClassifierModule.training_step

    def training_step(self: ClassifierModule, batch, batch_idx: int):
        if seen["weights"] is None:  # before the first optimizer step: the initial weights
            seen["weights"] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        seen["batches"].append((batch[0].detach().clone(), batch[1].detach().clone()))
        return original(self, batch, batch_idx)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ClassifierModule, "training_step", training_step)
        assert main(["train", *FAST, *overrides, f"hydra.run.dir={run_dir}"]) == 0
    return seen["weights"], seen["batches"]


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Record]:
    root = tmp_path_factory.mktemp("fair")
    return {name: train_and_record(overrides, root / name) for name, overrides in RUNS.items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def same_batches(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b))


@pytest.mark.slow
def test_runs_differing_only_in_the_loss_start_alike_and_see_the_same_batches(records):
    (ce_weights, ce_batches), (nll_weights, nll_batches) = records["ce"], records["nll"]
    assert len(ce_batches) == 6  # 3 batches in each of 2 epochs, all compared in order
    assert same_weights(ce_weights, nll_weights)
    assert same_batches(ce_batches, nll_batches)
    # The comparison can fail: epoch 2 reshuffles, so its first batch is not epoch 1's.
    assert not torch.equal(ce_batches[0][1], ce_batches[3][1])


def test_each_seed_moves_only_its_own_part(records):
    base_weights, base_batches = records["ce"]
    init_weights, init_batches = records["init"]
    data_weights, data_batches = records["data"]
    augment_weights, augment_batches = records["augment"]

    assert not same_weights(base_weights, init_weights) and same_batches(base_batches, init_batches)
    assert same_weights(base_weights, data_weights)
    assert not torch.equal(base_batches[0][1], data_batches[0][1])  # another order: other labels first
    assert same_weights(base_weights, augment_weights)
    first, other = base_batches[0], augment_batches[0]
    assert torch.equal(first[1], other[1]) and not torch.equal(first[0], other[0])  # same images, other crops
