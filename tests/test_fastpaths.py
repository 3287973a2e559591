"""The fast paths give the plain paths' results: in-memory batches vs a torch DataLoader, channels_last vs not."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from cnnlab.config import compose
from cnnlab.train.build import build_datamodule, build_module


def losses_after_steps(module, batches, steps: int) -> list[float]:
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    out = []
    for _, (images, labels) in zip(range(steps), batches):
        optimizer.zero_grad()
        loss = module.objective(module(images), labels)
        loss.backward()
        optimizer.step()
        out.append(loss.item())
    return out


def test_in_memory_loader_equals_a_dataloader_over_the_same_tensors():
    cfg = compose(["dataset=synthetic", "model=lenet", "shuffle=false"])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    images, labels = datamodule.splits["train"]
    fast = ((datamodule.normalize(x), y) for x, y in datamodule.train_dataloader())
    plain_set = TensorDataset(datamodule.normalize(images), labels)  # the per-sample path: float tensors, collated
    plain = DataLoader(plain_set, batch_size=cfg.batch_size, shuffle=False)
    assert losses_after_steps(build_module(cfg), fast, 5) == losses_after_steps(build_module(cfg), plain, 5)


def test_channels_last_trains_to_the_same_loss():
    cfg = compose(["dataset=synthetic", "model=lenet", "shuffle=false"])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    batches = [(datamodule.normalize(x), y) for _, (x, y) in zip(range(5), datamodule.train_dataloader())]
    plain = losses_after_steps(build_module(cfg), batches, 5)
    fast_cfg = compose(["dataset=synthetic", "model=lenet", "shuffle=false", "channels_last=true"])
    module = build_module(fast_cfg)
    assert module.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    fast = losses_after_steps(module, batches, 5)
    assert torch.allclose(torch.tensor(fast), torch.tensor(plain), rtol=1e-4, atol=1e-5)
    assert fast[-1] < fast[0]
    assert F.mse_loss(torch.tensor(fast), torch.tensor(plain)) < 1e-8


@pytest.mark.slow
def test_splits_normalised_up_front_train_exactly_like_per_batch_conversion(tmp_path, monkeypatch):
    """On the CPU, splits no augmentation touches are normalised once; the run's numbers stay bit-identical."""
    import csv
    import json

    from cnnlab.cli import main
    from cnnlab.data import datamodule as dm

    def run(name: str) -> list[dict]:
        assert main(["train", "dataset=synthetic", "model=lenet", "trainer.max_epochs=2", "progress_bar=none",
                     f"hydra.run.dir={tmp_path / name}"]) == 0
        with (tmp_path / name / "metrics.csv").open() as handle:
            rows = [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in csv.DictReader(handle)]
        return rows + [json.loads((tmp_path / name / "summary.json").read_text())["test"]]

    up_front = run("up_front")
    monkeypatch.setattr(dm, "NORMALIZED_MAX_BYTES", 0)  # every split converted batch by batch, as on a GPU
    assert run("per_batch") == up_front


def test_a_cpu_trainer_gets_float_batches_cut_from_the_normalised_split():
    from types import SimpleNamespace

    cfg = compose(["dataset=synthetic", "model=lenet", "shuffle=false"])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    plain = [datamodule.normalize(x) for _, (x, _) in zip(range(3), datamodule.train_dataloader())]
    datamodule.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")), training=True)
    fast = [x for _, (x, _) in zip(range(3), datamodule.train_dataloader())]
    assert all(torch.equal(a, b) for a, b in zip(plain, fast)) and fast[0].dtype == torch.float32
    assert datamodule.on_after_batch_transfer((fast[0], None), 0)[0] is fast[0]
    augmented = build_datamodule(compose(["dataset=synthetic", "model=lenet", "augmentation=flip"]))
    augmented.setup("fit")
    augmented.trainer = datamodule.trainer
    assert augmented.train_dataloader().images.dtype == torch.uint8  # augmentations need the raw images
    assert augmented.val_dataloader().images.dtype == torch.float32
