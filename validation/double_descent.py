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
Adam whose learning rate decays linearly to 0 (a constant rate does not settle at large widths). With the squared loss the interpolation threshold is where
the parameter count ``51 H + 10`` reaches the number of fitted values ``n_train x 10``
(Belkin et al.; Nakkiran et al.). The geometric complexity is gcref.geometric_complexity on
the training inputs (MATH.md section 2), after training.

The gradient of this two-layer network is written out in NumPy (``squared_loss_grad``)
rather than taken from gcref.loss_grad: the same numbers (tests/test_validation.py checks
them against gcref) at a third of the time. With ``--device cuda`` the same Adam runs in
torch (float64) on the GPU (``adam_torch``, checked against the NumPy loop on the CPU).
"""

from __future__ import annotations

import numpy as np

import gcref
from validation._report import Outcome, pyplot, save_figure
from validation._stats import below, mean_stderr, run_seeds, spearman, summary

NAME = "double_descent"
CLAIM = (
    "on MNIST-1D with label noise, the test loss against the width shows a double descent "
    "and the geometric complexity peaks with it"
)
SOURCE = "seed 003"
RULE = (
    "every (width, seed) run trains by full-batch Adam with a learning rate decaying linearly "
    "to 0 (so it settles); per seed the test squared loss, the test error and GC on the "
    "training inputs. A seed-mean curve has an interior peak at H_p if its value there "
    "exceeds its minimum over the smaller widths and its minimum over the larger widths, "
    "each beyond 2 standard errors of the difference (p is the interior width with the "
    "largest smaller rise). Held if the test loss has such a peak, GC has such a peak, and "
    "they are at most one octave apart (|log2 H_p(GC) - log2 H_p(test loss)| <= 1). The test "
    "error's peak and the interpolation threshold (parameters = n_train x 10) are reported"
)
QUICK = {"num_samples": 400, "n_train": 100, "noise": 0.15, "widths": [4, 16, 64],
         "steps": 60, "lr": 0.003, "seeds": 2}
FULL = {"num_samples": 5000, "n_train": 2000, "noise": 0.15,
        "widths": [8, 16, 32, 64, 128, 256, 512, 1024, 2048], "steps": 3000, "lr": 0.002,
        "seeds": 3}

# Each run's key names its grid value: extending this grid reuses the runs done.
SWEPT = ("widths",)
USES_DEVICE = True
N_CLASSES = 10
ADAM = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
OCTAVES = 1.0


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
    """Full-batch Adam on the squared loss with the learning rate ``lr (1 - (t - 1) / steps)``
    at step t (linear decay, so the iterate settles); returns the parameters after ``steps``
    steps."""
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
            a -= lr * (1 - (t - 1) / steps) * (mi / (1 - b1**t)) / (np.sqrt(vi / (1 - b2**t)) + eps)
    return pair_up(flat)


def adam_torch(params, X, Y, *, steps, lr, device):
    """:func:`adam` in torch (float64) on ``device``: the same updates, for a GPU."""
    import torch

    def tensor(a):
        return torch.as_tensor(np.asarray(a), dtype=torch.float64, device=device)

    flat = [tensor(a).clone() for pair in params for a in pair]
    X, Y = tensor(X), tensor(Y)
    m = [torch.zeros_like(a) for a in flat]
    v = [torch.zeros_like(a) for a in flat]
    b1, b2, eps = ADAM["beta1"], ADAM["beta2"], ADAM["eps"]
    for t in range(1, steps + 1):
        W1, c1, W2, c2 = flat
        Z = X @ W1.T + c1
        A = torch.clamp(Z, min=0.0)
        R = (A @ W2.T + c2 - Y) / len(X)
        D = (R @ W2) * (Z > 0).to(Z.dtype)
        grads = (D.T @ X, D.sum(dim=0), R.T @ A, R.sum(dim=0))
        for a, g, mi, vi in zip(flat, grads, m, v):
            mi.mul_(b1).add_((1 - b1) * g)
            vi.mul_(b2).add_((1 - b2) * g * g)
            a.sub_(lr * (1 - (t - 1) / steps) * (mi / (1 - b1**t))
                   / (torch.sqrt(vi / (1 - b2**t)) + eps))
    return pair_up([a.cpu().numpy() for a in flat])


def pair_up(flat):
    """``[W1, b1, W2, b2]`` as ``((W1, b1), (W2, b2))``."""
    return tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))


def error(mlp, params, X, labels):
    """Fraction of examples whose largest output is not their label."""
    return float(np.mean(np.argmax(gcref.predict(mlp, params, X), axis=1) != labels))


def peak(table):
    """Interior peak of the seed-mean curve of ``table`` (widths x seeds), judged with
    standard errors: the index p with the largest ``min(rise_left, rise_right)`` where
    ``rise_left = mean[p] - min_{i<p} mean[i]`` (and likewise on the right), and whether both
    rises exceed 2 standard errors of their differences."""
    mean, stderr = mean_stderr(table, axis=1)
    best = None
    for p in range(1, len(mean) - 1):
        i = int(np.argmin(mean[:p]))
        j = p + 1 + int(np.argmin(mean[p + 1:]))
        rise = min(mean[p] - mean[i], mean[p] - mean[j])
        significant = below(mean[i], stderr[i], mean[p], stderr[p]) and below(
            mean[j], stderr[j], mean[p], stderr[p])
        if best is None or rise > best["rise"]:
            best = {"index": p, "rise": float(rise), "significant": significant,
                    "left_minimum_index": i, "right_minimum_index": j}
    return best


def one_run(settings, pool, width, run_seed, device="cpu"):
    """Train one width on the seed's noisy subset (NumPy on ``"cpu"``, else torch on
    ``device``); its errors, losses and GC."""
    X_pool, y_pool, X_test, y_test = pool
    n_train = settings["n_train"]
    X, labels, flipped = noisy_subset(X_pool, y_pool, n_train, settings["noise"],
                                      np.random.default_rng(run_seed))
    clean = np.setdiff1d(np.arange(n_train), flipped)
    Y, Y_test = np.eye(N_CLASSES)[labels], np.eye(N_CLASSES)[y_test]
    mlp = gcref.MLP([X.shape[1], width, N_CLASSES], activation="relu")
    start = mlp.init(np.random.default_rng([run_seed, width]), "he_normal", bias="zero")
    if device == "cpu":
        params = adam(start, X, Y, steps=settings["steps"], lr=settings["lr"])
    else:
        params = adam_torch(start, X, Y, steps=settings["steps"], lr=settings["lr"],
                            device=device)
    return {"test_error": error(mlp, params, X_test, y_test),
            "train_error": error(mlp, params, X, labels),
            "train_error_clean": error(mlp, params, X[clean], labels[clean]),
            "test_loss": gcref.mean_loss(mlp, params, X_test, Y_test, "squared"),
            "train_loss": gcref.mean_loss(mlp, params, X, Y, "squared"),
            "gc_train": gcref.geometric_complexity(mlp, params, X),
            "gc_test": gcref.geometric_complexity(mlp, params, X_test),
            "flipped": len(flipped)}


MEASURES = ("test_error", "train_error", "train_error_clean", "test_loss", "train_loss",
            "gc_train", "gc_test")


def run(settings, seed, context):
    pool = mnist1d(settings["num_samples"], seed)
    widths = settings["widths"]
    seeds = run_seeds(seed, settings["seeds"])
    records = {}
    for i, run_seed in enumerate(seeds):
        for j, width in enumerate(widths):
            key = f"H={width},seed={run_seed}"
            records[key] = context.runs.get(key, one_run, settings, pool, width, run_seed,
                                            context.device)
            context.progress(i * len(widths) + j + 1, len(widths) * len(seeds),
                             f"seed {run_seed} H={width}")
    out = {name: np.array([[records[f"H={w},seed={s}"][name] for s in seeds] for w in widths])
           for name in MEASURES}
    n_params = [gcref.MLP([pool[0].shape[1], w, N_CLASSES], activation="relu").n_params
                for w in widths]
    threshold = settings["n_train"] * N_CLASSES
    peaks = {name: peak(out[name]) for name in ("test_loss", "gc_train", "test_error")}
    octaves = abs(np.log2(widths[peaks["gc_train"]["index"]])
                  - np.log2(widths[peaks["test_loss"]["index"]]))
    held = (peaks["test_loss"]["significant"] and peaks["gc_train"]["significant"]
            and octaves <= OCTAVES)
    figure = plot(context.out_dir, widths, n_params, threshold, out, settings, len(seeds))
    measured = {
        "widths": widths, "n_params": n_params, "interpolation_threshold_params": threshold,
        **{name: summary(table, axis=1) for name, table in out.items()},
        "peaks": {name: {**entry, "width": widths[entry["index"]],
                         "params_over_threshold": n_params[entry["index"]] / threshold}
                  for name, entry in peaks.items()},
        "peak_distance_octaves": octaves,
        "spearman_gc_test_loss": spearman(out["gc_train"].mean(axis=1),
                                          out["test_loss"].mean(axis=1)),
    }
    return Outcome(measured=measured, held=bool(held), figures=[figure],
                   seeds=[seed, *seeds], frameworks=["mnist1d"],
                   notes=f"{records[f'H={widths[0]},seed={seeds[0]}']['flipped']} of "
                         f"{settings['n_train']} training labels flipped per seed; MNIST-1D "
                         f"generated with its own global-seed generator at seed {seed}.")


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
            mean, stderr = mean_stderr(out[key], axis=1)
            ax.errorbar(widths, mean, yerr=stderr, marker="o", capsize=3, label=label)
        ax.axvline(threshold_width, color="grey", linestyle=":",
                   label=f"params ~ n_train x 10 (H ~ {threshold_width})")
        ax.set_xscale("log", base=2)
        if ylabel != "classification error":
            ax.set_yscale("log")
        ax.set_xlabel("hidden units H")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    fig.suptitle(f"MNIST-1D, {settings['n_train']} training examples, {settings['noise']:.0%} "
                 f"label noise, 40-H-10 ReLU, full-batch Adam {settings['steps']} steps (decaying lr), "
                 f"mean and standard error of {n_seeds} seeds", fontsize=10)
    return save_figure(fig, out_dir, f"{NAME}.png")
