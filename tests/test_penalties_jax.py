"""gcref.penalties on JAX ``apply(params, x)`` functions (issue 12): values, gradients, transforms.

Gradients of every penalty with respect to the parameters are checked against central
finite differences (float64, :func:`gcref.testing.check_vjp` on the flattened pytree)
on an MLP, a CNN, and a CNN with batch normalisation by the batch's statistics (examples
coupled); values against :mod:`gcref.models` and against per-example loops; IGR
gradients on MLPs against the analytic NumPy reference. The penalties are composed with
``jax.grad``, ``jax.jit`` and ``jax.vmap``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import gcref

if "jax" not in gcref.available_backends() and not os.environ.get("CI"):
    pytest.skip("jax is not installed", allow_module_level=True)

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

import gcref.models as gm
from gcref import penalties
from gcref.backends.jax_penalties import draw_probes
from gcref.nets.jax import mlp_apply_from_gcref
from gcref.params import flatten_params
from gcref.testing import check_vjp

RTOL, ATOL = gcref.tolerance(np.float64)
N = 4
LOSS = "softmax_cross_entropy"


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=atol)


def conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def cnn_apply(coupled):
    """``conv 3x3 -> [batch normalisation] -> tanh -> mean over positions -> dense`` (NHWC)."""

    def apply(params, x):
        h = conv(x, params["conv"]["w"]) + params["conv"]["b"]
        if coupled:
            mean = h.mean(axis=(0, 1, 2))
            var = h.var(axis=(0, 1, 2))
            h = (h - mean) / jnp.sqrt(var + 1e-5) * params["scale"] + params["shift"]
        h = jnp.tanh(h).mean(axis=(1, 2))
        return h @ params["dense"]["w"] + params["dense"]["b"]

    return apply


def cnn(coupled, rng):
    params = {
        "conv": {"w": rng.normal(scale=0.5, size=(3, 3, 2, 3)), "b": rng.normal(size=3)},
        "dense": {"w": rng.normal(size=(3, 3)), "b": rng.normal(size=3)},
    }
    if coupled:
        params.update(scale=1 + 0.2 * rng.normal(size=3), shift=rng.normal(size=3))
    return cnn_apply(coupled), params, rng.normal(size=(N, 5, 5, 2))


def mlp(rng):
    description = gcref.MLP((3, 5, 3), activation="tanh")
    apply, params = mlp_apply_from_gcref(description, description.init(rng))
    return apply, params, rng.normal(size=(N, 3))


NETWORKS = {
    "mlp": lambda rng: mlp(rng) + ("independent",),
    "cnn": lambda rng: cnn(False, rng) + ("independent",),
    "cnn-batch-statistics": lambda rng: cnn(True, rng) + ("coupled",),
}


@pytest.fixture(params=list(NETWORKS), ids=lambda name: f"net={name}")
def network(request, float64):
    """``(apply, params, x, y, examples)`` with jnp float64 leaves and integer labels."""
    rng = np.random.default_rng(1)
    apply, params, x, examples = NETWORKS[request.param](rng)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    y = jnp.asarray(rng.integers(0, 3, size=N))
    return apply, params, jnp.asarray(x), y, examples


def penalty_functions(apply, x, y, examples, key=None):
    """name -> ``params -> penalty``."""
    key = jax.random.key(3) if key is None else key
    return {
        "gc": lambda p: penalties.geometric_complexity(apply, x, params=p, examples=examples),
        "gc-estimate": lambda p: penalties.estimate_geometric_complexity(
            apply, x, key, params=p, n_probes=2, probe="rademacher", examples=examples
        ),
        "de": lambda p: penalties.dirichlet_energy(apply, x, params=p, examples=examples),
        "de-estimate": lambda p: penalties.estimate_dirichlet_energy(
            apply, x, key, params=p, n_probes=2, probe="sphere", examples=examples
        ),
        "igr-full-batch": lambda p: penalties.igr_full_batch(apply, x, y, LOSS, params=p),
        "igr-per-example": lambda p: penalties.igr_per_example(
            apply, x, y, LOSS, params=p, examples=examples
        ),
    }


NAMES = ("gc", "gc-estimate", "de", "de-estimate", "igr-full-batch", "igr-per-example")


@pytest.mark.parametrize("name", NAMES)
def test_penalty_gradient_equals_finite_differences(network, name):
    """Under ``jax.jit``: the jitted gradient against differences of the jitted penalty."""
    apply, params, x, y, examples = network
    value_and_grad = jax.jit(jax.value_and_grad(penalty_functions(apply, x, y, examples)[name]))
    flat, unravel = ravel_pytree(params)
    grad = np.asarray(ravel_pytree(value_and_grad(params)[1])[0])
    check_vjp(
        lambda v: np.array([float(value_and_grad(unravel(jnp.asarray(v)))[0])]),
        np.asarray(flat),
        lambda u: u[0] * grad,
        np.random.default_rng(4),
        n_probes=2,
    )


# -- values ---------------------------------------------------------------------------------


def loop_references(apply, params, x, y, key):
    """Every penalty from the batch's full Jacobians and per-example gradients, one by one."""
    J = jax.jacfwd(lambda inputs: apply(params, inputs))(x)
    J = np.asarray(J).reshape(N, -1, N, int(np.prod(x.shape[1:])))
    own = np.stack([J[n, :, n] for n in range(N)])
    k = own.shape[1]
    gc = float(np.mean(np.sum(own**2, axis=(1, 2))))
    rademacher = np.asarray(draw_probes(key, "rademacher", (N, 2, k), jnp.float64))
    sphere = np.asarray(draw_probes(key, "sphere", (N, 2, k), jnp.float64))

    def estimate(v):
        return float(np.mean(np.sum(np.einsum("npk,nkd->npd", v, own) ** 2, axis=2)))

    def losses(p):
        f = apply(p, x)
        return jax.nn.logsumexp(f, axis=1) - f[jnp.arange(N), y]

    def sq(tree):
        return float(sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(tree)))

    per_example = [sq(jax.grad(lambda p, n=n: losses(p)[n])(params)) for n in range(N)]
    return {
        "gc": gc,
        "gc-estimate": estimate(rademacher),
        "de": gc / 2,
        "de-estimate": k / 2 * estimate(sphere),
        "igr-full-batch": sq(jax.grad(lambda p: losses(p).mean())(params)),
        "igr-per-example": float(np.mean(per_example)),
    }


