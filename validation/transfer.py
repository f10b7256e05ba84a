"""The transfer theorem along training (seed 000, Theorem 1 and eq. 8; MATH.md section 3).

||J(x)||_F^2 sum_i T_i^2 <= ||grad_theta f(x)||_F^2 with T_i^2 = (1 + ||h_i||^2) / A_i^2 and
A_i = ||W_i||_2 ||h'_i(x)||_2. Seed 000 argues that the A_i grow during training, so that
the pressure SGD puts on ||grad_theta f|| transfers to the input gradient ||J||. This
experiment trains a ReLU MLP on scikit-learn's digits by SGD and records, every epoch, the
transfer ratio (the left side over the right side, in [0, 1] if the bound holds) and the A_i
averaged over training examples, all from gcref.transfer.transfer_terms.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.transfer import transfer_terms
from validation._report import Outcome, pyplot, save_figure
from validation._training import accuracy, digits, sgd_epochs

NAME = "transfer"
CLAIM = (
    "during SGD training the transfer terms A_i = ||W_i||_2 ||h'_i(x)||_2 grow and the bound "
    "||J||_F^2 sum_i T_i^2 <= ||grad_theta f||_F^2 holds at every step"
)
SOURCE = "seed 000, Theorem 1 and eq. 8"
RULE = (
    "held if the transfer ratio never exceeds 1 + 1e-9 on any recorded example and epoch, and "
    "the example-averaged A_i of every layer is larger at the end of training than at the start"
)
QUICK = {"hidden": [32, 32], "lr": 0.1, "batch_size": 32, "epochs": 2, "n_monitor": 64}
FULL = {"hidden": [128, 128, 128], "lr": 0.1, "batch_size": 32, "epochs": 30, "n_monitor": 300}

BOUND_SLACK = 1e-9


def run(settings, seed, out_dir, progress):
    rng = np.random.default_rng(seed)
    X, labels, X_test, labels_test = digits(rng)
    monitor = X[: settings["n_monitor"]]
    mlp = gcref.MLP([X.shape[1], *settings["hidden"], 10], activation="relu")
    params = mlp.init(rng, "he_normal", bias="zero")

    history = {"epoch": [], "mean_A": [], "max_ratio": [], "median_ratio": [], "min_ratio": [],
               "gc": [], "grad_sq": [], "loss": [], "test_accuracy": []}

    def record(epoch, current):
        terms = transfer_terms(mlp, current, monitor)
        history["epoch"].append(epoch)
        history["mean_A"].append(terms.A.mean(axis=0))
        history["max_ratio"].append(float(terms.ratio.max()))
        history["median_ratio"].append(float(np.median(terms.ratio)))
        history["min_ratio"].append(float(terms.ratio.min()))
        history["gc"].append(float(terms.jacobian_sq_norms.mean()))
        history["grad_sq"].append(float(terms.grad_sq_norms.mean()))
        history["loss"].append(gcref.mean_loss(mlp, current, X, labels, "softmax_cross_entropy"))
        history["test_accuracy"].append(accuracy(mlp, current, X_test, labels_test))
        progress(epoch, settings["epochs"], "epochs")

    sgd_epochs(mlp, params, X, labels, "softmax_cross_entropy", lr=settings["lr"],
               batch_size=settings["batch_size"], epochs=settings["epochs"], rng=rng,
               after_epoch=record)

    mean_A = np.array(history["mean_A"])
    bound_held = max(history["max_ratio"]) <= 1 + BOUND_SLACK
    grew = mean_A[-1] > mean_A[0]
    measured = {**history, "A_grew_per_layer": grew, "bound_held": bound_held,
                "A_end_over_start": mean_A[-1] / mean_A[0]}

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    epochs = history["epoch"]
    for i in range(mean_A.shape[1]):
        axes[0].plot(epochs, mean_A[:, i], "o-", ms=3, label=f"layer {i + 1}")
    axes[0].set_yscale("log")
    axes[0].set_title(r"$A_i = \|W_i\|_2\,\|h'_i(x)\|_2$, mean over examples")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel(r"$A_i$")
    axes[0].legend()
    axes[1].fill_between(epochs, history["min_ratio"], history["max_ratio"], alpha=0.3,
                         label="min to max over examples")
    axes[1].plot(epochs, history["median_ratio"], "o-", ms=3, label="median")
    axes[1].axhline(1.0, color="k", ls="--", label="bound (ratio = 1)")
    axes[1].set_ylim(0, 1.1)
    axes[1].set_title(r"Transfer ratio $\|J\|_F^2 \sum_i T_i^2 / \|\nabla_\theta f\|^2$")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("ratio")
    axes[1].legend(fontsize=8)
    axes[2].semilogy(epochs, history["gc"], "o-", ms=3, label=r"GC $=$ mean $\|J\|_F^2$")
    axes[2].semilogy(epochs, history["grad_sq"], "s-", ms=3,
                     label=r"mean $\|\nabla_\theta f\|_F^2$")
    axes[2].semilogy(epochs, history["loss"], "k:", label="training loss")
    axes[2].set_title(f"GC, parameter gradients and loss (test accuracy "
                      f"{history['test_accuracy'][-1]:.3f})")
    axes[2].set_xlabel("epoch")
    axes[2].legend(fontsize=8)
    figure = save_figure(fig, out_dir, "transfer.png")
    return Outcome(measured=measured, held=bool(bound_held and np.all(grew)), figures=[figure],
                   seeds=[seed], frameworks=["scikit-learn"])
