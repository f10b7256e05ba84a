"""Exact GC, 1-probe GC and per-example loss-gradient norms of users' models, in epochs.

Issue 7, item 6. For a CIFAR ResNet-18 and a small CNN (``gcref.nets.torch``, 10 classes)
on synthetic 3 x S x S images with random labels, three measures of :mod:`gcref.models`:

- ``exact GC``: ``geometric_complexity`` (k = 10 input-only vector-Jacobian products per
  example, one forward pass shared);
- ``1-probe GC``: ``estimate_geometric_complexity`` with ``n_probes=1`` (Gaussian probes);
- ``grad norms``: ``loss_grad_sq_norms`` with ``"softmax_cross_entropy"``, the per-example
  ``||grad_theta l_n||^2``;
- ``HVP``: ``loss_hvp``, the Hessian of the mean cross-entropy times a Gaussian vector.

A third model, ``mlp``, is a tanh MLP on the flattened images (hidden width ``32 *
width``), the case where every peer applies.

Each is timed and divided by the time of one plain training epoch measured in the same
run: the model in training mode, forward pass, mean cross-entropy and backward pass with
weight gradients over the same data and batch size, gradients reset between batches,
**no optimizer step** (the cheapest honest epoch, so the ratios are if anything
pessimistic); it runs on a copy of the model, so the measured model's BatchNorm
statistics stay as they are. The goals of issue 7 are printed next to each ratio.

The same measures are then computed by the usual alternatives, each checked against
gcref's result (relative difference printed; a check that fails says so instead of
reporting a speed):

- ``per-example loop``: a Python loop over examples with ``torch.autograd.grad`` (k
  backward passes, one, or one with weight gradients); timed on the first ``--loop-n``
  examples and extrapolated linearly to N (marked ``*``);
- ``torch.func``: ``vmap(jacrev)`` for J, ``vmap(grad)`` of the probe's ``v . f`` for the
  probe estimate and ``vmap(grad)`` of the loss for per-example gradients, on
  ``functional_call`` in eval mode; timed on the first ``--alt-n`` examples
  (extrapolated, and marked ``*``, when fewer than N);
- ``batched backward``: k one-hot backward passes over each chunk with respect to the
  input only, or one backward pass vmapped over the k one-hot cotangents
  (``is_grads_batched``) (exact GC); one backward pass with the probes as cotangent
  (1-probe GC); a double backward over each chunk (HVP), and ``torch.func``'s
  forward-over-reverse ``jvp(grad)``;
- the **peers**, where installed (the ``bench`` extra; each missing peer is skipped with a
  line that says so): BackPACK's ``BatchL2Grad`` (its squared norms are those of the
  gradients of the *mean* loss's terms ``l_n / B``, so they are multiplied by ``B^2``),
  Opacus's per-example gradients (``GradSampleModule``) and ghost norms
  (``GradSampleModuleFastGradientClipping``; Opacus refuses BatchNorm), both with
  ``loss_reduction="mean"``, which Opacus undoes itself, and in training mode, the only
  mode in which its hooks record (the same function as eval mode for a network without
  BatchNorm or dropout); curvlinops' ``HessianLinearOperator`` with the summed
  cross-entropy (``N`` times gcref's mean-loss HVP, so divided by ``N``);
- the **Jacobian regulariser** of Hoffman, Roberts and Yaida (2019, Algorithm 1), written
  from the paper without ``create_graph`` (a measure, not a penalty): it returns
  ``(1/2) (C / (n_proj B)) sum_b ||v_b^T J_b||^2``, that is ``GC / 2`` with the C one-hot
  projections (exact) or an estimate of it with ``n_proj = 1`` projection drawn
  uniformly on the sphere, so its values are doubled; the one-projection row uses
  gcref's sphere probes and is checked against ``estimate_geometric_complexity(...,
  probe="sphere")`` (its time is compared with gcref's Gaussian 1-probe estimate, which
  costs the same).

The ratio ``alternative time / gcref time`` is printed: above 1, gcref is faster. Each
alternative timed on all N examples is also timed back to back with gcref's same measure
(``paired``: the median [quartiles] of the pairs' ratios; at least 6 pairs, more until
they last ``--pair-seconds``, at most ``--max-pairs``), with an interval that covers the
median with probability 0.95 (``benchmarks/paired.py``). The verdict line calls gcref
slower than an alternative only where that interval lies below 1, and names the
alternatives whose median is below 1 but whose interval contains 1: one run cannot tell
those apart from level.

Timing: every method runs once on two chunks to warm up; then ``--repeats`` rounds (or
more, until they have lasted ``--min-seconds``), each timing every method once in a
shuffled order (interleaved, so that load from other processes falls on all of them
alike, and shuffled, so that no method always follows the same one); the median is
reported with the spread. On CUDA, the device is synchronised around every timing and
TF32 is off unless ``--tf32``; on the CPU, torch uses one thread unless ``--threads``
says otherwise (on a shared machine, two threads can be ten times slower than one). The
accuracy of the chosen dtype against float64 is measured on the first ``--check-n``
examples.

This is a measurement, not a test::

    .venv/bin/python benchmarks/model_measures.py            # CPU-sized, a few minutes
    python benchmarks/model_measures.py --full               # 50,000 images, width 64, GPU
    python benchmarks/model_measures.py --dtype bfloat16     # bf16 timings and error
    .venv/bin/python benchmarks/model_measures.py --quick    # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.metadata
import math
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
from paired import judged, median_interval

K = 10
GOALS = {"exact GC": 4.0, "1-probe GC": 1.0, "grad norms": 2.0, "HVP": None}
MEASURES = tuple(GOALS)
#: Measures whose value is a mean over the examples rather than one value per example.
MEANS = ("1-probe GC", "HVP")
#: The peers of the ``bench`` extra: import name, distribution name.
PEERS = {"BackPACK": ("backpack", "backpack-for-pytorch"), "Opacus": ("opacus", "opacus"),
         "curvlinops": ("curvlinops", "curvlinops-for-pytorch")}
#: Agreement with gcref required before an alternative's time is reported, per dtype.
AGREEMENT_RTOL = {"float64": 1e-9, "float32": 1e-3, "bfloat16": 1e-1}

CPU_SETTING = {"n": 256, "width": 8, "image_size": 32, "batch_size": 128, "loop_n": 32,
               "alt_n": None, "check_n": 32, "repeats": 5, "min_seconds": 40, "threads": 1}
FULL_SETTING = {"n": 50_000, "width": 64, "image_size": 32, "batch_size": 256, "loop_n": 256,
                "alt_n": 10_000, "check_n": 256, "repeats": 3, "min_seconds": 0, "threads": None}
QUICK_SETTING = {"n": 32, "width": 2, "image_size": 8, "batch_size": 16, "loop_n": 4,
                 "alt_n": None, "check_n": 8, "repeats": 1, "min_seconds": 0, "threads": 1}
MAX_ROUNDS = 25
#: Back-to-back pairs (gcref, alternative) per alternative: at least PAIRS_MIN, more (at
#: most PAIRS_MAX) until they last PAIR_SECONDS.
PAIRS_MIN, PAIRS_MAX, PAIR_SECONDS = 6, 25, 4.0


@dataclass
class Method:
    """One way of computing one measure: ``run(n)`` computes it on the first n examples.

    ``expect(n)``, if given, is gcref's value that the result must match (the default:
    gcref's own result for the measure on the same examples).
    """

    measure: str
    label: str
    run: callable
    n: int
    expect: callable = None
    times: list = field(default_factory=list)
    value: object = None
    rel_diff: float = float("nan")
    failure: str = ""
    #: ``time(alternative) / time(gcref)`` of back-to-back pairs (see ``run_pairs``).
    ratios: list = field(default_factory=list)

    def seconds(self, n_total):
        """Median time, extrapolated linearly to ``n_total`` examples."""
        return statistics.median(self.times) * n_total / self.n


MODELS = {"resnet18": "ResNet-18", "smallcnn": "SmallCNN", "mlp": "MLP"}


def image_mlp(width, image_size):
    """``Flatten -> Linear(3 S^2, 32 w) -> tanh -> Linear(32 w, 32 w) -> tanh -> Linear(32 w, k)``."""
    from torch import nn

    hidden = 32 * width
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size**2, hidden), nn.Tanh(),
                         nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, K))


def build_model(name, width, seed, image_size):
    """The network, initialised from ``seed`` without touching the caller's global RNG state."""
    import torch

    from gcref.nets import torch as nets

    constructors = {"resnet18": lambda: nets.resnet18(num_classes=K, width=width),
                    "smallcnn": lambda: nets.SmallCNN(num_classes=K, width=width),
                    "mlp": lambda: image_mlp(width, image_size)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return constructors[name]()


def synthetic_data(n, image_size, seed):
    """Gaussian images ``(n, 3, S, S)`` and uniform labels in ``[0, 10)``, float32 on the CPU."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    X = torch.randn((n, 3, image_size, image_size), generator=generator)
    y = torch.randint(0, K, (n,), generator=generator)
    return X, y


def chunks(n, size):
    """``(start, stop)`` of consecutive blocks of at most ``size`` of the first n examples."""
    return [(start, min(start + size, n)) for start in range(0, n, size)]


# -- the baseline ---------------------------------------------------------------------------


def training_epoch(model, X, y, batch_size):
    """One epoch of forward, mean cross-entropy and backward with weight gradients; no step."""
    import torch.nn.functional as F

    def run(n):
        model.train()
        for start, stop in chunks(n, batch_size):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(X[start:stop]), y[start:stop]).backward()

    return run


# -- gcref ----------------------------------------------------------------------------------


def gcref_methods(model, X, y, chunk_size, probe_seed):
    """The four measures through :mod:`gcref.models`, as a user would call them."""
    from gcref import models

    def exact(n):
        return models.geometric_complexity(
            model, X[:n], chunk_size=chunk_size, per_example=True
        ).per_example

    def probe(n):
        rng = np.random.default_rng(probe_seed)
        return models.estimate_geometric_complexity(
            model, X[:n], rng, n_probes=1, chunk_size=chunk_size
        ).value

    def norms(n):
        return np.asarray(models.loss_grad_sq_norms(
            model, (X[:n], y[:n]), "softmax_cross_entropy", chunk_size=chunk_size
        ))

    # The vector as a torch user holds it, a tensor in the model's dtype and on its device
    # (the alternatives get the same tensor); a NumPy float64 vector costs two more passes
    # over p entries per call (measured: 5% of the MLP's HVP at N = 256 on the CPU).
    vector = hvp_vector(model, probe_seed)

    def hvp(n):
        return models.loss_hvp(
            model, (X[:n], y[:n]), "softmax_cross_entropy", vector, chunk_size=chunk_size
        )

    return {"exact GC": exact, "1-probe GC": probe, "grad norms": norms, "HVP": hvp}


def sphere_gc(model, X, chunk_size, probe_seed):
    """gcref's 1-probe estimate with sphere probes: what the Jacobian regulariser's must match."""
    from gcref import models

    def run(n):
        rng = np.random.default_rng(probe_seed)
        return models.estimate_geometric_complexity(
            model, X[:n], rng, n_probes=1, probe="sphere", chunk_size=chunk_size
        ).value

    return run


# -- the alternatives -----------------------------------------------------------------------


def probes_for(n, probe_seed, like):
    """The Gaussian probes gcref draws from ``default_rng(probe_seed)``: ``(n, k)``."""
    import torch

    v = np.random.default_rng(probe_seed).standard_normal((n, 1, K))[:, 0]
    return torch.from_numpy(v).to(device=like.device, dtype=like.dtype)


def hvp_vector(model, seed):
    """A standard normal vector of the model's parameter count, in its dtype: ``(p,)``."""
    import torch

    params = trainable(model)
    p = sum(t.numel() for t in params)
    v = np.random.default_rng(seed + 1).standard_normal(p)
    return torch.from_numpy(v).to(device=params[0].device, dtype=params[0].dtype)


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def flat(tensors):
    """The tensors flattened and joined, float64 NumPy ``(p,)``."""
    import torch

    return torch.cat([t.reshape(-1) for t in tensors]).double().cpu().numpy()


def per_example_sq(g):
    """Squared norms of the rows of a ``(n, ...)`` tensor, float64 NumPy ``(n,)``."""
    return g.flatten(1).pow(2).sum(1).double().cpu().numpy()


def loop_methods(model, X, y, probe_seed):
    """One example at a time with ``torch.autograd.grad``: the obviously correct way."""
    import torch
    import torch.nn.functional as F

    params = [p for p in model.parameters() if p.requires_grad]

    def exact(n):
        model.eval()
        out = []
        for i in range(n):
            x = X[i : i + 1].detach().requires_grad_(True)
            f = model(x)[0]
            sq = 0
            for c in range(K):
                (g,) = torch.autograd.grad(f[c], x, retain_graph=c < K - 1)
                sq = sq + g.pow(2).sum()
            out.append(sq)
        return torch.stack(out).double().cpu().numpy()

    def probe(n):
        model.eval()
        v = probes_for(n, probe_seed, X)
        out = []
        for i in range(n):
            x = X[i : i + 1].detach().requires_grad_(True)
            (g,) = torch.autograd.grad((model(x)[0] * v[i]).sum(), x)
            out.append(g.pow(2).sum())
        return float(torch.stack(out).double().mean())

    def norms(n):
        model.eval()
        out = []
        for i in range(n):
            loss = F.cross_entropy(model(X[i : i + 1]), y[i : i + 1])
            grads = torch.autograd.grad(loss, params)
            out.append(sum(g.pow(2).sum() for g in grads))
        return torch.stack(out).double().cpu().numpy()

    return [
        ("exact GC", "per-example loop", exact),
        ("1-probe GC", "per-example loop", probe),
        ("grad norms", "per-example loop", norms),
    ]


def torch_func_methods(model, X, y, chunk_size, probe_seed):
    """``torch.func`` on ``functional_call``: vmap of jacrev, of grad of ``v . f``, of grad of l."""
    import torch.nn.functional as F
    from torch.func import functional_call, grad, jacrev, vmap

    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def f_single(x):
        return functional_call(model, (params, buffers), (x.unsqueeze(0),)).squeeze(0)

    def probe_single(x, v):
        return (f_single(x) * v).sum()

    def loss_single(theta, x, label):
        logits = functional_call(model, (theta, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(logits, label.unsqueeze(0))

    jacobians = vmap(jacrev(f_single))
    probe_grads = vmap(grad(probe_single))
    loss_grads = vmap(grad(loss_single), in_dims=(None, 0, 0))

    def exact(n):
        model.eval()
        return np.concatenate([per_example_sq(jacobians(X[a:b])) for a, b in chunks(n, chunk_size)])

    def probe(n):
        model.eval()
        v = probes_for(n, probe_seed, X)
        sq = [per_example_sq(probe_grads(X[a:b], v[a:b])) for a, b in chunks(n, chunk_size)]
        return float(np.concatenate(sq).mean())

    def norms(n):
        model.eval()
        out = []
        for a, b in chunks(n, chunk_size):
            g = loss_grads(params, X[a:b], y[a:b])
            out.append(sum(per_example_sq(t) for t in g.values()))
        return np.concatenate(out)

    return [
        ("exact GC", "torch.func vmap(jacrev)", exact),
        ("1-probe GC", "torch.func vmap(grad v.f)", probe),
        ("grad norms", "torch.func vmap(grad l)", norms),
    ]


def batched_backward_methods(model, X, chunk_size, probe_seed):
    """Backward passes over a whole chunk with respect to the input only (no weight gradient).

    For exact GC, either k backward passes with one-hot cotangents, or one backward pass
    vmapped over the k cotangents (``is_grads_batched``).
    """
    import torch

    def exact(n, batched_cotangents=False):
        model.eval()
        out = []
        for a, b in chunks(n, chunk_size):
            x = X[a:b].detach().requires_grad_(True)
            f = model(x)
            if batched_cotangents:
                basis = torch.eye(K, dtype=f.dtype, device=f.device)
                (g,) = torch.autograd.grad(f, x, basis[:, None, :].expand(K, b - a, K),
                                           is_grads_batched=True)
                out.append(g.flatten(2).pow(2).sum(dim=(0, 2)).double())
                continue
            sq = torch.zeros(b - a, dtype=torch.float64, device=X.device)
            for c in range(K):
                (g,) = torch.autograd.grad(f[:, c].sum(), x, retain_graph=c < K - 1)
                sq += g.flatten(1).pow(2).sum(1).double()
            out.append(sq)
        return torch.cat(out).cpu().numpy()

    def probe(n):
        model.eval()
        v = probes_for(n, probe_seed, X)
        out = []
        for a, b in chunks(n, chunk_size):
            x = X[a:b].detach().requires_grad_(True)
            (g,) = torch.autograd.grad((model(x) * v[a:b]).sum(), x)
            out.append(per_example_sq(g))
        return float(np.concatenate(out).mean())

    return [
        ("exact GC", "k one-hot backward passes", exact),
        ("exact GC", "is_grads_batched backward", lambda n: exact(n, batched_cotangents=True)),
        ("1-probe GC", "one batched backward", probe),
    ]


def hvp_methods(model, X, y, chunk_size, probe_seed):
    """Hessian of the mean cross-entropy times v: a double backward per chunk, and torch.func.

    The double backward is ``grad_theta (grad_theta L_c . v)`` of each chunk's summed loss
    ``L_c``; ``torch.func`` pushes v forward through the gradient (``jvp(grad)``,
    forward-over-reverse) on ``functional_call``. Both sum over chunks and divide by n.
    """
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, jvp

    params = trainable(model)
    v = hvp_vector(model, probe_seed)
    pieces = [t.reshape(p.shape) for t, p in zip(torch.split(v, [p.numel() for p in params]), params)]
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def double_backward(n):
        model.eval()
        total = [torch.zeros_like(p) for p in params]
        for a, b in chunks(n, chunk_size):
            loss = F.cross_entropy(model(X[a:b]), y[a:b], reduction="sum")
            g = torch.autograd.grad(loss, params, create_graph=True)
            hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, pieces)), params)
            total = [t + h for t, h in zip(total, hv)]
        return flat(total) / n

    def summed_loss(theta, x, labels):
        logits = functional_call(model, (dict(zip(names, theta)), buffers), (x,))
        return F.cross_entropy(logits, labels, reduction="sum")

    def gradient_at(x, labels):
        return lambda *theta: grad(summed_loss)(theta, x, labels)

    def forward_over_reverse(n):
        model.eval()
        primals = tuple(p.detach() for p in params)
        total = [torch.zeros_like(p) for p in params]
        for a, b in chunks(n, chunk_size):
            _, hv = jvp(gradient_at(X[a:b], y[a:b]), primals, tuple(pieces))
            total = [t + h for t, h in zip(total, hv)]
        return flat(total) / n

    return [
        ("HVP", "double backward per chunk", double_backward),
        ("HVP", "torch.func jvp(grad)", forward_over_reverse),
    ]


