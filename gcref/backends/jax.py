"""The ``jax`` backend: derivatives by JAX's autodiff.

float64 without touching global configuration: every public call runs inside
``jax.enable_x64(True)`` when its arrays are float64, a context manager that scopes the
setting to that call. A user's own ``jax_enable_x64`` setting is left as it is.
"""

from __future__ import annotations

import contextlib

import numpy as np

from gcref.backends._autodiff import AutodiffBackend


class JaxBackend(AutodiffBackend):
    """MLP primitives through ``jax.vjp`` and forward-over-reverse Hessian-vector products."""

    name = "jax"

    def __init__(self):
        import jax
        import jax.numpy as jnp

        self._jax = jax
        self.xp = jnp
        enable = getattr(jax, "enable_x64", None)
        if enable is None:
            from jax.experimental import enable_x64 as enable
        self._enable_x64 = enable

    def scope(self, dtype):
        if np.dtype(dtype) == np.float64:
            return self._enable_x64(True)
        return contextlib.nullcontext()

    def asarray(self, x):
        return self.xp.asarray(x)

    def to_numpy(self, x):
        return np.asarray(x)

    def sum_rows(self, x):
        return self.xp.sum(x, axis=-1)

    def logsumexp_rows(self, x):
        return self._jax.nn.logsumexp(x, axis=-1)

    def stack(self, arrays, axis):
        return self.xp.stack(arrays, axis=axis)

    def vjp(self, fn, inputs, cotangent):
        _, vjp_fn = self._jax.vjp(fn, *inputs)
        return tuple(vjp_fn(cotangent))

    def hvp(self, fn, inputs, tangents):
        argnums = tuple(range(len(inputs)))

        def gradient(*args):
            return self._jax.grad(fn, argnums=argnums)(*args)

        return tuple(self._jax.jvp(gradient, tuple(inputs), tuple(tangents))[1])
