"""The rows of ``gcref compare``: one function per quantity, registered by name.

A row function takes a :class:`Problem` and a backend name and returns a float or a
NumPy array; ``gcref compare`` evaluates it in every backend and reports its value, the
largest relative deviation from ``numpy`` and the time. Feature modules in this package
register their rows at import; the runner imports every module of the package. The first
line of a row function's docstring describes the quantity in ``gcref compare --help``.

Example::

    from gcref.comparison.registry import row

    @row("input_jacobian")
    def _input_jacobian(problem, backend):
        '''``J(x_n) = df/dx``, shape (N, k, d).'''
        return gcref.input_jacobian(problem.mlp, problem.params, problem.X, backend=backend)

Users' models
-------------
A *model backend* (:func:`model_backend`) turns the problem's MLP into a model of a
framework, e.g. a ``torch.nn.Module``; a *model row* (:func:`model_row`) computes an
existing quantity of that model through :mod:`gcref.models`. Its value is compared with
the ``numpy`` value of the same quantity, so the comparison covers the path users'
models take.
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

#: Model backend name -> :class:`ModelBackend`.
MODEL_BACKENDS = {}

#: Quantity -> ``fn(problem, model, params) -> float | ndarray`` for users' models.
MODEL_ROWS = {}


@dataclass(frozen=True)
class ModelBackend:
    """A way to turn the problem's MLP into a user's model.

    Attributes
    ----------
    name : str
        The backend column of the table, e.g. ``"torch-module"``.
    framework : str
        The gcref backend whose framework it needs (``"torch"``, ``"jax"``).
    description : str
        What it runs, for ``--help``.
    build : callable
        ``build(problem) -> (model, params)``, the arguments of :func:`gcref.models.wrap`.
    """

    name: str
    framework: str
    description: str
    build: object


def _check_row_name(name):
    if not name.isidentifier() or name.lower() != name:
        raise ValueError(f"row names are snake_case identifiers; got {name!r}")


def row(name):
    """Register ``fn(problem, backend) -> float | ndarray`` as the row ``name``."""
    _check_row_name(name)

    def register(fn):
        if name in ROWS:
            raise ValueError(f"a row named {name!r} is already registered")
        ROWS[name] = fn
        return fn

    return register


def model_backend(name, framework, description):
    """Register ``build(problem) -> (model, params)`` as the model backend ``name``."""
    if not name.replace("-", "_").isidentifier() or name.lower() != name:
        raise ValueError(f"model backend names are lower-case words joined by '-'; got {name!r}")

    def register(build):
        if name in MODEL_BACKENDS:
            raise ValueError(f"a model backend named {name!r} is already registered")
        MODEL_BACKENDS[name] = ModelBackend(name, framework, description, build)
        return build

    return register


def model_row(name):
    """Register ``fn(problem, model, params) -> float | ndarray`` for the quantity ``name``.

    ``model`` and ``params`` come from a model backend's ``build``; the value is compared
    with the ``numpy`` value of the row ``name``, which must be registered too.
    """
    _check_row_name(name)

    def register(fn):
        if name in MODEL_ROWS:
            raise ValueError(f"a model row named {name!r} is already registered")
        MODEL_ROWS[name] = fn
        return fn

    return register


def describe(fn):
    """The first line of ``fn``'s docstring, or ``""``."""
    return (fn.__doc__ or "").strip().split("\n", 1)[0].strip()
