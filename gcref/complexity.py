"""Geometric complexity and the discrete Dirichlet energy (MATH.md section 2).

Two quantities that differ by exactly a factor 1/2 and are easy to confuse:

- geometric complexity ``GC(f, D) = (1/|D|) sum_{x in D} ||J(x)||_F^2`` (seed 003);
- discrete Dirichlet energy ``DE^(f, D) = GC(f, D) / 2`` (seed 000, eq. 5).

The continuous Dirichlet energy, an integral over the feature polytope, is a different
quantity and lives elsewhere.

Data sets are streamed: ``data`` is an array of shape ``(N, d)`` or an iterable of batches
of shape ``(n_j, d)``, cut into chunks of at most ``chunk_size`` examples, so that only one
chunk of Jacobians (shape ``(chunk, k, d)``) exists at a time. Norms and sums are
accumulated in float64 whatever the model's dtype.

Index conventions: ``N`` examples, ``d`` inputs, ``k`` outputs; ``J(x) = df/dx`` of
shape ``(k, d)``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from gcref._checks import check_float_array, check_positive_int, check_rng, not_an_mlp
from gcref.backends import get_backend
from gcref.mlp import MLP
from gcref.primitives import Call

PROBES = ("gaussian", "rademacher", "sphere")


@dataclass(frozen=True)
class Complexity:
    """A data-set average together with the per-example values it averages.

    Attributes
    ----------
    value : float
        The mean over the data set.
    per_example : ndarray, shape (N,)
        The per-example values, float64, in the order the data were given.
    """

    value: float
    per_example: np.ndarray


@dataclass(frozen=True)
class ComplexityEstimate:
    """An unbiased probe estimate of the geometric complexity.

    Attributes
    ----------
    value : float
        The estimate of ``GC(f, D)``.
    stderr : float
        Its standard error over the probes, the data being fixed; ``nan`` when
        ``n_probes == 1`` (one probe per example carries no information about the
        probe variance).
    n_probes : int
        Probes per example.
    n_examples : int
        ``|D|``.
    """

    value: float
    stderr: float
    n_probes: int
    n_examples: int


def geometric_complexity(mlp, params, data, *, backend="numpy", chunk_size=256, per_example=False):
    """Geometric complexity ``GC(f, D)``: the mean squared Frobenius norm of the input Jacobian.

    Parameters
    ----------
    mlp : gcref.MLP
    params : tuple of (W, b) pairs of ndarray
    data : ndarray, shape (N, d), or iterable of ndarray, shape (n_j, d)
        The data set D, as one array or as batches (a generator is consumed once).
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
    MATH.md section 2 (seed 003): ``GC(f, D) = (1/|D|) sum_{x in D} ||J(x)||_F^2``.
    For a linear model ``f(x) = W x + b``, ``GC = ||W||_F^2`` (seed 000, Remark 2).
    """
    per = np.concatenate(
        _map_chunks(mlp, params, data, backend, chunk_size, _jacobian_sq_norms)
    )
    value = float(np.mean(per))
    return Complexity(value, per) if per_example else value


def dirichlet_energy(mlp, params, data, *, backend="numpy", chunk_size=256, per_example=False):
    """Discrete Dirichlet energy ``DE^(f, D) = GC(f, D) / 2``.

    Parameters and returns as :func:`geometric_complexity`; per-example values are
    ``||J(x_n)||_F^2 / 2``.

    Notes
    -----
    MATH.md section 2 (seed 000, eq. 5): ``DE^(f, D) = (1 / (2 |D|)) sum_{x in D} ||J(x)||_F^2``.
    Not the continuous Dirichlet energy of seed 000, eq. 4 (an integral over the feature
    polytope).
    """
    gc = geometric_complexity(
        mlp, params, data, backend=backend, chunk_size=chunk_size, per_example=True
    )
    half = Complexity(gc.value / 2.0, gc.per_example / 2.0)
    return half if per_example else half.value


def estimate_geometric_complexity(
    mlp, params, data, rng, *, n_probes=1, probe="gaussian", backend="numpy", chunk_size=256
):
    """Unbiased estimate of ``GC(f, D)`` from random vector-Jacobian products.

    Parameters
    ----------
    mlp : gcref.MLP
    params : tuple of (W, b) pairs of ndarray
    data : ndarray, shape (N, d), or iterable of ndarray, shape (n_j, d)
    rng : numpy.random.Generator
        Source of the probes: the same generator state gives the same probes in every
        backend and for every ``chunk_size`` (they are drawn example by example).
    n_probes : int
        Probes per example.
    probe : {"gaussian", "rademacher", "sphere"}
        Standard normal entries, independent random signs, or uniform on the unit sphere
        of R^k.
    backend : str or Backend
    chunk_size : int
        Most rows per vector-Jacobian product call (at least one example with all its
        probes).

    Returns
    -------
    ComplexityEstimate
        ``.value``, ``.stderr``, ``.n_probes``, ``.n_examples``.

    Notes
    -----
    MATH.md section 2: for ``v`` with ``E[v v^T] = I_k`` (Gaussian, Rademacher),
    ``E ||v^T J||^2 = tr(J^T E[v v^T] J) = ||J||_F^2``; for ``v`` uniform on the unit
    sphere ``E[v v^T] = I_k / k``, so the statistic is ``k ||v^T J||^2``. Each probe costs
    one vector-Jacobian product. With ``s_{n,p}`` the statistic of probe p at example n,
    the estimate is ``mean_{n,p} s_{n,p}`` and its variance, the data being fixed, is
    ``sum_n Var(s_n) / (P N^2)``, estimated with each example's sample variance over its
    P probes.
    """
    check_rng(rng)
    n_probes = check_positive_int(n_probes, "n_probes")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; expected one of {PROBES}")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    examples_per_chunk = max(1, chunk_size // n_probes)

    def probe_statistics(c, X):
        n, k = X.shape[0], mlp.output_dim
        v = _draw_probes(rng, probe, (n, n_probes, k)).astype(c.dtype)
        rows = np.repeat(X, n_probes, axis=0)
        vjp = c.numpy(
            c.backend.input_vjp(mlp, c.nparams, c.native(rows), c.native(v.reshape(n * n_probes, k)))
        ).astype(np.float64)
        stats = np.sum(vjp * vjp, axis=1).reshape(n, n_probes)
        return k * stats if probe == "sphere" else stats

    stats = np.concatenate(
        _map_chunks(mlp, params, data, backend, examples_per_chunk, probe_statistics)
    )
    n_examples = stats.shape[0]
    if n_probes == 1:
        stderr = float("nan")
    else:
        variance = np.sum(np.var(stats, axis=1, ddof=1)) / (n_probes * n_examples**2)
        stderr = float(np.sqrt(variance))
    return ComplexityEstimate(float(np.mean(stats)), stderr, n_probes, n_examples)


def geometric_complexity_native(mlp, params, X, *, backend):
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
    MATH.md section 2. No input checks and no conversion: this is the function to call
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


def _jacobian_sq_norms(c, X):
    """``||J(x_n)||_F^2`` in float64 for one checked chunk, shape (n,)."""
    J = c.numpy(c.backend.input_jacobian(c.mlp, c.nparams, c.native(X))).astype(np.float64)
    return np.einsum("nkd,nkd->n", J, J)


def _draw_probes(rng, probe, shape):
    """Probes of ``shape`` (..., k), drawn in row-major order so that chunking does not change them."""
    if probe == "rademacher":
        return np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    v = rng.standard_normal(shape)
    if probe == "sphere":
        v /= np.linalg.norm(v, axis=-1, keepdims=True)
    return v


def _batches(data):
    """``data`` as a sequence of (name, batch): one array, or the batches of an iterable."""
    if hasattr(data, "ndim") and hasattr(data, "shape"):
        yield "data", data
        return
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(
            f"data must be an array of shape (N, d) or an iterable of such batches; "
            f"got {type(data).__name__}"
        )
    for j, batch in enumerate(data):
        yield f"data batch {j}", batch


def _map_chunks(mlp, params, data, backend, chunk_size, fn):
    """Apply ``fn(call, X_chunk)`` to every chunk of at most ``chunk_size`` checked examples.

    ``call`` is an open :class:`gcref.primitives.Call` whose parameters are converted
    once; each chunk is a checked NumPy array of the parameters' dtype. Returns the list
    of results, in data order.
    """
    if not isinstance(mlp, MLP):
        raise not_an_mlp(mlp)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    params = mlp.check_params(params)
    dtype = params[0][0].dtype
    results, call = [], None
    with contextlib.ExitStack() as stack:
        for name, batch in _batches(data):
            batch = check_float_array(batch, name, ndim=2, dtype=dtype)
            if batch.shape[0] == 0:
                continue
            batch = mlp.check_inputs(batch, dtype, name=name)
            for start in range(0, batch.shape[0], chunk_size):
                X = batch[start : start + chunk_size]
                if call is None:
                    call = stack.enter_context(Call(mlp, params, X, backend))
                results.append(fn(call, X))
    if not results:
        raise ValueError("data holds no example: GC is a mean over at least one input")
    return results
