"""The benchmarks run: each one's quick mode, and the pieces whose values can be checked.

The benchmarks are measurements that print and never fail on a timing; these tests only
check that they run and that what they assert about values holds: every peer that is
installed agrees with gcref (no ``DISAGREES`` row), the Jacobian regulariser written from
its paper gives ``||W||_F^2 / 2`` on a linear map (seed 000, Remark 2), and the scaling
verdicts read proportional times and flat memory as such.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_backend

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name):
    """The benchmark script ``benchmarks/<name>.py`` as a module (the folder is no package).

    The folder goes on ``sys.path``, as it is when a script runs, for the helpers the
    scripts import (``paired``).
    """
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_jacobian_regulariser_of_a_linear_map_is_half_its_frobenius_norm():
    require_backend("torch")
    import torch

    mm = load("model_measures")
    rng = np.random.default_rng(0)
    W = torch.from_numpy(rng.standard_normal((mm.K, 5)))
    x = torch.from_numpy(rng.standard_normal((7, 5))).requires_grad_(True)
    f = x @ W.T
    eye = torch.eye(mm.K, dtype=f.dtype)
    one_hot = mm.jacobian_regulariser(torch, x, f, [eye[c].expand_as(f) for c in range(mm.K)])
    assert one_hot == pytest.approx(float(W.square().sum()) / 2, rel=1e-12)
    # One projection per example: (C / 2) mean_b ||v_b^T W||^2.
    v = torch.from_numpy(rng.standard_normal((7, mm.K)))
    projected = mm.jacobian_regulariser(torch, x, x @ W.T, [v])
    assert projected == pytest.approx(mm.K / 2 * float((v @ W).square().sum(1).mean()), rel=1e-12)


def test_model_measures_quick_runs_and_every_peer_agrees_with_gcref(capsys):
    require_backend("torch")
    mm = load("model_measures")
    mm.main(["--quick", "--models", "mlp", "--n", "16", "--batch-size", "8"])
    out = capsys.readouterr().out
    assert "DISAGREES" not in out
    rows = [line for line in out.splitlines() if "gcref at least as fast" not in line]
    for label in ("BackPACK BatchL2Grad", "Opacus GradSampleModule", "Opacus ghost norms",
                  "curvlinops Hessian", "Jacobian regulariser one-hot", "Jacobian regulariser 1 proj",
                  "double backward per chunk", "torch.func jvp(grad)"):
        (row,) = [line for line in rows if label in line]
        # A time with its ratio and relative difference, or the reason it has none.
        assert re.search(r"\d\.\de-\d\d$", row) or "skipped:" in row or "refuses" in row, row
    assert "gcref at least as fast as every alternative, within this run's resolution:" in out


def test_median_interval_has_its_coverage_by_brute_force():
    """The interval's rank d against the binomial probabilities summed by enumeration."""
    import itertools

    paired = load("paired")
    for n in (6, 7, 10, 13):
        low, high = paired.median_interval(list(range(n)))  # the ranks themselves
        d = int(low) + 1
        assert high == n - d
        # P(the median lies outside [x_(d), x_(n+1-d)]) = 2 P(B <= d - 1): count the sign
        # patterns of n draws with fewer than d draws below the median.
        below = sum(1 for signs in itertools.product((0, 1), repeat=n) if sum(signs) < d)
        assert 2 * below / 2**n <= 0.05
        # One rank further in would break the level.
        wider = sum(1 for signs in itertools.product((0, 1), repeat=n) if sum(signs) < d + 1)
        assert 2 * wider / 2**n > 0.05
    # Too few values for 95%: the whole range.
    assert paired.median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)
    assert [paired.enough(n) for n in (1, 5, 6)] == [False, False, True]
    with pytest.raises(ValueError, match="at least one value"):
        paired.median_interval([])
    with pytest.raises(ValueError, match="finite ratios"):
        paired.median_interval([1.0, float("nan"), 2.0, 3.0, 4.0, 5.0])


def test_judged_calls_gcref_slower_only_when_the_interval_lies_below_one():
    paired = load("paired")
    assert paired.judged([0.90, 0.92, 0.95, 0.93, 0.91, 0.94, 0.96, 0.97]) == "slower"
    assert paired.judged([1.10, 1.02, 1.05, 1.03, 1.08, 1.04, 1.06, 1.01]) == "faster"
    assert paired.judged([0.90, 1.10, 0.95, 1.05, 0.97, 1.02, 0.99, 1.01]) == "level"
    # Too few pairs for a 95% interval: no verdict either way.
    assert paired.judged([0.9] * 5) == "level" and paired.judged([1.1]) == "level"
    assert paired.judged([0.9] * 6) == "slower"


def test_jax_measures_quick_runs_and_every_alternative_agrees_with_gcref(capsys):
    require_backend("jax")
    require_backend("torch")
    load("jax_measures").main(["--quick", "--measures", "grad norms", "1-probe GC", "--at-once"])
    out = capsys.readouterr().out
    assert "DISAGREES" not in out
    for label in ("jit(vmap(grad))", "jitted VJP", "torch adapter", "gcref vmap", "gcref at once"):
        assert label in out
    assert re.search(r"(95%|range) \d\.\d{3}-\d\.\d{3}", out)  # one round: the range
    assert "JAX adapter at least as fast as every plain-JAX alternative" in out


