"""The measures, each written once, for every kind of model.

``model`` is one of

- a :class:`gcref.MLP`, with ``params=`` its ``(W, b)`` pairs and ``backend=`` one of
  ``"numpy"`` (the analytic reference, the default), ``"autograd"``, ``"jax"``, ``"torch"``;
- a ``torch.nn.Module`` (``params`` left out: the module's own parameters that require
  grad are theta);
- a JAX function ``apply(params, x)`` on a batch ``x``, with its parameter pytree
  ``params`` (plain JAX; Flax ``model.apply`` with ``{"params": ...}``; an Equinox model
  split by ``params, rest = eqx.partition(model, eqx.is_inexact_array)`` and applied as
  ``lambda p, x: jax.vmap(eqx.combine(p, rest))(x)``);
- a :class:`gcref.backends.adapter.ModelAdapter` of your own.

Every measure is one function here, on the per-chunk primitives of
:class:`~gcref.backends.adapter.ModelAdapter`; the same function measures the reference
MLP and a ResNet on a GPU. The MLP functions of the top-level package
(``gcref.geometric_complexity(mlp, params, X)`` and the like) are thin spellings of these.

Data
----
``data`` is an array ``X``, a tuple ``(X, y)``, or an iterable of batches (a list, a
generator, a ``torch.utils.data.DataLoader``); see :mod:`gcref.data`. Each measure
also takes the reading options ``input_key`` and ``target_key`` (dict batches),
``batch_fn`` (a batch -> ``X`` or ``(X, y)``) and ``progress`` (a progress line on stderr;
default: when stderr is a terminal). Batches are cut into chunks of at most
``chunk_size`` examples; sums are accumulated in float64 whatever the model's dtype. The
batches of an iterable are the mini-batches of the SGD term.

Several processes
-----------------
Under ``torch.distributed`` (initialised by the caller) each process passes its own shard
of the data; sums, counts and gradient vectors are all-reduced, so every process gets
the value of the whole data set, equal to the single-process one. Per-example arrays
stay those of the process's own shard. The j-th mini-batch of the SGD term is the union
of every process's j-th batch, as in data-parallel training: every process must pass the
same number of mini-batches (a clear error otherwise, on every process). A process's
shard may be empty; the whole data set may not. In JAX, a single process shards each
chunk across ``jax.devices()``.

Index conventions: ``N`` examples, ``k`` outputs, ``d`` input features (the product of
``input_shape``), ``p`` parameters in ``T`` tensors; ``J(x) = df/dx`` of shape ``(k, d)``.
"""

from __future__ import annotations

import functools
import itertools
import sys
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import numpy as np

from gcref._checks import all_finite, check_finite_scalar, check_rng
from gcref.backends.adapter import ModelAdapter
from gcref.data import (
    DataSpec,
    chunk_ends,
    labelled_chunk_ends,
    labelled_chunks,
    minibatches,
    reiterable,
)
from gcref.losses import get_loss
from gcref.mlp import MLP
from gcref.results import Complexity, ComplexityEstimate, GradNorms, IGRTerms

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from numpy.typing import ArrayLike, NDArray

    from gcref._typing import BackendLike, Data, LossLike, Model, NativeArray
    from gcref.losses import Loss

    F = TypeVar("F", bound=Callable[..., Any])
    T = TypeVar("T")

__all__ = [
    "IGRTerms",
    "MODES",
    "PROBES",
    "dirichlet_energy",
    "estimate_geometric_complexity",
    "geometric_complexity",
    "igr_terms",
    "loss_grad",
    "loss_grad_sq_norms",
    "loss_hvp",
    "mean_loss",
    "modified_loss_gd",
    "modified_loss_gd_grad",
    "modified_loss_per_example",
    "modified_loss_per_example_grad",
    "modified_loss_sgd",
    "modified_loss_sgd_grad",
    "output_grad_sq_norms",
    "parameter_vector",
    "wrap",
]

MODES = ("auto", "reverse", "forward")
PROBES = ("gaussian", "rademacher", "sphere")


# -- models ----------------------------------------------------------------------------------


def wrap(model: Model, params: Any = None, backend: BackendLike | None = None) -> ModelAdapter:
    """The :class:`~gcref.backends.adapter.ModelAdapter` for a model.

    Parameters
    ----------
    model : gcref.MLP, torch.nn.Module, callable or ModelAdapter
    params : optional
        The MLP's ``(W, b)`` pairs, or a JAX function's parameter pytree; must be left
        out for a ``torch.nn.Module`` and an adapter.
    backend : str, optional
        For a :class:`gcref.MLP`: the MLP backend (default ``"numpy"``). For a torch
        module or a JAX function it may only name their own framework.

    Raises
    ------
    TypeError
        For a missing or superfluous ``params``, a backend that does not fit the model,
        or a model of no known kind.
    """
    if isinstance(model, ModelAdapter):
        for name, value in (("params", params), ("backend", backend)):
            if value is not None:
                raise TypeError(f"{name} must be left out when model is already a ModelAdapter")
        return model
    if isinstance(model, MLP):
        if params is None:
            raise TypeError("a gcref.MLP needs params=: its (W, b) pairs")
        from gcref.backends.mlp_model import MLPModel

        return MLPModel(model, params, "numpy" if backend is None else backend)
    if _is_torch_module(model):
        _check_own_backend(backend, "torch", "a torch.nn.Module")
        if params is not None:
            raise TypeError(
                "params must be left out for a torch.nn.Module: its own parameters are used"
            )
        from gcref.backends.torch_model import TorchModel

        return TorchModel(model)
    if callable(model):
        _check_own_backend(backend, "jax", "a JAX apply function")
        from gcref.backends.jax_frameworks import adapt

        return adapt(model, params)
    raise TypeError(
        "model must be a torch.nn.Module or a JAX apply(params, x) function, a gcref.MLP with "
        f"params, or a ModelAdapter; got {type(model).__name__}"
    )


def _check_own_backend(backend: BackendLike | None, own: str, what: str) -> None:
    if backend is not None and backend != own:
        raise TypeError(
            f"backend={backend!r} does not apply to {what}: it is measured in {own} "
            "(backend chooses the framework of a gcref.MLP only)"
        )


