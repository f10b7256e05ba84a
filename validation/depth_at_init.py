"""Geometric complexity at initialisation against depth (seed 003).

Seed 003 says deeper networks have lower GC at initialisation: "with deep enough neural
networks, the model function is initialised to near the zero function". Whether that
happens depends on the initialiser. For a ReLU layer, E||relu(W h)||^2 = (n_out var / 2) ||h||^2,
so with LeCun variance 1 / fan_in each layer halves the squared scale of the signal and of the
Jacobian, and GC falls geometrically with depth, while He variance 2 / fan_in preserves it.
The experiment measures both on real inputs (the digits images, not Gaussian noise, so the
first layer sees correlated, non-negative pixels), fits the slope of log2 GC against depth
per seed, and judges each scheme by it; the claim as stated (without naming an initialiser)
holds only if GC falls under both.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.complexity import geometric_complexity
from validation._report import Outcome, pyplot, save_figure
from validation._stats import below_bound, run_seeds, summary
from validation._training import digits

NAME = "depth_at_init"
CLAIM = ("deeper ReLU networks have lower geometric complexity at initialisation, under both "
         "common initialisations (LeCun 1/fan_in and He 2/fan_in variances)")
SOURCE = "seed 003"
RULE = (
    "on real inputs (scikit-learn's digits), per seed and scheme, the least-squares slope of "
    "log2 GC against the number of hidden layers. GC falls with depth under a scheme if the "
    "seed-mean slope is below -0.25 (a halving every 4 layers) beyond 2 standard errors. Held "
    "if it falls under both schemes. The slopes the variance arithmetic predicts (-1 for "
    "LeCun, 0 for He) are reported beside, not judged"
)
QUICK = {"width": 32, "depths": [1, 2, 4, 6], "output_dim": 1, "n_examples": 64, "seeds": 3,
         "schemes": ["lecun_normal", "he_normal"]}
FULL = {"width": 128, "depths": [1, 2, 3, 4, 6, 8, 10, 12, 16], "output_dim": 1,
        "n_examples": 512, "seeds": 20, "schemes": ["lecun_normal", "he_normal"]}

SLOPE_BOUND = -0.25
PREDICTED_SLOPE = {"lecun_normal": -1.0, "he_normal": 0.0}


def one_seed(settings, X, init_seed):
    """GC at every depth under every scheme, from one seed's draws."""
    record = {}
    for scheme in settings["schemes"]:
        gc = []
        for depth in settings["depths"]:
            sizes = [X.shape[1], *[settings["width"]] * depth, settings["output_dim"]]
            mlp = gcref.MLP(sizes, activation="relu")
            params = mlp.init(np.random.default_rng([init_seed, depth]), scheme, bias="zero")
            gc.append(geometric_complexity(mlp, params, X))
        record[scheme] = {"gc": gc, "slope_log2": float(np.polyfit(settings["depths"],
                                                                   np.log2(gc), 1)[0])}
    return record


def run(settings, seed, context):
    depths = settings["depths"]
    X_all, _, _, _ = digits(np.random.default_rng(seed), test_fraction=0.0)
    X = X_all[: settings["n_examples"]]
    seeds = run_seeds(seed, settings["seeds"])
    records = []
    for i, s in enumerate(seeds):
        records.append(context.runs.get(f"seed={s}", one_seed, settings, X, s))
        context.progress(i + 1, len(seeds), "seeds")

    measured = {"hidden_layers": depths, "per_scheme": {}}
    held = True
    for scheme in settings["schemes"]:
        gc = summary([r[scheme]["gc"] for r in records], axis=0)
        slope = summary([r[scheme]["slope_log2"] for r in records])
        falls = below_bound(slope["mean"], slope["stderr"], SLOPE_BOUND)
        measured["per_scheme"][scheme] = {
            "gc": gc, "slope_log2_gc_per_layer": slope, "falls_with_depth": falls,
            "predicted_slope": PREDICTED_SLOPE.get(scheme, "none"),
        }
        held &= falls

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for scheme, stats in measured["per_scheme"].items():
        slope = stats["slope_log2_gc_per_layer"]
        ax.errorbar(depths, stats["gc"]["mean"], yerr=stats["gc"]["stderr"], marker="o",
                    capsize=3, label=f"{scheme}: slope {slope['mean']:.2f} +- "
                                     f"{slope['stderr']:.2f} bits/layer")
    ax.set_yscale("log", base=2)
    ax.set_title(f"GC at initialisation on digits inputs, width {settings['width']}, "
                 f"{len(seeds)} seeds (bars: standard error)", fontsize=9)
    ax.set_xlabel("number of hidden ReLU layers")
    ax.set_ylabel(r"GC $= \frac{1}{N}\sum_n \|J(x_n)\|_F^2$")
    ax.legend(fontsize=8)
    figure = save_figure(fig, context.out_dir, "depth_at_init.png")
    return Outcome(measured=measured, held=bool(held), figures=[figure], seeds=[seed, *seeds],
                   frameworks=["scikit-learn"])
