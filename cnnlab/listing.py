"""`cnnlab list`: every config group's options with their one-line description, read from conf/ (no torch)."""

from __future__ import annotations

from pathlib import Path

import yaml

from cnnlab.config import CONF_DIR


def groups(conf_dir: Path = CONF_DIR) -> dict[str, list[Path]]:
    """Each group folder under conf/ and its option files, sorted."""
    return {d.name: sorted(d.glob("*.yaml")) for d in sorted(conf_dir.iterdir()) if d.is_dir()
            and not d.name.startswith((".", "_")) and d.name != "hydra"}


def description(path: Path) -> str:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        return ""
    # An option in the global package (e.g. hparams_search) keeps its description under its group's key.
    own = data.get(path.parent.name)
    return str(data.get("description") or (own.get("description", "") if isinstance(own, dict) else "")).strip()


def show(args: list[str], conf_dir: Path = CONF_DIR) -> str:
    """The listing text for `cnnlab list [GROUP [OPTION]]`."""
    found = groups(conf_dir)
    if args and args[0] not in found:
        raise ValueError(f"no config group {args[0]!r}; choose one of: {', '.join(found)}")
    if len(args) >= 2:
        names = {p.stem: p for p in found[args[0]]}
        if args[1] not in names:
            raise ValueError(f"{args[0]}={args[1]}: no such option; choose one of: {', '.join(names)}")
        return f"# {args[0]}={args[1]}  ({names[args[1]]})\n" + names[args[1]].read_text()
    lines = []
    for group, files in found.items():
        if args and group != args[0]:
            continue
        lines.append(f"{group}:")
        width = max((len(p.stem) for p in files), default=0)
        lines += [f"  {p.stem:<{width}}  {description(p)}" for p in files]
    return "\n".join(lines) + "\n"
