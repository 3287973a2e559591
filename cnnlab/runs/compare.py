"""`cnnlab compare` and the sweep summary: runs side by side, seed statistics, overlaid curves, exports.

Only the choices that differ between the runs become columns (config groups and overridden keys). Runs that
differ only by a seed (`seed`, `seeds.*`) or a cross-validation fold (`cv.fold`) are grouped into one row showing
mean +- sample standard deviation. Grouped rows carry their evidence against a baseline row (the best one unless
chosen): the difference of the monitored metric and of test accuracy with a 95% CI, a test and its p-value, and a
verdict in words (cnnlab/runs/stats.py).
No torch import: everything comes from the run folders, read by cnnlab.runs.read.read_run.
The sweep summary written at the end of every multirun uses the same functions (cnnlab/runs/sweeps.py);
the command line is cnnlab/cli/compare.py.
"""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
import textwrap
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.config import GROUPS
from cnnlab.errors import ConfigError
from cnnlab.runs.layout import find_runs
from cnnlab.runs.read import Run, best_epoch, override_key, read_run
from cnnlab.runs.stats import Difference, difference, words

SEED_KEYS = ("seed", "seeds.init", "seeds.data", "seeds.augment")
FOLD_KEYS = ("cv.fold",)
GROUP_KEYS = SEED_KEYS + FOLD_KEYS  # runs that differ only in these are repeats of one configuration
TEST_ORDER = ("acc", "loss", "f1", "precision", "recall", "auroc", "acc_top5")
MISSING = "—"


# ------------------------------------------------------------------ what differs between runs
def _format_value(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value, separators=(",", ":"))
    return str(value)


def settings(run: Run, keys: Sequence[str]) -> dict[str, str]:
    """The run's option in each config group (cnnlab's order), then its value for each of `keys`, as text."""
    order = {group: index for index, group in enumerate(GROUPS)}
    values = dict(sorted(run.choices.items(), key=lambda item: order.get(item[0], len(order))))
    for key in keys:
        if key not in values:
            values[key] = _format_value(run.value(key))
    return values


def varied_keys(runs: Sequence[Run]) -> tuple[list[str], dict[str, str]]:
    """(keys whose value differs between runs, {key: value} for the options and overrides shared by all)."""
    keys: list[str] = []
    for run in runs:
        for override in run.overrides:
            key = override_key(override)
            if key and key not in run.choices and key not in keys:
                keys.append(key)
    table = [settings(run, keys) for run in runs]
    every = list(dict.fromkeys(k for values in table for k in values))
    differing = [k for k in every if len({values.get(k, MISSING) for values in table}) > 1]
    common = {k: v for k, v in table[0].items() if k not in differing} if runs else {}
    return differing, common


# ------------------------------------------------------------------ columns of numbers
@dataclass(frozen=True)
class Column:
    """One numeric column: how to get it from a run, how to print it, and whether to show a spread."""

    key: str  # CSV name
    header: str  # table / Markdown heading
    get: Callable[[Run], float | None]
    digits: int = 4
    spread: bool = True  # show mean ± std over seeds (else the value, or the mean where values differ)
    brief: bool = True  # shown in the terminal table too (the exports show every column)


def _best(run: Run, monitor: str, mode: str) -> dict[str, Any] | None:
    column = monitor.replace("/", "_")
    row = best_epoch(run.metrics, column, mode)
    if row is None and (run.summary.get("best") or {}).get(column) is not None:
        row = run.summary["best"]
    return row


def columns_for(runs: Sequence[Run], monitor: str, mode: str) -> list[Column]:
    """Best validation metric and its epoch, every test metric any run has, parameters, duration."""
    column = monitor.replace("/", "_")

    def best_value(run: Run) -> float | None:
        row = _best(run, monitor, mode)
        return None if row is None else row.get(column)

    def best_at(run: Run) -> float | None:
        row = _best(run, monitor, mode)
        return None if row is None else row.get("epoch")

    found = {key.split("/", 1)[1] for run in runs for key in (run.summary.get("test") or {}) if "/" in key}
    tests = [name for name in TEST_ORDER if name in found] + sorted(found - set(TEST_ORDER))

    def test_metric(name: str) -> Callable[[Run], float | None]:
        return lambda run: (run.summary.get("test") or {}).get(f"test/{name}")

    return [
        Column(f"best_{column}", f"best {monitor}", best_value),
        Column("best_epoch", "epoch", best_at, digits=0, spread=False),
        *[Column(f"test_{name}", f"test {name}", test_metric(name), brief=name in TEST_ORDER[:3])
          for name in tests],
        Column("params", "params", lambda run: run.summary.get("params"), digits=0, spread=False),
        Column("duration_s", "duration (s)", lambda run: run.summary.get("duration_s"), digits=1),
    ]


