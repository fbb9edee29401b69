"""Statistics over seeds against hand-computed values and scipy."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from cnnlab.report import stats


def test_summary_of_five_values_by_hand():
    summary = stats.summarize([1, 2, 3, 4, 5])
    assert summary.n == 5 and summary.mean == 3.0 and summary.min == 1.0 and summary.max == 5.0
    assert summary.std == pytest.approx(math.sqrt(2.5))  # sample std: sum of squares 10 over n - 1 = 4
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) from tables
    assert (summary.ci_low, summary.ci_high) == pytest.approx((3 - half, 3 + half))
    assert not summary.deterministic
    assert summary.text() == "3.00 +/- 1.58 (95% CI 1.04-4.96, n=5)"
    wide = stats.summarize([1, 2, 3, 4, 5], confidence=0.99)
    assert wide.ci_high - wide.ci_low > summary.ci_high - summary.ci_low


def test_deterministic_and_single_values_say_so():
    exact = stats.summarize([0.9889] * 5)
    assert exact.deterministic and exact.std == 0.0 and exact.ci_low == exact.ci_high == pytest.approx(0.9889)
    assert exact.text(scale=100) == "98.89 +/- 0.00 (no spread: deterministic, n=5)"
    one = stats.summarize([0.5])
    assert one.ci_low is None and one.std == 0.0 and not one.deterministic and one.text() == "0.50 +/- 0.00 (n=1)"


@pytest.mark.parametrize("bad, message", [([], "non-empty"), ([1.0, float("nan")], "NaN"), ([[1.0]], "1-D")])
def test_summary_rejects_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        stats.summarize(bad)
    with pytest.raises(ValueError, match="confidence"):
        stats.summarize([1.0, 2.0], confidence=95)


def test_paired_test_by_hand_and_against_scipy():
    result = stats.paired_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    # differences 1, 2, 3: mean 2, sample std 1, t = 2 / (1 / sqrt(3))
    assert result.mean_difference == 2.0 and result.t_statistic == pytest.approx(2 * math.sqrt(3))
    assert result.p_value == pytest.approx(2 * scipy_stats.t.sf(2 * math.sqrt(3), 2))
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.9, 0.01, 7), rng.normal(0.9, 0.01, 7)
    assert stats.paired_test(a, b).p_value == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
    same = stats.paired_test([0.9, 0.8], [0.8, 0.7])
    assert same.identical_differences and same.p_value is None and same.mean_difference == pytest.approx(0.1)
    with pytest.raises(ValueError, match="pair up"):
        stats.paired_test([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        stats.paired_test([1], [2])


def test_mcnemar_exact_by_hand():
    a = np.array([True] * 10 + [False] * 2 + [True] * 5 + [False] * 3)
    b = np.array([False] * 10 + [True] * 2 + [True] * 5 + [False] * 3)
    result = stats.mcnemar(a, b)
    assert (result.only_a, result.only_b) == (10, 2)
    # two-sided exact: 2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert result.p_value == pytest.approx(2 * 79 / 4096)
    assert stats.mcnemar(a, a).p_value == 1.0 and stats.mcnemar(a, a).only_a == 0
    with pytest.raises(ValueError, match="one length"):
        stats.mcnemar(a, b[:-1])
    with pytest.raises(ValueError, match="booleans"):
        stats.mcnemar(a.astype(float) * 2, b)


def test_bootstrap_interval_of_accuracy():
    assert stats.bootstrap_accuracy_interval(np.ones(50, bool)) == (1.0, 1.0)
    correct = np.zeros(1000, bool)
    correct[:800] = True
    low, high = stats.bootstrap_accuracy_interval(correct, resamples=4000)
    # Normal approximation: 0.8 +/- 1.96 * sqrt(0.8 * 0.2 / 1000) = 0.8 +/- 0.0248
    assert low < 0.8 < high and high - low == pytest.approx(2 * 1.96 * math.sqrt(0.16 / 1000), rel=0.15)
    assert stats.bootstrap_accuracy_interval(correct, seed=1) != stats.bootstrap_accuracy_interval(correct, seed=2)
    assert stats.bootstrap_accuracy_interval(correct, seed=3) == stats.bootstrap_accuracy_interval(correct, seed=3)
    # Several seeds on the same images: the interval of their mean accuracy, images resampled jointly.
    seeds = np.stack([correct, np.roll(correct, 100)])
    low2, high2 = stats.bootstrap_accuracy_interval(seeds)
    assert low2 < 0.8 < high2
    with pytest.raises(ValueError, match="resamples"):
        stats.bootstrap_accuracy_interval(correct, resamples=10)
    with pytest.raises(ValueError, match="booleans"):
        stats.bootstrap_accuracy_interval(np.full(10, 0.5))
