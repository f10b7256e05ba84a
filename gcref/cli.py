"""The ``gcref`` command line: ``gcref compare`` (``make demo``) and ``gcref measure``.

``gcref compare`` evaluates every registered quantity (the core primitives and every
quantity a feature module adds) in every installed backend on a built-in problem, prints
one table (quantity, backend, value, largest relative deviation from ``numpy``, seconds),
a line that explains the columns, and a verdict; it exits 1 when a deviation exceeds the
tolerance, 0 otherwise; bad options exit 2. Besides the gcref backends, which run the MLP
functions, the model backends ``torch-module`` and ``jax-function`` run
:mod:`gcref.models` on the same MLP as a torch module and as a JAX function, for the
quantities :mod:`gcref.models` computes. ``gcref compare --help`` lists the quantities.

``gcref measure`` measures a saved model (a torch or JAX factory and a weights file, or a
``torch.export`` program) on saved data (``.npz`` or a dataset factory): the geometric
complexity exact and estimated, per-example gradient norms with summary statistics, the
IGR terms and the loss (:mod:`gcref.measure`). It prints a table, writes ``--json`` with
the settings, and exits 0, or 2 with an error message for bad options, files or data.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

import gcref
from gcref import measure
from gcref.comparison import registry, runner
from gcref.results import jsonable
from gcref.tolerances import tolerance

_DTYPES = {"float64": np.float64, "float32": np.float32}


def _comma_list(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list; got {text!r}")
    return items


def _sizes(text: str) -> tuple[int, ...]:
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer; got {text!r}")
    return value


def _positive_float(text: str) -> float:
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


def _plain(text: str) -> str:
    """A docstring line for the terminal: reST literals and roles unwrapped."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def _seconds_notation(repeats: str = "--repeats") -> str:
    return f"seconds: the best wall time of {repeats} timed calls, after one untimed warm-up call"


def compare_epilog() -> str:
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


def build_parser() -> argparse.ArgumentParser:
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
    _add_measure(sub)
    return parser


MEASURE_EPILOG = "quantities (for --quantities):\n" + "\n".join(
    f"   {name.ljust(21)}{text}" for name, text in measure.QUANTITIES.items()
) + textwrap.dedent(
    """

    examples:
       gcref measure --model mypkg.nets:make_net --model-arg width=64 --state net.pt \\
           --data test.npz --loss softmax_cross_entropy --json out.json
       gcref measure --exported net.pt2 --data test.npz --quantities gc,gc_estimate --probes 8
       gcref measure --model mypkg.jax_nets:make --params params.npz --dataset mypkg.data:test_set \\
           --loss squared --quantities igr_terms,loss

    Factories are imported from PYTHONPATH or the current directory; --model-arg and
    --dataset-arg values are Python literals (strings need no quotes). Squared norms are
    reported as such; per-example statistics are over the N examples."""
)


