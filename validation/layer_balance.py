"""Layer balance: ||W_k||_F^2 - ||W_j||_F^2 is conserved by gradient flow (seed 004, eq. 18).

For a bias-free ReLU network, <grad_{W_k} f(x), W_k> = f(x) for every layer k (MATH.md
section 6), so under gradient flow d/dt ||W_k||_F^2 = -2 <W_k, grad_{W_k} L> is the same for
every layer and the differences between layers are constant. Gradient descent with step h
changes each difference by O(h^2) per step, O(h) over a fixed training time, while the norms
themselves change by O(1).

The network is bias-free: its biases are zero and never updated (``train_biases=False``).
Every step size trains for the same time t = h * steps, so the drifts are comparable and the
rule can test their order in h over four step sizes. The control trains non-zero biases as
well: then ||W_k||^2 + ||b_k||^2 (not ||W_k||^2) enters the conserved quantity, the W-only
differences drift by O(1) and the rule must reject the slope.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.optimizers import GradientDescent
from validation._report import Outcome, pyplot, save_figure
from validation._stats import below_bound, log_slope, run_seeds, summary, within

NAME = "layer_balance"
CLAIM = (
    "under gradient descent of a bias-free ReLU network the layer norm differences "
    "||W_k||_F^2 - ||W_1||_F^2 drift only by O(h) over a fixed training time, while the norms "
    "themselves change by O(1)"
)
SOURCE = "seed 004, eq. 18"
RULE = (
    "per seed, the largest drift of a difference over the training time, at 4 step sizes h, "
    "and the least-squares slope of log drift against log h. Held if the seed-mean slope is "
    "within 0.25 of 1 (a departure counts beyond 2 standard errors), the seed-mean drift at the "
    "smallest h is below 5% of the largest change of a layer norm beyond 2 standard errors, "
    "and the control (biases non-zero and trained, where the W-only differences are not "
    "conserved) is rejected: its slope over the smallest and largest h is below 0.5 beyond "
    "2 standard errors"
)
QUICK = {"sizes": [4, 12, 12, 1], "n_examples": 24, "steps": [0.01, 0.02, 0.04, 0.08],
         "time": 2.0, "target_scale": 2.0, "init_scale": 0.5, "records": 20, "seeds": 2}
FULL = {"sizes": [8, 64, 64, 64, 1], "n_examples": 128, "steps": [0.00125, 0.0025, 0.005, 0.01],
        "time": 10.0, "target_scale": 3.0, "init_scale": 0.5, "records": 200, "seeds": 5}

TOLERANCE = 0.05
SLOPE_TOLERANCE = 0.25
CONTROL_SLOPE = 0.5


def layer_sq_norms(params):
    """``||W_k||_F^2`` for every layer, shape (l,)."""
    return np.array([np.sum(W**2) for W, _ in params])


def train(mlp, params, X, y, step, n_steps, records, progress, label, train_biases=False):
    """Full-batch GD (on the weights only unless ``train_biases``); the squared weight norms
    at ``records`` evenly spaced steps."""
    optimizer = GradientDescent(step, train_biases=train_biases)
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


def drifts(runs):
    """Largest drift of a difference and largest change of a norm, per step size."""
    out = {"max_difference_drift": [], "max_norm_change": [], "final_loss": []}
    for times, norms, losses in runs:
        diffs = norms[:, 1:] - norms[:, :1]
        out["max_difference_drift"].append(float(np.max(np.abs(diffs - diffs[0]))))
        out["max_norm_change"].append(float(np.max(np.abs(norms - norms[0]))))
        out["final_loss"].append(float(losses[-1]))
    return out


def one_seed(settings, run_seed, progress):
    """The bias-free runs at every step size and the control runs, from one draw."""
    rng = np.random.default_rng(run_seed)
    sizes = settings["sizes"]
    mlp = gcref.MLP(sizes, activation="relu")
    X = rng.normal(size=(settings["n_examples"], sizes[0]))
    direction = rng.normal(size=sizes[0])
    y = settings["target_scale"] * np.sin(X @ direction / np.linalg.norm(direction) * 2.0)
    params = mlp.init(rng, "he_normal", scale=settings["init_scale"], bias="zero")
    with_biases = tuple((W, 0.3 * rng.normal(size=b.shape)) for W, b in params)
    steps = sorted(settings["steps"])
    record = {"initial_sq_norms": layer_sq_norms(params)}
    main = [train(mlp, params, X, y, h, int(round(settings["time"] / h)), settings["records"],
                  progress, f"seed {run_seed} h={h}") for h in steps]
    control = [train(mlp, with_biases, X, y, h, int(round(settings["time"] / h)),
                     settings["records"], progress, f"control h={h}", train_biases=True)
               for h in (steps[0], steps[-1])]
    record["bias_free"], record["control"] = drifts(main), drifts(control)
    record["slope"] = log_slope(steps, record["bias_free"]["max_difference_drift"])
    record["control_slope"] = log_slope((steps[0], steps[-1]),
                                        record["control"]["max_difference_drift"])
    record["relative_drift_smallest_h"] = (record["bias_free"]["max_difference_drift"][0]
                                           / record["bias_free"]["max_norm_change"][0])
    if run_seed == settings.get("plot_seed", run_seed):
        record["curves"] = {"times": [r[0] for r in main], "norms": [r[1] for r in main],
                            "losses": [r[2] for r in main]}
    return record


def run(settings, seed, context):
    seeds = run_seeds(seed, settings["seeds"])
    plotted = {**settings, "plot_seed": seeds[0]}
    records = [context.runs.get(f"seed={s}", one_seed, plotted, s, context.progress)
               for s in seeds]
    steps = sorted(settings["steps"])
    slope = summary([r["slope"] for r in records])
    control = summary([r["control_slope"] for r in records])
    relative = summary([r["relative_drift_smallest_h"] for r in records])
    drift = summary([r["bias_free"]["max_difference_drift"] for r in records], axis=0)
    order_one = within(slope["mean"], slope["stderr"], 1 - SLOPE_TOLERANCE, 1 + SLOPE_TOLERANCE)
    small = below_bound(relative["mean"], relative["stderr"], TOLERANCE)
    rejected = below_bound(control["mean"], control["stderr"], CONTROL_SLOPE)
    measured = {"steps": steps, "slope": slope, "drift": drift,
                "relative_drift_smallest_h": relative, "control_slope": control,
                "control_drift": summary([r["control"]["max_difference_drift"]
                                          for r in records], axis=0),
                "slope_near_1": order_one, "drift_small": small, "control_rejected": rejected}
    figure = plot(context.out_dir, records, steps, drift)
    return Outcome(measured=measured, held=bool(order_one and small and rejected),
                   figures=[figure], seeds=seeds)


def plot(out_dir, records, steps, drift):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    curves = records[0]["curves"]
    times, norms = np.asarray(curves["times"][0]), np.asarray(curves["norms"][0])
    for k in range(norms.shape[1]):
        axes[0].plot(times, norms[:, k], label=f"layer {k + 1}")
    axes[0].set_title(f"Squared layer norms, GD step h = {steps[0]} (first seed)")
    axes[0].set_xlabel("training time t = h x steps")
    axes[0].set_ylabel(r"$\|W_k\|_F^2$")
    axes[0].legend()
    for j, (h, style) in enumerate(zip(steps, ("-", "--", "-.", ":"))):
        times, norms = np.asarray(curves["times"][j]), np.asarray(curves["norms"][j])
        diffs = norms[:, 1:] - norms[:, :1]
        for k in range(diffs.shape[1]):
            axes[1].plot(times, diffs[:, k] - diffs[0, k], style, color=f"C{k + 1}",
                         label=f"k={k + 2}, h={h}" if j in (0, len(steps) - 1) else None)
    axes[1].set_title("Drift of the differences from their start (first seed)")
    axes[1].set_xlabel("training time t = h x steps")
    axes[1].set_ylabel(r"$D_k(t) - D_k(0)$, $D_k = \|W_k\|_F^2 - \|W_1\|_F^2$")
    axes[1].legend(fontsize=7)
    axes[2].errorbar(steps, drift["mean"], yerr=drift["stderr"], marker="o", capsize=3,
                     label="bias-free (mean, standard error)")
    control = np.array([r["control"]["max_difference_drift"] for r in records])
    axes[2].plot([steps[0], steps[-1]], control.mean(axis=0), "s--", color="C3",
                 label="control: biases trained")
    h = np.asarray(steps)
    axes[2].plot(h, drift["mean"][0] * h / h[0], "k:", label="slope 1")
    axes[2].set_xscale("log")
    axes[2].set_yscale("log")
    axes[2].set_title(f"Largest drift against h, {len(records)} seeds")
    axes[2].set_xlabel("step h")
    axes[2].set_ylabel("largest drift of a difference")
    axes[2].legend(fontsize=8)
    return save_figure(fig, out_dir, "layer_balance.png")
