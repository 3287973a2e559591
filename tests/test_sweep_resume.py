"""Continuing an interrupted multirun: `cnnlab train -m resume=SWEEP_DIR` (cnnlab/runs/sweep_resume.py)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch

from cnnlab.cli import main

TINY = ["dataset=synthetic", "dataset.image_size=8", "dataset.num_classes=3", "dataset.source.num_train=96",
        "dataset.source.num_test=24", "model=mlp", "model.hidden=[16]", "trainer.max_epochs=3", "progress_bar=none"]
SWEEP = ["train", "-m", "seed=0,1,2,3", *TINY]  # 4 jobs of 6 steps (2 a epoch)
KILL_AT = 4  # job 2 gets SIGTERM as its step 4 begins (the first step of epoch 2)


@pytest.fixture
def kill_job_2(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """Job 2 (seed=2) sends itself SIGTERM at step KILL_AT, through cnnlab's fault injection (train/failures.py).

    Set in every launch of job 2, so the config its checkpoint saved matches the one it resumes with; a resumed
    job starts after step KILL_AT and never sends it again."""
    import cnnlab.cli.train

    original = cnnlab.cli.train.run
    switch = {"on": True}

    def run(cfg):
        if cfg.seed == 2 and switch["on"]:
            cfg.fault_injection.signal_at_step = KILL_AT
        return original(cfg)

    monkeypatch.setattr(cnnlab.cli.train, "run", run)
    return switch


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_sigterm_in_job_2_then_resume_keeps_0_1_continues_2_and_runs_3(tmp_path: Path, kill_job_2: dict[str, bool],
                                                                        capsys: pytest.CaptureFixture):
    sweep = tmp_path / "sweep"
    assert main([*SWEEP, f"hydra.sweep.dir={sweep}"]) == 128 + 15  # stopped by SIGTERM, as a shell reports it
    err = capsys.readouterr().err
    assert f"resume with: cnnlab train -m resume={sweep}" in err
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2"]  # job 3 never started
    assert json.loads((sweep / "2" / "summary.json").read_text())["status"] == "interrupted"
    assert (sweep / "2" / "checkpoints" / "last.ckpt").is_file()
    kept = {job: files(sweep / job) for job in ("0", "1")}

    assert main(["train", "-m", f"resume={sweep}"]) == 0
    for job in ("0", "1"):
        assert files(sweep / job) == kept[job], f"job {job} was touched"
    summaries = {job: json.loads((sweep / job / "summary.json").read_text()) for job in ("0", "1", "2", "3")}
    assert all(s["status"] == "completed" for s in summaries.values())
    assert summaries["2"]["resumed_from"]["step"] == KILL_AT and summaries["2"]["steps"] == 6
    assert [s["seed"] for s in summaries.values()] == [0, 1, 2, 3]  # job numbers and folders of the first launch
    rows = list(csv.DictReader(io.StringIO((sweep / "sweep_summary.csv").read_text())))
    assert len(rows) == 1 and rows[0]["seeds"] == "4" and rows[0]["runs"] == "0 1 2 3"

    kill_job_2["on"] = False
    reference = tmp_path / "reference"  # job 2 of the same sweep, never interrupted
    assert main(["train", "-m", "seed=2", *TINY, f"hydra.sweep.dir={reference}"]) == 0
    expected, resumed = weights(reference / "0"), weights(sweep / "2")
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected), "job 2 did not resume exactly"
    uninterrupted = json.loads((reference / "0" / "summary.json").read_text())
    timeless = [{k: v for k, v in s["best"].items() if k != "epoch_time_s"} for s in (uninterrupted, summaries["2"])]
    assert timeless[0] == timeless[1] and uninterrupted["test"] == summaries["2"]["test"]


@pytest.mark.slow
def test_resume_refuses_a_changed_sweep_and_other_overrides(tmp_path: Path, capsys: pytest.CaptureFixture):
    sweep = tmp_path / "sweep"
    assert main(["train", "-m", "seed=0,1", *TINY, "trainer.max_epochs=1", "test=false",
                 f"hydra.sweep.dir={sweep}"]) == 0
    capsys.readouterr()
    assert main(["train", "-m", f"resume={sweep}", "optimizer.lr=0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optimizer.lr=0.1: a resumed sweep keeps its jobs' overrides" in err[0]
    kept = files(sweep / "0")
    assert main(["train", "-m", f"resume={sweep}"]) == 0  # every job done: nothing runs, nothing changes
    assert files(sweep / "0") == kept
    # the sweep's record says seed=0,1; a job folder that ran something else is refused, not overwritten
    (sweep / "1" / ".hydra" / "overrides.yaml").write_text("- seed=7\n")
    capsys.readouterr()
    assert main(["train", "-m", f"resume={sweep}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cnnlab: error: ") and "job 1 ran with seed=7" in err[-1]


@pytest.mark.slow
def test_failed_jobs_run_again_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture):
    import cnnlab.cli.train

    original = cnnlab.cli.train.run
    crash = {"on": True}

    def run(cfg):
        if cfg.seed == 1 and crash["on"]:
            raise RuntimeError("simulated crash in job 1")
        return original(cfg)

    monkeypatch.setattr(cnnlab.cli.train, "run", run)
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=0,1", *TINY, "trainer.max_epochs=1", "test=false"]
    try:
        main(["train", *args, f"hydra.sweep.dir={sweep}"])
    except RuntimeError:
        pass  # Hydra's basic sweeper re-raises a failed job's error once every job has run
    assert json.loads((sweep / "1" / "summary.json").read_text())["status"] == "failed"
    crash["on"] = False
    kept = files(sweep / "1")
    capsys.readouterr()
    assert main(["train", "-m", f"resume={sweep}"]) == 1  # not asked: the failed job stays failed, and says so
    assert files(sweep / "1") == kept
    assert f"1 of 2 runs failed (1); each one's summary.json says why (sweep folder {sweep}); to run them " \
           f"again: cnnlab train -m resume={sweep} rerun_failed=true" in capsys.readouterr().err
    assert main(["train", "-m", f"resume={sweep}", "rerun_failed=true"]) == 0
    assert json.loads((sweep / "1" / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_resume_with_the_joblib_launcher_keeps_job_numbers(tmp_path: Path):
    """A joblib sweep whose job 2 was cut off (its summary says interrupted) and whose job 3 never started."""
    import shutil

    sweep = tmp_path / "sweep"
    joblib = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    assert main(["train", "-m", "seed=0,1,2,3", *TINY, "trainer.max_epochs=1", "test=false", *joblib,
                 f"hydra.sweep.dir={sweep}"]) == 0
    summary = json.loads((sweep / "2" / "summary.json").read_text())
    (sweep / "2" / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    shutil.rmtree(sweep / "3")
    kept = {job: files(sweep / job) for job in ("0", "1")}
    assert main(["train", "-m", f"resume={sweep}"]) == 0  # the launcher comes back from multirun.yaml
    assert all(files(sweep / job) == kept[job] for job in ("0", "1"))
    resumed = json.loads((sweep / "2" / "summary.json").read_text())
    assert resumed["status"] == "completed" and resumed["resumed_from"]["step"] == summary["steps"]
    assert json.loads((sweep / "3" / "summary.json").read_text())["seed"] == 3
    hydra = yaml_load(sweep / "3" / ".hydra" / "hydra.yaml")["hydra"]
    assert hydra["job"]["num"] == 3 and hydra["runtime"]["choices"]["hydra/launcher"] == "joblib"


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


@pytest.mark.slow
def test_sigkill_during_job_2_then_resume_continues_it_exactly(tmp_path: Path):
    """SIGKILL leaves no summary and no goodbye: job 2 continues from the last epoch-end last.ckpt."""
    import os
    import signal
    import subprocess
    import sys
    import time

    # long enough that job 2 is still training when the kill comes, however fast the machine is
    long = [a for a in TINY if not a.startswith("trainer.max_epochs")] + ["trainer.max_epochs=150", "test=false"]
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    process = subprocess.Popen([sys.executable, "-m", "cnnlab", "train", "-m", "seed=0,1,2,3", *long,
                                f"hydra.sweep.dir={sweep}"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (sweep / "2" / "checkpoints" / "last.ckpt").is_file() and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # job 2 has its first epoch-end checkpoint
    process.wait()
    summary = json.loads((sweep / "2" / "summary.json").read_text())
    assert summary["status"] == "running" and not (sweep / "3").exists()
    kept = {job: files(sweep / job) for job in ("0", "1")}
    assert main(["train", "-m", f"resume={sweep}"]) == 0
    assert all(files(sweep / job) == kept[job] for job in ("0", "1"))
    resumed = json.loads((sweep / "2" / "summary.json").read_text())
    assert resumed["status"] == "completed" and resumed["resumed_from"]["step"] > 0
    assert json.loads((sweep / "3" / "summary.json").read_text())["status"] == "completed"
    reference = tmp_path / "reference"
    assert main(["train", "-m", "seed=2", *long, f"hydra.sweep.dir={reference}"]) == 0
    expected, got = weights(reference / "0"), weights(sweep / "2")
    assert all(torch.equal(expected[k], got[k]) for k in expected), "job 2 did not resume exactly"
