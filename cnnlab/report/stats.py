"""Statistics for results over several seeds: summaries with confidence intervals, and tests between methods.

    summary = summarize([0.9090, 0.9101, 0.9077, 0.9095, 0.9088])   # mean, std, min, max, 95% t interval, n
    low, high = bootstrap_accuracy_interval(correct)                   # correct: bool [seeds, test images]
    paired = paired_test(acc_a, acc_b)                                 # same seeds, same split: paired t test
    mc = mcnemar(correct_a, correct_b)                                 # one seed pair, per-image predictions

Conventions: the standard deviation is the sample one (ddof=1); an interval of the mean uses Student's t with
n - 1 degrees of freedom; a method whose values are all equal (an exact, deterministic method such as exact kNN
on a fixed split) has zero spread, which ``summarize`` says in ``deterministic`` rather than hiding it in a
zero-width interval. Arrays in, numbers out: no files.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats


def _values(values, name: str = "values") -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values: {array.tolist()}.")
    return array


def _confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence!r}.")
    return float(confidence)


@dataclasses.dataclass(frozen=True)
class Summary:
    """n values: their mean, sample standard deviation, min, max, and the ``confidence`` interval of the mean
    (Student t, n - 1 degrees of freedom; None for n = 1). ``deterministic``: every value is the same."""

    n: int
    mean: float
    std: float
    min: float
    max: float
    ci_low: float | None
    ci_high: float | None
    confidence: float
    deterministic: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def text(self, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
        """``90.90 +/- 0.09% (95% CI 90.79-91.01, n=5)``; ``... (no spread: deterministic, n=5)``."""
        fmt = f"{{:.{digits}f}}"
        head = f"{fmt.format(self.mean * scale)} +/- {fmt.format(self.std * scale)}{unit}"
        if self.deterministic:
            return f"{head} (no spread: deterministic, n={self.n})"
        if self.ci_low is None:
            return f"{head} (n=1)"
        return (f"{head} ({round(100 * self.confidence)}% CI {fmt.format(self.ci_low * scale)}-"
                f"{fmt.format(self.ci_high * scale)}, n={self.n})")


def summarize(values: Sequence[float], *, confidence: float = 0.95) -> Summary:
    """Mean, sample std, min, max and the Student-t confidence interval of the mean of ``values``."""
    array = _values(values)
    confidence = _confidence(confidence)
    n = int(array.size)
    deterministic = bool(np.all(array == array[0])) and n > 1
    mean = float(array[0]) if deterministic else float(array.mean())  # no summation round-off for equal values
    std = float(array.std(ddof=1)) if n > 1 and not deterministic else 0.0
    if n > 1:
        half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    else:
        low = high = None
    return Summary(n=n, mean=mean, std=std, min=float(array.min()), max=float(array.max()), ci_low=low,
                   ci_high=high, confidence=confidence, deterministic=deterministic)


def bootstrap_accuracy_interval(correct, *, confidence: float = 0.95, resamples: int = 2000,
                                seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy from per-image correctness.

    correct: bool [N] (one run) or [S, N] (S seeds scored on the same N test images). The test images are
    resampled with replacement (the same draw for every seed, so seeds stay paired) and the statistic is the
    accuracy averaged over seeds. Returns (low, high) as fractions.
    """
    array = np.asarray(correct)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"correct must be [N] or [seeds, N] booleans with N >= 1, got shape {array.shape}.")
    if array.dtype != np.bool_:
        if not np.isin(array, (0, 1)).all():
            raise ValueError("correct must hold booleans (or 0/1): whether each test image was classified right.")
        array = array.astype(bool)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"resamples must be an integer >= 100, got {resamples!r}.")
    confidence = _confidence(confidence)
    per_image = array.mean(axis=0)  # the seeds' mean correctness of each image: resampling images keeps pairs
    rng = np.random.default_rng(seed)
    n = per_image.size
    means = np.empty(resamples)
    for start in range(0, resamples, 256):  # blocks bound the memory to 256 x N indices
        count = min(256, resamples - start)
        means[start:start + count] = per_image[rng.integers(0, n, size=(count, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """Paired t test of two methods over the same seeds: mean difference (a - b), its t statistic and two-sided
    p value (None when every difference is the same, where the test is undefined), and n."""

    n: int
    mean_difference: float
    t_statistic: float | None
    p_value: float | None
    identical_differences: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired t test of per-seed results ``a`` and ``b`` (the same seeds and split for both)."""
    a, b = _values(a, "a"), _values(b, "b")
    if a.size != b.size:
        raise ValueError(f"a and b must pair up seed by seed: {a.size} values against {b.size}.")
    if a.size < 2:
        raise ValueError("a paired test needs at least 2 seeds per method.")
    difference = a - b
    # Equal up to round-off (0.9 - 0.8 and 0.8 - 0.7 differ in the last bit): the t test is undefined there.
    if np.ptp(difference) <= 1e-12 * max(1.0, float(np.abs(difference).max())):
        return PairedTest(n=int(a.size), mean_difference=float(difference[0]), t_statistic=None, p_value=None,
                          identical_differences=True)
    result = scipy_stats.ttest_rel(a, b)
    return PairedTest(n=int(a.size), mean_difference=float(difference.mean()), t_statistic=float(result.statistic),
                      p_value=float(result.pvalue), identical_differences=False)


@dataclasses.dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on one pair of runs scored on the same test images.

    only_a: images method a got right and b wrong; only_b: the reverse. p_value: two-sided exact binomial
    p value of only_a against only_b (1.0 when the runs never disagree).
    """

    only_a: int
    only_b: int
    p_value: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def mcnemar(correct_a, correct_b) -> McNemar:
    """McNemar's exact test between two runs' per-image correctness (bool [N] each, same images, same order)."""
    a, b = np.asarray(correct_a), np.asarray(correct_b)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"correct_a and correct_b must be 1-D and of one length, got {a.shape} and {b.shape}.")
    for name, array in (("correct_a", a), ("correct_b", b)):
        if array.dtype != np.bool_ and not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans (or 0/1): whether each test image was classified right.")
    a, b = a.astype(bool), b.astype(bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    disagreements = only_a + only_b
    if disagreements == 0:
        return McNemar(only_a=0, only_b=0, p_value=1.0)
    p_value = scipy_stats.binomtest(only_a, disagreements, 0.5, alternative="two-sided").pvalue
    return McNemar(only_a=only_a, only_b=only_b, p_value=float(min(1.0, p_value)))
