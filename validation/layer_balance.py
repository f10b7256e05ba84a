"""Layer balance: ||W_k||_F^2 - ||W_j||_F^2 is conserved by gradient flow (seed 004, eq. 18).

For a bias-free ReLU network, <grad_{W_k} f(x), W_k> = f(x) for every layer k (MATH.md
section 6), so under gradient flow d/dt ||W_k||_F^2 = -2 <W_k, grad_{W_k} L> is the same for
every layer and the differences between layers are constant. Gradient descent with step h
changes each difference by O(h^2) per step, O(h) over a fixed training time, while the norms
themselves change by O(1).

The network is bias-free: its biases are zero and never updated (``train_biases=False``). Both step sizes train for
the same time t = h * steps so their drifts are comparable.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.optimizers import GradientDescent
from validation._report import Outcome, pyplot, save_figure

NAME = "layer_balance"
CLAIM = (
    "under small-step gradient descent of a bias-free ReLU network the layer norm differences "
    "||W_k||_F^2 - ||W_1||_F^2 stay (nearly) constant while the norms themselves change"
)
SOURCE = "seed 004, eq. 18"
RULE = (
    "held if, at the smaller step, the largest drift of a difference over training is below "
    "5% of the largest change of a layer norm, and the drift at the smaller step is below the "
    "drift at the larger one"
)
QUICK = {"sizes": [4, 12, 12, 1], "n_examples": 24, "steps": [0.02, 0.08], "time": 4.0,
         "target_scale": 2.0, "init_scale": 0.5, "records": 40}
FULL = {"sizes": [8, 64, 64, 64, 1], "n_examples": 128, "steps": [0.005, 0.02], "time": 20.0,
        "target_scale": 3.0, "init_scale": 0.5, "records": 200}

TOLERANCE = 0.05


def layer_sq_norms(params):
    """``||W_k||_F^2`` for every layer, shape (l,)."""
    return np.array([np.sum(W**2) for W, _ in params])


def train(mlp, params, X, y, step, n_steps, records, progress, label):
    """Full-batch GD on the weights only; the squared norms at ``records`` evenly spaced steps."""
    optimizer = GradientDescent(step, train_biases=False)
    record_at = set(np.linspace(0, n_steps, records, dtype=int).tolist())
    times, norms, losses = [], [], []
    for n in range(n_steps + 1):
        if n in record_at:
            times.append(n * step)
            norms.append(layer_sq_norms(params))
            losses.append(gcref.mean_loss(mlp, params, X, y, "squared"))
        if n == n_steps:
            break
        grads = gcref.loss_grad(mlp, params, X, y, "squared")
        params = optimizer.update(mlp, params, grads, n + 1)
        progress(n + 1, n_steps, label)
    return np.array(times), np.array(norms), np.array(losses)


def run(settings, seed, out_dir, progress):
    rng = np.random.default_rng(seed)
    sizes = settings["sizes"]
    mlp = gcref.MLP(sizes, activation="relu")
    X = rng.normal(size=(settings["n_examples"], sizes[0]))
    direction = rng.normal(size=sizes[0])
    y = settings["target_scale"] * np.sin(X @ direction / np.linalg.norm(direction) * 2.0)
    params = mlp.init(rng, "he_normal", scale=settings["init_scale"], bias="zero")

    runs = {}
    for step in settings["steps"]:
        n_steps = int(round(settings["time"] / step))
        runs[step] = train(mlp, params, X, y, step, n_steps, settings["records"], progress,
                           f"h={step}")

    measured = {"initial_sq_norms": layer_sq_norms(params), "per_step": {}}
    for step, (times, norms, losses) in runs.items():
        diffs = norms[:, 1:] - norms[:, :1]
        drift = float(np.max(np.abs(diffs - diffs[0])))
        change = float(np.max(np.abs(norms - norms[0])))
        measured["per_step"][str(step)] = {
            "steps": int(round(settings["time"] / step)),
            "final_loss": losses[-1],
            "initial_loss": losses[0],
            "max_norm_change": change,
            "max_difference_drift": drift,
            "relative_drift": drift / change,
        }
    small, large = (measured["per_step"][str(s)] for s in sorted(settings["steps"])[:2])
    held = (small["relative_drift"] < TOLERANCE
            and small["max_difference_drift"] < large["max_difference_drift"])

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    h_small = min(settings["steps"])
    times, norms, losses = runs[h_small]
    for k in range(norms.shape[1]):
        axes[0].plot(times, norms[:, k], label=f"layer {k + 1}")
    axes[0].set_title(f"Squared layer norms, GD step h = {h_small}")
    axes[0].set_xlabel("training time t = h x steps")
    axes[0].set_ylabel(r"$\|W_k\|_F^2$")
    axes[0].legend()
    for step, style in zip(sorted(runs), ("-", "--", ":")):
        times, norms, _ = runs[step]
        diffs = norms[:, 1:] - norms[:, :1]
        for k in range(diffs.shape[1]):
            axes[1].plot(times, diffs[:, k] - diffs[0, k], style, color=f"C{k + 1}",
                         label=f"k={k + 2}, h={step}")
    axes[1].set_title("Drift of the differences from their start")
    axes[1].set_xlabel("training time t = h x steps")
    axes[1].set_ylabel(r"$D_k(t) - D_k(0)$, $D_k = \|W_k\|_F^2 - \|W_1\|_F^2$")
    axes[1].legend(fontsize=8)
    for step, style in zip(sorted(runs), ("-", "--", ":")):
        times, _, losses = runs[step]
        axes[2].semilogy(times, losses, style, color="k", label=f"h={step}")
    axes[2].set_title("Training loss")
    axes[2].set_xlabel("training time t = h x steps")
    axes[2].set_ylabel("mean squared loss")
    axes[2].legend()
    figure = save_figure(fig, out_dir, "layer_balance.png")

    return Outcome(measured=measured, held=held, figures=[figure], seeds=[seed])
