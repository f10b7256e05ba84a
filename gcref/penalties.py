"""Geometric complexity and implicit gradient regularisation as training penalties for your own models.

:mod:`gcref.models` measures a model with its weights held fixed; the functions here
return the same quantities on one batch as differentiable scalars, to add to a training
loss in your own loop:

- a ``torch.nn.Module`` (``params`` left out): a scalar tensor carrying the graph, in the
  module's current mode (training or eval), so that ``(loss + lam * penalty).backward()``
  trains with any optimiser;
- a JAX ``apply(params, x)`` function with ``params=``: a JAX scalar, a pure function of
  ``params`` and the batch that composes with ``jax.grad``, ``jax.jit`` and ``jax.vmap``.

============================================  ===============================================
function                                      penalty on the batch B of n examples
============================================  ===============================================
:func:`geometric_complexity`                  ``GC = (1/n) sum_n ||J(x_n)||_F^2``
:func:`estimate_geometric_complexity`         its unbiased probe estimate
:func:`dirichlet_energy`                      ``DE = GC / 2``
:func:`estimate_dirichlet_energy`             the probe estimate of ``DE``
:func:`igr_full_batch`                        ``||grad_theta L_B||^2``, ``L_B`` the MEAN loss
:func:`igr_per_example`                       ``(1/n) sum_n ||grad_theta l_n||^2``
============================================  ===============================================

Each returns the bare penalty: multiply it by your strength (``lam``, or ``h/4`` for the
modified losses of docs/math.md section 5). The torch functions take
``return_output=True`` to also return the forward pass's output, so that the loss is
computed from the same pass (see :mod:`gcref.backends.torch_penalties`, which also says
how BatchNorm's batch statistics and ``DistributedDataParallel`` are handled; the JAX
conventions, Flax and Equinox recipes and PRNG keys are in
:mod:`gcref.backends.jax_penalties`). Importing this module imports no framework.

A training step with a GC penalty on a torch module (one forward pass)::

    gc, f = penalties.geometric_complexity(net, x, return_output=True)
    loss = torch.nn.functional.cross_entropy(f, y) + lam * gc
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

and the gradient of a penalised loss of a JAX model::

    def objective(params, x, y):
        f = apply(params, x)
        return cross_entropy(f, y) + lam * penalties.geometric_complexity(apply, x, params=params)

    grads = jax.jit(jax.grad(objective))(params, x, y)
"""

from __future__ import annotations

import sys

from gcref.mlp import MLP

__all__ = [
    "dirichlet_energy",
    "estimate_dirichlet_energy",
    "estimate_geometric_complexity",
    "geometric_complexity",
    "igr_full_batch",
    "igr_per_example",
]


def geometric_complexity(model, x, *, params=None, examples=None, return_output=False):
    """Exact geometric complexity ``GC(f, B) = (1/n) sum_n ||J(x_n)||_F^2`` of a batch, differentiable.

    Parameters
    ----------
    model : torch.nn.Module or callable
        A module, or a JAX ``apply(params, x)``.
    x : torch.Tensor or jax.Array, shape (n, *input_shape)
    params : pytree, optional
        The JAX parameters (the variable to differentiate); left out for a module.
    examples : {"auto", "independent", "coupled"}, optional
        Whether examples are computed independently of each other; default ``"auto"``
        (torch: coupled when a BatchNorm uses batch statistics) and ``"independent"``
        (JAX). See :mod:`gcref.backends.torch_penalties`.
    return_output : bool
        Torch only: return ``(penalty, f)`` with the forward pass's output ``f`` ``(n, k)``.

    Returns
    -------
    torch.Tensor or jax.Array, shape ()

    Notes
    -----
    docs/math.md section 2: k input vector-Jacobian products, kept in the graph
    (``create_graph``) so that the penalty's gradient with respect to theta is exact.
    """
    torch_module, backend = _backend(model, params)
    kwargs = _options(torch_module, examples, return_output)
    if torch_module:
        return backend.geometric_complexity(model, x, **kwargs)
    return backend.geometric_complexity(model, params, x, **kwargs)


def estimate_geometric_complexity(
    model, x, rng, *, params=None, n_probes=1, probe="gaussian", examples=None, return_output=False
):
    """Unbiased probe estimate of ``GC(f, B)``, differentiable (docs/math.md section 2).

    Parameters
    ----------
    model, x, params, examples, return_output
        As in :func:`geometric_complexity`.
    rng : numpy.random.Generator or jax PRNG key
        Torch: a NumPy generator, drawn exactly as
        :func:`gcref.models.estimate_geometric_complexity` draws (the same state gives
        the same value). JAX: a PRNG key (jit-compatible; same distributions and
        k-scaling, other draws).
    n_probes : int
        Probes per example; each costs one vector-Jacobian product instead of k.
    probe : {"gaussian", "rademacher", "sphere"}
        ``E[v v^T] = I_k``, or uniform on the unit sphere with the statistic times k.

    Returns
    -------
    torch.Tensor or jax.Array, shape ()

    Notes
    -----
    ``mean_{n,p} ||v_{n,p}^T J(x_n)||^2``: its expectation over the probes is
    ``GC(f, B)`` and that of its gradient is the gradient of ``GC``.
    """
    torch_module, backend = _backend(model, params)
    kwargs = _options(torch_module, examples, return_output)
    kwargs.update(n_probes=n_probes, probe=probe)
    if torch_module:
        return backend.estimate_geometric_complexity(model, x, rng, **kwargs)
    return backend.estimate_geometric_complexity(model, params, x, rng, **kwargs)


