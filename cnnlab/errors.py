"""User-fixable errors and how they reach the user: one line on stderr, exit code 2.

The bottom of the package: imports nothing of cnnlab, so every layer may raise ConfigError.
"""

from __future__ import annotations

import errno
import re
import sys
from typing import Any


class ConfigError(Exception):
    """A mistake the user can fix: the message names the key, the bad value and what is allowed."""

    def __init__(self, key: str, value: Any = None, allowed: str = "", message: str | None = None):
        self.key, self.value, self.allowed = key, value, allowed
        if message is None:
            message = f"{key}={value!r} is not allowed" + (f": {allowed}" if allowed else "")
        super().__init__(message)


def report(message: str) -> int:
    """Print a user error as one line on stderr; returns the exit code for it (2)."""
    print("cnnlab: error: " + " ".join(str(message).split()), file=sys.stderr)
    return 2


class FileWriteError(Exception):
    """A file could not be written (disk full, file-size limit, read-only, name too long, no permission): the
    message names the file and the cause; the command reports it as one line (exit code 1)."""

    def __init__(self, path: Any, cause: OSError):
        self.path, self.cause = path, cause
        code = errno.errorcode.get(cause.errno or 0, "")
        reason = cause.strerror or str(cause)
        super().__init__(f"cannot write {path}: {reason}" + (f" ({code})" if code else ""))


def os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind an error (torch wraps a failed write in a RuntimeError whose context it is), else None."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def file_write_error_in(error: BaseException) -> FileWriteError | None:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, FileWriteError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


# Hydra groups whose options come from optional plugins: a missing option names the extra that installs them.
PLUGIN_EXTRAS = {
    "hydra/sweeper": " (optuna comes with pip install 'cnnlab[search]')",
    "hydra/launcher": " (joblib and slurm come with pip install 'cnnlab[launchers]')",
}


def config_error_in(error: BaseException) -> ConfigError | None:
    """The ConfigError that Hydra or OmegaConf wrapped (a target's or a resolver's), else None."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ConfigError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def user_message(error: BaseException) -> str | None:
    """The one-line message for a user-fixable error anywhere in the exception chain, else None."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

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
        if type(current).__name__ == "MisconfigurationException":  # Lightning's word on a Trainer setting
            return f"trainer: {current}"
        current = current.__cause__ or current.__context__
    if isinstance(error, (HydraException, OmegaConfBaseException)):
        text = str(error).split("Config search path")[0]
        text = re.sub(r"Set the environment variable HYDRA_FULL_ERROR.*", "", text)
        key = re.search(r"Key '([^']+)' is not in struct", str(error.__cause__ or ""))
        if "Could not override" in text and key:
            name = key.group(1)
            return f"unknown key '{name}': not in the config (add a new key with +{name}=VALUE)"
        if not text.strip() and error.__cause__ is not None:
            text = f"{type(error.__cause__).__name__}: {error.__cause__}"
        return text
    return None
