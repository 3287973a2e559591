"""Checkpoints: a save killed midway leaves the previous checkpoint whole; loading is weights-only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnlab.checkpoint import AtomicCheckpointIO, load_checkpoint
from cnnlab.config import ConfigError


def checkpoint(step: int) -> dict:
    return {"state_dict": {"w": torch.full((3,), float(step))}, "global_step": step,
            "cnnlab": {"config": {"seed": 0}, "num_classes": 2}}


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint(1), path)

    def killed_midway(obj: object, handle) -> None:
        handle.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the disk, then the process is gone
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint(checkpoint(2), path)
    monkeypatch.undo()

    survivor = load_checkpoint(path)
    assert survivor["global_step"] == 1 and torch.equal(survivor["state_dict"]["w"], torch.ones(3))
    torn = path.with_name(".last.ckpt.tmp")  # the torn bytes are in the temporary file only
    assert torn.read_bytes().startswith(b"PK\x03\x04 half")
    AtomicCheckpointIO().save_checkpoint(checkpoint(3), path)  # the next save goes through and replaces it
    assert load_checkpoint(path)["global_step"] == 3 and not torn.exists()


def test_a_checkpoint_with_pickled_code_is_refused(tmp_path: Path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "cnnlab": {}, "payload": Path("/")}, path)  # any non-weights object
    with pytest.raises(ConfigError, match="not a safe cnnlab checkpoint"):
        load_checkpoint(path)
