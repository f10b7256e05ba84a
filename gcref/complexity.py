"""Geometric complexity and the discrete Dirichlet energy (docs/math.md section 2).

Two quantities that differ by exactly a factor 1/2 and are easy to confuse:

- geometric complexity ``GC(f, D) = (1/|D|) sum_{x in D} ||J(x)||_F^2`` (seed 003);
- discrete Dirichlet energy ``DE^(f, D) = GC(f, D) / 2`` (seed 000, eq. 5).

The continuous Dirichlet energy, an integral over the feature polytope, is a different
quantity and lives elsewhere.

These are the MLP spellings of the measures of :mod:`gcref.models`, which take any model
(a torch module, a JAX function) through the same functions; data are streamed in chunks
(:mod:`gcref.data`), so that only one chunk of Jacobians exists at a time, and sums are
accumulated in float64 whatever the model's dtype.

Index conventions: ``N`` examples, ``d`` inputs, ``k`` outputs; ``J(x) = df/dx`` of
shape ``(k, d)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, overload

from gcref import models
from gcref._checks import not_an_mlp
from gcref.backends import get_backend
from gcref.mlp import MLP
from gcref.models import PROBES, draw_probes
from gcref.results import Complexity, ComplexityEstimate

if TYPE_CHECKING:
    import numpy as np

    from gcref._typing import BackendLike, Data, MLPParams, NativeArray

__all__ = [
    "PROBES",
    "Complexity",
    "ComplexityEstimate",
    "dirichlet_energy",
    "draw_probes",
    "estimate_geometric_complexity",
    "geometric_complexity",
    "geometric_complexity_native",
]


@overload
def geometric_complexity(
    mlp: MLP, params: MLPParams, data: Data, *, backend: BackendLike = "numpy",
    chunk_size: int = 256, per_example: Literal[False] = False,
) -> float: ...


@overload
def geometric_complexity(
    mlp: MLP, params: MLPParams, data: Data, *, backend: BackendLike = "numpy",
    chunk_size: int = 256, per_example: Literal[True],
) -> Complexity: ...


@overload
def geometric_complexity(
    mlp: MLP, params: MLPParams, data: Data, *, backend: BackendLike = "numpy",
    chunk_size: int = 256, per_example: bool,
) -> float | Complexity: ...


def geometric_complexity(
    mlp: MLP, params: MLPParams, data: Data, *, backend: BackendLike = "numpy",
    chunk_size: int = 256, per_example: bool = False,
) -> float | Complexity:
    """Geometric complexity ``GC(f, D)``: the mean squared Frobenius norm of the input Jacobian.

    The MLP spelling of :func:`gcref.models.geometric_complexity`, which measures any
    model through the same function.

    Parameters
    ----------
    mlp : gcref.MLP
    params : tuple of (W, b) pairs of ndarray
    data : ndarray, shape (N, d), or iterable of batches
        The data set D, as one array or as batches (see :mod:`gcref.data`; a generator
        is consumed once).
    backend : str or Backend
    chunk_size : int
        Most examples whose Jacobians exist at once.
    per_example : bool
        Also return ``||J(x_n)||_F^2`` for every example.

    Returns
    -------
    float, or Complexity
        ``GC``; with ``per_example=True``, a :class:`Complexity` with ``.value`` and
        ``.per_example`` of shape (N,).

    Raises
    ------
    ValueError
        When ``data`` holds no example.

    Notes
    -----
    docs/math.md section 2 (seed 003): ``GC(f, D) = (1/|D|) sum_{x in D} ||J(x)||_F^2``.
    For a linear model ``f(x) = W x + b``, ``GC = ||W||_F^2`` (seed 000, Remark 2).
    """
    return models.geometric_complexity(
        _mlp(mlp), data, params=params, backend=backend, chunk_size=chunk_size,
        per_example=per_example,
    )


@overload
def dirichlet_energy(
    mlp: MLP, params: MLPParams, data: Data, *, backend: BackendLike = "numpy",
    chunk_size: int = 256, per_example: Literal[False] = False,
) -> float: ...


@overload
def dirichlet_energy(
    mlp: MLP, params: MLPParams, data: Data, *, backend: BackendLike = "numpy",
    chunk_size: int = 256, per_example: Literal[True],
) -> Complexity: ...


@overload
def dirichlet_energy(
    mlp: MLP, params: MLPParams, data: Data, *, backend: BackendLike = "numpy",
    chunk_size: int = 256, per_example: bool,
) -> float | Complexity: ...


def dirichlet_energy(
    mlp: MLP, params: MLPParams, data: Data, *, backend: BackendLike = "numpy",
    chunk_size: int = 256, per_example: bool = False,
) -> float | Complexity:
    """Discrete Dirichlet energy ``DE^(f, D) = GC(f, D) / 2``.

    The MLP spelling of :func:`gcref.models.dirichlet_energy`; parameters and returns as
    :func:`geometric_complexity`, per-example values ``||J(x_n)||_F^2 / 2``.

    Notes
    -----
    docs/math.md section 2 (seed 000, eq. 5): ``DE^(f, D) = (1 / (2 |D|)) sum_{x in D} ||J(x)||_F^2``.
    Not the continuous Dirichlet energy of seed 000, eq. 4 (an integral over the feature
    polytope).
    """
    return models.dirichlet_energy(
        _mlp(mlp), data, params=params, backend=backend, chunk_size=chunk_size,
        per_example=per_example,
    )


def estimate_geometric_complexity(
    mlp: MLP, params: MLPParams, data: Data, rng: np.random.Generator, *, n_probes: int = 1,
    probe: str = "gaussian", backend: BackendLike = "numpy", chunk_size: int = 256,
) -> ComplexityEstimate:
    """Unbiased estimate of ``GC(f, D)`` from random vector-Jacobian products.

    The MLP spelling of :func:`gcref.models.estimate_geometric_complexity` (which see for
    the probes, the statistic and its standard error).

    Parameters
    ----------
    mlp : gcref.MLP
    params : tuple of (W, b) pairs of ndarray
    data : ndarray, shape (N, d), or iterable of batches
    rng : numpy.random.Generator
        Source of the probes: the same generator state gives the same probes in every
        backend and for every ``chunk_size`` (they are drawn example by example).
    n_probes : int
    probe : {"gaussian", "rademacher", "sphere"}
    backend : str or Backend
    chunk_size : int

    Returns
    -------
    ComplexityEstimate
        ``.value``, ``.stderr``, ``.n_probes``, ``.n_examples``.

    Notes
    -----
    docs/math.md section 2: ``E ||v^T J||^2 = ||J||_F^2`` for ``E[v v^T] = I_k``.
    """
    return models.estimate_geometric_complexity(
        _mlp(mlp), data, rng, params=params, backend=backend, n_probes=n_probes, probe=probe,
        chunk_size=chunk_size,
    )


def _mlp(mlp: object) -> MLP:
    if not isinstance(mlp, MLP):
        raise not_an_mlp(mlp)
    return mlp


def geometric_complexity_native(
    mlp: MLP, params: MLPParams, X: NativeArray, *, backend: BackendLike,
) -> NativeArray:
    """Geometric complexity on a backend's native arrays, differentiable as a training penalty.

    Parameters
    ----------
    mlp : gcref.MLP
    params : sequence of (W, b) pairs of native arrays
        ``torch.Tensor`` (possibly requiring grad), ``jax.Array`` (possibly traced) or
        arrays boxed by autograd.
    X : native array, shape (N, d)
    backend : str or Backend
        The backend the arrays belong to.

    Returns
    -------
    native scalar
        ``(1/N) sum_n ||J(x_n)||_F^2``, differentiable with respect to ``params`` (and ``X``).

    Notes
    -----
    docs/math.md section 2. No input checks and no conversion: this is the function to call
    inside a loss, e.g. ``loss + lam * geometric_complexity_native(mlp, params, X,
    backend="torch")``. Torch keeps the graph of its vector-Jacobian products when grad
    is enabled; JAX and autograd are functional. In JAX, float64 needs
    ``jax.enable_x64``; ``get_backend("jax").scope(numpy.float64)`` provides it.
    """
    if not isinstance(mlp, MLP):
        raise not_an_mlp(mlp)
    backend = get_backend(backend)
    J = backend.input_jacobian(mlp, params, X)
    return backend.xp.sum(J * J) / X.shape[0]
