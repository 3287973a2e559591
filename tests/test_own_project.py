"""cnnlab in the user's own project: their config folders beside the built-in ones, `cnnlab init`, runs that
remember where their configs came from, tab completion (cnnlab/config.py, cli/listing.py, cli/init.py)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import cnnlab
from PIL import Image

from cnnlab.cli import main
from cnnlab.config import CONF_DIR, compose, split_config_dirs, user_config_dirs
from cnnlab.errors import ConfigError

# A user's package, on PYTHONPATH: a network with keys of its own (no activation/dropout/batch_norm/init keys); the
# dataset's channels, classes and size reach it as the keywords its signature names.
MYPKG = '''
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, in_channels, num_classes, image_size, hidden=8, doubled=False):
        super().__init__()
        width = hidden * (2 if doubled else 1)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, width), nn.ReLU(),
                                 nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)
'''

CONFIGS = {
    "model/tinynet.yaml": '''
        description: "my TinyNet (mypkg.TinyNet): its own keys"
        _target_: mypkg.TinyNet
        hidden: 6
        doubled: true
        ''',
    "dataset/tiny.yaml": '''
        description: "my tiny generated set: 3 classes of 8x8"
        defaults:
          - synthetic
          - _self_
        num_classes: 3
        image_size: 8
        source:
          num_train: 96
          num_test: 24
        ''',
    "experiment/mine.yaml": '''
        # @package _global_
        experiment:
          name: mine
          description: "my preset: TinyNet on my tiny set, one epoch"
        defaults:
          - override /model: tinynet
          - override /dataset: tiny
        batch_size: 32
        progress_bar: none
        trainer:
          max_epochs: 1
        ''',
    # A user option with a built-in name shadows it.
    "model/mlp.yaml": '''
        description: "my own mlp, shadowing the built-in"
        defaults:
          - tinynet
          - _self_
        hidden: 5
        doubled: false
        ''',
}


def write_configs(folder: Path) -> Path:
    for name, text in CONFIGS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    return folder


@pytest.fixture
def project(tmp_path: Path) -> dict[str, Path]:
    """A user's package folder (for PYTHONPATH), a config folder elsewhere, and an empty working folder."""
    (tmp_path / "pkgs" / "mypkg").mkdir(parents=True)
    (tmp_path / "pkgs" / "mypkg" / "__init__.py").write_text(MYPKG)
    (tmp_path / "work").mkdir()
    return {"pkgs": tmp_path / "pkgs", "conf": write_configs(tmp_path / "myconf"), "work": tmp_path / "work"}


def user_env(project: dict[str, Path]) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(project["pkgs"]), os.environ.get("PYTHONPATH")) if p)}


# ------------------------------------------------------------------ where the user's configs are found

def test_user_config_dirs_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    given, local, env_one = tmp_path / "given", tmp_path / "work" / "conf", tmp_path / "env"
    for folder in (given, local, env_one):
        folder.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("CNNLAB_CONFIG_PATH", os.pathsep.join([str(env_one), str(tmp_path / "absent"), str(local)]))
    assert user_config_dirs([given]) == [given.resolve(), local.resolve(), env_one.resolve()]
    with pytest.raises(ConfigError, match="config folder .*nope.* does not exist"):
        user_config_dirs([tmp_path / "nope"])
    assert split_config_dirs(["model=mlp", "--config-dir", "a", "--config-dir=b", "-cd", "c"]) == (
        ["a", "b", "c"], ["model=mlp"])
    with pytest.raises(ConfigError, match="--config-dir needs a folder"):
        split_config_dirs(["--config-dir"])


