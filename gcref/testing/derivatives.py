"""Check a claimed derivative against central finite differences by dot-product tests.

For a map ``F`` and a direction ``v``, the central difference

    D_v F(x) ~ (F(x + t v) - F(x - t v)) / (2 t)

estimates the Jacobian-vector product ``J v``. A claimed vector-Jacobian product is
checked through ``<u, J v> = <J^T u, v>`` for random probes ``u`` and ``v``; a claimed
Jacobian-vector product through ``<u, J v>`` directly. One probe pair costs four calls of
``F`` (two steps, for a Richardson extrapolation) and one of the claimed derivative,
whatever the sizes, which is what makes the test usable on parameter Jacobians with
thousands of entries.

Inputs and outputs may be arrays or nested tuples/lists of arrays (parameters of an MLP,
a gradient shaped like them); they are compared entry by entry in the flattened order.

Examples
--------
>>> import numpy as np, gcref
>>> from gcref.testing import check_vjp
>>> mlp = gcref.MLP((3, 8, 2), activation="tanh")
>>> params = mlp.init(np.random.default_rng(0))
>>> X = np.random.default_rng(1).normal(size=(4, 3))
>>> check_vjp(lambda X: gcref.predict(mlp, params, X), X,
...           lambda u: gcref.input_vjp(mlp, params, X, u), np.random.default_rng(2)).passed
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gcref._checks import check_finite_scalar, check_positive_int, check_rng
from gcref.params import flatten_tree, tree_leaves, unflatten_tree

__all__ = [
    "DerivativeCheck",
    "DerivativeCheckError",
    "central_difference",
    "check_jvp",
    "check_vjp",
    "default_rtol",
    "default_step",
]

# A central difference D(t) with step t has truncation error (t^2 / 6) F''' + ... and rounding
# error about eps |F| / t. SciPy's _numdiff balances the two with t = eps^(1/3) (times the
# size of x), where both are of order eps^(2/3) relative to F and its derivatives. That
# balance assumes F''' of the size of F'; it fails for a loss l(f) of a deep network with
# large weights, whose third derivative along v, l''' (D_v f)^3 + ..., grows with the cube
# of the output's sensitivity D_v f: a logistic loss on MLP((1, 4, 1, 2, 1), identity) with
# weights up to 4.6 has D_v f ~ 100, F''' ~ 10^4 F', and the truncation of D(t) alone was
# 1.2e-6 relative, above the float64 tolerance (issue 16). The checker therefore compares
# with the Richardson extrapolation R = (4 D(t) - D(2t)) / 3, in which the t^2 terms cancel:
# its truncation is (t^4 / 30) F^(5), which leaves room for D_v f up to ~10^4 in float64,
# and its rounding error is 3/2 that of D(t). A derivative that is wrong by 0.1% (relative
# error 1e-3) still fails by three orders of magnitude in float64. In float32 the method
# cannot resolve errors much below 1%.
_RTOL = {
    np.dtype(np.float64): 1e-6,
    np.dtype(np.float32): 3e-2,
}


_ROUNDING_ULPS = 16


class DerivativeCheckError(AssertionError):
    """A claimed derivative disagrees with central finite differences."""


@dataclass(frozen=True)
class DerivativeCheck:
    """Outcome of :func:`check_vjp` or :func:`check_jvp`.

    Attributes
    ----------
    error : float
        Largest relative error over the probes (see Notes of :func:`check_vjp`).
    rtol : float
        Tolerance the error was compared with.
    step : float
        Finite-difference step ``t`` used along the unit-max-norm directions.
    passed : bool
        ``error <= rtol``.
    """

    error: float
    rtol: float
    step: float
    passed: bool


def _dtype(x):
    dtypes = {leaf.dtype for leaf in tree_leaves(x)}
    if len(dtypes) != 1 or next(iter(dtypes)) not in _RTOL:
        raise TypeError(
            f"x must hold arrays of one floating dtype (float32 or float64); got {sorted(map(str, dtypes))}"
        )
    return next(iter(dtypes))


def default_rtol(dtype):
    """Default tolerance of the checks for arrays of ``dtype`` (float32 or float64)."""
    dt = np.dtype(dtype)
    if dt not in _RTOL:
        raise TypeError(f"dtype must be float32 or float64; got {dt}")
    return _RTOL[dt]


def default_step(x):
    """Central-difference step ``eps^(1/3) max(1, ||x||_inf)`` for a unit-max-norm direction.

    Parameters
    ----------
    x : ndarray or nested tuple/list of ndarray
        The point; its dtype fixes ``eps``.
    """
    flat = flatten_tree(x)
    size = float(np.max(np.abs(flat))) if flat.size else 0.0
    return float(np.finfo(_dtype(x)).eps ** (1.0 / 3.0) * max(1.0, size))


def central_difference(fn, x, direction, *, step=None):
    """Central finite-difference estimate of the directional derivative ``J(x) v``.

    Parameters
    ----------
    fn : callable
        ``fn(x)`` returns an array or a nested tuple/list of arrays.
    x : ndarray or nested tuple/list of ndarray
    direction : same structure as ``x``
    step : float, optional
        ``t``; by default :func:`default_step` divided by ``||direction||_inf``.

    Returns
    -------
    ndarray, shape (m,)
        ``(F(x + t v) - F(x - t v)) / (2 t)``, flattened.
    """
    x_flat = flatten_tree(x)
    v_flat = flatten_tree(direction)
    if v_flat.shape != x_flat.shape:
        raise ValueError(f"direction has {v_flat.size} entries; x has {x_flat.size}")
    if step is None:
        v_size = float(np.max(np.abs(v_flat))) if v_flat.size else 0.0
        if v_size == 0.0:
            raise ValueError("direction must not be zero")
        step = default_step(x) / v_size
    plus = flatten_tree(fn(unflatten_tree(x_flat + step * v_flat, x)))
    minus = flatten_tree(fn(unflatten_tree(x_flat - step * v_flat, x)))
    return (plus - minus) / (2.0 * step)


def _probe_error(fn, x, f0, u, v, claimed_value, claimed_scale, fn_scale, rtol, dtype):
    """Error of ``claimed_value`` against ``<u, D_v F(x)>`` in units of ``rtol``, and the step.

    ``D_v F`` is the Richardson extrapolation ``(4 D(t) - D(2t)) / 3`` of two central
    differences, whose ``t^2`` truncation terms cancel (see Notes of :func:`check_vjp`).
    """
    step = default_step(x)
    direction = unflatten_tree(v, x)
    near = central_difference(fn, x, direction, step=step)
    if near.shape != u.shape:
        raise ValueError(f"fn returned {near.size} entries; the probe u has {u.size}")
    far = central_difference(fn, x, direction, step=2.0 * step)
    jv = (4.0 * near - far) / 3.0
    diff = abs(float(u @ jv) - claimed_value)
    signal = max(float(np.linalg.norm(u) * np.linalg.norm(jv)), claimed_scale)
    # Rounding noise: F(x +- t v) carry errors of a few ulps of the values F is computed
    # from, which the difference quotient magnifies by 1/t. _ROUNDING_ULPS ulps is an
    # upper bound for the short compositions checked here. The extrapolation weighs the
    # noise of D(t) by 4/3 and that of D(2t), half as large, by 1/3: 3/2 in all.
    eps = float(np.finfo(dtype).eps)
    noise = 1.5 * _ROUNDING_ULPS * eps / step * float(np.abs(u) @ np.maximum(np.abs(f0), fn_scale))
    scale = signal + noise / rtol
    if scale == 0.0:
        return (0.0 if diff == 0.0 else np.inf), step
    return diff / scale, step


def _finish(errors, step, rtol, raise_on_failure, what):
    error = float(max(errors))
    result = DerivativeCheck(error=error, rtol=rtol, step=step, passed=bool(error <= rtol))
    if raise_on_failure and not result.passed:
        raise DerivativeCheckError(
            f"{what} disagrees with central finite differences: relative error {error:.3g} "
            f"> rtol {rtol:.3g} (step {step:.3g})"
        )
    return result


def _probes(rng, n_probes, x, out_size):
    check_rng(rng)
    n_probes = check_positive_int(n_probes, "n_probes")
    size = flatten_tree(x).size
    return [(rng.normal(size=out_size), rng.normal(size=size)) for _ in range(n_probes)]


def check_vjp(fn, x, vjp, rng, *, n_probes=3, rtol=None, fn_scale=0.0, raise_on_failure=True):
    """Check a vector-Jacobian product by the dot-product test ``<u, J v> = <J^T u, v>``.

    Parameters
    ----------
    fn : callable
        The map ``F``: ``fn(x)`` returns an array or nested tuple/list of arrays (m entries).
    x : ndarray or nested tuple/list of ndarray
        The point, float32 or float64 (the checker is meant for float64).
    vjp : callable
        The claimed ``u -> J(x)^T u``: takes a cotangent shaped like ``fn(x)`` and returns
        something shaped like ``x``.
    rng : numpy.random.Generator
        Draws the Gaussian probes ``u`` (m entries) and ``v`` (shaped like ``x``).
    n_probes : int
        Number of independent probe pairs; the largest error is reported.
    rtol : float, optional
        Tolerance; :func:`default_rtol` of the dtype by default (1e-6 in float64).
    fn_scale : float
        Size of the intermediate values ``F`` is computed from, when larger than ``F``
        itself: a loss near zero computed as ``logsumexp(f) - f_y`` carries rounding
        errors of the size of ``eps |f|``, not ``eps l``. Raises the rounding floor.
    raise_on_failure : bool
        Raise :class:`DerivativeCheckError` when the error exceeds ``rtol``.

    Returns
    -------
    DerivativeCheck

    Notes
    -----
    One probe pair passes when

        |<u, D_v F> - <J^T u, v>| <= rtol * max(||u|| ||D_v F||, ||J^T u|| ||v||) + noise,
        noise = 24 (eps / t) <|u|, max(|F(x)|, fn_scale)>,

    with ``D_v F = (4 D(t) - D(2t)) / 3`` the Richardson extrapolation of the central
    differences ``D(t)`` and ``D(2t)`` of step ``t = eps^(1/3) max(1, ||x||_inf) /
    ||v||_inf``, whose truncation error is ``(t^4 / 30) F^(5)`` instead of the
    ``(t^2 / 6) F'''`` of ``D(t)`` alone (which exceeds ``rtol`` for losses of deep networks
    with large weights); ``noise`` bounds the rounding error of the extrapolation (a
    derivative that is zero is checked against it alone). The reported error is the
    left side divided by ``max(...) + noise / rtol``, so that it passes when
    ``error <= rtol``. A claimed derivative wrong by a relative ``delta`` shows up as an
    error of about ``delta |cos(u, J v)|``; random probes make that cosine of order
    ``1/sqrt(m)``, and several probes make a near-zero cosine in all of them unlikely.
    """
    dtype = _dtype(x)
    rtol = default_rtol(dtype) if rtol is None else check_finite_scalar(rtol, "rtol", positive=True)
    fn_scale = check_finite_scalar(fn_scale, "fn_scale", nonnegative=True)
    f0 = fn(x)
    f0_flat = flatten_tree(f0)
    errors, step = [], default_step(x)
    for u, v in _probes(rng, n_probes, x, f0_flat.size):
        claimed = flatten_tree(vjp(unflatten_tree(u, f0)))
        if claimed.shape != v.shape:
            raise ValueError(f"vjp returned {claimed.size} entries; x has {v.size}")
        error, step = _probe_error(fn, x, f0_flat, u, v, float(claimed @ v),
                                   float(np.linalg.norm(claimed) * np.linalg.norm(v)), fn_scale, rtol, dtype)
        errors.append(error)
    return _finish(errors, step, rtol, raise_on_failure, "the vector-Jacobian product")


def check_jvp(fn, x, jvp, rng, *, n_probes=3, rtol=None, fn_scale=0.0, raise_on_failure=True):
    """Check a Jacobian-vector product against central differences, projected on probes.

    Parameters
    ----------
    fn : callable
        The map ``F``: ``fn(x)`` returns an array or nested tuple/list of arrays (m entries).
    x : ndarray or nested tuple/list of ndarray
        The point, float32 or float64.
    jvp : callable
        The claimed ``v -> J(x) v``: takes a tangent shaped like ``x`` and returns
        something with the m entries of ``fn(x)``.
    rng : numpy.random.Generator
    n_probes : int
    rtol : float, optional
    fn_scale : float
        As in :func:`check_vjp`.
    raise_on_failure : bool

    Returns
    -------
    DerivativeCheck

    Notes
    -----
    Compares ``<u, J v>`` (claimed) with ``<u, D_v F>`` (central difference), with the
    error measure of :func:`check_vjp`. A Hessian-vector product is checked this way with
    ``fn`` the gradient.
    """
    dtype = _dtype(x)
    rtol = default_rtol(dtype) if rtol is None else check_finite_scalar(rtol, "rtol", positive=True)
    fn_scale = check_finite_scalar(fn_scale, "fn_scale", nonnegative=True)
    f0_flat = flatten_tree(fn(x))
    errors, step = [], default_step(x)
    for u, v in _probes(rng, n_probes, x, f0_flat.size):
        claimed = flatten_tree(jvp(unflatten_tree(v, x)))
        if claimed.shape != u.shape:
            raise ValueError(f"jvp returned {claimed.size} entries; fn returns {u.size}")
        error, step = _probe_error(fn, x, f0_flat, u, v, float(u @ claimed),
                                   float(np.linalg.norm(u) * np.linalg.norm(claimed)), fn_scale, rtol, dtype)
        errors.append(error)
    return _finish(errors, step, rtol, raise_on_failure, "the Jacobian-vector product")
