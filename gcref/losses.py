"""Per-example losses and their residuals (docs/math.md section 4).

The empirical loss is the MEAN of the per-example losses. Each loss is written once
against the array operations of whatever framework ``f`` belongs to
(:func:`gcref._xp.array_ops`, so every backend and every user's model differentiates the
same formula) and carries the residual ``eps = dl/df`` and the Hessian ``d^2 l / df^2`` in
NumPy for the analytic backend.

Targets are normalised once, by :meth:`Loss.prepare_targets`, into a float array of
shape ``(N, k)`` in the model's dtype: the regression targets themselves, the 0/1 labels
for the logistic loss, one-hot rows for softmax cross-entropy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gcref._checks import check_float_array
from gcref._xp import array_ops
from gcref.activations import sigmoid

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, DTypeLike, NDArray

    from gcref._typing import LossLike, NativeArray


def as_label_array(y: Any, name: str = "y") -> NDArray[Any]:
    """``y`` as a NumPy array; a ragged list gets a message that names it."""
    try:
        return np.asarray(y)
    except ValueError as err:
        raise ValueError(f"{name} must be an array of one label (row) per example: {err}") from None


def _softmax(f: NDArray[Any]) -> NDArray[Any]:
    shifted = f - np.max(f, axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=-1, keepdims=True)


class Loss:
    """A per-example loss ``l(f, y)``; see docs/math.md section 4 for the table."""

    name = ""

    def prepare_targets(
        self, y: ArrayLike, n_examples: int, k: int, dtype: DTypeLike
    ) -> NDArray[Any]:
        """Check ``y`` and return it as a float array of shape ``(N, k)``."""
        raise NotImplementedError

    def per_example(self, f: NativeArray, targets: NativeArray) -> NativeArray:
        """``l(f_n, y_n)`` for every example, shape ``(N,)``, in the arrays' own framework."""
        raise NotImplementedError

    def residual(self, f: NDArray[Any], targets: NDArray[Any]) -> NDArray[Any]:
        """``eps = dl/df``, shape ``(N, k)``, in NumPy."""
        raise NotImplementedError

    def hessian_vector(
        self, f: NDArray[Any], targets: NDArray[Any], v: NDArray[Any]
    ) -> NDArray[Any]:
        """``(d^2 l / df^2) v`` per example, shape ``(N, k)``, in NumPy."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SquaredLoss(Loss):
    """``l = 1/2 ||f - y||^2``, ``eps = f - y``. Targets of shape (N, k), or (N,) when k = 1."""

    name = "squared"

    def prepare_targets(
        self, y: ArrayLike, n_examples: int, k: int, dtype: DTypeLike
    ) -> NDArray[Any]:
        y = check_float_array(y, "y", dtype=dtype)
        if y.ndim == 1 and k == 1:
            y = y[:, None]
        if y.shape != (n_examples, k):
            raise ValueError(
                f"y must have shape ({n_examples}, {k}) for the squared loss"
                + (f" (or ({n_examples},) since k = 1)" if k == 1 else "")
                + f"; got {y.shape}"
            )
        return y

    def per_example(self, f: NativeArray, targets: NativeArray) -> NativeArray:
        ops = array_ops(f)
        r = f - targets
        return 0.5 * ops.sum_rows(r * r)

    def residual(self, f: NDArray[Any], targets: NDArray[Any]) -> NDArray[Any]:
        return f - targets

    def hessian_vector(
        self, f: NDArray[Any], targets: NDArray[Any], v: NDArray[Any]
    ) -> NDArray[Any]:
        return v


class LogisticLoss(Loss):
    """Binary logistic loss for one output: ``l = log(1 + e^f) - y f``, ``y in {0, 1}``."""

    name = "logistic"

    def prepare_targets(
        self, y: ArrayLike, n_examples: int, k: int, dtype: DTypeLike
    ) -> NDArray[Any]:
        if k != 1:
            raise ValueError(f"the logistic loss needs k = 1 output; the model has k = {k}")
        y = as_label_array(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.shape != (n_examples,):
            raise ValueError(f"y must have shape ({n_examples},) of 0/1 labels; got {y.shape}")
        if y.dtype.kind not in "biuf" or not np.all((y == 0) | (y == 1)):
            raise ValueError("y must hold binary labels 0 or 1 for the logistic loss")
        return y.astype(dtype)[:, None]

    def per_example(self, f: NativeArray, targets: NativeArray) -> NativeArray:
        ops = array_ops(f)
        xp = ops.xp
        softplus = xp.where(f > 0, f, 0.0 * f) + xp.log1p(xp.exp(-xp.abs(f)))
        return ops.sum_rows(softplus - targets * f)

    def residual(self, f: NDArray[Any], targets: NDArray[Any]) -> NDArray[Any]:
        return sigmoid(f) - targets

    def hessian_vector(
        self, f: NDArray[Any], targets: NDArray[Any], v: NDArray[Any]
    ) -> NDArray[Any]:
        s = sigmoid(f)
        return s * (1.0 - s) * v


class SoftmaxCrossEntropy(Loss):
    """``l = logsumexp(f) - f_y``, ``eps = softmax(f) - onehot(y)``.

    ``y`` holds integer class indices of shape (N,) in ``[0, k)``, or rows of shape
    (N, k) that are non-negative and sum to one (one-hot, or soft labels).
    """

    name = "softmax_cross_entropy"

    def prepare_targets(
        self, y: ArrayLike, n_examples: int, k: int, dtype: DTypeLike
    ) -> NDArray[Any]:
        if k < 2:
            raise ValueError(f"softmax cross-entropy needs k >= 2 outputs; the model has k = {k}")
        y = as_label_array(y)
        if y.ndim == 2 and y.shape[1] == 1 and y.dtype.kind in "iu":
            y = y[:, 0]  # a column of class labels, as some loaders yield them
        if y.ndim == 1:
            if y.shape[0] != n_examples:
                raise ValueError(f"y must have {n_examples} labels; got shape {y.shape}")
            if y.dtype.kind not in "iu":
                raise TypeError(f"y: integer class labels must have an integer dtype; got {y.dtype}")
            if np.any(y < 0) or np.any(y >= k):
                raise ValueError(f"y: labels must lie in [0, {k}); got values in [{y.min()}, {y.max()}]")
            onehot = np.zeros((n_examples, k), dtype=dtype)
            onehot[np.arange(n_examples), y] = 1
            return onehot
        y = check_float_array(y, "y", shape=(n_examples, k), dtype=dtype)
        if np.any(y < 0) or not np.allclose(y.sum(axis=1), 1.0, rtol=0, atol=1e-6):
            raise ValueError("one-hot targets y must be non-negative rows that sum to 1")
        return y

    def per_example(self, f: NativeArray, targets: NativeArray) -> NativeArray:
        ops = array_ops(f)
        return ops.logsumexp_rows(f) - ops.sum_rows(targets * f)

    def residual(self, f: NDArray[Any], targets: NDArray[Any]) -> NDArray[Any]:
        return _softmax(f) - targets

    def hessian_vector(
        self, f: NDArray[Any], targets: NDArray[Any], v: NDArray[Any]
    ) -> NDArray[Any]:
        p = _softmax(f)
        return p * v - p * np.sum(p * v, axis=-1, keepdims=True)


_LOSSES = {cls.name: cls() for cls in (SquaredLoss, LogisticLoss, SoftmaxCrossEntropy)}


def loss_names() -> list[str]:
    """Names of the built-in losses."""
    return sorted(_LOSSES)


def get_loss(spec: LossLike) -> Loss:
    """Return the ``Loss`` for a name or a ``Loss`` instance."""
    if isinstance(spec, Loss):
        return spec
    if isinstance(spec, str):
        try:
            return _LOSSES[spec]
        except KeyError:
            raise ValueError(f"unknown loss {spec!r}; expected one of {loss_names()}") from None
    raise TypeError(f"loss must be a name or a Loss; got {type(spec).__name__}")
