"""Optimisers with one interface, and a plain training loop (docs/math.md section 6).

An optimiser is an object with ``update(mlp, params, grads, step) -> new_params``:
``params`` and ``grads`` are tuples of ``(W, b)`` NumPy arrays (``grads`` the gradient of
the mean loss, :func:`gcref.loss_grad`) and ``step`` counts the updates from 1.

Every optimiser takes ``train_biases``: with ``False`` the biases are held where they are,
so a bias-free network (all biases zero) stays bias-free, as the statements of seed 004
about bias-free networks require.
"""

from __future__ import annotations

import numpy as np

from gcref._checks import check_finite_scalar, check_positive_int, not_an_mlp
from gcref.backends import get_backend
from gcref.mlp import MLP
from gcref.norms import check_exponent, path_gammas_in
from gcref.primitives import loss_grad


class Optimizer:
    """Common checks of the optimiser interface; subclasses implement ``_update``.

    Parameters
    ----------
    lr : float > 0
        Step size (``eta`` in seed 002, ``gamma_n`` in seed 004).
    train_biases : bool
        ``False`` holds the biases fixed.
    """

    def __init__(self, lr, *, train_biases=True):
        self.lr = check_finite_scalar(lr, "lr", positive=True)
        if not isinstance(train_biases, bool):
            raise TypeError(f"train_biases must be a bool; got {type(train_biases).__name__}")
        self.train_biases = train_biases

    def update(self, mlp, params, grads, step):
        """One update.

        Parameters
        ----------
        mlp : MLP
        params : tuple of (W, b) ndarray
        grads : tuple of (dW, db) ndarray
            The gradient of the loss at ``params``, shaped like ``params``.
        step : int >= 1
            The number of this update, counted from 1.

        Returns
        -------
        tuple of (W, b) ndarray
        """
        if not isinstance(mlp, MLP):
            raise not_an_mlp(mlp)
        params = mlp.check_params(params)
        grads = mlp.check_params(grads, name="grads")
        if grads[0][0].dtype != params[0][0].dtype:
            raise TypeError(
                f"grads have dtype {grads[0][0].dtype} but params are {params[0][0].dtype}; "
                "mixed dtypes are not promoted"
            )
        step = check_positive_int(step, "step")
        new = self._update(mlp, params, grads, step)
        if not self.train_biases:
            new = tuple((W, b.copy()) for (W, _), (_, b) in zip(new, params))
        return new

    def _update(self, mlp, params, grads, step):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(lr={self.lr:g})"


class GradientDescent(Optimizer):
    """Plain gradient descent ``w <- w - lr grad L(w)``."""

    def _update(self, mlp, params, grads, step):
        return tuple((W - self.lr * gW, b - self.lr * gb) for (W, b), (gW, gb) in zip(params, grads))


class PathSGD(Optimizer):
    """Path-normalised gradient descent (seed 002, Algorithm 1; docs/math.md section 6).

    Parameters
    ----------
    lr : float > 0
        ``eta``.
    p : float > 0
        The path norm ``l_p`` whose geometry the steps follow.
    train_biases : bool
        With ``True`` (the default) each bias is an edge from a constant unit whose
        ``gamma_in`` is 1, as in the path norm with biases: it enters ``gamma_in`` of its
        unit and is updated with ``gamma = gamma_out(v)^{2/p}``. With ``False`` the dynamic
        programmes ignore the biases and the biases are held fixed.

    Notes
    -----
    ``w_e <- w_e - eta / gamma_p(w, e) dL/dw_e`` with
    ``gamma_p(w, u->v) = gamma_in(u)^{2/p} gamma_out(v)^{2/p}``; ``gamma_in`` comes from a
    forward and ``gamma_out`` from a backward dynamic programme over ``|w|^p``
    (``gamma_in = 1`` at the inputs, ``gamma_out = 1`` at the outputs). Under a node
    rescaling by c, ``gamma`` of the incoming edges of the unit scales by ``c^-2`` and their
    gradient by ``1/c``, so the update scales by c: updates of rescaling-equivalent networks
    stay rescaling-equivalent. Where ``gamma = 0`` no path runs through the edge, and the
    edge is left as it is.
    """

    def __init__(self, lr, p=2, *, train_biases=True):
        super().__init__(lr, train_biases=train_biases)
        self.p = check_exponent(p, "p")

    def scales(self, params):
        """``gamma_p(w, e)`` for every weight and bias, shaped like ``params``.

        Parameters
        ----------
        params : sequence of (W, b) ndarray

        Returns
        -------
        tuple of (ndarray, ndarray)
            ``gamma`` of ``W_i[v, u]`` is ``gamma_in(u)^{2/p} gamma_out(v)^{2/p}``; of ``b_i[v]``,
            ``gamma_out(v)^{2/p}``.
        """
        p = self.p
        gamma_in = path_gammas_in(get_backend("numpy"), params, p, bias=self.train_biases)
        inputs = np.ones(params[0][0].shape[1], dtype=params[0][0].dtype)
        sources = [inputs, *gamma_in[:-1]]
        gamma_out = [np.ones_like(gamma_in[-1])]
        for W, _ in params[:0:-1]:
            gamma_out.insert(0, (np.abs(W) ** p).T @ gamma_out[0])
        return tuple(
            (np.outer(g_out, g_src) ** (2.0 / p), g_out ** (2.0 / p))
            for g_src, g_out in zip(sources, gamma_out)
        )

    def _update(self, mlp, params, grads, step):
        out = []
        for (W, b), (gW, gb), (sW, sb) in zip(params, grads, self.scales(params)):
            out.append((W - self.lr * _divide(gW, sW), b - self.lr * _divide(gb, sb)))
        return tuple(out)

    def __repr__(self):
        return f"PathSGD(lr={self.lr:g}, p={self.p:g})"


