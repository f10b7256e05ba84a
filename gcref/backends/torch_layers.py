"""Per-layer norm identities for torch modules: a registry from module type to rule.

Per-example squared gradient norms never need the per-example gradients (docs/math.md
section 1): for a layer with input ``a`` and output cotangent ``g`` (the gradient of a
scalar, summed over the batch, with respect to the layer's output), a Linear layer's
weight gradient of example n is ``g_n a_n^T``, so ``||g_n||^2 ||a_n||^2`` is its squared
norm. :class:`gcref.backends.torch_model.TorchModel` records every layer's ``a`` and
output in one forward pass, takes ``g`` for all layers in one backward pass, and asks
the rule of each layer's type for the squared norms of its parameters.

A rule is registered for a module **type** (exact type: a subclass with its own
``forward`` would otherwise inherit a wrong rule) and is a function

    rule(module, a, g, context) -> {parameter name: tensor of shape (n,)}

returning one entry for each of the module's own parameters that ``context.wants``.
``a`` is the layer's first positional input, ``g`` the cotangent of its output (both of
shape ``(n, ...)``); results are float64. A module whose type has no rule (or whose rule
declines it through ``supports``) sends the whole model to the ``torch.func.vmap``
fallback, which is always correct.

Add a rule for a layer of your own with :func:`register_norm_rule`::

    @register_norm_rule(MyScale, supports=lambda m: True)
    def my_scale_rule(module, a, g, context):
        # MyScale computes a * weight (element-wise over the last axis).
        out = {}
        if context.wants(module, "weight"):
            out["weight"] = (g * a).reshape(g.shape[0], -1, a.shape[-1]).sum(1).double().square().sum(1)
        return out

Rules are written in torch operations on ``a`` and ``g``, so they are differentiable when
the recording keeps the graph (``keep_graph=True``), which is how the per-example IGR
penalty of :mod:`gcref.penalties` is trained through them.

Index conventions: ``n`` examples; a convolution with ``C`` input and ``C_out`` output
channels, kernel of ``K`` taps and ``T`` output positions; ``U`` the unfolded input
patches ``(n, C K, T)``, ``G`` the output cotangent ``(n, C_out, T)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

__all__ = [
    "NORM_METHODS",
    "NORM_RULES",
    "NormRule",
    "RuleContext",
    "LayerRecorder",
    "norm_rule",
    "record_forward",
    "register_norm_rule",
]

#: How per-example norms are taken: ``"auto"`` chooses per layer by cost, ``"gram"`` and
#: ``"gradient"`` force one form on every convolution and every linear layer with extra
#: dimensions, ``"vmap"`` forces the fallback.
NORM_METHODS = ("auto", "gram", "gradient", "vmap")


@dataclass(frozen=True)
class NormRule:
    """The norm identity of one module type.

    Attributes
    ----------
    fn : callable
        ``fn(module, a, g, context) -> {name: (n,) float64 tensor}``.
    supports : callable
        ``supports(module) -> bool``: whether ``fn`` applies to this instance (a
        convolution with circular padding, say, does not).
    """

    fn: Callable
    supports: Callable = lambda module: True


#: module type -> :class:`NormRule`; extend it with :func:`register_norm_rule`.
NORM_RULES: dict = {}


def register_norm_rule(module_type, fn=None, *, supports=None):
    """Register the per-example norm rule of ``module_type`` (usable as a decorator).

    Parameters
    ----------
    module_type : type
        A ``torch.nn.Module`` subclass; the rule applies to instances of exactly this type.
    fn : callable, optional
        ``fn(module, a, g, context) -> {parameter name: (n,) tensor}``; left out, the
        function returns a decorator.
    supports : callable, optional
        ``supports(module) -> bool``; default: every instance.

    Returns
    -------
    callable
        ``fn`` (so that the decorator leaves the function as it is).
    """
    import torch

    if not (isinstance(module_type, type) and issubclass(module_type, torch.nn.Module)):
        raise TypeError(
            f"module_type must be a torch.nn.Module subclass; got {module_type!r}"
        )

    def register(fn):
        if not callable(fn):
            raise TypeError(f"the rule must be callable; got {type(fn).__name__}")
        if supports is not None and not callable(supports):
            raise TypeError(f"supports must be callable; got {type(supports).__name__}")
        NORM_RULES[module_type] = NormRule(fn, supports or (lambda module: True))
        return fn

    return register if fn is None else register(fn)


def norm_rule(module):
    """The :class:`NormRule` that applies to ``module``, or ``None``."""
    _register_builtin_rules()
    rule = NORM_RULES.get(type(module))
    if rule is None or not rule.supports(module):
        return None
    return rule


class RuleContext:
    """What a rule may ask of the recording: which parameters count, and which form is cheaper.

    Parameters
    ----------
    norm_method : {"auto", "gram", "gradient"}
    """

    def __init__(self, norm_method):
        import torch

        self.norm_method = norm_method
        self.torch = torch
        self._cache = {}

    def wants(self, module, name):
        """Whether ``module.<name>`` is a parameter of theta (it exists and requires grad)."""
        p = getattr(module, name, None)
        return p is not None and p.requires_grad

    def form(self, T, c, c_out):
        """``"gram"`` or ``"gradient"`` for a ``c_out x c`` weight used at ``T`` positions.

        The Gram form costs about ``n T^2 (c + c_out)``, the per-example gradient
        ``n T c c_out``.
        """
        if self.norm_method != "auto":
            return self.norm_method
        return "gram" if T * (c + c_out) < c * c_out else "gradient"

    def gram(self, module, U, G):
        """``sum_{t,t'} (G^T G)_{tt'} (U^T U)_{tt'}`` per example; ``U^T U`` is kept for later passes."""
        torch = self.torch
        if module not in self._cache:
            self._cache[module] = torch.bmm(U.transpose(1, 2), U)
        return (torch.bmm(G.transpose(1, 2), G) * self._cache[module]).sum(dim=(1, 2)).double()


def compute_dtype(x):
    """Half-precision values are multiplied in float32: their squared norms would round badly."""
    import torch

    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# -- the built-in rules ---------------------------------------------------------------------


def linear_rule(module, a, g, context):
    """``nn.Linear``: ``||g||^2 ||a||^2`` and ``||g||^2``; with extra dimensions as a convolution."""
    torch = context.torch
    n = a.shape[0]
    a, g = compute_dtype(a), compute_dtype(g)
    out = {}
    if a.ndim == 2:
        g2 = g.square().sum(dim=1)
        if context.wants(module, "weight"):
            out["weight"] = (g2 * a.square().sum(dim=1)).double()
        if context.wants(module, "bias"):
            out["bias"] = g2.double()
        return out
    U = a.reshape(n, -1, a.shape[-1]).transpose(1, 2)
    G = g.reshape(n, -1, g.shape[-1]).transpose(1, 2)
    if context.wants(module, "weight"):
        if context.form(U.shape[2], U.shape[1], G.shape[1]) == "gram":
            out["weight"] = context.gram(module, U, G)
        else:
            out["weight"] = torch.bmm(G, U.transpose(1, 2)).square().sum(dim=(1, 2)).double()
    if context.wants(module, "bias"):
        out["bias"] = G.sum(dim=2).square().sum(dim=1).double()
    return out


def _conv_supported(module):
    padding_ok = module.padding == "valid" or not isinstance(module.padding, str)
    return module.groups == 1 and module.padding_mode == "zeros" and padding_ok


def conv_rule(module, a, g, context):
    """``nn.Conv1d`` / ``nn.Conv2d``: the Gram form or the per-example gradient, by cost."""
    torch = context.torch
    n, c_out = g.shape[:2]
    a, g = compute_dtype(a), compute_dtype(g)
    G = g.reshape(n, c_out, -1)
    padding = module.padding
    if padding == "valid":
        padding = (0,) * len(module.kernel_size)
    out = {}
    if context.wants(module, "weight"):
        c = module.weight[0].numel()
        if context.form(G.shape[2], c, c_out) == "gram":
            out["weight"] = context.gram(module, _unfolded(module, a, padding), G)
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
            out["weight"] = weight_grad.reshape(n, -1).square().sum(dim=1).double()
    if context.wants(module, "bias"):
        out["bias"] = G.sum(dim=2).square().sum(dim=1).double()
    return out


def _unfolded(module, a, padding):
    """The input patches ``U``, shape ``(n, C K, T)`` (a Conv1d as a Conv2d of height 1)."""
    import torch

    kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    if a.ndim == 3:
        a = a.unsqueeze(2)
        kernel, dilation, padding, stride = (1, *kernel), (1, *dilation), (0, *padding), (1, *stride)
    return torch.nn.functional.unfold(a, kernel, dilation=dilation, padding=padding, stride=stride)


def _batchnorm_supported(module):
    # In training mode, or without running statistics, the normalisation uses the batch's
    # statistics and couples the examples: no per-example identity applies.
    return (
        not module.training
        and module.running_mean is not None
        and module.running_var is not None
    )


def batchnorm_rule(module, a, g, context):
    """Eval-mode BatchNorm: ``||sum g x_hat||^2`` and ``||sum g||^2`` over all but (example, channel)."""
    torch = context.torch
    a, g = compute_dtype(a), compute_dtype(g)
    shape = (1, -1) + (1,) * (a.ndim - 2)
    dims = tuple(range(2, a.ndim))
    out = {}
    if context.wants(module, "weight"):
        mean = module.running_mean.to(a.dtype).reshape(shape)
        var = module.running_var.to(a.dtype).reshape(shape)
        x_hat = (a - mean) * torch.rsqrt(var + module.eps)
        gw = (g * x_hat).sum(dim=dims) if dims else g * x_hat
        out["weight"] = gw.square().sum(dim=1).double()
    if context.wants(module, "bias"):
        gb = g.sum(dim=dims) if dims else g
        out["bias"] = gb.square().sum(dim=1).double()
    return out


_BUILTINS_REGISTERED = []


def _register_builtin_rules():
    """Register the built-in rules on first use (torch is imported only then)."""
    if _BUILTINS_REGISTERED:
        return
    import torch

    nn = torch.nn
    for kind in (nn.Linear,):
        NORM_RULES.setdefault(kind, NormRule(linear_rule))
    for kind in (nn.Conv1d, nn.Conv2d):
        NORM_RULES.setdefault(kind, NormRule(conv_rule, _conv_supported))
    for kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm):
        NORM_RULES.setdefault(kind, NormRule(batchnorm_rule, _batchnorm_supported))
    _BUILTINS_REGISTERED.append(True)


