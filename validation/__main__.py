"""Command line: ``python -m validation NAME | --all | --list [--quick] [--out DIR] [--seed S]
[--device D]``.

Runs from any directory: with the repository root on ``PYTHONPATH`` (``python -m
validation``) or by path (``python path/to/validation ...``), in which case the package's
parent directory is put on ``sys.path`` first.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

if not __package__:
    # Run by path (python path/to/validation): sys.path[0] is this directory, not its parent.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The experiments multiply small matrices, where BLAS threads only add contention (a 10 x 300
# by 300 x 300 product runs 15 to 40 times slower with them on a busy 2-core machine). This
# must happen before NumPy is first imported; a value the user set is kept.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

from validation import experiment_names, load  # noqa: E402
from validation._report import run_experiment  # noqa: E402

DEFAULT_OUT = "validation_output"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m validation", description="Re-run the seed papers' claims with gcref."
    )
    parser.add_argument("name", nargs="?", choices=experiment_names(), help="experiment to run")
    parser.add_argument("--all", action="store_true", help="run every experiment")
    parser.add_argument("--list", action="store_true", help="print each experiment's claim")
    parser.add_argument("--quick", action="store_true", help="small setting (seconds), for CI")
    parser.add_argument(
        "--out",
        help=f"output directory (default {DEFAULT_OUT}/NAME; with --all, the parent of one "
        "directory per experiment)",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--device", type=device_name, default="cpu",
                        help="where the experiments that train with torch train: cpu "
                             "(default), cuda, cuda:N or auto (cuda when torch sees one); the "
                             "NumPy experiments ignore it")
    # An experiment with settings of its own defines add_arguments(group), and
    # configured(options) -> the module (or a variant of it) those options ask for.
    for name in experiment_names():
        module = load(name)
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser.add_argument_group(f"{name} options"))
    args = parser.parse_args(argv)

    if args.list:
        for name in experiment_names():
            module = load(name)
            print(f"{name:<16} [{module.SOURCE}] {module.CLAIM}")
        return 0
    if args.all == (args.name is not None):
        parser.error("give exactly one of NAME, --all or --list")

    names = experiment_names() if args.all else [args.name]
    failed = []
    for name in names:
        if args.all:
            out = os.path.join(args.out or DEFAULT_OUT, name)
        else:
            out = args.out or os.path.join(DEFAULT_OUT, name)
        module = load(name)
        if hasattr(module, "configured"):
            try:
                module = module.configured(vars(args))
            except ValueError as exc:
                parser.error(str(exc))
        result = run_experiment(module, out, quick=args.quick, seed=args.seed,
                                device=resolve_device(args.device))
        print(f"{name}: {result['verdict']} ({result['runtime_s']} s; "
              f"{len(result['resumed_runs'])} of {len(result['runs'])} runs resumed) -> {out}")
        if result["verdict"] != "held":
            failed.append(name)
    if len(names) > 1:
        print(f"{len(names) - len(failed)} of {len(names)} claims held" + (
            f"; did not hold: {', '.join(failed)}" if failed else ""))
    return 0


def device_name(text):
    """``--device``'s value, checked: cpu, cuda, cuda:N, mps or auto."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps|auto", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N, mps or auto; got {text!r}")
    return text


def resolve_device(name):
    """``auto`` as ``cuda`` when torch is installed and sees a GPU, else ``cpu``."""
    if name != "auto":
        return name
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    sys.exit(main())
