"""gcref.models under torch.distributed: two processes give the single-process values.

The test starts two ranks, each a subprocess running this file (``python
tests/test_models_distributed.py OUT_DIR``) with the ``gloo`` backend on the CPU. Every
rank builds the same float64 module from a fixed NumPy generator, takes its shard of a
fixed data set and measures it with :mod:`gcref.models`, whose adapter all-reduces the
sums; each rank writes what it got to ``OUT_DIR/rank<r>.npz``. The test then compares
both ranks with one process that sees the whole data set (the union of the shards), to
``RTOL`` relative.

Three layouts of the 12 examples: even halves (6 + 6), uneven ones (4 + 8), and an empty
shard (0 + 12), whose rank still takes part in every reduction (its per-example arrays
are empty). A rank that passes fewer mini-batches than the other is refused on both. The SGD term
has three mini-batches per rank of uneven sizes; its j-th mini-batch is the union of the
ranks' j-th batches, so the single-process run uses those unions as its batches.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from processes import gloo_env, start, wait_all

WORLD = 2
RANK_TIMEOUT_S = 120
RTOL = 1e-10
N, D, HIDDEN, K = 12, 3, 5, 2
N_PROBES = 3
#: Shard boundaries: rank r holds examples ``[bounds[r], bounds[r + 1])``.
LAYOUTS = {"even": (0, 6, 12), "uneven": (0, 4, 12), "empty": (0, 0, 12)}
#: Cut points of each shard into three uneven mini-batches, by layout and rank.
BATCH_CUTS = {"even": ((1, 4), (2, 3)), "uneven": ((1, 2), (3, 7)), "empty": ((0, 0), (3, 7))}


def module(torch):
    """``Linear(3, 5) -> Tanh -> Linear(5, 2)``, float64, parameters from a fixed generator."""
    net = torch.nn.Sequential(
        torch.nn.Linear(D, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, K)
    ).double()
    rng = np.random.default_rng(7)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.as_tensor(rng.normal(size=tuple(p.shape))))
    return net


def data_set():
    """``X (N, D)``, regression targets ``y (N, K)`` and a direction for the Hessian, fixed."""
    rng = np.random.default_rng(11)
    X = rng.normal(size=(N, D))
    y = rng.normal(size=(N, K))
    n_params = HIDDEN * D + HIDDEN + K * HIDDEN + K
    return X, y, rng.normal(size=n_params)


def shard(layout, rank):
    start, stop = LAYOUTS[layout][rank], LAYOUTS[layout][rank + 1]
    return slice(start, stop)


def probe_seed(rank):
    return 100 + rank


def measure(torch, models, layout, rank):
    """Every measure on rank ``rank``'s shard under ``layout``, as a dict of arrays."""
    X, y, v = data_set()
    net = module(torch)
    Xr, yr = X[shard(layout, rank)], y[shard(layout, rank)]
    cuts = BATCH_CUTS[layout][rank]
    batches = list(zip(np.split(Xr, cuts), np.split(yr, cuts)))
    gc = models.geometric_complexity(net, Xr, chunk_size=4, per_example=True)
    est = models.estimate_geometric_complexity(
        net, (torch.as_tensor(Xr), torch.as_tensor(yr)), np.random.default_rng(probe_seed(rank)),
        n_probes=N_PROBES, chunk_size=6,
    )
    terms = models.igr_terms(net, batches, "squared", chunk_size=2)
    return {
        "gc": gc.value,
        "gc_per_example": gc.per_example,
        "de": models.dirichlet_energy(net, [Xr[:3], Xr[3:]], chunk_size=2),
        "estimate": [est.value, est.stderr, est.n_examples],
        "igr": [terms.loss, terms.full_batch, terms.mini_batch, terms.per_example],
        "igr_counts": [terms.n_examples, terms.n_batches],
        # Per-example values are local: an empty shard has none (and nothing to reduce).
        "loss_grad_sq_norms": (
            models.loss_grad_sq_norms(net, (Xr, yr), "squared", chunk_size=3)
            if Xr.shape[0] else np.zeros(0)
        ),
        "hvp": models.loss_hvp(net, batches, "squared", v, chunk_size=3),
    }


def mismatch_refused(torch, models, rank):
    """1 if ``igr_terms`` refuses rank 0 passing two mini-batches against rank 1's three."""
    X, y, _ = data_set()
    batches = [(X[i : i + 2], y[i : i + 2]) for i in range(0, 6 if rank == 0 else 4, 2)]
    try:
        models.igr_terms(module(torch), batches, "squared")
    except ValueError as error:
        return float("same number of mini-batches" in str(error))
    return 0.0


