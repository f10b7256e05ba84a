"""Peak resident memory of streaming measures over 10^4 and 10^6 examples (issue 16, item 6).

A measure of :mod:`gcref.models` reads an iterable of batches chunk by chunk, so its
memory should not grow with the number of examples N, apart from what it returns per
example. For two measures,

- ``geometric_complexity`` (one float: nothing per example), and
- ``loss_grad_sq_norms`` with the squared loss (a :class:`gcref.GradNorms` of shape
  (N, T), T parameter tensors: ``8 N T`` bytes that must be kept),

and two models, a small torch MLP ``Linear(D, H) -> Tanh -> Linear(H, K)`` in float64
and the :class:`gcref.MLP` ``(D, H, K)`` on the NumPy backend, each case runs in a fresh
subprocess (so that one case's peak does not hide another's) over a generator that draws
batches of ``--batch`` Gaussian examples from an explicit ``numpy.random.Generator``:
the data never exist whole. The child measures its resident set after importing and one
warm-up call on a single batch (``baseline``), then its peak over the whole run
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, KiB on Linux), and reports ``peak -
baseline`` less the bytes of the result (``working set``): flat in N is what the measure
promises.

Usage::

    python benchmarks/memory.py                        # 10^4 and 10^6 examples (minutes)
    python benchmarks/memory.py --sizes 10000 100000   # quicker
    python benchmarks/memory.py --child torch geometric_complexity 10000   # one case, JSON

Timings are printed for orientation only (a shared machine makes them noisy).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

D, H, K = 16, 32, 4
MODELS = ("torch", "mlp")
MEASURES = ("geometric_complexity", "loss_grad_sq_norms")


def peak_rss_bytes():
    """The process's peak resident set so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def batches(n, batch, seed=0):
    """``(X, y)`` batches of ``batch`` examples, ``n`` in all, drawn one at a time."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, batch):
        m = min(batch, n - start)
        yield rng.standard_normal((m, D)), rng.standard_normal((m, K))


def build(model):
    """``(model, keyword arguments)`` for :mod:`gcref.models`."""
    if model == "torch":
        import torch

        torch.set_num_threads(1)
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.Tanh(), torch.nn.Linear(H, K))
        return net.double(), {}
    import gcref

    mlp = gcref.MLP((D, H, K), activation="tanh")
    return mlp, {"params": mlp.init(np.random.default_rng(0), bias="normal")}


def run(model, measure, data, keywords, chunk_size):
    from gcref import models

    if measure == "geometric_complexity":
        return models.geometric_complexity(model, data, chunk_size=chunk_size, **keywords)
    return models.loss_grad_sq_norms(model, data, "squared", chunk_size=chunk_size, **keywords)


def result_bytes(result):
    """Bytes of the per-example arrays the result must hold (0 for a float)."""
    per_parameter = getattr(result, "per_parameter", None)
    return 0 if per_parameter is None else int(np.asarray(per_parameter).nbytes)


def child(model, measure, n, batch, chunk_size):
    """One case in this process; returns a dict of the measurements."""
    net, keywords = build(model)
    run(net, measure, batches(batch, batch, seed=1), keywords, chunk_size)  # warm-up
    baseline = peak_rss_bytes()
    start = time.perf_counter()
    result = run(net, measure, batches(n, batch), keywords, chunk_size)
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    kept = result_bytes(result)
    return {
        "model": model, "measure": measure, "n": n, "baseline_mib": baseline / 2**20,
        "growth_mib": (peak - baseline) / 2**20, "result_mib": kept / 2**20,
        "working_set_mib": (peak - baseline - kept) / 2**20, "seconds": seconds,
    }


def measure_in_subprocess(model, measure, n, batch, chunk_size):
    out = subprocess.run(
        [sys.executable, __file__, "--child", model, measure, str(n), "--batch", str(batch),
         "--chunk-size", str(chunk_size)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def chunk_working_set_mib(batch, chunk_size):
    """A rough size of one chunk's arrays: a batch, its activations and Jacobians, float64."""
    per_example = D + K + 2 * H + K * D + K * (H + D)
    return max(batch, chunk_size) * per_example * 8 / 2**20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--batch", type=int, default=1000, help="examples per batch (default 1000)")
    parser.add_argument("--chunk-size", type=int, default=256, help="(default 256)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "MEASURE", "N"),
                        help="run one case in this process and print it as JSON")
    args = parser.parse_args(argv)
    if args.child:
        model, measure, n = args.child
        print(json.dumps(child(model, measure, int(n), args.batch, args.chunk_size)))
        return 0
    print(f"D, H, K = {D}, {H}, {K}; batches of {args.batch}, chunks of {args.chunk_size}; "
          f"one chunk's arrays ~ {chunk_working_set_mib(args.batch, args.chunk_size):.2f} MiB")
    header = (f"{'model':6} {'measure':22} {'N':>9} {'baseline':>9} {'growth':>8} "
              f"{'result':>8} {'working':>8} {'seconds':>8}")
    print(header + "\n" + "-" * len(header) + "   (MiB; working = growth - result)")
    for model in args.models:
        for measure in MEASURES:
            for n in args.sizes:
                r = measure_in_subprocess(model, measure, n, args.batch, args.chunk_size)
                print(f"{model:6} {measure:22} {n:>9} {r['baseline_mib']:9.1f} "
                      f"{r['growth_mib']:8.1f} {r['result_mib']:8.1f} "
                      f"{r['working_set_mib']:8.1f} {r['seconds']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
