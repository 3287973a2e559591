"""`cnnlab list`: every config group's options with their one-line description, read from conf/ (no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cnnlab.cli.common import Parser
from cnnlab.config import CONF_DIR, search_path, user_config_dirs
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


@dataclass
class Option:
    """One group option as Hydra finds it: the first folder of the search path that has it wins."""

    path: Path
    folder: Path  # the config folder it comes from
    shadows: list[Path] = field(default_factory=list)  # the same option in folders further on, hidden by this one


def options(config_dirs: Sequence[Path] = ()) -> dict[str, dict[str, Option]]:
    """Every group's options over the search path (the user's folders, then the built-in), in group order."""
    found: dict[str, dict[str, Option]] = {}
    for folder in search_path(config_dirs):
        for group, files in groups(folder).items():
            for path in files:
                if path.stem in found.setdefault(group, {}):
                    found[group][path.stem].shadows.append(path)
                else:
                    found[group][path.stem] = Option(path, folder)
    return {group: dict(sorted(found[group].items())) for group in sorted(found)}


def _origin(option: Option) -> str:
    if option.folder == CONF_DIR:
        return ""
    shadowed = " (shadows the built-in one)" if any(p.is_relative_to(CONF_DIR) for p in option.shadows) else \
        " (shadows one further on the search path)" if option.shadows else ""
    return f"  [{option.folder}{shadowed}]"


def show(args: list[str], config_dirs: Sequence[Path] = ()) -> str:
    """The listing text for `cnnlab list [GROUP [OPTION]]` (`cnnlab list train` shows conf/train.yaml).

    `config_dirs`: the user's config folders (cnnlab.config.user_config_dirs), searched before the built-in one.
    """
    found = options(config_dirs)
    primary = {p.stem: p for p in primary_configs(CONF_DIR)}
    if len(args) == 1 and args[0] in primary and args[0] not in found:
        return f"# {PRIMARY} ({primary[args[0]]})\n" + primary[args[0]].read_text()
    if args and args[0] not in found:
        raise ConfigError("list", args[0], message=(
            f"no config group {args[0]!r}; choose one of: {', '.join([*found, *primary])}"))
    if len(args) >= 2:
        names = found[args[0]]
        if args[1] not in names:
            raise ConfigError("list", args[1], message=(
                f"{args[0]}={args[1]}: no such option; choose one of: {', '.join(names)}"))
        option = names[args[1]]
        hidden = "".join(f"# shadows {path}\n" for path in option.shadows)
        return f"# {args[0]}={args[1]}  ({option.path})\n{hidden}" + option.path.read_text()
    sections = {group: list(names.values()) for group, names in found.items() if not args or group == args[0]}
    lines = []
    if config_dirs and not args:
        lines.append("config folders, searched in this order (an option found first shadows one of the same name "
                     "further on): " + ", ".join([*map(str, config_dirs), f"{CONF_DIR} (built-in)"]))
    for heading, entries in sections.items():
        lines.append(f"{heading}:")
        width = max(len(o.path.stem) for o in entries)
        lines += [f"  {o.path.stem:<{width}}  {description(o.path)}{_origin(o)}" for o in entries]
    if not args and primary:
        lines.append(f"{PRIMARY} (`cnnlab list NAME` shows it):")
        width = max(map(len, primary))
        lines += [f"  {name:<{width}}  {description(path)}" for name, path in primary.items()]
    return "\n".join(lines) + "\n"


def parser() -> Parser:
    parser = Parser(prog="cnnlab list", description=(
        "Every config group's options with their descriptions (your own config folders first), or one option's "
        "YAML."))
    parser.add_argument("names", nargs="*", metavar="GROUP [OPTION]", help="a group, or a group and an option")
    parser.add_argument("--config-dir", action="append", default=[], metavar="DIR",
                        help="a folder of your own configs (GROUP/NAME.yaml), searched before conf/ and the built-in")
    return parser


def main(args: list[str]) -> int:
    parsed = parser().parse_args(args)
    print(show(parsed.names, user_config_dirs(parsed.config_dir)), end="")
    return 0
