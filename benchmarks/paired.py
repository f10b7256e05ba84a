"""How sure a median of paired time ratios is: a helper of the benchmark scripts, not one itself.

The benchmarks judge "gcref at least as fast as X" from ratios ``time(X) / time(gcref)``
of calls timed back to back. Their quartiles say how the ratios spread; whether the
median itself lies above or below 1 is a different question, answered by an interval
for the median. The one here assumes only that the ratios are independent draws from
one distribution: the k-th smallest of n draws lies below the median with probability
``P(B >= k)`` for ``B ~ Binomial(n, 1/2)``, so the order statistics ``(x_(d), x_(n+1-d))``
cover the median with probability ``1 - 2 P(B <= d - 1)``, and d is taken as large as
the level allows.
"""

from __future__ import annotations

import math

__all__ = ["enough", "judged", "median_interval"]


def median_interval(values, level=0.95):
    """``(low, high)``: an interval that covers the median of the ratios' distribution.

    Coverage is at least ``level`` when there are enough values (6 for 95%); with fewer,
    the interval is the whole range of the values, whose coverage ``1 - 2^(1-n)`` is
    below ``level``.
    """
    x = sorted(float(v) for v in values)
    n = len(x)
    if n == 0:
        raise ValueError("median_interval needs at least one value")
    if not all(math.isfinite(v) for v in x):
        raise ValueError("median_interval: values must be finite ratios (a NaN cannot be ordered)")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    alpha = (1 - level) / 2
    # d = the largest count with P(B <= d - 1) <= alpha (B ~ Binomial(n, 1/2)).
    d, tail = 0, 0.0
    while d < n // 2:
        p = math.comb(n, d) / 2**n
        if tail + p > alpha:
            break
        tail, d = tail + p, d + 1
    if d == 0:
        return x[0], x[-1]
    return x[d - 1], x[n - d]


def enough(n, level=0.95):
    """Whether n values give :func:`median_interval` its coverage ``level``."""
    return n >= 1 and 2 * 0.5**n <= 1 - level


def judged(values, level=0.95):
    """``"faster"``, ``"slower"`` or ``"level"``: gcref against the alternative.

    ``values`` are ``time(alternative) / time(gcref)``: "faster" (gcref) when the
    interval for their median lies above 1, "slower" when it lies below 1, "level" when
    it contains 1 or when there are too few values for the level (the run cannot tell
    the two apart).
    """
    values = list(values)
    low, high = median_interval(values, level)
    if not enough(len(values), level):
        return "level"
    if low > 1:
        return "faster"
    if high < 1:
        return "slower"
    return "level"
