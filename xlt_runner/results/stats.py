"""Across-seed statistics: Student-t confidence intervals and Welch's unpaired t-test.

Seeds are independent replicates of a cell (method x model x benchmark x languages x the
rest of the config). Comparisons between two methods use Welch's test, which does not
assume equal variances nor that seed *k* of one method is paired with seed *k* of the other.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from scipy import stats


#: Significant digits scores are rounded to before any statistic: the same score reached by another
#: summation order (35.55555555555556 and 35.555555555555564) is one value, not a variance of 1e-29
#: that scipy would warn about ("catastrophic cancellation") and turn into a meaningless t. Relative,
#: so it holds for a metric on any scale (a percentage, a fraction, a count in the millions).
SCORE_SIGNIFICANT_DIGITS = 11


def _finite(values: Iterable[float]) -> np.ndarray:
    array = np.array([float(f"{value:.{SCORE_SIGNIFICANT_DIGITS}g}") for value in map(float, values)], dtype=float)
    return array[np.isfinite(array)]


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float]:
    """``(mean, half_width)`` of a ``confidence`` interval for the mean (Student t, n-1 dof).

    The interval is ``mean ± half_width`` in the units of ``values``. Non-finite values are
    dropped. n=1 gives a nan half-width; n=0 gives ``(nan, nan)``.
    """
    array = _finite(values)
    if array.size == 0:
        return math.nan, math.nan
    mean = float(array.mean())
    if array.size == 1:
        return mean, math.nan
    standard_error = float(array.std(ddof=1)) / math.sqrt(array.size)
    t_quantile = float(stats.t.ppf(0.5 + confidence / 2, df=array.size - 1))
    return mean, t_quantile * standard_error


#: Why :func:`welch_p` is nan (see :func:`welch_undefined_reason`).
FEWER_THAN_TWO = "fewer than 2 values"
ZERO_VARIANCE = "zero variance in both samples"


def welch_undefined_reason(a: Iterable[float], b: Iterable[float]) -> str | None:
    """Why Welch's test of ``a`` against ``b`` has no p-value: :data:`FEWER_THAN_TWO` when
    either sample has fewer than 2 finite values, :data:`ZERO_VARIANCE` when both samples
    have zero variance (the test statistic is undefined); None when it has one."""
    first, second = _finite(a), _finite(b)
    if first.size < 2 or second.size < 2:
        return FEWER_THAN_TWO
    if first.var(ddof=1) == 0 and second.var(ddof=1) == 0:
        return ZERO_VARIANCE
    return None


def welch_p(a: Iterable[float], b: Iterable[float]) -> float:
    """Two-sided p-value of Welch's unpaired t-test of equal means (scipy); nan where
    :func:`welch_undefined_reason` gives a reason."""
    first, second = _finite(a), _finite(b)
    if welch_undefined_reason(first, second):
        return math.nan
    # Welch's t and Welch-Satterthwaite degrees of freedom, as scipy.stats.ttest_ind(equal_var=False)
    # computes them, but without its warning for a sample with zero variance (a defined case here).
    var_1, var_2 = first.var(ddof=1) / first.size, second.var(ddof=1) / second.size
    t = (first.mean() - second.mean()) / math.sqrt(var_1 + var_2)
    dof = (var_1 + var_2) ** 2 / (var_1 ** 2 / (first.size - 1) + var_2 ** 2 / (second.size - 1))
    return float(2 * stats.t.sf(abs(t), dof))
