"""One training step with each penalty of :mod:`gcref.penalties`, in units of a plain step.

Issue 12, item 5. For a CIFAR ResNet-18 and ``SmallCNN`` (``gcref.nets.torch``, 10 classes,
training mode) on a synthetic batch of 3 x S x S images with random labels, one step is
``zero_grad``, forward pass, mean cross-entropy plus ``lam`` times the penalty, backward
pass, SGD update. Each step's time is divided by that of the plain step (no penalty) on
the same model and batch, measured in the same run. Penalties:

- ``DE exact``: :func:`gcref.penalties.dirichlet_energy` with ``examples="independent"``
  (k input vector-Jacobian products kept in the graph);
- ``DE 1-probe``: :func:`gcref.penalties.estimate_dirichlet_energy`, one sphere probe per
  example (``examples="independent"``);
- ``GC exact, batch statistics`` (models with BatchNorm only): the default
  ``examples="auto"``, which in training mode takes ``d f_n / d x_n`` of the batch's
  function by one backward pass batched over n k one-hot cotangents;
- ``IGR full batch``: :func:`gcref.penalties.igr_full_batch` (double backward);
- ``IGR per example``: :func:`gcref.penalties.igr_per_example` (norm identities where
  every layer has a rule and the examples are independent; batched backward passes
  otherwise, e.g. BatchNorm in training mode).

Against the alternatives, timed in the same rounds and checked to give the same value on
the same batch first (relative difference printed; beyond the dtype's tolerance the time
is replaced by ``DISAGREES``):

- the **Jacobian regulariser** of Hoffman, Roberts and Yaida (2019, Algorithm 1), written
  here from the paper: ``R = (1/2) (C / (n_proj B)) sum_proj ||v^T J||^2`` with one-hot
  projections (``n_proj = -1``: all C of them, scale 1) or ``n_proj`` random ones drawn
  from a normal and normalised per example, each one ``torch.autograd.grad`` with
  ``create_graph=True``; its value is ``DE`` (the one-hot form) or the sphere-probe
  estimate of ``DE`` (checked with gcref's probes; timed with its own torch draws);
  in training mode with BatchNorm both forms take the gradient of ``sum_m f_m`` for
  ``d f_n / d x_n``, the ``examples="independent"`` value;
- a **hand-written double backward** for the full-batch IGR penalty;
- **batched per-example gradients** (``torch.autograd.grad(..., is_grads_batched=True,
  create_graph=True)`` over the n one-hot cotangents of the per-example losses) for the
  per-example IGR penalty.

The ratio ``alternative / gcref`` is printed (above 1: gcref is faster), and the goals of
issue 12: the 1-probe step at most 3x a plain step, and every gcref penalty at least as
fast as its alternative at equal values.

Timing: each step runs twice to warm up; then ``--repeats`` rounds, each timing every step
once in a shuffled order (load from other processes falls on all alike); the median is
reported. On CUDA the device is synchronised around each step. On the CPU torch uses one
thread unless ``--threads`` says otherwise.

This is a measurement, not a test::

    .venv/bin/python benchmarks/penalties.py            # CPU setting, a few minutes
    .venv/bin/python benchmarks/penalties.py --quick    # seconds: checks that it runs
    python benchmarks/penalties.py --full               # batch 128, 32 x 32, width 64, GPU
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import numpy as np

K = 10
LAM = 0.01
PROBE_GOAL = 3.0
AGREEMENT_RTOL = {"float64": 1e-9, "float32": 1e-4}

CPU_SETTING = {
    "batch": 32,
    "image_size": 16,
    "resnet_width": 8,
    "cnn_width": 16,
    "repeats": 5,
    "threads": 1,
}
QUICK_SETTING = {
    "batch": 8,
    "image_size": 8,
    "resnet_width": 4,
    "cnn_width": 4,
    "repeats": 2,
    "threads": 1,
}
FULL_SETTING = {
    "batch": 128,
    "image_size": 32,
    "resnet_width": 64,
    "cnn_width": 32,
    "repeats": 10,
    "threads": None,
}


# -- the Jacobian regulariser, from the paper -------------------------------------------------


def jacobian_regulariser(torch, x, f, n_proj, probes=None):
    """Hoffman, Roberts and Yaida (2019), Algorithm 1: ``(1/2) (C / (n_proj B)) sum ||v^T J||^2``.

    ``x`` requires grad and ``f = model(x)`` of shape ``(B, C)``. ``n_proj = -1``: the C
    one-hot projections with scale 1 (exact); otherwise ``n_proj`` projections drawn
    from a normal and normalised per example (or the given ``probes`` of shape
    ``(B, n_proj, C)``), scale C.
    """
    B, C = f.shape
    if n_proj == -1:
        projections = []
        for c in range(C):
            v = torch.zeros_like(f)
            v[:, c] = 1
            projections.append(v)
        scale, count = 1.0, 1
    else:
        if probes is None:
            probes = torch.randn(B, n_proj, C, dtype=f.dtype, device=f.device)
            probes = probes / probes.norm(dim=2, keepdim=True)
        projections = [probes[:, j] for j in range(n_proj)]
        scale, count = float(C), n_proj
    J2 = 0.0
    for v in projections:
        (Jv,) = torch.autograd.grad(f, x, v, retain_graph=True, create_graph=True)
        J2 = J2 + scale * Jv.square().sum() / (count * B)
    return J2 / 2


def igr_double_backward(torch, model, x, y):
    """``||grad_theta L_B||^2`` by hand: one ``autograd.grad`` with ``create_graph``."""
    f = model(x)
    loss = torch.nn.functional.cross_entropy(f, y)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    return sum(g.square().sum() for g in grads if g is not None), f


def igr_batched_per_example(torch, model, x, y):
    """``(1/B) sum_n ||grad_theta l_n||^2`` from per-example gradients by batched backward passes."""
    f = model(x)
    losses = torch.nn.functional.cross_entropy(f, y, reduction="none")
    params = [p for p in model.parameters() if p.requires_grad]
    eye = torch.eye(x.shape[0], dtype=losses.dtype, device=losses.device)
    grads = torch.autograd.grad(
        losses, params, eye, is_grads_batched=True, create_graph=True, allow_unused=True
    )
    return sum(g.square().sum() for g in grads if g is not None) / x.shape[0], f


# -- the steps ---------------------------------------------------------------------------------


def methods(torch, penalties, model, has_batchnorm):
    """``name -> (gcref or alternative, function (x, y, rng) -> (penalty, f))``."""
    sphere = {"n_probes": 1, "probe": "sphere", "examples": "independent", "return_output": True}

    def jr(n_proj, probes_from=None):
        def run(x, y, rng):
            x = x.detach().requires_grad_(True)
            f = model(x)
            probes = None
            if probes_from is not None:
                from gcref.models import draw_probes

                probes = torch.as_tensor(
                    draw_probes(rng, "sphere", (x.shape[0], 1, f.shape[1])),
                    dtype=f.dtype,
                    device=f.device,
                )
            return jacobian_regulariser(torch, x, f, n_proj, probes), f

        return run

    table = {
        "plain": ("baseline", lambda x, y, rng: (None, model(x))),
        "DE exact": (
            "gcref",
            lambda x, y, rng: penalties.dirichlet_energy(
                model, x, examples="independent", return_output=True
            ),
        ),
        "DE exact: Jacobian regulariser": ("alternative", jr(-1)),
        "DE 1-probe": (
            "gcref",
            lambda x, y, rng: penalties.estimate_dirichlet_energy(model, x, rng, **sphere),
        ),
        "DE 1-probe: Jacobian regulariser": ("alternative", jr(1)),
        "IGR full batch": (
            "gcref",
            lambda x, y, rng: penalties.igr_full_batch(
                model, x, y, "softmax_cross_entropy", return_output=True
            ),
        ),
        "IGR full batch: double backward": (
            "alternative",
            lambda x, y, rng: igr_double_backward(torch, model, x, y),
        ),
        "IGR per example": (
            "gcref",
            lambda x, y, rng: penalties.igr_per_example(
                model, x, y, "softmax_cross_entropy", return_output=True
            ),
        ),
        "IGR per example: batched backward": (
            "alternative",
            lambda x, y, rng: igr_batched_per_example(torch, model, x, y),
        ),
    }
    if has_batchnorm:
        table["GC exact, batch statistics"] = (
            "gcref",
            lambda x, y, rng: penalties.geometric_complexity(model, x, return_output=True),
        )
    # For the value check the one-probe regulariser takes gcref's probes.
    checks = {"DE 1-probe: Jacobian regulariser": jr(1, probes_from="gcref")}
    return table, checks


def step(torch, model, optimizer, fn, x, y, rng):
    optimizer.zero_grad(set_to_none=True)
    penalty, f = fn(x, y, rng)
    loss = torch.nn.functional.cross_entropy(f, y)
    if penalty is not None:
        loss = loss + LAM * penalty
    loss.backward()
    optimizer.step()


def value_checks(torch, table, checks, x, y, dtype, seed):
    """Relative difference of each alternative's penalty from gcref's on the same batch."""
    diffs = {}
    for name, (kind, fn) in table.items():
        if kind != "alternative":
            continue
        ours = table[name.split(":")[0]][1]
        theirs = checks.get(name, fn)
        a = float(ours(x, y, np.random.default_rng(seed))[0].detach())
        b = float(theirs(x, y, np.random.default_rng(seed))[0].detach())
        diffs[name] = abs(a - b) / max(abs(a), 1e-300)
    return diffs


def sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def benchmark_model(torch, penalties, label, model, setting, device, dtype, seed):
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    shape = (setting["batch"], 3, setting["image_size"], setting["image_size"])
    x = torch.randn(shape, generator=gen, dtype=dtype).to(device)
    y = torch.randint(0, K, (setting["batch"],), generator=gen).to(device)
    model = model.to(device=device, dtype=dtype).train()
    has_batchnorm = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    table, checks = methods(torch, penalties, model, has_batchnorm)
    diffs = value_checks(torch, table, checks, x, y, dtype, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    names = list(table)
    for name in names:
        for _ in range(2):
            step(torch, model, optimizer, table[name][1], x, y, rng)
    times = {name: [] for name in names}
    order = np.random.default_rng(seed + 1)
    for _ in range(setting["repeats"]):
        for name in order.permutation(names):
            sync(torch, device)
            start = time.perf_counter()
            step(torch, model, optimizer, table[name][1], x, y, rng)
            sync(torch, device)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    report(label, table, medians, diffs, str(dtype).replace("torch.", ""))


def report(label, table, medians, diffs, dtype):
    plain = medians["plain"]
    tol = AGREEMENT_RTOL[dtype]
    print(f"\n{label}: plain step {plain * 1e3:.1f} ms (median)")
    print(f"{'step':<36}{'ms':>10}{'/ plain':>10}{'alt / gcref':>13}{'rel diff':>11}")
    verdicts = []
    for name, (kind, _) in table.items():
        t = medians[name]
        row = f"{name:<36}{t * 1e3:>10.1f}{t / plain:>10.2f}"
        if kind == "alternative":
            ours = medians[name.split(":")[0]]
            if diffs[name] > tol:
                row += f"{'DISAGREES':>13}{diffs[name]:>11.1e}"
                verdicts.append(f"{name}: values disagree")
            else:
                row += f"{t / ours:>13.2f}{diffs[name]:>11.1e}"
                verdicts.append(
                    f"{name.split(':')[0]} at least as fast as the alternative: "
                    f"{'yes' if ours <= t else 'no'} ({t / ours:.2f})"
                )
        print(row)
    probe = medians["DE 1-probe"] / plain
    print(
        f"goal: 1-probe step <= {PROBE_GOAL:g}x plain: {'yes' if probe <= PROBE_GOAL else 'no'} ({probe:.2f})"
    )
    for v in verdicts:
        print("goal:", v)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that it runs")
    parser.add_argument(
        "--full", action="store_true", help="the GPU setting (batch 128, 32x32, width 64)"
    )
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(AGREEMENT_RTOL))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from gcref import penalties
    from gcref.nets.torch import SmallCNN, resnet18

    setting = dict(FULL_SETTING if args.full else QUICK_SETTING if args.quick else CPU_SETTING)
    if args.repeats is not None:
        setting["repeats"] = args.repeats
    threads = args.threads if args.threads is not None else setting["threads"]
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    print(
        f"gcref penalties benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, device {device}, "
        f"{args.dtype}, threads {torch.get_num_threads()}, setting {setting}, lam {LAM}"
    )
    torch.manual_seed(args.seed)
    models = {
        f"ResNet-18 (width {setting['resnet_width']})": resnet18(
            num_classes=K, width=setting["resnet_width"]
        ),
        f"SmallCNN (width {setting['cnn_width']})": SmallCNN(
            in_channels=3, num_classes=K, width=setting["cnn_width"]
        ),
    }
    for label, model in models.items():
        benchmark_model(torch, penalties, label, model, setting, device, dtype, args.seed)


if __name__ == "__main__":
    main()
