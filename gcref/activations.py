"""Element-wise activations with their first and second derivatives.

An activation is written once as ``fn(x, xp)``, where ``xp`` is the array namespace of
the backend evaluating it (``numpy``, ``autograd.numpy``, ``jax.numpy`` or ``torch``).
Use only the element-wise functions these four share: ``exp``, ``log1p``, ``tanh``,
``abs``, ``sign`` and ``where`` (with a Python scalar allowed as either branch), plus
arithmetic. The analytic ``numpy`` backend also needs the first and second derivatives
``d1(x)`` and ``d2(x)`` as NumPy functions.

Adding an activation::

    import numpy as np
    import gcref

    def cube_fn(x, xp):
        return x * x * x

    cube = gcref.Activation("cube", cube_fn, d1=lambda x: 3 * x**2, d2=lambda x: 6 * x)
    gcref.register_activation(cube)          # now usable as activation="cube"
    mlp = gcref.MLP((2, 8, 1), activation=cube)   # or pass the object directly

Every backend differentiates ``fn`` itself; the property tests check that ``d1`` and
``d2`` agree with it, so a wrong hand-written derivative is caught.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Activation:
    """An element-wise activation.

    Parameters
    ----------
    name : str
        Name used in messages and in ``MLP`` descriptions.
    fn : callable ``fn(x, xp) -> array``
        The activation, written with the namespace ``xp``.
    d1, d2 : callable ``d(x: ndarray) -> ndarray``
        First and second derivatives, in NumPy.
    piecewise_linear : bool
        True when ``fn`` is piecewise linear (exact arc length from breakpoints).
    positively_homogeneous : bool
        True when ``fn(c x) = c fn(x)`` for ``c > 0`` (rescaling symmetry, MATH.md section 6).
    kinks : tuple of float
        Points where a piecewise-linear ``fn`` changes slope.
    """

    name: str
    fn: Callable
    d1: Callable
    d2: Callable
    piecewise_linear: bool = False
    positively_homogeneous: bool = False
    kinks: tuple = ()

    def __call__(self, x, xp=np):
        return self.fn(x, xp)


def _stable_sigmoid(x, xp):
    # exp(-|x|) never overflows, so neither branch of the where produces inf or NaN,
    # not even in the derivative of the branch that is not selected.
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid(x):
    """Numerically stable logistic sigmoid in NumPy."""
    return _stable_sigmoid(np.asarray(x), np)


def _softplus(x, xp):
    return xp.where(x > 0, x, 0.0 * x) + xp.log1p(xp.exp(-xp.abs(x)))


def _sigmoid_d1(x):
    # e / (1 + e)^2 with e = exp(-|x|) keeps full relative accuracy where s (1 - s) cancels.
    e = np.exp(-np.abs(x))
    return e / (1.0 + e) ** 2


def _sigmoid_d2(x):
    s = sigmoid(x)
    return s * (1.0 - s) * (1.0 - 2.0 * s)


def _tanh_d1(x):
    # 4 e / (1 + e)^2 with e = exp(-2|x|) equals 1 - tanh(x)^2 without its cancellation.
    e = np.exp(-2.0 * np.abs(x))
    return 4.0 * e / (1.0 + e) ** 2


def _tanh_d2(x):
    t = np.tanh(x)
    return -2.0 * t * (1.0 - t**2)


identity = Activation(
    "identity",
    lambda x, xp: x,
    d1=np.ones_like,
    d2=np.zeros_like,
    piecewise_linear=True,
    positively_homogeneous=True,
)

relu = Activation(
    "relu",
    lambda x, xp: xp.where(x > 0, x, 0.0 * x),
    d1=lambda x: (x > 0).astype(np.asarray(x).dtype),
    d2=np.zeros_like,
    piecewise_linear=True,
    positively_homogeneous=True,
    kinks=(0.0,),
)

tanh = Activation("tanh", lambda x, xp: xp.tanh(x), d1=_tanh_d1, d2=_tanh_d2)

sigmoid_activation = Activation("sigmoid", _stable_sigmoid, d1=_sigmoid_d1, d2=_sigmoid_d2)

softplus = Activation("softplus", _softplus, d1=sigmoid, d2=_sigmoid_d1)


def leaky_relu(slope=0.01):
    """Leaky ReLU ``x if x > 0 else slope * x``; ``slope`` must be finite and >= 0.

    Equal slopes give the same ``Activation`` object, so equal MLP descriptions compare
    equal (and compiled backends reuse their compilations).
    """
    if isinstance(slope, bool) or not isinstance(slope, (int, float, np.integer, np.floating)):
        raise TypeError(f"slope must be a real number; got {type(slope).__name__}")
    slope = float(slope)
    if not np.isfinite(slope) or slope < 0:
        raise ValueError(f"slope must be finite and >= 0; got {slope}")
    return _leaky_relu(slope)


@functools.cache
def _leaky_relu(slope):
    # repr, not a rounded format: the name is also a spelling that get_activation reads
    # back to the same slope (a saved MLP, the command line).
    name = "leaky_relu" if slope == 0.01 else f"leaky_relu({slope!r})"
    return Activation(
        name,
        lambda x, xp: xp.where(x > 0, x, slope * x),
        d1=lambda x: np.where(np.asarray(x) > 0, 1.0, slope).astype(np.asarray(x).dtype),
        d2=np.zeros_like,
        piecewise_linear=True,
        positively_homogeneous=True,
        kinks=(0.0,),
    )


_LEAKY_RELU_SPELLING = re.compile(r"leaky_relu\(\s*([^()]*?)\s*\)")

_REGISTRY = {
    a.name: a
    for a in (identity, relu, leaky_relu(), tanh, sigmoid_activation, softplus)
}


def register_activation(activation):
    """Make ``activation`` available by its name; an existing name is an error."""
    if not isinstance(activation, Activation):
        raise TypeError(f"activation must be an Activation; got {type(activation).__name__}")
    if activation.name in _REGISTRY and _REGISTRY[activation.name] is not activation:
        raise ValueError(f"an activation named {activation.name!r} is already registered")
    _REGISTRY[activation.name] = activation
    return activation


def activation_names():
    """Names of the registered activations."""
    return sorted(_REGISTRY)


def get_activation(spec, name="activation"):
    """Return the ``Activation`` for a registered name or an ``Activation`` instance.

    Besides the registered names, ``"leaky_relu(SLOPE)"`` (e.g. ``"leaky_relu(0.2)"``, the
    name of :func:`leaky_relu` for that slope) gives ``leaky_relu(SLOPE)``.
    """
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, str):
        if spec in _REGISTRY:
            return _REGISTRY[spec]
        match = _LEAKY_RELU_SPELLING.fullmatch(spec.strip())
        if match:
            try:
                slope = float(match.group(1))
            except ValueError:
                raise ValueError(
                    f"{name} {spec!r}: the slope must be a number, as in 'leaky_relu(0.2)'"
                ) from None
            try:
                return leaky_relu(slope)
            except ValueError as err:
                raise ValueError(f"{name} {spec!r}: {err}") from None
        raise ValueError(
            f"unknown {name} {spec!r}; expected one of {activation_names()}, or "
            "'leaky_relu(SLOPE)' such as 'leaky_relu(0.2)' for another slope "
            "(gcref.register_activation adds your own)"
        )
    raise TypeError(f"{name} must be a name or an Activation; got {type(spec).__name__}")
