"""The registry of per-layer norm rules (:mod:`gcref.backends.torch_layers`) with a layer of our own.

``Scale`` multiplies its input element-wise by a ``weight`` vector: no built-in rule knows
it. Its per-example weight gradient is ``g_n * a_n`` (``a`` the layer's input, ``g`` the
cotangent of its output), so the rule registered here is ``||g_n * a_n||^2``. Without
the rule a model holding a ``Scale`` goes to the ``torch.func.vmap`` fallback; with it
the identities are used; either way the per-example squared norms equal a per-example
loop of ``torch.autograd.grad`` (the obviously correct reference).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import gcref

# Without torch the module skips, except under CI, where the import below fails the run.
if "torch" not in gcref.available_backends() and not os.environ.get("CI"):
    pytest.skip("backend 'torch' is not installed", allow_module_level=True)

import torch

import gcref.models as gm
from gcref import tolerance
from gcref.backends import torch_layers
from gcref.backends.torch_layers import NORM_RULES, register_norm_rule, rule_layers
from gcref.backends.torch_model import TorchModel

RTOL, ATOL = tolerance(np.float64)


class Scale(torch.nn.Module):
    """``x * weight``, element-wise over the last axis."""

    def __init__(self, width):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, width, dtype=torch.float64))

    def forward(self, x):
        return x * self.weight


class SubScale(Scale):
    """A subclass: rules are looked up by exact type, so ``Scale``'s rule does not apply."""


def scale_rule(module, a, g, context):
    """``||g_n * a_n||^2`` for the weight (2-D inputs)."""
    out = {}
    if context.wants(module, "weight"):
        out["weight"] = (g * a).double().square().sum(dim=1)
    return out


@pytest.fixture
def registry():
    """Registers rules for the test and removes every key it added afterwards."""
    before = set(NORM_RULES)
    yield register_norm_rule
    for key in set(NORM_RULES) - before:
        del NORM_RULES[key]


@pytest.fixture
def fallback_calls(monkeypatch):
    """Every call of TorchModel's vmap fallback, by method name."""
    calls = []
    for name in ("_vmap_output_sq_norms", "_vmap_loss_sq_norms", "_vmap_penalty"):
        original = getattr(TorchModel, name)

        def recording(self, *args, original=original, name=name):
            calls.append(name)
            return original(self, *args)

        monkeypatch.setattr(TorchModel, name, recording)
    return calls


def network(layer=Scale):
    """Linear, tanh, the layer, Linear; float64, parameters drawn from a fixed Generator."""
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4, dtype=torch.float64), torch.nn.Tanh(), layer(4),
        torch.nn.Linear(4, 2, dtype=torch.float64),
    )
    rng = np.random.default_rng(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.as_tensor(rng.normal(size=tuple(p.shape))))
    return model


def problem():
    rng = np.random.default_rng(7)
    return rng.normal(size=(5, 3)), rng.normal(size=(5, 2))


def loop_sq_norms(model, X, y):
    """Per-example ``||grad_p f||^2`` (summed over outputs) and ``||grad_p l_n||^2``, loop by loop."""
    params = [p for p in model.parameters()]
    out_rows, loss_rows = [], []
    for x, t in zip(torch.as_tensor(X), torch.as_tensor(y)):
        f = model(x[None])[0]
        out = np.zeros(len(params))
        for o in range(f.shape[0]):
            grads = torch.autograd.grad(f[o], params, retain_graph=True)
            out += [float(g.square().sum()) for g in grads]
        loss = 0.5 * (f - t).square().sum()
        loss_rows.append([float(g.square().sum()) for g in torch.autograd.grad(loss, params)])
        out_rows.append(out)
    return np.array(out_rows), np.array(loss_rows)


def assert_close(got, want):
    np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL)


def test_without_a_rule_the_model_goes_to_the_vmap_fallback(fallback_calls):
    model = network()
    X, y = problem()
    assert rule_layers(model, list(model.named_parameters())) is None
    out = gm.output_grad_sq_norms(model, X)
    losses = gm.loss_grad_sq_norms(model, (X, y), "squared")
    assert fallback_calls == ["_vmap_output_sq_norms", "_vmap_loss_sq_norms"]
    ref_out, ref_loss = loop_sq_norms(model, X, y)
    assert out.names == ("0.weight", "0.bias", "2.weight", "3.weight", "3.bias")
    assert_close(out.per_parameter, ref_out)
    assert_close(losses.per_parameter, ref_loss)


