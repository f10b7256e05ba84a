"""Geometric complexity, the discrete Dirichlet energy and the probe estimator (MATH.md section 2).

References are independent of the code under test: a Python loop over single examples,
central finite differences of the network output, ``||W||_F^2`` for linear models, and
the empirical spread of repeated estimates for the standard error.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gcref
from gcref.complexity import (
    Complexity,
    dirichlet_energy,
    estimate_geometric_complexity,
    geometric_complexity,
    geometric_complexity_native,
)
from gcref.testing import check_vjp
from gcref.tolerances import tolerance
from gcref.testing.strategies import (
    activations,
    assume_unsaturated,
    PARAMETER_SCALES,
    problems,
    problems_for,
)

RTOL, ATOL = tolerance(np.float64)
SMOOTH_ACTIVATIONS = ("identity", "tanh", "sigmoid", "softplus")
PROBES = ("gaussian", "rademacher", "sphere")

# JAX compiles every operation anew for each array shape (0.1-1 s the first time), so in
# JAX the examples come from a fixed menu of shapes: activations, scales, parameters and
# inputs still vary freely, and once warm an example costs milliseconds, which keeps the
# full 200 examples per property within the time budget.
FIXED_ARCHITECTURES = ((3, 4, 2), (2, 3, 3, 1))
FIXED_BATCH = 3


@st.composite
def linear_models(draw, fixed_shapes=False):
    """``(mlp, params, X)`` for ``f(x) = W x + b``: depth 1, identity output."""
    if fixed_shapes:
        d, k, n = draw(st.sampled_from(((3, 2, FIXED_BATCH), (3, 1, FIXED_BATCH))))
    else:
        d, k, n = draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 6))
    mlp = gcref.MLP((d, k), activation=draw(activations()))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    params = mlp.init(rng, scale=draw(st.sampled_from(PARAMETER_SCALES)), bias="normal")
    return mlp, params, rng.normal(scale=draw(st.sampled_from((0.1, 1.0, 10.0))), size=(n, d))


def split_points(n):
    """Sorted cut points that split ``range(n)`` into batches (empty batches allowed)."""
    return st.lists(st.integers(0, n), max_size=4).map(sorted)


def loop_jacobian_sq_norms(mlp, params, X):
    """``||J(x_n)||_F^2`` one example at a time, with explicit sums over entries."""
    out = []
    for x in X:
        J = gcref.input_jacobian(mlp, params, x[None, :])[0]
        out.append(sum(float(J[c, j]) ** 2 for c in range(J.shape[0]) for j in range(J.shape[1])))
    return np.array(out)


def finite_difference_jacobian(mlp, params, x, step=1e-6):
    """Central differences of ``f`` at one input ``x``, shape (k, d)."""
    columns = []
    for j in range(x.size):
        e = np.zeros_like(x)
        e[j] = step
        plus = gcref.predict(mlp, params, (x + e)[None, :])[0]
        minus = gcref.predict(mlp, params, (x - e)[None, :])[0]
        columns.append((plus - minus) / (2 * step))
    return np.stack(columns, axis=1)


# -- exact geometric complexity --------------------------------------------------------


@given(problem=problems(max_examples=6), data=st.data())
def test_gc_is_the_mean_of_per_example_squared_jacobian_norms(problem, data):
    mlp, params, X = problem.mlp, problem.params, problem.X
    reference = loop_jacobian_sq_norms(mlp, params, X)
    chunk_size = data.draw(st.integers(1, 8), label="chunk_size")

    result = geometric_complexity(mlp, params, X, chunk_size=chunk_size, per_example=True)

    assert isinstance(result, Complexity)
    np.testing.assert_allclose(result.per_example, reference, rtol=RTOL, atol=ATOL)
    assert result.value == pytest.approx(reference.mean(), rel=RTOL, abs=ATOL)
    assert geometric_complexity(mlp, params, X) == pytest.approx(result.value, rel=RTOL, abs=ATOL)


@given(problem=problems(max_examples=4, activation_names=SMOOTH_ACTIVATIONS))
def test_gc_matches_finite_difference_jacobians(problem):
    mlp, params, X = problem.mlp, problem.params, problem.X
    reference = np.mean([np.sum(finite_difference_jacobian(mlp, params, x) ** 2) for x in X])
    assert geometric_complexity(mlp, params, X) == pytest.approx(reference, rel=1e-6, abs=1e-8)


@given(problem=problems(max_examples=8), data=st.data())
def test_streaming_batches_and_chunks_give_the_array_result(problem, data):
    mlp, params, X = problem.mlp, problem.params, problem.X
    cuts = data.draw(split_points(X.shape[0]), label="cuts")
    chunk_size = data.draw(st.integers(1, 5), label="chunk_size")
    batches = np.split(X, cuts)
    whole = geometric_complexity(mlp, params, X, per_example=True)

    from_list = geometric_complexity(mlp, params, batches, chunk_size=chunk_size, per_example=True)
    from_generator = geometric_complexity(
        mlp, params, (b for b in batches), chunk_size=chunk_size, per_example=True
    )

    for streamed in (from_list, from_generator):
        np.testing.assert_allclose(streamed.per_example, whole.per_example, rtol=RTOL, atol=ATOL)
        assert streamed.value == pytest.approx(whole.value, rel=RTOL, abs=ATOL)


@given(problem=problems())
def test_dirichlet_energy_is_half_the_geometric_complexity(problem):
    mlp, params, X = problem.mlp, problem.params, problem.X
    gc = geometric_complexity(mlp, params, X, per_example=True)
    de = dirichlet_energy(mlp, params, X, per_example=True)
    assert de.value == gc.value / 2
    np.testing.assert_array_equal(de.per_example, gc.per_example / 2)
    assert dirichlet_energy(mlp, params, X) == gc.value / 2


def test_linear_model_gc_is_squared_frobenius_norm_of_w(backend):
    @given(model=linear_models(fixed_shapes=backend == "jax"))
    def check(model):
        mlp, params, X = model
        W = params[0][0]
        frobenius_sq = float(np.sum(W * W))
        gc = geometric_complexity(mlp, params, X, backend=backend, per_example=True)
        np.testing.assert_allclose(gc.per_example, frobenius_sq, rtol=RTOL, atol=ATOL)
        assert gc.value == pytest.approx(frobenius_sq, rel=RTOL, abs=ATOL)

    check()


def test_every_backend_agrees_with_numpy(backend):
    @given(problem=problems_for(backend, FIXED_ARCHITECTURES, FIXED_BATCH), probe=st.sampled_from(PROBES), seed=st.integers(0, 2**32 - 1))
    def check(problem, probe, seed):
        mlp, params, X = problem.mlp, problem.params, problem.X
        assume_unsaturated(mlp, params, X)
        reference = geometric_complexity(mlp, params, X, per_example=True)
        got = geometric_complexity(mlp, params, X, backend=backend, per_example=True)
        np.testing.assert_allclose(got.per_example, reference.per_example, rtol=RTOL, atol=ATOL)

        ours, theirs = (
            estimate_geometric_complexity(
                mlp, params, X, np.random.default_rng(seed), n_probes=2, probe=probe, backend=name
            )
            for name in ("numpy", backend)
        )
        assert theirs.value == pytest.approx(ours.value, rel=RTOL, abs=ATOL)
        assert theirs.stderr == pytest.approx(ours.stderr, rel=1e-7, abs=ATOL)

    check()


def test_float32_parameters_give_the_float64_value_to_float32_accuracy():
    rng = np.random.default_rng(3)
    mlp = gcref.MLP((4, 16, 16, 3), activation="tanh")
    params = mlp.init(rng, bias="normal")
    X = rng.normal(size=(50, 4))
    params32 = tuple((W.astype(np.float32), b.astype(np.float32)) for W, b in params)
    rtol, _ = tolerance(np.float32)
    value32 = geometric_complexity(mlp, params32, X.astype(np.float32), chunk_size=7)
    assert isinstance(value32, float)
    assert value32 == pytest.approx(geometric_complexity(mlp, params, X), rel=rtol)


# -- the probe estimator -----------------------------------------------------------------


@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimator_converges_to_the_exact_gc(probe, seed):
    rng = np.random.default_rng(100 + seed)
    mlp = gcref.MLP((4, 8, 8, 3), activation=("tanh", "relu", "softplus")[seed])
    params = mlp.init(rng, bias="normal")
    X = rng.normal(size=(10, 4))
    exact = geometric_complexity(mlp, params, X)

    estimate = estimate_geometric_complexity(
        mlp, params, X, np.random.default_rng(seed), n_probes=400, probe=probe, chunk_size=64
    )

    assert estimate.n_probes == 400 and estimate.n_examples == 10
    assert 0 < estimate.stderr < 0.05 * exact
    assert abs(estimate.value - exact) <= 4 * estimate.stderr


@pytest.mark.parametrize("probe", PROBES)
def test_estimator_standard_error_matches_the_spread_of_repeated_estimates(probe):
    rng = np.random.default_rng(7)
    mlp = gcref.MLP((3, 6, 4), activation="tanh")
    params = mlp.init(rng, bias="normal")
    X = rng.normal(size=(6, 3))
    exact = geometric_complexity(mlp, params, X)
    draws = np.random.default_rng(8)

    estimates = [
        estimate_geometric_complexity(mlp, params, X, draws, n_probes=3, probe=probe)
        for _ in range(2000)
    ]
    values = np.array([e.value for e in estimates])
    stderrs = np.array([e.stderr for e in estimates])

    # Unbiased: the mean of 2000 estimates is within 4 of its own standard errors.
    spread = values.std(ddof=1)
    assert abs(values.mean() - exact) <= 4 * spread / np.sqrt(values.size)
    # The reported standard error estimates the spread: its root mean square
    # (the square root of an unbiased variance estimate) matches the empirical spread.
    assert np.sqrt(np.mean(stderrs**2)) == pytest.approx(spread, rel=0.1)


@given(problem=problems(max_outputs=1), data=st.data())
def test_one_output_sphere_and_rademacher_probes_are_exact(problem, data):
    # For k = 1 both probes are +-1 and (for the sphere) the factor k is 1, so every
    # probe returns ||J||_F^2 exactly and the standard error is 0.
    mlp, params, X = problem.mlp, problem.params, problem.X
    exact = geometric_complexity(mlp, params, X)
    probe = data.draw(st.sampled_from(("sphere", "rademacher")), label="probe")
    estimate = estimate_geometric_complexity(mlp, params, X, problem.rng, n_probes=3, probe=probe)
    assert estimate.value == pytest.approx(exact, rel=RTOL, abs=ATOL)
    assert estimate.stderr == pytest.approx(0.0, abs=ATOL * max(1.0, exact))


@given(problem=problems(max_examples=6), data=st.data())
def test_estimator_probes_do_not_depend_on_chunking(problem, data):
    mlp, params, X = problem.mlp, problem.params, problem.X
    probe = data.draw(st.sampled_from(PROBES), label="probe")
    n_probes = data.draw(st.integers(1, 4), label="n_probes")
    chunk_size = data.draw(st.integers(1, 10), label="chunk_size")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")

    def estimate(data_set, chunk):
        return estimate_geometric_complexity(
            mlp, params, data_set, np.random.default_rng(seed),
            n_probes=n_probes, probe=probe, chunk_size=chunk,
        )

    whole = estimate(X, 1000)
    streamed = estimate([X[:1], X[1:]], chunk_size)
    assert streamed.value == pytest.approx(whole.value, rel=RTOL, abs=ATOL)
    if n_probes == 1:
        assert np.isnan(whole.stderr) and np.isnan(streamed.stderr)
    else:
        assert streamed.stderr == pytest.approx(whole.stderr, rel=1e-7, abs=ATOL)


def test_zero_network_has_zero_gc_and_zero_estimate():
    mlp = gcref.MLP((3, 4, 2), activation="tanh")
    params = tuple((np.zeros_like(W), b) for W, b in mlp.init(np.random.default_rng(0), bias="normal"))
    X = np.random.default_rng(1).normal(size=(5, 3))
    assert geometric_complexity(mlp, params, X) == 0.0
    estimate = estimate_geometric_complexity(mlp, params, X, np.random.default_rng(2), n_probes=4)
    assert estimate.value == 0.0 and estimate.stderr == 0.0


# -- the differentiable penalty ----------------------------------------------------------


def native_value_and_gradient(backend_name, mlp, params, X):
    """``GC`` and its gradient with respect to the parameters, by the framework's autodiff."""
    backend = gcref.get_backend(backend_name)
    with backend.scope(np.float64):
        if backend_name == "torch":
            import torch

            tensors = [tuple(torch.tensor(a, requires_grad=True) for a in pair) for pair in params]
            value = geometric_complexity_native(mlp, tensors, torch.tensor(X), backend="torch")
            grads = torch.autograd.grad(
                value, [a for pair in tensors for a in pair], materialize_grads=True
            )
            flat = [g.numpy() for g in grads]
            return float(value.detach()), tuple(zip(flat[::2], flat[1::2]))
        if backend_name == "jax":
            import jax

            def penalty(native_params):
                return geometric_complexity_native(mlp, native_params, backend.asarray(X), backend="jax")

            native = [tuple(backend.asarray(a) for a in pair) for pair in params]
            value, grads = jax.value_and_grad(penalty)(native)
            return float(value), tuple(tuple(np.asarray(a) for a in pair) for pair in grads)
        import autograd

        def penalty(native_params):
            return geometric_complexity_native(mlp, native_params, X, backend="autograd")

        grads = autograd.grad(penalty)([tuple(pair) for pair in params])
        value = penalty([tuple(pair) for pair in params])
        return float(value), tuple(tuple(np.asarray(a) for a in pair) for pair in grads)


