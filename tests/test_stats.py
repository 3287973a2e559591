"""cnnlab/runs/stats.py: differences from a baseline, their 95% CI and tests, checked on fixed numbers."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from cnnlab.runs.stats import difference, paired, welch, words

# Three seeds of two configurations; the paired differences are 0.05, 0.04, 0.03 (mean 0.04, sd 0.01).
A = [0.80, 0.82, 0.79]
B = [0.75, 0.78, 0.76]


def test_paired_difference_has_the_known_ci_and_p_value():
    result = paired(A, B)
    assert result.test == "paired t" and result.paired and result.n == 3
    assert result.delta == pytest.approx(0.04)
    # t = 0.04 / (0.01 / sqrt 3) with 2 degrees of freedom: p = 1 - t / sqrt(t^2 + 2) in closed form
    t = 0.04 / (0.01 / math.sqrt(3))
    assert result.p == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)
    assert result.p == pytest.approx(0.0202041, abs=1e-6)
    # t_{0.975, 2} = 4.302653: the CI is 0.04 +- 4.302653 * 0.01 / sqrt 3
    assert (result.low, result.high) == pytest.approx((0.0151586, 0.0648414), abs=1e-6)
    reference = scipy_stats.ttest_rel(A, B)
    assert (result.low, result.high) == pytest.approx(tuple(reference.confidence_interval(0.95)), rel=1e-9)
    assert result.significant and words(result, higher_is_better=True) == "better"
    assert words(paired(B, A), higher_is_better=True) == "worse"
    assert words(result, higher_is_better=False) == "worse"  # a loss that went up


def test_welch_for_unpaired_groups_matches_scipy():
    values, baseline = [0.70, 0.72, 0.75, 0.71], [0.60, 0.66, 0.62]
    result = welch(values, baseline)
    reference = scipy_stats.ttest_ind(values, baseline, equal_var=False)
    assert result.test == "Welch (unpaired)" and not result.paired and result.n == 3
    assert result.delta == pytest.approx(0.72 - 1.88 / 3)
    assert result.p == pytest.approx(reference.pvalue, rel=1e-9) and result.p == pytest.approx(0.0149218, abs=1e-6)
    assert (result.low, result.high) == pytest.approx(tuple(reference.confidence_interval(0.95)), rel=1e-9)
    assert words(result, higher_is_better=True) == "better (unpaired)"


def test_wilcoxon_from_six_pairs():
    values, baseline = [0.81, 0.82, 0.83, 0.84, 0.85, 0.86], [0.80, 0.80, 0.80, 0.80, 0.80, 0.805]
    result = paired(values, baseline)
    assert result.test == "Wilcoxon" and result.n == 6
    assert result.p == pytest.approx(2 / 2 ** 6)  # every difference positive: the exact two-sided p
    five = paired(values[:5], baseline[:5])
    assert five.test == "paired t"


def test_no_evidence_and_identical_results_in_words():
    noisy = paired([0.80, 0.70, 0.76], [0.75, 0.78, 0.74])
    assert not noisy.significant and noisy.low < 0 < noisy.high
    assert words(noisy, higher_is_better=True) == "no evidence of a difference with 3 seeds"
    assert words(noisy, higher_is_better=True, unit="folds") == "no evidence of a difference with 3 folds"
    same = paired(A, A)
    assert (same.delta, same.low, same.high, same.p, same.test) == (0.0, 0.0, 0.0, 1.0, "identical")
    assert words(same, higher_is_better=True) == "no difference: identical with 3 seeds"
    assert words(paired([0.5], [0.4]), higher_is_better=True) == "untested: too few runs (1 seed)"
    assert words(None, higher_is_better=True) == "baseline"


def test_difference_pairs_on_shared_seeds_else_goes_unpaired():
    values = {("0",): 0.80, ("1",): 0.82, ("2",): 0.79}
    baseline = {("2",): 0.76, ("1",): 0.78, ("0",): 0.75}  # same seeds, another order
    assert difference(values, baseline) == paired(A, B)
    other_seeds = {("7",): 0.75, ("8",): 0.78, ("9",): 0.76}
    assert difference(values, other_seeds).test == "Welch (unpaired)"
