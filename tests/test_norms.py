"""Norms, the normalised network and margins (MATH.md section 6), against brute force.

References: explicit enumeration of every path, loops over units and examples, NumPy's
own matrix norms, and central finite differences for the gradients of the native norms.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from gcref.testing.strategies import fixed_shape_problems, problems

import gcref
from gcref.norms import (
    group_norm,
    group_norm_native,
    layer_norms,
    layer_norms_native,
    margin,
    margins,
    normalized_params,
    path_norm,
    path_norm_native,
    product_norm,
    product_norm_native,
)
from gcref.testing import check_vjp, default_step

HOMOGENEOUS = ("relu", "leaky_relu", "identity")
EXPONENTS = (0.5, 1.0, 1.5, 2.0, 3.0)
# A few fixed architectures: eager JAX compiles each operation once per shape, so reusing
# shapes keeps the cross-backend properties fast while the values vary per example.
FIXED_SIZES = ((3, 2, 2), (2, 3, 2, 1))
# The backend fixtures hold a backend's name, which no example can change.
with_backend_fixture = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
)


def enumerate_paths(params, bias):
    """Every path as a list of edges, by brute force.

    An edge is ``("W", i, v, u)`` for ``W_i[v, u]`` or ``("b", i, v)`` for ``b_i[v]``
    (layers i = 1..l). Paths start at an input, or with ``bias`` at the bias of a unit,
    and end at an output.
    """
    sizes = [params[0][0].shape[1]] + [W.shape[0] for W, _ in params]
    depth = len(params)
    paths = []
    for units in itertools.product(*(range(n) for n in sizes)):
        paths.append([("W", i, units[i], units[i - 1]) for i in range(1, depth + 1)])
    if bias:
        for start in range(1, depth + 1):
            for units in itertools.product(*(range(n) for n in sizes[start:])):
                paths.append([("b", start, units[0])] + [
                    ("W", i, units[i - start], units[i - start - 1]) for i in range(start + 1, depth + 1)
                ])
    return paths


def edge_weight(params, edge):
    """The weight of one edge of :func:`enumerate_paths`."""
    if edge[0] == "W":
        _, i, v, u = edge
        return params[i - 1][0][v, u]
    _, i, v = edge
    return params[i - 1][1][v]


def brute_path_norm(params, p, bias):
    total = sum(
        np.prod([abs(edge_weight(params, e)) ** p for e in path]) for path in enumerate_paths(params, bias)
    )
    return total ** (1.0 / p)


def bias_free(params):
    return tuple((W, np.zeros_like(b)) for W, b in params)


def native_params(backend, params):
    return [(backend.asarray(W), backend.asarray(b)) for W, b in params]


tiny_problems = problems(max_depth=3, max_width=3, max_inputs=3, max_outputs=2)


@given(tiny_problems, st.sampled_from(EXPONENTS), st.booleans())
def test_path_norm_equals_enumeration_of_every_path(problem, p, bias):
    got = path_norm(problem.mlp, problem.params, p, bias=bias)
    assert np.isclose(got, brute_path_norm(problem.params, p, bias), rtol=1e-10, atol=0)


def test_path_norm_example_by_hand():
    mlp = gcref.MLP((1, 2, 1))
    params = ((np.array([[1.0], [2.0]]), np.array([0.5, 0.0])), (np.array([[3.0, -4.0]]), np.array([1.0])))
    assert path_norm(mlp, params, p=1, bias=False) == 11.0
    # bias paths: 0.5 * 3 through the hidden unit, and the output bias 1.
    assert path_norm(mlp, params, p=1) == 11.0 + 1.5 + 1.0
    assert np.isclose(path_norm(mlp, params, p=2, bias=False), np.sqrt(9.0 + 64.0))


def brute_group_norm(params, p, q, bias):
    groups = []
    for W, b in params:
        for v in range(W.shape[0]):
            weights = list(W[v]) + ([b[v]] if bias else [])
            groups.append(sum(abs(w) ** p for w in weights))
    if q == np.inf:
        return max(groups) ** (1.0 / p)
    return sum(g ** (q / p) for g in groups) ** (1.0 / q)


@given(tiny_problems, st.sampled_from(EXPONENTS), st.sampled_from((0.5, 1.0, 2.0, 3.0, np.inf)), st.booleans())
def test_group_norm_equals_loop_over_units(problem, p, q, bias):
    got = group_norm(problem.mlp, problem.params, p, q, bias=bias)
    assert np.isclose(got, brute_group_norm(problem.params, p, q, bias), rtol=1e-10, atol=0)


@given(tiny_problems)
def test_group_norm_2_2_is_the_euclidean_norm_and_layer_norms_match_numpy(problem):
    params = problem.params
    flat = gcref.flatten_params(params)
    assert np.isclose(group_norm(problem.mlp, params, 2, 2), np.linalg.norm(flat), rtol=1e-12)
    fro = layer_norms(problem.mlp, params, "frobenius")
    spectral = layer_norms(problem.mlp, params, "spectral")
    np.testing.assert_allclose(fro, [np.linalg.norm(W, "fro") for W, _ in params], rtol=1e-12)
    np.testing.assert_allclose(spectral, [np.linalg.norm(W, 2) for W, _ in params], rtol=1e-12)
    assert np.isclose(product_norm(problem.mlp, params), np.prod(fro), rtol=1e-12)


@given(problems(max_depth=4, max_width=6, activation_names=HOMOGENEOUS))
def test_f_equals_product_norm_times_normalised_network(problem):
    mlp, params = problem.mlp, bias_free(problem.params)
    normalized = normalized_params(mlp, params)
    for V, _ in normalized:
        assert np.isclose(np.linalg.norm(V), 1.0, rtol=1e-12)
    f = gcref.predict(mlp, params, problem.X)
    f_tilde = gcref.predict(mlp, normalized, problem.X)
    rho = product_norm(mlp, params)
    np.testing.assert_allclose(f, rho * f_tilde, rtol=1e-9, atol=1e-12 * rho * np.abs(f_tilde).max())


def test_f_differs_from_rho_f_tilde_for_tanh():
    # The identity needs positive homogeneity: a check that it can fail.
    mlp = gcref.MLP((2, 4, 1), activation="tanh")
    params = bias_free(mlp.init(np.random.default_rng(3), scale=2.0))
    X = np.random.default_rng(4).normal(size=(5, 2))
    f = gcref.predict(mlp, params, X)
    rho_f_tilde = product_norm(mlp, params) * gcref.predict(mlp, normalized_params(mlp, params), X)
    assert not np.allclose(f, rho_f_tilde, rtol=1e-3)


def test_normalised_network_refuses_biases():
    mlp = gcref.MLP((2, 3, 1))
    params = mlp.init(np.random.default_rng(0), bias="normal")
    with pytest.raises(ValueError, match="bias-free"):
        normalized_params(mlp, params)
    zero_layer = ((np.zeros((3, 2)), np.zeros(3)), (np.ones((1, 3)), np.zeros(1)))
    with pytest.raises(ValueError, match="W_1 is zero"):
        normalized_params(mlp, zero_layer)


@given(problems(max_depth=3, max_width=5, min_outputs=1, max_outputs=4), st.booleans())
def test_margins_equal_loop_over_examples(problem, normalized):
    mlp, params, X = problem.mlp, bias_free(problem.params), problem.X
    k, n = mlp.output_dim, X.shape[0]
    if k == 1:
        y = problem.rng.choice([-1, 1], size=n)
    else:
        y = problem.rng.integers(0, k, size=n)
    net = normalized_params(mlp, params) if normalized else params
    out = gcref.predict(mlp, net, X)
    expected = []
    for i in range(n):
        if k == 1:
            expected.append(y[i] * out[i, 0])
        else:
            expected.append(out[i, y[i]] - max(out[i, j] for j in range(k) if j != y[i]))
    got = margins(mlp, params, X, y, normalized=normalized)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert margin(mlp, params, X, y, normalized=normalized) == min(got)


def test_margin_rejects_wrong_labels():
    rng = np.random.default_rng(0)
    binary = gcref.MLP((2, 3, 1))
    params = bias_free(binary.init(rng))
    X = rng.normal(size=(3, 2))
    with pytest.raises(ValueError, match=r"\{-1, \+1\}"):
        margins(binary, params, X, np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="shape"):
        margins(binary, params, X, np.array([1, -1]))
    multi = gcref.MLP((2, 3, 3))
    params = bias_free(multi.init(rng))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        margins(multi, params, X, np.array([0, 1, 3]))
    with pytest.raises(TypeError, match="integer"):
        margins(multi, params, X, np.array([0.0, 1.0, 2.0]))


@pytest.mark.parametrize("bad", [0, -1.0, np.nan, np.inf])
def test_exponents_must_be_positive(bad):
    mlp = gcref.MLP((2, 3, 1))
    params = mlp.init(np.random.default_rng(0))
    with pytest.raises(ValueError, match="p must"):
        path_norm(mlp, params, p=bad)
    with pytest.raises(ValueError, match="p must"):
        group_norm(mlp, params, p=bad)
    if bad != np.inf:
        with pytest.raises(ValueError, match="q must"):
            group_norm(mlp, params, q=bad)
    with pytest.raises(ValueError, match="kind"):
        layer_norms(mlp, params, kind="nuclear")


def native_norms(backend, mlp, params, p):
    """Every differentiable norm at once, stacked into one native vector."""
    values = [
        path_norm_native(backend, mlp, params, p),
        path_norm_native(backend, mlp, params, p, bias=False),
        group_norm_native(backend, mlp, params, p, 2.0),
        group_norm_native(backend, mlp, params, p, np.inf),
        product_norm_native(backend, mlp, params),
    ]
    spectral = layer_norms_native(backend, mlp, params, "spectral")
    return backend.stack(values + [spectral[i] for i in range(mlp.depth)], 0)


def numpy_norms(mlp, params, p):
    return np.array(
        [
            path_norm(mlp, params, p),
            path_norm(mlp, params, p, bias=False),
            group_norm(mlp, params, p, 2.0),
            group_norm(mlp, params, p, np.inf),
            product_norm(mlp, params),
            *layer_norms(mlp, params, "spectral"),
        ]
    )


@with_backend_fixture
@given(fixed_shape_problems(FIXED_SIZES), st.sampled_from((1.0, 3.0)))
def test_norms_agree_across_backends(backend, problem, p):
    mlp, params = problem.mlp, problem.params
    expected = numpy_norms(mlp, params, p)
    got = np.array(
        [
            path_norm(mlp, params, p, backend=backend),
            path_norm(mlp, params, p, bias=False, backend=backend),
            group_norm(mlp, params, p, 2.0, backend=backend),
            group_norm(mlp, params, p, np.inf, backend=backend),
            product_norm(mlp, params, backend=backend),
            *layer_norms(mlp, params, "spectral", backend=backend),
        ]
    )
    rtol, atol = gcref.tolerance(np.float64)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


def pairs(arrays):
    return [(arrays[i], arrays[i + 1]) for i in range(0, len(arrays), 2)]


GRADIENT_MLP = gcref.MLP((2, 3, 2, 2))


@functools.lru_cache(maxsize=None)
def differentiable_norms(backend_name, p):
    """The bundle of native norms of ``GRADIENT_MLP`` as a function of the flat parameters.

    JAX gets it through ``jax.jit``: eager JAX re-traces the reverse pass on every call
    (a quarter of a second here), a compiled function is reused across examples. One
    architecture and two exponents keep the number of compilations at two.
    """
    backend = gcref.get_backend(backend_name)

    def norms(*arrays):
        return native_norms(backend, GRADIENT_MLP, pairs(arrays), p)

    if backend_name == "jax":
        import jax

        return jax.jit(norms)
    return norms


#: Distance from a kink, in finite-difference steps, below which a draw is not checked.
KINK_MARGIN_STEPS = 1000


def kink_distance(params, p):
    """How far the norms' arguments are from the points where a norm is not differentiable.

    ``|w|^p`` with p = 1 has a kink at w = 0 (path and group norms); the q = inf group norm
    where the two largest unit groups tie; the spectral (and product) norm where a layer's
    two largest singular values tie. A finite-difference stencil that crosses one of these
    measures a one-sided slope, not the gradient.
    """
    flat = np.concatenate([np.ravel(a) for pair in params for a in pair])
    distances = [np.min(np.abs(flat))] if p == 1.0 else []
    groups = np.sort(np.concatenate(
        [np.sum(np.abs(W) ** p, axis=1) + np.abs(b) ** p for W, b in params]))
    distances.append(groups[-1] - groups[-2])
    for W, _ in params:
        s = np.linalg.svd(W, compute_uv=False)
        if s.size > 1:
            distances.append(s[0] - s[1])
    return float(min(distances))


@with_backend_fixture
@given(st.integers(0, 2**32 - 1), st.sampled_from((1.0, 3.0)))
def test_native_norm_gradients_match_finite_differences(autodiff_backend, seed, p):
    rng = np.random.default_rng(seed)
    params = GRADIENT_MLP.init(rng, bias="normal")
    flat = tuple(a for pair in params for a in pair)
    # Found by the thorough profile: a last-layer bias of 2.6e-5 put |b| = 0 inside the
    # stencil of the p = 1 path norm. Away from the kinks the gradient is checked as usual.
    assume(kink_distance(params, p) > KINK_MARGIN_STEPS * default_step(flat))
    backend = gcref.get_backend(autodiff_backend)
    fn = differentiable_norms(autodiff_backend, p)

    def vjp(u):
        with backend.scope(np.float64):
            grads = backend.vjp(fn, tuple(backend.asarray(a) for a in flat), backend.asarray(u))
            return tuple(backend.to_numpy(g) for g in grads)

    # One random probe pair per example: the examples themselves supply the repetitions.
    check_vjp(lambda arrays: numpy_norms(GRADIENT_MLP, pairs(arrays), p), flat, vjp, rng, n_probes=1)
