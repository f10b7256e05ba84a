"""Every autodiff backend agrees with the analytic ``numpy`` backend on every primitive.

Random MLPs (depth 1-4, widths 1-8, d 1-6, k 1-4, every activation, parameter scales
0.25/1/2, drawn biases), random batches, float64, every loss the output size allows. The
comparison is ``gcref.tolerances.relative_deviation`` against the float64 tolerance: the
largest entry-wise deviation relative to the largest entry of the numpy reference.

All primitives are checked in one property per backend. The ``jax`` backend compiles
each primitive with ``jax.jit`` once per (architecture, activation, loss, batch shape),
about 0.4 s each: 200 examples of fresh architectures would compile some 2,800 programs
(20 minutes). For JAX the architectures therefore come from a fixed palette that covers
the same ranges (depth 1-4, widths 1-8, d 1-6, k 1-4, every built-in activation, both
losses each k allows) while parameters, scales, inputs and probes stay random in every
one of the 200 examples; the other backends draw fresh architectures every time.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gcref
from gcref.tolerances import relative_deviation, tolerance
from gcref.testing.strategies import PARAMETER_SCALES, Problem, problems

RTOL = tolerance(np.float64)[0]

# The backend fixture returns a name and holds no state, so sharing it across examples is
# safe; the profile's other suppressions are kept (this list replaces the profile's).
fixture_safe = settings(
    suppress_health_check=[
        HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large
    ]
)


# (sizes, N, activation): every depth 1-4, d = 1..6, k = 1..4, widths 1..8, every activation.
JAX_PALETTE = (
    ((1, 1), 1, "identity"),
    ((6, 8, 4), 5, "relu"),
    ((2, 3, 5, 2), 3, "tanh"),
    ((4, 8, 1, 7, 3), 4, "sigmoid"),
    ((3, 2, 1), 2, "softplus"),
    ((5, 6, 6, 2), 2, "leaky_relu"),
)


@st.composite
def palette_problems(draw):
    """A ``Problem`` whose architecture and batch size come from ``JAX_PALETTE``."""
    sizes, n, activation = draw(st.sampled_from(JAX_PALETTE))
    mlp = gcref.MLP(sizes, activation=activation)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from(PARAMETER_SCALES))
    params = mlp.init(rng, scheme="lecun_normal", scale=scale, bias="normal")
    return Problem(mlp, params, rng.normal(size=(n, sizes[0])), rng)


def losses_for(k):
    """The losses defined for k outputs."""
    return ("squared", "logistic") if k == 1 else ("squared", "softmax_cross_entropy")


def leaves(value):
    """Flatten a primitive's result (array, float, GradNorms, nested lists) to arrays."""
    if isinstance(value, gcref.GradNorms):
        return [value.weights, value.biases]
    if isinstance(value, gcref.backends.Forward):
        return leaves(value.zs) + leaves(value.hs)
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in leaves(item)]
    return [np.asarray(value)]


def primitives(problem, loss, y, cotangent, vector, backend):
    """Every public primitive on one problem, by name."""
    mlp, params, X = problem.mlp, problem.params, problem.X
    with_loss = (mlp, params, X, y, loss)
    return {
        "forward": gcref.forward(mlp, params, X, backend=backend),
        "input_jacobian": gcref.input_jacobian(mlp, params, X, backend=backend),
        "input_vjp": gcref.input_vjp(mlp, params, X, cotangent, backend=backend),
        "hidden_jacobians": gcref.hidden_jacobians(mlp, params, X, backend=backend),
        "sensitivities": gcref.sensitivities(mlp, params, X, backend=backend),
        "param_jacobian": gcref.param_jacobian(mlp, params, X, backend=backend),
        "param_grad_sq_norms": gcref.param_grad_sq_norms(mlp, params, X, backend=backend),
        "loss_grad_sq_norms": gcref.loss_grad_sq_norms(*with_loss, backend=backend),
        "per_example_loss": gcref.per_example_loss(*with_loss, backend=backend),
        "mean_loss": gcref.mean_loss(*with_loss, backend=backend),
        "residuals": gcref.residuals(*with_loss, backend=backend),
        "loss_sensitivities": gcref.loss_sensitivities(*with_loss, backend=backend),
        "loss_grad": gcref.loss_grad(*with_loss, backend=backend),
        "loss_hvp": gcref.loss_hvp(*with_loss, vector, backend=backend),
    }


@fixture_safe
@given(data=st.data())
def test_every_primitive_agrees_with_numpy(autodiff_backend, data):
    strategy = palette_problems() if autodiff_backend == "jax" else problems()
    problem = data.draw(strategy, label="problem")
    loss = data.draw(st.sampled_from(losses_for(problem.mlp.output_dim)), label="loss")
    y = problem.targets(loss)
    cotangent = problem.rng.normal(size=(problem.X.shape[0], problem.mlp.output_dim))
    vector = problem.direction()

    reference = primitives(problem, loss, y, cotangent, vector, "numpy")
    result = primitives(problem, loss, y, cotangent, vector, autodiff_backend)
    for name, ref in reference.items():
        got, want = leaves(result[name]), leaves(ref)
        assert len(got) == len(want), name
        for index, (g, w) in enumerate(zip(got, want)):
            assert g.shape == w.shape, (name, index, g.shape, w.shape)
            assert g.dtype == np.float64, (name, index, g.dtype)
            deviation = relative_deviation(g, w)
            assert deviation <= RTOL, f"{name}[{index}]: relative deviation {deviation:.3g} > {RTOL:g}"
