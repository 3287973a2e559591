"""`cnnlab inspect` and cnnlab/models/inside.py: the PNGs, Grad-CAM maps, conv stages and worst mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image
from torch import nn

from cnnlab.cli import main
from cnnlab.cli.common import restore_checked
from cnnlab.models import inside
from cnnlab.train.trained import build_prediction_datamodule, build_trained_module

TINY = ["dataset=synthetic", "dataset.image_size=16", "dataset.num_classes=3", "dataset.source.num_train=60",
        "dataset.source.num_test=30", "progress_bar=none", "trainer.max_epochs=2", "batch_size=16",
        "dataset.class_names=[circle,square,star]"]
PNGS = ["filters.png", "gradcam.png", "most_wrong.png", "per_class_accuracy.png"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inspect-runs")
    models = {"lenet": [], "resnet18": [], "mlp": ["model.hidden=[16]"]}
    for name, extra in models.items():
        assert main(["train", f"model={name}", *TINY, *extra, f"hydra.run.dir={root / name}"]) == 0
    return {name: root / name for name in models}


def trained(run: Path) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(module, normalised test images, their labels, their probabilities)."""
    restored = restore_checked(run)
    datamodule = build_prediction_datamodule(restored, load_data=True)
    module = build_trained_module(restored)
    images, labels = datamodule.splits["test"]
    inputs = datamodule.normalize(images)
    with torch.no_grad():
        probs = module.objective.probabilities(module.model(inputs))
    return module, inputs, labels, probs


@pytest.mark.slow
@pytest.mark.parametrize("model, last_stage", [("lenet", "features.4"), ("resnet18", "layer4")])
def test_inspect_writes_every_png(runs: dict[str, Path], model: str, last_stage: str,
                                  capsys: pytest.CaptureFixture):
    code, out, err = run_cli(capsys, "inspect", runs[model], "--class", "star")
    assert code == 0, err
    folder = runs[model] / "inspect"
    for name in PNGS:
        assert (folder / name).stat().st_size > 1000, name
        assert Image.open(folder / name).format == "PNG"
    features = sorted(folder.glob("features_*.png"))
    assert len(features) == 3  # one test image per class
    assert f"Grad-CAM at {last_stage}" in out
    assert "test split: 30 images" in out


def test_stages_are_found_for_seed_and_torchvision_networks(runs: dict[str, Path]):
    lenet, inputs, _, _ = trained(runs["lenet"])
    assert [s.name for s in inside.conv_stages(lenet.model, inputs)] == ["features.1", "features.4"]
    resnet, inputs, _, _ = trained(runs["resnet18"])
    stages = inside.conv_stages(resnet.model, inputs)
    assert [(s.name, s.size) for s in stages] == [("layer1", (16, 16)), ("layer2", (8, 8)), ("layer3", (4, 4)),
                                                   ("layer4", (2, 2))]
    assert inside.find_layer(resnet.model, inputs, "layer3.1.conv2").size == (4, 4)


@pytest.mark.parametrize("model", ["lenet", "resnet18"])
def test_grad_cam_maps_have_the_input_size_and_vary(runs: dict[str, Path], model: str):
    module, inputs, _, probs = trained(runs[model])
    layer = inside.find_layer(module.model, inputs, None).name
    cams = inside.grad_cam(module.model, inputs[:6], layer, probs[:6].argmax(1))
    assert cams.shape == (6, 16, 16)
    for cam in cams:
        assert float(cam.min()) >= 0 and float(cam.max()) == pytest.approx(1.0)  # scaled to [0, 1]
        assert float(cam.std()) > 0.01, "a Grad-CAM map must not be constant"