def _add_measure(sub: Any) -> None:
    m = sub.add_parser(
        "measure",
        help="measure a saved torch or JAX model on saved data",
        description=textwrap.fill(
            "Load a model (a torch factory with a state dict or a TorchScript file's weights, "
            "a torch.export program, or a JAX factory with a parameter file) and data (.npz "
            "or a dataset factory), evaluate the chosen quantities through gcref.models and "
            "print them (--json: also write them with the settings). Exit status: 0, or 2 "
            "with an error message for bad options, files, data or a failing measure.",
            90,
        ),
        epilog=MEASURE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = m.add_argument_group("model")
    g.add_argument("--model", metavar="MODULE:FUNCTION", help="factory of the model: returns a "
                   "torch.nn.Module, or a JAX apply(params, x) or (apply, params)")
    g.add_argument("--model-arg", action="append", metavar="KEY=VALUE", default=[],
                   help="keyword argument of the factory (repeatable)")
    g.add_argument("--framework", choices=["auto", "torch", "jax"], default="auto",
                   help="default: jax with --params, torch with a torch file or --device, "
                   "else from what the factory returns")
    g.add_argument("--state", metavar="FILE", help="torch state dict (torch.save(module.state_dict()))")
    g.add_argument("--torchscript", metavar="FILE",
                   help="TorchScript file whose weights are loaded into --model's module")
    g.add_argument("--exported", metavar="FILE", help="torch.export.save file (no --model)")
    g.add_argument("--params", metavar="FILE", help="JAX parameters: .npz (gcref.measure."
                   "save_jax_params, or named arrays for a factory returning apply alone) or .pkl")
    g.add_argument("--device", default=None, help="torch device: cpu (default), cuda, cuda:1, ...")
    g.add_argument("--dtype", choices=list(_DTYPES), default=None,
                   help="convert the parameters to this dtype (default: keep theirs)")
    d = m.add_argument_group("data")
    d.add_argument("--data", metavar="FILE.npz", help="arrays X (inputs) and optionally y (targets)")
    d.add_argument("--dataset", metavar="MODULE:FUNCTION", help="factory returning X, (X, y), a "
                   "dict of arrays or an iterable of batches (a DataLoader)")
    d.add_argument("--dataset-arg", action="append", metavar="KEY=VALUE", default=[],
                   help="keyword argument of the dataset factory (repeatable)")
    d.add_argument("--x-key", default=None, help="key of the inputs in the .npz, dict or dict "
                   "batches (default: X)")
    d.add_argument("--y-key", default=None, help="key of the targets (default: y, if present)")
    q = m.add_argument_group("quantities")
    q.add_argument("--quantities", type=_comma_list, default=None,
                   help="comma-separated, among " + ",".join(measure.QUANTITIES)
                   + " (default: gc,param_grad_sq_norms, and with --loss also "
                   "loss_grad_sq_norms,loss, and igr_terms with --batch-size or batches)")
    q.add_argument("--loss", default=None,
                   help=f"loss of the labelled quantities: {', '.join(gcref.loss_names())}")
    q.add_argument("--chunk-size", type=_positive_int, default=256,
                   help="most examples per framework call (default: %(default)s)")
    q.add_argument("--probes", type=_positive_int, default=1,
                   help="gc_estimate: probes per example (default: %(default)s)")
    q.add_argument("--probe", choices=["gaussian", "rademacher", "sphere"], default="gaussian",
                   help="gc_estimate: probe distribution (default: %(default)s)")
    q.add_argument("--seed", type=_non_negative_int, default=0,
                   help="gc_estimate: seed of numpy.random.default_rng for the probes (default: 0)")
    q.add_argument("--batch-size", type=_positive_int, default=None,
                   help="igr_terms on arrays: size of the SGD mini-batches")
    q.add_argument("--quantiles", type=_quantiles, default=measure.DEFAULT_QUANTILES,
                   help="per-example statistics besides mean, std, min, median, max "
                   f"(default: {','.join(f'{v:g}' for v in measure.DEFAULT_QUANTILES)})")
    o = m.add_argument_group("output")
    o.add_argument("--json", metavar="PATH", help="also write the results and settings as JSON")
    o.add_argument("--per-example", action="store_true",
                   help="include the per-example values in --json")
    o.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress line on stderr (default: when stderr is a terminal)")


def _quantiles(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in _comma_list(text))
    except ValueError:
        values = (-1.0,)
    if not all(0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers in [0, 1] such as 0.05,0.95; got {text!r}"
        )
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gcref`` command line; return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.command == "measure":
        return _measure(args)
    return _compare(args)


def _error(message: str, command: str = "compare") -> int:
    print(f"gcref {command}: error: {message}", file=sys.stderr)
    return 2


def _compare(args: argparse.Namespace) -> int:
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


def format_value(value: Any) -> str:
    """A short text for a row's value: the scalar, or an array's shape and norm."""
    if value is None:
        return "-"
    if np.ndim(value) == 0:
        return f"{float(value):.6e}"
    arr = np.asarray(value)
    shape = "x".join(map(str, arr.shape))
    return f"[{shape}] |.|={np.linalg.norm(arr):.4e}"


def format_table(result: runner.Comparison) -> str:
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


def legend(repeats: int) -> str:
    """The line under the table that explains its value, max_rel_dev and seconds columns."""
    return "; ".join(
        [
            "value: a scalar, or [shape] |.|=Euclidean norm of all entries",
            "max_rel_dev: max |value - numpy| / max(max |numpy|, atol/rtol)",
            f"seconds: best of {repeats} timed call{'s' if repeats > 1 else ''} after a warm-up call",
        ]
    )


def summary_line(result: runner.Comparison) -> str:
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


# -- gcref measure --------------------------------------------------------------------------


def _default_quantities(args: argparse.Namespace, data: measure.LoadedData) -> list[str]:
    chosen = ["gc", "param_grad_sq_norms"]
    if args.loss is not None:
        chosen += ["loss_grad_sq_norms", "loss"]
        if args.batch_size is not None or not isinstance(data.data, tuple):
            chosen.append("igr_terms")
    return chosen


def _measure(args: argparse.Namespace) -> int:
    try:
        model = measure.load_model(
            args.model, measure.parse_keywords(args.model_arg, "--model-arg"),
            framework=args.framework, state=args.state, torchscript=args.torchscript,
            exported=args.exported, params=args.params, device=args.device, dtype=args.dtype,
        )
        data = measure.load_data(
            args.data, args.dataset, measure.parse_keywords(args.dataset_arg, "--dataset-arg"),
            x_key=args.x_key, y_key=args.y_key, dtype=model.dtype,
        )
        if args.loss is not None:
            gcref.get_loss(args.loss)
        quantities = args.quantities or _default_quantities(args, data)
        results = measure.measure_quantities(
            model, data, quantities, loss=args.loss, chunk_size=args.chunk_size,
            n_probes=args.probes, probe=args.probe, seed=args.seed, batch_size=args.batch_size,
            quantiles=args.quantiles, per_example=args.per_example, progress=args.progress,
        )
    except (ValueError, TypeError, ImportError) as err:
        return _error(str(err), "measure")
    settings = {
        "model": model.settings,
        "dtype": str(model.dtype),
        "data": data.settings,
        "quantities": list(results),
        "loss": args.loss,
        "chunk_size": args.chunk_size,
        "probes": args.probes,
        "probe": args.probe,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "quantiles": list(args.quantiles),
    }
    print(f"gcref measure: {_describe_model(model)}; data {_describe_data(data)}")
    print(format_measurements(results, args.loss))
    if args.json:
        out = {"gcref": gcref.__version__,
               "command": "measure", "settings": settings, "results": results}
        try:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(jsonable(out), fh, indent=1)
        except OSError as err:
            return _error(f"cannot write --json {args.json}: {err}", "measure")
    return 0


def _describe_model(model: measure.LoadedModel) -> str:
    s = model.settings
    source = s.get("model") or f"exported {s.get('exported')}"
    weights = [f"{key} {s[key]}" for key in ("state", "torchscript", "params") if key in s]
    where = f" on {s['device']}" if "device" in s else ""
    return f"{model.framework} model {source}{' (' + ', '.join(weights) + ')' if weights else ''}{where}, {model.dtype}"


def _describe_data(data: measure.LoadedData) -> str:
    s = data.settings
    source = s.get("data") or s.get("dataset")
    parts = [f"{key} {s[key]}" for key in ("X", "y", "batches") if key in s]
    return f"{source}: {', '.join(parts)}" if parts else str(source)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6e}"


