"""The ``gcref`` command line; ``gcref compare`` is the main job (``make demo``).

``gcref compare`` evaluates every registered quantity (the core primitives and every
quantity a feature module adds) in every installed backend on a built-in problem, prints
one table (quantity, backend, value, largest relative deviation from ``numpy``, seconds),
a line that explains the columns, and a verdict; it exits 1 when a deviation exceeds the
tolerance, 0 otherwise; bad options exit 2. Besides the gcref backends, which run the MLP
functions, the model backends ``torch-module`` and ``jax-function`` run
:mod:`gcref.models` on the same MLP as a torch module and as a JAX function, for the
quantities :mod:`gcref.models` computes. ``gcref compare --help`` lists the quantities.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap

import numpy as np

import gcref
from gcref.comparison import registry, runner
from gcref.tolerances import tolerance

_DTYPES = {"float64": np.float64, "float32": np.float32}


def _comma_list(text):
    items = [s.strip() for s in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list; got {text!r}")
    return items


def _sizes(text):
    try:
        sizes = tuple(int(s) for s in _comma_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 3,16,16,2; got {text!r}"
        ) from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected at least an input and an output size, all >= 1; got {text!r}"
        )
    return sizes


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer; got {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number; got {text!r}")
    return value


VALUE_NOTATION = (
    "value: a scalar is printed as is; an array as [shape] |.|=norm, its shape and the "
    "Euclidean norm of all its entries (the full arrays are in --json); - when the row "
    "failed"
)
DEVIATION_NOTATION = (
    "max_rel_dev: max |value - numpy value| / max(max |numpy value|, atol/rtol), "
    "element-wise over the row"
)


def _plain(text):
    """A docstring line for the terminal: reST literals and roles unwrapped."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def _seconds_notation(repeats="--repeats"):
    return f"seconds: the best wall time of {repeats} timed calls, after one untimed warm-up call"


def compare_epilog():
    """The ``gcref compare --help`` text after the options: quantities, backends, columns."""
    rows, import_errors = runner.load_rows()
    width = max(len(name) for name in rows) + 2
    lines = ["quantities (for --quantities; * = also computed by the model backends):"]
    for name, fn in rows.items():
        mark = "*" if name in registry.MODEL_ROWS else " "
        description = _plain(registry.describe(fn)) or "(no description)"
        wrapped = textwrap.wrap(description, 100 - width - 4) or [""]
        lines.append(f" {mark} {name.ljust(width)}{wrapped[0]}")
        lines += [" " * (width + 3) + more for more in wrapped[1:]]
    lines += [f"  (not listed: {module} did not import: {error})" for module, error in import_errors.items()]
    lines += ["", "backends (for --backends):"]
    lines.append(f"   {', '.join(gcref.backend_names())}: the gcref.MLP functions in that framework")
    for backend in registry.MODEL_BACKENDS.values():
        lines.append(f"   {backend.name}: {backend.description}")
    lines += ["", "columns:"]
    for note in (VALUE_NOTATION, DEVIATION_NOTATION, _seconds_notation()):
        lines += textwrap.wrap(note, 97, initial_indent="   ", subsequent_indent="     ")
    return "\n".join(lines)


