"""Seed statistics shared by the experiments' rules.

Every rule judges seed-averaged values with their standard errors: a difference counts only
when it exceeds twice its standard error (:data:`Z`), and a bound counts as met or missed
only when the mean is on one side of it by more than that.
"""

from __future__ import annotations

import numpy as np

#: A difference counts only beyond this many standard errors.
Z = 2.0


def run_seeds(seed, count):
    """The ``count`` run seeds drawn from base seed ``seed``: ``seed + 1``, ..., ``seed + count``.

    Raises ValueError for fewer than 2 (a standard error needs two seeds).
    """
    if count < 2:
        raise ValueError(f"seeds must be at least 2 (a standard error needs two); got {count}")
    return [seed + 1 + s for s in range(count)]


def mean_stderr(values, axis=-1):
    """Mean and standard error of the mean (``std(ddof=1) / sqrt(n)``) along ``axis``."""
    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    if n < 2:
        raise ValueError(f"a standard error needs at least 2 values; got {n}")
    return values.mean(axis=axis), values.std(axis=axis, ddof=1) / np.sqrt(n)


def summary(values, axis=-1):
    """``{"per_seed", "mean", "stderr"}`` of ``values`` (seeds along ``axis``)."""
    mean, stderr = mean_stderr(values, axis)
    return {"per_seed": np.asarray(values, dtype=float), "mean": mean, "stderr": stderr}


def below(mean_a, se_a, mean_b, se_b):
    """Whether ``a < b`` beyond :data:`Z` standard errors of the difference."""
    return bool(mean_b - mean_a > Z * np.hypot(se_a, se_b))


def below_bound(mean, se, bound):
    """Whether ``mean < bound`` beyond :data:`Z` standard errors."""
    return bool(mean + Z * se < bound)


def above_bound(mean, se, bound):
    """Whether ``mean > bound`` beyond :data:`Z` standard errors."""
    return bool(mean - Z * se > bound)


def within(mean, se, low, high):
    """Whether ``[low, high]`` is not excluded: ``mean`` lies in it or within :data:`Z`
    standard errors of it (a departure counts only beyond 2 standard errors)."""
    return bool(low - Z * se <= mean <= high + Z * se)


def log_slope(x, y):
    """Least-squares slope of ``log y`` against ``log x`` (the same in every base)."""
    x, y = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return float(np.polyfit(x, y, 1)[0])


def average_ranks(values):
    """Ranks 0..n-1 of ``values``, tied values sharing the mean of their ranks."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a, b):
    """Spearman rank correlation of two sequences, ties given their average rank.

    ``nan`` when either sequence is constant: no ordering to correlate (positional ranks
    for ties would report a perfect correlation between two constant sequences).
    """
    ra, rb = average_ranks(a), average_ranks(b)
    if np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
