"""Test error and geometric complexity against width on MNIST-1D with label noise (seed 003).

Seed 003 reports that the geometric complexity of a network follows the double descent of
its test error as the model grows: both rise towards the interpolation threshold (the
smallest model that fits the noisy training labels) and fall again beyond it.

Setting, fixed before any full run: MNIST-1D (``mnist1d.data.make_dataset`` generates it
locally; nothing is downloaded) with its standard 4000/1000 split; ``n_train`` training
examples drawn at random from the 4000, a fraction ``noise`` of their labels replaced by a
different class drawn uniformly; the test labels stay clean. One-hidden-layer ReLU networks
``40 -> H -> 10`` (He normal, zero biases, ``gcref.MLP.init``) are fitted to one-hot targets
with the squared loss ``(1/N) sum_n 1/2 ||f(x_n) - y_n||^2`` (MATH.md section 4) by full-batch
Adam for a fixed number of steps. With the squared loss the interpolation threshold is where
the parameter count ``51 H + 10`` reaches the number of fitted values ``n_train x 10``
(Belkin et al.; Nakkiran et al.). The geometric complexity is gcref.geometric_complexity on
the training inputs (MATH.md section 2), after training.

The gradient of this two-layer network is written out in NumPy (``squared_loss_grad``)
rather than taken from gcref.loss_grad: the same numbers (tests/test_validation.py checks
them against gcref) at a third of the time, which is what lets the full sweep train to
near-interpolation within ten minutes on two cores.
"""

from __future__ import annotations

import numpy as np

import gcref
from validation._report import Outcome, pyplot, save_figure

NAME = "double_descent"
CLAIM = (
    "on MNIST-1D with label noise, the test error against the width shows a double descent "
    "and the geometric complexity follows it"
)
SOURCE = "seed 003"
RULE = (
    "with E(H) the seed-averaged test error (clean test labels) and p the interior width "
    "maximising min(E(H_p) - min_{i<p} E, E(H_p) - min_{i>p} E): double descent if that "
    "minimum is at least 2 percentage points and the parameter count at H_p is within a "
    "factor 4 of n_train x 10; GC follows it if the seed-averaged GC on the training inputs "
    "has an interior peak q with |q - p| <= 1 grid step and GC(H_q) at least 1.25 times its "
    "minimum over smaller and over larger widths. Held if both hold"
)
QUICK = {"num_samples": 400, "n_train": 100, "noise": 0.2, "widths": [4, 16, 64],
         "steps": 60, "lr": 0.003, "seeds": 1}
FULL = {"num_samples": 5000, "n_train": 400, "noise": 0.2,
        "widths": [2, 4, 8, 16, 32, 48, 64, 80, 96, 128, 192, 256, 512],
        "steps": 6000, "lr": 0.001, "seeds": 2}

N_CLASSES = 10
ERROR_MARGIN = 0.02
THRESHOLD_FACTOR = 4.0
GC_RATIO = 1.25
ADAM = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}