# ------------------------------------------------------------------ rows: one run, or runs differing by seed
@dataclass
class Row:
    """One line of the comparison: its differing settings and the runs behind it."""

    settings: dict[str, str]
    runs: list[Run]
    names: list[str] = field(default_factory=list)
    differences: dict[str, Difference] = field(default_factory=dict)  # column key -> against the baseline row
    evidence: str = ""  # the verdict in words against the baseline row ("baseline" for that row)

    @property
    def completed(self) -> list[Run]:
        return [run for run in self.runs if run.status == "completed"]

    @property
    def failed(self) -> list[Run]:
        return [run for run in self.runs if run.status != "completed"]

    def values(self, column: Column) -> list[float]:
        found = (column.get(run) for run in self.completed)
        return [float(v) for v in found if v is not None and math.isfinite(float(v))]

    def keyed(self, column: Column, keys: Sequence[str]) -> dict[tuple, float]:
        """The column's value of each completed run, keyed by the run's values of `keys` (its seeds/fold)."""
        found = {}
        for run in self.completed:
            value = column.get(run)
            if value is not None and math.isfinite(float(value)):
                found[tuple(_format_value(run.value(k)) for k in keys)] = float(value)
        return found

    def stats(self, column: Column) -> tuple[float | None, float | None]:
        """(mean, sample standard deviation) over completed runs; std is None below two values."""
        values = self.values(column)
        if not values:
            return None, None
        return statistics.fmean(values), statistics.stdev(values) if len(values) >= 2 else None

    def verdict(self) -> str:
        """The runs' fitting diagnoses (summary.json "diagnosis"), and their debug mode when they ran in one."""
        verdicts = sorted({(run.summary.get("diagnosis") or {}).get("verdict") for run in self.completed} - {None})
        debug = sorted({run.summary.get("debug") for run in self.runs} - {None})
        return "/".join(verdicts) + (f" [debug={','.join(debug)}]" if debug else "") or MISSING

    def label(self) -> str:
        """What sets this row apart, e.g. `loss=nll` (keys the row's runs do not have are left out)."""
        return " ".join(f"{k}={v}" for k, v in self.settings.items() if v != MISSING) or " ".join(self.names)


@dataclass
class Comparison:
    """Runs side by side: the differing keys, the rows (seed groups or runs) sorted by the monitored metric."""

    runs: list[Run]
    differing: list[str]  # the columns: what differs, seed keys left out when seeds are grouped
    varied: list[str]  # everything that differs, seeds included
    common: dict[str, str]
    monitor: str
    mode: str
    grouped: bool
    rows: list[Row]
    columns: list[Column]
    baseline: Row | None = None
    unit: str = "seeds"  # what a group repeats over: seeds, folds, or repeats (seeds and folds)

    @property
    def tested(self) -> list[Column]:
        """The columns compared against the baseline: the monitored metric and test accuracy."""
        if self.baseline is None:
            return []
        return [c for c in self.columns if c is self.columns[0] or c.key == "test_acc"]

    @property
    def failures(self) -> list[tuple[str, Row, Run]]:
        return [(name, row, run) for row in self.rows for name, run in zip(row.names, row.runs)
                if run.status != "completed"]

    def cell(self, row: Row, column: Column) -> str:
        mean, std = row.stats(column)
        if mean is None:
            return MISSING
        if std is not None and column.spread:
            return f"{mean:.{column.digits}f} ± {std:.{column.digits}f}"
        digits = column.digits if std is None or std == 0 else max(column.digits, 1)
        return f"{mean:,.{digits}f}" if column.key == "params" else f"{mean:.{digits}f}"

    def shown(self, brief: bool) -> list[Column]:
        return [column for column in self.columns if column.brief or not brief]


def _names(runs: Sequence[Run]) -> list[str]:
    paths = [run.path.resolve() for run in runs]
    if len(paths) == 1:
        return [paths[0].name]
    root = Path(os.path.commonpath(paths))
    return [str(p.relative_to(root)) or p.name for p in paths]


