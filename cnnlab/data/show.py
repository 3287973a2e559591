"""`cnnlab data show [overrides]`: a PNG grid of augmented training samples with their class names."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

USAGE = """usage: cnnlab data show [--count N] [--out FILE.png] [overrides]

Writes a grid of N (default 32) training images as the model sees them (augmented, before normalisation),
titled with their class names (the mixing weights after mixup/cutmix), from the same composed config as
`cnnlab train`, e.g.:  cnnlab data show dataset=cifar10 augmentation=[standard,cutmix]
"""


def compose_config(overrides: list[str]) -> tuple[Any, dict[str, str]]:
    """The config `cnnlab train` would run with these overrides (Hydra's compose API), and the group choices."""
    from hydra.core.hydra_config import HydraConfig

    from cnnlab.config import compose

    cfg = compose(overrides, job_name="data_show")
    choices = {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
    for override in overrides:  # a list of options (augmentation=[standard,mixup]) is not among the choices
        group, _, value = override.partition("=")
        if value.startswith("[") and group.isidentifier():
            choices[group] = "+".join(v.strip() for v in value.strip("[]").split(","))
    return cfg, choices


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


def _parse(args: list[str]) -> tuple[int, Path | None, list[str]]:
    from cnnlab.config import ConfigError

    count, out, overrides = 32, None, []
    iterator = iter(args)
    for arg in iterator:
        if arg in ("--count", "--out"):
            value = next(iterator, None)
            if value is None:
                raise ConfigError(arg, None, "a value after it")
            if arg == "--out":
                out = Path(value)
                continue
            if not value.isdigit() or int(value) < 1:
                raise ConfigError("--count", value, "a positive integer")
            count = int(value)
        elif arg.startswith("-"):
            raise ConfigError("option", arg, "--count N, --out FILE.png or Hydra overrides (key=value)")
        else:
            overrides.append(arg)
    return count, out, overrides


def show(args: list[str]) -> int:
    """`cnnlab data show`: compose, build the data module the training would use, write the grid."""
    from cnnlab.build import build_datamodule
    from cnnlab.config import validate

    count, out, overrides = _parse(args)
    cfg, choices = compose_config(overrides)
    validate(cfg)
    dataset, augmentation = choices.get("dataset", "dataset"), choices.get("augmentation", "none")
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    images, targets = augmented_samples(datamodule, count)
    path = out or Path("outputs") / "data" / f"{dataset}-{augmentation}.png"
    sizes = datamodule.split_sizes()
    heading = (f"{dataset} (augmentation={augmentation}): {datamodule.channels} channel(s), "
               f"{datamodule.image_size}x{datamodule.image_size}, {datamodule.num_classes} classes")
    render(images, targets, datamodule.class_names, heading, path)
    print(heading)
    print("split sizes: " + ", ".join(f"{name} {size:,}" for name, size in sizes.items()))
    print(f"wrote {len(images)} augmented training samples to {path}")
    return 0


def main(args: list[str]) -> int:
    """`cnnlab data SUBCOMMAND ...`."""
    from cnnlab.config import ConfigError

    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if args[0] != "show":
        raise ConfigError("data", args[0], "the subcommand show (see cnnlab data --help)")
    return show(args[1:])
