"""The interface every backend implements, on the backend's own arrays.

Index conventions
-----------------
Lists are over layers i = 1..l, stored 0-based (``zs[i - 1] = z_i``).

- ``N`` examples, ``d`` inputs, ``k`` outputs, ``n_i`` units entering layer i.
- ``params``: sequence of ``(W_i, b_i)`` pairs of native arrays.
- ``targets``: float array ``(N, k)`` from :meth:`gcref.losses.Loss.prepare_targets`.

Every method takes and returns native arrays (``numpy.ndarray``, autograd's boxes,
``jax.Array``, ``torch.Tensor``); the public functions in :mod:`gcref.primitives` check
inputs and convert to and from NumPy.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np


@dataclass
class Forward:
    """Per-layer values of one forward pass (docs/math.md section 1).

    Attributes
    ----------
    zs : list of l arrays, ``zs[i - 1]`` of shape ``(N, n_{i+1})``
        Pre-activations ``z_i = W_i h_i + b_i``.
    hs : list of l + 1 arrays, ``hs[i - 1]`` of shape ``(N, n_i)``
        Layer inputs ``h_i``; ``hs[0]`` is ``X`` and ``hs[-1]`` is ``f(X)``.
    """

    zs: list
    hs: list

    @property
    def output(self):
        """``f(X)``, shape ``(N, k)``."""
        return self.hs[-1]


class Backend:
    """Primitives of the MLP on one framework's arrays.

    Subclasses set ``name`` and ``xp`` (the element-wise namespace that activations are
    written against) and implement the array helpers and the derivative primitives.
    """

    name = ""
    xp = np
    #: Whether the backend differentiates functions of its arrays (reverse mode):
    #: what penalties without a hand-derived gradient need.
    differentiates = False

    def step_function(self, step):
        """``step`` (a training step on native arrays) as this backend runs it best.

        The default runs it as it is; JAX compiles it with ``jax.jit``; torch runs it with
        gradients disabled, so that no graph is carried from one step into the next.
        """
        return step

    # -- arrays --------------------------------------------------------------------
    def scope(self, dtype):
        """Context in which arrays of ``dtype`` can be created and used."""
        return contextlib.nullcontext()

    def asarray(self, x):
        """NumPy array -> native array of the same dtype."""
        raise NotImplementedError

    def to_numpy(self, x):
        """Native array -> NumPy array."""
        raise NotImplementedError

    def sum_rows(self, x):
        """Sum over the last axis."""
        raise NotImplementedError

    def logsumexp_rows(self, x):
        """Stable ``log(sum(exp(x)))`` over the last axis."""
        raise NotImplementedError

    def stack(self, arrays, axis):
        """Stack native arrays along a new ``axis``."""
        raise NotImplementedError

    # -- the forward pass, written once -------------------------------------------
    def forward(self, mlp, params, X, shifts=None):
        """Forward pass; ``shifts[i - 1]`` (optional) is added to ``z_i``.

        The shifts are zero in value; autodiff backends differentiate with respect to
        them to obtain ``d./dz_i`` per example without materialising per-example weights.
        """
        hs, zs = [X], []
        for i, (W, b) in enumerate(params):
            z = hs[-1] @ W.T + b
            if shifts is not None:
                z = z + shifts[i]
            zs.append(z)
            hs.append(mlp.layer_activation(i).fn(z, self.xp))
        return Forward(zs, hs)

    # -- derivative primitives -----------------------------------------------------
    def input_jacobian(self, mlp, params, X):
        """``J(x) = df/dx`` for every example, shape ``(N, k, d)``."""
        raise NotImplementedError

    def input_vjp(self, mlp, params, X, cotangent):
        """``v_n^T J(x_n)`` for every example, shape ``(N, d)``, with ``v = cotangent`` of shape ``(N, k)``."""
        raise NotImplementedError

    def hidden_jacobians(self, mlp, params, X):
        """``[h'_1, ..., h'_l]`` with ``h'_i = dh_i/dx`` of shape ``(N, n_i, d)``; ``h'_1 = I``."""
        raise NotImplementedError

    def sensitivities(self, mlp, params, X):
        """``[Delta_1, ..., Delta_l]`` with ``Delta_i = df/dz_i`` of shape ``(N, k, n_{i+1})``."""
        raise NotImplementedError

    def param_jacobian(self, mlp, params, X):
        """Per-example ``df/dtheta``: ``[(dW_i (N, k, n_{i+1}, n_i), db_i (N, k, n_{i+1}))]``."""
        raise NotImplementedError

    def loss_sensitivities(self, mlp, params, X, targets, loss):
        """``[g_1, ..., g_l]`` with ``g_i = dl_n/dz_i`` per example, shape ``(N, n_{i+1})``."""
        raise NotImplementedError

    def loss_grad(self, mlp, params, X, targets, loss):
        """Gradient of the mean loss, as ``[(dW_i, db_i)]``."""
        raise NotImplementedError

    def loss_hvp(self, mlp, params, X, targets, loss, vector):
        """Hessian of the mean loss times ``vector`` (same structure as ``params``)."""
        raise NotImplementedError

    def per_example_penalty_grad(self, mlp, params, X, targets, loss):
        """``grad_theta sum_n ||grad_theta l_n||^2 = 2 sum_n H_n grad_theta l_n``, as ``[(dW_i, db_i)]``."""
        raise NotImplementedError

    def residuals(self, output, targets, loss):
        """``eps = dl/df`` at ``output`` (docs/math.md section 4), differentiable where the backend is."""
        raise NotImplementedError

    # -- derived quantities, written once on the primitives ------------------------
    def mean_loss(self, mlp, params, X, targets, loss):
        """Mean loss L(theta) (docs/math.md section 4)."""
        out = self.forward(mlp, params, X).output
        per = loss.per_example(out, targets)
        return self.sum_rows(per[None, :])[0] / per.shape[0]

    def param_grad_sq_norms(self, mlp, params, X):
        """Per-example ``||grad_{W_i} f||_F^2`` and ``||grad_{b_i} f||_F^2``, each ``(N, l)``.

        docs/math.md section 1: ``||Delta_i||_F^2 ||h_i||^2`` and ``||Delta_i||_F^2``; no
        per-example gradient is formed.
        """
        fwd = self.forward(mlp, params, X)
        deltas = self.sensitivities(mlp, params, X)
        n = X.shape[0]
        bias = [self.sum_rows((D * D).reshape(n, -1)) for D in deltas]
        weight = [bsq * self.sum_rows(h * h) for bsq, h in zip(bias, fwd.hs[:-1])]
        return self.stack(weight, 1), self.stack(bias, 1)

    def loss_grad_sq_norms(self, mlp, params, X, targets, loss):
        """Per-example ``||grad_{W_i} l_n||^2`` and ``||grad_{b_i} l_n||^2``, each ``(N, l)``.

        ``grad_{W_i} l_n = g_i h_i^T`` with ``g_i = dl_n/dz_i``, so the squared norms are
        ``||g_i||^2 ||h_i||^2`` and ``||g_i||^2`` (docs/math.md sections 1 and 4).
        """
        fwd = self.forward(mlp, params, X)
        gs = self.loss_sensitivities(mlp, params, X, targets, loss)
        bias = [self.sum_rows(g * g) for g in gs]
        weight = [bsq * self.sum_rows(h * h) for bsq, h in zip(bias, fwd.hs[:-1])]
        return self.stack(weight, 1), self.stack(bias, 1)
