"""`cnnlab init [DIR]`: a starter project of the user's own: a model class, its config, an image-folder dataset
(with generated images, so the first run needs no download), a preset, and a README. Nothing is overwritten."""

from __future__ import annotations

from pathlib import Path

from cnnlab.cli.common import Parser
from cnnlab.errors import ConfigError

MY_MODELS = '''"""Your own networks. conf/model/my_model.yaml names MyNet by its dotted path, `my_models.MyNet`: cnnlab
imports it from the working folder (run cnnlab from this folder, or put it on PYTHONPATH)."""

from torch import nn


class MyNet(nn.Module):
    """A small CNN: two convolution blocks, global average pooling, one linear layer of class scores (logits)."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 16, dropout: float = 0.0):
        super().__init__()
        # image_size is unused here (the pooling takes any size); a network with a fixed-size head would need it.
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
'''

MY_MODEL_YAML = '''description: "My small CNN (my_models.MyNet): two conv blocks, global average pooling, linear head"
_target_: my_models.MyNet
# cnnlab passes the dataset's in_channels, num_classes and image_size to the keywords of that name your class takes.
# Your class's own keywords: change them here or on the command line (model.width=32).
width: 16
dropout: 0.0
'''

MY_IMAGES_YAML = '''description: "My images: one folder per class in data/my_images (cnnlab init drew three shapes)"
# Everything of cnnlab's imagefolder dataset, with the root and size set here.
defaults:
  - imagefolder
  - _self_
# Relative to the folder you run cnnlab from; replace it with your own root/CLASS/*.jpg tree.
root: data/my_images
channels: 3
image_size: 32
'''

MY_FIRST_YAML = '''# @package _global_
# A first run of my own model on my own images: `cnnlab train experiment=my_first`.
experiment:
  name: my_first
  description: "My CNN on my images: cross-entropy, Adam (lr 0.01), batch 16, 5 epochs"
defaults:
  - override /model: my_model
  - override /dataset: my_images
  - override /loss: ce
  - override /optimizer: adam
batch_size: 16
optimizer:
  lr: 0.01
trainer:
  max_epochs: 5
'''

README = '''# My cnnlab project

Written by `cnnlab init`. cnnlab finds the configs in `conf/` by itself when you run it from this folder; they sit
beside its built-in ones (an option of yours with a built-in name shadows it):

    conf/model/my_model.yaml       my_models.MyNet (my_models.py) with its own keys
    conf/dataset/my_images.yaml    the image folder data/my_images (one subfolder per class)
    conf/experiment/my_first.yaml  a preset: my model, my images, loss, optimizer, epochs

Try:

    cnnlab list                                   # your options are listed with the folder they come from
    cnnlab train experiment=my_first              # a run folder under outputs/runs/
    cnnlab train experiment=my_first model.width=32 loss=nll
    cnnlab eval outputs/runs/DAY/TIME_my_model_ce
    cnnlab predict outputs/runs/DAY/TIME_my_model_ce data/my_images/circle/000.png

Run cnnlab from this folder: it imports `my_models` from the working folder. Your own images: put them in
data/my_images/CLASS/*.jpg (or set `root:` in conf/dataset/my_images.yaml). Configs kept elsewhere: `--config-dir DIR`
or the CNNLAB_CONFIG_PATH variable.
'''

FILES = {
    "my_models.py": MY_MODELS,
    "conf/model/my_model.yaml": MY_MODEL_YAML,
    "conf/dataset/my_images.yaml": MY_IMAGES_YAML,
    "conf/experiment/my_first.yaml": MY_FIRST_YAML,
    "README.md": README,
}
IMAGES = "data/my_images"
CLASSES = ("circle", "square", "stripes")
PER_CLASS, SIZE = 40, 32


def parser() -> Parser:
    parser = Parser(prog="cnnlab init", description=(
        "Write a starter project into DIR (default: the working folder): my_models.py, conf/model/my_model.yaml, "
        "conf/dataset/my_images.yaml with generated images in data/my_images/, conf/experiment/my_first.yaml and a "
        "README. Existing files are never overwritten."))
    parser.add_argument("dir", nargs="?", default=".", type=Path, help="the project folder (made if absent)")
    return parser


def main(args: list[str]) -> int:
    folder = parser().parse_args(args).dir
    written = init(folder)
    for path in written:
        print(f"wrote {path}")
    print(f"next: cd {folder} && cnnlab train experiment=my_first")
    return 0


def init(folder: Path) -> list[Path]:
    """Write the starter project into `folder`; ConfigError (nothing written) when any of its files exists."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError("init", str(folder), message=f"{folder} is a file, not a folder (cnnlab init DIR)")
    taken = [name for name in [*FILES, IMAGES] if (folder / name).exists()]
    if taken:
        raise ConfigError("init", str(folder), message=(
            f"{folder / taken[0]} already exists; nothing written (cnnlab init never overwrites: choose another "
            "folder)"))
    written = []
    for name, text in FILES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    write_images(folder / IMAGES)
    written.append(folder / IMAGES)
    return written


def write_images(root: Path, per_class: int = PER_CLASS, size: int = SIZE, seed: int = 0) -> None:
    """Seeded PNGs, one folder per class: a filled circle, a filled square, or stripes, each at a random place,
    size and colour on a noisy background."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size]
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image = rng.integers(0, 80, size=(size, size, 3)).astype(np.float64)
            radius = rng.uniform(size * 0.2, size * 0.35)
            cy, cx = rng.uniform(radius, size - radius, size=2)
            if label == 0:
                mask = (ys - cy) ** 2 + (xs - cx) ** 2 <= radius ** 2
            elif label == 1:
                mask = (abs(ys - cy) <= radius * 0.85) & (abs(xs - cx) <= radius * 0.85)
            else:
                mask = ((ys + xs) // max(2, int(radius / 2))) % 2 == 0
            image[mask] = rng.integers(140, 256, size=3)
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / name / f"{index:03d}.png")
