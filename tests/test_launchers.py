"""Hydra launchers (conf/hydra/launcher, the plugins): parallel local runs with joblib, SLURM through submitit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import QUICK, make_image_folder

from cnnlab.cli import main


@pytest.mark.slow
def test_joblib_runs_jobs_in_parallel_processes(tmp_path: Path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[launchers]'")
    sweep = tmp_path / "sweep"
    code = main(["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "loss=ce,nll", "dataset=synthetic",
                 "model=mlp", "trainer.limit_train_batches=2", "test=false", *QUICK, f"hydra.sweep.dir={sweep}"])
    assert code == 0
    summaries = [json.loads((sweep / str(job) / "summary.json").read_text()) for job in (0, 1)]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert [s["choices"]["loss"] for s in summaries] == ["ce", "nll"]
    pids = {s["pid"] for s in summaries}
    assert len(pids) == 2 and os.getpid() not in pids, "each job runs in its own worker process"


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["true", "false"])  # decoded once by workers, or streamed by workers every epoch
def test_joblib_jobs_read_image_trees_with_dataloader_workers(tmp_path: Path, cache: str):
    """A loky worker's default start method is loky's own, whose Popen cannot start torch's DataLoader workers."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[launchers]'")
    images = make_image_folder(tmp_path / "images", per_class=6)
    sweep = tmp_path / "sweep"
    code = main(["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2", "dataset=imagefolder",
                 f"dataset.root={images}", "dataset.image_size=16", f"dataset.source.cache={cache}", "num_workers=1",
                 "model=mlp", "model.hidden=[8]", "test=false", *QUICK, f"hydra.sweep.dir={sweep}"])
    assert code == 0
    summaries = [json.loads((sweep / str(job) / "summary.json").read_text()) for job in (0, 1)]
    assert [s["status"] for s in summaries] == ["completed", "completed"]


def test_slurm_launcher_submits_a_script_with_partition_gpus_time_and_the_interrupt_signal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """`cnnlab train -m hydra/launcher=slurm ...` through the real submitit plugin, up to the sbatch script it would
    submit (no cluster here: a stand-in `srun` on PATH, and the submission itself is intercepted)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[launchers]'")
    import submitit

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    captured: list = []

    def map_array(self, *args, **kwargs):  # what the plugin submits: stop here, before sbatch
        captured.append(self)
        raise RuntimeError("submission intercepted by the test")

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    with pytest.raises(RuntimeError, match="intercepted"):
        main(["train", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
              "hydra.launcher.timeout_min=30", "loss=ce,nll", "dataset=synthetic", f"hydra.sweep.dir={tmp_path / 's'}"])
    (executor,) = captured
    script = executor._executor._make_submission_file_text("python -m cnnlab.cli train", "job")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=4", "#SBATCH --time=30"):
        assert line in script, script
    # SLURM warns the job with a signal before its time limit: cnnlab's interrupt handling saves a checkpoint
    assert "#SBATCH --signal=USR2@" in script or "#SBATCH --signal=" in script


def test_unknown_launcher_names_the_extra(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["train", "hydra/launcher=nope", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("cnnlab: error: hydra/launcher=nope: no such option; choose one of: basic")
    assert "slurm" in line and "pip install 'cnnlab[launchers]'" in line
