"""Backward error analysis of GD and SGD, as a log-log plot (MATH.md section 5).

One gradient-descent step theta_1 = theta_0 - h grad L(theta_0) is O(h^2) from the exact
gradient flow of L at time h but O(h^3) from the flow of the modified loss
L~_GD = L + (h/4) ||grad L||^2 (Barrett and Dherin, Implicit Gradient Regularization; the
pressure on ||grad L||^2 behind seed 000, eq. 6). The mean one-epoch SGD endpoint over all
orderings of m mini-batches is likewise O(h^2) from the flow of L and O(h^3) from that of
L~_SGD = L + h/(4m) sum_j ||grad L_{B_j}||^2. The distances come from
gcref.backward_error; this experiment repeats them on several random networks and plots them.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.backward_error import gd_backward_error, sgd_backward_error
from validation._report import Outcome, pyplot, save_figure

NAME = "backward_error"
CLAIM = (
    "one GD step (and one SGD epoch, averaged over batch orders) is O(h^2) from the gradient "
    "flow of L but O(h^3) from the flow of the modified loss L~ (log-log slopes 2 and 3)"
)
SOURCE = "MATH.md section 5; seed 000, eq. 6 (implicit gradient regularisation)"
RULE = (
    "held if, on every network, the fitted log-log slope is within 0.25 of 2 for the flow of L "
    "and within 0.25 of 3 for the flow of L~, for both GD and SGD"
)
QUICK = {"sizes": [2, 6, 1], "n_examples": 6, "n_batches": 3, "networks": 1,
         "steps": [0.1, 0.05, 0.025], "substeps": 8}
FULL = {"sizes": [3, 16, 16, 1], "n_examples": 12, "n_batches": 3, "networks": 5,
        "steps": [0.2, 0.1, 0.05, 0.025, 0.0125, 0.00625], "substeps": 32}

SLOPE_TOLERANCE = 0.25


def log_slope(steps, errors):
    """Least-squares slope of log error against log h (reported beside the rule's fit, which
    is gcref's over every step size)."""
    return float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


def run(settings, seed, out_dir, progress):
    seeds = [seed + n for n in range(settings["networks"])]
    n, m = settings["n_examples"], settings["n_batches"]
    batches = np.arange(n).reshape(m, n // m)
    results = {"gd": [], "sgd": []}
    for i, s in enumerate(seeds):
        rng = np.random.default_rng(s)
        mlp = gcref.MLP(settings["sizes"], activation="tanh")
        params = mlp.init(rng, "lecun_normal", bias="normal")
        X = rng.normal(size=(n, settings["sizes"][0]))
        y = rng.normal(size=(n, settings["sizes"][-1]))
        results["gd"].append(gd_backward_error(mlp, params, X, y, "squared", settings["steps"],
                                               substeps=settings["substeps"]))
        progress(2 * i + 1, 2 * len(seeds), "networks")
        results["sgd"].append(sgd_backward_error(mlp, params, X, y, "squared", list(batches),
                                                 settings["steps"],
                                                 substeps=settings["substeps"]))
        progress(2 * i + 2, 2 * len(seeds), "networks")

    measured = {"steps": settings["steps"]}
    held = True
    for method, runs in results.items():
        measured[method] = {
            "slope_flow": [r.slope_flow for r in runs],
            "slope_modified_flow": [r.slope_modified_flow for r in runs],
            "error_flow": [r.error_flow for r in runs],
            "error_modified_flow": [r.error_modified_flow for r in runs],
            "slope_flow_smallest_3": [log_slope(r.steps[-3:], r.error_flow[-3:]) for r in runs],
            "slope_modified_flow_smallest_3": [
                log_slope(r.steps[-3:], r.error_modified_flow[-3:]) for r in runs],
        }
        held &= all(abs(r.slope_flow - 2) < SLOPE_TOLERANCE
                    and abs(r.slope_modified_flow - 3) < SLOPE_TOLERANCE for r in runs)

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    titles = {"gd": "one GD step", "sgd": f"one SGD epoch ({m} batches, all orders)"}
    h = np.asarray(settings["steps"])
    for ax, (method, runs) in zip(axes, results.items()):
        for j, r in enumerate(runs):
            label = j == 0
            ax.loglog(h, r.error_flow, "o-", color="C0", alpha=0.7,
                      label="flow of L" if label else None)
            ax.loglog(h, r.error_modified_flow, "s-", color="C3", alpha=0.7,
                      label="flow of modified loss L~" if label else None)
        for power, color in ((2, "C0"), (3, "C3")):
            anchor = np.median([r.error_flow[0] if power == 2 else r.error_modified_flow[0]
                                for r in runs])
            ax.loglog(h, anchor * (h / h[0]) ** power, ":", color=color,
                      label=f"slope {power}")
        ax.set_title(f"{titles[method]}, {len(runs)} networks")
        ax.set_xlabel("learning rate h")
        ax.legend(fontsize=8)
    axes[0].set_ylabel(r"$\|\theta_{discrete} - \Phi_T(\theta_0)\|$")
    fig.suptitle("Backward error: distance of the discrete update from the exact flows")
    figure = save_figure(fig, out_dir, "backward_error.png")
    notes = "; ".join(
        f"{method}: slopes over the three smallest steps {np.round(measured[method]['slope_flow_smallest_3'], 2).tolist()} "
        f"(flow of L) and {np.round(measured[method]['slope_modified_flow_smallest_3'], 2).tolist()} (flow of L~)"
        for method in results)
    return Outcome(measured=measured, held=held, figures=[figure], seeds=seeds, notes=notes)
