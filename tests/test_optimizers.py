"""Path-SGD, NMGD, unit-norm gradient descent and the plain loop (MATH.md section 6).

References: gamma_p(w, e) by enumeration of every path through e (seed 002), exact
rescaling algebra, the null space and pseudo-inverse of linear least squares, and
hand-written loops.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from gcref.testing.strategies import problems
from test_norms import edge_weight, enumerate_paths

import gcref
from gcref.optimizers import NMGD, GradientDescent, PathSGD, UnitNormGD, minimize
from gcref.rescaling import random_rescaling, rescale

HOMOGENEOUS = ("relu", "leaky_relu", "identity")


def brute_gammas(params, p, bias):
    """``gamma_p(w, e) = (sum over paths through e of prod_{e' != e} |w_e'|^p)^(2/p)``."""
    totals = {}
    for path in enumerate_paths(params, bias):
        powers = [abs(edge_weight(params, e)) ** p for e in path]
        for j, e in enumerate(path):
            totals[e] = totals.get(e, 0.0) + np.prod(powers[:j] + powers[j + 1 :])
    out = []
    for i, (W, b) in enumerate(params, 1):
        gW = np.array([[totals[("W", i, v, u)] for u in range(W.shape[1])] for v in range(W.shape[0])])
        gb = np.array([totals.get(("b", i, v), 0.0) for v in range(W.shape[0])])
        out.append((gW ** (2 / p), gb ** (2 / p)))
    return out


@given(problems(max_depth=3, max_width=3, max_inputs=3, max_outputs=2), st.sampled_from((0.5, 1.0, 2.0, 3.0)))
def test_path_sgd_scales_equal_enumeration_of_paths_through_each_edge(problem, p):
    for bias in (True, False):
        got = PathSGD(0.1, p, train_biases=bias).scales(problem.params)
        for (sW, sb), (rW, rb) in zip(got, brute_gammas(problem.params, p, bias)):
            np.testing.assert_allclose(sW, rW, rtol=1e-10, atol=0)
            if bias:
                np.testing.assert_allclose(sb, rb, rtol=1e-10, atol=0)


def edge_ratios(mlp, factors):
    """``c_v / c_u`` for every weight ``W_i[v, u]`` and ``c_v`` for every bias."""
    into = [*factors, np.ones(mlp.output_dim)]
    outof = [np.ones(mlp.input_dim), *factors]
    return [(c_out[:, None] / c_in[None, :], c_out) for c_out, c_in in zip(into, outof)]


@given(problems(max_depth=4, max_width=5, max_outputs=3, activation_names=HOMOGENEOUS),
       st.sampled_from((1.0, 2.0, 3.0)), st.booleans())
def test_path_sgd_updates_of_rescaled_networks_stay_rescaled_and_gd_updates_do_not(problem, p, bias):
    mlp, params, X = problem.mlp, problem.params, problem.X
    y = problem.targets("squared")
    rescaled, factors = random_rescaling(mlp, params, problem.rng)
    grads = gcref.loss_grad(mlp, params, X, y, "squared")
    grads_rescaled = gcref.loss_grad(mlp, rescaled, X, y, "squared")

    path_sgd = PathSGD(0.05, p, train_biases=bias)
    new = path_sgd.update(mlp, params, grads, 1)
    new_rescaled = path_sgd.update(mlp, rescaled, grads_rescaled, 1)
    for (W, b), (V, a) in zip(rescale(mlp, new, factors), new_rescaled):
        np.testing.assert_allclose(V, W, rtol=1e-9, atol=1e-12 * (1 + np.abs(W).max()))
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * (1 + np.abs(b).max()))
    f = gcref.predict(mlp, new, X)
    np.testing.assert_allclose(gcref.predict(mlp, new_rescaled, X), f, rtol=1e-8, atol=1e-11 * (1 + np.abs(f).max()))

    # Gradient descent: rescale(new) - new_rescaled = lr g (1/r - r) for an edge scaled by r,
    # which is non-zero wherever a rescaled edge has a gradient.
    lr = 0.05
    gd = GradientDescent(lr)
    new = gd.update(mlp, params, grads, 1)
    new_rescaled = gd.update(mlp, rescaled, grads_rescaled, 1)
    for (W, b), (V, a), (gW, gb), (rW, rb) in zip(
        rescale(mlp, new, factors), new_rescaled, grads, edge_ratios(mlp, factors)
    ):
        np.testing.assert_allclose(W - V, lr * gW * (1 / rW - rW), rtol=1e-6, atol=1e-10 * (1 + np.abs(W).max()))
        np.testing.assert_allclose(b - a, lr * gb * (1 / rb - rb), rtol=1e-6, atol=1e-10 * (1 + np.abs(b).max()))


def test_gradient_descent_of_rescaled_networks_computes_different_functions():
    rng = np.random.default_rng(11)
    mlp = gcref.MLP((3, 8, 8, 1))
    params = mlp.init(rng, bias="normal")
    X = rng.normal(size=(10, 3))
    y = rng.normal(size=(10, 1))
    rescaled, _ = random_rescaling(mlp, params, rng, spread=8.0)
    outputs = {}
    for name, optimizer in (("gd", GradientDescent(0.05)), ("path_sgd", PathSGD(0.05))):
        a = minimize(mlp, params, X, y, "squared", optimizer, 5)
        b = minimize(mlp, rescaled, X, y, "squared", optimizer, 5)
        outputs[name] = (gcref.predict(mlp, a, X), gcref.predict(mlp, b, X))
    f, g = outputs["path_sgd"]
    np.testing.assert_allclose(g, f, rtol=1e-8)
    f, g = outputs["gd"]
    assert np.max(np.abs(f - g)) > 1e-2 * np.max(np.abs(f))


def least_squares_problem(rng, n, d, k):
    """A linear model ``(d, k)`` on ``n < d + 1`` examples: under-determined least squares."""
    mlp = gcref.MLP((d, k), activation="identity")
    X = rng.normal(size=(n, d))
    Y = rng.normal(size=(n, k))
    design = np.hstack([X, np.ones((n, 1))])
    # Row o of (W, b) solves design @ theta = Y[:, o]; the minimum-norm solution is pinv.
    solution = (np.linalg.pinv(design) @ Y).T
    null = np.eye(d + 1) - np.linalg.pinv(design) @ design
    return mlp, X, Y, design, solution, null


def as_rows(params):
    (W, b), = params
    return np.hstack([W, b[:, None]])


@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3),
       st.sampled_from((0.3, 0.5, 0.9)), st.integers(0, 3))
def test_nmgd_shrinks_the_null_space_component_by_the_halpern_factors(seed, n, extra, k, a, offset):
    rng = np.random.default_rng(seed)
    mlp, X, Y, design, _, null = least_squares_problem(rng, n, n + extra, k)
    start = mlp.init(rng, bias="normal")
    lr = 0.5 * n / np.linalg.norm(design, 2) ** 2
    steps = 12
    nmgd = minimize(mlp, start, X, Y, "squared", NMGD(lr, a, offset=offset), steps)
    gd = minimize(mlp, start, X, Y, "squared", GradientDescent(lr), steps)
    factor = np.prod([1 - 1 / (j + offset) ** a for j in range(1, steps + 1)])
    initial = as_rows(start) @ null
    scale = 1e-12 * (1 + np.abs(initial).max())
    np.testing.assert_allclose(as_rows(nmgd) @ null, factor * initial, rtol=1e-8, atol=scale)
    np.testing.assert_allclose(as_rows(gd) @ null, initial, rtol=1e-8, atol=scale)


def test_nmgd_first_update_returns_to_the_anchor_when_indexed_from_zero():
    rng = np.random.default_rng(0)
    mlp = gcref.MLP((3, 4, 2))
    params = mlp.init(rng, bias="normal")
    grads = mlp.init(rng, bias="normal")
    for W, b in NMGD(0.1, 0.5, offset=0).update(mlp, params, grads, 1):
        assert not np.any(W) and not np.any(b)


def test_nmgd_by_default_starts_below_the_anchor_as_seed_004_indexes():
    """docs/math.md section 6: the first anchor weight is 2^-a, not 1."""
    assert np.isclose(NMGD(0.1, 0.5).weight(1), 2.0**-0.5, rtol=1e-15, atol=0)
    rng = np.random.default_rng(0)
    mlp = gcref.MLP((3, 4, 2))
    params = mlp.init(rng, bias="normal")
    zero = tuple((np.zeros_like(W), np.zeros_like(b)) for W, b in params)
    for (W, b), (W0, b0) in zip(NMGD(0.1, 0.5).update(mlp, params, zero, 1), params):
        np.testing.assert_allclose(W, (1 - 2.0**-0.5) * W0)
        np.testing.assert_allclose(b, (1 - 2.0**-0.5) * b0)


def test_nmgd_reaches_the_minimum_norm_solution_and_gd_does_not():
    """Relative error shrinking like lambda_n; plain GD keeps its null-space component.

    With ``T w = w - gamma grad L`` contracting the row space, the Halpern iterate settles at
    ``e ~ -lambda_n w* / (gamma s)`` per eigenvalue s of the Hessian, so the relative error
    is at most about ``kappa lambda_n`` (``kappa = s_max / s_min`` with ``gamma = 1 / s_max``);
    1e-6 would take about ``(1e6 kappa)^{1/a}`` steps, more than this test can afford.
    """
    rng = np.random.default_rng(5)
    mlp, X, Y, design, solution, null = least_squares_problem(rng, 3, 9, 2)
    start = mlp.init(rng, bias="normal", scale=2.0)
    hessian_eigs = np.linalg.eigvalsh(design @ design.T / 3)
    lr = 1 / hessian_eigs.max()
    kappa = hessian_eigs.max() / hessian_eigs.min()
    a, offset = 0.9, 1
    optimizer = NMGD(lr, a, offset=offset)

    def error(params):
        return np.linalg.norm(as_rows(params) - solution) / np.linalg.norm(solution)

    quarter = minimize(mlp, start, X, Y, "squared", optimizer, 5000)
    params = quarter
    for step in range(5001, 20001):
        (W, b), = params
        residual = X @ W.T + b - Y
        grads = (((residual.T @ X) / 3, residual.mean(axis=0)),)
        params = optimizer.update(mlp, params, grads, step)
    lam = optimizer.weight(20000)
    assert error(params) < 2 * kappa * lam
    # The error follows lambda_n: four times the steps, 4^a times smaller.
    assert 0.8 * 4**a < error(quarter) / error(params) < 1.25 * 4**a

    gd = minimize(mlp, start, X, Y, "squared", GradientDescent(lr), 2000)
    null_part = np.linalg.norm(as_rows(start) @ null) / np.linalg.norm(solution)
    assert null_part > 0.1
    assert np.isclose(error(gd), null_part, rtol=1e-6)


@given(problems(max_depth=3, max_width=5, activation_names=HOMOGENEOUS), st.sampled_from((1e-7, 1e-2)))
def test_unit_norm_gd_is_a_projected_tangent_step(problem, lr):
    mlp, params, X = problem.mlp, problem.params, problem.X
    y = problem.targets("squared")
    grads = gcref.loss_grad(mlp, params, X, y, "squared")
    new = UnitNormGD(lr).update(mlp, params, grads, 1)
    for (W, b), (gW, gb), (V_new, b_new) in zip(params, grads, new):
        assert np.isclose(np.linalg.norm(V_new), 1.0, rtol=1e-12)
        np.testing.assert_allclose(b_new, b - lr * gb, rtol=1e-12)
        V = W / np.linalg.norm(W)
        tangent = gW - np.sum(gW * V) * V
        # The step is the tangent gradient step up to the projection, O(lr^2).
        np.testing.assert_allclose(V_new, V - lr * tangent, atol=2 * lr**2 * np.sum(tangent**2) + 1e-13)
        # ... and lies in the plane of V and the tangent gradient.
        residual = V_new - (np.sum(V_new * V) * V)
        if np.linalg.norm(tangent) > 0:
            residual = residual - np.sum(residual * tangent) / np.sum(tangent**2) * tangent
        assert np.linalg.norm(residual) < 1e-12


def test_minimize_equals_a_hand_written_loop():
    rng = np.random.default_rng(3)
    mlp = gcref.MLP((2, 4, 1), activation="tanh")
    params = mlp.init(rng, bias="normal")
    X = rng.normal(size=(6, 2))
    y = rng.normal(size=(6, 1))
    by_hand = params
    for _ in range(4):
        grads = gcref.loss_grad(mlp, by_hand, X, y, "squared")
        by_hand = tuple((W - 0.1 * gW, b - 0.1 * gb) for (W, b), (gW, gb) in zip(by_hand, grads))
    got = minimize(mlp, params, X, y, "squared", GradientDescent(0.1), 4, backend="autograd")
    for (W, b), (V, a) in zip(got, by_hand):
        np.testing.assert_allclose(W, V, rtol=1e-10)
        np.testing.assert_allclose(b, a, rtol=1e-10)


def test_frozen_biases_stay_put():
    rng = np.random.default_rng(4)
    mlp = gcref.MLP((2, 3, 1))
    params = mlp.init(rng, bias="normal")
    grads = mlp.init(rng, bias="normal")
    for optimizer in (GradientDescent(0.1, train_biases=False), PathSGD(0.1, train_biases=False),
                      NMGD(0.1, 0.5, offset=1, train_biases=False), UnitNormGD(0.1, train_biases=False)):
        for (_, b), (_, b_new) in zip(params, optimizer.update(mlp, params, grads, 3)):
            np.testing.assert_array_equal(b_new, b)


def test_optimizer_arguments_are_checked():
    mlp = gcref.MLP((2, 3, 1))
    params = mlp.init(np.random.default_rng(0))
    with pytest.raises(ValueError, match="lr must be > 0"):
        GradientDescent(0.0)
    with pytest.raises(ValueError, match=r"a must lie in \(0, 1\)"):
        NMGD(0.1, 1.0)
    with pytest.raises(ValueError, match="p must be > 0"):
        PathSGD(0.1, p=-1)
    with pytest.raises(ValueError, match="step must be >= 1"):
        GradientDescent(0.1).update(mlp, params, params, 0)
    with pytest.raises(ValueError, match="grads"):
        GradientDescent(0.1).update(mlp, params, params[:1], 1)
    with pytest.raises(TypeError, match="update method"):
        minimize(mlp, params, np.zeros((2, 2)), np.zeros((2, 1)), "squared", object(), 1)
