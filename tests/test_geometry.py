"""Arc length, hull volume, uniform sampling in the hull, graph volume and continuous
Dirichlet energy (MATH.md section 2), against slow but obviously correct references:
fine-grid polylines and composite rules, closed forms for linear models, shoelace
formulas, determinants of simplices."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gcref
from gcref.geometry import (
    _GAUSS_WEIGHTS,
    _KRONROD_WEIGHTS,
    _NODES,
    arc_length,
    graph_volume,
    hull_volume,
    polyline_length,
    sample_in_hull,
)
from gcref.testing.strategies import PARAMETER_SCALES, mlps

PIECEWISE_LINEAR = ("relu", "leaky_relu", "identity")
SMOOTH = ("tanh", "sigmoid", "softplus")


# -- strategies ---------------------------------------------------------------------------


@st.composite
def one_input_networks(draw, activation_names=PIECEWISE_LINEAR + SMOOTH, max_outputs=2):
    """``(mlp, params, a, b)``: an MLP with one input, parameters with biases, an interval."""
    mlp = draw(mlps(max_inputs=1, max_outputs=max_outputs, activation_names=activation_names))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from(PARAMETER_SCALES))
    params = mlp.init(rng, scheme="lecun_normal", scale=scale, bias="normal")
    a = draw(st.floats(-3.0, 1.0))
    b = a + draw(st.floats(0.05, 4.0))
    return mlp, params, a, b


@st.composite
def simplices(draw, max_dim=4):
    """Vertices of a random non-degenerate d-simplex, shape (d + 1, d), 2 <= d <= max_dim."""
    d = draw(st.integers(2, max_dim))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    vertices = rng.normal(size=(d + 1, d))
    # Keep the simplex comfortably non-degenerate: volume not tiny next to its size.
    edges = vertices[1:] - vertices[0]
    if abs(np.linalg.det(edges)) < 1e-3 * np.prod(np.linalg.norm(edges, axis=1)):
        vertices[1:] = vertices[0] + np.eye(d) + 0.1 * edges
    return vertices


@st.composite
def point_clouds(draw, min_dim=1, max_dim=3, max_points=12):
    """``(X, rng)``: N >= d + 1 Gaussian points in d dimensions and a generator."""
    d = draw(st.integers(min_dim, max_dim))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(d + 2, max(d + 2, max_points)))
    return rng.normal(size=(n, d)), rng


# -- references ---------------------------------------------------------------------------


def grid_polyline_length(mlp, params, a, b, cells):
    """Length of the polyline through f on a uniform grid: a lower bound on the arc length."""
    x = np.linspace(a, b, cells + 1)
    f = gcref.predict(mlp, params, x[:, None])
    return float(np.sum(np.sqrt(np.diff(x) ** 2 + np.sum(np.diff(f, axis=0) ** 2, axis=1))))


def simpson(fn, a, b, cells):
    """Composite Simpson rule of ``fn`` on ``cells`` (even) equal cells."""
    x = np.linspace(a, b, cells + 1)
    w = np.ones(cells + 1)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return float((b - a) / cells / 3.0 * np.sum(w * fn(x)))


def speed(mlp, params):
    def fn(x):
        jac = gcref.input_jacobian(mlp, params, x[:, None])
        return np.sqrt(1.0 + np.sum(jac**2, axis=(1, 2)))

    return fn


def end_to_end_weight(params):
    """W_l ... W_1 of a linear network."""
    W = params[0][0]
    for V, _ in params[1:]:
        W = V @ W
    return W


def polygon_area_and_centroid(points):
    """Shoelace area and centroid of the convex hull of 2-D points (Andrew's monotone chain)."""

    def turn(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def chain(sorted_points):
        out = []
        for p in sorted_points:
            while len(out) >= 2 and turn(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]

    ordered = sorted(map(tuple, points))
    v = np.array(chain(ordered) + chain(ordered[::-1]))  # counter-clockwise
    w = np.roll(v, -1, axis=0)
    cross = v[:, 0] * w[:, 1] - w[:, 0] * v[:, 1]
    area = cross.sum() / 2
    centroid = ((v + w) * cross[:, None]).sum(axis=0) / (6 * area)
    return area, centroid


# -- the Gauss-Kronrod rule -----------------------------------------------------------------


def test_gauss_kronrod_rule_degrees_of_exactness():
    # K15 integrates polynomials of degree <= 22 exactly, G7 of degree <= 13; the symmetric
    # rules integrate odd powers exactly, so the even powers decide.
    for p in range(0, 26, 2):
        exact = (1.0 - (-1.0) ** (p + 1)) / (p + 1)
        kronrod = _KRONROD_WEIGHTS @ _NODES**p
        gauss = _GAUSS_WEIGHTS @ _NODES**p
        assert (abs(kronrod - exact) < 1e-14) == (p <= 22), p
        assert (abs(gauss - exact) < 1e-14) == (p <= 13), p


# -- arc length ---------------------------------------------------------------------------


@given(one_input_networks(PIECEWISE_LINEAR), st.integers(0, 2**32 - 1))
def test_exact_arc_length_breakpoints_are_the_kinks(network, seed):
    mlp, params, a, b = network
    result = arc_length(mlp, params, interval=(a, b), backend="numpy")
    assert result.method == "exact" and result.error == 0.0
    t = np.concatenate([[a], result.breakpoints, [b]])
    assert np.all(np.diff(t) > 0)
    assert result.n_pieces == t.size - 1
    f = gcref.predict(mlp, params, t[:, None])
    scale = 1.0 + np.max(np.abs(f))

    # f is linear between consecutive breakpoints: random interior points lie on the chords.
    rng = np.random.default_rng(seed)
    frac = rng.uniform(size=(t.size - 1, 3))
    x = t[:-1, None] + frac * np.diff(t)[:, None]
    fx = gcref.predict(mlp, params, x.reshape(-1, 1)).reshape(*x.shape, -1)
    chord = f[:-1, None, :] + frac[:, :, None] * np.diff(f, axis=0)[:, None, :]
    np.testing.assert_allclose(fx, chord, rtol=0, atol=1e-10 * scale)

    # ... and the slope changes at every breakpoint (beyond the rounding of the chord slopes).
    width = np.diff(t)
    slopes = np.diff(f, axis=0) / width[:, None]
    noise = 8 * np.finfo(float).eps * (scale + np.max(np.abs(t)) * (1 + np.abs(slopes).max())) / width
    jump = np.linalg.norm(slopes[1:] - slopes[:-1], axis=1)
    assert np.all(jump > noise[1:] + noise[:-1])

    # The length is the sum of the chords, and an inscribed fine polyline is at most as long.
    chords = np.sum(np.sqrt(width**2 + np.sum(np.diff(f, axis=0) ** 2, axis=1)))
    assert result.value == pytest.approx(chords, rel=1e-10)
    fine = grid_polyline_length(mlp, params, a, b, 2**14)
    assert fine <= result.value * (1 + 1e-12)
    assert result.value - fine <= 1e-3 * result.value


@given(one_input_networks(PIECEWISE_LINEAR + SMOOTH), st.integers(2, 12), st.integers(0, 2**32 - 1))
def test_arc_length_is_at_least_the_interpolating_polyline(network, n, seed):
    mlp, params, _, _ = network
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2.0, 2.0, size=(n, 1))
    result = arc_length(mlp, params, x)
    assert result.interval == (x.min(), x.max())
    lower = polyline_length(x, gcref.predict(mlp, params, x))
    assert result.value >= lower * (1 - 1e-12) - result.error

    # A random piecewise-linear interpolant: the polyline through the data and extra points.
    y = rng.normal(size=n)
    extra_x = rng.uniform(x.min(), x.max(), size=5)
    extra_y = rng.normal(scale=3.0, size=5)
    through_more = polyline_length(np.concatenate([x[:, 0], extra_x]), np.concatenate([y, extra_y]))
    assert through_more >= polyline_length(x, y) * (1 - 1e-12)


@given(
    st.lists(st.integers(1, 4), min_size=0, max_size=2),
    st.integers(1, 2),
    st.floats(-3.0, 3.0),
    st.floats(0.0, 5.0),
    st.sampled_from(["exact", "adaptive"]),
    st.integers(0, 2**32 - 1),
)
def test_arc_length_of_a_linear_function(hidden, k, a, width, method, seed):
    mlp = gcref.MLP((1, *hidden, k), activation="identity")
    params = mlp.init(np.random.default_rng(seed), bias="normal", scale=2.0)
    w = end_to_end_weight(params)[:, 0]
    result = arc_length(mlp, params, interval=(a, a + width), method=method)
    assert result.value == pytest.approx(width * math.sqrt(1 + w @ w), rel=1e-12, abs=1e-14)
    assert result.converged


def test_polyline_length_of_known_shapes():
    # Two 3-4-5 triangles, given out of order, and a flat duplicate point.
    x = np.array([6.0, 0.0, 3.0, 3.0])
    y = np.array([0.0, 0.0, 4.0, 4.0])
    assert polyline_length(x, y) == pytest.approx(10.0, rel=1e-15)
    assert polyline_length(x[:, None], np.stack([y, 0 * y], axis=1)) == pytest.approx(10.0, rel=1e-15)
    assert polyline_length(np.array([1.0]), np.array([2.0])) == 0.0
    with pytest.raises(ValueError, match="no function interpolates"):
        polyline_length(np.array([0.0, 0.0]), np.array([1.0, 2.0]))


@given(one_input_networks(SMOOTH))
def test_adaptive_arc_length_within_its_error_bound(network):
    mlp, params, a, b = network
    result = arc_length(mlp, params, interval=(a, b), method="adaptive")
    assert result.converged
    rtol = gcref.tolerance(np.float64)[0]
    assert result.error <= rtol * max(result.value, b - a)
    fine = simpson(speed(mlp, params), a, b, 2**12)
    coarse = simpson(speed(mlp, params), a, b, 2**11)
    assert abs(result.value - fine) <= result.error + abs(fine - coarse) + 1e-13 * fine
    # Every inscribed polyline is shorter.
    assert grid_polyline_length(mlp, params, a, b, 64) <= result.value + result.error


def test_adaptive_arc_length_reports_when_it_stops_early():
    mlp = gcref.MLP((1, 16, 16, 1), activation="tanh")
    params = mlp.init(np.random.default_rng(0), scale=3.0, bias="normal")
    with pytest.warns(RuntimeWarning, match="max_subintervals"):
        result = arc_length(mlp, params, interval=(-3.0, 3.0), rtol=1e-14, max_subintervals=3)
    assert not result.converged
    reference = simpson(speed(mlp, params), -3.0, 3.0, 2**16)
    assert result.error > 1e-14 * result.value
    assert abs(result.value - reference) <= result.error


# -- hull volume and uniform sampling ------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_hull_volume_of_boxes(d):
    rng = np.random.default_rng(d)
    corners = np.array(np.meshgrid(*[[0.0, 1.0]] * d)).reshape(d, -1).T
    inside = rng.uniform(size=(10, d))
    assert hull_volume(np.concatenate([corners, inside])) == pytest.approx(1.0, rel=1e-12)
    sides = rng.uniform(0.5, 2.0, size=d)
    assert hull_volume(corners * sides - 3.0) == pytest.approx(np.prod(sides), rel=1e-12)


@given(simplices(), st.integers(0, 2**32 - 1))
def test_simplex_volume_and_uniform_samples(vertices, seed):
    d = vertices.shape[1]
    rng = np.random.default_rng(seed)
    inside = rng.dirichlet(np.ones(d + 1), size=5) @ vertices
    X = np.concatenate([vertices, inside])
    volume = abs(np.linalg.det(vertices[1:] - vertices[0])) / math.factorial(d)
    assert hull_volume(X) == pytest.approx(volume, rel=1e-10)

    n = 4000
    points = sample_in_hull(X, n, rng)
    assert points.shape == (n, d)
    # Barycentric coordinates of every sample are >= 0: the samples lie in the simplex.
    bary = np.linalg.solve((vertices[1:] - vertices[0]).T, (points - vertices[0]).T).T
    bary = np.concatenate([1 - bary.sum(axis=1, keepdims=True), bary], axis=1)
    assert np.all(bary >= -1e-9)
    # Uniform in a simplex: barycentric coordinates have mean 1/(d+1), variance d/((d+1)^2 (d+2)).
    std = math.sqrt(d / ((d + 1) ** 2 * (d + 2)))
    assert np.all(np.abs(bary.mean(axis=0) - 1 / (d + 1)) <= 5 * std / math.sqrt(n))


@given(point_clouds(min_dim=2, max_dim=2, max_points=15))
def test_polygon_area_and_centroid_of_samples(cloud):
    X, rng = cloud
    area, centroid = polygon_area_and_centroid(X)
    assert hull_volume(X) == pytest.approx(area, rel=1e-10)
    n = 4000
    points = sample_in_hull(X, n, rng)
    # The samples lie in the hull (every facet inequality holds) ...
    from scipy.spatial import ConvexHull

    facets = ConvexHull(X).equations
    assert np.all(points @ facets[:, :-1].T + facets[:, -1] <= 1e-9)
    # ... and their mean is the centroid, within five standard errors per coordinate.
    stderr = points.std(axis=0, ddof=1) / math.sqrt(n)
    assert np.all(np.abs(points.mean(axis=0) - centroid) <= 5 * stderr)


def test_degenerate_hulls_are_clear_errors():
    with pytest.raises(ValueError, match="at least d \\+ 1"):
        hull_volume(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="lower-dimensional"):
        hull_volume(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    with pytest.raises(ValueError, match="single point"):
        hull_volume(np.ones((3, 1)))


@pytest.mark.parametrize("d", [3, 5])
def test_samples_fill_a_cube_uniformly(d):
    # The cube's facets are coplanar quadrilaterals, triangulated by Qhull: its cones from
    # the centre must still tile it with the right volumes for the samples to be uniform.
    rng = np.random.default_rng(d)
    corners = np.array(np.meshgrid(*[[0.0, 1.0]] * d)).reshape(d, -1).T
    X = np.concatenate([rng.uniform(size=(20, d)), corners])
    n = 20_000
    points = sample_in_hull(X, n, rng)
    assert np.all((points >= -1e-12) & (points <= 1 + 1e-12))
    # Uniform on [0, 1]^d: each coordinate has mean 1/2, variance 1/12, and the
    # coordinates are uncorrelated; five standard errors each.
    assert np.all(np.abs(points.mean(axis=0) - 0.5) <= 5 * math.sqrt(1 / 12 / n))
    # The variance of a uniform coordinate's sample variance is (1/80 - 1/144) / n.
    assert np.all(np.abs(points.var(axis=0) - 1 / 12) <= 5 * math.sqrt((1 / 80 - 1 / 144) / n))
    corr = np.corrcoef(points.T)[np.triu_indices(d, 1)]
    assert np.all(np.abs(corr) <= 5 / math.sqrt(n))


def test_hull_volume_matches_one_qhull_call():
    from scipy.spatial import ConvexHull

    X = np.random.default_rng(0).normal(size=(300, 4))
    assert hull_volume(X) == pytest.approx(ConvexHull(X).volume, rel=1e-12)


def test_many_dimensions_answer_or_refuse_within_seconds():
    # 64 Gaussian points in 16 dimensions have millions of hull facets (the upper bound
    # theorem allows ~10^11): the exact hull used to run for minutes without a word.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 16))
    mlp = gcref.MLP((16, 4, 1), activation="tanh")
    params = mlp.init(rng)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"max_facets=50000.*Raise max_facets.*geometric_complexity"):
        graph_volume(mlp, params, X, rng=rng, n_samples=64)
    # A second or two alone; generous for a shared machine.
    assert time.perf_counter() - start < 20
    # The budget is the caller's: a small one refuses a small case, at most one step past it.
    with pytest.raises(ValueError, match=r"has (\d+) facets.*max_facets=200") as info:
        hull_volume(rng.normal(size=(40, 5)), max_facets=200)
    assert int(re.search(r"has (\d+) facets", str(info.value)).group(1)) <= 200 * 10
    # Within the budget, 16 dimensions answer: the hull of a simplex with a point inside.
    simplex = np.concatenate([np.zeros((1, 16)), np.eye(16), np.full((1, 16), 0.01)])
    result = graph_volume(mlp, params, simplex, rng=rng, n_samples=64)
    assert result.volume == pytest.approx(1 / math.factorial(16), rel=1e-10)
    with pytest.raises(ValueError, match="max_facets must be >= 1"):
        hull_volume(X, max_facets=0)
    with pytest.raises(TypeError, match="max_facets must be an integer"):
        sample_in_hull(X, 4, rng, max_facets=1e5)


def test_missing_scipy_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.spatial", None)
    with pytest.raises(ImportError, match=r"pip install 'gcref\[scipy\]'"):
        hull_volume(np.eye(3, 2))
    # One input needs no SciPy.
    assert hull_volume(np.array([[0.0], [2.5]])) == 2.5


def test_importing_geometry_imports_no_scipy():
    code = "import sys, gcref.geometry; assert 'scipy' not in sys.modules, 'scipy imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- graph volume and continuous Dirichlet energy ------------------------------------------


@given(point_clouds(min_dim=1, max_dim=3), st.integers(1, 3), st.sampled_from(["auto", "monte_carlo"]))
def test_graph_volume_of_a_linear_model(cloud, k, method):
    X, rng = cloud
    d = X.shape[1]
    mlp = gcref.MLP((d, k), activation="identity")
    params = mlp.init(rng, bias="normal")
    W = params[0][0]
    volume = hull_volume(X)
    result = graph_volume(mlp, params, X, rng=rng, n_samples=64, batch_size=16, method=method)
    # The integrands are constant: every estimate equals the closed form up to rounding.
    assert result.volume == pytest.approx(volume, rel=1e-12)
    assert result.dirichlet_energy == pytest.approx(np.sum(W**2) * volume / 2, rel=1e-10)
    omega = math.sqrt(np.linalg.det(np.eye(d) + W.T @ W)) * volume
    if k == 1:
        assert omega == pytest.approx(math.sqrt(1 + np.sum(W**2)) * volume, rel=1e-12)
    assert result.graph_volume == pytest.approx(omega, rel=1e-10)
    assert result.dirichlet_energy_error <= 1e-10 * max(result.dirichlet_energy, 1.0)
    assert result.gap == pytest.approx(result.graph_volume - volume - result.dirichlet_energy, abs=1e-12)
    assert result.method == ("monte_carlo" if method == "monte_carlo" or d > 1 else "exact")


@given(
    st.integers(1, 2),
    st.sampled_from(("tanh", "softplus", "relu")),
    st.sampled_from(PARAMETER_SCALES),
    st.integers(0, 2**32 - 1),
)
def test_monte_carlo_matches_a_grid_rule_on_the_square(k, activation, scale, seed):
    rng = np.random.default_rng(seed)
    mlp = gcref.MLP((2, 6, k), activation=activation)
    params = mlp.init(rng, scale=scale, bias="normal")
    X = np.concatenate([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], rng.uniform(size=(4, 2))])
    result = graph_volume(mlp, params, X, rng=rng, n_samples=2048)
    assert result.volume == pytest.approx(1.0, rel=1e-12)

    cells = 80
    mid = (np.arange(cells) + 0.5) / cells
    grid = np.stack(np.meshgrid(mid, mid), axis=-1).reshape(-1, 2)
    jac = gcref.input_jacobian(mlp, params, grid)
    omega = np.mean(np.sqrt(np.linalg.det(np.eye(2) + np.swapaxes(jac, 1, 2) @ jac)))
    energy = np.mean(0.5 * np.sum(jac**2, axis=(1, 2)))
    # The grid rule's error (O(1/cells^2), or O(1/cells) across ReLU kinks) is far below the
    # Monte Carlo standard errors; five of them bound the estimate's deviation.
    slack = 1e-3 * (1 + energy)
    assert abs(result.graph_volume - omega) <= 5 * result.graph_volume_error + slack
    assert abs(result.dirichlet_energy - energy) <= 5 * result.dirichlet_energy_error + slack
    # min(k, d) <= 2: the graph volume never exceeds its first-order expansion.
    assert result.gap <= 1e-12 * result.graph_volume


