"""sweep_params.png: the monitored metric against each numeric key a sweep varied (lr, weight decay, batch size...).

One panel per key, one point per run, the mean of each row (seed/fold group) marked; a log axis where the values
span a decade or more. Written beside sweep_curves.png by the sweep summary and by `cnnlab compare --plot-params`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from cnnlab.runs.compare import GROUP_KEYS, Comparison, settings


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def numeric_keys(comparison: Comparison) -> list[str]:
    """The varied keys (seeds and folds aside) whose every value is a number, with at least two values."""
    keys = []
    for key in comparison.varied:
        if key in GROUP_KEYS:
            continue
        values = [_number(settings(run, [key]).get(key, "")) for run in comparison.runs]
        if all(v is not None for v in values) and len(set(values)) >= 2:
            keys.append(key)
    return keys


def plot_params(comparison: Comparison, path: Path) -> bool:
    """Write the PNG; False (nothing written) when the sweep varied no numeric key."""
    keys = numeric_keys(comparison)
    if not keys:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = comparison.columns[0]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for run in comparison.runs:
            x, y = _number(settings(run, [key])[key]), metric.get(run) if run.status == "completed" else None
            if x is not None and y is not None:
                ax.plot(x, y, "o", color="tab:blue", alpha=0.45, markersize=5)
        if comparison.grouped:
            means = sorted((_number(settings(row.runs[0], [key])[key]), row.stats(metric)[0]) for row in comparison.rows
                           if row.stats(metric)[0] is not None)
            if means:
                xs, ys = zip(*means)
                ax.plot(xs, ys, "D", color="tab:red", markersize=8, fillstyle="none",
                        label=f"mean over {comparison.unit}")
                ax.legend(fontsize="small")
        values = [v for v in (_number(settings(run, [key])[key]) for run in comparison.runs) if v is not None]
        if min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(metric.header)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")  # whole or absent, never half-written
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return True
