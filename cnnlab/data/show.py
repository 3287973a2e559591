"""A PNG grid of augmented training samples with their class names (`cnnlab data show`, cnnlab/cli/data.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch


def augmented_samples(datamodule: Any, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` training images of epoch 0 after augmentation (float [0, 1]) and their (soft) targets."""
    images, targets = [], []
    for batch_images, labels in datamodule.train_dataloader():
        mixed, soft = datamodule.augment(batch_images.float().div(255), labels)
        images.append(mixed.clamp(0, 1))
        targets.append(soft)
        if sum(len(t) for t in targets) >= count:
            break
    return torch.cat(images)[:count], torch.cat(targets)[:count]


def title(target: torch.Tensor, class_names: list[str]) -> str:
    """A class name, or the two largest mixing weights of a soft target."""
    if target.ndim == 0:
        return class_names[int(target)]
    weights, index = target.topk(min(2, len(target)))
    parts = [f"{class_names[int(i)]} {float(w):.2f}" for w, i in zip(weights, index) if float(w) > 0.005]
    return "\n".join(parts)


def render(images: torch.Tensor, targets: torch.Tensor, class_names: list[str], heading: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, target in zip(axes.flat, images, targets):
        pixels = image.permute(1, 2, 0).cpu().numpy()
        if pixels.shape[2] == 1:
            ax.imshow(pixels[:, :, 0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(pixels)
        ax.set_title(title(target, class_names), fontsize=7)
    fig.suptitle(heading, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
