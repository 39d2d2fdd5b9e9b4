"""Which differences between methods are real: a 95 % confidence interval per cell mean and Welch's t-test
between two methods' seeds (unequal variances: methods differ in spread), from summary statistics alone."""

from __future__ import annotations

import math


def ci95_half_width(std: float, n: int) -> float:
    """t_{0.975, n−1} · std / √n (std with ddof 1); NaN for fewer than two seeds (no spread to estimate)."""
    if n < 2 or not math.isfinite(std):
        return math.nan
    from scipy import stats as _st  # here, not at import: every `python run.py` imports this module

    return float(_st.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def welch_p(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int) -> float:
    """Two-sided p-value of Welch's t-test that two means differ; NaN when either side has one seed, and 1.0
    (no evidence) when both sides are constant and equal, 0.0 when both are constant and differ."""
    if n_a < 2 or n_b < 2:
        return math.nan
    if std_a == 0 and std_b == 0:
        return 1.0 if mean_a == mean_b else 0.0
    from scipy import stats as _st

    return float(_st.ttest_ind_from_stats(mean_a, std_a, n_a, mean_b, std_b, n_b, equal_var=False).pvalue)
