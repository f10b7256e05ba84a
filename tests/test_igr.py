"""Modified losses, their gradients, the residual factorisation and the transfer of pressure.

References are slow and obviously correct: central differences of the values (the
dot-product test of gcref.testing), loops over single examples with the core primitives,
the materialised parameter Jacobian, and the other backends.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gcref
from gcref import igr
from gcref.testing import check_vjp
from gcref.tolerances import tolerance
from gcref.testing.strategies import problems

SMOOTH_ACTIVATIONS = ("identity", "tanh", "sigmoid", "softplus")
LOSSES = ("squared", "logistic", "softmax_cross_entropy")
RTOL, ATOL = tolerance(np.float64)


@st.composite
def loss_problems(draw, losses=LOSSES, activation_names=SMOOTH_ACTIVATIONS, max_examples=6):
    """``(problem, loss, y)``: a smooth MLP with outputs that fit a drawn loss, and targets."""
    loss = draw(st.sampled_from(losses))
    outputs = {"squared": (1, 3), "logistic": (1, 1), "softmax_cross_entropy": (2, 3)}[loss]
    problem = draw(problems(max_examples=max_examples, min_outputs=outputs[0],
                            max_outputs=outputs[1], max_depth=3, max_width=5,
                            activation_names=activation_names))
    return problem, loss, problem.targets(loss)


@st.composite
def partitions(draw, n):
    """A partition of ``range(n)`` into a drawn number of non-empty index arrays."""
    order = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).permutation(n)
    m = draw(st.integers(1, n))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), min_size=m - 1, max_size=m - 1))) if n > 1 else []
    return [np.sort(part) for part in np.split(order, cuts)]


def _scaled(pairs, factor):
    return tuple((factor * W, factor * b) for W, b in pairs)


def _assert_close(actual, desired, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(gcref.flatten_params(actual) if isinstance(actual, tuple) else actual,
                               gcref.flatten_params(desired) if isinstance(desired, tuple) else desired,
                               rtol=rtol, atol=atol)


def _check_gradient(value, gradient, params, seed, fn_scale=0.0):
    """Dot-product test of ``gradient`` against central differences of ``value``."""
    check_vjp(value, params, lambda u: _scaled(gradient, float(np.ravel(u)[0])),
              np.random.default_rng(seed), fn_scale=fn_scale)


def _loss_scale(problem, y):
    """Largest |value| the loss is computed from: outputs, targets and 1.

    A loss near zero is a cancellation (the logistic ``softplus(f) - y f`` at f = 13 is
    1.5e-6 from two terms of 13): its rounding error is ``eps`` times these values, not
    ``eps`` times the loss, and the modified losses inherit it (``fn_scale`` of the
    checker). Found by the thorough profile on an identity network with f = 13.4.
    """
    f = gcref.predict(problem.mlp, problem.params, problem.X)
    return max(1.0, float(np.max(np.abs(f))), float(np.max(np.abs(y))))


# -- gradients against central differences ----------------------------------------
@given(loss_problems(), st.sampled_from((0.05, 0.5)), st.data())
def test_modified_loss_gradients_match_central_differences(case, h, data):
    problem, loss, y = case
    mlp, params, X = problem.mlp, problem.params, problem.X
    batches = data.draw(partitions(X.shape[0]), label="batches")
    for value_fn, grad_fn, extra in [
        (igr.modified_loss_gd, igr.modified_loss_gd_grad, ()),
        (igr.modified_loss_sgd, igr.modified_loss_sgd_grad, (batches,)),
        (igr.modified_loss_per_example, igr.modified_loss_per_example_grad, ()),
    ]:
        grad = grad_fn(mlp, params, X, y, loss, h, *extra)
        _check_gradient(lambda p: value_fn(mlp, p, X, y, loss, h, *extra), grad, params, 0,
                        fn_scale=_loss_scale(problem, y))


# -- the penalties against slow references -----------------------------------------
def _single(X, y, n):
    y = np.asarray(y)
    return X[n : n + 1], y[n : n + 1]


@given(loss_problems(), st.sampled_from((0.1, 1.0)))
def test_per_example_penalty_against_a_loop_over_examples(case, h):
    """h/(4N) sum_n ||grad l_n||^2 and its gradient 2 h/(4N) sum_n H_n grad l_n, example by example."""
    problem, loss, y = case
    mlp, params, X = problem.mlp, problem.params, problem.X
    n_examples = X.shape[0]
    penalty, penalty_grad = 0.0, np.zeros(mlp.n_params)
    for n in range(n_examples):
        Xn, yn = _single(X, y, n)
        g = gcref.loss_grad(mlp, params, Xn, yn, loss)
        penalty += np.sum(gcref.flatten_params(g) ** 2)
        penalty_grad += 2.0 * gcref.flatten_params(gcref.loss_hvp(mlp, params, Xn, yn, loss, g))
    L = gcref.mean_loss(mlp, params, X, y, loss)
    L_grad = gcref.flatten_params(gcref.loss_grad(mlp, params, X, y, loss))
    factor = h / (4.0 * n_examples)
    _assert_close(igr.modified_loss_per_example(mlp, params, X, y, loss, h), L + factor * penalty)
    _assert_close(gcref.flatten_params(igr.modified_loss_per_example_grad(mlp, params, X, y, loss, h)),
                  L_grad + factor * penalty_grad)


@given(loss_problems(), st.data())
def test_sgd_modified_loss_against_its_definition_and_limits(case, data):
    """Direct sum over batches; m = 1 is the GD modified loss; singletons the per-example one."""
    problem, loss, y = case
    mlp, params, X = problem.mlp, problem.params, problem.X
    n_examples, h = X.shape[0], 0.3
    batches = data.draw(partitions(n_examples), label="batches")
    y_arr = np.asarray(y)
    penalty = sum(
        np.sum(gcref.flatten_params(gcref.loss_grad(mlp, params, X[b], y_arr[b], loss)) ** 2)
        for b in batches
    )
    L = gcref.mean_loss(mlp, params, X, y, loss)
    _assert_close(igr.modified_loss_sgd(mlp, params, X, y, loss, h, batches),
                  L + h / (4 * len(batches)) * penalty)

    everything = [np.arange(n_examples)]
    singletons = [np.array([n]) for n in range(n_examples)]
    _assert_close(igr.modified_loss_sgd(mlp, params, X, y, loss, h, everything),
                  igr.modified_loss_gd(mlp, params, X, y, loss, h))
    _assert_close(igr.modified_loss_sgd_grad(mlp, params, X, y, loss, h, everything),
                  igr.modified_loss_gd_grad(mlp, params, X, y, loss, h))
    _assert_close(igr.modified_loss_sgd(mlp, params, X, y, loss, h, singletons),
                  igr.modified_loss_per_example(mlp, params, X, y, loss, h))
    _assert_close(igr.modified_loss_sgd_grad(mlp, params, X, y, loss, h, singletons),
                  igr.modified_loss_per_example_grad(mlp, params, X, y, loss, h))


@given(loss_problems())
def test_gd_modified_loss_is_loss_plus_quarter_h_gradient_norm(case):
    problem, loss, y = case
    mlp, params, X = problem.mlp, problem.params, problem.X
    h = 0.7
    g = gcref.flatten_params(gcref.loss_grad(mlp, params, X, y, loss))
    L = gcref.mean_loss(mlp, params, X, y, loss)
    _assert_close(igr.modified_loss_gd(mlp, params, X, y, loss, h), L + h / 4 * g @ g)
    _assert_close(igr.modified_loss_gd(mlp, params, X, y, loss, 0.0), L)


# -- residual factorisation ------------------------------------------------------
@given(loss_problems(losses=("squared", "logistic")))
def test_per_example_forms_agree_for_one_output(case):
    problem, loss, y = case
    if problem.mlp.output_dim != 1:
        return
    args = (problem.mlp, problem.params, problem.X, y, loss, 0.4)
    _assert_close(igr.modified_loss_per_example(*args, form="residual"),
                  igr.modified_loss_per_example(*args, form="gradient"))


@given(loss_problems(activation_names=("relu", "tanh", "softplus", "identity")))
def test_residual_factorisation_against_the_materialised_jacobian(case):
    """||J_theta^T eps||^2 = eps^T G eps <= ||eps||^2 ||J_theta||_2^2, k = 1: equality."""
    problem, loss, y = case
    mlp, params, X = problem.mlp, problem.params, problem.X
    rf = igr.residual_factorisation(mlp, params, X, y, loss)
    eps = gcref.residuals(mlp, params, X, y, loss)
    jac = gcref.param_jacobian(mlp, params, X)
    n_examples = X.shape[0]
    # The k x P parameter Jacobian of every example, materialised.
    J = np.concatenate([np.concatenate([dW.reshape(n_examples, mlp.output_dim, -1), db], axis=2)
                        for dW, db in jac], axis=2)
    brute_grad = np.einsum("nkp,nk->np", J, eps)
    scale = max(1.0, float(np.max(rf.bound)))
    np.testing.assert_allclose(rf.loss_grad_sq, np.sum(brute_grad**2, axis=1), rtol=1e-9, atol=1e-12 * scale)
    np.testing.assert_allclose(rf.quadratic_form, rf.loss_grad_sq, rtol=1e-9, atol=1e-12 * scale)
    np.testing.assert_allclose(rf.param_grad_sq, np.sum(J**2, axis=(1, 2)), rtol=1e-9, atol=1e-12 * scale)
    np.testing.assert_allclose(rf.jacobian_spectral_sq,
                               [np.linalg.norm(Jn, 2) ** 2 for Jn in J], rtol=1e-9, atol=1e-12 * scale)
    np.testing.assert_allclose(rf.residual_sq, np.sum(eps**2, axis=1), rtol=1e-12)
    assert np.all(rf.loss_grad_sq <= rf.bound * (1 + 1e-9) + 1e-12 * scale)
    if mlp.output_dim == 1:
        np.testing.assert_allclose(rf.loss_grad_sq, rf.residual_sq * rf.param_grad_sq,
                                   rtol=1e-9, atol=1e-12 * scale)


def test_bound_is_attained_when_the_residual_is_a_top_singular_vector():
    """Squared loss, k = 3: targets chosen so that eps is the top left singular vector of J_theta."""
    rng = np.random.default_rng(3)
    mlp = gcref.MLP((2, 4, 3), activation="tanh")
    params = mlp.init(rng, bias="normal")
    X = rng.normal(size=(1, 2))
    jac = gcref.param_jacobian(mlp, params, X)
    J = np.concatenate([np.concatenate([dW.reshape(1, 3, -1), db], axis=2) for dW, db in jac], axis=2)[0]
    top = np.linalg.svd(J)[0][:, 0]
    y = gcref.predict(mlp, params, X) - 0.7 * top
    rf = igr.residual_factorisation(mlp, params, X, y, "squared")
    np.testing.assert_allclose(rf.loss_grad_sq, rf.bound, rtol=1e-10)
    y_other = gcref.predict(mlp, params, X) - 0.7 * np.linalg.svd(J)[0][:, 1]
    rf_other = igr.residual_factorisation(mlp, params, X, y_other, "squared")
    assert rf_other.loss_grad_sq[0] < 0.999 * rf_other.bound[0]


# -- transfer of pressure ---------------------------------------------------------
def _pressure_by_hand(mlp, params, X, y, loss):
    """eps^2 ||J||_F^2 sum_i (1 + ||h_i||^2) / (||W_i||_2 ||h'_i||_2)^2, from the primitives."""
    eps = gcref.residuals(mlp, params, X, y, loss)[:, 0]
    J = gcref.input_jacobian(mlp, params, X)
    hs = gcref.forward(mlp, params, X).hs
    hidden = gcref.hidden_jacobians(mlp, params, X)
    J_sq = np.sum(J**2, axis=(1, 2))
    total = np.zeros(X.shape[0])
    for (W, _), h, hp in zip(params, hs[:-1], hidden):
        A_sq = np.linalg.norm(W, 2) ** 2 * np.array([np.linalg.norm(m, 2) ** 2 for m in hp])
        term = np.zeros_like(total)
        alive = A_sq > 0
        term[alive] = J_sq[alive] * (1 + np.sum(h**2, axis=1)[alive]) / A_sq[alive]
        total += term
    return eps**2 * total


@given(loss_problems(losses=("squared", "logistic"),
                     activation_names=("relu", "tanh", "softplus", "identity")))
def test_pressure_transfer_is_a_per_example_inequality(case):
    pytest.importorskip("gcref.transfer")
    problem, loss, y = case
    if problem.mlp.output_dim != 1:
        return
    mlp, params, X = problem.mlp, problem.params, problem.X
    pt = igr.pressure_transfer(mlp, params, X, y, loss)
    scale = max(1.0, float(np.max(pt.loss_grad_sq)))
    np.testing.assert_allclose(pt.input_pressure, _pressure_by_hand(mlp, params, X, y, loss),
                               rtol=1e-8, atol=1e-12 * scale)
    assert np.all(np.isfinite(pt.input_pressure))
    assert np.all(pt.input_pressure <= pt.loss_grad_sq * (1 + 1e-9) + 1e-12 * scale)


def test_pressure_transfer_is_tight_for_one_linear_layer():
    pytest.importorskip("gcref.transfer")
    rng = np.random.default_rng(0)
    mlp = gcref.MLP((3, 1))
    params = mlp.init(rng, bias="normal")
    X, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 1))
    pt = igr.pressure_transfer(mlp, params, X, y, "squared")
    np.testing.assert_allclose(pt.input_pressure, pt.loss_grad_sq, rtol=1e-12)


