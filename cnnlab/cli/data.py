"""`cnnlab data show [--count N] [--out FILE.png] [overrides]`: a PNG grid of augmented training samples."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnlab.cli.common import Parser
from cnnlab.errors import ConfigError

USAGE = """usage: cnnlab data show [--count N] [--out FILE.png] [overrides]

Writes a grid of N (default 32) training images as the model sees them (augmented, before normalisation),
titled with their class names (the mixing weights after mixup/cutmix), from the same composed config as
`cnnlab train`, e.g.:  cnnlab data show dataset=cifar10 augmentation=[standard,cutmix]
"""




def parser() -> Parser:
    parser = Parser(prog="cnnlab data show", description=USAGE.split("\n\n", 1)[1].strip())
    parser.add_argument("--count", type=int, default=32, help="how many samples (default 32)")
    parser.add_argument("--out", type=Path, default=None, help="the PNG to write (default outputs/data/...)")
    parser.add_argument("--config-dir", action="append", default=[], metavar="DIR",
                        help="a folder of your own configs (GROUP/NAME.yaml), as for cnnlab train")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for cnnlab train")
    return parser


def compose_config(overrides: list[str], config_dirs: Sequence[str] = ()) -> tuple[Any, dict[str, str]]:
    """The config `cnnlab train` would run with these overrides (Hydra's compose API), and the group choices."""
    from hydra.core.hydra_config import HydraConfig

    from cnnlab.config import compose

    cfg = compose(overrides, job_name="data_show", config_dirs=config_dirs)
    choices = {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
    for override in overrides:  # a list of options (augmentation=[standard,mixup]) is not among the choices
        group, _, value = override.partition("=")
        if value.startswith("[") and group.isidentifier():
            choices[group] = "+".join(v.strip() for v in value.strip("[]").split(","))
    return cfg, choices


def show(args: list[str]) -> int:
    """`cnnlab data show`: compose, build the data module the training would use, write the grid."""
    from cnnlab.data.show import augmented_samples, render
    from cnnlab.train.build import build_datamodule
    from cnnlab.train.environment import quiet_libraries
    from cnnlab.validate import validate

    quiet_libraries()  # class names a font lacks are drawn as boxes: no warning per glyph
    options = parser().parse_args(args)
    if options.count < 1:
        raise ConfigError("--count", options.count, "a positive integer")
    count, out, overrides = options.count, options.out, options.overrides
    cfg, choices = compose_config(overrides, options.config_dir)
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
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if args[0] != "show":
        raise ConfigError("data", args[0], "the subcommand show (see cnnlab data --help)")
    return show(args[1:])
