"""Where the configs live, how a config node becomes an object, and the names that moved between versions.

Imports only cnnlab.errors; checks of a composed config live in cnnlab/validate.py.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Any

from cnnlab.errors import ConfigError, config_error_in

# The built-in configs, shipped inside the package (package data).
CONF_DIR = Path(__file__).resolve().parent / "conf"
GROUPS = ("model", "loss", "optimizer", "scheduler", "dataset", "augmentation", "trainer")

# The user's own config folders: `conf/` in the working folder when present, then CNNLAB_CONFIG_PATH (folders
# separated by the OS path separator, like PATH). Each holds group folders (model/, loss/, dataset/, ...) beside
# the built-in ones; an option with a built-in name shadows it.
CONFIG_PATH_ENV = "CNNLAB_CONFIG_PATH"
LOCAL_CONF = "conf"
# The folders this process was given with --config-dir (or config_dir= from Python), for the processes it starts
# (joblib workers, DDP ranks) and for the allow-list: set by `given_config_dirs`, read by `user_config_dirs`.
GIVEN_DIRS_ENV = "CNNLAB_GIVEN_CONFIG_DIRS"


def given_config_dirs(dirs: Sequence[str | Path]) -> None:
    """Remember folders the user named (--config-dir) for this process and its children: searched first, and
    their targets allowed in saved configs. Folders a resumed run recorded are never passed here: a run folder is
    data and may not extend what is trusted."""
    known = [p for p in os.environ.get(GIVEN_DIRS_ENV, "").split(os.pathsep) if p]
    new = [str(Path(d).expanduser().resolve()) for d in dirs]
    os.environ[GIVEN_DIRS_ENV] = os.pathsep.join(dict.fromkeys([*new, *known]))


def user_config_dirs(extra: Sequence[str | Path] = ()) -> list[Path]:
    """The user's config folders for this process, resolved, in search order (existing folders only).

    `extra` (`--config-dir DIR`, `config_dir=` from Python, the folders a resumed run recorded) come first and
    must exist; then `conf/` in the working folder and CNNLAB_CONFIG_PATH, skipped when absent.
    """
    for given in extra:
        if not Path(given).expanduser().is_dir():
            raise ConfigError("--config-dir", str(given), message=(
                f"config folder {str(given)!r} does not exist (give a folder holding model/, dataset/, ... "
                "YAML files)"))
    given = [Path(p) for p in os.environ.get(GIVEN_DIRS_ENV, "").split(os.pathsep) if p]
    candidates = [*[Path(p).expanduser() for p in extra], *given, Path.cwd() / LOCAL_CONF]
    candidates += [Path(p).expanduser() for p in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep) if p.strip()]
    found: list[Path] = []
    for folder in candidates:
        folder = folder.resolve()
        if folder.is_dir() and folder != CONF_DIR.resolve() and folder not in found:
            found.append(folder)
    return found


CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def split_config_dirs(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(`--config-dir DIR` folders, the other arguments): cnnlab's flag, taken out wherever it stands."""
    dirs: list[str] = []
    rest: list[str] = []
    items = iter(args)
    for arg in items:
        flag, eq, value = arg.partition("=")
        if flag in CONFIG_DIR_FLAGS:
            if not eq:
                value = next(items, "")
            if not value:
                raise ConfigError("--config-dir", message="--config-dir needs a folder: --config-dir DIR")
            dirs.append(value)
        else:
            rest.append(arg)
    return dirs, rest


def search_path(config_dirs: Sequence[Path]) -> list[Path]:
    """Every config folder in search order: the user's (first found wins, so theirs shadow), then the built-in."""
    return [*config_dirs, CONF_DIR]


# The user's config folders of the Hydra call in progress (cnnlab.config.searching), for UserConfigSearchPath.
_SEARCH_DIRS: ContextVar[tuple[Path, ...]] = ContextVar("cnnlab_config_dirs", default=())


@contextmanager
def searching(config_dirs: Sequence[Path]) -> Iterator[None]:
    """Hydra calls inside (`hydra.main`, the compose API, shell completion) search `config_dirs` first.

    Hydra takes an option from the first folder of its search path that has it, and its own `--config-dir` and
    `hydra.searchpath` add folders after the primary (built-in) one, where a user's option could not shadow a
    built-in one; a SearchPathPlugin, registered here, puts them before it.
    """
    from hydra.core.plugins import Plugins

    Plugins.instance().register(_search_path_plugin())
    token = _SEARCH_DIRS.set(tuple(config_dirs))
    try:
        yield
    finally:
        _SEARCH_DIRS.reset(token)


