"""The package's shape: each folder is one job and imports run one way (docs/ARCHITECTURE.md).

Every import of a cnnlab module counts, also the ones inside functions (they still make one layer depend on
another; they only delay the cost of importing torch).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cnnlab"

# Lower layers never import higher ones; packages on the same layer never import each other.
LAYERS = {
    "cnnlab.errors": 0, "cnnlab.machine": 0,
    "cnnlab.config": 1,
    "cnnlab.data": 2, "cnnlab.models": 2, "cnnlab.runs": 2,
    "cnnlab.train": 3,
    "cnnlab.validate": 4,
    "cnnlab.cli": 5, "cnnlab.resolvers": 5,
    "cnnlab.__main__": 6, "cnnlab.api": 6,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def unit(module: str) -> str:
    """The layer unit a module belongs to: its top-level module or sub-package."""
    return ".".join(module.split(".")[:2])


def imports(path: Path) -> set[str]:
    """The cnnlab modules a file imports (a `from package import name` counts `package.name` when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("cnnlab")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnnlab") and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


GRAPH = {name: imports(path) for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    missing = sorted({unit(m) for m in MODULES if m != "cnnlab" and unit(m) not in LAYERS})
    assert not missing, f"add these to LAYERS (and to docs/ARCHITECTURE.md): {missing}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "cnnlab"))
def test_imports_run_downward(module: str):
    here = unit(module)
    wrong = []
    for target in GRAPH[module]:
        there = unit(target)
        if target == "cnnlab" or there == here:
            continue
        if LAYERS[there] >= LAYERS[here]:
            wrong.append(f"{target} (layer {LAYERS[there]})")
    assert not wrong, f"{module} (layer {LAYERS[here]}) imports upward or sideways: {', '.join(sorted(wrong))}"


def test_no_import_cycles():
    """No module reaches itself through the imports of others (function-level imports included)."""
    cycles = []
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(GRAPH.get(name, ())):
            if target not in GRAPH or target == "cnnlab":
                continue
            if state.get(target) == 1:
                cycles.append(" -> ".join([*trail[trail.index(target):], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_the_checker_finds_an_upward_import(tmp_path: Path):
    """The rules above are not vacuous: a file importing upward is seen as such."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from cnnlab.cli.train import run\n    from cnnlab.data import sources\n")
    assert imports(sample) == {"cnnlab.cli.train", "cnnlab.data.sources"}
    assert LAYERS[unit("cnnlab.cli.train")] > LAYERS[unit("cnnlab.data.sources")]
