"""The training loop: the numpy reference, its penalties, and the other backends against it."""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gcref
from gcref import igr
from gcref.params import flat_arrays, pairs
from gcref.testing import check_vjp
from gcref.training import (
    METRICS,
    GCPenalty,
    IGRPenalty,
    L2Penalty,
    Penalty,
    PerExampleIGRPenalty,
    SpectralPenalty,
    TrainingDiverged,
    TrainResult,
    train,
)
from tests.conftest import require_backend
from gcref.testing.strategies import problems

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
    kwargs = {"steps": 4, "lr": 0.2, "batch_size": batch_size, "penalties": ANALYTIC_PENALTIES,
              "record_every": 1, "metrics": ("loss", "layer_norms")}
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
    kwargs = {"steps": 3, "lr": 0.1, "penalties": [GCPenalty(0.1), L2Penalty(0.01)]}
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
    require_backend(backend_name)
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
class _OutputPenalty(Penalty):
    """A user's penalty ``strength * mean_n ||f(x_n)||^2``, written on the primitives.

    No analytic gradient: autodiff backends differentiate ``value``; it declares itself
    compilable, so the compiled step differentiates the same ``value``.
    """

    compilable = True

    def value(self, backend, mlp, params, X, targets, loss):
        f = backend.forward(mlp, params, X).output
        return self.strength * backend.xp.sum(f * f) / X.shape[0]


def test_compiled_torch_step_follows_the_eager_step():
    """The compiled objective (the penalties' values, differentiated by torch.func.grad)
    against the eager step (their gradients), which follows numpy above.

    One compilation holds every penalty (compiling costs 10-50 s on 2 cores), a user's
    compilable one included; SGD and an optimizer object exercise the gradient-only
    variant.
    """
    require_backend("torch")
    mlp, params, X, y = _problem(loss="logistic")
    penalties = ANALYTIC_PENALTIES + (GCPenalty(0.1), _OutputPenalty(0.05))
    results = [
        train(mlp, params, X, y, "logistic", steps=3, optimizer=_RecordingGD(0.2), batch_size=4,
              rng=np.random.default_rng(3), backend="torch", compiled=compiled,
              penalties=penalties)
        for compiled in (False, True)
    ]
    assert [r.settings["compiled"] for r in results] == [False, True]
    np.testing.assert_allclose(_flat(results[1].params), _flat(results[0].params),
                               rtol=1e-10, atol=1e-12)
    assert not np.allclose(_flat(results[1].params), _flat(params))


def test_the_functional_torch_backend_has_the_same_primitives_and_differentiates_them():
    """TorchBackend.functional() (torch.func) against TorchBackend (torch.autograd), eager:
    the primitives the penalties are written on, and torch.func.grad of each penalty value
    against that penalty's eager gradient (analytic or by the Hessian-vector product)."""
    require_backend("torch")
    import torch

    mlp, params, X, y = _problem(loss="logistic")
    eager = gcref.get_backend("torch")
    functional = eager.functional()
    loss = gcref.get_loss("logistic")
    rtol, atol = gcref.tolerance(np.float64)
    native = [tuple(torch.as_tensor(a) for a in pair) for pair in params]
    Xt = torch.as_tensor(X)
    T = torch.as_tensor(loss.prepare_targets(y, X.shape[0], mlp.output_dim, X.dtype))
    vector = [tuple(torch.ones_like(a) for a in pair) for pair in native]

    def same(a, b):
        np.testing.assert_allclose(np.asarray(a.detach()), np.asarray(b.detach()), rtol=rtol, atol=atol)

    for a, b in zip(flat_arrays(functional.loss_grad(mlp, native, Xt, T, loss)),
                    flat_arrays(eager.loss_grad(mlp, native, Xt, T, loss))):
        same(a, b)
    for a, b in zip(flat_arrays(functional.loss_hvp(mlp, native, Xt, T, loss, vector)),
                    flat_arrays(eager.loss_hvp(mlp, native, Xt, T, loss, vector))):
        same(a, b)
    same(functional.input_jacobian(mlp, native, Xt), eager.input_jacobian(mlp, native, Xt))
    for a, b in zip(functional.loss_grad_sq_norms(mlp, native, Xt, T, loss),
                    eager.loss_grad_sq_norms(mlp, native, Xt, T, loss)):
        same(a, b)
    for penalty in ANALYTIC_PENALTIES:
        def value(*flat, penalty=penalty):
            return penalty.value(functional, mlp, pairs(flat), Xt, T, loss)

        grads = torch.func.grad(value, argnums=tuple(range(2 * mlp.depth)))(*flat_arrays(native))
        with torch.no_grad():
            expected = penalty.gradient(eager, mlp, native, Xt, T, loss)
        for a, b in zip(grads, flat_arrays(expected)):
            same(a, b)


