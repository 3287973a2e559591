"""The evidence behind a comparison: a row's difference from a baseline row, its 95% confidence interval, a test.

Runs that share their seeds (or cross-validation folds) with the baseline's runs are paired: cnnlab's fair runs
start from the same weights and see the same batches, so the difference per seed removes most of the seed noise.
Paired rows get a paired t-test, or from 6 pairs on Wilcoxon's signed-rank test (with fewer than 6 pairs it
cannot reach p < 0.05); rows without such pairs get Welch's unequal-variance t-test and say they are unpaired.
The confidence interval is the t interval of the mean difference (paired) or of the difference of means
(Welch-Satterthwaite degrees of freedom). p-values come from scipy; no torch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

LEVEL = 0.95  # of the confidence intervals
ALPHA = 0.05  # a p-value under this counts as evidence of a difference
WILCOXON_FROM = 6  # pairs; the smallest two-sided exact p of the signed-rank test with 5 pairs is 0.0625


@dataclass(frozen=True)
class Difference:
    """`value - baseline` of one metric: the estimate, its 95% confidence interval, the test and its p-value."""

    delta: float
    low: float
    high: float
    p: float | None  # None: too few runs to test
    test: str  # "paired t", "Wilcoxon", "Welch (unpaired)", "identical" or "" (untested)
    n: int  # pairs (paired) or the smaller group's size (unpaired)
    paired: bool

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < ALPHA


def _t_interval(mean: float, standard_error: float, dof: float) -> tuple[float, float]:
    from scipy import stats

    if standard_error == 0 or not math.isfinite(dof) or dof <= 0:
        return mean, mean
    half = float(stats.t.ppf(0.5 + LEVEL / 2, dof)) * standard_error
    return mean - half, mean + half


def paired(values: Sequence[float], baseline: Sequence[float]) -> Difference:
    """The mean of the differences `values[i] - baseline[i]` (same seed or fold at i), its CI and test."""
    from scipy import stats

    if len(values) != len(baseline):
        raise ValueError("paired samples need the same length")
    differences = [a - b for a, b in zip(values, baseline)]
    n = len(differences)
    mean = statistics.fmean(differences) if differences else math.nan
    if n < 2:
        return Difference(mean, mean, mean, None, "", n, True)
    if all(d == 0 for d in differences):  # the same numbers: no test needed, and t would be 0/0
        return Difference(0.0, 0.0, 0.0, 1.0, "identical", n, True)
    sd = statistics.stdev(differences)
    low, high = _t_interval(mean, sd / math.sqrt(n), n - 1)
    if n >= WILCOXON_FROM:
        p, test = float(stats.wilcoxon(values, baseline).pvalue), "Wilcoxon"
    elif sd == 0:  # the same nonzero difference in every pair: t is infinite
        p, test = 0.0, "paired t"
    else:
        p, test = float(stats.ttest_rel(values, baseline).pvalue), "paired t"
    return Difference(mean, low, high, p, test, n, True)


def welch(values: Sequence[float], baseline: Sequence[float]) -> Difference:
    """The difference of the means of two unpaired groups, its Welch CI and Welch's t-test."""
    from scipy import stats

    n = min(len(values), len(baseline))
    if n == 0:
        return Difference(math.nan, math.nan, math.nan, None, "", 0, False)
    delta = statistics.fmean(values) - statistics.fmean(baseline)
    if n < 2:
        return Difference(delta, delta, delta, None, "", n, False)
    var_a, var_b = statistics.variance(values) / len(values), statistics.variance(baseline) / len(baseline)
    if var_a + var_b == 0:
        p = 1.0 if delta == 0 else 0.0
        return Difference(delta, delta, delta, p, "identical" if delta == 0 else "Welch (unpaired)", n, False)
    dof = (var_a + var_b) ** 2 / (var_a ** 2 / (len(values) - 1) + var_b ** 2 / (len(baseline) - 1))
    low, high = _t_interval(delta, math.sqrt(var_a + var_b), dof)
    p = float(stats.ttest_ind(values, baseline, equal_var=False).pvalue)
    return Difference(delta, low, high, p, "Welch (unpaired)", n, False)


def difference(values: dict[tuple, float], baseline: dict[tuple, float]) -> Difference:
    """`values` against `baseline`, each keyed by the runs' seeds/fold: paired on the keys both have (at least
    two), else unpaired (Welch)."""
    common = [key for key in values if key in baseline]
    if len(common) >= 2:
        return paired([values[k] for k in common], [baseline[k] for k in common])
    return welch(list(values.values()), list(baseline.values()))


def words(result: Difference | None, higher_is_better: bool, unit: str = "seeds") -> str:
    """The plain-words verdict: better, worse, or no evidence of a difference with N seeds (or folds)."""
    if result is None:
        return "baseline"
    count = f"{result.n} {unit if result.n != 1 else unit.rstrip('s')}"
    if result.test == "identical" and result.delta == 0:
        return f"no difference: identical with {count}"
    if result.p is None:
        return f"untested: too few runs ({count})"
    unpaired = "" if result.paired else " (unpaired)"
    if not result.significant:
        return f"no evidence of a difference with {count}{unpaired}"
    better = (result.delta > 0) == higher_is_better
    return ("better" if better else "worse") + unpaired
