"""``gcref compare``: the JSON contract, exit codes, planted deviations, the console script.

The full comparison runs once per dtype (module-scoped fixtures); the planted-error tests
run on ``numpy`` and ``autograd`` only, which are fast and enough to show that a 1%
deviation or a raising row turns the exit status to 1.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gcref
from gcref.cli import main
from gcref.comparison import runner
from gcref.comparison.registry import ROWS

from conftest import require_backend

CORE_QUANTITIES = [
    "forward",
    "input_jacobian",
    "input_vjp",
    "hidden_jacobians",
    "sensitivities",
    "param_jacobian",
    "param_grad_sq_norms",
    "loss_grad_sq_norms",
    "per_example_loss",
    "mean_loss",
    "residuals",
    "loss_sensitivities",
    "loss_grad",
    "loss_hvp",
]
ROW_KEYS = {"quantity", "backend", "value", "max_rel_dev", "seconds"}


def run_main(argv):
    """``main(argv)`` with its stdout and stderr captured: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def run_compare_json(tmp_path, *options):
    path = tmp_path / "compare.json"
    status, stdout, stderr = run_main(["compare", "--json", str(path), *options])
    with open(path, encoding="utf-8") as fh:
        return status, json.load(fh), stdout, stderr


def expected_backends():
    for name in gcref.backend_names():
        require_backend(name)
    return gcref.available_backends()


@pytest.fixture(scope="module", params=["float64", "float32"], ids=lambda d: f"dtype={d}")
def full_run(request, tmp_path_factory):
    """The default comparison in every backend: (dtype, status, json, stdout, rows).

    ``rows`` are the names registered when it ran (feature modules register their own).
    """
    options = ["--dtype", request.param]
    if request.param == "float32":
        # The float32 run checks the dtype plumbing and the float32 tolerance; the core
        # rows suffice for that, and every row again in eager JAX would double this
        # file's share of the CI budget.
        options += ["--quantities", ",".join(CORE_QUANTITIES)]
    status, data, stdout, _ = run_compare_json(tmp_path_factory.mktemp(request.param), *options)
    return request.param, status, data, stdout, set(runner.load_rows()[0])


def test_default_compare_passes_with_exact_json_shape(full_run):
    dtype, status, data, stdout, _ = full_run
    assert status == 0, stdout
    assert set(data) == {"ok", "tolerance", "backends", "rows"}
    assert data["ok"] is True
    assert data["tolerance"] == gcref.tolerance(dtype)[0]
    assert data["backends"] == expected_backends()
    for r in data["rows"]:
        assert set(r) == ROW_KEYS
        assert isinstance(r["quantity"], str) and isinstance(r["backend"], str)
        assert isinstance(r["value"], (float, list))
        assert isinstance(r["max_rel_dev"], float) and isinstance(r["seconds"], float)
        assert 0.0 <= r["max_rel_dev"] <= data["tolerance"] and r["seconds"] >= 0.0
    assert stdout.rstrip().splitlines()[-1].startswith("OK")


def test_one_row_per_quantity_and_backend(full_run):
    _, _, data, _, registered = full_run
    pairs = [(r["quantity"], r["backend"]) for r in data["rows"]]
    assert len(pairs) == len(set(pairs))
    quantities = list(dict.fromkeys(q for q, _ in pairs))
    assert set(CORE_QUANTITIES) <= set(quantities)
    # Feature modules may appear while the suite runs; a probe row checks "every row" below.
    assert set(quantities) <= registered
    assert set(pairs) == {(q, b) for q in quantities for b in data["backends"]}


def test_reported_deviations_and_values_are_those_of_the_json(full_run):
    """Recompute each deviation from the JSON values; check array shapes and a loss by hand."""
    dtype, _, data, _, _ = full_run
    rtol, atol = gcref.tolerance(dtype)
    reference = {r["quantity"]: np.asarray(r["value"]) for r in data["rows"] if r["backend"] == "numpy"}
    for r in data["rows"]:
        ref = reference[r["quantity"]]
        dev = np.max(np.abs(np.asarray(r["value"]) - ref)) / max(np.max(np.abs(ref)), atol / rtol)
        assert r["max_rel_dev"] == pytest.approx(dev, rel=1e-12, abs=1e-300)

    problem = runner.default_problem(dtype=np.dtype(dtype))
    n, d = problem.X.shape
    k = problem.mlp.output_dim
    assert reference["input_jacobian"].shape == (n, k, d)
    assert reference["residuals"].shape == (n, k)
    assert reference["loss_grad"].shape == (problem.mlp.n_params,)
    assert reference["param_grad_sq_norms"].shape == (n, 2 * problem.mlp.depth)
    # The squared loss by a loop over examples and layers, in float64.
    losses = []
    for x, y in zip(problem.X.astype(np.float64), problem.y.astype(np.float64)):
        h = x
        for i, (W, b) in enumerate(problem.params):
            z = W.astype(np.float64) @ h + b
            h = z if i == problem.mlp.depth - 1 else np.tanh(z)
        losses.append(0.5 * np.sum((h - y) ** 2))
    assert float(reference["mean_loss"]) == pytest.approx(np.mean(losses), rel=10 * rtol)
    assert reference["per_example_loss"] == pytest.approx(np.array(losses), rel=10 * rtol, abs=atol)