def test_a_penalty_without_analytic_gradient_is_refused_by_numpy_before_training():
    mlp, params, X, y = _problem()
    with pytest.raises(ValueError, match="_OutputPenalty has no analytic gradient in the numpy"):
        train(mlp, params, X, y, "squared", steps=1, lr=0.1, penalties=[_OutputPenalty(0.1)])


def test_the_output_penalty_gradient_is_its_value_differentiated():
    """The test penalty above, eager in autograd, against central differences."""
    require_backend("autograd")
    mlp, params, X, y = _problem()
    penalty = _OutputPenalty(0.3)
    one = train(mlp, params, X, y, "squared", steps=1, lr=1.0, backend="autograd",
                penalties=[penalty])
    grad = tuple((W - W1, b - b1) for (W, b), (W1, b1) in zip(params, one.params))

    def objective(p):
        f = gcref.predict(mlp, p, X)
        return gcref.mean_loss(mlp, p, X, y, "squared") + 0.3 * np.sum(f * f) / X.shape[0]

    check_vjp(objective, params, lambda u: _scaled(grad, float(np.ravel(u)[0])),
              np.random.default_rng(0))


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


def test_compiled_needs_the_flag_in_the_class_body_not_inherited():
    """_CustomPenalty inherits compilable = True from L2Penalty: still refused (above)."""
    assert L2Penalty.compilable and _CustomPenalty.compilable
    assert "compilable" not in vars(_CustomPenalty)


# -- divergence ----------------------------------------------------------------------
def _diverging_problem():
    """A deep linear network whose GD at lr = 0.5 overflows within a few steps."""
    rng = np.random.default_rng(0)
    mlp = gcref.MLP((2, 5, 5, 1), activation="identity")
    params = mlp.init(rng, bias="normal")
    return mlp, params, rng.normal(size=(8, 2)), rng.normal(size=(8, 1))


def _first_non_finite_step(mlp, params, X, y, lr):
    """Brute force: GD by hand until a parameter is not finite; (that step, the params before)."""
    theta = params
    for step in range(1, 100):
        g = gcref.loss_grad(mlp, theta, X, y, "squared")
        new = tuple((W - lr * dW, b - lr * db) for (W, b), (dW, db) in zip(theta, g))
        if not all(np.all(np.isfinite(a)) for pair in new for a in pair):
            return step, theta
        theta = new
    raise AssertionError("the reference run did not diverge")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_training_stops_at_the_first_non_finite_parameter(backend):
    mlp, params, X, y = _diverging_problem()
    with np.errstate(all="ignore"):
        step, before = _first_non_finite_step(mlp, params, X, y, 0.5)
        with pytest.raises(TrainingDiverged, match=f"at step {step} of 50: a parameter") as info:
            train(mlp, params, X, y, "squared", steps=50, lr=0.5, backend=backend,
                  record_every=2, metrics=("loss", "layer_norms"))
    assert step >= 3
    error = info.value
    assert isinstance(error, ValueError)
    assert error.step == step and error.result.diverged_at == step
    np.testing.assert_allclose(_flat(error.result.params), _flat(before), rtol=1e-8)
    assert np.all(np.isfinite(_flat(error.result.params)))
    # The history runs to the last finite step, recorded even off the record_every grid.
    recorded = list(range(0, step, 2)) + ([step - 1] if (step - 1) % 2 else [])
    np.testing.assert_array_equal(error.result.history["step"], recorded)
    np.testing.assert_allclose(error.result.history["loss"][-1],
                               gcref.mean_loss(mlp, before, X, y, "squared"), rtol=1e-8)
    assert error.result.history["frobenius_norms"].shape == (len(recorded), mlp.depth)
    again = pickle.loads(pickle.dumps(error))
    assert again.step == step and str(again) == str(error)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_training_with_an_optimizer_stops_at_the_same_step():
    mlp, params, X, y = _diverging_problem()
    with np.errstate(all="ignore"):
        step, before = _first_non_finite_step(mlp, params, X, y, 0.5)
        with pytest.raises(TrainingDiverged) as info:
            train(mlp, params, X, y, "squared", steps=50, optimizer=_RecordingGD(0.5))
    assert info.value.step == step
    np.testing.assert_allclose(_flat(info.value.result.params), _flat(before), rtol=1e-12)


def test_training_stops_at_a_non_finite_loss_with_finite_parameters():
    """f = w x with w = 1e153: the loss (f - y)^2 / 2 is finite; one step at lr = 10 gives
    w = -9e153, finite, whose loss overflows to inf."""
    mlp = gcref.MLP((1, 1), activation="identity")
    params = ((np.array([[1e153]]), np.zeros(1)),)
    X, y = np.ones((1, 1)), np.zeros((1, 1))
    with np.errstate(over="ignore"), pytest.raises(TrainingDiverged, match="step 1 of 5: the loss") as info:
        train(mlp, params, X, y, "squared", steps=5, lr=10.0, record_every=1)
    result = info.value.result
    assert info.value.step == result.diverged_at == 1
    np.testing.assert_allclose(result.params[0][0], [[-9e153]], rtol=1e-12)
    np.testing.assert_array_equal(result.history["step"], [0, 1])
    np.testing.assert_allclose(result.history["loss"][0], 0.5e306, rtol=1e-12)
    assert result.history["loss"][1] == np.inf


