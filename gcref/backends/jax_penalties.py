"""Differentiable GC and IGR penalties of a JAX ``apply(params, x)`` model, for a training loss.

The public spellings are in :mod:`gcref.penalties`; this module holds their JAX code.
Every function is a pure function of ``params`` and the batch (and a PRNG key for the
probes), written in JAX operations only, so it composes with ``jax.grad``, ``jax.jit``
and ``jax.vmap``: ``jax.grad(lambda p: mean_loss(p) + lam * geometric_complexity(apply,
p, x))(params)`` differentiates the penalty.

``apply(params, x)`` maps a batch ``x`` of shape ``(n, *input_shape)`` to ``(n, ...)``,
flattened to ``(n, k)``. Flax: ``apply = model.apply`` with ``params`` its variables
(a model with batch statistics: ``lambda p, x: model.apply({"params": p, **state}, x)``
with the state held fixed). Equinox: ``params, rest = eqx.partition(model,
eqx.is_inexact_array)`` and ``apply = lambda p, x: jax.vmap(eqx.combine(p, rest))(x)``.

Examples
--------
``examples="independent"`` (the default) assumes that ``f_n`` depends on ``x_n`` only;
``examples="coupled"`` computes ``J(x_n) = d f_n / d x_n`` and ``grad_theta l_n`` of the
batch's function when the model mixes examples (batch statistics), by vectorised
backward passes over one-hot cotangents (n k, respectively n, of them).

Probes
------
``key`` is a JAX PRNG key; the probes ``v`` of shape ``(n, P, k)`` are drawn by one call
with that key: ``jax.random.normal`` (Gaussian), ``jax.random.rademacher`` (signs), or
normal rows divided by their norm (uniform on the unit sphere of R^k, the statistic then
multiplied by k). The distributions and the k-scaling are those of the measure
:func:`gcref.models.estimate_geometric_complexity`; the draws are not (it uses a NumPy
generator, which cannot run inside ``jax.jit``).

Index conventions: ``n`` examples, ``k`` outputs, ``P`` probes per example.
"""

from __future__ import annotations

import numpy as np

from gcref._checks import check_positive_int
from gcref.losses import get_loss
from gcref.models import PROBES

EXAMPLES = ("independent", "coupled")


def geometric_complexity(apply, params, x, *, examples="independent"):
    """Exact ``GC(f, B) = (1/n) sum_n ||J(x_n)||_F^2``, a JAX scalar differentiable in ``params``.

    Parameters
    ----------
    apply : callable
        ``apply(params, x) -> (n, ...)``.
    params : pytree
    x : jax.Array, shape (n, *input_shape)
    examples : {"independent", "coupled"}

    Returns
    -------
    jax.Array, shape ()

    Notes
    -----
    docs/math.md section 2. One forward pass and k input vector-Jacobian products,
    vectorised with ``jax.vmap`` (independent examples), or n k of them (coupled).
    """
    import jax
    import jax.numpy as jnp

    _check_examples(examples)
    f, vjp = jax.vjp(lambda inputs: _flat_apply(apply, params, inputs), x)
    n, k = f.shape
    if examples == "coupled":
        basis = jnp.eye(n * k, dtype=f.dtype).reshape(n * k, n, k)
        rows = jax.vmap(lambda c: vjp(c)[0])(basis).reshape(n, k, n, -1)
        idx = jnp.arange(n)
        return jnp.sum(jnp.square(rows[idx, :, idx])) / n
    basis = jnp.broadcast_to(jnp.eye(k, dtype=f.dtype)[:, None, :], (k, n, k))
    return jnp.sum(jnp.square(jax.vmap(lambda c: vjp(c)[0])(basis))) / n


def estimate_geometric_complexity(
    apply, params, x, key, *, n_probes=1, probe="gaussian", examples="independent"
):
    """Unbiased probe estimate of ``GC(f, B)``, a JAX scalar differentiable in ``params``.

    Parameters
    ----------
    apply, params, x, examples
        As in :func:`geometric_complexity`.
    key : jax PRNG key
        The probes' source (see the module docstring).
    n_probes : int
    probe : {"gaussian", "rademacher", "sphere"}

    Returns
    -------
    jax.Array, shape ()

    Notes
    -----
    docs/math.md section 2: ``mean_{n,p} ||v_{n,p}^T J(x_n)||^2`` (times k for sphere
    probes), whose expectation over the probes is ``GC(f, B)``.
    """
    import jax
    import jax.numpy as jnp

    _check_examples(examples)
    if isinstance(key, np.random.Generator) or not hasattr(key, "dtype"):
        raise TypeError(
            f"rng must be a JAX PRNG key (e.g. jax.random.key(0)) for a JAX model; got "
            f"{type(key).__name__} (a numpy.random.Generator is for torch modules)"
        )
    n_probes = check_positive_int(n_probes, "n_probes")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; expected one of {PROBES}")
    f, vjp = jax.vjp(lambda inputs: _flat_apply(apply, params, inputs), x)
    n, k = f.shape
    v = draw_probes(key, probe, (n, n_probes, k), f.dtype)
    if examples == "coupled":
        cotangents = (
            jnp.swapaxes(v, 0, 1)[:, :, None, :] * jnp.eye(n, dtype=f.dtype)[None, :, :, None]
        ).reshape(n_probes * n, n, k)
        rows = jax.vmap(lambda c: vjp(c)[0])(cotangents).reshape(n_probes, n, n, -1)
        idx = jnp.arange(n)
        total = jnp.sum(jnp.square(rows[:, idx, idx]))
    else:
        total = jnp.sum(jnp.square(jax.vmap(lambda c: vjp(c)[0])(jnp.swapaxes(v, 0, 1))))
    scale = k if probe == "sphere" else 1
    return total * scale / (n * n_probes)


