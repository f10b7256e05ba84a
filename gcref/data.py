"""Streaming data into chunks: the one data contract of every measure.

``data`` is one of

- an array ``X`` of shape ``(N, *input_shape)`` (NumPy, torch or JAX);
- a ``tuple`` ``(X, y)`` of two arrays with the same first dimension (further items,
  such as sample weights or indices, are ignored);
- any other iterable of batches, which is what a ``torch.utils.data.DataLoader``, a
  list or a generator yields. Each batch is an array ``X``; a tuple or list
  ``(X,)``, ``(X, y)`` or ``(X, y, *extra)`` (extras ignored); or a ``dict``, read
  with ``input_key`` and ``target_key``.

``batch_fn``, when given, maps every batch (whatever it is) to ``X`` or ``(X, y)``
first, for formats of your own.

Batches are cut into chunks of at most ``chunk_size`` examples, so that memory stays
bounded whatever the data set size. The iterable's batches are also the mini-batches of
the SGD term of the modified losses (docs/math.md section 5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gcref._checks import check_positive_int
from gcref._progress import Progress

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from numpy.typing import NDArray

    from gcref._typing import Data, NativeArray
    from gcref.backends.adapter import ModelAdapter
    from gcref.losses import Loss

__all__ = [
    "DataSpec", "batches", "chunk_ends", "chunks", "labelled_chunk_ends", "labelled_chunks",
    "minibatches", "to_numpy",
]


def is_array(x: object) -> bool:
    """Whether ``x`` looks like an array (has ``shape`` and ``ndim``)."""
    return hasattr(x, "shape") and hasattr(x, "ndim")


def to_numpy(y: Any) -> NDArray[Any]:
    """A NumPy, torch or JAX array as NumPy (labels and targets)."""
    if hasattr(y, "detach"):
        return y.detach().cpu().numpy()
    return np.asarray(y)


class DataSpec:
    """How to read the batches of ``data``: the keys of dict batches, or a function.

    Parameters
    ----------
    input_key, target_key : str, optional
        For batches that are dicts: the entries holding ``X`` and ``y``.
    batch_fn : callable, optional
        ``batch -> X`` or ``batch -> (X, y)``, applied to every batch first.
    progress : bool, optional
        Show a progress line on stderr; default: when stderr is a terminal.
    """

    def __init__(
        self, input_key: str | None = None, target_key: str | None = None,
        batch_fn: Callable[[Any], Any] | None = None, progress: bool | None = None,
    ) -> None:
        for name, key in (("input_key", input_key), ("target_key", target_key)):
            if key is not None and not isinstance(key, str):
                raise TypeError(f"{name} must be a string; got {type(key).__name__}")
        if batch_fn is not None and not callable(batch_fn):
            raise TypeError(f"batch_fn must be callable; got {type(batch_fn).__name__}")
        if progress is not None and not isinstance(progress, bool):
            raise TypeError(f"progress must be True, False or None; got {progress!r}")
        self.input_key = input_key
        self.target_key = target_key
        self.batch_fn = batch_fn
        self.progress = progress

    def settings(self) -> dict[str, str]:
        """The non-default reading options, for a result's ``settings``."""
        out = {}
        if self.input_key is not None:
            out["input_key"] = self.input_key
        if self.target_key is not None:
            out["target_key"] = self.target_key
        return out


DEFAULT = DataSpec()


def _split(batch: Any, name: str, spec: DataSpec) -> tuple[NativeArray, NativeArray | None]:
    """One batch as ``(X, y or None)``."""
    if spec.batch_fn is not None:
        batch = spec.batch_fn(batch)
    if is_array(batch):
        return batch, None
    if isinstance(batch, dict):
        return _from_dict(batch, name, spec)
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise TypeError(f"{name} is an empty {type(batch).__name__}: expected X or (X, y)")
        if not all(is_array(a) for a in batch[:2]):
            kinds = ", ".join(type(a).__name__ for a in batch[:2])
            raise TypeError(
                f"{name} must start with arrays X (and y); got ({kinds}): convert with "
                "numpy.asarray, or pass batch_fn= to read your format"
            )
        if len(batch) == 1:
            return batch[0], None
        return _checked_pair(batch[0], batch[1], name)
    raise TypeError(
        f"{name} must be an array X or a pair (X, y) (or a dict, read with input_key=); got "
        f"{type(batch).__name__} (pass batch_fn= to read your format)"
    )


