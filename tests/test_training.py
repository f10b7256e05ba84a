"""The training loop: the numpy reference, its penalties, and the other backends against it."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gcref
from gcref import igr
from gcref.testing import check_vjp
from gcref.training import (
    METRICS,
    GCPenalty,
    IGRPenalty,
    L2Penalty,
    PerExampleIGRPenalty,
    SpectralPenalty,
    train,
)
from tests.strategies import problems

ANALYTIC_PENALTIES = (L2Penalty(0.03), SpectralPenalty(0.05), IGRPenalty(0.2),
                      PerExampleIGRPenalty(0.2))


def _problem(seed=0, n=8, loss="squared"):
    rng = np.random.default_rng(seed)
    mlp = gcref.MLP((2, 5, 1), activation="tanh")
    params = mlp.init(rng, bias="normal")
    X = rng.normal(size=(n, 2))
    y = rng.normal(size=(n, 1)) if loss == "squared" else rng.integers(0, 2, size=n)
    return mlp, params, X, y


def _flat(params):
    return gcref.flatten_params(params)


def _scaled(pairs, factor):
    return tuple((factor * W, factor * b) for W, b in pairs)


# -- the numpy reference ----------------------------------------------------------
def test_plain_gd_is_the_hand_written_loop():
    mlp, params, X, y = _problem()
    result = train(mlp, params, X, y, "squared", steps=5, lr=0.1)
    theta = params
    for _ in range(5):
        g = gcref.loss_grad(mlp, theta, X, y, "squared")
        theta = tuple((W - 0.1 * dW, b - 0.1 * db) for (W, b), (dW, db) in zip(theta, g))
    np.testing.assert_allclose(_flat(result.params), _flat(theta), rtol=1e-12, atol=1e-14)


def test_sgd_visits_every_example_once_per_epoch_in_a_shuffled_order():
    """Brute force: replay the generator's permutations and the mini-batch steps by hand."""
    mlp, params, X, y = _problem(n=7)
    result = train(mlp, params, X, y, "squared", steps=6, lr=0.1, batch_size=3,
                   rng=np.random.default_rng(5))
    rng = np.random.default_rng(5)
    theta, batches = params, []
    for _ in range(6):
        if not batches:
            order = rng.permutation(7)
            batches = [order[:3], order[3:6], order[6:]]
        idx = batches.pop(0)
        g = gcref.loss_grad(mlp, theta, X[idx], y[idx], "squared")
        theta = tuple((W - 0.1 * dW, b - 0.1 * db) for (W, b), (dW, db) in zip(theta, g))
    np.testing.assert_allclose(_flat(result.params), _flat(theta), rtol=1e-12, atol=1e-14)


@given(problems(max_examples=5, max_depth=3, max_width=5,
                activation_names=("identity", "tanh", "sigmoid", "softplus")),
       st.sampled_from(range(len(ANALYTIC_PENALTIES))))
def test_numpy_penalty_gradients_match_central_differences(problem, which):
    penalty = ANALYTIC_PENALTIES[which]
    mlp, params, X = problem.mlp, problem.params, problem.X
    y = problem.targets("squared")
    be = gcref.get_backend("numpy")
    loss = gcref.get_loss("squared")
    targets = loss.prepare_targets(y, X.shape[0], mlp.output_dim, X.dtype)
    grad = tuple(tuple(p) for p in penalty.gradient(be, mlp, list(params), X, targets, loss))
    if isinstance(penalty, SpectralPenalty):
        # The gradient u1 v1^T needs a simple top singular value.
        for W, _ in params:
            s = np.linalg.svd(W, compute_uv=False)
            if len(s) > 1 and s[0] - s[1] < 1e-3 * s[0]:
                return
    check_vjp(lambda p: penalty.value(be, mlp, list(p), X, targets, loss), params,
              lambda u: _scaled(grad, float(np.ravel(u)[0])),
              np.random.default_rng(0))


def test_penalty_values_are_their_formulas():
    mlp, params, X, y = _problem()
    be, loss = gcref.get_backend("numpy"), gcref.get_loss("squared")
    targets = y
    args = (be, mlp, list(params), X, targets, loss)
    np.testing.assert_allclose(L2Penalty(0.3).value(*args), 0.3 * sum(np.sum(W**2) for W, _ in params))
    np.testing.assert_allclose(SpectralPenalty(0.3).value(*args),
                               0.3 * sum(np.linalg.norm(W, 2) for W, _ in params))
    h = 0.2
    L = gcref.mean_loss(mlp, params, X, y, "squared")
    np.testing.assert_allclose(IGRPenalty(h).value(*args),
                               igr.modified_loss_gd(mlp, params, X, y, "squared", h) - L)
    np.testing.assert_allclose(PerExampleIGRPenalty(h).value(*args),
                               igr.modified_loss_per_example(mlp, params, X, y, "squared", h) - L)


