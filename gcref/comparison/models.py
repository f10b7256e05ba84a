"""``gcref compare`` for users' models: the built-in MLP as a torch module and a JAX function.

Two model backends turn the problem's :class:`gcref.MLP` into the models users bring:

- ``torch-module``: :func:`gcref.nets.torch.mlp_module` of the MLP, in the problem's dtype;
- ``jax-function``: :func:`gcref.nets.jax.mlp_apply_from_gcref`, an ``apply(params, x)``
  function with its parameter pytree.

Each model row computes an existing quantity of that model through :mod:`gcref.models`
(the functions that take users' models), and the runner compares it with the ``numpy``
value of the same quantity on the MLP. The frameworks are imported when a model is
built, never at import. Mini-batches of the IGR terms are those of
:func:`gcref.comparison.igr.partition`.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref import models
from gcref.comparison.igr import STEP, partition
from gcref.comparison.registry import model_backend, model_row


@model_backend(
    "torch-module", "torch", "gcref.models on gcref.nets.torch.mlp_module(mlp, params)"
)
def _torch_module(problem):
    import torch

    from gcref.nets.torch import mlp_module

    dtype = torch.from_numpy(np.zeros(0, dtype=problem.X.dtype)).dtype
    return mlp_module(problem.mlp, problem.params, dtype=dtype), None


@model_backend(
    "jax-function", "jax", "gcref.models on gcref.nets.jax.mlp_apply_from_gcref(mlp, params)"
)
def _jax_function(problem):
    from gcref.nets.jax import mlp_apply_from_gcref

    return mlp_apply_from_gcref(problem.mlp, problem.params)


def total(result):
    """Per-example squared norms as an ``(N,)`` array, from an array or a result with ``.total``."""
    return np.asarray(getattr(result, "total", result))


def _igr_terms(p, model, params):
    batches = [(p.X[batch], p.y[batch]) for batch in partition(p)]
    return models.igr_terms(model, batches, p.loss, params=params)


@model_row("geometric_complexity")
def _geometric_complexity(p, model, params):
    return models.geometric_complexity(model, p.X, params=params)


@model_row("dirichlet_energy")
def _dirichlet_energy(p, model, params):
    return models.dirichlet_energy(model, p.X, params=params)


@model_row("geometric_complexity_estimate")
def _geometric_complexity_estimate(p, model, params):
    estimate = models.estimate_geometric_complexity(
        model, p.X, np.random.default_rng(p.rng_seed), params=params, n_probes=8
    )
    return np.array([estimate.value, estimate.stderr])


@model_row("param_grad_sq_norms_total")
def _output_grad_sq_norms(p, model, params):
    return total(models.output_grad_sq_norms(model, p.X, params=params))


@model_row("loss_grad_sq_norms_total")
def _loss_grad_sq_norms(p, model, params):
    return total(models.loss_grad_sq_norms(model, (p.X, p.y), p.loss, params=params))


@model_row("igr_terms")
def _igr_terms_row(p, model, params):
    terms = _igr_terms(p, model, params)
    return np.array([terms.loss, terms.full_batch, terms.mini_batch, terms.per_example])


@model_row("modified_loss_gd")
def _modified_loss_gd(p, model, params):
    return _igr_terms(p, model, params).modified_loss_gd(STEP)


@model_row("modified_loss_sgd")
def _modified_loss_sgd(p, model, params):
    return _igr_terms(p, model, params).modified_loss_sgd(STEP)


@model_row("modified_loss_per_example")
def _modified_loss_per_example(p, model, params):
    return _igr_terms(p, model, params).modified_loss_per_example(STEP)


@model_row("loss_hvp")
def _loss_hvp(p, model, params):
    vector = gcref.flatten_params(p.direction)
    return models.loss_hvp(model, (p.X, p.y), p.loss, vector, params=params)