def test_per_example_norms_quick_runs(capsys):
    require_backend("torch")
    require_backend("autograd")
    load("per_example_norms").main(["--quick", "--n", "8", "--dtypes", "float64"])
    out = capsys.readouterr().out
    assert "goals:" in out


def test_fixed_cost_runs_and_checks_that_gcref_and_bare_torch_agree(capsys):
    require_backend("torch")
    load("fixed_cost").main(["--pairs", "1", "--calls", "1"])
    out = capsys.readouterr().out
    for name in ("1-probe GC", "HVP", "grad norms"):
        assert name in out


def test_linearity_reads_proportional_times_as_linear():
    sc = load("scaling")
    sizes = [10, 100, 1000]
    assert sc.linearity(sizes, [0.5 * n for n in sizes]) == pytest.approx((1.0, 0.0), abs=1e-12)
    slope, worst = sc.linearity(sizes, [1.0, 1.0, 1.0])
    assert slope == pytest.approx(0.0, abs=1e-12)
    assert worst == pytest.approx(99.0)


def test_scaling_memory_child_reports_each_measure(capsys):
    require_backend("torch")
    import json

    sc = load("scaling")
    sc.memory_child(16, 4, 8, 0, 4)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 16
    assert set(result["peak_mib"]) == set(sc.MEASURES)
    assert all(peak > 0 for peak in result["peak_mib"].values())
    if result["per_measure"]:
        # Linux batches each thread's RSS count (64 pages at a time, "split RSS counting"),
        # so VmRSS read at the start may run ahead of the peak by a few pages per thread.
        slack_mib = 64 * 4096 * os.cpu_count() * 4 / 2**20
        assert all(result["peak_mib"][m] >= result["start_mib"][m] - slack_mib for m in sc.MEASURES)


def test_scaling_tables_and_plot_give_the_verdicts(tmp_path):
    pytest.importorskip("matplotlib")
    sc = load("scaling")
    sizes, widths = [10, 100], [4, 8]
    by_n = {m: [0.01 * n for n in sizes] for m in sc.MEASURES}
    by_n["loss_hvp"] = [0.5, 1.0]  # fixed cost: not linear
    by_width = {m: [0.1, 0.4] for m in sc.MEASURES}
    memory = [{"n": n, "per_measure": True, "peak_mib": dict.fromkeys(sc.MEASURES, 100.0)}
              for n in sizes]
    memory[1]["peak_mib"]["GC exact"] = 150.0  # grows by half: not flat
    text, met = sc.tables(sizes, by_n, widths, by_width, 100, memory, 8)
    assert not met
    verdicts = [(line.split(" | ")[0][2:], line.rstrip(" |").rsplit(" | ", 1)[1])
                for line in text.splitlines() if line.endswith(("PASS |", "MISS |"))]
    misses = [measure for measure, verdict in verdicts if verdict == "MISS"]
    assert len(verdicts) == 2 * len(sc.MEASURES)
    assert misses == ["loss_hvp", "GC exact"]
    path = tmp_path / "scaling.png"
    sc.plot(path, sizes, by_n, widths, by_width, 100, memory, "test")
    assert path.stat().st_size > 0


def test_scaling_paired_verdict_reads_the_paired_medians():
    sc = load("scaling")
    sizes, widths = [10, 100, 1000], [4, 8]
    # The medians over rounds look far from linear (a fixed cost) for every measure ...
    by_n = {m: [1.0, 1.5, 10.0] for m in sc.MEASURES}
    by_width = {m: [0.1, 0.4] for m in sc.MEASURES}
    memory = [{"n": n, "per_measure": True, "peak_mib": dict.fromkeys(sc.MEASURES, 100.0)}
              for n in sizes]
    # ... but the pairs say linear within 10%, except for igr_terms at the middle size.
    paired = {m: [(1.05, 1.0, 1.1), (0.93, 0.9, 0.95)] for m in sc.MEASURES}
    paired["igr_terms"] = [(1.02, 1.0, 1.04), (1.12, 1.1, 1.2)]
    text, met = sc.tables(sizes, by_n, widths, by_width, 100, memory, 8, paired=paired)
    assert not met
    rows = [line for line in text.splitlines() if line.endswith(("PASS |", "MISS |"))]
    time_rows = rows[: len(sc.MEASURES)]
    assert [row.split(" | ")[0][2:] for row in time_rows if row.endswith("MISS |")] == ["igr_terms"]
    assert "1.120 [1.100, 1.200]" in text
    _, met_rounds = sc.tables(sizes, by_n, widths, by_width, 100, memory, 8)
    assert not met_rounds


def test_scaling_paired_sweep_times_each_measure_against_the_largest_size():
    require_backend("torch")
    sc = load("scaling")
    lines = []
    out = sc.paired_sweep(4, [8, 32], 8, 2, 0, "cpu", lines.append)
    assert set(out) == set(sc.MEASURES)
    for m in sc.MEASURES:
        ((median, q1, q3),) = out[m]
        assert 0 < q1 <= median <= q3
    assert len(lines) == len(sc.MEASURES)


def test_a_missing_peer_is_skipped_with_a_line_that_says_so(monkeypatch):
    require_backend("torch")
    mm = load("model_measures")
    monkeypatch.setitem(mm.PEERS, "BackPACK", ("gcref_no_such_module", "backpack-for-pytorch"))
    ((measure, _, run),) = mm.backpack_methods(None, None, None, 8)
    assert measure == "grad norms"
    with pytest.raises(mm.PeerUnavailable, match="skipped: BackPACK not installed"):
        run(8)
