"""The JAX adapter against plain JAX and against the torch adapter, on the same networks.

Issue 17, item 2. Three networks, each built once in PyTorch and copied weight for weight
into a JAX ``apply(params, x)`` (NCHW images, OIHW kernels, so no weight is transposed):

- ``mlp``: a tanh MLP on the flattened images (``gcref.MLP``, hidden width ``32 *
  width``; ``gcref.nets.jax.mlp_apply_from_gcref`` and ``gcref.nets.torch.mlp_module``);
- ``small_cnn``: ``gcref.nets.torch.SmallCNN`` and its JAX transcription here;
- ``resnet``: a ResNet-style network written here in both frameworks: a 3x3 stem, three
  residual blocks of two 3x3 convolutions (the last two of stride 2, with 1x1 projection
  shortcuts), global average pooling and a linear layer; no BatchNorm (a measured
  network computes each example alone).

Synthetic data: Gaussian 3 x S x S images and uniform labels from a fixed
``numpy.random.Generator``; float32; softmax cross-entropy. The measures of
:mod:`gcref.models` on the :class:`~gcref.backends.jax_model.JaxModel` (``gcref``):

- ``grad norms``: ``loss_grad_sq_norms`` (the norm identities of
  :mod:`gcref.backends.jax_layers`; the row ``gcref vmap`` is the same with
  ``norm_method="vmap"``);
- ``IGR terms``: ``igr_terms`` with mini-batches of one chunk (its fused primitive: loss
  sum, summed gradient and per-example norms from one backward pass);
- ``exact GC``: ``geometric_complexity`` (k input-only VJPs sharing a forward pass);
- ``1-probe GC``: ``estimate_geometric_complexity(..., n_probes=1)``;
- ``HVP``: ``loss_hvp`` with a Gaussian vector.

With ``--at-once``, the row ``gcref at once`` times exact GC, the 1-probe estimate and the
HVP with each chunk completed before the next is prepared (``asynchronous = False``):
against ``gcref``, what beginning the next chunk of a batch before waiting for one gains.

Alternatives, each written in plain JAX and ``jax.jit``-compiled once per chunk shape, or
the torch adapter (``gcref.models`` on the torch module, one thread):

- ``jit(vmap(grad))``: per-example gradients and their norms (grad norms; IGR terms also
  sum them and the mini-batch gradients);
- ``jit(vmap(jacrev))``: per-example input Jacobians (exact GC);
- ``k jitted VJPs``: one ``jax.vjp`` and k one-hot cotangents, one after another
  (``lax.map``), in one jitted function (exact GC); one VJP with the probes as
  cotangents (1-probe GC);
- ``jit(jvp(grad))``: forward over reverse (HVP).

Every alternative's value is compared with gcref's before its time is printed (relative
difference; above ``--check-rtol`` the time is replaced by ``DISAGREES``): per-example
arrays and scalars directly, and for the HVP, which the two frameworks order
differently, ``v^T H v`` and ``||H v||`` with ``v`` the parameter vector itself.

Timing: each method runs once to compile and warm up; then ``--repeats`` rounds, each
timing every method once in a shuffled order; the median time is printed with the median
[quartiles] over the rounds of the ratio ``alternative / gcref`` taken within each round
(above 1, gcref is faster), which cancels the drift of a shared CPU's speed between
rounds, and an interval that covers that median with probability 0.95
(``benchmarks/paired.py``; 6 rounds at least). The last lines judge gcref against the
plain-JAX alternatives: slower only where the interval lies below 1; a median below 1
whose interval contains 1 is named as not resolved. Compare ratios of one run, not times
across runs. Compilation dominates short
runs: XLA took 10 to 30 s per function for the ResNet-style network on the shared CPU
here, so ``--quick`` measures the MLP only.

    .venv/bin/python benchmarks/jax_measures.py --quick      # under a minute: a smoke run
    .venv/bin/python benchmarks/jax_measures.py              # CPU-sized
"""

from __future__ import annotations

import argparse
import platform
import random
import time

import numpy as np
from paired import enough, judged, median_interval

