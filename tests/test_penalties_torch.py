"""gcref.penalties on torch modules (issue 12): values, gradients, probes, training.

Every penalty's gradient with respect to the parameters is checked against central
finite differences of the penalty itself (float64, :func:`gcref.testing.check_vjp`) on
named networks: an MLP, a CNN with BatchNorm in training mode (examples coupled by the
batch statistics) and in eval mode, and a network with a layer that has no norm rule.
Values are checked against the measures of :mod:`gcref.models` (eval mode) and against
obviously correct loops over examples with the batch's function (training mode); on
MLPs the IGR penalty gradients are checked against the analytic Hessian-vector
products of the NumPy reference.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest

import gcref

if "torch" not in gcref.available_backends() and not os.environ.get("CI"):
    pytest.skip("torch is not installed", allow_module_level=True)

import torch

import gcref.models as gm
from gcref import penalties
from gcref.nets.torch import mlp_module
from gcref.testing import check_vjp

RTOL, ATOL = gcref.tolerance(np.float64)
N = 5


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=atol)


def fill(module, seed, scale=0.5):
    """Every parameter (and BatchNorm's running statistics) from a NumPy generator."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.as_tensor(rng.normal(scale=scale, size=tuple(p.shape))))
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.as_tensor(rng.normal(scale=0.3, size=m.num_features)))
                m.running_var.copy_(torch.as_tensor(rng.uniform(0.5, 2.0, size=m.num_features)))
    return module


class Scale(torch.nn.Module):
    """``x * weight`` element-wise: a layer with no norm rule (the fallback runs)."""

    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d, dtype=torch.float64))

    def forward(self, x):
        return x * self.weight


def mlp():
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    return fill(net.double(), 1), (N, 3)


def cnn(training):
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1),
        torch.nn.BatchNorm2d(3),
        torch.nn.Tanh(),
        torch.nn.Conv2d(3, 4, 3, stride=2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 2 * 2, 3),
    )
    net = fill(net.double(), 2)
    return net.train(training), (N, 2, 6, 6)


def no_rule():
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 4), Scale(4), torch.nn.Tanh(), torch.nn.Linear(4, 2)
    )
    return fill(net.double(), 3), (N, 3)


NETWORKS = {
    "mlp": mlp,
    "cnn-batchnorm-training": lambda: cnn(True),
    "cnn-batchnorm-eval": lambda: cnn(False),
    "layer-without-rule": no_rule,
}


@pytest.fixture(params=list(NETWORKS), ids=lambda name: f"net={name}")
def network(request):
    """``(module, x, y)`` with softmax cross-entropy labels ``y`` (integer classes)."""
    net, shape = NETWORKS[request.param]()
    rng = np.random.default_rng(4)
    x = torch.as_tensor(rng.normal(size=shape))
    k = net(x).shape[1]
    y = torch.as_tensor(rng.integers(0, k, size=N))
    return net, x, y


LOSS = "softmax_cross_entropy"


def penalty_functions(x, y, probe_seed=5):
    """name -> ``module -> penalty``; the probe penalties draw from a fresh generator each call."""
    return {
        "gc": lambda m: penalties.geometric_complexity(m, x),
        "gc-estimate": lambda m: penalties.estimate_geometric_complexity(
            m, x, np.random.default_rng(probe_seed), n_probes=2, probe="rademacher"
        ),
        "de": lambda m: penalties.dirichlet_energy(m, x),
        "de-estimate": lambda m: penalties.estimate_dirichlet_energy(
            m, x, np.random.default_rng(probe_seed), n_probes=2, probe="sphere"
        ),
        "igr-full-batch": lambda m: penalties.igr_full_batch(m, x, y, LOSS),
        "igr-per-example": lambda m: penalties.igr_per_example(m, x, y, LOSS),
    }


def flat_parameters(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).numpy()


def set_flat(module, vector):
    with torch.no_grad():
        offset = 0
        for p in module.parameters():
            p.copy_(torch.as_tensor(vector[offset : offset + p.numel()]).reshape(p.shape))
            offset += p.numel()


def penalty_gradient(module, fn):
    value = fn(module)
    grads = torch.autograd.grad(value, list(module.parameters()), allow_unused=True)
    return float(value.detach()), torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1)
            for g, p in zip(grads, module.parameters())
        ]
    ).numpy()


