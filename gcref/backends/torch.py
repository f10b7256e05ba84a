"""The ``torch`` backend: derivatives by ``torch.autograd``.

float64 needs no global setting: tensors keep the dtype of the NumPy arrays they come from.
Every VJP is taken with ``create_graph=True`` when gradients are enabled, so quantities
built on the primitives (the input Jacobian in geometric complexity, say) can themselves
be differentiated with respect to parameters that require gradients; wrap a call in
``torch.no_grad()`` to skip that graph.
"""

from __future__ import annotations

import numpy as np

from gcref.backends._autodiff import AutodiffBackend


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

    def step_function(self, step):
        torch = self._torch

        def step_without_graph(*args):
            # Nested derivatives enable grad where they need it; the step's result must
            # not carry a graph from one step into the next.
            with torch.no_grad():
                return step(*args)

        return step_without_graph

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

    def functional(self):
        """This backend with its derivatives taken by ``torch.func`` transforms.

        Returns
        -------
        TorchFuncBackend
            Same primitives, same device; see :class:`TorchFuncBackend` for when to use it.
        """
        return TorchFuncBackend(self.device)


class TorchFuncBackend(TorchBackend):
    """The torch MLP primitives with derivatives by ``torch.func.vjp``, ``grad`` and ``jvp``.

    Every quantity written on the primitives (the mean loss, ``||grad L||^2``, the
    per-example norm identity, the input Jacobian of geometric complexity) is the same
    function as in :class:`TorchBackend`; only the way derivatives are taken differs:
    function transforms instead of ``torch.autograd.grad`` on a recorded graph. Hence

    - its results are differentiable by an outer ``torch.func`` transform, whatever
      ``torch.is_grad_enabled()`` says (``torch.func.grad`` of a penalty written on the
      primitives gives the penalty's gradient);
    - TorchDynamo traces it without a graph break, so a function built on it compiles
      with ``torch.compile(fullgraph=True)`` (``torch.autograd.grad`` breaks the graph).

    Arrays that the primitives create (zero shifts, one-hot cotangents) are made with
    torch operations on the inputs' device and dtype, not converted from NumPy, so that
    nothing outside torch runs inside a compiled function.
    """

    def vjp(self, fn, inputs, cotangent):
        _, pullback = self._torch.func.vjp(fn, *inputs)
        return tuple(pullback(cotangent))

    def hvp(self, fn, inputs, tangents):
        func = self._torch.func
        gradient = func.grad(fn, argnums=tuple(range(len(inputs))))
        return tuple(func.jvp(gradient, tuple(inputs), tuple(tangents))[1])

    def _torch_dtype(self, dtype):
        return getattr(self._torch, np.dtype(dtype).name)

    def _zeros(self, shape, dtype):
        return self._torch.zeros(shape, dtype=self._torch_dtype(dtype), device=self.device)

    def _onehot_columns(self, n, k, dtype):
        eye = self._torch.eye(k, dtype=self._torch_dtype(dtype), device=self.device)
        return [eye[c].expand(n, k) for c in range(k)]
