"""`cnnlab inspect`: what a trained network learned, as PNGs in RUN/inspect/.

filters.png             the first layer's filters (an MLP's first-layer weights as images)
features_<image>.png    the strongest feature maps of each conv stage for an image (given, or a test image per class)
gradcam.png             Grad-CAM heat maps over the images for the predicted class (and for --class C)
most_wrong.png / .json  the most confidently wrong test images, with their true and predicted classes
per_class_accuracy.png  accuracy on each class's test images

The network and data are rebuilt from the run like `eval` and `predict` do; the stage Grad-CAM reads is the last
conv stage (cnnlab/models/inside.py) unless --layer names another module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cnnlab.cli.common import TRUST_HELP, Parser, restore_checked
from cnnlab.data.arrays import fit_images
from cnnlab.data.images import image_files, read_image
from cnnlab.errors import ConfigError
from cnnlab.models import inside
from cnnlab.runs import pictures
from cnnlab.runs.layout import INSPECT_DIR, shown
from cnnlab.train.trained import Restored, build_prediction_datamodule, build_trained_module, fabric_for

MAX_EXAMPLES = 12  # images drawn in gradcam.png and features_*.png
BATCH = 256


def parser() -> Parser:
    parser = Parser(prog="cnnlab inspect", description=(
        "PNGs of what a trained network learned (filters, feature maps, Grad-CAM, its worst mistakes, per-class "
        "accuracy) in RUN/inspect/."))
    parser.add_argument("path", help="a checkpoint (.ckpt) or a run folder")
    parser.add_argument("images", nargs="*", metavar="IMAGE_OR_DIR",
                        help=f"images for feature maps and Grad-CAM (default: one test image per class, at most "
                             f"{MAX_EXAMPLES})")
    parser.add_argument("--layer", help="the module Grad-CAM reads (default: the last conv stage)")
    parser.add_argument("--class", dest="class_", metavar="C", help="also draw Grad-CAM for this class (name or index)")
    parser.add_argument("--wrong", type=int, default=18, help="how many wrong test images to show (default 18)")
    parser.add_argument("--out", type=Path, help="folder for the PNGs (default: RUN/inspect/)")
    parser.add_argument("--accelerator", help="cpu, gpu, auto... (default: the run's trainer.accelerator)")
    parser.add_argument("--trust", action="store_true", help=TRUST_HELP)
    return parser


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.wrong < 1:
        raise ConfigError("--wrong", args.wrong, "an integer >= 1")
    files = image_files(args.images) if args.images else []
    restored = restore_checked(args.path, trust=args.trust)
    out_dir = args.out or (restored.run_dir or restored.checkpoint_path.parent) / INSPECT_DIR
    result = inspect(restored, out_dir, files, layer=args.layer, chosen_class=args.class_, wrong=args.wrong,
                     accelerator=args.accelerator)
    print(f"test split: {result['test_samples']} images, accuracy {result['accuracy']:.4f}, "
          f"{result['wrong_total']} wrong; Grad-CAM at {result['layer'] or '(no conv layer)'}")
    for path in result["written"]:
        print(f"wrote {shown(path)}")
    return 0


def class_index(value: str, names: list[str]) -> int:
    """A class given by name or index."""
    if value in names:
        return names.index(value)
    if value.isdigit() and int(value) < len(names):
        return int(value)
    shown_names = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    raise ConfigError("--class", value, f"a class name ({shown_names}) or an index 0..{len(names) - 1}")


def _uint8(images: Any, indices: Tensor, num_workers: int = 0) -> Tensor:
    """uint8 (B, C, H, W) images of a split, in memory or files decoded on demand (cnnlab.data.folders)."""
    picked = images[indices]
    return picked if isinstance(picked, Tensor) else picked.decode(num_workers)


@torch.inference_mode()
def test_probabilities(module: Any, datamodule: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    """Class probabilities of every test image (CPU float) and their labels."""
    images, labels = datamodule.splits["test"]
    chunks = []
    for start in range(0, len(labels), BATCH):
        batch = _uint8(images, torch.arange(start, min(start + BATCH, len(labels))), datamodule.num_workers)
        raw = module.model(datamodule.normalize(batch.to(device)))
        chunks.append(module.objective.probabilities(raw).float().cpu())
    return torch.cat(chunks), labels


def _examples(datamodule: Any, labels: Tensor, files: list[Path], cfg: Any) -> tuple[Tensor, list[str]]:
    """uint8 images for feature maps and Grad-CAM with a name each: the files given, else a test image per class."""
    if files:
        images = [fit_images(read_image(path), cfg.dataset.channels, cfg.dataset.image_size) for path in files]
        return torch.cat(images[:MAX_EXAMPLES]), [path.stem for path in files[:MAX_EXAMPLES]]
    picks = [int((labels == c).nonzero()[0]) for c in range(datamodule.num_classes) if (labels == c).any()]
    picks = picks[:MAX_EXAMPLES]
    images = _uint8(datamodule.splits["test"][0], torch.tensor(picks, dtype=torch.long), datamodule.num_workers)
    return images, [f"test{index}_{datamodule.class_names[int(labels[index])]}" for index in picks]


def _file_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:60]


def inspect(restored: Restored, out_dir: Path, files: list[Path], layer: str | None = None,
            chosen_class: str | None = None, wrong: int = 18, accelerator: str | None = None) -> dict[str, Any]:
    """Draw every inspect PNG into out_dir; what was computed (for the summary line and the tests)."""
    cfg = restored.cfg
    if cfg.dataset.get("multilabel", False):
        raise ConfigError("dataset.multilabel", True, message=(
            "cnnlab inspect reads single-label runs; this one is multi-label (no single predicted class)"))
    datamodule = build_prediction_datamodule(restored, load_data=True)
    names = list(datamodule.class_names)
    extra_class = class_index(chosen_class, names) if chosen_class is not None else None
    device = fabric_for(cfg, accelerator).device
    module = build_trained_module(restored).to(device).float()
    model = module.model
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError("--out", str(out_dir), message=f"cannot write to {out_dir}: {error.strerror}") from None

    probs, labels = test_probabilities(module, datamodule, device)
    examples, example_names = _examples(datamodule, labels, files, cfg)
    inputs = datamodule.normalize(examples.to(device))
    shown_images = examples.float().div(255).numpy()
    written: list[Path] = []
    title = f"{cfg.model.get('_target_', 'model').rsplit('.', 1)[-1]} ({restored.checkpoint_path.name})"

    filters = inside.first_layer_filters(model, cfg.dataset.channels, cfg.dataset.image_size)
    if filters is not None:
        name, weights = filters
        written.append(pictures.filter_grid(weights.numpy(), out_dir / "filters.png",
                                            f"{title}: first-layer filters ({name}, {len(weights)})"))

    stages = inside.conv_stages(model, inputs)
    chosen = inside.find_layer(model, inputs, layer) if stages or layer else None
    if stages:
        maps = inside.feature_maps(model, inputs, stages)
        for index, example in enumerate(example_names):
            written.append(pictures.feature_map_grid(
                shown_images[index], [(stage.name, maps[stage.name][index].numpy()) for stage in stages],
                out_dir / f"features_{_file_part(example)}.png", f"{title}: feature maps of {example}"))

    cams: dict[str, Tensor] = {}
    if chosen is not None:
        with torch.no_grad():
            example_probs = module.objective.probabilities(model(inputs).detach()).float().cpu()
        predicted = example_probs.argmax(1)
        cams["predicted"] = inside.grad_cam(model, inputs, chosen.name, predicted)
        columns, cells = ["image", f"Grad-CAM: predicted ({chosen.name})"], [
            [example, f"{names[int(p)]} {float(example_probs[i, p]):.2f}"] for i, (example, p)
            in enumerate(zip(example_names, predicted))]
        if extra_class is not None:
            cams["chosen"] = inside.grad_cam(model, inputs, chosen.name, torch.full_like(predicted, extra_class))
            columns.append(f"Grad-CAM: {names[extra_class]}")
            for i, row in enumerate(cells):
                row.append(f"{names[extra_class]} {float(example_probs[i, extra_class]):.2f}")
        written.append(pictures.grad_cam_grid(shown_images, [cam.numpy() for cam in cams.values()], columns, cells,
                                              out_dir / "gradcam.png", f"{title}: where the class score comes from"))

    worst = inside.most_confidently_wrong(probs, labels, wrong)
    confidence, predicted_test = probs.max(1)
    wrong_rows = [{"test_index": int(i), "true": names[int(labels[i])], "predicted": names[int(predicted_test[i])],
                   "confidence": float(confidence[i])} for i in worst]
    wrong_images = _uint8(datamodule.splits["test"][0], worst, datamodule.num_workers).float().div(255).numpy() \
        if len(worst) else shown_images[:0]
    written.append(pictures.labelled_images(
        wrong_images, [f"true {r['true']}\npred {r['predicted']} {r['confidence']:.2f}" for r in wrong_rows],
        out_dir / "most_wrong.png", f"{title}: the most confidently wrong test images"))
    from cnnlab.runs.write import atomic_write_text

    atomic_write_text(out_dir / "most_wrong.json", json.dumps(wrong_rows, indent=2) + "\n")
    written.append(out_dir / "most_wrong.json")

    accuracy = inside.per_class_accuracy(probs, labels, len(names))
    overall = float((predicted_test == labels).float().mean())
    written.append(pictures.accuracy_bars(accuracy.tolist(), names, out_dir / "per_class_accuracy.png",
                                          f"{title}: test accuracy per class (overall {overall:.3f})"))
    return {"written": written, "layer": chosen.name if chosen else None, "cams": cams, "wrong": wrong_rows,
            "test_samples": len(labels), "accuracy": overall, "wrong_total": int((predicted_test != labels).sum()),
            "example_names": example_names}
