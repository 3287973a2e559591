"""README's examples are what the commands print: the quick and short ones run here and must match README's text
(numbers to the digits shown; times and run-folder dates masked). `python scripts/readme_examples.py` rewrites them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_examples", ROOT / "scripts" / "readme_examples.py")
examples = importlib.util.module_from_spec(_spec)
sys.modules["readme_examples"] = examples  # dataclasses look their module up
_spec.loader.exec_module(examples)

EXAMPLES = examples.parse((ROOT / "README.md").read_text())
QUICK = [e for e in EXAMPLES if e.tier == "quick"]
SHORT = [e for e in EXAMPLES if e.tier == "short"]


def check(example, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    produced = examples.run(example, work, examples.environment(bin_dir), timeout=900)
    diff = examples.difference(example, produced)
    assert not diff, f"README example {example.name!r} differs from the real output " \
                     f"(python scripts/readme_examples.py --only {example.name} rewrites it):\n{diff}"


@pytest.mark.slow
@pytest.mark.parametrize("example", QUICK, ids=[e.name for e in QUICK])
def test_quick_example_matches_readme(example, tmp_path: Path):
    check(example, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("example", SHORT, ids=[e.name for e in SHORT])
def test_short_example_matches_readme(example, tmp_path: Path):
    check(example, tmp_path)


def test_every_tier_is_present_and_the_readme_blocks_parse():
    assert {e.tier for e in EXAMPLES} == {"quick", "short", "long"}
    assert {"help", "list-model", "bad-input", "optimizer-sweep", "loss-sweep", "interrupt-resume", "ddp"} <= \
        {e.name for e in EXAMPLES}
    assert all(e.commands for e in EXAMPLES)


def test_masking_keeps_numbers_and_hides_times():
    example = examples.parse("<!-- example: x quick -->\n```\n$ cnnlab train\ndone: epochs 2, 4.3s, best val_acc "
                             "0.7000 (epoch 1)\n```\n<!-- /example -->\n")[0]
    assert examples.difference(example, "$ cnnlab train\ndone: epochs 2, 9.9s, best val_acc 0.7000 (epoch 1)\n") == ""
    assert examples.difference(example, "$ cnnlab train\ndone: epochs 2, 4.3s, best val_acc 0.7001 (epoch 1)\n")
    table = "| loss | best val/acc | duration (s) |\n| --- | --- | --- |\n| ce | 0.9 | 3.2 |\n"
    assert examples.normalize(table) == examples.normalize(table.replace("3.2", "17.0"))
    assert examples.normalize(table) != examples.normalize(table.replace("0.9", "0.8"))
