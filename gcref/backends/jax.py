"""The ``jax`` backend: derivatives by JAX's autodiff, each primitive compiled by ``jax.jit``.

Eager JAX compiles every operation anew for each new array shape; compiling a whole
primitive at once costs one compilation per shape instead, and nothing on repeat calls.
The MLP description and the loss are static arguments; the compiled functions stay
differentiable, so measures built on them can serve as penalties.

float64 without touching global configuration: every public call runs inside
``jax.enable_x64(True)`` when its arrays are float64, a context manager that scopes the
setting to that call. A user's own ``jax_enable_x64`` setting is left as it is.
"""

from __future__ import annotations

import contextlib

import numpy as np

from gcref.backends._autodiff import AutodiffBackend
from gcref.losses import Loss
from gcref.mlp import MLP

_COMPILED = (
    "input_jacobian",
    "input_vjp",
    "hidden_jacobians",
    "sensitivities",
    "param_jacobian",
    "loss_sensitivities",
    "loss_grad",
    "loss_hvp",
    "mean_loss",
    "param_grad_sq_norms",
    "loss_grad_sq_norms",
    "per_example_penalty_grad",
)


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
        self._compiled = {}
        for name in _COMPILED:
            setattr(self, name, self._compiling(name))

    def _compiling(self, name):
        """``name`` as a method that runs a ``jax.jit``-compiled version of the generic one."""
        generic = getattr(super(), name)

        def method(*args):
            static = tuple((i, a) for i, a in enumerate(args) if isinstance(a, (MLP, Loss)))
            key = (name, static)
            if key not in self._compiled:
                positions = dict(static)

                def call(*dynamic):
                    rest = iter(dynamic)
                    full = [positions[i] if i in positions else next(rest) for i in range(len(args))]
                    return generic(*full)

                self._compiled[key] = self._jax.jit(call)
            return self._compiled[key](*(a for a in args if not isinstance(a, (MLP, Loss))))

        method.__name__ = name
        method.__doc__ = generic.__doc__
        return method

    def step_function(self, step):
        return self._jax.jit(step)

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
