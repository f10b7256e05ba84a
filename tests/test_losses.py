"""Losses of MATH.md section 4: residuals and Hessians against finite differences, exact
values at logits of size 1e3 against 60-digit decimal arithmetic, and label checks."""

from __future__ import annotations

import decimal

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gcref
from gcref.testing import check_jvp, check_vjp

NUMPY = gcref.get_backend("numpy")
LOSS_OUTPUTS = {"squared": (1, 4), "logistic": (1, 1), "softmax_cross_entropy": (2, 4)}


@st.composite
def logits_and_targets(draw, loss, bound=30.0):
    """Logits f of shape (N, k) within [-bound, bound] and prepared targets for ``loss``."""
    lo, hi = LOSS_OUTPUTS[loss]
    n = draw(st.integers(1, 5))
    k = draw(st.integers(lo, hi))
    f = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(-bound, bound)))
    if loss == "squared":
        y = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(-bound, bound)))
    else:
        y = np.array(draw(st.lists(st.integers(0, 1 if loss == "logistic" else k - 1),
                                   min_size=n, max_size=n)))
    return f, gcref.get_loss(loss).prepare_targets(y, n, k, np.float64)


@pytest.mark.parametrize("loss", sorted(LOSS_OUTPUTS))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_residual_is_the_derivative_of_the_per_example_loss(loss, data, seed):
    f, targets = data.draw(logits_and_targets(loss))
    spec = gcref.get_loss(loss)

    def per_example(f):
        return spec.per_example(f, targets)

    # l_n depends on f_n only, so J^T u has rows u_n eps_n. The loss is computed from
    # values of size |f| and |y| (logsumexp(f) - f_y cancels), which sets its rounding noise.
    scale = max(1.0, float(np.max(np.abs(f))), float(np.max(np.abs(targets))))
    check_vjp(per_example, f, lambda u: u[:, None] * spec.residual(f, targets),
              np.random.default_rng(seed), fn_scale=scale)


@pytest.mark.parametrize("loss", sorted(LOSS_OUTPUTS))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_hessian_vector_is_the_derivative_of_the_residual(loss, data, seed):
    f, targets = data.draw(logits_and_targets(loss))
    spec = gcref.get_loss(loss)
    # The residual (softmax(f) - onehot, sigmoid(f) - y, f - y) cancels values of size
    # max(1, |f|, |y|).
    scale = max(1.0, float(np.max(np.abs(f))), float(np.max(np.abs(targets))))
    check_jvp(lambda f: spec.residual(f, targets), f,
              lambda v: spec.hessian_vector(f, targets, v), np.random.default_rng(seed),
              fn_scale=scale)


# -- stability at large logits, against exact decimal arithmetic ------------------------

DIGITS = decimal.Context(prec=60, Emax=10**6, Emin=-(10**6))


def exact_logistic(f, y):
    """log(1 + e^f) - y f and sigmoid(f) - y in 60-digit decimals."""
    d = DIGITS.create_decimal_from_float(float(f))
    e = DIGITS.exp(d)
    loss = DIGITS.ln(DIGITS.add(1, e)) - d * y
    residual = DIGITS.divide(e, DIGITS.add(1, e)) - y
    return float(DIGITS.plus(loss)), float(DIGITS.plus(residual))


def exact_softmax_cross_entropy(f, label):
    """logsumexp(f) - f_y and softmax(f) - onehot(y) in 60-digit decimals."""
    ds = [DIGITS.create_decimal_from_float(float(v)) for v in f]
    es = [DIGITS.exp(d) for d in ds]
    total = sum(es, decimal.Decimal(0))
    loss = DIGITS.ln(total) - ds[label]
    residual = [float(DIGITS.divide(e, total) - (1 if j == label else 0)) for j, e in enumerate(es)]
    return float(DIGITS.plus(loss)), residual


def assert_near_exact(got, exact, f):
    """Within float64 round-off of the inputs: the loss and residual are computed from
    values of size |f|, so an absolute error of a few eps |f| is unavoidable."""
    got, exact = np.asarray(got, dtype=np.float64), np.asarray(exact, dtype=np.float64)
    assert np.all(np.isfinite(got))
    allowed = 1e-12 * np.abs(exact) + 8 * np.finfo(np.float64).eps * max(1.0, float(np.max(np.abs(f))))
    assert np.all(np.abs(got - exact) <= allowed), (got, exact)


LARGE = st.floats(-1e3, 1e3)


@given(f=LARGE, y=st.integers(0, 1))
@example(f=1e3, y=0)
@example(f=1e3, y=1)
@example(f=-1e3, y=0)
@example(f=-1e3, y=1)
def test_logistic_loss_is_exact_at_large_logits(f, y):
    spec = gcref.get_loss("logistic")
    logits = np.array([[f]])
    targets = spec.prepare_targets(np.array([y]), 1, 1, np.float64)
    loss, residual = exact_logistic(f, y)
    assert_near_exact(spec.per_example(logits, targets), [loss], logits)
    assert_near_exact(spec.residual(logits, targets), [[residual]], logits)


