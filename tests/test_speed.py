"""Speed settings: thread and worker defaults from the CPUs really available, torch.compile, data on the device."""

from __future__ import annotations

import json
import os
import shutil
import sysconfig
from pathlib import Path

import pytest
import torch

from cnnlab import machine
from cnnlab.cli import main
from cnnlab.config import compose
from cnnlab.train import environment as speed
from cnnlab.train.build import build_datamodule
from cnnlab.train.callbacks import RunLog
from cnnlab.train.checkpoint import load_checkpoint

QUICK = ["dataset=synthetic", "model=mlp", "progress_bar=none"]


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2: 1.5 CPUs' worth of time -> 2 threads
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_quota_is_read_from_v1_and_v2_files(tmp_path: Path, files: dict[str, str], expected: int | None):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert machine._cgroup_quota(tmp_path) == expected


def test_auto_threads_and_workers_follow_the_available_cpus(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(speed, "_TORCH_DEFAULT", [32])  # torch's own default: the host's 32 physical cores
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(machine, "_cgroup_quota", lambda: 2)  # a 2-CPU container on that host
    assert machine.available_cpus() == 2
    assert (speed.thread_count("auto"), machine.worker_count("auto")) == (2, 1)
    monkeypatch.setattr(machine, "_cgroup_quota", lambda: None)  # the whole host: physical cores, not hyper-threads
    assert (speed.thread_count("auto"), machine.worker_count("auto")) == (32, machine.MAX_AUTO_WORKERS)
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0})
    assert (speed.thread_count("auto"), machine.worker_count("auto")) == (1, 0)
    assert (speed.thread_count(3), machine.worker_count(5)) == (3, 5)


def test_a_run_uses_and_records_its_thread_count_and_leaves_the_environment_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    seen = {}

    def watch(self, *args, **kwargs):
        seen.update({name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "PYTORCH_NVML_BASED_CUDA_CHECK")})

    monkeypatch.setattr(RunLog, "on_train_start", watch, raising=False)
    before = torch.get_num_threads()
    try:
        assert main(["train", *QUICK, "threads=1", "trainer.max_steps=2", "test=false",
                     f"hydra.run.dir={tmp_path}"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert seen == {"OMP_NUM_THREADS": "1", "PYTORCH_NVML_BASED_CUDA_CHECK": None}  # while it trained
    assert "OMP_NUM_THREADS" not in os.environ and os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"
    recorded = json.loads((tmp_path / "summary.json").read_text())["speed"]
    assert recorded["threads"] == 1 and recorded["device"] == "cpu" and recorded["compile"] is None
    assert recorded["data_on_device"] == []  # a CPU run keeps its data where it is


@pytest.mark.parametrize(("override", "allowed"), [
    ("threads=0", "auto or an integer >= 1"),
    ("num_workers=-1", "auto or an integer >= 0"),
    ("compile=fast", "true, false or a torch.compile mode"),
    ("data_on_device=maybe", "auto, true or false"),
])
def test_bad_speed_settings_get_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, override: str,
                                                    allowed: str):
    assert main(["train", *QUICK, override, f"hydra.run.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and allowed in err and "Traceback" not in err


def test_compile_on_a_cpu_without_a_compiler_says_what_to_install(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(speed.shutil, "which", lambda name: None)
    assert main(["train", *QUICK, "compile=true", f"hydra.run.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a C++ compiler" in err


@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "clang++", "c++"))
                    or not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists(),
                    reason="torch.compile on the CPU needs a C++ compiler and Python's headers")
@pytest.mark.slow
def test_compiled_run_matches_the_eager_one_and_its_checkpoint_loads_anywhere(tmp_path: Path):
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["compile=true"])):
        run = tmp_path / name
        assert main(["train", *QUICK, *extra, "trainer.max_epochs=2", "test=false", f"hydra.run.dir={run}"]) == 0
        runs[name] = json.loads((run / "summary.json").read_text())
    eager, compiled = runs["eager"]["final"], runs["compiled"]["final"]
    assert runs["compiled"]["speed"]["compile"] == "default"
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-3, abs=1e-5)
    assert compiled["val_acc"] == eager["val_acc"]
    # nn.Module.compile keeps the state_dict keys, so eval/predict/resume read the checkpoint as any other.
    keys = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.ckpt")["state_dict"].keys()
    assert not any("_orig_mod" in key for key in keys)
    assert main(["eval", str(tmp_path / "compiled")]) == 0


def test_data_on_device_copies_nothing_for_a_cpu_trainer():
    from types import SimpleNamespace

    datamodule = build_datamodule(compose(["dataset=synthetic", "data_on_device=true"]))
    datamodule.setup("fit")
    assert datamodule._on_device("train") is None  # no trainer yet
    datamodule.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    loader = datamodule.train_dataloader()
    assert datamodule._on_device("train") is None and datamodule.splits_on_device() == []
    assert loader.images.device.type == "cpu" and loader.images.data_ptr() != datamodule.splits["train"][0].data_ptr()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_data_on_the_gpu_trains_to_the_same_loss_as_copied_batches(tmp_path: Path):
    finals = {}
    for setting in ("true", "false"):
        run = tmp_path / setting
        assert main(["train", *QUICK, f"data_on_device={setting}", "trainer.accelerator=gpu", "trainer.max_epochs=2",
                     "test=false", "trainer.deterministic=true", f"hydra.run.dir={run}"]) == 0
        finals[setting] = json.loads((run / "summary.json").read_text())
    assert finals["true"]["speed"]["data_on_device"] == ["train", "val"]
    assert finals["false"]["speed"]["data_on_device"] == []
    assert finals["true"]["final"]["train_loss"] == pytest.approx(finals["false"]["final"]["train_loss"], rel=1e-5)