# -- recording ------------------------------------------------------------------------------


def compiled_module_class():
    """torch's class of ``torch.compile``'d modules, or ``None`` if torch has not compiled any.

    Read from ``sys.modules``: a model that no one compiled never imports the compiler.
    """
    import sys

    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(eval_frame, "OptimizedModule", None)


def rule_layers(module, trainable):
    """``{layer: rule}`` for the norm identities, or ``None`` when the model needs the fallback.

    Every module that directly holds a parameter of ``trainable`` (a list of ``(name,
    parameter)``) must have a rule, and no parameter may be shared between modules. A
    ``torch.compile``'d submodule sends the model to the fallback: the forward hooks that
    record each layer's input are not honoured inside its compiled graph.
    """
    compiled = compiled_module_class()
    if compiled is not None and any(isinstance(m, compiled) for m in module.modules()):
        return None
    wanted = {id(p) for _, p in trainable}
    owners = {}
    for m in module.modules():
        for name, p in m.named_parameters(recurse=False):
            if id(p) in wanted:
                owners.setdefault(id(p), []).append(m)
    if any(len(o) > 1 for o in owners.values()):
        return None
    layers = {}
    for (m,) in owners.values():
        rule = norm_rule(m)
        if rule is None:
            return None
        layers[m] = rule
    return layers


