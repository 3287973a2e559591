"""`cnnlab eval`: a trained run's metrics on its test (or validation) split, printed and written to eval/.

The model and data are rebuilt from the run's saved config by cnnlab/build.py; batches go through the
datamodule's own evaluation transform, and metrics are torchmetrics' (the same collection `train` tests with).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from cnnlab.cli import Parser
from cnnlab.config import ConfigError
from cnnlab.restore import Restored, build_prediction_datamodule, build_trained_module, fabric_for, restore

SPLITS = ("test", "val")
METRIC_NAMES = {"acc": "accuracy (top-1)", "acc_top5": "accuracy (top-5)", "precision": "precision (macro)",
                "recall": "recall (macro)", "f1": "F1 (macro)", "auroc": "AUC-ROC (macro, one-vs-rest)",
                "loss": "loss (mean)"}
# Wider matrices go to the PNG and JSON only: a console table of them is unreadable.
MAX_PRINTED_CLASSES = 20


def parser() -> Parser:
    parser = Parser(prog="cnnlab eval", description=(
        "Metrics of a trained run on its test split (or split=val), from a checkpoint or a run folder. "
        "Hydra-style overrides change the run's saved config, e.g. data_dir=/elsewhere batch_size=256 "
        "trainer.accelerator=cpu."))
    parser.add_argument("path", help="a checkpoint (.ckpt) or a run folder (uses the checkpoint the run tested)")
    parser.add_argument("overrides", nargs="*", help="key=value for the saved config; split=test|val")
    parser.add_argument("--out", type=Path, help="folder for the JSON and PNG (default: RUN/eval/)")
    return parser


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    split, overrides = _split_option(args.overrides)
    restored = restore(args.path, overrides)
    report = evaluate(restored, split)
    out_dir = args.out or _default_out_dir(restored)
    written = write_report(report, out_dir, f"{restored.checkpoint_path.stem}_{split}")
    print_report(report, written)
    return 0


def _split_option(overrides: list[str]) -> tuple[str, list[str]]:
    """`split=...` is eval's own option; everything else overrides the saved config."""
    split, rest = "test", []
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "split":
            if value not in SPLITS:
                raise ConfigError("split", value, f"one of {', '.join(SPLITS)}")
            split = value
        else:
            rest.append(item)
    return split, rest


def _default_out_dir(restored: Restored) -> Path:
    return (restored.run_dir or restored.checkpoint_path.parent) / "eval"


def per_class_metrics(num_classes: int) -> MetricCollection:
    return MetricCollection({
        "precision": MulticlassPrecision(num_classes, average=None),
        "recall": MulticlassRecall(num_classes, average=None),
        "f1": MulticlassF1Score(num_classes, average=None),
    })


def _batch_limit(limit: Any, batches: int) -> int:
    """Lightning's meaning of limit_test_batches / limit_val_batches: an int count or a float fraction."""
    if limit is None:
        return batches
    if isinstance(limit, float):
        return int(batches * limit)
    return min(batches, int(limit))


@torch.inference_mode()
def evaluate(restored: Restored, split: str = "test") -> dict[str, Any]:
    """Run the trained model over one split; the metrics, per-class scores and confusion matrix as plain data."""
    from cnnlab.module import test_metrics

    cfg = restored.cfg
    datamodule = build_prediction_datamodule(restored, load_data=True)
    module = build_trained_module(restored)
    fabric = fabric_for(cfg)  # the run's trainer.accelerator and precision (override them like any key)
    device = fabric.device
    model, objective = module.model.to(device), module.objective
    num_classes = cfg.dataset.num_classes

    scores = test_metrics(num_classes).to(device)
    per_class = per_class_metrics(num_classes).to(device)
    confusion = MulticlassConfusionMatrix(num_classes).to(device)
    loader = getattr(datamodule, f"{split}_dataloader")()
    limit = _batch_limit(cfg.trainer.get(f"limit_{split}_batches"), len(loader))
    loss_sum, count = torch.zeros((), device=device, dtype=torch.float64), 0
    for index, (images, labels) in enumerate(loader):
        if index >= limit:
            break
        images, labels = datamodule.normalize(images.to(device)), labels.to(device)
        with fabric.autocast():
            raw = model(images)
            loss = objective(raw, labels)
        probs = objective.probabilities(raw)
        scores.update(probs, labels)
        per_class.update(probs, labels)
        confusion.update(probs, labels)
        loss_sum += loss.double() * len(labels)
        count += len(labels)
    if count == 0:
        raise ConfigError(f"trainer.limit_{split}_batches", cfg.trainer.get(f"limit_{split}_batches"),
                          message=f"the {split} split has no samples to evaluate")

    metrics = {name: float(value) for name, value in scores.compute().items()}
    metrics["loss"] = float(loss_sum / count)
    classes = per_class.compute()
    matrix = confusion.compute().cpu()
    support = matrix.sum(1).tolist()
    names = list(datamodule.class_names)
    return {
        "checkpoint": str(restored.checkpoint_path),
        "config": restored.config_source,
        "split": split,
        "samples": count,
        "metrics": {name: metrics[name] for name in METRIC_NAMES if name in metrics},
        "per_class": [
            {"class": names[i], "precision": float(classes["precision"][i]), "recall": float(classes["recall"][i]),
             "f1": float(classes["f1"][i]), "support": int(support[i])}
            for i in range(num_classes)
        ],
        "class_names": names,
        "confusion_matrix": matrix.tolist(),
    }


def write_report(report: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """`<stem>.json` (everything) and `<stem>_confusion.png` in out_dir."""
    import matplotlib.pyplot as plt

    from cnnlab.runlog import atomic_write_text, confusion_figure

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError("--out", str(out_dir), message=f"cannot write to {out_dir}: {error.strerror}") from None
    json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}_confusion.png"
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    title = f"{report['split']} split, accuracy {report['metrics']['acc']:.4f}"
    fig = confusion_figure(report["confusion_matrix"], report["class_names"], title=title)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return [json_path, png_path]


def print_report(report: dict[str, Any], written: list[Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{report['split']} split[/bold]: {report['samples']} images")
    console.print(f"checkpoint: {report['checkpoint']}", soft_wrap=True)
    console.print(f"config:     {report['config']}", soft_wrap=True)
    summary = Table(title="Metrics", title_justify="left")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    for name, value in report["metrics"].items():
        summary.add_row(METRIC_NAMES[name], f"{value:.4f}")
    console.print(summary)

    classes = Table(title="Per class", title_justify="left")
    for column in ("class", "precision", "recall", "F1", "support"):
        classes.add_column(column, justify="left" if column == "class" else "right")
    for row in report["per_class"]:
        classes.add_row(row["class"], f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}",
                        str(row["support"]))
    console.print(classes)

    names = report["class_names"]
    if len(names) <= MAX_PRINTED_CLASSES:
        matrix = Table(title="Confusion matrix (rows: true class, columns: predicted)", title_justify="left")
        matrix.add_column("true \\ predicted")
        for index in range(len(names)):
            matrix.add_column(str(index), justify="right")
        for index, (name, row) in enumerate(zip(names, report["confusion_matrix"])):
            label = name if name == str(index) else f"{index} {name}"
            matrix.add_row(label, *[f"[bold]{n}[/bold]" if i == index else str(n) for i, n in enumerate(row)])
        console.print(matrix)
    else:
        console.print(f"Confusion matrix ({len(names)} classes): see the PNG and JSON below.")
    for path in written:
        console.print(f"wrote {path}")
