"""`cnnlab eval`: a trained run's metrics on its test (or validation) split, printed and written to eval/.

The model and data are rebuilt from the run's saved config by cnnlab/train/build.py, and the split goes through
Lightning's `trainer.test` with the module's own test step: the metrics are those training's final test logs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cnnlab.cli.common import TRUST_HELP, Parser, restore_checked
from cnnlab.data.tta import check_tta
from cnnlab.errors import ConfigError
from cnnlab.train.trained import (
    Restored,
    build_prediction_datamodule,
    build_trained_module,
    changes_results,
    run_tta,
    set_tta,
)

SPLITS = ("test", "val")
METRIC_NAMES = {"acc": "accuracy (top-1)", "acc_top5": "accuracy (top-5)", "precision": "precision (macro)",
                "recall": "recall (macro)", "f1": "F1 (macro)", "auroc": "AUC-ROC (macro, one-vs-rest)",
                "map": "mean average precision (macro)", "loss": "loss (mean)"}
# Wider matrices go to the PNG and JSON only: a console table of them is unreadable.
MAX_PRINTED_CLASSES = 20


def parser() -> Parser:
    parser = Parser(prog="cnnlab eval", description=(
        "Metrics of a trained run on its test split (or split=val), from a checkpoint or a run folder. "
        "Hydra-style overrides change the run's saved config, e.g. data_dir=/elsewhere batch_size=256 "
        "trainer.accelerator=cpu."))
    parser.add_argument("path", help="a checkpoint (.ckpt) or a run folder (uses the checkpoint the run tested)")
    parser.add_argument("overrides", nargs="*", help=(
        "key=value for the saved config; split=test|val; tta=none|flip|shift|flip_shift (test-time augmentation: "
        "probabilities averaged over mirrored and/or shifted views; default: the run's own tta for split=test, none "
        "for split=val)"))
    parser.add_argument("--trust", action="store_true", help=TRUST_HELP)
    parser.add_argument("--out", type=Path, help="folder for the JSON and PNG (default: RUN/eval/)")
    return parser


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    options, overrides = _eval_options(args.overrides)
    split = options["split"]
    # The run's own tta is its test's; its validation saw the images alone. One given here replaces the saved one
    # before the saved config is checked (`tta=none` must get past a saved mode the dataset refuses).
    chosen = options["tta"] or ("none" if split == "val" else "")
    restored = restore_checked(args.path, [*overrides, *([f"++tta={chosen}"] if chosen else [])], trust=args.trust)
    tta = chosen or run_tta(restored)
    report = evaluate(restored, split, tta=tta)
    report["overrides"] = overrides
    out_dir = args.out or _default_out_dir(restored)
    stem = report_stem(restored.checkpoint_path.stem, split, overrides) + ("" if tta == "none" else f"_tta-{tta}")
    written = write_report(report, out_dir, stem)
    print_report(report, written)
    return 0


def report_stem(checkpoint_stem: str, split: str, overrides: list[str]) -> str:
    """`best_test`, or with overrides that may change the numbers `best_test_<8 hex digits of them>`, so an eval
    under other settings never overwrites the plain one."""
    import hashlib

    changed = changes_results(overrides)
    if not changed:
        return f"{checkpoint_stem}_{split}"
    return f"{checkpoint_stem}_{split}_{hashlib.sha256(' '.join(sorted(changed)).encode()).hexdigest()[:8]}"


def _eval_options(overrides: list[str]) -> tuple[dict[str, str], list[str]]:
    """`split=...` and `tta=...` are eval's own options; everything else overrides the saved config."""
    options, rest = {"split": "test", "tta": ""}, []  # tta "": the run's own
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "split":
            if value not in SPLITS:
                raise ConfigError("split", value, f"one of {', '.join(SPLITS)}")
            options["split"] = value
        elif key == "tta":
            check_tta(value, flip_ok=True)  # the mode's name; the dataset's consent is checked with its config
            options["tta"] = value
        else:
            rest.append(item)
    return options, rest


def _default_out_dir(restored: Restored) -> Path:
    return (restored.run_dir or restored.checkpoint_path.parent) / "eval"


