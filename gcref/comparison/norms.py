"""``gcref compare`` rows for the norms and margins of docs/math.md section 6.

The norms are evaluated by their native versions in each backend; the margin by
:func:`gcref.predict` in each backend on the normalised network. The normalised network
is defined for bias-free networks, so the margin row drops the problem's biases.
"""

from __future__ import annotations

import numpy as np

from gcref.comparison.registry import row
from gcref.norms import group_norm, margin, path_norm, product_norm


@row("path_norm")
def _path_norm(problem, backend):
    """The l_2 path norm ``||pi(w)||_2``, biases included."""
    return path_norm(problem.mlp, problem.params, p=2, bias=True, backend=backend)


@row("group_norm")
def _group_norm(problem, backend):
    """The group norm ``mu_{2,inf}``, biases included."""
    return group_norm(problem.mlp, problem.params, p=2, q=np.inf, bias=True, backend=backend)


@row("product_norm")
def _product_norm(problem, backend):
    """``rho = prod_k ||W_k||_F``."""
    return product_norm(problem.mlp, problem.params, backend=backend)


@row("margin")
def _margin(problem, backend):
    """Smallest multi-class margin of the normalised bias-free network."""
    bias_free = tuple((W, np.zeros_like(b)) for W, b in problem.params)
    labels = np.asarray(problem.labels)
    if problem.mlp.output_dim == 1:
        labels = np.where(labels > 0, 1, -1)
    return margin(problem.mlp, bias_free, problem.X, labels, backend=backend)
