"""The multilayer perceptron of docs/math.md section 1: description, initialisers, parameters.

Index conventions
-----------------
Layers are numbered i = 1..l in docs/math.md and stored 0-based in Python lists:

- ``params[i - 1] == (W_i, b_i)`` with ``W_i`` of shape ``(n_{i+1}, n_i)``, ``b_i`` of shape ``(n_{i+1},)``;
- ``sizes == (n_1, ..., n_{l+1}) == (d, ..., k)``;
- a batch ``X`` has shape ``(N, d)``, the output ``f(X)`` shape ``(N, k)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gcref._checks import check_dtype, check_finite_scalar, check_float_array, check_rng
from gcref.activations import Activation, get_activation

INIT_SCHEMES = ("he_normal", "he_uniform", "lecun_normal", "lecun_uniform")
BIAS_INITS = ("zero", "normal", "uniform")


@dataclass(frozen=True, init=False)
class MLP:
    """Description of a multilayer perceptron (docs/math.md section 1).

    Parameters
    ----------
    sizes : sequence of int, length l + 1 >= 2
        ``(d, n_2, ..., n_l, k)``: input size, hidden widths, output size.
    activation : str or Activation
        Hidden activation ``a_1 .. a_{l-1}``.
    output_activation : str or Activation
        Output activation ``a_l``; the identity by default.

    Examples
    --------
    >>> import numpy as np, gcref
    >>> mlp = gcref.MLP((3, 16, 16, 2), activation="tanh")
    >>> params = mlp.init(np.random.default_rng(0))
    >>> mlp.depth, mlp.n_params
    (3, 370)
    """

    sizes: tuple
    activation: Activation
    output_activation: Activation

    def __init__(self, sizes, activation="relu", output_activation="identity"):
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise TypeError(f"sizes must be a sequence of ints; got {type(sizes).__name__}") from None
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least an input and an output size; got {sizes}")
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
                raise ValueError(f"sizes must be positive integers; got {sizes}")
        object.__setattr__(self, "sizes", tuple(int(s) for s in sizes))
        object.__setattr__(self, "activation", get_activation(activation, "activation"))
        object.__setattr__(
            self, "output_activation", get_activation(output_activation, "output_activation")
        )

    @property
    def depth(self):
        """Number of layers l."""
        return len(self.sizes) - 1

    @property
    def input_dim(self):
        """d = n_1."""
        return self.sizes[0]

    @property
    def output_dim(self):
        """k = n_{l+1}."""
        return self.sizes[-1]

    @property
    def n_params(self):
        """Total number of weights and biases."""
        return sum(o * i + o for i, o in zip(self.sizes[:-1], self.sizes[1:]))

    def layer_activation(self, i):
        """Activation ``a_{i+1}`` of the 0-based layer ``i``."""
        return self.output_activation if i == self.depth - 1 else self.activation

    def layer_shapes(self):
        """``[((n_{i+1}, n_i), (n_{i+1},)) for i = 1..l]``."""
        return [((o, i), (o,)) for i, o in zip(self.sizes[:-1], self.sizes[1:])]

    def init(self, rng, scheme="he_normal", scale=1.0, bias="zero", dtype=np.float64):
        """Draw parameters.

        Parameters
        ----------
        rng : numpy.random.Generator
        scheme : {"he_normal", "he_uniform", "lecun_normal", "lecun_uniform"}
            He: variance ``2 / n_i``; LeCun: variance ``1 / n_i``, with ``n_i`` the fan-in.
            Uniform schemes draw from ``[-a, a]`` with ``a = sqrt(3 * variance)``.
        scale : float > 0
            Overall factor on every weight (and drawn bias): the initial scale is an
            experimental variable in the seeds.
        bias : {"zero", "normal", "uniform"}
            Zero biases, or biases drawn like that layer's weights.
        dtype : float32 or float64

        Returns
        -------
        params : tuple of (W, b) pairs of ndarray
        """
        check_rng(rng)
        dtype = check_dtype(dtype)
        scale = check_finite_scalar(scale, "scale", positive=True)
        if scheme not in INIT_SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; expected one of {INIT_SCHEMES}")
        if bias not in BIAS_INITS:
            raise ValueError(f"unknown bias {bias!r}; expected one of {BIAS_INITS}")
        gain = 2.0 if scheme.startswith("he") else 1.0
        law = "uniform" if scheme.endswith("uniform") else "normal"

        params = []
        for w_shape, b_shape in self.layer_shapes():
            std = scale * np.sqrt(gain / w_shape[1])
            W = _draw(rng, law, w_shape, std).astype(dtype)
            if bias == "zero":
                b = np.zeros(b_shape, dtype=dtype)
            else:
                b = _draw(rng, bias, b_shape, std).astype(dtype)
            params.append((W, b))
        return tuple(params)

    def check_params(self, params, name="params"):
        """Validate ``params`` against this description; return them as NumPy arrays.

        Raises ``TypeError``/``ValueError`` naming the offending entry: wrong structure,
        wrong shape, non-float or mixed dtypes, NaN or infinity.
        """
        if not isinstance(params, (tuple, list)) or len(params) != self.depth:
            raise ValueError(
                f"{name} must be a sequence of {self.depth} (W, b) pairs for sizes {self.sizes}; "
                f"got {type(params).__name__}"
                + (f" of length {len(params)}" if isinstance(params, (tuple, list)) else "")
            )
        dtype = None
        out = []
        for i, (pair, (w_shape, b_shape)) in enumerate(zip(params, self.layer_shapes()), 1):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"{name}[{i - 1}] must be a (W, b) pair")
            W = check_float_array(pair[0], f"{name}[{i - 1}] (W_{i})", shape=w_shape, dtype=dtype)
            dtype = W.dtype
            b = check_float_array(pair[1], f"{name}[{i - 1}] (b_{i})", shape=b_shape, dtype=dtype)
            out.append((W, b))
        return tuple(out)

    def check_inputs(self, X, dtype, name="X"):
        """Validate a batch ``X`` of shape ``(N, d)``, N >= 1, in ``dtype``."""
        X = check_float_array(X, name, ndim=2, dtype=dtype)
        if X.shape[1] != self.input_dim:
            raise ValueError(
                f"{name} must have shape (N, {self.input_dim}) for an MLP with d = {self.input_dim}; "
                f"got {X.shape}"
            )
        if X.shape[0] == 0:
            raise ValueError(f"{name} is empty: at least one example is needed")
        return X


def _draw(rng, law, shape, std):
    """Zero-mean draw with standard deviation ``std`` from a normal or uniform law."""
    if law == "normal":
        return rng.normal(0.0, std, size=shape)
    a = np.sqrt(3.0) * std
    return rng.uniform(-a, a, size=shape)