def per_class_scores(matrix: list[list[int]]) -> list[dict[str, float]]:
    """Precision, recall, F1 and support of each class from a confusion matrix (rows true, columns predicted).

    A class never predicted (or never present) scores 0 where its denominator is 0, as torchmetrics does.
    """
    counts = torch.tensor(matrix, dtype=torch.float64)
    hits = counts.diagonal()
    predicted, support = counts.sum(0), counts.sum(1)
    precision = torch.where(predicted > 0, hits / predicted.clamp(min=1), torch.zeros_like(hits))
    recall = torch.where(support > 0, hits / support.clamp(min=1), torch.zeros_like(hits))
    total = precision + recall
    f1 = torch.where(total > 0, 2 * precision * recall / total.clamp(min=1e-12), torch.zeros_like(hits))
    return [{"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
            for p, r, f, n in zip(precision, recall, f1, support)]


def evaluate(restored: Restored, split: str = "test", tta: str = "none") -> dict[str, Any]:
    """Test the trained module on one split with Lightning's `trainer.test`, the path training's final test takes
    (the same test_step and metrics, with `tta` views averaged); the metrics, per-class scores and confusion matrix
    as plain data."""
    import logging

    import pytorch_lightning as pl

    from cnnlab.train.environment import quiet_libraries

    quiet_libraries()
    cfg = restored.cfg
    datamodule = build_prediction_datamodule(restored, load_data=True)
    if split == "val":  # the validation split goes through the same test step
        datamodule.test_dataloader = datamodule.val_dataloader  # type: ignore[method-assign]
    module = build_trained_module(restored)
    set_tta(module, cfg, tta)
    accelerator = cfg.trainer.get("accelerator", "auto")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)  # no device chatter
    try:
        trainer = pl.Trainer(accelerator=accelerator, devices=1, precision=cfg.trainer.get("precision", "32-true"),
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_test_batches=_batch_limit(cfg, split),
                             default_root_dir=str(restored.run_dir or restored.checkpoint_path.parent))
    except (RuntimeError, ValueError) as error:
        raise ConfigError("accelerator", accelerator, message=f"accelerator {accelerator!r}: {error}") from None
    results = trainer.test(module, datamodule=datamodule, verbose=False, weights_only=True)
    logged = {key.removeprefix("test/"): float(value) for key, value in (results[0] if results else {}).items()}
    if module.test_samples == 0:
        raise ConfigError(f"trainer.limit_{split}_batches", cfg.trainer.get(f"limit_{split}_batches"),
                          message=f"the {split} split has no samples to evaluate")
    names = list(datamodule.class_names)
    report: dict[str, Any] = {
        "checkpoint": str(restored.checkpoint_path),
        "config": restored.config_source,
        "split": split,
        "tta": tta,
        "samples": module.test_samples,
        "multilabel": module.multilabel,
        "metrics": {name: logged[name] for name in METRIC_NAMES if name in logged},
        "class_names": names,
    }
    if module.multilabel:  # per-label F1 (test/f1_label_<i>); no single confusion matrix
        report["per_class"] = [{"class": name, "f1": logged.get(f"f1_label_{i}", 0.0)} for i, name in enumerate(names)]
        report["confusion_matrix"] = None
    else:
        matrix = module.confusion.long().tolist()
        report["per_class"] = [{"class": name, **scores} for name, scores in zip(names, per_class_scores(matrix))]
        report["confusion_matrix"] = matrix
    return report


def _batch_limit(cfg: Any, split: str) -> Any:
    """The run's limit_test_batches / limit_val_batches for the split evaluated (Lightning's meaning)."""
    limit = cfg.trainer.get(f"limit_{split}_batches")
    return 1.0 if limit is None else limit


def write_report(report: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """`<stem>.json` (everything) and `<stem>_confusion.png` in out_dir."""
    import matplotlib.pyplot as plt

    from cnnlab.runs.write import atomic_write_text, confusion_figure

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError("--out", str(out_dir), message=f"cannot write to {out_dir}: {error.strerror}") from None
    json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}_confusion.png"
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    if report["confusion_matrix"] is None:  # multi-label: no single confusion matrix to draw
        return [json_path]
    title = f"{report['split']} split, accuracy {report['metrics']['acc']:.4f}"
    fig = confusion_figure(report["confusion_matrix"], report["class_names"], title=title)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return [json_path, png_path]


def print_report(report: dict[str, Any], written: list[Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    tta = report.get("tta", "none")
    views = "" if tta == "none" else f", test-time augmentation {tta} (the loss: of the images alone)"
    console.print(f"[bold]{report['split']} split[/bold]: {report['samples']} images{views}")
    console.print(f"checkpoint: {report['checkpoint']}", soft_wrap=True)
    console.print(f"config:     {report['config']}", soft_wrap=True)
    summary = Table(title="Metrics", title_justify="left")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    for name, value in report["metrics"].items():
        label = "accuracy (per label decision)" if name == "acc" and report.get("multilabel") else METRIC_NAMES[name]
        summary.add_row(label, f"{value:.4f}")
    console.print(summary)

    columns = [key for key in ("precision", "recall", "f1", "support") if key in report["per_class"][0]]
    classes = Table(title="Per label" if report.get("multilabel") else "Per class", title_justify="left")
    classes.add_column("class")
    for column in columns:
        classes.add_column("F1" if column == "f1" else column, justify="right")
    for row in report["per_class"]:
        classes.add_row(row["class"], *[str(row[c]) if c == "support" else f"{row[c]:.4f}" for c in columns])
    console.print(classes)

    names = report["class_names"]
    if report["confusion_matrix"] is None:
        pass
    elif len(names) <= MAX_PRINTED_CLASSES:
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
