"""Differentiable GC and IGR penalties of a ``torch.nn.Module``, for a training loss.

The public spellings are in :mod:`gcref.penalties`; this module holds their torch code.
Every function runs the module once on the batch, in the module's current mode
(training or eval), and returns a scalar tensor that carries the graph, so that
``(loss + lam * penalty).backward()`` trains with any optimiser. ``return_output=True``
also returns that forward pass's output ``f`` of shape ``(n, k)``, to compute the loss
from the same pass (one forward pass per step; BatchNorm updates its running statistics
once).

Examples and batch statistics
-----------------------------
GC and the per-example IGR penalty are means over examples of a per-example quantity
(``||J(x_n)||_F^2``, ``||grad_theta l_n||^2``). When the examples are computed
independently of each other, one backward pass over the batch gives every example's
part at once. A BatchNorm in training mode (or without running statistics) normalises
with the batch's statistics and couples the examples: ``f_n`` depends on every ``x_m``
of the batch. The penalties then keep the definition, with the batch statistics as they
are in the forward pass: ``J(x_n) = d f_n / d x_n`` and ``grad_theta l_n`` are derivatives
of the batch's function, and they are computed exactly by backward passes batched over
one-hot cotangents (``torch.autograd.grad(..., is_grads_batched=True)``): n k of them
for GC, n P for its probe estimate, n for the per-example IGR penalty, vectorised.

``examples`` chooses: ``"auto"`` treats the examples as coupled when a BatchNorm uses
batch statistics and as independent otherwise; ``"independent"`` and ``"coupled"``
force one. A layer of your own that mixes examples is not detected: pass
``examples="coupled"``. ``"independent"`` on a coupled model computes the gradient of
``sum_m f_m`` with respect to ``x_n`` in place of ``d f_n / d x_n`` (what the Jacobian
regulariser of Hoffman et al. does in training mode), which is not GC. The per-example
IGR penalty gives the exact value either way: the norm rule of BatchNorm declines
training mode, which sends it to the batched backward passes.

Under ``DistributedDataParallel``
---------------------------------
With a ``torch.nn.parallel.DistributedDataParallel`` module (and ``torch.distributed``
initialised) each process passes its own shard of the batch; the penalty is the value
of the union of the shards on every process, through differentiable all-reductions
(an all-reduce whose backward all-reduces the cotangents), so that after DDP averages the
gradients every process holds the gradient that one process would compute on the
whole batch, for shards of any sizes (tested with two gloo processes). This holds for
models whose examples are independent; a BatchNorm in training mode normalises each
shard by its own statistics, as it always does under DDP. DDP also requires every
parameter to receive a gradient in ``backward()``: GC alone does not reach the output
layer's bias, the loss it is added to does.

Under ``torch.compile``
-----------------------
The penalties differentiate the forward pass twice (``create_graph``), which
torch.compile's aot_autograd does not support (measured with torch 2.13: "torch.compile
with aot_autograd does not currently support double backward", for every penalty). They
are therefore excluded from compilation (``torch.compiler.disable``): inside a compiled
training step they run eagerly, as a graph break, with the eager values and gradients,
and a compiled module is refused with that reason.

Index conventions: ``n`` examples, ``k`` outputs (the module's output flattened to
``(n, k)``), ``P`` probes per example; ``theta`` the parameters that require grad.
"""

from __future__ import annotations

import torch

from gcref._checks import check_positive_int, check_rng
from gcref.backends.torch_layers import (
    NORM_METHODS,
    compute_dtype,
    record_forward,
    rule_layers,
)
from gcref.losses import get_loss
from gcref.models import PROBES, draw_probes

EXAMPLES = ("auto", "independent", "coupled")


# -- the penalties -------------------------------------------------------------------------


@torch.compiler.disable
def geometric_complexity(module, x, *, examples="auto", return_output=False):
    """Exact ``GC(f, B) = (1/n) sum_n ||J(x_n)||_F^2`` of the batch, with its graph.

    Parameters
    ----------
    module : torch.nn.Module
    x : torch.Tensor, shape (n, *input_shape)
    examples : {"auto", "independent", "coupled"}
        See the module docstring.
    return_output : bool
        Also return the output of the forward pass.

    Returns
    -------
    torch.Tensor, shape ()
        Or ``(penalty, f)`` with ``f`` of shape ``(n, k)``.

    Notes
    -----
    docs/math.md section 2. Independent examples: one forward pass and k input
    vector-Jacobian products with ``create_graph`` (the cotangent ``e_o`` on every row
    gives row o of every example's Jacobian). Coupled: one batched backward pass over
    the n k cotangents ``e_{m,o}``, keeping each example's own block.
    """
    examples = _start(module, x, examples)
    x = x.detach().requires_grad_(True)
    f = _forward(module, x)
    n, k = f.shape
    if examples == "coupled":
        basis = torch.eye(n * k, dtype=f.dtype, device=f.device).reshape(n * k, n, k)
        rows = _own_rows(_input_grad(f, x, basis, batched=True), n, k)
        total = _sq_sum(rows)
    else:
        total = 0
        for o in range(k):
            c = torch.zeros_like(f)
            c[:, o] = 1
            total = total + _sq_sum(_input_grad(f, x, c, batched=False))
    return _finish(module, total, n, f, return_output)


