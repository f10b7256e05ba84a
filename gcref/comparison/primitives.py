"""Rows of ``gcref compare`` for the core primitives (docs/math.md sections 1 and 4).

Each row calls one public function of :mod:`gcref.primitives` on the built-in problem
with the squared loss. Rows whose function returns several arrays (one per layer, or
``(W, b)`` pairs) return them as one flat array, in layer order.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.comparison.registry import row


def _flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


def _grad_norms(norms):
    """``[weights | biases]``, shape (N, 2 l)."""
    return np.concatenate([norms.weights, norms.biases], axis=1)


def _loss_args(p):
    return (p.mlp, p.params, p.X, p.y, p.loss)


@row("forward")
def _forward(p, backend):
    """Every layer's ``z_i`` then every ``h_{i+1}`` (the last is f(X))."""
    fwd = gcref.forward(p.mlp, p.params, p.X, backend=backend)
    return _flat(fwd.zs + fwd.hs[1:])


@row("input_jacobian")
def _input_jacobian(p, backend):
    """``J(x_n) = df/dx``, shape (N, k, d)."""
    return gcref.input_jacobian(p.mlp, p.params, p.X, backend=backend)


@row("input_vjp")
def _input_vjp(p, backend):
    """``v_n^T J(x_n)`` for a standard-normal cotangent drawn from ``rng_seed``."""
    rng = np.random.default_rng(p.rng_seed)
    cotangent = rng.normal(size=(p.X.shape[0], p.mlp.output_dim)).astype(p.X.dtype)
    return gcref.input_vjp(p.mlp, p.params, p.X, cotangent, backend=backend)


@row("hidden_jacobians")
def _hidden_jacobians(p, backend):
    """Every ``h'_i(x_n) = dh_i/dx``, flattened in layer order."""
    return _flat(gcref.hidden_jacobians(p.mlp, p.params, p.X, backend=backend))


@row("sensitivities")
def _sensitivities(p, backend):
    """Every ``Delta_i(x_n) = df/dz_i``, flattened in layer order."""
    return _flat(gcref.sensitivities(p.mlp, p.params, p.X, backend=backend))


@row("param_jacobian")
def _param_jacobian(p, backend):
    """Per-example ``df/dW_i`` and ``df/db_i``, flattened in layer order."""
    return _flat(a for pair in gcref.param_jacobian(p.mlp, p.params, p.X, backend=backend) for a in pair)


@row("param_grad_sq_norms")
def _param_grad_sq_norms(p, backend):
    """Per-example ``||grad_{W_i} f||^2`` then ``||grad_{b_i} f||^2``, shape (N, 2 l)."""
    return _grad_norms(gcref.param_grad_sq_norms(p.mlp, p.params, p.X, backend=backend))


@row("param_grad_sq_norms_total")
def _param_grad_sq_norms_total(p, backend):
    """Per-example ``||grad_theta f(x_n)||_F^2`` (all layers, all outputs), shape (N,)."""
    return gcref.param_grad_sq_norms(p.mlp, p.params, p.X, backend=backend).total


@row("loss_grad_sq_norms")
def _loss_grad_sq_norms(p, backend):
    """Per-example ``||grad_{W_i} l_n||^2`` then ``||grad_{b_i} l_n||^2``, shape (N, 2 l)."""
    return _grad_norms(gcref.loss_grad_sq_norms(*_loss_args(p), backend=backend))


@row("loss_grad_sq_norms_total")
def _loss_grad_sq_norms_total(p, backend):
    """Per-example ``||grad_theta l_n||^2``, shape (N,)."""
    return gcref.loss_grad_sq_norms(*_loss_args(p), backend=backend).total


@row("per_example_loss")
def _per_example_loss(p, backend):
    """``l(f(x_n), y_n)`` of the squared loss, shape (N,)."""
    return gcref.per_example_loss(*_loss_args(p), backend=backend)


@row("mean_loss")
def _mean_loss(p, backend):
    """``L = (1/N) sum_n l_n``."""
    return gcref.mean_loss(*_loss_args(p), backend=backend)


@row("residuals")
def _residuals(p, backend):
    """``eps_n = dl/df = f(x_n) - y_n``, shape (N, k)."""
    return gcref.residuals(*_loss_args(p), backend=backend)


@row("loss_sensitivities")
def _loss_sensitivities(p, backend):
    """Every ``dl_n/dz_i``, flattened in layer order."""
    return _flat(gcref.loss_sensitivities(*_loss_args(p), backend=backend))


@row("loss_grad")
def _loss_grad(p, backend):
    """``grad_theta L``, flattened, shape (p,)."""
    return gcref.flatten_params(gcref.loss_grad(*_loss_args(p), backend=backend))


@row("loss_hvp")
def _loss_hvp(p, backend):
    """Hessian of the mean loss times the problem's ``direction``."""
    return gcref.flatten_params(gcref.loss_hvp(*_loss_args(p), p.direction, backend=backend))