def jacobian_regulariser(torch, x, f, projections):
    """Hoffman, Roberts and Yaida (2019), Algorithm 1, without ``create_graph``.

    ``J_F = (1/2) (C / (n_proj B)) sum_j sum_b ||v_{j,b}^T J_b||^2`` for ``x`` of batch
    size B requiring grad, ``f = model(x)`` of shape ``(B, C)`` and the ``n_proj``
    projections ``(B, C)`` (the C one-hot vectors for the exact value, ``n_proj = C``).
    """
    total = 0.0
    for j, v in enumerate(projections):
        (g,) = torch.autograd.grad(f, x, v, retain_graph=j < len(projections) - 1)
        total = total + g.double().square().sum()
    return float(total) * f.shape[1] / (2 * len(projections) * x.shape[0])


def jacobian_regulariser_methods(model, X, chunk_size, probe_seed):
    """The Jacobian regulariser's one-hot (exact) and one-projection methods; values doubled.

    Its chunk values ``J_F = GC_c / 2`` are means over the chunk: GC over n examples is
    ``2 sum_c B_c J_F,c / n``. The projection is gcref's sphere probe (``probe="sphere"``,
    the paper's uniform direction), so the value can be checked against gcref's.
    """
    import torch

    def exact(n):
        model.eval()
        total = 0.0
        for a, b in chunks(n, chunk_size):
            x = X[a:b].detach().requires_grad_(True)
            f = model(x)
            eye = torch.eye(K, dtype=f.dtype, device=f.device)
            total += (b - a) * jacobian_regulariser(torch, x, f, [eye[c].expand_as(f) for c in range(K)])
        return 2 * total / n

    def one_projection(n):
        from gcref.models import draw_probes

        model.eval()
        probes = draw_probes(np.random.default_rng(probe_seed), "sphere", (n, 1, K))[:, 0]
        probes = torch.from_numpy(probes).to(device=X.device, dtype=X.dtype)
        total = 0.0
        for a, b in chunks(n, chunk_size):
            x = X[a:b].detach().requires_grad_(True)
            total += (b - a) * jacobian_regulariser(torch, x, model(x), [probes[a:b]])
        return 2 * total / n

    return [
        ("exact GC", "Jacobian regulariser one-hot x2", exact, "mean"),
        ("1-probe GC", "Jacobian regulariser 1 proj x2", one_projection, "sphere"),
    ]


