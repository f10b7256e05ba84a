"""The Geometric Occam's razor in one dimension (seed 000, section 2 and Fig. 1).

A ReLU MLP with 3 hidden layers of 300 units, trained by SGD without explicit
regularisation on 10 points, could interpolate them with thousands of linear pieces; seed 000
observes instead that the learned function's arc length on [min x_n, max x_n] ends close to
that of the shortest interpolating curve, the polyline through the points. The arc length is
exact here (gcref.geometry.arc_length sums the network's linear pieces); the polyline length
comes from gcref.geometry.polyline_length.

The initialisation is PyTorch's default for linear layers (weights and biases uniform on
[-1/sqrt(fan_in), 1/sqrt(fan_in)], i.e. LeCun uniform scaled by 1/sqrt(3)): biases that are
not zero put the first layer's kinks inside the interval.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.geometry import arc_length, polyline_length
from gcref.optimizers import GradientDescent
from validation._report import Outcome, pyplot, save_figure

NAME = "arc_length"
CLAIM = (
    "the arc length of a 3 x 300 ReLU MLP trained by SGD on 10 points moves during training "
    "towards, and ends near, that of the shortest interpolating polyline"
)
SOURCE = "seed 000, section 2 and Fig. 1"
RULE = (
    "held if at the end of training the network interpolates the points (largest |residual| "
    "below 5% of the range of y), its exact arc length is within 5% of the polyline's, and "
    "closer to it than at initialisation"
)
QUICK = {"width": 32, "hidden_layers": 3, "n_points": 10, "steps": 300, "lr": 0.1,
         "batch_size": 5, "snapshots": 12}
FULL = {"width": 300, "hidden_layers": 3, "n_points": 10, "steps": 4000, "lr": 0.1,
        "batch_size": 5, "snapshots": 40}

INTERPOLATION_TOLERANCE = 0.05
LENGTH_TOLERANCE = 0.05


def snapshot_steps(n_steps, count):
    """About ``count`` distinct steps from 0 to ``n_steps``, denser early (log-spaced)."""
    steps = np.unique(np.round(np.geomspace(1, n_steps + 1, count)).astype(int) - 1)
    return sorted(set(steps.tolist()) | {0, n_steps})


def run(settings, seed, out_dir, progress):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0.0, 1.0, settings["n_points"]))
    y = 1.2 + 0.7 * np.sin(2 * np.pi * x)
    X = x[:, None]
    sizes = [1, *[settings["width"]] * settings["hidden_layers"], 1]
    mlp = gcref.MLP(sizes, activation="relu")
    params = mlp.init(rng, "lecun_uniform", scale=3 ** -0.5, bias="uniform")
    polyline = polyline_length(x, y)
    grid = np.linspace(x[0], x[-1], 400)[:, None]

    record_at = snapshot_steps(settings["steps"], settings["snapshots"])
    history = {"step": [], "arc_length": [], "n_pieces": [], "max_residual": [], "loss": []}
    curves = {}
    optimizer = GradientDescent(settings["lr"])
    for step in range(settings["steps"] + 1):
        if step in record_at:
            length = arc_length(mlp, params, X)
            history["step"].append(step)
            history["arc_length"].append(length.value)
            history["n_pieces"].append(length.n_pieces)
            history["max_residual"].append(float(np.max(np.abs(
                gcref.predict(mlp, params, X)[:, 0] - y))))
            history["loss"].append(gcref.mean_loss(mlp, params, X, y, "squared"))
            curves[step] = gcref.predict(mlp, params, grid)[:, 0]
        if step == settings["steps"]:
            break
        batch = rng.choice(len(x), settings["batch_size"], replace=False)
        grads = gcref.loss_grad(mlp, params, X[batch], y[batch], "squared")
        params = optimizer.update(mlp, params, grads, step + 1)
        progress(step + 1, settings["steps"], "SGD steps")

    initial, final = history["arc_length"][0], history["arc_length"][-1]
    y_range = float(y.max() - y.min())
    interpolates = history["max_residual"][-1] < INTERPOLATION_TOLERANCE * y_range
    near = abs(final - polyline) < LENGTH_TOLERANCE * polyline
    closer = abs(final - polyline) < abs(initial - polyline)
    measured = {
        **history,
        "polyline_length": polyline,
        "interval_length": float(x[-1] - x[0]),
        "final_relative_excess": (final - polyline) / polyline,
        "initial_relative_excess": (initial - polyline) / polyline,
        "interpolates": interpolates,
    }

    figures = [plot_sequence(out_dir, x, y, grid[:, 0], curves, history),
               plot_length(out_dir, history, polyline, float(x[-1] - x[0]))]
    return Outcome(measured=measured, held=bool(interpolates and near and closer),
                   figures=figures, seeds=[seed])


def plot_sequence(out_dir, x, y, grid, curves, history):
    plt = pyplot()
    steps = list(curves)
    shown = [steps[int(round(i))] for i in np.linspace(0, len(steps) - 1, 8)]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7), sharex=True, sharey=True)
    for ax, step in zip(axes.ravel(), shown):
        length = history["arc_length"][history["step"].index(step)]
        ax.plot(grid, curves[step], color="C3", label="network")
        ax.plot(x, y, "o", color="C0", label="data")
        ax.set_title(f"step {step}: arc length {length:.3f}")
    for ax in axes[1]:
        ax.set_xlabel("x")
    for ax in axes[:, 0]:
        ax.set_ylabel("f(x)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Training sequence of the ReLU MLP on 10 points")
    return save_figure(fig, out_dir, "arc_length_sequence.png")


def plot_length(out_dir, history, polyline, interval):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = np.array(history["step"]) + 1
    ax.semilogx(steps, history["arc_length"], "o-", ms=3, label="arc length of the network")
    ax.axhline(polyline, color="k", ls="--", label=f"shortest interpolating polyline ({polyline:.3f})")
    ax.axhline(interval, color="0.6", ls=":", label=f"flat function ({interval:.3f})")
    ax.set_title("Exact arc length on [min x, max x] during SGD")
    ax.set_xlabel("SGD step + 1")
    ax.set_ylabel("arc length")
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "arc_length.png")
