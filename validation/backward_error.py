"""Backward error analysis of GD and SGD, as a log-log plot (MATH.md section 5).

One gradient-descent step theta_1 = theta_0 - h grad L(theta_0) is O(h^2) from the exact
gradient flow of L at time h but O(h^3) from the flow of the modified loss
L~_GD = L + (h/4) ||grad L||^2 (Barrett and Dherin, Implicit Gradient Regularization; the
pressure on ||grad L||^2 behind seed 000, eq. 6). The mean one-epoch SGD endpoint over all
orderings of m mini-batches is likewise O(h^2) from the flow of L and O(h^3) from that of
L~_SGD = L + h/(4m) sum_j ||grad L_{B_j}||^2. The distances come from
gcref.backward_error; this experiment repeats them on several random networks, judges the
last two halving ratios over an asymptotic range of steps (a fitted slope over a range that
includes a non-asymptotic step misjudges the order), and checks that the rule rejects a
modified loss with the wrong coefficient.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref import flatten_params, unflatten_params
from gcref.backward_error import gd_backward_error, rk4_flow, sgd_backward_error
from validation._report import Outcome, pyplot, save_figure
from validation._stats import below_bound, mean_stderr, summary, within

NAME = "backward_error"
CLAIM = (
    "one GD step (and one SGD epoch, averaged over batch orders) is O(h^2) from the gradient "
    "flow of L but O(h^3) from the flow of the modified loss L~: halving h divides the "
    "distances by 4 and 8 as h -> 0"
)
SOURCE = "MATH.md section 5; seed 000, eq. 6 (implicit gradient regularisation)"
RULE = (
    "over step sizes halving from 0.05 (the asymptotic range: an SGD epoch at h = 0.2 is "
    "not), per network the last two halving ratios error(h) / error(h / 2). Held if, for GD "
    "and SGD, the network-mean of each of the last two ratios is within 15% of 4 for the flow "
    "of L and within 15% of 8 for the flow of L~ (a departure counts beyond 2 standard "
    "errors), and the control (the GD step against the flow of L + (h/2)||grad L||^2, the "
    "modified loss with twice its coefficient, which is only O(h^2) close) is rejected: its "
    "last two ratios are below 8 (1 - 15%) beyond 2 standard errors"
)
QUICK = {"sizes": [2, 6, 1], "n_examples": 6, "n_batches": 3, "networks": 2,
         "steps": [0.05, 0.025, 0.0125, 0.00625], "substeps": 8}
FULL = {"sizes": [3, 16, 16, 1], "n_examples": 12, "n_batches": 3, "networks": 8,
        "steps": [0.05, 0.025, 0.0125, 0.00625, 0.003125, 0.0015625], "substeps": 32}

RATIO_TOLERANCE = 0.15
ORDERS = {"error_flow": 4.0, "error_modified_flow": 8.0}


def halving_ratios(errors):
    """``errors[k] / errors[k + 1]`` for the last two halvings."""
    errors = np.asarray(errors)
    return (errors[-3:-1] / errors[-2:]).tolist()


def control_errors(mlp, params, X, y, steps, substeps):
    """Distances of one GD step from the flow of ``L + (h/2) ||grad L||^2`` (the modified
    loss of step 2h, gcref.modified_loss_gd_grad) over time h."""
    theta0 = flatten_params(params)
    g0 = flatten_params(gcref.loss_grad(mlp, params, X, y, "squared"))
    errors = []
    for h in steps:

        def gradient(theta, h=h):
            return flatten_params(gcref.modified_loss_gd_grad(
                mlp, unflatten_params(theta, params), X, y, "squared", 2 * h))

        errors.append(float(np.linalg.norm(theta0 - h * g0
                                           - rk4_flow(gradient, theta0, h, substeps))))
    return errors


def one_network(settings, network_seed):
    """GD, SGD and control distances for one random network and data set."""
    rng = np.random.default_rng(network_seed)
    n, m = settings["n_examples"], settings["n_batches"]
    batches = list(np.arange(n).reshape(m, n // m))
    mlp = gcref.MLP(settings["sizes"], activation="tanh")
    params = mlp.init(rng, "lecun_normal", bias="normal")
    X = rng.normal(size=(n, settings["sizes"][0]))
    y = rng.normal(size=(n, settings["sizes"][-1]))
    steps, substeps = settings["steps"], settings["substeps"]
    record = {}
    for method, result in (
            ("gd", gd_backward_error(mlp, params, X, y, "squared", steps, substeps=substeps)),
            ("sgd", sgd_backward_error(mlp, params, X, y, "squared", batches, steps,
                                       substeps=substeps))):
        record[method] = {key: getattr(result, key).tolist() for key in ORDERS}
        for key in ORDERS:
            record[method][f"{key}_ratios"] = halving_ratios(record[method][key])
    control = control_errors(mlp, params, X, y, steps, substeps)
    record["control"] = {"error": control, "ratios": halving_ratios(control)}
    return record


def run(settings, seed, context):
    seeds = [seed + n for n in range(settings["networks"])]
    if len(seeds) < 2:
        raise ValueError("networks must be at least 2 (a standard error needs two)")
    records = []
    for i, s in enumerate(seeds):
        records.append(context.runs.get(f"network={s}", one_network, settings, s))
        context.progress(i + 1, len(seeds), "networks")

    measured = {"steps": settings["steps"]}
    held = True
    for method in ("gd", "sgd"):
        measured[method] = {}
        for key, order in ORDERS.items():
            ratios = summary([r[method][f"{key}_ratios"] for r in records], axis=0)
            ok = all(within(mean, se, order * (1 - RATIO_TOLERANCE), order * (1 + RATIO_TOLERANCE))
                     for mean, se in zip(ratios["mean"], ratios["stderr"]))
            measured[method][key] = summary([r[method][key] for r in records], axis=0)
            measured[method][f"{key}_ratios"] = ratios
            measured[method][f"{key}_ratios_near_{order:g}"] = ok
            held &= ok
    control = summary([r["control"]["ratios"] for r in records], axis=0)
    rejected = all(below_bound(mean, se, 8 * (1 - RATIO_TOLERANCE))
                   for mean, se in zip(control["mean"], control["stderr"]))
    measured["control"] = {"error": summary([r["control"]["error"] for r in records], axis=0),
                           "ratios": control, "rejected": rejected}
    figure = plot(context.out_dir, records, settings)
    return Outcome(measured=measured, held=bool(held and rejected), figures=[figure],
                   seeds=seeds)


def plot(out_dir, records, settings):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    m = settings["n_batches"]
    titles = {"gd": "one GD step", "sgd": f"one SGD epoch ({m} batches, all orders)"}
    h = np.asarray(settings["steps"])
    for ax, method in zip(axes, ("gd", "sgd")):
        for key, color, marker, label in (("error_flow", "C0", "o", "flow of L"),
                                          ("error_modified_flow", "C3", "s",
                                           "flow of modified loss L~")):
            mean, se = mean_stderr([r[method][key] for r in records], axis=0)
            ax.errorbar(h, mean, yerr=se, marker=marker, color=color, capsize=3, label=label)
            power = 2 if key == "error_flow" else 3
            ax.loglog(h, mean[-1] * (h / h[-1]) ** power, ":", color=color,
                      label=f"slope {power}")
        if method == "gd":
            mean = np.mean([r["control"]["error"] for r in records], axis=0)
            ax.loglog(h, mean, "^--", color="C2", label="control: L + (h/2)||grad L||^2")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{titles[method]}, mean of {len(records)} networks")
        ax.set_xlabel("learning rate h")
        ax.legend(fontsize=8)
    axes[0].set_ylabel(r"$\|\theta_{discrete} - \Phi_T(\theta_0)\|$")
    fig.suptitle("Backward error: distance of the discrete update from the exact flows")
    return save_figure(fig, out_dir, "backward_error.png")
