"""Re-run the seed papers' claims with gcref: one module per experiment (issue 6).

``python -m validation NAME [--quick] [--out DIR] [--seed S] [--device D]`` runs one
experiment and writes ``result.json``, one file per finished (setting, seed) run under
``runs/`` (reused when rerun with the same arguments) and PNG figures; ``--all`` runs every
experiment, ``--list`` prints each claim. See ``validation/README.md`` for the table of
verdicts.
"""

from __future__ import annotations

import importlib

# Registered experiments, in the order ``--all`` runs them. A claim that has no module
# yet is listed as pending in validation/README.md, not here.
EXPERIMENT_NAMES = (
    "layer_balance",
    "depth_at_init",
    "min_norm",
    "backward_error",
    "transfer",
    "lr_sweep",
    "batch_size",
    "path_sgd",
    "regularizers",
    "width_no_overfit",
    "double_descent",
    "arc_length",
)


def experiment_names():
    """Names of the registered experiments."""
    return EXPERIMENT_NAMES


def load(name):
    """The module of experiment ``name``."""
    if name not in EXPERIMENT_NAMES:
        raise ValueError(f"unknown experiment {name!r}; expected one of {', '.join(EXPERIMENT_NAMES)}")
    return importlib.import_module(f"validation.{name}")
