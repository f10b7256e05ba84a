"""The ``autograd`` (HIPS) backend: derivatives by autograd's reverse mode."""

from __future__ import annotations

import numpy as np

from gcref.backends._autodiff import AutodiffBackend


class AutogradBackend(AutodiffBackend):
    """MLP primitives through HIPS autograd; arrays are plain NumPy arrays."""

    name = "autograd"

    def __init__(self):
        import autograd
        import autograd.numpy as anp
        import autograd.scipy.special as aspecial

        self._autograd = autograd
        self._logsumexp = aspecial.logsumexp
        self.xp = anp

    def asarray(self, x):
        return np.asarray(x)

    def to_numpy(self, x):
        return np.asarray(x)

    def sum_rows(self, x):
        return self.xp.sum(x, axis=-1)

    def logsumexp_rows(self, x):
        return self._logsumexp(x, axis=-1)

    def stack(self, arrays, axis):
        return self.xp.stack(arrays, axis=axis)

    def vjp(self, fn, inputs, cotangent):
        vjp_fn, _ = self._autograd.make_vjp(lambda args: fn(*args))(tuple(inputs))
        # autograd differentiates tanh as g / cosh(x)^2: cosh overflows for |x| > 710 and
        # the (correct) result 0 comes with an overflow warning.
        with np.errstate(over="ignore"):
            return tuple(vjp_fn(cotangent))

    def hvp(self, fn, inputs, tangents):
        grad = self._autograd.grad

        def directional(args):
            g = grad(lambda a: fn(*a))(args)
            return sum(self.xp.sum(gi * ti) for gi, ti in zip(g, tangents))

        return tuple(grad(directional)(tuple(inputs)))