def test_penalty_values_equal_per_example_loops(network):
    apply, params, x, y, examples = network
    key = jax.random.key(3)
    expected = loop_references(apply, params, x, y, key)
    fns = penalty_functions(apply, x, y, examples, key)
    values = jax.jit(lambda p: {name: fn(p) for name, fn in fns.items()})(params)
    for name, value in values.items():
        assert_close(float(value), expected[name], rtol=1e-9), name


def test_independent_penalties_equal_the_measures():
    apply, params, x = mlp(np.random.default_rng(5))
    y = np.random.default_rng(6).integers(0, 3, size=N)
    terms = gm.igr_terms(apply, (x, y), LOSS, params=params, batch_size=N)
    jparams = jax.tree_util.tree_map(jnp.asarray, params)
    gc = gm.geometric_complexity(apply, x, params=params)
    assert_close(float(penalties.geometric_complexity(apply, jnp.asarray(x), params=jparams)), gc)
    assert_close(
        float(penalties.igr_full_batch(apply, x, y, LOSS, params=jparams)), terms.full_batch
    )
    assert_close(
        float(penalties.igr_per_example(apply, x, y, LOSS, params=jparams)), terms.per_example
    )


def test_coupled_form_equals_the_independent_one_on_independent_examples(network):
    apply, params, x, y, examples = network
    if examples == "coupled":
        # The other way round the two differ: the batch statistics matter.
        independent = penalties.geometric_complexity(apply, x, params=params)
        coupled = penalties.geometric_complexity(apply, x, params=params, examples="coupled")
        assert abs(float(independent) - float(coupled)) > 1e-3 * float(coupled)
        return
    key = jax.random.key(7)

    def both(p):
        out = {}
        for form in ("coupled", "independent"):
            out[form] = (
                penalties.geometric_complexity(apply, x, params=p, examples=form),
                penalties.igr_per_example(apply, x, y, LOSS, params=p, examples=form),
                penalties.estimate_geometric_complexity(apply, x, key, params=p, examples=form),
            )
        return out

    values = jax.jit(both)(params)
    assert_close(np.array(values["coupled"]), np.array(values["independent"]))