@given(one_input_networks(PIECEWISE_LINEAR + SMOOTH, max_outputs=1), st.integers(0, 2**32 - 1))
def test_one_input_graph_volume_is_the_arc_length(network, seed):
    mlp, params, a, b = network
    X = np.array([[a], [b], [0.5 * (a + b)]])
    result = graph_volume(mlp, params, X)
    length = arc_length(mlp, params, X)
    assert result.volume == b - a
    assert result.graph_volume == pytest.approx(length.value, rel=1e-9)
    def half_squared_slope(x):
        return 0.5 * gcref.input_jacobian(mlp, params, x[:, None])[:, 0, 0] ** 2

    energy = simpson(half_squared_slope, a, b, 2**11)
    coarse = simpson(half_squared_slope, a, b, 2**10)
    if mlp.activation.piecewise_linear:
        # Simpson across kinks is only first order: compare loosely, the pieces are exact.
        assert result.dirichlet_energy == pytest.approx(energy, rel=1e-2, abs=1e-2)
    else:
        allowed = result.dirichlet_energy_error + abs(energy - coarse) + 1e-12
        assert abs(result.dirichlet_energy - energy) <= allowed
    assert result.gap <= 1e-12 * result.graph_volume

    # Monte Carlo on the interval agrees within five standard errors.
    rng = np.random.default_rng(seed)
    mc = graph_volume(mlp, params, X, rng=rng, n_samples=2048, method="monte_carlo")
    rounding = 1e-9 * (1 + result.graph_volume)
    assert abs(mc.graph_volume - result.graph_volume) <= 5 * mc.graph_volume_error + rounding
    assert abs(mc.dirichlet_energy - result.dirichlet_energy) <= 5 * mc.dirichlet_energy_error + rounding


