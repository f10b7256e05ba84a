"""One table of comparison tolerances, keyed by dtype.

Reference comparisons between backends run in float64, where different but exact
algorithms agree to a few hundred ulps; float32 results carry about 7 digits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, DTypeLike

#: (rtol, atol) per dtype for comparing two exact computations of the same quantity.
TOLERANCES: dict[np.dtype[Any], tuple[float, float]] = {
    np.dtype(np.float64): (1e-9, 1e-11),
    np.dtype(np.float32): (2e-4, 1e-5),
}


def tolerance(dtype: DTypeLike) -> tuple[float, float]:
    """Return ``(rtol, atol)`` for comparing exact results computed in ``dtype``."""
    dt = np.dtype(dtype)
    try:
        return TOLERANCES[dt]
    except KeyError:
        raise TypeError(f"no tolerance for dtype {dt}; expected float32 or float64") from None


def relative_deviation(
    value: ArrayLike, reference: ArrayLike, dtype: DTypeLike = np.float64
) -> float:
    """Largest element-wise deviation of ``value`` from ``reference``, relative to its scale.

    The denominator is ``max(|reference|_inf, atol / rtol)``, so that entries that are
    zero in exact arithmetic do not blow the ratio up.
    """
    value = np.asarray(value, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if value.shape != reference.shape:
        raise ValueError(f"shapes differ: {value.shape} against {reference.shape}")
    if value.size == 0:
        return 0.0
    rtol, atol = tolerance(dtype)
    scale = max(float(np.max(np.abs(reference))), atol / rtol)
    return float(np.max(np.abs(value - reference)) / scale)