@torch.compiler.disable
def estimate_geometric_complexity(
    module, x, rng, *, n_probes=1, probe="gaussian", examples="auto", return_output=False
):
    """Unbiased probe estimate of ``GC(f, B)``, with its graph.

    Parameters
    ----------
    module : torch.nn.Module
    x : torch.Tensor, shape (n, *input_shape)
    rng : numpy.random.Generator
        Source of the probes, drawn as :func:`gcref.models.estimate_geometric_complexity`
        draws them (shape ``(n, P, k)``, example by example): the same generator state
        gives the same probes, hence the same value.
    n_probes : int
        Probes per example, each one input vector-Jacobian product.
    probe : {"gaussian", "rademacher", "sphere"}
    examples : {"auto", "independent", "coupled"}
    return_output : bool

    Returns
    -------
    torch.Tensor, shape ()
        Or ``(penalty, f)``.

    Notes
    -----
    docs/math.md section 2: ``mean_{n,p} ||v_{n,p}^T J(x_n)||^2`` with
    ``E[v v^T] = I_k`` (Gaussian, Rademacher) or ``k ||v^T J||^2`` for ``v`` uniform on
    the unit sphere; its expectation over the probes is ``GC(f, B)``, and so is that of
    its gradient (the probes do not depend on theta).
    """
    check_rng(rng)
    n_probes = check_positive_int(n_probes, "n_probes")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; expected one of {PROBES}")
    examples = _start(module, x, examples)
    x = x.detach().requires_grad_(True)
    f = _forward(module, x)
    n, k = f.shape
    v = torch.as_tensor(draw_probes(rng, probe, (n, n_probes, k)), dtype=f.dtype, device=f.device)
    if examples == "coupled":
        # Cotangent (m, p) carries probe v_{m,p} on row m only.
        eye = torch.eye(n, dtype=f.dtype, device=f.device)
        cotangents = (v.transpose(0, 1)[:, :, None, :] * eye[None, :, :, None]).reshape(
            n_probes * n, n, k
        )
        rows = _own_rows(_input_grad(f, x, cotangents, batched=True), n, n_probes, outer=True)
        total = _sq_sum(rows)
    else:
        total = 0
        for p in range(n_probes):
            total = total + _sq_sum(_input_grad(f, x, v[:, p, :], batched=False))
    scale = k if probe == "sphere" else 1
    return _finish(module, total * (scale / n_probes), n, f, return_output)


@torch.compiler.disable
def igr_full_batch(module, x, y, loss, *, return_output=False):
    """``||grad_theta L_B||^2`` with ``L_B = (1/n) sum_n l_n`` the batch's MEAN loss, with its graph.

    Parameters
    ----------
    module : torch.nn.Module
    x : torch.Tensor, shape (n, *input_shape)
    y : torch.Tensor
        Targets for ``loss`` (see :func:`native_targets`).
    loss : str or gcref.losses.Loss
    return_output : bool

    Returns
    -------
    torch.Tensor, shape ()
        Or ``(penalty, f)``.

    Notes
    -----
    docs/math.md section 5: the term of full-batch gradient descent's modified loss
    ``L + (h/4) ||grad L||^2``. One backward pass with ``create_graph`` (double backward);
    its gradient is ``2 H grad L``. Batch statistics need no special care: ``L_B`` is a
    function of the batch. Under DDP, ``grad L_B`` is that of the union of the shards.
    """
    loss = get_loss(loss)
    _start(module, x, "independent")
    params = _trainable(module)
    f = _forward(module, x)
    n, k = f.shape
    losses = loss.per_example(f, native_targets(loss, y, n, k, f))
    grads = torch.autograd.grad(losses.sum(), params, create_graph=True, allow_unused=True)
    flat = torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]
    )
    flat = compute_dtype(flat)
    count = torch.tensor(float(n), dtype=flat.dtype, device=flat.device)
    if _distributed(module):
        flat, count = _all_reduce(flat), _all_reduce(count.detach())
    mean_grad = flat / count
    penalty = mean_grad.square().sum()
    return (penalty, f) if return_output else penalty


