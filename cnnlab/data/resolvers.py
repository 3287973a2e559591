"""OmegaConf resolvers that let dataset YAMLs derive values (class counts, names) the models then interpolate.

Registered when cnnlab is imported; they import nothing heavy until a config actually uses them.
"""

from __future__ import annotations

from typing import Any


def pick(key: str, choice: Any, options: Any) -> Any:
    """`${cnnlab.pick:dataset.labels,${.labels},${.label_sets}}`: options[choice], or a ConfigError naming key."""
    from cnnlab.config import ConfigError

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


def register_resolvers() -> None:
    """Make the `cnnlab.*` resolvers known to OmegaConf (idempotent)."""
    from omegaconf import OmegaConf

    for name, function, cache in (("cnnlab.pick", pick, False), ("cnnlab.class_names", class_names, True),
                                  ("cnnlab.num_classes", num_classes, True)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function, use_cache=cache)
