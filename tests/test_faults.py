"""Faults in the data and in the other processes end a measure with an error (issue 16, item 5).

A data loader that raises part-way: every measure of :mod:`gcref.models` (with a
:class:`gcref.MLP` and with a torch module) and the MLP spellings of :mod:`gcref` let the
loader's own exception through, on the first pass or on a later one; nothing is
returned, so no partial sum is ever reported as the value of the whole data set.

Several processes (``torch.distributed``, gloo on the CPU): rank 1 fails before the first
collective, stalls after joining, or never joins the process group. Rank 0, measuring,
must then fail too, within the process group's timeout (5 s here) plus start-up, not
hang: the ranks run as subprocesses (``python tests/test_faults.py SCENARIO OUT_DIR``)
under a bounded wait, and rank 0 writes what it saw to ``OUT_DIR/rank0.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require_backend
from processes import gloo_env, start
from test_models_distributed import WORLD, data_set, module

import gcref
import gcref.models as gm

#: The process group's timeout in the ranks, and the test's bound on the whole run.
GROUP_TIMEOUT_S = 5
RUN_TIMEOUT_S = 120
#: How long rank 0 may take to fail after starting to measure: the group timeout plus
#: slack for a machine shared by many processes.
FAIL_WITHIN_S = GROUP_TIMEOUT_S + 25


class LoaderError(Exception):
    """The loader's own failure, which must reach the caller unchanged."""


class FlakyLoader:
    """Re-iterable batches that raise :class:`LoaderError` at batch ``fail_at`` of pass ``fail_on_pass``.

    Earlier passes, and the batches before ``fail_at``, are served normally, so a measure
    that reads the data twice (a gradient, then a Hessian-vector product) fails in its
    second pass.
    """

    def __init__(self, batches, fail_at, fail_on_pass=0):
        self.batches, self.fail_at, self.fail_on_pass = batches, fail_at, fail_on_pass
        self.passes = 0

    def __iter__(self):
        this_pass = self.passes
        self.passes += 1
        for i, batch in enumerate(self.batches):
            if this_pass == self.fail_on_pass and i == self.fail_at:
                raise LoaderError(f"disk read failed at batch {i} of pass {this_pass}")
            yield batch


# Each measure of gcref.models as a call on (model, data, params keyword).
N_PARAMS = 5 * 3 + 5 + 2 * 5 + 2
MEASURES = {
    "geometric_complexity": lambda m, d, kw: gm.geometric_complexity(m, d, **kw),
    "dirichlet_energy": lambda m, d, kw: gm.dirichlet_energy(m, d, **kw),
    "estimate_geometric_complexity": lambda m, d, kw: gm.estimate_geometric_complexity(
        m, d, np.random.default_rng(0), **kw
    ),
    "output_grad_sq_norms": lambda m, d, kw: gm.output_grad_sq_norms(m, d, **kw),
    "loss_grad_sq_norms": lambda m, d, kw: gm.loss_grad_sq_norms(m, d, "squared", **kw),
    "mean_loss": lambda m, d, kw: gm.mean_loss(m, d, "squared", **kw),
    "loss_grad": lambda m, d, kw: gm.loss_grad(m, d, "squared", **kw),
    "loss_hvp": lambda m, d, kw: gm.loss_hvp(m, d, "squared", np.ones(N_PARAMS), **kw),
    "igr_terms": lambda m, d, kw: gm.igr_terms(m, d, "squared", **kw),
    "modified_loss_gd": lambda m, d, kw: gm.modified_loss_gd(m, d, "squared", 0.1, **kw),
    "modified_loss_gd_grad": lambda m, d, kw: gm.modified_loss_gd_grad(m, d, "squared", 0.1, **kw),
    "modified_loss_per_example": lambda m, d, kw: gm.modified_loss_per_example(
        m, d, "squared", 0.1, **kw
    ),
    "modified_loss_per_example_grad": lambda m, d, kw: gm.modified_loss_per_example_grad(
        m, d, "squared", 0.1, **kw
    ),
    "modified_loss_sgd": lambda m, d, kw: gm.modified_loss_sgd(m, d, "squared", 0.1, **kw),
    "modified_loss_sgd_grad": lambda m, d, kw: gm.modified_loss_sgd_grad(m, d, "squared", 0.1, **kw),
}


def batches():
    """Four batches of three examples (X, y) of the shared distributed-test data set."""
    X, y, _ = data_set()
    return [(X[i : i + 3], y[i : i + 3]) for i in range(0, 12, 3)]


def the_mlp():
    """The MLP (3, 5, 2) with the torch module's architecture, and its parameters."""
    mlp = gcref.MLP((3, 5, 2), activation="tanh")
    return mlp, mlp.init(np.random.default_rng(3), bias="normal")


def model_and_keywords(kind):
    if kind == "mlp":
        mlp, params = the_mlp()
        return mlp, {"params": params}
    require_backend("torch")
    import torch

    return module(torch), {}


