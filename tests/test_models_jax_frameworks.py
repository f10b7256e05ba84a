"""Flax linen, Flax nnx and Equinox models, and integer inputs, in :mod:`gcref.models`.

Each framework's model is measured as a user passes it (``model.apply`` with its
variables, the nnx module, the Equinox module) and checked against references written
here with plain JAX on theta alone: ``jax.vmap(jax.grad)`` for per-example gradient
norms and ``jax.vmap(jax.jacrev)`` for input Jacobians. The models carry fixed state
(BatchNorm running statistics set away from their initial values, so that treating
them as parameters, or forgetting them, changes the numbers).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

from conftest import require_backend
from gcref import models
from gcref.tolerances import tolerance

N, D, K = 12, 3, 2


@pytest.fixture(scope="module")
def jax():
    require_backend("jax")
    import jax

    return jax


def _flax(name):
    """flax.linen / flax.nnx, or a skip (a failure under CI) when Flax is missing."""
    import os

    try:
        import importlib

        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (pip install -e '.[dev]'); CI must test it")
        pytest.skip(f"{name} is not installed")


@pytest.fixture(scope="module")
def linen(jax):
    return _flax("flax.linen")


@pytest.fixture(scope="module")
def nnx(jax):
    return _flax("flax.nnx")


@pytest.fixture(scope="module")
def eqx(jax):
    return _flax("equinox")


def _data(dtype=np.float32):
    rng = np.random.default_rng(0)
    return rng.standard_normal((N, D)).astype(dtype), rng.standard_normal((N, K)).astype(dtype)


def _reference_norms(jax, apply, theta, X, Y):
    """``||grad_theta l_n||^2`` (squared loss, docs/math.md section 4) by vmap(grad)."""
    import jax.numpy as jnp

    def loss_n(p, x, y):
        f = apply(p, x[None])[0]
        return 0.5 * jnp.sum((f - y) ** 2)

    grads = jax.vmap(jax.grad(loss_n), in_axes=(None, 0, 0))(theta, X, Y)
    leaves = jax.tree_util.tree_leaves(grads)
    return sum(np.sum(np.asarray(g, np.float64).reshape(N, -1) ** 2, axis=1) for g in leaves)


def _reference_gc(jax, apply, theta, X):
    """``mean_n ||J(x_n)||_F^2`` by vmap(jacrev) on one example at a time."""
    jac = jax.vmap(jax.jacrev(lambda x: apply(theta, x[None])[0]))(X)
    return float(np.mean(np.sum(np.asarray(jac, np.float64).reshape(N, -1) ** 2, axis=1)))


def _close(a, b, dtype=np.float32):
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(a, b, rtol=10 * rtol, atol=10 * atol)


# -- Flax linen -------------------------------------------------------------------------------


def _linen_model(linen, jax, X):
    class Net(linen.Module):
        @linen.compact
        def __call__(self, x, train: bool = False):
            x = linen.Dense(8)(x)
            x = linen.BatchNorm(use_running_average=not train)(x)
            return linen.Dense(K)(linen.tanh(x))

    net = Net()
    variables = net.init(jax.random.key(0), X[:2])
    # Running statistics away from (0, 1): forgetting them or differentiating them shows.
    stats = jax.tree_util.tree_map(lambda a: a + 0.7, variables["batch_stats"])
    return net, {"params": variables["params"], "batch_stats": stats}


def test_linen_apply_is_measured_by_its_params_collection(jax, linen):
    X, Y = _data()
    net, variables = _linen_model(linen, jax, X)
    theta = variables["params"]

    def params_only(p, x):
        return net.apply({"params": p, "batch_stats": variables["batch_stats"]}, x)

    n_theta = sum(a.size for a in jax.tree_util.tree_leaves(theta))
    assert models.parameter_vector(net.apply, params=variables).shape == (n_theta,)
    norms = models.loss_grad_sq_norms(net.apply, (X, Y), "squared", params=variables)
    _close(norms.total, _reference_norms(jax, params_only, theta, X, Y))
    gc = models.geometric_complexity(net.apply, X, params=variables)
    _close(float(gc), _reference_gc(jax, params_only, theta, X))
    assert all("batch_stats" not in name for name in norms.names)


def test_linen_module_and_partial_are_recognised(jax, linen):
    X, _ = _data()
    net, variables = _linen_model(linen, jax, X)
    expected = float(models.geometric_complexity(net.apply, X, params=variables))
    assert float(models.geometric_complexity(net, X, params=variables)) == pytest.approx(expected)
    partial = functools.partial(net.apply, train=False)
    assert float(models.geometric_complexity(partial, X, params=variables)) == pytest.approx(
        expected
    )


def test_new_running_statistics_reuse_the_compilation(jax, linen):
    from gcref.backends import jax_model

    X, _ = _data()
    net, variables = _linen_model(linen, jax, X)
    first = float(models.geometric_complexity(net.apply, X, params=variables))
    compiled = dict(jax_model._PRIMITIVES)
    moved = dict(variables, batch_stats=jax.tree_util.tree_map(
        lambda a: a * 1.5, variables["batch_stats"]))
    second = float(models.geometric_complexity(net.apply, X, params=moved))
    assert second != pytest.approx(first)  # the statistics are read, not frozen in
    assert set(jax_model._PRIMITIVES) == set(compiled)  # no new primitive for new values
    ours = [p for key, p in jax_model._PRIMITIVES.items()
            if getattr(key[0], "__name__", "") == "Net.apply"]
    assert ours and all(p.jitted._cache_size() == 1 for p in ours)  # nor a new trace


def test_linen_variables_without_params_are_refused(jax, linen):
    X, _ = _data()
    net, variables = _linen_model(linen, jax, X)
    with pytest.raises(TypeError, match="'params' collection"):
        models.geometric_complexity(net.apply, X, params=variables["params"])
    with pytest.raises(TypeError, match="needs params"):
        models.geometric_complexity(net.apply, X)


def test_a_plain_function_with_a_variables_dict_warns(jax, linen):
    X, _ = _data()
    net, variables = _linen_model(linen, jax, X)

    def apply(v, x):
        return net.apply(v, x)

    with pytest.warns(UserWarning, match="every collection will be differentiated"):
        models.parameter_vector(apply, params=variables)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        models.parameter_vector(net.apply, params=variables)


# -- Flax nnx ---------------------------------------------------------------------------------


def _nnx_model(nnx, jax):
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(D, 8, rngs=rngs)
            self.bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
            self.l2 = nnx.Linear(8, K, rngs=rngs)

        def __call__(self, x):
            return self.l2(nnx.tanh(self.bn(self.l1(x))))

    net = Net(nnx.Rngs(0))
    net.bn.mean[...] = net.bn.mean[...] + 0.7
    net.bn.var[...] = net.bn.var[...] + 0.7
    return net


def test_nnx_module_is_measured_by_its_params(jax, nnx):
    X, Y = _data()
    net = _nnx_model(nnx, jax)
    graphdef, theta, rest = nnx.split(net, nnx.Param, ...)

    def params_only(p, x):
        return nnx.merge(graphdef, p, rest)(x)

    n_theta = sum(a.size for a in jax.tree_util.tree_leaves(theta))
    assert models.parameter_vector(net).shape == (n_theta,)
    norms = models.loss_grad_sq_norms(net, (X, Y), "squared")
    _close(norms.total, _reference_norms(jax, params_only, theta, X, Y))
    _close(float(models.geometric_complexity(net, X)), _reference_gc(jax, params_only, theta, X))
    with pytest.raises(TypeError, match="left out for a Flax nnx module"):
        models.geometric_complexity(net, X, params=theta)


# -- Equinox ----------------------------------------------------------------------------------


def test_equinox_module_is_measured_on_its_float_arrays(jax, eqx):
    X, Y = _data()
    mlp = eqx.nn.MLP(D, K, 8, 2, activation=jax.nn.tanh, key=jax.random.key(1))
    theta, rest = eqx.partition(mlp, eqx.is_inexact_array)

    def batched(p, x):
        return jax.vmap(eqx.combine(p, rest))(x)

    n_theta = sum(a.size for a in jax.tree_util.tree_leaves(theta))
    assert models.parameter_vector(mlp).shape == (n_theta,)
    norms = models.loss_grad_sq_norms(mlp, (X, Y), "squared")
    _close(norms.total, _reference_norms(jax, batched, theta, X, Y))
    _close(float(models.geometric_complexity(mlp, X)), _reference_gc(jax, batched, theta, X))
    with pytest.raises(TypeError, match="left out for an Equinox module"):
        models.geometric_complexity(mlp, X, params=theta)


# -- integer inputs ---------------------------------------------------------------------------


def _embedding_model(jax):
    import jax.numpy as jnp

    rng = np.random.default_rng(3)
    params = {"E": rng.standard_normal((7, 4)).astype(np.float32),
              "W": rng.standard_normal((8, K)).astype(np.float32)}

    def apply(p, ids):
        return jnp.tanh(p["E"][ids].reshape(ids.shape[0], -1)) @ p["W"]

    ids = rng.integers(0, 7, size=(N, 2))
    return apply, params, ids


def test_integer_inputs_reach_an_embedding(jax):
    apply, params, ids = _embedding_model(jax)
    Y = np.random.default_rng(4).standard_normal((N, K)).astype(np.float32)
    norms = models.loss_grad_sq_norms(apply, (ids, Y), "squared", params=params)
    _close(norms.total, _reference_norms(jax, apply, params, ids, Y))
    assert models.mean_loss(apply, (ids, Y), "squared", params=params) > 0


def test_integer_inputs_refuse_input_derivatives_with_the_way_out(jax):
    apply, params, ids = _embedding_model(jax)
    with pytest.raises(TypeError, match="embedding's output"):
        models.geometric_complexity(apply, ids, params=params)
    with pytest.raises(TypeError, match="embedding's output"):
        models.estimate_geometric_complexity(apply, ids, np.random.default_rng(0), params=params)
