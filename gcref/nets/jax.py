"""An MLP and a small CNN in plain JAX, as ``(init, apply)`` pairs, for validation and benchmarks.

``init(key, input_shape, dtype=numpy.float32)`` returns a parameter pytree for examples of
shape ``input_shape`` (``key`` a JAX PRNG key or a ``numpy.random.Generator``);
``apply(params, x)`` maps a batch ``x`` of shape
``(n, *input_shape)`` to outputs of shape ``(n, k)``: the form :mod:`gcref.models` takes.
The factories are cached, so that equal arguments give the same ``apply`` function and
:class:`gcref.backends.jax_model.JaxModel` reuses its compilations.

Images are channels-last (``NHWC``), JAX's native convolution layout.

Index conventions: ``n`` examples, ``d`` input features, ``k`` outputs; an image is
``(H, W, C)``.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np

from gcref._checks import check_dtype, check_positive_int
from gcref.activations import get_activation
from gcref.mlp import MLP

__all__ = ["mlp", "mlp_apply_from_gcref", "small_cnn"]


def _dtype_scope(dtype):
    """``jax.enable_x64`` for float64 parameters, so that they are created as float64."""
    return jax.enable_x64(True) if dtype == np.float64 else contextlib.nullcontext()


def _generator(key):
    """A NumPy generator seeded by a JAX PRNG key, or the ``numpy.random.Generator`` given.

    Weights are drawn with NumPy: compiling ``jax.random.normal`` took 3 to 13 s per
    shape on the CPU here, longer than measuring the network.
    """
    if isinstance(key, np.random.Generator):
        return key
    try:
        data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    except AttributeError:
        raise TypeError(
            f"key must be a JAX PRNG key or a numpy.random.Generator; got {type(key).__name__}"
        ) from None
    return np.random.default_rng(np.asarray(data, dtype=np.uint32).ravel())


def _he_normal(rng, shape, fan_in, dtype):
    return jnp.asarray(rng.normal(scale=np.sqrt(2.0 / fan_in), size=shape).astype(dtype))


def mlp(sizes, activation="relu"):
    """A fully connected network ``x -> a(x w_1 + b_1) -> ... -> x w_l + b_l`` (identity output).

    Parameters
    ----------
    sizes : tuple of int, length l + 1
        ``(d, n_2, ..., k)``.
    activation : str or gcref.Activation
        Hidden activation (a gcref activation, e.g. ``"relu"``, ``"tanh"``).

    Returns
    -------
    init : callable
        ``init(key, input_shape, dtype=numpy.float32)`` -> list of ``{"w": (n_i, n_{i+1}),
        "b": (n_{i+1},)}``: He-normal weights, zero biases; ``input_shape`` must be ``(d,)``.
    apply : callable
        ``apply(params, x)``: ``x`` of shape ``(n, d)`` -> ``(n, k)``.
    """
    sizes = tuple(check_positive_int(s, "sizes") for s in sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes must list at least an input and an output size; got {sizes}")
    return _mlp(sizes, get_activation(activation))


@functools.lru_cache(maxsize=None)
def _mlp(sizes, act):
    def init(key, input_shape, dtype=np.float32):
        dtype = check_dtype(dtype)
        if tuple(input_shape) != (sizes[0],):
            raise ValueError(
                f"input_shape must be ({sizes[0]},) for sizes {sizes}; got {input_shape}"
            )
        rng = _generator(key)
        with _dtype_scope(dtype):
            return [
                {"w": _he_normal(rng, (i, o), i, dtype), "b": jnp.zeros((o,), dtype=dtype)}
                for i, o in zip(sizes[:-1], sizes[1:])
            ]

    def apply(params, x):
        h = x
        for j, layer in enumerate(params):
            h = h @ layer["w"] + layer["b"]
            if j < len(params) - 1:
                h = act.fn(h, jnp)
        return h

    return init, apply


def small_cnn(in_channels=1, num_classes=10, width=8):
    """Two 3x3 convolutions with ReLU, global average pooling and a dense layer (NHWC).

    ``conv(C -> width, stride 1) -> relu -> conv(width -> 2 width, stride 2) -> relu ->
    mean over positions -> dense(2 width -> num_classes)``, "SAME" padding.

    Parameters
    ----------
    in_channels, num_classes, width : int

    Returns
    -------
    init : callable
        ``init(key, input_shape, dtype=numpy.float32)`` with ``input_shape = (H, W,
        in_channels)`` -> ``{"conv1": {"w", "b"}, "conv2": {"w", "b"}, "dense": {"w",
        "b"}}``, kernels ``HWIO``, He-normal weights, zero biases.
    apply : callable
        ``apply(params, x)``: ``x`` of shape ``(n, H, W, in_channels)`` -> ``(n, num_classes)``.
    """
    in_channels = check_positive_int(in_channels, "in_channels")
    num_classes = check_positive_int(num_classes, "num_classes")
    width = check_positive_int(width, "width")
    return _small_cnn(in_channels, num_classes, width)


@functools.lru_cache(maxsize=None)
def _small_cnn(in_channels, num_classes, width):
    convs = (("conv1", in_channels, width, 1), ("conv2", width, 2 * width, 2))

    def init(key, input_shape, dtype=np.float32):
        dtype = check_dtype(dtype)
        if len(input_shape) != 3 or input_shape[2] != in_channels:
            raise ValueError(
                f"input_shape must be (H, W, {in_channels}) (channels last); got {input_shape}"
            )
        rng = _generator(key)
        with _dtype_scope(dtype):
            params = {
                name: {
                    "w": _he_normal(rng, (3, 3, cin, cout), 9 * cin, dtype),
                    "b": jnp.zeros((cout,), dtype=dtype),
                }
                for name, cin, cout, _ in convs
            }
            params["dense"] = {
                "w": _he_normal(rng, (2 * width, num_classes), 2 * width, dtype),
                "b": jnp.zeros((num_classes,), dtype=dtype),
            }
            return params

    def apply(params, x):
        h = x
        for name, _, _, stride in convs:
            h = jax.lax.conv_general_dilated(
                h,
                params[name]["w"],
                window_strides=(stride, stride),
                padding="SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            h = jax.nn.relu(h + params[name]["b"])
        return jnp.mean(h, axis=(1, 2)) @ params["dense"]["w"] + params["dense"]["b"]

    return init, apply


@functools.lru_cache(maxsize=None)
def _gcref_mlp_apply(mlp_description):
    def apply(params, x):
        h = x
        for i, (W, b) in enumerate(params):
            h = mlp_description.layer_activation(i).fn(h @ W.T + b, jnp)
        return h

    return apply


def mlp_apply_from_gcref(mlp_description, params):
    """A :class:`gcref.MLP` and its parameters as a JAX ``(apply, params)`` pair.

    Parameters
    ----------
    mlp_description : gcref.MLP
    params : tuple of (W, b) pairs of ndarray
        ``W_i`` of shape ``(n_{i+1}, n_i)``.

    Returns
    -------
    apply : callable
        ``apply(params, x)`` computing ``f(x)`` of docs/math.md section 1 (the output activation
        included) on a batch ``x`` of shape ``(n, d)``; the same function for equal MLPs.
    params : tuple of (W, b) pairs of ndarray
        The checked parameters, a pytree whose leaves are in gcref's order, so that
        :func:`gcref.models.parameter_vector` equals :func:`gcref.params.flatten_params`.
    """
    if not isinstance(mlp_description, MLP):
        raise TypeError(
            f"mlp_description must be a gcref.MLP; got {type(mlp_description).__name__}"
        )
    params = mlp_description.check_params(params)
    return _gcref_mlp_apply(mlp_description), tuple(tuple(pair) for pair in params)
