"""``gcref compare``: the JSON contract, exit codes, planted deviations, the console script.

The full comparison runs once per dtype (module-scoped fixtures); the planted-error tests
run on ``numpy`` and ``autograd`` only, which are fast and enough to show that a 1%
deviation or a raising row turns the exit status to 1. Model backends (users' models) are
checked on the full run, and their mechanics with a planted NumPy "model".
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gcref
from gcref.cli import main
from gcref.comparison import runner
from gcref.comparison.registry import MODEL_BACKENDS, MODEL_ROWS, ROWS, ModelBackend

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
# The quantities gcref.models computes for a torch module and a JAX function (issue 11).
MODEL_QUANTITIES = [
    "geometric_complexity",
    "dirichlet_energy",
    "geometric_complexity_estimate",
    "param_grad_sq_norms_total",
    "loss_grad_sq_norms_total",
    "igr_terms",
    "modified_loss_gd",
    "modified_loss_sgd",
    "modified_loss_per_example",
    "loss_hvp",
]
MODEL_FRAMEWORKS = {"torch-module": "torch", "jax-function": "jax"}


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
    """The gcref backends then the model backends a default run evaluates."""
    for name in gcref.backend_names():
        require_backend(name)
    installed = gcref.available_backends()
    return installed + [m for m, framework in MODEL_FRAMEWORKS.items() if framework in installed]


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
    mlp_backends = [b for b in data["backends"] if b not in MODEL_FRAMEWORKS]
    model_backends = [b for b in data["backends"] if b in MODEL_FRAMEWORKS]
    expected = {(q, b) for q in quantities for b in mlp_backends}
    expected |= {(q, b) for q in quantities if q in MODEL_ROWS for b in model_backends}
    assert set(pairs) == expected


def test_users_models_have_a_row_for_each_models_quantity(full_run):
    """Each gcref.models measure of the torch module and the JAX function, against numpy."""
    dtype, _, data, _, _ = full_run
    assert set(MODEL_QUANTITIES) <= set(MODEL_ROWS)
    evaluated = {r["quantity"] for r in data["rows"]}
    rows = {(r["quantity"], r["backend"]): r for r in data["rows"]}
    for backend in MODEL_FRAMEWORKS:
        assert backend in data["backends"]
        for quantity in MODEL_QUANTITIES if dtype == "float64" else sorted(evaluated & set(MODEL_ROWS)):
            r = rows[(quantity, backend)]
            assert "error" not in r and r["max_rel_dev"] <= data["tolerance"], r
            numpy_value = np.asarray(rows[(quantity, "numpy")]["value"])
            assert np.shape(r["value"]) == numpy_value.shape


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


@pytest.fixture
def numpy_model(monkeypatch):
    """A model backend ``numpy-model`` whose "model" is the MLP itself, as a NumPy closure.

    Its model row ``mean_loss`` evaluates the squared loss by a loop over the examples;
    ``scale`` multiplies it (1.0: the true value), and ``built`` counts the builds.
    """
    runner.load_rows()
    state = {"scale": 1.0, "built": 0}

    def build(problem):
        state["built"] += 1

        def apply(params, x):
            return gcref.predict(problem.mlp, params, x)

        return apply, problem.params

    def loop_mean_loss(p, model, params):
        losses = [0.5 * np.sum((model(params, x[None])[0] - y) ** 2) for x, y in zip(p.X, p.y)]
        return state["scale"] * np.mean(losses)

    monkeypatch.setitem(MODEL_BACKENDS, "numpy-model", ModelBackend("numpy-model", "numpy", "a loop", build))
    monkeypatch.setitem(MODEL_ROWS, "mean_loss", loop_mean_loss)
    return state


def test_a_model_backend_is_compared_with_the_numpy_value_of_its_quantity(numpy_model, tmp_path):
    status, data, stdout, _ = run_compare_json(
        tmp_path, "--backends", "numpy,numpy-model", "--quantities", "mean_loss,residuals"
    )
    assert status == 0 and data["backends"] == ["numpy", "numpy-model"]
    assert [(r["quantity"], r["backend"]) for r in data["rows"]] == [
        ("mean_loss", "numpy"), ("mean_loss", "numpy-model"), ("residuals", "numpy"),
    ]
    assert data["rows"][1]["value"] == pytest.approx(data["rows"][0]["value"], rel=1e-12)
    assert numpy_model["built"] == 1

    numpy_model["scale"] = 1.01
    status, data, stdout, _ = run_compare_json(
        tmp_path, "--backends", "numpy,numpy-model", "--quantities", "mean_loss"
    )
    assert status == 1 and data["rows"][1]["max_rel_dev"] == pytest.approx(0.01, rel=1e-6)
    assert "mean_loss[numpy-model]" in stdout.rstrip().splitlines()[-1]


def test_a_model_that_cannot_be_built_fails_its_rows_not_the_run(numpy_model, monkeypatch, tmp_path):
    def broken(problem):
        raise RuntimeError("planted build failure")

    monkeypatch.setitem(MODEL_BACKENDS, "numpy-model", ModelBackend("numpy-model", "numpy", "", broken))
    status, data, stdout, _ = run_compare_json(
        tmp_path, "--backends", "numpy,numpy-model", "--quantities", "mean_loss,residuals"
    )
    assert status == 1
    (failed,) = [r for r in data["rows"] if "error" in r]
    assert (failed["quantity"], failed["backend"]) == ("mean_loss", "numpy-model")
    assert "planted build failure" in failed["error"] and failed["value"] is None
    assert [r["max_rel_dev"] for r in data["rows"] if r["backend"] == "numpy"] == [0.0, 0.0]


def test_timings_exclude_one_warm_up_call(monkeypatch, numpy_model, tmp_path):
    """A row whose first call per backend is slow (as a JIT compilation) is timed fast."""
    calls = {}

    def first_call_slow(key):
        calls[key] = calls.get(key, 0) + 1
        if calls[key] == 1:
            time.sleep(0.5)
        return np.ones(2)

    monkeypatch.setitem(ROWS, "probe_row", lambda p, backend: first_call_slow(backend))
    monkeypatch.setitem(MODEL_ROWS, "probe_row", lambda p, model, params: first_call_slow("model"))
    for repeats in (1, 3):
        calls.clear()
        status, data, _, _ = run_compare_json(
            tmp_path, "--backends", "numpy,numpy-model", "--quantities", "probe_row",
            "--repeats", str(repeats),
        )
        assert status == 0
        assert calls == {"numpy": repeats + 1, "model": repeats + 1}
        assert len(data["rows"]) == 2
        assert all(r["seconds"] < 0.25 for r in data["rows"]), data["rows"]


def test_help_lists_every_quantity_the_backends_and_the_notation():
    status, stdout, _ = run_main(["compare", "--help"])
    assert status == 0
    listed = {}
    for line in stdout.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "*":
            listed[words[1]] = True
        elif words and words[0] in ROWS:
            listed.setdefault(words[0], False)
    assert set(listed) == set(runner.load_rows()[0])
    assert {q for q, marked in listed.items() if marked} == set(MODEL_ROWS) & set(listed)
    for backend in [*gcref.backend_names(), *MODEL_FRAMEWORKS]:
        assert backend in stdout
    assert "mlp_module(mlp, params)" in stdout and "mlp_apply_from_gcref(mlp, params)" in stdout
    assert "|.|=norm" in stdout and "warm-up" in stdout and "max_rel_dev:" in stdout


def test_the_table_is_followed_by_a_line_explaining_its_columns():
    status, stdout, _ = run_main(["compare", "--backends", "numpy", "--quantities", "mean_loss,residuals"])
    lines = stdout.rstrip().splitlines()
    assert status == 0 and lines[-1].startswith("OK")
    assert lines[-2].startswith("value: a scalar, or [shape] |.|=Euclidean norm")
    assert "after a warm-up call" in lines[-2]
    assert any(line.split()[:2] == ["residuals", "numpy"] and "|.|=" in line for line in lines)


@pytest.mark.parametrize(
    "options, mentions",
    [
        (["--backends", "numpy,tensorflow"], "tensorflow"),
        (["--backends", "numpy,keras-model"], "torch-module"),
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
