"""Path-SGD against SGD from balanced and unbalanced initialisations (seed 002, Algorithm 1).

Node rescaling (incoming weights and bias of a hidden ReLU unit times c, outgoing weights
times 1/c) leaves the network's function unchanged (MATH.md section 6). SGD's update is not
rescaling-equivariant, so two rescaling-equivalent starts train differently, and an
unbalanced start can train badly; Path-SGD's update is equivariant, so both starts give the
same function at every step (up to rounding). Seed 002's empirical claim is that this makes
Path-SGD train better than SGD from unbalanced starts. Here, per seed, one He-normal draw is
balanced (gcref.rescaling.balanced_rescaling) and also rescaled at random with factors up to
``spread`` (gcref.rescaling.random_rescaling); both optimisers (gcref.optimizers) train
from both starts on scikit-learn's digits with the same mini-batch order, over a grid of
learning rates, and each method is judged at its best learning rate.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.norms import path_norm
from gcref.optimizers import GradientDescent, PathSGD
from gcref.rescaling import balanced_rescaling, random_rescaling
from validation._report import Outcome, pyplot, save_figure
from validation._stats import above_bound, below, mean_stderr, run_seeds, summary
from validation._training import accuracy, digits, sgd_epochs

NAME = "path_sgd"
CLAIM = (
    "from a strongly unbalanced (rescaled) initialisation, Path-SGD trains better than SGD, "
    "each with its learning rate tuned"
)
SOURCE = "seed 002, Algorithm 1 and section 5"
RULE = (
    "every (method, start, learning rate, seed) run trains for the same epochs with the same "
    "batch order; a run whose loss stops being finite is reported as diverged. Per method and "
    "start, the tuned learning rate is the grid value with the lowest seed-mean final "
    "training loss among those with no diverged seed. Held if, from the unbalanced start, "
    "Path-SGD's final training loss at its tuned learning rate is below SGD's at its tuned "
    "learning rate beyond 2 standard errors of their paired per-seed difference (a seed's "
    "runs share its initialisation and batch order). Path-SGD's rescaling invariance (the balanced and "
    "unbalanced starts train alike) is an identity: reported, not judged"
)
QUICK = {"hidden": [16, 16], "spread": 100.0, "lrs": {"SGD": [0.02, 0.1], "Path-SGD": [0.02, 0.1]},
         "batch_size": 64, "epochs": 2, "seeds": 2}
# One grid for both methods, in steps of about x3.
FULL_LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
FULL = {"hidden": [64, 64], "spread": 100.0,
        "lrs": {"SGD": FULL_LRS, "Path-SGD": FULL_LRS},
        "batch_size": 32, "epochs": 15, "seeds": 10}

# Each run's key names its learning rate and seed: extending the grid or adding seeds
# reuses the runs done.
SWEPT = ("lrs", "seeds")

LOSS = "softmax_cross_entropy"
STARTS = ("balanced", "unbalanced")


def starts(mlp, spread, run_seed):
    """The balanced and the randomly rescaled version of one He-normal draw."""
    rng = np.random.default_rng(run_seed)
    balanced, _ = balanced_rescaling(mlp, mlp.init(rng, "he_normal", bias="zero"))
    unbalanced, _ = random_rescaling(mlp, balanced, rng, spread=spread)
    return {"balanced": balanced, "unbalanced": unbalanced}


def one_run(mlp, data, params, optimizer, settings, order_seed):
    """Train from ``params``; the per-epoch training loss and test accuracy, until the loss
    stops being finite (``diverged``)."""
    X, labels, X_test, labels_test = data
    curve = {"loss": [], "test_accuracy": [], "path_norm": [], "diverged": False}

    def record(epoch, current):
        with np.errstate(all="ignore"):
            loss = gcref.mean_loss(mlp, current, X, labels, LOSS)
        if not np.isfinite(loss):
            curve["diverged"] = True
            return True
        curve["loss"].append(loss)
        curve["test_accuracy"].append(accuracy(mlp, current, X_test, labels_test))
        curve["path_norm"].append(path_norm(mlp, current))
        return False

    with np.errstate(over="ignore", invalid="ignore"):
        sgd_epochs(mlp, params, X, labels, LOSS, lr=None, batch_size=settings["batch_size"],
                   epochs=settings["epochs"], rng=np.random.default_rng(order_seed),
                   after_epoch=record, optimizer=optimizer)
    curve["final_loss"] = curve["loss"][-1] if curve["loss"] else -1.0
    return curve


def run(settings, seed, context):
    data = digits(np.random.default_rng(seed))
    mlp = gcref.MLP([data[0].shape[1], *settings["hidden"], 10], activation="relu")
    seeds = run_seeds(seed, settings["seeds"])
    optimizers = {"SGD": lambda lr: GradientDescent(lr), "Path-SGD": lambda lr: PathSGD(lr, p=2)}
    total = sum(len(v) for v in settings["lrs"].values()) * len(STARTS) * len(seeds)
    records, done = {}, 0
    for run_seed in seeds:
        initial = starts(mlp, settings["spread"], run_seed)
        for method, make in optimizers.items():
            for start in STARTS:
                for lr in settings["lrs"][method]:
                    key = f"{method},{start},lr={lr},seed={run_seed}"
                    records[key] = context.runs.get(key, one_run, mlp, data, initial[start],
                                                    make(lr), settings, run_seed + 1000)
                    done += 1
                    context.progress(done, total, f"{method} {start}")

    measured = {"tuned": {}, "final_loss": {}}
    for method in optimizers:
        for start in STARTS:
            name = f"{method}, {start}"
            table = {}
            for lr in settings["lrs"][method]:
                runs = [records[f"{method},{start},lr={lr},seed={s}"] for s in seeds]
                diverged = any(r["diverged"] for r in runs)
                entry = {"diverged_seeds": sum(r["diverged"] for r in runs)}
                if not diverged:
                    entry.update(summary([r["final_loss"] for r in runs]))
                table[str(lr)] = entry
            measured["final_loss"][name] = table
            usable = [lr for lr in settings["lrs"][method] if "mean" in table[str(lr)]]
            if usable:
                best = min(usable, key=lambda lr: table[str(lr)]["mean"])
                measured["tuned"][name] = {"lr": best, **table[str(best)]}
    sgd, path = (measured["tuned"].get(f"{m}, unbalanced") for m in ("SGD", "Path-SGD"))
    if path is None:
        held = False
    elif sgd is None:  # SGD diverged at every learning rate
        held = True
    else:
        # Both tuned runs of a seed share its initialisation and batch order: the seed's
        # effect cancels in their difference.
        difference = summary(np.subtract(sgd["per_seed"], path["per_seed"]))
        measured["paired_difference_sgd_minus_path_sgd"] = difference
        measured["unpaired_below"] = below(path["mean"], path["stderr"], sgd["mean"],
                                           sgd["stderr"])
        held = above_bound(difference["mean"], difference["stderr"], 0.0)
    gaps = []
    for lr in settings["lrs"]["Path-SGD"]:
        for s in seeds:
            a, b = (records[f"Path-SGD,{st},lr={lr},seed={s}"] for st in STARTS)
            if not (a["diverged"] or b["diverged"]):
                gaps.append(float(np.max(np.abs(np.subtract(a["loss"], b["loss"]))
                                         / np.abs(a["loss"]))))
    measured["path_sgd_max_relative_gap_balanced_vs_unbalanced"] = max(gaps) if gaps else -1.0
    figure = plot(context.out_dir, records, measured, settings, seeds)
    return Outcome(measured=measured, held=bool(held), figures=[figure], seeds=[seed, *seeds],
                   frameworks=["scikit-learn"])


def plot(out_dir, records, measured, settings, seeds):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    colors = {"SGD": "C0", "Path-SGD": "C3"}
    for name, tuned in measured["tuned"].items():
        method, start = name.split(", ")
        curves = [records[f"{method},{start},lr={tuned['lr']},seed={s}"] for s in seeds]
        for ax, key in zip(axes, ("loss", "test_accuracy")):
            mean, se = mean_stderr([c[key] for c in curves], axis=0)
            ax.errorbar(np.arange(len(mean)), mean, yerr=se, capsize=2,
                        ls="-" if start == "balanced" else "--", color=colors[method],
                        label=f"{name} (lr {tuned['lr']})")
    axes[0].set_yscale("log")
    axes[0].set_title(f"Training loss at the tuned learning rates (unbalanced: rescaling up "
                      f"to x{settings['spread']:g}), {len(seeds)} seeds", fontsize=9)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("mean cross-entropy")
    axes[1].set_title("Test accuracy")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("accuracy")
    for ax in axes:
        ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "path_sgd.png")