# -- every backend agrees with numpy ------------------------------------------------
def _fixed_problem(loss):
    rng = np.random.default_rng(7)
    k = {"squared": 2, "logistic": 1, "softmax_cross_entropy": 2}[loss]
    mlp = gcref.MLP((3, 4, k), activation="tanh")
    params = mlp.init(rng, bias="normal")
    X = rng.normal(size=(6, 3))
    y = rng.normal(size=(6, k)) if loss == "squared" else rng.integers(0, max(k, 2), size=6)
    return mlp, params, X, y


@pytest.mark.parametrize("loss", LOSSES)
def test_every_backend_agrees_with_numpy(backend, loss):
    """Fixed shapes per loss: eager JAX compiles each operation once per shape, so a
    Hypothesis sweep over shapes would spend minutes compiling; the properties above
    cover shapes in numpy, whose derivatives the autodiff backends must match here."""
    mlp, params, X, y = _fixed_problem(loss)
    h = 0.2
    batches = [np.array([0, 4]), np.array([1, 3]), np.array([2, 5])]
    cases = [
        ("gd", igr.modified_loss_gd, igr.modified_loss_gd_grad, {}),
        ("sgd", igr.modified_loss_sgd, igr.modified_loss_sgd_grad, {"batches": batches}),
        ("per_example", igr.modified_loss_per_example, igr.modified_loss_per_example_grad, {}),
    ]
    for name, value_fn, grad_fn, kwargs in cases:
        extra = tuple(kwargs.values())
        _assert_close(value_fn(mlp, params, X, y, loss, h, *extra, backend=backend),
                      value_fn(mlp, params, X, y, loss, h, *extra))
        _assert_close(grad_fn(mlp, params, X, y, loss, h, *extra, backend=backend),
                      grad_fn(mlp, params, X, y, loss, h, *extra), rtol=1e-8)
    if mlp.output_dim == 1:
        _assert_close(igr.modified_loss_per_example(mlp, params, X, y, loss, h, form="residual",
                                                    backend=backend),
                      igr.modified_loss_per_example(mlp, params, X, y, loss, h))
    rf, ref = (igr.residual_factorisation(mlp, params, X, y, loss, backend=b) for b in (backend, "numpy"))
    for field in ("loss_grad_sq", "quadratic_form", "jacobian_spectral_sq", "param_grad_sq"):
        _assert_close(getattr(rf, field), getattr(ref, field), rtol=1e-8)


