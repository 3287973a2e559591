"""cnnlab from Python (cnnlab/api.py): runs in one process without leaks, loading for inference, comparing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY, cnnlab
from PIL import Image

import cnnlab as package
from cnnlab.errors import ConfigError


def test_import_stays_light_and_names_resolve():
    script = ("import sys, cnnlab\n"
              "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'hydra', 'pytorch_lightning'))\n"
              "from cnnlab import api\n"
              "print(heavy, cnnlab.run is api.train, cnnlab.load is api.load, cnnlab.compare is api.compare)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "True", "True", "True"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        package.nope  # noqa: B018


@pytest.mark.slow
def test_two_runs_in_one_process_load_and_compare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.chdir(tmp_path)
    argv = list(sys.argv)
    first = package.run([*TINY, "loss=ce", "hydra.run.dir=first"])
    second = package.run([*TINY, "loss=nll", "seed=7", "trainer.max_epochs=2", "hydra.run.dir=second"])
    assert sys.argv == argv and not GlobalHydra.instance().is_initialized()
    assert first.dir == tmp_path / "first" and second.dir == tmp_path / "second"
    assert first.summary["choices"]["loss"] == "ce" and first.summary["seed"] == 42
    assert second.summary["choices"]["loss"] == "nll" and second.summary["seed"] == 7
    assert [row["epoch"] for row in first.metrics] == [1] and [row["epoch"] for row in second.metrics] == [1, 2]
    assert first.status == "completed" and 0 <= first.metrics[0]["val_acc"] <= 1
    assert len(first.plot().axes) == 2

    # Inference: the same probabilities as `cnnlab predict` on the same files.
    rng = np.random.default_rng(0)
    images = []
    for index in range(4):
        path = tmp_path / f"img{index}.png"
        Image.fromarray(rng.integers(0, 256, size=(12, 10), dtype=np.uint8)).save(path)
        images.append(path)
    trained = package.load(first)
    assert trained.class_names == ["0", "1", "2"] and not trained.model.training
    probabilities = trained.predict(images)
    assert tuple(probabilities.shape) == (4, 3)
    result = cnnlab("predict", str(first.dir), *map(str, images), "--format", "json", "--top-k", "3")
    assert result.returncode == 0, result.stderr
    for row, predicted in zip(probabilities.tolist(), json.loads(result.stdout)):
        by_class = {c["index"]: c["probability"] for c in predicted["predictions"]}
        assert row == pytest.approx([by_class[i] for i in range(3)], abs=1e-6)
    assert package.load(first.dir / "checkpoints" / "last.ckpt").checkpoint.name == "last.ckpt"

    table = package.compare([first, second.dir])
    assert sorted(row["loss"] for row in table) == ["ce", "nll"]
    by_loss = {row["loss"]: row for row in table}
    assert by_loss["ce"]["test_acc"] == pytest.approx(first.summary["test"]["test/acc"], abs=1e-9)
    assert by_loss["nll"]["params"] == second.summary["params"]


@pytest.mark.slow
def test_errors_raise_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"model=nope: no such option; choose one of: .*lenet"):
        package.run(["model=nope"])
    with pytest.raises(ConfigError, match="optimizer.lr"):  # raised inside the run, by validate
        package.run([*TINY, "optimizer.lr=-1", "hydra.run.dir=bad"])
    with pytest.raises(ConfigError, match="trains one configuration"):
        package.run(["-m", "loss=ce,nll"])
    with pytest.raises(ConfigError, match="does not exist"):
        package.load(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="config folder"):
        package.run(TINY, config_dir=tmp_path / "absent")
