"""Files from elsewhere run no code: configs read back from checkpoints and run folders are checked against the
allow-list (cnnlab/config.py check_targets) before anything is imported or called."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from cnnlab.cli import main
from cnnlab.config import target_allowed
from tests.conftest import TINY, cnnlab


class _Marker:
    """A pickle that creates a file when loaded: the proof that code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').close()",))


@pytest.fixture
def victim(tmp_path: Path) -> dict[str, Path]:
    files = {"marker": tmp_path / "MARKER", "victim": tmp_path / "victim.txt", "evil": tmp_path / "evil.pkl"}
    files["victim"].write_text("precious\n")
    files["evil"].write_bytes(pickle.dumps(_Marker(files["marker"])))
    return files


def _untouched(files: dict[str, Path]) -> None:
    assert not files["marker"].exists()
    assert files["victim"].read_text() == "precious\n"


def _one_line(err: str, *words: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("cnnlab: error: ") and "allow-list" in lines[0]
    for word in words:
        assert word in lines[0]


def _crafted_checkpoint(run: Path, tmp_path: Path, change) -> Path:
    """A copy of the run's best checkpoint, away from any run folder, with its saved config changed."""
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    change(checkpoint["cnnlab"]["config"])
    path = tmp_path / "elsewhere" / "crafted.ckpt"
    path.parent.mkdir()
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("target", ["torch.load", "builtins.open", "os.system", "torch.hub.load", "builtins.exec",
                                    "subprocess.run", "torch.nn.functional.importlib", "torch.nn.Module.__init__"])
def test_names_off_the_list_are_refused(target: str):
    assert not target_allowed(target)


@pytest.mark.parametrize("target", ["torch.nn.Conv2d", "torch.optim.SGD", "torch.optim.lr_scheduler.StepLR",
                                    "torchvision.models.resnet18", "cnnlab.models.classic.MLP",
                                    "cnnlab.losses.nll", "cnnlab.train.losses.nll"])
def test_catalogue_and_building_blocks_pass(target: str):
    assert target_allowed(target)


def test_checkpoint_config_naming_torch_load_runs_nothing(tiny_run, tmp_path, victim, capsys):
    def evil(config):
        config["loss"] = {"_target_": "torch.load", "f": str(victim["evil"]), "weights_only": False}

    path = _crafted_checkpoint(tiny_run, tmp_path, evil)
    for command in (["eval", str(path)], ["predict", str(path), str(victim["victim"])]):
        assert main(command) == 2
        _one_line(capsys.readouterr().err, "loss._target_='torch.load'", str(path), "--trust")
        _untouched(victim)


def test_nested_target_inside_a_list_runs_nothing(tiny_run, tmp_path, victim, capsys):
    def evil(config):
        config["model"]["extra"] = [1, {"inner": [{"_target_": "os.system", "_args_": [f"touch {victim['marker']}"]}]}]

    path = _crafted_checkpoint(tiny_run, tmp_path, evil)
    assert main(["eval", str(path)]) == 2
    _one_line(capsys.readouterr().err, "model.extra[1].inner[0]._target_='os.system'")
    _untouched(victim)


def _crafted_folder(run: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "crafted-run"
    shutil.copytree(run, copy)
    config_file = copy / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    change(config)
    config_file.write_text(yaml.safe_dump(config))
    return copy


def test_run_folder_config_naming_builtins_open_runs_nothing(tiny_run, tmp_path, victim, capsys):
    def evil(config):
        config["dataset"]["source"] = {"_target_": "builtins.open", "_args_": [str(victim["victim"]), "w"]}

    folder = _crafted_folder(tiny_run, tmp_path, evil)
    assert main(["eval", str(folder)]) == 2
    _one_line(capsys.readouterr().err, "dataset.source._target_='builtins.open'", "config.yaml")
    _untouched(victim)
    assert not (folder / "eval").exists()


def test_interpolation_that_builds_a_target_is_judged_by_what_it_builds(tiny_run, tmp_path, victim, capsys):
    def evil(config):
        config["part"] = "tins.open"
        config["dataset"]["source"] = {"_target_": "buil${part}", "_args_": [str(victim["victim"]), "w"]}

    folder = _crafted_folder(tiny_run, tmp_path, evil)
    assert main(["eval", str(folder)]) == 2
    _one_line(capsys.readouterr().err, "'builtins.open'")
    _untouched(victim)


def test_resume_refuses_a_crafted_checkpoint_and_crafted_overrides(tiny_run, tmp_path, victim, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    last = copy / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    checkpoint["cnnlab"]["config"]["loss"] = {"_target_": "torch.load", "f": str(victim["evil"]),
                                              "weights_only": False}
    torch.save(checkpoint, last)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert main(["train", f"resume={copy}"]) == 2
    _one_line(capsys.readouterr().err, "loss._target_='torch.load'")
    _untouched(victim)

    shutil.rmtree(copy)
    shutil.copytree(tiny_run, copy)
    overrides = copy / ".hydra" / "overrides.yaml"
    extra = f"- ++loss._target_=os.system\n- '++loss._args_=[touch {victim['marker']}]'\n"
    overrides.write_text(overrides.read_text() + extra)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert main(["train", f"resume={copy}", "trainer.max_epochs=2"]) == 2
    _one_line(capsys.readouterr().err, "'os.system'", "overrides.yaml")
    _untouched(victim)
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


USER_MODEL = '''
import torch
from torch import nn

open("IMPORTED", "w").close()  # proof that this module was imported


class Tiny(nn.Module):
    def __init__(self, in_channels=1, image_size=8, num_classes=3, **_):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))

    def forward(self, x):
        return self.net(x)
'''


@pytest.mark.slow
def test_user_class_works_with_the_users_config_folder_or_trust(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "usermodels.py").write_text(USER_MODEL)
    run = project / "run"
    trained = cnnlab("train", *TINY[:5], "~model", "+model._target_=usermodels.Tiny", "+model.in_channels=1",
                     "+model.image_size=8", "trainer.max_epochs=1", "progress_bar=none", f"hydra.run.dir={run}",
                     cwd=project)
    assert trained.returncode == 0, trained.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (project / "IMPORTED").unlink()
    shutil.copy(project / "usermodels.py", elsewhere)  # importable there too: only the allow-list stops it
    refused = cnnlab("eval", str(run), cwd=elsewhere)
    assert refused.returncode == 2
    _one_line(refused.stderr, "model._target_='usermodels.Tiny'")
    assert not (elsewhere / "IMPORTED").exists()

    trusted = cnnlab("eval", str(run), "--trust", "--out", str(tmp_path / "out1"), cwd=elsewhere)
    assert trusted.returncode == 0, trusted.stderr
    assert (tmp_path / "out1" / "best_test.json").is_file()

    (project / "conf" / "model").mkdir(parents=True)
    (project / "conf" / "model" / "tiny.yaml").write_text("_target_: usermodels.Tiny\nin_channels: 1\n")
    allowed = cnnlab("eval", str(run), "--out", str(tmp_path / "out2"), cwd=project)
    assert allowed.returncode == 0, allowed.stderr
    assert (tmp_path / "out2" / "best_test.json").is_file()


def test_compare_instantiates_nothing(tiny_run, tmp_path, victim, capsys):
    def evil(config):
        config["loss"] = {"_target_": "torch.load", "f": str(victim["evil"]), "weights_only": False}
        config["dataset"]["source"] = {"_target_": "builtins.open", "_args_": [str(victim["victim"]), "w"]}

    folder = _crafted_folder(tiny_run, tmp_path, evil)
    assert main(["compare", str(folder), "--no-plot", "--format", "csv"]) == 0
    _untouched(victim)


@pytest.mark.parametrize(("task", "hydra"), [
    (["loss._target_=builtins.open"], []),
    (["seed=1"], ["+hydra.callbacks.evil._target_=os.system"]),
    (["seed=1"], ["hydra.job_logging.handlers.console.class=os.system"]),
], ids=["task-target", "hydra-callback", "hydra-logging"])
def test_a_crafted_sweep_folder_runs_nothing_on_resume(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       task: list[str], hydra: list[str]):
    """`cnnlab train -m resume=SWEEP_DIR` replays the sweep's saved overrides: they are data, allow-listed too."""
    import yaml

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    saved = {"hydra": {"overrides": {"task": task, "hydra": ["hydra.mode=MULTIRUN", *hydra]},
                       "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(saved))
    before = sorted(p.name for p in sweep.iterdir())
    assert main(["train", "-m", f"resume={sweep}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cnnlab: error: ") and "nothing was run" in err[0]
    assert sorted(p.name for p in sweep.iterdir()) == before
