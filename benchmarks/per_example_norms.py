"""Per-example squared parameter-gradient norms: analytic NumPy against autodiff.

The quantity is ``||grad_theta l(f(x_n), y_n)||^2`` for every example n, with the squared
loss ``l = 1/2 ||f - y||^2`` (MATH.md sections 1 and 4), on an MLP with three hidden
layers of 256 tanh units, in float32 and float64. Three ways:

- ``analytic``: ``gcref.loss_grad_sq_norms(..., backend="numpy").total``, which uses
  ``||grad_{W_i} l_n||^2 = ||g_i||^2 ||h_i||^2`` and never forms a per-example gradient;
- ``autograd loop``: HIPS autograd's ``grad`` of one example's loss, then its squared
  norm, in a Python loop over the N examples;
- ``torch.func``: ``vmap(grad(loss))`` over the batch on the CPU, then the squared norms.

Each is run once to warm up, then timed ``--repeats`` times (``--loop-repeats`` for the
slow loop); the best time is reported with its ratio to the analytic path, and the three
results are checked against each other. This is a measurement, not a test::

    .venv/bin/python benchmarks/per_example_norms.py [--n 1024] [--repeats 5]
    .venv/bin/python benchmarks/per_example_norms.py --quick    # 64 examples, one run each
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import time

import numpy as np

import gcref

WIDTH = 256
HIDDEN_LAYERS = 3
GOAL_VS_LOOP = 20.0
GOAL_VS_TORCH_FUNC = 0.5


def make_problem(n, d, k, dtype, seed):
    """An MLP ``(d, 256, 256, 256, k)`` with tanh units, inputs and regression targets."""
    mlp = gcref.MLP((d,) + (WIDTH,) * HIDDEN_LAYERS + (k,), activation="tanh")
    rng = np.random.default_rng(seed)
    params = mlp.init(rng, scheme="lecun_normal", bias="normal", dtype=dtype)
    X = rng.normal(size=(n, d)).astype(dtype)
    y = rng.normal(size=(n, k)).astype(dtype)
    return mlp, params, X, y


def analytic(mlp, params, X, y):
    return gcref.loss_grad_sq_norms(mlp, params, X, y, "squared", backend="numpy").total


def autograd_loop(params, X, y):
    """One ``autograd.grad`` per example; the obviously-correct slow reference."""
    import autograd.numpy as anp
    from autograd import grad

    def loss(theta, x, t):
        h = x
        for i, (W, b) in enumerate(theta):
            z = anp.dot(W, h) + b
            h = z if i == len(theta) - 1 else anp.tanh(z)
        r = h - t
        return 0.5 * anp.sum(r * r)

    loss_grad = grad(loss)
    out = np.empty(X.shape[0], dtype=X.dtype)
    for n in range(X.shape[0]):
        g = loss_grad(params, X[n], y[n])
        out[n] = sum(np.sum(gW * gW) + np.sum(gb * gb) for gW, gb in g)
    return out


def torch_func_setup(params, X, y):
    """Tensors and the ``vmap(grad(loss))`` function, made once outside the timing."""
    import torch
    from torch.func import grad, vmap

    theta = [(torch.from_numpy(W), torch.from_numpy(b)) for W, b in params]

    def loss(theta, x, t):
        h = x
        for i, (W, b) in enumerate(theta):
            z = W @ h + b
            h = z if i == len(theta) - 1 else torch.tanh(z)
        r = h - t
        return 0.5 * torch.sum(r * r)

    per_example_grads = vmap(grad(loss), in_dims=(None, 0, 0))
    tX, ty = torch.from_numpy(X), torch.from_numpy(y)

    def run():
        with torch.no_grad():
            g = per_example_grads(theta, tX, ty)
            total = sum((gW * gW).sum(dim=(1, 2)) + (gb * gb).sum(dim=1) for gW, gb in g)
        return total.numpy()

    return run


def best_time(fn, repeats):
    """Warm up once, then the best of ``repeats`` wall times; also the last result."""
    result = fn()
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def max_rel_diff(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def run(dtype, args):
    mlp, params, X, y = make_problem(args.n, args.d, args.k, dtype, args.seed)
    t_an, r_an = best_time(lambda: analytic(mlp, params, X, y), args.repeats)
    t_loop, r_loop = best_time(lambda: autograd_loop(params, X, y), args.loop_repeats)
    t_tf, r_tf = best_time(torch_func_setup(params, X, y), args.repeats)
    name = np.dtype(dtype).name
    rows = [
        ("analytic (numpy)", t_an, r_an),
        ("autograd loop", t_loop, r_loop),
        ("torch.func vmap(grad)", t_tf, r_tf),
    ]
    print(f"\n{name}: MLP {mlp.sizes}, {mlp.n_params} parameters, N = {args.n}")
    print(f"  {'method':<24}{'best s':>10}{'x analytic':>12}{'max rel diff vs loop':>24}")
    for label, t, r in rows:
        print(f"  {label:<24}{t:>10.4f}{t / t_an:>12.2f}{max_rel_diff(r, r_loop):>24.2e}")
    speedup_loop, speedup_tf = t_loop / t_an, t_tf / t_an
    print(
        f"  goals: loop/analytic = {speedup_loop:.1f} (>= {GOAL_VS_LOOP:g}: "
        f"{'met' if speedup_loop >= GOAL_VS_LOOP else 'MISSED'}); "
        f"torch.func/analytic = {speedup_tf:.2f} (>= {GOAL_VS_TORCH_FUNC:g}: "
        f"{'met' if speedup_tf >= GOAL_VS_TORCH_FUNC else 'MISSED'})"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: N = 64 and one timed run of each path, unless given")
    parser.add_argument("--n", type=int, default=None, help="examples N (default: 1024)")
    parser.add_argument("--d", type=int, default=32, help="inputs d (default: 32)")
    parser.add_argument("--k", type=int, default=10, help="outputs k (default: 10)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs of the fast paths (7)")
    parser.add_argument("--loop-repeats", type=int, default=None, help="timed runs of the loop (3)")
    parser.add_argument("--dtypes", default="float32,float64", help="comma-separated dtypes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    defaults = {"n": 64, "repeats": 1, "loop_repeats": 1} if args.quick else {
        "n": 1024, "repeats": 7, "loop_repeats": 3}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    import torch

    print(
        f"per-example ||grad_theta l_n||^2 (squared loss); python {platform.python_version()}, "
        f"numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"autograd {importlib.metadata.version('autograd')}"
    )
    for dtype in args.dtypes.split(","):
        run(np.dtype(dtype.strip()), args)


if __name__ == "__main__":
    main()
