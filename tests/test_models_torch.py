"""gcref.models on torch.nn.Module models (issue 7), through the TorchModel adapter.

MLPs are checked against the NumPy reference of gcref (the same network, built by
``mlp_module``); a small CNN and a small ResNet-18 against obviously correct per-example
loops: one ``torch.autograd`` call per example (and per output), in eval mode.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from gcref.testing.strategies import assume_unsaturated, problems

import gcref
import gcref.models as gm
from gcref.backends.torch_model import TorchModel
from gcref.params import flatten_params
from gcref.nets.torch import SmallCNN, mlp_module, resnet18

RTOL = 1e-9


def compatible_losses(k):
    """The losses defined for k outputs."""
    return ["squared", "logistic" if k == 1 else "softmax_cross_entropy"]


def assert_close(actual, expected, rtol=RTOL, atol=1e-12):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# -- MLPs against the NumPy reference ------------------------------------------------------


@given(problem=problems(), loss_index=st.integers(0, 1), h=st.sampled_from((0.01, 0.3)),
       batch_size=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_mlp_measures_equal_the_numpy_reference(problem, loss_index, h, batch_size, seed):
    mlp, params, X = problem.mlp, problem.params, problem.X
    assume_unsaturated(mlp, params, X)
    module = mlp_module(mlp, params)
    losses = compatible_losses(mlp.output_dim)
    loss = losses[loss_index % len(losses)]
    y = problem.targets(loss)

    gc = gcref.geometric_complexity(mlp, params, X)
    for mode in ("reverse", "forward", "auto"):
        assert_close(gm.geometric_complexity(module, X, mode=mode), gc)
    assert_close(gm.dirichlet_energy(module, X), gc / 2)
    assert_close(gm.geometric_complexity(module, X, per_example=True).per_example,
                 gcref.geometric_complexity(mlp, params, X, per_example=True).per_example)

    estimate = gm.estimate_geometric_complexity(module, X, np.random.default_rng(seed),
                                                n_probes=3, chunk_size=2)
    reference = gcref.estimate_geometric_complexity(mlp, params, X, np.random.default_rng(seed),
                                                    n_probes=3)
    assert_close([estimate.value, estimate.stderr], [reference.value, reference.stderr])

    assert_close(gm.output_grad_sq_norms(module, X, chunk_size=3),
                 gcref.param_grad_sq_norms(mlp, params, X).total)
    assert_close(gm.loss_grad_sq_norms(module, (X, y), loss, chunk_size=3),
                 gcref.loss_grad_sq_norms(mlp, params, X, y, loss).total)

    terms = gm.igr_terms(module, (X, y), loss, batch_size=batch_size, chunk_size=2)
    n = X.shape[0]
    blocks = [np.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    assert terms.n_examples == n and terms.n_batches == len(blocks)
    assert_close(terms.loss, gcref.mean_loss(mlp, params, X, y, loss))
    assert_close(terms.modified_loss_gd(h), gcref.modified_loss_gd(mlp, params, X, y, loss, h))
    assert_close(terms.modified_loss_sgd(h),
                 gcref.modified_loss_sgd(mlp, params, X, y, loss, h, blocks))
    assert_close(terms.modified_loss_per_example(h),
                 gcref.modified_loss_per_example(mlp, params, X, y, loss, h))

    assert_close(gm.parameter_vector(module), flatten_params(params), rtol=0, atol=0)
    direction = problem.direction()
    hvp = gm.loss_hvp(module, (X, y), loss, flatten_params(direction), chunk_size=2)
    expected = flatten_params(gcref.loss_hvp(mlp, params, X, y, loss, direction))
    assert_close(hvp, expected, atol=1e-10 * max(1.0, np.abs(expected).max()))


# -- a small CNN and a small ResNet against per-example loops ------------------------------


def small_cnn():
    torch.manual_seed(0)
    return SmallCNN(in_channels=2, num_classes=3, width=3).double()


def small_resnet():
    torch.manual_seed(1)
    model = resnet18(num_classes=4, width=4, in_channels=3).double()
    # Running statistics away from (0, 1), so that using them (eval) or not shows.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


NETWORKS = {
    "small_cnn": (small_cnn, (2, 7, 7)),
    "resnet18_width4": (small_resnet, (3, 8, 8)),
}


@pytest.fixture(params=sorted(NETWORKS), ids=lambda name: f"net={name}")
def network(request):
    """A float64 network in train mode, its input shape, four inputs and class labels."""
    build, shape = NETWORKS[request.param]
    model = build().train()
    rng = np.random.default_rng(7)
    X = rng.normal(size=(4, *shape))
    k = model(torch.as_tensor(X)).shape[1]
    return model, X, rng.integers(0, k, size=4)


def loop_references(model, X, labels):
    """Per-example J norms, grad_theta f norms, grad_theta l norms, losses and the
    gradient of the summed loss, one example (and one output) at a time, in eval mode."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    jac, out_norms, loss_norms, losses, grad_sum = [], [], [], [], 0
    for x, label in zip(torch.as_tensor(X), labels):
        J = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x)
        jac.append(float(J.square().sum()))
        f = model(x[None])[0]
        out_norms.append(sum(
            float(sum(g.square().sum()
                      for g in torch.autograd.grad(f[o], params, retain_graph=True)))
            for o in range(f.shape[0])
        ))
        loss = torch.logsumexp(f, 0) - f[int(label)]
        grads = torch.autograd.grad(loss, params)
        loss_norms.append(float(sum(g.square().sum() for g in grads)))
        losses.append(float(loss.detach()))
        grad_sum = grad_sum + torch.cat([g.reshape(-1) for g in grads])
    return dict(jac=np.array(jac), out=np.array(out_norms), loss=np.array(loss_norms),
                losses=np.array(losses), grad_sum=grad_sum.numpy())


