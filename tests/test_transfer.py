"""The transfer theorem (MATH.md section 3; seed 000, Theorem 1) and spectral norms.

The reference is a brute-force loop over examples and layers: explicit per-example
parameter gradients (``gcref.param_jacobian``) instead of the sensitivity identity, and
``numpy.linalg.norm(M, 2)`` matrix by matrix instead of the batched norms.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import gcref
from gcref.tolerances import tolerance
from gcref.transfer import TransferTerms, spectral_norms, transfer_ratio, transfer_terms
from gcref.testing.strategies import (
    ACTIVATION_NAMES,
    assume_unsaturated,
    fixed_shape_problems,
    PARAMETER_SCALES,
    problems,
    problems_for,
)

RTOL, ATOL = tolerance(np.float64)
INPUT_SCALES = (0.01, 1.0, 10.0)
INCREASING_ACTIVATIONS = ("identity", "tanh", "sigmoid", "softplus", "leaky_relu")

# JAX compiles every operation anew for each array shape (0.1-1 s the first time), so in
# JAX the examples come from a fixed menu of shapes: activations, scales, parameters and
# inputs still vary freely, and once warm an example costs milliseconds, which keeps the
# full 200 examples per property within the time budget.
FIXED_ARCHITECTURES = ((3, 4, 2), (2, 3, 3, 1))
FIXED_BATCH = 3


@st.composite
def one_layer_one_output_models(draw, fixed_shapes=False):
    """``(mlp, params, X)`` for ``f(x) = a(w.x + b)`` with a strictly increasing ``a``."""
    d = 3 if fixed_shapes else draw(st.integers(1, 6))
    n = FIXED_BATCH if fixed_shapes else draw(st.integers(1, 6))
    mlp = gcref.MLP((d, 1), output_activation=draw(st.sampled_from(INCREASING_ACTIVATIONS)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    params = mlp.init(rng, scale=draw(st.sampled_from(PARAMETER_SCALES)), bias="normal")
    return mlp, params, rng.normal(scale=draw(st.sampled_from(INPUT_SCALES)), size=(n, d))


@st.composite
def dead_layer_problems(draw, fixed_shapes=False):
    """A network with one dead layer, and the 0-based index of the first layer with ``A = 0``.

    Either ``W_i = 0`` (then ``A_i = 0``), or a hidden ReLU layer whose biases are so
    negative that every ``z_i < 0`` on the batch (then ``h'_{i+1} = 0`` and ``A_{i+1} = 0``).
    """
    kind = draw(st.sampled_from(("zero_weights", "dead_relu")))
    names = ("relu",) if kind == "dead_relu" else ACTIVATION_NAMES
    if fixed_shapes:
        problem = draw(fixed_shape_problems(FIXED_ARCHITECTURES, FIXED_BATCH, names))
    else:
        problem = draw(problems(activation_names=names))
    mlp, params, X = problem.mlp, list(problem.params), problem.X
    if kind == "zero_weights":
        i = draw(st.integers(0, mlp.depth - 1))
        params[i] = (np.zeros_like(params[i][0]), params[i][1])
        return mlp, tuple(params), X, i
    assume(mlp.depth >= 2)
    i = draw(st.integers(0, mlp.depth - 2))
    h = gcref.forward(mlp, params, X).hs[i]
    W = params[i][0]
    reach = np.abs(W) @ np.max(np.abs(h), axis=0)
    params[i] = (W, -(reach + 1.0))
    return mlp, tuple(params), X, i + 1


def brute_force_terms(mlp, params, X):
    """``(A, layer_grad_sq, J_sq, ratio)`` by loops over examples and layers."""
    fwd = gcref.forward(mlp, params, X)
    hidden_jacs = gcref.hidden_jacobians(mlp, params, X)
    J = gcref.input_jacobian(mlp, params, X)
    param_jac = gcref.param_jacobian(mlp, params, X)
    n, depth = X.shape[0], mlp.depth
    A = np.zeros((n, depth))
    layer_grad_sq = np.zeros((n, depth))
    J_sq = np.zeros(n)
    ratio = np.zeros(n)
    for m in range(n):
        J_sq[m] = np.sum(J[m] ** 2)
        lhs = 0.0
        for i, (W, _) in enumerate(params):
            A[m, i] = np.linalg.norm(W, 2) * np.linalg.norm(hidden_jacs[i][m], 2)
            dW, db = param_jac[i]
            layer_grad_sq[m, i] = np.sum(dW[m] ** 2) + np.sum(db[m] ** 2)
            if A[m, i] > 0:
                lhs += J_sq[m] * (1 + np.sum(fwd.hs[i][m] ** 2)) / A[m, i] ** 2
        total = layer_grad_sq[m].sum()
        ratio[m] = lhs / total if total > 0 else 0.0
    return A, layer_grad_sq, J_sq, ratio


def assert_theorem_holds(terms, rtol=RTOL):
    """Lemma per layer, each layer's term below its gradient, ratio in [0, 1]; all up to rounding."""
    scale = ATOL * (1 + np.max(terms.lemma_rhs, initial=0.0))
    assert np.all(terms.lemma_lhs <= terms.lemma_rhs * (1 + rtol) + scale)
    assert np.all(terms.layer_terms <= terms.layer_grad_sq_norms * (1 + rtol) + scale)
    assert np.all(terms.ratio >= 0) and np.all(terms.ratio <= 1 + rtol)


def comparison_scales(terms):
    """Per field, the scale that its rounding error is relative to.

    ``J`` is a sum of products that can cancel (near a critical point of f), so two exact
    algorithms agree on it only relative to the size of those products, which the lemma
    bounds by ``A_i ||Delta_i||_F``: quantities built on ``||J||_F^2`` are compared
    relative to the upper bounds that the theorem gives them. The others are compared
    relative to themselves.
    """
    one_plus_h_sq = 1 + terms.h_norms**2
    return {
        "h_norms": 0.0,
        "weight_norms": 0.0,
        "hidden_jacobian_norms": 0.0,
        "A": 0.0,
        "layer_grad_sq_norms": 0.0,
        "grad_sq_norms": 0.0,
        "lemma_rhs": 0.0,
        "inv_T_sq": 0.0,
        "jacobian_sq_norms": np.max(terms.lemma_rhs / one_plus_h_sq, axis=1),
        "lemma_lhs": terms.lemma_rhs,
        "layer_terms": terms.layer_grad_sq_norms,
        "ratio": np.ones_like(terms.ratio),
    }


def assert_all_finite(terms):
    for field in dataclasses.fields(TransferTerms):
        value = getattr(terms, field.name)
        if field.name != "norm":
            assert np.all(np.isfinite(value)), field.name


# -- the theorem -------------------------------------------------------------------------


@given(problem=problems(max_examples=6), input_scale=st.sampled_from(INPUT_SCALES))
def test_terms_match_a_brute_force_loop(problem, input_scale):
    mlp, params, X = problem.mlp, problem.params, problem.X * input_scale
    A, layer_grad_sq, J_sq, ratio = brute_force_terms(mlp, params, X)

    terms = transfer_terms(mlp, params, X)

    np.testing.assert_allclose(terms.A, A, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(terms.layer_grad_sq_norms, layer_grad_sq, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(terms.grad_sq_norms, layer_grad_sq.sum(axis=1), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(terms.jacobian_sq_norms, J_sq, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(terms.ratio, ratio, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(transfer_ratio(mlp, params, X), ratio, rtol=RTOL, atol=ATOL)
    h_norms = [np.linalg.norm(h, axis=1) for h in gcref.forward(mlp, params, X).hs[:-1]]
    np.testing.assert_allclose(terms.h_norms, np.stack(h_norms, axis=1), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        terms.inv_T_sq, A**2 / (1 + terms.h_norms**2), rtol=RTOL, atol=ATOL
    )


@given(problem=problems(max_examples=6), input_scale=st.sampled_from(INPUT_SCALES))
def test_theorem_holds_and_the_frobenius_variant_is_weaker(problem, input_scale):
    mlp, params, X = problem.mlp, problem.params, problem.X * input_scale
    spectral = transfer_terms(mlp, params, X)
    frobenius = transfer_terms(mlp, params, X, norm="frobenius")

    for terms in (spectral, frobenius):
        assert_all_finite(terms)
        assert_theorem_holds(terms)
    assert frobenius.norm == "frobenius" and spectral.norm == "spectral"
    # ||M||_2 <= ||M||_F, so A_i grows, T_i^2 shrinks, and so does the ratio.
    assert np.all(spectral.A <= frobenius.A * (1 + RTOL) + ATOL)
    assert np.all(frobenius.ratio <= spectral.ratio * (1 + RTOL) + ATOL)
    expected = [np.linalg.norm(W) for W, _ in params]
    np.testing.assert_allclose(frobenius.weight_norms, expected, rtol=RTOL, atol=ATOL)


def test_every_backend_agrees_with_numpy_and_satisfies_the_theorem(backend):
    @given(problem=problems_for(backend, FIXED_ARCHITECTURES, FIXED_BATCH), input_scale=st.sampled_from(INPUT_SCALES[:2]))
    def check(problem, input_scale):
        mlp, params, X = problem.mlp, problem.params, problem.X * input_scale
        assume_unsaturated(mlp, params, X)
        reference = transfer_terms(mlp, params, X)
        terms = transfer_terms(mlp, params, X, backend=backend)
        assert_theorem_holds(terms)
        for field, scale in comparison_scales(reference).items():
            got, want = getattr(terms, field), getattr(reference, field)
            bound = ATOL + RTOL * (np.abs(want) + scale)
            assert np.all(np.abs(got - want) <= bound), (field, got, want)

    check()


def test_one_layer_one_output_is_tight(backend):
    @given(model=one_layer_one_output_models(fixed_shapes=backend == "jax"))
    def check(model):
        mlp, params, X = model
        terms = transfer_terms(mlp, params, X, backend=backend)
        # A saturated activation (tanh'(z) = 0 in floating point) leaves no gradient,
        # and the ratio is then 0 by convention.
        alive = terms.grad_sq_norms >= np.finfo(np.float64).tiny
        np.testing.assert_allclose(terms.ratio, np.where(alive, 1.0, 0.0), rtol=RTOL)
        np.testing.assert_allclose(terms.lemma_lhs, terms.lemma_rhs, rtol=RTOL, atol=ATOL)

    check()


def test_dead_layers_give_finite_numbers_and_no_warnings(backend):
    @given(case=dead_layer_problems(fixed_shapes=backend == "jax"))
    def check(case):
        mlp, params, X, first_dead = case
        with warnings.catch_warnings(), np.errstate(all="raise"):
            warnings.simplefilter("error")
            terms = transfer_terms(mlp, params, X, backend=backend)
            # The norm is taken in NumPy whatever the backend: one backend suffices.
            frobenius = transfer_terms(mlp, params, X, norm="frobenius")
            T_sq = terms.T_sq
        for t in (terms, frobenius):
            assert_all_finite(t)
            assert np.all(t.A[:, first_dead:] == 0)
            assert np.all(t.jacobian_sq_norms == 0)
            assert np.all(t.layer_terms == 0) and np.all(t.ratio == 0)
            assert np.all(t.lemma_lhs == 0) and np.all(t.lemma_rhs >= 0)
        assert np.array_equal(np.isinf(T_sq), terms.A == 0)
        assert np.all(T_sq[terms.A > 0] > 0)

    check()


def test_float32_terms_satisfy_the_theorem_to_float32_accuracy():
    rng = np.random.default_rng(4)
    mlp = gcref.MLP((4, 12, 12, 3), activation="softplus")
    params = tuple(
        (W.astype(np.float32), b.astype(np.float32))
        for W, b in mlp.init(rng, scale=2.0, bias="normal")
    )
    X = rng.normal(size=(20, 4)).astype(np.float32)
    rtol, _ = tolerance(np.float32)
    terms = transfer_terms(mlp, params, X)
    assert terms.ratio.dtype == np.float64
    assert_theorem_holds(terms, rtol=rtol)
    assert np.all(terms.ratio > 0)


def test_unknown_norm_is_a_clear_error():
    mlp = gcref.MLP((2, 1))
    params = mlp.init(np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown norm"):
        transfer_terms(mlp, params, np.ones((1, 2)), norm="nuclear")


# -- spectral norms ----------------------------------------------------------------------


@st.composite
def matrices_with_known_spectral_norm(draw):
    """``(M, sigma_1)``: a stack of matrices ``U diag(s) V^T`` with ``s_2 <= 0.99 s_1``."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch, m, n = draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 40))
    r = min(m, n)
    top = draw(st.sampled_from((1e-3, 1.0, 1e3))) * rng.uniform(0.5, 2.0, size=batch)
    gap = draw(st.floats(0.0, 0.99))
    s = top[:, None] * np.concatenate(
        [np.ones((batch, 1)), gap * rng.uniform(0.0, 1.0, size=(batch, r - 1))], axis=1
    )
    U = np.linalg.qr(rng.normal(size=(batch, m, r)))[0]
    V = np.linalg.qr(rng.normal(size=(batch, n, r)))[0]
    return (U * s[:, None, :]) @ np.swapaxes(V, 1, 2), top


@given(case=matrices_with_known_spectral_norm())
def test_power_iteration_agrees_with_the_svd_within_its_tolerance(case):
    M, sigma = case
    tol = 1e-10
    exact = spectral_norms(M)
    iterated = spectral_norms(M, svd_max_dim=0, tol=tol)
    np.testing.assert_allclose(exact, sigma, rtol=1e-12)
    assert np.all(iterated <= exact * (1 + 1e-12))
    assert np.all(exact - iterated <= tol * exact)


def test_power_iteration_on_zero_matrices_is_zero_without_warnings():
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        np.testing.assert_array_equal(spectral_norms(np.zeros((4, 70, 80))), 0.0)
        np.testing.assert_array_equal(spectral_norms(np.zeros((2, 3, 5)), svd_max_dim=0), 0.0)


def test_power_iteration_warns_when_it_runs_out_of_iterations():
    s = np.array([1.0, 0.999, 0.5])
    U = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        estimate = spectral_norms((U * s) @ U.T, svd_max_dim=0, max_iter=3)
    assert estimate <= 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transfer_terms_by_power_iteration_match_the_svd(seed):
    rng = np.random.default_rng(seed)
    mlp = gcref.MLP((6, 10, 8, 2), activation=("tanh", "relu", "softplus")[seed])
    params = mlp.init(rng, bias="normal")
    X = rng.normal(size=(5, 6))
    exact = transfer_terms(mlp, params, X)
    iterated = transfer_terms(mlp, params, X, svd_max_dim=0, power_tol=1e-12)
    np.testing.assert_allclose(iterated.A, exact.A, rtol=1e-9)
    np.testing.assert_allclose(iterated.ratio, exact.ratio, rtol=1e-8)
