"""Rows of ``gcref compare`` for the modified losses of implicit gradient regularisation (docs/math.md section 5).

Every row uses the learning rate ``STEP`` and, for SGD, the partition of the examples
into ``min(3, N)`` mini-batches drawn from ``problem.rng_seed`` (:func:`partition`), so
every backend sees the same batches. Gradients are flattened parameter vectors. The row
``igr_terms`` computes the four terms of :func:`gcref.models.igr_terms` from the
primitives, as the reference for users' models.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.comparison.registry import row
from gcref.igr import (
    modified_loss_gd,
    modified_loss_gd_grad,
    modified_loss_per_example,
    modified_loss_per_example_grad,
    modified_loss_sgd,
    modified_loss_sgd_grad,
)
from gcref.params import flatten_params

STEP = 0.1


def partition(p):
    """A shuffled partition of ``range(N)`` into ``min(3, N)`` near-equal mini-batches."""
    n = p.X.shape[0]
    order = np.random.default_rng(p.rng_seed).permutation(n)
    return [np.sort(batch) for batch in np.array_split(order, min(3, n))]


@row("modified_loss_gd")
def _modified_loss_gd(p, backend):
    """``L + (h/4) ||grad L||^2``."""
    return modified_loss_gd(p.mlp, p.params, p.X, p.y, p.loss, STEP, backend=backend)


@row("modified_loss_gd_grad")
def _modified_loss_gd_grad(p, backend):
    """``grad L + (h/2) H grad L``, flattened."""
    return flatten_params(modified_loss_gd_grad(p.mlp, p.params, p.X, p.y, p.loss, STEP, backend=backend))


@row("modified_loss_sgd")
def _modified_loss_sgd(p, backend):
    """``L + h/(4m) sum_j ||grad L_{B_j}||^2`` over the fixed partition."""
    return modified_loss_sgd(p.mlp, p.params, p.X, p.y, p.loss, STEP, partition(p), backend=backend)


@row("modified_loss_sgd_grad")
def _modified_loss_sgd_grad(p, backend):
    """``grad L + h/(4m) sum_j 2 H_{B_j} grad L_{B_j}``, flattened."""
    grads = modified_loss_sgd_grad(p.mlp, p.params, p.X, p.y, p.loss, STEP, partition(p), backend=backend)
    return flatten_params(grads)


@row("igr_terms")
def _igr_terms(p, backend):
    """``[L, ||grad L||^2, (1/m) sum_j ||grad L_{B_j}||^2, (1/N) sum_n ||grad l_n||^2]``."""
    args = (p.mlp, p.params)

    def grad_sq_norm(X, y):
        return np.sum(gcref.flatten_params(gcref.loss_grad(*args, X, y, p.loss, backend=backend)) ** 2)

    mini_batch = np.mean([grad_sq_norm(p.X[batch], p.y[batch]) for batch in partition(p)])
    per_example = gcref.loss_grad_sq_norms(*args, p.X, p.y, p.loss, backend=backend).total
    return np.array(
        [
            gcref.mean_loss(*args, p.X, p.y, p.loss, backend=backend),
            grad_sq_norm(p.X, p.y),
            mini_batch,
            np.mean(per_example),
        ]
    )


@row("modified_loss_per_example")
def _modified_loss_per_example(p, backend):
    """``L + h/(4N) sum_n ||grad_theta l_n||^2`` (seed 000, eq. 6)."""
    return modified_loss_per_example(p.mlp, p.params, p.X, p.y, p.loss, STEP, backend=backend)


@row("modified_loss_per_example_grad")
def _modified_loss_per_example_grad(p, backend):
    """``grad L + h/(4N) 2 sum_n H_n grad_theta l_n``, flattened."""
    grads = modified_loss_per_example_grad(p.mlp, p.params, p.X, p.y, p.loss, STEP, backend=backend)
    return flatten_params(grads)