def draw_probes(key, probe, shape, dtype):
    """Probes of ``shape`` ``(n, P, k)`` from one PRNG ``key`` (see the module docstring)."""
    import jax
    import jax.numpy as jnp

    if probe == "rademacher":
        return jax.random.rademacher(key, shape, dtype=dtype)
    v = jax.random.normal(key, shape, dtype=dtype)
    if probe == "sphere":
        v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    return v


def igr_full_batch(apply, params, x, y, loss):
    """``||grad_theta L_B||^2`` with ``L_B`` the batch's MEAN loss, differentiable in ``params``.

    Parameters
    ----------
    apply, params, x
        As in :func:`geometric_complexity`.
    y : jax.Array
        Targets for ``loss`` (as :func:`gcref.backends.torch_penalties.native_targets`).
    loss : str or gcref.losses.Loss

    Returns
    -------
    jax.Array, shape ()

    Notes
    -----
    docs/math.md section 5: ``jax.grad`` of the mean loss, squared; its gradient (by
    ``jax.grad`` again) is ``2 H grad L``.
    """
    import jax

    loss = get_loss(loss)

    def mean_loss(p):
        f = _flat_apply(apply, p, x)
        return loss.per_example(f, native_targets(loss, y, *f.shape, f.dtype)).mean()

    return _tree_sq_sum(jax.grad(mean_loss)(params))


def igr_per_example(apply, params, x, y, loss, *, examples="independent"):
    """``(1/n) sum_n ||grad_theta l_n||^2`` over the batch, differentiable in ``params``.

    Parameters
    ----------
    apply, params, x, y, loss
        As in :func:`igr_full_batch`.
    examples : {"independent", "coupled"}

    Returns
    -------
    jax.Array, shape ()

    Notes
    -----
    docs/math.md sections 1 and 5 (seed 000, eq. 6). Independent examples:
    ``jax.vmap(jax.grad)`` of each example's loss (``apply`` called on a batch of one);
    coupled: ``jax.jacrev`` of the vector of per-example losses of the batch. Both form
    the per-example gradients (n copies of theta's size): a function of your own has
    no layers to apply the norm identities to.
    """
    import jax
    import jax.numpy as jnp

    _check_examples(examples)
    loss = get_loss(loss)
    n = x.shape[0]

    def losses(p, inputs, targets):
        f = _flat_apply(apply, p, inputs)
        return loss.per_example(f, native_targets(loss, targets, *f.shape, f.dtype))

    if examples == "coupled":
        grads = jax.jacrev(losses)(params, x, y)
    else:
        grads = jax.vmap(
            jax.grad(lambda p, xi, yi: losses(p, xi[None], yi[None])[0]), in_axes=(None, 0, 0)
        )(params, x, y)
    return _tree_sq_sum(grads) / jnp.asarray(n, dtype=_leaf_dtype(grads))


def native_targets(loss, y, n, k, dtype):
    """``y`` as the ``(n, k)`` float targets of ``loss`` in JAX (shapes checked, values not)."""
    import jax
    import jax.numpy as jnp

    y = jnp.asarray(y)
    if y.shape[:1] != (n,):
        raise ValueError(f"y must have {n} rows, one per example of x; got shape {y.shape}")
    if loss.name == "softmax_cross_entropy" and y.ndim == 1:
        if not jnp.issubdtype(y.dtype, jnp.integer):
            raise TypeError(f"y: class indices must have an integer dtype; got {y.dtype}")
        y = jax.nn.one_hot(y, k, dtype=dtype)
    elif y.ndim == 1 and (k == 1 or loss.name == "logistic"):
        y = y[:, None]
    if y.shape != (n, k):
        raise ValueError(
            f"y must have shape ({n}, {k}) for the {loss.name or 'given'} loss; got {y.shape}"
        )
    return y.astype(dtype)


def _flat_apply(apply, params, x):
    out = apply(params, x)
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) == 0 or shape[0] != x.shape[0]:
        raise ValueError(
            f"apply(params, x) must return an array of shape (n, ...) for x of shape "
            f"{tuple(x.shape)}; got {type(out).__name__ if shape is None else tuple(shape)}"
        )
    return out.reshape(x.shape[0], -1)


def _tree_sq_sum(tree):
    import jax
    import jax.numpy as jnp

    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(tree))


def _leaf_dtype(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)[0].dtype


def _check_examples(examples):
    if examples not in EXAMPLES:
        raise ValueError(f"unknown examples {examples!r}; expected one of {EXAMPLES}")