@pytest.mark.parametrize("loss", ["squared", "softmax_cross_entropy"])
def test_igr_penalty_gradients_equal_the_numpy_reference(loss):
    description = gcref.MLP((3, 4, 2), activation="tanh")
    rng = np.random.default_rng(8)
    params = description.init(rng)
    X = rng.normal(size=(5, 3))
    y = rng.normal(size=(5, 2)) if loss == "squared" else rng.integers(0, 2, size=5)
    apply, jparams = mlp_apply_from_gcref(description, params)
    jparams = jax.tree_util.tree_map(jnp.asarray, jparams)
    for reference, penalty in (
        (gcref.modified_loss_gd_grad, penalties.igr_full_batch),
        (gcref.modified_loss_per_example_grad, penalties.igr_per_example),
    ):
        want = flatten_params(reference(description, params, X, y, loss, 4.0)) - flatten_params(
            reference(description, params, X, y, loss, 0.0)
        )
        got = ravel_pytree(
            jax.jit(jax.grad(lambda p, penalty=penalty: penalty(apply, X, y, loss, params=p)))(
                jparams
            )
        )[0]
        assert_close(got, want, atol=ATOL * max(1.0, np.max(np.abs(want))))


# -- probes and transforms ------------------------------------------------------------------


@pytest.mark.parametrize("probe", ["gaussian", "rademacher", "sphere"])
def test_probe_penalty_is_unbiased_within_its_standard_error(probe):
    """The mean over 400 keys (one ``jax.vmap``) of the estimate and its gradient is the exact one."""
    apply, params, x = mlp(np.random.default_rng(9))
    params = jax.tree_util.tree_map(jnp.asarray, params)
    x = jnp.asarray(x)

    def estimate(p, key):
        return penalties.estimate_geometric_complexity(apply, x, key, params=p, probe=probe)

    direction = ravel_pytree(params)[0]
    direction = jnp.asarray(np.random.default_rng(10).normal(size=direction.shape))

    def value_and_slope(key):
        value, grad = jax.value_and_grad(estimate)(params, key)
        return value, ravel_pytree(grad)[0] @ direction

    keys = jax.random.split(jax.random.key(11), 400)
    values, slopes = jax.vmap(value_and_slope)(keys)
    exact, exact_grad = jax.value_and_grad(
        lambda p: penalties.geometric_complexity(apply, x, params=p)
    )(params)
    for draws, want in ((values, exact), (slopes, ravel_pytree(exact_grad)[0] @ direction)):
        draws = np.asarray(draws)
        stderr = draws.std(ddof=1) / np.sqrt(draws.size)
        assert stderr > 0 and abs(draws.mean() - float(want)) < 4 * stderr


def test_probes_follow_their_distributions():
    key = jax.random.key(12)
    rademacher = np.asarray(draw_probes(key, "rademacher", (50, 2, 3), jnp.float64))
    sphere = np.asarray(draw_probes(key, "sphere", (50, 2, 3), jnp.float64))
    assert set(np.unique(rademacher)) == {-1.0, 1.0}
    assert_close(np.linalg.norm(sphere, axis=-1), np.ones((50, 2)))


