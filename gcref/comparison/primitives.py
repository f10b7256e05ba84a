"""Rows of ``gcref compare`` for the core primitives (MATH.md sections 1 and 4).

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
    return gcref.input_jacobian(p.mlp, p.params, p.X, backend=backend)


@row("input_vjp")
def _input_vjp(p, backend):
    """``v_n^T J(x_n)`` for a standard-normal cotangent drawn from ``rng_seed``."""
    rng = np.random.default_rng(p.rng_seed)
    cotangent = rng.normal(size=(p.X.shape[0], p.mlp.output_dim)).astype(p.X.dtype)
    return gcref.input_vjp(p.mlp, p.params, p.X, cotangent, backend=backend)


@row("hidden_jacobians")
def _hidden_jacobians(p, backend):
    return _flat(gcref.hidden_jacobians(p.mlp, p.params, p.X, backend=backend))


@row("sensitivities")
def _sensitivities(p, backend):
    return _flat(gcref.sensitivities(p.mlp, p.params, p.X, backend=backend))


@row("param_jacobian")
def _param_jacobian(p, backend):
    return _flat(a for pair in gcref.param_jacobian(p.mlp, p.params, p.X, backend=backend) for a in pair)


@row("param_grad_sq_norms")
def _param_grad_sq_norms(p, backend):
    return _grad_norms(gcref.param_grad_sq_norms(p.mlp, p.params, p.X, backend=backend))


@row("loss_grad_sq_norms")
def _loss_grad_sq_norms(p, backend):
    return _grad_norms(gcref.loss_grad_sq_norms(*_loss_args(p), backend=backend))


@row("per_example_loss")
def _per_example_loss(p, backend):
    return gcref.per_example_loss(*_loss_args(p), backend=backend)


@row("mean_loss")
def _mean_loss(p, backend):
    return gcref.mean_loss(*_loss_args(p), backend=backend)


@row("residuals")
def _residuals(p, backend):
    return gcref.residuals(*_loss_args(p), backend=backend)


@row("loss_sensitivities")
def _loss_sensitivities(p, backend):
    return _flat(gcref.loss_sensitivities(*_loss_args(p), backend=backend))


@row("loss_grad")
def _loss_grad(p, backend):
    return gcref.flatten_params(gcref.loss_grad(*_loss_args(p), backend=backend))


@row("loss_hvp")
def _loss_hvp(p, backend):
    """Hessian of the mean loss times the problem's ``direction``."""
    return gcref.flatten_params(gcref.loss_hvp(*_loss_args(p), p.direction, backend=backend))