# -- gradients against finite differences -------------------------------------------------


@pytest.mark.parametrize("name", list(penalty_functions(None, None)))
def test_penalty_gradient_equals_finite_differences(network, name):
    net, x, y = network
    fn = penalty_functions(x, y)[name]
    theta = flat_parameters(net)
    _, grad = penalty_gradient(net, fn)

    def value_at(vector):
        set_flat(net, vector)
        return np.array([float(fn(net).detach())])

    try:
        check_vjp(value_at, theta, lambda u: u[0] * grad, np.random.default_rng(6), n_probes=2)
    finally:
        set_flat(net, theta)


# -- values against the measures and against loops over examples --------------------------


def own_jacobians(net, x):
    """``d f_n / d x_n`` of the batch's function, ``(n, k, d)``, from the full batch Jacobian."""
    J = torch.autograd.functional.jacobian(lambda inputs: net(inputs).reshape(N, -1), x)
    J = J.reshape(N, J.shape[1], N, -1)
    return torch.stack([J[n, :, n] for n in range(N)])


def loop_references(net, x, y, rng_seed):
    """Every penalty by per-example loops over the batch's own graph (any mode)."""
    J = own_jacobians(net, x).numpy()
    k = J.shape[1]
    gc = float(np.mean(np.sum(J**2, axis=(1, 2))))
    rademacher = np.where(np.random.default_rng(rng_seed).random((N, 2, k)) < 0.5, -1.0, 1.0)
    gc_estimate = float(np.mean(np.sum(np.einsum("npk,nkd->npd", rademacher, J) ** 2, axis=2)))
    sphere = np.random.default_rng(rng_seed).standard_normal((N, 2, k))
    sphere /= np.linalg.norm(sphere, axis=2, keepdims=True)
    de_estimate = k / 2 * float(np.mean(np.sum(np.einsum("npk,nkd->npd", sphere, J) ** 2, axis=2)))
    params = list(net.parameters())
    losses = torch.nn.functional.cross_entropy(net(x), y, reduction="none")
    full = torch.autograd.grad(losses.mean(), params, retain_graph=True)
    per_example = [
        sum(
            float(g.square().sum())
            for g in torch.autograd.grad(losses[n], params, retain_graph=True)
        )
        for n in range(N)
    ]
    return {
        "gc": gc,
        "gc-estimate": gc_estimate,
        "de": gc / 2,
        "de-estimate": de_estimate,
        "igr-full-batch": sum(float(g.square().sum()) for g in full),
        "igr-per-example": float(np.mean(per_example)),
    }


def test_penalty_values_equal_per_example_loops(network):
    net, x, y = network
    expected = loop_references(net, x, y, 5)
    for name, fn in penalty_functions(x, y).items():
        assert_close(float(fn(net).detach()), expected[name], rtol=1e-9), name


def test_penalty_values_equal_the_measures_in_eval_mode(network):
    """Detached, each penalty is the measure of gcref.models (the same probe draws for one rng state)."""
    net, x, y = network
    net.eval()
    data = (x.numpy(), y.numpy())
    terms = gm.igr_terms(net, data, LOSS, batch_size=N)
    gc = gm.geometric_complexity(net, x.numpy())
    for probe in ("gaussian", "rademacher", "sphere"):
        measure = gm.estimate_geometric_complexity(
            net, x.numpy(), np.random.default_rng(8), n_probes=3, probe=probe, chunk_size=4
        )
        value = penalties.estimate_geometric_complexity(
            net, x, np.random.default_rng(8), n_probes=3, probe=probe
        )
        assert_close(float(value.detach()), measure.value)
    assert_close(float(penalties.geometric_complexity(net, x).detach()), gc)
    assert_close(float(penalties.dirichlet_energy(net, x).detach()), gc / 2)
    assert_close(float(penalties.igr_full_batch(net, x, y, LOSS).detach()), terms.full_batch)
    for method in ("auto", "gram", "gradient", "vmap"):
        value = penalties.igr_per_example(net, x, y, LOSS, norm_method=method)
        assert_close(float(value.detach()), terms.per_example)


INDEPENDENT = [name for name in NETWORKS if name != "cnn-batchnorm-training"]


