"""Rows of ``gcref compare`` for geometric complexity and the transfer theorem (docs/math.md sections 2 and 3)."""

from __future__ import annotations

import numpy as np

from gcref.comparison.registry import row
from gcref.complexity import dirichlet_energy, estimate_geometric_complexity, geometric_complexity
from gcref.transfer import transfer_terms


@row("geometric_complexity")
def _geometric_complexity(p, backend):
    """``GC = (1/N) sum_n ||J(x_n)||_F^2``."""
    return geometric_complexity(p.mlp, p.params, p.X, backend=backend)


@row("dirichlet_energy")
def _dirichlet_energy(p, backend):
    """The discrete Dirichlet energy GC / 2 (seed 000, eq. 5)."""
    return dirichlet_energy(p.mlp, p.params, p.X, backend=backend)


@row("geometric_complexity_estimate")
def _geometric_complexity_estimate(p, backend):
    """Gaussian-probe estimate with 8 probes per example, ``[value, stderr]``; same probes in every backend."""
    estimate = estimate_geometric_complexity(
        p.mlp, p.params, p.X, np.random.default_rng(p.rng_seed), n_probes=8, backend=backend
    )
    return np.array([estimate.value, estimate.stderr])


@row("transfer_ratio")
def _transfer_ratio(p, backend):
    """``||J||_F^2 sum_i T_i^2 / ||grad_theta f||_F^2`` per example, shape (N,)."""
    return transfer_terms(p.mlp, p.params, p.X, backend=backend).ratio


@row("transfer_layer_a")
def _transfer_layer_a(p, backend):
    """``A_i = ||W_i||_2 ||h'_i||_2`` per example and layer, shape (N, l)."""
    return transfer_terms(p.mlp, p.params, p.X, backend=backend).A


@row("transfer_layer_inv_t_sq")
def _transfer_layer_inv_t_sq(p, backend):
    """``1 / T_i^2 = A_i^2 / (1 + ||h_i||^2)`` per example and layer, shape (N, l)."""
    return transfer_terms(p.mlp, p.params, p.X, backend=backend).inv_T_sq


@row("transfer_layer_terms")
def _transfer_layer_terms(p, backend):
    """``||J||_F^2 T_i^2`` per example and layer, shape (N, l)."""
    return transfer_terms(p.mlp, p.params, p.X, backend=backend).layer_terms


@row("transfer_lemma")
def _transfer_lemma(p, backend):
    """The per-layer lemma's two sides ``[lhs | rhs]``, shape (N, 2 l)."""
    terms = transfer_terms(p.mlp, p.params, p.X, backend=backend)
    return np.concatenate([terms.lemma_lhs, terms.lemma_rhs], axis=1)