def finite_difference_hvp(model, X, labels, vector, eps=1e-5):
    """``(grad L(theta + eps v) - grad L(theta - eps v)) / (2 eps)`` of the mean loss."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    theta = torch.cat([p.detach().reshape(-1) for p in params])

    def grad_at(vec):
        torch.nn.utils.vector_to_parameters(vec, params)
        f = model(torch.as_tensor(X))
        loss = (torch.logsumexp(f, 1) - f[np.arange(len(labels)), labels]).mean()
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    v = torch.as_tensor(vector)
    try:
        return ((grad_at(theta + eps * v) - grad_at(theta - eps * v)) / (2 * eps)).numpy()
    finally:
        torch.nn.utils.vector_to_parameters(theta, params)


def training_flags(model):
    return [m.training for m in model.modules()]


@pytest.fixture
def fallback_calls(monkeypatch):
    """A list that records every call of TorchModel's vmap fallback."""
    calls = []
    for name in ("_vmap_output_sq_norms", "_vmap_loss_sq_norms"):
        original = getattr(TorchModel, name)

        def recording(self, *args, original=original, name=name):
            calls.append(name)
            return original(self, *args)

        monkeypatch.setattr(TorchModel, name, recording)
    return calls


@pytest.mark.parametrize("norm_method", ["auto", "gram", "gradient", "vmap"])
def test_network_measures_equal_per_example_loops(network, norm_method, fallback_calls):
    model, X, labels = network
    model.layer1.eval() if hasattr(model, "layer1") else model.features[0].eval()
    flags = training_flags(model)
    adapter = TorchModel(model, norm_method=norm_method)
    data = (X, labels)

    gc = gm.geometric_complexity(adapter, X, mode="reverse", per_example=True)
    gc_forward = gm.geometric_complexity(adapter, X[:1], mode="forward", per_example=True)
    out_norms = gm.output_grad_sq_norms(adapter, X, chunk_size=3)
    loss_norms = gm.loss_grad_sq_norms(adapter, data, "softmax_cross_entropy", chunk_size=3)
    terms = gm.igr_terms(adapter, data, "softmax_cross_entropy", batch_size=3)
    rng = np.random.default_rng(3)
    vector = rng.normal(size=gm.parameter_vector(adapter).shape)
    hvp = gm.loss_hvp(adapter, data, "softmax_cross_entropy", vector, chunk_size=3)
    assert training_flags(model) == flags
    assert bool(fallback_calls) == (norm_method == "vmap")

    ref = loop_references(model, X, labels)
    assert_close(gc.per_example, ref["jac"])
    assert_close(gc_forward.per_example, ref["jac"][:1])
    assert_close(out_norms, ref["out"])
    assert_close(loss_norms, ref["loss"])
    n = len(labels)
    assert_close(terms.loss, ref["losses"].mean())
    assert_close(terms.per_example, ref["loss"].mean())
    assert_close(terms.full_batch, np.sum((ref["grad_sum"] / n) ** 2))
    expected_hvp = finite_difference_hvp(model, X, labels, vector)
    np.testing.assert_allclose(hvp, expected_hvp, rtol=1e-5, atol=1e-6 * np.abs(expected_hvp).max())


