"""The element-wise array operations that losses and activations are written against.

:func:`array_ops` looks at an array (NumPy, autograd's boxes, ``jax.Array`` and its
tracers, ``torch.Tensor``) and returns the operations of its framework, without importing
any framework that is not already imported: an array of a framework exists only once the
framework has been imported.
"""

from __future__ import annotations

import sys

import numpy as np


class ArrayOps:
    """``xp`` (a NumPy-like namespace) and the two reductions whose spelling differs."""

    def __init__(self, name, xp, sum_rows, logsumexp_rows):
        self.name = name
        self.xp = xp
        self.sum_rows = sum_rows
        self.logsumexp_rows = logsumexp_rows

    def __repr__(self):
        return f"ArrayOps({self.name!r})"


def _numpy_logsumexp(x, xp=np):
    m = xp.max(x, axis=-1, keepdims=True)
    return xp.log(xp.sum(xp.exp(x - m), axis=-1)) + m[..., 0]


NUMPY_OPS = ArrayOps("numpy", np, lambda x: np.sum(x, axis=-1), _numpy_logsumexp)
_CACHE = {}


def _torch_ops():
    import torch

    return ArrayOps(
        "torch", torch, lambda x: x.sum(dim=-1), lambda x: torch.logsumexp(x, dim=-1)
    )


def _jax_ops():
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    return ArrayOps(
        "jax", jnp, lambda x: jnp.sum(x, axis=-1), lambda x: logsumexp(x, axis=-1)
    )


def _autograd_ops():
    import autograd.numpy as anp
    from autograd.scipy.special import logsumexp

    return ArrayOps(
        "autograd", anp, lambda x: anp.sum(x, axis=-1), lambda x: logsumexp(x, axis=-1)
    )


_FACTORIES = {"torch": _torch_ops, "jax": _jax_ops, "autograd": _autograd_ops}


def ops_named(name):
    """The :class:`ArrayOps` of a framework by name (``"numpy"``, ``"autograd"``, ``"jax"``, ``"torch"``)."""
    if name == "numpy":
        return NUMPY_OPS
    if name not in _CACHE:
        _CACHE[name] = _FACTORIES[name]()
    return _CACHE[name]


def framework_of(x):
    """``"numpy"``, ``"autograd"``, ``"jax"`` or ``"torch"`` for an array of that framework."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(x, jax.Array):
        return "jax"
    tracer = getattr(sys.modules.get("autograd.tracer"), "Box", None)
    if tracer is not None and isinstance(x, tracer):
        return "autograd"
    return "numpy"


def array_ops(x):
    """The :class:`ArrayOps` of the framework that array ``x`` belongs to."""
    return ops_named(framework_of(x))
