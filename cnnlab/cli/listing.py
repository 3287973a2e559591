"""`cnnlab list`: every config group's options with their one-line description, read from conf/ (no torch)."""

from __future__ import annotations

from pathlib import Path

import yaml

from cnnlab.config import CONF_DIR
from cnnlab.errors import ConfigError

PRIMARY = "primary config"


def groups(conf_dir: Path = CONF_DIR) -> dict[str, list[Path]]:
    """Each config group under conf/ (nested ones named like `hydra/launcher`) and its option files, sorted."""
    found = {}
    for folder in sorted(p for p in conf_dir.rglob("*") if p.is_dir()):
        name = folder.relative_to(conf_dir).as_posix()
        files = sorted(folder.glob("*.yaml"))
        if files and not any(part.startswith((".", "_")) for part in name.split("/")):
            found[name] = files
    return found


def primary_configs(conf_dir: Path = CONF_DIR) -> list[Path]:
    """The YAML files at the top of conf/ (train.yaml): what `cnnlab train` composes from."""
    return sorted(conf_dir.glob("*.yaml"))


def description(path: Path) -> str:
    """An option's `description:` (presets in the global package keep theirs under their group's key), else the
    file's first comment line (for configs that take no extra keys)."""
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    if isinstance(data, dict):
        node = data if "description" in data else data.get(path.parent.name)
        if isinstance(node, dict) and node.get("description"):
            return " ".join(str(node["description"]).split())
        if str(data.get("_target_", "")).endswith("zoo.torchvision_model") and data.get("arch"):
            from cnnlab.models.architectures import describe

            return describe(str(data["arch"]))
    for line in text.splitlines():
        if line.startswith("#") and line.lstrip("#").strip() and not line.startswith("# @package"):
            return line.lstrip("#").strip()
    return ""


def show(args: list[str], conf_dir: Path = CONF_DIR) -> str:
    """The listing text for `cnnlab list [GROUP [OPTION]]` (`cnnlab list train` shows conf/train.yaml)."""
    found = groups(conf_dir)
    primary = {p.stem: p for p in primary_configs(conf_dir)}
    if len(args) == 1 and args[0] in primary and args[0] not in found:
        return f"# {PRIMARY} ({primary[args[0]]})\n" + primary[args[0]].read_text()
    if args and args[0] not in found:
        raise ConfigError("list", args[0], message=(
            f"no config group {args[0]!r}; choose one of: {', '.join([*found, *primary])}"))
    if len(args) >= 2:
        names = {p.stem: p for p in found[args[0]]}
        if args[1] not in names:
            raise ConfigError("list", args[1], message=(
                f"{args[0]}={args[1]}: no such option; choose one of: {', '.join(names)}"))
        return f"# {args[0]}={args[1]}  ({names[args[1]]})\n" + names[args[1]].read_text()
    sections = {group: files for group, files in found.items() if not args or group == args[0]}
    if not args and primary:
        sections[f"{PRIMARY} (`cnnlab list NAME` shows it)"] = list(primary.values())
    lines = []
    for heading, files in sections.items():
        lines.append(f"{heading}:")
        width = max(len(p.stem) for p in files)
        lines += [f"  {p.stem:<{width}}  {description(p)}" for p in files]
    return "\n".join(lines) + "\n"


def main(args: list[str]) -> int:
    print(show(args), end="")
    return 0
