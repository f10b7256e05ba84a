"""gcref.models on JAX apply functions (issue 7): the JaxModel adapter and gcref.nets.jax.

On gcref MLPs every measure is compared with the NumPy reference (hand-derived
analytic derivatives); on the small CNN with loops over single examples (jax.jacrev
per example, jax.grad per example, Hessian-vector products by central differences of
the gradient). Shapes are fixed (N = 7 examples, chunks of 3 so that the last chunk is
padded) because JAX compiles once per shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

import gcref
import gcref.models as gm
from gcref.backends.jax_model import JaxModel
from gcref.nets.jax import mlp, mlp_apply_from_gcref, small_cnn
from gcref.params import flatten_params, unflatten_params
from gcref.tolerances import tolerance

RTOL, ATOL = tolerance(np.float64)
N, CHUNK = 7, 3

#: One architecture per loss; the first has d > k (reverse mode), the second d < k.
MLP_CASES = {
    "tanh-squared": (gcref.MLP((3, 5, 2), activation="tanh"), "squared"),
    "softplus-softmax": (gcref.MLP((2, 6, 4), activation="softplus"), "softmax_cross_entropy"),
    "relu-logistic": (gcref.MLP((4, 3, 1), activation="relu"), "logistic"),
}


def assert_close(value, reference, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(value, reference, rtol=rtol, atol=atol)


def targets_for(loss, rng, n, k):
    if loss == "squared":
        return rng.normal(size=(n, k))
    return rng.integers(0, 2 if loss == "logistic" else k, size=n)


@st.composite
def mlp_problems(draw):
    """A case of ``MLP_CASES`` with parameters at a drawn scale, N inputs and targets."""
    name = draw(st.sampled_from(sorted(MLP_CASES)))
    net, loss = MLP_CASES[name]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from((0.5, 1.0, 2.0)))
    params = net.init(rng, scheme="lecun_normal", scale=scale, bias="normal")
    X = rng.normal(size=(N, net.input_dim))
    return net, params, X, targets_for(loss, rng, N, net.output_dim), loss, rng


@given(mlp_problems(), st.sampled_from(["gaussian", "rademacher", "sphere"]))
def test_every_measure_matches_the_numpy_reference_on_mlps(problem, probe):
    net, params, X, y, loss, rng = problem
    apply, tree = mlp_apply_from_gcref(net, params)
    kw = {"params": tree, "chunk_size": CHUNK}

    reference = gcref.geometric_complexity(net, params, X, per_example=True)
    for mode in ("reverse", "forward", "auto"):
        gc = gm.geometric_complexity(apply, X, mode=mode, per_example=True, **kw)
        assert_close(gc.per_example, reference.per_example)
        assert_close(gc.value, reference.value)
    assert_close(gm.dirichlet_energy(apply, X, **kw), gcref.dirichlet_energy(net, params, X))

    seed = int(rng.integers(2**32))
    estimate = gm.estimate_geometric_complexity(
        apply, X, np.random.default_rng(seed), n_probes=3, probe=probe, **kw
    )
    expected = gcref.estimate_geometric_complexity(
        net, params, X, np.random.default_rng(seed), n_probes=3, probe=probe
    )
    assert_close([estimate.value, estimate.stderr], [expected.value, expected.stderr])
    assert (estimate.n_probes, estimate.n_examples) == (3, N)

    assert_close(
        gm.output_grad_sq_norms(apply, X, **kw), gcref.param_grad_sq_norms(net, params, X).total
    )
    assert_close(
        gm.loss_grad_sq_norms(apply, (X, y), loss, **kw),
        gcref.loss_grad_sq_norms(net, params, X, y, loss).total,
    )

    # MATH.md section 5 with h = 4: each modified loss minus L is the penalty itself.
    terms = gm.igr_terms(apply, (X, y), loss, batch_size=2, **kw)
    mean_loss = gcref.mean_loss(net, params, X, y, loss)
    batches = [np.arange(s, min(s + 2, N)) for s in range(0, N, 2)]
    assert_close(terms.loss, mean_loss)
    assert_close(terms.full_batch, gcref.modified_loss_gd(net, params, X, y, loss, 4.0) - mean_loss)
    assert_close(
        terms.mini_batch,
        gcref.modified_loss_sgd(net, params, X, y, loss, 4.0, batches) - mean_loss,
    )
    assert_close(
        terms.per_example,
        gcref.modified_loss_per_example(net, params, X, y, loss, 4.0) - mean_loss,
    )
    assert (terms.n_examples, terms.n_batches) == (N, 4)

    assert_close(gm.parameter_vector(apply, params=tree), flatten_params(params))
    v = rng.normal(size=net.n_params)
    expected_hv = gcref.loss_hvp(net, params, X, y, loss, unflatten_params(v, params))
    assert_close(gm.loss_hvp(apply, (X, y), loss, v, **kw), flatten_params(expected_hv))


# -- the small CNN against loops over single examples --------------------------------


def softmax_cross_entropy(f, label):
    """``logsumexp(f) - f_y`` for one example, written here independently of gcref."""
    return jax.nn.logsumexp(f) - f[label]


@pytest.fixture(scope="module")
def cnn_problem():
    init, apply = small_cnn(in_channels=2, num_classes=3, width=4)
    rng = np.random.default_rng(0)
    params = init(jax.random.key(0), (6, 6, 2), dtype=np.float64)
    # Non-zero biases, as NumPy leaves: JaxModel takes any arrays.
    params = jax.tree_util.tree_map(
        lambda a: np.asarray(a) + 0.1 * rng.normal(size=a.shape), params
    )
    X = rng.normal(size=(N, 6, 6, 2))
    y = rng.integers(0, 3, size=N)
    return apply, params, X, y


def per_example_references(apply, params, X, y, probes):
    """Input Jacobians, probe statistics, gradients of f and of l: one example at a time.

    Each single-example function is jitted only to compile it once for the loop.
    """
    input_jacobian = jax.jit(jax.jacrev(lambda p, x: apply(p, x[None])[0], argnums=1))
    param_jacobian = jax.jit(jax.jacrev(lambda p, x: apply(p, x[None])[0]))
    loss_and_grad = jax.jit(
        jax.value_and_grad(lambda p, x, label: softmax_cross_entropy(apply(p, x[None])[0], label))
    )
    with jax.enable_x64(True):
        jac_sq, probe_stats, out_sq, loss_values, loss_grads = [], [], [], [], []
        for x, label, v in zip(X, y, probes):
            J = np.asarray(input_jacobian(params, x)).reshape(3, -1)
            jac_sq.append(np.sum(J**2))
            probe_stats.append(np.sum((v @ J) ** 2, axis=1))
            dtheta_f = param_jacobian(params, x)
            leaves = jax.tree_util.tree_leaves(dtheta_f)
            out_sq.append(sum(np.sum(np.asarray(a) ** 2) for a in leaves))
            value, grad = loss_and_grad(params, x, label)
            loss_values.append(float(value))
            loss_grads.append(np.asarray(ravel_pytree(grad)[0]))
    return (
        np.array(jac_sq),
        np.array(probe_stats),
        np.array(out_sq),
        np.array(loss_values),
        np.array(loss_grads),
    )


def mean_gradients(apply, thetas, unravel, X, y):
    """``grad L`` at each of the flat parameters ``thetas``, by a loop over examples, flat."""
    grad = jax.jit(
        jax.grad(lambda t, x, label: softmax_cross_entropy(apply(unravel(t), x[None])[0], label))
    )
    with jax.enable_x64(True):
        return [
            sum(np.asarray(grad(theta, x, label)) for x, label in zip(X, y)) / len(X)
            for theta in thetas
        ]


def test_small_cnn_measures_match_per_example_loops(cnn_problem):
    apply, params, X, y = cnn_problem
    loss = "softmax_cross_entropy"
    kw = {"params": params, "chunk_size": CHUNK}
    rng = np.random.default_rng(1)
    probes = rng.standard_normal((N, 4, 3))
    jac_sq, probe_stats, out_sq, loss_values, loss_grads = per_example_references(
        apply, params, X, y, probes
    )

    for mode in ("reverse", "forward"):
        gc = gm.geometric_complexity(apply, X, mode=mode, per_example=True, **kw)
        assert_close(gc.per_example, jac_sq)
    assert_close(gm.dirichlet_energy(apply, X, **kw), jac_sq.mean() / 2)

    estimate = gm.estimate_geometric_complexity(
        apply, X, np.random.default_rng(1), n_probes=4, **kw
    )
    stderr = np.sqrt(np.sum(np.var(probe_stats, axis=1, ddof=1)) / (4 * N**2))
    assert_close([estimate.value, estimate.stderr], [probe_stats.mean(), stderr])

    assert_close(gm.output_grad_sq_norms(apply, X, **kw), out_sq)
    assert_close(gm.loss_grad_sq_norms(apply, (X, y), loss, **kw), np.sum(loss_grads**2, axis=1))

    terms = gm.igr_terms(apply, (X, y), loss, batch_size=2, **kw)
    batch_grads = [loss_grads[s : s + 2].mean(axis=0) for s in range(0, N, 2)]
    assert_close(terms.loss, loss_values.mean())
    assert_close(terms.full_batch, np.sum(loss_grads.mean(axis=0) ** 2))
    assert_close(terms.mini_batch, np.mean([np.sum(g**2) for g in batch_grads]))
    assert_close(terms.per_example, np.mean(np.sum(loss_grads**2, axis=1)))

    eps = 1e-6
    with jax.enable_x64(True):
        theta, unravel = ravel_pytree(params)
        assert_close(gm.parameter_vector(apply, params=params), np.asarray(theta))
        v = rng.normal(size=theta.shape[0])
    thetas = [np.asarray(theta) + s * eps * v for s in (1, -1)]
    gradients = mean_gradients(apply, thetas, unravel, X, y)
    fd = (gradients[0] - gradients[1]) / (2 * eps)
    hv = gm.loss_hvp(apply, (X, y), loss, v, **kw)
    assert np.linalg.norm(hv - fd) <= 1e-6 * np.linalg.norm(fd)


# -- streaming, compilation, float32 ----------------------------------------------------


def test_results_do_not_depend_on_chunking_or_batching(cnn_problem):
    apply, params, X, y = cnn_problem
    loss = "softmax_cross_entropy"
    batches = [(X[s : s + 2], y[s : s + 2]) for s in range(0, N, 2)]
    gc = gm.geometric_complexity(apply, X, params=params, chunk_size=CHUNK, per_example=True)
    terms = gm.igr_terms(apply, (X, y), loss, params=params, batch_size=2, chunk_size=CHUNK)
    norms = gm.loss_grad_sq_norms(apply, (X, y), loss, params=params, chunk_size=CHUNK)
    # Chunks of 1 and 2 are padded to the compiled 3: chunking, padding and masking at once.
    for chunk_size in (1, 2):
        assert_close(
            gm.geometric_complexity(
                apply, X, params=params, chunk_size=chunk_size, per_example=True
            ).per_example,
            gc.per_example,
        )
        assert_close(
            gm.loss_grad_sq_norms(apply, batches, loss, params=params, chunk_size=chunk_size), norms
        )
        streamed = gm.igr_terms(apply, iter(batches), loss, params=params, chunk_size=chunk_size)
        for field in ("loss", "full_batch", "mini_batch", "per_example"):
            assert_close(getattr(streamed, field), getattr(terms, field))
        assert (streamed.n_examples, streamed.n_batches) == (N, 4)
    assert_close(
        gm.geometric_complexity(apply, [X[:4], X[4:]], params=params, chunk_size=CHUNK), gc.value
    )


def test_each_primitive_compiles_once_per_shape_and_pads_the_last_chunk():
    net = gcref.MLP((3, 4, 2), activation="tanh")
    params = net.init(np.random.default_rng(2))
    traces = []

    def counted(p, x):
        traces.append(x.shape)
        return mlp_apply_from_gcref(net, params)[0](p, x)

    X = np.random.default_rng(3).normal(size=(N, 3))
    first = gm.geometric_complexity(counted, X, params=params, chunk_size=CHUNK, mode="reverse")
    # k from the shapes of one example (traced by jax.eval_shape, not compiled), the forward
    # pass of the batch-statistics check at the chunk's shape (its halves padded to it),
    # then the Jacobian primitive once for chunks 3, 3 and the last chunk of 1 padded to 3:
    # its output check on one row and its per-example pass (vmapped: traced at one example).
    assert traces == [(1, 3), (3, 3), (1, 3), (1, 3)]
    again = gm.geometric_complexity(counted, X[:5], params=params, chunk_size=CHUNK, mode="reverse")
    assert traces == [(1, 3), (3, 3), (1, 3), (1, 3)]
    assert_close(first, gcref.geometric_complexity(net, params, X))
    assert_close(again, gcref.geometric_complexity(net, params, X[:5]))


def test_float32_models_stay_float32_and_agree_with_the_float64_reference():
    net, loss = MLP_CASES["softplus-softmax"]
    rng = np.random.default_rng(8)
    params = net.init(rng, bias="normal")
    X, y = rng.normal(size=(N, net.input_dim)), targets_for(loss, rng, N, net.output_dim)
    apply, _ = mlp_apply_from_gcref(net, params)
    model = JaxModel(apply, jax.tree_util.tree_map(lambda a: a.astype(np.float32), params))
    assert model.dtype == np.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(model.params))
    assert not model.shard  # one CPU device here
    X32 = X.astype(np.float32)
    gc = gm.geometric_complexity(model, X32, chunk_size=CHUNK, per_example=True)
    assert gc.per_example.dtype == np.float64
    rtol, atol = tolerance(np.float32)
    reference = gcref.geometric_complexity(net, params, X, per_example=True)
    assert_close(gc.per_example, reference.per_example, rtol=rtol, atol=atol)
    terms = gm.igr_terms(model, (X32, y), loss, batch_size=2, chunk_size=CHUNK)
    mean_loss = gcref.mean_loss(net, params, X, y, loss)
    expected = gcref.modified_loss_gd(net, params, X, y, loss, 4.0) - mean_loss
    assert_close([terms.loss, terms.full_batch], [mean_loss, expected], rtol=rtol, atol=atol)


def test_project_mlp_equals_the_gcref_mlp_with_transposed_weights():
    init, apply = mlp((3, 5, 2), activation="tanh")
    assert mlp([3, 5, 2], "tanh")[1] is apply  # cached: compilations are reused
    tree = init(jax.random.key(4), (3,), dtype=np.float64)
    params = tuple((np.asarray(layer["w"]).T, np.asarray(layer["b"])) for layer in tree)
    X = np.random.default_rng(5).normal(size=(N, 3))
    assert_close(
        gm.geometric_complexity(apply, X, params=tree),
        gcref.geometric_complexity(gcref.MLP((3, 5, 2), activation="tanh"), params, X),
    )
    with pytest.raises(ValueError, match="input_shape"):
        init(jax.random.key(0), (4,))


# -- clear errors ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_mlp():
    net = gcref.MLP((3, 4, 2), activation="tanh")
    params = net.init(np.random.default_rng(6))
    apply, tree = mlp_apply_from_gcref(net, params)
    return apply, tree


@pytest.mark.parametrize(
    "params, error, message",
    [
        ({"w": np.ones((3, 2), dtype=np.int64)}, TypeError, r"params\['w'\] has dtype int64"),
        ({"w": np.ones(3), "s": "scale"}, TypeError, r"params\['s'\] is a str"),
        ({"w": np.ones(3), "b": np.ones(2, dtype=np.float32)}, TypeError, "share one dtype"),
        ({"w": np.array([1.0, np.nan])}, ValueError, r"params\['w'\] contains NaN"),
        ({}, ValueError, "at least one array leaf"),
    ],
    ids=["integer-leaf", "string-leaf", "mixed-dtypes", "nan", "empty"],
)
def test_bad_params_are_refused_by_name(params, error, message):
    with pytest.raises(error, match=message):
        JaxModel(lambda p, x: x, params)


def test_bad_inputs_and_outputs_are_refused(small_mlp):
    apply, tree = small_mlp
    X = np.random.default_rng(7).normal(size=(4, 3))
    with pytest.raises(TypeError, match="floating dtype for derivatives with respect to the input"):
        gm.geometric_complexity(apply, np.ones((4, 3), dtype=np.int64), params=tree)
    with pytest.raises(TypeError, match="X must hold floating-point values"):
        gm.geometric_complexity(apply, np.ones((4, 3), dtype=bool), params=tree)
    with pytest.raises(TypeError, match="mixed dtypes"):
        gm.geometric_complexity(apply, X.astype(np.float32), params=tree)
    with pytest.raises(ValueError, match="X contains NaN"):
        gm.geometric_complexity(apply, np.where(X > 1, np.inf, X), params=tree)
    with pytest.raises(ValueError, match="X contains NaN"):
        gm.geometric_complexity(apply, np.where(X > 1, np.nan, X), params=tree)
    # Finite entries whose sum overflows: accepted by the compiled scan (no error).
    huge = np.full((4, 3), 1e308)
    assert not np.isfinite(np.sum(huge))
    assert JaxModel(apply, tree).outputs(huge).shape == (4, 2)
    with pytest.raises(ValueError, match=r"shape \(n, k\).*returned shape \(1,\)"):
        gm.geometric_complexity(lambda p, x: apply(p, x)[:, 0], X, params=tree, chunk_size=4)
    with pytest.raises(ValueError, match=r"shape \(n, k\).*returned shape \(1, 2\)"):
        gm.geometric_complexity(lambda p, x: apply(p, x)[:1], X, params=tree, chunk_size=4)
    with pytest.raises(TypeError, match="apply must be a function"):
        JaxModel("not a function", tree)
    with pytest.raises(ValueError, match="mode must be"):
        JaxModel(apply, tree).jacobian_sq_norms(X, "sideways")


# -- per-example norms from layer inputs and output cotangents (issue 17) ---------------


def odd_layers(p, x):
    """Layers of every kind the norm identities cover, each in an unusual spelling.

    ``x (n, 32)`` is read as a 2 x 4 x 4 NCHW image: a strided, dilated, asymmetrically
    padded convolution; a per-channel scale (``mul``); a dense layer over 2 positions
    with a wide weight (the ghost form); one over 6 positions with a narrow weight
    (the materialised form); a weight applied from the left (``W @ h.T``).
    """
    n = x.shape[0]
    img = x.reshape(n, 2, 4, 4)
    h = jax.lax.conv_general_dilated(
        img, p["conv"], (2, 1), [(1, 0), (0, 1)], rhs_dilation=(2, 1),
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )  # (n, 3, 2, 4)
    h = jnp.tanh(h + p["conv_b"][None, :, None, None]) * p["scale"][None, :, None, None]
    pairs = h.reshape(n, 2, 12)
    wide = jnp.tanh(pairs @ p["wide"])  # (n, 2, 12) @ (12, 10): F = 2, ghost
    seq = jnp.tanh(wide.reshape(n, 4, 5) @ p["narrow"])  # F = 4, C = 5, O = 2: materialised
    flat = seq.reshape(n, 8) - p["shift"]
    return (p["left"] @ flat.T).T  # (n, 3)


@pytest.fixture(scope="module")
def odd_problem():
    rng = np.random.default_rng(21)
    shapes = {
        "conv": (3, 2, 2, 2), "conv_b": (3,), "scale": (3,), "wide": (12, 10),
        "narrow": (5, 2), "shift": (8,), "left": (3, 8),
    }
    params = {name: rng.normal(size=s) / np.sqrt(np.prod(s[1:]) or 1) for name, s in shapes.items()}
    X = rng.normal(size=(N, 32))
    y = rng.normal(size=(N, 3))
    return params, X, y


def looped_loss_grads(apply, params, X, y):
    """``grad_theta l_n`` of the squared loss, one example at a time, as leaf lists."""
    grad = jax.jit(jax.grad(lambda p, x, t: 0.5 * jnp.sum((apply(p, x[None])[0] - t) ** 2)))
    with jax.enable_x64(True):
        return [jax.tree_util.tree_leaves(grad(params, x, t)) for x, t in zip(X, y)]


def looped_output_grad_sq_norms(apply, params, X):
    jac = jax.jit(jax.jacrev(lambda p, x: apply(p, x[None])[0]))
    with jax.enable_x64(True):
        return np.array([
            [np.sum(np.asarray(a) ** 2) for a in jax.tree_util.tree_leaves(jac(params, x))]
            for x in X
        ])


def test_every_covered_layer_kind_is_found_in_the_jaxpr(odd_problem):
    from gcref.backends.jax_layers import layer_plan

    params, X, _ = odd_problem
    with jax.enable_x64(True):
        plan, why = layer_plan(odd_layers, params, X[:1])
    assert why is None
    kinds = {jax.tree_util.tree_leaves({k: k for k in params})[s.tag.leaf]: s.kind
             for s in plan.ordered_sites}
    assert kinds == {
        "conv": "conv", "conv_b": "elementwise", "scale": "elementwise", "wide": "dot",
        "narrow": "dot", "shift": "elementwise", "left": "dot",
    }


@pytest.mark.parametrize("norm_method", ["identity", "vmap"])
def test_norm_methods_match_per_example_loops(odd_problem, norm_method):
    params, X, y = odd_problem
    model = JaxModel(odd_layers, params, norm_method=norm_method)
    grads = looped_loss_grads(odd_layers, params, X, y)
    per_leaf = np.array([[np.sum(np.asarray(g) ** 2) for g in example] for example in grads])
    norms = gm.loss_grad_sq_norms(model, (X, y), "squared", chunk_size=CHUNK)
    assert_close(norms.per_parameter, per_leaf)
    assert norms.names == model.parameter_names()
    assert_close(
        gm.output_grad_sq_norms(model, X, chunk_size=CHUNK).per_parameter,
        looped_output_grad_sq_norms(odd_layers, params, X),
    )
    # The fused primitive on a chunk of 2 padded to the compiled 3: sum, gradient, norms.
    model.loss_grad_sq_norms(X[:CHUNK], y[:CHUNK], gcref.get_loss("squared"))
    total, grad, sq = model.loss_grad_sum_and_sq_norms(X[:2], y[:2], gcref.get_loss("squared"))
    flat = [np.concatenate([np.ravel(g) for g in example]) for example in grads[:2]]
    looped_losses = 0.5 * np.sum((model.outputs(X[:2]) - y[:2]) ** 2)
    assert_close(total, looped_losses)
    assert_close(grad, flat[0] + flat[1])
    assert_close(sq, per_leaf[:2])


def test_penalty_gradient_by_the_identities_matches_a_loop(odd_problem):
    """``sum_n H_n grad l_n`` = half the gradient of ``sum_n ||grad l_n||^2``, the latter by
    ``jax.grad`` of a Python loop of per-example ``jax.grad``."""
    params, X, y = odd_problem
    X, y = X[:CHUNK], y[:CHUNK]

    def penalty(p):
        total = 0.0
        for x, t in zip(X, y):
            g = jax.grad(
                lambda q, x=x, t=t: 0.5 * jnp.sum((odd_layers(q, x[None])[0] - t) ** 2)
            )(p)
            total = total + sum(jnp.sum(a**2) for a in jax.tree_util.tree_leaves(g))
        return total

    with jax.enable_x64(True):
        expected = np.asarray(ravel_pytree(jax.grad(penalty)(params))[0]) / 2
    got = JaxModel(odd_layers, params, norm_method="identity").per_example_penalty_grad_sum(
        X, y, gcref.get_loss("squared")
    )
    assert_close(got, expected)


def tied(p, x):
    return jnp.tanh(x @ p["w"]) @ p["w"].T


def rectified_weight(p, x):
    return x @ jax.nn.relu(p["w"])


@pytest.mark.parametrize(
    "apply, reason",
    [(tied, "used more than once"), (rectified_weight, "used by custom_jvp_call")],
    ids=["tied-weights", "custom-jvp-on-a-weight"],
)
def test_uncovered_parameter_uses_fall_back_to_vmap(apply, reason):
    rng = np.random.default_rng(22)
    params = {"w": rng.normal(size=(4, 4))}
    X, y = rng.normal(size=(N, 4)), rng.normal(size=(N, 4))
    grads = looped_loss_grads(apply, params, X, y)
    expected = np.array([[np.sum(np.asarray(g) ** 2) for g in example] for example in grads])
    norms = gm.loss_grad_sq_norms(apply, (X, y), "squared", params=params, chunk_size=CHUNK)
    assert_close(norms.per_parameter, expected)
    with pytest.raises(ValueError, match=f"norm_method='identity' does not apply.*{reason}"):
        gm.loss_grad_sq_norms(
            JaxModel(apply, params, norm_method="identity"), (X, y), "squared", chunk_size=CHUNK
        )


def test_bad_norm_method_is_refused(small_mlp):
    apply, tree = small_mlp
    with pytest.raises(ValueError, match="norm_method must be one of"):
        JaxModel(apply, tree, norm_method="ghost")


def test_hvp_tangent_placed_once_is_replaced_when_the_vector_changes(small_mlp):
    apply, tree = small_mlp
    rng = np.random.default_rng(23)
    X, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    loss = gcref.get_loss("squared")
    model = JaxModel(apply, tree)
    v = rng.normal(size=model.parameter_vector().shape[0])
    first = model.loss_hvp_sum(X, y, loss, v)
    v *= -2.0  # in place: the cached tangent must not be reused
    assert_close(model.loss_hvp_sum(X, y, loss, v), -2.0 * first)
    assert_close(JaxModel(apply, tree).loss_hvp_sum(X, y, loss, v), -2.0 * first)


def test_hvp_tangent_is_placed_once_per_call_and_again_after_an_in_place_change(small_mlp, monkeypatch):
    """Inside one measure call the vector is recognised by identity (placed once for all
    its chunks); a vector changed in place between calls must be placed again."""
    apply, tree = small_mlp
    rng = np.random.default_rng(29)
    X, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 2))
    model = JaxModel(apply, tree)
    v = rng.normal(size=model.parameter_vector().shape[0])
    placed = []
    unflatten = JaxModel._unflatten
    monkeypatch.setattr(JaxModel, "_unflatten", lambda self, w: placed.append(1) or unflatten(self, w))
    first = gm.loss_hvp(model, (X, y), "squared", v, chunk_size=2)  # 4 chunks
    assert len(placed) == 1
    assert_close(first, gm.loss_hvp(model, (X, y), "squared", v, chunk_size=7))
    v *= -2.0  # in place, between calls
    assert_close(gm.loss_hvp(model, (X, y), "squared", v, chunk_size=2), -2.0 * first)
    assert len(placed) == 2
    assert model._session_tangent is None  # nothing held after the call


def _every_primitive(model, X):
    """Each primitive of a JaxModel on chunk ``X`` (2 outputs; targets and vectors made up)."""
    from gcref.losses import get_loss

    n, rng, loss = X.shape[0], np.random.default_rng(5), get_loss("squared")
    y = rng.normal(size=(n, 2))
    v = rng.normal(size=model.n_parameters())
    return {
        "outputs": lambda: model.outputs(X),
        "reverse": lambda: model.jacobian_sq_norms(X, "reverse"),
        "forward": lambda: model.jacobian_sq_norms(X, "forward"),
        "probes": lambda: model.probe_sq_norms(X, rng.normal(size=(n, 2, 2))),
        "output_grads": lambda: model.output_grad_sq_norms(X),
        "loss_grads": lambda: model.loss_grad_sq_norms(X, y, loss),
        "sum_and_norms": lambda: model.loss_grad_sum_and_sq_norms(X, y, loss),
        "grad_sum": lambda: model.loss_grad_sum(X, y, loss),
        "hvp": lambda: model.loss_hvp_sum(X, y, loss, v),
        "penalty": lambda: model.per_example_penalty_grad_sum(X, y, loss),
    }


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("as_jax", [False, True], ids=["numpy", "jax-array"])
def test_every_primitive_refuses_a_non_finite_chunk(small_mlp, bad, as_jax):
    """The scan runs inside each compiled primitive (issue 17). A chunk of 3 padded to the
    size 5 already compiled is accepted when finite and refused with one bad entry in its
    last real row."""
    import jax.numpy as jnp

    def chunk(X):
        if not as_jax:
            return X
        with gcref.get_backend("jax").scope(np.float64):
            return jnp.asarray(X)

    apply, tree = small_mlp
    model = JaxModel(apply, tree)
    X = np.random.default_rng(33).normal(size=(5, 3))
    for run in _every_primitive(model, X).values():
        run()  # compiles size 5
    X = X[:3].copy()
    for run in _every_primitive(model, chunk(X)).values():
        run()
    X[2, 1] = bad
    for run in _every_primitive(model, chunk(X)).values():
        with pytest.raises(ValueError, match="X contains NaN or infinite values"):
            run()


def test_check_batch_leaves_the_values_to_the_primitives(small_mlp):
    """check_batch checks dtypes and shapes; the values are the compiled scan's (one read
    of each chunk, not two), and the measure still refuses the bad input."""
    apply, tree = small_mlp
    model = JaxModel(apply, tree)
    bad = np.random.default_rng(34).normal(size=(9, 3))
    bad[7, 0] = np.nan
    assert model.check_batch(bad, "X") is bad
    with pytest.raises(ValueError, match="X contains NaN or infinite values"):
        gm.geometric_complexity(model, bad, chunk_size=4)  # the NaN in the second chunk


def test_a_batch_refilled_in_place_is_scanned_again(small_mlp):
    """A loader that refills one buffer yields batches in the same memory: each must be
    scanned (found by review: the second batch's NaN went through and GC was NaN)."""
    apply, tree = small_mlp
    buffer = np.random.default_rng(32).normal(size=(6, 3))

    def refilled():
        yield buffer
        buffer[1, 1] = np.nan
        yield buffer

    with pytest.raises(ValueError, match="data batch 1.*NaN|NaN"):
        gm.geometric_complexity(apply, refilled(), params=tree, chunk_size=4)


def test_begun_primitives_complete_to_the_values_of_the_primitives(small_mlp):
    """``begin`` dispatches without waiting; completing, in any order, gives what each
    primitive returns; a primitive without a begun form (outputs) is computed at once."""
    from gcref.losses import get_loss

    apply, tree = small_mlp
    model = JaxModel(apply, tree)
    rng = np.random.default_rng(35)
    X1, X2 = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    y, loss = rng.normal(size=(5, 2)), get_loss("squared")
    v = rng.normal(size=model.n_parameters())
    calls = {
        "jacobian_sq_norms": ("reverse",),
        "probe_sq_norms": (rng.normal(size=(5, 3, 2)),),
        "output_grad_sq_norms": (),
        "loss_grad_sq_norms": (y, loss),
        "loss_grad_sum_and_sq_norms": (y, loss),
        "loss_grad_sum": (y, loss),
        "loss_hvp_sum": (y, loss, v),
        "per_example_penalty_grad_sum": (y, loss),
        "outputs": (),
    }
    assert set(calls) - {"outputs"} == JaxModel._BEGUN
    for name, args in calls.items():
        first, second = model.begin(name, X1, *args), model.begin(name, X2, *args)
        got2, got1 = second(), first()
        for got, X in ((got1, X1), (got2, X2)):
            want = getattr(model, name)(X, *args)
            for g, w in zip(got if isinstance(got, tuple) else (got,),
                            want if isinstance(want, tuple) else (want,)):
                assert_close(np.asarray(g), np.asarray(w))


def test_an_overridden_primitive_is_what_the_measures_call(small_mlp, monkeypatch):
    """begin uses JaxModel's begun form only for JaxModel's own method: a subclass's, an
    instance's or the class's replacement is called (found by review: it was skipped)."""
    import gcref.backends.jax_model as jm

    apply, tree = small_mlp
    X = np.random.default_rng(36).normal(size=(6, 3))
    want = gm.geometric_complexity(JaxModel(apply, tree), X, chunk_size=4)

    class Scaled(JaxModel):
        def jacobian_sq_norms(self, X, mode):
            return 100.0 * super().jacobian_sq_norms(X, mode)

    assert_close(gm.geometric_complexity(Scaled(apply, tree), X, chunk_size=4), 100.0 * want)
    patched = JaxModel(apply, tree)
    own = patched.jacobian_sq_norms
    patched.jacobian_sq_norms = lambda X, mode: 2.0 * own(X, mode)
    assert_close(gm.geometric_complexity(patched, X, chunk_size=4), 2.0 * want)
    # JaxModel's own methods are not overridden: the measures use the begun forms.
    plain = JaxModel(apply, tree)
    assert not any(jm._overridden(plain, name) for name in JaxModel._BEGUN)
    # A patch on the class itself.
    original = JaxModel.jacobian_sq_norms
    monkeypatch.setattr(
        JaxModel, "jacobian_sq_norms", lambda self, X, mode: 3.0 * original(self, X, mode)
    )
    assert_close(gm.geometric_complexity(JaxModel(apply, tree), X, chunk_size=4), 3.0 * want)


@pytest.mark.parametrize("flag", ["jax_debug_nans", "jax_debug_infs"])
def test_jax_nan_debugging_still_gets_the_named_error(small_mlp, flag, monkeypatch):
    """With JAX's NaN debugging on, a NaN input would raise JAX's FloatingPointError inside
    the compiled call; check_batch scans the batch first and names it (only then)."""
    import jax

    from gcref._checks import all_finite

    apply, tree = small_mlp
    X = np.random.default_rng(37).normal(size=(5, 3))
    X[2, 1] = np.nan if flag == "jax_debug_nans" else np.inf
    before = getattr(jax.config, flag)
    import gcref.backends.jax_model as jm

    scans = []
    monkeypatch.setattr(jm, "all_finite", lambda a: scans.append(1) or all_finite(a))
    X[2, 1] = 0.5
    gm.geometric_complexity(apply, X, params=tree)
    assert not scans  # the flag off: no host scan
    X[2, 1] = np.nan if flag == "jax_debug_nans" else np.inf
    jax.config.update(flag, True)
    try:
        with pytest.raises(ValueError, match="data: X contains NaN or infinite values"):
            gm.geometric_complexity(apply, X, params=tree)
        X[2, 1] = 0.5
        assert np.isfinite(gm.geometric_complexity(apply, X, params=tree))
    finally:
        jax.config.update(flag, before)