@pytest.mark.parametrize("name", INDEPENDENT, ids=lambda name: f"net={name}")
def test_coupled_and_independent_agree_when_examples_are_independent(name):
    from gcref.backends.torch_penalties import uses_batch_statistics

    net, shape = NETWORKS[name]()
    assert not uses_batch_statistics(net)
    rng = np.random.default_rng(20)
    x = torch.as_tensor(rng.normal(size=shape))
    y = torch.as_tensor(rng.integers(0, 2, size=N))
    for fn, args in (
        (penalties.geometric_complexity, (net, x)),
        (penalties.igr_per_example, (net, x, y, LOSS)),
    ):
        assert_close(
            float(fn(*args, examples="coupled").detach()),
            float(fn(*args, examples="independent").detach()),
        )


def test_batchnorm_in_training_mode_is_detected_and_matters():
    """The batch statistics couple the examples: the independent formula is another number."""
    net, shape = cnn(True)
    x = torch.as_tensor(np.random.default_rng(9).normal(size=shape))
    coupled = float(penalties.geometric_complexity(net, x).detach())
    assert_close(
        coupled, float(penalties.geometric_complexity(net, x, examples="coupled").detach())
    )
    independent = float(penalties.geometric_complexity(net, x, examples="independent").detach())
    assert abs(independent - coupled) > 1e-3 * coupled
    # The per-example IGR penalty is exact either way (BatchNorm's rule declines training mode).
    y = torch.as_tensor(np.random.default_rng(25).integers(0, 3, size=N))
    want = loop_references(net, x, y, 5)["igr-per-example"]
    for examples in ("independent", "coupled"):
        value = penalties.igr_per_example(net, x, y, LOSS, examples=examples)
        assert_close(float(value.detach()), want)


class RuledScale(Scale):
    """:class:`Scale` with a norm rule of its own, registered by the test that uses it."""


def test_a_registered_rule_is_differentiated_like_the_built_in_ones():
    """A user's rule feeds the per-example penalty and its gradient (against the batched fallback)."""
    from gcref.backends import torch_layers

    calls = []

    def scale_rule(module, a, g, context):
        calls.append(module)
        return {"weight": (g * a).reshape(a.shape[0], -1).double().square().sum(dim=1)}

    torch_layers.register_norm_rule(RuledScale, scale_rule)
    try:
        net = torch.nn.Sequential(
            torch.nn.Linear(3, 4), RuledScale(4), torch.nn.Tanh(), torch.nn.Linear(4, 2)
        )
        net = fill(net.double(), 26)
        rng = np.random.default_rng(27)
        x = torch.as_tensor(rng.normal(size=(N, 3)))
        y = torch.as_tensor(rng.integers(0, 2, size=N))
        by_rule = penalty_gradient(net, lambda m: penalties.igr_per_example(m, x, y, LOSS))
        assert calls
        batched = penalty_gradient(
            net, lambda m: penalties.igr_per_example(m, x, y, LOSS, norm_method="vmap")
        )
        assert_close(by_rule[0], batched[0])
        assert_close(by_rule[1], batched[1])
    finally:
        torch_layers.NORM_RULES.pop(RuledScale)


# -- MLPs against the NumPy reference -------------------------------------------------------


@pytest.mark.parametrize("loss", ["squared", "softmax_cross_entropy"])
def test_igr_penalty_gradients_equal_the_numpy_reference(loss):
    """``grad ||grad L||^2 = 2 H grad L`` and ``grad mean ||grad l_n||^2``, analytic in NumPy."""
    mlp = gcref.MLP((3, 5, 4, 2), activation="tanh")
    rng = np.random.default_rng(10)
    params = mlp.init(rng)
    X = rng.normal(size=(6, 3))
    y = rng.normal(size=(6, 2)) if loss == "squared" else rng.integers(0, 2, size=6)
    net = mlp_module(mlp, params)
    x, yt = torch.as_tensor(X), torch.as_tensor(y)
    # The penalty's gradient is the h-linear part of the modified loss's gradient:
    # grad L~(h=4) - grad L~(h=0).
    references = {
        "full": (gcref.modified_loss_gd_grad, penalties.igr_full_batch),
        "per-example": (gcref.modified_loss_per_example_grad, penalties.igr_per_example),
    }
    for name, (reference, penalty) in references.items():
        want = gcref.params.flatten_params(
            reference(mlp, params, X, y, loss, 4.0)
        ) - gcref.params.flatten_params(reference(mlp, params, X, y, loss, 0.0))
        _, got = penalty_gradient(net, lambda m, penalty=penalty: penalty(m, x, yt, loss))
        assert_close(got, want, atol=ATOL * max(1.0, np.max(np.abs(want)))), name