def dirichlet_energy(model, x, *, params=None, examples=None, return_output=False):
    """Discrete Dirichlet energy ``DE(f, B) = GC(f, B) / 2``, differentiable.

    Parameters and returns as :func:`geometric_complexity`.

    Notes
    -----
    docs/math.md section 2 (seed 000, eq. 5). This is the value that the Jacobian
    regulariser of Hoffman, Roberts and Yaida ("Robust learning with Jacobian
    regularization", 2019; ``facebookresearch/jacobian_regularizer``) returns with
    ``n=-1`` (all k one-hot projections): ``(1/2) (1/n) sum_n ||J(x_n)||_F^2``.
    """
    return _halved(
        geometric_complexity(
            model, x, params=params, examples=examples, return_output=return_output
        )
    )


def estimate_dirichlet_energy(
    model, x, rng, *, params=None, n_probes=1, probe="gaussian", examples=None, return_output=False
):
    """Unbiased probe estimate of ``DE(f, B) = GC(f, B) / 2``, differentiable.

    Parameters and returns as :func:`estimate_geometric_complexity`.

    Notes
    -----
    docs/math.md section 2. With ``probe="sphere"`` this is the estimator of the Jacobian
    regulariser of Hoffman, Roberts and Yaida (2019) with ``n_proj = n_probes`` random
    projections: ``(k / 2) mean_{n,p} ||v_{n,p}^T J(x_n)||^2`` with ``v`` uniform on the
    unit sphere.
    """
    return _halved(
        estimate_geometric_complexity(
            model,
            x,
            rng,
            params=params,
            n_probes=n_probes,
            probe=probe,
            examples=examples,
            return_output=return_output,
        )
    )


def igr_full_batch(model, x, y, loss, *, params=None, return_output=False):
    """Full-batch IGR penalty ``||grad_theta L_B||^2``, ``L_B = (1/n) sum_n l_n``, differentiable.

    Parameters
    ----------
    model, x, params, return_output
        As in :func:`geometric_complexity`.
    y : torch.Tensor or jax.Array
        Targets: ``(n, k)`` floats for the squared loss (``(n,)`` when k = 1), 0/1 labels
        ``(n,)`` for the logistic loss, integer classes ``(n,)`` or rows ``(n, k)`` for
        softmax cross-entropy.
    loss : str or gcref.losses.Loss
        ``"squared"``, ``"logistic"`` or ``"softmax_cross_entropy"`` (docs/math.md section 4).

    Returns
    -------
    torch.Tensor or jax.Array, shape ()

    Notes
    -----
    docs/math.md section 5 (Barrett and Dherin, Implicit Gradient Regularization):
    gradient descent with step h follows ``L + (h/4) ||grad L||^2``; the gradient of the
    penalty is ``2 H grad L``, here by double backward.
    """
    torch_module, backend = _backend(model, params)
    if torch_module:
        return backend.igr_full_batch(model, x, y, loss, return_output=return_output)
    _no_output(return_output)
    return backend.igr_full_batch(model, params, x, y, loss)


def igr_per_example(
    model, x, y, loss, *, params=None, examples=None, norm_method="auto", return_output=False
):
    """Per-example IGR penalty ``(1/n) sum_n ||grad_theta l_n||^2``, differentiable.

    Parameters
    ----------
    model, x, y, loss, params, examples, return_output
        As in :func:`igr_full_batch` and :func:`geometric_complexity`.
    norm_method : {"auto", "gram", "gradient", "vmap"}
        Torch only: how the per-example norms are taken (see
        :class:`gcref.backends.torch_model.TorchModel`).

    Returns
    -------
    torch.Tensor or jax.Array, shape ()

    Notes
    -----
    docs/math.md section 5 (seed 000, eq. 6): SGD with batch size 1 and step h follows
    ``L + (h / 4N) sum_n ||grad_theta l_n||^2``. Torch modules whose layers have norm
    rules use the (differentiable) norm identities of docs/math.md section 1, with no
    per-example gradient formed.
    """
    torch_module, backend = _backend(model, params)
    kwargs = _options(torch_module, examples, return_output)
    if torch_module:
        return backend.igr_per_example(model, x, y, loss, norm_method=norm_method, **kwargs)
    if norm_method != "auto":
        raise ValueError("norm_method applies to torch modules only; leave it out for a JAX model")
    return backend.igr_per_example(model, params, x, y, loss, **kwargs)


# -- dispatch -----------------------------------------------------------------------------


def _backend(model, params):
    """``(is a torch module, the backend module)`` for ``model``; clear errors otherwise."""
    if isinstance(model, MLP):
        raise TypeError(
            "model is a gcref.MLP: build its torch module with gcref.nets.torch.mlp_module(mlp, "
            "params) or its JAX function with gcref.nets.jax.mlp_apply_from_gcref(mlp, params), "
            "or train it with gcref.train(..., penalties=...)"
        )
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        if params is not None:
            raise TypeError(
                "params must be left out for a torch.nn.Module: its own parameters are used"
            )
        from gcref.backends import torch_penalties

        return True, torch_penalties
    if callable(model):
        if params is None:
            raise TypeError(
                "a function model needs params: pass apply(params, x) as model and the "
                "parameter pytree to differentiate as params="
            )
        from gcref.backends import jax_penalties

        return False, jax_penalties
    raise TypeError(
        f"model must be a torch.nn.Module or a JAX apply(params, x) function; got {type(model).__name__}"
    )


def _options(torch_module, examples, return_output):
    if torch_module:
        return {
            "examples": "auto" if examples is None else examples,
            "return_output": return_output,
        }
    _no_output(return_output)
    return {"examples": "independent" if examples is None else examples}


def _no_output(return_output):
    if return_output:
        raise ValueError(
            "return_output applies to torch modules only: a JAX penalty is a pure function, "
            "call apply(params, x) for the output"
        )


def _halved(result):
    if isinstance(result, tuple):
        return result[0] / 2, result[1]
    return result / 2
