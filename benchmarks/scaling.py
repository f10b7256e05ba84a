"""How the cost of each measure grows: time against N and against width, memory against N.

Issue 17, item 4. The model is a torch MLP ``d -> w -> w -> w -> k`` with tanh units
(``d = 32``, ``k = 10``, the network of ``per_example_norms.py`` at ``w = 256``), measured
through :mod:`gcref.models` as a user's ``torch.nn.Module``, float32, one torch thread.
Measures, each with chunks of ``--chunk`` examples:

- ``GC exact``: ``geometric_complexity`` (k input-only vector-Jacobian products per chunk);
- ``GC 1-probe``: ``estimate_geometric_complexity(..., n_probes=1)``;
- ``grad norms``: ``loss_grad_sq_norms`` of the softmax cross-entropy, per example;
- ``igr_terms``: ``igr_terms`` with mini-batches of ``--chunk`` examples;
- ``loss_hvp``: ``loss_hvp``, the Hessian of the mean loss times a Gaussian vector.

**Time against N**: four sizes over two decades (``--sizes``), on data held in memory;
the median of ``--repeats`` rounds after a warm-up, each round timing every measure at
every size once in a shuffled order (so that load from other processes, and the drift of
the machine's speed, fall on all sizes alike). The goal of
issue 17 is time linear in N within 10%: the time per example at every size within 10%
of its value at the largest size; the least-squares slope of ``log t`` against ``log N``
is printed too (1 for linear cost). The verdict reads **back-to-back pairs** (``--pairs``,
:func:`paired_sweep`): each smaller size's call and the largest size's, timed one right
after the other in a random order, give the ratio of their times per example, and the
median over the pairs must lie within 10% of 1. On this project's 2-core virtual machine
the speed drifts by more than 10% between rounds, so the medians over rounds could not
resolve it; ``--pairs 0`` judges them instead.

**Time against width**: the same measures at one N (``--width-n``) for the widths of
``--widths``; no goal (the cost of a dense layer grows as ``w^2``, that of a chunk's
fixed work does not).

**Peak memory against N**: for each size, a fresh Python process streams the data from
a generator (each batch drawn from its own seeded ``torch.Generator``, nothing held)
through every measure, on the same MLP with ``d = --memory-d`` inputs (256 by default, 1
KiB an example, so that held data would show beside the model); before each measure it resets the peak resident set size
(``/proc/self/clear_refs``, Linux) and afterwards reads it (``VmHWM``), so each
measure's peak is its own. Every measure is first run once on two batches, so that
one-time allocations (the framework's caches) are not counted at the first size only.
The goal is memory flat in N: the peak at the largest size within 10% of the peak at
the smallest. Where the peak cannot be reset, the process's ``ru_maxrss`` (the peak
since it started, so cumulative over the measures) is reported instead, and said so.

Output: a table on stdout, the same tables in Markdown in ``<out>.md`` and a plot in
``<out>.png`` (default ``benchmarks/figures/scaling``; with ``--quick``,
``benchmarks/figures/scaling-quick``). This is a measurement, not a test::

    .venv/bin/python benchmarks/scaling.py            # N = 256 to 25,600, widths 64 to 512
    .venv/bin/python benchmarks/scaling.py --quick    # N = 64 to 6,400, widths 16 to 128
    python benchmarks/scaling.py --device cuda --sizes 1000,10000,100000,1000000 --chunk 1024

With ``--device cuda`` the model and each batch live on the GPU, every timing is
synchronised, and the memory is the device's peak allocation
(``torch.cuda.max_memory_allocated``, reset before each measure) instead of the RSS.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MEASURES = ("GC exact", "GC 1-probe", "grad norms", "igr_terms", "loss_hvp")
LOSS = "softmax_cross_entropy"
D_IN, K = 32, 10
LINEAR_TOLERANCE = 0.10
FLAT_TOLERANCE = 0.10

DEFAULT_SETTING = {"sizes": "256,1024,4096,25600", "widths": "64,128,256,512", "width": 256,
                   "width_n": 2048, "chunk": 256, "repeats": 3, "pairs": 5}
QUICK_SETTING = {"sizes": "64,256,1024,6400", "widths": "16,32,64,128", "width": 64,
                 "width_n": 512, "chunk": 64, "repeats": 1, "pairs": 1}
FIGURES = Path(__file__).resolve().parent / "figures"


# -- the model and the data -----------------------------------------------------------------


def build_mlp(width, seed, d_in=D_IN):
    """``Linear(d, w) -> tanh -> Linear(w, w) -> tanh -> Linear(w, w) -> tanh -> Linear(w, 10)``."""
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                             nn.Linear(width, width), nn.Tanh(), nn.Linear(width, K))


def draw_batch(size, seed, d_in=D_IN):
    """Gaussian inputs ``(size, d)`` and uniform labels in ``[0, 10)`` from their own generator."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn((size, d_in), generator=generator), torch.randint(0, K, (size,), generator=generator)