def _from_dict(
    batch: Mapping[Any, Any], name: str, spec: DataSpec,
) -> tuple[NativeArray, NativeArray | None]:
    if spec.input_key is None:
        raise TypeError(
            f"{name} is a dict with keys {sorted(map(str, batch))}: pass input_key= (and "
            "target_key= for measures with labels) to say which entries are X and y"
        )
    for key in (spec.input_key, spec.target_key):
        if key is not None and key not in batch:
            raise KeyError(f"{name} has no entry {key!r}; its keys are {sorted(map(str, batch))}")
    X = batch[spec.input_key]
    y = None if spec.target_key is None else batch[spec.target_key]
    if not is_array(X):
        raise TypeError(f"{name}[{spec.input_key!r}] must be an array; got {type(X).__name__}")
    if y is None:
        return X, None
    if not is_array(y):
        raise TypeError(f"{name}[{spec.target_key!r}] must be an array; got {type(y).__name__}")
    return _checked_pair(X, y, name)


def _checked_pair(X: NativeArray, y: NativeArray, name: str) -> tuple[NativeArray, NativeArray]:
    if X.ndim < 1:
        raise ValueError(f"{name}: X must have shape (n, *input_shape); got {tuple(X.shape)}")
    if y.ndim < 1 or y.shape[0] != X.shape[0]:
        labels = y.shape[0] if y.ndim else "no"
        raise ValueError(f"{name}: X has {X.shape[0]} examples but y has {labels} labels")
    return X, y


def batches(
    data: Data, spec: DataSpec = DEFAULT,
) -> Iterator[tuple[str, NativeArray, NativeArray | None]]:
    """``data`` as an iterator of ``(name, X, y or None)`` batches (see the module docstring).

    ``name`` is ``"data"`` for one array or pair, ``"data batch j"`` for the j-th batch of
    an iterable: what error messages call it.
    """
    if is_array(data) or isinstance(data, tuple):
        yield ("data", *_split(data, "data", spec))  # one batch (batch_fn applies to it)
        return
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(
            "data must be an array X, a tuple (X, y) or an iterable of batches; "
            f"got {type(data).__name__}"
        )
    if isinstance(data, dict):
        yield ("data", *_split(data, "data", spec))
        return
    for j, batch in enumerate(data):
        yield (f"data batch {j}", *_split(batch, f"data batch {j}", spec))


def chunks(
    data: Data, chunk_size: int, *, need_targets: bool, allow_empty: bool = False,
    spec: DataSpec = DEFAULT, what: str = "measure", check: Callable[[Any, str], Any] | None = None,
) -> Iterator[tuple[NativeArray, NativeArray | None]]:
    """Chunks ``(X, y)`` of at most ``chunk_size`` examples, in data order.

    ``check(X, name)``, when given, validates (and may convert) each batch before it is
    cut, so that a bad batch is named in the error (``"data batch 3 contains NaN"``).

    Empty data raises unless ``allow_empty``: a process's shard may be empty as long as
    the whole data set is not (the callers check the all-reduced count). An error raised
    by the data itself (a loader failing part-way) propagates: no partial value is ever
    returned as complete.
    """
    for X, y, _ in chunk_ends(data, chunk_size, need_targets=need_targets,
                              allow_empty=allow_empty, spec=spec, what=what, check=check):
        yield X, y


def chunk_ends(
    data: Data, chunk_size: int, *, need_targets: bool, allow_empty: bool = False,
    spec: DataSpec = DEFAULT, what: str = "measure", check: Callable[[Any, str], Any] | None = None,
) -> Iterator[tuple[NativeArray, NativeArray | None, bool]]:
    """:func:`chunks` as ``(X, y, last)``: ``last`` is true for the last chunk of a batch.

    A caller that keeps a chunk in use while it reads the next one must finish with
    the last chunk of a batch before reading on: a loader may refill the batch's memory
    in place for the next batch.
    """
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    seen = False
    with Progress(what, spec.progress) as progress:
        for name, X, y in batches(data, spec):
            if X.ndim < 2:
                raise ValueError(
                    f"{name}: X must have shape (n, *input_shape); got {tuple(X.shape)}"
                )
            if check is not None and X.shape[0]:
                X = check(X, name)
            if need_targets and y is None:
                raise TypeError(
                    "data must carry labels for this measure: pass (X, y), batches of (X, y), "
                    "or dict batches with target_key="
                )
            n = X.shape[0]
            for start in range(0, n, chunk_size):
                seen = True
                X_chunk = X[start : start + chunk_size]
                y_chunk = None if y is None else y[start : start + chunk_size]
                yield X_chunk, y_chunk, start + chunk_size >= n
                progress.advance(X_chunk.shape[0])
    if not seen and not allow_empty:
        raise ValueError("data holds no example: the measure is a mean over at least one example")


