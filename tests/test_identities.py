"""The exact identities of MATH.md section 1 (and section 4's grad l_n = J_theta^T eps_n).

Each identity is checked for every layer i on the ``numpy`` backend, against a reference
computed a different way: the materialised parameter Jacobian summed entry by entry, or
a loop over single examples. Every other backend agrees with ``numpy`` primitive by
primitive (tests/test_backends_agree.py), so the identities carry over.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gcref
from gcref.tolerances import relative_deviation, tolerance
from gcref.testing.strategies import problems

RTOL = tolerance(np.float64)[0]
LOSS_OUTPUTS = {"squared": (1, 4), "logistic": (1, 1), "softmax_cross_entropy": (2, 4)}


def assert_close(value, reference, what):
    deviation = relative_deviation(value, reference)
    assert deviation <= RTOL, f"{what}: relative deviation {deviation:.3g} > {RTOL:g}"


@given(problems())
def test_input_jacobian_factors_through_every_layer(problem):
    """J = Delta_i W_i h'_i for every i."""
    mlp, params, X = problem.mlp, problem.params, problem.X
    J = gcref.input_jacobian(mlp, params, X)
    deltas = gcref.sensitivities(mlp, params, X)
    hidden = gcref.hidden_jacobians(mlp, params, X)
    for i in range(mlp.depth):
        W = params[i][0]
        assert_close(np.einsum("nko,oi,nid->nkd", deltas[i], W, hidden[i]), J, f"layer {i + 1}")


@given(problems())
def test_param_jacobian_is_outer_product_of_sensitivity_and_layer_input(problem):
    """df_c/dW_i = outer(Delta_i[c], h_i) and df_c/db_i = Delta_i[c], for every i and c."""
    mlp, params, X = problem.mlp, problem.params, problem.X
    hs = gcref.forward(mlp, params, X).hs
    deltas = gcref.sensitivities(mlp, params, X)
    jac = gcref.param_jacobian(mlp, params, X)
    n, k = X.shape[0], mlp.output_dim
    for i, (dW, db) in enumerate(jac):
        for example in range(n):
            for c in range(k):
                outer = np.outer(deltas[i][example, c], hs[i][example])
                assert_close(dW[example, c], outer, f"dW_{i + 1}[{example}, {c}]")
                assert_close(db[example, c], deltas[i][example, c], f"db_{i + 1}[{example}, {c}]")


@given(problems())
def test_param_grad_sq_norms_equal_brute_force_sums_over_the_parameter_jacobian(problem):
    """||grad_theta f||^2 = sum_i ||Delta_i||^2 (1 + ||h_i||^2), layer by layer."""
    mlp, params, X = problem.mlp, problem.params, problem.X
    norms = gcref.param_grad_sq_norms(mlp, params, X)
    jac = gcref.param_jacobian(mlp, params, X)
    n = X.shape[0]
    brute_w = np.array([[np.sum(dW[m] ** 2) for dW, _ in jac] for m in range(n)])
    brute_b = np.array([[np.sum(db[m] ** 2) for _, db in jac] for m in range(n)])
    assert_close(norms.weights, brute_w, "weights")
    assert_close(norms.biases, brute_b, "biases")
    assert_close(norms.total, brute_w.sum(axis=1) + brute_b.sum(axis=1), "total")


def single_example_gradients(problem, y, loss):
    """grad_theta l_n for each n, as loss_grad of the batch made of example n alone."""
    mlp, params, X = problem.mlp, problem.params, problem.X
    return [
        gcref.loss_grad(mlp, params, X[n : n + 1], y[n : n + 1], loss) for n in range(X.shape[0])
    ]


def loss_problems(loss):
    lo, hi = LOSS_OUTPUTS[loss]
    return problems(min_outputs=lo, max_outputs=hi)


@pytest.mark.parametrize("loss", sorted(LOSS_OUTPUTS))
@given(data=st.data())
def test_loss_grad_sq_norms_equal_a_loop_over_single_examples(loss, data):
    problem = data.draw(loss_problems(loss), label="problem")
    y = problem.targets(loss)
    norms = gcref.loss_grad_sq_norms(problem.mlp, problem.params, problem.X, y, loss)
    grads = single_example_gradients(problem, y, loss)
    loop_w = np.array([[np.sum(dW**2) for dW, _ in grad] for grad in grads])
    loop_b = np.array([[np.sum(db**2) for _, db in grad] for grad in grads])
    assert_close(norms.weights, loop_w, "weights")
    assert_close(norms.biases, loop_b, "biases")


@pytest.mark.parametrize("loss", sorted(LOSS_OUTPUTS))
@given(data=st.data())
def test_per_example_loss_gradient_is_param_jacobian_transpose_times_residual(loss, data):
    """grad_theta l_n = J_theta(x_n)^T eps_n (MATH.md section 4), and L's gradient is their mean."""
    problem = data.draw(loss_problems(loss), label="problem")
    mlp, params, X = problem.mlp, problem.params, problem.X
    y = problem.targets(loss)
    eps = gcref.residuals(mlp, params, X, y, loss)
    jac = gcref.param_jacobian(mlp, params, X)
    grads = single_example_gradients(problem, y, loss)
    for n, grad in enumerate(grads):
        for i, ((dW, db), (gW, gb)) in enumerate(zip(jac, grad)):
            assert_close(np.einsum("c,coi->oi", eps[n], dW[n]), gW, f"W_{i + 1}, example {n}")
            assert_close(eps[n] @ db[n], gb, f"b_{i + 1}, example {n}")
    mean = gcref.loss_grad(mlp, params, X, y, loss)
    for i, (gW, gb) in enumerate(mean):
        assert_close(np.mean([grad[i][0] for grad in grads], axis=0), gW, f"mean W_{i + 1}")
        assert_close(np.mean([grad[i][1] for grad in grads], axis=0), gb, f"mean b_{i + 1}")
