"""Hard cases for the measure layer: models that vmap cannot run, batch statistics, bad shapes.

Each case once crashed with a trace from deep inside a framework (issue 16): recurrent
layers under ``torch.func.vmap``, a BatchNorm without running statistics, a JAX model
called on inputs of the wrong width; and one gave a silently wrong answer (a JAX
``apply`` normalising over the batch made GC depend on ``chunk_size``). Now each gets a
correct result or a clear error.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import require_backend
from gcref import models
from gcref.tolerances import tolerance


@pytest.fixture
def torch():
    require_backend("torch")
    import torch

    return torch


@pytest.fixture
def jnp():
    require_backend("jax")
    import jax.numpy as jnp

    return jnp


def recurrent_net(torch, kind):
    class Recurrent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(torch.nn, kind)(3, 4, batch_first=True)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    torch.manual_seed(0)
    return Recurrent().double()


def loop_sq_norms(torch, net, X, scalar):
    """Per-example ``||grad_theta scalar(f(x_n), n)||^2``, one backward pass per example."""
    params = [p for p in net.parameters() if p.requires_grad]
    out = []
    for n in range(X.shape[0]):
        grads = torch.autograd.grad(scalar(net(X[n : n + 1]), n), params)
        out.append(sum(float(g.square().sum()) for g in grads))
    return np.array(out)


@pytest.mark.parametrize("kind", ["RNN", "GRU"])
def test_recurrent_models_get_exact_per_example_norms(torch, kind):
    net = recurrent_net(torch, kind)
    X = torch.randn(5, 6, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (5,))
    loss = "softmax_cross_entropy"
    import torch.nn.functional as F

    expected_loss = loop_sq_norms(torch, net, X, lambda f, n: F.cross_entropy(f, y[n : n + 1]))
    expected_out = sum(
        loop_sq_norms(torch, net, X, lambda f, n, o=o: f[0, o]) for o in range(2)
    )
    rtol, _ = tolerance(np.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got_loss = models.loss_grad_sq_norms(net, (X, y), loss).total
        got_out = models.output_grad_sq_norms(net, X).total
        terms = models.igr_terms(net, (X, y), loss, batch_size=2)
    assert any("loop over the examples" in str(w.message) for w in caught)
    np.testing.assert_allclose(got_loss, expected_loss, rtol=rtol)
    np.testing.assert_allclose(got_out, expected_out, rtol=rtol)
    np.testing.assert_allclose(terms.per_example, expected_loss.mean(), rtol=rtol)


def test_recurrent_per_example_penalty_gradient_by_finite_differences(torch):
    net = recurrent_net(torch, "GRU")
    X = torch.randn(3, 4, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (3,))
    h, loss = 0.3, "softmax_cross_entropy"
    theta = models.parameter_vector(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        grad = models.modified_loss_per_example_grad(net, (X, y), loss, h)
        direction = np.random.default_rng(0).normal(size=theta.shape)
        step = 1e-5

        def value(t):
            torch.nn.utils.vector_to_parameters(torch.as_tensor(t), net.parameters())
            return models.modified_loss_per_example(net, (X, y), loss, h)

        fd = (value(theta + step * direction) - value(theta - step * direction)) / (2 * step)
        value(theta)
    assert abs(fd - grad @ direction) <= 1e-6 * max(1.0, abs(fd))


def test_batchnorm_without_running_statistics_is_refused(torch):
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4, track_running_stats=False),
        torch.nn.Linear(4, 2),
    )
    X = torch.randn(8, 3)
    for measure in (models.geometric_complexity, models.output_grad_sq_norms):
        with pytest.raises(ValueError, match="without running statistics.*track_running_stats=True"):
            measure(net, X)


def test_a_torch_model_that_normalises_over_the_batch_is_refused(torch):
    class BatchCentred(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x):
            h = self.linear(x)
            return h - h.mean(dim=0)

    X = torch.randn(8, 3)
    with pytest.raises(ValueError, match="depends on the other examples of its batch"):
        models.geometric_complexity(BatchCentred(), X)
    # A BatchNorm in inference mode uses its running statistics: accepted.
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    assert np.isfinite(models.geometric_complexity(net, X))


def test_a_jax_apply_with_batch_statistics_is_refused(jnp):
    params = {"W": np.random.default_rng(0).normal(size=(3, 2))}

    def centred(p, x):
        h = x @ p["W"]
        return h - jnp.mean(h, axis=0)

    X = np.random.default_rng(1).normal(size=(8, 3))
    for chunk_size in (2, 8):
        with pytest.raises(ValueError, match="batch statistics couple them"):
            models.geometric_complexity(centred, X, params=params, chunk_size=chunk_size)


def test_a_jax_model_called_on_the_wrong_width_is_named(jnp):
    params = {"W": np.ones((3, 2))}

    def linear(p, x):
        return x @ p["W"]

    with pytest.raises(ValueError, match=r"data: apply\(params, x\) cannot be called on examples of shape \(5,\)"):
        models.geometric_complexity(linear, np.ones((4, 5)), params=params)
    with pytest.raises(ValueError, match=r"data batch 1: apply\(params, x\) cannot be called"):
        models.output_grad_sq_norms(linear, [np.ones((4, 3)), np.ones((4, 5))], params=params)


def test_a_measure_switches_modes_once_per_call_not_per_chunk(torch):
    """Issue 17 item 1: mode toggles and the scans for placement and theta, once per call."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    net.train()
    calls = []
    original = net.eval
    net.eval = lambda: calls.append("eval") or original()
    X, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    for measure in (
        lambda: models.geometric_complexity(net, X, chunk_size=4),
        lambda: models.loss_grad_sq_norms(net, (X, y), "softmax_cross_entropy", chunk_size=4),
        lambda: models.igr_terms(net, (X, y), "softmax_cross_entropy", batch_size=8, chunk_size=4),
        lambda: models.loss_hvp(net, (X, y), "softmax_cross_entropy",
                                np.ones(models.parameter_vector(net).size), chunk_size=4),
    ):
        calls.clear()
        measure()
        assert calls == ["eval"]
        assert all(m.training for m in net.modules())
    # Without the patched eval() the flags are written directly: still once per call.
    del net.eval
    from gcref.backends import torch_model

    switches = []
    real = torch_model._eval_mode

    def counted(*args, **kwargs):
        switches.append(args[0])
        return real(*args, **kwargs)

    # A spy in place of Module.eval itself (so no module overrides it): the direct path
    # must not call it.
    evals = []
    module_eval = torch.nn.Module.eval

    def spied_eval(self):
        evals.append(self)
        return module_eval(self)

    torch_model._eval_mode = counted
    torch.nn.Module.eval = spied_eval
    try:
        models.geometric_complexity(net, X, chunk_size=4)
        models.loss_hvp(net, (X, y), "softmax_cross_entropy",
                        np.ones(models.parameter_vector(net).size), chunk_size=4)
    finally:
        torch_model._eval_mode = real
        torch.nn.Module.eval = module_eval
    assert switches == [net, net]
    assert evals == []
    assert all(m.training for m in net.modules())


