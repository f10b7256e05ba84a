"""Test error against width without explicit regularisation, with the path norm (seed 002).

Seed 002 (Neyshabur et al., following "In search of the real inductive bias") observes that
the test error of a one-hidden-layer network trained without explicit regularisation does
not grow as the number of hidden units H grows past what is needed to fit the training set,
although the number of parameters does: the capacity that matters is a norm, such as the
path norm (gcref.norms.path_norm), not the size. One-hidden-layer ReLU networks of growing
width are trained by SGD without regularisation on MNIST-1D (generated locally by the mnist1d
package), with clean and with partly flipped training labels, each until it fits its
training labels exactly (as in seed 002's width experiment, trained to zero training error).
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.norms import path_norm
from validation._report import Outcome, pyplot, save_figure
from validation._stats import above_bound, run_seeds, summary
from validation._training import accuracy, sgd_epochs
from validation.double_descent import mnist1d, noisy_subset

NAME = "width_no_overfit"
CLAIM = (
    "without explicit regularisation the test error does not grow with the number of hidden "
    "units H among networks trained to fit the training set, with or without label noise"
)
SOURCE = "seed 002"
RULE = (
    "on MNIST-1D, for each label-noise level, every (width, seed) run trains by SGD until it "
    "fits its (noisy) training labels (training error 0, checked every epoch; at most "
    "max_epochs; runs that do not are reported and left out). Per seed, the least-squares "
    "slope of the test error against log2 H over the widths where every seed fitted (at "
    "least 3 widths needed). Held if, at every noise level, the seed-mean slope is not "
    "positive beyond 2 standard errors (a rise counts only beyond 2 standard errors)"
)
QUICK = {"num_samples": 400, "n_train": 100, "noise_levels": [0.0, 0.15], "widths": [16, 32, 64],
         "lr": 0.3, "batch_size": 16, "max_epochs": 40, "seeds": 2}
FULL = {"num_samples": 5000, "n_train": 1000, "noise_levels": [0.0, 0.15],
        "widths": [32, 64, 128, 256, 512, 1024, 2048], "lr": 0.1, "batch_size": 32,
        "max_epochs": 400, "seeds": 5}

# Each run's key names its grid value and its seed: extending the grid or the seeds reuses
# the runs done (a run depends on its own seed only).
SWEPT = ("widths", "noise_levels", "seeds")

LOSS = "softmax_cross_entropy"


def one_run(settings, pool, noise, width, run_seed):
    """SGD on the seed's (noisy) subset until it fits it; errors and path norm at the end."""
    X_pool, y_pool, X_test, y_test = pool
    X, labels, _ = noisy_subset(X_pool, y_pool, settings["n_train"], noise,
                                np.random.default_rng(run_seed))
    rng = np.random.default_rng([run_seed, width])
    mlp = gcref.MLP([X.shape[1], width, 10], activation="relu")
    state = {}

    def check(epoch, current):
        state.update(epoch=epoch, params=current,
                     train_error=1 - accuracy(mlp, current, X, labels))
        return state["train_error"] == 0

    sgd_epochs(mlp, mlp.init(rng, "he_normal", bias="zero"), X, labels, LOSS,
               lr=settings["lr"], batch_size=settings["batch_size"],
               epochs=settings["max_epochs"], rng=rng, after_epoch=check)
    params = state["params"]
    return {"fitted": state["train_error"] == 0, "epochs": state["epoch"],
            "train_error": state["train_error"],
            "test_error": 1 - accuracy(mlp, params, X_test, y_test),
            "path_norm": path_norm(mlp, params), "n_params": mlp.n_params}


def run(settings, seed, context):
    pool = mnist1d(settings["num_samples"], seed)
    widths = settings["widths"]
    seeds = run_seeds(seed, settings["seeds"])
    total = len(settings["noise_levels"]) * len(widths) * len(seeds)
    records, done = {}, 0
    for noise in settings["noise_levels"]:
        for width in widths:
            for s in seeds:
                key = f"noise={noise},H={width},seed={s}"
                records[key] = context.runs.get(key, one_run, settings, pool, noise, width, s)
                done += 1
                context.progress(done, total, f"noise {noise} H={width}")

    measured = {"widths": widths, "per_noise": {}}
    held = True
    for noise in settings["noise_levels"]:
        table = {name: np.array([[records[f"noise={noise},H={w},seed={s}"][name]
                                  for s in seeds] for w in widths], dtype=float)
                 for name in ("test_error", "train_error", "path_norm", "epochs", "fitted")}
        fitted = table["fitted"].all(axis=1)
        entry = {name: summary(t, axis=1) for name, t in table.items() if name != "fitted"}
        entry["fitted"] = table["fitted"].astype(bool)
        entry["fitted_widths"] = [w for w, ok in zip(widths, fitted) if ok]
        entry["not_fitted"] = [{"H": widths[i], "seed": seeds[j]}
                               for i, j in zip(*np.nonzero(table["fitted"] == 0))]
        if fitted.sum() >= 3:
            logs = np.log2(np.asarray(widths, float)[fitted])
            slopes = [float(np.polyfit(logs, table["test_error"][fitted, j], 1)[0])
                      for j in range(len(seeds))]
            slope = summary(slopes)
            entry["slope_test_error_per_octave"] = slope
            entry["no_rise"] = not above_bound(slope["mean"], slope["stderr"], 0.0)
        else:
            entry["no_rise"] = False
        measured["per_noise"][str(noise)] = entry
        held &= entry["no_rise"]
    figure = plot(context.out_dir, widths, measured, settings, len(seeds))
    return Outcome(measured=measured, held=bool(held), figures=[figure], seeds=[seed, *seeds],
                   frameworks=["mnist1d"])


def plot(out_dir, widths, measured, settings, n_seeds):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, (noise, entry) in enumerate(measured["per_noise"].items()):
        for key, marker, label in (("train_error", "o", "train"), ("test_error", "s", "test")):
            axes[0].errorbar(widths, entry[key]["mean"], yerr=entry[key]["stderr"],
                             marker=marker, capsize=3, color=f"C{i}",
                             ls="-" if key == "test_error" else ":",
                             label=f"{label}, noise {float(noise):.0%}")
        axes[1].errorbar(widths, entry["path_norm"]["mean"], yerr=entry["path_norm"]["stderr"],
                         marker="o", capsize=3, color=f"C{i}",
                         label=rf"$\ell_2$ path norm, noise {float(noise):.0%}")
    axes[1].plot(widths, [gcref.MLP([40, h, 10]).n_params for h in widths], "k:",
                 label="number of parameters")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden units H")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("error")
    axes[0].set_title(f"MNIST-1D, {settings['n_train']} examples, SGD to zero training error, "
                      f"{n_seeds} seeds", fontsize=9)
    axes[1].set_yscale("log")
    axes[1].set_title("Size grows linearly in H; the path norm need not")
    return save_figure(fig, out_dir, "width_no_overfit.png")
