"""`cnnlab predict`: class names and probabilities for image files, with the run's evaluation transform.

Images are read with Pillow (PNG, JPEG and the other formats it knows, any size or mode) into uint8 tensors,
then go through the datamodule's own code: `fit_images` (channels, resize) and `normalize` (the statistics the
run was trained with, saved in its checkpoint). Probabilities come from the run's Objective.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cnnlab.cli import Parser
from cnnlab.config import ConfigError
from cnnlab.data.datamodule import fit_images
from cnnlab.restore import Restored, build_prediction_datamodule, build_trained_module, fabric_for, restore

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
FORMATS = ("table", "json", "csv")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


@dataclass
class Prediction:
    image: str
    classes: list[tuple[int, str, float]]  # (index, name, probability), most probable first


def parser() -> Parser:
    parser = Parser(prog="cnnlab predict", description=(
        "Class names and probabilities for images, from a trained run's checkpoint or run folder."))
    parser.add_argument("path", help="a checkpoint (.ckpt) or a run folder")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR",
                        help=f"image files, or folders searched for {', '.join(IMAGE_SUFFIXES)} files")
    parser.add_argument("--top-k", type=int, default=3, help="how many classes per image (default 3)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: the run's)")
    parser.add_argument("--accelerator", help="cpu, gpu, auto... (default: the run's trainer.accelerator)")
    return parser


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.top_k < 1:
        raise ConfigError("--top-k", args.top_k, "an integer >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError("--batch-size", args.batch_size, "an integer >= 1")
    files = image_files(args.images)
    restored = restore(args.path)
    predictions = predict(restored, files, args.top_k, batch_size=args.batch_size, accelerator=args.accelerator)
    {"table": print_table, "json": print_json, "csv": print_csv}[args.format](predictions)
    return 0


def image_files(paths: list[str]) -> list[Path]:
    """The files named, and the image files found (recursively, sorted) in the folders named."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ConfigError("images", name, message=f"{name} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError("images", name, message=f"image {name} does not exist")
    return files


def read_image(path: Path) -> Tensor:
    """An image file as uint8 (1, C, H, W): C is 1 for grayscale modes and 3 otherwise (alpha dropped)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)  # phone JPEGs store their rotation in EXIF
            image.load()
            if image.mode in GRAY_MODES:
                pixels = _gray_uint8(np.asarray(image if image.mode != "LA" else image.getchannel("L")))
                array = pixels[None]
            else:
                array = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
    except UnidentifiedImageError:
        raise ConfigError("image", str(path), message=f"{path} is not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # truncated, corrupt, huge
        raise ConfigError("image", str(path), message=f"cannot read image {path}: {error}") from None
    return torch.from_numpy(np.array(array, dtype=np.uint8)).unsqueeze(0)  # a writable, contiguous copy


def _gray_uint8(pixels: np.ndarray) -> np.ndarray:
    """8-bit gray values from Pillow's gray modes (bilevel, 8-bit, 16-bit, 32-bit integer, float)."""
    if pixels.dtype == np.bool_:
        return pixels.astype(np.uint8) * 255
    if pixels.dtype == np.uint8:
        return pixels
    if np.issubdtype(pixels.dtype, np.floating):
        scale = 255.0 if pixels.max(initial=0) <= 1.0 else 1.0
        return np.clip(np.round(pixels * scale), 0, 255).astype(np.uint8)
    # 16-bit PNGs (and Pillow's 32-bit "I" mode holding them): 0..65535 -> 0..255
    return np.clip(np.round(pixels.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


@torch.inference_mode()
def predict(restored: Restored, files: list[Path], top_k: int, batch_size: int | None = None,
            accelerator: str | None = None) -> list[Prediction]:
    """Top-k classes with probabilities for each file, in the order given."""
    cfg = restored.cfg
    images = [fit_images(read_image(path), cfg.dataset.channels, cfg.dataset.image_size) for path in files]
    datamodule = build_prediction_datamodule(restored, load_data=False)
    module = build_trained_module(restored)
    fabric = fabric_for(cfg, accelerator)
    model = module.model.to(fabric.device)
    names = list(datamodule.class_names)
    k = min(top_k, len(names))
    results = []
    step = batch_size or cfg.batch_size
    for start in range(0, len(images), step):
        batch = datamodule.normalize(torch.cat(images[start: start + step]).to(fabric.device))
        with fabric.autocast():
            raw = model(batch)
        probs = module.objective.probabilities(raw).float().cpu()
        values, indices = probs.topk(k, dim=1)  # sorted: most probable first
        for offset, (row_values, row_indices) in enumerate(zip(values.tolist(), indices.tolist())):
            results.append(Prediction(str(files[start + offset]),
                                      [(i, names[i], p) for i, p in zip(row_indices, row_values)]))
    return results


def print_table(predictions: list[Prediction]) -> None:
    from rich.console import Console
    from rich.table import Table

    k = max(len(p.classes) for p in predictions)
    table = Table()
    table.add_column("image", overflow="fold")  # whole paths, wrapped, never cut
    for rank in range(1, k + 1):
        table.add_column(f"#{rank}")
    for prediction in predictions:
        table.add_row(prediction.image, *[f"{name} {prob:.4f}" for _, name, prob in prediction.classes])
    Console().print(table)


def print_json(predictions: list[Prediction]) -> None:
    data = [{"image": p.image, "predictions": [{"class": name, "index": index, "probability": prob}
                                                for index, name, prob in p.classes]} for p in predictions]
    print(json.dumps(data, indent=2))


def print_csv(predictions: list[Prediction]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "rank", "class", "index", "probability"])
    for prediction in predictions:
        for rank, (index, name, prob) in enumerate(prediction.classes, start=1):
            writer.writerow([prediction.image, rank, name, index, f"{prob:.6g}"])
    sys.stdout.write(buffer.getvalue())
