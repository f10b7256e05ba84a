"""The MLP description, its initialisers, float32 end to end and user activations (issue 2, item 2).

Statistical checks use a fixed seed and a tolerance of 5 standard errors, so they are
deterministic and fail only when the law drawn from is wrong. Every cross-backend test
reuses one small architecture so that JAX compiles each primitive once per dtype.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from conftest import require_backend

import gcref
from gcref.tolerances import relative_deviation, tolerance

WIDE_SIZES = (64, 4096, 32)
SMALL_SIZES = (3, 5, 2)
N_SMALL = 6
SCHEMES = {"he_normal": 2.0, "he_uniform": 2.0, "lecun_normal": 1.0, "lecun_uniform": 1.0}
# Fourth moment over squared variance: 3 for a normal law, 9/5 for a uniform one.
KURTOSIS = {"normal": 3.0, "uniform": 9.0 / 5.0}
N_SE = 5.0


def law_of(scheme):
    return "uniform" if scheme.endswith("uniform") else "normal"


def assert_zero_mean_with_variance(sample, variance, law, what):
    """Sample mean and variance within N_SE standard errors of 0 and ``variance``.

    For n i.i.d. draws with variance s2 and kurtosis kappa = mu_4 / s2^2:
    SE(mean) = sqrt(s2 / n) and SE(sample variance) = s2 * sqrt((kappa - (n - 3) / (n - 1)) / n).
    """
    x = np.asarray(sample, dtype=np.float64).ravel()
    n = x.size
    se_mean = np.sqrt(variance / n)
    se_var = variance * np.sqrt((KURTOSIS[law] - (n - 3) / (n - 1)) / n)
    assert abs(x.mean()) <= N_SE * se_mean, f"{what}: mean {x.mean()} (SE {se_mean})"
    assert abs(x.var(ddof=1) - variance) <= N_SE * se_var, (
        f"{what}: variance {x.var(ddof=1)} against {variance} (SE {se_var})"
    )


# --------------------------------------------------------------------------- initialisers


@pytest.mark.parametrize("scale", [1.0, 0.3, 4.0], ids=lambda s: f"scale={s}")
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_weights_have_the_scheme_variance_times_scale_squared_over_fan_in(scheme, scale):
    mlp = gcref.MLP(WIDE_SIZES, "tanh")
    params = mlp.init(np.random.default_rng(1234), scheme=scheme, scale=scale)
    law = law_of(scheme)
    for i, (W, b) in enumerate(params):
        fan_in = WIDE_SIZES[i]
        variance = SCHEMES[scheme] * scale**2 / fan_in
        assert_zero_mean_with_variance(W, variance, law, f"W_{i + 1}")
        a = np.sqrt(3.0 * variance)
        if law == "uniform":
            assert np.max(np.abs(W)) <= a
        else:
            # P(|Z| > sqrt 3) = 0.083 for a standard normal: thousands of entries exceed a.
            assert np.mean(np.abs(W) > a) > 0.05
        assert np.all(b == 0.0)


@pytest.mark.parametrize("bias", ["normal", "uniform"])
def test_drawn_biases_use_the_layer_weight_std(bias):
    scale = 2.5
    mlp = gcref.MLP(WIDE_SIZES, "tanh")
    params = mlp.init(np.random.default_rng(99), scheme="he_normal", scale=scale, bias=bias)
    for i, (_, b) in enumerate(params):
        variance = 2.0 * scale**2 / WIDE_SIZES[i]
        assert_zero_mean_with_variance(b, variance, bias, f"b_{i + 1}")
        if bias == "uniform":
            assert np.max(np.abs(b)) <= np.sqrt(3.0 * variance)
    # The first bias has 4096 entries: a normal one exceeds the uniform bound often.
    if bias == "normal":
        assert np.mean(np.abs(params[0][1]) > np.sqrt(3.0 * 2.0 * scale**2 / WIDE_SIZES[0])) > 0.05


def test_zero_biases_are_exactly_zero_for_every_scheme():
    mlp = gcref.MLP((4, 7, 3), "relu")
    for scheme in SCHEMES:
        params = mlp.init(np.random.default_rng(0), scheme=scheme, scale=3.0, bias="zero")
        for W, b in params:
            assert b.shape == (W.shape[0],)
            assert not np.any(b)
            assert np.any(W)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_respected_for_every_array(dtype):
    mlp = gcref.MLP((4, 7, 3), "relu")
    for bias in ("zero", "normal", "uniform"):
        params = mlp.init(np.random.default_rng(0), scheme="lecun_uniform", bias=bias, dtype=dtype)
        assert [(W.shape, b.shape) for W, b in params] == mlp.layer_shapes()
        assert all(a.dtype == np.dtype(dtype) for pair in params for a in pair)


def test_float64_is_the_default_dtype():
    params = gcref.MLP((4, 7, 3)).init(np.random.default_rng(0))
    assert all(a.dtype == np.float64 for pair in params for a in pair)


def test_same_seed_same_params_and_different_seed_different_params():
    mlp = gcref.MLP((4, 7, 3), "relu")
    for scheme in SCHEMES:
        a = mlp.init(np.random.default_rng(7), scheme=scheme, bias="uniform")
        b = mlp.init(np.random.default_rng(7), scheme=scheme, bias="uniform")
        c = mlp.init(np.random.default_rng(8), scheme=scheme, bias="uniform")
        for pa, pb, pc in zip(a, b, c):
            for xa, xb, xc in zip(pa, pb, pc):
                np.testing.assert_array_equal(xa, xb)
                assert not np.any(xa == xc)


# --------------------------------------------------------------------------- description


def test_description_counts_against_a_hand_count():
    mlp = gcref.MLP((3, 5, 4, 2), "tanh")
    assert mlp.depth == 3
    assert mlp.input_dim == 3
    assert mlp.output_dim == 2
    # (5*3 + 5) + (4*5 + 4) + (2*4 + 2) = 20 + 24 + 10
    assert mlp.n_params == 54
    params = mlp.init(np.random.default_rng(0))
    assert sum(a.size for pair in params for a in pair) == 54
    assert gcref.flatten_params(params).size == 54


def test_layer_activation_is_hidden_then_output():
    default = gcref.MLP((3, 5, 4, 2), "tanh")
    assert [default.layer_activation(i).name for i in range(3)] == ["tanh", "tanh", "identity"]
    custom = gcref.MLP((3, 5, 4, 2), "relu", output_activation="sigmoid")
    assert [custom.layer_activation(i).name for i in range(3)] == ["relu", "relu", "sigmoid"]
    single = gcref.MLP((3, 2), "relu", output_activation="softplus")
    assert single.layer_activation(0).name == "softplus"


def test_equal_descriptions_are_equal_and_hash_alike():
    a = gcref.MLP((3, 5, 2), "tanh")
    b = gcref.MLP([3, np.int64(5), 2], gcref.get_activation("tanh"), output_activation="identity")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != gcref.MLP((3, 5, 2), "relu")
    assert a != gcref.MLP((3, 6, 2), "tanh")
    assert a != gcref.MLP((3, 5, 2), "tanh", output_activation="sigmoid")
    leaky = gcref.MLP((3, 5, 2), gcref.leaky_relu(0.5))
    assert leaky == gcref.MLP((3, 5, 2), gcref.leaky_relu(0.5))
    assert leaky != gcref.MLP((3, 5, 2), gcref.leaky_relu(0.25))


# --------------------------------------------------------------------------- shared problem


def small_problem(activation, dtype=np.float64, seed=0):
    """The one architecture every cross-backend test uses, with inputs and targets."""
    mlp = gcref.MLP(SMALL_SIZES, activation)
    rng = np.random.default_rng(seed)
    params = mlp.init(rng, scheme="lecun_normal", bias="normal", dtype=dtype)
    X = rng.normal(size=(N_SMALL, SMALL_SIZES[0])).astype(dtype)
    y = rng.normal(size=(N_SMALL, SMALL_SIZES[-1])).astype(dtype)
    vector = mlp.init(rng, scheme="lecun_normal", bias="normal", dtype=dtype)
    return mlp, params, X, y, vector


def to64(params):
    return tuple((W.astype(np.float64), b.astype(np.float64)) for W, b in params)


def flat(value):
    """One float64 vector from an array, a params-like tuple or GradNorms."""
    if isinstance(value, gcref.GradNorms):
        return np.concatenate([value.weights.ravel(), value.biases.ravel()])
    if isinstance(value, tuple):
        return gcref.flatten_params(value).astype(np.float64)
    return np.asarray(value, dtype=np.float64).ravel()


def dtypes_of(value):
    if isinstance(value, gcref.GradNorms):
        return {value.weights.dtype, value.biases.dtype}
    if isinstance(value, tuple):
        return {a.dtype for pair in value for a in pair}
    return {np.asarray(value).dtype}


def primitives(mlp, params, X, y, vector, backend):
    return {
        "predict": gcref.predict(mlp, params, X, backend=backend),
        "input_jacobian": gcref.input_jacobian(mlp, params, X, backend=backend),
        "loss_grad": gcref.loss_grad(mlp, params, X, y, "squared", backend=backend),
        "loss_hvp": gcref.loss_hvp(mlp, params, X, y, "squared", vector, backend=backend),
        "param_grad_sq_norms": gcref.param_grad_sq_norms(mlp, params, X, backend=backend),
    }


def test_float32_end_to_end_agrees_with_float64(backend):
    mlp, params, X, y, vector = small_problem("tanh", dtype=np.float32)
    got = primitives(mlp, params, X, y, vector, backend)
    # Reference: the same float32-representable numbers, computed in float64.
    ref = primitives(mlp, to64(params), X.astype(np.float64), y.astype(np.float64), to64(vector), "numpy")
    rtol, _ = tolerance(np.float32)
    for name, value in got.items():
        assert dtypes_of(value) == {np.dtype(np.float32)}, name
        dev = relative_deviation(flat(value), flat(ref[name]), dtype=np.float32)
        assert dev <= rtol, f"{name}: deviation {dev} > {rtol}"


# --------------------------------------------------------------------------- custom activation


def _xtanh(x, xp):
    return x * xp.tanh(x)


def _xtanh_d1(x):
    t = np.tanh(x)
    return t + x * (1.0 - t**2)


def _xtanh_d2(x):
    t = np.tanh(x)
    return 2.0 * (1.0 - t**2) * (1.0 - x * t)


@pytest.fixture(scope="module")
def xtanh_name():
    """A fresh registered name per test run, so reruns in one process never collide."""
    name = f"xtanh_{uuid.uuid4().hex}"
    assert name not in gcref.activation_names()
    gcref.register_activation(gcref.Activation(name, _xtanh, d1=_xtanh_d1, d2=_xtanh_d2))
    return name


def test_hand_derivatives_of_the_custom_activation_match_central_differences():
    # Guards the test itself: d1, d2 must be right for the numpy backend to be a reference.
    x = np.linspace(-3.0, 3.0, 61)
    h = 1e-5
    np.testing.assert_allclose(_xtanh_d1(x), (_xtanh(x + h, np) - _xtanh(x - h, np)) / (2 * h), atol=1e-8)
    np.testing.assert_allclose(_xtanh_d2(x), (_xtanh_d1(x + h) - _xtanh_d1(x - h)) / (2 * h), atol=1e-8)


def assert_jacobian_and_grad_agree_with_numpy(activation, backend):
    mlp, params, X, y, _ = small_problem(activation)
    rtol, _ = tolerance(np.float64)
    for name, fn in [
        ("input_jacobian", lambda b: gcref.input_jacobian(mlp, params, X, backend=b)),
        ("loss_grad", lambda b: gcref.loss_grad(mlp, params, X, y, "squared", backend=b)),
    ]:
        dev = relative_deviation(flat(fn(backend)), flat(fn("numpy")))
        assert dev <= rtol, f"{name}: deviation {dev} > {rtol}"


def test_registered_activation_works_by_name_in_every_backend(xtanh_name, backend):
    assert gcref.MLP(SMALL_SIZES, xtanh_name).activation.name == xtanh_name
    assert_jacobian_and_grad_agree_with_numpy(xtanh_name, backend)


def test_activation_object_works_unregistered_in_every_backend(backend):
    act = gcref.Activation(f"xtanh_unregistered_{uuid.uuid4().hex}", _xtanh, d1=_xtanh_d1, d2=_xtanh_d2)
    assert gcref.MLP(SMALL_SIZES, act).activation is act
    assert_jacobian_and_grad_agree_with_numpy(act, backend)
    assert act.name not in gcref.activation_names()


def test_registering_a_taken_name_raises(xtanh_name):
    clash = gcref.Activation(xtanh_name, _xtanh, d1=_xtanh_d1, d2=_xtanh_d2)
    with pytest.raises(ValueError, match="already registered"):
        gcref.register_activation(clash)
    builtin_clash = gcref.Activation("tanh", _xtanh, d1=_xtanh_d1, d2=_xtanh_d2)
    with pytest.raises(ValueError, match="already registered"):
        gcref.register_activation(builtin_clash)
    assert gcref.get_activation("tanh").fn is not _xtanh
    with pytest.raises(TypeError, match="Activation"):
        gcref.register_activation(_xtanh)


# --------------------------------------------------------------------------- JAX float64


def test_jax_float64_without_global_configuration():
    require_backend("jax")
    import jax

    before = jax.config.read("jax_enable_x64")
    mlp, params, X, _, _ = small_problem("tanh")
    J = gcref.input_jacobian(mlp, params, X, backend="jax")
    assert J.dtype == np.float64
    assert jax.config.read("jax_enable_x64") == before
    # Not merely cast up: float64 agreement with the analytic backend is out of float32's reach.
    ref = gcref.input_jacobian(mlp, params, X, backend="numpy")
    assert relative_deviation(J, ref) <= tolerance(np.float64)[0]


# --------------------------------------------------------------------------- leaky_relu


@pytest.mark.parametrize("slope", [0.2, 3.0], ids=lambda s: f"slope={s}")
def test_leaky_relu_slopes_agree_across_backends(slope, backend):
    # Each leaky_relu(slope) call builds a new Activation (JAX compiles anew): two slopes only.
    act = gcref.leaky_relu(slope)
    x = np.array([-2.0, -0.5, 0.5, 2.0])
    np.testing.assert_array_equal(act(x), np.where(x > 0, x, slope * x))
    np.testing.assert_array_equal(act.d1(x), np.where(x > 0, 1.0, slope))
    assert_jacobian_and_grad_agree_with_numpy(act, backend)
