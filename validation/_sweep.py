"""Train a digits MLP over a grid of one SGD hyper-parameter and measure GC at equal training loss.

Shared by ``lr_sweep`` and ``batch_size`` (seed 000, Fig. 2; seed 003). Comparing runs after
a fixed number of epochs confounds the hyper-parameter with training progress (a small
learning rate or a large batch is simply less trained after the same epochs, and GC grows
with training), so every run is measured at a comparable point instead: for every value and
seed, SGD runs until the mean training loss first falls to ``target_loss`` (checked after
every epoch), at most ``max_epochs`` epochs. There the discrete Dirichlet energy
DE^ = GC / 2 on the training set (gcref.complexity.dirichlet_energy), the squared norm of the
full-batch loss gradient ||grad L||^2 and the test accuracy are measured. A run that does not
reach the target is recorded with ``reached = False`` and its last epoch's numbers; the rules
fit their slopes on the runs that reached it. The best test accuracy over the epochs up to
the target is recorded beside (not judged).

Each (value, seed) run is one entry of the experiment's :class:`validation._report.Runs`:
the initialisation and the batch order come from the run seed alone, so the values are
compared on the same initialisations (paired by seed).
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.complexity import dirichlet_energy
from validation._report import pyplot, save_figure
from validation._stats import Z, log_slope, mean_stderr, run_seeds
from validation._training import accuracy, digits, sgd_epochs

LOSS = "softmax_cross_entropy"

#: What every sweep records per (value, seed), at the epoch the target loss is reached.
MEASURES = ("dirichlet_energy", "grad_sq", "test_accuracy", "train_loss", "epoch")


def grad_sq_norm(mlp, params, X, labels):
    """``||grad L||^2`` of the mean loss over the whole training set."""
    grads = gcref.loss_grad(mlp, params, X, labels, LOSS)
    return float(sum(np.sum(g**2) for pair in grads for g in pair))


def train_to_target(mlp, X, labels, X_test, labels_test, *, lr, batch_size, target_loss,
                    max_epochs, rng):
    """SGD from a He-normal draw of ``rng`` until the training loss is at most ``target_loss``.

    Returns the run's record: ``reached``, the measures of :data:`MEASURES` at the stopping
    epoch, and ``best_test_accuracy`` / ``best_test_epoch`` over the epochs up to it.
    """
    params = mlp.init(rng, "he_normal", bias="zero")
    state = {"best_accuracy": -1.0}

    def check(epoch, current):
        acc = accuracy(mlp, current, X_test, labels_test)
        if acc > state["best_accuracy"]:
            state.update(best_accuracy=acc, best_epoch=epoch)
        loss = gcref.mean_loss(mlp, current, X, labels, LOSS)
        state.update(epoch=epoch, params=current, loss=loss, accuracy=acc)
        return loss <= target_loss

    sgd_epochs(mlp, params, X, labels, LOSS, lr=lr, batch_size=batch_size, epochs=max_epochs,
               rng=rng, after_epoch=check)
    final = state["params"]
    return {"reached": state["loss"] <= target_loss, "epoch": state["epoch"],
            "train_loss": state["loss"], "test_accuracy": state["accuracy"],
            "dirichlet_energy": dirichlet_energy(mlp, final, X),
            "grad_sq": grad_sq_norm(mlp, final, X, labels),
            "best_test_accuracy": state["best_accuracy"], "best_test_epoch": state["best_epoch"]}


def sweep(settings, key, values, seed, context):
    """Records of every ``(values[j], seed)`` run of hyper-parameter ``key`` ("lr" or
    "batch_size"), as a list (over values) of lists (over seeds), and the run seeds."""
    X, labels, X_test, labels_test = digits(np.random.default_rng(seed))
    mlp = gcref.MLP([X.shape[1], *settings["hidden"], 10], activation="relu")
    seeds = run_seeds(seed, settings["seeds"])
    records, done = [], 0
    for value in values:
        row = []
        for run_seed in seeds:
            hyper = {"lr": settings.get("lr"), "batch_size": settings.get("batch_size"),
                     key: value}
            row.append(context.runs.get(
                f"{key}={value},seed={run_seed}", train_to_target, mlp, X, labels, X_test,
                labels_test, lr=hyper["lr"], batch_size=hyper["batch_size"],
                target_loss=settings["target_loss"], max_epochs=settings["max_epochs"],
                rng=np.random.default_rng(run_seed)))
            done += 1
            context.progress(done, len(values) * len(seeds), f"{key}={value}")
        records.append(row)
    return records, seeds


def judge(records, values, sign):
    """Tables, per-seed slopes and the verdict of a sweep.

    For every seed, the least-squares slope of log DE^ (and of log ||grad L||^2) against
    log value over the values whose run reached the target (at least two, else the seed
    has no slope). ``sign`` is -1 when the claim says the measure falls with the value, +1
    when it rises. A measure follows the claim if at least two seeds have a slope and the
    seed-mean slope has the claimed sign beyond :data:`validation._stats.Z` standard errors.
    """
    tables = {name: np.array([[r[name] for r in row] for row in records], dtype=float)
              for name in (*MEASURES, "best_test_accuracy", "best_test_epoch")}
    reached = np.array([[r["reached"] for r in row] for row in records], dtype=bool)
    summary = {"reached": reached, "not_reached": [
        {"value": values[j], "seed_index": s} for j, s in zip(*np.nonzero(~reached))]}
    for name, table in tables.items():
        mean, stderr = mean_stderr(table, axis=1)
        summary[name] = {"per_seed": table, "mean": mean, "stderr": stderr}
    verdicts = {}
    for name in ("dirichlet_energy", "grad_sq"):
        slopes = []
        for s in range(reached.shape[1]):
            ok = reached[:, s]
            if ok.sum() >= 2:
                slopes.append(log_slope(np.asarray(values, float)[ok], tables[name][ok, s]))
        entry = {"slope_per_seed": slopes}
        if len(slopes) >= 2:
            mean, stderr = mean_stderr(slopes)
            entry.update(slope_mean=mean, slope_stderr=stderr,
                         follows_claim=bool(sign * mean > Z * stderr))
        else:
            entry["follows_claim"] = False
        summary[f"log_slope_{name}"] = entry
        verdicts[name] = entry["follows_claim"]
    return summary, verdicts


def plot(out_dir, name, summary, values, xlabel, title):
    """Seed means with standard-error bars of DE^, ||grad L||^2, test accuracy and epochs."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    panels = (("dirichlet_energy", r"discrete Dirichlet energy $\hat{DE} = GC/2$ (train)"),
              ("grad_sq", r"$\|\nabla_\theta L\|^2$ (full training set)"),
              ("test_accuracy", "test accuracy"),
              ("epoch", "epochs to the target loss"))
    for ax, (key, label) in zip(axes, panels):
        ax.errorbar(values, summary[key]["mean"], yerr=summary[key]["stderr"], marker="o",
                    capsize=3)
        missed = ~summary["reached"].all(axis=1)
        if missed.any():
            ax.plot(np.asarray(values)[missed], summary[key]["mean"][missed], "rx", ms=10,
                    label="a seed missed the target")
            ax.legend(fontsize=8)
        ax.set_xscale("log")
        if key in ("dirichlet_energy", "grad_sq"):
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.set_title(label.split(" (")[0])
    fig.suptitle(title)
    return save_figure(fig, out_dir, f"{name}.png")
