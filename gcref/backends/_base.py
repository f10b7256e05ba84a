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
    """Per-layer values of one forward pass (MATH.md section 1).

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

    # -- derived quantities, written once on the primitives ------------------------
    def mean_loss(self, mlp, params, X, targets, loss):
        """Mean loss L(theta) (MATH.md section 4)."""
        out = self.forward(mlp, params, X).output
        per = loss.per_example(out, targets)
        return self.sum_rows(per[None, :])[0] / per.shape[0]

    def param_grad_sq_norms(self, mlp, params, X):
        """Per-example ``||grad_{W_i} f||_F^2`` and ``||grad_{b_i} f||_F^2``, each ``(N, l)``.

        MATH.md section 1: ``||Delta_i||_F^2 ||h_i||^2`` and ``||Delta_i||_F^2``; no
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
        ``||g_i||^2 ||h_i||^2`` and ``||g_i||^2`` (MATH.md sections 1 and 4).
        """
        fwd = self.forward(mlp, params, X)
        gs = self.loss_sensitivities(mlp, params, X, targets, loss)
        bias = [self.sum_rows(g * g) for g in gs]
        weight = [bsq * self.sum_rows(h * h) for bsq, h in zip(bias, fwd.hs[:-1])]
        return self.stack(weight, 1), self.stack(bias, 1)


class ModelAdapter:
    """A user's own model (a ``torch.nn.Module``, a JAX ``apply`` function) as seen by gcref.

    :mod:`gcref.models` writes every measure once on these per-chunk primitives and does
    the streaming, the float64 accumulation and the reduction across processes itself.
    Each primitive receives one chunk: ``X`` an array of any kind (NumPy, the
    framework's own) of shape ``(n, *input_shape)``, ``targets`` a float64 NumPy array
    ``(n, k)`` from :meth:`gcref.losses.Loss.prepare_targets`. Adapters convert to their
    own arrays, on the model's device and in the model's dtype.

    Index conventions: ``n`` examples in the chunk, ``k`` outputs, ``d`` input features
    (the product of ``input_shape``), ``P`` probes, ``p`` parameters; ``J(x) = df/dx`` of
    shape ``(k, d)``; ``J_theta(x) = df/dtheta`` of shape ``(k, p)``. Parameters are
    flattened in one fixed order (:meth:`parameter_vector`). "Native vectors" are whatever
    the adapter adds with ``+`` and converts with :meth:`to_numpy` (a float64 tensor on the
    model's device in torch; a float64 NumPy array in JAX, whose float64 exists only
    inside ``jax.enable_x64``).

    Every example must be computed independently of the others in its chunk (a
    ``BatchNorm`` in training mode couples them): adapters evaluate the model in
    inference mode.
    """

    def outputs(self, X):
        """``f(X)`` as float64 NumPy, shape ``(n, k)``."""
        raise NotImplementedError

    def output_dim(self, X):
        """``k``, the number of outputs, for inputs shaped like ``X``.

        The default runs the model on one example; adapters may answer without running it.
        """
        return self.outputs(X[:1]).shape[1]

    def jacobian_sq_norms(self, X, mode):
        """``||J(x_n)||_F^2`` per example, float64 NumPy ``(n,)``.

        ``mode`` is ``"reverse"`` (k input-only vector-Jacobian products sharing one
        forward pass, no weight gradient) or ``"forward"`` (d Jacobian-vector products).
        """
        raise NotImplementedError

    def probe_sq_norms(self, X, probes):
        """``||v_{n,p}^T J(x_n)||^2``, float64 NumPy ``(n, P)``, for ``probes`` of shape ``(n, P, k)``."""
        raise NotImplementedError

    def output_grad_sq_norms(self, X):
        """``||J_theta(x_n)||_F^2 = sum_o ||grad_theta f_o(x_n)||^2``, float64 NumPy ``(n,)``."""
        raise NotImplementedError

    def loss_grad_sq_norms(self, X, targets, loss):
        """Per-example losses and ``||grad_theta l_n||^2``: two float64 NumPy arrays ``(n,)``."""
        raise NotImplementedError

    def loss_grad_sum(self, X, targets, loss):
        """``(sum_n l_n, sum_n grad_theta l_n)``: a float and a native float64 vector ``(p,)``."""
        raise NotImplementedError

    def loss_grad_sum_and_sq_norms(self, X, targets, loss):
        """``(sum_n l_n, sum_n grad_theta l_n, ||grad_theta l_n||^2)``: what the IGR terms need.

        The default calls :meth:`loss_grad_sq_norms` and :meth:`loss_grad_sum`; adapters
        that can take both from one backward pass override it.
        """
        _, sq_norms = self.loss_grad_sq_norms(X, targets, loss)
        total, grad = self.loss_grad_sum(X, targets, loss)
        return total, grad, sq_norms

    def loss_hvp_sum(self, X, targets, loss, vector):
        """``sum_n H_n v`` with ``H_n`` the Hessian of ``l_n``: native float64 ``(p,)``; ``vector`` native float64 ``(p,)``."""
        raise NotImplementedError

    def parameter_vector(self):
        """The parameters, flattened in the adapter's fixed order, float64 NumPy ``(p,)``."""
        raise NotImplementedError

    def to_native_vector(self, vector):
        """A float64 NumPy ``(p,)`` vector as a native float64 vector on the model's device."""
        raise NotImplementedError

    def to_numpy(self, x):
        """A native array as NumPy (float64 kept)."""
        raise NotImplementedError

    def vector_sq_norm(self, vector):
        """``||v||^2`` of a native vector, as a float (on the host only at the end)."""
        v = self.to_numpy(vector).astype(np.float64)
        return float(v @ v)

    def all_reduce_sum(self, x):
        """Sum ``x`` (float64 NumPy, or a native vector) over cooperating processes.

        The identity unless the framework runs several processes (``torch.distributed``).
        """
        return x

    def input_features(self, X):
        """``d``, the number of input features of one example."""
        return int(np.prod(X.shape[1:]))