LOSS = "softmax_cross_entropy"
K = 10
MEASURES = ("grad norms", "IGR terms", "exact GC", "1-probe GC", "HVP")
#: The plain-JAX alternatives gcref is judged against (the other rows: gcref with
#: norm_method="vmap" and the torch adapter).
PLAIN = ("jit(vmap(grad))", "jit(vmap(jacrev))", "k jitted VJPs", "jitted VJP", "jit(jvp(grad))")
NETS = ("mlp", "small_cnn", "resnet")


# -- networks, in both frameworks ----------------------------------------------------------


def torch_resnet(torch, width, in_channels=3, num_classes=K):
    """The ResNet-style module: stem, three residual blocks, pooling, linear; no BatchNorm."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=1)
            self.shortcut = (
                nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None
            )

        def forward(self, x):
            out = self.conv2(torch.relu(self.conv1(x)))
            return torch.relu(out + (x if self.shortcut is None else self.shortcut(x)))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
            self.blocks = nn.Sequential(
                Block(width, width, 1), Block(width, 2 * width, 2), Block(2 * width, 4 * width, 2)
            )
            self.linear = nn.Linear(4 * width, num_classes)

        def forward(self, x):
            h = self.blocks(torch.relu(self.stem(x)))
            return self.linear(h.mean(dim=(2, 3)))

    return ResNet()


def _conv(jax, h, layer, stride, pad):
    out = jax.lax.conv_general_dilated(
        h, layer["weight"], (stride, stride), [(pad, pad)] * 2,
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )
    return out + layer["bias"][None, :, None, None]


def jax_small_cnn(p, x):
    """``gcref.nets.torch.SmallCNN`` in JAX, on its ``state_dict`` nested by module."""
    import jax

    h = x
    for name, stride, pad in (("0", 1, 1), ("2", 2, 1), ("4", 1, 0)):
        h = jax.nn.relu(_conv(jax, h, p["features"][name], stride, pad))
    return h.mean(axis=(2, 3)) @ p["linear"]["weight"].T + p["linear"]["bias"]


def jax_resnet(p, x):
    """:func:`torch_resnet` in JAX, on its ``state_dict`` nested by module."""
    import jax

    h = jax.nn.relu(_conv(jax, x, p["stem"], 1, 1))
    for name, stride in (("0", 1), ("1", 2), ("2", 2)):
        block = p["blocks"][name]
        out = jax.nn.relu(_conv(jax, h, block["conv1"], stride, 1))
        out = _conv(jax, out, block["conv2"], 1, 1)
        short = h if "shortcut" not in block else _conv(jax, h, block["shortcut"], stride, 0)
        h = jax.nn.relu(out + short)
    return h.mean(axis=(2, 3)) @ p["linear"]["weight"].T + p["linear"]["bias"]


def nested_state(module):
    """A module's parameters as a nested dict of float32 NumPy arrays (``a.b.c`` -> [a][b][c])."""
    tree = {}
    for name, value in module.named_parameters():
        *path, leaf = name.split(".")
        node = tree
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = value.detach().cpu().numpy().astype(np.float32)
    return tree


def build(name, torch, size, width, rng):
    """``(jax apply, jax params, torch module, input shape)`` of network ``name``, equal weights."""
    import gcref
    from gcref.nets import torch as tnets
    from gcref.nets.jax import mlp_apply_from_gcref

    torch.manual_seed(int(rng.integers(2**31)))
    if name == "mlp":
        d = 3 * size * size
        net = gcref.MLP((d, 32 * width, 32 * width, K), activation="tanh")
        params = net.init(rng)
        apply, tree = mlp_apply_from_gcref(net, params)
        tree = tuple((W.astype(np.float32), b.astype(np.float32)) for W, b in tree)
        return apply, tree, tnets.mlp_module(net, params, dtype=torch.float32), (d,)
    module = (
        tnets.SmallCNN(3, K, width) if name == "small_cnn" else torch_resnet(torch, width)
    ).float()
    # Non-zero biases everywhere, so that every bias gradient is exercised.
    with torch.no_grad():
        for pname, value in module.named_parameters():
            if pname.endswith("bias"):
                value.copy_(torch.as_tensor(rng.normal(scale=0.1, size=tuple(value.shape))))
    apply = jax_small_cnn if name == "small_cnn" else jax_resnet
    return apply, nested_state(module), module.eval(), (3, size, size)