def stream(n, batch, seed, d_in, device="cpu"):
    """A generator of ``(X, y)`` batches of at most ``batch`` examples, n in all, none kept."""
    for j, start in enumerate(range(0, n, batch)):
        X, y = draw_batch(min(batch, n - start), seed + j, d_in)
        yield X.to(device), y.to(device)


def synchronize(device):
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def held_mib(n, d_in):
    """What n examples would take if held: float32 inputs and int64 labels, MiB."""
    return n * (4 * d_in + 8) / 2**20


def measure_runs(model, chunk, seed):
    """``{measure: run(data)}`` through :mod:`gcref.models`; data: ``(X, y)`` or batches."""
    from gcref import models

    p = sum(t.numel() for t in model.parameters())
    vector = np.random.default_rng(seed).standard_normal(p)
    return {
        "GC exact": lambda data: models.geometric_complexity(model, data, chunk_size=chunk),
        "GC 1-probe": lambda data: models.estimate_geometric_complexity(
            model, data, np.random.default_rng(seed), n_probes=1, chunk_size=chunk).value,
        "grad norms": lambda data: models.loss_grad_sq_norms(model, data, LOSS, chunk_size=chunk),
        "igr_terms": lambda data: models.igr_terms(
            model, data, LOSS, chunk_size=chunk, **({"batch_size": chunk} if isinstance(data, tuple) else {})),
        "loss_hvp": lambda data: models.loss_hvp(model, data, LOSS, vector, chunk_size=chunk),
    }


# -- time -----------------------------------------------------------------------------------


def time_sweep(points, chunk, repeats, seed, device, log):
    """Median seconds of every measure at each point ``(width, n)``: ``{measure: [seconds]}``.

    Each point has its own model and data; every measure is warmed up on two chunks at
    every point, then timed in ``repeats`` rounds, each round timing every (point,
    measure) once in a shuffled order. Interleaving the points matters: the shared
    CPU's speed drifts by tens of percent over a minute, and timing the sizes one after
    the other read that drift as a change of the time per example with N (measured:
    per-example times 30% apart between N = 16,384 and 102,400, in the order they ran).
    """
    rng = np.random.default_rng(seed)
    setups = []
    for width, n in points:
        runs = measure_runs(build_mlp(width, seed).to(device), chunk, seed)
        data = tuple(t.to(device) for t in draw_batch(n, seed))
        warm = (data[0][: 2 * chunk], data[1][: 2 * chunk])
        for run in runs.values():
            run(warm)
        setups.append((runs, data))
    times = [{m: [] for m in MEASURES} for _ in points]
    pairs = [(j, m) for j in range(len(points)) for m in MEASURES]
    for _ in range(repeats):
        for i in rng.permutation(len(pairs)):
            j, m = pairs[i]
            runs, data = setups[j]
            synchronize(device)
            start = time.perf_counter()
            runs[m](data)
            synchronize(device)
            times[j][m].append(time.perf_counter() - start)
    out = {m: [statistics.median(t[m]) for t in times] for m in MEASURES}
    for j, (width, n) in enumerate(points):
        log(f"  width {width}, N = {n}: " + ", ".join(f"{m} {out[m][j]:.3g} s" for m in MEASURES))
    return out