def test_gc_penalty_equals_the_mlp_reference():
    mlp = gcref.MLP((4, 6, 3), activation="softplus")
    rng = np.random.default_rng(11)
    params = mlp.init(rng)
    X = rng.normal(size=(7, 4))
    net = mlp_module(mlp, params)
    assert_close(
        float(penalties.geometric_complexity(net, torch.as_tensor(X)).detach()),
        gcref.geometric_complexity(mlp, params, X),
    )


# -- probes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("probe", ["gaussian", "rademacher", "sphere"])
def test_probe_penalty_is_unbiased_within_its_standard_error(probe):
    """Over many draws the mean of the estimate and of its gradient is the exact value."""
    net, shape = mlp()
    x = torch.as_tensor(np.random.default_rng(12).normal(size=shape))
    exact_value, exact_grad = penalty_gradient(net, lambda m: penalties.geometric_complexity(m, x))
    rng = np.random.default_rng(13)
    direction = rng.normal(size=exact_grad.shape)
    draws = []
    for _ in range(300):
        value, grad = penalty_gradient(
            net, lambda m: penalties.estimate_geometric_complexity(m, x, rng, probe=probe)
        )
        draws.append((value, grad @ direction))
    draws = np.array(draws)
    mean, stderr = draws.mean(axis=0), draws.std(axis=0, ddof=1) / np.sqrt(len(draws))
    assert np.all(np.abs(mean - [exact_value, exact_grad @ direction]) < 4 * stderr), (mean, stderr)
    assert np.all(stderr > 0)


# -- training -------------------------------------------------------------------------------


def train(penalty, lam, steps=40, seed=14):
    """SGD on a small regression problem; the GC of the trained net on its training data."""
    rng = np.random.default_rng(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
    ).double()
    fill(net, seed, scale=1.0)
    x = torch.as_tensor(rng.uniform(-2, 2, size=(32, 2)))
    y = torch.sin(2 * x[:, :1]) * torch.cos(x[:, 1:])
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    probes = np.random.default_rng(seed + 1)
    for _ in range(steps):
        if penalty == "gc":
            value, f = penalties.geometric_complexity(net, x, return_output=True)
        elif penalty == "gc-estimate":
            value, f = penalties.estimate_geometric_complexity(
                net, x, probes, probe="sphere", return_output=True
            )
        else:
            value, f = 0.0, net(x)
        loss = 0.5 * (f - y).square().sum(dim=1).mean() + lam * value
        opt.zero_grad()
        loss.backward()
        opt.step()
    return gm.geometric_complexity(net, x.numpy())


@pytest.mark.parametrize("penalty", ["gc", "gc-estimate"])
def test_training_with_the_penalty_lowers_gc(penalty):
    plain = train(None, 0.0)
    assert train(penalty, 0.1) < 0.8 * plain


# -- the training-step contract -------------------------------------------------------------


def test_return_output_is_the_forward_pass_of_the_step():
    """One forward pass: the returned output is module(x), BatchNorm counts one batch."""
    net, shape = cnn(True)
    x = torch.as_tensor(np.random.default_rng(15).normal(size=shape))
    y = torch.as_tensor(np.random.default_rng(16).integers(0, 3, size=N))
    bn = net[1]
    for fn in (
        lambda: penalties.geometric_complexity(net, x, return_output=True),
        lambda: penalties.estimate_dirichlet_energy(
            net, x, np.random.default_rng(0), return_output=True
        ),
        lambda: penalties.igr_full_batch(net, x, y, LOSS, return_output=True),
        lambda: penalties.igr_per_example(net, x, y, LOSS, return_output=True),
    ):
        before = int(bn.num_batches_tracked)
        value, f = fn()
        assert int(bn.num_batches_tracked) == before + 1
        assert value.shape == () and value.requires_grad
        assert_close(f.detach().numpy(), net(x).detach().numpy())
        (value + f.sum()).backward()
        assert all(p.grad is not None for p in net.parameters())
        net.zero_grad()


