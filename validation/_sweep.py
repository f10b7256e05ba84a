"""Train a digits MLP over a grid of one SGD hyper-parameter and measure GC at the best test score.

Shared by ``lr_sweep`` and ``batch_size`` (seed 000, Fig. 2; seed 003): for every value and
seed, SGD runs for a fixed number of epochs; the parameters of the epoch with the best test
accuracy are kept, and there the discrete Dirichlet energy DE^ = GC / 2 on the training set
(gcref.complexity.dirichlet_energy) and the squared norm of the full-batch loss gradient
||grad L||^2 are measured.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.complexity import dirichlet_energy
from validation._report import pyplot, save_figure
from validation._training import accuracy, digits, sgd_epochs

LOSS = "softmax_cross_entropy"


def spearman(a, b):
    """Spearman rank correlation of two sequences without ties."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def grad_sq_norm(mlp, params, X, labels):
    """``||grad L||^2`` of the mean loss over the whole training set."""
    grads = gcref.loss_grad(mlp, params, X, labels, LOSS)
    return float(sum(np.sum(g**2) for pair in grads for g in pair))


#: What every sweep records per (value, seed), at the best test epoch.
MEASURES = ("dirichlet_energy", "grad_sq", "test_accuracy", "train_loss", "best_epoch")


def empty_results(shape):
    """One zero table of ``shape`` (values, seeds) per measure of :data:`MEASURES`."""
    return {name: np.zeros(shape) for name in MEASURES}


def sweep(settings, key, values, seed, progress):
    """Measure every ``values[j]`` of hyper-parameter ``key`` ("lr" or "batch_size")."""
    data_rng = np.random.default_rng(seed)
    X, labels, X_test, labels_test = digits(data_rng)
    mlp = gcref.MLP([X.shape[1], *settings["hidden"], 10], activation="relu")
    seeds = [seed + 1 + s for s in range(settings["seeds"])]
    shape = (len(values), len(seeds))
    out = empty_results(shape)
    done = 0
    for j, value in enumerate(values):
        for s, run_seed in enumerate(seeds):
            rng = np.random.default_rng(run_seed)
            params = mlp.init(rng, "he_normal", bias="zero")
            hyper = {"lr": settings.get("lr"), "batch_size": settings.get("batch_size"), key: value}
            best = {"accuracy": -1.0}

            def keep_best(epoch, current):
                acc = accuracy(mlp, current, X_test, labels_test)
                if acc > best["accuracy"]:
                    best.update(accuracy=acc, epoch=epoch, params=current)

            sgd_epochs(mlp, params, X, labels, LOSS, lr=hyper["lr"],
                       batch_size=hyper["batch_size"], epochs=settings["epochs"], rng=rng,
                       after_epoch=keep_best)
            out["dirichlet_energy"][j, s] = dirichlet_energy(mlp, best["params"], X)
            out["grad_sq"][j, s] = grad_sq_norm(mlp, best["params"], X, labels)
            out["test_accuracy"][j, s] = best["accuracy"]
            out["train_loss"][j, s] = gcref.mean_loss(mlp, best["params"], X, labels, LOSS)
            out["best_epoch"][j, s] = best["epoch"]
            done += 1
            progress(done, shape[0] * shape[1], f"{key}={value}")
    return out, seeds


def summarise(out, values):
    """Seed means and standard errors, and the rank correlations with the swept value."""
    n = out["dirichlet_energy"].shape[1]
    summary = {}
    for name, table in out.items():
        summary[name] = {"per_seed": table, "mean": table.mean(axis=1),
                         "stderr": table.std(axis=1, ddof=1) / np.sqrt(n) if n > 1
                         else np.zeros(len(values))}
    summary["spearman_dirichlet_energy"] = spearman(values, summary["dirichlet_energy"]["mean"])
    summary["spearman_grad_sq"] = spearman(values, summary["grad_sq"]["mean"])
    return summary


def plot(out_dir, name, summary, values, xlabel, log_x, title):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    panels = (("dirichlet_energy", r"discrete Dirichlet energy $\hat{DE} = GC/2$ (train)"),
              ("grad_sq", r"$\|\nabla_\theta L\|^2$ (full training set)"),
              ("test_accuracy", "best test accuracy"))
    for ax, (key, label) in zip(axes, panels):
        ax.errorbar(values, summary[key]["mean"], yerr=summary[key]["stderr"], marker="o",
                    capsize=3)
        if log_x:
            ax.set_xscale("log")
        if key != "test_accuracy":
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.set_title(label.split(" (")[0] if key != "test_accuracy" else "best test accuracy")
    fig.suptitle(title)
    return save_figure(fig, out_dir, f"{name}.png")