@pytest.mark.parametrize("fail_at", [0, 2])
@pytest.mark.parametrize("measure", sorted(MEASURES))
@pytest.mark.parametrize("kind", ["mlp", "torch"])
def test_a_loader_that_raises_ends_every_measure_with_its_error(kind, measure, fail_at):
    model, keywords = model_and_keywords(kind)
    loader = FlakyLoader(batches(), fail_at=fail_at)
    with pytest.raises(LoaderError, match=f"at batch {fail_at} of pass 0"):
        MEASURES[measure](model, loader, keywords)


@pytest.mark.parametrize("measure", sorted(MEASURES))
def test_a_loader_that_raises_in_a_later_pass_ends_the_measure_too(measure):
    model, keywords = model_and_keywords("mlp")
    loader = FlakyLoader(batches(), fail_at=1, fail_on_pass=1)
    try:
        value = MEASURES[measure](model, loader, keywords)
    except LoaderError as err:
        assert "of pass 1" in str(err)
        return
    # A one-pass measure never reads pass 1: it must then equal the value on a list.
    assert loader.passes == 1, f"{measure} read the data {loader.passes} times and returned"
    reference = MEASURES[measure](model, batches(), keywords)
    np.testing.assert_array_equal(np.asarray(_plain(value)), np.asarray(_plain(reference)))


def _plain(result):
    """A float, or the float array, of a measure's result for comparison."""
    for field in ("value", "per_example", "full_batch"):
        if hasattr(result, field):
            return getattr(result, field)
    return result


def test_a_torch_data_loader_whose_data_set_raises_ends_the_measure():
    require_backend("torch")
    import torch

    X, y, _ = data_set()

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return X.shape[0]

        def __getitem__(self, i):
            if i == 7:
                raise LoaderError(f"example {i} is unreadable")
            return torch.as_tensor(X[i]), torch.as_tensor(y[i])

    loader = torch.utils.data.DataLoader(Broken(), batch_size=3)
    with pytest.raises(LoaderError, match="example 7"):
        gm.loss_grad_sq_norms(module(torch), loader, "squared")
    with pytest.raises(LoaderError, match="example 7"):
        gm.geometric_complexity(module(torch), loader)


def test_the_mlp_functions_pass_the_loader_error_through():
    mlp, params = the_mlp()

    def loader():
        return FlakyLoader([X for X, _ in batches()], fail_at=2)

    with pytest.raises(LoaderError):
        gcref.geometric_complexity(mlp, params, loader())
    with pytest.raises(LoaderError):
        gcref.dirichlet_energy(mlp, params, loader())
    with pytest.raises(LoaderError):
        gcref.estimate_geometric_complexity(mlp, params, loader(), np.random.default_rng(0))


# -- several processes --------------------------------------------------------------------------

SCENARIOS = {
    "raises": "rank 1 raises before the first collective and exits",
    "stalls": "rank 1 joins the process group, then never calls the measure",
    "never_joins": "rank 1 never calls init_process_group",
}


def run_rank(scenario, out_dir):
    """One rank's body. Rank 0 measures; rank 1 misbehaves as ``scenario`` says."""
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    timeout = datetime.timedelta(seconds=GROUP_TIMEOUT_S)
    if rank == 1:
        if scenario == "never_joins":
            time.sleep(RUN_TIMEOUT_S)
            return
        dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timeout)
        if scenario == "raises":
            raise RuntimeError("rank 1 fails before the collective")
        time.sleep(RUN_TIMEOUT_S)
        return
    X, y, _ = data_set()
    record = {"completed": False, "error": None, "message": None}
    start = time.perf_counter()
    try:
        dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timeout)
        start = time.perf_counter()
        record["value"] = gm.loss_grad(module(torch), (X[:6], y[:6]), "squared").tolist()
        record["completed"] = True
    except Exception as err:  # noqa: BLE001 -- what rank 0 sees is the point of the test
        record["error"], record["message"] = type(err).__name__, str(err)[:400]
    record["elapsed_s"] = time.perf_counter() - start
    (Path(out_dir) / "rank0.json").write_text(json.dumps(record))
    os._exit(0)  # without waiting for a peer that may never answer


def start_ranks(scenario, out_dir):
    return start(__file__, [scenario, out_dir], WORLD, gloo_env(WORLD))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_rank_that_fails_or_never_arrives_makes_the_other_fail_in_time(scenario, tmp_path):
    require_backend("torch")
    procs = start_ranks(scenario, tmp_path)
    started = time.perf_counter()
    try:
        _, err = procs[0].communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        _, err = procs[0].communicate()
        pytest.fail(f"rank 0 hung for {RUN_TIMEOUT_S} s ({SCENARIOS[scenario]}):\n{err}")
    finally:
        for p in procs[1:]:
            p.kill()
            p.communicate()
    waited = time.perf_counter() - started
    assert procs[0].returncode == 0, err
    record = json.loads((tmp_path / "rank0.json").read_text())
    assert not record["completed"], f"rank 0 returned a value although {SCENARIOS[scenario]}"
    assert record["error"] is not None
    assert record["elapsed_s"] < FAIL_WITHIN_S, (record, waited)


if __name__ == "__main__":
    run_rank(sys.argv[1], sys.argv[2])
