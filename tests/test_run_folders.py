"""One run, one folder, one writer (cnnlab/runs/lock.py): default names never collide, a new run never writes
into another run's folder, and a second process never writes a run folder that another one is writing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.runs.layout import LOCK_FILE
from cnnlab.runs.lock import acquire, release
from tests.conftest import cnnlab

TINY = ["dataset=synthetic", "dataset.image_size=8", "dataset.num_classes=3", "dataset.source.num_train=96",
        "dataset.source.num_test=24", "model=mlp", "model.hidden=[16]", "trainer.max_epochs=1", "progress_bar=none"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnnlab.cli", "train", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("folders") / "run"
    done = cnnlab("train", *TINY, f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-2000:]
    return run


def test_two_runs_started_together_get_two_folders(tmp_path: Path):
    procs = [_start(*TINY, cwd=tmp_path) for _ in range(2)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    runs = sorted(p.parent for p in (tmp_path / "outputs" / "runs").rglob("summary.json"))
    assert len(runs) == 2
    pids = {json.loads((run / "summary.json").read_text())["pid"] for run in runs}
    assert pids == {proc.pid for proc in procs}  # each folder written by its own process alone
    for run in runs:
        assert not (run / LOCK_FILE).exists()  # the lock went with its writer
    printed = {line.split("run folder: ")[1].strip() for out, _ in outputs for line in out.splitlines()
               if "run folder: " in line}
    assert len(printed) == 2


def test_a_new_run_into_a_finished_runs_folder_is_refused(finished: Path):
    before = _files(finished)
    refused = cnnlab("train", *TINY, f"hydra.run.dir={finished}")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "already holds a run" in lines[0] and "resume=" in lines[0]
    assert _files(finished) == before


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(finished: Path, tmp_path: Path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run / LOCK_FILE).write_text(json.dumps({"pid": writer.pid, "host": socket.gethostname()}))
        before = _files(run)
        refused = cnnlab("train", f"resume={run}", "trainer.max_epochs=2")
        assert refused.returncode == 2
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "being written by another cnnlab process" in lines[0] and str(writer.pid) in lines[0]
        assert _files(run) == before
    finally:
        writer.kill()
        writer.wait()
    resumed = cnnlab("train", f"resume={run}", "trainer.max_epochs=2")  # the writer is gone: its lock is stale
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    assert not (run / LOCK_FILE).exists()


def test_lock_is_exclusive_between_processes(tmp_path: Path):
    lock = acquire(tmp_path / "run")
    owner = json.loads(lock.read_text())
    assert owner == {"pid": os.getpid(), "host": socket.gethostname()}
    other = subprocess.run([sys.executable, "-c", "from cnnlab.runs.lock import acquire; import sys; "
                            "acquire(sys.argv[1])", str(tmp_path / "run")], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert other.returncode != 0 and "being written by another cnnlab process" in other.stderr
    release(tmp_path / "run")
    assert not lock.exists()
