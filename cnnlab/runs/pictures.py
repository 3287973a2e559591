"""The PNGs of `cnnlab inspect` (RUN/inspect/), drawn with matplotlib from plain arrays. No torch here.

Images come as float arrays (N, C, H, W) in [0, 1]: one channel is drawn in gray, three as RGB, other counts as
the mean of their channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _picture(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(array for imshow, colormap) of one (C, H, W) image in [0, 1]."""
    if image.shape[0] == 3:
        return np.clip(image.transpose(1, 2, 0), 0, 1), None
    return image.mean(axis=0), "gray"


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _grid(count: int, columns: int) -> tuple[int, int]:
    columns = max(1, min(columns, count))
    return math.ceil(count / columns), columns


def filter_grid(filters: np.ndarray, path: Path, title: str) -> Path:
    """Every filter (N, C, kh, kw) in [0, 1] as one small picture, in a square-ish grid."""
    plt = _pyplot()
    rows, columns = _grid(len(filters), math.ceil(math.sqrt(len(filters))))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.9 + 0.4, rows * 0.9 + 0.6), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, kernel in zip(axes.flat, filters):
        picture, cmap = _picture(kernel)
        ax.imshow(picture, cmap=cmap, interpolation="nearest", vmin=0, vmax=1)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path, plt)


def feature_map_grid(image: np.ndarray, stages: Sequence[tuple[str, np.ndarray]], path: Path, title: str,
                     per_stage: int = 8) -> Path:
    """The input, then one row per stage with its `per_stage` most active channels ((C, h, w) maps each)."""
    plt = _pyplot()
    columns = per_stage
    fig, axes = plt.subplots(len(stages) + 1, columns, figsize=(columns * 1.1 + 0.6, (len(stages) + 1) * 1.25 + 0.4),
                             squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    picture, cmap = _picture(image)
    axes[0, 0].imshow(picture, cmap=cmap, vmin=0, vmax=1)
    axes[0, 0].set_title("input", fontsize=7)
    for row, (name, maps) in enumerate(stages, start=1):
        strongest = np.argsort(-maps.reshape(len(maps), -1).mean(axis=1), kind="stable")[:per_stage]
        for column, channel in enumerate(strongest):
            axes[row, column].imshow(maps[channel], cmap="viridis", interpolation="nearest")
            label = f"{name} #{channel}" if column == 0 else f"#{channel}"
            axes[row, column].set_title(label, fontsize=6)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path, plt)


def grad_cam_grid(images: np.ndarray, maps: Sequence[np.ndarray], column_titles: Sequence[str],
                  cell_titles: Sequence[Sequence[str]], path: Path, title: str) -> Path:
    """One row per image: the image, then each heat map (H, W in [0, 1]) laid over it."""
    plt = _pyplot()
    rows, columns = len(images), 1 + len(maps)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.8 + 0.2, rows * 1.8 + 0.5), squeeze=False,
                             layout="constrained")
    for row, image in enumerate(images):
        picture, cmap = _picture(image)
        for column in range(columns):
            ax = axes[row, column]
            ax.axis("off")
            ax.imshow(picture, cmap=cmap, vmin=0, vmax=1)
            if column:
                ax.imshow(maps[column - 1][row], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_title(cell_titles[row][column], fontsize=7)
    for column, heading in enumerate(column_titles):
        axes[0, column].set_title(f"{heading}\n{cell_titles[0][column]}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path, plt)


def labelled_figure(images: np.ndarray, labels: Sequence[str], title: str, columns: int = 6) -> Any:
    """A matplotlib figure of images with a caption each (true and predicted class) in a grid."""
    plt = _pyplot()
    rows, columns = _grid(max(1, len(images)), columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.7 + 0.2, rows * 1.9 + 0.5), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, labels):
        picture, cmap = _picture(image)
        ax.imshow(picture, cmap=cmap, vmin=0, vmax=1)
        ax.set_title(label, fontsize=7)
    if not len(images):
        axes[0, 0].text(0.5, 0.5, "no wrong predictions", ha="center", va="center")
    fig.suptitle(title, fontsize=9)
    return fig


def labelled_images(images: np.ndarray, labels: Sequence[str], path: Path, title: str, columns: int = 6) -> Path:
    """labelled_figure saved as a PNG."""
    return _save(labelled_figure(images, labels, title, columns), path, _pyplot())


def accuracy_bars(accuracy: Sequence[float], class_names: Sequence[str], path: Path, title: str) -> Path:
    """Per-class accuracy as horizontal bars, worst class easy to spot (NaN: a class without images)."""
    plt = _pyplot()
    values = np.nan_to_num(np.asarray(accuracy, dtype=float), nan=0.0)
    fig, ax = plt.subplots(figsize=(6, max(2.0, 0.3 * len(class_names) + 1)), layout="constrained")
    positions = np.arange(len(class_names))
    ax.barh(positions, values, color=["tab:red" if v == values.min() else "tab:blue" for v in values])
    ax.set_yticks(positions, class_names, fontsize=7 if len(class_names) > 20 else 9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    for position, value in zip(positions, accuracy):
        ax.text(min(float(np.nan_to_num(value)), 0.9) + 0.01, position,
                "no images" if np.isnan(value) else f"{value:.3f}", va="center", fontsize=7)
    ax.set_title(title, fontsize=9)
    return _save(fig, path, plt)