# -- every backend -------------------------------------------------------------------------


def test_backends_agree_with_numpy(autodiff_backend):
    backend = autodiff_backend
    relu = gcref.MLP((1, 4, 4, 1), activation="relu")
    tanh = gcref.MLP((1, 4, 1), activation="tanh")
    wide = gcref.MLP((2, 3, 2), activation="softplus")
    # Eager JAX dispatches (and the first time compiles) every operation of every call:
    # 200 random networks of three integrals each would take minutes, 30 cover the property.
    examples = settings.default.max_examples
    if backend == "jax":
        examples = min(30, examples)

    @settings(max_examples=examples)
    @given(st.integers(0, 2**32 - 1))
    def check(seed):
        rng = np.random.default_rng(seed)
        params = relu.init(rng, bias="normal")
        ours = arc_length(relu, params, interval=(-2.0, 2.0), backend=backend)
        ref = arc_length(relu, params, interval=(-2.0, 2.0))
        assert ours.value == pytest.approx(ref.value, rel=1e-10)
        np.testing.assert_allclose(ours.breakpoints, ref.breakpoints, rtol=0, atol=1e-10)

        params = tanh.init(rng, bias="normal", scale=2.0)
        ours = arc_length(tanh, params, interval=(-2.0, 2.0), rtol=1e-6, backend=backend)
        ref = arc_length(tanh, params, interval=(-2.0, 2.0), rtol=1e-6)
        assert abs(ours.value - ref.value) <= ours.error + ref.error + 1e-12 * ref.value

        params = wide.init(rng, bias="normal")
        X = rng.normal(size=(5, 2))
        # The same seed draws the same points, so only the Jacobians' rounding differs.
        ours = graph_volume(wide, params, X, rng=np.random.default_rng(seed), n_samples=32,
                            backend=backend)
        ref = graph_volume(wide, params, X, rng=np.random.default_rng(seed), n_samples=32)
        for field in ("volume", "graph_volume", "dirichlet_energy", "gap", "graph_volume_error"):
            assert getattr(ours, field) == pytest.approx(getattr(ref, field), rel=1e-9, abs=1e-12), field

    check()


