"""gcref.penalties under DistributedDataParallel: two processes give the single-process gradients.

The test starts two ranks, each a subprocess running this file (``python
tests/test_penalties_distributed.py OUT_DIR``) with the ``gloo`` backend on the CPU. Every
rank builds the same float64 CNN from a fixed NumPy generator, wraps it in
``DistributedDataParallel``, takes its shard of a fixed batch, computes each penalty on
it and calls ``backward()``; DDP averages the gradients. Each rank writes the penalty
values and the averaged gradients to ``OUT_DIR/rank<r>.npz``. The test compares both
ranks with one process that computes the penalty on the whole batch (the union of the
shards) without DDP, to ``RTOL`` relative: the penalties are those of the union on every
rank, and so are their gradients, for even (3 + 3) and uneven (2 + 4) shards.

The probe penalties draw from one seed: rank 1 first draws (and drops) rank 0's probes,
so that the union sees the single process's probes (they are drawn example by example).
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
N, C, SIZE, K = 6, 2, 5, 3
PROBE_SEED = 21
#: Shard boundaries: rank r holds examples ``[bounds[r], bounds[r + 1])``.
LAYOUTS = {"even": (0, 3, 6), "uneven": (0, 2, 6)}
PENALTIES = ("gc", "gc-estimate", "de-estimate", "igr-full-batch", "igr-per-example")


def module(torch):
    """``Conv2d(2, 3, 3) -> Tanh -> Flatten -> Linear(27, 3)``, float64, fixed parameters."""
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(C, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(27, K)).double()
    rng = np.random.default_rng(7)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.as_tensor(rng.normal(scale=0.5, size=tuple(p.shape))))
    return net


def batch(torch):
    rng = np.random.default_rng(11)
    x = torch.as_tensor(rng.normal(size=(N, C, SIZE, SIZE)))
    y = torch.as_tensor(rng.integers(0, K, size=N))
    return x, y


def penalty(penalties, name, net, x, y, rng):
    """``(penalty, f)`` from one forward pass."""
    if name == "gc":
        return penalties.geometric_complexity(net, x, return_output=True)
    if name == "gc-estimate":
        return penalties.estimate_geometric_complexity(
            net, x, rng, n_probes=2, probe="gaussian", return_output=True
        )
    if name == "de-estimate":
        return penalties.estimate_dirichlet_energy(
            net, x, rng, n_probes=2, probe="sphere", return_output=True
        )
    if name == "igr-full-batch":
        return penalties.igr_full_batch(net, x, y, "softmax_cross_entropy", return_output=True)
    return penalties.igr_per_example(net, x, y, "softmax_cross_entropy", return_output=True)


def probe_generator(name, start):
    """The generator at example ``start`` of the single process's probe draws."""
    rng = np.random.default_rng(PROBE_SEED)
    probe = "sphere" if name == "de-estimate" else "gaussian"
    from gcref.models import draw_probes

    draw_probes(rng, probe, (start, 2, K))
    return rng


def value_and_gradient(torch, penalties, name, net, x, y, rng):
    """The penalty and the gradient in ``net.parameters()`` order after ``backward()``."""
    net.zero_grad()
    value, f = penalty(penalties, name, net, x, y, rng)
    # GC does not depend on the output layer's bias, which DDP refuses to leave without
    # a gradient (in training the loss gives it one): 0 * f gives it a zero one.
    (value + 0 * f.sum()).backward()
    grad = torch.cat(
        [torch.zeros_like(p) if p.grad is None else p.grad.reshape(-1) for p in net.parameters()]
    )
    return np.concatenate([[float(value.detach())], grad.numpy()])


def run_rank(out_dir):
    """Body of one rank: environment from the test, results to ``out_dir/rank<r>.npz``."""
    import datetime

    import torch
    import torch.distributed as dist

    from gcref import penalties

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    dist.init_process_group(
        "gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60)
    )
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(module(torch))
        x, y = batch(torch)
        results = {}
        for layout, bounds in LAYOUTS.items():
            shard = slice(bounds[rank], bounds[rank + 1])
            for name in PENALTIES:
                rng = probe_generator(name, bounds[rank])
                results[f"{layout}/{name}"] = value_and_gradient(
                    torch, penalties, name, ddp, x[shard], y[shard], rng
                )
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


def test_two_processes_give_the_single_process_gradients(tmp_path):
    from conftest import require_backend

    require_backend("torch")
    import torch

    from gcref import penalties

    ranks = run_ranks(tmp_path)
    x, y = batch(torch)
    for name in PENALTIES:
        net = module(torch)
        want = value_and_gradient(torch, penalties, name, net, x, y, probe_generator(name, 0))
        for layout in LAYOUTS:
            for rank, results in enumerate(ranks):
                got = results[f"{layout}/{name}"]
                np.testing.assert_allclose(
                    got,
                    want,
                    rtol=RTOL,
                    atol=RTOL * np.max(np.abs(want)),
                    err_msg=f"{name}, {layout} shards, rank {rank}",
                )


if __name__ == "__main__":
    run_rank(sys.argv[1])