def test_probe_estimate_is_the_mean_of_vjp_norms(network):
    model, X, _ = network
    k = TorchModel(model).outputs(X[:1]).shape[1]
    probes = np.random.default_rng(5).normal(size=(X.shape[0], 2, k))
    values = TorchModel(model).probe_sq_norms(X, probes)
    model.eval()
    for n, x in enumerate(torch.as_tensor(X)):
        J = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x).reshape(k, -1)
        expected = np.square(probes[n] @ J.numpy()).sum(axis=1)
        assert_close(values[n], expected)


def test_batchnorm_uses_running_statistics_whatever_the_mode():
    model = small_resnet()
    X = np.random.default_rng(0).normal(size=(3, 3, 8, 8))
    train_mode = gm.geometric_complexity(model.train(), X, per_example=True).per_example
    assert model.training and all(m.training for m in model.modules())
    eval_mode = gm.geometric_complexity(model.eval(), X, per_example=True).per_example
    assert not any(m.training for m in model.modules())
    singles = [gm.geometric_complexity(model.train(), X[n : n + 1]) for n in range(3)]
    assert_close(train_mode, eval_mode)
    assert_close(train_mode, singles)


class ModeRecorder(torch.nn.Module):
    """Linear layer that notes, at each forward pass, whether it was in training mode."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.linear = torch.nn.Linear(d_in, d_out).double()
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return self.linear(x)


class OwnTrain(torch.nn.Sequential):
    """A module whose train() is its own: it counts its calls and keeps layer 0 in eval."""

    calls = 0

    def train(self, mode=True):
        type(self).calls += 1
        super().train(mode)
        self[0].eval()
        return self


@pytest.mark.parametrize("kind", ["plain", "own train()"])
def test_measures_run_in_eval_mode_and_restore_every_flag(kind):
    cls = torch.nn.Sequential if kind == "plain" else OwnTrain
    model = cls(ModeRecorder(3, 5), torch.nn.Tanh(), ModeRecorder(5, 2)).train()
    model[2].eval()  # a mixed state: one layer already in eval mode
    before = [m.training for m in model.modules()]
    OwnTrain.calls = 0
    X = np.random.default_rng(0).normal(size=(4, 3))
    gm.geometric_complexity(model, X)
    gm.loss_grad_sq_norms(model, (X, np.array([0, 1, 0, 1])), "softmax_cross_entropy")
    assert [m.training for m in model.modules()] == before
    assert model[0].seen and model[2].seen
    assert not any(model[0].seen + model[2].seen)
    if kind == "own train()":
        assert OwnTrain.calls == 2  # once per measure call: its eval() went through train()


def test_weight_gradients_are_never_accumulated(network):
    model, X, labels = network
    gm.geometric_complexity(model, X)
    gm.output_grad_sq_norms(model, X)
    gm.loss_grad_sq_norms(model, (X, labels), "softmax_cross_entropy")
    assert all(p.grad is None for p in model.parameters())


# -- forms of the norm identities ----------------------------------------------------------


class SequenceModel(torch.nn.Module):
    """A Conv1d and a Linear applied to every position (a 3-D input): the extra-dimension forms."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(2, 3, 3, stride=2, padding=1, dilation=1)
        self.bn = torch.nn.BatchNorm1d(3)
        self.position = torch.nn.Linear(3, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.bn(self.conv(x)))
        h = torch.tanh(self.position(h.transpose(1, 2)))
        return self.head(h.mean(dim=1))


