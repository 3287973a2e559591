"""Test-time augmentation (cnnlab/data/tta.py) in `eval` and `predict`: averaged view probabilities, refused flips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from omegaconf import OmegaConf
from PIL import Image

from cnnlab.cli import main
from cnnlab.cli.common import restore_checked
from cnnlab.config import CONF_DIR
from cnnlab.data import tta
from cnnlab.train.trained import build_prediction_datamodule, build_trained_module


def test_views():
    images = torch.arange(2 * 1 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    assert [len(tta.views(images, mode)) for mode in tta.MODES] == [1, 2, 5, 10]
    plain, mirrored = tta.views(images, "flip")
    assert torch.equal(plain, images) and torch.equal(mirrored, images.flip(-1))
    _, up, down, left, right = tta.views(images, "shift")  # one pixel on a 16 px image
    assert torch.equal(up[..., :-1, :], images[..., 1:, :]) and torch.equal(up[..., -1, :], images[..., -1, :])
    assert torch.equal(down[..., 1:, :], images[..., :-1, :]) and torch.equal(down[..., 0, :], images[..., 0, :])
    assert torch.equal(left[..., :-1], images[..., 1:]) and torch.equal(right[..., 1:], images[..., :-1])
    assert tta.shift_pixels(32) == 2 and tta.shift_pixels(8) == 1


def test_eval_with_flip_averages_the_two_views(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    code, out, err = run_cli(capsys, "eval", trained_run, "tta=flip", "--out", tmp_path)
    assert code == 0, err
    report = json.loads((tmp_path / "best_test_tta-flip.json").read_text())
    assert report["tta"] == "flip" and "test-time augmentation flip" in out

    restored = restore_checked(trained_run)
    datamodule = build_prediction_datamodule(restored, load_data=True)
    model = build_trained_module(restored).model
    images, labels = datamodule.splits["test"]
    inputs = datamodule.normalize(images)
    with torch.no_grad():
        plain, mirrored = model(inputs).softmax(1), model(inputs.flip(-1)).softmax(1)
    assert float((plain - mirrored).abs().max()) > 0.05, "the flip must change the output for this test to mean it"
    mean = (plain + mirrored) / 2
    expected = torch.zeros(10, 10, dtype=torch.long)
    expected.index_put_((labels, mean.argmax(1)), torch.ones(len(labels), dtype=torch.long), accumulate=True)
    assert report["confusion_matrix"] == expected.tolist()
    assert report["metrics"]["acc"] == pytest.approx(float((mean.argmax(1) == labels).float().mean()), abs=1e-6)
    code, _, err = run_cli(capsys, "eval", trained_run, "--out", tmp_path)
    assert code == 0, err
    plain_report = json.loads((tmp_path / "best_test.json").read_text())
    assert plain_report["tta"] == "none"
    expected_plain = torch.zeros(10, 10, dtype=torch.long)
    expected_plain.index_put_((labels, plain.argmax(1)), torch.ones(len(labels), dtype=torch.long), accumulate=True)
    assert plain_report["confusion_matrix"] == expected_plain.tolist() != expected.tolist()


def test_predict_with_flip_gives_the_mean_of_the_two_views(trained_run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture):
    restored = restore_checked(trained_run)
    datamodule = build_prediction_datamodule(restored, load_data=True)
    model = build_trained_module(restored).model
    images = datamodule.splits["test"][0][:6]
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(image[0].numpy()).save(files[-1])
    code, out, err = run_cli(capsys, "predict", trained_run, *files, "--tta", "flip", "--top-k", "10",
                             "--format", "json")
    assert code == 0, err
    inputs = datamodule.normalize(images)
    with torch.no_grad():
        plain, mirrored = model(inputs).softmax(1), model(inputs.flip(-1)).softmax(1)
    assert float((plain - mirrored).abs().max()) > 0.05
    for result, expected in zip(json.loads(out), (plain + mirrored) / 2):
        got = np.zeros(10)
        for entry in result["predictions"]:
            got[entry["index"]] = entry["probability"]
        assert got == pytest.approx(expected.numpy(), abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["eval", "predict"])
def test_flips_refused_where_the_dataset_disallows_them(trained_run: Path, tmp_path: Path, command: str,
                                                        capsys: pytest.CaptureFixture):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(image)
    args = ["eval", trained_run, "tta=flip_shift", "dataset.flip_ok=false"] if command == "eval" else [
        "predict", trained_run, image, "--tta", "flip"]
    if command == "predict":  # a run of a dataset whose YAML says flip_ok: false
        run = tmp_path / "digits"
        assert main(["train", "dataset=digits", "dataset.image_size=8", "model=mlp", "model.hidden=[8]",
                     "progress_bar=none", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                     f"hydra.run.dir={run}"]) == 0
        args[1] = run
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "does not allow flips" in err and "tta=shift" in err


def test_shift_is_allowed_without_flips_and_unknown_modes_are_one_line(trained_run: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture):
    code, _, err = run_cli(capsys, "eval", trained_run, "tta=shift", "dataset.flip_ok=false", "--out", tmp_path)
    assert code == 0, err
    assert json.loads((tmp_path / "best_test_tta-shift.json").read_text())["tta"] == "shift"
    code, _, err = run_cli(capsys, "eval", trained_run, "tta=rotate")
    assert code == 2 and "tta='rotate' is not allowed: one of none, flip, shift, flip_shift" in err


def test_digit_datasets_disallow_flips():
    flags = {path.stem: OmegaConf.load(path).flip_ok for path in sorted((CONF_DIR / "dataset").glob("*.yaml"))}
    assert {name for name, ok in flags.items() if not ok} == {"mnist", "emnist", "kmnist", "digits", "svhn"}
    assert flags["cifar10"] and flags["fashion_mnist"]


@pytest.mark.slow
def test_train_tests_with_its_tta_and_eval_and_predict_of_the_run_follow_it(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture):
    run = tmp_path / "run"
    assert main(["train", "dataset=synthetic", "progress_bar=none", "trainer.max_epochs=1", "tta=flip",
                 f"hydra.run.dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_tta"] == "flip"
    code, _, err = run_cli(capsys, "eval", run, "--out", tmp_path / "eval")
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "best_test_tta-flip.json").read_text())  # the run's own tta
    assert report["tta"] == "flip"
    assert report["metrics"]["acc"] == pytest.approx(summary["test"]["test/acc"], abs=1e-6)
    code, _, err = run_cli(capsys, "eval", run, "tta=none", "--out", tmp_path / "eval")
    assert code == 0, err
    assert json.loads((tmp_path / "eval" / "best_test.json").read_text())["tta"] == "none"

    restored = restore_checked(run)
    datamodule = build_prediction_datamodule(restored, load_data=True)
    images = datamodule.splits["test"][0][:4]
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy().squeeze()).save(files[-1])
    outputs = {}
    for extra in ([], ["--tta", "flip"], ["--tta", "none"]):
        code, out, err = run_cli(capsys, "predict", run, *files, "--top-k", "10", "--format", "json", *extra)
        assert code == 0, err
        outputs[" ".join(extra)] = json.loads(out)
    assert outputs[""] == outputs["--tta flip"] != outputs["--tta none"]

    import cnnlab

    trained = cnnlab.load(run)  # the Python API predicts as the command does
    for extra, mode in (("", None), ("--tta none", "none")):
        expected = {entry["index"]: entry["probability"] for entry in outputs[extra][0]["predictions"]}
        got = trained.predict(files[:1], tta=mode)[0]
        assert [float(got[i]) for i in sorted(expected)] == pytest.approx([expected[i] for i in sorted(expected)],
                                                                          abs=1e-6)

    # Validation saw the images alone: split=val defaults to none and gives back the run's best val_acc.
    code, _, err = run_cli(capsys, "eval", run, "split=val", "--out", tmp_path / "val")
    assert code == 0, err
    report = json.loads((tmp_path / "val" / "best_val.json").read_text())
    assert report["tta"] == "none"
    assert report["metrics"]["acc"] == pytest.approx(summary["best"]["val_acc"], abs=1e-6)
    # A tta given on the command line replaces the saved one before the saved config is checked.
    code, _, err = run_cli(capsys, "eval", run, "dataset.flip_ok=false", "tta=none", "--out", tmp_path / "x")
    assert code == 0, err
    code, _, err = run_cli(capsys, "eval", run, "dataset.flip_ok=false", "--out", tmp_path / "x")
    assert code == 2 and "does not allow flips" in err


@pytest.mark.parametrize("tta, dataset", [("flip", "digits"), ("rotate", "synthetic"),
                                          ("flip", "digits dataset.flip_ok='false'")])
def test_train_refuses_a_tta_before_training(tmp_path: Path, capsys: pytest.CaptureFixture, tta: str, dataset: str):
    code, _, err = run_cli(capsys, "train", *f"dataset={dataset}".split(), f"tta={tta}",
                           f"hydra.run.dir={tmp_path / 'r'}")
    assert code == 2 and len(err.strip().splitlines()) == 1
    if "flip_ok" in dataset:  # a string would read as true: flips on digits
        assert "dataset.flip_ok='false' is not allowed: true or false" in err
    elif tta == "flip":
        assert "does not allow flips" in err
    else:
        assert "one of none, flip, shift, flip_shift" in err
    assert not (tmp_path / "r" / "summary.json").exists()