class LayerRecorder:
    """Each layer's input and output from one forward pass; per-parameter squared norms after.

    Built by :func:`record_forward`. :meth:`sq_norms` takes one backward pass (to the
    layer outputs only: no weight gradient is computed unless ``params`` are asked for).
    """

    def __init__(self, entries, norm_method):
        self._entries = entries
        self._context = RuleContext(norm_method)

    def sq_norms(self, f, cotangent, *, retain, params=(), create_graph=False):
        """Per-example ``||d <cotangent, f> / d p||^2`` for each recorded parameter ``p``.

        Parameters
        ----------
        f : tensor
            The model's output ``(n, k)`` or a scalar (``cotangent`` then ``None``).
        cotangent : tensor or None
        retain : bool
            Keep the graph for another pass.
        params : sequence of tensors
            Also return ``d <cotangent, f> / d params`` from the same pass.
        create_graph : bool
            Keep the graph of the result (to differentiate the norms themselves).

        Returns
        -------
        dict
            ``{id(parameter): (n,) float64 tensor}``; with ``params``, ``(norms, grads)``.
        """
        torch = self._context.torch
        outputs = [out for _, _, _, out in self._entries]
        grads = torch.autograd.grad(
            f,
            outputs + list(params),
            grad_outputs=cotangent,
            retain_graph=retain or create_graph,
            create_graph=create_graph,
            allow_unused=True,
        )
        norms = {}
        for (module, rule, a, _), g in zip(self._entries, grads):
            if g is None:
                continue
            for name, value in rule.fn(module, a, g, self._context).items():
                norms[id(getattr(module, name))] = value
        if params:
            return norms, grads[len(outputs):]
        return norms


def record_forward(run, X, layers, norm_method, *, keep_graph=False):
    """Run ``run(X)`` once, recording the input and output of every layer of ``layers``.

    Parameters
    ----------
    run : callable
        ``X -> f``, the model's forward pass (under ``torch.enable_grad``).
    layers : dict
        ``{module: NormRule}`` from :func:`rule_layers`.
    keep_graph : bool
        Record inputs with their graph (for differentiable norms) instead of detached.

    Returns
    -------
    (f, LayerRecorder or None)
        ``None`` when a layer ran other than once (the fallback is then needed). A layer
        output that a later in-place operation overwrites (an in-place ReLU) is detected
        by its version counter and the pass repeated with the outputs copied.
    """
    import torch

    for copy in (False, True):
        records = {m: [] for m in layers}

        def hook(module, inputs, output, copy=copy):
            a = inputs[0] if keep_graph else inputs[0].detach()
            records[module].append((a.clone() if copy else a, a._version, output, output._version))
            return output.clone() if copy else None

        handles = [m.register_forward_hook(hook) for m in layers]
        try:
            with torch.enable_grad():
                f = run(X)
        finally:
            for h in handles:
                h.remove()
        if any(len(r) != 1 for r in records.values()):
            return f, None
        entries = [(m, *records[m][0]) for m in layers]
        if all(a._version == va and out._version == vo for _, a, va, out, vo in entries):
            break
    recorder = LayerRecorder([(m, layers[m], a, out) for m, a, _, out, _ in entries], norm_method)
    return f, recorder