#: What each distribution is of, for the table.
_OF = {
    "gc": "||J(x_n)||_F^2",
    "param_grad_sq_norms": "||grad_theta f(x_n)||_F^2",
    "loss_grad_sq_norms": "||grad_theta l_n||^2",
}


def format_measurements(results: dict[str, dict[str, Any]], loss: str | None = None) -> str:
    """The values of :func:`gcref.measure.measure_quantities` as text: values, then statistics."""
    rows = []
    for name, r in results.items():
        if name == "gc":
            rows.append(("gc", _num(r["value"]), "(1/N) sum_n ||J(x_n)||_F^2"))
        elif name == "gc_estimate":
            what = (
                f"stderr {_num(r['stderr'])}, {r['n_probes']} {r['settings']['probe']} "
                f"probe(s) per example, seed {r['settings']['seed']}"
            )
            rows.append(("gc_estimate", _num(r["value"]), what))
        elif name == "loss":
            rows.append(("loss", _num(r["value"]), f"mean {loss} loss"))
        elif name == "igr_terms":
            n, m = r["n_examples"], r["n_batches"]
            rows += [
                ("igr_terms.loss", _num(r["loss"]), f"mean {loss} loss L over N = {n}"),
                ("igr_terms.full_batch", _num(r["full_batch"]), "||grad L||^2"),
                ("igr_terms.mini_batch", _num(r["mini_batch"]), f"(1/m) sum_j ||grad L_B_j||^2, m = {m}"),
                ("igr_terms.per_example", _num(r["per_example"]), "(1/N) sum_n ||grad l_n||^2"),
            ]
    out = []
    if rows:
        out.append(_table(("quantity", "value", "what"), rows, right=(1,)))
    dist = [(name, r["per_example_summary"]) for name, r in results.items() if "per_example_summary" in r]
    if dist:
        stats = [k for k in dist[0][1] if k != "n"]
        n = int(dist[0][1]["n"])
        lines = [(f"{name} {_OF[name]}", *(_num(s[k]) for k in stats)) for name, s in dist]
        if out:
            out.append("")
        out.append(f"per-example statistics over N = {n} examples:")
        out.append(_table(("of", *stats), lines, right=tuple(range(1, len(stats) + 1))))
    return "\n".join(out)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    widths = [max(len(str(line[i])) for line in [header, *rows]) for i in range(len(header))]
    out = []
    for line in [header, *rows]:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
    out.insert(1, "-" * max(len(line) for line in out))
    return "\n".join(out)
