"""`cnnlab export`: a trained network as TorchScript or ONNX, with its preprocessing in a JSON file beside it.

The exported graph is the network alone (what the checkpoint's `state_dict` holds): it reads float images already
resized and normalised, and returns the raw output; the JSON says how to get there and back (channels, size,
mean/std, and how the raw output becomes class probabilities). Before anything is reported, the exported file is
run on a batch of images (random pixels through the run's own normalisation) by its own runtime (torch.jit.load,
onnxruntime) and compared with the PyTorch network: a difference over the tolerance is one line and exit 2.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnlab.cli.common import TRUST_HELP, Parser, restore_checked
from cnnlab.errors import ConfigError
from cnnlab.runs.layout import EXPORT_DIR
from cnnlab.train.trained import Restored, build_prediction_datamodule, build_trained_module

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
# The exporter torch keeps (torch.export based) writes opset 18 and newer; it silently keeps 18 for lower requests.
MIN_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "images", "scores"
EXTRA_HINT = "pip install 'cnnlab[export]' (onnx, onnxscript and onnxruntime)"
# How the network's raw output becomes what `cnnlab predict` shows, per loss head (cnnlab/train/losses.py).
OUTPUT_MEANING = {
    "logits": ("logits", "softmax over axis 1"),
    "log_probs": ("logits", "softmax over axis 1 (the loss took log_softmax of them)"),
    "probs": ("logits", "softmax over axis 1"),
    "sigmoid": ("logits", "sigmoid of each unit; with one unit for two classes: [1 - sigmoid, sigmoid]; "
                          "single-label runs divide the sigmoids by their sum"),
}


def parser() -> Parser:
    parser = Parser(prog="cnnlab export", description=(
        "Export a trained network to TorchScript or ONNX, checked against PyTorch on a batch; the preprocessing "
        "(channels, input size, mean/std, class names) goes to a JSON file beside it."))
    parser.add_argument("path", help="a checkpoint (.ckpt) or a run folder")
    parser.add_argument("--format", required=True, choices=tuple(FORMATS), help="torchscript or onnx")
    parser.add_argument("--out", type=Path, help="the file to write (default: RUN/export/model.pt or model.onnx); "
                                                 "the JSON goes beside it, FILE.json")
    parser.add_argument("--opset", type=int, help=f"ONNX operator set ({MIN_OPSET} or newer; default: the "
                                                  "exporter's)")
    parser.add_argument("--dynamic-batch", action="store_true",
                        help="any batch size (default: the batch size of --batch-size only)")
    parser.add_argument("--batch-size", type=int, default=1, help="the fixed batch size of the export (default 1)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest absolute difference allowed between the export and PyTorch (default 1e-4)")
    parser.add_argument("--trust", action="store_true", help=TRUST_HELP)
    return parser


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    _check_args(args)
    restored = restore_checked(args.path, trust=args.trust)
    out = args.out or _default_out(restored, args.format)
    result = export(restored, args.format, out, opset=args.opset, dynamic_batch=args.dynamic_batch,
                    batch_size=args.batch_size, tolerance=args.tolerance)
    print(f"checked on {result['checked_batches']} batches of random images: max absolute difference "
          f"{result['max_abs_difference']:.3g} (tolerance {args.tolerance:g})")
    print(f"wrote {out}")
    print(f"wrote {sidecar_path(out)}")
    return 0


def _check_args(args: Any) -> None:
    if args.opset is not None and args.format != "onnx":
        raise ConfigError("--opset", args.opset, message="--opset applies to --format onnx only")
    if args.opset is not None and args.opset < MIN_OPSET:
        raise ConfigError("--opset", args.opset, message=(
            f"--opset {args.opset}: torch's ONNX exporter writes operator set {MIN_OPSET} or newer"))
    if args.batch_size < 1:
        raise ConfigError("--batch-size", args.batch_size, "an integer >= 1")
    if not args.tolerance > 0:
        raise ConfigError("--tolerance", args.tolerance, "a positive number")
    if args.out is not None and args.out.is_dir():
        raise ConfigError("--out", str(args.out), message=f"--out {args.out} is a folder; give a file name")


def _default_out(restored: Restored, format: str) -> Path:
    return (restored.run_dir or restored.checkpoint_path.parent) / EXPORT_DIR / f"model{FORMATS[format]}"


def sidecar_path(out: Path) -> Path:
    """The preprocessing JSON beside an exported file: its name with .json added (model.onnx.json)."""
    return out.with_name(out.name + ".json")


def export(restored: Restored, format: str, out: Path, opset: int | None = None, dynamic_batch: bool = False,
           batch_size: int = 1, tolerance: float = 1e-4) -> dict[str, Any]:
    """Write the network to `out` and the preprocessing JSON beside it, after checking the export against PyTorch.

    Returns the JSON's content (with `max_abs_difference`); a difference over `tolerance` is a ConfigError.
    """
    if format == "onnx":
        _require_onnx()
    cfg = restored.cfg
    datamodule = build_prediction_datamodule(restored, load_data=False)
    module = build_trained_module(restored)  # the averaged weights where the run evaluates them (ema.evaluate)
    model = module.model.float().eval()
    batches = _check_batches(datamodule, cfg.dataset.channels, cfg.dataset.image_size,
                             [1, 5] if dynamic_batch else [batch_size, batch_size])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError("--out", str(out), message=f"cannot write to {out.parent}: {error.strerror}") from None
    with torch.no_grad():
        references = [model(batch) for batch in batches]
    if format == "torchscript":
        written_opset = None
        outputs = _torchscript(model, batches, out)
    else:
        written_opset, outputs = _onnx(model, batches, out, opset, dynamic_batch)
    difference = max(float((output - reference).abs().max()) for output, reference in zip(outputs, references))
    if not difference <= tolerance:  # also catches NaN
        out.unlink(missing_ok=True)
        raise ConfigError("export", str(out), message=(
            f"the {format} export disagrees with PyTorch: max absolute difference {difference:.3g} over the "
            f"tolerance {tolerance:g} (nothing was kept)"))
    info = preprocessing(restored, datamodule, format, out, dynamic_batch, batch_size)
    info.update(weights="ema" if module.test_with_ema else "trained", opset=written_opset,
                max_abs_difference=difference, checked_batches=len(batches))
    from cnnlab.runs.write import atomic_write_text

    atomic_write_text(sidecar_path(out), json.dumps(info, indent=2) + "\n")
    return info


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ConfigError("--format", "onnx", message=(
            f"--format onnx needs {error.name}, which is not installed: {EXTRA_HINT}")) from None


def _check_batches(datamodule: Any, channels: int, size: int, sizes: list[int]) -> list[Tensor]:
    """Seeded random uint8 images through the run's own normalisation: inputs in the range the network knows."""
    generator = torch.Generator().manual_seed(0)
    return [datamodule.normalize(torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8,
                                               generator=generator)) for n in sizes]


