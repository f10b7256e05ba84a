"""Tools to verify derivatives and implementations against gcref's reference.

- :mod:`gcref.testing.derivatives` (re-exported here): :func:`check_vjp` and
  :func:`check_jvp` check a claimed derivative against central finite differences by
  dot-product tests. NumPy only.
- :mod:`gcref.testing.strategies`: Hypothesis strategies that draw MLPs, parameters,
  batches, labels, rescalings and probes.
- :mod:`gcref.testing.conformance` (its checks are also reachable here, loaded on first
  use): one check per quantity, which verifies a user's NumPy, torch or JAX
  implementation on drawn problems against the reference.

The last two need Hypothesis (``pip install gcref[testing]``); ``import gcref.testing``
does not.
"""

from gcref.testing.derivatives import (
    DerivativeCheck,
    DerivativeCheckError,
    central_difference,
    check_jvp,
    check_vjp,
    default_rtol,
    default_step,
)

__all__ = [
    "DerivativeCheckError",
    "DerivativeCheck",
    "central_difference",
    "check_jvp",
    "check_vjp",
    "default_rtol",
    "default_step",
]