@pytest.mark.parametrize("name", ["mlp", "cnn-batch-statistics"])
def test_penalties_compose_with_vmap(name):
    """``jax.vmap`` over two batches of two examples gives each batch's penalty gradient."""
    rng = np.random.default_rng(16)
    apply, params, x, examples = NETWORKS[name](rng)
    y = jnp.asarray(rng.integers(0, 3, size=N))
    label_halves = y.reshape(2, N // 2)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    halves = jnp.asarray(x).reshape(2, N // 2, *x.shape[1:])
    for penalty in ("gc", "igr-per-example"):

        def grad_on(xb, yb, penalty=penalty):
            return ravel_pytree(
                jax.grad(penalty_functions(apply, xb, yb, examples)[penalty])(params)
            )[0]

        batched = jax.jit(jax.vmap(grad_on))(halves, label_halves)
        one_by_one = [jax.jit(grad_on)(xb, yb) for xb, yb in zip(halves, label_halves)]
        assert_close(batched, np.stack(one_by_one)), penalty


def test_a_jitted_training_step_lowers_gc():
    """Gradient descent on a regression problem, with and without the GC penalty (same start)."""
    rng = np.random.default_rng(13)
    description = gcref.MLP((2, 16, 1), activation="tanh")
    apply, params = mlp_apply_from_gcref(description, description.init(rng))
    params = jax.tree_util.tree_map(jnp.asarray, params)
    x = jnp.asarray(rng.uniform(-2, 2, size=(32, 2)))
    y = jnp.sin(2 * x[:, :1]) * jnp.cos(x[:, 1:])

    def train(lam):
        @jax.jit
        def step(p, key):
            def objective(q):
                mse = 0.5 * jnp.mean(jnp.sum((apply(q, x) - y) ** 2, axis=1))
                gc = penalties.estimate_geometric_complexity(
                    apply, x, key, params=q, probe="sphere"
                )
                return mse + lam * gc

            return jax.tree_util.tree_map(lambda a, g: a - 0.05 * g, p, jax.grad(objective)(p))

        p = params
        for key in jax.random.split(jax.random.key(14), 60):
            p = step(p, key)
        return float(penalties.geometric_complexity(apply, x, params=p))

    assert train(0.2) < 0.8 * train(0.0)


# -- bad input ------------------------------------------------------------------------------


def test_bad_input_raises_a_clear_error():
    apply, params, x = mlp(np.random.default_rng(15))
    y = np.zeros(N, dtype=int)
    with pytest.raises(TypeError, match="needs params"):
        penalties.geometric_complexity(apply, x)
    with pytest.raises(ValueError, match="torch modules only"):
        penalties.geometric_complexity(apply, x, params=params, return_output=True)
    with pytest.raises(ValueError, match="torch modules only"):
        penalties.igr_per_example(apply, x, y, LOSS, params=params, norm_method="gram")
    with pytest.raises(ValueError, match="unknown examples"):
        penalties.geometric_complexity(apply, x, params=params, examples="auto")
    with pytest.raises(TypeError, match="PRNG key"):
        penalties.estimate_geometric_complexity(apply, x, np.random.default_rng(0), params=params)
    with pytest.raises(ValueError, match="unknown probe"):
        penalties.estimate_geometric_complexity(
            apply, x, jax.random.key(0), params=params, probe="x"
        )
    with pytest.raises(ValueError, match=r"y must have shape \(4, 3\)"):
        penalties.igr_full_batch(apply, x, np.zeros((N, 2)), "squared", params=params)
    with pytest.raises(TypeError, match="integer dtype"):
        penalties.igr_full_batch(apply, x, y.astype(float), LOSS, params=params)
    with pytest.raises(ValueError, match="shape \\(n, ...\\)"):
        penalties.geometric_complexity(lambda p, x: jnp.sum(x), x, params=params)