def test_a_registered_rule_is_used_and_agrees_with_a_loop_and_with_vmap(registry, fallback_calls):
    rule_calls = []

    def spied_rule(module, a, g, context):
        rule_calls.append(type(module))
        return scale_rule(module, a, g, context)

    assert registry(Scale, spied_rule) is spied_rule
    model = network()
    X, y = problem()
    assert rule_layers(model, list(model.named_parameters())) is not None

    def used_the_rule(value):
        assert rule_calls and set(rule_calls) == {Scale}, rule_calls
        rule_calls.clear()
        return value

    out = used_the_rule(gm.output_grad_sq_norms(model, X))
    losses = used_the_rule(gm.loss_grad_sq_norms(model, (X, y), "squared"))
    terms = used_the_rule(gm.igr_terms(model, (X, y), "squared", batch_size=2))
    penalty_grad = used_the_rule(gm.modified_loss_per_example_grad(model, (X, y), "squared", 0.5))
    assert fallback_calls == []

    ref_out, ref_loss = loop_sq_norms(model, X, y)
    assert_close(out.per_parameter, ref_out)
    assert_close(losses.per_parameter, ref_loss)
    assert np.isclose(terms.per_example, ref_loss.sum(axis=1).mean(), rtol=RTOL, atol=ATOL)

    vmapped = TorchModel(model, norm_method="vmap")
    assert_close(gm.output_grad_sq_norms(vmapped, X).per_parameter, out.per_parameter)
    assert_close(gm.loss_grad_sq_norms(vmapped, (X, y), "squared").per_parameter,
                 losses.per_parameter)
    # The rule is differentiable: the gradient of the per-example penalty through it
    # equals the gradient through the vmap-ped per-example gradients.
    assert_close(gm.modified_loss_per_example_grad(vmapped, (X, y), "squared", 0.5), penalty_grad)
    assert "_vmap_penalty" in fallback_calls


def test_the_decorator_form_registers_the_function_unchanged(registry):
    decorated = registry(Scale, supports=lambda m: True)(scale_rule)
    assert decorated is scale_rule
    assert NORM_RULES[Scale].fn is scale_rule
    assert torch_layers.norm_rule(Scale(2)) is NORM_RULES[Scale]


def test_a_rule_whose_supports_declines_sends_the_model_to_the_fallback(registry, fallback_calls):
    registry(Scale, scale_rule, supports=lambda module: module.weight.shape[0] > 10)
    model = network()
    X, y = problem()
    assert torch_layers.norm_rule(model[2]) is None
    out = gm.output_grad_sq_norms(model, X)
    assert fallback_calls == ["_vmap_output_sq_norms"]
    assert_close(out.per_parameter, loop_sq_norms(model, X, y)[0])


def test_rules_apply_to_the_exact_type_only(registry, fallback_calls):
    registry(Scale, scale_rule)
    model = network(SubScale)
    X, y = problem()
    assert torch_layers.norm_rule(model[2]) is None
    gm.loss_grad_sq_norms(model, (X, y), "squared")
    assert fallback_calls == ["_vmap_loss_sq_norms"]


def test_a_frozen_parameter_is_not_asked_of_the_rule(registry):
    registry(Scale, scale_rule)
    model = network()
    model[2].weight.requires_grad_(False)
    X, y = problem()
    out = gm.output_grad_sq_norms(model, X)
    assert out.names == ("0.weight", "0.bias", "3.weight", "3.bias")
    full = loop_sq_norms(network(), X, y)[0]
    assert_close(out.per_parameter, full[:, [0, 1, 3, 4]])


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("Scale", scale_rule), {}, "module_type must be a torch.nn.Module subclass"),
        ((Scale(2), scale_rule), {}, "module_type must be a torch.nn.Module subclass"),
        ((Scale, "not a function"), {}, "the rule must be callable"),
        ((Scale, scale_rule), {"supports": True}, "supports must be callable"),
    ],
    ids=["type-name-string", "instance", "rule-not-callable", "supports-not-callable"],
)
def test_bad_registrations_raise_type_error_and_register_nothing(registry, args, kwargs, message):
    before = dict(NORM_RULES)
    with pytest.raises(TypeError, match=message):
        registry(*args, **kwargs)
    assert NORM_RULES == before


def test_a_bad_supports_in_the_decorator_form_raises_when_decorating(registry):
    decorator = registry(Scale, supports=3)
    with pytest.raises(TypeError, match="supports must be callable"):
        decorator(scale_rule)
    assert Scale not in NORM_RULES


def test_a_class_that_is_not_a_module_is_refused(registry):
    with pytest.raises(TypeError, match="module_type"):
        registry(int, scale_rule)
