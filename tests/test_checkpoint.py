"""Checkpoints load weights-only: what `cnnlab train` writes loads, pickled code never runs, bad files are one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from cnnlab.errors import ConfigError
from cnnlab.train.checkpoint import AtomicCheckpointIO, load_checkpoint


@pytest.mark.parametrize("name", ["best.ckpt", "last.ckpt"])
def test_train_checkpoints_load_weights_only(trained_run: Path, name: str):
    path = trained_run / "checkpoints" / name
    raw = torch.load(path, map_location="cpu", weights_only=True)  # Lightning's own file, no pickled code
    assert raw["lr_schedulers"] and any(key.startswith("EarlyStopping") for key in raw["callbacks"])
    checkpoint = load_checkpoint(path)
    config = checkpoint["cnnlab"]["config"]
    assert config["dataset"]["source"]["_target_"] == "cnnlab.data.sources.synthetic"
    assert checkpoint["cnnlab"]["num_classes"] == 10
    # The datamodule's normalisation statistics travel along, so predict needs no training data.
    stats = checkpoint["ImageDataModule"]
    assert len(stats["mean"]) == len(stats["std"]) == 1 and 0 < stats["mean"][0] < 1


class Payload:
    """Unpickling this object opens (creates) the marker file: code that a checkpoint must never get to run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_code_in_a_checkpoint_never_runs(trained_run: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    good = torch.load(trained_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    torch.save({**good, "extra": Payload(marker)}, evil)
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("L", (28, 28)).save(image)

    for args in (["eval", evil], ["predict", evil, image]):
        code, _, err = run_cli(capsys, *args)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "refusing to load checkpoint" in lines[0] and "(io.open)" in lines[0], err
        assert not marker.exists(), "unpickling ran the payload"
    # The file is a real threat: a plain (unsafe) torch.load runs the payload.
    torch.load(evil, map_location="cpu", weights_only=False)
    assert marker.exists()


def _truncated(run: Path, tmp_path: Path) -> Path:
    data = (run / "checkpoints" / "best.ckpt").read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: len(data) // 2])
    return path


def _text(run: Path, tmp_path: Path) -> Path:
    path = tmp_path / "notes.ckpt"
    path.write_text("just some text\n")
    return path


def _plain_weights(run: Path, tmp_path: Path) -> Path:
    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    return path


def _foreign_lightning(run: Path, tmp_path: Path) -> Path:
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}, "epoch": 3}, path)
    return path


def _empty_run_folder(run: Path, tmp_path: Path) -> Path:
    (tmp_path / "not-a-run").mkdir()
    return tmp_path / "not-a-run"


def _missing(run: Path, tmp_path: Path) -> Path:
    return tmp_path / "nowhere.ckpt"


def _wrong_weights(run: Path, tmp_path: Path) -> Path:
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    checkpoint["cnnlab"]["config"]["model"]["_target_"] = "cnnlab.models.classic.LeNet5"
    path = tmp_path / "mismatch.ckpt"
    torch.save(checkpoint, path)
    return path


BAD_CHECKPOINTS = [
    (_truncated, "truncated, corrupt or not a PyTorch checkpoint"),
    (_text, "truncated, corrupt or not a PyTorch checkpoint"),
    (_plain_weights, "not a cnnlab checkpoint: it holds no model weights"),
    (_foreign_lightning, "not a cnnlab checkpoint: it holds no run config"),
    (_empty_run_folder, "holds no checkpoint"),
    (_missing, "does not exist"),
    (_wrong_weights, "do not fit the network"),
]


@pytest.mark.parametrize(("make", "expected"), BAD_CHECKPOINTS, ids=[m.__name__.strip("_") for m, _ in BAD_CHECKPOINTS])
def test_bad_checkpoints_are_one_line_exit_2(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                             make, expected: str):
    path = make(trained_run, tmp_path)
    code, _, err = run_cli(capsys, "eval", path)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: ") and expected in lines[0], err
    assert "Traceback" not in err


def test_run_folder_without_summary_uses_last_checkpoint(trained_run: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("summary.json", "best.ckpt", "eval"))
    code, out, err = run_cli(capsys, "eval", copy, "--out", tmp_path / "out")
    assert code == 0, err
    assert (tmp_path / "out" / "last_test.json").is_file()


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
    torn = path.with_name(".last.ckpt.tmp")  # the torn bytes went with the temporary file (issue 19)
    assert not torn.exists()
    AtomicCheckpointIO().save_checkpoint(checkpoint(3), path)  # the next save goes through
    assert load_checkpoint(path)["global_step"] == 3 and not torn.exists()


def test_a_checkpoint_with_pickled_code_is_refused(tmp_path: Path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "cnnlab": {}, "payload": Path("/")}, path)  # any non-weights object
    with pytest.raises(ConfigError, match="refusing to load checkpoint .* pickled Python objects"):
        load_checkpoint(path)


def test_epoch_checkpoint_keeps_model_checkpoints_state_key(tmp_path):
    """Checkpoints written with Lightning's ModelCheckpoint still restore the best score into EpochCheckpoint."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from cnnlab.train.fastpaths import EpochCheckpoint

    settings = {"dirpath": tmp_path, "filename": "best", "monitor": "val/acc", "mode": "max"}
    assert EpochCheckpoint(**settings).state_key == ModelCheckpoint(**settings).state_key
