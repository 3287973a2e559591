"""`cnnlab` command line: picks the subcommand (one module each in this folder).

Heavy imports (torch, Lightning) happen inside the subcommands so that `--help` and `list` stay instant.
"""

from __future__ import annotations

import sys

from cnnlab.cli.common import module_command
from cnnlab.config import project_importable
from cnnlab.errors import report

USAGE = """usage: cnnlab COMMAND [ARGS]       (cnnlab --version: the installed version)

commands:
  train [overrides]        train one configuration (Hydra overrides: group=option key=value)
  train -m [sweeps]        sweep with Hydra multirun, e.g. cnnlab train -m loss=ce,nll
  train resume=RUN_DIR     continue an interrupted run in its folder (or ckpt_path=FILE)
  train -m resume=SWEEP_DIR  continue an interrupted sweep: done jobs kept, the interrupted one resumed
  train cv.folds=K         k-fold cross-validation: K runs, each validating on one stratified fold
  eval RUN_OR_CKPT [k=v]   test metrics of a trained run (split=val for validation; data_dir=... etc.)
  predict RUN_OR_CKPT IMAGE_OR_DIR... [--top-k K] [--format table|json|csv]
                           class names and probabilities for image files
  export RUN_OR_CKPT --format onnx|torchscript [--out FILE] [--opset N] [--dynamic-batch]
                           the network as one file, checked against PyTorch; preprocessing in a JSON beside it
  inspect RUN_OR_CKPT [IMAGE...] [--layer NAME] [--class C]
                           PNGs in RUN/inspect/: filters, feature maps, Grad-CAM, worst mistakes, per-class accuracy
  compare RUN_OR_SWEEP_DIR... [--format table|md|csv] [--output FILE]
                           runs side by side: differing choices, best/test metrics, overlaid curves
  list [GROUP [OPTION]]    list every group's options, or show one option's config
  lr-find [overrides]      learning-rate range test on the composed config; prints the lr to use
  data show [overrides]    write a PNG grid of augmented training samples with their class names
  init [DIR]               write a starter project: your own model class, dataset and preset configs

Your own configs: conf/GROUP/NAME.yaml in the working folder, --config-dir DIR or CNNLAB_CONFIG_PATH (train, list,
lr-find, data show); they come before the built-in ones. Runs remember them (resume=, eval, predict).

`cnnlab train --help` lists the config groups; `cnnlab train --cfg job` prints the composed config;
`cnnlab COMMAND --help` lists the options of eval, predict, export, inspect, compare, lr-find and data show.
Tab completion of `cnnlab train` (your options too): eval "$(cnnlab -sc install=bash)".
"""

COMMANDS = {
    "train": module_command("train"),
    "eval": module_command("eval"),
    "predict": module_command("predict"),
    "compare": module_command("compare"),
    "list": module_command("listing"),
    "lr-find": module_command("lrfind"),
    "data": module_command("data"),
    "init": module_command("init"),
    "export": module_command("export"),
    "inspect": module_command("inspect"),
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if args[0] in ("-V", "--version"):
        from cnnlab import __version__

        print(f"cnnlab {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command in ("-sc", "--shell-completion"):  # Hydra's tab completion: `eval "$(cnnlab -sc install=bash)"`
        command, rest = "train", args
    if command in COMMANDS:
        project_importable()  # the user's modules in the working folder (`_target_: my_models.MyNet`)
        return COMMANDS[command](rest)
    return report(f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)} (see cnnlab --help)")


if __name__ == "__main__":
    sys.exit(main())