def test_explicit_igr_penalty_steps_on_the_modified_loss():
    """GD with IGRPenalty(h) is GD on L~_GD: the gradient is grad L + (h/2) H grad L."""
    mlp, params, X, y = _problem()
    result = train(mlp, params, X, y, "squared", steps=1, lr=0.1, penalties=[IGRPenalty(0.3)])
    g = igr.modified_loss_gd_grad(mlp, params, X, y, "squared", 0.3)
    expected = tuple((W - 0.1 * dW, b - 0.1 * db) for (W, b), (dW, db) in zip(params, g))
    np.testing.assert_allclose(_flat(result.params), _flat(expected), rtol=1e-12, atol=1e-14)


# -- every backend against the numpy loop, step by step ----------------------------
@pytest.mark.parametrize("batch_size", [None, 4])
def test_backends_follow_the_numpy_loop_step_by_step(autodiff_backend, batch_size):
    mlp, params, X, y = _problem(loss="logistic")
    kwargs = dict(steps=4, lr=0.2, batch_size=batch_size, penalties=ANALYTIC_PENALTIES,
                  record_every=1, metrics=("loss", "layer_norms"))
    reference = train(mlp, params, X, y, "logistic", rng=np.random.default_rng(3), **kwargs)
    result = train(mlp, params, X, y, "logistic", rng=np.random.default_rng(3),
                   backend=autodiff_backend, **kwargs)
    np.testing.assert_array_equal(result.history["step"], np.arange(5))
    for key in ("loss", "frobenius_norms", "spectral_norms"):
        np.testing.assert_allclose(result.history[key], reference.history[key], rtol=1e-10)
    np.testing.assert_allclose(_flat(result.params), _flat(reference.params), rtol=1e-10, atol=1e-12)


def test_gc_penalty_is_autodiff_only_and_the_autodiff_backends_agree(autodiff_backend):
    pytest.importorskip("gcref.complexity")
    mlp, params, X, y = _problem()
    with pytest.raises(ValueError, match="GCPenalty"):
        train(mlp, params, X, y, "squared", steps=1, lr=0.1, penalties=[GCPenalty(0.1)])
    kwargs = dict(steps=3, lr=0.1, penalties=[GCPenalty(0.1), L2Penalty(0.01)])
    reference = train(mlp, params, X, y, "squared", backend="autograd", **kwargs)
    result = train(mlp, params, X, y, "squared", backend=autodiff_backend, **kwargs)
    np.testing.assert_allclose(_flat(result.params), _flat(reference.params), rtol=1e-10, atol=1e-12)
    # One step of the autograd reference against central differences of the objective.
    from gcref.complexity import geometric_complexity

    one = train(mlp, params, X, y, "squared", steps=1, lr=1.0, backend="autograd",
                penalties=[GCPenalty(0.1)])
    grad = tuple((W - W1, b - b1) for (W, b), (W1, b1) in zip(params, one.params))
    check_vjp(lambda p: gcref.mean_loss(mlp, p, X, y, "squared") + 0.1 * geometric_complexity(mlp, p, X),
              params, lambda u: _scaled(grad, float(np.ravel(u)[0])),
              np.random.default_rng(0))


# -- optimisers and metrics -------------------------------------------------------
class _RecordingGD:
    """Minimal optimiser protocol: plain GD that records the step numbers it is given."""

    def __init__(self, lr):
        self.lr = lr
        self.steps = []

    def update(self, mlp, params, grads, step):
        self.steps.append(step)
        return tuple((W - self.lr * dW, b - self.lr * db) for (W, b), (dW, db) in zip(params, grads))


class _OptimizerWithoutLr:
    def update(self, mlp, params, grads, step):
        return params


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_any_optimizer_object_can_drive_the_loop(backend_name):
    if backend_name not in gcref.available_backends():
        pytest.skip("torch is not installed")
    mlp, params, X, y = _problem()
    opt = _RecordingGD(0.1)
    result = train(mlp, params, X, y, "squared", steps=3, optimizer=opt,
                   penalties=[L2Penalty(0.01)], backend=backend_name)
    reference = train(mlp, params, X, y, "squared", steps=3, lr=0.1, penalties=[L2Penalty(0.01)])
    assert opt.steps == [1, 2, 3]
    np.testing.assert_allclose(_flat(result.params), _flat(reference.params), rtol=1e-12, atol=1e-14)


def test_the_library_optimizers_fit_the_protocol():
    optimizers = pytest.importorskip("gcref.optimizers")
    mlp, params, X, y = _problem()
    result = train(mlp, params, X, y, "squared", steps=3, optimizer=optimizers.GradientDescent(0.1))
    reference = train(mlp, params, X, y, "squared", steps=3, lr=0.1)
    np.testing.assert_allclose(_flat(result.params), _flat(reference.params), rtol=1e-12, atol=1e-14)


