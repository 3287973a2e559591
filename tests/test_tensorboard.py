"""TensorBoard extras (cnnlab/train/tensorboard.py): histograms, gradient norm per step, misclassified images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cnnlab.cli import main

TINY = ["dataset=synthetic", "dataset.image_size=8", "dataset.num_classes=3", "dataset.source.num_train=96",
        "dataset.source.num_test=24", "model=mlp", "model.hidden=[16]", "batch_size=32", "trainer.max_epochs=2",
        "progress_bar=none"]


def events(run: Path) -> object:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


@pytest.mark.slow
def test_extras_are_written_when_asked(tmp_path: Path):
    run = tmp_path / "run"
    assert main(["train", *TINY, "tensorboard.histograms_every=2", "tensorboard.grad_norm=true",
                 "tensorboard.misclassified=5", f"hydra.run.dir={run}"]) == 0
    steps = json.loads((run / "summary.json").read_text())["steps"]
    found = events(run)
    tags = found.Tags()
    parameters = ["classifier.0.weight", "classifier.0.bias", "classifier.2.weight", "classifier.2.bias"]
    for kind in ("weights", "gradients"):
        for name in parameters:
            assert [h.step for h in found.Histograms(f"{kind}/{name}")] == [2], (kind, name)  # every 2nd epoch
    norms = found.Scalars("train/grad_norm")
    assert [s.step for s in norms] == list(range(1, steps + 1))
    assert all(math.isfinite(s.value) and s.value > 0 for s in norms)
    assert [image.step for image in found.Images("val/misclassified")] == [1, 2]
    assert "val/misclassified" in tags["images"]


def test_off_by_default(trained_run: Path):
    tags = events(trained_run).Tags()
    assert not tags["histograms"] and "train/grad_norm" not in tags["scalars"]
    assert "val/misclassified" not in tags["images"]


def test_bad_settings_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    code = main(["train", *TINY, "tensorboard.histograms_every=-1", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "tensorboard.histograms_every=-1 is not allowed: an integer >= 0" in err
