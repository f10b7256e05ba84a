"""Streaming measures keep their memory flat in the number of examples (issue 16, item 6).

The fast version of ``benchmarks/memory.py``: the :class:`gcref.MLP` on the NumPy backend
(whose every array tracemalloc sees, unlike a framework's own allocator) measured over a
generator of 10^4 and of 10^5 examples, in batches of 1000 and chunks of 256. The peak
of traced memory during the call, above what was allocated before it, may grow with N
only by what the result must hold per example.
"""

from __future__ import annotations

import importlib.util
import tracemalloc
from pathlib import Path


from gcref import models

# benchmarks/ is no package: load the benchmark script as a module.
_spec = importlib.util.spec_from_file_location(
    "benchmark_memory", Path(__file__).resolve().parent.parent / "benchmarks" / "memory.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

SIZES = (10_000, 100_000)
#: Slack for the allocator's and the interpreter's own noise: a tenth of one batch's data.
SLACK_BYTES = 64 * 2**10


def run(measure, net, data, keywords):
    if measure == "mean_loss":
        return models.mean_loss(net, data, "squared", chunk_size=256, **keywords)
    return bench.run(net, measure, data, keywords, 256)


def traced_peak(measure, n):
    """``(peak bytes above the start, bytes the result holds per example)`` of one call."""
    net, keywords = bench.build("mlp")
    run(measure, net, bench.batches(1000, 1000, seed=1), keywords)  # warm-up
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        result = run(measure, net, bench.batches(n, 1000), keywords)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    return peak, bench.result_bytes(result)


def test_a_summing_measure_is_flat():
    # The control: the mean loss keeps running sums, and the check below passes for it.
    (small, _), (large, _) = (traced_peak("mean_loss", n) for n in SIZES)
    assert large <= small + SLACK_BYTES, (small, large)


def test_geometric_complexity_memory_does_not_grow_with_n():
    (small, _), (large, _) = (traced_peak("geometric_complexity", n) for n in SIZES)
    assert large <= small + SLACK_BYTES, (small, large)


def test_per_example_norms_need_at_most_three_times_their_result():
    # The per-example result (N, T) must be kept. Its buffer doubles when full, so while it
    # grows the old and the new buffer are held together: less than 3 N rows. Beyond that
    # and one chunk's work (which the smaller run's whole peak bounds), the memory must not
    # grow with N. The bound can fail: holding the 10^5 inputs would add 12.8 MB
    # (D = 16 float64 each) to the 6.5 MB the call needs, against a bound of about 10.7 MB.
    (small, kept_small), (large, kept_large) = (traced_peak("loss_grad_sq_norms", n) for n in SIZES)
    assert kept_large == 10 * kept_small > 0
    assert large <= 3 * kept_large + small + SLACK_BYTES, (small, large, kept_large)