class TiedModel(torch.nn.Module):
    """One linear layer used twice: the norm identities do not apply, the fallback must."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.linear(torch.tanh(self.linear(x)))


class InPlaceModel(torch.nn.Module):
    """A BatchNorm whose output an in-place ReLU overwrites, as in torchvision's ResNets
    (after a convolution with ``padding="valid"``)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3, padding="valid", bias=False)
        self.bn = torch.nn.BatchNorm2d(3)
        self.relu = torch.nn.ReLU(inplace=True)
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


@pytest.mark.parametrize("build, shape, identities", [
    (SequenceModel, (2, 9), True),
    (TiedModel, (3,), False),
    (InPlaceModel, (2, 5, 5), True),
], ids=["conv1d_and_3d_linear", "tied_weights", "inplace_relu"])
def test_every_norm_method_equals_the_loop(build, shape, identities, fallback_calls):
    torch.manual_seed(2)
    model = build().double()
    X = np.random.default_rng(4).normal(size=(3, *shape))
    labels = np.array([0, 1, 1])
    ref = loop_references(model, X, labels)
    for method in ("auto", "gram", "gradient", "vmap"):
        fallback_calls.clear()
        adapter = TorchModel(model, norm_method=method)
        assert_close(gm.output_grad_sq_norms(adapter, X), ref["out"])
        assert_close(gm.loss_grad_sq_norms(adapter, (X, labels), "softmax_cross_entropy"),
                     ref["loss"])
        assert len(fallback_calls) == (0 if identities and method != "vmap" else 2)


def _compile_problem():
    torch.manual_seed(8)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    rng = np.random.default_rng(8)
    X, y = rng.normal(size=(9, 5)).astype(np.float32), rng.integers(0, 3, size=9)
    v = rng.normal(size=gm.parameter_vector(net).shape[0])
    measures = {
        "GC": lambda m: gm.geometric_complexity(m, X, chunk_size=4, per_example=True).per_example,
        "1-probe": lambda m: gm.estimate_geometric_complexity(
            m, X, np.random.default_rng(1), chunk_size=4).value,
        "output norms": lambda m: np.asarray(gm.output_grad_sq_norms(m, X, chunk_size=4)),
        "loss norms": lambda m: np.asarray(
            gm.loss_grad_sq_norms(m, (X, y), "softmax_cross_entropy", chunk_size=4)),
        "HVP": lambda m: gm.loss_hvp(m, (X, y), "softmax_cross_entropy", v, chunk_size=4),
        "IGR": lambda m: gm.igr_terms(m, (X, y), "softmax_cross_entropy", batch_size=4).per_example,
    }
    return net, measures


def test_a_compiled_module_is_measured_as_the_module_it_compiles():
    """torch.compile'd: before, exact GC and the HVP raised inside torch (a compiled
    backward refuses second passes) and the norm identities gave wrong norms (their
    hooks are not honoured in the compiled graph). The module compiled is measured."""
    net, measures = _compile_problem()
    compiled = torch.compile(net, backend="aot_eager")  # AOTAutograd, no C++ compiler
    assert TorchModel(compiled).module is net
    assert gm.wrap(compiled).parameter_names() == TorchModel(net).parameter_names()
    for name, measure in measures.items():
        np.testing.assert_array_equal(measure(compiled), measure(net), err_msg=name)