def test_user_options_sit_beside_the_builtin_ones(project: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture):
    monkeypatch.chdir(project["work"])
    conf = str(project["conf"])
    assert main(["list", "--config-dir", conf]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"config folders, searched in this order (an option found first shadows one of the same "
                          f"name further on): {project['conf']}, {CONF_DIR} (built-in)")
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "my TinyNet (mypkg.TinyNet): its own keys" in lines["tinynet"] and f"[{project['conf']}]" in lines["tinynet"]
    assert lines["tiny"].endswith(f"[{project['conf']}]") and "my preset" in lines["mine"]
    assert lines["mlp"].endswith(f"[{project['conf']} (shadows the built-in one)]")
    assert "lenet" in lines and "[" not in lines["lenet"]  # built-in options carry no folder
    assert main(["list", "model", "mlp", "--config-dir", conf]) == 0
    shown = capsys.readouterr().out
    assert shown.splitlines()[1] == f"# shadows {CONF_DIR / 'model' / 'mlp.yaml'}" and "hidden: 5" in shown
    # The working folder's conf/ is found with no flag; `cnnlab train --help` lists the same.
    (project["work"] / "conf").symlink_to(project["conf"])
    assert main(["train", "--help"]) == 0
    assert "my tiny generated set" in capsys.readouterr().out
    # Hydra composes the user's options, the shadowing one included (compose: lr-find, data show).
    cfg = compose(["model=mlp", "dataset=tiny"])
    assert cfg.model._target_ == "mypkg.TinyNet" and cfg.model.hidden == 5 and cfg.dataset.num_classes == 3
    assert compose(["experiment=mine"]).model.doubled is True


def test_unknown_user_folder_and_option_are_one_line(project: dict[str, Path]):
    result = cnnlab("list", "--config-dir", str(project["work"] / "nope"), cwd=project["work"])
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "does not exist" in result.stderr
    result = cnnlab("train", "--config-dir", str(project["conf"]), "model=tinynett", cwd=project["work"])
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "model=tinynett: no such option" in result.stderr and "tinynet" in result.stderr