def mnist1d(num_samples, seed):
    """MNIST-1D generated locally: ``X_train, y_train, X_test, y_test`` (80/20 split).

    ``mnist1d.data.make_dataset`` seeds NumPy's global generator with ``seed`` (its own
    reproducibility mechanism); nothing else here uses the global generator.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    data = make_dataset(args)
    return data["x"], data["y"], data["x_test"], data["y_test"]


def noisy_subset(X, labels, n_train, noise, rng):
    """``n_train`` examples drawn without replacement, with a fraction ``noise`` of their
    labels replaced by another class drawn uniformly. Returns ``X, labels, flipped``."""
    pick = rng.choice(len(X), size=n_train, replace=False)
    X, labels = X[pick], labels[pick].copy()
    flipped = rng.choice(n_train, size=int(round(noise * n_train)), replace=False)
    labels[flipped] = (labels[flipped] + rng.integers(1, N_CLASSES, size=len(flipped))) % N_CLASSES
    return X, labels, flipped


def squared_loss_grad(params, X, Y):
    """Gradient of ``(1/N) sum_n 1/2 ||f(x_n) - y_n||^2`` for ``f = W2 relu(W1 x + b1) + b2``.

    ``params`` is ``((W1, b1), (W2, b2))`` as in gcref.MLP; returns the same structure.
    """
    (W1, b1), (W2, b2) = params
    Z = X @ W1.T + b1
    A = np.maximum(Z, 0.0)
    R = (A @ W2.T + b2 - Y) / len(X)
    D = (R @ W2) * (Z > 0)
    return ((D.T @ X, D.sum(axis=0)), (R.T @ A, R.sum(axis=0)))


def adam(params, X, Y, *, steps, lr):
    """Full-batch Adam on the squared loss; returns the parameters after ``steps`` steps."""
    flat = [a.copy() for pair in params for a in pair]
    m = [np.zeros_like(a) for a in flat]
    v = [np.zeros_like(a) for a in flat]
    b1, b2, eps = ADAM["beta1"], ADAM["beta2"], ADAM["eps"]
    for t in range(1, steps + 1):
        grads = [g for pair in squared_loss_grad(pair_up(flat), X, Y) for g in pair]
        for a, g, mi, vi in zip(flat, grads, m, v):
            mi *= b1
            mi += (1 - b1) * g
            vi *= b2
            vi += (1 - b2) * g * g
            a -= lr * (mi / (1 - b1**t)) / (np.sqrt(vi / (1 - b2**t)) + eps)
    return pair_up(flat)


def pair_up(flat):
    """``[W1, b1, W2, b2]`` as ``((W1, b1), (W2, b2))``."""
    return tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))


def error(mlp, params, X, labels):
    """Fraction of examples whose largest output is not their label."""
    return float(np.mean(np.argmax(gcref.predict(mlp, params, X), axis=1) != labels))


def interior_peak(values, ratio):
    """The interior index p maximising the smaller of the two rises of ``values`` at p over
    the minima on either side (differences, or ratios when ``ratio``), and that rise."""
    best, best_rise = None, -np.inf
    for p in range(1, len(values) - 1):
        left, right = min(values[:p]), min(values[p + 1:])
        if ratio:
            rise = min(values[p] / left, values[p] / right)
        else:
            rise = min(values[p] - left, values[p] - right)
        if rise > best_rise:
            best, best_rise = p, rise
    return best, float(best_rise)


def run(settings, seed, out_dir, progress):
    X_pool, y_pool, X_test, y_test = mnist1d(settings["num_samples"], seed)
    widths = settings["widths"]
    n_train = settings["n_train"]
    seeds = [seed + 1 + s for s in range(settings["seeds"])]
    shape = (len(widths), len(seeds))
    out = {name: np.zeros(shape) for name in ("test_error", "train_error", "train_error_clean",
                                               "test_loss", "train_loss", "gc_train", "gc_test")}
    done = 0
    for s, run_seed in enumerate(seeds):
        rng = np.random.default_rng(run_seed)
        X, labels, flipped = noisy_subset(X_pool, y_pool, n_train, settings["noise"], rng)
        clean = np.setdiff1d(np.arange(n_train), flipped)
        Y, Y_test = np.eye(N_CLASSES)[labels], np.eye(N_CLASSES)[y_test]
        for i, width in enumerate(widths):
            mlp = gcref.MLP([X.shape[1], width, N_CLASSES], activation="relu")
            params = adam(mlp.init(rng, "he_normal", bias="zero"), X, Y,
                          steps=settings["steps"], lr=settings["lr"])
            out["test_error"][i, s] = error(mlp, params, X_test, y_test)
            out["train_error"][i, s] = error(mlp, params, X, labels)
            out["train_error_clean"][i, s] = error(mlp, params, X[clean], labels[clean])
            out["test_loss"][i, s] = gcref.mean_loss(mlp, params, X_test, Y_test, "squared")
            out["train_loss"][i, s] = gcref.mean_loss(mlp, params, X, Y, "squared")
            out["gc_train"][i, s] = gcref.geometric_complexity(mlp, params, X)
            out["gc_test"][i, s] = gcref.geometric_complexity(mlp, params, X_test)
            done += 1
            progress(done, shape[0] * shape[1], f"seed {run_seed} H={width}")

    n_params = [gcref.MLP([X_pool.shape[1], w, N_CLASSES], activation="relu").n_params
                for w in widths]
    threshold = n_train * N_CLASSES
    mean = {name: table.mean(axis=1) for name, table in out.items()}
    peak, rise = interior_peak(mean["test_error"], ratio=False)
    gc_peak, gc_rise = interior_peak(mean["gc_train"], ratio=True)
    peak_to_threshold = n_params[peak] / threshold
    double_descent = (rise >= ERROR_MARGIN
                      and 1 / THRESHOLD_FACTOR <= peak_to_threshold <= THRESHOLD_FACTOR)
    gc_follows = abs(gc_peak - peak) <= 1 and gc_rise >= GC_RATIO
    ranks = [np.argsort(np.argsort(mean[k])) for k in ("gc_train", "test_error")]

    figure = plot(out_dir, widths, n_params, threshold, out, settings, len(seeds))
    measured = {
        "widths": widths, "n_params": n_params, "interpolation_threshold_params": threshold,
        **{name: {"per_seed": table, "mean": mean[name]} for name, table in out.items()},
        "test_error_peak_width": widths[peak], "test_error_rise": rise,
        "peak_params_over_threshold": peak_to_threshold, "double_descent": double_descent,
        "gc_peak_width": widths[gc_peak], "gc_rise_ratio": gc_rise, "gc_follows": gc_follows,
        "spearman_gc_test_error": float(np.corrcoef(*ranks)[0, 1]),
    }
    return Outcome(measured=measured, held=double_descent and gc_follows, figures=[figure],
                   seeds=[seed, *seeds], frameworks=["mnist1d"],
                   notes=f"{len(flipped)} of {n_train} training labels flipped per seed; "
                         "MNIST-1D generated with its own global-seed generator at seed "
                         f"{seed}.")


def plot(out_dir, widths, n_params, threshold, out, settings, n_seeds):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    panels = ((("test_error", "test (clean labels)"), ("train_error", "train (noisy labels)")),
              (("test_loss", "test"), ("train_loss", "train")),
              (("gc_train", "training inputs"), ("gc_test", "test inputs")))
    ylabels = ("classification error", "squared loss", "geometric complexity GC")
    threshold_width = widths[int(np.argmin(np.abs(np.asarray(n_params) - threshold)))]
    for ax, panel, ylabel in zip(axes, panels, ylabels):
        for key, label in panel:
            ax.plot(widths, out[key].mean(axis=1), marker="o", label=label)
        ax.axvline(threshold_width, color="grey", linestyle=":",
                   label=f"params ~ n_train x 10 (H ~ {threshold_width})")
        ax.set_xscale("log")
        if ylabel != "classification error":
            ax.set_yscale("log")
        ax.set_xlabel("hidden units H")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    fig.suptitle(f"MNIST-1D, {settings['n_train']} training examples, {settings['noise']:.0%} "
                 f"label noise, 40-H-10 ReLU, full-batch Adam {settings['steps']} steps, "
                 f"mean of {n_seeds} seeds")
    return save_figure(fig, out_dir, f"{NAME}.png")
