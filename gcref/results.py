"""What the measures return: plain frozen records that serialise to JSON.

Every result has ``to_dict()``, whose output ``json.dumps`` accepts (arrays become lists,
non-finite floats become ``None``), and ``settings``: the arguments that produced it
(chunk size, probes, loss, ...), filled in by the measure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from gcref._checks import check_finite_scalar

if TYPE_CHECKING:
    from collections.abc import Mapping

    from numpy.typing import ArrayLike, DTypeLike, NDArray

__all__ = ["Complexity", "ComplexityEstimate", "GradNorms", "IGRTerms", "Record", "jsonable"]


def jsonable(value: Any) -> Any:
    """``value`` with arrays as lists and NaN / infinities as ``None``, for ``json.dumps``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


class Record:
    """``to_dict`` over the dataclass fields: the base of every result record."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-serialisable values (see :func:`jsonable`)."""
        out: dict[str, Any] = {"type": type(self).__name__}
        out.update({f.name: jsonable(getattr(self, f.name)) for f in fields(self)})  # type: ignore[arg-type]
        return out


@dataclass(frozen=True)
class Complexity(Record):
    """A data-set average together with the per-example values it averages.

    Attributes
    ----------
    value : float
        The mean over the data set.
    per_example : ndarray, shape (N,)
        The per-example values, float64, in the order the data were given (this
        process's examples under ``torch.distributed``).
    settings : dict
        The arguments of the measure.
    """

    value: float
    per_example: NDArray[np.float64]
    settings: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ComplexityEstimate(Record):
    """An unbiased probe estimate of the geometric complexity.

    Attributes
    ----------
    value : float
        The estimate of ``GC(f, D)``.
    stderr : float
        Its standard error over the probes, the data being fixed; ``nan`` when
        ``n_probes == 1`` (one probe per example carries no information about the
        probe variance).
    n_probes : int
        Probes per example.
    n_examples : int
        ``|D|``.
    settings : dict
    """

    value: float
    stderr: float
    n_probes: int
    n_examples: int
    settings: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class GradNorms(Record):
    """Per-example squared gradient norms, one column per parameter tensor.

    ``numpy.asarray(norms)`` is ``norms.total``, so a ``GradNorms`` can stand where an
    ``(N,)`` array of totals is expected.

    Attributes
    ----------
    per_parameter : ndarray, shape (N, T)
        ``||grad_p||^2`` for each of the T parameter tensors ``p`` of theta, float64.
    names : tuple of str, length T
        The tensors' names: ``W_1, b_1, ..., W_l, b_l`` for a :class:`gcref.MLP`, the
        parameter names of a torch module, the key paths of a JAX pytree.
    settings : dict
    """

    per_parameter: NDArray[np.floating[Any]]
    names: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.per_parameter.ndim != 2 or self.per_parameter.shape[1] != len(self.names):
            raise ValueError(
                f"per_parameter must have shape (N, {len(self.names)}), one column per name; "
                f"got {self.per_parameter.shape}"
            )

    def __array__(self, dtype: DTypeLike | None = None, copy: bool | None = None) -> NDArray[Any]:
        total = self.total
        return total if dtype is None else total.astype(dtype)

    def __len__(self) -> int:
        return self.per_parameter.shape[0]

    @property
    def total(self) -> NDArray[np.floating[Any]]:
        """``||grad_theta||^2`` per example, shape (N,)."""
        return self.per_parameter.sum(axis=1)

    def _mlp_columns(self, prefix: str) -> NDArray[np.floating[Any]]:
        cols = [j for j, name in enumerate(self.names) if name.startswith(prefix)]
        if self.names != tuple(f"{k}_{i}" for i in range(1, len(self.names) // 2 + 1) for k in "Wb"):
            raise ValueError(
                "weights and biases are defined for the parameters of a gcref.MLP "
                "(W_1, b_1, ...); use per_parameter and names for this model"
            )
        return self.per_parameter[:, cols]

    @property
    def weights(self) -> NDArray[np.floating[Any]]:
        """``||grad_{W_i}||_F^2`` per example and layer, shape (N, l) (gcref.MLP only)."""
        return self._mlp_columns("W_")

    @property
    def biases(self) -> NDArray[np.floating[Any]]:
        """``||grad_{b_i}||^2`` per example and layer, shape (N, l) (gcref.MLP only)."""
        return self._mlp_columns("b_")

    @property
    def per_layer(self) -> NDArray[np.floating[Any]]:
        """``||grad_{(W_i, b_i)}||^2``, shape (N, l) (gcref.MLP only)."""
        return self.weights + self.biases

    @classmethod
    def from_layers(
        cls, weights: ArrayLike, biases: ArrayLike, settings: Mapping[str, Any] | None = None,
    ) -> GradNorms:
        """From an MLP's ``(N, l)`` weight and bias columns."""
        weights, biases = np.asarray(weights), np.asarray(biases)
        n, depth = weights.shape
        per = np.empty((n, 2 * depth), dtype=np.result_type(weights, biases))
        per[:, 0::2], per[:, 1::2] = weights, biases
        names = tuple(f"{kind}_{i}" for i in range(1, depth + 1) for kind in ("W", "b"))
        return cls(per, names, dict(settings or {}))


@dataclass(frozen=True)
class IGRTerms(Record):
    """The loss and the three implicit-regularisation terms over a data set (docs/math.md section 5).

    Attributes
    ----------
    loss : float
        ``L = (1/N) sum_n l_n``.
    full_batch : float
        ``||grad L||^2``, the term of full-batch gradient descent.
    mini_batch : float
        ``(1/m) sum_j ||grad L_{B_j}||^2`` over the m mini-batches, the term of one SGD epoch.
    per_example : float
        ``(1/N) sum_n ||grad_theta l_n||^2``, the term of batch size 1 (seed 000, eq. 6).
    n_examples : int
        ``N``.
    n_batches : int
        ``m``.
    settings : dict
    """

    loss: float
    full_batch: float
    mini_batch: float
    per_example: float
    n_examples: int
    n_batches: int
    settings: dict[str, Any] = field(default_factory=dict, compare=False)

    def modified_loss_gd(self, h: float) -> float:
        """``L~_GD = L + (h/4) ||grad L||^2`` for step size ``h``."""
        h = check_finite_scalar(h, "h", nonnegative=True)
        return self.loss + h / 4 * self.full_batch

    def modified_loss_sgd(self, h: float) -> float:
        """``L~_SGD = L + h/(4m) sum_j ||grad L_{B_j}||^2`` (equal-sized mini-batches)."""
        h = check_finite_scalar(h, "h", nonnegative=True)
        return self.loss + h / 4 * self.mini_batch

    def modified_loss_per_example(self, h: float) -> float:
        """``L + h/(4N) sum_n ||grad_theta l_n||^2`` (seed 000, eq. 6)."""
        h = check_finite_scalar(h, "h", nonnegative=True)
        return self.loss + h / 4 * self.per_example