def test_token_ids_for_an_embedding_are_measured_where_they_can_be(torch):
    """Issue 15: integer inputs for every measure that does not differentiate in the input."""
    import torch.nn.functional as F

    class Tokens(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(12, 2)

        def forward(self, x):
            return self.head(self.embedding(x).reshape(x.shape[0], -1))

    torch.manual_seed(0)
    net = Tokens().double()
    X, y = torch.randint(0, 10, (6, 3)), torch.randint(0, 2, (6,))
    params = list(net.parameters())
    expected = []
    for n in range(6):
        grads = torch.autograd.grad(F.cross_entropy(net(X[n : n + 1]), y[n : n + 1]), params)
        expected.append(sum(float(g.square().sum()) for g in grads))
    rtol, _ = tolerance(np.float64)
    norms = models.loss_grad_sq_norms(net, (X, y), "softmax_cross_entropy")
    np.testing.assert_allclose(norms.total, expected, rtol=rtol)
    assert norms.names == ("embedding.weight", "head.weight", "head.bias")
    terms = models.igr_terms(net, (X.numpy(), y), "softmax_cross_entropy", batch_size=3)
    np.testing.assert_allclose(terms.per_example, np.mean(expected), rtol=rtol)
    for measure in (models.geometric_complexity, models.dirichlet_energy):
        with pytest.raises(TypeError, match="X must have a floating dtype.*embedding"):
            measure(net, X)
    with pytest.raises(TypeError, match="X must have a floating dtype.*embedding"):
        models.estimate_geometric_complexity(net, X, np.random.default_rng(0))


def test_the_batch_statistics_check_runs_once_per_model_and_shape(torch):
    """Its forward passes are paid once per model and input shape, not on every call."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    X = torch.randn(8, 3)
    calls = []
    forward = net.forward
    net.forward = lambda x: calls.append(tuple(x.shape)) or forward(x)
    models.geometric_complexity(net, X, chunk_size=4)
    first = len(calls)
    calls.clear()
    models.geometric_complexity(net, X, chunk_size=4)
    # The second call skips the whole chunk and its two halves of the first one, and
    # the one-example pass that learnt the output size k.
    assert calls == [(4, 3), (4, 3)] and first == 6
    calls.clear()
    models.geometric_complexity(net, torch.randn(8, 3), chunk_size=4)
    assert calls == [(4, 3), (4, 3)]


def test_a_cached_output_size_follows_a_replaced_head(torch):
    """k is learnt once per module and input shape, and again when the parameters change."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    net.double()
    X = torch.randn(6, 3, dtype=torch.float64)
    models.estimate_geometric_complexity(net, X, np.random.default_rng(0))
    net[2] = torch.nn.Linear(4, 3).double()
    est = models.estimate_geometric_complexity(net, X, np.random.default_rng(0), n_probes=400)
    exact = float(models.geometric_complexity(net, X))
    assert abs(est.value - exact) < 5 * est.stderr


def test_a_module_whose_output_size_changes_unseen_gets_a_clear_error(torch):
    """An output size that changes without a parameter change is named, not broadcast."""

    class Narrowed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 4)
            self.k = 2

        def forward(self, x):
            return self.lin(x)[:, : self.k]

    net = Narrowed()
    X = torch.randn(6, 3)
    models.estimate_geometric_complexity(net, X, np.random.default_rng(0))
    net.k = 3
    with pytest.raises(ValueError, match="outputs of shape"):
        models.estimate_geometric_complexity(net, X, np.random.default_rng(0))
    # The cache is dropped with the error: the next call learns k again.
    est = models.estimate_geometric_complexity(net, X, np.random.default_rng(0), n_probes=400)
    assert abs(est.value - float(models.geometric_complexity(net, X))) < 5 * est.stderr