def _divide(grad, gamma):
    """``grad / gamma``, zero where ``gamma`` is zero (no path through the edge)."""
    return np.divide(grad, gamma, out=np.zeros_like(grad), where=gamma != 0)


class NMGD(Optimizer):
    """Norm-minimising gradient descent (seed 004, eqs. 9 and 26; docs/math.md section 6).

    Parameters
    ----------
    lr : float > 0
        ``gamma_n``, constant.
    a : float, 0 < a < 1
        ``lambda_n = 1 / (n + offset)^a``.
    offset : int >= 0
        Shift of the schedule. The default 1 starts it at ``lambda_1 = 2^{-a}``, the
        indexing of Halpern's theorem in seed 004 (``w_{n+1} = k_{n+1} T w_n``), so that
        the first anchor is below 1 (docs/math.md section 6). With 0, ``lambda_1 = 1``
        and the first update returns zero whatever the start, which makes "from any
        start" hold trivially.
    train_biases : bool

    Notes
    -----
    ``w_{n+1} = w_n - (1 - lambda_n) gamma_n grad L(w_n) - lambda_n w_n``, i.e. the Halpern
    iteration ``w_{n+1} = (1 - lambda_n) T w_n`` of the gradient step ``T w = w - gamma grad L(w)``
    with anchor 0. On under-determined linear least squares it converges to the
    minimum-norm solution ``pinv(X) y`` from any start; the distance shrinks like
    ``lambda_n``, so a relative error of 1e-6 takes about ``10^{6/a}`` steps.
    """

    def __init__(self, lr, a, *, offset=1, train_biases=True):
        super().__init__(lr, train_biases=train_biases)
        self.a = check_finite_scalar(a, "a")
        if not 0 < self.a < 1:
            raise ValueError(f"a must lie in (0, 1); got {self.a}")
        self.offset = check_positive_int(offset, "offset", minimum=0)

    def weight(self, step):
        """``lambda_n = 1 / (n + offset)^a`` for the update number ``n = step``."""
        return 1.0 / (check_positive_int(step, "step") + self.offset) ** self.a

    def _update(self, mlp, params, grads, step):
        lam = self.weight(step)
        keep, descend = 1.0 - lam, (1.0 - lam) * self.lr
        return tuple(
            (keep * W - descend * gW, keep * b - descend * gb)
            for (W, b), (gW, gb) in zip(params, grads)
        )

    def __repr__(self):
        return f"NMGD(lr={self.lr:g}, a={self.a:g}, offset={self.offset})"


class UnitNormGD(Optimizer):
    """Gradient descent with every weight matrix on its unit sphere (projected gradient descent).

    Parameters
    ----------
    lr : float > 0
    train_biases : bool
        Biases are unconstrained: a plain gradient step, or held fixed.

    Notes
    -----
    Projected (Riemannian) gradient descent on the product of the spheres
    ``||V_k||_F = 1`` (seed 004, section 2, the dynamics of the normalised layers):
    with ``V = W / ||W||_F`` and ``G`` the gradient,

        ``V <- (V - lr (G - <G, V> V)) / ||V - lr (G - <G, V> V)||_F``,

    the step along the tangent space followed by the projection back onto the sphere.
    Start from unit-norm layers (:func:`gcref.norms.normalized_params`) for the iterates
    to be the method's from the first step; otherwise the first update also projects.
    """

    def _update(self, mlp, params, grads, step):
        out = []
        for i, ((W, b), (gW, gb)) in enumerate(zip(params, grads), 1):
            norm = np.linalg.norm(W)
            if norm == 0:
                raise ValueError(f"W_{i} is zero: it has no direction on the unit sphere")
            V = W / norm
            stepped = V - self.lr * (gW - np.vdot(gW, V) * V)
            out.append((stepped / np.linalg.norm(stepped), b - self.lr * gb))
        return tuple(out)


def minimize(mlp, params, X, y, loss, optimizer, n_steps, *, backend="numpy"):
    """Full-batch training: ``n_steps`` updates of ``optimizer`` on the mean loss.

    Parameters
    ----------
    mlp : MLP
    params : tuple of (W, b) ndarray
    X : ndarray, shape (N, d)
    y : array_like
        Targets for ``loss``.
    loss : str or Loss
    optimizer : object with ``update(mlp, params, grads, step)``
    n_steps : int >= 0
    backend : str or Backend
        Computes the gradients (:func:`gcref.loss_grad`).

    Returns
    -------
    tuple of (W, b) ndarray
        The parameters after the last update.
    """
    n_steps = check_positive_int(n_steps, "n_steps", minimum=0)
    if not callable(getattr(optimizer, "update", None)):
        raise TypeError(f"optimizer must have an update method; got {type(optimizer).__name__}")
    for step in range(1, n_steps + 1):
        grads = loss_grad(mlp, params, X, y, loss, backend=backend)
        params = optimizer.update(mlp, params, grads, step)
    return tuple(tuple(pair) for pair in params)
