"""Backward error analysis, checked numerically (docs/math.md section 5).

One gradient-descent step ``theta_1 = theta_0 - h grad L(theta_0)`` is compared with the
exact gradient flow ``Phi^F_h(theta_0)`` of the loss F = L and of the modified loss
F = L~_GD = L + (h/4) ||grad L||^2. The flows are integrated in float64 by the classical
fixed-step Runge-Kutta method (RK4), whose error ``O(h dt^4)`` is negligible against the
errors measured here when ``substeps`` is a few tens. Halving h divides the error against
the flow of L by about 4 (order 2) and against the flow of L~ by about 8 (order 3).

For SGD the same holds for the mean over all m! orderings of one epoch of m steps over the
mini-batches of a partition, against the flows of L and of
``L~_SGD = L + h/(4m) sum_j ||grad L_{B_j}||^2`` over time ``m h`` (Smith, Dherin,
Barrett and De); the mini-batches must have equal sizes so that L is the mean of the
``L_{B_j}``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from gcref._checks import check_finite_scalar, check_positive_int
from gcref.igr import (
    check_partition,
    modified_loss_gd_grad_native,
    modified_loss_sgd_grad_native,
)
from gcref.params import flatten_params, unflatten_params
from gcref.primitives import Call
from gcref.results import Record

__all__ = ["BackwardError", "gd_backward_error", "rk4_flow", "sgd_backward_error"]

DEFAULT_STEPS = (0.1, 0.05, 0.025, 0.0125)


@dataclass
class BackwardError(Record):
    """Distances between discrete steps and exact gradient flows, over several step sizes.

    Attributes
    ----------
    steps : ndarray, shape (S,)
        The learning rates h.
    error_flow : ndarray, shape (S,)
        ``||theta_discrete - Phi^L_T(theta_0)||`` (T = h for GD, m h for an SGD epoch).
    error_modified_flow : ndarray, shape (S,)
        ``||theta_discrete - Phi^{L~}_T(theta_0)||``.
    slope_flow : float
        Least-squares slope of ``log error_flow`` against ``log h``; about 2.
    slope_modified_flow : float
        The same for ``error_modified_flow``; about 3.
    """

    steps: np.ndarray
    error_flow: np.ndarray
    error_modified_flow: np.ndarray
    slope_flow: float
    slope_modified_flow: float


def rk4_flow(gradient, theta, time, substeps):
    """Integrate the gradient flow ``d theta/dt = -gradient(theta)`` by fixed-step RK4.

    Parameters
    ----------
    gradient : callable, ndarray of shape (P,) -> ndarray of shape (P,)
    theta : ndarray, shape (P,)
    time : float >= 0
    substeps : int >= 1
        Number of RK4 steps of size ``time / substeps``.

    Returns
    -------
    ndarray, shape (P,)
        ``Phi_time(theta)`` up to the RK4 error ``O(time dt^4)``.
    """
    dt = time / substeps
    for _ in range(substeps):
        k1 = -gradient(theta)
        k2 = -gradient(theta + 0.5 * dt * k1)
        k3 = -gradient(theta + 0.5 * dt * k2)
        k4 = -gradient(theta + dt * k3)
        theta = theta + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return theta


def _log_slope(steps, errors):
    return float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


def _check_steps(steps):
    steps = np.asarray(steps, dtype=np.float64)
    if steps.ndim != 1 or steps.size < 2:
        raise ValueError(f"steps must list at least two learning rates; got {steps!r}")
    if not np.all(np.isfinite(steps)) or np.any(steps <= 0):
        raise ValueError(f"steps must be finite and > 0; got {steps!r}")
    return steps


class _FlatGradients:
    """Gradients of L, L_{B} and the modified losses on flat float64 NumPy vectors."""

    def __init__(self, c):
        self.c = c
        self.like = c.params

    def _native(self, theta):
        return self.c.native_params(unflatten_params(theta, self.like))

    def _flat(self, pairs):
        return flatten_params(self.c.numpy(pairs))

    def loss(self, theta, idx=None):
        c = self.c
        X = c.nX if idx is None else c.nX[idx]
        targets = c.ntargets if idx is None else c.ntargets[idx]
        return self._flat(c.backend.loss_grad(c.mlp, self._native(theta), X, targets, c.loss))

    def modified_gd(self, theta, h):
        c = self.c
        grads = modified_loss_gd_grad_native(
            c.backend, c.mlp, self._native(theta), c.nX, c.ntargets, c.loss, h
        )
        return self._flat(grads)

    def modified_sgd(self, theta, h, batches):
        c = self.c
        grads = modified_loss_sgd_grad_native(
            c.backend, c.mlp, self._native(theta), c.nX, c.ntargets, c.loss, h, batches
        )
        return self._flat(grads)


def _checked_call(mlp, params, X, y, loss, backend):
    c = Call(mlp, params, X, backend, y, loss)
    if c.dtype != np.float64:
        raise TypeError(
            f"the backward-error check needs float64 parameters; got {c.dtype} "
            "(the O(h^3) errors are below float32 resolution)"
        )
    return c


def gd_backward_error(mlp, params, X, y, loss, steps=DEFAULT_STEPS, *, substeps=16,
                      backend="numpy"):
    """Distance of one gradient-descent step from the flows of L and of L~_GD.

    Parameters
    ----------
    mlp : gcref.MLP
    params : tuple of (W, b), float64
        The starting point theta_0.
    X : ndarray, shape (N, d)
    y : array_like
        Targets for ``loss``.
    loss : str or gcref.losses.Loss
    steps : sequence of float > 0, length S >= 2
        Learning rates h.
    substeps : int >= 1
        RK4 steps per flow.
    backend : str

    Returns
    -------
    BackwardError

    Notes
    -----
    ``||theta_1 - Phi^L_h(theta_0)|| = O(h^2)`` and
    ``||theta_1 - Phi^{L~_GD}_h(theta_0)|| = O(h^3)`` with
    ``grad L~_GD = grad L + (h/2) H grad L`` (docs/math.md section 5).

    Examples
    --------
    >>> import numpy as np, gcref
    >>> from gcref.backward_error import gd_backward_error
    >>> mlp = gcref.MLP((2, 6, 1), activation="tanh")
    >>> rng = np.random.default_rng(0)
    >>> params = mlp.init(rng, bias="normal")
    >>> X, y = rng.normal(size=(5, 2)), rng.normal(size=(5, 1))
    >>> result = gd_backward_error(mlp, params, X, y, "squared")
    >>> round(result.slope_flow), round(result.slope_modified_flow)
    (2, 3)
    """
    steps = _check_steps(steps)
    substeps = check_positive_int(substeps, "substeps")
    c = _checked_call(mlp, params, X, y, loss, backend)
    theta0 = flatten_params(c.params)
    errors, modified_errors = [], []
    with c:
        grads = _FlatGradients(c)
        g0 = grads.loss(theta0)
        for h in steps:
            theta1 = theta0 - h * g0
            flow = rk4_flow(grads.loss, theta0, h, substeps)
            modified = rk4_flow(lambda t, h=h: grads.modified_gd(t, h), theta0, h, substeps)
            errors.append(np.linalg.norm(theta1 - flow))
            modified_errors.append(np.linalg.norm(theta1 - modified))
    return _result(steps, errors, modified_errors)


def _result(steps, errors, modified_errors):
    errors = np.asarray(errors)
    modified_errors = np.asarray(modified_errors)
    return BackwardError(
        steps=steps,
        error_flow=errors,
        error_modified_flow=modified_errors,
        slope_flow=_log_slope(steps, errors),
        slope_modified_flow=_log_slope(steps, modified_errors),
    )


def sgd_backward_error(mlp, params, X, y, loss, batches, steps=DEFAULT_STEPS, *, substeps=16,
                       backend="numpy"):
    """Distance of the mean one-epoch SGD endpoint from the flows of L and of L~_SGD.

    Parameters
    ----------
    batches : sequence of m 1-D integer arrays of equal length
        A partition of ``range(N)`` into mini-batches; all ``m!`` orderings are run.
    steps, substeps, backend
        As in :func:`gd_backward_error`; every flow runs for time ``m h``.

    Returns
    -------
    BackwardError

    Notes
    -----
    An epoch in the order ``sigma`` takes ``theta <- theta - h grad L_{B_sigma(j)}(theta)``
    for j = 1..m. The mean endpoint over all orderings is ``O(h^2)`` from
    ``Phi^L_{mh}(theta_0)`` and ``O(h^3)`` from ``Phi^{L~_SGD}_{mh}(theta_0)``, where
    ``grad L~_SGD = grad L + h/(4m) sum_j 2 H_{B_j} grad L_{B_j}`` (docs/math.md section 5).
    """
    steps = _check_steps(steps)
    substeps = check_positive_int(substeps, "substeps")
    c = _checked_call(mlp, params, X, y, loss, backend)
    batches = check_partition(batches, c.X.shape[0])
    if len({idx.size for idx in batches}) != 1:
        raise ValueError(
            "batches must have equal sizes, so that L is the mean of the mini-batch losses; "
            f"got sizes {[idx.size for idx in batches]}"
        )
    m = len(batches)
    theta0 = flatten_params(c.params)
    errors, modified_errors = [], []
    with c:
        grads = _FlatGradients(c)
        for h in steps:
            h = check_finite_scalar(h, "h", positive=True)
            endpoints = []
            for order in itertools.permutations(range(m)):
                theta = theta0
                for j in order:
                    theta = theta - h * grads.loss(theta, batches[j])
                endpoints.append(theta)
            mean_endpoint = np.mean(endpoints, axis=0)
            flow = rk4_flow(grads.loss, theta0, m * h, substeps)
            modified = rk4_flow(
                lambda t, h=h: grads.modified_sgd(t, h, batches), theta0, m * h, substeps
            )
            errors.append(np.linalg.norm(mean_endpoint - flow))
            modified_errors.append(np.linalg.norm(mean_endpoint - modified))
    return _result(steps, errors, modified_errors)
