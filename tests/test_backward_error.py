"""Backward error analysis (MATH.md section 5), checked numerically.

The orders 2 and 3 are asymptotic: they show at h = 0.1 .. 0.0125 when h times the
curvature is small. The problems are small tanh networks under the logistic loss, whose
curvature is at most 1/4 of the squared loss's, so that an SGD epoch (time 3h) is still
in the asymptotic regime; the squared loss is checked for full-batch GD.
"""

from __future__ import annotations

import numpy as np
import pytest

import gcref
from gcref.backward_error import gd_backward_error, rk4_flow, sgd_backward_error

BATCHES = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5])]
SLOPE_TOLERANCE = 0.3


def _problem(seed, loss="logistic"):
    rng = np.random.default_rng(seed)
    mlp = gcref.MLP((2, 4, 1), activation="tanh")
    params = mlp.init(rng, bias="normal", scale=0.5)
    X = rng.normal(size=(6, 2))
    y = rng.integers(0, 2, size=6) if loss == "logistic" else rng.normal(size=(6, 1))
    return mlp, params, X, y


def _assert_orders(result):
    assert abs(result.slope_flow - 2.0) <= SLOPE_TOLERANCE, result
    assert abs(result.slope_modified_flow - 3.0) <= SLOPE_TOLERANCE, result
    # The modified flow is the better model at every step size.
    assert np.all(result.error_modified_flow < result.error_flow), result


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gd_step_is_order_two_from_the_flow_of_l_and_three_from_the_modified_flow(seed):
    for loss in ("logistic", "squared"):
        mlp, params, X, y = _problem(seed, loss)
        _assert_orders(gd_backward_error(mlp, params, X, y, loss, substeps=8))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_sgd_epoch_is_order_two_from_the_flow_of_l_and_three_from_the_modified_flow(seed):
    mlp, params, X, y = _problem(seed)
    _assert_orders(sgd_backward_error(mlp, params, X, y, "logistic", BATCHES, substeps=8))


@pytest.mark.parametrize("which", ["gd", "sgd"])
def test_autodiff_backends_reproduce_the_orders(autodiff_backend, which):
    mlp, params, X, y = _problem(0)
    if which == "gd":
        result = gd_backward_error(mlp, params, X, y, "logistic", substeps=4, backend=autodiff_backend)
        reference = gd_backward_error(mlp, params, X, y, "logistic", substeps=4)
    else:
        result = sgd_backward_error(mlp, params, X, y, "logistic", BATCHES, substeps=4,
                                    backend=autodiff_backend)
        reference = sgd_backward_error(mlp, params, X, y, "logistic", BATCHES, substeps=4)
    _assert_orders(result)
    np.testing.assert_allclose(result.error_flow, reference.error_flow, rtol=1e-8)
    np.testing.assert_allclose(result.error_modified_flow, reference.error_modified_flow, rtol=1e-8)


@pytest.mark.parametrize("which", ["gd", "sgd"])
def test_rk4_error_is_negligible_against_the_measured_errors(which):
    """Doubling the RK4 substeps moves the errors by far less than the smallest of them."""
    mlp, params, X, y = _problem(1)
    if which == "gd":
        coarse, fine = (gd_backward_error(mlp, params, X, y, "logistic", substeps=s) for s in (4, 8))
    else:
        coarse, fine = (sgd_backward_error(mlp, params, X, y, "logistic", BATCHES, substeps=s)
                        for s in (4, 8))
    for a, b in [(coarse.error_flow, fine.error_flow),
                 (coarse.error_modified_flow, fine.error_modified_flow)]:
        assert np.all(np.abs(a - b) < 1e-3 * b), (a, b)


def test_rk4_matches_the_exact_flow_of_a_quadratic():
    """F = 1/2 theta^T diag(a) theta: Phi_t(theta) = exp(-a t) theta; RK4 error O(t dt^4)."""
    a = np.array([0.5, 1.0, 3.0])
    theta = np.array([1.0, -2.0, 0.5])
    exact = np.exp(-a * 0.4) * theta
    errors = [np.max(np.abs(rk4_flow(lambda t: a * t, theta, 0.4, n) - exact)) for n in (8, 16)]
    assert errors[0] < 1e-5
    assert 12 < errors[0] / errors[1] < 20  # fourth order: about 16


def test_one_gd_step_against_a_hand_computed_flow_of_a_quadratic():
    """Linear model, squared loss: the flow and its modified flow are matrix exponentials."""
    rng = np.random.default_rng(0)
    mlp = gcref.MLP((3, 1))
    params = mlp.init(rng)
    X, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 1))
    theta0 = gcref.flatten_params(params)
    Z = np.hstack([X, np.ones((5, 1))])  # theta = (w, b)
    H = Z.T @ Z / 5
    c = Z.T @ y[:, 0] / 5  # grad L = H theta - c
    steps = np.array([0.1, 0.05])
    result = gd_backward_error(mlp, params, X, y, "squared", steps=steps, substeps=32)
    vals, vecs = np.linalg.eigh(H)
    star = np.linalg.solve(H, c)
    for h, err, err_mod in zip(steps, result.error_flow, result.error_modified_flow):
        theta1 = theta0 - h * (H @ theta0 - c)
        flow = star + vecs @ (np.exp(-vals * h) * (vecs.T @ (theta0 - star)))
        # grad L~ = (I + h/2 H) (H theta - c): a linear flow with matrix (I + h/2 H) H.
        mod = star + vecs @ (np.exp(-vals * (1 + h / 2 * vals) * h) * (vecs.T @ (theta0 - star)))
        np.testing.assert_allclose(err, np.linalg.norm(theta1 - flow), rtol=1e-8)
        np.testing.assert_allclose(err_mod, np.linalg.norm(theta1 - mod), rtol=1e-8)


def test_bad_input_raises_clear_errors():
    mlp, params, X, y = _problem(0)
    with pytest.raises(ValueError, match="equal sizes"):
        sgd_backward_error(mlp, params, X, y, "logistic", [np.arange(4), np.array([4, 5])])
    with pytest.raises(ValueError, match="partition"):
        sgd_backward_error(mlp, params, X, y, "logistic", [np.arange(3), np.arange(3)])
    with pytest.raises(ValueError, match="steps"):
        gd_backward_error(mlp, params, X, y, "logistic", steps=(0.1,))
    with pytest.raises(ValueError, match="steps"):
        gd_backward_error(mlp, params, X, y, "logistic", steps=(0.1, -0.05))
    params32 = tuple((W.astype(np.float32), b.astype(np.float32)) for W, b in params)
    with pytest.raises(TypeError, match="float64"):
        gd_backward_error(mlp, params32, X.astype(np.float32), y, "logistic")