@pytest.mark.parametrize("activation", ["tanh", "softplus", "sigmoid"])
def test_native_gc_gradient_matches_finite_differences(autodiff_backend, activation):
    rng = np.random.default_rng(11)
    mlp = gcref.MLP((3, 5, 4, 2), activation=activation)
    params = mlp.init(rng, scheme="lecun_normal", bias="normal")
    X = rng.normal(size=(4, 3))

    value, grad = native_value_and_gradient(autodiff_backend, mlp, params, X)

    assert value == pytest.approx(geometric_complexity(mlp, params, X), rel=RTOL, abs=ATOL)
    check = check_vjp(
        lambda p: np.array([geometric_complexity(mlp, p, X)]),
        params,
        lambda u: tuple((u[0] * gW, u[0] * gb) for gW, gb in grad),
        np.random.default_rng(12),
        n_probes=4,
    )
    assert check.passed


def test_torch_penalty_trains_gc_down():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    mlp = gcref.MLP((2, 8, 1), activation="tanh")
    params = mlp.init(rng, scale=2.0, bias="normal")
    X = torch.tensor(rng.normal(size=(16, 2)))
    tensors = [tuple(torch.tensor(a, requires_grad=True) for a in pair) for pair in params]
    optimiser = torch.optim.SGD([a for pair in tensors for a in pair], lr=0.05)
    values = []
    for _ in range(20):
        optimiser.zero_grad()
        penalty = geometric_complexity_native(mlp, tensors, X, backend="torch")
        penalty.backward()
        optimiser.step()
        values.append(float(penalty.detach()))
    assert values[-1] < 0.5 * values[0]


