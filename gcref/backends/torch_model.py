"""Users' own ``torch.nn.Module`` models as a :class:`~gcref.backends._base.ModelAdapter`.

The MLP backend of the same framework is :mod:`gcref.backends.torch`; the per-layer rules of
the norm identities are in :mod:`gcref.backends.torch_layers`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref

import numpy as np

from gcref.backends.adapter import ModelAdapter
from gcref.backends.torch_layers import (
    NORM_METHODS,
    compiled_module_class,
    compute_dtype,
    record_forward,
    rule_layers,
)


#: Forward mode pushes at most this many (example, tangent) pairs through one vmapped
#: Jacobian-vector product (or one chunk's examples, if more): the memory of a forward
#: pass over that many examples.
_FORWARD_PAIRS = 256


#: Input shapes each module has been checked for batch statistics with (see
#: :func:`gcref.models._checked`); weak, so that a module is not kept alive by it.
_CHECKED_SHAPES = weakref.WeakKeyDictionary()
#: k, the number of outputs, per module and (input shape, dtype): learnt from one example
#: once, not on every measure call (checked against the output of each chunk's pass).
_OUTPUT_DIMS = weakref.WeakKeyDictionary()


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

    **Input Jacobians** (docs/math.md section 2) are taken on the module called through
    ``torch.func.functional_call`` with its parameters detached, so no weight gradient is
    ever computed: reverse mode is one forward pass and k input-only vector-Jacobian
    products, forward mode d Jacobian-vector products.

    **Per-example squared gradient norms** (docs/math.md section 1, last identity) use, when
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

    **Compiled modules.** ``torch.compile(module)`` is measured as ``module`` itself, run
    eagerly (same function, parameters and parameter names): through the compiled wrapper,
    exact GC and the HVP failed inside torch and the per-example norms came out wrong. A
    ``torch.compile``'d submodule is called compiled, and sends the per-example norms to
    the fallback. ``module.compile()`` (compiled in place) is called as it is.
    """

    def __init__(self, module, *, norm_method="auto"):
        import torch

        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
        if norm_method not in NORM_METHODS:
            raise ValueError(f"unknown norm_method {norm_method!r}; expected one of {NORM_METHODS}")
        self._torch = torch
        # A torch.compile'd module is measured as the module it compiles (eager): its
        # compiled backward refuses the second passes of exact GC and the HVP, and the
        # norm identities' forward hooks are not honoured inside the compiled graph (the
        # norms came out wrong). The function, its parameters and their names are the
        # original module's.
        compiled = compiled_module_class()
        while compiled is not None and isinstance(module, compiled):
            module = module._orig_mod
        self.module = module
        self.norm_method = norm_method
        self._cache = None  # what a session found once: see session()
        self._depth = 0

    def __repr__(self):
        return f"TorchModel({type(self.module).__name__}, norm_method={self.norm_method!r})"

    # -- placement, inputs, calls ----------------------------------------------------------

    def independence_cache(self):
        return _CHECKED_SHAPES.setdefault(self.module, set())

    def output_dim(self, X):
        # Keyed by the parameters' names and shapes too: a replaced head changes k.
        dims = _OUTPUT_DIMS.setdefault(self.module, {})
        shapes = self._cached(
            "shapes", lambda: tuple((name, tuple(p.shape)) for name, p in self._tree().parameters)
        )
        key = (tuple(X.shape[1:]), X.dtype, shapes)
        if key not in dims:
            dims[key] = super().output_dim(X)
        return dims[key]

    def rounding_tolerance(self):
        from gcref.tolerances import tolerance

        dtype = self._placement()[1]
        if dtype in (self._torch.float32, self._torch.float64):
            return tolerance(np.float64 if dtype == self._torch.float64 else np.float32)
        return 2e-2, 1e-2  # half precision: about 3 significant digits

    @contextlib.contextmanager
    def session(self):
        """One measure call: inference mode, placement and theta found once, not per chunk.

        Inside, each chunk's primitives skip the mode switch (one ``eval()`` and one
        restore of every submodule's ``training`` flag per call), the scan of parameters
        and buffers for the device and dtype, the list of trainable parameters and the
        detached copy of the parameters. Re-entrant; the module must not change inside.
        """
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        tree = _ModuleTree(self.module)
        self._refuse_batch_statistics(tree)
        with _eval_mode(self.module, tree.modules):
            self._cache = {"tree": tree}
            self._depth = 1
            try:
                yield self
            finally:
                self._depth = 0
                self._cache = None

    def _tree(self):
        """The module's submodules, parameters and buffers, walked once per session."""
        return self._cached("tree", lambda: _ModuleTree(self.module))

    def _cached(self, key, compute):
        if self._cache is None:
            return compute()
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def check_batch(self, X, name):
        if self._cache is None:
            self._refuse_batch_statistics()
        return X

    def check_input_derivatives(self, X, name):
        dtype = X.dtype if isinstance(X, self._torch.Tensor) else np.asarray(X).dtype
        floating = dtype.is_floating_point if isinstance(dtype, self._torch.dtype) else (
            np.dtype(dtype).kind == "f"
        )
        if not floating:
            raise TypeError(
                f"{name}: X must have a floating dtype for derivatives with respect to the "
                f"input; got {dtype}. For token ids (an nn.Embedding), measure at the "
                "embedding's output: write the model as head(embedding(x)) and pass "
                "embedding(X).detach() to the measure of head; for numbers, convert them "
                "with X.float()"
            )

    def _refuse_batch_statistics(self, tree=None):
        """Refuse layers that normalise by batch statistics even in inference mode."""
        for m_name, m in (tree or self._tree()).named_modules:
            if isinstance(m, self._torch.nn.modules.batchnorm._BatchNorm) and (
                m.running_mean is None or m.running_var is None
            ):
                raise ValueError(
                    f"module {m_name or type(self.module).__name__!r} is a "
                    f"{type(m).__name__} without running statistics "
                    "(track_running_stats=False): it normalises every batch by its own "
                    "statistics, so no example has a Jacobian or gradient of its own. Build it "
                    "with track_running_stats=True (and train it), or replace it by a "
                    "per-example normalisation (nn.GroupNorm, nn.LayerNorm)"
                )

    def _placement(self):
        """The device and dtype inputs are converted to: those of the first floating parameter."""
        return self._cached("placement", self._find_placement)

    def _find_placement(self):
        torch = self._torch
        tree = self._tree()
        for t in [p for _, p in tree.parameters] + tree.buffers:
            if t.is_floating_point():
                return t.device, t.dtype
        return torch.device("cpu"), torch.get_default_dtype()

    def _trainable(self):
        """``[(name, parameter)]`` of theta, in ``module.parameters()`` order."""
        return self._cached("trainable", self._find_trainable)

    def _find_trainable(self):
        named = [(n, p) for n, p in self._tree().parameters if p.requires_grad]
        if not named:
            raise ValueError(
                "the module has no parameter that requires grad: gradients and Hessians with "
                "respect to theta need at least one"
            )
        return named

    def _input(self, X, *, differentiate=False):
        """``X`` as a tensor on the model's device: floats in the model's dtype, finite.

        Integer inputs (token ids for an ``nn.Embedding``) are kept as they are for every
        primitive that does not differentiate with respect to the input (``differentiate``).
        """
        torch = self._torch
        if not isinstance(X, torch.Tensor):
            array = np.asarray(X)
            if array.dtype.kind not in "fiu":
                raise TypeError(
                    f"X must have a floating dtype (or an integer one, for token ids); got "
                    f"{array.dtype}. Convert it with X.astype(numpy.float32)"
                )
            X = torch.as_tensor(array)
        X = X.detach()
        device, dtype = self._placement()
        if not X.is_floating_point():
            if differentiate:
                self.check_input_derivatives(X, "data")
            if X.dtype == torch.bool or X.is_complex():
                raise TypeError(f"X must have a floating or integer dtype; got {X.dtype}")
            return X.to(device=device)
        X = X.to(device=device, dtype=dtype)
        if not _all_finite(X, torch):
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
        """``eval()`` inside, every submodule's training flag restored after (once per
        session when there is one)."""
        if self._depth:
            yield
            return
        with _eval_mode(self.module):
            yield

    def _detached_function(self):
        """``x -> module(x)`` with parameters detached: derivatives reach the input only."""
        detached = self._cached(
            "detached", lambda: {n: p.detach() for n, p in self._tree().parameters}
        )
        return lambda x: self._torch.func.functional_call(self.module, detached, (x,))

    # -- input Jacobians -------------------------------------------------------------------

    def outputs(self, X):
        X = self._input(X)
        with self._inference(), self._torch.no_grad():
            return self._call(self.module, X).double().cpu().numpy()

    def _input_vjps(self, X, cotangents):
        """``||sum_o c_{n,o} df_o/dx_n||^2`` per example, for each ``(n, k)`` cotangent ``c``."""
        torch = self._torch
        X = self._input(X, differentiate=True).requires_grad_(True)
        results = []
        with self._inference(), torch.enable_grad():
            # The module itself, not a detached copy: a backward pass to X alone computes
            # no weight gradient either way, and functional_call costs a parameter swap
            # per chunk (measured: 5% of a 1-probe estimate of a small MLP).
            f = self._call(self.module, X)
            cotangents = list(cotangents(f))
            for j, c in enumerate(cotangents):
                if c.shape != f.shape:
                    _OUTPUT_DIMS.pop(self.module, None)
                    raise ValueError(
                        f"the module returned outputs of shape {tuple(f.shape)} where "
                        f"{tuple(c.shape)} was expected: did it change between measure calls? "
                        "Call the measure again"
                    )
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
        X = self._input(X, differentiate=True)
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

    def parameter_names(self):
        return tuple(name for name, _ in self._trainable())

    @contextlib.contextmanager
    def _identity_pass(self, X):
        """Inference mode with one recorded forward pass: ``(X, trainable, f, recorder)``.

        ``recorder`` is ``None`` (and ``f`` may be) when the model needs the ``vmap``
        fallback instead of the norm identities.
        """
        X = self._input(X)
        trainable = self._trainable()
        with self._inference():
            layers = None if self.norm_method == "vmap" else rule_layers(self.module, trainable)
            if layers is None:
                yield X, trainable, None, None
            else:
                f, recorder = record_forward(
                    lambda x: self._call(self.module, x), X, layers, self.norm_method
                )
                yield X, trainable, f, recorder

    def _columns(self, norms, trainable, n, device):
        """``{id(p): (n,)}`` as float64 ``(n, T)`` in theta's order (zero where unused)."""
        torch = self._torch
        zero = torch.zeros(n, dtype=torch.float64, device=device)
        return torch.stack([norms.get(id(p), zero) for _, p in trainable], dim=1)

    def output_grad_sq_norms(self, X):
        with self._identity_pass(X) as (X, trainable, f, recorder):
            if recorder is None:
                return self._vmap_output_sq_norms(X, trainable)
            total = 0
            for o in range(f.shape[1]):
                c = self._torch.zeros_like(f)
                c[:, o] = 1
                norms = recorder.sq_norms(f, c, retain=o < f.shape[1] - 1)
                total = total + self._columns(norms, trainable, X.shape[0], f.device)
            return total.cpu().numpy()

    def loss_grad_sq_norms(self, X, targets, loss):
        with self._identity_pass(X) as (X, trainable, f, recorder):
            if recorder is None:
                return self._vmap_loss_sq_norms(X, targets, loss, trainable)
            losses = loss.per_example(f, self._targets(targets, f))
            norms = recorder.sq_norms(losses.sum(), None, retain=False)
            sq = self._columns(norms, trainable, X.shape[0], f.device)
            return losses.detach().double().cpu().numpy(), sq.cpu().numpy()

    def loss_grad_sum_and_sq_norms(self, X, targets, loss):
        # One backward pass gives the per-example norms (through the layer outputs) and
        # the summed gradient (through the parameters).
        with self._identity_pass(X) as (X, trainable, f, recorder):
            if recorder is not None:
                params = [p for _, p in trainable]
                total = loss.per_example(f, self._targets(targets, f)).sum()
                norms, grads = recorder.sq_norms(total, None, retain=False, params=params)
                return (
                    float(total.detach().double()),
                    _flat64(grads, params, self._torch),
                    self._columns(norms, trainable, X.shape[0], f.device).cpu().numpy(),
                )
        return super().loss_grad_sum_and_sq_norms(X, targets, loss)

    def per_example_penalty_grad_sum(self, X, targets, loss):
        """``sum_n H_n grad_theta l_n``, half the gradient of ``sum_n ||grad_theta l_n||^2``.

        The norm identities are differentiable: one recorded forward pass keeping the
        graph, one backward pass with ``create_graph`` to the layer outputs, and one more
        through the sum of the norms to the parameters. The fallback differentiates the
        ``vmap``-ped per-example gradients.
        """
        torch = self._torch
        X = self._input(X)
        trainable = self._trainable()
        params = [p for _, p in trainable]
        with self._inference(), torch.enable_grad():
            layers = None if self.norm_method == "vmap" else rule_layers(self.module, trainable)
            if layers is not None:
                f, recorder = record_forward(
                    lambda x: self._call(self.module, x), X, layers, self.norm_method,
                    keep_graph=True,
                )
            if layers is None or recorder is None:
                penalty = self._vmap_penalty(X, targets, loss, trainable)
            else:
                total = loss.per_example(f, self._targets(targets, f)).sum()
                norms = recorder.sq_norms(total, None, retain=True, create_graph=True)
                penalty = sum(norms.values())
                penalty = penalty.sum() if isinstance(penalty, torch.Tensor) else None
            if penalty is None or not penalty.requires_grad:
                return torch.zeros(
                    sum(p.numel() for p in params), dtype=torch.float64, device=X.device
                )
            grads = torch.autograd.grad(penalty, params, allow_unused=True)
        return 0.5 * _flat64(grads, params, torch)

    def _vmap_penalty(self, X, targets, loss, trainable):
        """``sum_n ||grad_theta l_n||^2`` through ``vmap(grad)``, differentiable in theta."""
        torch = self._torch
        f_one = self._per_example_function()
        params = {n: p for n, p in trainable}
        self._call(self.module, X[:1])
        T = self._targets(targets, X)

        def loss_one(params, x, t):
            return loss.per_example(f_one(params, x)[None], t[None])[0]

        def vmapped():
            grads = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(params, X, T)
            return sum(g.double().square().sum() for g in grads.values())

        def looped():
            rows = self._looped_grads(
                X, lambda f, n: [loss.per_example(f, T[n : n + 1])[0]], trainable, create_graph=True
            )
            return sum(g.double().square().sum() for row in rows for grads in row for g in grads)

        return self._vmap_or_loop(vmapped, looped)

    def _vmap_or_loop(self, vmapped, looped):
        """``vmapped()``, or ``looped()`` when ``torch.func.vmap`` cannot run the model.

        Recurrent layers (``nn.RNN``, ``nn.GRU``) and some other kernels have no batching
        rule; a loop over the chunk's examples is slower but exact.
        """
        torch = self._torch
        try:
            return vmapped()
        except RuntimeError as err:
            if isinstance(err, torch.OutOfMemoryError):
                raise
            warnings.warn(
                f"torch.func.vmap cannot run {type(self.module).__name__} ({err}); per-example "
                "gradients are taken by a loop over the examples of each chunk (exact, slower)",
                RuntimeWarning,
                stacklevel=4,
            )
            return looped()

    def _looped_grads(self, X, scalars, trainable, create_graph=False):
        """Per example ``n``: the gradients of each of ``scalars(f_n, n)`` with respect to theta.

        ``f_n`` is the model's output on example n alone, shape ``(1, k)``. Returns a list
        (over examples) of lists (over scalars) of gradient tuples (over theta's tensors).
        """
        torch = self._torch
        params = [p for _, p in trainable]
        rows = []
        with torch.enable_grad():
            for n in range(X.shape[0]):
                values = scalars(self._call(self.module, X[n : n + 1]), n)
                grads = []
                for j, value in enumerate(values):
                    g = torch.autograd.grad(
                        value, params, retain_graph=create_graph or j < len(values) - 1,
                        create_graph=create_graph, allow_unused=True,
                    )
                    grads.append(tuple(torch.zeros_like(p) if a is None else a for a, p in zip(g, params)))
                rows.append(grads)
        return rows

    def _looped_columns(self, rows, n):
        """Per-parameter squared norms ``(n, T)`` summed over each example's scalars."""
        torch = self._torch
        return torch.stack(
            [
                torch.stack([sum(g[t].double().square().sum() for g in row) for t in range(len(row[0]))])
                for row in rows
            ]
        ).reshape(n, -1)

    def vector_sq_norm(self, vector):
        return float(self._torch.dot(vector, vector))

    def _per_example_function(self):
        def f_one(params, x):
            out = self._torch.func.functional_call(self.module, params, (x.unsqueeze(0),))
            return out.reshape(-1)

        return f_one

    def _vmap_output_sq_norms(self, X, trainable):
        torch = self._torch
        f_one = self._per_example_function()
        params = {n: p.detach() for n, p in trainable}
        f = self._call(self.module, X[:1])

        def vmapped():
            jac = torch.func.vmap(torch.func.jacrev(f_one), in_dims=(None, 0))(params, X)
            return _tree_columns(jac, trainable, X.shape[0], torch)

        def looped():
            rows = self._looped_grads(X, lambda f, n: list(f[0]), trainable)
            return self._looped_columns(rows, X.shape[0])

        if f.shape[1] == 0:
            return np.zeros((X.shape[0], len(trainable)))
        return self._vmap_or_loop(vmapped, looped).cpu().numpy()

    def _vmap_loss_sq_norms(self, X, targets, loss, trainable):
        torch = self._torch
        f_one = self._per_example_function()
        params = {n: p.detach() for n, p in trainable}
        self._call(self.module, X[:1])
        T = self._targets(targets, X)

        def loss_one(params, x, t):
            return loss.per_example(f_one(params, x)[None], t[None])[0]

        def vmapped():
            grads, losses = torch.func.vmap(
                torch.func.grad_and_value(loss_one), in_dims=(None, 0, 0)
            )(params, X, T)
            return losses.double(), _tree_columns(grads, trainable, X.shape[0], torch)

        def looped():
            with torch.no_grad():
                losses = loss.per_example(self._call(self.module, X), T).double()
            rows = self._looped_grads(X, lambda f, n: [loss.per_example(f, T[n : n + 1])[0]], trainable)
            return losses, self._looped_columns(rows, X.shape[0])

        losses, sq = self._vmap_or_loop(vmapped, looped)
        return losses.cpu().numpy(), sq.cpu().numpy()

    # -- gradients and Hessian-vector products of the summed loss --------------------------

    def _summed_loss(self, X, targets, loss):
        f = self._call(self.module, X)
        return loss.per_example(f, self._targets(targets, f)).sum()

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
        pieces = self._tangent_pieces(vector, params)
        with self._inference(), torch.enable_grad():
            total = self._summed_loss(X, targets, loss)
            grads = torch.autograd.grad(total, params, create_graph=True, allow_unused=True)
            directional = sum(
                (g * v).sum() for g, v in zip(grads, pieces) if g is not None
            )
            if not isinstance(directional, torch.Tensor) or not directional.requires_grad:
                return _PerParameter([None] * len(params), params)
            hv = torch.autograd.grad(directional, params, allow_unused=True)
        # One tensor per parameter, in its dtype: the chunks' sums are added tensor by
        # tensor and joined once, into float64, by to_numpy_copy (a concatenation per
        # chunk was a tenth of an MLP's HVP on the CPU; benchmarks/RESULTS.md).
        return _PerParameter(list(hv), params)

    def _tangent_pieces(self, vector, params):
        """``vector`` cut into the parameters' shapes and dtypes, once per session.

        gcref.models passes the same vector for every chunk of a call; converting its
        pieces costs a pass over every parameter per chunk otherwise.
        """
        torch = self._torch

        def pieces():
            split = torch.split(vector, [p.numel() for p in params])
            return [v.reshape(p.shape).to(p.dtype) for v, p in zip(split, params)]

        return self._cached(
            ("tangent", vector.data_ptr(), vector._version, vector.dtype, vector.device), pieces
        )

    # -- vectors and processes -------------------------------------------------------------

    def n_parameters(self):
        return sum(p.numel() for _, p in self._trainable())

    def parameter_vector(self):
        params = [p for _, p in self._trainable()]
        return _flat64([p.detach() for p in params], params, self._torch).cpu().numpy()

    def as_native_vector(self, vector, name):
        torch = self._torch
        if not isinstance(vector, torch.Tensor):
            return None
        p = self.n_parameters()
        if tuple(vector.shape) != (p,):
            raise ValueError(
                f"{name} must have shape ({p},), one entry per parameter; got {tuple(vector.shape)}"
            )
        if not vector.is_floating_point():
            raise ValueError(f"{name} must hold finite floating-point values; got {vector.dtype}")
        # Kept in its own dtype (each piece is cast to its parameter's dtype once per call):
        # a tensor in the model's dtype and on its device is used without a copy.
        vector = vector.detach().to(device=self._placement()[0])
        if not _all_finite(vector, torch):
            raise ValueError(f"{name} must hold finite floating-point values")
        return vector

    def to_native_vector(self, vector):
        device, _ = self._placement()
        return self._torch.as_tensor(
            np.asarray(vector, dtype=np.float64), dtype=self._torch.float64, device=device
        )

    def to_numpy(self, x):
        if isinstance(x, _PerParameter):
            return x.to_numpy64(self._torch)
        return x.detach().cpu().numpy() if isinstance(x, self._torch.Tensor) else np.asarray(x)

    def to_numpy_copy(self, x):
        if isinstance(x, _PerParameter):
            return x.to_numpy64(self._torch)  # already a new array
        if isinstance(x, self._torch.Tensor):
            # One pass: onto the host and into float64 together, always a new tensor.
            return x.detach().to(device="cpu", dtype=self._torch.float64, copy=True).numpy()
        return super().to_numpy_copy(x)

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


