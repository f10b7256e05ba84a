"""Geometric complexity at initialisation against depth (seed 003).

Seed 003 says deeper networks have lower GC at initialisation: "with deep enough neural
networks, the model function is initialised to near the zero function". Whether that
happens depends on the initialiser. For a ReLU layer, E||relu(W h)||^2 = (n_out var / 2) ||h||^2,
so with LeCun variance 1 / fan_in each layer halves the squared scale of the signal and of the
Jacobian, and GC falls geometrically with depth, while He variance 2 / fan_in preserves it.
The verdict is taken on LeCun normal (the default initialiser of Flax's Dense layers, the
setting of the seed's authors); He normal is measured beside it and reported, not judged.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.complexity import geometric_complexity
from validation._report import Outcome, pyplot, save_figure

NAME = "depth_at_init"
CLAIM = "deeper ReLU networks have lower geometric complexity at initialisation"
SOURCE = "seed 003"
RULE = (
    "held if, for LeCun-normal initialisation at fixed width, the seed-averaged GC falls with "
    "depth (Spearman rank correlation between depth and mean GC below -0.9) and the deepest "
    "network's mean GC is below half the shallowest one's"
)
QUICK = {"width": 32, "depths": [1, 2, 4, 6], "input_dim": 8, "output_dim": 1,
         "n_examples": 64, "seeds": 4, "schemes": ["lecun_normal", "he_normal"]}
FULL = {"width": 128, "depths": [1, 2, 3, 4, 6, 8, 10, 12, 16], "input_dim": 16,
        "output_dim": 1, "n_examples": 512, "seeds": 30, "schemes": ["lecun_normal", "he_normal"]}

JUDGED_SCHEME = "lecun_normal"


def spearman(a, b):
    """Spearman rank correlation of two sequences without ties."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def run(settings, seed, out_dir, progress):
    depths, n_seeds = settings["depths"], settings["seeds"]
    data_rng = np.random.default_rng(seed)
    X = data_rng.normal(size=(settings["n_examples"], settings["input_dim"]))
    seeds = [seed + 1 + s for s in range(n_seeds)]

    gc = {scheme: np.zeros((len(depths), n_seeds)) for scheme in settings["schemes"]}
    total, done = len(settings["schemes"]) * len(depths) * n_seeds, 0
    for scheme in settings["schemes"]:
        for i, depth in enumerate(depths):
            sizes = [settings["input_dim"], *[settings["width"]] * depth, settings["output_dim"]]
            mlp = gcref.MLP(sizes, activation="relu")
            for s, init_seed in enumerate(seeds):
                params = mlp.init(np.random.default_rng(init_seed), scheme, bias="zero")
                gc[scheme][i, s] = geometric_complexity(mlp, params, X)
                done += 1
                progress(done, total, scheme)

    measured = {"hidden_layers": depths, "per_scheme": {}}
    for scheme, values in gc.items():
        mean = values.mean(axis=1)
        measured["per_scheme"][scheme] = {
            "mean_gc": mean,
            "stderr_gc": values.std(axis=1, ddof=1) / np.sqrt(n_seeds),
            "spearman_depth_vs_gc": spearman(depths, mean),
            "deepest_over_shallowest": mean[-1] / mean[0],
        }
    judged = measured["per_scheme"][JUDGED_SCHEME]
    held = judged["spearman_depth_vs_gc"] < -0.9 and judged["deepest_over_shallowest"] < 0.5

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for scheme, stats in measured["per_scheme"].items():
        ax.errorbar(depths, stats["mean_gc"], yerr=stats["stderr_gc"], marker="o", capsize=3,
                    label=f"{scheme} (width {settings['width']})")
    ax.set_yscale("log")
    ax.set_title(f"GC at initialisation, mean of {n_seeds} seeds (bars: standard error)")
    ax.set_xlabel("number of hidden ReLU layers")
    ax.set_ylabel(r"GC $= \frac{1}{N}\sum_n \|J(x_n)\|_F^2$")
    ax.legend()
    figure = save_figure(fig, out_dir, "depth_at_init.png")
    he = measured["per_scheme"].get("he_normal")
    notes = "" if he is None else (
        f"He-normal initialisation, not judged: deepest/shallowest GC = "
        f"{he['deepest_over_shallowest']:.3g} (the claim depends on the initialiser)."
    )
    return Outcome(measured=measured, held=held, figures=[figure], seeds=[seed, *seeds],
                   notes=notes)
