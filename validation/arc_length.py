"""The Geometric Occam's razor in one dimension (seed 000, section 2 and Fig. 1).

A ReLU MLP with 3 hidden layers of 300 units, trained by SGD without explicit
regularisation on 10 points, could interpolate them with thousands of linear pieces; seed 000
observes instead that the learned function's arc length on [min x_n, max x_n] ends close to
that of the shortest interpolating curve, the polyline through the points. The arc length is
exact here (gcref.geometry.arc_length sums the network's linear pieces); the polyline length
comes from gcref.geometry.polyline_length.

The initialisation is PyTorch's default for linear layers (weights and biases uniform on
[-1/sqrt(fan_in), 1/sqrt(fan_in)], i.e. LeCun uniform scaled by 1/sqrt(3)): biases that are
not zero put the first layer's kinks inside the interval. A control run starts from the same
initialisation scaled up, whose function is long and wiggly at the start; trained in the
lazy regime it interpolates while keeping much of that length, and the rule must reject it.

Every run is measured at a comparable point of training: when its training loss first falls
to ``target_loss`` (the squared loss ``(1/N) sum_n 1/2 (f(x_n) - y_n)^2``; a root-mean-square
residual of about 1% of the range of y), so that the arc length is that of an
interpolant. A run that does not reach it within its step budget is reported and left out
of its rule (too few runs reaching it and the rule cannot hold). An earlier protocol ran a
fixed number of steps and judged "interpolates" as a largest residual below 5% of the range
of y, beyond 2 standard errors: a threshold of ours on which one base seed's verdict turned
(3.1% +- 0.9%).

"Close to the shortest" needs a yardstick. The rule takes the natural cubic spline through
the same points (the interpolant of least bending energy, the classical "simplest smooth
curve" that seed 000, section 5, relates the Dirichlet energy to): the network must end no
longer than that spline, paired seed by seed. An earlier rule asked for an excess below a
fixed 5%, a number the paper does not give; it decided on the seeds' spread (validation/
README.md says what it gave).
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.geometry import arc_length, polyline_length
from gcref.optimizers import GradientDescent
from validation._report import Outcome, pyplot, save_figure
from validation._stats import above_bound, below, run_seeds, summary

NAME = "arc_length"
CLAIM = (
    "the arc length of a 3 x 300 ReLU MLP trained by SGD on 10 points ends near that of the "
    "shortest interpolating polyline, closer than at initialisation"
)
SOURCE = "seed 000, section 2 and Fig. 1"
RULE = (
    "every run (its own 10 points and initialisation) trains by SGD until its training loss "
    "first falls to target_loss (at most steps steps; at most control_steps for the control); "
    "runs that do not reach it are reported and left out. Per run that reached it, the "
    "relative excess |L - L_polyline| / L_polyline of the exact arc length there and at "
    "initialisation, and the same excess of the natural cubic spline through the points. The "
    "rule holds on a set of runs if at least 2 reached the target, their final excess is "
    "below the initial one beyond 2 standard errors, and their final excess is not above the "
    "spline's beyond 2 standard errors of their paired per-seed difference (no longer than "
    "the smoothest interpolant). Held if the rule holds on the default-initialised runs and "
    "rejects the control runs (initial weights scaled up by control_scale, a long wiggly "
    "function at initialisation, trained at a learning rate scaled down for stability), at "
    "least 2 of which must reach the target for the control to count as rejected"
)
QUICK = {"width": 32, "hidden_layers": 3, "n_points": 10, "target_loss": 3e-2, "steps": 300,
         "lr": 0.1, "batch_size": 5, "snapshots": 8, "seeds": 2,
         "control_scale": 4.0, "control_lr": 1e-3, "control_steps": 300}
FULL = {"width": 300, "hidden_layers": 3, "n_points": 10, "target_loss": 1e-4, "steps": 20000,
        "lr": 0.1, "batch_size": 5, "snapshots": 16, "seeds": 10,
        "control_scale": 5.0, "control_lr": 2e-5, "control_steps": 64000}

#: Runs that must reach the target for a set of runs to be judged (a standard error needs 2).
MIN_REACHED = 2
#: Points of the grid on which the spline's arc length is summed (relative error ~1e-9).
SPLINE_GRID = 20001


def spline_excess(x, y):
    """Relative excess ``(L_spline - L_polyline) / L_polyline`` of the natural cubic spline
    through the points ``(x_n, y_n)`` (``x`` strictly increasing), on ``[x_0, x_last]``.

    The yardstick of the rule: an interpolant is never shorter than the polyline, and the
    natural spline is the smooth interpolant of least bending energy. Its arc length is summed
    over the chords of a fine grid, which converges like the grid step squared.
    """
    from scipy.interpolate import CubicSpline

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    grid = np.linspace(x[0], x[-1], SPLINE_GRID)
    # The polyline through the spline's values on a fine grid: its chords.
    length = polyline_length(grid, CubicSpline(x, y, bc_type="natural")(grid))
    polyline = polyline_length(x, y)
    return (length - polyline) / polyline


def snapshot_steps(n_steps, count):
    """About ``count`` distinct steps from 0 to ``n_steps``, denser early (log-spaced)."""
    steps = np.unique(np.round(np.geomspace(1, n_steps + 1, count)).astype(int) - 1)
    return sorted(set(steps.tolist()) | {0, n_steps})


def one_run(settings, run_seed, *, scale, lr, n_steps, progress, label):
    """SGD from PyTorch's default initialisation times ``scale`` until the training loss
    first falls to ``target_loss`` (at most ``n_steps`` steps); the arc-length history,
    whose last entry is the step where it stopped."""
    rng = np.random.default_rng(run_seed)
    x = np.sort(rng.uniform(0.0, 1.0, settings["n_points"]))
    y = 1.2 + 0.7 * np.sin(2 * np.pi * x)
    X = x[:, None]
    sizes = [1, *[settings["width"]] * settings["hidden_layers"], 1]
    mlp = gcref.MLP(sizes, activation="relu")
    params = mlp.init(rng, "lecun_uniform", scale=scale * 3 ** -0.5, bias="uniform")
    grid = np.linspace(x[0], x[-1], 400)[:, None]
    record_at = set(snapshot_steps(n_steps, settings["snapshots"]))
    history = {"step": [], "arc_length": [], "n_pieces": [], "max_residual": [], "loss": [],
               "curves": []}
    optimizer = GradientDescent(lr)
    step, reached = 0, False
    while True:
        loss = gcref.mean_loss(mlp, params, X, y, "squared")
        reached = loss <= settings["target_loss"]
        if step in record_at or reached or step == n_steps:
            length = arc_length(mlp, params, X)
            history["step"].append(step)
            history["arc_length"].append(length.value)
            history["n_pieces"].append(length.n_pieces)
            history["max_residual"].append(float(np.max(np.abs(
                gcref.predict(mlp, params, X)[:, 0] - y))))
            history["loss"].append(loss)
            history["curves"].append(gcref.predict(mlp, params, grid)[:, 0])
        if reached or step == n_steps:
            break
        batch = rng.choice(len(x), settings["batch_size"], replace=False)
        grads = gcref.loss_grad(mlp, params, X[batch], y[batch], "squared")
        params = optimizer.update(mlp, params, grads, step + 1)
        step += 1
        progress(step, n_steps, label)
    polyline = polyline_length(x, y)
    return {**history, "x": x, "y": y, "grid": grid[:, 0], "polyline_length": polyline,
            "reached": bool(reached), "steps_run": step,
            "residual_fraction": history["max_residual"][-1] / float(y.max() - y.min()),
            "final_excess": abs(history["arc_length"][-1] - polyline) / polyline,
            "initial_excess": abs(history["arc_length"][0] - polyline) / polyline}


def judged(records, seeds):
    """The rule on a set of runs: its statistics over the runs that reached the target,
    the seeds that did not, and whether it holds."""
    not_reached = [s for s, r in zip(seeds, records) if not r["reached"]]
    records = [r for r in records if r["reached"]]
    out = {"n_reached": len(records), "not_reached": not_reached,
           "judged": len(records) >= MIN_REACHED}
    if not out["judged"]:
        return {**out, "no_longer_than_spline": False, "closer_than_at_init": False,
                "rule_holds": False}
    stats = {key: summary([r[key] for r in records])
             for key in ("residual_fraction", "final_excess", "initial_excess", "steps_run")}
    spline = [spline_excess(r["x"], r["y"]) for r in records]
    stats["spline_excess"] = summary(spline)
    stats["excess_over_spline"] = summary([r["final_excess"] - e
                                           for r, e in zip(records, spline)])
    near = not above_bound(stats["excess_over_spline"]["mean"],
                           stats["excess_over_spline"]["stderr"], 0.0)
    closer = below(stats["final_excess"]["mean"], stats["final_excess"]["stderr"],
                   stats["initial_excess"]["mean"], stats["initial_excess"]["stderr"])
    return {**out, **stats, "no_longer_than_spline": near, "closer_than_at_init": closer,
            "rule_holds": near and closer}


def rejected(control):
    """Whether the rule rejects the control runs (:func:`judged`'s record of them).

    Only if they were judged (at least :data:`MIN_REACHED` reached the target): a control
    that never produced an interpolant has shown nothing, and does not count as rejected.
    """
    return control["judged"] and not control["rule_holds"]


def run(settings, seed, context):
    seeds = run_seeds(seed, settings["seeds"])
    runs = {"default": [], "control": []}
    for s in seeds:
        runs["default"].append(context.runs.get(
            f"default,seed={s}", one_run, settings, s, scale=1.0, lr=settings["lr"],
            n_steps=settings["steps"], progress=context.progress, label=f"seed {s}"))
        runs["control"].append(context.runs.get(
            f"control,seed={s}", one_run, settings, s, scale=settings["control_scale"],
            lr=settings["control_lr"], n_steps=settings["control_steps"],
            progress=context.progress, label=f"control seed {s}"))
    measured = {name: judged(records, seeds) for name, records in runs.items()}
    measured["control_rejected"] = rejected(measured["control"])
    first = runs["default"][0]
    spline_mean = measured["default"].get("spline_excess", {}).get("mean")
    figures = [plot_sequence(context.out_dir, first),
               plot_length(context.out_dir, runs, spline_mean)]
    return Outcome(measured=measured,
                   held=bool(measured["default"]["rule_holds"] and measured["control_rejected"]),
                   figures=figures, seeds=seeds)


def plot_sequence(out_dir, record):
    plt = pyplot()
    count = len(record["step"])
    shown = sorted({int(round(i)) for i in np.linspace(0, count - 1, 8)})
    fig, axes = plt.subplots(2, 4, figsize=(16, 7), sharex=True, sharey=True)
    for ax, i in zip(axes.ravel(), shown):
        ax.plot(record["grid"], record["curves"][i], color="C3", label="network")
        ax.plot(record["x"], record["y"], "o", color="C0", label="data")
        ax.set_title(f"step {record['step'][i]}: arc length {record['arc_length'][i]:.3f}")
    for ax in axes[1]:
        ax.set_xlabel("x")
    for ax in axes[:, 0]:
        ax.set_ylabel("f(x)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Training sequence of the ReLU MLP on 10 points (first seed)")
    return save_figure(fig, out_dir, "arc_length_sequence.png")


def plot_length(out_dir, runs, spline_excess_mean):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, color in (("default", "C0"), ("control", "C3")):
        for i, record in enumerate(runs[name]):
            steps = np.array(record["step"]) + 1
            ax.loglog(steps, np.array(record["arc_length"]) / record["polyline_length"], "o-",
                      ms=3, color=color, alpha=0.7,
                      label=f"{name} initialisation" if i == 0 else None)
    ax.axhline(1.0, color="k", ls="--", label="shortest interpolating polyline")
    if spline_excess_mean is not None:
        ax.axhline(1.0 + float(spline_excess_mean), color="k", ls=":",
                   label="natural cubic spline (seed mean)")
    ax.set_title("Exact arc length on [min x, max x] during SGD until the loss target, every seed")
    ax.set_xlabel("SGD step + 1")
    ax.set_ylabel("arc length / polyline length")
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "arc_length.png")
