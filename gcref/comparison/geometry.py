"""``gcref compare`` rows for the one-input arc length (docs/math.md section 2).

Arc length needs one input, so these rows use their own small one-input networks, drawn
from ``problem.rng_seed`` (the same parameters in every backend), on [-2, 2].
"""

from __future__ import annotations

import numpy as np

from gcref.comparison.registry import row
from gcref.geometry import arc_length
from gcref.mlp import MLP

_INTERVAL = (-2.0, 2.0)


def _one_input_network(problem, activation):
    mlp = MLP((1, 16, 16, 1), activation=activation)
    params = mlp.init(np.random.default_rng(problem.rng_seed), bias="normal")
    return mlp, params


@row("arc_length_relu")
def _arc_length_relu(problem, backend):
    """Exact arc length on [-2, 2] of a one-input ReLU network."""
    mlp, params = _one_input_network(problem, "relu")
    return arc_length(mlp, params, interval=_INTERVAL, method="exact", backend=backend).value


@row("arc_length_tanh")
def _arc_length_tanh(problem, backend):
    """Adaptive-quadrature arc length on [-2, 2] of a one-input tanh network."""
    # A tolerance far below the comparison tolerance, so that a subdivision decided
    # differently by rounding in another backend cannot show up in the comparison.
    mlp, params = _one_input_network(problem, "tanh")
    result = arc_length(mlp, params, interval=_INTERVAL, method="adaptive", rtol=1e-12, backend=backend)
    return result.value
