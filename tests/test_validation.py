"""Smoke tests of validation/: every registered experiment runs with --quick and leaves a
complete result.json and readable PNG figures. The verdict is recorded, not asserted."""

from __future__ import annotations

import json
import math
import pathlib
import pickle
import sys

import numpy as np
import pytest

# validation/ sits beside the package at the repository root and is not installed with it.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import gcref  # noqa: E402
from validation import double_descent, experiment_names, load  # noqa: E402
from validation.__main__ import main  # noqa: E402
from validation._report import VERDICTS, plain  # noqa: E402
from validation.cifar10 import (  # noqa: E402
    CHANNEL_MEAN,
    CHANNEL_STD,
    TEST_FILES,
    TRAIN_FILES,
    load_cifar10,
)

REQUIRED_KEYS = {
    "experiment", "claim", "source", "rule", "verdict", "setting", "settings", "seed", "seeds",
    "measured", "figures", "versions", "machine", "date", "runtime_s",
}
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

    assert result["figures"]
    for figure in result["figures"]:
        data = (tmp_path / figure).read_bytes()
        assert figure.endswith(".png") and data.startswith(PNG_SIGNATURE) and len(data) > 1000


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


@pytest.mark.parametrize("values, ratio, peak, rise", [
    ([0.5, 0.3, 0.45, 0.2, 0.1], False, 2, 0.15),
    ([0.5, 0.4, 0.3, 0.2, 0.1], False, 1, -0.1),
    ([1.0, 4.0, 2.0, 8.0, 1.0], True, 3, 8.0),
])
def test_interior_peak_is_the_largest_two_sided_rise(values, ratio, peak, rise):
    assert double_descent.interior_peak(values, ratio) == (peak, pytest.approx(rise))