@torch.compiler.disable
def igr_per_example(
    module, x, y, loss, *, examples="auto", norm_method="auto", return_output=False
):
    """``(1/n) sum_n ||grad_theta l_n||^2`` over the batch, with its graph.

    Parameters
    ----------
    module : torch.nn.Module
    x : torch.Tensor, shape (n, *input_shape)
    y : torch.Tensor
    loss : str or gcref.losses.Loss
    examples : {"auto", "independent", "coupled"}
    norm_method : {"auto", "gram", "gradient", "vmap"}
        As in :class:`gcref.backends.torch_model.TorchModel`; ``"vmap"`` forces the
        batched backward passes of the fallback.
    return_output : bool

    Returns
    -------
    torch.Tensor, shape ()
        Or ``(penalty, f)``.

    Notes
    -----
    docs/math.md sections 1 and 5 (seed 000, eq. 6): the term of batch-size-1 SGD's
    modified loss. Independent examples whose parameters all sit in layers with a norm
    rule (:mod:`gcref.backends.torch_layers`: Linear, Conv1d/2d, eval-mode BatchNorm, or
    rules you register) use the norm identities: one recorded forward pass keeping the
    graph and one backward pass with ``create_graph`` to the layer outputs, no
    per-example gradient formed; the identities are torch operations, so the penalty is
    differentiable. Otherwise (a layer without a rule, a layer called twice, coupled
    examples) the per-example gradients are taken by one backward pass batched over the
    n one-hot cotangents of the per-example losses (``is_grads_batched``, with
    ``create_graph``), which is exact with the batch statistics as they are.
    """
    loss = get_loss(loss)
    if norm_method not in NORM_METHODS:
        raise ValueError(f"unknown norm_method {norm_method!r}; expected one of {NORM_METHODS}")
    examples = _start(module, x, examples)
    trainable = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("module has no parameter that requires grad: the IGR penalty needs one")
    params = [p for _, p in trainable]
    layers = None
    if examples == "independent" and norm_method != "vmap":
        layers = rule_layers(module, trainable)
    recorder = None
    if layers is not None:
        f, recorder = record_forward(
            lambda inputs: _forward(module, inputs), x, layers, norm_method, keep_graph=True
        )
    if recorder is None:
        f = _forward(module, x)
    n, k = f.shape
    losses = loss.per_example(f, native_targets(loss, y, n, k, f))
    if recorder is not None:
        norms = recorder.sq_norms(losses.sum(), None, retain=True, create_graph=True)
        total = torch.stack(list(norms.values())).sum() if norms else 0 * losses.sum()
    else:
        eye = torch.eye(n, dtype=losses.dtype, device=losses.device)
        grads = torch.autograd.grad(
            losses, params, eye, is_grads_batched=True, create_graph=True, allow_unused=True
        )
        total = sum((_sq_sum(g) for g in grads if g is not None), 0 * losses.sum())
    return _finish(module, total, n, f, return_output)


# -- targets -------------------------------------------------------------------------------


def native_targets(loss, y, n, k, like):
    """``y`` as the ``(n, k)`` float targets of ``loss``, in torch, on ``like``'s device and dtype.

    Parameters
    ----------
    loss : gcref.losses.Loss
    y : torch.Tensor
        Squared loss: ``(n, k)``, or ``(n,)`` when ``k = 1``. Logistic: ``(n,)`` or
        ``(n, 1)`` of 0/1 labels. Softmax cross-entropy: integer class indices ``(n,)``
        or float rows ``(n, k)``. A loss of your own: float ``(n, k)``.
    n, k : int
    like : torch.Tensor

    Notes
    -----
    Shapes and dtypes are checked; label values are not (that would synchronise a GPU
    at every step): :func:`torch.nn.functional.one_hot` refuses class indices out of
    range, the other losses take the values as given.
    """
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor; got {type(y).__name__}")
    if y.shape[:1] != (n,):
        raise ValueError(f"y must have {n} rows, one per example of x; got shape {tuple(y.shape)}")
    name = loss.name
    if name == "softmax_cross_entropy" and y.ndim == 1:
        if y.is_floating_point() or y.is_complex():
            raise TypeError(f"y: class indices must have an integer dtype; got {y.dtype}")
        y = torch.nn.functional.one_hot(y.to(device=like.device), k)
    elif y.ndim == 1 and (k == 1 or name == "logistic"):
        y = y[:, None]
    elif name == "logistic" and y.shape == (n, 1):
        pass
    if tuple(y.shape) != (n, k):
        raise ValueError(
            f"y must have shape ({n}, {k}) for the {name or 'given'} loss; got {tuple(y.shape)}"
        )
    return y.to(device=like.device, dtype=like.dtype)


# -- shared pieces -------------------------------------------------------------------------


