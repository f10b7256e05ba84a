"""A :class:`gcref.MLP` with its parameters as one more :class:`~gcref.backends.adapter.ModelAdapter`.

The measures of :mod:`gcref.models` run on it exactly as on a torch module or a JAX
function. The primitives come from the chosen MLP backend: ``numpy`` supplies its
hand-derived analytic ones (input Jacobians by the chain rule, per-example norms by the
identities of docs/math.md section 1, Hessian-vector products by the R-operator);
``autograd``, ``jax`` and ``torch`` differentiate the same MLP.
"""

from __future__ import annotations

import numpy as np

from gcref._checks import check_float_array, not_an_mlp
from gcref.backends import get_backend
from gcref.backends.adapter import ModelAdapter
from gcref.data import to_numpy
from gcref.mlp import MLP
from gcref.params import flat_arrays, flatten_params, unflatten_params

__all__ = ["MLPModel"]


class MLPModel(ModelAdapter):
    """A :class:`gcref.MLP`, its parameters and an MLP backend.

    Parameters
    ----------
    mlp : gcref.MLP
    params : sequence of (W, b) pairs of ndarray
        Checked by :meth:`gcref.MLP.check_params`: float32 or float64, one dtype, finite.
    backend : str or Backend
        ``"numpy"`` (analytic), ``"autograd"``, ``"jax"`` or ``"torch"``.

    Notes
    -----
    Inputs must be float arrays of shape ``(n, d)`` in the parameters' dtype (mixed dtypes
    are not promoted). The backend computes in that dtype; :mod:`gcref.models` sums its
    results in float64. Parameters are converted to the backend's arrays once, not per
    chunk. theta is ``(W_1, b_1, ..., W_l, b_l)``, flattened as :func:`gcref.flatten_params`.
    """

    examples_independent = True

    def __init__(self, mlp, params, backend="numpy"):
        if not isinstance(mlp, MLP):
            raise not_an_mlp(mlp)
        self.mlp = mlp
        self.params = mlp.check_params(params)
        self.dtype = self.params[0][0].dtype
        self.backend = get_backend(backend)
        self._native = None

    def __repr__(self):
        mlp = self.mlp
        return (
            f"MLPModel(sizes={mlp.sizes}, activation={mlp.activation.name!r}, "
            f"output_activation={mlp.output_activation.name!r}, backend={self.backend.name!r})"
        )

    # -- conversions -------------------------------------------------------------------
    def _scope(self):
        return self.backend.scope(self.dtype)

    def _nparams(self, params=None):
        """The parameters as native arrays (converted once, inside the backend's scope)."""
        if params is not None:
            return [(self.backend.asarray(W), self.backend.asarray(b)) for W, b in params]
        if self._native is None:
            self._native = self._nparams(self.params)
        return self._native

    def check_batch(self, X, name):
        """A float NumPy array ``(n, d)`` in the parameters' dtype, finite (the errors name it)."""
        X = check_float_array(to_numpy(X), name, ndim=2, dtype=self.dtype)
        return self.mlp.check_inputs(X, self.dtype, name=name)

    def _input(self, X):
        return self.backend.asarray(X)

    def _targets(self, targets):
        return self.backend.asarray(np.asarray(targets, dtype=self.dtype))

    def _np(self, x):
        return np.asarray(self.backend.to_numpy(x), dtype=np.float64)

    # -- the primitives ----------------------------------------------------------------
    def outputs(self, X):
        with self._scope():
            return self._np(self.backend.forward(self.mlp, self._nparams(), self._input(X)).output)

    def output_dim(self, X):
        return self.mlp.output_dim

    def jacobian_sq_norms(self, X, mode):
        # The backend's input Jacobian in either mode: both give the same numbers.
        with self._scope():
            J = self._np(self.backend.input_jacobian(self.mlp, self._nparams(), self._input(X)))
        return np.einsum("nkd,nkd->n", J, J)

    def probe_sq_norms(self, X, probes):
        n, n_probes, k = probes.shape
        with self._scope():
            rows = self._input(np.repeat(X, n_probes, axis=0))
            v = self.backend.asarray(np.asarray(probes, dtype=self.dtype).reshape(n * n_probes, k))
            vjp = self._np(self.backend.input_vjp(self.mlp, self._nparams(), rows, v))
        return np.sum(vjp * vjp, axis=1).reshape(n, n_probes)

    def parameter_names(self):
        return tuple(f"{kind}_{i}" for i in range(1, self.mlp.depth + 1) for kind in ("W", "b"))

    def _interleaved(self, w, b):
        w, b = self._np(w), self._np(b)
        out = np.empty((w.shape[0], 2 * w.shape[1]))
        out[:, 0::2], out[:, 1::2] = w, b
        return out

    def output_grad_sq_norms(self, X):
        with self._scope():
            w, b = self.backend.param_grad_sq_norms(self.mlp, self._nparams(), self._input(X))
            return self._interleaved(w, b)

    def loss_grad_sq_norms(self, X, targets, loss):
        with self._scope():
            Xn, T = self._input(X), self._targets(targets)
            per = loss.per_example(self.backend.forward(self.mlp, self._nparams(), Xn).output, T)
            w, b = self.backend.loss_grad_sq_norms(self.mlp, self._nparams(), Xn, T, loss)
            return self._np(per), self._interleaved(w, b)

    def loss_grad_sum(self, X, targets, loss):
        n = X.shape[0]
        with self._scope():
            Xn, T = self._input(X), self._targets(targets)
            value = self.backend.mean_loss(self.mlp, self._nparams(), Xn, T, loss)
            grads = self.backend.loss_grad(self.mlp, self._nparams(), Xn, T, loss)
            return float(self._np(value)) * n, self._flat(grads, scale=n)

    def loss_hvp_sum(self, X, targets, loss, vector):
        n = X.shape[0]
        like = unflatten_params(np.asarray(vector, dtype=self.dtype), self.params)
        with self._scope():
            Xn, T = self._input(X), self._targets(targets)
            hv = self.backend.loss_hvp(self.mlp, self._nparams(), Xn, T, loss, self._nparams(like))
            return self._flat(hv, scale=n)

    def per_example_penalty_grad_sum(self, X, targets, loss):
        with self._scope():
            Xn, T = self._input(X), self._targets(targets)
            grads = self.backend.per_example_penalty_grad(self.mlp, self._nparams(), Xn, T, loss)
            return self._flat(grads, scale=0.5)

    def _flat(self, grads, scale=1.0):
        """The arrays of ``grads`` times ``scale``, one float64 vector: one pass over them."""
        arrays = [self.backend.to_numpy(a) for a in flat_arrays(grads)]
        out = np.empty(sum(np.size(a) for a in arrays), dtype=np.float64)
        start = 0
        for a in arrays:
            stop = start + np.size(a)
            np.multiply(np.ravel(a), scale, out=out[start:stop], dtype=np.float64)
            start = stop
        return out

    def parameter_vector(self):
        return flatten_params(self.params).astype(np.float64)

    def n_parameters(self):
        # Counted, not flattened: the default flattens the parameters (a copy of them all).
        return sum(W.size + b.size for W, b in self.params)

    def to_numpy(self, x):
        return np.asarray(x)
