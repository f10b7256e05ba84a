"""The public strategies of gcref.testing.strategies draw what their names say, within bounds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gcref
from gcref.testing import strategies as gst


@given(gst.problems(max_examples=3, max_depth=3, max_width=5, max_inputs=2, max_outputs=2))
def test_problems_respect_their_bounds(problem):
    mlp, X = problem.mlp, problem.X
    assert 1 <= mlp.depth <= 3
    assert all(1 <= n <= 5 for n in mlp.sizes[1:-1])
    assert 1 <= mlp.input_dim <= 2 and 1 <= mlp.output_dim <= 2
    assert 1 <= X.shape[0] <= 3 and X.shape[1] == mlp.input_dim
    assert problem.scale in gst.PARAMETER_SCALES
    assert X.dtype == np.float64
    assert all(W.shape == (m, n) and b.shape == (m,)
               for (W, b), n, m in zip(problem.params, mlp.sizes[:-1], mlp.sizes[1:]))


@given(gst.problems(dtype=np.float32))
def test_the_dtype_option_gives_float32_problems(problem):
    assert problem.X.dtype == np.float32
    assert all(W.dtype == np.float32 and b.dtype == np.float32 for W, b in problem.params)


@given(gst.problems(), st.data())
def test_make_problem_replays_a_drawn_problem(problem, data):
    """The seed and choices in describe() rebuild the same parameters and batch."""
    replay = gst.make_problem(problem.mlp.sizes, problem.mlp.activation, problem.X.shape[0],
                              problem.seed, scale=problem.scale)
    assert replay.mlp.sizes == problem.mlp.sizes
    assert replay.mlp.activation is problem.mlp.activation
    np.testing.assert_array_equal(replay.X, problem.X)
    for (W, b), (W2, b2) in zip(replay.params, problem.params):
        np.testing.assert_array_equal(W, W2)
        np.testing.assert_array_equal(b, b2)
    assert f"seed={problem.seed}" in problem.describe()


def test_describe_writes_a_call_that_runs():
    problem = gst.make_problem((2, 3, 1), gcref.leaky_relu(0.1), 4, seed=7, scale=2.0)
    text = problem.describe()
    call = text.split("replay: gcref.testing.strategies.")[1]
    replay = eval(call, {"make_problem": gst.make_problem, "gcref": gcref, "numpy": np})
    np.testing.assert_array_equal(replay.X, problem.X)
    assert replay.mlp.activation is problem.mlp.activation


@pytest.mark.parametrize("loss", gst.LOSS_NAMES)
@given(data=st.data())
def test_loss_problems_and_labels_suit_the_loss(loss, data):
    problem = data.draw(gst.loss_problems(loss))
    k, n = problem.mlp.output_dim, problem.X.shape[0]
    y = data.draw(gst.labels(loss, n, k))
    if loss == "squared":
        assert y.shape == (n, k) and y.dtype == np.float64
    elif loss == "logistic":
        assert k == 1 and y.shape == (n,) and set(np.unique(y)) <= {0, 1}
    else:
        assert k >= 2 and y.shape == (n,) and np.all((0 <= y) & (y < k))
    assert np.isfinite(gcref.mean_loss(problem.mlp, problem.params, problem.X, y, loss))


@pytest.mark.parametrize("loss", gst.LOSS_NAMES)
@given(data=st.data())
def test_fixed_shape_loss_problems_come_from_the_menu(loss, data):
    problem = data.draw(gst.loss_problems(loss, fixed_shapes=True))
    assert problem.mlp.sizes in gst.REPRESENTATIVE_SIZES
    assert problem.X.shape[0] == gst.REPRESENTATIVE_BATCH


@given(gst.mlps(activation_names=("relu", "leaky_relu", "identity")), st.data())
def test_rescalings_leave_a_homogeneous_network_unchanged(mlp, data):
    params = data.draw(gst.params(mlp))
    X = data.draw(gst.batches(mlp.input_dim))
    factors = data.draw(gst.rescalings(mlp, spread=3.0))
    assert [c.shape for c in factors] == [(n,) for n in mlp.sizes[1:-1]]
    assert all(np.all((c >= 1 / 3.0) & (c <= 3.0)) for c in factors)
    rescaled = gcref.rescale(mlp, params, factors)
    np.testing.assert_allclose(gcref.predict(mlp, rescaled, X), gcref.predict(mlp, params, X),
                               rtol=1e-12, atol=1e-12)


@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 3), st.data())
def test_probes_have_their_kind_and_shape(k, n, n_probes, data):
    v, kind = data.draw(gst.probes(k, n, n_probes))
    assert v.shape == (n, n_probes, k)
    if kind == "rademacher":
        assert set(np.unique(v)) <= {-1.0, 1.0}
    elif kind == "sphere":
        np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, rtol=1e-12)
    else:
        assert kind == "gaussian"


@given(st.integers(1, 12), st.integers(1, 3), st.data())
def test_minibatch_partitions_are_equal_sized_partitions(n, min_size, data):
    sizes = [s for s in range(min_size, n + 1) if n % s == 0]
    if not sizes:
        with pytest.raises(ValueError, match="cannot be split"):
            data.draw(gst.minibatch_partitions(n, min_size))
        return
    batches = data.draw(gst.minibatch_partitions(n, min_size))
    assert len({b.size for b in batches}) == 1 and batches[0].size >= min_size
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(n))


def test_bad_dtype_is_refused():
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        gst.make_problem((1, 1), "relu", 2, seed=0, dtype=np.int32)


def test_fixed_shape_loss_problems_refuse_architectures_that_do_not_suit_the_loss():
    with pytest.raises(ValueError, match="architectures has no entry .* 'logistic' loss needs"):
        gst.loss_problems("logistic", fixed_shapes=True, architectures=((2, 3),))
