"""Arc length, graph volume and continuous Dirichlet energy (MATH.md section 2; seed 000, eqs. 2-4).

For one input (d = 1) the graph of f over [a, b] is a curve whose length

    L(f) = int_a^b sqrt(1 + ||f'(x)||^2) dx

is computed exactly from the breakpoints of a piecewise-linear network, or by adaptive
Gauss-Kronrod quadrature with an error bound for smooth activations. For d inputs the
graph volume and the continuous Dirichlet energy over the feature polytope X_D (the convex
hull of the inputs)

    Omega_D(f) = int_{X_D} sqrt(det(I_d + J^T J)) dx,     DE(f) = 1/2 int_{X_D} ||J||_F^2 dx

are estimated by Monte Carlo with points drawn uniformly in the hull. For d = 1 both are
computed on the interval [min x_n, max x_n] by the deterministic one-input methods.

The hull is exact (Qhull), and its size is what costs: N points in d dimensions can have
up to about N^(d/2) facets (the upper bound theorem), and random data comes close to it
once N is a few times d (N = 64 points in d = 10: 2 * 10^5 facets, seconds; d = 16: far
more). The hull is therefore built point by point and abandoned with a ``ValueError`` as
soon as it has more than ``max_facets`` facets (default :data:`MAX_FACETS`), so that time and
memory stay proportional to ``max_facets``. For data in many dimensions the data-sampled
quantities (:func:`gcref.geometric_complexity`, :func:`gcref.dirichlet_energy`) cost one
Jacobian per example whatever d is.

Network values and Jacobians come from :func:`gcref.forward` and :func:`gcref.input_jacobian`
with the chosen backend, so every function works in every backend. SciPy (convex hulls) is
imported only by the functions that need it.

Index conventions: ``N`` data points, ``d`` inputs, ``k`` outputs; ``X`` has shape (N, d).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from gcref._checks import (
    check_finite_scalar,
    check_float_array,
    check_positive_int,
    check_rng,
    not_an_mlp,
)
from gcref.mlp import MLP
from gcref.primitives import forward, input_jacobian
from gcref.tolerances import tolerance

__all__ = [
    "MAX_FACETS",
    "ArcLength",
    "GraphVolume",
    "arc_length",
    "graph_volume",
    "hull_volume",
    "polyline_length",
    "sample_in_hull",
]

ARC_LENGTH_METHODS = ("auto", "exact", "adaptive")
GRAPH_VOLUME_METHODS = ("auto", "monte_carlo")

#: Default facet budget of the convex hulls: 50,000 facets take a second or two in ten
#: dimensions (less in fewer) and tens of megabytes.
MAX_FACETS = 50_000

# Gauss-Kronrod G7-K15 on [-1, 1] (the QUADPACK qk15 constants). Kronrod nodes
# +-_XGK[j]; the Gauss nodes are the odd-indexed ones, _XGK[1], _XGK[3], _XGK[5] and 0.
_XGK = np.array([
    0.991455371120812639206854697526329,
    0.949107912342758524526189684047851,
    0.864864423359769072789712788640926,
    0.741531185599394439863864773280788,
    0.586087235467691130294144845693013,
    0.405845151377397166906606412076961,
    0.207784955007898467600689403773245,
    0.0,
])
_WGK = np.array([
    0.022935322010529224963732008058970,
    0.063092092629978553290700663189204,
    0.104790010322250183839876322541518,
    0.140653259715525918745189590510238,
    0.169004726639267902826583426598550,
    0.190350578064785409913256402421014,
    0.204432940075298892414161999234649,
    0.209482141084727828012999174891714,
])
_WG = np.array([
    0.129484966168869693270611432679082,
    0.279705391489276667901467771423780,
    0.381830050505118944950369775488975,
    0.417959183673469387755102040816327,
])
# The 15 nodes from -1 to 1, their Kronrod weights, and the Gauss weights (0 off the Gauss nodes).
_NODES = np.concatenate([-_XGK[:-1], [0.0], _XGK[-2::-1]])
_KRONROD_WEIGHTS = np.concatenate([_WGK[:-1], [_WGK[-1]], _WGK[-2::-1]])
_GAUSS_WEIGHTS = np.zeros(15)
_GAUSS_WEIGHTS[[1, 3, 5, 7, 9, 11, 13]] = np.concatenate([_WG[:-1], [_WG[-1]], _WG[-2::-1]])


@dataclass(frozen=True)
class ArcLength:
    """The arc length of a one-input network on an interval.

    Attributes
    ----------
    value : float
        ``int_a^b sqrt(1 + ||f'(x)||^2) dx``.
    error : float
        Bound on ``|value - exact|``: 0 for the exact method (up to rounding), the
        estimated quadrature error for the adaptive method.
    method : {"exact", "adaptive"}
    n_pieces : int
        Linear pieces of f on [a, b] (exact method) or quadrature subintervals (adaptive).
    n_evaluations : int
        Points at which the network or its Jacobian was evaluated.
    interval : tuple of float
        ``(a, b)``.
    breakpoints : ndarray, shape (n_pieces - 1,)
        Interior points of (a, b) where the slope of f changes (exact method; empty otherwise).
    converged : bool
        False when the adaptive method stopped at ``max_subintervals`` before reaching
        its tolerance; ``error`` is then still an honest estimate.
    """

    value: float
    error: float
    method: str
    n_pieces: int
    n_evaluations: int
    interval: tuple
    breakpoints: np.ndarray = field(default_factory=lambda: np.empty(0))
    converged: bool = True


@dataclass(frozen=True)
class GraphVolume:
    """Graph volume, continuous Dirichlet energy and hull volume over the feature polytope.

    Attributes
    ----------
    volume : float
        ``Vol(X_D)``, exact.
    graph_volume : float
        ``Omega_D(f) = int_{X_D} sqrt(det(I_d + J^T J)) dx`` (seed 000, eq. 2).
    graph_volume_error : float
    dirichlet_energy : float
        ``DE(f) = 1/2 int_{X_D} ||J||_F^2 dx`` (seed 000, eq. 4).
    dirichlet_energy_error : float
    gap : float
        ``Omega_D(f) - (Vol(X_D) + DE(f))``; first order says it is small (seed 000, eq. 3).
        With singular values sigma_j of J its integrand is
        ``prod_j sqrt(1 + sigma_j^2) - 1 - sum_j sigma_j^2 / 2``: never positive when
        ``min(k, d) <= 2`` (AM-GM), but positive for large J otherwise.
    gap_error : float
    method : {"monte_carlo", "exact", "adaptive"}
        ``monte_carlo``: the ``*_error`` fields are standard errors. ``exact`` and
        ``adaptive`` (one input): they are error bounds as in :class:`ArcLength`.
    n_samples : int
        Monte Carlo points, or evaluations of the one-input methods.
    """

    volume: float
    graph_volume: float
    graph_volume_error: float
    dirichlet_energy: float
    dirichlet_energy_error: float
    gap: float
    gap_error: float
    method: str
    n_samples: int


def polyline_length(x, y):
    """Length of the polyline through the points ``(x_n, y_n)`` taken in increasing ``x``.

    This is the shortest curve that interpolates the points, so it bounds the arc length
    of every function through them from below (MATH.md section 2; seed 000, Fig. 1).

    Parameters
    ----------
    x : array_like, shape (N,) or (N, 1)
    y : array_like, shape (N,) or (N, k)

    Returns
    -------
    float
        ``sum_n sqrt((x_{n+1} - x_n)^2 + ||y_{n+1} - y_n||^2)`` after sorting by ``x``.

    Raises
    ------
    ValueError
        When two points share an ``x`` but not their ``y``: no function interpolates them.
    """
    x = check_float_array(x, "x")
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (N,) or (N, 1) with N >= 1; got {x.shape}")
    y = check_float_array(y, "y")
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must have shape ({x.shape[0]},) or ({x.shape[0]}, k), a row per entry of x; "
            f"got {y.shape}"
        )
    order = np.lexsort((y[:, 0], x))
    x, y = x[order], y[order]
    dx, dy = np.diff(x), np.diff(y, axis=0)
    if np.any((dx == 0) & np.any(dy != 0, axis=1)):
        raise ValueError("x has repeated values with different y: no function interpolates them")
    return float(np.sum(np.sqrt(dx**2 + np.sum(dy**2, axis=1))))


def arc_length(mlp, params, X=None, *, interval=None, method="auto", rtol=None,
               max_subintervals=10_000, backend="numpy"):
    """Arc length of the graph of a one-input network on [a, b] (MATH.md section 2).

    Parameters
    ----------
    mlp : MLP
        With one input (d = 1); several outputs give the length of the curve
        ``x -> (x, f(x))`` in R^{1 + k}.
    params : tuple of (W, b)
    X : array_like, shape (N, 1), optional
        Data whose range ``[min x_n, max x_n]`` is the interval.
    interval : tuple (a, b), optional
        The interval itself, ``a <= b``. Give exactly one of ``X`` and ``interval``.
    method : {"auto", "exact", "adaptive"}
        ``exact`` needs piecewise-linear activations (relu, leaky relu, identity, ...)
        and finds every breakpoint of f; ``adaptive`` is Gauss-Kronrod quadrature;
        ``auto`` chooses ``exact`` whenever it applies.
    rtol : float, optional
        Adaptive method: the estimated error is at most ``rtol * max(value, b - a)``.
        Default: the comparison tolerance of the parameters' dtype.
    max_subintervals : int
        Adaptive method: stop (with a ``RuntimeWarning``) after this many subintervals.
    backend : str or Backend

    Returns
    -------
    ArcLength

    Notes
    -----
    ``L(f) = int_a^b sqrt(1 + ||f'(x)||^2) dx`` (MATH.md section 2, seed 000 section 2).

    Exact method: a unit's pre-activation is linear in x on every piece where all earlier
    layers are linear, so layer by layer the pieces are split where a pre-activation
    crosses one of its activation's kinks, at the crossing of the linear interpolant.
    On the final pieces f is linear; the length is ``sum_j (t_{j+1} - t_j) sqrt(1 + ||s_j||^2)``
    with ``s_j`` the Jacobian at the piece's midpoint. Candidate breakpoints where the
    slope does not change (a unit whose kink does not reach the output) are not reported.

    Adaptive method: G7-K15 Gauss-Kronrod on every subinterval, all subintervals of a
    round in one batch; the error estimate ``|K15 - G7|`` (plus a rounding term) is
    conservative for smooth integrands, but not at a kink that falls between the outermost
    node and the end of a subinterval: for piecewise-linear networks use ``exact``.
    Subintervals whose error exceeds their share of the tolerance, in proportion to their
    width, are bisected.
    """
    a, b = _interval(mlp, params, X, interval)
    dtype = mlp.check_params(params)[0][0].dtype
    if method not in ARC_LENGTH_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {ARC_LENGTH_METHODS}")
    method = _resolve_one_input_method(mlp, method)
    if method == "exact":
        pieces = _linear_pieces(mlp, params, a, b, backend)
        speed = np.sqrt(1.0 + pieces.slope_sq)
        return ArcLength(
            value=float(np.sum(pieces.widths * speed)),
            error=0.0,
            method="exact",
            n_pieces=pieces.breakpoints.size + 1,
            n_evaluations=pieces.n_evaluations,
            interval=(a, b),
            breakpoints=pieces.breakpoints,
        )
    rtol = _default_rtol(rtol, dtype)
    max_subintervals = check_positive_int(max_subintervals, "max_subintervals")

    def speed(x):
        jac = _jacobians(mlp, params, x[:, None], backend)
        return np.sqrt(1.0 + np.sum(jac**2, axis=(1, 2)))[:, None]

    quad = _adaptive_gauss_kronrod(speed, a, b, rtol, max_subintervals, dtype)
    return ArcLength(
        value=float(quad.values[0]),
        error=float(quad.errors[0]),
        method="adaptive",
        n_pieces=quad.n_subintervals,
        n_evaluations=quad.n_evaluations,
        interval=(a, b),
        converged=quad.converged,
    )


def hull_volume(X, *, max_facets=MAX_FACETS):
    """Volume of the convex hull of the rows of ``X`` (the feature polytope X_D).

    Parameters
    ----------
    X : array_like, shape (N, d)
    max_facets : int
        Give up (``ValueError``) when the hull has more facets than this; the time and
        memory of the hull are proportional to its facets (module docstring).

    Returns
    -------
    float
        ``max - min`` for d = 1 (no SciPy needed); the Qhull volume otherwise.

    Raises
    ------
    ValueError
        Fewer than d + 1 points, points that lie in a lower-dimensional affine subspace, or
        a hull with more than ``max_facets`` facets.
    ImportError
        For d >= 2 without SciPy (``pip install 'gcref[scipy]'``).
    """
    return _Polytope(_check_points(X), max_facets).volume


def sample_in_hull(X, n, rng, *, max_facets=MAX_FACETS):
    """Points drawn independently and uniformly in the convex hull of the rows of ``X``.

    Parameters
    ----------
    X : array_like, shape (N, d)
    n : int
        Number of points.
    rng : numpy.random.Generator
    max_facets : int
        As in :func:`hull_volume`.

    Returns
    -------
    ndarray, shape (n, d)

    Notes
    -----
    The hull is cut into cones, one per (triangulated) facet, with a common apex c, the
    centroid of the hull's vertices: each cone is the simplex spanned by c and the facet's
    d vertices, and since the hull is convex and c is interior the cones tile it. A cone is
    chosen with probability proportional to its volume, and a point in it with barycentric
    weights drawn from the flat Dirichlet distribution, which is uniform on a simplex.
    For d = 1 the points are uniform on ``[min, max]``.
    """
    X = _check_points(X)
    n = check_positive_int(n, "n")
    check_rng(rng)
    return _Polytope(X, max_facets).sample(n, rng)


def graph_volume(mlp, params, X, *, rng=None, n_samples=65_536, batch_size=4096,
                 method="auto", rtol=None, max_facets=MAX_FACETS, backend="numpy"):
    """Graph volume and continuous Dirichlet energy over the feature polytope X_D.

    Parameters
    ----------
    mlp : MLP
    params : tuple of (W, b)
    X : array_like, shape (N, d)
        The inputs of the data set; X_D is their convex hull (N >= d + 1 points in
        general position).
    rng : numpy.random.Generator
        Required for Monte Carlo (d >= 2, or ``method="monte_carlo"``).
    n_samples : int >= 2
        Monte Carlo points.
    batch_size : int
        Points per Jacobian evaluation: memory stays bounded by ``batch_size * k * d``.
    method : {"auto", "monte_carlo"}
        ``auto``: Monte Carlo for d >= 2; for d = 1 the exact piecewise-linear or
        adaptive quadrature methods of :func:`arc_length` on ``[min x_n, max x_n]``.
    rtol : float, optional
        One input, adaptive quadrature: as in :func:`arc_length`.
    max_facets : int
        Monte Carlo: the facet budget of the hull, as in :func:`hull_volume`. The hull is
        built once; its cost, not the sampling's, is what grows quickly with d.
    backend : str or Backend

    Returns
    -------
    GraphVolume

    Raises
    ------
    ValueError
        Besides bad arguments: a hull with more than ``max_facets`` facets (many points in
        many dimensions). Raise ``max_facets`` (time and memory grow in proportion), or
        measure the data-sampled :func:`gcref.geometric_complexity` instead.

    Notes
    -----
    MATH.md section 2, seed 000 eqs. 2-4:
    ``Omega_D(f) = int sqrt(det(I_d + J^T J)) dx``, computed as ``det(I_k + J J^T)``
    (the same value) when k < d, through ``slogdet``; ``DE(f) = 1/2 int ||J||_F^2 dx``;
    first order, ``Omega_D ~ Vol(X_D) + DE``. Monte Carlo: for uniform points u_m in X_D,
    ``int g = Vol * mean_m g(u_m)`` with standard error ``Vol * std_m g(u_m) / sqrt(n)``;
    the gap's standard error uses the per-point differences, so it is not inflated by
    the noise that Omega and DE share.
    """
    if not isinstance(mlp, MLP):
        raise not_an_mlp(mlp)
    dtype = mlp.check_params(params)[0][0].dtype
    X = mlp.check_inputs(X, dtype)
    if method not in GRAPH_VOLUME_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {GRAPH_VOLUME_METHODS}")
    if mlp.input_dim == 1 and method == "auto":
        return _graph_volume_one_input(mlp, params, X, rtol, backend)
    if rng is None:
        raise TypeError(
            "rng is required for the Monte Carlo graph volume: pass rng=numpy.random.default_rng(seed)"
        )
    check_rng(rng)
    n_samples = check_positive_int(n_samples, "n_samples", minimum=2)
    batch_size = check_positive_int(batch_size, "batch_size")
    hull = _Polytope(_check_points(X), max_facets)
    volume = hull.volume
    omega, energy = [], []
    for start in range(0, n_samples, batch_size):
        points = hull.sample(min(batch_size, n_samples - start), rng)
        jac = _jacobians(mlp, params, points, backend)
        omega.append(_graph_volume_density(jac))
        energy.append(0.5 * np.sum(jac**2, axis=(1, 2)))
    omega, energy = np.concatenate(omega), np.concatenate(energy)

    def mean_and_stderr(values):
        return volume * values.mean(), volume * values.std(ddof=1) / np.sqrt(values.size)

    omega_mean, omega_err = mean_and_stderr(omega)
    energy_mean, energy_err = mean_and_stderr(energy)
    _, gap_err = mean_and_stderr(omega - 1.0 - energy)
    return GraphVolume(
        volume=volume,
        graph_volume=float(omega_mean),
        graph_volume_error=float(omega_err),
        dirichlet_energy=float(energy_mean),
        dirichlet_energy_error=float(energy_err),
        gap=float(omega_mean - (volume + energy_mean)),
        gap_error=float(gap_err),
        method="monte_carlo",
        n_samples=n_samples,
    )


# -- one input: exact pieces and adaptive quadrature ------------------------------------


@dataclass(frozen=True)
class _Pieces:
    """The linear pieces of a one-input piecewise-linear network on [a, b]."""

    widths: np.ndarray  # (m,) widths of the pieces found (before merging)
    slope_sq: np.ndarray  # (m,) ||f'||^2 on each piece
    breakpoints: np.ndarray  # interior points where the slope changes
    n_evaluations: int


def _linear_pieces(mlp, params, a, b, backend):
    dtype = mlp.check_params(params)[0][0].dtype
    t = np.array([a, b], dtype=dtype)
    n_evaluations = 0
    if a == b:
        return _Pieces(np.zeros(0), np.zeros(0), np.empty(0, dtype=dtype), 0)
    for i in range(mlp.depth):
        kinks = mlp.layer_activation(i).kinks
        if not kinks:
            continue
        z = _evaluate(lambda x, i=i: forward(mlp, params, x, backend=backend).zs[i], t[:, None])
        n_evaluations += t.size
        new = [t]
        for kink in kinks:
            lo, hi = z[:-1] - kink, z[1:] - kink
            piece, unit = np.nonzero(lo * hi < 0)
            frac = lo[piece, unit] / (lo[piece, unit] - hi[piece, unit])
            new.append(t[piece] + frac * (t[piece + 1] - t[piece]))
        t = np.unique(np.clip(np.concatenate(new), a, b))
    mid = 0.5 * (t[:-1] + t[1:])
    jac = _jacobians(mlp, params, mid[:, None], backend)[:, :, 0]  # (m, k)
    n_evaluations += mid.size
    # A breakpoint is kept when the slope really changes there; rounding-level changes
    # (a unit whose kink is masked downstream) do not count.
    rtol = tolerance(dtype)[0]
    change = np.linalg.norm(jac[1:] - jac[:-1], axis=1)
    norms = np.linalg.norm(jac, axis=1)
    scale = np.maximum(1.0, np.maximum(norms[1:], norms[:-1]))
    keep = change > rtol * scale
    return _Pieces(
        widths=np.diff(t).astype(np.float64),
        slope_sq=np.sum(jac.astype(np.float64) ** 2, axis=1),
        breakpoints=t[1:-1][keep],
        n_evaluations=n_evaluations,
    )


@dataclass(frozen=True)
class _Quadrature:
    values: np.ndarray  # (c,)
    errors: np.ndarray  # (c,)
    n_subintervals: int
    n_evaluations: int
    converged: bool


def _gauss_kronrod(integrand, lo, hi, dtype):
    """K15 and G7 integrals and the K15 integral of |g| on each [lo_i, hi_i], shape (m, c)."""
    center, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    x = (center[:, None] + half[:, None] * _NODES).astype(dtype)  # (m, 15)
    g = integrand(x.ravel()).astype(np.float64).reshape(*x.shape, -1)  # (m, 15, c)
    kronrod = half[:, None] * np.einsum("j,mjc->mc", _KRONROD_WEIGHTS, g)
    gauss = half[:, None] * np.einsum("j,mjc->mc", _GAUSS_WEIGHTS, g)
    absolute = half[:, None] * np.einsum("j,mjc->mc", _KRONROD_WEIGHTS, np.abs(g))
    return kronrod, gauss, absolute


def _adaptive_gauss_kronrod(integrand, a, b, rtol, max_subintervals, dtype):
    """Integrate ``integrand(x: (m,)) -> (m, c)`` over [a, b] to ``rtol * max(|I_c|, b - a)``."""
    length = b - a
    lo, hi = np.array([a], dtype=np.float64), np.array([b], dtype=np.float64)
    accepted_value, accepted_error = 0.0, 0.0
    n_accepted, n_evaluations = 0, 0
    eps = np.finfo(dtype).eps
    while True:
        kronrod, gauss, absolute = _gauss_kronrod(integrand, lo, hi, dtype)
        n_evaluations += 15 * lo.size
        # |K15 - G7| bounds the K15 error generously for smooth integrands; the second
        # term covers the rounding of the integrand and of the sum.
        error = np.abs(kronrod - gauss) + 50.0 * eps * absolute
        value = accepted_value + kronrod.sum(axis=0)
        total_error = accepted_error + error.sum(axis=0)
        target = rtol * np.maximum(np.abs(value), length)
        if length == 0 or np.all(total_error <= target):
            return _Quadrature(value, total_error, n_accepted + lo.size, n_evaluations, True)
        share = target * ((hi - lo) / length)[:, None]
        accept = np.all(error <= share, axis=1)
        accepted_value = accepted_value + kronrod[accept].sum(axis=0)
        accepted_error = accepted_error + error[accept].sum(axis=0)
        n_accepted += int(accept.sum())
        lo, hi = lo[~accept], hi[~accept]
        if n_accepted + 2 * lo.size > max_subintervals:
            warnings.warn(
                f"adaptive quadrature stopped at max_subintervals={max_subintervals} with "
                f"estimated error {total_error.max():.3g} above the target {target.min():.3g}; "
                "raise max_subintervals or rtol",
                RuntimeWarning,
                stacklevel=3,
            )
            return _Quadrature(value, total_error, n_accepted + lo.size, n_evaluations, False)
        mid = 0.5 * (lo + hi)
        lo, hi = np.concatenate([lo, mid]), np.concatenate([mid, hi])


def _graph_volume_one_input(mlp, params, X, rtol, backend):
    a, b = float(X.min()), float(X.max())
    dtype = X.dtype
    if _resolve_one_input_method(mlp, "auto") == "exact":
        pieces = _linear_pieces(mlp, params, a, b, backend)
        omega = float(np.sum(pieces.widths * np.sqrt(1.0 + pieces.slope_sq)))
        energy = float(0.5 * np.sum(pieces.widths * pieces.slope_sq))
        errors, method, n = (0.0, 0.0), "exact", pieces.n_evaluations
    else:
        rtol = _default_rtol(rtol, dtype)

        def densities(x):
            jac = _jacobians(mlp, params, x[:, None], backend)
            sq = np.sum(jac**2, axis=(1, 2))
            return np.stack([np.sqrt(1.0 + sq), 0.5 * sq], axis=1)

        quad = _adaptive_gauss_kronrod(densities, a, b, rtol, 10_000, dtype)
        omega, energy = (float(v) for v in quad.values)
        errors, method, n = tuple(float(e) for e in quad.errors), "adaptive", quad.n_evaluations
    return GraphVolume(
        volume=b - a,
        graph_volume=omega,
        graph_volume_error=errors[0],
        dirichlet_energy=energy,
        dirichlet_energy_error=errors[1],
        gap=omega - (b - a + energy),
        gap_error=errors[0] + errors[1],
        method=method,
        n_samples=n,
    )


# -- helpers ------------------------------------------------------------------------------


def _graph_volume_density(jac):
    """``sqrt(det(I_d + J^T J))`` per row of ``jac`` (n, k, d), via the smaller Gram matrix."""
    jac = jac.astype(np.float64)
    _, k, d = jac.shape
    if k == 1 or d == 1:
        return np.sqrt(1.0 + np.sum(jac**2, axis=(1, 2)))
    gram = jac @ np.swapaxes(jac, 1, 2) if k < d else np.swapaxes(jac, 1, 2) @ jac
    _, logdet = np.linalg.slogdet(np.eye(gram.shape[1]) + gram)
    return np.exp(0.5 * logdet)


def _evaluate(fn, points):
    """``fn(points)`` on a batch padded to a power-of-two length.

    Eager JAX compiles each operation once per array shape; padding keeps the number of
    distinct shapes logarithmic in the number of points.
    """
    m = points.shape[0]
    size = max(16, 1 << (m - 1).bit_length())
    padded = np.concatenate([points, np.repeat(points[-1:], size - m, axis=0)])
    return fn(padded)[:m]


def _jacobians(mlp, params, points, backend):
    return _evaluate(lambda x: input_jacobian(mlp, params, x, backend=backend), points)


def _interval(mlp, params, X, interval):
    if not isinstance(mlp, MLP):
        raise not_an_mlp(mlp)
    if mlp.input_dim != 1:
        raise ValueError(
            f"mlp must have one input for the arc length (d = 1); this one has d = {mlp.input_dim}"
        )
    dtype = mlp.check_params(params)[0][0].dtype
    if (X is None) == (interval is None):
        raise TypeError("give exactly one of X (data whose range is the interval) and interval=(a, b)")
    if X is not None:
        X = mlp.check_inputs(X, dtype)
        return float(X.min()), float(X.max())
    if not isinstance(interval, (tuple, list)) or len(interval) != 2:
        raise TypeError(f"interval must be a pair (a, b); got {interval!r}")
    a = check_finite_scalar(interval[0], "interval[0]")
    b = check_finite_scalar(interval[1], "interval[1]")
    if a > b:
        raise ValueError(f"interval must have a <= b; got ({a}, {b})")
    return a, b


def _resolve_one_input_method(mlp, method):
    piecewise_linear = all(mlp.layer_activation(i).piecewise_linear for i in range(mlp.depth))
    if method == "auto":
        return "exact" if piecewise_linear else "adaptive"
    if method == "exact" and not piecewise_linear:
        raise ValueError(
            "method='exact' needs piecewise-linear activations (relu, leaky_relu, identity); "
            f"this network uses {mlp.activation.name} and {mlp.output_activation.name}: "
            "use method='adaptive'"
        )
    return method


def _default_rtol(rtol, dtype):
    if rtol is None:
        return tolerance(dtype)[0]
    return check_finite_scalar(rtol, "rtol", positive=True)


def _check_points(X):
    X = check_float_array(X, "X", ndim=2)
    n, d = X.shape
    if d < 1 or n < d + 1:
        raise ValueError(
            f"X must hold at least d + 1 = {d + 1} points in {d} dimensions; got shape {X.shape}"
        )
    if d == 1 and X.min() == X.max():
        raise ValueError("X spans a single point: its hull has no length")
    return X


class _Polytope:
    """The convex hull of the rows of ``X``: its volume, and uniform samples from it.

    Built once per public call; ``sample`` draws from the cones of the facets (see
    :func:`sample_in_hull`).
    """

    def __init__(self, X, max_facets):
        max_facets = check_positive_int(max_facets, "max_facets")
        self.dtype = X.dtype
        d = X.shape[1]
        self.interval = (X.min(), X.max())
        self.facets = None
        if d == 1:
            self.volume = float(X.max() - X.min())
            return
        hull = _budgeted_hull(X.astype(np.float64), max_facets)
        self.volume = float(hull.volume)
        self.points = hull.points
        self.facets = hull.simplices  # (F, d) vertex indices of the triangulated facets
        self.apex = self.points[hull.vertices].mean(axis=0)
        volumes = np.concatenate([
            np.abs(np.linalg.det(self.points[self.facets[i:i + 4096]] - self.apex))
            for i in range(0, self.facets.shape[0], 4096)
        ])
        self.probabilities = volumes / volumes.sum()

    def sample(self, n, rng):
        if self.facets is None:
            return rng.uniform(*self.interval, size=(n, 1)).astype(self.dtype)
        d = self.apex.size
        chosen = rng.choice(self.probabilities.size, size=n, p=self.probabilities)
        weights = rng.dirichlet(np.ones(d + 1), size=n)
        facet_points = np.einsum("nv,nvd->nd", weights[:, 1:], self.points[self.facets[chosen]])
        return (weights[:, :1] * self.apex + facet_points).astype(self.dtype)


def _budgeted_hull(points, max_facets):
    """Qhull's hull of ``points`` (N, d), grown in steps and abandoned past ``max_facets``.

    Each step takes the hull of the previous hull's vertices and the next points (the
    hull of a set is the hull of its hull's vertices with the rest). The first d + 1 points
    span the space; a step adds as many points as the facet growth of the last step
    predicts (as a rate per point) to use half the remaining budget in logarithm, at least
    one and at most as many as are in already, so a hull whose facets multiply with
    every point (many dimensions) is stopped within a step or two of the budget while one
    that grows slowly (few dimensions) takes few steps.
    """
    spatial = _scipy_spatial()
    n, d = points.shape
    first = _spanning_points(points)
    rest = points[np.setdiff1d(np.arange(n), first)]
    vertices, n_facets, used, step = points[first], d + 1, d + 1, 1
    while True:
        if n_facets > max_facets:
            raise ValueError(
                f"the convex hull of X (N = {n} points in d = {d} dimensions) has {n_facets} "
                f"facets after {used} of its points, more than max_facets={max_facets}: exact "
                "hulls grow like N^(d/2). Raise max_facets (time and memory grow in "
                "proportion), use fewer points or inputs, or measure the data-sampled "
                "gcref.geometric_complexity / gcref.dirichlet_energy, whose cost does not "
                "depend on d"
            )
        chunk = rest[used - d - 1:used - d - 1 + step]
        try:
            hull = spatial.ConvexHull(np.concatenate([vertices, chunk]))
        except RuntimeError as err:  # scipy.spatial.QhullError, a RuntimeError in every SciPy
            raise ValueError(
                f"the points of X do not span a {d}-dimensional hull "
                "(they lie in a lower-dimensional affine subspace, or are too few)"
            ) from err
        growth = hull.simplices.shape[0] / n_facets
        n_facets, used = hull.simplices.shape[0], used + chunk.shape[0]
        if used == n and n_facets <= max_facets:
            return hull
        vertices = hull.points[hull.vertices]
        per_point = growth ** (1.0 / chunk.shape[0])
        affordable = np.inf
        if per_point > 1:
            affordable = 0.5 * np.log(max(max_facets / n_facets, 1.0)) / np.log(per_point)
        step = int(min(max(1.0, affordable), used))


def _spanning_points(points):
    """Indices of d + 1 affinely independent rows of ``points`` (N, d), chosen far apart.

    Greedy: the row farthest from the mean, then repeatedly the row farthest from the
    affine span of those chosen so far.
    """
    d = points.shape[1]
    centered = points - points.mean(axis=0)
    scale = np.max(np.linalg.norm(centered, axis=1))
    chosen = [int(np.argmax(np.linalg.norm(centered, axis=1)))]
    residual = points - points[chosen[0]]
    for _ in range(d):
        distances = np.linalg.norm(residual, axis=1)
        best = int(np.argmax(distances))
        if distances[best] <= 1e-10 * scale:
            raise ValueError(
                f"the points of X do not span a {d}-dimensional hull "
                "(they lie in a lower-dimensional affine subspace, or are too few)"
            )
        direction = residual[best] / distances[best]
        residual = residual - np.outer(residual @ direction, direction)
        chosen.append(best)
    return np.array(chosen)


def _scipy_spatial():
    try:
        from scipy import spatial
    except ImportError as err:
        raise ImportError(
            "convex hulls in two or more dimensions need SciPy: pip install 'gcref[scipy]'"
        ) from err
    return spatial
