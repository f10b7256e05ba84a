"""The derivative checker of gcref.testing can fail: it catches derivatives planted 0.1% wrong.

A checker that passes everything proves nothing; here each check runs twice on the same
problem, once with the correct derivative (must pass) and once with a planted error of
relative size 1e-3 (must fail), so both halves of its verdict are exercised.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import gcref
from gcref.params import params_map
from gcref.testing import (
    DerivativeCheckError,
    central_difference,
    check_jvp,
    check_vjp,
    default_rtol,
    default_step,
)

PLANTED = 1.001
SMOOTH_ACTIVATIONS = ("tanh", "sigmoid", "softplus", "identity")


def network(activation, seed=0):
    """A depth-3 MLP with drawn biases and a batch, from a fixed seed."""
    rng = np.random.default_rng(seed)
    mlp = gcref.MLP((3, 5, 4, 2), activation=activation)
    params = mlp.init(rng, scheme="lecun_normal", bias="normal")
    return mlp, params, rng.normal(size=(4, 3))


@pytest.mark.parametrize("activation", SMOOTH_ACTIVATIONS)
def test_input_vjp_correct_passes_and_planted_error_fails(activation):
    mlp, params, X = network(activation)

    def f(X):
        return gcref.predict(mlp, params, X)

    def vjp(u):
        return gcref.input_vjp(mlp, params, X, u)

    result = check_vjp(f, X, vjp, np.random.default_rng(1))
    assert result.passed and result.error < result.rtol
    with pytest.raises(DerivativeCheckError, match="relative error"):
        check_vjp(f, X, lambda u: PLANTED * vjp(u), np.random.default_rng(1))
    planted = check_vjp(f, X, lambda u: PLANTED * vjp(u), np.random.default_rng(1),
                        raise_on_failure=False)
    assert not planted.passed
    assert planted.error > 100 * planted.rtol


@pytest.mark.parametrize("activation", ("tanh", "sigmoid", "softplus"))
def test_planted_activation_derivative_is_caught_through_the_network(activation):
    """The numpy backend uses d1 by hand; scaling d1 by 1.001 must be caught."""
    mlp, params, X = network(activation)
    act = mlp.activation
    wrong_act = dataclasses.replace(act, name=act.name + "_wrong_d1", d1=lambda x: PLANTED * act.d1(x))
    wrong = gcref.MLP(mlp.sizes, activation=wrong_act)
    y = np.random.default_rng(2).normal(size=(X.shape[0], 2))

    def loss_of(theta):
        return gcref.mean_loss(mlp, theta, X, y, "squared")

    good = check_vjp(loss_of, params,
                     lambda u: params_map(lambda g: u * g, gcref.loss_grad(mlp, params, X, y, "squared")),
                     np.random.default_rng(3), raise_on_failure=False)
    bad = check_vjp(loss_of, params,
                    lambda u: params_map(lambda g: u * g, gcref.loss_grad(wrong, params, X, y, "squared")),
                    np.random.default_rng(3), raise_on_failure=False)
    assert good.passed
    assert not bad.passed


@pytest.mark.parametrize("activation", ("tanh", "sigmoid", "softplus"))
def test_planted_activation_d1_is_caught_directly(activation):
    act = gcref.get_activation(activation)
    x = np.random.default_rng(4).normal(scale=2.0, size=7)

    def elementwise(d):
        return lambda v: d(x) * v

    assert check_jvp(act, x, elementwise(act.d1), np.random.default_rng(5)).passed
    assert not check_jvp(act, x, elementwise(lambda z: PLANTED * act.d1(z)),
                         np.random.default_rng(5), raise_on_failure=False).passed
    assert check_jvp(act.d1, x, elementwise(act.d2), np.random.default_rng(5)).passed
    assert not check_jvp(act.d1, x, elementwise(lambda z: PLANTED * act.d2(z)),
                         np.random.default_rng(5), raise_on_failure=False).passed


def test_planted_hessian_vector_product_error_fails():
    mlp, params, X = network("tanh")
    y = np.random.default_rng(6).normal(size=(X.shape[0], 2))

    def grad(theta):
        return gcref.loss_grad(mlp, theta, X, y, "squared")

    def hvp(v):
        return gcref.loss_hvp(mlp, params, X, y, "squared", v)

    assert check_jvp(grad, params, hvp, np.random.default_rng(7)).passed
    assert not check_jvp(grad, params, lambda v: params_map(lambda a: PLANTED * a, hvp(v)),
                         np.random.default_rng(7), raise_on_failure=False).passed


def test_transposed_jacobian_fails():
    """A non-symmetric J checked against J instead of J^T is wrong at order 1."""
    A = np.random.default_rng(8).normal(size=(3, 3))
    x = np.ones(3)
    assert check_vjp(lambda x: A @ x, x, lambda u: A.T @ u, np.random.default_rng(9)).passed
    assert not check_vjp(lambda x: A @ x, x, lambda u: A @ u, np.random.default_rng(9),
                         raise_on_failure=False).passed


def test_checker_rejects_a_non_generator_rng():
    with pytest.raises(TypeError, match="rng"):
        check_vjp(np.sin, np.ones(2), np.cos, rng=0)


def test_a_large_third_derivative_is_extrapolated_away_and_a_planted_error_still_fails():
    """F(x) = exp(c x) at 0: a single central difference errs by (c t)^2 / 6 ~ 1e-5 > rtol.

    The checker's Richardson extrapolation leaves (c t)^4 / 120 ~ 3e-11, so the correct
    derivative passes and one 0.1% off still fails (issue 16 item 1).
    """
    x = np.zeros(3)
    t = default_step(x)
    c = np.sqrt(6e-5) / t

    def fn(z):
        return np.exp(c * z)

    one_step = central_difference(fn, x, np.ones(3))
    assert np.max(np.abs(one_step - c)) / c > 10 * default_rtol(np.float64)
    assert check_jvp(fn, x, lambda v: c * v, np.random.default_rng(10)).passed
    assert not check_jvp(fn, x, lambda v: PLANTED * c * v, np.random.default_rng(10),
                         raise_on_failure=False).passed