def _torchscript(model: nn.Module, batches: list[Tensor], out: Path) -> list[Tensor]:
    """Trace, save, load back and run: the outputs of the saved file."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*deprecated")
        traced = torch.jit.trace(model, batches[0], check_trace=False)
        torch.jit.save(traced, str(out))
        loaded = torch.jit.load(str(out), map_location="cpu")
    with torch.no_grad():
        return [loaded(batch) for batch in batches]


def _onnx(model: nn.Module, batches: list[Tensor], out: Path, opset: int | None,
          dynamic_batch: bool) -> tuple[int, list[Tensor]]:
    """Export with torch's ONNX exporter (one self-contained file), run with onnxruntime: (opset, outputs)."""
    import logging

    import onnx
    import onnxruntime

    dynamic = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (batches[0],), str(out), dynamo=True, external_data=False, verbose=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                              dynamic_shapes=dynamic)
    except Exception as error:  # an operator this opset or exporter cannot express
        reason = " ".join(str(error).split())[:300]
        raise ConfigError("--format", "onnx", message=f"torch could not export the network to ONNX: {reason}") from None
    written = next(entry.version for entry in onnx.load(str(out)).opset_import if entry.domain in ("", "ai.onnx"))
    if opset is not None and written != opset:
        out.unlink(missing_ok=True)
        raise ConfigError("--opset", opset, message=(
            f"--opset {opset}: the exporter wrote operator set {written} instead; try another one"))
    try:
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    except Exception as error:  # e.g. an opset newer than this onnxruntime runs
        reason = " ".join(str(error).split())[:300]
        raise ConfigError("--opset", opset, message=f"onnxruntime cannot load the export: {reason}") from None
    outputs = [torch.from_numpy(session.run(None, {INPUT_NAME: batch.numpy()})[0]) for batch in batches]
    return written, outputs


def preprocessing(restored: Restored, datamodule: Any, format: str, out: Path, dynamic_batch: bool,
                  batch_size: int) -> dict[str, Any]:
    """What a program needs to feed the exported file and read its output: the content of the JSON."""
    cfg = restored.cfg
    objective_head = _head(cfg)
    kind, to_probabilities = OUTPUT_MEANING[objective_head]
    channels, size = cfg.dataset.channels, cfg.dataset.image_size
    mean = [float(v) for v in datamodule.mean.flatten()]
    std = [float(v) for v in datamodule.std.flatten()]
    units = len(datamodule.class_names) if not (objective_head == "sigmoid" and cfg.dataset.num_classes == 2
                                                and not cfg.dataset.get("multilabel", False)) else 1
    return {
        "format": format,
        "file": out.name,
        "checkpoint": str(restored.checkpoint_path),
        "model": cfg.model.get("_target_"),
        "class_names": list(datamodule.class_names),
        "multilabel": bool(cfg.dataset.get("multilabel", False)),
        "input": {
            "name": INPUT_NAME if format == "onnx" else None,
            "shape": ["batch" if dynamic_batch else batch_size, channels, size, size],
            "dtype": "float32",
            "layout": "NCHW",
            "channels": channels,
            "image_size": [size, size],
            "color": "grayscale (ITU-R 601 luma from RGB)" if channels == 1 else "RGB",
            "resize": f"to {size}x{size} pixels, bilinear with antialiasing, aspect ratio not kept",
            "scale": "pixel values / 255 (to [0, 1])",
            "mean": mean,
            "std": std,
            "normalize": "(pixel / 255 - mean[c]) / std[c] for each channel c",
        },
        "output": {
            "name": OUTPUT_NAME if format == "onnx" else None,
            "shape": ["batch" if dynamic_batch else batch_size, units],
            "kind": kind,
            "to_probabilities": to_probabilities,
        },
    }


def _head(cfg: Any) -> str:
    from cnnlab.train.build import build_objective

    return build_objective(cfg).head