# -- progress ------------------------------------------------------------------------
class _Terminal:
    """A stand-in for a terminal's stderr: collects what is written."""

    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_progress_is_shown_on_request_and_in_a_terminal_only(capsys, monkeypatch):
    mlp, params, X, y = _problem()
    train(mlp, params, X, y, "squared", steps=4, lr=0.1, progress=True)
    assert "train: 4/4 steps" in capsys.readouterr().err
    train(mlp, params, X, y, "squared", steps=4, lr=0.1)
    train(mlp, params, X, y, "squared", steps=4, lr=0.1, progress=False)
    assert capsys.readouterr().err == ""  # pytest's captured stderr is not a terminal
    # No metrics here: the measures that record them have progress lines of their own.
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    train(mlp, params, X, y, "squared", steps=3, lr=0.1, metrics=())
    assert "train: 3/3 steps" in terminal.text
    terminal.text = ""
    train(mlp, params, X, y, "squared", steps=3, lr=0.1, metrics=(), progress=False)
    assert terminal.text == ""
    with pytest.raises(TypeError, match="progress must be"):
        train(mlp, params, X, y, "squared", steps=1, lr=0.1, progress="yes")


# -- saving --------------------------------------------------------------------------
def test_train_result_saves_and_loads_with_its_settings(tmp_path):
    mlp, params, X, y = _problem(n=7)
    params = tuple((W.astype(np.float32), b.astype(np.float32)) for W, b in params)
    X, y = X.astype(np.float32), y.astype(np.float32)
    rng = np.random.default_rng(11)
    result = train(mlp, params, X, y, "squared", steps=5, lr=0.1, batch_size=3, rng=rng,
                   penalties=[L2Penalty(0.01), IGRPenalty(0.2)], record_every=2,
                   metrics=("loss", "layer_norms"))
    data = result.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text) == data
    settings = data["settings"]
    assert settings["mlp"] == {"sizes": [2, 5, 1], "activation": "tanh",
                               "output_activation": "identity"}
    assert settings["penalties"] == [{"type": "L2Penalty", "strength": 0.01},
                                     {"type": "IGRPenalty", "strength": 0.2}]
    assert (settings["steps"], settings["lr"], settings["batch_size"]) == (5, 0.1, 3)
    assert (settings["loss"], settings["dtype"], settings["backend"]) == ("squared", "float32", "numpy")
    assert data["diverged_at"] is None

    path = tmp_path / "run.json"
    result.save(path)
    loaded = TrainResult.load(path)
    assert loaded.to_dict() == data and loaded.diverged_at is None
    for (W, b), (W1, b1) in zip(result.params, loaded.params):
        assert W1.dtype == np.float32 and b1.dtype == np.float32
        np.testing.assert_array_equal(W1, W)
        np.testing.assert_array_equal(b1, b)
    assert loaded.history.keys() == result.history.keys()
    for key, value in result.history.items():
        np.testing.assert_array_equal(loaded.history[key], value)
    assert loaded.history["step"].dtype.kind == "i"

    # The saved generator state replays the run: the settings are those that produced it.
    replay = np.random.default_rng()
    replay.bit_generator.state = loaded.settings["rng_state"]
    again = train(mlp, params, X, y, "squared", steps=5, lr=0.1, batch_size=3, rng=replay,
                  penalties=[L2Penalty(0.01), IGRPenalty(0.2)])
    np.testing.assert_array_equal(_flat(again.params), _flat(result.params))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_diverged_run_saves_its_history_and_where_it_stopped(tmp_path):
    mlp, params, X, y = _diverging_problem()
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged) as info:
        train(mlp, params, X, y, "squared", steps=50, lr=0.5)
    info.value.result.save(tmp_path / "diverged.json")
    loaded = TrainResult.load(tmp_path / "diverged.json")
    assert loaded.diverged_at == info.value.step
    np.testing.assert_array_equal(loaded.history["step"], info.value.result.history["step"])


def test_non_finite_history_values_are_saved_as_null_and_read_as_nan(tmp_path):
    result = TrainResult(((np.eye(2), np.zeros(2)),),
                         {"step": np.array([0, 1]), "loss": np.array([1.0, np.inf])})
    assert result.to_dict()["history"]["loss"] == [1.0, None]
    result.save(tmp_path / "r.json")
    np.testing.assert_array_equal(TrainResult.load(tmp_path / "r.json").history["loss"], [1.0, np.nan])


def test_loading_something_else_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="to_dict\\(\\) of a TrainResult"):
        TrainResult.from_dict({"type": "IGRTerms"})
    with pytest.raises(ValueError, match="to_dict\\(\\) of a TrainResult"):
        TrainResult.from_dict([1, 2])
