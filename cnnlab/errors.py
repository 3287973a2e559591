"""User-fixable errors and how they reach the user: one line on stderr, exit code 2.

The bottom of the package: imports nothing of cnnlab, so every layer may raise ConfigError.
"""

from __future__ import annotations

import difflib
import errno
import re
import sys
from typing import Any, TypeVar

E = TypeVar("E", bound=BaseException)


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


def _in_chain(error: BaseException, kind: type[E]) -> E | None:
    """The first exception of `kind` in the chain of causes and contexts of `error`, else None."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def file_write_error_in(error: BaseException) -> FileWriteError | None:
    """The FileWriteError that a library wrapped (torch around a checkpoint save, say), else None."""
    return _in_chain(error, FileWriteError)


# Hydra groups whose options come from optional plugins: a missing option names the extra that installs them.
PLUGIN_EXTRAS = {
    "hydra/sweeper": " (optuna comes with pip install 'cnnlab[search]')",
    "hydra/launcher": " (joblib and slurm come with pip install 'cnnlab[launchers]')",
}


def config_error_in(error: BaseException) -> ConfigError | None:
    """The ConfigError that Hydra or OmegaConf wrapped (a target's or a resolver's), else None."""
    return _in_chain(error, ConfigError)


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
        if "Could not override" in text:
            unknown = _unknown_key(error.__cause__)
            if unknown is not None:
                return unknown
        grammar = _grammar_error(error)
        if grammar is not None:
            return grammar
        if not text.strip() and error.__cause__ is not None:
            text = f"{type(error.__cause__).__name__}: {error.__cause__}"
        return text
    return None


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    """Every key of a config as a dotted path (`optimizer.lr`), Hydra's own node left out."""
    keys = []
    for key, value in node.items():
        if not prefix and key == "hydra":
            continue
        path = f"{prefix}{key}"
        keys.append(path)
        if isinstance(value, dict):
            keys.extend(_dotted_keys(value, path + "."))
    return keys


def _unknown_key(cause: BaseException | None) -> str | None:
    """`optimizer.lrr=...` on a struct config: the full key, the closest existing keys, `+key` only for a new one."""
    full_key = getattr(cause, "full_key", None)
    parent = getattr(cause, "parent_node", None)
    if not full_key or parent is None:
        return None
    from omegaconf import OmegaConf

    root = OmegaConf.to_container(parent._get_root(), resolve=False, throw_on_missing=False)
    known = _dotted_keys(root) if isinstance(root, dict) else []
    parent_path, _, leaf = full_key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent_path}
    close = [siblings[m] for m in difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.6)]
    if not close:  # `lr=...` meant `optimizer.lr=...`
        close = [k for k in known if k.rpartition(".")[2] == leaf]
    if not close:
        leaves = difflib.get_close_matches(leaf, {k.rpartition(".")[2] for k in known}, n=3, cutoff=0.6)
        close = [k for k in known if k.rpartition(".")[2] in leaves][:3]
    message = f"unknown key '{full_key}': not in the config"
    if close:
        return message + "; did you mean " + " or ".join(f"'{k}'" for k in close) + "?"
    return message + f" (to add a key of your own, write +{full_key}=VALUE)"


def _grammar_error(error: BaseException) -> str | None:
    """Hydra could not parse an override (a `~`, a space, a bracket): show the value quoted the way Hydra reads it."""
    override = getattr(error, "override", None)
    if type(error).__name__ != "OverrideParseException" or not override:
        return None
    key, sep, value = str(override).partition("=")
    if not sep:
        return f"cannot read the override {override!r}: write it as key=value (see cnnlab train --help)"
    quote = "'" if '"' in value else '"'
    shell = "\"" if quote == "'" else "'"
    quoted = f"{shell}{key}={quote}{value}{quote}{shell}"
    return (f"cannot read the override {override}: Hydra reads a value with ~, spaces, brackets or other special "
            f"characters only inside quotes; write {quoted}")
