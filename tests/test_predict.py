"""`cnnlab predict`: the same classes as the model's own forward pass, any image size or mode, clear errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from omegaconf import OmegaConf
from PIL import Image

from cnnlab.train.build import build_datamodule, build_module
from cnnlab.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def reference(trained_run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 12 test images (uint8) and the probabilities of the trained model's forward pass on them,
    computed the way `cnnlab train` tests: the datamodule's test batch through the module."""
    checkpoint = load_checkpoint(trained_run / "checkpoints" / "best.ckpt")
    cfg = OmegaConf.create(checkpoint["cnnlab"]["config"])
    datamodule = build_datamodule(cfg)
    datamodule.setup("test")
    module = build_module(cfg)
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    images = datamodule.splits["test"][0][:12]
    with torch.no_grad():
        probs = module.objective.probabilities(module(datamodule.normalize(images)))
    return images, probs


def save_png(array: np.ndarray, path: Path, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_predict_matches_the_forward_pass(trained_run: Path, reference, tmp_path: Path,
                                          capsys: pytest.CaptureFixture):
    images, probs = reference
    files = [save_png(images[i, 0].numpy(), tmp_path / f"img{i:02d}.png") for i in range(len(images))]
    code, out, err = run_cli(capsys, "predict", trained_run, *files, "--top-k", "10", "--format", "json")
    assert code == 0, err
    results = json.loads(out)
    assert [r["image"] for r in results] == [str(f) for f in files]
    assert len({r["predictions"][0]["index"] for r in results}) > 1, "the model must tell images apart"
    for result, expected in zip(results, probs):
        predicted = result["predictions"]
        assert predicted[0]["index"] == int(expected.argmax())
        values = [p["probability"] for p in predicted]
        assert values == sorted(values, reverse=True)
        assert sum(values) == pytest.approx(1.0, abs=1e-5)
        for p in predicted:
            assert p["probability"] == pytest.approx(float(expected[p["index"]]), abs=1e-6)
            assert p["class"] == str(p["index"])  # synthetic classes are named by their index


def test_predict_reads_any_mode_and_size(trained_run: Path, reference, tmp_path: Path,
                                         capsys: pytest.CaptureFixture):
    images, probs = reference
    gray = images[0, 0].numpy()
    folder = tmp_path / "images"
    folder.mkdir()
    save_png(gray, folder / "a_gray.png")
    save_png(np.stack([gray] * 3, axis=-1), folder / "b_rgb.png")
    Image.fromarray(np.stack([gray] * 3 + [np.full_like(gray, 128)], axis=-1), mode="RGBA").save(folder / "c_rgba.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "d_gray16.png")  # 16-bit PNG
    Image.fromarray(gray).convert("P").save(folder / "e_palette.png")
    Image.fromarray(gray).resize((71, 53)).convert("RGB").save(folder / "f_large.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image; skipped in folders")

    code, out, err = run_cli(capsys, "predict", trained_run, folder, "--top-k", "3", "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted({Path(r["image"]).name for r in rows}) == ["a_gray.png", "b_rgb.png", "c_rgba.png",
                                                               "d_gray16.png", "e_palette.png", "f_large.jpg"]
    by_image: dict[str, list[dict]] = {}
    for row in rows:
        by_image.setdefault(Path(row["image"]).name, []).append(row)
    expected_top = int(probs[0].argmax())
    for name, ranked in by_image.items():
        assert [int(r["rank"]) for r in ranked] == [1, 2, 3], name
        values = [float(r["probability"]) for r in ranked]
        assert values == sorted(values, reverse=True), name
    # The same pixels in gray, RGB, RGBA, 16-bit gray and palette form are the same input to the network.
    for name in ("a_gray.png", "b_rgb.png", "c_rgba.png", "d_gray16.png", "e_palette.png"):
        top = by_image[name][0]
        assert int(top["index"]) == expected_top, name
        assert float(top["probability"]) == pytest.approx(float(probs[0, expected_top]), abs=1e-5), name


def test_predict_table_output(trained_run: Path, reference, tmp_path: Path, capsys: pytest.CaptureFixture,
                              monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLUMNS", "300")  # rich's width off a terminal: room for the whole temporary path
    images, _ = reference
    image = save_png(images[1, 0].numpy(), tmp_path / "one.png")
    code, out, err = run_cli(capsys, "predict", trained_run / "checkpoints" / "last.ckpt", image, "--top-k", "2")
    assert code == 0, err
    header, row = [line for line in out.splitlines() if "#1" in line or "one.png" in line]
    assert "#2" in header and "#3" not in header
    assert str(image) in row and len(row.split("│")) == 5  # image, two classes, the borders


def test_predict_bad_images_exit_2(trained_run: Path, reference, tmp_path: Path, capsys: pytest.CaptureFixture):
    images, _ = reference
    good = save_png(images[0, 0].numpy(), tmp_path / "good.png")
    text = tmp_path / "text.png"
    text.write_text("this is not a PNG\n")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    cases = [
        ([text], "is not an image file"),
        ([good, truncated], "cannot read image"),
        ([tmp_path / "missing.png"], "does not exist"),
        ([empty_folder], "holds no image files"),
        ([good, "--top-k", "0"], "--top-k=0"),
        ([good, "--format", "xml"], "invalid choice: 'xml'"),
    ]
    for args, expected in cases:
        code, _, err = run_cli(capsys, "predict", trained_run, *args)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cnnlab: error: ") and expected in lines[0], (args, err)


def test_predict_piped_keeps_long_paths_whole(trained_run: Path, reference, tmp_path: Path,
                                              capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # piped, no width given: rich alone would fold at 80
    images, _ = reference
    folder = tmp_path / ("a_long_folder_name_of_holiday_photos_" * 3)
    folder.mkdir()
    image = save_png(images[2, 0].numpy(), folder / "cat on the sofa, 2026-11-29 08.43.png")
    code, out, err = run_cli(capsys, "predict", trained_run / "checkpoints" / "last.ckpt", image, "--top-k", "3")
    assert code == 0, err
    assert len(str(image)) > 120
    assert any(str(image) in line for line in out.splitlines())