def paired_sweep(width, sizes, chunk, pairs, seed, device, log):
    """Per-example time at each smaller size relative to the largest, from back-to-back pairs.

    For every measure and every size n below the largest N, ``pairs`` times: the call on
    the first n examples and the call on all N, timed one right after the other in a
    random order, give the ratio ``(t(n) / n) / (t(N) / N)``. Returns ``{measure: [(median,
    lower quartile, upper quartile) for each smaller size]}``. A pair lasts seconds, so
    the machine's drift, which the medians over rounds of :func:`time_sweep` keep (the
    rounds take minutes), mostly cancels within it; the verdict on linearity reads these.
    """
    rng = np.random.default_rng(seed + 1)
    runs = measure_runs(build_mlp(width, seed).to(device), chunk, seed)
    X, y = (t.to(device) for t in draw_batch(sizes[-1], seed))
    for run in runs.values():
        run((X[: 2 * chunk], y[: 2 * chunk]))

    def seconds(m, n):
        synchronize(device)
        start = time.perf_counter()
        runs[m]((X[:n], y[:n]))
        synchronize(device)
        return time.perf_counter() - start

    out = {m: [None] * (len(sizes) - 1) for m in MEASURES}
    work = [(m, j) for m in MEASURES for j in range(len(sizes) - 1)]
    for i in rng.permutation(len(work)):
        m, j = work[i]
        n, N = sizes[j], sizes[-1]
        ratios = []
        for _ in range(pairs):
            if rng.random() < 0.5:
                small, large = seconds(m, n), seconds(m, N)
            else:
                large, small = seconds(m, N), seconds(m, n)
            ratios.append((small / n) / (large / N))
        q1, med, q3 = np.percentile(ratios, [25, 50, 75])
        out[m][j] = (float(med), float(q1), float(q3))
    for m in MEASURES:
        log(f"  {m}: " + ", ".join(f"N = {n}: {r[0]:.3f} [{r[1]:.3f}, {r[2]:.3f}]"
                                   for n, r in zip(sizes, out[m])))
    return out


def linearity(sizes, seconds):
    """``(slope, worst)``: the log-log slope, and the largest |t/N / (t/N at the largest N) - 1|."""
    sizes, seconds = np.asarray(sizes, dtype=float), np.asarray(seconds, dtype=float)
    slope = float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])
    per_example = seconds / sizes
    return slope, float(np.max(np.abs(per_example / per_example[-1] - 1)))


# -- memory ---------------------------------------------------------------------------------


