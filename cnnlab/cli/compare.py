"""`cnnlab compare RUN_OR_SWEEP_DIR...`: runs side by side (cnnlab/runs/compare.py), printed and exported."""

from __future__ import annotations

import sys
from pathlib import Path

from cnnlab.cli.common import Parser
from cnnlab.errors import ConfigError
from cnnlab.runs.compare import EXPORTS, compare, load, plot_overlay, print_table


def parser() -> Parser:
    parser = Parser(prog="cnnlab compare", description="Compare run folders (or sweep folders) side by side.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="RUN_OR_SWEEP_DIR")
    parser.add_argument("--format", choices=("table", "md", "csv"), default="table",
                        help="what to print: a rich table (default), Markdown or CSV")
    parser.add_argument("--output", action="append", type=Path, default=[], metavar="FILE",
                        help="also write the table to FILE (.md or .csv, else --format); repeatable")
    parser.add_argument("--plot", type=Path, metavar="FILE",
                        help="the overlaid validation curves (default: comparison.png in the one folder given, "
                             "else in the current folder)")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    parser.add_argument("--plot-params", type=Path, metavar="FILE",
                        help="also plot the monitored metric against each numeric key the runs vary (a PNG)")
    parser.add_argument("--per-run", action="store_true", help="one row per run: do not group seeds or folds")
    parser.add_argument("--baseline", metavar="KEY=VALUE", action="append",
                        help="the row the others are weighed against (difference, 95%% CI, p-value, evidence), "
                             "e.g. --baseline loss=ce; repeat for several keys (default: the best row)")
    return parser


def main(args: list[str]) -> int:
    """`cnnlab compare RUN_OR_SWEEP_DIR... [--format md|csv] [--output FILE] [--plot FILE] [--per-run]
    [--baseline KEY=VALUE]`."""
    options = parser().parse_args(args)
    targets = []
    for output in options.output:
        kind = output.suffix.lstrip(".").lower()
        kind = kind if kind in EXPORTS else options.format
        if kind not in EXPORTS:
            raise ConfigError("--output", str(output),
                              message=f"--output {output}: name it .md or .csv, or give --format md|csv")
        targets.append((output, kind))
    baseline = " ".join(options.baseline) if options.baseline else None
    comparison = compare(load(options.paths), per_run=options.per_run, baseline=baseline)
    if options.format == "table":
        print_table(comparison)
    else:
        print(EXPORTS[options.format](comparison), end="")
    notes = []
    for output, kind in targets:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(EXPORTS[kind](comparison))
        notes.append(f"{kind}: {output}")
    if not options.no_plot:
        plot = options.plot or (options.paths[0] if len(options.paths) == 1 and options.paths[0].is_dir()
                                else Path(".")) / "comparison.png"
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_overlay(comparison, plot)
        notes.append(f"curves: {plot}")
    if options.plot_params:
        from cnnlab.runs.params_plot import plot_params

        options.plot_params.parent.mkdir(parents=True, exist_ok=True)
        if plot_params(comparison, options.plot_params):
            notes.append(f"parameters: {options.plot_params}")
        else:
            notes.append("no parameters plot: the runs vary no numeric key")
    if notes:  # on stderr when stdout carries the Markdown or CSV
        print("wrote " + ", ".join(notes), file=sys.stdout if options.format == "table" else sys.stderr)
    return 0
