"""Hydra launchers (conf/hydra/launcher, the plugins): parallel local runs with joblib, SLURM through submitit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import QUICK
from hydra import compose, initialize_config_dir

from cnnlab.cli import main
from cnnlab.config import CONF_DIR


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


def test_slurm_launcher_config_names_partition_gpus_and_time():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[launchers]'")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                          "hydra.launcher.gpus_per_node=4", "hydra.launcher.timeout_min=30"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 4, 30)


def test_unknown_launcher_names_the_extra(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["train", "hydra/launcher=nope", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("cnnlab: error: hydra/launcher=nope: no such option; choose one of: basic")
    assert "slurm" in line and "pip install 'cnnlab[launchers]'" in line