def run_rank(out_dir):
    """Body of one rank: environment from the test, results to ``out_dir/rank<r>.npz``."""
    import datetime

    import torch
    import torch.distributed as dist

    from gcref import models

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    dist.init_process_group(
        "gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60)
    )
    try:
        results = {}
        for layout in LAYOUTS:
            for name, value in measure(torch, models, layout, rank).items():
                results[f"{layout}/{name}"] = np.asarray(value, dtype=np.float64)
        results["mismatch_refused"] = np.float64(mismatch_refused(torch, models, rank))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    np.savez(Path(out_dir) / f"rank{rank}.npz", **results)


# -- the test ---------------------------------------------------------------------------------
def run_ranks(out_dir):
    """Start the ranks, wait for them (``RANK_TIMEOUT_S``), fail with their stderr if any fails."""
    procs = start(__file__, [out_dir], WORLD, gloo_env(WORLD))
    wait_all(procs, RANK_TIMEOUT_S)
    return [dict(np.load(Path(out_dir) / f"rank{r}.npz")) for r in range(WORLD)]


def brute_force_estimate(torch, layout):
    """The probe estimate over the union of the shards, each rank's probes from its own seed.

    ``s_{n,p} = ||v_{n,p}^T J(x_n)||^2`` with ``J`` from ``torch.autograd.functional.jacobian``
    example by example and ``v`` standard normal, drawn by each rank's generator in example
    order; value ``mean s``, standard error ``sqrt(sum_n Var_p(s_n) / (P N^2))``.
    """
    X, _, _ = data_set()
    net = module(torch).eval()
    stats = []
    for rank in range(WORLD):
        Xr = X[shard(layout, rank)]
        probes = np.random.default_rng(probe_seed(rank)).standard_normal((Xr.shape[0], N_PROBES, K))
        for x, v in zip(Xr, probes):
            J = torch.autograd.functional.jacobian(net, torch.as_tensor(x)).numpy()
            stats.append(np.sum((v @ J) ** 2, axis=1))
    stats = np.array(stats)
    variance = np.sum(np.var(stats, axis=1, ddof=1)) / (N_PROBES * N**2)
    return [stats.mean(), np.sqrt(variance), N]


def single_process(torch, models, layout):
    """The same measures by one process over the whole data set (the union of the shards)."""
    X, y, v = data_set()
    net = module(torch)
    unions = []
    parts = [np.split(np.arange(N)[shard(layout, r)], BATCH_CUTS[layout][r]) for r in range(WORLD)]
    for pieces in zip(*parts):
        idx = np.concatenate(pieces)
        unions.append((X[idx], y[idx]))
    gc = models.geometric_complexity(net, X, per_example=True)
    terms = models.igr_terms(net, unions, "squared")
    return {
        "gc": gc.value,
        "gc_per_example": gc.per_example,
        "de": gc.value / 2,
        "estimate": brute_force_estimate(torch, layout),
        "igr": [terms.loss, terms.full_batch, terms.mini_batch, terms.per_example],
        "igr_counts": [N, len(unions)],
        "loss_grad_sq_norms": models.loss_grad_sq_norms(net, (X, y), "squared"),
        "hvp": models.loss_hvp(net, (X, y), "squared", v),
    }


#: Per-example results are each rank's own examples; the others are data-set values.
PER_EXAMPLE = ("gc_per_example", "loss_grad_sq_norms")


def test_two_processes_give_the_single_process_values(tmp_path):
    from conftest import require_backend

    require_backend("torch")
    import torch

    from gcref import models

    ranks = run_ranks(tmp_path)
    assert [float(r["mismatch_refused"]) for r in ranks] == [1.0] * WORLD
    for layout in LAYOUTS:
        expected = single_process(torch, models, layout)
        for name, want in expected.items():
            want = np.asarray(want, dtype=np.float64)
            for rank, results in enumerate(ranks):
                got = results[f"{layout}/{name}"]
                if name in PER_EXAMPLE:
                    want_here = want[shard(layout, rank)]
                else:
                    want_here = want
                scale = np.max(np.abs(want_here), initial=0.0)
                np.testing.assert_allclose(
                    got, want_here, rtol=RTOL, atol=RTOL * scale,
                    err_msg=f"{name}, {layout} shards, rank {rank}",
                )


if __name__ == "__main__":
    run_rank(sys.argv[1])
