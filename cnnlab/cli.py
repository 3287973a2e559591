"""`cnnlab` command line: picks the subcommand; `train` hands its arguments to Hydra untouched.

Heavy imports (torch, Lightning) happen inside the subcommands so that `--help` and `list` stay instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from cnnlab.config import user_message

USAGE = """usage: cnnlab COMMAND [ARGS]

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


# Hydra's sweeper and launcher options come from plugins, installed with cnnlab's extras.
PLUGIN_EXTRAS = {
    "hydra/sweeper": " (optuna comes with pip install -e '.[search]')",
    "hydra/launcher": " (joblib and slurm come with pip install -e '.[launchers]')",
}


def fail(message: str) -> int:
    """One line on stderr; exit code 2 for input the user can fix."""
    from cnnlab.config import report

    return report(message)


TRAIN_HELP = """usage: cnnlab train [group=option ...] [key=value ...] [+key=value ...]
       cnnlab train -m group=a,b key=1,2 ...     (Hydra multirun: one run per combination)

Composes conf/train.yaml with one option per config group and your overrides (Hydra's override grammar),
trains, tests, and writes a run folder under outputs/. Useful Hydra flags: --cfg job (print the composed config),
--info, --hydra-help, --shell-completion. Config groups and their options:

"""


def train(args: list[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        # Hydra's own --help composes every group option (about a second); this lists the same from conf/ at once.
        from cnnlab.listing import show

        print(TRAIN_HELP + show([]), end="")
        return 0
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # errors come to us whole; we print one line for user errors
    from cnnlab.config import ConfigError
    from cnnlab.resume import hydra_args

    try:
        args = hydra_args(args)  # resume=RUN_DIR / ckpt_path=FILE -> the overrides that continue that run
    except ConfigError as error:
        return fail(str(error))
    from cnnlab.train import hydra_entry

    sys.argv = ["cnnlab train", *args]
    try:
        hydra_entry()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise
        return fail(message)
    return 0


def list_options(args: list[str]) -> int:
    from cnnlab.listing import show

    try:
        print(show(args), end="")
    except ValueError as error:
        return fail(str(error))
    return 0


class Parser(argparse.ArgumentParser):
    """argparse for the non-Hydra subcommands: a usage mistake is one line and exit 2, like every other one."""

    def error(self, message: str) -> None:  # type: ignore[override]
        from cnnlab.config import ConfigError

        raise ConfigError("arguments", message=f"{self.prog}: {message} (see {self.prog} --help)")


def subcommand(module: str, args: list[str]) -> int:
    """Run `<module>.main(args)`, turning user errors into one line and exit code 2."""
    try:
        code = importlib.import_module(module).main(args)
    except SystemExit as exit_:  # argparse's --help
        return exit_.code if isinstance(exit_.code, int) else 0
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise
        return fail(message)
    return 0 if code is None else code


COMMANDS = {
    "train": train,
    "eval": lambda args: subcommand("cnnlab.evaluate", args),
    "predict": lambda args: subcommand("cnnlab.predict", args),
    "compare": lambda args: subcommand("cnnlab.compare", args),
    "list": list_options,
    "lr-find": lambda args: subcommand("cnnlab.lrfind", args),
    "data": lambda args: subcommand("cnnlab.data.show", args),
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    command, rest = args[0], args[1:]
    if command in COMMANDS:
        return COMMANDS[command](rest)
    return fail(f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)} (see cnnlab --help)")


if __name__ == "__main__":
    sys.exit(main())
