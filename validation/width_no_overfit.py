"""Test error against width without explicit regularisation, with the path norm (seed 002).

Seed 002 (Neyshabur et al., following "In search of the real inductive bias") observes that
the test error of a one-hidden-layer network trained without explicit regularisation does
not grow as the number of hidden units H grows past what is needed to fit the training set,
although the number of parameters does: the capacity that matters is a norm, such as the
path norm (gcref.norms.path_norm), not the size. One-hidden-layer ReLU networks of growing
width are trained by SGD on scikit-learn's digits for a fixed number of epochs.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.norms import path_norm
from validation._report import Outcome, pyplot, save_figure
from validation._training import accuracy, digits, sgd_epochs

NAME = "width_no_overfit"
CLAIM = (
    "without explicit regularisation the test error does not grow with the number of hidden "
    "units H once the network fits the training set"
)
SOURCE = "seed 002"
RULE = (
    "held if, among the widths whose seed-averaged training error is below 1%, the test error "
    "at the widest is no more than 1 percentage point above the test error at the narrowest"
)
QUICK = {"widths": [8, 64], "lr": 0.1, "batch_size": 64, "epochs": 1, "seeds": 1}
FULL = {"widths": [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048], "lr": 0.1, "batch_size": 32,
        "epochs": 40, "seeds": 3}

FIT_THRESHOLD = 0.01
SLACK = 0.01


def standard_error(table):
    """Standard error of the mean over the seeds (columns); zero with one seed."""
    if table.shape[1] < 2:
        return np.zeros(table.shape[0])
    return table.std(axis=1, ddof=1) / np.sqrt(table.shape[1])


def run(settings, seed, out_dir, progress):
    data_rng = np.random.default_rng(seed)
    X, labels, X_test, labels_test = digits(data_rng)
    widths = settings["widths"]
    seeds = [seed + 1 + s for s in range(settings["seeds"])]
    shape = (len(widths), len(seeds))
    train_error, test_error, norms = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    done = 0
    for i, width in enumerate(widths):
        mlp = gcref.MLP([X.shape[1], width, 10], activation="relu")
        for s, run_seed in enumerate(seeds):
            rng = np.random.default_rng(run_seed)
            params = sgd_epochs(mlp, mlp.init(rng, "he_normal", bias="zero"), X, labels,
                                "softmax_cross_entropy", lr=settings["lr"],
                                batch_size=settings["batch_size"], epochs=settings["epochs"],
                                rng=rng)
            train_error[i, s] = 1 - accuracy(mlp, params, X, labels)
            test_error[i, s] = 1 - accuracy(mlp, params, X_test, labels_test)
            norms[i, s] = path_norm(mlp, params)
            done += 1
            progress(done, shape[0] * shape[1], f"H={width}")

    mean_train, mean_test = train_error.mean(axis=1), test_error.mean(axis=1)
    fitted = np.flatnonzero(mean_train < FIT_THRESHOLD)
    held = bool(fitted.size >= 2
                and mean_test[fitted[-1]] <= mean_test[fitted[0]] + SLACK)
    measured = {"widths": widths, "train_error": train_error, "test_error": test_error,
                "path_norm": norms, "mean_train_error": mean_train, "mean_test_error": mean_test,
                "fitted_widths": [widths[i] for i in fitted]}

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    axes[0].errorbar(widths, mean_train, yerr=standard_error(train_error), marker="o", capsize=3,
                     label="training error")
    axes[0].errorbar(widths, mean_test, yerr=standard_error(test_error), marker="s", capsize=3,
                     label="test error")
    axes[0].set_xscale("log", base=2)
    axes[0].set_title(f"One hidden ReLU layer on digits, SGD {settings['epochs']} epochs")
    axes[0].set_xlabel("hidden units H")
    axes[0].set_ylabel("error")
    axes[0].legend()
    axes[1].errorbar(widths, norms.mean(axis=1), yerr=standard_error(norms), marker="o", capsize=3,
                     color="C2", label=r"$\ell_2$ path norm")
    axes[1].plot(widths, [gcref.MLP([X.shape[1], h, 10]).n_params for h in widths], "k:",
                 label="number of parameters")
    axes[1].set_xscale("log", base=2)
    axes[1].set_yscale("log")
    axes[1].set_title("Size grows linearly in H; the path norm need not")
    axes[1].set_xlabel("hidden units H")
    axes[1].legend()
    figure = save_figure(fig, out_dir, "width_no_overfit.png")
    return Outcome(measured=measured, held=held, figures=[figure], seeds=[seed, *seeds],
                   frameworks=["scikit-learn"])
