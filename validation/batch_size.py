"""Batch size against geometric complexity on digits (seed 003).

SGD's implicit regulariser (h / 4m) sum_j ||grad L_{B_j}||^2 over the m mini-batches of an
epoch (MATH.md section 5) is larger when the batches are smaller (their gradients vary
more), so seed 003 predicts lower geometric complexity for smaller batches at a fixed
learning rate. A ReLU MLP on scikit-learn's digits, every run measured when its training loss
first reaches a common target (a large batch takes fewer steps per epoch, so a fixed number
of epochs would compare less trained runs; see ``validation._sweep``); GC is reported as the
discrete Dirichlet energy DE^ = GC / 2.
"""

from __future__ import annotations

from validation import _sweep
from validation._report import Outcome

NAME = "batch_size"
CLAIM = ("a classifier trained by SGD with smaller batches reaches a given training loss with a "
         "lower geometric complexity")
SOURCE = "seed 003"
RULE = (
    "every (batch size, seed) run trains at a fixed learning rate until its mean training loss "
    "first falls to target_loss (at most max_epochs epochs; runs that miss it are reported "
    "and left out of the fit); per seed, the least-squares slope of log DE^ against log batch "
    "size over the runs that reached the target. Held if the seed-mean slope is positive "
    "beyond 2 standard errors"
)
QUICK = {"hidden": [16], "batch_sizes": [16, 64], "lr": 0.2, "target_loss": 1.0,
         "max_epochs": 6, "seeds": 2}
FULL = {"hidden": [128, 128], "batch_sizes": [4, 8, 16, 32, 64, 128, 256], "lr": 0.05,
        "target_loss": 0.02, "max_epochs": 400, "seeds": 5}

# Each run's key names its grid value: extending this grid reuses the runs done.
SWEPT = ("batch_sizes",)


def run(settings, seed, context):
    values = settings["batch_sizes"]
    records, seeds = _sweep.sweep(settings, "batch_size", values, seed, context)
    summary, verdicts = _sweep.judge(records, values, sign=+1)
    figure = _sweep.plot(context.out_dir, NAME, summary, values, "batch size",
                         f"Digits MLP {settings['hidden']}, SGD lr {settings['lr']}, each run "
                         f"at training loss {settings['target_loss']}, mean and standard error "
                         f"of {len(seeds)} seeds")
    return Outcome(measured={"batch_sizes": values, **summary},
                   held=verdicts["dirichlet_energy"], figures=[figure], seeds=[seed, *seeds],
                   frameworks=["scikit-learn"])
