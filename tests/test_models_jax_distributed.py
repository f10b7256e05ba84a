"""gcref.models under jax.distributed: two JAX processes give the single-process values.

The test starts two processes, each a subprocess running this file (``python
tests/test_models_jax_distributed.py OUT_DIR``) that calls ``jax.distributed.initialize``
with a coordinator on 127.0.0.1 and gloo for the CPU collectives. Every process builds
the same float64 MLP (``gcref.nets.jax.mlp``, non-zero biases) from a fixed NumPy
generator, takes its shard of a fixed data set and measures it with
:mod:`gcref.models`, whose :class:`~gcref.backends.jax_model.JaxModel` sums over the
processes; each writes what it got to ``OUT_DIR/rank<r>.npz``. The test then compares
both with this process measuring the whole data set (the union of the shards) alone, to
``RTOL`` relative.

Two layouts of the 12 examples: uneven shards (4 + 8) and an empty one (0 + 12), whose
process still takes part in every sum (its per-example arrays are empty). The SGD term
has three mini-batches per process of uneven sizes; its j-th mini-batch is the union of
the processes' j-th batches, so the single process uses those unions as its batches. A
process that passes fewer mini-batches than the other is refused on both.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from processes import jax_env, start, wait_all

WORLD = 2
RANK_TIMEOUT_S = 120
RTOL = 1e-10
N, D, HIDDEN, K = 12, 3, 5, 2
CHUNK = 4
LOSS = "squared"
#: Shard boundaries: process r holds examples ``[bounds[r], bounds[r + 1])``.
LAYOUTS = {"uneven": (0, 4, 12), "empty": (0, 0, 12)}
#: Cut points of each shard into three uneven mini-batches, by layout and process.
BATCH_CUTS = {"uneven": ((1, 2), (3, 7)), "empty": ((0, 0), (3, 7))}


def model():
    """``apply`` and float64 parameters of ``Dense(3, 5) -> tanh -> Dense(5, 2)``, fixed."""
    import jax

    from gcref.nets.jax import mlp

    init, apply = mlp((D, HIDDEN, K), activation="tanh")
    rng = np.random.default_rng(7)
    params = init(rng, (D,), dtype=np.float64)
    return apply, jax.tree_util.tree_map(
        lambda a: np.asarray(a) + 0.3 * rng.normal(size=a.shape), params
    )


def data_set():
    """``X (N, D)`` and regression targets ``y (N, K)``, fixed."""
    rng = np.random.default_rng(11)
    return rng.normal(size=(N, D)), rng.normal(size=(N, K))


def shard(layout, rank):
    return slice(LAYOUTS[layout][rank], LAYOUTS[layout][rank + 1])


def measure(models, layout, rank):
    """The measures on process ``rank``'s shard under ``layout``, as a dict of arrays."""
    apply, params = model()
    X, y = data_set()
    Xr, yr = X[shard(layout, rank)], y[shard(layout, rank)]
    cuts = BATCH_CUTS[layout][rank]
    batches = list(zip(np.split(Xr, cuts), np.split(yr, cuts)))
    kw = {"params": params, "chunk_size": CHUNK}
    gc = models.geometric_complexity(apply, Xr, per_example=True, **kw)
    terms = models.igr_terms(apply, batches, LOSS, **kw)
    return {
        "gc": gc.value,
        "gc_per_example": gc.per_example,
        "loss_grad": models.loss_grad(apply, batches, LOSS, **kw),
        "igr": [terms.loss, terms.full_batch, terms.mini_batch, terms.per_example],
        "igr_counts": [terms.n_examples, terms.n_batches],
        # Per-example values are local: an empty shard has none (T = 4 parameter leaves).
        "loss_grad_sq_norms": (
            models.loss_grad_sq_norms(apply, (Xr, yr), LOSS, **kw).per_parameter
            if Xr.shape[0] else np.zeros((0, 2 * 2))
        ),
    }


