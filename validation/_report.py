"""What every experiment shares: its outcome, result.json, resumable runs, figures, progress.

An experiment module defines ``NAME``, ``CLAIM``, ``SOURCE``, ``RULE`` (how the verdict
follows from the measured numbers, fixed before the run), ``QUICK`` and ``FULL`` (its
settings, as plain dicts) and ``run(settings, seed, context) -> Outcome``. Each finished
(setting, seed) run goes through ``context.runs`` (:class:`Runs`), which writes it to its own
JSON file as soon as it completes and hands it back instead of recomputing it when the
experiment is rerun with the same arguments. This module turns an outcome into
``result.json``; the verdict is whatever the module's rule computed, never set by hand.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import sys
import tempfile
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


@dataclass
class Context:
    """What ``run`` gets besides its settings and seed.

    Attributes
    ----------
    out_dir : str
        Directory for the figures (and ``result.json``, written by :func:`run_experiment`).
    progress : Progress
        Called as ``progress(done, total, what)``.
    runs : Runs
        The store of finished (setting, seed) runs.
    device : str
        Where torch training runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...); NumPy code
        ignores it.
    """

    out_dir: str
    progress: Progress
    runs: Runs
    device: str = "cpu"


def write_json_atomically(path, value):
    """Write ``value`` as JSON to ``path`` through a temporary file and ``os.replace``, so
    that an interrupted write leaves the old file (or none), never half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(value, fh, indent=2)
            fh.write("\n")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


class Runs:
    """Finished runs of one experiment, one JSON file each under ``directory``.

    :meth:`get` returns the record of a run (a dict of numbers, strings and lists of them):
    read from ``directory/KEY.json`` when that file exists and was written for the same
    experiment, setting, settings and base seed (its ``fingerprint``), otherwise computed and
    written atomically before it is returned. An interrupted sweep rerun with the same
    arguments therefore redoes at most the run that was in progress.

    Parameters
    ----------
    directory : str
    fingerprint : dict
        What a stored run must have been produced under to be reused.
    """

    def __init__(self, directory, fingerprint):
        self.directory = directory
        self.fingerprint = plain(fingerprint, "fingerprint")
        self.records = {}
        self.resumed = []
        os.makedirs(directory, exist_ok=True)

    def path(self, key):
        """The file of run ``key``."""
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_.=,+-]+", key):
            raise ValueError(f"run key {key!r} must be a non-empty string of letters, digits "
                             "and _ . = , + -")
        return os.path.join(self.directory, f"{key}.json")

    def get(self, key, compute, *args, **kwargs):
        """The record of run ``key``: stored, or ``compute(*args, **kwargs)`` made JSON-ready
        and stored."""
        if key in self.records:
            raise ValueError(f"run key {key!r} used twice in one experiment")
        path = self.path(key)
        record = None
        if os.path.exists(path):
            try:
                with open(path) as fh:
                    stored = json.load(fh)
            except (OSError, json.JSONDecodeError):
                stored = None
            if isinstance(stored, dict) and stored.get("fingerprint") == self.fingerprint:
                record = stored["record"]
                self.resumed.append(key)
        if record is None:
            record = plain(compute(*args, **kwargs), f"run {key!r}")
            write_json_atomically(path, {"key": key, "fingerprint": self.fingerprint,
                                         "record": record})
        self.records[key] = record
        return record


def fingerprint(module, settings, quick, seed):
    """What identifies a run of ``module``: its name, setting, settings and base seed.

    Settings named in the module's ``SWEPT`` (the grid of a sweep, e.g. ``"widths"``) are left
    out: each run's key names its own grid value, so a run does not depend on the rest of the
    grid, and a grid extended later reuses the runs already done.
    """
    swept = getattr(module, "SWEPT", ())
    return {"experiment": module.NAME, "setting": "quick" if quick else "full",
            "settings": {k: v for k, v in settings.items() if k not in swept}, "seed": seed}


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


def run_experiment(module, out_dir, *, quick=False, seed=0, device="cpu"):
    """Run one experiment module and write ``out_dir/result.json``; return the result dict.

    Finished runs are kept in ``out_dir/runs/`` (:class:`Runs`) and reused by a rerun with
    the same arguments.
    """
    settings = dict(module.QUICK if quick else module.FULL)
    os.makedirs(out_dir, exist_ok=True)
    progress = Progress(module.NAME)
    runs = Runs(os.path.join(out_dir, "runs"), fingerprint(module, settings, quick, seed))
    start = time.perf_counter()
    outcome = module.run(settings, seed, Context(out_dir, progress, runs, device))
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
        "runs": runs.records,
        "resumed_runs": runs.resumed,
        "device": device if getattr(module, "USES_DEVICE", False) else "cpu (NumPy)",
        "notes": outcome.notes,
        "figures": list(outcome.figures),
        "versions": package_versions(outcome.frameworks),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "runtime_s": round(time.perf_counter() - start, 2),
    }
    write_json_atomically(os.path.join(out_dir, "result.json"), result)
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
