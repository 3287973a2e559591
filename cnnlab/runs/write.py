"""Writing a run folder's files (named in cnnlab/runs/layout.py): metrics.csv, summary.json, curves.png and the
confusion-matrix figure; every text file replaced atomically. No torch and no Lightning here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cnnlab.runs.layout import COLUMNS, METRICS_FILE, SUMMARY_FILE


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to a temporary file beside `path`, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    lines = [",".join(COLUMNS)]
    for row in rows:
        lines.append(",".join("" if row.get(c) is None else f"{row[c]:.6g}" if isinstance(row[c], float)
                              else str(row[c]) for c in COLUMNS))
    atomic_write_text(Path(run_dir) / METRICS_FILE, "\n".join(lines) + "\n")


def curves_figure(rows: list[dict[str, Any]], title: str = "") -> Any:
    """The figure of plot_curves: integer epoch ticks, legends inside their axes, a long title wrapped."""
    import textwrap

    import matplotlib

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
    fig.savefig(path, dpi=100)
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
