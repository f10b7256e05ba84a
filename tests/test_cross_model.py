"""Every measure of :mod:`gcref.models` agrees across every kind of model of one MLP (issue 11, item 4).

Hypothesis draws an MLP (depth 1-3, small widths, an activation among identity, relu,
tanh, sigmoid and softplus), its parameters at a scale, float64 data and labels. Each
measure is called through the same :mod:`gcref.models` function on

- the :class:`gcref.MLP` with its parameters and ``backend=`` ``"numpy"`` (the analytic
  reference: hand-derived Jacobians, norm identities, R-operator), ``"autograd"``,
  ``"jax"`` and ``"torch"``;
- ``gcref.nets.torch.mlp_module(mlp, params)``, a float64 ``torch.nn.Module``;
- ``gcref.nets.jax.mlp_apply_from_gcref(mlp, params)``, a JAX ``apply(params, x)``,

in chunks of a drawn size (one chunk for the JAX kinds), and must equal the numpy
reference, taken in one chunk, to float64 rounding: the relative deviation of
:func:`gcref.tolerances.relative_deviation` (the largest entry-wise deviation over the
largest entry of the reference) at most the float64 ``rtol`` of :func:`gcref.tolerance`.
Hessian quantities (``loss_hvp`` and the gradients of the modified losses) are compared
for smooth activations only; relu takes part in every first-order one.

On each kind the identities of docs/math.md sections 2, 4 and 5 hold as well: ``DE =
GC / 2``; for one output, ``||grad_theta l_n||^2 = eps_n^2 ||grad_theta f(x_n)||^2``
with ``eps_n = dl/df`` written out here from the table of section 4; the modified losses
equal ``L + (h/4)`` times the matching IGR term; and for the MLP kinds the transfer
ratio lies in ``[0, 1]`` (section 3).

JAX compiles each primitive once per architecture, activation, loss and batch shape
(about 0.4 s each), so the two JAX kinds draw their architectures from ``JAX_PALETTE``
(depth 1-3, every loss, tanh, softplus and relu) with a fixed batch of four examples and
mini-batches of two; parameters, scales, data, labels, probes, step sizes and
directions stay random in every example. The other kinds draw fresh architectures.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import require_backend
from hypothesis import given
from hypothesis import strategies as st

import gcref
from gcref import models
from gcref.testing import strategies as gst
from gcref.tolerances import relative_deviation

RTOL, ATOL = gcref.tolerance(np.float64)
ACTIVATIONS = ("identity", "relu", "tanh", "sigmoid", "softplus")
SMOOTH = ("identity", "tanh", "sigmoid", "softplus")

#: (sizes, activation, loss) for the JAX kinds: depth 1-3, every loss, a saturating, a
#: smooth non-saturating and a piecewise-linear activation, one output for the
#: factorisation and the residual form. (A depth-1 MLP has no hidden activation.)
JAX_PALETTE = (
    ((3, 4, 1), "tanh", "squared"),
    ((2, 3, 2), "softplus", "softmax_cross_entropy"),
    ((4, 1), "identity", "logistic"),
    ((3, 3, 2, 2), "relu", "squared"),
)
JAX_BATCH = 4
JAX_MINIBATCH = 2

#: kind id -> the backend it needs.
KINDS = {
    "mlp-numpy": "numpy",
    "mlp-autograd": "autograd",
    "mlp-jax": "jax",
    "mlp-torch": "torch",
    "torch-module": "torch",
    "jax-function": "jax",
}


def model_of(kind, mlp, params):
    """``(model, keyword arguments)`` for the gcref.models functions, for one kind."""
    if kind.startswith("mlp-"):
        return mlp, {"params": params, "backend": kind[len("mlp-"):]}
    if kind == "torch-module":
        import torch

        from gcref.nets.torch import mlp_module

        return mlp_module(mlp, params, dtype=torch.float64), {}
    from gcref.nets.jax import mlp_apply_from_gcref

    apply, jax_params = mlp_apply_from_gcref(mlp, params)
    return apply, {"params": jax_params}


def losses_for(k):
    return ("squared", "logistic") if k == 1 else ("squared", "softmax_cross_entropy")


@st.composite
def cross_problems(draw, kind):
    """``(problem, loss, case)``: an MLP problem, a loss its output suits, and the other draws."""
    if KINDS[kind] == "jax":
        sizes, activation, loss = draw(st.sampled_from(JAX_PALETTE))
        problem = gst.make_problem(
            sizes, activation, JAX_BATCH, draw(gst.seeds()),
            scale=draw(st.sampled_from(gst.PARAMETER_SCALES)),
        )
        batch_size, chunk_size = JAX_MINIBATCH, 256
    else:
        problem = draw(gst.problems(
            max_depth=3, max_width=5, max_inputs=4, max_outputs=3, max_examples=6,
            activation_names=ACTIVATIONS,
        ))
        loss = draw(st.sampled_from(losses_for(problem.mlp.output_dim)))
        batch_size = draw(st.integers(1, problem.X.shape[0]))
        chunk_size = draw(st.sampled_from((1, 2, 3, 256)))
    gst.assume_unsaturated(problem.mlp, problem.params, problem.X)
    rng = np.random.default_rng(draw(gst.seeds()))
    case = {
        "y": gst.targets(rng, loss, problem.X.shape[0], problem.mlp.output_dim),
        "vector": rng.normal(size=problem.mlp.n_params),
        "h": draw(st.sampled_from((0.0, 0.05, 0.5, 2.0))),
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        "probe_seed": draw(gst.seeds()),
        "n_probes": draw(st.sampled_from((1, 3))),
        "probe": draw(st.sampled_from(models.PROBES)),
    }
    return problem, loss, case


def measures(model, kw, problem, loss, case, chunk_size=256):
    """Every measure of gcref.models on one model, by name (floats, arrays, records)."""
    X, y, h = problem.X, case["y"], case["h"]
    kw = {**kw, "chunk_size": chunk_size}
    data = (X, y)
    gc = models.geometric_complexity(model, X, per_example=True, **kw)
    out = {
        "geometric_complexity": gc.value,
        "geometric_complexity.per_example": gc.per_example,
        "dirichlet_energy": models.dirichlet_energy(model, X, per_example=True, **kw),
        "estimate": models.estimate_geometric_complexity(
            model, X, np.random.default_rng(case["probe_seed"]), n_probes=case["n_probes"],
            probe=case["probe"], **kw,
        ),
        "output_grad_sq_norms": models.output_grad_sq_norms(model, X, **kw),
        "loss_grad_sq_norms": models.loss_grad_sq_norms(model, data, loss, **kw),
        "mean_loss": models.mean_loss(model, data, loss, **kw),
        "loss_grad": models.loss_grad(model, data, loss, **kw),
        "igr_terms": models.igr_terms(model, data, loss, batch_size=case["batch_size"], **kw),
        "modified_loss_gd": models.modified_loss_gd(model, data, loss, h, **kw),
        "modified_loss_sgd": models.modified_loss_sgd(
            model, data, loss, h, batch_size=case["batch_size"], **kw
        ),
        "modified_loss_per_example": models.modified_loss_per_example(model, data, loss, h, **kw),
        "parameter_vector": models.parameter_vector(
            model, **{k: v for k, v in kw.items() if k != "chunk_size"}
        ),
    }
    if problem.mlp.output_dim == 1:
        out["modified_loss_per_example.residual"] = models.modified_loss_per_example(
            model, data, loss, h, form="residual", **kw
        )
    if problem.mlp.activation.name in SMOOTH:
        out["loss_hvp"] = models.loss_hvp(model, data, loss, case["vector"], **kw)
        out["modified_loss_gd_grad"] = models.modified_loss_gd_grad(model, data, loss, h, **kw)
        out["modified_loss_sgd_grad"] = models.modified_loss_sgd_grad(
            model, data, loss, h, batch_size=case["batch_size"], **kw
        )
        out["modified_loss_per_example_grad"] = models.modified_loss_per_example_grad(
            model, data, loss, h, **kw
        )
    return out


def numbers(value):
    """A measure's result as ``{field: float64 array}`` (records by their numeric fields)."""
    if isinstance(value, gcref.GradNorms):
        return {"per_parameter": value.per_parameter, "total": value.total}
    if isinstance(value, models.IGRTerms):
        fields = ("loss", "full_batch", "mini_batch", "per_example", "n_examples", "n_batches")
        return {f: np.float64(getattr(value, f)) for f in fields}
    if isinstance(value, gcref.results.ComplexityEstimate):
        return {f: np.float64(getattr(value, f)) for f in ("value", "stderr", "n_probes", "n_examples")}
    if isinstance(value, gcref.results.Complexity):
        return {"value": np.float64(value.value), "per_example": value.per_example}
    return {"": np.asarray(value, dtype=np.float64)}


