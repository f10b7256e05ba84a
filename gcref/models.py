"""Geometric complexity and the implicit-regularisation terms of users' own models.

The functions of :mod:`gcref.complexity` and :mod:`gcref.igr` take a :class:`gcref.MLP`;
the functions here take a model you built yourself:

- a ``torch.nn.Module`` (``params`` left out: the module's own parameters that require
  grad are theta);
- a JAX function ``apply(params, x)`` on a batch ``x``, with its parameter pytree
  ``params`` (plain JAX; Flax ``model.apply`` with its variables; an Equinox model split
  by ``params, rest = eqx.partition(model, eqx.is_inexact_array)`` and applied as
  ``lambda p, x: jax.vmap(eqx.combine(p, rest))(x)``).

Every measure is written once here on the per-chunk primitives of
:class:`gcref.backends._base.ModelAdapter`; the adapters live in
``gcref/backends/torch.py`` and ``gcref/backends/jax.py``.

Data
----
``data`` is one of

- an array ``X`` of shape ``(N, *input_shape)`` (NumPy, torch or JAX);
- a ``tuple`` ``(X, y)`` of two arrays with the same first dimension;
- any other iterable of batches, each an array ``X`` or a pair ``(X, y)`` (a tuple or a
  list, which is what a ``torch.utils.data.DataLoader`` yields).

Batches are cut into chunks of at most ``chunk_size`` examples, so that memory stays
bounded whatever the data set size; sums are accumulated in float64 whatever the model's
dtype. Functions that need labels (losses, IGR terms, Hessian-vector products) require
pairs. Mini-batches for the SGD term are the batches of the iterable, or consecutive
blocks of ``batch_size`` examples of an array.

Several processes
-----------------
Under ``torch.distributed`` (initialised by the caller) each process passes its own shard
of the data; sums, counts and gradient vectors are all-reduced, so every process gets
the value of the whole data set, equal to the single-process one. Per-example arrays
stay those of the process's own shard. The j-th mini-batch of the SGD term is the union
of every process's j-th batch, as in data-parallel training: every process must pass the
same number of mini-batches (a clear error otherwise, on every process). A process's
shard may be empty; the whole data set may not. In JAX, a single process
shards each chunk across ``jax.devices()`` (``shard=True``).

Index conventions: ``N`` examples, ``k`` outputs, ``d`` input features (the product of
``input_shape``), ``p`` parameters; ``J(x) = df/dx`` of shape ``(k, d)``.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass

import numpy as np

from gcref._checks import check_finite_scalar, check_positive_int, check_rng
from gcref.backends._base import ModelAdapter
from gcref.complexity import PROBES, Complexity, ComplexityEstimate, _draw_probes
from gcref.losses import get_loss
from gcref.mlp import MLP

__all__ = [
    "IGRTerms",
    "dirichlet_energy",
    "estimate_geometric_complexity",
    "geometric_complexity",
    "igr_terms",
    "loss_grad_sq_norms",
    "loss_hvp",
    "output_grad_sq_norms",
    "parameter_vector",
    "wrap",
]

MODES = ("auto", "reverse", "forward")


@dataclass(frozen=True)
class IGRTerms:
    """The loss and the three implicit-regularisation terms over a data set (MATH.md section 5).

    Attributes
    ----------
    loss : float
        ``L = (1/N) sum_n l_n``.
    full_batch : float
        ``||grad L||^2``, the term of full-batch gradient descent.
    mini_batch : float
        ``(1/m) sum_j ||grad L_{B_j}||^2`` over the m mini-batches, the term of one SGD epoch.
    per_example : float
        ``(1/N) sum_n ||grad_theta l_n||^2``, the term of batch size 1 (seed 000, eq. 6).
    n_examples : int
        ``N``.
    n_batches : int
        ``m``.
    """

    loss: float
    full_batch: float
    mini_batch: float
    per_example: float
    n_examples: int
    n_batches: int

    def modified_loss_gd(self, h):
        """``L~_GD = L + (h/4) ||grad L||^2`` for step size ``h``."""
        h = check_finite_scalar(h, "h", nonnegative=True)
        return self.loss + h / 4 * self.full_batch

    def modified_loss_sgd(self, h):
        """``L~_SGD = L + h/(4m) sum_j ||grad L_{B_j}||^2`` (equal-sized mini-batches)."""
        h = check_finite_scalar(h, "h", nonnegative=True)
        return self.loss + h / 4 * self.mini_batch

    def modified_loss_per_example(self, h):
        """``L + h/(4N) sum_n ||grad_theta l_n||^2`` (seed 000, eq. 6)."""
        h = check_finite_scalar(h, "h", nonnegative=True)
        return self.loss + h / 4 * self.per_example


def wrap(model, params=None):
    """The :class:`~gcref.backends._base.ModelAdapter` for a user's model.

    Parameters
    ----------
    model : torch.nn.Module, callable or ModelAdapter
        A module, or a JAX ``apply(params, x)`` function.
    params : pytree, optional
        The JAX parameters; must be left out for a ``torch.nn.Module``.

    Raises
    ------
    TypeError
        For a :class:`gcref.MLP` (use the functions of :mod:`gcref.complexity` and
        :mod:`gcref.igr`), a module with ``params``, a function without them, or anything
        else.
    """
    if isinstance(model, ModelAdapter):
        if params is not None:
            raise TypeError("params must be left out when model is already a ModelAdapter")
        return model
    if isinstance(model, MLP):
        raise TypeError(
            "model is a gcref.MLP: use gcref.geometric_complexity(mlp, params, data, backend=...) "
            "and the other MLP functions; gcref.models takes torch.nn.Module models and JAX "
            "apply functions"
        )
    if _is_torch_module(model):
        if params is not None:
            raise TypeError(
                "params must be left out for a torch.nn.Module: its own parameters are used"
            )
        from gcref.backends.torch_model import TorchModel

        return TorchModel(model)
    if callable(model):
        if params is None:
            raise TypeError(
                "a function model needs params: pass apply(params, x) as model and its "
                "parameter pytree as params"
            )
        from gcref.backends.jax_model import JaxModel

        return JaxModel(model, params)
    raise TypeError(
        f"model must be a torch.nn.Module or a JAX apply(params, x) function; "
        f"got {type(model).__name__}"
    )


def geometric_complexity(
    model, data, *, params=None, chunk_size=256, mode="auto", per_example=False
):
    """Exact geometric complexity ``GC(f, D) = (1/N) sum_n ||J(x_n)||_F^2`` of a user's model.

    Parameters
    ----------
    model : torch.nn.Module or callable
        See :func:`wrap`.
    data : array, (X, y) tuple or iterable of batches
        See the module docstring; labels, if any, are ignored.
    params : pytree, optional
        JAX parameters.
    chunk_size : int
        Most examples per call of the framework.
    mode : {"auto", "reverse", "forward"}
        ``"reverse"``: one forward pass and k input-only vector-Jacobian products per
        chunk; ``"forward"``: d Jacobian-vector products; ``"auto"`` picks forward mode
        when ``d < k``.
    per_example : bool
        Return a :class:`gcref.complexity.Complexity` with the per-example values
        (this process's examples) instead of a float.

    Returns
    -------
    float or Complexity

    Notes
    -----
    MATH.md section 2. The model is evaluated in inference mode (``module.eval()``,
    restored afterwards), so that each example's Jacobian is its own.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    adapter = wrap(model, params)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    values = []
    k = None
    for X, _ in _chunks(data, chunk_size, need_targets=False, allow_empty=True):
        if k is None:
            k = adapter.output_dim(X)
        chosen = mode
        if mode == "auto":
            chosen = "forward" if adapter.input_features(X) < k else "reverse"
        values.append(adapter.jacobian_sq_norms(X, chosen))
    local = np.concatenate(values) if values else np.zeros(0)
    total, count = adapter.all_reduce_sum(np.array([local.sum(), local.size], dtype=np.float64))
    _check_count(count)
    value = float(total / count)
    return Complexity(value, local) if per_example else value


def dirichlet_energy(model, data, *, params=None, chunk_size=256, mode="auto", per_example=False):
    """Discrete Dirichlet energy ``DE^(f, D) = GC(f, D) / 2`` (MATH.md section 2; seed 000, eq. 5).

    Same parameters and return type as :func:`geometric_complexity`.
    """
    gc = geometric_complexity(
        model, data, params=params, chunk_size=chunk_size, mode=mode, per_example=per_example
    )
    if per_example:
        return Complexity(gc.value / 2, gc.per_example / 2)
    return gc / 2


def estimate_geometric_complexity(
    model, data, rng, *, params=None, n_probes=1, probe="gaussian", chunk_size=256
):
    """Unbiased probe estimate of ``GC(f, D)`` with its standard error, for a user's model.

    Parameters
    ----------
    model, data, params, chunk_size
        As in :func:`geometric_complexity`.
    rng : numpy.random.Generator
        Source of the probes, drawn example by example: the same state gives the same
        probes in every framework and for every ``chunk_size`` (and the same as
        :func:`gcref.estimate_geometric_complexity` on an MLP).
    n_probes : int
        Probes per example; each costs one input-only vector-Jacobian product.
    probe : {"gaussian", "rademacher", "sphere"}

    Returns
    -------
    ComplexityEstimate
        ``.value``, ``.stderr`` (``nan`` for one probe), ``.n_probes``, ``.n_examples``.

    Notes
    -----
    MATH.md section 2: ``E ||v^T J||^2 = ||J||_F^2`` for ``E[v v^T] = I_k``; sphere probes
    are scaled by k. The variance of the mean, the data being fixed, is estimated by
    ``sum_n Var(s_n) / (P N^2)``. Under ``torch.distributed`` the sums are all-reduced;
    each process should pass its own generator.
    """
    check_rng(rng)
    n_probes = check_positive_int(n_probes, "n_probes")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; expected one of {PROBES}")
    adapter = wrap(model, params)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    stats = []
    k = None
    for X, _ in _chunks(data, max(1, chunk_size // n_probes), need_targets=False, allow_empty=True):
        if k is None:
            k = adapter.output_dim(X)
        probes = _draw_probes(rng, probe, (X.shape[0], n_probes, k))
        s = adapter.probe_sq_norms(X, probes)
        stats.append(k * s if probe == "sphere" else s)
    stats = np.concatenate(stats) if stats else np.zeros((0, n_probes))
    sample_var = np.var(stats, axis=1, ddof=1).sum() if n_probes > 1 and stats.size else 0.0
    total, var_sum, count = adapter.all_reduce_sum(
        np.array([stats.sum(), sample_var, stats.shape[0]], dtype=np.float64)
    )
    _check_count(count)
    value = float(total / (count * n_probes))
    stderr = float("nan") if n_probes == 1 else float(np.sqrt(var_sum / (n_probes * count**2)))
    return ComplexityEstimate(value, stderr, n_probes, int(count))


def output_grad_sq_norms(model, data, *, params=None, chunk_size=256):
    """Per-example ``||grad_theta f(x_n)||_F^2`` (summed over the k outputs), float64 ``(N,)``.

    Notes
    -----
    MATH.md sections 1 and 3: the right-hand side of the transfer theorem. Linear and
    convolutional layers of a torch module use the norm identities, never forming a
    per-example gradient where the Gram form is cheaper. Values are this process's.
    """
    adapter = wrap(model, params)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    return np.concatenate(
        [
            adapter.output_grad_sq_norms(X).sum(axis=1)
            for X, _ in _chunks(data, chunk_size, need_targets=False)
        ]
    )


def loss_grad_sq_norms(model, data, loss, *, params=None, chunk_size=256):
    """Per-example ``||grad_theta l_n||^2``, float64 ``(N,)`` (MATH.md section 4).

    ``loss`` is a name (``"squared"``, ``"logistic"``, ``"softmax_cross_entropy"``) or a
    :class:`gcref.losses.Loss`; ``data`` must carry labels. Values are this process's.
    """
    adapter = wrap(model, params)
    loss = get_loss(loss)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    return np.concatenate(
        [
            adapter.loss_grad_sq_norms(X, targets, loss)[1].sum(axis=1)
            for X, targets in _labelled_chunks(adapter, data, loss, chunk_size)
        ]
    )


def igr_terms(model, data, loss, *, params=None, batch_size=None, chunk_size=256):
    """The loss and its implicit-regularisation terms over a data set (MATH.md section 5).

    Parameters
    ----------
    model, params, chunk_size
        As in :func:`geometric_complexity`.
    data : (X, y) tuple or iterable of (X, y) batches
        The batches of an iterable are the mini-batches of the SGD term.
    loss : str or gcref.losses.Loss
    batch_size : int, optional
        For an ``(X, y)`` tuple: the mini-batches are consecutive blocks of this many
        examples (the last may be smaller). Must be left out for an iterable.

    Returns
    -------
    IGRTerms
        With :meth:`IGRTerms.modified_loss_gd` and friends for a step size.

    Notes
    -----
    ``grad L = (1/N) sum_n grad l_n`` and each ``grad L_{B_j}`` are accumulated in float64
    over chunks (and processes) before their squared norms are taken; the per-example
    term uses the per-example norms of :func:`loss_grad_sq_norms`.
    """
    adapter = wrap(model, params)
    loss = get_loss(loss)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    batches = iter(_minibatches(data, batch_size))
    zero = _zero_vector(adapter)
    total_grad = None
    batch_sq_norms, loss_sum, per_example_sum, n_total = [], 0.0, 0.0, 0
    for j in itertools.count():
        batch = next(batches, None)
        # Every process must take part in the same all-reductions: agree first on
        # whether there is a j-th mini-batch at all.
        have, world = adapter.all_reduce_sum(np.array([batch is not None, 1.0], dtype=np.float64))
        if have == 0:
            break
        if have != world:
            raise ValueError(
                f"every process must pass the same number of mini-batches; {int(world - have)} "
                f"of {int(world)} processes have no mini-batch {j}"
            )
        batch_grad, batch_count = zero, 0
        for X, targets in _labelled_chunks(adapter, batch, loss, chunk_size, allow_empty=True):
            chunk_loss, chunk_grad, sq = adapter.loss_grad_sum_and_sq_norms(X, targets, loss)
            per_example_sum += float(np.sum(sq))
            loss_sum += float(chunk_loss)
            batch_grad = batch_grad + chunk_grad
            batch_count += X.shape[0]
        batch_grad = adapter.all_reduce_sum(batch_grad)
        batch_count = adapter.all_reduce_sum(np.array([batch_count], dtype=np.float64))[0]
        if batch_count == 0:
            raise ValueError(f"mini-batch {j} holds no example")
        batch_sq_norms.append(adapter.vector_sq_norm(batch_grad) / batch_count**2)
        total_grad = batch_grad if total_grad is None else total_grad + batch_grad
        n_total += batch_count
    if total_grad is None:
        raise ValueError("data holds no example: the IGR terms are means over at least one example")
    loss_sum, per_example_sum = adapter.all_reduce_sum(
        np.array([loss_sum, per_example_sum], dtype=np.float64)
    )
    n = n_total
    return IGRTerms(
        loss=float(loss_sum / n),
        full_batch=float(adapter.vector_sq_norm(total_grad) / n**2),
        mini_batch=float(np.mean(batch_sq_norms)),
        per_example=float(per_example_sum / n),
        n_examples=int(n),
        n_batches=len(batch_sq_norms),
    )


def loss_hvp(model, data, loss, vector, *, params=None, chunk_size=256):
    """Hessian of the mean loss ``L`` times ``vector``, float64 ``(p,)`` (MATH.md section 5).

    Parameters
    ----------
    vector : ndarray, shape (p,)
        In the order of :func:`parameter_vector`.

    Notes
    -----
    ``H v = (1/N) sum_n H_n v``, summed over chunks in float64 and all-reduced across
    processes. ``grad(||grad L||^2) = 2 H grad L``.
    """
    adapter = wrap(model, params)
    loss = get_loss(loss)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    p = adapter.parameter_vector().shape[0]
    vector = np.asarray(vector)
    if vector.shape != (p,):
        raise ValueError(f"vector must have shape ({p},), one entry per parameter; got {vector.shape}")
    if vector.dtype.kind != "f" or not np.all(np.isfinite(vector)):
        raise ValueError("vector must hold finite floating-point values")
    native = adapter.to_native_vector(vector.astype(np.float64))
    total, count = 0.0 * native, 0
    for X, targets in _labelled_chunks(adapter, data, loss, chunk_size, allow_empty=True):
        total = total + adapter.loss_hvp_sum(X, targets, loss, native)
        count += X.shape[0]
    total = adapter.all_reduce_sum(total)
    count = adapter.all_reduce_sum(np.array([count], dtype=np.float64))[0]
    _check_count(count)
    return adapter.to_numpy(total).astype(np.float64) / count


def parameter_vector(model, *, params=None):
    """The model's parameters, flattened in the order :func:`loss_hvp` uses, float64 ``(p,)``."""
    return wrap(model, params).parameter_vector()


# -- data ----------------------------------------------------------------------------------


def _is_torch_module(model):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _is_array(x):
    return hasattr(x, "shape") and hasattr(x, "ndim")


def _batches(data):
    """``data`` as an iterator of ``(X, y or None)`` batches (see the module docstring)."""
    if _is_array(data):
        yield data, None
        return
    if isinstance(data, tuple):
        yield _pair(data, "data")
        return
    if isinstance(data, (str, bytes, dict)) or not hasattr(data, "__iter__"):
        raise TypeError(
            "data must be an array X, a tuple (X, y) or an iterable of batches; "
            f"got {type(data).__name__}"
        )
    for j, batch in enumerate(data):
        if _is_array(batch):
            yield batch, None
        elif isinstance(batch, (tuple, list)):
            yield _pair(batch, f"data batch {j}")
        else:
            raise TypeError(
                f"data batch {j} must be an array X or a pair (X, y); got {type(batch).__name__}"
            )


def _pair(batch, name):
    if len(batch) != 2:
        raise TypeError(f"{name} must be a pair (X, y) of arrays; got {len(batch)} items")
    if not all(_is_array(a) for a in batch):
        kinds = ", ".join(type(a).__name__ for a in batch)
        raise TypeError(
            f"{name} must be a pair (X, y) of arrays; got ({kinds}): convert with numpy.asarray"
        )
    X, y = batch
    if X.ndim < 2:
        raise ValueError(f"{name}: X must have shape (n, *input_shape); got {tuple(X.shape)}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(
            f"{name}: X has {X.shape[0]} examples but y has {y.shape[0]} labels"
        )
    return X, y


def _chunks(data, chunk_size, *, need_targets, allow_empty=False):
    """Chunks ``(X, y)`` of at most ``chunk_size`` examples.

    Empty data raises unless ``allow_empty``: a process's shard may be empty as long as
    the whole data set is not (the callers check the all-reduced count).
    """
    seen = False
    for j, (X, y) in enumerate(_batches(data)):
        if X.ndim < 2:
            raise ValueError(
                f"data batch {j}: X must have shape (n, *input_shape); got {tuple(X.shape)}"
            )
        if need_targets and y is None:
            raise TypeError(
                "data must carry labels for this measure: pass (X, y) or batches of (X, y)"
            )
        for start in range(0, X.shape[0], chunk_size):
            seen = True
            yield X[start : start + chunk_size], None if y is None else y[start : start + chunk_size]
    if not seen and not allow_empty:
        raise ValueError("data holds no example: the measure is a mean over at least one example")


def _labelled_chunks(adapter, data, loss, chunk_size, allow_empty=False):
    """Chunks ``(X, targets)`` with ``targets`` prepared by ``loss`` as float64 ``(n, k)``."""
    k = None
    for X, y in _chunks(data, chunk_size, need_targets=True, allow_empty=allow_empty):
        if k is None:
            k = adapter.output_dim(X)
        y = y.detach().cpu().numpy() if hasattr(y, "detach") else np.asarray(y)
        yield X, loss.prepare_targets(y, X.shape[0], k, np.float64)


def _minibatches(data, batch_size):
    """The mini-batches of the SGD term, each a ``(X, y)`` pair."""
    if _is_array(data):
        raise TypeError("data must carry labels for the IGR terms: pass (X, y) or batches of (X, y)")
    if isinstance(data, tuple):
        if batch_size is None:
            raise TypeError(
                "batch_size is required when data is one (X, y) pair: it defines the mini-batches"
            )
        X, y = _pair(data, "data")
        batch_size = check_positive_int(batch_size, "batch_size")
        return [(X[s : s + batch_size], y[s : s + batch_size]) for s in range(0, X.shape[0], batch_size)]
    if batch_size is not None:
        raise TypeError("batch_size must be left out when data is an iterable of mini-batches")
    return ([X] if y is None else [(X, y)] for X, y in _batches(data))


def _check_count(count):
    if count == 0:
        raise ValueError("data holds no example: the measure is a mean over at least one example")


def _zero_vector(adapter):
    return adapter.to_native_vector(np.zeros(adapter.parameter_vector().shape[0]))

