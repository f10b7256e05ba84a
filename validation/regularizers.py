"""Explicit regularisers lower geometric complexity (seed 003).

Seed 003 lists L2 weight decay, flatness (implicit gradient regularisation made explicit)
and spectral-norm penalties as common schemes that decrease GC. A ReLU MLP on scikit-learn's
digits is trained by SGD with no penalty and with each penalty of gcref.training
(``L2Penalty``: strength sum_i ||W_i||_F^2; ``IGRPenalty``: (h/4) ||grad L_B||^2;
``SpectralPenalty``: strength sum_i ||W_i||_2), from the same initialisations and batch orders;
GC on the training set (gcref.training's ``"gc"`` metric, from gcref.complexity) is compared
at the end.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.training import IGRPenalty, L2Penalty, SpectralPenalty, train
from validation._report import Outcome, pyplot, save_figure
from validation._training import accuracy, digits

NAME = "regularizers"
CLAIM = "L2, flatness (explicit IGR) and spectral-norm penalties each lower the geometric complexity"
SOURCE = "seed 003"
RULE = (
    "held if, for every penalty, the seed-averaged GC at the end of training is below the "
    "seed-averaged GC of training without a penalty"
)
QUICK = {"hidden": [16], "lr": 0.05, "batch_size": 64, "steps": 20, "seeds": 1,
         "l2": 1e-3, "igr_h": 0.5, "spectral": 1e-2, "records": 2}
FULL = {"hidden": [64, 64], "lr": 0.05, "batch_size": 64, "steps": 1500, "seeds": 3,
        "l2": 1e-3, "igr_h": 0.5, "spectral": 1e-2, "records": 20}


def penalty_sets(settings):
    return {"none": [], "L2": [L2Penalty(settings["l2"])], "IGR": [IGRPenalty(settings["igr_h"])],
            "spectral": [SpectralPenalty(settings["spectral"])]}


def run(settings, seed, out_dir, progress):
    data_rng = np.random.default_rng(seed)
    X, labels, X_test, labels_test = digits(data_rng)
    mlp = gcref.MLP([X.shape[1], *settings["hidden"], 10], activation="relu")
    seeds = [seed + 1 + s for s in range(settings["seeds"])]
    names = list(penalty_sets(settings))
    gc = {name: [] for name in names}
    acc = {name: [] for name in names}
    curves = {}
    done = 0
    for run_seed in seeds:
        params = mlp.init(np.random.default_rng(run_seed), "he_normal", bias="zero")
        for name, penalties in penalty_sets(settings).items():
            result = train(mlp, params, X, labels, "softmax_cross_entropy",
                           steps=settings["steps"], lr=settings["lr"],
                           batch_size=settings["batch_size"],
                           rng=np.random.default_rng(run_seed + 1000), penalties=penalties,
                           metrics=("loss", "gc"), record_every=max(1, settings["steps"] // settings["records"]))
            gc[name].append(float(result.history["gc"][-1]))
            acc[name].append(accuracy(mlp, result.params, X_test, labels_test))
            if run_seed == seeds[0]:
                curves[name] = {"step": result.history["step"], "gc": result.history["gc"],
                                "loss": result.history["loss"]}
            done += 1
            progress(done, len(seeds) * len(names), name)

    mean_gc = {name: float(np.mean(v)) for name, v in gc.items()}
    lowered = {name: mean_gc[name] < mean_gc["none"] for name in names if name != "none"}
    measured = {"gc_per_seed": gc, "mean_gc": mean_gc, "test_accuracy_per_seed": acc,
                "lowered": lowered, "curves_first_seed": curves}

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for name in names:
        axes[0].semilogy(curves[name]["step"], curves[name]["gc"], "o-", ms=3, label=name)
    axes[0].set_title(f"GC on the training set during SGD (seed {seeds[0]})")
    axes[0].set_xlabel("SGD step")
    axes[0].set_ylabel(r"GC $= \frac{1}{N}\sum_n \|J(x_n)\|_F^2$")
    axes[0].legend()
    positions = np.arange(len(names))
    axes[1].bar(positions, [mean_gc[n] for n in names], color=[f"C{i}" for i in positions])
    for i, name in enumerate(names):
        axes[1].plot([i] * len(gc[name]), gc[name], "k.", ms=8)
    axes[1].set_xticks(positions, [f"{n}\n(test acc. {np.mean(acc[n]):.3f})" for n in names])
    axes[1].set_title(f"Final GC, mean of {len(seeds)} seeds (dots: each seed)")
    axes[1].set_ylabel("GC")
    figure = save_figure(fig, out_dir, "regularizers.png")
    return Outcome(measured=measured, held=all(lowered.values()), figures=[figure],
                   seeds=[seed, *seeds], frameworks=["scikit-learn"])