def peer_version(peer):
    """The installed version of a peer's distribution, or None."""
    try:
        return importlib.metadata.version(PEERS[peer][1])
    except importlib.metadata.PackageNotFoundError:
        return None


def missing(peer):
    """A run that raises the skip line when the peer cannot be imported, else None."""
    try:
        __import__(PEERS[peer][0])
    except ImportError as err:
        reason = f"skipped: {peer} not installed ({err}; pip install {PEERS[peer][1]}, or gcref[bench])"

        def run(n):
            raise PeerUnavailable(reason)

        return run
    return None


class PeerUnavailable(Exception):
    """A peer that is not installed, or refuses the model: the row says why instead of a time."""


def backpack_methods(model, X, y, chunk_size):
    """BackPACK's ``BatchL2Grad`` on a copy of the model (``extend`` adds hooks to it).

    With the mean cross-entropy over a chunk of B examples, BackPACK returns, per
    parameter, ``||grad_theta (l_n / B)||^2``; their sum times ``B^2`` is
    ``||grad_theta l_n||^2``.
    """
    skip = missing("BackPACK")
    if skip:
        return [("grad norms", "BackPACK BatchL2Grad x B^2", skip)]
    import torch
    from backpack import backpack, extend
    from backpack.extensions import BatchL2Grad

    peer = extend(copy.deepcopy(model))
    loss_fn = extend(torch.nn.CrossEntropyLoss())
    params = trainable(peer)

    def norms(n):
        peer.eval()
        out = []
        for a, b in chunks(n, chunk_size):
            loss = loss_fn(peer(X[a:b]), y[a:b])
            with backpack(BatchL2Grad()):
                loss.backward()
            out.append(sum(p.batch_l2.double() for p in params) * (b - a) ** 2)
            for p in params:
                p.grad = None
        return torch.cat(out).cpu().numpy()

    return [("grad norms", "BackPACK BatchL2Grad x B^2", norms)]