def build_parser():
    """The ``gcref`` argument parser, with its ``compare`` subcommand."""
    parser = argparse.ArgumentParser(
        prog="gcref",
        description="Reference implementations of the geometric complexity of neural networks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    compare = sub.add_parser(
        "compare",
        help="compare every quantity across backends on a built-in problem",
        description=(
            "Evaluate every registered quantity in every chosen backend on a small MLP with "
            "synthetic data, and print its value, its largest relative deviation from the "
            "numpy backend and its time. The model backends evaluate the quantities marked * "
            "on the same MLP as a torch module and as a JAX function, through gcref.models. "
            "Exit status: 0 when every deviation is within tolerance, 1 otherwise, 2 for "
            "bad options."
        ),
        epilog=compare_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument(
        "--backends",
        type=_comma_list,
        default=None,
        help=(
            f"comma-separated backends among {','.join(gcref.backend_names())} and the model "
            f"backends {','.join(registry.MODEL_BACKENDS)} (default: every installed one; "
            "numpy is always run as the reference)"
        ),
    )
    compare.add_argument(
        "--sizes",
        type=_sizes,
        default=runner.DEFAULT_SIZES,
        help=f"layer sizes d,n_2,...,k (default: {','.join(map(str, runner.DEFAULT_SIZES))})",
    )
    compare.add_argument(
        "--activation",
        default=runner.DEFAULT_ACTIVATION,
        help=f"hidden activation, one of {', '.join(gcref.activation_names())} (default: %(default)s)",
    )
    compare.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the problem (default: 0)")
    compare.add_argument(
        "--dtype", choices=list(_DTYPES), default="float64", help="(default: %(default)s)"
    )
    compare.add_argument(
        "--n-examples",
        type=_positive_int,
        default=runner.DEFAULT_N_EXAMPLES,
        help="number of examples N (default: %(default)s)",
    )
    compare.add_argument(
        "--quantities",
        type=_comma_list,
        default=None,
        help="comma-separated quantities to evaluate (default: every registered one)",
    )
    compare.add_argument(
        "--tolerance",
        type=_positive_float,
        default=None,
        help="largest accepted relative deviation (default: gcref's rtol for the dtype, "
        + ", ".join(f"{name} {tolerance(dt)[0]:g}" for name, dt in _DTYPES.items())
        + ")",
    )
    compare.add_argument(
        "--repeats",
        type=_positive_int,
        default=1,
        help="timed evaluations per row and backend, after one untimed warm-up call (JIT "
        "compilation); the best time is reported (default: 1)",
    )
    compare.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    return parser


def main(argv=None):
    """Run the ``gcref`` command line; return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    return _compare(args)


def _error(message):
    print(f"gcref compare: error: {message}", file=sys.stderr)
    return 2


def _compare(args):
    # gcref's own checks name the bad backend, activation or quantity; they are shown
    # as the error message, without a traceback.
    try:
        problem = runner.default_problem(
            sizes=args.sizes,
            activation=args.activation,
            n_examples=args.n_examples,
            seed=args.seed,
            dtype=_DTYPES[args.dtype],
        )
        result = runner.compare(
            problem,
            backends=args.backends,
            tol=args.tolerance,
            quantities=args.quantities,
            repeats=args.repeats,
        )
    except (ValueError, TypeError, ImportError) as err:
        return _error(str(err))

    print(
        f"gcref compare: MLP {','.join(map(str, problem.mlp.sizes))} ({args.activation}), "
        f"N = {problem.X.shape[0]}, {args.dtype}, seed {args.seed}, "
        f"deviations relative to numpy, tolerance {result.tolerance:.1e}"
    )
    print(format_table(result))
    print(legend(args.repeats))
    print(summary_line(result))
    if args.json:
        try:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(result.to_json(), fh, indent=1)
        except OSError as err:
            return _error(f"cannot write --json {args.json}: {err}")
    return 0 if result.ok else 1


def format_value(value):
    """A short text for a row's value: the scalar, or an array's shape and norm."""
    if value is None:
        return "-"
    if np.ndim(value) == 0:
        return f"{float(value):.6e}"
    arr = np.asarray(value)
    shape = "x".join(map(str, arr.shape))
    return f"[{shape}] |.|={np.linalg.norm(arr):.4e}"


def format_table(result):
    """The comparison as one fixed-width table, one line per (quantity, backend)."""
    header = ("quantity", "backend", "value", "max_rel_dev", "seconds", "")
    lines = []
    for r in result.rows:
        if r.error is not None:
            dev, flag = "-", f"FAILED: {r.error}"
        else:
            dev = f"{r.max_rel_dev:.2e}"
            flag = "" if r.within(result.tolerance) else "EXCEEDS TOLERANCE"
        lines.append((r.quantity, r.backend, format_value(r.value), dev, f"{r.seconds:.4f}", flag))
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(5)]
    out = []
    for line in [header, *lines]:
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1]), line[2].ljust(widths[2])]
        cells += [line[3].rjust(widths[3]), line[4].rjust(widths[4])]
        out.append("  ".join(cells + ([line[5]] if line[5] else [])).rstrip())
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def legend(repeats):
    """The line under the table that explains its value, max_rel_dev and seconds columns."""
    return "; ".join(
        [
            "value: a scalar, or [shape] |.|=Euclidean norm of all entries",
            "max_rel_dev: max |value - numpy| / max(max |numpy|, atol/rtol)",
            f"seconds: best of {repeats} timed call{'s' if repeats > 1 else ''} after a warm-up call",
        ]
    )


def summary_line(result):
    """``OK ...`` or ``FAILED ...`` naming the rows over tolerance and the broken modules."""
    if result.ok:
        return (
            f"OK: {len(result.rows)} rows, every deviation within {result.tolerance:.1e} "
            f"({', '.join(result.backends)})"
        )
    parts = []
    failed = result.failures
    if failed:
        parts.append(
            "rows over tolerance or failed: "
            + ", ".join(
                f"{r.quantity}[{r.backend}]"
                + ("" if r.error is not None else f" ({r.max_rel_dev:.1e})")
                for r in failed
            )
        )
    for module, error in result.import_errors.items():
        parts.append(f"could not import {module}: {error}")
    return f"FAILED (tolerance {result.tolerance:.1e}): " + "; ".join(parts)
