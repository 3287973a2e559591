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

import torch

from cnnlab.cli.common import TRUST_HELP, Parser, restore_checked
from cnnlab.data.arrays import fit_images
from cnnlab.data.images import IMAGE_EXTENSIONS, image_files, read_image
from cnnlab.data.tta import MODES
from cnnlab.errors import ConfigError
from cnnlab.train.trained import (
    Restored,
    build_prediction_datamodule,
    build_trained_module,
    fabric_for,
    run_tta,
    set_tta,
)

FORMATS = ("table", "json", "csv")


@dataclass
class Prediction:
    image: str
    classes: list[tuple[int, str, float]]  # (index, name, probability), most probable first


def parser() -> Parser:
    parser = Parser(prog="cnnlab predict", description=(
        "Class names and probabilities for images, from a trained run's checkpoint or run folder."))
    parser.add_argument("path", help="a checkpoint (.ckpt) or a run folder")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR",
                        help=f"image files, or folders searched for {', '.join(IMAGE_EXTENSIONS)} files")
    parser.add_argument("--top-k", type=int, default=3, help="how many classes per image (default 3)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: the run's)")
    parser.add_argument("--tta", choices=MODES, default=None, help=(
        "test-time augmentation: probabilities averaged over mirrored and/or shifted views (default: the run's "
        "own tta, which is none unless it was trained with one)"))
    parser.add_argument("--trust", action="store_true", help=TRUST_HELP)
    parser.add_argument("--accelerator", help="cpu, gpu, auto... (default: the run's trainer.accelerator)")
    return parser


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.top_k < 1:
        raise ConfigError("--top-k", args.top_k, "an integer >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError("--batch-size", args.batch_size, "an integer >= 1")
    files = image_files(args.images)
    # A --tta given replaces the saved one before the saved config is checked.
    restored = restore_checked(args.path, [f"++tta={args.tta}"] if args.tta else [], trust=args.trust)
    predictions = predict(restored, files, args.top_k, batch_size=args.batch_size, accelerator=args.accelerator,
                          tta=args.tta or run_tta(restored))
    {"table": print_table, "json": print_json, "csv": print_csv}[args.format](predictions)
    return 0


@torch.inference_mode()
def predict(restored: Restored, files: list[Path], top_k: int, batch_size: int | None = None,
            accelerator: str | None = None, tta: str = "none") -> list[Prediction]:
    """Top-k classes with probabilities for each file, in the order given (averaged over the `tta` views)."""
    cfg = restored.cfg
    images = [fit_images(read_image(path), cfg.dataset.channels, cfg.dataset.image_size) for path in files]
    datamodule = build_prediction_datamodule(restored, load_data=False)
    module = build_trained_module(restored)
    set_tta(module, cfg, tta)
    fabric = fabric_for(cfg, accelerator)
    module = module.to(fabric.device)
    names = list(datamodule.class_names)
    k = min(top_k, len(names))
    results = []
    step = batch_size or cfg.batch_size
    for start in range(0, len(images), step):
        batch = datamodule.normalize(torch.cat(images[start: start + step]).to(fabric.device))
        with fabric.autocast():
            probs = module.class_probabilities(batch).float().cpu()
        values, indices = probs.topk(k, dim=1)  # sorted: most probable first
        for offset, (row_values, row_indices) in enumerate(zip(values.tolist(), indices.tolist())):
            results.append(Prediction(str(files[start + offset]),
                                      [(i, names[i], p) for i, p in zip(row_indices, row_values)]))
    return results


def print_table(predictions: list[Prediction]) -> None:
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    k = max(len(p.classes) for p in predictions)
    table = Table()
    table.add_column("image", no_wrap=True)  # a path is never broken; the class columns wrap first
    for rank in range(1, k + 1):
        table.add_column(f"#{rank}")
    for prediction in predictions:
        table.add_row(prediction.image, *[f"{name} {prob:.4f}" for _, name, prob in prediction.classes])
    if sys.stdout.isatty():
        console = Console()
    else:  # piped: no terminal to fit, so every line as long as the table wants (paths whole, for grep and cut)
        probe = Console(width=10_000)
        console = Console(width=max(80, Measurement.get(probe, probe.options, table).maximum))
    console.print(table)


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