def mismatch_refused(models, rank):
    """1 if ``igr_terms`` refuses process 0 passing three mini-batches against process 1's two."""
    apply, params = model()
    X, y = data_set()
    batches = [(X[i : i + 2], y[i : i + 2]) for i in range(0, 6 if rank == 0 else 4, 2)]
    try:
        models.igr_terms(apply, batches, LOSS, params=params, chunk_size=CHUNK)
    except ValueError as error:
        return float("same number of mini-batches" in str(error))
    return 0.0


def run_rank(out_dir):
    """Body of one process: coordinator from the environment, results to ``out_dir``."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    rank = int(os.environ["JAX_RANK"])
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR"], num_processes=WORLD,
        process_id=rank, initialization_timeout=60,
    )
    from gcref import models

    try:
        assert jax.process_count() == WORLD and len(jax.local_devices()) == 1
        results = {}
        for layout in LAYOUTS:
            for name, value in measure(models, layout, rank).items():
                results[f"{layout}/{name}"] = np.asarray(value, dtype=np.float64)
        results["mismatch_refused"] = np.float64(mismatch_refused(models, rank))
    finally:
        jax.distributed.shutdown()
    np.savez(Path(out_dir) / f"rank{rank}.npz", **results)


# -- the test ---------------------------------------------------------------------------------
def run_ranks(out_dir):
    """Start the processes, wait (``RANK_TIMEOUT_S``), fail with their stderr if any fails."""
    procs = start(__file__, [out_dir], WORLD, jax_env(), rank_variable="JAX_RANK")
    wait_all(procs, RANK_TIMEOUT_S)
    return [dict(np.load(Path(out_dir) / f"rank{r}.npz")) for r in range(WORLD)]


def single_process(models, layout):
    """The same measures by this process alone over the whole data set."""
    apply, params = model()
    X, y = data_set()
    parts = [np.split(np.arange(N)[shard(layout, r)], BATCH_CUTS[layout][r]) for r in range(WORLD)]
    unions = [(X[idx], y[idx]) for idx in (np.concatenate(pieces) for pieces in zip(*parts))]
    kw = {"params": params, "chunk_size": CHUNK}
    gc = models.geometric_complexity(apply, X, per_example=True, **kw)
    terms = models.igr_terms(apply, unions, LOSS, **kw)
    return {
        "gc": gc.value,
        "gc_per_example": gc.per_example,
        "loss_grad": models.loss_grad(apply, (X, y), LOSS, **kw),
        "igr": [terms.loss, terms.full_batch, terms.mini_batch, terms.per_example],
        "igr_counts": [N, len(unions)],
        "loss_grad_sq_norms": models.loss_grad_sq_norms(apply, (X, y), LOSS, **kw).per_parameter,
    }


#: Per-example results are each process's own examples; the others are data-set values.
PER_EXAMPLE = ("gc_per_example", "loss_grad_sq_norms")


def test_two_jax_processes_give_the_single_process_values(tmp_path):
    from conftest import require_backend

    require_backend("jax")
    from gcref import models

    ranks = run_ranks(tmp_path)
    assert [float(r["mismatch_refused"]) for r in ranks] == [1.0] * WORLD
    for layout in LAYOUTS:
        expected = single_process(models, layout)
        for name, want in expected.items():
            want = np.asarray(want, dtype=np.float64)
            for rank, results in enumerate(ranks):
                want_here = want[shard(layout, rank)] if name in PER_EXAMPLE else want
                got = results[f"{layout}/{name}"]
                assert got.shape == want_here.shape, (name, layout, rank)
                scale = np.max(np.abs(want_here), initial=0.0)
                np.testing.assert_allclose(
                    got, want_here, rtol=RTOL, atol=RTOL * scale,
                    err_msg=f"{name}, {layout} shards, process {rank}",
                )


if __name__ == "__main__":
    run_rank(sys.argv[1])