# -- input checks ----------------------------------------------------------------------------


def test_bad_arguments_are_clear_errors():
    mlp = gcref.MLP((1, 3, 1), activation="tanh")
    params = mlp.init(np.random.default_rng(0))
    X = np.array([[0.0], [1.0]])
    with pytest.raises(TypeError, match="exactly one of X"):
        arc_length(mlp, params)
    with pytest.raises(TypeError, match="exactly one of X"):
        arc_length(mlp, params, X, interval=(0.0, 1.0))
    with pytest.raises(ValueError, match="a <= b"):
        arc_length(mlp, params, interval=(1.0, 0.0))
    with pytest.raises(ValueError, match="piecewise-linear"):
        arc_length(mlp, params, X, method="exact")
    with pytest.raises(ValueError, match="unknown method"):
        arc_length(mlp, params, X, method="simpson")
    with pytest.raises(ValueError, match="rtol must be > 0"):
        arc_length(mlp, params, X, rtol=0.0)
    two = gcref.MLP((2, 1))
    with pytest.raises(ValueError, match="one input"):
        arc_length(two, two.init(np.random.default_rng(0)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="rng is required"):
        graph_volume(two, two.init(np.random.default_rng(0)), np.eye(3, 2))
    with pytest.raises(ValueError, match="n_samples must be >= 2"):
        graph_volume(mlp, params, X, rng=np.random.default_rng(0), n_samples=1, method="monte_carlo")
    assert arc_length(mlp, params, interval=(0.5, 0.5)).value == 0.0
