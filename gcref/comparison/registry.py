"""The rows of ``gcref compare``: one function per quantity, registered by name.

A row function takes a :class:`Problem` and a backend name and returns a float or a
NumPy array; ``gcref compare`` evaluates it in every backend and reports its value, the
largest relative deviation from ``numpy`` and the time. Feature modules in this package
register their rows at import; the runner imports every module of the package.

Example::

    from gcref.comparison.registry import row

    @row("input_jacobian")
    def _input_jacobian(problem, backend):
        return gcref.input_jacobian(problem.mlp, problem.params, problem.X, backend=backend)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Problem:
    """The built-in problem every row is evaluated on.

    Attributes
    ----------
    mlp : gcref.MLP
    params : tuple of (W, b)
    X : ndarray, shape (N, d)
    y : ndarray, shape (N, k)
        Regression targets for ``loss``.
    loss : str
    direction : tuple of (W, b)
        A fixed parameter direction for Hessian-vector products.
    labels : ndarray of int, shape (N,)
        Class labels in [0, k), for quantities that need a classification problem.
    rng_seed : int
        Seed for quantities that draw random numbers (estimators); each row makes its
        own ``numpy.random.default_rng(rng_seed)`` so every backend sees the same draws.
    extra : dict
        Anything else a row needs; rows must not modify it.
    """

    mlp: object
    params: tuple
    X: np.ndarray
    y: np.ndarray
    loss: str
    direction: tuple
    labels: np.ndarray
    rng_seed: int = 0
    extra: dict = field(default_factory=dict)


ROWS = {}


def row(name):
    """Register ``fn(problem, backend) -> float | ndarray`` as the row ``name``."""
    if not name.isidentifier() or name.lower() != name:
        raise ValueError(f"row names are snake_case identifiers; got {name!r}")

    def register(fn):
        if name in ROWS:
            raise ValueError(f"a row named {name!r} is already registered")
        ROWS[name] = fn
        return fn

    return register