@cache
def _search_path_plugin() -> type:
    from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    class UserConfigSearchPath(SearchPathPlugin):
        """The user's config folders, in order, just before cnnlab's built-in configs (Hydra's "main")."""

        def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
            for folder in _SEARCH_DIRS.get():
                search_path.prepend(provider=USER_PROVIDER, path=f"file://{folder}",
                                    anchor=SearchPathQuery(provider="main"))

    UserConfigSearchPath.__module__ = __name__
    return UserConfigSearchPath


USER_PROVIDER = "cnnlab user configs"


def config_folders_of(sources: Sequence[Any]) -> list[str]:
    """The user's config folders among Hydra's `hydra.runtime.config_sources` (what a run records): those this
    module's search path plugin added, never the built-in folder (runs of 0.1 name an in-tree conf/ as `main`)."""
    found = []
    for source in sources:
        path = str(source.get("path") or "")
        if source.get("provider") == USER_PROVIDER and source.get("schema") == "file" and path:
            found.append(path)
    return list(dict.fromkeys(found))


def project_importable(folder: str | Path | None = None) -> None:
    """Make the user's own modules in the working folder importable (`_target_: my_models.MyNet`), as with
    `python -m`: appended to sys.path, so installed packages keep their names."""
    path = str(Path(folder or Path.cwd()).resolve())
    if path not in sys.path:
        sys.path.append(path)


# Keys that describe an option for people (`cnnlab list`) or for cnnlab itself; never passed to `_target_`.
META_KEYS = ("description",)

# Dotted names that moved in cnnlab 0.2 (the regroup): configs saved by runs of 0.1 name the old ones.
MOVED = {
    "cnnlab.losses.": "cnnlab.train.losses.",
    "cnnlab.optim.": "cnnlab.train.optim.",
    "cnnlab.faults.SweepFailures": "cnnlab.runs.sweeps.SweepFailures",
    "cnnlab.sweep_summary.SweepSummary": "cnnlab.runs.sweeps.SweepSummary",
    "cnnlab.search.StudyStorage": "cnnlab.runs.sweeps.StudyStorage",
}


def current_name(target: str) -> str:
    """The dotted name a `_target_` has now (unchanged unless it moved)."""
    for old, new in MOVED.items():
        if target == old or (old.endswith(".") and target.startswith(old)):
            return new + target[len(old):]
    return target


