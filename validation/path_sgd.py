"""Path-SGD against SGD from balanced and unbalanced initialisations (seed 002, Algorithm 1).

Node rescaling (incoming weights and bias of a hidden ReLU unit times c, outgoing weights
times 1/c) leaves the network's function unchanged (MATH.md section 6). SGD's update is not
rescaling-equivariant, so two rescaling-equivalent starts train differently, and an
unbalanced start can train badly; Path-SGD's update is equivariant, so both starts give the
same function at every step (up to rounding). Here one He-normal draw is balanced
(gcref.rescaling.balanced_rescaling) and also rescaled at random with factors up to
``spread`` (gcref.rescaling.random_rescaling); both optimisers (gcref.optimizers) train
from both starts on scikit-learn's digits with the same mini-batch order.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.norms import path_norm
from gcref.optimizers import GradientDescent, PathSGD
from gcref.rescaling import balanced_rescaling, random_rescaling
from validation._report import Outcome, pyplot, save_figure
from validation._training import accuracy, digits, sgd_epochs

NAME = "path_sgd"
CLAIM = (
    "Path-SGD trains rescaling-equivalent starts identically (it is insensitive to the "
    "rescaling), while SGD from an unbalanced start trains differently"
)
SOURCE = "seed 002, Algorithm 1"
RULE = (
    "held if, over every recorded epoch, the largest gap in training loss between the balanced "
    "and the unbalanced start is below 1e-6 (relative) for Path-SGD and above 1e-2 (relative) "
    "for SGD"
)
QUICK = {"hidden": [16, 16], "spread": 10.0, "sgd_lr": 0.05, "path_sgd_lr": 0.05,
         "batch_size": 64, "epochs": 2}
FULL = {"hidden": [64, 64], "spread": 10.0, "sgd_lr": 0.05, "path_sgd_lr": 0.05,
        "batch_size": 32, "epochs": 25}

LOSS = "softmax_cross_entropy"


def run(settings, seed, out_dir, progress):
    rng = np.random.default_rng(seed)
    X, labels, X_test, labels_test = digits(rng)
    mlp = gcref.MLP([X.shape[1], *settings["hidden"], 10], activation="relu")
    drawn = mlp.init(rng, "he_normal", bias="zero")
    balanced, _ = balanced_rescaling(mlp, drawn)
    unbalanced, _ = random_rescaling(mlp, balanced, rng, spread=settings["spread"])
    starts = {"balanced": balanced, "unbalanced": unbalanced}
    optimizers = {"SGD": lambda: GradientDescent(settings["sgd_lr"]),
                  "Path-SGD": lambda: PathSGD(settings["path_sgd_lr"], p=2)}
    order_seed = seed + 1
    curves, done = {}, 0
    for method, make in optimizers.items():
        for start, params in starts.items():
            curve = {"loss": [], "test_accuracy": [], "path_norm": []}

            def record(epoch, current, curve=curve):
                curve["loss"].append(gcref.mean_loss(mlp, current, X, labels, LOSS))
                curve["test_accuracy"].append(accuracy(mlp, current, X_test, labels_test))
                curve["path_norm"].append(path_norm(mlp, current))

            sgd_epochs(mlp, params, X, labels, LOSS, lr=None, batch_size=settings["batch_size"],
                       epochs=settings["epochs"], rng=np.random.default_rng(order_seed),
                       after_epoch=record, optimizer=make())
            curves[f"{method}, {start}"] = curve
            done += 1
            progress(done, 4, f"{method} {start}")

    measured = {"curves": curves,
                "start_layer_sq_norms": {name: [float(np.sum(W**2)) for W, _ in params]
                                         for name, params in starts.items()},
                "start_loss_gap": abs(
        gcref.mean_loss(mlp, balanced, X, labels, LOSS)
        - gcref.mean_loss(mlp, unbalanced, X, labels, LOSS))}
    for method in optimizers:
        a = np.array(curves[f"{method}, balanced"]["loss"])
        b = np.array(curves[f"{method}, unbalanced"]["loss"])
        measured[f"{method}_max_relative_loss_gap"] = float(np.max(np.abs(a - b) / np.abs(a)))
    held = (measured["Path-SGD_max_relative_loss_gap"] < 1e-6
            and measured["SGD_max_relative_loss_gap"] > 1e-2)

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"SGD": "C0", "Path-SGD": "C3"}
    for name, curve in curves.items():
        method, start = name.split(", ")
        ls = "-" if start == "balanced" else "--"
        epochs = np.arange(len(curve["loss"]))
        axes[0].semilogy(epochs, curve["loss"], ls, color=styles[method], label=name)
        axes[1].plot(epochs, curve["test_accuracy"], ls, color=styles[method], label=name)
    axes[0].set_title(f"Training loss (unbalanced: random rescaling up to x{settings['spread']:g})")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("mean cross-entropy")
    axes[0].legend(fontsize=8)
    axes[1].set_title("Test accuracy")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("accuracy")
    axes[1].legend(fontsize=8)
    figure = save_figure(fig, out_dir, "path_sgd.png")
    return Outcome(measured=measured, held=held, figures=[figure], seeds=[seed, order_seed],
                   frameworks=["scikit-learn"])
