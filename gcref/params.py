"""Parameter trees: the one place where parameters are flattened, rebuilt and combined.

An MLP's parameters are a sequence of ``(W_i, b_i)`` pairs, in NumPy or in any
framework's arrays (docs/math.md section 1). Users' models have their own trees (a torch
module's parameters, a JAX pytree); their adapters flatten them into one vector in a
fixed order (:meth:`gcref.backends.adapter.ModelAdapter.parameter_vector`), and every
vector gcref returns for them follows that order.

Functions here work on any framework's arrays unless they say NumPy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from numpy.typing import ArrayLike, NDArray

    from gcref._typing import MLPParams, NumpyParams

__all__ = [
    "combine",
    "flat_arrays",
    "flatten_params",
    "flatten_tree",
    "pairs",
    "params_dtype",
    "params_inner",
    "params_map",
    "scale",
    "sq_norm",
    "tree_leaves",
    "unflatten_params",
    "unflatten_tree",
]


def flat_arrays(params: MLPParams) -> tuple[Any, ...]:
    """``((W_1, b_1), ..., (W_l, b_l))`` -> ``(W_1, b_1, ..., W_l, b_l)``."""
    return tuple(a for pair in params for a in pair)


def pairs(flat: Sequence[Any]) -> list[tuple[Any, Any]]:
    """Inverse of :func:`flat_arrays`: a list of ``(W_i, b_i)``."""
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def combine(alpha: float, x: MLPParams, beta: float, y: MLPParams) -> list[tuple[Any, Any]]:
    """``alpha x + beta y`` for two parameter lists of the same structure."""
    return [(alpha * A + beta * B, alpha * a + beta * b) for (A, a), (B, b) in zip(x, y)]


def scale(alpha: float, x: MLPParams) -> list[tuple[Any, Any]]:
    """``alpha x`` for a parameter list."""
    return [(alpha * A, alpha * a) for A, a in x]


def sq_norm(params: MLPParams, xp: Any) -> Any:
    """``sum_i ||W_i||_F^2 + ||b_i||^2``, a scalar of the arrays' framework (``xp`` its namespace)."""
    return sum(xp.sum(A * A) + xp.sum(a * a) for A, a in params)


def params_dtype(params: MLPParams) -> np.dtype[Any]:
    """dtype of the first weight matrix (NumPy)."""
    return np.asarray(params[0][0]).dtype


def tree_leaves(tree: Any) -> list[NDArray[Any]]:
    """The arrays of nested tuples and lists (or of one array or scalar), depth first, as NumPy."""
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in tree_leaves(item)]
    return [np.asarray(tree)]


def flatten_tree(tree: Any) -> NDArray[Any]:
    """Nested tuples and lists of arrays (or one array, or a scalar) -> one 1-D NumPy vector."""
    leaves = tree_leaves(tree)
    return np.concatenate([np.ravel(leaf) for leaf in leaves]) if leaves else np.zeros(0)


def unflatten_tree(vector: ArrayLike, like: Any) -> Any:
    """Inverse of :func:`flatten_tree`, with the structure, shapes and dtypes of ``like``.

    Raises
    ------
    ValueError
        When ``vector`` does not have exactly as many entries as ``like``.
    """
    vector = np.asarray(vector)
    pos = 0

    def build(node: Any) -> Any:
        nonlocal pos
        if isinstance(node, (tuple, list)):
            return type(node)(build(item) for item in node)
        node = np.asarray(node)
        out = vector[pos : pos + node.size].reshape(node.shape).astype(node.dtype)
        pos += node.size
        return out

    out = build(like)
    if pos != vector.size:
        raise ValueError(f"vector has {vector.size} entries; the structure holds {pos}")
    return out


def flatten_params(params: MLPParams) -> NDArray[Any]:
    """Concatenate ``(W_1, b_1, ..., W_l, b_l)`` into one NumPy vector, each array row-major."""
    return flatten_tree(params)


def unflatten_params(vector: ArrayLike, like: MLPParams) -> NumpyParams:
    """Inverse of :func:`flatten_params`, with the shapes of ``like`` (NumPy).

    Raises
    ------
    ValueError
        When ``vector`` does not have exactly as many entries as ``like``.
    """
    try:
        vector = np.asarray(vector)
    except ValueError as err:
        raise ValueError(f"vector must be a 1-D array: {err}") from None
    if vector.ndim != 1 or vector.dtype.kind not in "fiub":
        raise ValueError(
            f"vector must be a 1-D array of numbers; got shape {vector.shape}, dtype {vector.dtype}"
        )
    if not isinstance(like, (tuple, list)) or not all(
        isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in like
    ):
        raise TypeError("like must be a sequence of (W, b) pairs, as params are")
    total = sum(np.size(a) for pair in like for a in pair)
    if total != vector.size:
        raise ValueError(f"vector has {vector.size} entries but like holds {total} parameters")
    out, pos = [], 0
    for W, b in like:
        W, b = np.asarray(W), np.asarray(b)
        w = vector[pos : pos + W.size].reshape(W.shape)
        pos += W.size
        c = vector[pos : pos + b.size].reshape(b.shape)
        pos += b.size
        out.append((w, c))
    return tuple(out)


def params_map(fn: Callable[..., Any], *trees: MLPParams) -> tuple[tuple[Any, ...], ...]:
    """Apply ``fn`` entry-wise to one or more parameter tuples of the same structure."""
    return tuple(tuple(fn(*arrays) for arrays in zip(*group)) for group in zip(*trees))


def params_inner(a: MLPParams, b: MLPParams) -> float:
    """Euclidean inner product of two parameter tuples (NumPy), a float."""
    return float(sum(np.vdot(x, y) for pa, pb in zip(a, b) for x, y in zip(pa, pb)))