def labelled_chunks(
    adapter: ModelAdapter, data: Data, loss: Loss, chunk_size: int, *, allow_empty: bool = False,
    spec: DataSpec = DEFAULT, what: str = "measure", check: Callable[[Any, str], Any] | None = None,
) -> Iterator[tuple[NativeArray, NDArray[np.float64]]]:
    """Chunks ``(X, targets)``, ``targets`` prepared by ``loss`` as float64 ``(n, k)``.

    ``check`` as in :func:`chunks` (default: ``adapter.check_batch``).

    Float targets of any float dtype are accepted (regression targets, soft labels);
    they are compared and accumulated in float64.
    """
    for X, targets, _ in labelled_chunk_ends(adapter, data, loss, chunk_size,
                                             allow_empty=allow_empty, spec=spec, what=what,
                                             check=check):
        yield X, targets


def labelled_chunk_ends(
    adapter: ModelAdapter, data: Data, loss: Loss, chunk_size: int, *, allow_empty: bool = False,
    spec: DataSpec = DEFAULT, what: str = "measure", check: Callable[[Any, str], Any] | None = None,
) -> Iterator[tuple[NativeArray, NDArray[np.float64], bool]]:
    """:func:`labelled_chunks` as ``(X, targets, last)``, ``last`` as in :func:`chunk_ends`."""
    k = None
    for X, y, last in chunk_ends(
        data, chunk_size, need_targets=True, allow_empty=allow_empty, spec=spec, what=what,
        check=adapter.check_batch if check is None else check,
    ):
        if k is None:
            k = adapter.output_dim(X)
        y = to_numpy(y)
        if y.dtype.kind == "f":
            y = y.astype(np.float64)
        yield X, loss.prepare_targets(y, X.shape[0], k, np.float64), last


def minibatches(data: Data, batch_size: int | None, spec: DataSpec = DEFAULT) -> Iterable[Any]:
    """The mini-batches of the SGD term: a list or a generator of ``(X, y)`` pairs.

    One ``(X, y)`` tuple is cut into consecutive blocks of ``batch_size`` examples (the
    last may be smaller); an iterable's own batches are the mini-batches.
    """
    if is_array(data) and spec.batch_fn is None:
        raise TypeError(
            "data must carry labels for the IGR terms: pass (X, y) or batches of (X, y)"
        )
    if is_array(data) or isinstance(data, tuple):
        if batch_size is None:
            raise TypeError(
                "batch_size is required when data is one (X, y) pair: it defines the mini-batches"
            )
        X, y = _split(data, "data", spec)
        if y is None:
            raise TypeError("data must carry labels for the IGR terms: pass (X, y)")
        batch_size = check_positive_int(batch_size, "batch_size")
        return [(X[s : s + batch_size], y[s : s + batch_size]) for s in range(0, X.shape[0], batch_size)]
    if batch_size is not None:
        raise TypeError("batch_size must be left out when data is an iterable of mini-batches")
    return ([X] if y is None else (X, y) for _, X, y in batches(data, spec))


def reiterable(data: Data, what: str) -> None:
    """Refuse a one-shot iterator where a measure needs several passes over ``data``."""
    if is_array(data) or isinstance(data, tuple):
        return
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(
            "data must be an array X, a tuple (X, y) or an iterable of batches; "
            f"got {type(data).__name__}"
        )
    if iter(data) is data:
        raise TypeError(
            f"{what} passes over data more than once: pass an array, a tuple (X, y), a list "
            "of batches or a DataLoader, not a generator or iterator (consumed once)"
        )
