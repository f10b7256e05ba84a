"""The analytic reference backend: hand-derived derivatives, vectorised over the batch.

Every primitive is a few matmuls or einsums over the whole batch; there is no loop over
examples. The Hessian-vector product is Pearlmutter's R-operator: an exact
forward-and-backward second-order pass, not a finite difference.

Index conventions as in :mod:`gcref.backends._base`; ``a_i'`` and ``a_i''`` are the
activation's ``d1`` and ``d2`` evaluated at ``z_i``.
"""

from __future__ import annotations

import numpy as np

from gcref.backends._base import Backend


class NumpyBackend(Backend):
    """Analytic MLP derivatives in NumPy (docs/math.md sections 1 and 4)."""

    name = "numpy"
    xp = np

    def asarray(self, x):
        return np.asarray(x)

    def to_numpy(self, x):
        return np.asarray(x)

    def sum_rows(self, x):
        return np.sum(x, axis=-1)

    def logsumexp_rows(self, x):
        m = np.max(x, axis=-1, keepdims=True)
        return (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))[..., 0]

    def stack(self, arrays, axis):
        return np.stack(arrays, axis=axis)

    def _slopes(self, mlp, zs):
        """``[a_i'(z_i)]``, each ``(N, n_{i+1})``."""
        return [mlp.layer_activation(i).d1(z) for i, z in enumerate(zs)]

    def sensitivities(self, mlp, params, X):
        return self._sensitivities(mlp, params, self.forward(mlp, params, X))

    def _sensitivities(self, mlp, params, fwd):
        # Delta_l = diag(a_l'(z_l)); Delta_i = (Delta_{i+1} W_{i+1}) diag(a_i'(z_i)).
        slopes = self._slopes(mlp, fwd.zs)
        k = mlp.output_dim
        deltas = [np.eye(k, dtype=fwd.zs[-1].dtype)[None, :, :] * slopes[-1][:, None, :]]
        for i in range(mlp.depth - 2, -1, -1):
            W_next = params[i + 1][0]
            deltas.append((deltas[-1] @ W_next) * slopes[i][:, None, :])
        return deltas[::-1]

    @staticmethod
    def _layer_sq_norms(bias_sq, hs):
        """``(||.||^2 ||h_i||^2, ||.||^2)`` per example and layer from the bias-part norms."""
        bias = np.stack(bias_sq, axis=1)
        h_sq = np.stack([np.einsum("ni,ni->n", h, h) for h in hs[:-1]], axis=1)
        return bias * h_sq, bias

    def param_grad_sq_norms(self, mlp, params, X):
        # As the generic version, from one forward pass shared by the sensitivities.
        fwd = self.forward(mlp, params, X)
        deltas = self._sensitivities(mlp, params, fwd)
        return self._layer_sq_norms([np.einsum("nco,nco->n", D, D) for D in deltas], fwd.hs)

    def loss_grad_sq_norms(self, mlp, params, X, targets, loss):
        # As the generic version, from one forward pass shared by the backward pass.
        fwd = self.forward(mlp, params, X)
        gs = self._backward(mlp, params, fwd, loss.residual(fwd.output, targets))[0]
        return self._layer_sq_norms([np.einsum("no,no->n", g, g) for g in gs], fwd.hs)

    def input_jacobian(self, mlp, params, X):
        # J = Delta_1 W_1 (h'_1 = I).
        return self.sensitivities(mlp, params, X)[0] @ params[0][0]

    def input_vjp(self, mlp, params, X, cotangent):
        # Back-propagate v through the layers: one matrix-vector product per layer.
        fwd = self.forward(mlp, params, X)
        g = self._backward(mlp, params, fwd, cotangent)[0][0]
        return g @ params[0][0]

    def hidden_jacobians(self, mlp, params, X):
        # h'_{i+1} = diag(a_i'(z_i)) W_i h'_i, starting from h'_1 = I.
        zs = self.forward(mlp, params, X).zs
        slopes = self._slopes(mlp, zs)
        n, d = X.shape
        jacs = [np.broadcast_to(np.eye(d, dtype=X.dtype), (n, d, d)).copy()]
        for i in range(mlp.depth - 1):
            jacs.append(slopes[i][:, :, None] * (params[i][0] @ jacs[-1]))
        return jacs

    def param_jacobian(self, mlp, params, X):
        # df_c/dW_i = outer(Delta_i[c], h_i), df_c/db_i = Delta_i[c] (docs/math.md section 1).
        fwd = self.forward(mlp, params, X)
        deltas = self._sensitivities(mlp, params, fwd)
        return [
            (np.einsum("nco,ni->ncoi", D, h), D.copy()) for D, h in zip(deltas, fwd.hs[:-1])
        ]

    def _backward(self, mlp, params, fwd, eps):
        """``g_i = dl/dz_i`` per example from ``eps = dl/df``, and the slopes used."""
        slopes = self._slopes(mlp, fwd.zs)
        gs = [eps * slopes[-1]]
        for i in range(mlp.depth - 2, -1, -1):
            gs.append((gs[-1] @ params[i + 1][0]) * slopes[i])
        return gs[::-1], slopes

    def loss_sensitivities(self, mlp, params, X, targets, loss):
        fwd = self.forward(mlp, params, X)
        eps = loss.residual(fwd.output, targets)
        return self._backward(mlp, params, fwd, eps)[0]

    def loss_grad(self, mlp, params, X, targets, loss):
        # dL/dW_i = (1/N) sum_n g_i h_i^T, dL/db_i = (1/N) sum_n g_i.
        fwd = self.forward(mlp, params, X)
        gs = self._backward(mlp, params, fwd, loss.residual(fwd.output, targets))[0]
        n = X.shape[0]
        return [(g.T @ h / n, g.sum(axis=0) / n) for g, h in zip(gs, fwd.hs[:-1])]

    def loss_hvp(self, mlp, params, X, targets, loss, vector):
        """Pearlmutter's R-operator, R{.} = d/dr (.)(theta + r v) at r = 0.

        Forward:  R{h_1} = 0,  R{z_i} = V_i h_i + W_i R{h_i} + v_i,  R{h_{i+1}} = a_i' R{z_i}.
        Output:   R{eps} = (d^2 l / df^2) R{f}.
        Backward: with u_i = dl/dh_{i+1} (u_l = eps) and g_i = u_i a_i',
                  R{g_i} = R{u_i} a_i' + u_i a_i'' R{z_i},
                  R{u_{i-1}} = V_i^T g_i + W_i^T R{g_i}.
        Result:   R{dL/dW_i} = (1/N) sum_n (R{g_i} h_i^T + g_i R{h_i}^T),  R{dL/db_i} = mean R{g_i}.
        """
        fwd = self.forward(mlp, params, X)
        n = X.shape[0]
        r_hs = [np.zeros_like(X)]
        r_zs = []
        for i, ((W, _), (V, v)) in enumerate(zip(params, vector)):
            r_z = fwd.hs[i] @ V.T + r_hs[i] @ W.T + v
            r_zs.append(r_z)
            r_hs.append(mlp.layer_activation(i).d1(fwd.zs[i]) * r_z)

        eps = loss.residual(fwd.output, targets)
        r_u = loss.hessian_vector(fwd.output, targets, r_hs[-1])
        u = eps
        out = [None] * mlp.depth
        for i in range(mlp.depth - 1, -1, -1):
            act = mlp.layer_activation(i)
            slope = act.d1(fwd.zs[i])
            g = u * slope
            r_g = r_u * slope + u * act.d2(fwd.zs[i]) * r_zs[i]
            out[i] = ((r_g.T @ fwd.hs[i] + g.T @ r_hs[i]) / n, r_g.sum(axis=0) / n)
            if i > 0:
                W, _ = params[i]
                V, _ = vector[i]
                u, r_u = g @ W, g @ V + r_g @ W
        return out

    def per_example_penalty_grad(self, mlp, params, X, targets, loss):
        """Analytic ``2 sum_n H_n v_n`` with the per-example direction ``v_n = grad_theta l_n``.

        Pearlmutter's R-operator (see :meth:`loss_hvp`) with a direction that differs
        per example: ``V_i = g_i h_i^T`` and ``v_i = g_i`` for example n. The two places where
        the direction enters become per-example scalars times vectors:

        - forward:  ``V_i h_i + v_i = g_i (1 + ||h_i||^2)``, so
          ``R{z_i} = g_i (1 + ||h_i||^2) + W_i R{h_i}``, ``R{h_{i+1}} = a_i' R{z_i}``;
        - backward: ``V_i^T g_i = h_i ||g_i||^2``, so
          ``R{u_{i-1}} = h_i ||g_i||^2 + W_i^T R{g_i}``, with ``R{u_l} = (d^2 l/df^2) R{f}`` and
          ``R{g_i} = R{u_i} a_i' + u_i a_i'' R{z_i}``.

        Each example's result ``H_n v_n`` is ``(R{g_i} h_i^T + g_i R{h_i}^T, R{g_i})``; the sum
        over examples is a matrix product over the batch axis.
        """
        fwd = self.forward(mlp, params, X)
        gs = self.loss_sensitivities(mlp, params, X, targets, loss)
        r_hs = [np.zeros_like(X)]
        r_zs = []
        for i, (W, _) in enumerate(params):
            h_sq = np.sum(fwd.hs[i] ** 2, axis=1, keepdims=True)
            r_z = gs[i] * (1.0 + h_sq) + r_hs[i] @ W.T
            r_zs.append(r_z)
            r_hs.append(mlp.layer_activation(i).d1(fwd.zs[i]) * r_z)

        u = loss.residual(fwd.output, targets)
        r_u = loss.hessian_vector(fwd.output, targets, r_hs[-1])
        out = [None] * mlp.depth
        for i in range(mlp.depth - 1, -1, -1):
            act = mlp.layer_activation(i)
            g = gs[i]
            r_g = r_u * act.d1(fwd.zs[i]) + u * act.d2(fwd.zs[i]) * r_zs[i]
            out[i] = (2.0 * (r_g.T @ fwd.hs[i] + g.T @ r_hs[i]), 2.0 * r_g.sum(axis=0))
            if i > 0:
                W = params[i][0]
                g_sq = np.sum(g * g, axis=1, keepdims=True)
                u, r_u = g @ W, fwd.hs[i] * g_sq + r_g @ W
        return out

    def residuals(self, output, targets, loss):
        return loss.residual(output, targets)
