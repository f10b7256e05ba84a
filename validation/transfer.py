"""The transfer theorem along training (seed 000, Theorem 1 and eq. 8; MATH.md section 3).

||J(x)||_F^2 sum_i T_i^2 <= ||grad_theta f(x)||_F^2 with T_i^2 = (1 + ||h_i||^2) / A_i^2 and
A_i = ||W_i||_2 ||h'_i(x)||_2. Seed 000 argues that the A_i grow during training, so that
the pressure SGD puts on ||grad_theta f|| transfers to the input gradient ||J||. This
experiment trains a ReLU MLP on scikit-learn's digits by SGD and records, every epoch, the
transfer ratio (the left side over the right side, in [0, 1] if the bound holds), the A_i
averaged over training examples and both sides of the bound, all from
gcref.transfer.transfer_terms, over several seeds. The bound is a theorem and cannot fail
short of a bug, so the rule judges what is not guaranteed: that every A_i grows (beyond the
seed-to-seed spread) and that the transferred side tracks ||grad_theta f||^2 over training.

Seed 000 expects the growth "if no spectral regularization is applied". The control runs
train the same networks from the same initialisations with weight decay (an L2 penalty on the
weights), which keeps the spectral norms down: the rule must reject them.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.transfer import transfer_terms
from validation._report import Outcome, pyplot, save_figure
from validation._stats import above_bound, mean_stderr, run_seeds, spearman, summary
from validation._training import accuracy, digits, sgd_epochs

NAME = "transfer"
CLAIM = (
    "during SGD training the transfer terms A_i = ||W_i||_2 ||h'_i(x)||_2 of every layer grow, "
    "and ||J||_F^2 sum_i T_i^2 (bounded by ||grad_theta f||_F^2) moves with ||grad_theta f||_F^2"
)
SOURCE = "seed 000, Theorem 1 and eq. 8"
RULE = (
    "per seed, the log growth log(A_i(end) / A_i(start)) of the example-averaged A_i of every "
    "layer, and the Spearman rank correlation over the recorded epochs between the "
    "example-averaged ||J||_F^2 sum_i T_i^2 and ||grad_theta f||_F^2. Held if every layer's "
    "seed-mean log growth is positive beyond 2 standard errors and the seed-mean rank "
    "correlation exceeds 0.5 beyond 2 standard errors. The bound itself (ratio <= 1 + 1e-9 on "
    "every example and epoch) is a theorem: it is checked and reported, and a violation is a "
    "bug that also fails the rule. Held if the rule holds on the plain SGD runs and rejects "
    "the control runs (the same seeds trained with weight decay control_weight_decay, "
    "strength * sum_i ||W_i||_F^2 added to the loss)"
)
QUICK = {"hidden": [32, 32], "lr": 0.1, "batch_size": 32, "epochs": 3, "n_monitor": 64,
         "seeds": 2, "control_weight_decay": 1e-2}
FULL = {"hidden": [128, 128, 128], "lr": 0.1, "batch_size": 32, "epochs": 30, "n_monitor": 300,
        "seeds": 5, "control_weight_decay": 1e-2}

BOUND_SLACK = 1e-9
CORRELATION = 0.5


def one_seed(settings, data, run_seed, progress, weight_decay=0.0):
    """Train from the run seed's initialisation (with ``weight_decay``, see
    validation._training.sgd_epochs); the per-epoch record of the transfer terms."""
    X, labels, X_test, labels_test = data
    rng = np.random.default_rng(run_seed)
    monitor = X[: settings["n_monitor"]]
    mlp = gcref.MLP([X.shape[1], *settings["hidden"], 10], activation="relu")
    params = mlp.init(rng, "he_normal", bias="zero")
    history = {"epoch": [], "mean_A": [], "max_ratio": [], "median_ratio": [], "min_ratio": [],
               "gc": [], "grad_sq": [], "transferred": [], "loss": [], "test_accuracy": []}

    def record(epoch, current):
        terms = transfer_terms(mlp, current, monitor)
        history["epoch"].append(epoch)
        history["mean_A"].append(terms.A.mean(axis=0))
        history["max_ratio"].append(float(terms.ratio.max()))
        history["median_ratio"].append(float(np.median(terms.ratio)))
        history["min_ratio"].append(float(terms.ratio.min()))
        history["gc"].append(float(terms.jacobian_sq_norms.mean()))
        history["grad_sq"].append(float(terms.grad_sq_norms.mean()))
        history["transferred"].append(float(terms.layer_terms.sum(axis=1).mean()))
        history["loss"].append(gcref.mean_loss(mlp, current, X, labels, "softmax_cross_entropy"))
        history["test_accuracy"].append(accuracy(mlp, current, X_test, labels_test))
        progress(epoch, settings["epochs"], f"seed {run_seed} epochs")

    sgd_epochs(mlp, params, X, labels, "softmax_cross_entropy", lr=settings["lr"],
               batch_size=settings["batch_size"], epochs=settings["epochs"], rng=rng,
               after_epoch=record, weight_decay=weight_decay)
    mean_A = np.array(history["mean_A"])
    return {**history, "log_A_growth": np.log(mean_A[-1] / mean_A[0]),
            "spearman_transferred_grad_sq": spearman(history["transferred"],
                                                     history["grad_sq"])}


def judged(records):
    """The rule on a set of runs: its statistics and whether it holds."""
    growth = summary([r["log_A_growth"] for r in records], axis=0)
    correlation = summary([r["spearman_transferred_grad_sq"] for r in records])
    largest = max(max(r["max_ratio"]) for r in records)
    bound_held = largest <= 1 + BOUND_SLACK
    grew = [above_bound(m, e, 0.0) for m, e in zip(growth["mean"], growth["stderr"])]
    correlated = above_bound(correlation["mean"], correlation["stderr"], CORRELATION)
    return {"log_A_growth": growth, "A_end_over_start_mean": np.exp(growth["mean"]),
            "A_grew_per_layer": grew, "spearman_transferred_grad_sq": correlation,
            "transfer_correlated": correlated, "bound_held": bound_held,
            "largest_ratio": largest,
            "final_test_accuracy": summary([r["test_accuracy"][-1] for r in records]),
            "rule_holds": bool(bound_held and all(grew) and correlated)}


def run(settings, seed, context):
    data = digits(np.random.default_rng(seed))
    seeds = run_seeds(seed, settings["seeds"])
    records = [context.runs.get(f"seed={s}", one_seed, settings, data, s, context.progress)
               for s in seeds]
    control = [context.runs.get(f"control,seed={s}", one_seed, settings, data, s,
                                context.progress, settings["control_weight_decay"])
               for s in seeds]
    measured = judged(records)
    measured["control"] = judged(control)
    # Theorem 1 holds for any parameters: a violation in the control runs is a bug too.
    bound_held = measured["bound_held"] and measured["control"]["bound_held"]
    measured["control_rejected"] = not measured["control"]["rule_holds"]
    figure = plot(context.out_dir, records, seeds, control)
    return Outcome(measured=measured,
                   held=bool(measured["rule_holds"] and bound_held
                             and measured["control_rejected"]),
                   figures=[figure], seeds=[seed, *seeds], frameworks=["scikit-learn"])


def plot(out_dir, records, seeds, control):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    epochs = records[0]["epoch"]
    mean_A = np.array([r["mean_A"] for r in records])  # (seeds, epochs, layers)
    A_mean, A_se = mean_stderr(mean_A, axis=0)
    for i in range(A_mean.shape[1]):
        axes[0].errorbar(epochs, A_mean[:, i], yerr=A_se[:, i], marker="o", ms=3, capsize=2,
                         color=f"C{i}", label=f"layer {i + 1}")
    control_A, control_se = mean_stderr(np.array([r["mean_A"] for r in control]), axis=0)
    for i in range(control_A.shape[1]):
        axes[0].errorbar(epochs, control_A[:, i], yerr=control_se[:, i], ls="--", ms=3,
                         capsize=2, color=f"C{i}",
                         label="control: weight decay" if i == 0 else None)
    axes[0].set_yscale("log")
    axes[0].set_title(r"$A_i = \|W_i\|_2\,\|h'_i(x)\|_2$, mean over examples and seeds")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel(r"$A_i$")
    axes[0].legend()
    for r in records:
        axes[1].fill_between(epochs, r["min_ratio"], r["max_ratio"], alpha=0.15, color="C0")
        axes[1].plot(epochs, r["median_ratio"], "-", ms=3, color="C0")
    axes[1].axhline(1.0, color="k", ls="--", label="bound (ratio = 1)")
    axes[1].set_ylim(0, 1.1)
    axes[1].set_title(r"Transfer ratio $\|J\|_F^2 \sum_i T_i^2 / \|\nabla_\theta f\|^2$"
                      " (min-max band, median; every seed)")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("ratio")
    axes[1].legend(fontsize=8)
    for key, style, label in (("gc", "o-", r"GC $=$ mean $\|J\|_F^2$"),
                              ("grad_sq", "s-", r"mean $\|\nabla_\theta f\|_F^2$"),
                              ("transferred", "^-", r"mean $\|J\|_F^2 \sum_i T_i^2$")):
        mean, se = mean_stderr([r[key] for r in records], axis=0)
        axes[2].errorbar(epochs, mean, yerr=se, fmt=style, ms=3, capsize=2, label=label)
    axes[2].set_yscale("log")
    accuracy_end = np.mean([r["test_accuracy"][-1] for r in records])
    axes[2].set_title(f"Means over {len(seeds)} seeds (final test accuracy {accuracy_end:.3f})")
    axes[2].set_xlabel("epoch")
    axes[2].legend(fontsize=8)
    return save_figure(fig, out_dir, "transfer.png")
