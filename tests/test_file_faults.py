"""File-system faults while a run writes: one line naming the file and the cause, summary.json marked, no temporary
file left, the previous checkpoints whole, and the run resumable (cnnlab/runs/write.py writing,
cnnlab/train/checkpoint.py AtomicCheckpointIO, cnnlab/train/failures.py)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab.errors import FileWriteError
from cnnlab.runs.write import atomic_write_text
from cnnlab.train.checkpoint import AtomicCheckpointIO, load_checkpoint
from tests.conftest import cnnlab

# A network whose checkpoints (~230 kB) are far larger than every other file of the run.
TINY = ["dataset=synthetic", "dataset.image_size=8", "dataset.num_classes=3", "dataset.source.num_train=96",
        "dataset.source.num_test=24", "model=mlp", "model.hidden=[256]", "trainer.max_epochs=1", "progress_bar=none"]


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("cnnlab:")]


def _temporaries(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def one_epoch(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    done = cnnlab("train", *TINY, f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-2000:]
    return run


def _limited(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_file_size_limit_during_a_checkpoint_save(one_epoch: Path):
    run = one_epoch
    step = load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    try:
        failed = subprocess.run([sys.executable, "-m", "cnnlab.cli", "train", f"resume={run}", "trainer.max_epochs=2"],
                                preexec_fn=_limited(150_000), capture_output=True, text=True, timeout=600)
    except (ValueError, OSError) as error:  # pragma: no cover - a machine that refuses the limit
        pytest.skip(f"RLIMIT_FSIZE cannot be set here: {error}")
    assert failed.returncode == 1, failed.stderr[-3000:]
    lines = _errors(failed.stderr)
    assert len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert "cannot write" in lines[0] and ".ckpt: File too large (EFBIG)" in lines[0]
    assert f"resume with: cnnlab train resume={run}" in lines[0] or "resume with: cnnlab train resume=" in lines[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "EFBIG" in summary["error"] and summary["resume"].startswith("cnnlab")
    assert _temporaries(run) == []
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == step  # the previous one, whole
    load_checkpoint(run / "checkpoints" / "best.ckpt")

    resumed = cnnlab("train", f"resume={run}", "trainer.max_epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2


@pytest.mark.slow
def test_read_only_checkpoint_folder(one_epoch: Path):
    run = one_epoch
    folder = run / "checkpoints"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("chmod does not stop this user from writing (running as root)")
        failed = cnnlab("train", f"resume={run}", "trainer.max_epochs=2")
        assert failed.returncode == 1, failed.stderr[-3000:]
        lines = _errors(failed.stderr)
        assert len(lines) == 1 and "Permission denied (EACCES)" in lines[0], failed.stderr
        assert json.loads((run / "summary.json").read_text())["status"] == "failed"
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    finally:
        folder.chmod(0o755)
    assert _temporaries(run) == []
    assert cnnlab("train", f"resume={run}", "trainer.max_epochs=2").returncode == 0


def test_run_folder_name_too_long_is_one_line(tmp_path: Path):
    run = tmp_path / ("x" * 300)
    failed = cnnlab("train", *TINY, f"hydra.run.dir={run}")
    assert failed.returncode == 2
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write the run folder" in lines[0] and "ENAMETOOLONG" in lines[0]


def test_atomic_write_leaves_no_temporary_file(tmp_path: Path):
    target = tmp_path / "summary.json"
    target.mkdir()  # the rename over a folder fails
    with pytest.raises(FileWriteError, match="summary.json"):
        atomic_write_text(target, "{}")
    assert list(tmp_path.iterdir()) == [target]


class _Interrupt:
    def __reduce__(self):
        raise KeyboardInterrupt


def test_an_interrupted_checkpoint_save_keeps_the_previous_file(tmp_path: Path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "x": _Interrupt()}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# ------------------------------------------------------------------ signals to the whole process group

@pytest.mark.slow  # trains until its first epoch (tens of steps) is done
@pytest.mark.parametrize(("signal_name", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_to_the_process_group_while_workers_stream_images(tmp_path: Path, signal_name: str, code: int):
    import signal
    import time

    from tests.conftest import make_image_folder

    root = make_image_folder(tmp_path / "pets", per_class=40)
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnlab.cli", "train", "dataset=imagefolder", f"dataset.root={root}",
         "dataset.image_size=16", "dataset.source.cache=false", "num_workers=2", "model=mlp", "model.hidden=[16]",
         "batch_size=4", "trainer.max_epochs=200", "progress_bar=none", "test=false", f"hydra.run.dir={run}"],
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / "metrics.csv").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)  # an epoch done: the persistent workers stream the next one
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.killpg(proc.pid, getattr(signal, signal_name))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = _errors(err)
    assert len(lines) == 1 and f"interrupted by {signal_name}" in lines[0] and "resume with" in lines[0], err
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    load_checkpoint(run / "checkpoints" / "last.ckpt")
