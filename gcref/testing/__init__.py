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
    "DerivativeCheck",
    "DerivativeCheckError",
    "central_difference",
    "check_jvp",
    "check_vjp",
    "default_rtol",
    "default_step",
]

_CONFORMANCE = (
    "Conformance",
    "ConformanceError",
    "check_dirichlet_energy",
    "check_gc_estimate",
    "check_geometric_complexity",
    "check_input_jacobian",
    "check_loss_grad",
    "check_loss_grad_sq_norms",
    "check_loss_hvp",
    "check_modified_loss_gd",
    "check_modified_loss_per_example",
    "check_modified_loss_sgd",
    "check_param_grad_sq_norms",
    "check_path_norm",
    "check_transfer_ratio",
)


def __getattr__(name):
    # The conformance checks import Hypothesis: load them on first use only.
    if name in _CONFORMANCE:
        from gcref.testing import conformance

        return getattr(conformance, name)
    raise AttributeError(f"module 'gcref.testing' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_CONFORMANCE])
