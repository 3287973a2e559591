"""Experiment presets (conf/experiment/): each composes and trains on generated data of the right shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_image_folder
from omegaconf import OmegaConf

from cnnlab.cli import main
from cnnlab.config import CONF_DIR, compose

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
QUICK = ["progress_bar=none", "trainer.max_epochs=1", "trainer.max_steps=2", "test=true"]


def data_overrides(preset: str, formats_dir: Path, tmp_path: Path) -> list[str]:
    """Where each preset's dataset lives in the tiny generated copies (never the real files)."""
    if preset == "cats_vs_dogs":
        root = make_image_folder(tmp_path / "pets", per_class=12)
        return [f"dataset.root={root}"]
    return [f"data_dir={formats_dir}", "dataset.source.system_dirs=[]", "dataset.source.download=false",
            "batch_size=16"]


def test_every_preset_is_listed_with_a_description():
    from cnnlab.cli.listing import show

    listing = show(["experiment"])
    for preset in PRESETS:
        line = next(line for line in listing.splitlines() if line.strip().startswith(preset + " "))
        written = OmegaConf.load(CONF_DIR / "experiment" / f"{preset}.yaml").experiment.description
        assert line.split(None, 1)[1].strip() == written and len(written) > 20


@pytest.mark.slow
def test_keras_preset_sets_the_source_run():
    cfg = compose(["experiment=keras_lenet_mnist"])
    assert (cfg.batch_size, cfg.val_fraction, cfg.trainer.max_epochs) == (1024, 0.2, 5)
    assert cfg.model._target_.endswith("KerasLeNet") and cfg.loss._target_.endswith("cross_entropy")
    assert cfg.dataset.source._target_.endswith("mnist") and cfg.experiment.name == "keras_lenet_mnist"
    # still overridable key by key
    assert compose(["experiment=keras_lenet_mnist", "batch_size=256"]).batch_size == 256


@pytest.mark.slow
@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "loss_comparison"])
def test_preset_trains_a_step(preset: str, formats_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    code = main(["train", f"experiment={preset}", *data_overrides(preset, formats_dir, tmp_path), *QUICK,
                 f"hydra.run.dir={run}"])
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["experiment"] == preset and summary["status"] == "completed"


@pytest.mark.slow
def test_loss_comparison_is_a_sweep_over_every_loss(fashion_dir: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    code = main(["train", "experiment=loss_comparison", f"data_dir={fashion_dir}", "dataset.source.system_dirs=[]",
                 "dataset.source.download=false", *QUICK, f"hydra.sweep.dir={sweep}"])
    assert code == 0
    losses = {json.loads(p.read_text())["choices"]["loss"] for p in sweep.glob("*/summary.json")}
    assert losses == {p.stem for p in (CONF_DIR / "loss").glob("*.yaml")}
    assert (sweep / "sweep_summary.md").exists()


def test_preset_with_missing_dataset_is_the_usual_one_line(tmp_path: Path, capsys):
    code = main(["train", "experiment=keras_lenet_mnist", f"data_dir={tmp_path / 'nothing'}",
                 "dataset.source.system_dirs=[]", "dataset.source.download=false", "progress_bar=none",
                 f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset 'mnist' not found" in err[0]


def test_speedrun_preset_composes_to_the_measured_recipe():
    cfg = compose(["experiment=fashion_mnist_speedrun"])
    assert cfg.experiment.name == "fashion_mnist_speedrun" and cfg.test is True
    assert cfg.model._target_ == "cnnlab.models.fast.FastCNN" and cfg.dataset.source._target_.endswith("fashion_mnist")
    assert cfg.scheduler._target_.endswith("onecycle") and cfg.loss.label_smoothing > 0
    # the test split stays out of training and validation: val comes from the training images
    assert 0 < cfg.val_fraction < 1 and cfg.dataset.get("test_fraction") is None
    # still overridable key by key, as the benchmark's --extra does
    assert compose(["experiment=fashion_mnist_speedrun", "trainer.max_epochs=1"]).trainer.max_epochs == 1
