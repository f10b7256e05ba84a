"""The ``torch`` backend: derivatives by ``torch.autograd``.

float64 needs no global setting: tensors keep the dtype of the NumPy arrays they come from.
Every VJP is taken with ``create_graph=True`` when gradients are enabled, so quantities
built on the primitives (the input Jacobian in geometric complexity, say) can themselves
be differentiated with respect to parameters that require gradients; wrap a call in
``torch.no_grad()`` to skip that graph.
"""

from __future__ import annotations

import contextlib

import numpy as np

from gcref.backends._autodiff import AutodiffBackend
from gcref.backends._base import ModelAdapter


def _differentiable_leaf(x):
    # A tensor that already requires grad is kept as it is, so that an outer
    # differentiation (of ||grad L||^2, say) still sees its dependence on x; detaching
    # it would turn that outer gradient into a silent zero.
    return x if x.requires_grad else x.detach().requires_grad_(True)


class TorchBackend(AutodiffBackend):
    """MLP primitives through ``torch.autograd.grad`` (double backward for Hessian-vector products)."""

    name = "torch"

    def __init__(self, device="cpu"):
        import torch

        self._torch = torch
        self.xp = torch
        self.device = torch.device(device)

    def asarray(self, x):
        return self._torch.as_tensor(np.asarray(x), device=self.device)

    def to_numpy(self, x):
        return x.detach().cpu().numpy()

    def sum_rows(self, x):
        return x.sum(dim=-1)

    def logsumexp_rows(self, x):
        return self._torch.logsumexp(x, dim=-1)

    def stack(self, arrays, axis):
        return self._torch.stack(list(arrays), dim=axis)

    def _dtype(self, X):
        return np.dtype(str(X.dtype).removeprefix("torch."))

    def _grad(self, out, inputs, **kwargs):
        grads = self._torch.autograd.grad(out, inputs, allow_unused=True, **kwargs)
        return tuple(
            self._torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)
        )

    def vjp(self, fn, inputs, cotangent):
        differentiable = self._torch.is_grad_enabled()
        inputs = [_differentiable_leaf(x) for x in inputs]
        with self._torch.enable_grad():
            out = fn(*inputs)
            return self._grad(out, inputs, grad_outputs=cotangent, create_graph=differentiable)

    def hvp(self, fn, inputs, tangents):
        inputs = [_differentiable_leaf(x) for x in inputs]
        with self._torch.enable_grad():
            grads = self._grad(fn(*inputs), inputs, create_graph=True)
            directional = sum((g * t).sum() for g, t in zip(grads, tangents))
            if not directional.requires_grad:
                return tuple(self._torch.zeros_like(x) for x in inputs)
            return self._grad(directional, inputs)


NORM_METHODS = ("auto", "gram", "gradient", "vmap")

#: Forward mode pushes at most this many (example, tangent) pairs through one vmapped
#: Jacobian-vector product (or one chunk's examples, if more): the memory of a forward
#: pass over that many examples.
_FORWARD_PAIRS = 256