# -- bad input ---------------------------------------------------------------------------


@pytest.fixture
def small_problem():
    mlp = gcref.MLP((3, 4, 2), activation="tanh")
    return mlp, mlp.init(np.random.default_rng(0)), np.random.default_rng(1).normal(size=(5, 3))


@pytest.mark.parametrize("empty", [np.zeros((0, 3)), [], [np.zeros((0, 3))], iter(())])
def test_empty_data_is_a_clear_error(small_problem, empty):
    mlp, params, _ = small_problem
    with pytest.raises(ValueError, match="no example"):
        geometric_complexity(mlp, params, empty)
    with pytest.raises(ValueError, match="no example"):
        estimate_geometric_complexity(mlp, params, empty, np.random.default_rng(0))


def test_bad_arguments_are_clear_errors(small_problem):
    mlp, params, X = small_problem
    with pytest.raises(ValueError, match=r"data batch 1 must have shape \(N, 3\)"):
        geometric_complexity(mlp, params, [X, X[:, :2]])
    with pytest.raises(TypeError, match="data batch 0 has dtype float32"):
        geometric_complexity(mlp, params, [X.astype(np.float32)])
    with pytest.raises(ValueError, match="data contains NaN"):
        geometric_complexity(mlp, params, np.full((2, 3), np.nan))
    with pytest.raises(TypeError, match="data must be an array"):
        geometric_complexity(mlp, params, 3.0)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        geometric_complexity(mlp, params, X, chunk_size=0)
    with pytest.raises(TypeError, match="mlp must be a gcref.MLP"):
        geometric_complexity("mlp", params, X)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        estimate_geometric_complexity(mlp, params, X, 0)
    with pytest.raises(ValueError, match="unknown probe"):
        estimate_geometric_complexity(mlp, params, X, np.random.default_rng(0), probe="uniform")
    with pytest.raises(ValueError, match="n_probes must be >= 1"):
        estimate_geometric_complexity(mlp, params, X, np.random.default_rng(0), n_probes=0)