@given(f=st.lists(LARGE, min_size=2, max_size=4), data=st.data())
@example(f=[1e3, -1e3], data=None)
@example(f=[-1e3, 1e3, 1e3], data=None)
def test_softmax_cross_entropy_is_exact_at_large_logits(f, data):
    label = 0 if data is None else data.draw(st.integers(0, len(f) - 1), label="label")
    spec = gcref.get_loss("softmax_cross_entropy")
    logits = np.array([f])
    targets = spec.prepare_targets(np.array([label]), 1, len(f), np.float64)
    loss, residual = exact_softmax_cross_entropy(f, label)
    assert_near_exact(spec.per_example(logits, targets), [loss], logits)
    assert_near_exact(spec.residual(logits, targets), [residual], logits)
    assert np.all(np.isfinite(spec.hessian_vector(logits, targets, np.ones_like(logits))))


@pytest.mark.parametrize("loss", ["logistic", "softmax_cross_entropy"])
def test_mean_loss_and_gradient_are_finite_for_an_mlp_with_logits_of_size_1e3(loss, backend):
    k = 1 if loss == "logistic" else 3
    mlp = gcref.MLP((2, 4, k), activation="tanh")
    (W1, b1), (W2, b2) = mlp.init(np.random.default_rng(0), bias="normal")
    params = ((W1, b1), (1e3 * W2, 1e3 * b2))
    X = np.random.default_rng(1).normal(size=(5, 2))
    y = np.arange(5) % (2 if loss == "logistic" else k)
    assert np.max(np.abs(gcref.predict(mlp, params, X))) > 100
    assert np.isfinite(gcref.mean_loss(mlp, params, X, y, loss, backend=backend))
    for pair in gcref.loss_grad(mlp, params, X, y, loss, backend=backend):
        assert all(np.all(np.isfinite(a)) for a in pair)


# -- targets and labels -------------------------------------------------------------------

def prepare(loss, y, n, k):
    return gcref.get_loss(loss).prepare_targets(np.asarray(y), n, k, np.float64)


def test_one_hot_rows_and_integer_labels_give_the_same_loss():
    f = np.random.default_rng(2).normal(size=(3, 4))
    labels = np.array([0, 3, 1])
    onehot = np.eye(4)[labels]
    spec = gcref.get_loss("softmax_cross_entropy")
    a = spec.per_example(f, prepare("softmax_cross_entropy", labels, 3, 4))
    b = spec.per_example(f, prepare("softmax_cross_entropy", onehot, 3, 4))
    np.testing.assert_array_equal(a, b)


def test_squared_loss_accepts_a_vector_of_targets_when_k_is_1():
    assert prepare("squared", np.zeros(3), 3, 1).shape == (3, 1)


@pytest.mark.parametrize(
    "loss, y, n, k, error, message",
    [
        ("logistic", [0, 2, 1], 3, 1, ValueError, "binary labels 0 or 1"),
        ("logistic", [0.5, 1.0, 0.0], 3, 1, ValueError, "binary labels 0 or 1"),
        ("logistic", [0, 1], 3, 1, ValueError, r"shape \(3,\)"),
        ("logistic", [0, 1, 1], 3, 2, ValueError, "k = 1"),
        ("softmax_cross_entropy", [0, 3, 1], 3, 3, ValueError, r"\[0, 3\)"),
        ("softmax_cross_entropy", [0, -1, 1], 3, 3, ValueError, r"\[0, 3\)"),
        ("softmax_cross_entropy", [0.0, 1.0, 2.0], 3, 3, TypeError, "integer dtype"),
        ("softmax_cross_entropy", [0, 1], 3, 3, ValueError, "3 labels"),
        ("softmax_cross_entropy", [0, 0, 0], 3, 1, ValueError, "k >= 2"),
        ("softmax_cross_entropy", [[0.5, 0.6], [1.0, 0.0]], 2, 2, ValueError, "sum to 1"),
        ("softmax_cross_entropy", [[1.5, -0.5], [1.0, 0.0]], 2, 2, ValueError, "non-negative"),
        ("squared", [[1.0], [2.0]], 3, 1, ValueError, r"y must have shape \(3, 1\)"),
        ("squared", [[np.nan], [2.0]], 2, 1, ValueError, "y contains NaN"),
    ],
)
def test_bad_targets_are_rejected_with_a_message_naming_y(loss, y, n, k, error, message):
    with pytest.raises(error, match=message):
        prepare(loss, y, n, k)