def _monitor(runs: Sequence[Run]) -> tuple[str, str]:
    seen = Counter((run.summary["monitor"], run.summary.get("mode", "max")) for run in runs
                   if run.summary.get("monitor"))
    return seen.most_common(1)[0][0] if seen else ("val/acc", "max")


def _pick_baseline(rows: Sequence[Row], baseline: str | None) -> Row | None:
    """The row `baseline` names (`key=value ...`, every pair must match), else the best row with values."""
    if baseline is None:
        return next((row for row in rows if row.completed), None)
    wanted = [part.split("=", 1) for part in baseline.split()]
    if not wanted or any(len(pair) != 2 for pair in wanted):
        raise ConfigError("--baseline", baseline, message=f"--baseline {baseline}: give KEY=VALUE pairs, e.g. "
                          f"--baseline loss=ce; rows: {'; '.join(row.label() for row in rows)}")
    found = [row for row in rows if all(row.settings.get(k) == v for k, v in wanted)]
    if len(found) != 1:
        problem = "matches no row" if not found else f"matches {len(found)} rows"
        raise ConfigError("--baseline", baseline, message=f"--baseline {baseline}: {problem}; allowed: one of "
                          f"{'; '.join(row.label() for row in rows)}")
    return found[0]


def _weigh(comparison: Comparison) -> None:
    """Each grouped row's differences from the baseline row, paired on the seeds/fold both have."""
    base = comparison.baseline
    if base is None:
        return
    keys = [k for k in comparison.varied if k in GROUP_KEYS]
    higher = comparison.mode == "max"
    for row in comparison.rows:
        if row is base:
            row.evidence = "baseline"
            continue
        for column in comparison.tested:
            row.differences[column.key] = difference(row.keyed(column, keys), base.keyed(column, keys))
        main = row.differences.get(comparison.columns[0].key)
        row.evidence = MISSING if main is None or math.isnan(main.delta) else words(main, higher, comparison.unit)


def compare(runs: Sequence[Run], per_run: bool = False, baseline: str | None = None) -> Comparison:
    """Group runs that differ only by seed or fold (unless per_run), one row each, best monitored value first;
    grouped rows are weighed against `baseline` (`key=value ...`; default: the best row)."""
    runs = list(runs)
    differing, common = varied_keys(runs)
    grouped = not per_run and any(k in GROUP_KEYS for k in differing)
    shown = [k for k in differing if not (grouped and k in GROUP_KEYS)]
    names = _names(runs)
    rows: dict[tuple[str, ...], Row] = {}
    for name, run in zip(names, runs):
        values = settings(run, differing)
        key = tuple(values.get(k, MISSING) for k in shown) if grouped else (name,)
        row = rows.setdefault(key, Row({k: values.get(k, MISSING) for k in shown}, []))
        row.runs.append(run)
        row.names.append(name)
    monitor, mode = _monitor(runs)
    columns = columns_for(runs, monitor, mode)

    def order(row: Row) -> tuple[bool, float]:
        mean = row.stats(columns[0])[0]
        return mean is None, (0.0 if mean is None else -mean if mode == "max" else mean)

    seeds, folds = (any(k in group for k in differing) for group in (SEED_KEYS, FOLD_KEYS))
    comparison = Comparison(runs, shown, differing, common, monitor, mode, grouped,
                            sorted(rows.values(), key=order), columns,
                            unit="repeats" if seeds and folds else "folds" if folds else "seeds")
    if grouped and len(comparison.rows) > 1:
        comparison.baseline = _pick_baseline(comparison.rows, baseline)
        _weigh(comparison)
    elif baseline is not None:
        raise ConfigError("--baseline", baseline, message=f"--baseline {baseline}: needs rows of repeated runs "
                          "(seeds or cv folds) and at least two of them; these runs are not grouped")
    return comparison