def test_metrics_are_recorded_at_the_chosen_steps():
    mlp, params, X, y = _problem()
    result = train(mlp, params, X, y, "squared", steps=7, lr=0.1, record_every=3,
                   metrics=("loss", "igr", "layer_norms"))
    np.testing.assert_array_equal(result.history["step"], [0, 3, 6, 7])
    again = train(mlp, params, X, y, "squared", steps=3, lr=0.1)
    np.testing.assert_allclose(result.history["loss"][1],
                               gcref.mean_loss(mlp, again.params, X, y, "squared"), rtol=1e-12)
    g = _flat(gcref.loss_grad(mlp, again.params, X, y, "squared"))
    np.testing.assert_allclose(result.history["igr"][1], 0.1 / 4 * g @ g, rtol=1e-10)
    np.testing.assert_allclose(result.history["spectral_norms"][0],
                               [np.linalg.norm(W, 2) for W, _ in params], rtol=1e-12)
    assert result.history["frobenius_norms"].shape == (4, mlp.depth)


def test_gc_and_transfer_ratio_metrics():
    """Only these metrics need gcref.complexity and gcref.transfer."""
    complexity = pytest.importorskip("gcref.complexity")
    transfer = pytest.importorskip("gcref.transfer")
    mlp, params, X, y = _problem()
    result = train(mlp, params, X, y, "squared", steps=2, lr=0.1, metrics=METRICS)
    np.testing.assert_allclose(result.history["gc"][-1],
                               complexity.geometric_complexity(mlp, result.params, X), rtol=1e-12)
    np.testing.assert_allclose(result.history["transfer_ratio"][0],
                               np.mean(transfer.transfer_ratio(mlp, params, X)), rtol=1e-12)
    J = gcref.input_jacobian(mlp, params, X)
    np.testing.assert_allclose(result.history["gc"][0], np.mean(np.sum(J**2, axis=(1, 2))), rtol=1e-12)


def test_bad_input_raises_clear_errors():
    mlp, params, X, y = _problem()
    with pytest.raises(ValueError, match="exactly one"):
        train(mlp, params, X, y, "squared", steps=1)
    with pytest.raises(ValueError, match="exactly one"):
        train(mlp, params, X, y, "squared", steps=1, lr=0.1, optimizer=_RecordingGD(0.1))
    with pytest.raises(TypeError, match="update"):
        train(mlp, params, X, y, "squared", steps=1, optimizer=object())
    with pytest.raises(TypeError, match="rng"):
        train(mlp, params, X, y, "squared", steps=1, lr=0.1, batch_size=2)
    with pytest.raises(ValueError, match="unknown metric"):
        train(mlp, params, X, y, "squared", steps=1, lr=0.1, metrics=("accuracy",))
    with pytest.raises(TypeError, match="Penalty"):
        train(mlp, params, X, y, "squared", steps=1, lr=0.1, penalties=["l2"])
    with pytest.raises(ValueError, match="igr_h"):
        train(mlp, params, X, y, "squared", steps=1, optimizer=_OptimizerWithoutLr(),
              metrics=("igr",))


# -- the compiled torch step ----------------------------------------------------------
def test_compiled_torch_step_follows_the_eager_step():
    """The torch.func objective, compiled, is the eager objective (which follows numpy above).

    One compilation holds every penalty (compiling costs 10-25 s on 2 cores); SGD and an
    optimizer object exercise the gradient-only variant.
    """
    if "torch" not in gcref.available_backends():
        pytest.fail("torch is not installed") if os.environ.get("CI") else pytest.skip("torch")
    mlp, params, X, y = _problem(loss="logistic")
    penalties = ANALYTIC_PENALTIES + (GCPenalty(0.1),)
    results = [
        train(mlp, params, X, y, "logistic", steps=3, optimizer=_RecordingGD(0.2), batch_size=4,
              rng=np.random.default_rng(3), backend="torch", compiled=compiled,
              penalties=penalties)
        for compiled in (False, True)
    ]
    np.testing.assert_allclose(_flat(results[1].params), _flat(results[0].params),
                               rtol=1e-10, atol=1e-12)
    assert not np.allclose(_flat(results[1].params), _flat(params))


class _CustomPenalty(L2Penalty):
    """A subclass: its value may differ from L2's, so it must never be compiled as L2."""


def test_compiled_is_refused_where_it_cannot_apply():
    mlp, params, X, y = _problem()
    with pytest.raises(ValueError, match="compiled=True applies to the torch backend"):
        train(mlp, params, X, y, "squared", steps=1, lr=0.1, compiled=True)
    with pytest.raises(TypeError, match="compiled must be"):
        train(mlp, params, X, y, "squared", steps=1, lr=0.1, compiled="yes")
    if "torch" in gcref.available_backends():
        with pytest.raises(ValueError, match="cannot compile the penalty"):
            train(mlp, params, X, y, "squared", steps=1, lr=0.1, backend="torch",
                  compiled=True, penalties=[_CustomPenalty(0.1)])
