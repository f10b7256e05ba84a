"""Batch size against geometric complexity on digits (seed 003).

SGD's implicit regulariser (h / 4m) sum_j ||grad L_{B_j}||^2 over the m mini-batches of an
epoch (MATH.md section 5) is larger when the batches are smaller (their gradients vary
more), so seed 003 predicts lower geometric complexity for smaller batches at a fixed
learning rate. A ReLU MLP on scikit-learn's digits (see ``validation._sweep``); GC is reported
as the discrete Dirichlet energy DE^ = GC / 2.
"""

from __future__ import annotations

from validation import _sweep
from validation._report import Outcome

NAME = "batch_size"
CLAIM = "a classifier trained by SGD with smaller batches ends with a lower geometric complexity"
SOURCE = "seed 003"
RULE = (
    "held if the Spearman rank correlation between the batch size and the seed-averaged "
    "Dirichlet energy at the best test epoch is above 0.8"
)
QUICK = {"hidden": [16], "batch_sizes": [32, 128], "lr": 0.05, "epochs": 1,
         "seeds": 1}
FULL = {"hidden": [128, 128], "batch_sizes": [4, 8, 16, 32, 64, 128, 256], "lr": 0.05,
        "epochs": 30, "seeds": 3}

THRESHOLD = 0.8


def run(settings, seed, out_dir, progress):
    values = settings["batch_sizes"]
    out, seeds = _sweep.sweep(settings, "batch_size", values, seed, progress)
    summary = _sweep.summarise(out, values)
    held = summary["spearman_dirichlet_energy"] > THRESHOLD
    figure = _sweep.plot(out_dir, NAME, summary, values, "batch size", True,
                         f"Digits MLP {settings['hidden']}, SGD lr {settings['lr']}, "
                         f"{settings['epochs']} epochs, mean of {len(seeds)} seeds at the best "
                         "test epoch")
    return Outcome(measured={"batch_sizes": values, **summary}, held=held, figures=[figure],
                   seeds=[seed, *seeds], frameworks=["scikit-learn"])