def load(paths: Sequence[Path], errors: dict[Path, str] | None = None,
         read: Callable[[Path], Run] = read_run, folders: Sequence[Path] | None = None) -> list[Run]:
    """Every run folder in or under `paths` (or the run `folders` given, already found), each read by `read`;
    `errors` gives the reason for runs that left no summary.json."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for path in paths if folders is None else []:
        path = Path(path)
        if not path.exists():
            raise ConfigError("compare", str(path), message=f"{path}: no such folder")
        found = find_runs(path)
        if not found:
            raise ConfigError("compare", str(path), message=f"{path}: no run folders here (none holds .hydra/)")
        runs += [read(folder) for folder in found if folder not in seen and not seen.add(folder)]
    runs += [read(Path(folder)) for folder in folders or []]
    for run in runs:
        reason = (errors or {}).get(run.path.resolve())
        if reason and run.status != "completed":  # Hydra saw the job fail; its summary.json may say more
            run.status, run.error = "failed", run.summary.get("error") or reason
    return runs


# ------------------------------------------------------------------ output: table, Markdown, CSV, PNG
def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}"


def difference_cell(difference: Difference | None, digits: int) -> str:
    """`+0.0123 [-0.0040, +0.0290]`: the difference from the baseline and its 95% CI."""
    if difference is None or math.isnan(difference.delta):
        return MISSING
    if difference.low == difference.high == difference.delta:
        return _signed(difference.delta, digits)
    low, high = _signed(difference.low, digits), _signed(difference.high, digits)
    return f"{_signed(difference.delta, digits)} [{low}, {high}]"


def p_cell(difference: Difference | None, with_test: bool = True) -> str:
    """`0.031 (paired t)`: the p-value and the test that gave it."""
    if difference is None or difference.p is None:
        return MISSING
    return f"{difference.p:.3g}" + (f" ({difference.test})" if with_test else "")


def _evidence_heads(comparison: Comparison, brief: bool) -> list[str]:
    heads = []
    for column in comparison.tested[:1] if brief else comparison.tested:
        heads += ["Δ [95% CI]" if brief else f"Δ {column.header} [95% CI]", "p" if brief else f"p {column.header}"]
    return heads + (["evidence"] if comparison.tested else [])


def _evidence_cells(comparison: Comparison, row: Row, brief: bool) -> list[str]:
    cells = []
    for column in comparison.tested[:1] if brief else comparison.tested:
        if row is comparison.baseline:
            cells += ["baseline", MISSING]
            continue
        found = row.differences.get(column.key)
        cells += [difference_cell(found, column.digits), p_cell(found, with_test=not brief)]
    return cells + ([row.evidence or MISSING] if comparison.tested else [])


def _headers(comparison: Comparison, brief: bool = False) -> list[str]:
    heads = list(comparison.differing)
    heads += [comparison.unit] if comparison.grouped else []
    heads += [] if brief and comparison.grouped else ["runs" if comparison.grouped else "run"]
    heads += [column.header for column in comparison.shown(brief)]
    heads += _evidence_heads(comparison, brief)
    heads.append("diagnosis")
    if comparison.failures:
        heads.append("failed" if comparison.grouped else "status")
    return heads


def _cells(comparison: Comparison, row: Row, brief: bool = False) -> list[str]:
    cells = [row.settings[k] for k in comparison.differing]
    cells += [str(len(row.completed))] if comparison.grouped else []
    cells += [] if brief and comparison.grouped else [", ".join(row.names)]
    cells += [comparison.cell(row, column) for column in comparison.shown(brief)]
    cells += _evidence_cells(comparison, row, brief)
    cells.append(row.verdict())
    if comparison.failures:
        cells.append(str(len(row.failed)) if comparison.grouped else row.runs[0].status)
    return cells


def _caption(comparison: Comparison) -> str:
    count = len(comparison.runs)
    order = "highest" if comparison.mode == "max" else "lowest"
    text = f"{count} run{'s' * (count != 1)}, sorted by best {comparison.monitor} ({order} first)"
    if comparison.grouped:
        what = {"seeds": "seed", "folds": "cross-validation fold", "repeats": "seed and fold"}[comparison.unit]
        text += f"; runs that differ only by {what} are grouped: mean ± sample std over the {comparison.unit}"
    return text


def _evidence_note(comparison: Comparison) -> str:
    if comparison.baseline is None:
        return ""
    return (f"Δ: difference from the baseline row ({comparison.baseline.label()}) with its 95% confidence "
            f"interval; p: paired t-test on runs with the same {comparison.unit} (Wilcoxon signed-rank from 6 "
            "pairs), else Welch's unpaired t-test; evidence: p < 0.05 on the monitored metric")


def _common_line(comparison: Comparison) -> str:
    return " ".join(f"{k}={v}" for k, v in comparison.common.items())


def _failure_lines(comparison: Comparison) -> list[str]:
    lines = []
    for name, _, run in comparison.failures:
        values = settings(run, comparison.varied)
        label = " ".join(f"{k}={values.get(k, MISSING)}" for k in comparison.varied)
        lines.append(f"{name}{f' ({label})' if label else ''}: {run.status}: {run.error or 'no reason recorded'}")
    return lines


def _table(comparison: Comparison, stacked: bool, dropped: Sequence[str] = ()) -> Any:
    """The rich table: one column per differing key, or (stacked) one `settings` column with a line per key;
    the identifying columns never wrap, the metric headers and the diagnosis may."""
    from rich.table import Table

    caption = f"same in all: {_common_line(comparison)}"
    if dropped:
        caption += f"; left out for width: {', '.join(dropped)} (see --format md or csv)"
    caption = "\n".join(filter(None, [caption, _evidence_note(comparison)]))
    table = Table(title=_caption(comparison), caption=caption, title_justify="left", caption_justify="left")
    heads, rows = _headers(comparison, brief=True), [_cells(comparison, row, brief=True) for row in comparison.rows]
    keys = len(comparison.differing)
    identifying = keys + (0 if comparison.grouped else 1)  # the settings, and the run folder when not grouped
    if stacked and identifying > 1:  # the run folder on the first line, then one line per setting
        heads = ["run / settings" if not comparison.grouped else "settings", *heads[identifying:]]
        rows = [["\n".join([*([] if comparison.grouped else [cells[keys]]),
                             *(f"{k}={v}" for k, v in zip(comparison.differing, cells[:keys]))]),
                 *cells[identifying:]] for cells in rows]
        keys = identifying = 1
    keep = [i for i, head in enumerate(heads) if head not in dropped]
    for i in keep:
        if i < identifying:
            table.add_column(heads[i], style="bold" if i < keys else None, no_wrap=True)
        elif heads[i] in ("diagnosis", "evidence"):  # words may wrap
            table.add_column(heads[i], overflow="fold", min_width=12)
        else:  # a number never wraps; stacked, its header takes two lines to leave room for the settings
            head = heads[i].replace(" ", "\n", 1) if stacked else heads[i]
            table.add_column(head, justify="right", no_wrap=True)
    for cells in rows:
        table.add_row(*(cells[i] for i in keep))
    return table


# Metric columns given up, in this order, before an identifying column would fold.
NARROWING = ("duration (s)", "params", "test loss", "test f1", "epoch", "test acc")


def fitted_table(comparison: Comparison, width: int) -> Any:
    """The most complete table whose identifying columns (the settings that differ, the run) fit `width` whole:
    one column per key, else the keys stacked into one column, else that with metric columns left out."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(width=10_000)  # measured unbounded: rich caps a measurement at the console's width

    def fits(table: Any) -> bool:
        return Measurement.get(console, console.options, table).minimum <= width

    table = _table(comparison, stacked=False)
    if fits(table):
        return table
    dropped: list[str] = []
    table = _table(comparison, stacked=True)
    for head in NARROWING:
        if fits(table):
            break
        dropped.append(head)
        table = _table(comparison, stacked=True, dropped=dropped)
    return table