class _ModuleTree:
    """One walk over a module: what ``named_modules()``, ``named_parameters()`` and
    ``buffers()`` give, in their order and with their removal of shared tensors.

    A measure call needs all three several times (the batch-statistics check, the eval
    switch, the placement, theta, the output-size key); torch's generators rebuild the tree
    each time, which on a small MLP was most of gcref's fixed cost per call.
    """

    __slots__ = ("named_modules", "parameters", "buffers")

    def __init__(self, module):
        self.named_modules = list(module.named_modules())
        self.parameters, self.buffers = [], []
        seen_parameters, seen_buffers = set(), set()
        for prefix, m in self.named_modules:
            for name, p in m._parameters.items():
                if p is not None and id(p) not in seen_parameters:
                    seen_parameters.add(id(p))
                    self.parameters.append((f"{prefix}.{name}" if prefix else name, p))
            for b in m._buffers.values():
                if b is not None and id(b) not in seen_buffers:
                    seen_buffers.add(id(b))
                    self.buffers.append(b)

    @property
    def modules(self):
        return [m for _, m in self.named_modules]


@contextlib.contextmanager
def _eval_mode(module, modules=None):
    """``module.eval()`` inside; after, the submodules that were training train again.

    Only the flags that change are set (a module's ``__setattr__`` is slow: on a small MLP
    the switch and the restore of every flag were a tenth of gcref's fixed cost per call).
    ``modules`` is ``list(module.modules())`` where the caller has it.
    """
    import torch

    modules = list(module.modules()) if modules is None else modules
    training = [m for m in modules if m.training]
    # Where no module overrides train(), eval() only sets each flag, through a module's
    # __setattr__ (about 4 us each); writing the instance attribute itself does the same
    # in a fraction of it (measured: 48 us against 3 us per switch and restore for a
    # five-layer Sequential). A module whose train(), eval() or __setattr__ is its own (a
    # subclass's method, or one set on the instance) is switched by eval().
    Module = torch.nn.Module
    # Scanned only when a flag must change (a model measured in eval mode skips it).
    plain = (
        bool(training)
        and type(module).eval is Module.eval and "eval" not in module.__dict__
        and all(type(m).train is Module.train and "train" not in m.__dict__
                and type(m).__setattr__ is Module.__setattr__ and "training" in m.__dict__
                for m in modules)
    )
    if training:
        if plain:
            for m in training:
                m.__dict__["training"] = False
        else:
            module.eval()
    try:
        yield
    finally:
        for m in training:
            if plain:
                m.__dict__["training"] = True
            else:
                m.training = True