def opacus_methods(model, X, y, chunk_size):
    """Opacus's per-example gradients and ghost norms on copies of the model, training mode."""
    labels = ("Opacus GradSampleModule", "Opacus ghost norms")
    skip = missing("Opacus")
    if skip:
        return [("grad norms", label, skip) for label in labels]
    import torch.nn.functional as F
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    def wrapped(make):
        try:
            return make(copy.deepcopy(model)), None
        except (NotImplementedError, ValueError) as err:
            text = re.sub(r"^\[?\w+\([\"']", "", str(err).splitlines()[0])
            reason = f"Opacus refuses the model: {text[:90]}"

            def run(n):
                raise PeerUnavailable(reason)

            return None, run

    def method(peer, squared_norms):
        def norms(n):
            peer.train()
            out = []
            for a, b in chunks(n, chunk_size):
                F.cross_entropy(peer(X[a:b]), y[a:b]).backward()
                out.append(squared_norms(trainable(peer)))
                peer.zero_grad(set_to_none=True)
            return np.concatenate(out)

        return norms

    grad_samples, refused = wrapped(lambda m: GradSampleModule(m, loss_reduction="mean"))
    ghost, ghost_refused = wrapped(lambda m: GradSampleModuleFastGradientClipping(
        m, loss_reduction="mean", max_grad_norm=1.0, use_ghost_clipping=True))
    return [
        ("grad norms", labels[0], refused or method(
            grad_samples, lambda ps: sum(per_example_sq(p.grad_sample) for p in ps))),
        ("grad norms", labels[1], ghost_refused or method(
            ghost, lambda ps: sum(p._norm_sample.double().square().cpu().numpy() for p in ps))),
    ]