def test_float32_module_gives_a_float32_penalty_close_to_float64():
    net, shape = mlp()
    x = torch.as_tensor(np.random.default_rng(17).normal(size=shape))
    y = torch.as_tensor(np.random.default_rng(18).integers(0, 2, size=N))
    net32 = copy.deepcopy(net).float()
    for name, fn in penalty_functions(x, y).items():
        want = float(fn(net).detach())
        value = penalty_functions(x.float(), y)[name](net32)
        assert value.dtype == torch.float32, name
        assert_close(float(value.detach()), want, *gcref.tolerance(np.float32)), name


# -- torch.compile --------------------------------------------------------------------------


def test_a_compiled_step_runs_the_penalties_eagerly_with_the_eager_gradients():
    """Inside a compiled function the penalties run as eager islands: same values and gradients."""
    net, shape = mlp()
    x = torch.as_tensor(np.random.default_rng(21).normal(size=shape))
    y = torch.as_tensor(np.random.default_rng(22).integers(0, 2, size=N))

    def objective(x, y):
        gc, f = penalties.geometric_complexity(net, x, return_output=True)
        return (
            torch.nn.functional.cross_entropy(f, y)
            + gc
            + penalties.estimate_geometric_complexity(net, x, np.random.default_rng(23), n_probes=2)
            + penalties.igr_full_batch(net, x, y, LOSS)
            + penalties.igr_per_example(net, x, y, LOSS)
        )

    grads = []
    for fn in (objective, torch.compile(objective)):
        net.zero_grad()
        value = fn(x, y)
        value.backward()
        grads.append(
            np.concatenate(
                [[float(value.detach())]] + [p.grad.numpy().ravel() for p in net.parameters()]
            )
        )
    assert_close(grads[1], grads[0])


def test_a_compiled_module_is_refused_with_the_reason():
    net, shape = mlp()
    x = torch.as_tensor(np.random.default_rng(24).normal(size=shape))
    with pytest.raises(RuntimeError, match="double backward"):
        penalties.geometric_complexity(torch.compile(net), x)


# -- bad input ------------------------------------------------------------------------------


def test_bad_input_raises_a_clear_error():
    net, shape = mlp()
    x = torch.as_tensor(np.random.default_rng(19).normal(size=shape))
    y = torch.zeros(N, dtype=torch.long)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        penalties.geometric_complexity(net, x.numpy())
    with pytest.raises(TypeError, match="floating dtype"):
        penalties.geometric_complexity(net, x.long())
    with pytest.raises(TypeError, match="params must be left out"):
        penalties.geometric_complexity(net, x, params={})
    with pytest.raises(ValueError, match="unknown examples"):
        penalties.geometric_complexity(net, x, examples="some")
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        penalties.estimate_geometric_complexity(net, x, 0)
    with pytest.raises(ValueError, match="unknown probe"):
        penalties.estimate_geometric_complexity(net, x, np.random.default_rng(0), probe="uniform")
    with pytest.raises(ValueError, match="n_probes must be >= 1"):
        penalties.estimate_geometric_complexity(net, x, np.random.default_rng(0), n_probes=0)
    with pytest.raises(ValueError, match=r"y must have shape \(5, 2\)"):
        penalties.igr_full_batch(net, x, torch.zeros(N, 3), "squared")
    with pytest.raises(ValueError, match="5 rows"):
        penalties.igr_per_example(net, x, y[:3], LOSS)
    with pytest.raises(TypeError, match="integer dtype"):
        penalties.igr_per_example(net, x, y.double(), LOSS)
    with pytest.raises(ValueError, match="unknown norm_method"):
        penalties.igr_per_example(net, x, y, LOSS, norm_method="fast")
    with pytest.raises(ValueError, match="unknown loss"):
        penalties.igr_full_batch(net, x, y, "hinge")
    with pytest.raises(TypeError, match="gcref.MLP"):
        penalties.geometric_complexity(gcref.MLP((3, 2)), x)
    with pytest.raises(TypeError, match="torch.nn.Module or a JAX"):
        penalties.geometric_complexity(3, x)
