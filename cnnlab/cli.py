"""`cnnlab` command line: picks the subcommand; `train` hands its arguments to Hydra untouched.

Heavy imports (torch, Lightning) happen inside the subcommands so that `--help` and `list` stay instant.
"""

from __future__ import annotations

import os
import sys

from cnnlab.config import user_message

USAGE = """usage: cnnlab COMMAND [ARGS]

commands:
  train [overrides]        train one configuration (Hydra overrides: group=option key=value)
  train -m [sweeps]        sweep with Hydra multirun, e.g. cnnlab train -m loss=ce,nll
  train resume=RUN_DIR     continue an interrupted run in its folder (or ckpt_path=FILE)
  list [GROUP [OPTION]]    list every group's options, or show one option's config
  lr-find [overrides]      learning-rate range test on the composed config; prints the lr to use

  data show [overrides]    write a PNG grid of augmented training samples with their class names

`cnnlab train --help` lists the config groups; `cnnlab train --cfg job` prints the composed config.
"""


def fail(message: str) -> int:
    """One line on stderr; exit code 2 for input the user can fix."""
    from cnnlab.config import report

    return report(message)


def train(args: list[str]) -> int:
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


def lr_find(args: list[str]) -> int:
    from cnnlab.lrfind import run

    return _guarded(lambda: run(args))


def _guarded(action) -> int:
    """Run a subcommand; user errors become one line and exit 2."""
    try:
        action()
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise
        return fail(message)
    return 0

def data(args: list[str]) -> int:
    try:
        from cnnlab.data.show import main as data_main

        return data_main(args)
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise
        return fail(message)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    command, rest = args[0], args[1:]
    if command == "train":
        return train(rest)
    if command == "list":
        return list_options(rest)
    if command == "lr-find":
        return lr_find(rest)
    if command == "data":
        return data(rest)
    return fail(f"unknown command {command!r}; choose one of: train, list, lr-find, data (see cnnlab --help)")


if __name__ == "__main__":
    sys.exit(main())
