"""`cnnlab` command line: picks the subcommand (one module each in this folder).

Heavy imports (torch, Lightning) happen inside the subcommands so that `--help` and `list` stay instant.
"""

from __future__ import annotations

import sys

from cnnlab.cli.common import module_command
from cnnlab.errors import report

USAGE = """usage: cnnlab COMMAND [ARGS]       (cnnlab --version: the installed version)

commands:
  train [overrides]        train one configuration (Hydra overrides: group=option key=value)
  train -m [sweeps]        sweep with Hydra multirun, e.g. cnnlab train -m loss=ce,nll
  train resume=RUN_DIR     continue an interrupted run in its folder (or ckpt_path=FILE)
  eval RUN_OR_CKPT [k=v]   test metrics of a trained run (split=val for validation; data_dir=... etc.)
  predict RUN_OR_CKPT IMAGE_OR_DIR... [--top-k K] [--format table|json|csv]
                           class names and probabilities for image files
  compare RUN_OR_SWEEP_DIR... [--format table|md|csv] [--output FILE]
                           runs side by side: differing choices, best/test metrics, overlaid curves
  list [GROUP [OPTION]]    list every group's options, or show one option's config
  lr-find [overrides]      learning-rate range test on the composed config; prints the lr to use
  data show [overrides]    write a PNG grid of augmented training samples with their class names

`cnnlab train --help` lists the config groups; `cnnlab train --cfg job` prints the composed config;
`cnnlab COMMAND --help` lists the options of eval, predict, compare, lr-find and data show.
"""

COMMANDS = {
    "train": module_command("train"),
    "eval": module_command("eval"),
    "predict": module_command("predict"),
    "compare": module_command("compare"),
    "list": module_command("listing"),
    "lr-find": module_command("lrfind"),
    "data": module_command("data"),
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
    if command in COMMANDS:
        return COMMANDS[command](rest)
    return report(f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)} (see cnnlab --help)")


if __name__ == "__main__":
    sys.exit(main())
