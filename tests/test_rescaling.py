"""Node rescaling symmetry and its consequences (MATH.md section 6; seeds 002 and 004).

References: the seed's edge-by-edge definition of rho_{c,v}, explicit enumeration of the
paths to each output, the network's own outputs, and exact per-step algebra of gradient
descent.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from gcref.testing.strategies import problems
from test_norms import brute_path_norm

import gcref
from gcref.norms import group_norm, path_norm
from gcref.optimizers import GradientDescent
from gcref.rescaling import (
    balanced_rescaling,
    random_rescaling,
    random_rescaling_factors,
    rescale,
    rescale_node,
)

HOMOGENEOUS = ("relu", "leaky_relu", "identity")
EXPONENTS = (0.5, 1.0, 2.0, 3.0)

homogeneous_problems = problems(max_depth=4, max_width=5, activation_names=HOMOGENEOUS)


def bias_free(params):
    return tuple((W, np.zeros_like(b)) for W, b in params)


def assert_same_function(mlp, params, other, X):
    f = gcref.predict(mlp, params, X)
    g = gcref.predict(mlp, other, X)
    np.testing.assert_allclose(g, f, rtol=1e-9, atol=1e-12 * (1 + np.abs(f).max()))


@given(homogeneous_problems, st.sampled_from(EXPONENTS), st.sampled_from((1.5, 4.0, 30.0)))
def test_random_rescaling_keeps_f_and_the_path_norm(problem, p, spread):
    mlp, params = problem.mlp, problem.params
    rescaled, factors = random_rescaling(mlp, params, problem.rng, spread=spread)
    for c in factors:
        assert np.all((c >= 1 / spread) & (c <= spread))
    assert_same_function(mlp, params, rescaled, problem.X)
    for bias in (True, False):
        assert np.isclose(path_norm(mlp, rescaled, p, bias=bias), path_norm(mlp, params, p, bias=bias), rtol=1e-10)


def rescale_node_by_definition(params, layer, unit, c):
    """Seed 002: edges into v times c, edges out of v times 1/c, one edge at a time."""
    out = [(W.copy(), b.copy()) for W, b in params]
    W_in, b_in = out[layer - 1]
    for u in range(W_in.shape[1]):
        W_in[unit, u] *= c
    b_in[unit] *= c
    W_out = out[layer][0]
    for w in range(W_out.shape[0]):
        W_out[w, unit] /= c
    return tuple(out)


@given(homogeneous_problems, st.data())
def test_rescale_node_follows_the_definition_and_rescale_composes_them(problem, data):
    mlp, params = problem.mlp, problem.params
    assume(mlp.depth >= 2)
    layer = data.draw(st.integers(1, mlp.depth - 1))
    unit = data.draw(st.integers(0, mlp.sizes[layer] - 1))
    c = data.draw(st.floats(0.1, 10.0))
    got = rescale_node(mlp, params, layer, unit, c)
    for (W, b), (V, a) in zip(got, rescale_node_by_definition(params, layer, unit, c)):
        np.testing.assert_allclose(W, V, rtol=1e-14)
        np.testing.assert_allclose(b, a, rtol=1e-14)

    factors = random_rescaling_factors(mlp, problem.rng)
    one_by_one = params
    for i, c_layer in enumerate(factors, 1):
        for v, c_unit in enumerate(c_layer):
            one_by_one = rescale_node_by_definition(one_by_one, i, v, c_unit)
    for (W, b), (V, a) in zip(rescale(mlp, params, factors), one_by_one):
        np.testing.assert_allclose(W, V, rtol=1e-13)
        np.testing.assert_allclose(b, a, rtol=1e-13)


@given(homogeneous_problems, st.sampled_from(EXPONENTS))
def test_max_group_norm_is_not_invariant(problem, p):
    mlp, params = problem.mlp, problem.params
    assume(mlp.depth >= 2)
    mu = group_norm(mlp, params, p, np.inf)
    W, b = params[0]
    incoming = (np.sum(np.abs(W[0]) ** p) + abs(b[0]) ** p) ** (1 / p)
    assume(incoming > 0)
    # Blow up the first hidden unit's incoming group to twice the old maximum.
    rescaled = rescale_node(mlp, params, 1, 0, 2 * mu / incoming)
    assert group_norm(mlp, rescaled, p, np.inf) >= 2 * mu * (1 - 1e-12)
    assert np.isclose(path_norm(mlp, rescaled, p), path_norm(mlp, params, p), rtol=1e-10)
    assert_same_function(mlp, params, rescaled, problem.X)


def per_output_path_norms(params, p):
    """``||pi_o||_p`` for each output o: enumeration of the paths that end at o."""
    W, b = params[-1]
    return [
        brute_path_norm((*params[:-1], (W[o : o + 1], b[o : o + 1])), p, bias=False)
        for o in range(W.shape[0])
    ]


@given(problems(max_depth=4, max_width=3, max_inputs=3, max_outputs=3, activation_names=HOMOGENEOUS),
       st.sampled_from(EXPONENTS))
def test_balanced_rescaling_minimises_max_group_norm_at_the_path_norm(problem, p):
    mlp, params = problem.mlp, problem.params
    balanced, _ = balanced_rescaling(mlp, params, p)
    assert_same_function(mlp, params, balanced, problem.X)
    depth = mlp.depth
    minimum = group_norm(mlp, balanced, p, np.inf, bias=False) ** depth
    # Seed 002: min over rescalings of mu_{p,inf}^depth is the path norm (one output);
    # with k outputs it is the largest path norm to a single output.
    assert np.isclose(minimum, max(per_output_path_norms(params, p)), rtol=1e-9)
    if mlp.output_dim == 1:
        assert np.isclose(minimum, path_norm(mlp, bias_free(params), p), rtol=1e-9)
    for _ in range(3):
        other, _ = random_rescaling(mlp, params, problem.rng)
        assert group_norm(mlp, other, p, np.inf, bias=False) ** depth >= minimum * (1 - 1e-9)
    assert group_norm(mlp, params, p, np.inf, bias=False) ** depth >= minimum * (1 - 1e-9)


def test_rescaling_refuses_activations_that_are_not_positively_homogeneous():
    rng = np.random.default_rng(0)
    mlp = gcref.MLP((2, 3, 1), activation="tanh")
    params = mlp.init(rng)
    with pytest.raises(ValueError, match="positively homogeneous"):
        random_rescaling(mlp, params, rng)
    with pytest.raises(ValueError, match="positively homogeneous"):
        balanced_rescaling(mlp, params)
    with pytest.raises(ValueError, match="positively homogeneous"):
        rescale_node(mlp, params, 1, 0, 2.0)


def test_rescaling_arguments_are_checked():
    rng = np.random.default_rng(0)
    mlp = gcref.MLP((2, 3, 1))
    params = mlp.init(rng)
    with pytest.raises(ValueError, match="layer must lie"):
        rescale_node(mlp, params, 2, 0, 2.0)
    with pytest.raises(ValueError, match="unit must lie"):
        rescale_node(mlp, params, 1, 3, 2.0)
    with pytest.raises(ValueError, match="c must be > 0"):
        rescale_node(mlp, params, 1, 0, -1.0)
    with pytest.raises(ValueError, match="positive"):
        rescale(mlp, params, [np.array([1.0, 0.0, 2.0])])
    with pytest.raises(ValueError, match="1 arrays"):
        rescale(mlp, params, [])
    dead = ((np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]), np.zeros(3)), params[1])
    with pytest.raises(ValueError, match="no non-zero path"):
        balanced_rescaling(mlp, dead)


@given(homogeneous_problems)
def test_structural_identity_of_bias_free_homogeneous_networks(problem):
    mlp, params, X = problem.mlp, bias_free(problem.params), problem.X
    f = gcref.predict(mlp, params, X)
    jacobian = gcref.param_jacobian(mlp, params, X)
    tol = 1e-10 * (1 + np.abs(f).max())
    for (W, _), (dW, _) in zip(params, jacobian):
        # <grad_{W_k} f_c(x_n), W_k> = f_c(x_n), every layer k, every output c (seed 004, eq. 3).
        np.testing.assert_allclose(np.einsum("ncoi,oi->nc", dW, W), f, rtol=1e-9, atol=tol)

    y = problem.targets("squared")
    grads = gcref.loss_grad(mlp, params, X, y, "squared")
    # Hence <W_k, grad_{W_k} L> = mean_n <eps_n, f(x_n)> for every layer.
    expected = np.mean(np.sum((f - y) * f, axis=1))
    inner = [np.vdot(W, gW) for (W, _), (gW, _) in zip(params, grads)]
    np.testing.assert_allclose(inner, expected, rtol=1e-9, atol=1e-10 * (1 + np.abs(f).max() * np.abs(f - y).max()))


def sq_norms(arrays):
    return np.array([np.vdot(a, a) for a in arrays])


@given(problems(max_depth=4, max_width=5, min_outputs=1, max_outputs=2, activation_names=HOMOGENEOUS),
       st.sampled_from((1e-3, 1e-2)), st.booleans())
def test_gradient_descent_keeps_layer_balance_up_to_second_order(problem, h, with_biases):
    """Per step, ||W_k||^2 - ||W_j||^2 (bias-free) changes by exactly h^2 (||g_k||^2 - ||g_j||^2).

    With biases the balanced quantities are ``||W_k||^2 + ||b_k||^2 - ||W_{k+1}||^2`` (the
    rescaling symmetry of the units of layer k); the first-order changes cancel in both.
    """
    mlp, X = problem.mlp, problem.X
    params = problem.params if with_biases else bias_free(problem.params)
    y = problem.targets("squared")
    optimizer = GradientDescent(h, train_biases=with_biases)

    def balance(params):
        if with_biases:
            weights, biases = sq_norms([W for W, _ in params]), sq_norms([b for _, b in params])
            return weights[:-1] + biases[:-1] - weights[1:]
        weights = sq_norms([W for W, _ in params])
        return weights[:-1] - weights[1:]

    for step in range(1, 11):
        grads = gcref.loss_grad(mlp, params, X, y, "squared")
        if not with_biases:
            grads = bias_free(grads)
        if not np.isfinite(sq_norms([a for pair in grads for a in pair]).sum()):
            # GD diverged (h above 2 / the Hessian's largest eigenvalue, e.g. a deep linear
            # net with weights of 4): the identity is exact at every step, but the next
            # forward pass overflows. The steps before were checked.
            assert step > 1, "the first gradient overflowed: the drawn problem is out of range"
            break
        new = optimizer.update(mlp, params, grads, step)
        if not np.isfinite(sq_norms([a for pair in new for a in pair]).sum()):
            break  # the same divergence, one step later: the squared norms overflow
        change = balance(new) - balance(params)
        second_order = h**2 * balance(grads)
        # Rounding: each side is a difference of squared norms of the old and the new
        # parameters, each computed with an error of a few eps times its size.
        size = sum(sq_norms([a for pair in ps for a in pair]).sum() for ps in (params, new))
        np.testing.assert_allclose(change, second_order, rtol=1e-6, atol=1e-13 * size)
        params = new


def test_balance_drift_scales_like_h_squared():
    """Halving h over the same number of steps divides the drift by about 4."""
    rng = np.random.default_rng(7)
    mlp = gcref.MLP((3, 6, 6, 1))
    start = bias_free(mlp.init(rng, scale=1.0))
    X = rng.normal(size=(8, 3))
    y = rng.normal(size=(8, 1))

    def drift(h, n_steps=20):
        params = start
        optimizer = GradientDescent(h, train_biases=False)
        first = np.vdot(params[0][0], params[0][0]) - np.vdot(params[2][0], params[2][0])
        for step in range(1, n_steps + 1):
            grads = bias_free(gcref.loss_grad(mlp, params, X, y, "squared"))
            params = optimizer.update(mlp, params, grads, step)
        return abs(np.vdot(params[0][0], params[0][0]) - np.vdot(params[2][0], params[2][0]) - first)

    drifts = [drift(h) for h in (2e-3, 1e-3, 5e-4)]
    assert drifts[0] > 0
    for big, small in zip(drifts, drifts[1:]):
        assert 3.5 < big / small < 4.5