def test_default_problem_is_deterministic_in_the_seed():
    a, b, c = (runner.default_problem(seed=s) for s in (3, 3, 4))
    assert np.array_equal(a.X, b.X) and np.array_equal(a.y, b.y)
    assert np.array_equal(gcref.flatten_params(a.params), gcref.flatten_params(b.params))
    assert np.array_equal(gcref.flatten_params(a.direction), gcref.flatten_params(b.direction))
    assert np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.X, c.X)
    assert a.labels.min() >= 0 and a.labels.max() < a.mlp.output_dim
    assert a.y.shape == (a.X.shape[0], a.mlp.output_dim) and a.loss == "squared"


@pytest.fixture
def planted(monkeypatch):
    """Replace a registered row by ``wrap(original)``; return the function that does it."""
    runner.load_rows()

    def plant(quantity, wrap):
        monkeypatch.setitem(ROWS, quantity, wrap(ROWS[quantity]))

    require_backend("autograd")
    return plant


def test_planted_one_percent_deviation_fails(planted, monkeypatch, tmp_path):
    def one_percent_off(original):
        return lambda p, backend: original(p, backend) * (1.01 if backend == "autograd" else 1.0)

    planted("loss_grad", one_percent_off)
    monkeypatch.setitem(ROWS, "probe_row", lambda p, backend: np.ones(3))
    status, data, stdout, _ = run_compare_json(tmp_path, "--backends", "numpy,autograd")
    assert {r["backend"] for r in data["rows"] if r["quantity"] == "probe_row"} == {"numpy", "autograd"}
    assert status == 1
    assert data["ok"] is False
    bad = [r for r in data["rows"] if r["max_rel_dev"] > data["tolerance"]]
    assert [(r["quantity"], r["backend"]) for r in bad] == [("loss_grad", "autograd")]
    assert bad[0]["max_rel_dev"] == pytest.approx(0.01, rel=1e-6)
    last = stdout.rstrip().splitlines()[-1]
    assert last.startswith("FAILED") and "loss_grad[autograd]" in last

    status, data, _, _ = run_compare_json(tmp_path, "--backends", "numpy,autograd", "--tolerance", "0.02")
    assert status == 0 and data["ok"] is True and data["tolerance"] == 0.02


def test_a_raising_row_is_reported_failed_not_a_crash(planted, tmp_path):
    def raise_in_autograd(original):
        def row(p, backend):
            if backend == "autograd":
                raise RuntimeError("planted failure")
            return original(p, backend)

        return row

    planted("loss_hvp", raise_in_autograd)
    status, data, stdout, _ = run_compare_json(tmp_path, "--backends", "numpy,autograd")
    assert status == 1 and data["ok"] is False
    (failed,) = [r for r in data["rows"] if "error" in r]
    assert (failed["quantity"], failed["backend"]) == ("loss_hvp", "autograd")
    assert failed["value"] is None and "planted failure" in failed["error"]
    assert "FAILED: RuntimeError: planted failure" in stdout
    assert len(data["rows"]) == 2 * len(runner.load_rows()[0])


@pytest.mark.parametrize(
    "options, mentions",
    [
        (["--backends", "numpy,tensorflow"], "tensorflow"),
        (["--activation", "swish"], "swish"),
        (["--sizes", "3"], "--sizes"),
        (["--sizes", "3,x,2"], "--sizes"),
        (["--dtype", "float16"], "float16"),
        (["--n-examples", "0"], "--n-examples"),
        (["--tolerance", "-1"], "--tolerance"),
        (["--seed", "-2"], "--seed"),
        (["--quantities", "curvature_of_nothing"], "curvature_of_nothing"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_options_exit_non_zero_with_a_clear_message(options, mentions):
    status, stdout, stderr = run_main(["compare", *options])
    assert status != 0
    assert "error:" in stderr and mentions in stderr
    assert "Traceback" not in stderr + stdout


def test_uninstalled_backend_says_how_to_install(monkeypatch):
    import gcref.backends as backends

    module, cls, _, extra = backends._BACKENDS["torch"]
    monkeypatch.setitem(backends._BACKENDS, "torch", (module, cls, "gcref_no_such_framework", extra))
    monkeypatch.delitem(backends._INSTANCES, "torch", raising=False)
    status, stdout, stderr = run_main(["compare", "--backends", "torch"])
    assert status != 0 and "pip install 'gcref[torch]'" in stderr
    assert "Traceback" not in stderr + stdout


def test_help_exits_zero():
    for argv in (["--help"], ["compare", "--help"]):
        status, stdout, _ = run_main(argv)
        assert status == 0 and "usage: gcref" in stdout


def test_console_script_prints_the_table():
    script = Path(sys.executable).parent / "gcref"
    assert script.exists(), f"console script not installed next to {sys.executable}"
    proc = subprocess.run(
        [str(script), "compare", "--backends", "numpy,autograd"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("quantity"))
    assert header.split() == ["quantity", "backend", "value", "max_rel_dev", "seconds"]
    for quantity in CORE_QUANTITIES:
        for backend in ("numpy", "autograd"):
            assert any(line.split()[:2] == [quantity, backend] for line in lines)
    assert lines[-1].startswith("OK")

    proc = subprocess.run(
        [sys.executable, "-m", "gcref", "compare", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "--json PATH" in proc.stdout
