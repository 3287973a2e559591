"""What a newcomer reads when something is wrong: one line that names the key and says what to do next."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnlab.cli import main

TINY = ["dataset=synthetic", "dataset.image_size=8", "dataset.num_classes=3", "dataset.source.num_train=96",
        "dataset.source.num_test=24", "model=mlp", "model.hidden=[16]", "trainer.max_epochs=1", "progress_bar=none"]


def error_line(capsys: pytest.CaptureFixture, *args: str) -> str:
    """Run `cnnlab train ARGS`, expect exit code 2 and one error line; return that line."""
    assert main(["train", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: "), lines
    return lines[0]


@pytest.mark.parametrize(("override", "named", "suggested"), [
    ("optimizer.lrr=0.1", "'optimizer.lrr'", "'optimizer.lr'"),  # a typo inside a group keeps the group
    ("lr=0.1", "'lr'", "'optimizer.lr'"),  # a key that lives under a group
    ("lrr=0.1", "'lrr'", "'optimizer.lr'"),
    ("trainer.max_epoch=3", "'trainer.max_epoch'", "'trainer.max_epochs'"),
    ("seeed=3", "'seeed'", "'seed'"),
])
def test_unknown_key_names_the_full_key_and_the_closest_ones(capsys: pytest.CaptureFixture, override: str,
                                                             named: str, suggested: str):
    line = error_line(capsys, *TINY, override)
    assert f"unknown key {named}" in line
    assert f"did you mean {suggested}" in line
    assert "+" not in line  # following a `+key` hint would train with the typo silently ignored


def test_a_truly_new_key_is_offered_with_plus(capsys: pytest.CaptureFixture):
    line = error_line(capsys, *TINY, "myproject.flag=1")
    assert line == ("cnnlab: error: unknown key 'myproject': not in the config "
                    "(to add a key of your own, write +myproject=VALUE)")


def test_grammar_error_shows_how_to_quote(capsys: pytest.CaptureFixture, tmp_path: Path):
    line = error_line(capsys, *TINY, "dataset.root=~/cats_vs_dogs")
    assert "Exception" not in line and "hydra.cc" not in line
    assert line.endswith("""write 'dataset.root="~/cats_vs_dogs"'""")
    # ... and the quoted form is read as the path (here: a folder that is not there)
    line = error_line(capsys, "dataset=imagefolder", 'dataset.root="~/no_such_cnnlab_folder"',
                      f"hydra.run.dir={tmp_path / 'run'}")
    assert "dataset.root='~/no_such_cnnlab_folder' is not a folder" in line


def test_warmup_longer_than_the_run_reads_the_right_way(capsys: pytest.CaptureFixture, tmp_path: Path):
    line = error_line(capsys, *TINY, "scheduler=step", "scheduler.warmup_steps=500", f"hydra.run.dir={tmp_path}/r")
    assert "scheduler.warmup_steps=500 is not allowed: the whole run has only 2 optimizer steps" in line
    assert "give a warmup shorter than the run" in line


@pytest.mark.parametrize(("dataset", "files", "address"), [
    ("mnist", "train-images-idx3-ubyte.gz", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    ("kmnist", "t10k-labels-idx1-ubyte.gz", "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
    ("fashion_mnist", "train-labels-idx1-ubyte.gz", "https://github.com/zalandoresearch/fashion-mnist"),
    ("cifar10", "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar.html"),
])
def test_dataset_not_found_names_the_files_and_where_to_get_them(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, dataset: str,
                                                                 files: str, address: str):
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    empty = tmp_path / "data"
    line = error_line(capsys, f"dataset={dataset}", f"data_dir={empty}", "dataset.source.system_dirs=[]",
                      f"hydra.run.dir={tmp_path / 'run'}")
    assert f"dataset '{dataset}' not found" in line
    assert files in line and address in line and str(empty) in line
    assert not (tmp_path / "run").exists()  # a run refused before it began leaves no folder behind


@pytest.mark.parametrize(("override", "expected"), [
    ("progress_bar=fancy", "progress_bar='fancy' is not allowed: one of rich, tqdm, none, auto"),
    ("test=maybe", "test='maybe' is not allowed: true or false"),
    ("shuffle=2", "shuffle=2 is not allowed: true or false"),
    ("early_stopping.enabled=sometimes", "early_stopping.enabled='sometimes' is not allowed: true or false"),
    ("early_stopping.patience=0", "early_stopping.patience=0 is not allowed: an integer >= 1"),
    ("early_stopping.min_delta=-1", "early_stopping.min_delta=-1 is not allowed: a number >= 0"),
    ("diagnosis.underfit_acc=2", "diagnosis.underfit_acc=2 is not allowed: a number between 0 and 1"),
    ("diagnosis.overfit_epochs=0", "diagnosis.overfit_epochs=0 is not allowed: an integer >= 1"),
    ("monitor=val/accc",
     "monitor='val/accc' is not allowed: a metric the run logs: train/loss, train/acc, val/loss, val/acc"),
])
def test_enumerated_settings_are_checked_before_training(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                         override: str, expected: str):
    run = tmp_path / "run"
    line = error_line(capsys, *TINY, override, f"hydra.run.dir={run}")
    assert expected in line
    assert not run.exists()


def test_profiler_reports_are_the_files_its_description_names(tmp_path: Path, capsys: pytest.CaptureFixture):
    from omegaconf import OmegaConf

    from cnnlab.config import CONF_DIR

    description = OmegaConf.load(CONF_DIR / "debug" / "profiler.yaml").debug.description
    run = tmp_path / "run"
    assert main(["train", *TINY, "debug=profiler", "trainer.limit_train_batches=2", f"hydra.run.dir={run}"]) == 0
    written = sorted(p.name for p in run.glob("*profile*"))
    assert written == ["fit-profile.txt", "test-profile.txt"]
    assert all(name in description for name in written)
    assert main(["train", "--help"]) == 0
    assert "fit-profile.txt and test-profile.txt" in capsys.readouterr().out


def test_version_is_the_package_version(capsys: pytest.CaptureFixture):
    import tomllib

    version = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"cnnlab {version}\n"


def test_a_copied_torchvision_yaml_is_described_by_its_new_architecture(tmp_path: Path):
    from cnnlab.cli.listing import description
    from cnnlab.config import CONF_DIR

    assert description(CONF_DIR / "model" / "resnet18.yaml").startswith("ResNet-18 (torchvision): 11.2M params")
    folder = tmp_path / "model"
    folder.mkdir()
    copy = folder / "my_resnet.yaml"
    original = (CONF_DIR / "model" / "resnet18.yaml").read_text()
    copy.write_text(original.replace("arch: resnet18", "arch: resnet34"))
    assert description(copy).startswith("ResNet-34 (torchvision): 21.3M params")
    copy.write_text(original.replace("arch: resnet18", "arch: wide_resnet50_2"))
    assert description(copy) == ("wide_resnet50_2 (torchvision, adapted to the dataset's channels, classes and "
                                 "image size)")
