"""DDP on one machine: ranks started as `cnnlab train` processes, sharded in-memory loaders, one run folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import cnnlab
from omegaconf import OmegaConf

from cnnlab.data.datamodule import InMemoryLoader
from cnnlab.train.build import build_datamodule, build_module
from cnnlab.train.checkpoint import load_checkpoint


def loader(n: int, shuffle: bool, rank: int, world_size: int, batch_size: int = 4) -> InMemoryLoader:
    return InMemoryLoader(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n), batch_size, shuffle=shuffle,
                          seed=3, rank=rank, world_size=world_size)


def seen(shard: InMemoryLoader) -> list[int]:
    return [int(label) for _, labels in shard for label in labels]


def test_evaluation_shards_cover_each_sample_once():
    shards = [seen(loader(11, shuffle=False, rank=r, world_size=3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
    assert [len(s) for s in shards] == [4, 4, 3]


def test_training_shards_take_equal_steps_from_one_seeded_order():
    shards = [loader(11, shuffle=True, rank=r, world_size=2) for r in range(2)]
    samples = [seen(s) for s in shards]
    assert [len(s) for s in shards] == [2, 2] and [len(s) for s in samples] == [6, 6]  # 11 padded to 12
    assert set(samples[0]) | set(samples[1]) == set(range(11))
    full_order = loader(11, shuffle=True, rank=0, world_size=1).order(0).tolist()
    assert samples[0] == full_order[0::2] and samples[1] == (full_order + full_order[:1])[1::2]


def evaluate(checkpoint_path: Path) -> tuple[int, int]:
    """(correct, total) of the saved model on the validation split, in this one process, without Lightning."""
    checkpoint = load_checkpoint(checkpoint_path)
    cfg = OmegaConf.create(checkpoint["cnnlab"]["config"])
    module = build_module(cfg)
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    correct = total = 0
    with torch.no_grad():
        for images, labels in datamodule.val_dataloader():
            correct += int((module(datamodule.normalize(images)).argmax(1) == labels).sum())
            total += len(labels)
    return correct, total


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_writes_one_run_folder(tmp_path: Path):
    run = tmp_path / "run"
    result = cnnlab("train", "dataset=synthetic", "dataset.source.noise=1.0", "model=mlp", "progress_bar=none",
                    "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_epochs=1",
                    "test=false", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    # Each rank took half of the 461 training images (padded to 462): 231 per rank in batches of 64.
    assert summary["split_sizes"]["train"] == 461 and summary["steps"] == math.ceil(231 / 64)
    # Rank 0 alone wrote the run folder: one log, one config, one metrics row, no per-rank files.
    names = sorted(p.name for p in run.iterdir())
    assert names == [".hydra", "checkpoints", "curves.png", "metrics.csv", "model_summary.txt", "summary.json",
                     "tb", "train.log"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len((run / "metrics.csv").read_text().splitlines()) == 2
    assert result.stdout.count("Model summary") == 1
    # The validation accuracy reduced over both processes is the saved model's accuracy on the whole split.
    correct, total = evaluate(run / "checkpoints" / "best.ckpt")
    assert total == summary["split_sizes"]["val"] == 51
    assert 0 < correct < total, "a few steps on noisy data: the check must not be trivially 0 or 1"
    assert summary["best"]["val_acc"] == round(correct / total, 6)