def _is_torch_module(model: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _measure(fn: F) -> F:
    """Run the measure ``fn`` on the adapter of its model, inside one adapter session.

    The model is wrapped once (:func:`wrap`) and every chunk of the call runs inside
    :meth:`~gcref.backends.adapter.ModelAdapter.session`, where adapters do once what
    does not change from chunk to chunk (mode switches, placement, the list of theta).
    """

    @functools.wraps(fn)
    def measure(
        model: Model, *args: Any, params: Any = None, backend: BackendLike | None = None,
        **kwargs: Any,
    ) -> Any:
        adapter = wrap(model, params, backend)
        with adapter.session():
            return fn(adapter, *args, **kwargs)

    return measure  # type: ignore[return-value]


def _spec(
    input_key: str | None, target_key: str | None, batch_fn: Callable[[Any], Any] | None,
    progress: bool | None,
) -> DataSpec:
    return DataSpec(input_key, target_key, batch_fn, progress)


def _checked(
    adapter: ModelAdapter, chunk_size: int, wrt_input: bool = False
) -> Callable[[Any, str], Any]:
    """``adapter.check_batch``, and once per call the check that examples are independent.

    Per-example quantities (``J(x_n)``, ``grad_theta l_n``) exist only when the model
    computes each example independently of the others in its batch. Once per measure
    call, on the first chunk of at least two examples (once per model and input shape
    where the adapter remembers it), the model is run on the chunk
    and on the chunk split in two (two more forward passes; in JAX the halves are padded
    to the chunk's compiled size); outputs that differ beyond the dtype's rounding raise
    a ``ValueError`` naming the cause (batch statistics). A gcref MLP never couples
    examples and is not checked. With ``wrt_input`` (the input-Jacobian measures), each
    batch is also checked to have derivatives with respect to the input.
    """
    # One entry while the check is due; none for an adapter whose examples are independent
    # by construction (a list, so that ``check`` can clear it).
    pending = [] if adapter.examples_independent else [True]
    cache = adapter.independence_cache()

    def check(X: NativeArray, name: str) -> Any:
        X = adapter.check_batch(X, name)
        if wrt_input:
            adapter.check_input_derivatives(X, name)
        if pending and X.shape[0] >= 2:
            pending.clear()
            key = (tuple(X.shape[1:]), X.dtype)
            if cache is None or key not in cache:
                _check_independent(adapter, X[: max(2, chunk_size)])
                if cache is not None:
                    cache.add(key)
        return X

    return check


def _one_ahead(
    adapter: ModelAdapter, pieces: Iterable[tuple[Any, ...]],
    begin: Callable[..., Callable[[], T]],
) -> Iterator[T]:
    """``begin(*args)()`` for each piece ``(*args, last)``, in order.

    ``begin`` starts a chunk's work (:meth:`ModelAdapter.begin`) and returns a function
    that completes it. For an adapter that computes asynchronously
    (``adapter.asynchronous``), the next chunk of a batch is begun before this one is
    completed, so one chunk is prepared while the other computes; the last chunk of a
    batch (``last``) is completed before the next batch is read, since a loader may
    refill the batch's memory in place. An error in reading or beginning the next chunk
    is raised after the pending chunk is completed, so that chunk's own error (a NaN in
    it) comes first, as in data order. Other adapters complete each chunk at once.
    """
    if not adapter.asynchronous:
        for piece in pieces:
            yield begin(*piece[:-1])()
        return
    pending: Callable[[], T] | None = None
    source = iter(pieces)
    while True:
        error = None
        try:
            piece = next(source, None)
            if piece is not None:
                started = begin(*piece[:-1])
        # Re-raised below. Not BaseException: a KeyboardInterrupt should not wait for the
        # pending chunk.
        except Exception as err:  # noqa: BLE001
            error = err
        if error is not None:
            if pending is not None:
                pending()  # its own error first, as in data order
            raise error
        if pending is not None:
            value, pending = pending(), None
            yield value
        if piece is None:
            return
        if piece[-1]:
            # The work is let go before the next batch is read (no chunk's buffers idle
            # during the loader's work).
            value = started()
            del started
            yield value
        else:
            pending = started
            del started


def _counted(done: Callable[[], T], X: NativeArray) -> Callable[[], tuple[T, int]]:
    """``done`` completing to ``(its result, the chunk's number of examples)``."""
    n = X.shape[0]
    return lambda: (done(), n)


def _check_independent(adapter: ModelAdapter, X: NativeArray) -> None:
    whole = adapter.outputs(X)
    half = X.shape[0] // 2
    parts = np.concatenate([adapter.outputs(X[:half]), adapter.outputs(X[half:])])
    rtol, atol = adapter.rounding_tolerance()
    deviation = float(np.max(np.abs(whole - parts)))
    if deviation > rtol * float(np.max(np.abs(whole), initial=0.0)) + atol:
        raise ValueError(
            f"the model's output for an example depends on the other examples of its batch "
            f"(outputs on {X.shape[0]} examples and on the same examples in two halves differ by "
            f"{deviation:.3g}): batch statistics couple them (a BatchNorm in training mode or "
            "without running statistics, or an apply function that normalises over the batch). "
            "Per-example quantities need independent examples: evaluate with running statistics "
            "(module.eval() with track_running_stats=True; Flax use_running_average=True)"
        )


def _check_count(count: float) -> None:
    if count == 0:
        raise ValueError("data holds no example: the measure is a mean over at least one example")


class _Rows:
    """Per-example rows of a streamed measure, copied into one growing float64 buffer.

    Each chunk's rows are copied as they arrive and the adapter's array is let go.
    Keeping those arrays instead (a list to concatenate at the end) keeps one small block
    per chunk alive between the chunks' large, short-lived input and activation blocks;
    on glibc that pins the freed blocks in the heap, and a stream's resident memory then
    grew by about the size of the streamed inputs (measured: 83 MiB over 102,400 examples
    of 256 float32 features, 6 MiB of it the results; benchmarks/RESULTS.md). The buffer
    doubles when full, so it is allocated about log2(N) times.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._buffer: NDArray[np.float64] | None = None
        self._n = 0

    def add(self, rows: Any) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        if self._buffer is None:
            self._buffer = np.empty((max(rows.shape[0], 1),) + rows.shape[1:], dtype=np.float64)
        elif rows.shape[1:] != self._buffer.shape[1:]:
            raise ValueError(
                f"{self._what}: a chunk's rows have shape {rows.shape}, earlier ones "
                f"(n,) + {self._buffer.shape[1:]}"
            )
        need = self._n + rows.shape[0]
        if need > self._buffer.shape[0]:
            grown = np.empty((max(need, 2 * self._buffer.shape[0]),) + self._buffer.shape[1:],
                             dtype=np.float64)
            grown[: self._n] = self._buffer[: self._n]
            self._buffer = grown
        self._buffer[self._n : need] = rows
        self._n = need

    def array(self, empty_shape: tuple[int, ...] = (0,)) -> NDArray[np.float64]:
        """The rows, ``(N, ...)``, exactly N of them (``empty_shape`` zeros if none).

        The buffer is shrunk in place (``realloc``), not copied, and then handed over:
        the collector is empty afterwards.
        """
        buffer, self._buffer = self._buffer, None
        if buffer is None:
            return np.zeros(empty_shape, dtype=np.float64)
        buffer.resize((self._n,) + buffer.shape[1:], refcheck=False)
        self._n = 0
        return buffer


def _settings(adapter: ModelAdapter, spec: DataSpec, **extra: Any) -> dict[str, Any]:
    out = {"model": repr(adapter), **spec.settings()}
    out.update({k: (v.name if hasattr(v, "name") and not isinstance(v, str) else v) for k, v in extra.items()})
    return out


# -- geometric complexity -------------------------------------------------------------------


@overload
def geometric_complexity(
    model: Model, data: Data, *, params: Any = None, backend: BackendLike | None = None,
    chunk_size: int = 256, mode: str = "auto", per_example: Literal[False] = False,
    input_key: str | None = None, target_key: str | None = None,
    batch_fn: Callable[[Any], Any] | None = None, progress: bool | None = None,
) -> float: ...


@overload
def geometric_complexity(
    model: Model, data: Data, *, params: Any = None, backend: BackendLike | None = None,
    chunk_size: int = 256, mode: str = "auto", per_example: Literal[True],
    input_key: str | None = None, target_key: str | None = None,
    batch_fn: Callable[[Any], Any] | None = None, progress: bool | None = None,
) -> Complexity: ...


@overload
def geometric_complexity(
    model: Model, data: Data, *, params: Any = None, backend: BackendLike | None = None,
    chunk_size: int = 256, mode: str = "auto", per_example: bool,
    input_key: str | None = None, target_key: str | None = None,
    batch_fn: Callable[[Any], Any] | None = None, progress: bool | None = None,
) -> float | Complexity: ...


@_measure
def geometric_complexity(
    model: Model, data: Data, *, params: Any = None, backend: BackendLike | None = None,
    chunk_size: int = 256, mode: str = "auto", per_example: bool = False,
    input_key: str | None = None, target_key: str | None = None,
    batch_fn: Callable[[Any], Any] | None = None, progress: bool | None = None,
) -> float | Complexity:
    """Exact geometric complexity ``GC(f, D) = (1/N) sum_n ||J(x_n)||_F^2``.

    Parameters
    ----------
    model, params, backend
        See :func:`wrap`.
    data : array, (X, y) tuple or iterable of batches
        See the module docstring; labels, if any, are ignored.
    chunk_size : int
        Most examples per call of the framework.
    mode : {"auto", "reverse", "forward"}
        ``"reverse"``: one forward pass and k input-only vector-Jacobian products per
        chunk; ``"forward"``: d Jacobian-vector products; ``"auto"`` picks forward mode
        when ``d < k``. The same numbers either way.
    per_example : bool
        Return a :class:`gcref.results.Complexity` with the per-example values (this
        process's examples) instead of a float.
    input_key, target_key, batch_fn, progress
        Reading options (module docstring).

    Returns
    -------
    float or Complexity

    Notes
    -----
    docs/math.md section 2 (seed 003). For a linear model ``f(x) = W x + b``,
    ``GC = ||W||_F^2`` (seed 000, Remark 2). Users' models are evaluated in inference
    mode (``module.eval()``, restored afterwards), so that each example's Jacobian is
    its own.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    adapter = wrap(model, params, backend)
    spec = _spec(input_key, target_key, batch_fn, progress)
    # Per-example values are kept only when asked for: memory stays one chunk's otherwise.
    values, total, count = _Rows("geometric_complexity"), 0.0, 0
    ks: list[int] = []  # k, learnt from the first chunk

    def begin(X: NativeArray, _: Any) -> Callable[[], NDArray[np.float64]]:
        if not ks:
            ks.append(adapter.output_dim(X))
        chosen = mode
        if mode == "auto":
            chosen = "forward" if adapter.input_features(X) < ks[0] else "reverse"
        return adapter.begin("jacobian_sq_norms", X, chosen)

    pieces = chunk_ends(data, chunk_size, need_targets=False, allow_empty=True, spec=spec,
                        what="geometric_complexity",
                        check=_checked(adapter, chunk_size, wrt_input=True))
    for sq_norms in _one_ahead(adapter, pieces, begin):
        total, count = total + float(np.sum(sq_norms)), count + sq_norms.size
        if per_example:
            values.add(sq_norms)
    total, count = adapter.all_reduce_sum(np.array([total, count], dtype=np.float64))
    _check_count(count)
    value = float(total / count)
    if not per_example:
        return value
    return Complexity(value, values.array(), _settings(adapter, spec, chunk_size=chunk_size, mode=mode))


@overload
def dirichlet_energy(
    model: Model, data: Data, *, params: Any = None, backend: BackendLike | None = None,
    chunk_size: int = 256, mode: str = "auto", per_example: Literal[False] = False,
    input_key: str | None = None, target_key: str | None = None,
    batch_fn: Callable[[Any], Any] | None = None, progress: bool | None = None,
) -> float: ...


@overload
def dirichlet_energy(
    model: Model, data: Data, *, params: Any = None, backend: BackendLike | None = None,
    chunk_size: int = 256, mode: str = "auto", per_example: Literal[True],
    input_key: str | None = None, target_key: str | None = None,
    batch_fn: Callable[[Any], Any] | None = None, progress: bool | None = None,
) -> Complexity: ...


@overload
def dirichlet_energy(
    model: Model, data: Data, *, params: Any = None, backend: BackendLike | None = None,
    chunk_size: int = 256, mode: str = "auto", per_example: bool,
    input_key: str | None = None, target_key: str | None = None,
    batch_fn: Callable[[Any], Any] | None = None, progress: bool | None = None,
) -> float | Complexity: ...


@_measure
def dirichlet_energy(
    model: Model, data: Data, *, params: Any = None, backend: BackendLike | None = None,
    chunk_size: int = 256, mode: str = "auto", per_example: bool = False,
    input_key: str | None = None, target_key: str | None = None,
    batch_fn: Callable[[Any], Any] | None = None, progress: bool | None = None,
) -> float | Complexity:
    """Discrete Dirichlet energy ``DE^(f, D) = GC(f, D) / 2`` (docs/math.md section 2; seed 000, eq. 5).

    Same parameters and return type as :func:`geometric_complexity`; per-example values
    are ``||J(x_n)||_F^2 / 2``. Not the continuous Dirichlet energy of seed 000, eq. 4
    (an integral over the feature polytope: :func:`gcref.geometry.graph_volume`).
    """
    gc = geometric_complexity(
        model, data, params=params, backend=backend, chunk_size=chunk_size, mode=mode,
        per_example=True, input_key=input_key, target_key=target_key, batch_fn=batch_fn,
        progress=progress,
    )
    half = Complexity(gc.value / 2, gc.per_example / 2, gc.settings)
    return half if per_example else half.value


def draw_probes(
    rng: np.random.Generator, probe: str, shape: tuple[int, ...],
) -> NDArray[np.float64]:
    """Probes of ``shape`` ``(..., k)``, drawn in row-major order so that chunking does not change them.

    ``"gaussian"``: standard normal entries; ``"rademacher"``: independent signs;
    ``"sphere"``: uniform on the unit sphere of ``R^k`` (the statistic is then scaled by k).
    """
    if probe == "rademacher":
        return np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    v = rng.standard_normal(shape)
    if probe == "sphere":
        v /= np.linalg.norm(v, axis=-1, keepdims=True)
    return v


@_measure
def estimate_geometric_complexity(
    model: Model, data: Data, rng: np.random.Generator, *, params: Any = None,
    backend: BackendLike | None = None, n_probes: int = 1, probe: str = "gaussian",
    chunk_size: int = 256, input_key: str | None = None, target_key: str | None = None,
    batch_fn: Callable[[Any], Any] | None = None, progress: bool | None = None,
) -> ComplexityEstimate:
    """Unbiased probe estimate of ``GC(f, D)`` with its standard error.

    Parameters
    ----------
    model, data, params, backend, chunk_size
        As in :func:`geometric_complexity`; a chunk holds at least one example with all
        its probes.
    rng : numpy.random.Generator
        Source of the probes, drawn example by example: the same state gives the same
        probes for every model kind, backend and ``chunk_size``.
    n_probes : int
        Probes per example; each costs one input-only vector-Jacobian product.
    probe : {"gaussian", "rademacher", "sphere"}

    Returns
    -------
    ComplexityEstimate
        ``.value``, ``.stderr`` (``nan`` for one probe), ``.n_probes``, ``.n_examples``.

    Notes
    -----
    docs/math.md section 2: ``E ||v^T J||^2 = ||J||_F^2`` for ``E[v v^T] = I_k``; sphere
    probes have ``E[v v^T] = I_k / k``, so their statistic is ``k ||v^T J||^2``. With
    ``s_{n,p}`` the statistic of probe p at example n, the estimate is
    ``mean_{n,p} s_{n,p}`` and its variance, the data being fixed, ``sum_n Var(s_n) /
    (P N^2)``, estimated with each example's sample variance over its P probes. Under
    ``torch.distributed`` the sums are all-reduced; each process should pass its own
    generator.
    """
    from gcref._checks import check_positive_int

    check_rng(rng)
    n_probes = check_positive_int(n_probes, "n_probes")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; expected one of {PROBES}")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    adapter = wrap(model, params, backend)
    spec = _spec(input_key, target_key, batch_fn, progress)
    total, sample_var, count = 0.0, 0.0, 0
    ks: list[int] = []  # k, learnt from the first chunk
    per_chunk = max(1, chunk_size // n_probes)

    def begin(X: NativeArray, _: Any) -> Callable[[], NDArray[np.float64]]:
        if not ks:
            ks.append(adapter.output_dim(X))
        probes = draw_probes(rng, probe, (X.shape[0], n_probes, ks[0]))
        return adapter.begin("probe_sq_norms", X, probes)

    pieces = chunk_ends(data, per_chunk, need_targets=False, allow_empty=True, spec=spec,
                        what="estimate_geometric_complexity",
                        check=_checked(adapter, per_chunk, wrt_input=True))
    for stats in _one_ahead(adapter, pieces, begin):
        if probe == "sphere":
            stats = ks[0] * stats
        total, count = total + float(stats.sum()), count + stats.shape[0]
        if n_probes > 1:
            sample_var += float(np.var(stats, axis=1, ddof=1).sum())
    total, var_sum, count = adapter.all_reduce_sum(
        np.array([total, sample_var, count], dtype=np.float64)
    )
    _check_count(count)
    value = float(total / (count * n_probes))
    stderr = float("nan") if n_probes == 1 else float(np.sqrt(var_sum / (n_probes * count**2)))
    settings = _settings(adapter, spec, chunk_size=chunk_size, probe=probe)
    return ComplexityEstimate(value, stderr, n_probes, int(count), settings)


# -- per-example gradient norms -------------------------------------------------------------


@_measure
def output_grad_sq_norms(
    model: Model, data: Data, *, params: Any = None, backend: BackendLike | None = None,
    chunk_size: int = 256, input_key: str | None = None, target_key: str | None = None,
    batch_fn: Callable[[Any], Any] | None = None, progress: bool | None = None,
) -> GradNorms:
    """Per-example ``||grad_theta f(x_n)||_F^2`` (summed over the k outputs), by parameter tensor.

    Returns
    -------
    GradNorms
        ``.total`` of shape (N,), ``.per_parameter`` (N, T) with ``.names``; for a
        :class:`gcref.MLP` also ``.weights``, ``.biases`` and ``.per_layer`` (N, l).
        ``numpy.asarray`` of it is ``.total``. Values are this process's.

    Notes
    -----
    docs/math.md sections 1 and 3: the right-hand side of the transfer theorem,
    ``sum_i ||Delta_i||_F^2 (1 + ||h_i||^2)`` for an MLP. Per-example gradients are never
    formed where a norm identity applies (MLP layers; torch Linear, convolution and
    eval-mode BatchNorm layers, and any layer registered with
    :func:`gcref.backends.torch_layers.register_norm_rule`).
    """
    adapter = wrap(model, params, backend)
    spec = _spec(input_key, target_key, batch_fn, progress)
    rows = _Rows("output_grad_sq_norms")
    pieces = chunk_ends(data, chunk_size, need_targets=False, spec=spec,
                        what="output_grad_sq_norms", check=_checked(adapter, chunk_size))
    for sq_norms in _one_ahead(adapter, pieces, lambda X, _: adapter.begin("output_grad_sq_norms", X)):
        rows.add(sq_norms)
    settings = _settings(adapter, spec, chunk_size=chunk_size)
    return GradNorms(rows.array(), adapter.parameter_names(), settings)


@_measure
def loss_grad_sq_norms(
    model: Model, data: Data, loss: LossLike, *, params: Any = None,
    backend: BackendLike | None = None, chunk_size: int = 256, input_key: str | None = None,
    target_key: str | None = None, batch_fn: Callable[[Any], Any] | None = None,
    progress: bool | None = None,
) -> GradNorms:
    """Per-example ``||grad_theta l_n||^2``, by parameter tensor (docs/math.md sections 1 and 4).

    ``loss`` is a name (``"squared"``, ``"logistic"``, ``"softmax_cross_entropy"``) or a
    :class:`gcref.losses.Loss`; ``data`` must carry labels. Returns a :class:`GradNorms`
    as :func:`output_grad_sq_norms`; values are this process's.
    """
    adapter = wrap(model, params, backend)
    loss = get_loss(loss)
    spec = _spec(input_key, target_key, batch_fn, progress)
    rows = _Rows("loss_grad_sq_norms")
    pieces = labelled_chunk_ends(adapter, data, loss, chunk_size, spec=spec,
                                 what="loss_grad_sq_norms", check=_checked(adapter, chunk_size))
    for _, sq_norms in _one_ahead(
        adapter, pieces, lambda X, targets: adapter.begin("loss_grad_sq_norms", X, targets, loss)
    ):
        rows.add(sq_norms)
    settings = _settings(adapter, spec, chunk_size=chunk_size, loss=loss)
    return GradNorms(rows.array(), adapter.parameter_names(), settings)


# -- the loss, its gradient and its Hessian ------------------------------------------------


def _added(total: Any, vector: Any) -> Any:
    """``total + vector``, or ``vector`` itself for the first one (``total`` is ``None``):
    no zero vector to add the first chunk to (a pass over every parameter)."""
    return vector if total is None else total + vector


def _or_zeros(adapter: ModelAdapter, total: Any) -> Any:
    """``total``, or a new native zero vector where nothing was added: a process whose
    shard (or mini-batch) is empty still takes part in the all-reduce."""
    return adapter.to_native_vector(np.zeros(adapter.n_parameters())) if total is None else total


def _loss_sum_and_grad(
    adapter: ModelAdapter, data: Data, loss: Loss, chunk_size: int, spec: DataSpec, what: str,
    penalty: bool = False, check: Callable[[Any, str], Any] | None = None,
) -> tuple[Any, ...]:
    """``(sum_n l_n, sum_n grad l_n, N)`` all-reduced; with ``penalty`` also ``sum_n H_n grad l_n``."""
    total, grad, hg, count = 0.0, None, None, 0

    def begin(X: NativeArray, targets: Any) -> Callable[[], tuple[Any, int]]:
        grad_done = adapter.begin("loss_grad_sum", X, targets, loss)
        hg_done = (
            adapter.begin("per_example_penalty_grad_sum", X, targets, loss) if penalty else None
        )
        return _counted(lambda: (grad_done(), None if hg_done is None else hg_done()), X)

    pieces = labelled_chunk_ends(adapter, data, loss, chunk_size, allow_empty=True, spec=spec,
                                 what=what, check=check)
    for ((value, g), chunk_hg), n in _one_ahead(adapter, pieces, begin):
        total, grad, count = total + value, _added(grad, g), count + n
        if penalty:
            hg = _added(hg, chunk_hg)
    grad = _or_zeros(adapter, grad)
    if penalty:
        hg = _or_zeros(adapter, hg)
    total, count = adapter.all_reduce_sum(np.array([total, count], dtype=np.float64))
    _check_count(count)
    grad = adapter.all_reduce_sum(grad)
    if penalty:
        return total, grad, adapter.all_reduce_sum(hg), float(count)
    return total, grad, float(count)


class _PairwiseSum:
    """The sum of the chunks' native vectors, added pairwise in the adapter's dtype.

    Chunk vectors in the parameters' dtype are added two by two as they arrive (a binary
    counter of partial sums), so the rounding error grows like the logarithm of the
    number of chunks, not like the number; the few partial sums left are added in float64
    at the end. Against converting each chunk to float64 and adding it, this saves two
    passes over every parameter per chunk (measured: a fifth of an MLP's HVP with 855k
    parameters, chunks of 128, on the CPU).
    """

    def __init__(self) -> None:
        self._levels: list[tuple[int, Any]] = []

    def add(self, vector: Any) -> None:
        size = 1
        while self._levels and self._levels[-1][0] == size:
            _, top = self._levels.pop()
            vector, size = top + vector, 2 * size
        self._levels.append((size, vector))

    def total(self, adapter: ModelAdapter, like: Any) -> NDArray[np.float64]:
        """float64 NumPy; zeros shaped like ``like`` when nothing was added."""
        if not self._levels:
            return np.zeros(np.shape(adapter.to_numpy(like)), dtype=np.float64)
        # A new array (the adapter's own may be read-only), then the other levels added to it.
        total = adapter.to_numpy_copy(self._levels[0][1])
        for _, vector in self._levels[1:]:
            total += np.asarray(adapter.to_numpy(vector), dtype=np.float64)
        return total


def _hvp_sum(
    adapter: ModelAdapter, data: Data, loss: Loss, native_vector: NativeArray, chunk_size: int,
    spec: DataSpec, what: str, check: Callable[[Any, str], Any] | None = None,
) -> tuple[NativeArray, float]:
    """``(sum_n H_n v, N)`` all-reduced."""
    partial, count = _PairwiseSum(), 0

    def begin(X: NativeArray, targets: Any) -> Callable[[], tuple[Any, int]]:
        return _counted(adapter.begin("loss_hvp_sum", X, targets, loss, native_vector), X)

    pieces = labelled_chunk_ends(adapter, data, loss, chunk_size, allow_empty=True, spec=spec,
                                 what=what, check=check)
    for hv, n in _one_ahead(adapter, pieces, begin):
        partial.add(hv)
        count += n
    total = adapter.all_reduce_sum(adapter.to_native_vector(partial.total(adapter, native_vector)))
    count = adapter.all_reduce_sum(np.array([count], dtype=np.float64))[0]
    _check_count(count)
    return total, float(count)


def _as_numpy_vector(adapter: ModelAdapter, native: NativeArray) -> NDArray[np.float64]:
    return np.asarray(adapter.to_numpy(native), dtype=np.float64)


@_measure
def mean_loss(
    model: Model, data: Data, loss: LossLike, *, params: Any = None,
    backend: BackendLike | None = None, chunk_size: int = 256, input_key: str | None = None,
    target_key: str | None = None, batch_fn: Callable[[Any], Any] | None = None,
    progress: bool | None = None,
) -> float:
    """The empirical loss ``L = (1/N) sum_n l(f(x_n), y_n)``, a float (docs/math.md section 4)."""
    adapter = wrap(model, params, backend)
    loss = get_loss(loss)
    spec = _spec(input_key, target_key, batch_fn, progress)
    total, count = 0.0, 0
    for X, targets in labelled_chunks(adapter, data, loss, chunk_size, allow_empty=True,
                                      spec=spec, what="mean_loss", check=_checked(adapter, chunk_size)):
        total += float(np.sum(loss.per_example(adapter.outputs(X), targets)))
        count += X.shape[0]
    total, count = adapter.all_reduce_sum(np.array([total, count], dtype=np.float64))
    _check_count(count)
    return float(total / count)


@_measure
def loss_grad(
    model: Model, data: Data, loss: LossLike, *, params: Any = None,
    backend: BackendLike | None = None, chunk_size: int = 256, input_key: str | None = None,
    target_key: str | None = None, batch_fn: Callable[[Any], Any] | None = None,
    progress: bool | None = None,
) -> NDArray[np.float64]:
    """``grad_theta L``, float64 ``(p,)`` in the order of :func:`parameter_vector`."""
    adapter = wrap(model, params, backend)
    loss = get_loss(loss)
    spec = _spec(input_key, target_key, batch_fn, progress)
    _, grad, count = _loss_sum_and_grad(
        adapter, data, loss, chunk_size, spec, "loss_grad", check=_checked(adapter, chunk_size)
    )
    return _as_numpy_vector(adapter, grad) / count


@_measure
def loss_hvp(
    model: Model, data: Data, loss: LossLike, vector: ArrayLike, *, params: Any = None,
    backend: BackendLike | None = None, chunk_size: int = 256, input_key: str | None = None,
    target_key: str | None = None, batch_fn: Callable[[Any], Any] | None = None,
    progress: bool | None = None,
) -> NDArray[np.float64]:
    """Hessian of the mean loss ``L`` times ``vector``, float64 ``(p,)`` (docs/math.md section 5).

    Parameters
    ----------
    vector : ndarray or tensor, shape (p,)
        In the order of :func:`parameter_vector`: a floating NumPy array (used in
        float64 until it is cut into the parameters' dtypes), or, for a torch module, a
        torch tensor on any device in any floating dtype, used as it is (a tensor in the
        module's dtype and on its device is not copied through the host, which saves
        two passes over p entries per call).

    Notes
    -----
    ``H v = (1/N) sum_n H_n v``, each chunk's sum in the model's dtype, the chunks added
    pairwise (rounding growing like the logarithm of their number), the few partial sums
    in float64, and all-reduced across processes: exact second-order passes (the R-operator for the ``numpy`` MLP, double
    backward or forward-over-reverse elsewhere), never finite differences.
    ``grad(||grad L||^2) = 2 H grad L``.
    """
    adapter = wrap(model, params, backend)
    loss = get_loss(loss)
    spec = _spec(input_key, target_key, batch_fn, progress)
    native = adapter.as_native_vector(vector, "vector")
    if native is None:
        native = _checked_host_vector(adapter, vector, "vector")
    total, count = _hvp_sum(
        adapter, data, loss, native, chunk_size, spec, "loss_hvp", check=_checked(adapter, chunk_size)
    )
    # One pass: the division writes the new array.
    return np.asarray(adapter.to_numpy(total), dtype=np.float64) / count


def _checked_host_vector(adapter: ModelAdapter, vector: ArrayLike, name: str) -> NativeArray:
    """``vector`` through NumPy: checked ``(p,)``, floating and finite, as a native float64 vector."""
    p = adapter.n_parameters()
    try:
        vector = np.asarray(vector)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name} must be an array of shape ({p},): {err}") from None
    if vector.shape != (p,):
        raise ValueError(f"{name} must have shape ({p},), one entry per parameter; got {vector.shape}")
    if vector.dtype.kind != "f" or not all_finite(vector):
        raise ValueError(f"{name} must hold finite floating-point values")
    return adapter.to_native_vector(np.asarray(vector, dtype=np.float64))


def parameter_vector(
    model: Model, *, params: Any = None, backend: BackendLike | None = None,
) -> NDArray[np.float64]:
    """The model's parameters, flattened in the order every gradient here uses, float64 ``(p,)``."""
    return wrap(model, params, backend).parameter_vector()


# -- implicit gradient regularisation -------------------------------------------------------


def _agree_on_batch(adapter: ModelAdapter, batch: Any, j: int) -> bool:
    """Whether every process has a j-th mini-batch (all-reduced: all of them take part)."""
    have, world = adapter.all_reduce_sum(np.array([batch is not None, 1.0], dtype=np.float64))
    if have == 0:
        return False
    if have != world:
        raise ValueError(
            f"every process must pass the same number of mini-batches; {int(world - have)} "
            f"of {int(world)} processes have no mini-batch {j}"
        )
    return True


def _each_minibatch(
    adapter: ModelAdapter, data: Data, batch_size: int | None, spec: DataSpec,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(j, batch)`` for every mini-batch, the processes agreeing on each."""
    batches = iter(minibatches(data, batch_size, spec))
    for j in itertools.count():
        batch = next(batches, None)
        if not _agree_on_batch(adapter, batch, j):
            return
        yield j, batch


@_measure
def igr_terms(
    model: Model, data: Data, loss: LossLike, *, params: Any = None,
    backend: BackendLike | None = None, batch_size: int | None = None, chunk_size: int = 256,
    input_key: str | None = None, target_key: str | None = None,
    batch_fn: Callable[[Any], Any] | None = None, progress: bool | None = None,
) -> IGRTerms:
    """The loss and its implicit-regularisation terms over a data set (docs/math.md section 5).

    Parameters
    ----------
    model, params, backend, chunk_size
        As in :func:`geometric_complexity`.
    data : (X, y) tuple or iterable of (X, y) batches
        The batches of an iterable are the mini-batches of the SGD term.
    loss : str or gcref.losses.Loss
    batch_size : int, optional
        For an ``(X, y)`` tuple: the mini-batches are consecutive blocks of this many
        examples (the last may be smaller). Must be left out for an iterable.

    Returns
    -------
    IGRTerms
        With :meth:`IGRTerms.modified_loss_gd` and friends for a step size.

    Notes
    -----
    ``grad L = (1/N) sum_n grad l_n`` and each ``grad L_{B_j}`` are accumulated in float64
    over chunks (and processes) before their squared norms are taken; the per-example
    term uses the per-example norms of :func:`loss_grad_sq_norms`, from the same
    backward pass where the adapter can.
    """
    adapter = wrap(model, params, backend)
    loss = get_loss(loss)
    spec = _spec(input_key, target_key, batch_fn, progress)
    total_grad = None
    batch_sq_norms, loss_sum, per_example_sum, n_total = [], 0.0, 0.0, 0
    check = _checked(adapter, chunk_size)

    def begin_igr(X: NativeArray, targets: Any) -> Callable[[], tuple[Any, int]]:
        return _counted(adapter.begin("loss_grad_sum_and_sq_norms", X, targets, loss), X)

    for j, batch in _each_minibatch(adapter, data, batch_size, spec):
        batch_grad, batch_count = None, 0
        pieces = labelled_chunk_ends(adapter, batch, loss, chunk_size, allow_empty=True,
                                     what="igr_terms", check=check)
        for (chunk_loss, chunk_grad, sq), n in _one_ahead(adapter, pieces, begin_igr):
            per_example_sum += float(np.sum(sq))
            loss_sum += float(chunk_loss)
            batch_grad = _added(batch_grad, chunk_grad)
            batch_count += n
        batch_grad = adapter.all_reduce_sum(_or_zeros(adapter, batch_grad))
        batch_count = adapter.all_reduce_sum(np.array([batch_count], dtype=np.float64))[0]
        if batch_count == 0:
            raise ValueError(f"mini-batch {j} holds no example")
        batch_sq_norms.append(adapter.vector_sq_norm(batch_grad) / batch_count**2)
        total_grad = batch_grad if total_grad is None else total_grad + batch_grad
        n_total += batch_count
    if total_grad is None:
        raise ValueError("data holds no example: the IGR terms are means over at least one example")
    loss_sum, per_example_sum = adapter.all_reduce_sum(
        np.array([loss_sum, per_example_sum], dtype=np.float64)
    )
    n = n_total
    return IGRTerms(
        loss=float(loss_sum / n),
        full_batch=float(adapter.vector_sq_norm(total_grad) / n**2),
        mini_batch=float(np.mean(batch_sq_norms)),
        per_example=float(per_example_sum / n),
        n_examples=int(n),
        n_batches=len(batch_sq_norms),
        settings=_settings(adapter, spec, chunk_size=chunk_size, loss=loss, batch_size=batch_size),
    )


def _check_h(h: object) -> float:
    return check_finite_scalar(h, "h", nonnegative=True)


@_measure
def modified_loss_gd(
    model: Model, data: Data, loss: LossLike, h: float, *, params: Any = None,
    backend: BackendLike | None = None, chunk_size: int = 256, input_key: str | None = None,
    target_key: str | None = None, batch_fn: Callable[[Any], Any] | None = None,
    progress: bool | None = None,
) -> float:
    """Modified loss of full-batch gradient descent with step ``h``, a float.

    Notes
    -----
    ``L~_GD = L + (h/4) ||grad L||^2`` with L the mean loss (docs/math.md section 5;
    Barrett and Dherin, Implicit Gradient Regularization). One pass over the data.
    """
    h = _check_h(h)
    adapter = wrap(model, params, backend)
    loss = get_loss(loss)
    spec = _spec(input_key, target_key, batch_fn, progress)
    total, grad, count = _loss_sum_and_grad(
        adapter, data, loss, chunk_size, spec, "modified_loss_gd", check=_checked(adapter, chunk_size)
    )
    return float(total / count + h / 4 * adapter.vector_sq_norm(grad) / count**2)


@_measure
def modified_loss_gd_grad(
    model: Model, data: Data, loss: LossLike, h: float, *, params: Any = None,
    backend: BackendLike | None = None, chunk_size: int = 256, input_key: str | None = None,
    target_key: str | None = None, batch_fn: Callable[[Any], Any] | None = None,
    progress: bool | None = None,
) -> NDArray[np.float64]:
    """Gradient of :func:`modified_loss_gd`, float64 ``(p,)``.

    Notes
    -----
    ``grad L~_GD = grad L + (h/2) H grad L`` (docs/math.md section 5): one pass for
    ``grad L`` and one for the Hessian-vector product, so ``data`` must be re-iterable.
    """
    h = _check_h(h)
    reiterable(data, "modified_loss_gd_grad")
    adapter = wrap(model, params, backend)
    loss = get_loss(loss)
    spec = _spec(input_key, target_key, batch_fn, progress)
    check = _checked(adapter, chunk_size)
    _, grad, count = _loss_sum_and_grad(
        adapter, data, loss, chunk_size, spec, "modified_loss_gd_grad", check=check
    )
    g = grad * (1.0 / count)
    hg, _ = _hvp_sum(adapter, data, loss, g, chunk_size, spec, "modified_loss_gd_grad", check=check)
    return _as_numpy_vector(adapter, g + hg * (h / (2 * count)))


def _sgd_parts(
    adapter: ModelAdapter, data: Data, loss: Loss, batch_size: int | None, chunk_size: int,
    spec: DataSpec, with_hvp: bool,
) -> Iterator[tuple[Any, Any, Any, Any]]:
    """Per mini-batch: ``(sum l, sum grad l, n_j, [H_j grad L_j])``, all-reduced."""
    check = _checked(adapter, chunk_size)
    for j, batch in _each_minibatch(adapter, data, batch_size, spec):
        total, grad, count = _loss_sum_and_grad(
            adapter, batch, loss, chunk_size, DataSpec(), "modified_loss_sgd", check=check
        )
        if count == 0:
            raise ValueError(f"mini-batch {j} holds no example")
        if with_hvp:
            g = grad * (1.0 / count)
            hg, _ = _hvp_sum(
                adapter, batch, loss, g, chunk_size, DataSpec(), "modified_loss_sgd", check=check
            )
            yield total, grad, count, hg * (1.0 / count)
        else:
            yield total, grad, count, None


@_measure
def modified_loss_sgd(
    model: Model, data: Data, loss: LossLike, h: float, *, params: Any = None,
    backend: BackendLike | None = None, batch_size: int | None = None, chunk_size: int = 256,
    input_key: str | None = None, target_key: str | None = None,
    batch_fn: Callable[[Any], Any] | None = None, progress: bool | None = None,
) -> float:
    """Modified loss of one epoch of SGD with step ``h`` over the mini-batches of ``data``.

    Parameters
    ----------
    data, batch_size
        As in :func:`igr_terms`: the batches of an iterable, or consecutive blocks of
        ``batch_size`` examples of an ``(X, y)`` tuple, are the mini-batches ``B_j``.

    Notes
    -----
    ``L~_SGD = L + h/(4m) sum_j ||grad L_{B_j}||^2`` with L the mean loss over all N
    examples and ``L_{B_j}`` the mean loss over ``B_j`` (docs/math.md section 5; Smith,
    Dherin, Barrett and De). It is the modified loss of an epoch for mini-batches of
    equal size, averaged over the orders of the batches.
    """
    h = _check_h(h)
    adapter = wrap(model, params, backend)
    loss = get_loss(loss)
    spec = _spec(input_key, target_key, batch_fn, progress)
    loss_sum, n, terms = 0.0, 0, []
    for total, grad, count, _ in _sgd_parts(adapter, data, loss, batch_size, chunk_size, spec, False):
        loss_sum, n = loss_sum + total, n + count
        terms.append(adapter.vector_sq_norm(grad) / count**2)
    _check_count(n)
    return float(loss_sum / n + h / (4 * len(terms)) * sum(terms))


@_measure
def modified_loss_sgd_grad(
    model: Model, data: Data, loss: LossLike, h: float, *, params: Any = None,
    backend: BackendLike | None = None, batch_size: int | None = None, chunk_size: int = 256,
    input_key: str | None = None, target_key: str | None = None,
    batch_fn: Callable[[Any], Any] | None = None, progress: bool | None = None,
) -> NDArray[np.float64]:
    """Gradient of :func:`modified_loss_sgd`, float64 ``(p,)``.

    Notes
    -----
    ``grad L + h/(4m) sum_j 2 H_{B_j} grad L_{B_j}``: one Hessian-vector product per
    mini-batch (two passes over each mini-batch).
    """
    h = _check_h(h)
    adapter = wrap(model, params, backend)
    loss = get_loss(loss)
    spec = _spec(input_key, target_key, batch_fn, progress)
    grad_sum, penalty, n, m = None, None, 0, 0
    for _, grad, count, hg in _sgd_parts(adapter, data, loss, batch_size, chunk_size, spec, True):
        grad_sum = grad if grad_sum is None else grad_sum + grad
        penalty = hg if penalty is None else penalty + hg
        n, m = n + count, m + 1
    _check_count(n)
    return _as_numpy_vector(adapter, grad_sum * (1.0 / n) + penalty * (h / (2 * m)))  # type: ignore[operator]


FORMS = ("gradient", "residual")


@_measure
def modified_loss_per_example(
    model: Model, data: Data, loss: LossLike, h: float, *, params: Any = None,
    backend: BackendLike | None = None, form: str = "gradient", chunk_size: int = 256,
    input_key: str | None = None, target_key: str | None = None,
    batch_fn: Callable[[Any], Any] | None = None, progress: bool | None = None,
) -> float:
    """Modified loss of SGD with batch size 1 (seed 000, eq. 6), a float.

    Parameters
    ----------
    form : {"gradient", "residual"}
        ``"gradient"``: from the per-example loss-gradient norms ``||grad_theta l_n||^2``;
        ``"residual"``: from ``eps_n^2 ||grad_theta f(x_n)||^2``, one output only. The two
        agree (the factorisation of docs/math.md section 4).

    Notes
    -----
    ``L~ = L + h/(4N) sum_n ||grad_theta l_n||^2 = L + h/(4N) sum_n eps_n^2 ||grad_theta f(x_n)||^2``
    (docs/math.md section 5). No per-example gradient is formed where an identity applies.
    """
    h = _check_h(h)
    if form not in FORMS:
        raise ValueError(f"form must be 'gradient' or 'residual'; got {form!r}")
    adapter = wrap(model, params, backend)
    loss = get_loss(loss)
    spec = _spec(input_key, target_key, batch_fn, progress)
    loss_sum, penalty, count = 0.0, 0.0, 0
    for X, targets in labelled_chunks(adapter, data, loss, chunk_size, allow_empty=True,
                                      spec=spec, what="modified_loss_per_example", check=_checked(adapter, chunk_size)):
        if form == "gradient":
            per, sq = adapter.loss_grad_sq_norms(X, targets, loss)
            penalty += float(np.sum(sq))
        else:
            if targets.shape[1] != 1:
                raise ValueError(
                    f"the residual form needs k = 1 output; the model has k = {targets.shape[1]} "
                    "(use form='gradient')"
                )
            out = adapter.outputs(X)
            per = loss.per_example(out, targets)
            eps = loss.residual(out, targets)[:, 0]
            penalty += float(np.sum(eps**2 * adapter.output_grad_sq_norms(X).sum(axis=1)))
        loss_sum += float(np.sum(per))
        count += X.shape[0]
    loss_sum, penalty, count = adapter.all_reduce_sum(
        np.array([loss_sum, penalty, count], dtype=np.float64)
    )
    _check_count(count)
    return float(loss_sum / count + h / (4 * count) * penalty)


@_measure
def modified_loss_per_example_grad(
    model: Model, data: Data, loss: LossLike, h: float, *, params: Any = None,
    backend: BackendLike | None = None, chunk_size: int = 256, input_key: str | None = None,
    target_key: str | None = None, batch_fn: Callable[[Any], Any] | None = None,
    progress: bool | None = None,
) -> NDArray[np.float64]:
    """Gradient of :func:`modified_loss_per_example`, float64 ``(p,)``.

    Notes
    -----
    ``grad L + h/(4N) 2 sum_n H_n grad_theta l_n``, with ``H_n`` the Hessian of the n-th
    per-example loss: for the ``numpy`` MLP one R-operator pass with per-example rank-one
    directions (vectorised over the batch); elsewhere the gradient of the per-example
    norm identities (or of ``vmap(grad)`` where no identity applies).
    """
    h = _check_h(h)
    adapter = wrap(model, params, backend)
    loss = get_loss(loss)
    spec = _spec(input_key, target_key, batch_fn, progress)
    _, grad, hg, count = _loss_sum_and_grad(
        adapter, data, loss, chunk_size, spec, "modified_loss_per_example_grad", penalty=True,
        check=_checked(adapter, chunk_size),
    )
    return _as_numpy_vector(adapter, (grad + hg * (h / 2)) * (1.0 / count))
