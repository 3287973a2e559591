"""cnnlab installed as a wheel (and editable) in a fresh virtual environment, used from an unrelated folder:
the built-in configs come from the installed package, never from a source tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO


def run(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what is installed is importable
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}: {result.stderr[-2000:]}"
    return result


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_from_any_folder(tmp_path: Path):
    source = tmp_path / "source"  # a clean copy: the build leaves build/ and *.egg-info beside the sources
    shutil.copytree(REPO / "cnnlab", source / "cnnlab", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "wheels",
        source, cwd=tmp_path)
    (wheel,) = (tmp_path / "wheels").glob("cnnlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(REPO).as_posix() for p in (REPO / "cnnlab" / "conf").rglob("*.yaml")}
    assert len(shipped) > 50 and shipped <= names and "cnnlab/conf/hydra/launcher/slurm.yaml" in names

    venv = tmp_path / "venv"
    # torch & co. stay visible; this pip installs into the venv (--python), whose own older setuptools is not made
    run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv, cwd=tmp_path)
    python, command = venv / "bin" / "python", venv / "bin" / "cnnlab"
    pip = (sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q")
    run(*pip, wheel, cwd=tmp_path)
    user = tmp_path / "elsewhere"
    user.mkdir()
    location = run(python, "-c", "import cnnlab; print(cnnlab.__file__)", cwd=user).stdout.strip()
    assert Path(location).is_relative_to(venv), location

    listing = run(command, "list", cwd=user).stdout
    assert "  lenet " in listing and "  imagefolder " in listing and "  my_model " not in listing
    run(command, "init", "proj", cwd=user)
    project = user / "proj"
    assert "  my_model " in run(command, "list", "model", cwd=project).stdout
    train = run(command, "train", "experiment=my_first", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                "progress_bar=none", "hydra.run.dir=run", cwd=project)
    assert "run folder:" in train.stdout
    summary = json.loads((project / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert summary["config_dirs"] == [str((project / "conf").resolve())]
    run(command, "train", "resume=run", "trainer.max_epochs=2", cwd=project)
    summary = json.loads((project / "run" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["resumed_from"]["step"] == 2
    assert "test split: 36 images" in run(command, "eval", "run", cwd=project).stdout
    predicted = json.loads(run(command, "predict", "run", "data/my_images/square/000.png", "--format", "json",
                               cwd=project).stdout)
    assert {c["class"] for c in predicted[0]["predictions"]} == {"circle", "square", "stripes"}

    # An editable install of the same sources works as well (found through the source folder).
    run(*pip, "--no-build-isolation", "-e", source, cwd=tmp_path)
    location = run(python, "-c", "import cnnlab; print(cnnlab.__file__)", cwd=user).stdout.strip()
    assert Path(location) == source / "cnnlab" / "__init__.py"
    assert "  lenet " in run(command, "list", cwd=user).stdout
