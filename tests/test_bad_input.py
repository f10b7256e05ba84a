"""Bad input raises early a clear ValueError/TypeError naming the argument (issue 2, item 7).

Every expectation below is the message a user would read: ``match`` pins the argument's
name and what was expected. The checks run before any framework work, so the public
functions are exercised in every backend at the cost of a few tiny calls.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

import gcref
import gcref.backends

N, D, K = 5, 3, 2


def problem(k=K, dtype=np.float64, activation="tanh"):
    """A small MLP (D, 4, k), its parameters (drawn biases) and a batch of N inputs."""
    rng = np.random.default_rng(0)
    mlp = gcref.MLP((D, 4, k), activation=activation)
    params = mlp.init(rng, bias="normal", dtype=dtype)
    X = rng.normal(size=(N, D)).astype(dtype)
    return mlp, params, X


def regression_targets(dtype=np.float64, n=N, k=K):
    return np.linspace(-1.0, 1.0, n * k).reshape(n, k).astype(dtype)


def zero_vector(mlp, dtype=np.float64):
    """A valid ``vector`` for loss_hvp: zeros shaped like the parameters."""
    return tuple((np.zeros(ws, dtype), np.zeros(bs, dtype)) for ws, bs in mlp.layer_shapes())


# The extra arguments of the calls below take their dtype from X, so they stay valid when
# params is the bad argument (and X is checked before them when X is).


# Every public function that takes (mlp, params, X): a call with every other argument valid.
X_CALLS = {
    "forward": lambda m, p, X, be: gcref.forward(m, p, X, backend=be),
    "predict": lambda m, p, X, be: gcref.predict(m, p, X, backend=be),
    "input_jacobian": lambda m, p, X, be: gcref.input_jacobian(m, p, X, backend=be),
    "input_vjp": lambda m, p, X, be: gcref.input_vjp(
        m, p, X, regression_targets(X.dtype), backend=be
    ),
    "hidden_jacobians": lambda m, p, X, be: gcref.hidden_jacobians(m, p, X, backend=be),
    "sensitivities": lambda m, p, X, be: gcref.sensitivities(m, p, X, backend=be),
    "param_jacobian": lambda m, p, X, be: gcref.param_jacobian(m, p, X, backend=be),
    "param_grad_sq_norms": lambda m, p, X, be: gcref.param_grad_sq_norms(m, p, X, backend=be),
}

# Every public function that also takes (y, loss); ``y`` and ``loss`` are passed through.
LOSS_CALLS = {
    "loss_grad_sq_norms": lambda m, p, X, y, loss, be: gcref.loss_grad_sq_norms(
        m, p, X, y, loss, backend=be
    ),
    "per_example_loss": lambda m, p, X, y, loss, be: gcref.per_example_loss(
        m, p, X, y, loss, backend=be
    ),
    "mean_loss": lambda m, p, X, y, loss, be: gcref.mean_loss(m, p, X, y, loss, backend=be),
    "residuals": lambda m, p, X, y, loss, be: gcref.residuals(m, p, X, y, loss, backend=be),
    "loss_sensitivities": lambda m, p, X, y, loss, be: gcref.loss_sensitivities(
        m, p, X, y, loss, backend=be
    ),
    "loss_grad": lambda m, p, X, y, loss, be: gcref.loss_grad(m, p, X, y, loss, backend=be),
    "loss_hvp": lambda m, p, X, y, loss, be: gcref.loss_hvp(
        # (with no MLP there is no valid vector: the mlp check comes first anyway)
        m, p, X, y, loss, zero_vector(m, X.dtype) if isinstance(m, gcref.MLP) else (), backend=be
    ),
}

# Every public function, called with valid squared-loss targets where it needs them.
ALL_CALLS = {
    **X_CALLS,
    **{
        name: (lambda fn: lambda m, p, X, be: fn(m, p, X, regression_targets(X.dtype), "squared", be))(fn)
        for name, fn in LOSS_CALLS.items()
    },
}

all_calls = pytest.mark.parametrize("call", list(ALL_CALLS.values()), ids=list(ALL_CALLS))
loss_calls = pytest.mark.parametrize("call", list(LOSS_CALLS.values()), ids=list(LOSS_CALLS))


# --- X: rank, width, emptiness, finiteness, dtype -------------------------------------


@all_calls
@pytest.mark.parametrize("shape", [(D,), (1, N, D), ()], ids=["rank1", "rank3", "scalar"])
def test_X_of_wrong_rank(call, shape, backend):
    mlp, params, _ = problem()
    with pytest.raises(ValueError, match=r"X must have 2 dimensions"):
        call(mlp, params, np.ones(shape), backend)


@pytest.mark.parametrize("which", ["X", "params"])
def test_ragged_arrays_are_named(which):
    mlp, params, X = problem()
    if which == "X":
        X = [list(row) for row in X]
        X[0] = X[0][:-1]
    else:
        W1 = [list(row) for row in params[0][0]]
        W1[0] = W1[0][:-1]
        params = _replace(params, 0, 0, W1)
    pattern = r"^X\b" if which == "X" else r"^params\[0\] \(W_1\)"
    with pytest.raises(ValueError, match=pattern):
        gcref.predict(mlp, params, X)


@all_calls
@pytest.mark.parametrize("d", [D - 1, D + 1])
def test_X_of_wrong_input_size(call, d, backend):
    mlp, params, _ = problem()
    with pytest.raises(ValueError, match=rf"X must have shape \(N, {D}\).*got \({N}, {d}\)"):
        call(mlp, params, np.ones((N, d)), backend)


@all_calls
def test_empty_batch(call, backend):
    mlp, params, _ = problem()
    with pytest.raises(ValueError, match=r"X is empty"):
        call(mlp, params, np.ones((0, D)), backend)


@all_calls
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_X(call, bad, backend):
    mlp, params, X = problem()
    X = X.copy()
    X[N - 1, D - 1] = bad
    with pytest.raises(ValueError, match=r"X contains NaN or infinite values"):
        call(mlp, params, X, backend)


@all_calls
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.float16, np.complex128])
def test_X_of_non_float_dtype(call, dtype, backend):
    mlp, params, X = problem()
    with pytest.raises(TypeError, match=r"X must have a floating dtype"):
        call(mlp, params, np.ones((N, D), dtype=dtype), backend)


@all_calls
@pytest.mark.parametrize(
    "params_dtype, X_dtype", [(np.float64, np.float32), (np.float32, np.float64)]
)
def test_X_and_params_of_mixed_float_dtypes(call, params_dtype, X_dtype, backend):
    mlp, params, X = problem(dtype=params_dtype)
    with pytest.raises(
        TypeError,
        match=rf"X has dtype {np.dtype(X_dtype)} but the model's parameters are {np.dtype(params_dtype)}",
    ):
        call(mlp, params, X.astype(X_dtype), backend)


# --- params: structure, shapes, finiteness, dtypes ------------------------------------


def _replace(params, layer, slot, value):
    pairs = [list(pair) for pair in params]
    pairs[layer][slot] = value
    return tuple(tuple(pair) for pair in pairs)


def _bad_structures(params):
    """(label, bad params, message pattern) for every way the structure can be wrong."""
    (W1, b1), (W2, b2) = params
    return [
        ("not_a_sequence", {"W": W1}, r"params must be a sequence of 2 \(W, b\) pairs"),
        ("one_array", W1, r"params must be a sequence of 2 \(W, b\) pairs"),
        ("too_few_layers", ((W1, b1),), r"params must be a sequence of 2 .* of length 1"),
        ("too_many_layers", params + ((W2, b2),), r"params must be a sequence of 2 .* of length 3"),
        ("triple", ((W1, b1, b1), (W2, b2)), r"params\[0\] must be a \(W, b\) pair"),
        ("bare_array", (W1, (W2, b2)), r"params\[0\] must be a \(W, b\) pair"),
        ("W_transposed", ((W1.T, b1), (W2, b2)), r"params\[0\] \(W_1\) must have shape \(4, 3\)"),
        ("W_wrong_rank", ((W1, b1), (W2.ravel(), b2)), r"params\[1\] \(W_2\) must have shape \(2, 4\)"),
        ("b_wrong_length", ((W1, b1[:-1]), (W2, b2)), r"params\[0\] \(b_1\) must have shape \(4\)"),
        ("b_column", ((W1, b1), (W2, b2[:, None])), r"params\[1\] \(b_2\) must have shape \(2\)"),
        ("layers_swapped", ((W2, b2), (W1, b1)), r"params\[0\] \(W_1\) must have shape \(4, 3\)"),
    ]


_STRUCTURE_IDS = [label for label, _, _ in _bad_structures(problem()[1])]


@all_calls
@pytest.mark.parametrize("case", range(len(_STRUCTURE_IDS)), ids=_STRUCTURE_IDS)
def test_params_of_wrong_structure_or_shape(call, case, backend):
    mlp, params, X = problem()
    _, bad, pattern = _bad_structures(params)[case]
    with pytest.raises(ValueError, match=pattern):
        call(mlp, bad, X, backend)


@all_calls
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("layer, slot, label", [(0, 0, "W_1"), (1, 1, "b_2")])
def test_non_finite_params(call, bad, layer, slot, label, backend):
    mlp, params, X = problem()
    array = params[layer][slot].copy()
    array.flat[0] = bad
    with pytest.raises(
        ValueError, match=rf"params\[{layer}\] \({label}\) contains NaN or infinite values"
    ):
        call(mlp, _replace(params, layer, slot, array), X, backend)


@all_calls
@pytest.mark.parametrize(
    "layer, slot, label", [(0, 1, "b_1"), (1, 0, "W_2"), (1, 1, "b_2")]
)
def test_params_of_mixed_float_dtypes(call, layer, slot, label, backend):
    """float32 next to float64 is an error (W against b, and one layer against another)."""
    mlp, params, X = problem()
    bad = _replace(params, layer, slot, params[layer][slot].astype(np.float32))
    with pytest.raises(
        TypeError, match=rf"params\[{layer}\] \({label}\) has dtype float32 .* float64"
    ):
        call(mlp, bad, X, backend)


@all_calls
def test_params_of_integer_dtype(call, backend):
    mlp, params, X = problem()
    bad = _replace(params, 0, 0, np.ones((4, D), dtype=np.int64))
    with pytest.raises(TypeError, match=r"params\[0\] \(W_1\) must have a floating dtype"):
        call(mlp, bad, X, backend)


@all_calls
def test_mlp_that_is_not_an_MLP(call, backend):
    mlp, params, X = problem()
    with pytest.raises(TypeError, match=r"mlp must be a gcref.MLP; got tuple"):
        call(mlp.sizes, params, X, backend)


# --- backends: unknown and uninstalled ------------------------------------------------


@all_calls
@pytest.mark.parametrize("name", ["nope", "Numpy", "tensorflow", ""])
def test_unknown_backend_name(call, name):
    mlp, params, X = problem()
    with pytest.raises(ValueError, match=rf"unknown backend '{name}'; expected one of"):
        call(mlp, params, X, name)


@pytest.mark.parametrize("bad", [None, 0, ["numpy"]])
def test_backend_of_wrong_type(bad):
    mlp, params, X = problem()
    with pytest.raises(TypeError, match=r"backend must be a name or a Backend"):
        gcref.predict(mlp, params, X, backend=bad)


@pytest.fixture
def uninstall(monkeypatch):
    """Make gcref.backends believe ``framework`` is not installed; forget built backends."""

    def _uninstall(framework):
        real_find_spec = gcref.backends.importlib.util.find_spec

        def find_spec(name, *args, **kwargs):
            return None if name == framework else real_find_spec(name, *args, **kwargs)

        fake_importlib = types.SimpleNamespace(
            import_module=gcref.backends.importlib.import_module,
            util=types.SimpleNamespace(find_spec=find_spec),
        )
        monkeypatch.setattr(gcref.backends, "importlib", fake_importlib)
        monkeypatch.setattr(gcref.backends, "_INSTANCES", {})

    return _uninstall


@pytest.mark.parametrize("name", ["autograd", "jax", "torch"])
def test_uninstalled_backend_says_how_to_install_it(name, uninstall):
    uninstall(name)
    assert name not in gcref.available_backends()
    assert "numpy" in gcref.available_backends()
    mlp, params, X = problem()
    install = rf"pip install 'gcref\[{name}\]'"
    with pytest.raises(gcref.BackendNotAvailableError, match=install):
        gcref.get_backend(name)
    with pytest.raises(gcref.BackendNotAvailableError, match=rf"backend '{name}' needs {name}"):
        gcref.predict(mlp, params, X, backend=name)
    with pytest.raises(gcref.BackendNotAvailableError, match=install):
        gcref.loss_grad(mlp, params, X, regression_targets(), "squared", backend=name)
    # The other backends are untouched.
    assert gcref.predict(mlp, params, X, backend="numpy").shape == (N, K)


# --- losses and targets ---------------------------------------------------------------


@loss_calls
@pytest.mark.parametrize("name", ["hinge", "mse", "Squared", ""])
def test_unknown_loss_name(call, name, backend):
    mlp, params, X = problem()
    with pytest.raises(ValueError, match=rf"unknown loss '{name}'; expected one of"):
        call(mlp, params, X, regression_targets(), name, backend)


@loss_calls
def test_loss_of_wrong_type(call, backend):
    mlp, params, X = problem()
    with pytest.raises(TypeError, match=r"loss must be a name or a Loss"):
        call(mlp, params, X, regression_targets(), len, backend)


@loss_calls
def test_missing_targets(call, backend):
    mlp, params, X = problem()
    with pytest.raises(ValueError, match=r"y is required with a loss"):
        call(mlp, params, X, None, "squared", backend)


@loss_calls
@pytest.mark.parametrize(
    "shape", [(N,), (K, N), (1, K), (N, 1), (N - 1, K), (N, K, 1)], ids=str
)
def test_squared_loss_targets_of_wrong_shape(call, shape, backend):
    """No broadcast: (1, k) or (N, 1) targets are refused, not stretched."""
    mlp, params, X = problem()
    with pytest.raises(ValueError, match=rf"y must have shape \({N}, {K}\) for the squared loss"):
        call(mlp, params, X, np.zeros(shape), "squared", backend)


@loss_calls
def test_squared_loss_targets_of_wrong_shape_when_k_is_1(call, backend):
    mlp, params, X = problem(k=1)
    with pytest.raises(ValueError, match=rf"y must have shape \({N}, 1\).*\(or \({N},\)"):
        call(mlp, params, X, np.zeros(N - 1), "squared", backend)


@loss_calls
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_squared_loss_non_finite_targets(call, bad, backend):
    mlp, params, X = problem()
    y = regression_targets()
    y[0, 0] = bad
    with pytest.raises(ValueError, match=r"y contains NaN or infinite values"):
        call(mlp, params, X, y, "squared", backend)


@loss_calls
def test_squared_loss_targets_of_other_dtype(call, backend):
    mlp, params, X = problem()
    with pytest.raises(TypeError, match=r"y has dtype float32 but the model's parameters are float64"):
        call(mlp, params, X, regression_targets(np.float32), "squared", backend)
    with pytest.raises(TypeError, match=r"y must have a floating dtype"):
        call(mlp, params, X, np.zeros((N, K), dtype=np.int64), "squared", backend)


@loss_calls
def test_logistic_loss_needs_one_output(call, backend):
    mlp, params, X = problem(k=2)
    with pytest.raises(ValueError, match=r"logistic loss needs k = 1 output; the model has k = 2"):
        call(mlp, params, X, np.zeros(N, dtype=int), "logistic", backend)


@loss_calls
@pytest.mark.parametrize(
    "labels",
    [[0, 1, 2, 0, 1], [0, 1, -1, 0, 1], [0.0, 1.0, 0.5, 0.0, 1.0], [0.0, 1.0, np.nan, 0.0, 1.0],
     ["0", "1", "0", "1", "0"]],
    ids=["two", "minus_one", "half", "nan", "strings"],
)
def test_logistic_labels_not_0_or_1(call, labels, backend):
    mlp, params, X = problem(k=1)
    with pytest.raises(ValueError, match=r"y must hold binary labels 0 or 1"):
        call(mlp, params, X, np.array(labels), "logistic", backend)


@loss_calls
@pytest.mark.parametrize("shape", [(N - 1,), (N, 2), (1, N), (N, 1, 1)], ids=str)
def test_logistic_labels_of_wrong_shape(call, shape, backend):
    mlp, params, X = problem(k=1)
    with pytest.raises(ValueError, match=rf"y must have shape \({N},\) of 0/1 labels"):
        call(mlp, params, X, np.zeros(shape, dtype=int), "logistic", backend)


@loss_calls
def test_softmax_needs_two_outputs(call, backend):
    mlp, params, X = problem(k=1)
    with pytest.raises(ValueError, match=r"softmax cross-entropy needs k >= 2 outputs; the model has k = 1"):
        call(mlp, params, X, np.zeros(N, dtype=int), "softmax_cross_entropy", backend)


@loss_calls
@pytest.mark.parametrize("bad_label", [K, K + 7, -1])
def test_softmax_label_out_of_range(call, bad_label, backend):
    mlp, params, X = problem()
    labels = np.array([0, 1, bad_label, 0, 1])
    with pytest.raises(ValueError, match=rf"labels must lie in \[0, {K}\)"):
        call(mlp, params, X, labels, "softmax_cross_entropy", backend)


@loss_calls
@pytest.mark.parametrize(
    "labels", [np.array([0.0, 1.0, 1.0, 0.0, 1.0]), np.array([False, True, True, False, True])],
    ids=["float", "bool"],
)
def test_softmax_non_integer_labels(call, labels, backend):
    mlp, params, X = problem()
    with pytest.raises(TypeError, match=r"integer class labels must have an integer dtype"):
        call(mlp, params, X, labels, "softmax_cross_entropy", backend)


@pytest.mark.parametrize(
    "labels", [np.array([0, 1, K, 0, 1]), np.array([0.0, 1.0, 1.0, 0.0, 1.0])],
    ids=["out_of_range", "float"],
)
def test_softmax_label_messages_name_y(labels):
    mlp, params, X = problem()
    with pytest.raises((TypeError, ValueError), match=r"\by\b"):
        gcref.mean_loss(mlp, params, X, labels, "softmax_cross_entropy")


@loss_calls
def test_softmax_label_count(call, backend):
    mlp, params, X = problem()
    with pytest.raises(ValueError, match=rf"y must have {N} labels; got shape \({N - 1},\)"):
        call(mlp, params, X, np.zeros(N - 1, dtype=int), "softmax_cross_entropy", backend)


@loss_calls
def test_softmax_one_hot_targets(call, backend):
    mlp, params, X = problem()
    with pytest.raises(ValueError, match=rf"y must have shape \({N}, {K}\)"):
        call(mlp, params, X, np.eye(K + 1)[[0, 1, 2, 0, 1]], "softmax_cross_entropy", backend)
    rows = np.eye(K)[[0, 1, 1, 0, 1]]
    rows[0, 0] = 2.0
    with pytest.raises(ValueError, match=r"one-hot targets y must be non-negative rows that sum to 1"):
        call(mlp, params, X, rows, "softmax_cross_entropy", backend)
    rows = np.eye(K)[[0, 1, 1, 0, 1]]
    rows[0] = [1.5, -0.5]
    with pytest.raises(ValueError, match=r"one-hot targets y must be non-negative"):
        call(mlp, params, X, rows, "softmax_cross_entropy", backend)
    rows[0] = [np.nan, 1.0]
    with pytest.raises(ValueError, match=r"y contains NaN or infinite values"):
        call(mlp, params, X, rows, "softmax_cross_entropy", backend)


# --- input_vjp cotangent and loss_hvp vector ------------------------------------------


@pytest.mark.parametrize("shape", [(N, K + 1), (N - 1, K), (N,), (K,), (1, K), (N, K, 1)], ids=str)
def test_input_vjp_cotangent_of_wrong_shape(shape, backend):
    mlp, params, X = problem()
    with pytest.raises(ValueError, match=rf"cotangent must have shape \({N}, {K}\); got"):
        gcref.input_vjp(mlp, params, X, np.ones(shape), backend=backend)


def test_input_vjp_cotangent_dtype_and_finiteness(backend):
    mlp, params, X = problem()
    v = regression_targets()
    with pytest.raises(TypeError, match=r"cotangent has dtype float32 but the model's parameters are float64"):
        gcref.input_vjp(mlp, params, X, v.astype(np.float32), backend=backend)
    with pytest.raises(TypeError, match=r"cotangent must have a floating dtype"):
        gcref.input_vjp(mlp, params, X, v.astype(np.int64), backend=backend)
    v[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"cotangent contains NaN or infinite values"):
        gcref.input_vjp(mlp, params, X, v, backend=backend)


def test_loss_hvp_vector_of_wrong_structure_or_shape(backend):
    mlp, params, X = problem()
    y = regression_targets()
    for _, bad, pattern in _bad_structures(zero_vector(mlp)):
        with pytest.raises(ValueError, match=pattern.replace("params", "vector")):
            gcref.loss_hvp(mlp, params, X, y, "squared", bad, backend=backend)


def test_loss_hvp_vector_dtype_and_finiteness(backend):
    mlp, params, X = problem()
    y = regression_targets()
    vec = zero_vector(mlp)
    as32 = tuple((W.astype(np.float32), b.astype(np.float32)) for W, b in vec)
    with pytest.raises(TypeError, match=r"vector has dtype float32 but params are float64"):
        gcref.loss_hvp(mlp, params, X, y, "squared", as32, backend=backend)
    mixed = _replace(vec, 1, 0, vec[1][0].astype(np.float32))
    with pytest.raises(TypeError, match=r"vector\[1\] \(W_2\) has dtype float32"):
        gcref.loss_hvp(mlp, params, X, y, "squared", mixed, backend=backend)
    b2 = vec[1][1].copy()
    b2[0] = np.inf
    with pytest.raises(ValueError, match=r"vector\[1\] \(b_2\) contains NaN or infinite values"):
        gcref.loss_hvp(mlp, params, X, y, "squared", _replace(vec, 1, 1, b2), backend=backend)


# --- the MLP description and its initialiser ------------------------------------------


@pytest.mark.parametrize(
    "sizes",
    [(0, 2), (3, 0), (3, -1, 2), (True, 2), (3, False), (3, 2.0), (3, "4", 1), (3, None)],
    ids=str,
)
def test_mlp_sizes_not_positive_integers(sizes):
    with pytest.raises(ValueError, match=r"sizes must be positive integers"):
        gcref.MLP(sizes)


@pytest.mark.parametrize("sizes", [(), (3,), [4]], ids=str)
def test_mlp_sizes_too_short(sizes):
    with pytest.raises(ValueError, match=r"sizes must list at least an input and an output size"):
        gcref.MLP(sizes)


@pytest.mark.parametrize("sizes", [3, None, 2.5])
def test_mlp_sizes_not_a_sequence(sizes):
    with pytest.raises(TypeError, match=r"sizes must be a sequence of ints"):
        gcref.MLP(sizes)


@pytest.mark.parametrize("argument", ["activation", "output_activation"])
def test_unknown_activation(argument):
    with pytest.raises(ValueError, match=rf"unknown {argument} 'swish'; expected one of"):
        gcref.MLP((D, 4, K), **{argument: "swish"})
    with pytest.raises(TypeError, match=rf"{argument} must be a name or an Activation; got function"):
        gcref.MLP((D, 4, K), **{argument: lambda x: x})


@pytest.mark.parametrize("slope", [-0.1, -np.inf, np.inf, np.nan])
def test_leaky_relu_slope_out_of_range(slope):
    with pytest.raises(ValueError, match=r"slope must be finite and >= 0"):
        gcref.leaky_relu(slope)


def test_leaky_relu_accepts_a_numpy_integer_slope():
    assert gcref.leaky_relu(np.int64(1))(np.array([-2.0]))[0] == -2.0


@pytest.mark.parametrize("slope", [True, "0.1", None, [0.1]])
def test_leaky_relu_slope_not_a_number(slope):
    with pytest.raises(TypeError, match=r"slope must be a real number"):
        gcref.leaky_relu(slope)


@pytest.mark.parametrize(
    "rng", [0, None, np.random.RandomState(0), np.random.default_rng(0).bit_generator],
    ids=["int", "None", "RandomState", "BitGenerator"],
)
def test_init_needs_a_generator(rng):
    mlp = gcref.MLP((D, 4, K))
    with pytest.raises(TypeError, match=r"rng must be a numpy.random.Generator"):
        mlp.init(rng)


@pytest.mark.parametrize("scheme", ["xavier", "he", "He_normal", ""])
def test_init_unknown_scheme(scheme):
    mlp = gcref.MLP((D, 4, K))
    with pytest.raises(ValueError, match=rf"unknown scheme '{scheme}'; expected one of"):
        mlp.init(np.random.default_rng(0), scheme=scheme)


@pytest.mark.parametrize("bias", ["ones", "zeros", "he_normal", ""])
def test_init_unknown_bias(bias):
    mlp = gcref.MLP((D, 4, K))
    with pytest.raises(ValueError, match=rf"unknown bias '{bias}'; expected one of"):
        mlp.init(np.random.default_rng(0), bias=bias)


@pytest.mark.parametrize(
    "scale, pattern",
    [(0.0, r"scale must be > 0; got 0"), (-1.0, r"scale must be > 0; got -1"),
     (0, r"scale must be > 0; got 0"), (np.nan, r"scale must be finite; got nan"),
     (np.inf, r"scale must be finite; got inf"), (-np.inf, r"scale must be finite; got -inf")],
    ids=["zero", "negative", "int_zero", "nan", "inf", "minus_inf"],
)
def test_init_scale_not_positive_and_finite(scale, pattern):
    mlp = gcref.MLP((D, 4, K))
    with pytest.raises(ValueError, match=pattern):
        mlp.init(np.random.default_rng(0), scale=scale)


@pytest.mark.parametrize("scale", [True, "1.0", None])
def test_init_scale_not_a_number(scale):
    mlp = gcref.MLP((D, 4, K))
    with pytest.raises(TypeError, match=r"scale must be a real number"):
        mlp.init(np.random.default_rng(0), scale=scale)


@pytest.mark.parametrize("dtype", [np.float16, np.int64, np.complex128, "float", "nope"], ids=str)
def test_init_dtype_not_float32_or_float64(dtype):
    mlp = gcref.MLP((D, 4, K))
    if dtype == "float":  # numpy reads "float" as float64: accepted
        assert mlp.init(np.random.default_rng(0), dtype=dtype)[0][0].dtype == np.float64
        return
    with pytest.raises(TypeError, match=r"dtype must be float32 or float64"):
        mlp.init(np.random.default_rng(0), dtype=dtype)


def test_mlp_only_measures_refuse_a_torch_module_and_point_to_gcref_models():
    from conftest import require_backend

    require_backend("torch")
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    X = np.zeros((2, 3))
    calls = {
        "transfer_terms": lambda: gcref.transfer_terms(net, None, X),
        "path_norm": lambda: gcref.path_norm(net, None),
        "group_norm": lambda: gcref.group_norm(net, None),
        "geometric_complexity": lambda: gcref.geometric_complexity(net, None, X),
        "balanced_rescaling": lambda: gcref.balanced_rescaling(net, None),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match="mlp must be a gcref.MLP; got Sequential.*gcref.models"):
            call()


# --- the one-pass finiteness check ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_all_finite_finds_every_non_finite_entry_and_passes_an_overflowing_sum(dtype):
    from gcref._checks import all_finite

    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5, 3)).astype(dtype)
    assert all_finite(x) and all_finite(x[:, ::2]) and all_finite(x[:0])
    for bad in (np.nan, np.inf, -np.inf):
        for index in ((0, 0, 0), (6, 4, 2), (3, 1, 1)):
            y = x.copy()
            y[index] = bad
            assert not all_finite(y) and not all_finite(y[:, ::2] if index[1] % 2 == 0 else y)
    # Finite entries whose sum overflows: the element-wise scan decides.
    huge = np.full((4, 3), np.finfo(dtype).max, dtype=dtype)
    assert all_finite(huge)
    both = np.array([np.inf, -np.inf], dtype=dtype)  # a NaN sum, not an infinite one
    assert not all_finite(both)