def test_a_compiled_submodule_sends_the_norms_to_the_fallback():
    from gcref.backends.torch_layers import rule_layers

    net, measures = _compile_problem()
    model = torch.nn.Sequential(torch.compile(net[0], backend="aot_eager"), net[1], net[2])
    assert rule_layers(model, list(model.named_parameters())) is None
    assert rule_layers(net, list(net.named_parameters())) is not None
    for name, measure in measures.items():
        np.testing.assert_allclose(measure(model), measure(net), rtol=1e-5, atol=1e-7,
                                   err_msg=name)


def test_frozen_parameters_are_not_theta():
    torch.manual_seed(3)
    model = SmallCNN(in_channels=1, num_classes=2, width=2).double()
    model.features[0].weight.requires_grad_(False)
    model.linear.bias.requires_grad_(False)
    X = np.random.default_rng(1).normal(size=(3, 1, 6, 6))
    ref = loop_references(model, X, np.array([0, 1, 0]))
    p = sum(q.numel() for q in model.parameters() if q.requires_grad)
    assert gm.parameter_vector(model).shape == (p,)
    for method in ("auto", "gram", "gradient", "vmap"):
        assert_close(gm.output_grad_sq_norms(TorchModel(model, norm_method=method), X), ref["out"])


def test_one_walk_of_the_module_is_what_torchs_generators_give():
    """The session's single walk (the cost it saves is fixed work per call) must list the
    same submodules, parameters (names, order, shared ones once) and buffers as torch."""
    from torch.nn.utils import parametrize

    from gcref.backends.torch_model import _ModuleTree

    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3)
            self.b = self.a  # one module under two names
            self.norm = torch.nn.BatchNorm1d(3)
            self.register_buffer("unset", None)
            self.register_parameter("absent", None)

    class Symmetric(torch.nn.Module):
        def forward(self, W):
            return W.triu() + W.triu(1).transpose(-1, -2)

    parametrized = torch.nn.Linear(3, 3)
    parametrize.register_parametrization(parametrized, "weight", Symmetric())
    for module in (Shared(), resnet18(num_classes=10), parametrized, torch.nn.GRU(3, 4, 2),
                   torch.nn.Sequential(parametrized, torch.nn.ReLU(), parametrized)):
        tree = _ModuleTree(module)
        assert [(n, id(p)) for n, p in tree.parameters] == [
            (n, id(p)) for n, p in module.named_parameters()]
        assert [id(b) for b in tree.buffers] == [id(b) for b in module.buffers()]
        assert [id(m) for m in tree.modules] == [id(m) for m in module.modules()]


def test_hvp_with_unused_and_frozen_parameters_equals_the_full_hessian():
    """The adapter keeps each chunk's H v as one tensor per parameter and joins the sum
    once; an unused parameter (no gradient at all) must come out as zeros in its place,
    a frozen one must not be in theta, and every number of chunks (1 to 5: the pairwise
    sum's levels) must give the Hessian built in full by ``torch.func.hessian``."""
    from torch.func import functional_call, hessian

    class Partly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first = torch.nn.Linear(3, 4)
            self.unused = torch.nn.Parameter(torch.ones(2, 2))
            self.second = torch.nn.Linear(4, 3)
            self.frozen = torch.nn.Parameter(torch.full((3,), 0.5), requires_grad=False)

        def forward(self, x):
            return self.second(torch.tanh(self.first(x))) + self.frozen

    torch.manual_seed(5)
    model = Partly().double()
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(5, 3)), rng.integers(0, 3, size=5)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for _, p in model.named_parameters() if p.requires_grad]
    theta = torch.as_tensor(gm.parameter_vector(model))
    assert theta.shape == (4 + 12 + 4 + 12 + 3,)  # unused, first, second; not frozen

    def mean_loss(flat):
        pieces = torch.split(flat, [int(np.prod(s)) for s in shapes])
        tree = {n: t.reshape(s) for n, t, s in zip(names, pieces, shapes)}
        logits = functional_call(model, tree, (torch.as_tensor(X),))
        return torch.nn.functional.cross_entropy(logits, torch.as_tensor(y))

    H = hessian(mean_loss)(theta).numpy()
    v = rng.normal(size=theta.shape[0])
    assert names[0] == "unused"  # the module's own parameters come first in torch's order
    unused = slice(0, 4)
    assert np.all(H[unused] == 0.0) and np.all(H[:, unused] == 0.0)
    for chunk_size in (5, 3, 2, 1):  # 1, 2, 3 and 5 chunks
        hv = gm.loss_hvp(model, (X, y), "softmax_cross_entropy", v, chunk_size=chunk_size)
        assert hv.dtype == np.float64 and hv.flags.writeable
        assert np.all(hv[unused] == 0.0)
        assert_close(hv, H @ v, atol=1e-13)


