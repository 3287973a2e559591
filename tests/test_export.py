"""`cnnlab export`: TorchScript and ONNX files that compute what the PyTorch network computes, and their JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from cnnlab.cli import main
from cnnlab.cli.common import restore_checked
from cnnlab.train.trained import build_prediction_datamodule, build_trained_module

TINY = ["dataset=synthetic", "dataset.image_size=16", "dataset.num_classes=3", "dataset.source.num_train=60",
        "dataset.source.num_test=12", "progress_bar=none", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "dataset.class_names=[circle,square,star]"]
MODELS = {"lenet": [], "mlp": ["model.hidden=[16]"], "resnet18": []}
ONNX_MISSING = [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
needs_onnx = pytest.mark.skipif(bool(ONNX_MISSING), reason=(
    f"{', '.join(ONNX_MISSING)} not installed (pip install 'cnnlab[export]')"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny trained run per model (two training steps each)."""
    root = tmp_path_factory.mktemp("export-runs")
    made = {}
    for name, extra in MODELS.items():
        assert main(["train", f"model={name}", *TINY, *extra, f"hydra.run.dir={root / name}"]) == 0
        made[name] = root / name
    return made


def images_like_the_run(run: Path, count: int) -> torch.Tensor:
    """Real preprocessed input: the run's test images through its own normalisation."""
    restored = restore_checked(run)
    datamodule = build_prediction_datamodule(restored, load_data=True)
    return datamodule.normalize(datamodule.splits["test"][0][:count])


def pytorch_scores(run: Path, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return build_trained_module(restore_checked(run)).model(images)


def check_sidecar(path: Path, run: Path, fmt: str) -> dict:
    info = json.loads(path.read_text())
    assert info["format"] == fmt and info["class_names"] == ["circle", "square", "star"]
    datamodule = build_prediction_datamodule(restore_checked(run), load_data=False)
    assert info["input"]["mean"] == pytest.approx(datamodule.mean.flatten().tolist())
    assert info["input"]["std"] == pytest.approx(datamodule.std.flatten().tolist())
    assert info["input"]["channels"] == 1 and info["input"]["image_size"] == [16, 16]
    assert info["output"]["kind"] == "logits" and "softmax" in info["output"]["to_probabilities"]
    assert info["max_abs_difference"] <= 1e-4
    return info


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_torchscript_matches_pytorch(runs: dict[str, Path], model: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture):
    out = tmp_path / "net.pt"
    code, stdout, err = run_cli(capsys, "export", runs[model], "--format", "torchscript", "--out", out,
                                "--dynamic-batch")
    assert code == 0, err
    assert "max absolute difference" in stdout and f"wrote {out}" in stdout
    images = images_like_the_run(runs[model], 7)
    loaded = torch.jit.load(str(out))
    with torch.no_grad():
        difference = (loaded(images) - pytorch_scores(runs[model], images)).abs().max()
    assert float(difference) <= 1e-4
    check_sidecar(tmp_path / "net.pt.json", runs[model], "torchscript")


@pytest.mark.slow
@needs_onnx
@pytest.mark.parametrize("model", MODELS)
def test_onnx_matches_pytorch(runs: dict[str, Path], model: str, tmp_path: Path, capsys: pytest.CaptureFixture):
    import onnxruntime

    out = tmp_path / "net.onnx"
    code, stdout, err = run_cli(capsys, "export", runs[model], "--format", "onnx", "--out", out, "--dynamic-batch")
    assert code == 0, err
    info = check_sidecar(tmp_path / "net.onnx.json", runs[model], "onnx")
    assert info["input"]["shape"][0] == "batch" and info["opset"] >= 18
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = images_like_the_run(runs[model], 7)  # another batch size than the export's example
    scores = session.run(None, {info["input"]["name"]: images.numpy()})[0]
    assert scores.shape == (7, 3)
    assert np.abs(scores - pytorch_scores(runs[model], images).numpy()).max() <= 1e-4


@pytest.mark.slow
@needs_onnx
def test_onnx_fixed_batch_and_opset(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture):
    import onnx

    code, stdout, err = run_cli(capsys, "export", runs["lenet"], "--format", "onnx", "--opset", "18",
                                "--batch-size", "2")
    assert code == 0, err
    out = runs["lenet"] / "export" / "model.onnx"  # the default place
    model = onnx.load(str(out))
    assert [entry.version for entry in model.opset_import if entry.domain == ""] == [18]
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 1, 16, 16]
    assert json.loads((out.parent / "model.onnx.json").read_text())["input"]["shape"] == [2, 1, 16, 16]


def test_disagreement_fails_in_one_line(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch):
    """An export that computes something else (here: a saved file whose outputs are shifted) is refused."""
    from cnnlab.cli import export

    real = export._torchscript
    monkeypatch.setattr(export, "_torchscript", lambda *a: [o + 1e-3 for o in real(*a)])
    out = tmp_path / "net.pt"
    code, stdout, err = run_cli(capsys, "export", runs["lenet"], "--format", "torchscript", "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "disagrees with PyTorch" in err and "difference 0.001 over the tolerance 0.0001" in err
    assert not out.exists() and not (tmp_path / "net.pt.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--format", "tflite"], "invalid choice: 'tflite'"),
    (["--format", "torchscript", "--opset", "18"], "--opset applies to --format onnx only"),
    (["--format", "onnx", "--opset", "11"], "operator set 18 or newer"),
    (["--format", "torchscript", "--batch-size", "0"], "--batch-size"),
])
def test_bad_options_are_one_line(runs: dict[str, Path], args: list[str], message: str,
                                  capsys: pytest.CaptureFixture):
    code, _, err = run_cli(capsys, "export", runs["lenet"], *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_bad_paths_are_one_line(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture):
    code, _, err = run_cli(capsys, "export", tmp_path / "nowhere", "--format", "torchscript")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, "export", runs["lenet"], "--format", "torchscript", "--out", blocker / "x.pt")
    assert code == 2 and "cannot write to" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "export", runs["lenet"], "--format", "torchscript", "--out", tmp_path)
    assert code == 2 and "is a folder" in err


def test_onnx_without_the_extra_names_it(runs: dict[str, Path], capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    code, _, err = run_cli(capsys, "export", runs["lenet"], "--format", "onnx")
    assert code == 2 and "cnnlab[export]" in err and "onnxruntime" in err