class TorchModel(ModelAdapter):
    """A ``torch.nn.Module`` as a :class:`~gcref.backends._base.ModelAdapter`.

    Parameters
    ----------
    module : torch.nn.Module
        Called on a batch ``X`` of shape ``(n, *input_shape)``; returns ``(n, k)`` (any
        output of shape ``(n, ...)`` is flattened to ``(n, k)``).
    norm_method : {"auto", "gram", "gradient", "vmap"}
        How per-example squared gradient norms are taken (see Notes); ``"gram"`` and
        ``"gradient"`` force one form on every convolution and every linear layer with
        extra dimensions, ``"vmap"`` forces the fallback. Every method gives the same
        numbers up to rounding: the choice is one of speed.

    Notes
    -----
    **theta** is the list of the module's parameters that require grad, in
    ``module.parameters()`` order; :meth:`parameter_vector`, :meth:`loss_grad_sum` and
    :meth:`loss_hvp_sum` flatten them in that order (each tensor row-major).

    **Inference mode.** Each call switches the module to ``eval()`` and restores every
    submodule's ``training`` flag afterwards, so BatchNorm uses its running statistics
    and dropout is off: every example is computed independently of the others.

    **Inputs** are converted to tensors on the device and in the dtype of the module's
    parameters (float32 unless the module is float64 or bf16); sums of squares are taken
    in float64 whatever that dtype. Measured against float64 (32 random 3x16x16
    inputs): float32 agrees to 2e-7 per example; bf16 (inputs rounded to bf16 too) to
    8% per example and 0.2% on the mean for GC of a ResNet-18 of width 8, and to 3% / 0.2%
    for the loss-gradient norms.

    **Input Jacobians** (MATH.md section 2) are taken on the module called through
    ``torch.func.functional_call`` with its parameters detached, so no weight gradient is
    ever computed: reverse mode is one forward pass and k input-only vector-Jacobian
    products, forward mode d Jacobian-vector products.

    **Per-example squared gradient norms** (MATH.md section 1, last identity) use, when
    every module that holds trainable parameters directly is an ``nn.Linear``, an
    ``nn.Conv1d``/``nn.Conv2d`` (``groups=1``, zero padding given as numbers or
    ``"valid"``) or an ``nn.BatchNorm1d/2d/3d`` with running statistics, each called once
    per forward pass and sharing no parameter: one forward pass records each layer's
    input ``a`` and output, one backward pass per cotangent (to the layer outputs only,
    so again no weight gradient) gives ``g``, the gradient of ``sum_n f_o(x_n)`` (one
    pass per output o) or of ``sum_n l_n`` (one pass) with respect to the layer's output,
    and per layer and example

    - linear, ``a`` of shape ``(n, d_in)``: ``||g||^2 ||a||^2`` for the weight and
      ``||g||^2`` for the bias; with extra dimensions ``(n, T, d_in)``, as for a
      convolution below with ``U = A^T``;
    - convolution: with the unfolded input patches ``U`` of shape ``(n, C kh kw, T)`` and
      ``G`` of shape ``(n, C_out, T)`` over the T output positions, either the Gram form
      ``sum_{t,t'} (G^T G)_{tt'} (U^T U)_{tt'}`` (cost ``~ n T^2 (C_out + C kh kw)``) or
      the squared norm of the per-example gradient ``G U^T`` (cost ``~ n T C_out C kh kw``),
      whichever is cheaper for that layer; the bias ``||sum_t G_t||^2``;
    - BatchNorm: ``||sum g x_hat||^2`` for the weight, with ``x_hat`` normalised by the
      running statistics and the sum over every dimension but the example and the
      channel, and ``||sum g||^2`` for the bias.

    The per-example gradients ``G U^T`` of a convolution are the weight gradient of one
    convolution grouped by example (``torch.nn.grad.conv2d_weight``), with no unfolded
    copy of the input; ``U`` is unfolded for the Gram form only. A layer output that a
    later in-place operation overwrites (an in-place ReLU) is detected and the forward
    pass repeated with that output copied.

    Any other module holding trainable parameters (or a layer called twice, a shared
    parameter) sends the whole model to the fallback: ``torch.func.vmap`` of the
    per-example gradient (or Jacobian) of the module called on one example.
    """

    def __init__(self, module, *, norm_method="auto"):
        import torch

        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
        if norm_method not in NORM_METHODS:
            raise ValueError(f"unknown norm_method {norm_method!r}; expected one of {NORM_METHODS}")
        self._torch = torch
        self.module = module
        self.norm_method = norm_method
        self._ops = TorchBackend()

    # -- placement, inputs, calls ----------------------------------------------------------

    def _placement(self):
        """The device and dtype inputs are converted to: those of the first floating parameter."""
        torch = self._torch
        for t in list(self.module.parameters()) + list(self.module.buffers()):
            if t.is_floating_point():
                return t.device, t.dtype
        return torch.device("cpu"), torch.get_default_dtype()

    def _trainable(self):
        """``[(name, parameter)]`` of theta, in ``module.parameters()`` order."""
        named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(
                "the module has no parameter that requires grad: gradients and Hessians with "
                "respect to theta need at least one"
            )
        return named

    def _input(self, X):
        torch = self._torch
        if isinstance(X, torch.Tensor):
            if not X.is_floating_point():
                raise TypeError(f"X must have a floating dtype; got {X.dtype}")
            X = X.detach()
        else:
            array = np.asarray(X)
            if array.dtype.kind != "f":
                raise TypeError(
                    f"X must have a floating dtype; got {array.dtype}. "
                    "Convert it with X.astype(numpy.float32)"
                )
            X = torch.as_tensor(array)
        device, dtype = self._placement()
        X = X.to(device=device, dtype=dtype)
        # The sum is finite for finite data unless it overflows: a scan 30x cheaper than
        # the element-wise one, which runs only when the sum is not finite.
        if not bool(torch.isfinite(X.sum())) and not bool(torch.isfinite(X).all()):
            raise ValueError(f"X contains NaN or infinite values (in the module's dtype {dtype})")
        return X

    def _targets(self, targets, like):
        return self._torch.as_tensor(np.asarray(targets), dtype=like.dtype, device=like.device)

    def _call(self, fn, X):
        """``fn(X)`` flattened to ``(n, k)``; an error of the module's own names X's shape."""
        torch = self._torch
        try:
            out = fn(X)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as err:
            raise ValueError(
                f"the module cannot be called on X with examples of shape {tuple(X.shape[1:])}: "
                f"{err}"
            ) from err
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"the module must return one tensor of shape (n, k); got {type(out).__name__}"
            )
        if out.ndim == 0 or out.shape[0] != X.shape[0]:
            raise ValueError(
                f"the module must return shape (n, k) for X of shape {tuple(X.shape)}; "
                f"got {tuple(out.shape)}"
            )
        return out.reshape(X.shape[0], -1)

    @contextlib.contextmanager
    def _inference(self):
        """``eval()`` inside, every submodule's training flag restored after."""
        flags = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        try:
            yield
        finally:
            for m, training in flags:
                m.training = training

    def _detached_function(self):
        """``x -> module(x)`` with parameters detached: derivatives reach the input only."""
        detached = {n: p.detach() for n, p in self.module.named_parameters()}
        return lambda x: self._torch.func.functional_call(self.module, detached, (x,))

    # -- input Jacobians -------------------------------------------------------------------

    def outputs(self, X):
        X = self._input(X)
        with self._inference(), self._torch.no_grad():
            return self._call(self.module, X).double().cpu().numpy()

    def _input_vjps(self, X, cotangents):
        """``||sum_o c_{n,o} df_o/dx_n||^2`` per example, for each ``(n, k)`` cotangent ``c``."""
        torch = self._torch
        X = self._input(X).requires_grad_(True)
        results = []
        with self._inference(), torch.enable_grad():
            f = self._call(self._detached_function(), X)
            cotangents = list(cotangents(f))
            for j, c in enumerate(cotangents):
                (g,) = torch.autograd.grad(
                    f, X, grad_outputs=c, retain_graph=j < len(cotangents) - 1, allow_unused=True
                )
                results.append(_row_sq_norms(g, X, torch))
        return results

    def jacobian_sq_norms(self, X, mode):
        if mode == "forward":
            return self._forward_jacobian_sq_norms(X)

        def basis(f):
            for o in range(f.shape[1]):
                c = self._torch.zeros_like(f)
                c[:, o] = 1
                yield c

        return self._torch.stack(self._input_vjps(X, basis)).sum(dim=0).cpu().numpy()

    def _forward_jacobian_sq_norms(self, X):
        """d Jacobian-vector products along the input basis, vmapped in blocks of tangents."""
        torch = self._torch
        X = self._input(X)
        n, d = X.shape[0], X[0].numel()
        fn = self._detached_function()
        block = max(1, _FORWARD_PAIRS // n)
        total = torch.zeros(n, dtype=torch.float64, device=X.device)

        def jvp(tangent):
            return torch.func.jvp(fn, (X,), (tangent,))[1]

        with self._inference():
            self._call(fn, X[:1])
            basis = torch.eye(d, dtype=X.dtype, device=X.device)
            for start in range(0, d, block):
                rows = basis[start : start + block]
                tangents = rows[:, None, :].expand(rows.shape[0], n, d).reshape(-1, *X.shape)
                jv = torch.func.vmap(jvp)(tangents)
                total += jv.reshape(rows.shape[0], n, -1).double().square().sum(dim=(0, 2))
        return total.cpu().numpy()

    def probe_sq_norms(self, X, probes):
        probes = np.asarray(probes)

        def cotangents(f):
            return (self._targets(probes[:, j, :], f) for j in range(probes.shape[1]))

        values = self._input_vjps(X, cotangents)
        return np.stack([v.cpu().numpy() for v in values], axis=1)

    # -- per-example parameter-gradient norms ----------------------------------------------

    @contextlib.contextmanager
    def _identity_pass(self, X):
        """Inference mode with one recorded forward pass: ``(X, trainable, f, recorded)``.

        ``recorded`` is ``None`` (and ``f`` may be) when the model needs the ``vmap``
        fallback instead of the norm identities.
        """
        X = self._input(X)
        trainable = self._trainable()
        with self._inference():
            layers = self._norm_layers(trainable)
            f, recorded = (None, None) if layers is None else self._recorded_forward(X, layers)
            yield X, trainable, f, recorded

    def output_grad_sq_norms(self, X):
        with self._identity_pass(X) as (X, trainable, f, recorded):
            if recorded is None:
                return self._vmap_output_sq_norms(X, trainable)
            total = 0
            for o in range(f.shape[1]):
                c = self._torch.zeros_like(f)
                c[:, o] = 1
                total = total + recorded.sq_norms(f, c, retain=o < f.shape[1] - 1)
            return total.cpu().numpy()

    def loss_grad_sq_norms(self, X, targets, loss):
        with self._identity_pass(X) as (X, trainable, f, recorded):
            if recorded is None:
                return self._vmap_loss_sq_norms(X, targets, loss, trainable)
            losses = loss.per_example(f, self._targets(targets, f), self._ops)
            sq = recorded.sq_norms(losses.sum(), None, retain=False)
            return losses.detach().double().cpu().numpy(), sq.cpu().numpy()

    def loss_grad_sum_and_sq_norms(self, X, targets, loss):
        # One backward pass gives the per-example norms (through the layer outputs) and
        # the summed gradient (through the parameters).
        with self._identity_pass(X) as (X, trainable, f, recorded):
            if recorded is not None:
                params = [p for _, p in trainable]
                total = loss.per_example(f, self._targets(targets, f), self._ops).sum()
                sq, grads = recorded.sq_norms(total, None, retain=False, params=params)
                return (
                    float(total.detach().double()),
                    _flat64(grads, params, self._torch),
                    sq.cpu().numpy(),
                )
        return super().loss_grad_sum_and_sq_norms(X, targets, loss)

    def vector_sq_norm(self, vector):
        return float(self._torch.dot(vector, vector))

    def _norm_layers(self, trainable):
        """The layers of the norm identities, or ``None`` when the model needs the fallback."""
        if self.norm_method == "vmap":
            return None
        torch = self._torch
        owners = {}
        for module in self.module.modules():
            for name, p in module.named_parameters(recurse=False):
                if p.requires_grad:
                    owners.setdefault(id(p), []).append((module, name))
        if any(len(o) > 1 for o in owners.values()):
            return None
        layers = {}
        for (module, name), in owners.values():
            kind = _layer_kind(module, torch)
            if kind is None or name not in ("weight", "bias"):
                return None
            layers[module] = kind
        return layers

    def _recorded_forward(self, X, layers):
        """One forward pass recording each layer's input and output; ``recorded`` is
        ``None`` when a layer ran other than once (the fallback is then needed)."""
        torch = self._torch
        for copy in (False, True):
            records = {m: [] for m in layers}

            def hook(module, inputs, output, copy=copy):
                a = inputs[0].detach()
                records[module].append(
                    (a.clone() if copy else a, a._version, output, output._version)
                )
                return output.clone() if copy else None

            handles = [m.register_forward_hook(hook) for m in layers]
            try:
                with torch.enable_grad():
                    f = self._call(self.module, X)
            finally:
                for h in handles:
                    h.remove()
            if any(len(r) != 1 for r in records.values()):
                return f, None
            entries = [(m, *records[m][0]) for m in layers]
            if all(a._version == va and out._version == vo for _, a, va, out, vo in entries):
                break
        recorded = _RecordedLayers(
            [(m, layers[m], a, out) for m, a, _, out, _ in entries], self.norm_method, torch
        )
        return f, recorded

    def _per_example_function(self, trainable):
        torch = self._torch

        def f_one(params, x):
            return torch.func.functional_call(self.module, params, (x.unsqueeze(0),)).reshape(-1)

        return f_one, {n: p.detach() for n, p in trainable}

    def _vmap_output_sq_norms(self, X, trainable):
        torch = self._torch
        f_one, params = self._per_example_function(trainable)
        self._call(self.module, X[:1])
        jac = torch.func.vmap(torch.func.jacrev(f_one), in_dims=(None, 0))(params, X)
        return _tree_sq_norms(jac, X.shape[0], torch).cpu().numpy()

    def _vmap_loss_sq_norms(self, X, targets, loss, trainable):
        torch = self._torch
        f_one, params = self._per_example_function(trainable)
        self._call(self.module, X[:1])
        T = self._targets(targets, X)

        def loss_one(params, x, t):
            return loss.per_example(f_one(params, x)[None], t[None], self._ops)[0]

        grads, losses = torch.func.vmap(torch.func.grad_and_value(loss_one), in_dims=(None, 0, 0))(
            params, X, T
        )
        return losses.double().cpu().numpy(), _tree_sq_norms(grads, X.shape[0], torch).cpu().numpy()

    # -- gradients and Hessian-vector products of the summed loss --------------------------

    def _summed_loss(self, X, targets, loss):
        f = self._call(self.module, X)
        return loss.per_example(f, self._targets(targets, f), self._ops).sum()

    def loss_grad_sum(self, X, targets, loss):
        torch = self._torch
        X = self._input(X)
        params = [p for _, p in self._trainable()]
        with self._inference(), torch.enable_grad():
            total = self._summed_loss(X, targets, loss)
            grads = torch.autograd.grad(total, params, allow_unused=True)
        return float(total.detach().double()), _flat64(grads, params, torch)

    def loss_hvp_sum(self, X, targets, loss, vector):
        torch = self._torch
        X = self._input(X)
        params = [p for _, p in self._trainable()]
        pieces = torch.split(vector, [p.numel() for p in params])
        with self._inference(), torch.enable_grad():
            total = self._summed_loss(X, targets, loss)
            grads = torch.autograd.grad(total, params, create_graph=True, allow_unused=True)
            directional = sum(
                (g * v.reshape(p.shape).to(g.dtype)).sum()
                for g, v, p in zip(grads, pieces, params)
                if g is not None
            )
            if not isinstance(directional, torch.Tensor) or not directional.requires_grad:
                return torch.zeros(vector.shape, dtype=torch.float64, device=vector.device)
            hv = torch.autograd.grad(directional, params, allow_unused=True)
        return _flat64(hv, params, torch).to(vector.device)

    # -- vectors and processes -------------------------------------------------------------

    def parameter_vector(self):
        params = [p for _, p in self._trainable()]
        return _flat64([p.detach() for p in params], params, self._torch).cpu().numpy()

    def to_native_vector(self, vector):
        device, _ = self._placement()
        return self._torch.as_tensor(
            np.asarray(vector, dtype=np.float64), dtype=self._torch.float64, device=device
        )

    def to_numpy(self, x):
        return x.detach().cpu().numpy() if isinstance(x, self._torch.Tensor) else np.asarray(x)

    def all_reduce_sum(self, x):
        torch = self._torch
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return x
        device = self._placement()[0] if dist.get_backend() == "nccl" else torch.device("cpu")
        if isinstance(x, torch.Tensor):
            t = x.detach().to(device=device, dtype=torch.float64).clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            return t.to(x.device)
        t = torch.as_tensor(np.asarray(x, dtype=np.float64), device=device).clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy()


class _RecordedLayers:
    """Layer inputs and outputs of one forward pass; per-example squared gradient norms
    of any scalar function of the output, one backward pass each (see :class:`TorchModel`)."""

    def __init__(self, entries, norm_method, torch):
        self._entries = entries
        self._norm_method = norm_method
        self._torch = torch
        self._cache = {}

    def sq_norms(self, f, cotangent, *, retain, params=()):
        """Per-example ``||d <cotangent, f> / d theta||^2`` as float64 ``(n,)``.

        ``cotangent`` is ``None`` for a scalar ``f`` (a sum of per-example losses). With
        ``params``, the same backward pass also returns ``d <cotangent, f> / d params``:
        ``(norms, grads)``.
        """
        torch = self._torch
        outputs = [out for _, _, _, out in self._entries]
        grads = torch.autograd.grad(
            f, outputs + list(params), grad_outputs=cotangent, retain_graph=retain,
            allow_unused=True,
        )
        n = outputs[0].shape[0]
        total = torch.zeros(n, dtype=torch.float64, device=outputs[0].device)
        for (module, kind, a, _), g in zip(self._entries, grads):
            if g is not None:
                total += getattr(self, "_" + kind)(module, a, _compute_dtype(g, torch))
        if params:
            return total, grads[len(outputs):]
        return total

    def _want(self, module, name):
        p = getattr(module, name, None)
        return p is not None and p.requires_grad

    def _form(self, T, c, c_out):
        """``"gram"`` or ``"gradient"`` for a weight of ``c_out x c`` used at T positions."""
        if self._norm_method != "auto":
            return self._norm_method
        return "gram" if T * (c + c_out) < c * c_out else "gradient"

    def _gram(self, module, U, G):
        """``sum_{t,t'} (G^T G)_{tt'} (U^T U)_{tt'}``; ``U^T U`` is kept for the next passes."""
        torch = self._torch
        if module not in self._cache:
            self._cache[module] = torch.bmm(U.transpose(1, 2), U)
        return (torch.bmm(G.transpose(1, 2), G) * self._cache[module]).sum(dim=(1, 2)).double()

    def _linear(self, module, a, g):
        torch = self._torch
        n = a.shape[0]
        a = _compute_dtype(a, torch)
        total = torch.zeros(n, dtype=torch.float64, device=g.device)
        if a.ndim == 2:
            g2 = g.square().sum(dim=1)
            if self._want(module, "weight"):
                total += (g2 * a.square().sum(dim=1)).double()
            if self._want(module, "bias"):
                total += g2.double()
            return total
        U = a.reshape(n, -1, a.shape[-1]).transpose(1, 2)
        G = g.reshape(n, -1, g.shape[-1]).transpose(1, 2)
        if self._want(module, "weight"):
            if self._form(U.shape[2], U.shape[1], G.shape[1]) == "gram":
                total += self._gram(module, U, G)
            else:
                total += torch.bmm(G, U.transpose(1, 2)).square().sum(dim=(1, 2)).double()
        if self._want(module, "bias"):
            total += G.sum(dim=2).square().sum(dim=1).double()
        return total

    def _conv(self, module, a, g):
        torch = self._torch
        n, c_out = g.shape[:2]
        a = _compute_dtype(a, torch)
        G = g.reshape(n, c_out, -1)
        total = torch.zeros(n, dtype=torch.float64, device=g.device)
        padding = module.padding
        if padding == "valid":
            padding = (0,) * len(module.kernel_size)
        if self._want(module, "weight"):
            c = module.weight[0].numel()
            if self._form(G.shape[2], c, c_out) == "gram":
                total += self._gram(module, self._unfolded(module, a, padding), G)
            else:
                # The per-example weight gradients are the weight gradient of one grouped
                # convolution with the examples as groups: no unfolded copy of the input.
                grad = torch.nn.grad
                weight_grad = (grad.conv1d_weight if a.ndim == 3 else grad.conv2d_weight)(
                    a.reshape(1, -1, *a.shape[2:]),
                    (n * c_out, *module.weight.shape[1:]),
                    g.reshape(1, -1, *g.shape[2:]),
                    stride=module.stride,
                    padding=padding,
                    dilation=module.dilation,
                    groups=n,
                )
                total += weight_grad.reshape(n, -1).square().sum(dim=1).double()
        if self._want(module, "bias"):
            total += G.sum(dim=2).square().sum(dim=1).double()
        return total

    def _unfolded(self, module, a, padding):
        """The input patches ``U``, shape ``(n, C kh kw, T)`` (a Conv1d as a Conv2d of height 1)."""
        kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
        if a.ndim == 3:
            a = a.unsqueeze(2)
            kernel, dilation, padding, stride = (
                (1, *kernel), (1, *dilation), (0, *padding), (1, *stride)
            )
        return self._torch.nn.functional.unfold(
            a, kernel, dilation=dilation, padding=padding, stride=stride
        )

    def _batchnorm(self, module, a, g):
        torch = self._torch
        a = _compute_dtype(a, torch)
        shape = (1, -1) + (1,) * (a.ndim - 2)
        dims = tuple(range(2, a.ndim))
        total = torch.zeros(a.shape[0], dtype=torch.float64, device=a.device)
        if self._want(module, "weight"):
            mean = module.running_mean.to(a.dtype).reshape(shape)
            var = module.running_var.to(a.dtype).reshape(shape)
            x_hat = (a - mean) * torch.rsqrt(var + module.eps)
            gw = (g * x_hat).sum(dim=dims) if dims else g * x_hat
            total += gw.square().sum(dim=1).double()
        if self._want(module, "bias"):
            gb = g.sum(dim=dims) if dims else g
            total += gb.square().sum(dim=1).double()
        return total


def _layer_kind(module, torch):
    """``"linear"``, ``"conv"`` or ``"batchnorm"`` for a layer of the norm identities, else None."""
    nn = torch.nn
    kind = type(module)
    if kind is nn.Linear:
        return "linear"
    if kind in (nn.Conv1d, nn.Conv2d):
        padding_ok = module.padding == "valid" or not isinstance(module.padding, str)
        if module.groups == 1 and module.padding_mode == "zeros" and padding_ok:
            return "conv"
        return None
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm):
        if module.running_mean is not None and module.running_var is not None:
            return "batchnorm"
    return None


def _compute_dtype(x, torch):
    """Half-precision values are multiplied in float32: their squared norms would round badly."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _row_sq_norms(g, X, torch):
    """Squared norm of each example's row of ``g`` (an input gradient), float64 ``(n,)``."""
    if g is None:
        return torch.zeros(X.shape[0], dtype=torch.float64, device=X.device)
    return _compute_dtype(g, torch).reshape(g.shape[0], -1).square().sum(dim=1, dtype=torch.float64)


def _tree_sq_norms(tree, n, torch):
    total = torch.zeros(n, dtype=torch.float64)
    for value in tree.values():
        total = total.to(value.device) + value.reshape(n, -1).double().square().sum(dim=1)
    return total


def _flat64(grads, params, torch):
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1).to(torch.float64)
            for g, p in zip(grads, params)
        ]
    )