# -- plain JAX alternatives -------------------------------------------------------------------


def plain_jax(apply, params, chunk_iter):
    """Jitted plain-JAX alternatives; each takes the data and returns NumPy results.

    The parameters are placed on the device once, as a JAX user holds them (the adapter
    places its own once too); left as NumPy arrays, every call would copy them again.
    """
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    params = jax.device_put(params)

    def ce(f, label):
        return jax.nn.logsumexp(f) - f[label]

    def loss_one(p, x, label):
        return ce(apply(p, x[None])[0], label)

    def leaf_sq(tree):
        return sum(jnp.sum(jnp.square(a)) for a in jax.tree_util.tree_leaves(tree))

    @jax.jit
    def vmap_grad_norms(p, X, y):
        return jax.vmap(lambda x, t: leaf_sq(jax.grad(loss_one)(p, x, t)))(X, y)

    @jax.jit
    def vmap_grad_igr(p, X, y):
        values, grads = jax.vmap(lambda x, t: jax.value_and_grad(loss_one)(p, x, t))(X, y)
        summed = ravel_pytree(jax.tree_util.tree_map(lambda g: g.sum(0), grads))[0]
        return values.sum(), summed, jax.vmap(leaf_sq)(grads).sum()

    @jax.jit
    def vmap_jacrev(p, X):
        jac = jax.vmap(jax.jacrev(lambda x: apply(p, x[None])[0]))(X)
        return jnp.sum(jnp.square(jac).reshape(X.shape[0], -1), axis=1)

    @jax.jit
    def k_vjps(p, X):
        # One forward pass, then the k one-hot VJPs one after another (lax.map: a loop,
        # not k unrolled copies, which took a minute to compile for the ResNet here).
        out, vjp = jax.vjp(lambda x: apply(p, x), X)

        def row_norms(c):
            (g,) = vjp(jnp.zeros_like(out).at[:, c].set(1.0))
            return jnp.sum(jnp.square(g).reshape(X.shape[0], -1), axis=1)

        return jnp.sum(jax.lax.map(row_norms, jnp.arange(out.shape[1])), axis=0)

    @jax.jit
    def probe_vjp(p, X, v):
        _, vjp = jax.vjp(lambda x: apply(p, x), X)
        (g,) = vjp(v)
        return jnp.sum(jnp.square(g).reshape(X.shape[0], -1), axis=1)

    @jax.jit
    def jvp_grad(p, X, y, tangent):
        def total(q):
            return jnp.sum(jax.vmap(lambda x, t: loss_one(q, x, t))(X, y))

        return ravel_pytree(jax.jvp(jax.grad(total), (p,), (tangent,))[1])[0]

    def rows(fn, *extra):
        return lambda: np.concatenate(
            [np.asarray(fn(params, X, *args, *extra)) for X, *args in chunk_iter()]
        )

    def igr():
        n, loss_sum, per, full, mini = 0, 0.0, 0.0, 0.0, []
        for X, y in chunk_iter():
            value, g, sq = vmap_grad_igr(params, X, y)
            g = np.asarray(g, dtype=np.float64)
            loss_sum, per, full = loss_sum + float(value), per + float(sq), full + g
            mini.append(float(g @ g) / X.shape[0] ** 2)
            n += X.shape[0]
        return np.array([loss_sum / n, float(full @ full) / n**2, np.mean(mini), per / n])

    def hvp(tangent, count):
        tangent = jax.device_put(tangent)  # once, like the parameters

        def run():
            total = sum(
                np.asarray(jvp_grad(params, X, y, tangent), dtype=np.float64)
                for X, y in chunk_iter()
            )
            return total / count

        return run

    return {
        "grad norms": rows(vmap_grad_norms),
        "IGR terms": igr,
        "jacrev": rows(lambda p, X, y: vmap_jacrev(p, X)),
        "k VJPs": rows(lambda p, X, y: k_vjps(p, X)),
        "probe": lambda probes: np.concatenate(
            [np.asarray(probe_vjp(params, X, v)) for (X, _), v in zip(chunk_iter(), probes)]
        ),
        "hvp": hvp,
    }


# -- timing ---------------------------------------------------------------------------------