def test_grad_cam_formula_on_a_network_known_by_hand():
    """One 1x1 conv (identity) as the stage, then a linear score: the class-0 gradient is the score's weight map
    M, so Grad-CAM = relu(mean(M) * x), scaled to a peak of 1: the input itself over its maximum."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    head = nn.Linear(16, 2)
    with torch.no_grad():
        head.weight[0] = torch.linspace(0.1, 1.0, 16)  # mean > 0
        head.weight[1] = -torch.linspace(0.1, 1.0, 16)  # mean < 0: nothing pushes class 1 up
    model = nn.Sequential(conv, nn.Flatten(), head)
    images = torch.rand(2, 1, 4, 4) + 0.1
    cam = inside.grad_cam(model, images, "0", torch.tensor([0, 0]))
    expected = images[:, 0] / images.flatten(1).max(1).values.view(-1, 1, 1)
    assert torch.allclose(cam, expected, atol=1e-6)
    assert float(inside.grad_cam(model, images, "0", torch.tensor([1, 1])).abs().max()) == 0.0


@pytest.mark.slow
def test_most_confidently_wrong_are_wrong_and_sorted(runs: dict[str, Path], capsys: pytest.CaptureFixture):
    code, _, err = run_cli(capsys, "inspect", runs["lenet"], "--wrong", "5")
    assert code == 0, err
    rows = json.loads((runs["lenet"] / "inspect" / "most_wrong.json").read_text())
    _, _, labels, probs = trained(runs["lenet"])
    names = ["circle", "square", "star"]
    wrong_total = int((probs.argmax(1) != labels).sum())
    assert wrong_total > 0, "the two-step model must make mistakes for this test to mean anything"
    assert len(rows) == min(5, wrong_total)
    confidences = [row["confidence"] for row in rows]
    assert confidences == sorted(confidences, reverse=True)
    for row in rows:
        index = row["test_index"]
        assert row["true"] == names[int(labels[index])] and row["predicted"] != row["true"]
        assert row["predicted"] == names[int(probs[index].argmax())]
        assert row["confidence"] == pytest.approx(float(probs[index].max()), abs=1e-6)
    # no wrong image left out is more confident than the last one shown
    others = (probs.argmax(1) != labels).nonzero().flatten().tolist()
    shown = {row["test_index"] for row in rows}
    assert all(float(probs[i].max()) <= confidences[-1] + 1e-7 for i in others if i not in shown)


def test_per_class_accuracy():
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0], [0.1, 0.9, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])
    accuracy = inside.per_class_accuracy(probs, labels, 3)
    assert accuracy[:2].tolist() == pytest.approx([1.0, 2 / 3]) and torch.isnan(accuracy[2])


@pytest.mark.slow
def test_inspect_given_images_and_mlp(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture):
    pixels = (np.random.default_rng(0).random((20, 24)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "my digit.png")
    out = tmp_path / "pictures"
    code, stdout, err = run_cli(capsys, "inspect", runs["lenet"], tmp_path / "my digit.png", "--out", out,
                                "--layer", "features.1")
    assert code == 0, err
    assert (out / "features_my-digit.png").is_file() and "Grad-CAM at features.1" in stdout
    # An MLP has no conv layer: its first-layer weights as images, its mistakes and per-class accuracy only.
    code, stdout, err = run_cli(capsys, "inspect", runs["mlp"])
    assert code == 0, err
    written = sorted(p.name for p in (runs["mlp"] / "inspect").iterdir())
    assert written == ["filters.png", "most_wrong.json", "most_wrong.png", "per_class_accuracy.png"]
    assert "(no conv layer)" in stdout


@pytest.mark.parametrize("args, message", [
    (["--layer", "nope"], "--layer nope: not a module"),
    (["--layer", "classifier.0"], "its conv stages are features.1, features.4"),
    (["--class", "dog"], "--class='dog' is not allowed: a class name (circle, square, star)"),
    (["--wrong", "0"], "--wrong"),
])
@pytest.mark.slow
def test_bad_options_are_one_line(runs: dict[str, Path], args: list[str], message: str,
                                  capsys: pytest.CaptureFixture, tmp_path: Path):
    code, _, err = run_cli(capsys, "inspect", runs["lenet"], *args, "--out", tmp_path)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
