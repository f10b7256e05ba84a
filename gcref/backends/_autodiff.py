"""Primitives written once on two framework operations: a VJP and a Hessian-vector product.

A framework backend supplies ``vjp(fn, inputs, cotangent)`` and
``hvp(fn, inputs, tangents)`` over tuples of native arrays; everything else follows:

- ``J`` and every ``Delta_i`` come from k backward passes over the batch: the output
  cotangent is a one-hot column, and zero-valued shifts added to each ``z_i`` make the
  same pass return ``df_c/dz_i`` for every example at once (examples never mix, so the
  gradient of the batch sum is the per-example gradient);
- ``g_i = dl_n/dz_i`` is one backward pass of the summed per-example loss to the shifts;
- per-example parameter Jacobians replicate the weights per example, so that the
  gradient with respect to the copies is the per-example gradient.
"""

from __future__ import annotations

import numpy as np

from gcref.backends._base import Backend
from gcref.params import flat_arrays, pairs


class AutodiffBackend(Backend):
    """Backend whose derivatives come from the framework's reverse mode."""

    differentiates = True

    def vjp(self, fn, inputs, cotangent):
        """Gradient of ``<fn(*inputs), cotangent>`` with respect to each input, as a tuple."""
        raise NotImplementedError

    def hvp(self, fn, inputs, tangents):
        """Hessian of the scalar ``fn(*inputs)`` applied to ``tangents``, as a tuple."""
        raise NotImplementedError

    def _zeros(self, shape, dtype):
        return self.asarray(np.zeros(shape, dtype=dtype))

    def _onehot_columns(self, n, k, dtype):
        eye = np.eye(k, dtype=dtype)
        return [self.asarray(np.broadcast_to(eye[c], (n, k)).copy()) for c in range(k)]

    def _dtype(self, X):
        """NumPy dtype of a native array."""
        return np.dtype(X.dtype)

    def _output_vjps(self, mlp, params, X):
        """Per output c: gradients of ``sum_n f_c(x_n)`` to X and to every z_i."""
        n, dtype = X.shape[0], self._dtype(X)
        shifts = tuple(self._zeros((n, size), dtype) for size in mlp.sizes[1:])

        def output(X, *shifts):
            return self.forward(mlp, params, X, shifts).output

        return [
            self.vjp(output, (X, *shifts), cot)
            for cot in self._onehot_columns(n, mlp.output_dim, dtype)
        ]

    def input_jacobian(self, mlp, params, X):
        return self.stack([grads[0] for grads in self._output_vjps(mlp, params, X)], 1)

    def input_vjp(self, mlp, params, X, cotangent):
        def output(X):
            return self.forward(mlp, params, X).output

        return self.vjp(output, (X,), cotangent)[0]

    def sensitivities(self, mlp, params, X):
        rows = self._output_vjps(mlp, params, X)
        return [self.stack([grads[1 + i] for grads in rows], 1) for i in range(mlp.depth)]

    def hidden_jacobians(self, mlp, params, X):
        n, d = X.shape
        dtype = self._dtype(X)
        jacs = [self.asarray(np.broadcast_to(np.eye(d, dtype=dtype), (n, d, d)).copy())]
        for i in range(1, mlp.depth):

            def hidden(X, i=i):
                return self.forward(mlp, params, X).hs[i]

            cots = self._onehot_columns(n, mlp.sizes[i], dtype)
            jacs.append(self.stack([self.vjp(hidden, (X,), c)[0] for c in cots], 1))
        return jacs

    def param_jacobian(self, mlp, params, X):
        n = X.shape[0]
        dtype = self._dtype(X)
        copies = tuple(self.stack([a] * n, 0) for a in flat_arrays(params))

        def output(*flat):
            h = X
            for i, (W, b) in enumerate(pairs(flat)):
                h = mlp.layer_activation(i).fn(self.xp.einsum("noi,ni->no", W, h) + b, self.xp)
            return h

        rows = [
            self.vjp(output, copies, cot)
            for cot in self._onehot_columns(n, mlp.output_dim, dtype)
        ]
        flat = [self.stack([grads[j] for grads in rows], 1) for j in range(len(copies))]
        return pairs(flat)

    def loss_sensitivities(self, mlp, params, X, targets, loss):
        n, dtype = X.shape[0], self._dtype(X)
        shifts = tuple(self._zeros((n, size), dtype) for size in mlp.sizes[1:])

        def per_example(*shifts):
            return loss.per_example(self.forward(mlp, params, X, shifts).output, targets)

        return list(self.vjp(per_example, shifts, self.asarray(np.ones(n, dtype=dtype))))

    def _mean_loss_offlat_arrays(self, mlp, X, targets, loss):
        def mean_loss(*flat):
            return self.mean_loss(mlp, pairs(flat), X, targets, loss)

        return mean_loss

    def loss_grad(self, mlp, params, X, targets, loss):
        one = self.asarray(np.ones((), dtype=self._dtype(X)))
        grads = self.vjp(self._mean_loss_offlat_arrays(mlp, X, targets, loss), flat_arrays(params), one)
        return pairs(grads)

    def loss_hvp(self, mlp, params, X, targets, loss, vector):
        fn = self._mean_loss_offlat_arrays(mlp, X, targets, loss)
        return pairs(self.hvp(fn, flat_arrays(params), flat_arrays(vector)))

    def per_example_penalty_grad(self, mlp, params, X, targets, loss):
        """The gradient of the per-example norm identity ``sum_n ||g_i||^2 (1 + ||h_i||^2)``."""

        def penalty(*flat):
            w, b = self.loss_grad_sq_norms(mlp, pairs(flat), X, targets, loss)
            return self.xp.sum(w) + self.xp.sum(b)

        one = self.asarray(np.ones((), dtype=self._dtype(X)))
        return pairs(self.vjp(penalty, flat_arrays(params), one))

    def residuals(self, output, targets, loss):
        """``dl/df`` by differentiating the loss at a zero shift of ``f``, so that the
        result keeps its dependence on the parameters."""
        dtype = self._dtype(output)
        shape = tuple(output.shape)
        zero = self.asarray(np.zeros(shape, dtype=dtype))
        ones = self.asarray(np.ones(shape[0], dtype=dtype))
        return self.vjp(lambda shift: loss.per_example(output + shift, targets), (zero,), ones)[0]
