"""`cnnlab compare` keeps the columns that say which run is which whole, at any terminal width and piped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from test_compare import CHOICES, CONFIG, fake_run

from cnnlab.runs.compare import compare, load, print_table


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Four runs that differ in five groups and two keys, named as Hydra names them (day/time_model_loss)."""
    for index, (model, loss) in enumerate([("mobilenet_v3", "multi_margin"), ("lenet", "nll"),
                                           ("densenet121", "focal"), ("mlp", "ce")]):
        choices = {**CHOICES, "model": model, "loss": loss, "optimizer": ("rmsprop", "adadelta")[index % 2],
                   "scheduler": ("multistep", "exp_decay")[index % 2],
                   "augmentation": ("randaugment", "autoaugment")[index // 2]}
        fake_run(tmp_path / "2026-11-29" / f"08-00-0{index}_{model}_{loss}", choices,
                 [f"optimizer.lr=0.00{index + 1}", f"batch_size={32 * (index + 1)}"],
                 {**CONFIG, "optimizer": {"lr": 0.001 * (index + 1)}, "batch_size": 32 * (index + 1)},
                 [0.5 + 0.1 * index, 0.55 + 0.1 * index], test_acc=0.6 + 0.05 * index)
    return tmp_path


def identifying_values(folder: Path) -> list[str]:
    comparison = compare(load([folder]))
    values = [v for row in comparison.rows for v in row.settings.values()]
    return values + [name for row in comparison.rows for name in row.names]


@pytest.mark.parametrize("width", [80, 120, 200])
def test_choices_and_run_names_stay_whole(runs: Path, width: int):
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    print_table(compare(load([runs])), console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    for value in identifying_values(runs):
        assert value in text, (value, text)
    assert "…" not in text
    assert "0.8500" in text  # the best run's best val/acc is there, unbroken


def test_wide_terminal_keeps_one_column_per_key(runs: Path):
    console = Console(width=250, record=True, file=open("/dev/null", "w"))
    print_table(compare(load([runs])), console)
    header = next(line for line in console.export_text().splitlines() if "model" in line and "loss" in line)
    for key in ("model", "loss", "optimizer", "scheduler", "augmentation", "optimizer.lr", "batch_size"):
        assert f" {key} " in header


def test_narrow_terminal_stacks_the_settings_and_says_what_it_left_out(runs: Path):
    console = Console(width=80, record=True, file=open("/dev/null", "w"))
    print_table(compare(load([runs])), console)
    text = console.export_text()
    assert "run / settings" in text and "model=densenet121" in text and "optimizer.lr=0.003" in text
    assert "left out for width:" in text


def test_piped_output_keeps_every_column_whole(runs: Path):
    out = subprocess.run([sys.executable, "-m", "cnnlab", "compare", str(runs), "--no-plot"], capture_output=True,
                         text=True, check=True).stdout
    for value in identifying_values(runs):
        assert value in out
    assert "…" not in out and "left out" not in out
