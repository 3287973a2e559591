"""The `${cnnlab.*:...}` OmegaConf resolvers the built-in configs use, in one registry.

- `cnnlab.pick`, `cnnlab.class_names`, `cnnlab.num_classes`: dataset YAMLs derive class counts and names.
- `cnnlab.direction`, `cnnlab.study_storage`: conf/hparams_search/optuna.yaml's direction and storage.
- `cnnlab.process_tag`: a short tag unique to this process, so default run folder names never collide.

Registered when cnnlab is imported (cnnlab/__init__.py), so every entry point knows them; each imports nothing
heavy until a config actually uses it.
"""

from __future__ import annotations

import functools
import secrets
from typing import Any

from cnnlab.config import monitor_mode
from cnnlab.errors import ConfigError


def pick(key: str, choice: Any, options: Any) -> Any:
    """`${cnnlab.pick:dataset.labels,${.labels},${.label_sets}}`: options[choice], or a ConfigError naming key."""
    if choice not in options:
        raise ConfigError(key, choice, "one of " + ", ".join(str(o) for o in options))
    return options[choice]


def class_names(root: str | None) -> list[str]:
    """`${cnnlab.class_names:${.root}}`: the class folder names of an image tree."""
    from cnnlab.data.folders import layout

    return layout(root).classes


def num_classes(root: str | None) -> int:
    """`${cnnlab.num_classes:${.root}}`: the number of class folders of an image tree."""
    return len(class_names(root))


def direction(*, _root_: Any) -> str:
    """Optuna's direction for the monitored metric: `minimize` when lower is better (`monitor_mode`)."""
    return "minimize" if monitor_mode(_root_) == "min" else "maximize"


def study_storage(storage: str | None, sweep_dir: str) -> str:
    """The storage URL given by the user, else SQLite in the sweep folder (so the same command resumes the study)."""
    return str(storage) if storage else f"sqlite:///{sweep_dir}/optuna.db"


@functools.cache
def process_tag() -> str:
    """`${cnnlab.process_tag:}`: 4 random hex digits, drawn once per process (two runs started in the same
    microsecond by two processes still get two folders; every resolution in one process agrees)."""
    return secrets.token_hex(2)


RESOLVERS = (("cnnlab.pick", pick, False), ("cnnlab.class_names", class_names, True),
             ("cnnlab.num_classes", num_classes, True), ("cnnlab.direction", direction, False),
             ("cnnlab.study_storage", study_storage, False), ("cnnlab.process_tag", process_tag, False))


def register_resolvers() -> None:
    """Make the `cnnlab.*` resolvers known to OmegaConf (idempotent)."""
    from omegaconf import OmegaConf

    for name, function, cache in RESOLVERS:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function, use_cache=cache)