def _start(module, x, examples):
    """Check the arguments; ``"independent"`` or ``"coupled"``."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"x must be a torch.Tensor of shape (n, *input_shape); got {type(x).__name__}"
        )
    if not x.is_floating_point():
        raise TypeError(f"x must have a floating dtype; got {x.dtype}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(
            f"x must hold at least one example, shape (n, *input_shape); got {tuple(x.shape)}"
        )
    if examples not in EXAMPLES:
        raise ValueError(f"unknown examples {examples!r}; expected one of {EXAMPLES}")
    _refuse_compiled(module)
    if examples == "auto":
        examples = "coupled" if uses_batch_statistics(module) else "independent"
    return examples


def _refuse_compiled(module):
    """A clear error for a compiled module, whose graphs cannot be differentiated twice.

    Measured with torch 2.13: every penalty of a compiled module, and every penalty traced
    inside a compiled function, fails at ``backward()`` with "torch.compile with
    aot_autograd does not currently support double backward" (and the per-example
    penalty traced inside a compiled function returned 0). The public penalties are
    therefore ``torch.compiler.disable``-d: inside a compiled function they run eagerly.
    """
    # torch.compile(module) wraps it with the original as submodule "_orig_mod";
    # module.compile() sets "_compiled_call_impl" (dictionary look-ups: no __getattr__).
    compiled = torch.compiler.is_compiling() or any(
        "_orig_mod" in m._modules or m.__dict__.get("_compiled_call_impl") is not None
        for m in module.modules()
    )
    if compiled:
        raise RuntimeError(
            "gcref.penalties cannot run under torch.compile: each penalty differentiates the "
            "forward pass twice (create_graph), and torch.compile's aot_autograd does not "
            "support double backward. Call the penalty outside compiled code, on the "
            "uncompiled module"
        )


def uses_batch_statistics(module):
    """Whether a BatchNorm of ``module`` normalises with the batch's statistics (couples examples)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return any(
        isinstance(m, _BatchNorm)
        and (m.training or m.running_mean is None or m.running_var is None)
        for m in module.modules()
    )


def _trainable(module):
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("module has no parameter that requires grad: the penalty needs one")
    return params


def _forward(module, x):
    """``module(x)`` as ``(n, k)``; a clear error for another output."""
    with torch.enable_grad():
        out = module(x)
    if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"module must return one tensor of shape (n, ...) for n = {x.shape[0]}; got {shape}"
        )
    return out.reshape(x.shape[0], -1)


def _input_grad(f, x, cotangent, *, batched):
    (g,) = torch.autograd.grad(
        f, x, cotangent, retain_graph=True, create_graph=True, is_grads_batched=batched
    )
    return g


def _own_rows(g, n, m, outer=False):
    """Each example's own rows of a batched input gradient.

    ``g`` of shape ``(n m, n, ...)`` (cotangent index first): ``(n, m)`` order when not
    ``outer``, ``(m, n)`` order when ``outer``; returns the rows ``[cotangent (j, i), i]``.
    """
    g = g.reshape(m, n, n, -1) if outer else g.reshape(n, m, n, -1)
    idx = torch.arange(n, device=g.device)
    return g[:, idx, idx] if outer else g[idx, :, idx]


def _sq_sum(t):
    return compute_dtype(t).square().sum()


def _finish(module, total, n, f, return_output):
    """``total / n`` (over the union of the shards under DDP), with or without ``f``."""
    total = compute_dtype(total if isinstance(total, torch.Tensor) else torch.as_tensor(total))
    total = total.to(compute_dtype(f).dtype)
    count = torch.tensor(float(n), dtype=total.dtype, device=total.device)
    if _distributed(module):
        total, count = _all_reduce(total), _all_reduce(count)
    penalty = total / count
    return (penalty, f) if return_output else penalty


def _distributed(module):
    dist = torch.distributed
    return (
        dist.is_available()
        and dist.is_initialized()
        and isinstance(module, torch.nn.parallel.DistributedDataParallel)
    )


def _all_reduce(t):
    """All-reduce sum across processes, differentiable: its backward all-reduces the cotangents.

    ``d/dx_r sum_s P_s(sum_q x_q) = sum_s dP_s/dy``: each process's cotangent of the sum
    is the sum of every process's cotangent (``torch.distributed.nn.functional.all_reduce``
    does the same and is deprecated).
    """
    return _all_reduce_function().apply(t)


_ALL_REDUCE = []


def _all_reduce_function():
    if not _ALL_REDUCE:

        class AllReduceSum(torch.autograd.Function):
            @staticmethod
            def forward(ctx, tensor):
                out = tensor.clone(memory_format=torch.contiguous_format)
                torch.distributed.all_reduce(out)
                return out

            @staticmethod
            def backward(ctx, grad):
                return AllReduceSum.apply(grad)

        _ALL_REDUCE.append(AllReduceSum)
    return _ALL_REDUCE[0]