# -- data streaming ------------------------------------------------------------------------

def test_hvp_takes_a_tensor_vector_as_it_is():
    """A torch vector gives the numbers of the same vector passed as NumPy float64, to the
    bit (both are cut into float32 pieces by one rounding), and one in the module's dtype
    reaches the pieces without a copy."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(7, 4)).astype(np.float32), rng.integers(0, 3, size=7)
    p = gm.parameter_vector(net).shape[0]
    v = rng.normal(size=p)
    host = gm.loss_hvp(net, (X, y), "softmax_cross_entropy", v, chunk_size=3)
    for tensor in (torch.from_numpy(v).float(), torch.from_numpy(v),
                   torch.from_numpy(v).float().requires_grad_(True)):
        hv = gm.loss_hvp(net, (X, y), "softmax_cross_entropy", tensor, chunk_size=3)
        np.testing.assert_array_equal(hv, host)
    adapter = TorchModel(net)
    tensor = torch.from_numpy(v).float()
    assert adapter.as_native_vector(tensor, "vector").data_ptr() == tensor.data_ptr()
    assert adapter.as_native_vector(v, "vector") is None  # NumPy: the host path


@pytest.mark.parametrize("make, message", [
    (lambda p: torch.ones(p + 1), r"vector must have shape \(\d+,\)"),
    (lambda p: torch.ones(p, 1), r"vector must have shape \(\d+,\)"),
    (lambda p: torch.ones(p, dtype=torch.int64), "vector must hold finite floating-point"),
    (lambda p: torch.ones(p).index_fill_(0, torch.tensor([2]), float("nan")),
     "vector must hold finite"),
    (lambda p: torch.ones(p).index_fill_(0, torch.tensor([0]), float("inf")),
     "vector must hold finite"),
])
def test_a_bad_tensor_vector_is_refused(make, message):
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(5, 4)).astype(np.float32), rng.integers(0, 3, size=5)
    p = gm.parameter_vector(net).shape[0]
    with pytest.raises(ValueError, match=message):
        gm.loss_hvp(net, (X, y), "softmax_cross_entropy", make(p))



def test_every_data_form_and_chunk_size_gives_the_same_numbers():
    model = small_cnn()
    rng = np.random.default_rng(11)
    X, y = rng.normal(size=(7, 2, 7, 7)), rng.integers(0, 3, size=7)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xt, yt), batch_size=3)
    forms = {
        "array": (X, (X, y)),
        "tensor": (Xt, (Xt, yt)),
        "list": ([X[:3], X[3:6], X[6:]], [(X[:3], y[:3]), (X[3:6], y[3:6]), (X[6:], y[6:])]),
        "loader": (loader, loader),
    }
    expected = None
    for chunk_size in (1, 2, 5):
        for name, (unlabelled, labelled) in forms.items():
            loss, c = "softmax_cross_entropy", chunk_size
            results = np.concatenate([
                gm.geometric_complexity(model, unlabelled, chunk_size=c,
                                        per_example=True).per_example,
                gm.output_grad_sq_norms(model, unlabelled, chunk_size=c),
                gm.loss_grad_sq_norms(model, labelled, loss, chunk_size=c),
                gm.loss_hvp(model, labelled, loss, np.ones(gm.parameter_vector(model).shape),
                            chunk_size=c),
                [gm.estimate_geometric_complexity(model, unlabelled, np.random.default_rng(0),
                                                  n_probes=2, chunk_size=c).value],
            ])
            if expected is None:
                expected = results
            np.testing.assert_allclose(results, expected, rtol=1e-12,
                                       err_msg=f"data as {name}, chunk_size={chunk_size}")
    batches = gm.igr_terms(model, loader, "softmax_cross_entropy", chunk_size=2)
    blocks = gm.igr_terms(model, (X, y), "softmax_cross_entropy", batch_size=3, chunk_size=2)
    assert batches == blocks


# -- dtypes --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-4), (torch.bfloat16, 0.1)],
                         ids=["float32", "bfloat16"])
def test_lower_precision_modules_are_close_to_float64(dtype, rtol):
    model = small_cnn()
    X = np.random.default_rng(2).normal(size=(3, 2, 7, 7))
    data = (X, np.array([0, 1, 2]))
    reference = [gm.geometric_complexity(model, X), gm.output_grad_sq_norms(model, X),
                 gm.loss_grad_sq_norms(model, data, "softmax_cross_entropy")]
    low = model.to(dtype)
    values = [gm.geometric_complexity(low, X), gm.output_grad_sq_norms(low, X),
              gm.loss_grad_sq_norms(low, data, "softmax_cross_entropy")]
    for value, ref in zip(values, reference):
        assert np.asarray(value).dtype == np.float64
        np.testing.assert_allclose(value, ref, rtol=rtol)


# -- errors --------------------------------------------------------------------------------


def test_bad_input_raises_a_clear_error():
    model = small_cnn()
    X = np.random.default_rng(0).normal(size=(2, 2, 7, 7))
    with pytest.raises(TypeError, match="params must be left out"):
        gm.geometric_complexity(model, X, params={"w": 1})
    with pytest.raises(ValueError, match="X contains NaN"):
        gm.geometric_complexity(model, np.where(X > 1, np.inf, X))
    with pytest.raises(TypeError, match="X must have a floating dtype"):
        gm.geometric_complexity(model, np.ones((2, 2, 7, 7), dtype=np.int64))
    with pytest.raises(TypeError, match="X must have a floating dtype"):
        gm.geometric_complexity(model, torch.ones((2, 2, 7, 7), dtype=torch.int32))
    with pytest.raises(ValueError, match=r"X with examples of shape \(3, 7, 7\)"):
        gm.geometric_complexity(model, np.ones((2, 3, 7, 7)))
    with pytest.raises(ValueError, match=r"X with examples of shape \(5,\)"):
        gm.output_grad_sq_norms(torch.nn.Linear(4, 2).double(), np.ones((2, 5)))
    with pytest.raises(TypeError, match="must carry labels"):
        gm.loss_grad_sq_norms(model, X, "softmax_cross_entropy")
    frozen = torch.nn.Linear(3, 2).double().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter that requires grad"):
        gm.output_grad_sq_norms(frozen, np.ones((2, 3)))
    assert gm.geometric_complexity(frozen, np.ones((2, 3))) > 0
    with pytest.raises(ValueError, match="unknown norm_method"):
        TorchModel(model, norm_method="fast")
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        TorchModel(lambda x: x)


def test_mlp_module_refuses_an_activation_it_cannot_build():
    cube = gcref.Activation("cube", lambda x, xp: x * x * x, d1=lambda x: 3 * x**2,
                            d2=lambda x: 6 * x)
    mlp = gcref.MLP((2, 3, 1), activation=cube)
    with pytest.raises(ValueError, match="activation 'cube'"):
        mlp_module(mlp, mlp.init(np.random.default_rng(0)))
