"""Checkpoints: atomic saving (temporary file, then rename) and weights-only loading."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from cnnlab.config import ConfigError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to `<name>.tmp` and renames it over the target, so a kill mid-save keeps the previous file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a cnnlab checkpoint without running pickled code; one clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("checkpoint", str(path), message=f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        message = f"cannot load checkpoint {path}: not a safe cnnlab checkpoint ({reason[:200]})"
        raise ConfigError("checkpoint", str(path), message=message) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "cnnlab" not in checkpoint:
        raise ConfigError("checkpoint", str(path),
                          message=f"{path} is not a cnnlab checkpoint (no model weights and run config inside)")
    return checkpoint
