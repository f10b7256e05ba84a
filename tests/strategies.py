"""Hypothesis strategies named after what they draw.

Random arrays come from a ``numpy.random.Generator`` seeded by a drawn integer, so every
example is reproducible from Hypothesis's own record and no global seed is touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

import gcref

ACTIVATION_NAMES = ("identity", "relu", "leaky_relu", "tanh", "sigmoid", "softplus")
PARAMETER_SCALES = (0.25, 1.0, 2.0)


@dataclass
class Problem:
    """An MLP, its parameters and a batch, with the generator that drew them."""

    mlp: gcref.MLP
    params: tuple
    X: np.ndarray
    rng: np.random.Generator

    def targets(self, loss):
        """Targets for ``loss``, drawn from ``self.rng``."""
        n, k = self.X.shape[0], self.mlp.output_dim
        name = gcref.get_loss(loss).name
        if name == "squared":
            return self.rng.normal(size=(n, k))
        if name == "logistic":
            return self.rng.integers(0, 2, size=n)
        return self.rng.integers(0, k, size=n)

    def direction(self):
        """A random parameter-shaped direction."""
        return tuple(
            (self.rng.normal(size=W.shape), self.rng.normal(size=b.shape)) for W, b in self.params
        )


@st.composite
def activations(draw, names=ACTIVATION_NAMES):
    """A hidden activation: a registered name, or leaky ReLU with a drawn slope."""
    name = draw(st.sampled_from(names))
    if name == "leaky_relu" and draw(st.booleans()):
        return gcref.leaky_relu(draw(st.sampled_from((0.0, 0.1, 0.5))))
    return name


@st.composite
def mlps(draw, max_depth=4, max_width=8, max_inputs=6, max_outputs=4, min_outputs=1,
         activation_names=ACTIVATION_NAMES):
    """An ``MLP`` of depth 1..max_depth, widths 1..max_width, d and k in range."""
    depth = draw(st.integers(1, max_depth))
    d = draw(st.integers(1, max_inputs))
    k = draw(st.integers(min_outputs, max_outputs))
    hidden = [draw(st.integers(1, max_width)) for _ in range(depth - 1)]
    return gcref.MLP((d, *hidden, k), activation=draw(activations(activation_names)))


#: Layer sizes that together span depth 1-4, widths 1-8, d 1-6 and k 1-4. The ``jax``
#: backend compiles each primitive once per shape (seconds), so its properties draw
#: architectures from this set and vary everything else: values, activations, scales.
REPRESENTATIVE_SIZES = (
    (1, 1),
    (6, 4),
    (3, 8, 2),
    (2, 1, 3),
    (4, 5, 3, 1),
    (1, 8, 2, 7, 2),
    (5, 3, 6, 4, 4),
)
REPRESENTATIVE_BATCH = 4


def _problem(draw, mlp, n):
    """Parameters at a drawn scale with drawn biases, and a batch of ``n`` examples."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from(PARAMETER_SCALES))
    params = mlp.init(rng, scheme="lecun_normal", scale=scale, bias="normal")
    return Problem(mlp, params, rng.normal(size=(n, mlp.input_dim)), rng)


@st.composite
def problems(draw, max_examples=5, min_outputs=1, max_outputs=4, **mlp_kwargs):
    """A ``Problem``: random MLP, parameters at a drawn scale, biases drawn, a batch."""
    mlp = draw(mlps(min_outputs=min_outputs, max_outputs=max_outputs, **mlp_kwargs))
    return _problem(draw, mlp, draw(st.integers(1, max_examples)))


@st.composite
def fixed_shape_problems(draw, architectures=REPRESENTATIVE_SIZES, batch=REPRESENTATIVE_BATCH,
                         activation_names=ACTIVATION_NAMES):
    """A ``Problem`` whose architecture and batch size come from a fixed menu.

    Compiled backends reuse their compilations across such examples; activations, scales,
    parameters and inputs still vary freely.
    """
    sizes = draw(st.sampled_from(architectures))
    mlp = gcref.MLP(sizes, activation=draw(activations(activation_names)))
    return _problem(draw, mlp, batch)


def problems_for(backend, architectures=REPRESENTATIVE_SIZES, batch=REPRESENTATIVE_BATCH):
    """``problems`` of every shape, or ``fixed_shape_problems`` for ``jax``."""
    if backend == "jax":
        return fixed_shape_problems(architectures, batch)
    return problems()


# tanh' and sigmoid' are tiny near saturation and backends evaluate them by different
# formulas, so they agree to 1e-9 relative only where no unit is close to saturation.
SATURATING = ("tanh", "sigmoid")
UNSATURATED_Z = 6.0


def assume_unsaturated(mlp, params, X):
    """Reject (``hypothesis.assume``) examples where a tanh or sigmoid unit has ``|z| > UNSATURATED_Z``."""
    if mlp.activation.name in SATURATING:
        zs = gcref.forward(mlp, params, X).zs[:-1]
        assume(all(np.all(np.abs(z) <= UNSATURATED_Z) for z in zs))
