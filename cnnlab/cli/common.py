"""What every cnnlab command shares: one argument-parser style and one error policy.

- A user-fixable mistake (a ConfigError, a Hydra or OmegaConf error about the config, a usage mistake) is one line
  on stderr and exit code 2 (`cnnlab.errors.report`).
- `--help` exits 0; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cnnlab.errors import ConfigError, file_write_error_in, report, user_message


class Parser(argparse.ArgumentParser):
    """argparse for cnnlab's subcommands: a usage mistake is one line and exit 2, like every other one."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError("arguments", message=f"{self.prog}: {message} (see {self.prog} --help)")


def run_command(command: Callable[[list[str]], int | None], args: list[str]) -> int:
    """Run `command(args)`, turning user errors into one line and exit code 2."""
    try:
        code = command(args)
    except SystemExit as exit_:  # argparse's --help
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except Exception as error:
        message = user_message(error)
        if message is None:
            written = file_write_error_in(error)
            if written is None:
                raise
            report(str(written))
            return 1
        return report(message)
    return 0 if code is None else code


TRUST_HELP = ("run the targets this run's saved config names even when they are not on cnnlab's allow-list "
              "(only for run folders and checkpoints you made or trust: a saved config can name any Python callable)")


def module_command(module: str) -> Callable[[list[str]], int]:
    """`cnnlab.cli.<module>.main`, imported only when the command runs (torch stays out of `--help` and `list`)."""
    return lambda args: run_command(lambda rest: importlib.import_module(f"cnnlab.cli.{module}").main(rest), args)


def restore_checked(path: str | Path, overrides: Sequence[str] = (), trust: bool = False) -> Any:
    """A trained run (cnnlab.train.trained.Restored) with its config, overrides applied, validated like a new run.

    Its `_target_`s must be on the allow-list unless `trust` (the user's --trust)."""
    from cnnlab.train.trained import restore
    from cnnlab.validate import validate

    restored = restore(path, list(overrides), trust=trust)
    validate(restored.cfg)
    return restored