def print_table(comparison: Comparison, console: Any = None) -> None:
    """The terminal table, then the runs that failed. Shorter than the exports: of the test metrics only
    accuracy, loss and F1, the evidence on the monitored metric only, and no list of run folders for groups. Piped,
    the table takes the width it needs (nothing folds); in a terminal, it fits the terminal (fitted_table)."""
    import sys

    from rich.console import Console
    from rich.measure import Measurement

    if console is None:
        if sys.stdout.isatty():
            console = Console()
        else:  # no terminal width to keep to: as wide as the table wants
            probe = Console(width=10_000)
            wanted = Measurement.get(probe, probe.options, _table(comparison, stacked=False)).maximum
            console = Console(width=max(80, wanted), soft_wrap=False)
    console.print(fitted_table(comparison, console.width))
    for text in _failure_lines(comparison):
        console.print(f"[red]failed[/red] {text}", highlight=False)


def to_markdown(comparison: Comparison) -> str:
    """A Markdown table (GitHub style) of every column, with the caption and the runs that failed."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    heads = _headers(comparison)
    lines = [f"{_caption(comparison)}.", "", f"Same in all runs: `{_common_line(comparison)}`", ""]
    lines += [f"{_evidence_note(comparison)}.", ""] if comparison.baseline is not None else []
    lines += [line(heads), "| " + " | ".join("---" for _ in heads) + " |"]
    lines += [line(_cells(comparison, row)) for row in comparison.rows]
    failures = _failure_lines(comparison)
    if failures:
        lines += ["", f"Failed runs ({len(failures)}):", ""] + [f"- {text}" for text in failures]
    return "\n".join(lines) + "\n"


def _csv_number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(int(value)) if value.is_integer() else repr(value)


def to_csv(comparison: Comparison) -> str:
    """One line per row; numbers in full precision, `<column>_std` beside each mean when runs are grouped, and
    `delta_<column>` with `_ci_low`, `_ci_high`, `_p`, `_test` for the columns weighed against the baseline."""
    heads = list(comparison.differing) + ([comparison.unit] if comparison.grouped else []) + ["runs"]
    for column in comparison.columns:
        heads += [column.key] + ([f"{column.key}_std"] if comparison.grouped and column.spread else [])
    for column in comparison.tested:
        heads += [f"delta_{column.key}{part}" for part in ("", "_ci_low", "_ci_high", "_p", "_test")]
    heads += ["evidence"] if comparison.tested else []
    heads += ["diagnosis", "failed", "errors"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(heads)
    for row in comparison.rows:
        cells: list[Any] = [row.settings[k] for k in comparison.differing]
        cells += [len(row.completed)] if comparison.grouped else []
        cells.append(" ".join(row.names))
        for column in comparison.columns:
            mean, std = row.stats(column)
            cells.append(_csv_number(mean))
            if comparison.grouped and column.spread:
                cells.append(_csv_number(std))
        for column in comparison.tested:
            found = row.differences.get(column.key)
            if found is None:
                cells += ["", "", "", "", "baseline" if row is comparison.baseline else ""]
            else:
                cells += [_csv_number(found.delta), _csv_number(found.low), _csv_number(found.high),
                          _csv_number(found.p), found.test]
        cells += [row.evidence] if comparison.tested else []
        cells += [row.verdict(), len(row.failed), " | ".join(f"{run.status}: {run.error or ''}" for run in row.failed)]
        writer.writerow(cells)
    return buffer.getvalue()


def _mean_curve(runs: Sequence[Run], metric: str) -> list[tuple[float, float]]:
    by_epoch: dict[float, list[float]] = {}
    for run in runs:
        for r in run.metrics:
            if r.get(metric) is not None and r.get("epoch") is not None:
                by_epoch.setdefault(r["epoch"], []).append(r[metric])
    return [(epoch, statistics.fmean(values)) for epoch, values in sorted(by_epoch.items())]


def plot_overlay(comparison: Comparison, path: Path) -> None:
    """Validation loss and accuracy per epoch of every run in one PNG, one colour and legend entry per row.

    Grouped seeds: each run thin, their mean thick. Rows cycle through line styles too, so curves that
    coincide (as fair runs of equivalent losses do) stay visible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.get_cmap("tab10" if len(comparison.rows) <= 10 else "tab20")
    styles, markers = ("-", "--", ":", "-."), "osD^v<>"
    for index, row in enumerate(comparison.rows):
        label = textwrap.fill(row.label() + (f" ({len(row.runs)} {comparison.unit})" if comparison.grouped else ""), 60)
        look = {"color": colours(index % colours.N), "linestyle": styles[index % len(styles)],
                "marker": markers[index % len(markers)], "markersize": 4}
        for ax, metric in zip(axes, ("val_loss", "val_acc")):
            if comparison.grouped:
                for run in row.runs:
                    points = _mean_curve([run], metric)
                    if points:
                        ax.plot(*zip(*points), color=look["color"], linewidth=0.8, alpha=0.35)
            points = _mean_curve(row.runs, metric)
            if points:
                ax.plot(*zip(*points), label=label, linewidth=2 if comparison.grouped else 1.5, **look)
    for ax, name in zip(axes, ("validation loss", "validation accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name + (f" (mean over {comparison.unit})" if comparison.grouped else ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    columns = max(1, min(len(handles), 3))
    legend_rows = math.ceil(len(handles) / columns)
    fig.set_size_inches(12, 4.5 + 0.25 * legend_rows)
    if handles:  # below the plots, so that long labels are never cut off
        fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize="small", frameon=False)
    fig.suptitle(textwrap.fill(_common_line(comparison), 160), fontsize="small")
    fig.tight_layout(rect=(0, (0.3 + 0.25 * legend_rows) / (4.5 + 0.25 * legend_rows), 1, 1))
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")  # whole or absent, never half-written
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


EXPORTS: dict[str, Callable[[Comparison], str]] = {"md": to_markdown, "csv": to_csv}
