"""What every experiment shares: its outcome, result.json, figures and a progress line.

An experiment module defines ``NAME``, ``CLAIM``, ``SOURCE``, ``RULE`` (how the verdict
follows from the measured numbers), ``QUICK`` and ``FULL`` (its settings, as plain dicts)
and ``run(settings, seed, out_dir, progress) -> Outcome``. This module turns an outcome into
``result.json``; the verdict is whatever the module's rule computed, never set by hand.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field

import numpy as np

VERDICTS = ("held", "did not hold")


@dataclass
class Outcome:
    """What one run measured.

    Attributes
    ----------
    measured : dict
        Numbers (and lists/dicts of numbers) the verdict and the figures come from.
    held : bool
        The module's ``RULE`` applied to ``measured``.
    figures : list of str
        PNG file names written into the output directory.
    seeds : list of int
        Every seed the run drew randomness from.
    frameworks : list of str
        Distributions used beyond numpy and gcref (e.g. ``"scikit-learn"``), for the versions.
    notes : str
        Anything a reader should know to interpret the numbers.
    """

    measured: dict
    held: bool
    figures: list
    seeds: list
    frameworks: list = field(default_factory=list)
    notes: str = ""


def package_versions(frameworks=()):
    """Versions of python, numpy, gcref, matplotlib and each named distribution."""
    versions = {"python": platform.python_version()}
    for name in ("numpy", "gcref", "matplotlib", *frameworks):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def plain(value, where="measured"):
    """``value`` as JSON-ready Python; raises ValueError on a non-finite number."""
    if isinstance(value, dict):
        return {str(k): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}: a result must be finite")
        return float(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"{where} has type {type(value).__name__}; expected numbers, strings, lists or dicts")


def run_experiment(module, out_dir, *, quick=False, seed=0):
    """Run one experiment module and write ``out_dir/result.json``; return the result dict."""
    settings = dict(module.QUICK if quick else module.FULL)
    os.makedirs(out_dir, exist_ok=True)
    progress = Progress(module.NAME)
    start = time.perf_counter()
    outcome = module.run(settings, seed, out_dir, progress)
    progress.close()
    for name in outcome.figures:
        if not os.path.getsize(os.path.join(out_dir, name)):
            raise RuntimeError(f"{module.NAME} wrote an empty figure {name}")
    result = {
        "experiment": module.NAME,
        "claim": module.CLAIM,
        "source": module.SOURCE,
        "rule": module.RULE,
        "verdict": VERDICTS[0] if outcome.held else VERDICTS[1],
        "setting": "quick" if quick else "full",
        "settings": plain(settings, "settings"),
        "seed": seed,
        "seeds": plain(outcome.seeds, "seeds"),
        "measured": plain(outcome.measured),
        "notes": outcome.notes,
        "figures": list(outcome.figures),
        "versions": package_versions(outcome.frameworks),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "runtime_s": round(time.perf_counter() - start, 2),
    }
    with open(os.path.join(out_dir, "result.json"), "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    return result


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported here, never at gcref import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_dir, name):
    """Save ``fig`` as ``out_dir/name`` at a readable resolution, close it, return ``name``."""
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=110)
    pyplot().close(fig)
    return name


class Progress:
    """A one-line progress bar on stderr, redrawn at most a few times a second."""

    width = 30

    def __init__(self, label, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.last_draw = 0.0
        self.drawn = False

    def __call__(self, done, total, what=""):
        """Report ``done`` of ``total`` units of the current stage ``what``."""
        now = time.monotonic()
        if done < total and now - self.last_draw < 0.2:
            return
        self.last_draw = now
        filled = int(self.width * done / max(total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label} {what:<18.18} [{bar}] {done}/{total}")
        self.stream.flush()
        self.drawn = True

    def close(self):
        """End the line so later output starts on a fresh one."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