def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _reset_peak():
    """Reset the peak RSS to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        _status_kib("VmHWM")
        return True
    except OSError:
        return False


def memory_child(n, width, chunk, seed, d_in, device="cpu"):
    """In a fresh process: each measure's peak memory (MiB) on n streamed examples, as JSON.

    On the CPU the peak RSS; on CUDA the device's peak allocated memory
    (``torch.cuda.max_memory_allocated``, reset before each measure).
    """
    import torch

    torch.set_num_threads(1)
    runs = measure_runs(build_mlp(width, seed, d_in).to(device), chunk, seed)
    for run in runs.values():
        run(stream(2 * chunk, chunk, seed, d_in, device))
    result = {"n": n, "per_measure": True, "peak_mib": {}, "start_mib": {}}
    cuda = torch.device(device).type == "cuda"
    for m in MEASURES:
        gc.collect()
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            result["start_mib"][m] = torch.cuda.memory_allocated(device) / 2**20
            runs[m](stream(n, chunk, seed, d_in, device))
            torch.cuda.synchronize(device)
            result["peak_mib"][m] = torch.cuda.max_memory_allocated(device) / 2**20
            continue
        reset = _reset_peak()
        result["per_measure"] &= reset
        result["start_mib"][m] = _status_kib("VmRSS") / 1024 if reset else float("nan")
        runs[m](stream(n, chunk, seed, d_in))
        if reset:
            result["peak_mib"][m] = _status_kib("VmHWM") / 1024
        else:
            result["peak_mib"][m] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def memory_sweep(sizes, width, chunk, seed, d_in, device, log):
    """Run :func:`memory_child` in a fresh interpreter for each size; ``[result dicts]``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    results = []
    for n in sizes:
        command = [sys.executable, __file__, "--memory-child", str(n), "--width", str(width),
                   "--chunk", str(chunk), "--seed", str(seed), "--memory-d", str(d_in), "--device", device]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the memory run for N = {n} failed:\n{done.stderr[-2000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        log(f"  N = {n}: " + ", ".join(f"{m} {results[-1]['peak_mib'][m]:.1f} MiB" for m in MEASURES))
    return results


# -- report ---------------------------------------------------------------------------------


def tables(sizes, by_n, widths, by_width, width_n, memory, d_in, cuda=False, paired=None):
    """The three tables in Markdown, with the verdicts: ``(text, all goals met)``.

    With ``paired`` (from :func:`paired_sweep`) the linearity verdict reads the paired
    medians; without, the ratio of the medians over rounds.
    """
    lines, met = [], True
    head = " | ".join(f"N = {n:,}" for n in sizes)
    pair_head = "".join(f" paired t/N at {n:,} / at {sizes[-1]:,} |" for n in sizes[:-1]) if paired else ""
    lines += ["Time (median s) against N:", "",
              f"| measure | {head} | log-log slope | worst t/N vs largest N |{pair_head} "
              "linear within 10% |",
              "| --- |" + " ---: |" * (len(sizes) + 2 + (len(sizes) - 1 if paired else 0)) + " --- |"]
    for m in MEASURES:
        slope, worst = linearity(sizes, by_n[m])
        cells = " | ".join(f"{t:.4g}" for t in by_n[m])
        extra = ""
        if paired:
            extra = "".join(f" {r[0]:.3f} [{r[1]:.3f}, {r[2]:.3f}] |" for r in paired[m])
            worst_paired = max(abs(r[0] - 1) for r in paired[m])
            ok = worst_paired <= LINEAR_TOLERANCE
        else:
            ok = worst <= LINEAR_TOLERANCE
        met &= ok
        lines.append(f"| {m} | {cells} | {slope:.3f} | {worst:.1%} |{extra} {'PASS' if ok else 'MISS'} |")
    head = " | ".join(f"w = {w}" for w in widths)
    lines += ["", f"Time (median s) against width, N = {width_n:,}:", "", f"| measure | {head} |",
              "| --- |" + " ---: |" * len(widths)]
    for m in MEASURES:
        lines.append(f"| {m} | " + " | ".join(f"{t:.4g}" for t in by_width[m]) + " |")
    per_measure = all(r["per_measure"] for r in memory)
    head = " | ".join(f"N = {r['n']:,}" for r in memory)
    what = "each measure's own peak RSS" if per_measure else (
        "ru_maxrss (peak since the process started, cumulative over the measures in this order)")
    if cuda:
        what = "each measure's own peak CUDA allocation (torch.cuda.max_memory_allocated)"
    held = held_mib(memory[-1]["n"], d_in)
    lines += ["", (f"Peak memory (MiB) against N, d = {d_in}, streamed from a generator, a fresh "
                   f"process per N; {what}; the data would take {held:.1f} MiB at the largest N "
                   "if held:"), "",
              f"| measure | {head} | growth | growth MiB | growth / data | flat within 10% |",
              "| --- |" + " ---: |" * (len(memory) + 3) + " --- |"]
    for m in MEASURES:
        peaks = [r["peak_mib"][m] for r in memory]
        growth = peaks[-1] / peaks[0] - 1
        ok = growth <= FLAT_TOLERANCE
        met &= ok
        lines.append(f"| {m} | " + " | ".join(f"{v:.1f}" for v in peaks)
                     + f" | {growth:+.1%} | {peaks[-1] - peaks[0]:+.2f} | "
                     f"{(peaks[-1] - peaks[0]) / held:+.1%} | {'PASS' if ok else 'MISS'} |")
    return "\n".join(lines), met


def plot(path, sizes, by_n, widths, by_width, width_n, memory, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for m in MEASURES:
        axes[0].loglog(sizes, by_n[m], "o-", label=m)
        axes[1].loglog(widths, by_width[m], "o-", label=m)
        axes[2].semilogx([r["n"] for r in memory], [r["peak_mib"][m] for r in memory], "o-", label=m)
    ref = np.asarray(sizes, dtype=float)
    top = max(by_n[m][-1] for m in MEASURES)
    axes[0].loglog(ref, top * ref / ref[-1], "k--", lw=1, label="proportional to N")
    axes[0].set(xlabel="N (examples)", ylabel="seconds", title="time against N")
    axes[1].set(xlabel="width w", ylabel="seconds", title=f"time against width (N = {width_n:,})")
    axes[2].set(xlabel="N (examples, streamed)", ylabel="peak memory (MiB)",
                title="peak memory against N")
    axes[2].set_ylim(bottom=0)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def int_list(text):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers; got {text!r}") from None
    if len(values) < 2 or any(v <= 0 for v in values) or values != sorted(values):
        raise argparse.ArgumentTypeError(f"expected at least two increasing positive integers; got {text!r}")
    return values


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and one round: seconds")
    parser.add_argument("--sizes", type=int_list, default=None,
                        help=f"N for time and memory (default {DEFAULT_SETTING['sizes']}; "
                        f"quick {QUICK_SETTING['sizes']})")
    parser.add_argument("--widths", type=int_list, default=None,
                        help=f"default {DEFAULT_SETTING['widths']}; quick {QUICK_SETTING['widths']}")
    for key in ("width", "width_n", "chunk", "repeats"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                            help=f"default {DEFAULT_SETTING[key]}; quick {QUICK_SETTING[key]}")
    parser.add_argument("--pairs", type=int, default=None,
                        help="back-to-back pairs (size, largest size) per measure and size for "
                        f"the linearity verdict (default {DEFAULT_SETTING['pairs']}; quick "
                        f"{QUICK_SETTING['pairs']}; 0: judge the medians over rounds)")
    parser.add_argument("--memory-d", type=int, default=256,
                        help="input features of the memory runs' MLP (default 256: 1 KiB an example)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu; on cuda the "
                        "memory is the device's peak allocation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="path prefix of the .md and .png outputs")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setting = QUICK_SETTING if args.quick else DEFAULT_SETTING
    for key, value in setting.items():
        if getattr(args, key) is None:
            setattr(args, key, int_list(value) if key in ("sizes", "widths") else value)
    if args.pairs < 0:
        parser.error("--pairs must be 0 or a positive integer")
    for key in ("width", "width_n", "chunk", "repeats", "memory_d"):
        if getattr(args, key) <= 0:
            parser.error(f"--{key.replace('_', '-')} must be a positive integer")
    if args.memory_child is not None:
        memory_child(args.memory_child, args.width, args.chunk, args.seed, args.memory_d, args.device)
        return

    import torch

    torch.set_num_threads(1)
    out = Path(args.out) if args.out else FIGURES / ("scaling-quick" if args.quick else "scaling")
    out.parent.mkdir(parents=True, exist_ok=True)

    def log(text):
        print(text, flush=True)

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if torch.device(args.device).type == "cuda":
        where = f"{torch.cuda.get_device_name(args.device)}"
    else:
        where = f"{platform.machine()}, {os.cpu_count()} CPUs"
    header = (f"gcref.models scaling, {now}; device {args.device} ({where}), load average "
              f"{os.getloadavg()[0]:.1f}; python {platform.python_version()}, numpy {np.__version__}, "
              f"torch {torch.__version__} (1 thread); MLP 32-w-w-w-10 tanh, float32, chunk {args.chunk}, "
              f"median of {args.repeats} round(s)")
    log(header)
    started = time.perf_counter()
    log("time against N:")
    by_n = time_sweep([(args.width, n) for n in args.sizes], args.chunk, args.repeats, args.seed,
                      args.device, log)
    paired = None
    if args.pairs:
        log(f"per-example time against the largest N, {args.pairs} back-to-back pairs each "
            "(median [quartiles]):")
        paired = paired_sweep(args.width, args.sizes, args.chunk, args.pairs, args.seed,
                              args.device, log)
    log("time against width:")
    by_width = time_sweep([(w, args.width_n) for w in args.widths], args.chunk, args.repeats,
                          args.seed, args.device, log)
    log("peak memory against N (a fresh process per N, data streamed from a generator):")
    memory = memory_sweep(args.sizes, args.width, args.chunk, args.seed, args.memory_d, args.device, log)
    cuda = torch.device(args.device).type == "cuda"
    text, met = tables(args.sizes, by_n, args.widths, by_width, args.width_n, memory, args.memory_d, cuda,
                       paired)
    footer = (f"load average at the end {os.getloadavg()[0]:.1f}; {time.perf_counter() - started:.0f} s; "
              f"goals (time linear in N within 10%, memory flat within 10%): {'PASS' if met else 'MISS'}")
    log("\n" + text + "\n\n" + footer)
    out.with_suffix(".md").write_text(f"{header}\n\n{text}\n\n{footer}\n")
    plot(out.with_suffix(".png"), args.sizes, by_n, args.widths, by_width, args.width_n, memory, header)
    log(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