def assert_close(got, want, what):
    """``got`` equals the reference ``want`` to float64 rounding, relative to its magnitude."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} against {want.shape}"
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan), f"{what}: NaN pattern {got} against {want}"
    deviation = relative_deviation(got[~nan], want[~nan])
    assert deviation <= RTOL, f"{what}: relative deviation {deviation:.3g} > {RTOL:g} ({got} vs {want})"


def close(a, b, scale=None):
    """Whether two floats agree to float64 rounding relative to ``scale`` (default their size)."""
    scale = max(abs(b), abs(a)) if scale is None else scale
    return abs(a - b) <= RTOL * scale + ATOL


def residuals(problem, loss, y):
    """``eps_n = dl/df`` at the reference outputs (docs/math.md section 4), one output: ``(N,)``."""
    f = gcref.forward(problem.mlp, problem.params, problem.X).output[:, 0]
    if loss == "squared":
        return f - np.asarray(y, dtype=np.float64)[:, 0]
    return 1.0 / (1.0 + np.exp(-f)) - y


def check_identities(values, problem, loss, case, kind):
    """DE = GC/2, the factorisation for k = 1, and the modified losses from the IGR terms."""
    h, gc = case["h"], values["geometric_complexity"]
    de = values["dirichlet_energy"]
    assert close(de.value, gc / 2), (kind, de.value, gc)
    np.testing.assert_allclose(de.per_example, values["geometric_complexity.per_example"] / 2,
                               rtol=RTOL, atol=ATOL)

    igr = values["igr_terms"]
    assert igr.n_examples == problem.X.shape[0]
    assert igr.n_batches == math.ceil(problem.X.shape[0] / case["batch_size"])
    assert close(igr.loss, values["mean_loss"]), (kind, igr.loss, values["mean_loss"])
    assert close(values["modified_loss_gd"], igr.loss + h / 4 * igr.full_batch), kind
    assert close(values["modified_loss_gd"], igr.modified_loss_gd(h)), kind
    assert close(values["modified_loss_sgd"], igr.loss + h / 4 * igr.mini_batch), kind
    assert close(values["modified_loss_sgd"], igr.modified_loss_sgd(h)), kind
    assert close(values["modified_loss_per_example"], igr.loss + h / 4 * igr.per_example), kind
    # ||grad L||^2 from the gradient vector itself.
    g = values["loss_grad"]
    assert close(igr.full_batch, float(g @ g)), (kind, igr.full_batch, float(g @ g))
    # The per-example term is the mean of the per-example squared norms.
    assert close(igr.per_example, float(np.mean(values["loss_grad_sq_norms"].total))), kind

    if problem.mlp.output_dim == 1:
        eps = residuals(problem, loss, case["y"])
        factored = eps**2 * values["output_grad_sq_norms"].total
        assert_close(values["loss_grad_sq_norms"].total, factored, f"{kind}: factorisation")
        assert close(values["modified_loss_per_example.residual"],
                     values["modified_loss_per_example"]), kind


def check_against_reference(values, reference, kind):
    assert values.keys() == reference.keys()
    for name, want in reference.items():
        got_fields, want_fields = numbers(values[name]), numbers(want)
        assert got_fields.keys() == want_fields.keys(), name
        for field, w in want_fields.items():
            assert_close(got_fields[field], w, f"{kind}: {name}{'.' + field if field else ''}")


@pytest.mark.parametrize("kind", list(KINDS), ids=list(KINDS))
@given(data=st.data())
def test_every_measure_agrees_with_the_numpy_mlp(kind, data):
    require_backend(KINDS[kind])
    problem, loss, case = data.draw(cross_problems(kind), label="problem, loss, case")
    reference = measures(problem.mlp, {"params": problem.params}, problem, loss, case)
    model, kw = model_of(kind, problem.mlp, problem.params)
    values = measures(model, kw, problem, loss, case, chunk_size=case["chunk_size"])

    check_against_reference(values, reference, kind)
    check_identities(values, problem, loss, case, kind)
    if kind.startswith("mlp-"):
        ratio = gcref.transfer_ratio(problem.mlp, problem.params, problem.X, backend=KINDS[kind])
        assert np.all(ratio >= 0), (kind, ratio)
        assert np.all(ratio <= 1 + RTOL), (kind, ratio)
        reference_ratio = gcref.transfer_ratio(problem.mlp, problem.params, problem.X)
        assert_close(ratio, reference_ratio, f"{kind}: transfer_ratio")