def rel_diff(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def hvp_invariants(hv, v):
    return np.array([hv @ v, np.linalg.norm(hv)])


def time_methods(methods, repeats, rng):
    """``{name: [seconds per round]}``: each method once to warm up, then shuffled rounds.

    A round times every method of one measure, one after the other: the ratio to gcref
    is taken within each round and its median reported, which cancels the drift of a
    shared CPU's speed from round to round.
    """
    for fn in methods.values():
        fn()
    times = {name: [] for name in methods}
    order = list(methods)
    for _ in range(repeats):
        random.Random(int(rng.integers(2**31))).shuffle(order)
        for name in order:
            start = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _at_once_class(JaxModel):
    """JaxModel completing each chunk before the next is prepared (``--at-once``)."""

    class AtOnce(JaxModel):
        asynchronous = False

    return AtOnce


def run_net(name, args, torch, rng):
    """Time every measure of network ``name``; returns the plain-JAX rows gcref is not ahead of.

    Each returned entry is ``(text, verdict)``, ``verdict`` "slower" (the interval for the
    median ratio lies below 1) or "level" (median below 1, interval containing 1).
    """

    import gcref.models as gm
    from gcref.backends.jax_model import JaxModel

    apply, params, module, shape = build(name, torch, args.size, args.width, rng)
    X = rng.normal(size=(args.n, *shape)).astype(np.float32)
    y = rng.integers(0, K, size=args.n)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    c = args.chunk

    def chunk_iter():
        return ((X[s : s + c], y[s : s + c]) for s in range(0, args.n, c))

    model = JaxModel(apply, params)
    vmap_model = JaxModel(apply, params, norm_method="vmap")
    at_once = _at_once_class(JaxModel)(apply, params)
    plain = plain_jax(apply, params, chunk_iter)
    kw = {"chunk_size": c}
    seed = int(rng.integers(2**31))

    def probes():
        # Drawn inside the timed call, as gcref draws its own (the same values).
        v = np.random.default_rng(seed).standard_normal((args.n, 1, K))[:, 0].astype(np.float32)
        return [v[s : s + c] for s in range(0, args.n, c)]
    theta = gm.parameter_vector(model)
    theta_t = gm.parameter_vector(module)
    tangent = params  # v = theta, in the pytree's own layout

    def igr_values(m, data):
        t = gm.igr_terms(m, data, LOSS, batch_size=c, **kw)
        return np.array([t.loss, t.full_batch, t.mini_batch, t.per_example])

    rows = {
        "grad norms": {
            "gcref": lambda: np.asarray(gm.loss_grad_sq_norms(model, (X, y), LOSS, **kw)),
            "gcref vmap": lambda: np.asarray(gm.loss_grad_sq_norms(vmap_model, (X, y), LOSS, **kw)),
            "jit(vmap(grad))": plain["grad norms"],
            "torch adapter": lambda: np.asarray(
                gm.loss_grad_sq_norms(module, (Xt, yt), LOSS, **kw)
            ),
        },
        "IGR terms": {
            "gcref": lambda: igr_values(model, (X, y)),
            "gcref vmap": lambda: igr_values(vmap_model, (X, y)),
            "jit(vmap(grad))": plain["IGR terms"],
            "torch adapter": lambda: igr_values(module, (Xt, yt)),
        },
        "exact GC": {
            "gcref": lambda: gm.geometric_complexity(model, X, per_example=True, **kw).per_example,
            "jit(vmap(jacrev))": plain["jacrev"],
            "k jitted VJPs": plain["k VJPs"],
            "torch adapter": lambda: gm.geometric_complexity(
                module, Xt, per_example=True, **kw
            ).per_example,
        },
        "1-probe GC": {
            "gcref": lambda: np.array([gm.estimate_geometric_complexity(
                model, X, np.random.default_rng(seed), n_probes=1, **kw
            ).value]),
            "jitted VJP": lambda: np.array([plain["probe"](probes()).mean()]),
            "torch adapter": lambda: np.array([gm.estimate_geometric_complexity(
                module, Xt, np.random.default_rng(seed), n_probes=1, **kw
            ).value]),
        },
        "HVP": {
            "gcref": lambda: hvp_invariants(gm.loss_hvp(model, (X, y), LOSS, theta, **kw), theta),
            "jit(jvp(grad))": lambda: hvp_invariants(plain["hvp"](tangent, args.n)(), theta),
            "torch adapter": lambda: hvp_invariants(
                gm.loss_hvp(module, (Xt, yt), LOSS, theta_t, **kw), theta_t
            ),
        },
    }
    if args.at_once:
        rows["exact GC"]["gcref at once"] = lambda: gm.geometric_complexity(
            at_once, X, per_example=True, **kw
        ).per_example
        rows["1-probe GC"]["gcref at once"] = lambda: np.array([gm.estimate_geometric_complexity(
            at_once, X, np.random.default_rng(seed), n_probes=1, **kw
        ).value])
        rows["HVP"]["gcref at once"] = lambda: hvp_invariants(
            gm.loss_hvp(at_once, (X, y), LOSS, theta, **kw), theta
        )
    behind = []
    for measure in args.measures:
        methods = rows[measure]
        reference = methods["gcref"]()
        diffs = {m: rel_diff(fn(), reference) for m, fn in methods.items() if m != "gcref"}
        times = time_methods(methods, args.repeats, rng)
        base = np.asarray(times["gcref"])
        print(f"{name:10s} {measure:11s} {'gcref':18s} {np.median(base) * 1e3:10.1f} ms")
        for method, seconds in times.items():
            if method == "gcref":
                continue
            ratios = np.asarray(seconds) / base
            q1, median, q3 = np.percentile(ratios, [25, 50, 75])
            low, high = median_interval(ratios)
            ok = diffs[method] <= args.check_rtol
            shown = (
                f"{np.median(seconds) * 1e3:10.1f} ms  x{median:5.2f} [{q1:.2f},{q3:.2f}] "
                f"{'95%' if enough(len(ratios)) else 'range'} {low:.3f}-{high:.3f}"
                if ok else "DISAGREES"
            )
            print(f"{'':10s} {'':11s} {method:18s} {shown}   rel diff {diffs[method]:.1e}")
            verdict = judged(ratios)
            if ok and method in PLAIN and (verdict == "slower" or median < 1):
                behind.append((f"{name} {measure} vs {method} ({median:.2f})", verdict))
    return behind


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1024, help="examples")
    parser.add_argument("--chunk", type=int, default=128, help="chunk size")
    parser.add_argument("--size", type=int, default=16, help="image side S")
    parser.add_argument("--width", type=int, default=8, help="channels of the first layer")
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed rounds (at least 6 for the 95%% interval; default 7)")
    parser.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    parser.add_argument("--measures", nargs="+", choices=MEASURES, default=list(MEASURES))
    parser.add_argument("--check-rtol", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--at-once", action="store_true",
        help="also time gcref completing each chunk before preparing the next (exact GC, "
             "1-probe GC, HVP): what beginning one chunk ahead gains",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="a smoke run: the MLP only, one chunk of 32 8x8 images, width 4, one round",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.chunk, args.size, args.width, args.repeats = 32, 32, 8, 4, 1
        args.nets = ["mlp"]
    import jax
    import torch

    torch.set_num_threads(1)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}, "
        f"python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        f"N = {args.n}, chunk {args.chunk}, 3x{args.size}x{args.size} images, width "
        f"{args.width}, float32, {args.repeats} rounds; ratio = alternative / gcref"
    )
    rng = np.random.default_rng(args.seed)
    behind = [entry for name in args.nets for entry in run_net(name, args, torch, rng)]
    slower = [text for text, verdict in behind if verdict == "slower"]
    level = [text for text, verdict in behind if verdict != "slower"]
    print("95%: an interval that covers the median ratio over the rounds with probability 0.95 "
          "(benchmarks/paired.py); with fewer than 6 rounds the range of the ratios, and no "
          "verdict of faster or slower")
    print("JAX adapter at least as fast as every plain-JAX alternative, within this run's "
          "resolution: " + ("PASS" if not slower else "MISS, slower than " + "; ".join(slower)))
    if level:
        print("median below 1 but its interval contains 1 (not resolved by this run): "
              + "; ".join(level))


if __name__ == "__main__":
    main()
