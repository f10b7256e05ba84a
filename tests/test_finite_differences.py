"""The analytic ``numpy`` backend against central finite differences (dot-product tests).

Every derivative the ``numpy`` backend derives by hand (input Jacobian, input VJP,
parameter Jacobian, loss gradient, Hessian-vector product, the activations' d1 and d2)
is checked against central differences of the forward computation it differentiates,
through :mod:`gcref.testing` (float64; the checker's tolerance is explained there).

Kinks. A central difference whose two points straddle a kink of ReLU or leaky ReLU
measures the average of two slopes, not the derivative at x, so it is wrong by O(1)
however small the step. Such examples are rejected: every point at which the checker
evaluates the network records which side of each kink every pre-activation lies on, and
the example counts only when all those points agree with the base point (``assume``).
The step is ~1e-5 (times max(1, max |x|)), so this rejects only examples within a few
steps of a kink.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gcref
from gcref.params import params_map
from gcref.testing import (
    central_difference,
    check_jvp,
    check_vjp,
    default_rtol,
    default_step,
)
from gcref.testing.strategies import activations, problems

LOSS_OUTPUTS = {"squared": (1, 4), "logistic": (1, 1), "softmax_cross_entropy": (2, 4)}


class KinkSides:
    """Records, for each evaluation of the network, the side of every kink each z_i is on."""

    def __init__(self, mlp):
        self.mlp = mlp
        self.patterns = set()

    def record(self, params, X):
        zs = gcref.forward(self.mlp, params, X).zs
        sides = []
        for i, z in enumerate(zs):
            sides.extend((z > kink).tobytes() for kink in self.mlp.layer_activation(i).kinks)
        self.patterns.add(tuple(sides))

    def assume_no_kink_crossed(self):
        assume(len(self.patterns) == 1)


def scalar_times(u, tree):
    return params_map(lambda a: u * a, tree)


def output_scale(problem, y):
    """Largest |value| a loss is computed from: outputs, targets and 1.

    A loss near zero comes out of a cancellation such as ``logsumexp(f) - f_y`` and a
    residual near zero out of ``sigmoid(f) - y``: their rounding errors are of the size
    ``eps`` times these values, not ``eps`` times the result (see ``fn_scale``).
    """
    f = gcref.predict(problem.mlp, problem.params, problem.X)
    return max(1.0, float(np.max(np.abs(f))), float(np.max(np.abs(y))))


def gradient_scale(problem, y):
    """Rounding scale of the loss gradient ``J_theta^T eps``: ``max |J_theta|`` times that of eps."""
    jac = gcref.param_jacobian(problem.mlp, problem.params, problem.X)
    largest = max(float(np.max(np.abs(a))) for pair in jac for a in pair)
    return largest * output_scale(problem, y)


@given(problems())
def test_input_jacobian_and_input_vjp_match_finite_differences(problem):
    mlp, params, X = problem.mlp, problem.params, problem.X
    sides = KinkSides(mlp)

    def f(X):
        sides.record(params, X)
        return gcref.predict(mlp, params, X)

    J = gcref.input_jacobian(mlp, params, X)
    by_jacobian = check_vjp(f, X, lambda u: np.einsum("nk,nkd->nd", u, J), problem.rng,
                            raise_on_failure=False)
    by_vjp = check_vjp(f, X, lambda u: gcref.input_vjp(mlp, params, X, u), problem.rng,
                       raise_on_failure=False)
    sides.assume_no_kink_crossed()
    assert by_jacobian.passed, by_jacobian
    assert by_vjp.passed, by_vjp


@given(problems())
def test_param_jacobian_matches_finite_differences(problem):
    mlp, params, X = problem.mlp, problem.params, problem.X
    sides = KinkSides(mlp)

    def f(theta):
        sides.record(theta, X)
        return gcref.predict(mlp, theta, X)

    jac = gcref.param_jacobian(mlp, params, X)

    def vjp(u):
        return tuple(
            (np.einsum("nc,ncoi->oi", u, dW), np.einsum("nc,nco->o", u, db)) for dW, db in jac
        )

    result = check_vjp(f, params, vjp, problem.rng, raise_on_failure=False)
    sides.assume_no_kink_crossed()
    assert result.passed, result


def loss_problems(loss):
    lo, hi = LOSS_OUTPUTS[loss]
    return problems(min_outputs=lo, max_outputs=hi)


@pytest.mark.parametrize("loss", sorted(LOSS_OUTPUTS))
@given(data=st.data())
def test_loss_grad_matches_finite_differences(loss, data):
    problem = data.draw(loss_problems(loss), label="problem")
    mlp, params, X = problem.mlp, problem.params, problem.X
    y = problem.targets(loss)
    sides = KinkSides(mlp)

    def mean_loss(theta):
        sides.record(theta, X)
        return gcref.mean_loss(mlp, theta, X, y, loss)

    grad = gcref.loss_grad(mlp, params, X, y, loss)
    result = check_vjp(mean_loss, params, lambda u: scalar_times(u, grad), problem.rng,
                       fn_scale=output_scale(problem, y), raise_on_failure=False)
    sides.assume_no_kink_crossed()
    assert result.passed, result


@pytest.mark.parametrize("loss", sorted(LOSS_OUTPUTS))
@given(data=st.data())
def test_loss_hvp_matches_finite_differences_of_the_gradient(loss, data):
    problem = data.draw(loss_problems(loss), label="problem")
    mlp, params, X = problem.mlp, problem.params, problem.X
    y = problem.targets(loss)
    sides = KinkSides(mlp)

    def grad(theta):
        sides.record(theta, X)
        return gcref.loss_grad(mlp, theta, X, y, loss)

    result = check_jvp(grad, params, lambda v: gcref.loss_hvp(mlp, params, X, y, loss, v),
                       problem.rng, fn_scale=gradient_scale(problem, y), raise_on_failure=False)
    sides.assume_no_kink_crossed()
    assert result.passed, result


def points_off_kinks(x, kinks):
    """Move points within reach of the checker from a kink to beyond that reach.

    The checker evaluates at ``x +- t v`` and ``x +- 2 t v`` with ``t = default_step(x)``
    (which grows with ``max |x|``: 1.8e-4 at |x| = 30) and standard normal ``v``, so a
    point ``20 t`` from a kink stays on its side unless ``|v_i| > 10``. A fixed margin of
    1e-3 was crossed at ``x = [0, 25, 0]`` (thorough profile).
    """
    x = np.array(x, dtype=np.float64)
    margin = 20 * default_step(x)
    for kink in kinks:
        near = np.abs(x - kink) < margin
        x[near] = kink + margin
    return x


@given(
    activation=activations(),
    x=hnp.arrays(np.float64, st.integers(1, 8), elements=st.floats(-30.0, 30.0)),
    seed=st.integers(0, 2**32 - 1),
)
@example(activation="relu", x=np.array([0.0, 25.0, 0.0]), seed=3)  # crossed a fixed 1e-3 margin
def test_activation_derivatives_match_finite_differences(activation, x, seed):
    act = gcref.get_activation(activation)
    x = points_off_kinks(x, act.kinks)
    rng = np.random.default_rng(seed)
    # fn and d1 are computed from values of size up to max(1, |x|) (softplus adds x to a
    # log1p, tanh' is 1 - tanh^2): that, not |d1| itself, sets their rounding noise.
    fn_scale = max(1.0, float(np.max(np.abs(x))))
    check_jvp(act, x, lambda v: act.d1(x) * v, rng, fn_scale=fn_scale)
    check_jvp(act.d1, x, lambda v: act.d2(x) * v, rng, fn_scale=fn_scale)


def deep_linear_logistic_problem():
    """The thorough profile's counterexample of issue 16: a deep linear net with large weights.

    ``MLP((1, 4, 1, 2, 1), activation="identity")`` with weights up to 6.8 and two inputs,
    under the logistic loss (drawn by ``problems()`` at scale 2). Along a random direction
    ``v`` the output moves by ``D_v f ~ 100``, so the loss's third derivative is ~10^4 times
    its first and a single central difference errs by more than the float64 tolerance.
    """
    mlp = gcref.MLP((1, 4, 1, 2, 1), activation="identity")
    params = mlp.check_params((
        (np.array([[1.7886077147614492], [-1.864556323099288], [-1.5065431780421568],
                   [1.5105296874349752]]),
         np.array([-6.340679302920316, -3.2828300111101543, -1.9826395313308347,
                   2.7327028902633828])),
        (np.array([[2.88647445114613, 0.6564440162213022, -0.5437852129882019,
                    0.47323092856406607]]),
         np.array([0.6551947367834692])),
        (np.array([[0.7327033388004444], [-6.818363154395353]]),
         np.array([2.1959432662103384, -0.962437069516862])),
        (np.array([[1.8776565938737104, 0.1639775334174832]]), np.array([0.5235510960934663])),
    ))
    X = np.array([[-0.06577256310185237], [-1.1793905574456736]])
    return mlp, params, X, np.array([1, 0])


def test_loss_grad_of_a_deep_linear_net_with_large_weights_passes_the_checker():
    """Regression (issue 16 item 1): the check compares with a Richardson extrapolation."""
    mlp, params, X, y = deep_linear_logistic_problem()

    def mean_loss(theta):
        return gcref.mean_loss(mlp, theta, X, y, "logistic")

    grad = gcref.loss_grad(mlp, params, X, y, "logistic")
    flat = gcref.flatten_params(grad)
    rng = np.random.default_rng(0)
    one_step_errors = []
    for _ in range(40):
        v = rng.normal(size=flat.size)
        plain = central_difference(mean_loss, params, gcref.unflatten_params(v, params))[0]
        one_step_errors.append(abs(plain - flat @ v) / (np.linalg.norm(flat) * np.linalg.norm(v)))
    rtol = default_rtol(np.float64)
    assert max(one_step_errors) > rtol, "the example no longer defeats a single central difference"
    fn_scale = max(1.0, float(np.max(np.abs(gcref.predict(mlp, params, X)))))
    result = check_vjp(mean_loss, params, lambda u: scalar_times(u, grad), np.random.default_rng(1),
                       n_probes=40, fn_scale=fn_scale, raise_on_failure=False)
    assert result.passed, result
    assert result.error < rtol / 100
    planted = check_vjp(mean_loss, params, lambda u: scalar_times(1.001 * u, grad),
                        np.random.default_rng(1), n_probes=40, fn_scale=fn_scale,
                        raise_on_failure=False)
    assert not planted.passed, planted
