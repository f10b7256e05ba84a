"""Learning rate against geometric complexity on digits (seed 000, Fig. 2; seed 003).

The implicit regulariser of SGD, (h / 4m) sum_j ||grad L_{B_j}||^2 (MATH.md section 5), grows
with the learning rate h; through the transfer theorem its pressure reaches the input
gradients, so seed 000 predicts that, at the best test score, both the discrete Dirichlet
energy and ||grad L||^2 are lower for larger learning rates. A ReLU MLP on scikit-learn's
8 x 8 digits stands in for the seed's ResNet on CIFAR-10 (see ``validation._sweep``).
"""

from __future__ import annotations

from validation import _sweep
from validation._report import Outcome

NAME = "lr_sweep"
CLAIM = (
    "a classifier trained by SGD at a larger learning rate ends (at its best test score) with "
    "a lower discrete Dirichlet energy and a lower ||grad L||^2"
)
SOURCE = "seed 000, Fig. 2; seed 003"
RULE = (
    "held if the Spearman rank correlation between the learning rate and the seed-averaged "
    "value is below -0.8 for both the Dirichlet energy and ||grad L||^2"
)
QUICK = {"hidden": [16], "lrs": [0.02, 0.2], "batch_size": 64, "epochs": 1,
         "seeds": 1}
FULL = {"hidden": [128, 128], "lrs": [0.01, 0.02, 0.05, 0.1, 0.2, 0.3],
        "batch_size": 32, "epochs": 40, "seeds": 3}

THRESHOLD = -0.8


def run(settings, seed, out_dir, progress):
    values = settings["lrs"]
    out, seeds = _sweep.sweep(settings, "lr", values, seed, progress)
    summary = _sweep.summarise(out, values)
    held = (summary["spearman_dirichlet_energy"] < THRESHOLD
            and summary["spearman_grad_sq"] < THRESHOLD)
    figure = _sweep.plot(out_dir, NAME, summary, values, "learning rate h", True,
                         f"Digits MLP {settings['hidden']}, SGD batch {settings['batch_size']}, "
                         f"{settings['epochs']} epochs, mean of {len(seeds)} seeds at the best "
                         "test epoch")
    return Outcome(measured={"lrs": values, **summary}, held=held, figures=[figure],
                   seeds=[seed, *seeds], frameworks=["scikit-learn"])
