"""Writing a run folder's files (named in cnnlab/runs/layout.py): metrics.csv, summary.json, curves.png and the
confusion-matrix figure; every text file replaced atomically. No torch and no Lightning here."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cnnlab.errors import FileWriteError, os_error_in
from cnnlab.runs.layout import COLUMNS, EMA_COLUMNS, METRICS_FILE, SUMMARY_FILE, shown


def temporary(path: Path) -> Path:
    """The temporary file a file is written to before it is renamed over `path`."""
    return path.with_name(f".{path.name}.tmp")


@contextmanager
def writing(path: Path, tmp: Path | None = None) -> Iterator[None]:
    """Around the writing of `path`: on any error the temporary file goes, and an OSError (disk full, file-size
    limit, read-only, name too long, permission) becomes one FileWriteError naming the file and the cause."""
    try:
        yield
    except BaseException as error:
        if tmp is not None:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        cause = os_error_in(error) if isinstance(error, Exception) else None
        if cause is None or isinstance(error, FileWriteError):
            raise
        raise FileWriteError(shown(path), cause) from error


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to a temporary file beside `path`, then rename it over `path` (nothing left half-written)."""
    path = Path(path)
    tmp = temporary(path)
    with writing(path, tmp):
        tmp.write_text(text)
        os.replace(tmp, path)


def metric_columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """metrics.csv's columns: the EMA ones (after val_acc) only when a row has a value for them."""
    if not any(row.get(column) is not None for row in rows for column in EMA_COLUMNS):
        return COLUMNS
    at = COLUMNS.index("val_acc") + 1
    return (*COLUMNS[:at], *EMA_COLUMNS, *COLUMNS[at:])


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    columns = metric_columns(rows)
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join("" if row.get(c) is None else f"{row[c]:.6g}" if isinstance(row[c], float)
                              else str(row[c]) for c in columns))
    atomic_write_text(Path(run_dir) / METRICS_FILE, "\n".join(lines) + "\n")


def curves_figure(rows: list[dict[str, Any]], title: str = "") -> Any:
    """The figure of plot_curves: integer epoch ticks, legends inside their axes, a long title wrapped."""
    import textwrap

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # a notebook's own backend stays; scripts and runs draw off-screen
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            points = [(r["epoch"], r[f"{split}_{metric}"]) for r in rows if r.get(f"{split}_{metric}") is not None]
            if points:
                ax.plot(*zip(*points), style, label=f"{'validation' if split == 'val' else 'train'}", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs are whole: no 1.5
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(textwrap.fill(title, 100), fontsize="medium")
    fig.tight_layout()
    return fig


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Loss and accuracy per epoch, train vs validation, side by side in one PNG."""
    import matplotlib.pyplot as plt

    fig = curves_figure(rows, title)
    try:
        with writing(Path(path)):
            fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def confusion_figure(matrix: Any, class_names: list[str], title: str = "") -> Any:
    """A matplotlib figure of a confusion matrix (rows true, columns predicted), counts written in small ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(matrix)
    size = max(4, 0.5 * len(class_names))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=90)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= 20:
        threshold = counts.max() / 2 if counts.size else 0
        for (row, col), count in np.ndenumerate(counts):
            ax.text(col, row, str(int(count)), ha="center", va="center", fontsize=7,
                    color="white" if count > threshold else "black")
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(Path(run_dir) / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=False) + "\n")