def _all_finite(t, torch):
    """Whether every entry of the floating tensor ``t`` is finite.

    The sum is finite for finite entries unless it overflows: one reduction (30x cheaper
    than the element-wise scan), which runs only when the sum is not finite.
    """
    return math.isfinite(t.sum().item()) or bool(torch.isfinite(t).all())


def _row_sq_norms(g, X, torch):
    """Squared norm of each example's row of ``g`` (an input gradient), float64 ``(n,)``."""
    if g is None:
        return torch.zeros(X.shape[0], dtype=torch.float64, device=X.device)
    # The norm in the gradient's dtype, then squared in float64: 4x to 10x faster on the
    # CPU than squaring and summing into float64 (measured: 0.06 ms against 0.56 ms for a
    # 128 x 3072 float32 gradient), with float32's rounding of a sum of 3072 squares.
    rows = compute_dtype(g).reshape(g.shape[0], -1)
    return torch.linalg.vector_norm(rows, dim=1).to(torch.float64).square()


def _tree_columns(tree, trainable, n, torch):
    """Per-example squared norms of each named per-example gradient, float64 ``(n, T)``."""
    return torch.stack(
        [tree[name].reshape(n, -1).double().square().sum(dim=1) for name, _ in trainable], dim=1
    )


class _PerParameter:
    """A vector of theta kept as one tensor per parameter (``None`` for a zero one).

    What :meth:`TorchModel.loss_hvp_sum` returns: ``+`` adds two of them tensor by tensor,
    and :meth:`to_numpy64` joins the tensors into one float64 NumPy vector in theta's
    order, converting while it copies, so a sum over chunks is joined once.
    """

    __slots__ = ("params", "tensors")

    def __init__(self, tensors, params):
        self.tensors, self.params = tensors, params

    def __add__(self, other):
        if not isinstance(other, _PerParameter):
            return NotImplemented
        return _PerParameter(
            [b if a is None else a if b is None else a + b
             for a, b in zip(self.tensors, other.tensors)],
            self.params,
        )

    def to_numpy64(self, torch):
        """A new float64 NumPy ``(p,)``: each tensor copied into its slice."""
        out = np.empty(sum(p.numel() for p in self.params), dtype=np.float64)
        host, start = torch.from_numpy(out), 0
        for t, p in zip(self.tensors, self.params):
            stop = start + p.numel()
            if t is None:
                host[start:stop] = 0.0
            else:
                host[start:stop].copy_(t.detach().reshape(-1))
            start = stop
        return out


def _flat(grads, params, torch):
    """Gradients (``None`` where unused) as one vector in theta's order, in their dtype."""
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]
    )


def _flat64(grads, params, torch):
    """Gradients (``None`` where unused) as one float64 vector in theta's order."""
    # One concatenation in the gradients' dtype, then one conversion (not one per tensor).
    return _flat(grads, params, torch).to(torch.float64)
