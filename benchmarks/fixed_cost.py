"""gcref's fixed cost per measure call on a torch module, against the bare torch work.

On a tiny MLP (20-32-32-10, 8 examples) the computation itself takes tens of microseconds,
so the time of a gcref call minus the time of the same computation written directly in
torch is what gcref adds per call: wrapping the module, the session (eval switch, placement,
theta), the checks, drawing the probes and returning NumPy. Each pair is timed back to back
(gcref, then the bare equivalent, in alternating order) so that the machine's drift cancels;
the script prints the medians over pairs and the median paired difference, after checking
that both give the same numbers (float32 rounding).

    python benchmarks/fixed_cost.py [--pairs 30] [--calls 200]

Run it with ``PYTHONPATH`` set to another checkout to compare two versions of gcref.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def methods():
    import torch

    from gcref import models

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
        torch.nn.Linear(32, 10),
    )
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 20)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    params = [p for p in net.parameters()]
    vector = rng.standard_normal(sum(p.numel() for p in params))
    v_pieces = torch.from_numpy(vector.astype(np.float32)).split([p.numel() for p in params])
    v_pieces = [v.view_as(p) for v, p in zip(v_pieces, params)]

    def gcref_probe():
        return models.estimate_geometric_complexity(
            net, X, np.random.default_rng(0), n_probes=1).value

    def bare_probe():
        x = Xt.clone().requires_grad_(True)
        out = net(x)
        u = torch.from_numpy(np.random.default_rng(0).standard_normal(out.shape)).float()
        (g,) = torch.autograd.grad(out, x, u)
        return float(g.square().sum()) / len(x)

    def gcref_hvp():
        return models.loss_hvp(net, (X, y), "softmax_cross_entropy", vector)

    def bare_hvp():
        loss = torch.nn.functional.cross_entropy(net(Xt), yt)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, v_pieces))
        hv = torch.autograd.grad(dot, params)
        return torch.cat([h.reshape(-1) for h in hv]).double().numpy()

    def gcref_norms():
        return models.loss_grad_sq_norms(net, (X, y), "softmax_cross_entropy")

    def bare_norms():
        from torch.func import functional_call, grad, vmap

        named = {n: p.detach() for n, p in net.named_parameters()}

        def loss_one(p, x, t):
            out = functional_call(net, p, (x[None],))
            return torch.nn.functional.cross_entropy(out, t[None])

        g = vmap(grad(loss_one), in_dims=(None, 0, 0))(named, Xt, yt)
        return sum(v.reshape(len(Xt), -1).square().sum(1) for v in g.values()).double().numpy()

    return {"1-probe GC": (gcref_probe, bare_probe), "HVP": (gcref_hvp, bare_hvp),
            "grad norms": (gcref_norms, bare_norms)}


def per_call_us(fn, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)
    import gcref

    print(f"gcref from {os.path.dirname(gcref.__file__)}; {args.pairs} pairs of "
          f"{args.calls} calls; microseconds per call")
    print(f"{'measure':<12} {'gcref':>8} {'bare':>8} {'gcref - bare (quartiles)':>28}")
    for name, (ours, bare) in methods().items():
        for fn in (ours, bare):  # warm up (lazy imports, the first call's caches)
            per_call_us(fn, 20)
        a, b = np.asarray(ours(), dtype=float), np.asarray(bare(), dtype=float)
        if not np.allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(b).max()):
            raise SystemExit(f"{name}: gcref and the bare computation disagree")
        times = {"gcref": [], "bare": [], "diff": []}
        for i in range(args.pairs):
            order = (ours, bare) if i % 2 == 0 else (bare, ours)
            t = {fn: per_call_us(fn, args.calls) for fn in order}
            times["gcref"].append(t[ours])
            times["bare"].append(t[bare])
            times["diff"].append(t[ours] - t[bare])
        q1, med, q3 = np.percentile(times["diff"], [25, 50, 75])
        print(f"{name:<12} {np.median(times['gcref']):8.0f} {np.median(times['bare']):8.0f} "
              f"{med:12.0f} ({q1:.0f} to {q3:.0f})")


if __name__ == "__main__":
    main()