def curvlinops_methods(model, X, y, chunk_size, probe_seed):
    """curvlinops' ``HessianLinearOperator`` of the summed cross-entropy, times v, over n."""
    label = "curvlinops Hessian (sum) / N"
    skip = missing("curvlinops")
    if skip:
        return [("HVP", label, skip)]
    import torch
    from curvlinops import HessianLinearOperator

    params = trainable(model)
    v = hvp_vector(model, probe_seed)

    def hvp(n):
        model.eval()
        data = [(X[a:b], y[a:b]) for a, b in chunks(n, chunk_size)]
        H = HessianLinearOperator(model, torch.nn.CrossEntropyLoss(reduction="sum"), params, data,
                                  check_deterministic=False, num_data=n)
        return (H @ v).double().cpu().numpy() / n

    return [("HVP", label, hvp)]


# -- timing and checks ----------------------------------------------------------------------


def synchronize(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(run, n, device):
    synchronize(device)
    start = time.perf_counter()
    value = run(n)
    synchronize(device)
    return time.perf_counter() - start, value


def relative_difference(value, reference):
    """``max |value - reference| / max |reference|`` (scalars or per-example arrays)."""
    value = np.asarray(value, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    return float(np.max(np.abs(value - reference)) / np.max(np.abs(reference)))


def run_methods(methods, repeats, min_seconds, warm_n, device, rng, log):
    """Warm up every method on ``warm_n`` examples, then time them in interleaved rounds.

    Each round runs every method once, in an order drawn from ``rng`` (a fixed order
    would favour whichever method follows a cheap or cache-friendly one). There are
    ``repeats`` rounds, or more (at most ``MAX_ROUNDS``) until the rounds have lasted
    ``min_seconds``, so that a fast model gets enough samples for a stable median. A
    method that runs out of GPU memory, or a peer that is missing or fails on the model,
    is marked as failed (the reason is its row) and left out of later rounds.
    """
    import torch

    def attempt(m, n):
        try:
            return time_once(m.run, n, device)
        except torch.OutOfMemoryError as err:
            m.failure = f"out of memory at {n} examples: {str(err).splitlines()[0][:60]}"
            torch.cuda.empty_cache()
            return None
        except PeerUnavailable as err:
            m.failure = str(err)
            return None
        except Exception as err:
            if m.label.split()[0] not in PEERS:
                raise
            m.failure = f"{m.label.split()[0]} failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
            return None

    for m in methods:
        attempt(m, min(warm_n, m.n))
    started, rounds, r = time.perf_counter(), repeats, 0
    while r < rounds:
        for i in rng.permutation(len(methods)):
            m = methods[i]
            if not m.failure and (result := attempt(m, m.n)) is not None:
                seconds, m.value = result
                m.times.append(seconds)
        r += 1
        if r == 1:
            per_round = time.perf_counter() - started
            rounds = min(MAX_ROUNDS, max(repeats, math.ceil(min_seconds / per_round)))
        log(f"  round {r}/{rounds} done")


def run_pairs(gcref, alternatives, device, rng, log, max_pairs=PAIRS_MAX,
              pair_seconds=PAIR_SECONDS):
    """Time each alternative and gcref's same measure back to back, in a random order.

    The speed of a shared virtual CPU drifts by tens of percent over seconds (measured
    here: the same call 9 ms, then 12 ms a minute later), more than the differences a
    ratio of medians over whole rounds can resolve. The ratio of two calls made one after
    the other cancels the drift; its median over the pairs is the ratio reported. Only
    alternatives timed on all N examples are paired (the extrapolated loops are not).
    """
    for alt in alternatives:
        reference = gcref[alt.measure]
        if alt.failure or reference.failure or alt.n != reference.n:
            continue
        started, wanted, i = time.perf_counter(), PAIRS_MIN, 0
        while i < wanted:
            first, second = (reference, alt) if rng.random() < 0.5 else (alt, reference)
            t_first, _ = time_once(first.run, first.n, device)
            t_second, _ = time_once(second.run, second.n, device)
            t_ref, t_alt = (t_first, t_second) if first is reference else (t_second, t_first)
            alt.ratios.append(t_alt / t_ref)
            i += 1
            if i == 1:
                per_pair = time.perf_counter() - started
                wanted = min(max_pairs, max(PAIRS_MIN, math.ceil(pair_seconds / per_pair)))
    log("  pairs done")


# -- one model ------------------------------------------------------------------------------


def benchmark_model(name, args, device, dtype, log):
    started = time.perf_counter()
    n, chunk = args.n, args.batch_size
    loop_n, alt_n = min(args.loop_n, n), min(args.alt_n or n, n)
    model = build_model(name, args.width, args.seed, args.image_size).to(device=device, dtype=dtype)
    X, y = synthetic_data(n, args.image_size, args.seed + 1)
    X, y = X.to(device=device, dtype=dtype), y.to(device)
    p = sum(t.numel() for t in model.parameters() if t.requires_grad)
    log(
        f"\n{MODELS[name]}: width {args.width}, {p:,} parameters; N = {n} images "
        f"3x{args.image_size}x{args.image_size}, k = {K}, batch and chunk {chunk}, "
        f"{str(dtype).replace('torch.', '')} on {device}"
    )

    baseline = Method("epoch", "training epoch (baseline)",
                      training_epoch(copy.deepcopy(model), X, y, chunk), n)
    gcref = {m: Method(m, "gcref", run, n)
             for m, run in gcref_methods(model, X, y, chunk, args.seed).items()}
    families = [
        (loop_n, loop_methods(model, X, y, args.seed)),
        (alt_n, torch_func_methods(model, X, y, chunk, args.seed)),
        (alt_n, batched_backward_methods(model, X, chunk, args.seed)),
        (alt_n, hvp_methods(model, X, y, chunk, args.seed)),
        (alt_n, backpack_methods(model, X, y, chunk)),
        (alt_n, opacus_methods(model, X, y, chunk)),
        (alt_n, curvlinops_methods(model, X, y, chunk, args.seed)),
    ]
    alternatives = [Method(measure, label, run, family_n)
                    for family_n, runs in families for measure, label, run in runs]
    sphere = sphere_gc(model, X, chunk, args.seed)
    expectations = {"mean": lambda m: float(np.mean(gcref["exact GC"].value[:m])), "sphere": sphere}
    alternatives += [Method(measure, label, run, alt_n, expect=expectations[kind])
                     for measure, label, run, kind in jacobian_regulariser_methods(model, X, chunk, args.seed)]
    run_methods([baseline, *gcref.values(), *alternatives], args.repeats, args.min_seconds,
                2 * chunk, device, np.random.default_rng(args.seed), log)
    check_agreement(gcref, alternatives, agreement_rtol(args))
    run_pairs(gcref, alternatives, device, np.random.default_rng(args.seed + 2), log,
              max_pairs=args.max_pairs, pair_seconds=args.pair_seconds)
    report(baseline, gcref, alternatives, n, log)
    accuracy_against_float64(model, X, y, args, log)
    log(f"  ({time.perf_counter() - started:.0f} s for this model)")


def agreement_rtol(args):
    """The relative difference an alternative may show; TF32 convolutions carry ~3 digits."""
    return max(AGREEMENT_RTOL[args.dtype], 1e-2 if args.tf32 else 0.0)


def check_agreement(gcref, alternatives, rtol):
    """Set each alternative's relative difference from gcref on the same examples."""
    for alt in alternatives:
        reference = gcref[alt.measure]
        if alt.failure or reference.failure:
            alt.failure = alt.failure or "not compared: gcref failed"
            continue
        if alt.expect is not None:
            expected = alt.expect(alt.n)
        elif alt.measure in MEANS:
            # A mean: gcref again on the alternative's examples (the same probes or vector).
            expected = reference.value if alt.n == reference.n else reference.run(alt.n)
        else:
            expected = reference.value[: alt.n]
        alt.rel_diff = relative_difference(alt.value, expected)
        if not alt.rel_diff <= rtol:
            alt.failure = f"DISAGREES with gcref (rel diff {alt.rel_diff:.1e} > {rtol:g}): no time"


def report(baseline, gcref, alternatives, n, log):
    log(f"  {'measure':<11}{'method':<33}{'timed on':>9}{'median s':>10}{'min-max s':>18}"
        f"{'/ epoch':>9}  {'goal':<12}{'alt/gcref':>10}{'paired':>19}{'95% of median':>16}"
        f"{'rel diff':>10}")
    if baseline.failure:
        log(f"  baseline {baseline.failure}: no ratios")
        return
    epoch = baseline.seconds(n)

    def line(m, goal="", speed="", paired="", interval="", diff=""):
        if m.failure:
            log(f"  {m.measure:<11}{m.label:<33}  {m.failure}")
            return
        timed_on = f"{m.n}" + ("*" if m.n < n else "")
        spread = "-".join(f"{t * n / m.n:.3g}" for t in (min(m.times), max(m.times)))
        log(f"  {m.measure:<11}{m.label:<33}{timed_on:>9}{m.seconds(n):>10.4g}{spread:>18}"
            f"{m.seconds(n) / epoch:>9.2f}  {goal:<12}{speed:>10}{paired:>19}{interval:>16}"
            f"{diff:>10}")

    line(baseline)
    for measure, method in gcref.items():
        if GOALS[measure] is None:
            line(method)
            continue
        verdict = "" if method.failure else (
            "PASS" if method.seconds(n) / epoch <= GOALS[measure] else "MISS")
        line(method, goal=f"<= {GOALS[measure]:g} {verdict}")
    slower_than, unresolved = [], []
    for alt in alternatives:
        if alt.failure:
            line(alt)
            continue
        speed = alt.seconds(n) / gcref[alt.measure].seconds(n)
        paired = interval = ""
        if alt.ratios:
            q1, median, q3 = np.percentile(alt.ratios, [25, 50, 75])
            low, high = median_interval(alt.ratios)
            paired = f"{median:.2f} [{q1:.2f},{q3:.2f}]"
            interval = f"{low:.3f}-{high:.3f}"
            verdict = judged(alt.ratios)
            if verdict == "slower":
                slower_than.append(f"{alt.label} ({alt.measure}, {median:.2f})")
            elif verdict == "level" and median < 1:
                unresolved.append(f"{alt.label} ({alt.measure}, {median:.2f})")
        elif speed < 1:
            slower_than.append(f"{alt.label} ({alt.measure}, {speed:.2f}, unpaired)")
        line(alt, speed=f"{speed:.2f}", paired=paired, interval=interval,
             diff=f"{alt.rel_diff:.1e}")
    log(f"  * timed on the first examples only, times extrapolated linearly to N = {n}")
    log("  / epoch: median time over the baseline's; alt/gcref: the alternative's median time "
        "over gcref's (above 1: gcref is faster); paired: the median [quartiles] of "
        "alt/gcref over back-to-back pairs; 95% of median: an interval that covers the "
        "median of the paired ratios with probability 0.95 (benchmarks/paired.py), which the "
        "verdict below judges where it exists; rel diff: max |alt - gcref| / max |gcref|")
    log("  gcref at least as fast as every alternative, within this run's resolution: "
        + ("PASS" if not slower_than else "MISS, slower than " + "; ".join(slower_than)))
    if unresolved:
        log("  paired median below 1 but its interval contains 1 (not resolved by this run): "
            + "; ".join(unresolved))


def accuracy_against_float64(model, X, y, args, log):
    """Relative error of the measures in the run's dtype against float64, first check_n examples.

    The float64 model is a copy of the model cast to float64, so both see the same weights
    and inputs (as rounded to the run's dtype): the error is that of the arithmetic alone.
    """
    import torch

    from gcref import models

    if next(model.parameters()).dtype == torch.float64:
        return
    m, chunk = min(args.check_n, X.shape[0]), args.batch_size
    model64 = copy.deepcopy(model).double()
    log(f"  {args.dtype} against float64 (same weights and inputs), first {m} examples:")
    for measure in MEASURES:
        values = []
        for net, inputs in ((model, X[:m]), (model64, X[:m].double())):
            if measure == "exact GC":
                values.append(models.geometric_complexity(net, inputs, chunk_size=chunk,
                                                          per_example=True).per_example)
            elif measure == "1-probe GC":
                rng = np.random.default_rng(args.seed)
                values.append(models.estimate_geometric_complexity(net, inputs, rng,
                                                                   chunk_size=chunk).value)
            elif measure == "grad norms":
                values.append(np.asarray(models.loss_grad_sq_norms(
                    net, (inputs, y[:m]), "softmax_cross_entropy", chunk_size=chunk)))
            else:
                vector = hvp_vector(model, args.seed).double().cpu().numpy()
                values.append(models.loss_hvp(net, (inputs, y[:m]), "softmax_cross_entropy",
                                              vector, chunk_size=chunk))
        value, value64 = (np.asarray(v, dtype=np.float64) for v in values)
        if measure == "HVP":
            log(f"    {measure:<11} rel error {relative_difference(value, value64):.1e} "
                "(max |H v - H64 v| / max |H64 v|)")
            continue
        text = (f"    {measure:<11} mean {value.mean():.6g} vs {value64.mean():.6g}: "
                f"rel error {abs(value.mean() / value64.mean() - 1):.1e}")
        if value.ndim:
            text += f"; largest per-example rel error {np.max(np.abs(value / value64 - 1)):.1e}"
        log(text)


# -- main -----------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    setting = parser.add_mutually_exclusive_group()
    setting.add_argument("--full", action="store_true",
                         help="the GPU setting: 50,000 images 3x32x32, width 64, batch 256")
    setting.add_argument("--quick", action="store_true",
                         help="a smoke run in seconds: 32 images 3x8x8, width 2, one round")
    parser.add_argument("--models", default="resnet18,smallcnn,mlp", help="comma-separated: "
                        + ", ".join(MODELS))
    parser.add_argument("--dtype", default="float32", choices=sorted(AGREEMENT_RTOL))
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA (off by default)")
    meaning_of_none = {"alt_n": "all N", "threads": "torch's default"}
    for key, value in CPU_SETTING.items():
        defaults = [meaning_of_none.get(key, v) if v is None else v
                    for v in (value, FULL_SETTING[key])]
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                            help=f"default {defaults[0]} (with --full: {defaults[1]})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-pairs", type=int, default=PAIRS_MAX,
                        help=f"most back-to-back pairs per alternative (default {PAIRS_MAX})")
    parser.add_argument("--pair-seconds", type=float, default=PAIR_SECONDS,
                        help="pairs are added (up to --max-pairs) until they last this long "
                        f"(default {PAIR_SECONDS:g})")
    args = parser.parse_args(argv)
    if args.max_pairs < PAIRS_MIN:
        parser.error(f"--max-pairs must be at least {PAIRS_MIN}")
    if not (math.isfinite(args.pair_seconds) and args.pair_seconds >= 0):
        parser.error(f"--pair-seconds must be a number of seconds >= 0; got {args.pair_seconds}")
    chosen = FULL_SETTING if args.full else QUICK_SETTING if args.quick else CPU_SETTING
    for key, value in chosen.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        hardware = f"{torch.cuda.get_device_name(device)}, TF32 {'on' if args.tf32 else 'off'}"
    else:
        hardware = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"

    def log(text):
        print(text, flush=True)

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    name = "full" if args.full else "quick" if args.quick else "CPU"
    log(f"gcref.models against one training epoch; {now}; {name} setting")
    log(f"device {device} ({hardware}); python {platform.python_version()}, "
        f"numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"load average {os.getloadavg()[0]:.1f}")
    log("peers: " + ", ".join(f"{peer} {peer_version(peer) or 'not installed'}" for peer in PEERS))
    log(f"median of at least {args.repeats} shuffled rounds (more, up to {MAX_ROUNDS}, until "
        f"they last {args.min_seconds} s) after a warm-up; baseline epoch: training "
        "mode, forward + mean cross-entropy + backward with weight gradients, no optimizer step")
    for name in args.models.split(","):
        if name.strip() not in MODELS:
            parser.error(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    dtype = getattr(torch, args.dtype)
    for name in args.models.split(","):
        benchmark_model(name.strip(), args, device, dtype, log)
    log(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
