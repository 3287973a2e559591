"""`cnnlab lr-find [overrides]`: Lightning's learning-rate range test on the composed config."""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

from cnnlab.cli.common import Parser
from cnnlab.config import compose
from cnnlab.errors import ConfigError
from cnnlab.validate import validate


def parse(args: list[str]) -> tuple[Any, list[str]]:
    parser = Parser(prog="cnnlab lr-find", description=__doc__)
    parser.add_argument("--min-lr", type=float, default=1e-7, help="start of the range (default 1e-7)")
    parser.add_argument("--max-lr", type=float, default=1.0, help="end of the range (default 1)")
    parser.add_argument("--steps", type=int, default=100, help="training steps over the range (default 100)")
    parser.add_argument("--output", type=Path, default=None, help="folder for lr_find.png and lr_find.json")
    parser.add_argument("--config-dir", action="append", default=[], metavar="DIR",
                        help="a folder of your own configs (GROUP/NAME.yaml), as for cnnlab train")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for cnnlab train")
    options = parser.parse_args(args)
    if not 0 < options.min_lr < options.max_lr:
        raise ConfigError("--min-lr", options.min_lr, f"a positive number below --max-lr ({options.max_lr})")
    if options.steps < 2:
        raise ConfigError("--steps", options.steps, "an integer >= 2")
    return options, options.overrides


def run(args: list[str]) -> dict[str, Any]:
    """Run the range test, write the loss-vs-lr plot and the figures, print the override to use."""
    options, overrides = parse(args)
    cfg = compose(overrides, config_dirs=options.config_dir)
    validate(cfg)
    import pytorch_lightning as pl
    from pytorch_lightning.tuner import Tuner

    from cnnlab.train.build import build_datamodule, build_module, summarize_model
    from cnnlab.train.environment import quiet_libraries

    quiet_libraries()
    out = options.output or Path("outputs") / "lr_find" / time.strftime("%Y-%m-%d/%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, manual=False)  # Lightning's lr finder steps the optimizer itself, batch by batch
    # One forward pass, as `train` does: the input-size check for any class (and lazy layers get their shapes).
    summarize_model(module.model, cfg, module.objective.output_units(cfg.dataset.num_classes,
                                                                      cfg.dataset.get("multilabel", False)))
    # max_epochs=-1: the range test ends after its own number of steps (no "max_epochs was not set" warning)
    trainer = pl.Trainer(accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices,
                         precision=cfg.trainer.precision, default_root_dir=str(out), logger=False, max_epochs=-1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    # Lightning's range test draws its own tqdm bar whatever enable_progress_bar says: hand it a disabled one.
    from pytorch_lightning.tuner import lr_finder

    bar = lr_finder.tqdm
    lr_finder.tqdm = functools.partial(bar, disable=True)
    # "Failed to compute suggestion": cnnlab says so itself, with the plot to look at
    logging.getLogger(lr_finder.__name__).setLevel(logging.CRITICAL)
    try:
        finder = Tuner(trainer).lr_find(module, datamodule=datamodule, min_lr=options.min_lr, max_lr=options.max_lr,
                                        num_training=options.steps, update_attr=False)
    finally:
        lr_finder.tqdm = bar
    suggestion = finder.suggestion() if finder is not None else None
    import matplotlib

    matplotlib.use("Agg")
    fig = finder.plot(suggest=suggestion is not None)
    fig.savefig(out / "lr_find.png", dpi=100)
    result = {"suggested_lr": suggestion, "min_lr": options.min_lr, "max_lr": options.max_lr,
              "steps": options.steps, "overrides": overrides,
              "lr": [float(x) for x in finder.results["lr"]], "loss": [float(x) for x in finder.results["loss"]]}
    (out / "lr_find.json").write_text(json.dumps(result, indent=2) + "\n")
    if suggestion is None:
        print(f"lr-find: no suggestion (the loss curve had no usable slope); see {out / 'lr_find.png'}")
    else:
        command = " ".join(["cnnlab train", *overrides, f"optimizer.lr={suggestion:.3g}"])
        print(f"suggested learning rate: {suggestion:.3g}")
        print(f"use: {command}")
        print(f"plot: {out / 'lr_find.png'}")
    return result


def main(args: list[str]) -> int:
    run(args)
    return 0
