"""Smoke tests of validation/: every registered experiment runs with --quick and leaves a
complete result.json (with every seed's run) and readable PNG figures, and a rerun resumes
from the runs already on disk. The verdict is recorded, not asserted."""

from __future__ import annotations

import json
import math
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

# validation/ sits beside the package at the repository root and is not installed with it.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import gcref  # noqa: E402
from conftest import require_backend  # noqa: E402
from validation import (  # noqa: E402
    _stats,
    arc_length,
    double_descent,
    experiment_names,
    load,
    min_norm,
    regularizers,
)
from validation.__main__ import main  # noqa: E402
from validation._report import VERDICTS, Runs, plain, write_json_atomically  # noqa: E402
from validation.cifar10 import (  # noqa: E402
    CHANNEL_MEAN,
    CHANNEL_STD,
    TEST_FILES,
    TRAIN_FILES,
    load_cifar10,
)

REQUIRED_KEYS = {
    "experiment", "claim", "source", "rule", "verdict", "setting", "settings", "seed", "seeds",
    "measured", "runs", "resumed_runs", "device", "figures", "versions", "machine", "date",
    "runtime_s",
}
REPO = pathlib.Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def numbers_in(value):
    """Every number nested anywhere in a JSON value."""
    if isinstance(value, dict):
        for v in value.values():
            yield from numbers_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from numbers_in(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@pytest.mark.parametrize("name", experiment_names())
def test_quick_run_writes_a_complete_result(name, tmp_path, capsys):
    assert main([name, "--quick", "--out", str(tmp_path), "--seed", "3"]) == 0
    assert f"{name}: " in capsys.readouterr().out
    result = json.loads((tmp_path / "result.json").read_text())

    assert REQUIRED_KEYS <= result.keys(), REQUIRED_KEYS - result.keys()
    assert result["experiment"] == name
    assert result["setting"] == "quick"
    assert result["seed"] == 3
    assert result["verdict"] in VERDICTS
    assert result["claim"] == load(name).CLAIM and result["claim"]
    assert result["rule"] and result["source"]
    assert {"python", "numpy", "gcref"} <= result["versions"].keys()
    numbers = list(numbers_in(result["measured"]))
    assert numbers, "an experiment must measure something"
    assert all(math.isfinite(x) for x in numbers)

    # Every (setting, seed) run is kept, in result.json and in its own file, and more than
    # one seed was run (the rules judge seed means with standard errors).
    assert len(result["runs"]) >= 2 and result["resumed_runs"] == []
    assert len(set(result["seeds"])) >= 2
    for key, record in result["runs"].items():
        stored = json.loads((tmp_path / "runs" / f"{key}.json").read_text())
        assert stored["record"] == record and stored["key"] == key
        swept = getattr(load(name), "SWEPT", ())
        assert stored["fingerprint"]["settings"] == {
            k: v for k, v in result["settings"].items() if k not in swept}
        assert not swept or swept[0] in result["settings"]
        assert all(math.isfinite(x) for x in numbers_in(record))

    assert result["figures"]
    for figure in result["figures"]:
        data = (tmp_path / figure).read_bytes()
        assert figure.endswith(".png") and data.startswith(PNG_SIGNATURE) and len(data) > 1000


@pytest.mark.parametrize("name", experiment_names())
def test_a_rerun_resumes_from_the_runs_on_disk(name, tmp_path, capsys):
    """An interrupted run, simulated: one run file holds a marked record (it must be reused,
    not recomputed), one is missing (it must be recomputed, to the same numbers) and one was
    written under other settings (it must be recomputed)."""
    argv = [name, "--quick", "--out", str(tmp_path), "--seed", "2"]
    assert main(argv) == 0
    first = json.loads((tmp_path / "result.json").read_text())
    keys = list(first["runs"])
    kept, missing, stale = keys[0], keys[-1], keys[1] if len(keys) > 2 else None
    runs = tmp_path / "runs"
    stored = json.loads((runs / f"{kept}.json").read_text())
    stored["record"]["marker"] = "written before the interruption"
    (runs / f"{kept}.json").write_text(json.dumps(stored))
    (runs / f"{missing}.json").unlink()
    if stale is not None:
        other = json.loads((runs / f"{stale}.json").read_text())
        other["fingerprint"]["settings"] = {"something": "else"}
        (runs / f"{stale}.json").write_text(json.dumps(other))

    assert main(argv) == 0
    assert "runs resumed" in capsys.readouterr().out
    second = json.loads((tmp_path / "result.json").read_text())
    assert second["runs"][kept]["marker"] == "written before the interruption"
    assert missing not in second["resumed_runs"] and kept in second["resumed_runs"]
    assert second["runs"][missing] == first["runs"][missing]
    assert (runs / f"{missing}.json").exists()
    if stale is not None:
        assert stale not in second["resumed_runs"] and "marker" not in second["runs"][stale]
        assert second["runs"][stale] == first["runs"][stale]
    assert len(second["resumed_runs"]) == len(keys) - 1 - (stale is not None)
    assert second["verdict"] == first["verdict"]
    assert not [p for p in runs.iterdir() if p.name.startswith(".tmp-")]


def test_an_extended_sweep_reuses_the_runs_already_done(tmp_path, monkeypatch):
    from validation import lr_sweep

    argv = ["lr_sweep", "--quick", "--out", str(tmp_path)]
    assert main(argv) == 0
    first = json.loads((tmp_path / "result.json").read_text())
    monkeypatch.setitem(lr_sweep.QUICK, "lrs", [*lr_sweep.QUICK["lrs"], 0.2])
    assert main(argv) == 0
    second = json.loads((tmp_path / "result.json").read_text())
    assert sorted(second["resumed_runs"]) == sorted(first["runs"])
    assert len(second["runs"]) == len(first["runs"]) + lr_sweep.QUICK["seeds"]
    assert len(second["measured"]["dirichlet_energy"]["mean"]) == 3
    # Any other setting does change what a run computes: nothing is reused.
    monkeypatch.setitem(lr_sweep.QUICK, "target_loss", 0.9)
    assert main(argv) == 0
    assert json.loads((tmp_path / "result.json").read_text())["resumed_runs"] == []


def test_runs_store_reuses_only_matching_records(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"value": np.float64(len(calls)), "table": np.arange(2)}

    runs = Runs(str(tmp_path), {"experiment": "x", "settings": {"a": 1}})
    assert runs.get("k=1,seed=2", compute) == {"value": 1.0, "table": [0, 1]}
    again = Runs(str(tmp_path), {"experiment": "x", "settings": {"a": 1}})
    assert again.get("k=1,seed=2", compute) == {"value": 1.0, "table": [0, 1]}
    assert len(calls) == 1 and again.resumed == ["k=1,seed=2"]
    other = Runs(str(tmp_path), {"experiment": "x", "settings": {"a": 2}})
    assert other.get("k=1,seed=2", compute)["value"] == 2.0 and other.resumed == []
    (tmp_path / "k=1,seed=2.json").write_text("{not json")  # a torn file is recomputed
    assert Runs(str(tmp_path), {"a": 3}).get("k=1,seed=2", compute)["value"] == 3.0
    with pytest.raises(ValueError, match="used twice"):
        other.get("k=1,seed=2", compute)
    for bad in ("", "a/b", "../up", "space here"):
        with pytest.raises(ValueError, match="run key"):
            other.get(bad, compute)
    with pytest.raises(ValueError, match="finite"):
        other.get("nan", lambda: {"x": float("nan")})
    assert not (tmp_path / "nan.json").exists()


def test_json_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    write_json_atomically(str(path), {"a": 1})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomically(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_seed_statistics():
    mean, se = _stats.mean_stderr([[1.0, 3.0], [2.0, 2.0]])
    np.testing.assert_allclose(mean, [2.0, 2.0])
    np.testing.assert_allclose(se, [1.0, 0.0])  # std(ddof=1) of (1, 3) is sqrt(2); / sqrt(2)
    # a < b counts only beyond 2 standard errors of the difference, sqrt(0.3^2 + 0.4^2) = 0.5.
    assert _stats.below(1.0, 0.3, 2.01, 0.4) and not _stats.below(1.0, 0.3, 1.99, 0.4)
    assert _stats.below_bound(1.0, 0.1, 1.21) and not _stats.below_bound(1.0, 0.1, 1.19)
    assert _stats.above_bound(1.0, 0.1, 0.79) and not _stats.above_bound(1.0, 0.1, 0.81)
    assert _stats.within(1.3, 0.1, 0.9, 1.1) and not _stats.within(1.31, 0.1, 0.9, 1.1)
    assert _stats.within(0.7, 0.1, 0.9, 1.1) and not _stats.within(0.69, 0.1, 0.9, 1.1)
    assert _stats.log_slope([1, 2, 4], [3, 12, 48]) == pytest.approx(2.0)
    assert _stats.run_seeds(5, 3) == [6, 7, 8]
    with pytest.raises(ValueError, match="at least 2"):
        _stats.run_seeds(0, 1)
    with pytest.raises(ValueError, match="at least 2"):
        _stats.mean_stderr([1.0])


def test_spearman_gives_ties_their_average_rank():
    """Against scipy's, which averages tied ranks; constant sequences have no correlation."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(5)
    for _ in range(20):
        a, b = rng.integers(0, 4, size=9), rng.integers(0, 4, size=9)  # many ties
        if np.ptp(a) and np.ptp(b):
            assert _stats.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert np.isnan(_stats.spearman([2.0, 2.0, 2.0], [1.0, 1.0, 1.0]))
    assert _stats.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_arc_length_yardstick_is_the_natural_splines_excess():
    """The spline of collinear points is their line (excess 0); any other interpolant is at
    least the polyline; a sampled parabola's spline is within its small discretisation of the
    parabola's own arc length, computed in closed form."""
    pytest.importorskip("scipy")
    x = np.array([0.0, 0.3, 0.5, 1.0])
    assert abs(arc_length.spline_excess(x, 2.0 * x - 1.0)) < 1e-12
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = np.sort(rng.uniform(0.0, 1.0, 8))
        assert arc_length.spline_excess(x, rng.normal(size=8)) >= -1e-9
    # y = x^2 on [0, 1]: length (2 sqrt 5 + asinh 2) / 4; 41 nodes put the natural spline
    # within 1e-4 of it (its end conditions y'' = 0 are wrong only near the ends).
    x = np.linspace(0.0, 1.0, 41)
    exact = (2 * np.sqrt(5) + np.arcsinh(2)) / 4
    polyline = np.sum(np.hypot(np.diff(x), np.diff(x**2)))
    assert abs(arc_length.spline_excess(x, x**2) - (exact - polyline) / polyline) < 1e-4


def test_arc_length_runs_stop_at_the_loss_target_or_report_that_they_missed_it():
    settings = {**arc_length.QUICK, "width": 8, "snapshots": 4}
    quiet = lambda *args: None  # noqa: E731
    reached = arc_length.one_run({**settings, "target_loss": 0.5}, 3, scale=1.0, lr=0.1,
                                 n_steps=300, progress=quiet, label="")
    assert reached["reached"] and reached["steps_run"] == reached["step"][-1] < 300
    assert reached["loss"][-1] <= 0.5 < max(reached["loss"][:-1], default=np.inf)
    missed = arc_length.one_run({**settings, "target_loss": 0.0}, 3, scale=1.0, lr=0.1,
                                n_steps=20, progress=quiet, label="")
    assert not missed["reached"] and missed["steps_run"] == missed["step"][-1] == 20


def test_arc_length_rule_leaves_out_the_runs_that_missed_the_target():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(0)

    def record(final, reached=True):
        x = np.sort(rng.uniform(0.0, 1.0, 10))
        return {"x": x, "y": np.sin(2 * np.pi * x), "reached": reached, "steps_run": 100,
                "residual_fraction": 0.01, "final_excess": final, "initial_excess": 0.6}

    near = [record(0.0 + 0.001 * i) for i in range(4)]
    judged = arc_length.judged(near + [record(5.0, reached=False)], [1, 2, 3, 4, 5])
    assert judged["n_reached"] == 4 and judged["not_reached"] == [5]
    assert judged["rule_holds"]  # the missed run's long function is not counted
    assert not arc_length.judged(near[:1] + [record(0.0, reached=False)], [1, 2])["rule_holds"]
    long = [record(1.0 + 0.01 * i) for i in range(4)]  # longer than the spline and the start
    assert not arc_length.judged(long, [1, 2, 3, 4])["rule_holds"]
    # A control is rejected by long interpolants, not by runs that never interpolated.
    assert arc_length.rejected(arc_length.judged(long, [1, 2, 3, 4]))
    assert not arc_length.rejected(arc_length.judged(near, [1, 2, 3, 4]))
    missed = [record(1.0, reached=False) for _ in range(4)]
    assert not arc_length.rejected(arc_length.judged(missed, [1, 2, 3, 4]))


@pytest.mark.parametrize("patience", [1, 2, 50])
def test_regularizers_runs_train_past_their_best_epoch_by_the_patience(patience):
    pytest.importorskip("sklearn")
    from validation._training import digits

    data = digits(np.random.default_rng(0))
    mlp = gcref.MLP([data[0].shape[1], 8, 10], activation="relu")
    settings = {**regularizers.QUICK, "patience": patience, "max_epochs": 30}
    r = regularizers.one_run(mlp, data, settings, "none", 0, 3)
    accuracies = r["curve"]["test_accuracy"]
    assert len(accuracies) == r["epochs_run"] + 1
    assert r["test_accuracy"] == max(accuracies) == accuracies[r["best_epoch"]]
    if r["past_peak"]:
        assert r["epochs_run"] - r["best_epoch"] == patience
    else:
        assert r["epochs_run"] == 30 and 30 - r["best_epoch"] < patience
    assert r["past_peak"] != (patience == 50)


@pytest.mark.parametrize("how", ["path", "module"])
def test_the_command_runs_from_any_directory(how, tmp_path):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    if how == "path":
        command = [sys.executable, str(REPO / "validation"), "--list"]
        env.pop("PYTHONPATH", None)
    else:
        command = [sys.executable, "-m", "validation", "--list"]
        env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.strip().splitlines()] == list(
        experiment_names())


@pytest.mark.parametrize("device", ["gpu", "cuda:x", ""])
def test_device_option_refuses_unknown_devices(device, tmp_path):
    with pytest.raises(SystemExit):
        main(["depth_at_init", "--quick", "--device", device, "--out", str(tmp_path)])
    assert not (tmp_path / "result.json").exists()


def test_list_prints_one_line_per_claim(capsys):
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(experiment_names())
    for line, name in zip(lines, experiment_names()):
        assert load(name).CLAIM in line


@pytest.mark.parametrize("argv", [[], ["--all", experiment_names()[0]], ["no_such_claim"]])
def test_command_line_rejects_ambiguous_or_unknown_requests(argv):
    with pytest.raises(SystemExit):
        main(argv)


@pytest.mark.parametrize("bad", [float("nan"), np.inf, [1.0, -np.inf], {"a": {"b": np.nan}}])
def test_results_refuse_non_finite_numbers(bad):
    with pytest.raises(ValueError, match="finite"):
        plain({"x": bad})


def test_results_convert_numpy_values_to_plain_json():
    out = plain({"a": np.float32(0.5), "b": np.arange(3), "c": np.bool_(True), "d": "text"})
    assert out == {"a": 0.5, "b": [0, 1, 2], "c": True, "d": "text"}
    assert type(out["b"][0]) is int and type(out["c"]) is bool


# --- CIFAR-10 loader -------------------------------------------------------------------

def write_batch(path, data, labels):
    """One batch file in the layout of the "CIFAR-10 python version"."""
    with open(path, "wb") as fh:
        pickle.dump({b"batch_label": b"test", b"data": data, b"labels": labels,
                     b"filenames": [b"x.png"] * len(labels)}, fh)


def write_cifar10(directory, per_batch=3, n_test=2, seed=0):
    """A complete tiny CIFAR-10 directory; returns the uint8 rows and labels written."""
    rng = np.random.default_rng(seed)
    written = {}
    for name in [*TRAIN_FILES, *TEST_FILES]:
        n = n_test if name in TEST_FILES else per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        write_batch(directory / name, data, labels)
        written[name] = (data, labels)
    return written


def pixel_by_pixel(rows):
    """Images (n, 3, 32, 32) from CIFAR rows, one pixel at a time: channel planes of 1024
    values, each a row-major 32 x 32 image."""
    images = np.zeros((len(rows), 3, 32, 32))
    for n, row in enumerate(rows):
        for c in range(3):
            for h in range(32):
                for w in range(32):
                    images[n, c, h, w] = row[c * 1024 + h * 32 + w] / 255
    return images


def test_cifar10_loader_reads_the_python_layout(tmp_path):
    written = write_cifar10(tmp_path)
    images, labels = load_cifar10(tmp_path)
    rows = np.concatenate([written[name][0] for name in TRAIN_FILES])
    assert images.shape == (15, 3, 32, 32) and images.dtype == np.float32
    assert labels.dtype == np.int64
    assert labels.tolist() == [v for name in TRAIN_FILES for v in written[name][1]]
    np.testing.assert_allclose(images, pixel_by_pixel(rows), rtol=1e-6)
    assert images.min() >= 0 and images.max() <= 1

    test_images, test_labels = load_cifar10(tmp_path, train=False)
    np.testing.assert_allclose(test_images, pixel_by_pixel(written["test_batch"][0]), rtol=1e-6)
    assert test_labels.tolist() == written["test_batch"][1]


def test_cifar10_loader_limits_and_normalises(tmp_path):
    write_cifar10(tmp_path)
    everything, all_labels = load_cifar10(tmp_path)
    # A limit inside the first two batches must not need the others.
    for name in TRAIN_FILES[2:]:
        (tmp_path / name).unlink()
    images, labels = load_cifar10(tmp_path, limit=5)
    np.testing.assert_array_equal(images, everything[:5])
    np.testing.assert_array_equal(labels, all_labels[:5])

    normalised, _ = load_cifar10(tmp_path, limit=4, normalize=True)
    for c in range(3):
        expected = (everything[:4, c] - CHANNEL_MEAN[c]) / CHANNEL_STD[c]
        np.testing.assert_allclose(normalised[:, c], expected, rtol=1e-5, atol=1e-6)


def test_cifar10_loader_refuses_missing_and_malformed_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10(tmp_path / "nowhere")
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="limit"):
        load_cifar10(tmp_path, limit=0)

    good = np.zeros((2, 3072), np.uint8)
    (tmp_path / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="not a pickled CIFAR-10 batch"):
        load_cifar10(tmp_path, train=False)
    malformed = [
        ({b"data": good}, "b'labels'"),
        (["a", "list"], "dict"),
        ({b"data": good.astype(np.float32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, r"\(n, 3072\)"),
        ({b"data": good, b"labels": [0, 1, 2]}, "2 integers"),
        ({b"data": good, b"labels": [0, 10]}, "0..9"),
        ({b"data": good, b"labels": [0.5, 1.0]}, "integers"),
    ]
    for batch, message in malformed:
        with open(tmp_path / "test_batch", "wb") as fh:
            pickle.dump(batch, fh)
        with pytest.raises(ValueError, match=message):
            load_cifar10(tmp_path, train=False)


def torch_models_ready():
    """Whether gcref.models can wrap a torch module (its torch adapter exists)."""
    torch = pytest.importorskip("torch")
    from gcref.models import wrap

    try:
        wrap(torch.nn.Linear(2, 2))
    except ImportError:
        return False
    return True


def test_lr_sweep_runs_a_resnet_on_a_local_cifar10_directory(tmp_path, capsys):
    if not torch_models_ready():
        pytest.skip("gcref.models has no torch adapter yet (gcref.backends.torch_model.TorchModel)")
    data = tmp_path / "cifar"
    data.mkdir()
    write_cifar10(data, per_batch=8, n_test=8)
    out = tmp_path / "out"
    assert main(["lr_sweep", "--quick", "--model", "resnet18", "--cifar10", str(data),
                 "--width", "2", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["settings"]["model"] == "resnet18" and result["settings"]["width"] == 2
    assert result["settings"]["cifar10"] == str(data)
    assert result["verdict"] in VERDICTS and "torch" in result["versions"]
    energies = result["measured"]["dirichlet_energy"]["mean"]
    assert len(energies) == len(result["settings"]["lrs"])
    assert all(math.isfinite(e) and e > 0 for e in energies)
    assert (out / "lr_sweep.png").read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("argv", [
    ["lr_sweep", "--cifar10", "somewhere"],
    ["lr_sweep", "--model", "resnet18"],
    ["lr_sweep", "--model", "resnet18", "--cifar10", "somewhere", "--width", "0"],
    ["lr_sweep", "--width", "4"],
])
def test_lr_sweep_refuses_options_that_do_not_go_together(argv, tmp_path):
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(tmp_path)])
    assert not (tmp_path / "result.json").exists()


# --- double_descent ----------------------------------------------------------------------

def test_double_descent_gradient_is_gcrefs():
    rng = np.random.default_rng(0)
    mlp = gcref.MLP([5, 7, 10], activation="relu")
    params = mlp.init(rng, "he_normal", bias="normal")
    X, Y = rng.normal(size=(9, 5)), rng.normal(size=(9, 10))
    ours = double_descent.squared_loss_grad(params, X, Y)
    theirs = gcref.loss_grad(mlp, params, X, Y, "squared")
    for mine, reference in zip((g for pair in ours for g in pair),
                               (g for pair in theirs for g in pair)):
        np.testing.assert_allclose(mine, reference, rtol=1e-12, atol=1e-14)


def test_double_descent_torch_adam_is_the_numpy_adam():
    require_backend("torch")
    rng = np.random.default_rng(2)
    mlp = gcref.MLP([5, 7, 10], activation="relu")
    params = mlp.init(rng, "he_normal", bias="normal")
    X, Y = rng.normal(size=(9, 5)), rng.normal(size=(9, 10))
    ours = double_descent.adam(params, X, Y, steps=25, lr=0.01)
    theirs = double_descent.adam_torch(params, X, Y, steps=25, lr=0.01, device="cpu")
    for mine, reference in zip((a for pair in ours for a in pair),
                               (a for pair in theirs for a in pair)):
        np.testing.assert_allclose(mine, reference, rtol=1e-10, atol=1e-12)
    moved = max(np.max(np.abs(a - b)) for pa, pb in zip(ours, params) for a, b in zip(pa, pb))
    assert moved > 1e-3  # the comparison is between trained parameters, not the start


def test_double_descent_flips_exactly_the_noisy_labels():
    rng = np.random.default_rng(1)
    X = np.arange(200.0)[:, None]
    labels = np.arange(200) % 10
    X_sub, noisy, flipped = double_descent.noisy_subset(X, labels, 50, 0.2, rng)
    original = labels[X_sub[:, 0].astype(int)]
    assert len(set(X_sub[:, 0])) == 50 and len(flipped) == 10
    changed = np.flatnonzero(noisy != original)
    assert sorted(changed) == sorted(flipped)
    assert noisy.min() >= 0 and noisy.max() <= 9


@pytest.mark.parametrize("means, spread, index, rise, significant", [
    ([0.5, 0.3, 0.45, 0.2, 0.1], 0.01, 2, 0.15, True),
    ([0.5, 0.3, 0.45, 0.2, 0.1], 0.2, 2, 0.15, False),  # a rise within 2 s.e. does not count
    ([0.5, 0.4, 0.3, 0.2, 0.1], 0.01, 1, -0.1, False),  # monotone: no peak
])
def test_double_descent_peak_counts_rises_beyond_two_standard_errors(means, spread, index,
                                                                     rise, significant):
    # Two seeds at mean +- spread: standard error exactly ``spread``.
    table = np.array([[m - spread, m + spread] for m in means])
    found = double_descent.peak(table)
    assert found["index"] == index and found["rise"] == pytest.approx(rise)
    assert found["significant"] is significant


# --- min_norm ------------------------------------------------------------------------------

def test_min_norm_gd_block_is_that_many_gd_steps():
    problem = min_norm.Problem(min_norm.FULL, np.random.default_rng(0))
    w = np.random.default_rng(1).normal(size=len(problem.w_plus))
    stepped = w.copy()
    for _ in range(min_norm.GD_BLOCK):
        stepped = stepped - problem.step * min_norm.loss_grad(problem.D, problem.y, stepped)
    np.testing.assert_allclose(problem.gd_block(w), stepped, rtol=1e-10,
                               atol=1e-10 * np.abs(stepped).max())
    # GD never moves the null-space component (its gradients lie in the row space).
    assert problem.null_norm(problem.gd_block(w)) == pytest.approx(problem.null_norm(w), rel=1e-10)


def test_min_norm_gradient_and_nmgd_step_are_gcrefs():
    from gcref.optimizers import NMGD

    rng = np.random.default_rng(4)
    degree = 6
    x = rng.uniform(-1, 1, 5)
    D, y = min_norm.features(x, degree), rng.normal(size=5)
    mlp = gcref.MLP((degree, 1), activation="identity")
    w = rng.normal(size=degree + 1)
    params = min_norm.as_params(w)
    (gW, gb), = gcref.loss_grad(mlp, params, D[:, 1:], y[:, None], "squared")
    np.testing.assert_allclose(min_norm.loss_grad(D, y, w), np.concatenate([gb, gW[0]]),
                               rtol=1e-12, atol=1e-14)
    optimizer = NMGD(0.1, 0.7, offset=1)
    for n in range(1, 4):
        grads = gcref.loss_grad(mlp, params, D[:, 1:], y[:, None], "squared")
        (W, b), = optimizer.update(mlp, params, grads, n)
        w, _ = min_norm.nmgd_step(w, min_norm.loss_grad(D, y, w), 0.1, 0.7, n, 1)
        np.testing.assert_allclose(w, np.concatenate([b, W[0]]), rtol=1e-12, atol=1e-14)
        params = ((W, b),)