def test_per_example_gradient_is_the_gradient_of_the_per_example_value_in_torch():
    """The autodiff path differentiates the norm identity; checked by central differences."""
    pytest.importorskip("torch")
    mlp, params, X, y = _fixed_problem("softmax_cross_entropy")
    grad = igr.modified_loss_per_example_grad(mlp, params, X, y, "softmax_cross_entropy", 0.5,
                                              backend="torch")
    _check_gradient(lambda p: igr.modified_loss_per_example(
        mlp, p, X, y, "softmax_cross_entropy", 0.5, backend="torch"), grad, params, 1)


# -- bad input --------------------------------------------------------------------
def test_bad_input_raises_clear_errors():
    mlp, params, X, y = _fixed_problem("squared")
    with pytest.raises(ValueError, match="partition"):
        igr.modified_loss_sgd(mlp, params, X, y, "squared", 0.1, [np.array([0, 1]), np.array([1, 2])])
    with pytest.raises(ValueError, match="partition"):
        igr.modified_loss_sgd(mlp, params, X, y, "squared", 0.1, [np.arange(5)])
    with pytest.raises(TypeError, match="batches"):
        igr.modified_loss_sgd(mlp, params, X, y, "squared", 0.1, np.arange(6))
    with pytest.raises(ValueError, match="batches\\[0\\]"):
        igr.modified_loss_sgd(mlp, params, X, y, "squared", 0.1, [np.arange(6.0)])
    with pytest.raises(ValueError, match="h must be >= 0"):
        igr.modified_loss_gd(mlp, params, X, y, "squared", -0.1)
    with pytest.raises(ValueError, match="form"):
        igr.modified_loss_per_example(mlp, params, X, y, "squared", 0.1, form="other")
    with pytest.raises(ValueError, match="k = 1"):
        igr.modified_loss_per_example(mlp, params, X, y, "squared", 0.1, form="residual")
    with pytest.raises(ValueError, match="k = 1"):
        igr.pressure_transfer(mlp, params, X, y, "squared")
