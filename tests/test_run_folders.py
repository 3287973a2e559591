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
from tests.conftest import TINY, cnnlab


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_new_run_into_a_finished_runs_folder_is_refused(finished: Path):
    before = _files(finished)
    refused = cnnlab("train", *TINY, f"hydra.run.dir={finished}")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "already holds a run" in lines[0] and "resume=" in lines[0]
    assert _files(finished) == before


@pytest.mark.slow
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


# ------------------------------------------------------------------ relocatable runs

def _relocated(original: Path, tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """A copy of `original`, with the original moved away (its recorded absolute paths lead nowhere)."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    before = _files(original)
    away = tmp_path / "away"
    original.rename(away)
    return copy, away, before


def _image(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "x.png"
    Image.new("L", (8, 8), color=120).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["finished", "interrupted"])
def test_a_copied_run_resumes_evaluates_and_predicts_from_its_new_place(kind: str, tmp_path: Path):
    original = tmp_path / "original"
    extra = ["fault_injection.signal_at_step=3", "trainer.max_epochs=2"] if kind == "interrupted" else []
    made = cnnlab("train", *TINY, *extra, f"hydra.run.dir={original}")
    assert made.returncode == (143 if kind == "interrupted" else 0), made.stderr[-2000:]
    copy, away, before = _relocated(original, tmp_path)

    resumed = cnnlab("train", f"resume={copy}", "trainer.max_epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "dirpath has changed" not in resumed.stderr + resumed.stdout
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2 and summary["test"]
    assert summary["best_checkpoint"] == "checkpoints/best.ckpt"
    assert summary["resumed_from"]["checkpoint"] == "checkpoints/last.ckpt"
    evaluated = cnnlab("eval", str(copy))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads((copy / "eval" / "best_test.json").read_text())
    assert report["checkpoint"].startswith(str(copy)) and report["metrics"]["acc"] == pytest.approx(
        summary["test"]["test/acc"], abs=1e-6)
    predicted = cnnlab("predict", str(copy), str(_image(tmp_path)), "--format", "json")
    assert predicted.returncode == 0, predicted.stderr[-2000:]

    import torch

    state = torch.load(copy / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["callbacks"]
    recorded = [value for key, value in state.items() if key.startswith("ModelCheckpoint")]
    assert recorded and all(s["dirpath"] == "." and not os.path.isabs(s["best_model_path"]) for s in recorded)
    away.rename(original)
    assert _files(original) == before


@pytest.mark.slow
def test_legacy_run_with_absolute_paths_resumes_from_a_copy(tmp_path: Path):
    import shutil

    legacy = Path(__file__).resolve().parent / "data" / "legacy-0.1" / "interrupted"
    copy = tmp_path / "interrupted"
    shutil.copytree(legacy, copy)
    before = _files(legacy)
    resumed = cnnlab("train", f"resume={copy}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "dirpath has changed" not in resumed.stderr + resumed.stdout
    assert json.loads((copy / "summary.json").read_text())["best_checkpoint"] == "checkpoints/best.ckpt"
    assert _files(legacy) == before
