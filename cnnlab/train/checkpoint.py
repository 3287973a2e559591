"""Checkpoints: atomic saving (temporary file, then rename) and weights-only loading."""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from cnnlab.errors import ConfigError
from cnnlab.runs.write import temporary, writing


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to `.<name>.tmp` and renames it over the target, so a kill mid-save keeps the previous file.

    A failed save (disk full, file-size limit, read-only folder, a second Ctrl-C) removes the temporary file and
    leaves the previous checkpoint as it was; a file-system cause becomes one FileWriteError line.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        tmp = temporary(path)
        with writing(path, tmp):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as handle:  # a handle, so that torch's write errors carry the OSError behind them
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols say nothing to the user
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConfigError("checkpoint", str(path), message=_refused(path, str(error))) from None
    except OSError as error:
        reason = error.strerror or error
        raise ConfigError("checkpoint", str(path), message=f"cannot read checkpoint {path}: {reason}") from None
    except Exception as error:  # zip errors, EOF, a text file: torch raises many kinds
        reason = " ".join(str(error).split()).split(". ")[0][:120]
        detail = f" ({reason})" if len(reason) > 3 else ""
        raise ConfigError("checkpoint", str(path), message=(
            f"cannot read checkpoint {path}: the file is truncated, corrupt or not a PyTorch checkpoint{detail}"
        )) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError("checkpoint", str(path), message=(
            f"{path} is not a cnnlab checkpoint: it holds no model weights (state_dict)"))
    if not isinstance(checkpoint.get("cnnlab"), dict) or not isinstance(checkpoint["cnnlab"].get("config"), dict):
        raise ConfigError("checkpoint", str(path), message=(
            f"{path} is not a cnnlab checkpoint: it holds no run config (written by another program?)"))
    return checkpoint


def _refused(path: Path, reason: str) -> str:
    """The message for a file whose unpickling would need more than tensors and plain data."""
    found = re.search(r"GLOBAL ([\w.]+)", reason)
    what = (f"it holds pickled Python objects ({found.group(1)}) that weights-only loading will not run" if found
            else "its pickle needs more than the tensors and plain data that weights-only loading allows")
    return f"refusing to load checkpoint {path}: {what}; cnnlab checkpoints hold only tensors and plain data"