def upgrade(node: Any) -> Any:
    """A saved config (plain data) with every moved `_target_` renamed, in place; returns it."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                node[key] = current_name(value)
            else:
                upgrade(value)
    elif isinstance(node, list):
        for item in node:
            upgrade(item)
    return node


def compose(overrides: list[str], job_name: str = "cnnlab", config_dirs: Sequence[str | Path] | None = None) -> Any:
    """The config `cnnlab train` would run with these overrides (Hydra's compose API on the same search path).

    `config_dirs`: the `--config-dir` folders (the working folder's conf/ and CNNLAB_CONFIG_PATH come after them).
    Hydra's runtime config is registered (so `${hydra:...}` values resolve and HydraConfig.get() answers, the group
    choices included) and the `hydra` node is dropped, as in a `cnnlab train` job's config.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()  # a `cnnlab train` earlier in this process (notebooks) leaves Hydra set up
    with searching(user_config_dirs(config_dirs or ())), \
            initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=job_name):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def instantiate(node: Any, drop: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` for one option node, leaving out the descriptive keys."""
    from hydra.utils import instantiate as hydra_instantiate
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    for key in (*META_KEYS, *drop):
        container.pop(key, None)
    try:
        return hydra_instantiate(container, **kwargs)
    except Exception as error:
        # Hydra wraps what the target raised; a user error inside must reach the user as itself.
        found = config_error_in(error)
        if found is not None:
            raise found from None
        raise


def monitor_mode(cfg: Any) -> str:
    """`min` or `max` for the monitored metric: taken from its name unless given."""
    if cfg.monitor_mode != "auto":
        return cfg.monitor_mode
    return "min" if "loss" in cfg.monitor else "max"


# ------------------------------------------------------------------ the allow-list for configs read back from disk

# Packages cnnlab builds on, by exact module: a target is allowed when it is the module + ONE public class name
# (no deeper attribute; for torchvision.models also its lowercase model builders), so `torch.nn.Conv2d` passes and
# `torch.load`, `torch.hub.load`, `builtins.open`, `os.system`, `torch.nn.functional.importlib` or
# `torch.nn.Module.__init__` do not. No class of these modules reads or runs a file or code given by name.
ALLOWED_MODULES = {"torch.nn.": "classes", "torch.optim.": "classes", "torch.optim.lr_scheduler.": "classes",
                   "torchvision.transforms.v2.": "classes", "timm.models.": "classes",
                   "torchvision.models.": "builders"}
TRUST_FLAG = "--trust"


def _targets_in_yaml(folder: Path) -> set[str]:
    """Every literal `_target_` value in the YAML files below `folder` (read as text data, nothing built)."""
    import yaml

    found: set[str] = set()
    for path in sorted(folder.rglob("*.yaml")):
        try:
            found |= set(_target_values(yaml.safe_load(path.read_text())))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
    return found


def _target_values(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k == "_target_" and isinstance(v, str) and "${" not in v]
        return found + [t for v in node.values() for t in _target_values(v)]
    if isinstance(node, list):
        return [t for item in node for t in _target_values(item)]
    return []


@functools.lru_cache(maxsize=1)
def catalogue_targets() -> frozenset[str]:
    """cnnlab's own targets: those its built-in configs name, and the names they had before they moved."""
    own = _targets_in_yaml(CONF_DIR)
    return frozenset(own | {old for old in MOVED if not old.endswith(".")})


def user_targets() -> set[str]:
    """The targets the user's own config folders (user_config_dirs) name."""
    found: set[str] = set()
    for folder in user_config_dirs():
        found |= _targets_in_yaml(folder)
    return found


def target_allowed(target: Any, extra: set[str] = frozenset()) -> bool:
    """Whether a `_target_` read back from disk may be imported and called (checked by exact dotted name).

    `null` names nothing to build (scheduler=none)."""
    if target is None:
        return True
    if not isinstance(target, str):
        return False
    name = current_name(target)
    if target in extra or name in extra or name in catalogue_targets():
        return True
    for prefix, kind in ALLOWED_MODULES.items():
        rest = name[len(prefix):] if name.startswith(prefix) else ""
        if rest.isidentifier() and (rest[0].isupper() or (kind == "builders" and rest[0].islower())):
            return True
    return False


def find_targets(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every `_target_` in plain data, at any depth (dicts, lists, `_args_`)."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                found.append((path or "(top)", value))
            else:
                found += find_targets(value, where)
    elif isinstance(node, (list, tuple)):
        for index, item in enumerate(node):
            found += find_targets(item, f"{path}[{index}]")
    return found


def check_targets(config: Any, source: str, trust: bool = False) -> None:
    """ConfigError naming the first `_target_` of a config read back from disk that is not on the allow-list.

    `config` is plain data or an OmegaConf node; a node is resolved first, so an interpolation that builds a
    target string is judged by what it builds. Nothing named is imported. With `trust` (the user's --trust) every
    target passes.
    """
    if trust:
        return
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if OmegaConf.is_config(config):
        try:
            config = OmegaConf.to_container(config, resolve=True)
        except OmegaConfBaseException as error:
            found = config_error_in(error)  # a resolver's own user error (an image tree without classes, say)
            if found is not None:
                raise found from None
            raise ConfigError("config", source, message=(
                f"cannot check the targets of the config in {source}: {' '.join(str(error).split())[:200]}")) \
                from None
    extra = user_targets()
    for key, target in find_targets(config):
        check_target(key, target, source, extra)


def check_target(key: str, target: Any, source: str, extra: set[str] | None = None) -> None:
    """ConfigError unless `target` (the `_target_` of `key` in `source`) is on the allow-list."""
    if not target_allowed(target, user_targets() if extra is None else extra):
        raise ConfigError(key, target, message=(
            f"{key}._target_={target!r} in {source} is not on cnnlab's allow-list (cnnlab's catalogue, "
            f"torch.nn/torch.optim/torchvision/timm classes, and the targets of the config folders you run with: "
            f"conf/ here, --config-dir, {CONFIG_PATH_ENV}): nothing was run; if you trust this file, add {TRUST_FLAG}"))


def override_name(override: str) -> str:
    """The key a Hydra override sets (`+a.b=1` -> `a.b`)."""
    return override.split("=", 1)[0].lstrip("+~")


def check_saved_overrides(saved: list[str], source: Path | str) -> None:
    """Saved overrides are data: no Hydra settings (callbacks, launchers), no target off the allow-list.

    Used for a resumed run (RUN/.hydra/overrides.yaml) and a resumed sweep (SWEEP/multirun.yaml). The config they
    compose is checked once more, resolved, as the run starts (cnnlab/cli/train.py run).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    for override in saved:
        if override_name(override).startswith("hydra"):
            raise ConfigError(override_name(override), override, message=(
                f"{source} sets Hydra's own settings ({override}), which a run folder never records: nothing was "
                "run; if you trust this file, add --trust"))
        if "_target_" not in override:
            continue
        try:
            parsed = OverridesParser.create().parse_override(override)
        except HydraException:
            raise ConfigError("overrides", override, message=f"{source}: cannot parse {override!r}") from None
        value = parsed.value()
        key = parsed.key_or_group
        if key == "_target_" or key.endswith("._target_"):
            check_target(key.removesuffix("_target_").rstrip(".") or "(top)", value, str(source))
        for where, target in find_targets(value, key):
            check_target(where, target, str(source))
