"""`cnnlab` command line: picks the subcommand; `train` hands its arguments to Hydra untouched.

Heavy imports (torch, Lightning) happen inside the subcommands so that `--help` and `list` stay instant.
"""

from __future__ import annotations

import os
import re
import sys

USAGE = """usage: cnnlab COMMAND [ARGS]

commands:
  train [overrides]        train one configuration (Hydra overrides: group=option key=value)
  train -m [sweeps]        sweep with Hydra multirun, e.g. cnnlab train -m loss=ce,nll
  list [GROUP [OPTION]]    list every group's options, or show one option's config

`cnnlab train --help` lists the config groups; `cnnlab train --cfg job` prints the composed config.
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


def _user_error(error: BaseException) -> str | None:
    """The one-line message for a user-fixable error anywhere in the exception chain, else None."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from cnnlab.config import ConfigError

    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConfigError):
            return str(current)
        if isinstance(current, MissingConfigException) and current.options:
            missing = current.missing_cfg_file or ""
            group, _, option = missing.rpartition("/")
            hint = PLUGIN_EXTRAS.get(group, "")
            return f"{group}={option}: no such option; choose one of: {', '.join(current.options)}{hint}"
        current = current.__cause__ or current.__context__
    if isinstance(error, (HydraException, OmegaConfBaseException)):
        text = str(error).split("Config search path")[0]
        text = re.sub(r"Set the environment variable HYDRA_FULL_ERROR.*", "", text)
        key = re.search(r"Key '([^']+)' is not in struct", str(error.__cause__ or ""))
        if "Could not override" in text and key:
            return f"unknown key '{key.group(1)}': not in the config (add a new key with +{key.group(1)}=VALUE)"
        if not text.strip() and error.__cause__ is not None:
            text = f"{type(error.__cause__).__name__}: {error.__cause__}"
        return text
    return None


def train(args: list[str]) -> int:
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # errors come to us whole; we print one line for user errors
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
        message = _user_error(error)
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
    return fail(f"unknown command {command!r}; choose one of: train, list (see cnnlab --help)")


if __name__ == "__main__":
    sys.exit(main())