def test_tab_completion_offers_user_options(project: dict[str, Path]):
    (project["work"] / "conf").symlink_to(project["conf"])
    result = cnnlab("-sc", "query=bash", cwd=project["work"], env={"COMP_LINE": "cnnlab train model=tin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["model=tinynet"]
    result = cnnlab("-sc", "install=bash", cwd=project["work"])
    assert result.stdout.rstrip().endswith("-F hydra_bash_completion cnnlab")


# ------------------------------------------------------------------ a run remembers its config folders

def write_pngs(folder: Path, count: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"img{index}.png"
        Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.mark.slow
def test_user_package_configs_train_resume_eval_predict(project: dict[str, Path]):
    """Own model class (own keys), own dataset config, own preset from a --config-dir folder: trains; resume=
    finds the folder again from the run's record, and resume=, eval and predict run the user's class once the user
    runs with that folder (CNNLAB_CONFIG_PATH here)."""
    env, work = user_env(project), project["work"]
    run = work / "run"
    result = cnnlab("train", "--config-dir", str(project["conf"]), "experiment=mine", f"hydra.run.dir={run}",
                    cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["choices"]["model"] == "tinynet"
    assert summary["choices"]["dataset"] == "tiny" and summary["experiment"] == "mine"
    assert summary["config_dirs"] == [str(project["conf"].resolve())] and summary["steps"] == 3  # 86 / 32
    assert summary["params"] == 64 * 12 + 12 + 12 * 3 + 3  # TinyNet(hidden=6, doubled) on 1x8x8, 3 classes

    # The run records its config folder, but a run folder is data: it may not extend what is trusted. The user's
    # class is allowed when the user runs with that folder (here through CNNLAB_CONFIG_PATH), or with --trust.
    result = cnnlab("train", f"resume={run}", "trainer.max_epochs=2", cwd=work, env=env)
    assert result.returncode == 2 and "mypkg.TinyNet" in result.stderr and "--config-dir" in result.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 3  # refused before anything was touched
    env = {**env, "CNNLAB_CONFIG_PATH": str(project["conf"])}
    result = cnnlab("train", f"resume={run}", "trainer.max_epochs=2", cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["steps"] == 6 and summary["resumed_from"]["step"] == 3

    result = cnnlab("eval", str(run), cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    assert "test split: 24 images" in result.stdout
    images = write_pngs(work / "images")
    result = cnnlab("predict", str(run), *map(str, images), "--format", "json", "--top-k", "3", cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    assert [p["image"] for p in predictions] == list(map(str, images))
    assert all(abs(sum(c["probability"] for c in p["predictions"]) - 1) < 1e-5 for p in predictions)

    # Without the user's package importable: one line naming the module and where the run was trained.
    result = cnnlab("predict", str(run), str(images[0]), cwd=work,
                    env={"CNNLAB_CONFIG_PATH": env["CNNLAB_CONFIG_PATH"]})
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"module 'mypkg' is not importable here: run cnnlab from {work.resolve()}" in result.stderr
    # A recorded folder that is gone: resume says so.
    project["conf"].rename(project["conf"].with_name("moved"))
    result = cnnlab("train", f"resume={run}", "trainer.max_epochs=3", cwd=work, env=env)
    assert result.returncode == 2 and "which no longer exists" in result.stderr


# ------------------------------------------------------------------ cnnlab init

def test_init_writes_a_starter_project_and_never_overwrites(tmp_path: Path):
    target = tmp_path / "proj"
    result = cnnlab("init", str(target))
    assert result.returncode == 0, result.stderr
    for name in ("my_models.py", "conf/model/my_model.yaml", "conf/dataset/my_images.yaml",
                 "conf/experiment/my_first.yaml", "README.md"):
        assert (target / name).is_file(), name
    assert sorted(p.name for p in (target / "data" / "my_images").iterdir()) == ["circle", "square", "stripes"]
    assert len(list((target / "data" / "my_images" / "circle").glob("*.png"))) == 40
    before = (target / "README.md").read_text()
    (target / "README.md").write_text("mine")
    result = cnnlab("init", str(target))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "already exists; nothing written" in result.stderr and (target / "README.md").read_text() == "mine"
    assert "cnnlab train experiment=my_first" in before
    listing = cnnlab("list", "experiment", cwd=target)
    assert "my_first" in listing.stdout and f"[{target.resolve() / 'conf'}]" in listing.stdout


@pytest.mark.slow
def test_init_project_trains_as_written(tmp_path: Path):
    """`cnnlab train experiment=my_first` in a fresh `cnnlab init` folder (its own class, its generated images)."""
    target = tmp_path / "proj"
    assert cnnlab("init", str(target)).returncode == 0
    result = cnnlab("train", "experiment=my_first", "trainer.max_epochs=1", "progress_bar=none", "hydra.run.dir=run",
                    cwd=target)
    assert result.returncode == 0, result.stderr
    summary = json.loads((target / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["choices"]["model"] == "my_model"
    assert summary["split_sizes"]["train"] + summary["split_sizes"]["val"] + summary["split_sizes"]["test"] == 120


@pytest.mark.slow
def test_data_show_and_lr_find_see_user_configs(project: dict[str, Path]):
    env, work, conf = user_env(project), project["work"], str(project["conf"])
    result = cnnlab("data", "show", "--config-dir", conf, "dataset=tiny", "--count", "4", "--out", "grid.png",
                    cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    assert "tiny (augmentation=none): 1 channel(s), 8x8, 3 classes" in result.stdout and (work / "grid.png").is_file()
    result = cnnlab("lr-find", "--config-dir", conf, "experiment=mine", "--steps", "4", "--output", "lr", cwd=work,
                    env=env)
    assert result.returncode == 0, result.stderr
    assert (work / "lr" / "lr_find.json").is_file()


@pytest.mark.slow
def test_sweep_in_parallel_processes_sees_user_configs(project: dict[str, Path]):
    """hydra/launcher=joblib: the jobs run in other processes with the same search path (and the ContextVars of
    cnnlab.api stay out of the pickled task)."""
    env, work = user_env(project), project["work"]
    result = cnnlab("train", "-m", "--config-dir", str(project["conf"]), "hydra/launcher=joblib",
                    "hydra.launcher.n_jobs=2", "experiment=mine", "model.hidden=4,6", "hydra.sweep.dir=sweep",
                    cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    summaries = [json.loads((work / "sweep" / str(job) / "summary.json").read_text()) for job in (0, 1)]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert [s["params"] for s in summaries] == [64 * h * 2 + h * 2 + h * 2 * 3 + 3 for h in (4, 6)]
    assert all(s["config_dirs"] == [str(project["conf"].resolve())] for s in summaries)
