"""Implicit gradient regularisation: modified losses and the residual factorisation.

docs/math.md sections 4 and 5. Gradient descent with step h on the MEAN loss L follows, to
second order, the gradient flow of a modified loss:

- full batch:            L~_GD  = L + (h/4) ||grad L||^2;
- one epoch of SGD over a partition B_1..B_m:
                         L~_SGD = L + h/(4m) sum_j ||grad L_{B_j}||^2;
- batch size 1 (seed 000, eq. 6):
                         L~_1   = L + h/(4N) sum_n ||grad_theta l_n||^2
                                = L + h/(4N) sum_n eps_n^2 ||grad_theta f(x_n)||^2   (k = 1).

The penalties are functions of backend primitives, written once (the ``*_native``
functions take a backend and its native arrays and are what the training loop and the
backward-error check call). Their gradients are Hessian-vector products:
``grad ||grad L||^2 = 2 H grad L`` (``loss_hvp``, Pearlmutter's R-operator in ``numpy``),
and ``grad sum_n ||grad l_n||^2 = 2 sum_n H_n grad l_n``, which the ``numpy`` backend
computes in one R-operator pass whose direction is a different rank-one matrix
``g_{n,i} h_{n,i}^T`` for every example (no loop over examples), and the autodiff
backends obtain by differentiating the per-example norm identity of docs/math.md section 1.

Index conventions as in :mod:`gcref.primitives`: ``N`` examples, ``k`` outputs,
``l`` layers, ``h_i`` the input of layer i, ``g_i = dl_n/dz_i``, ``Delta_i = df/dz_i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gcref import models
from gcref._checks import check_finite_scalar, check_float_array, not_an_mlp
from gcref.losses import get_loss
from gcref.mlp import MLP
from gcref.params import combine, flat_arrays, pairs, scale, sq_norm, unflatten_params
from gcref.primitives import Call
from gcref.results import Record

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from numpy.typing import ArrayLike, NDArray

    from gcref._typing import BackendLike, LossLike, MLPParams, NativeArray, NumpyParams
    from gcref.backends._autodiff import AutodiffBackend
    from gcref.backends._base import Backend
    from gcref.losses import Loss

__all__ = [
    "ResidualFactorisation",
    "PressureTransfer",
    "check_partition",
    "modified_loss_gd",
    "modified_loss_gd_grad",
    "modified_loss_per_example",
    "modified_loss_per_example_grad",
    "modified_loss_sgd",
    "modified_loss_sgd_grad",
    "pressure_transfer",
    "residual_factorisation",
]


def native_gradient(
    backend: AutodiffBackend, fn: Callable[[list[tuple[Any, Any]]], NativeArray], params: MLPParams,
) -> list[tuple[Any, Any]]:
    """Gradient of the native scalar ``fn(params)`` by the backend's reverse mode.

    Only for autodiff backends; ``params`` is a list of ``(W, b)`` native pairs.
    """
    one = backend.asarray(np.ones((), dtype=backend._dtype(params[0][0])))
    return pairs(backend.vjp(lambda *flat: fn(pairs(flat)), flat_arrays(params), one))


# -- partitions --------------------------------------------------------------------
def check_partition(
    batches: Sequence[ArrayLike], n_examples: int, name: str = "batches",
) -> list[NDArray[np.int64]]:
    """Validate a partition of ``range(n_examples)`` into index arrays.

    Parameters
    ----------
    batches : sequence of 1-D integer array_like
        Mini-batches B_1..B_m; every index in ``[0, N)`` must occur in exactly one.
    n_examples : int

    Returns
    -------
    list of ndarray of int
    """
    if isinstance(batches, np.ndarray) or not isinstance(batches, (list, tuple)) or not batches:
        raise TypeError(f"{name} must be a non-empty list of 1-D integer index arrays")
    out = []
    for j, batch in enumerate(batches):
        idx = np.asarray(batch)
        if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
            raise ValueError(f"{name}[{j}] must be a non-empty 1-D integer array; got {idx!r}")
        out.append(idx.astype(np.int64))
    everything = np.sort(np.concatenate(out))
    if everything.size != n_examples or np.any(everything != np.arange(n_examples)):
        raise ValueError(
            f"{name} must partition range({n_examples}): every example in exactly one batch"
        )
    return out


# -- penalties on native arrays ----------------------------------------------------
def gd_penalty_native(
    backend: Backend, mlp: MLP, params: MLPParams, X: NativeArray, targets: NativeArray, loss: Loss,
) -> NativeArray:
    """``||grad L||^2`` (docs/math.md section 5), a native scalar."""
    return sq_norm(backend.loss_grad(mlp, params, X, targets, loss), backend.xp)


def gd_penalty_grad_native(
    backend: Backend, mlp: MLP, params: MLPParams, X: NativeArray, targets: NativeArray, loss: Loss,
) -> list[tuple[Any, Any]]:
    """``grad ||grad L||^2 = 2 H grad L`` (docs/math.md section 5), one Hessian-vector product."""
    g = backend.loss_grad(mlp, params, X, targets, loss)
    return scale(2.0, backend.loss_hvp(mlp, params, X, targets, loss, g))


def sgd_penalty_native(
    backend: Backend, mlp: MLP, params: MLPParams, X: NativeArray, targets: NativeArray, loss: Loss,
    batches: Sequence[NDArray[np.integer[Any]]],
) -> NativeArray:
    """``sum_j ||grad L_{B_j}||^2`` over the mini-batches ``batches`` (index arrays)."""
    return sum(
        gd_penalty_native(backend, mlp, params, X[idx], targets[idx], loss) for idx in batches
    )


def sgd_penalty_grad_native(
    backend: Backend, mlp: MLP, params: MLPParams, X: NativeArray, targets: NativeArray, loss: Loss,
    batches: Sequence[NDArray[np.integer[Any]]],
) -> list[tuple[Any, Any]] | None:
    """``sum_j 2 H_{B_j} grad L_{B_j}``: one Hessian-vector product per mini-batch."""
    total = None
    for idx in batches:
        term = gd_penalty_grad_native(backend, mlp, params, X[idx], targets[idx], loss)
        total = term if total is None else combine(1.0, total, 1.0, term)
    return total


def per_example_penalty_native(
    backend: Backend, mlp: MLP, params: MLPParams, X: NativeArray, targets: NativeArray, loss: Loss,
) -> NativeArray:
    """``sum_n ||grad_theta l_n||^2`` from ``||g_i||^2 (1 + ||h_i||^2)`` (docs/math.md sections 1, 4)."""
    w, b = backend.loss_grad_sq_norms(mlp, params, X, targets, loss)
    return backend.xp.sum(w) + backend.xp.sum(b)


def per_example_penalty_grad_native(
    backend: Backend, mlp: MLP, params: MLPParams, X: NativeArray, targets: NativeArray, loss: Loss,
) -> Any:
    """``grad sum_n ||grad_theta l_n||^2 = 2 sum_n H_n grad_theta l_n``.

    The backend's :meth:`~gcref.backends._base.Backend.per_example_penalty_grad`:
    autodiff backends differentiate :func:`per_example_penalty_native`; ``numpy`` runs
    an analytic R-operator pass.
    """
    return backend.per_example_penalty_grad(mlp, params, X, targets, loss)


def residuals_native(
    backend: Backend, output: NativeArray, targets: NativeArray, loss: Loss,
) -> NativeArray:
    """``eps = dl/df`` at ``output`` (docs/math.md section 4), native and differentiable."""
    return backend.residuals(output, targets, loss)


def per_example_penalty_residual_native(
    backend: Backend, mlp: MLP, params: MLPParams, X: NativeArray, targets: NativeArray, loss: Loss,
) -> NativeArray:
    """``sum_n eps_n^2 ||grad_theta f(x_n)||^2`` for one output (docs/math.md section 4)."""
    if mlp.output_dim != 1:
        raise ValueError(
            f"the residual form needs k = 1 output; the model has k = {mlp.output_dim} "
            "(use form='gradient')"
        )
    out = backend.forward(mlp, params, X).output
    eps = residuals_native(backend, out, targets, loss)[:, 0]
    w, b = backend.param_grad_sq_norms(mlp, params, X)
    return backend.xp.sum(eps * eps * (backend.sum_rows(w) + backend.sum_rows(b)))


# -- modified losses on native arrays ----------------------------------------------
def modified_loss_gd_native(
    backend: Backend, mlp: MLP, params: MLPParams, X: NativeArray, targets: NativeArray, loss: Loss,
    h: float,
) -> NativeArray:
    """``L + (h/4) ||grad L||^2``."""
    L = backend.mean_loss(mlp, params, X, targets, loss)
    return L + (h / 4.0) * gd_penalty_native(backend, mlp, params, X, targets, loss)


def modified_loss_gd_grad_native(
    backend: Backend, mlp: MLP, params: MLPParams, X: NativeArray, targets: NativeArray, loss: Loss,
    h: float,
) -> list[tuple[Any, Any]]:
    """``grad L + (h/2) H grad L``."""
    g = backend.loss_grad(mlp, params, X, targets, loss)
    hg = backend.loss_hvp(mlp, params, X, targets, loss, g)
    return combine(1.0, g, h / 2.0, hg)


def modified_loss_sgd_native(
    backend: Backend, mlp: MLP, params: MLPParams, X: NativeArray, targets: NativeArray, loss: Loss,
    h: float, batches: Sequence[NDArray[np.integer[Any]]],
) -> NativeArray:
    """``L + h/(4m) sum_j ||grad L_{B_j}||^2``."""
    L = backend.mean_loss(mlp, params, X, targets, loss)
    penalty = sgd_penalty_native(backend, mlp, params, X, targets, loss, batches)
    return L + (h / (4.0 * len(batches))) * penalty


def modified_loss_sgd_grad_native(
    backend: Backend, mlp: MLP, params: MLPParams, X: NativeArray, targets: NativeArray, loss: Loss,
    h: float, batches: Sequence[NDArray[np.integer[Any]]],
) -> list[tuple[Any, Any]]:
    """``grad L + h/(4m) sum_j 2 H_{B_j} grad L_{B_j}``."""
    g = backend.loss_grad(mlp, params, X, targets, loss)
    pg = sgd_penalty_grad_native(backend, mlp, params, X, targets, loss, batches)
    return combine(1.0, g, h / (4.0 * len(batches)), pg)  # type: ignore[arg-type]


def modified_loss_per_example_native(
    backend: Backend, mlp: MLP, params: MLPParams, X: NativeArray, targets: NativeArray, loss: Loss,
    h: float, form: str = "gradient",
) -> NativeArray:
    """``L + h/(4N) sum_n ||grad_theta l_n||^2`` in the ``"gradient"`` or ``"residual"`` form."""
    penalty_fn = {
        "gradient": per_example_penalty_native,
        "residual": per_example_penalty_residual_native,
    }[form]
    L = backend.mean_loss(mlp, params, X, targets, loss)
    n = X.shape[0]
    return L + (h / (4.0 * n)) * penalty_fn(backend, mlp, params, X, targets, loss)


def modified_loss_per_example_grad_native(
    backend: Backend, mlp: MLP, params: MLPParams, X: NativeArray, targets: NativeArray, loss: Loss,
    h: float,
) -> list[tuple[Any, Any]]:
    """``grad L + h/(4N) grad sum_n ||grad_theta l_n||^2``."""
    g = backend.loss_grad(mlp, params, X, targets, loss)
    pg = per_example_penalty_grad_native(backend, mlp, params, X, targets, loss)
    return combine(1.0, g, h / (4.0 * X.shape[0]), pg)


# -- public functions, NumPy in and out: the MLP spellings of gcref.models ----------------
def _data(
    mlp: MLP, params: MLPParams, X: ArrayLike, y: ArrayLike, loss: LossLike,
) -> tuple[NDArray[Any], Any]:
    """``(X, y)`` checked as one batch, ``X`` under its own name and ``y`` against the loss."""
    if not isinstance(mlp, MLP):
        raise not_an_mlp(mlp)
    dtype = mlp.check_params(params)[0][0].dtype
    X = mlp.check_inputs(check_float_array(X, "X", ndim=2, dtype=dtype), dtype)
    if y is None:
        raise ValueError("y is required with a loss")
    get_loss(loss).prepare_targets(y, X.shape[0], mlp.output_dim, dtype)
    return X, (y if hasattr(y, "shape") else np.asarray(y))


def _grad_tuple(vector: ArrayLike, mlp: MLP, params: MLPParams) -> NumpyParams:
    params = mlp.check_params(params)
    dtype = params[0][0].dtype
    return tuple((W.astype(dtype), b.astype(dtype)) for W, b in unflatten_params(vector, params))


def _partition(batches: Sequence[ArrayLike], X: NDArray[Any], y: Any) -> list[tuple[Any, Any]]:
    """The mini-batches of a partition of ``range(N)``, as a list of ``(X_j, y_j)``."""
    batches = check_partition(batches, X.shape[0])
    return [(X[idx], y[idx]) for idx in batches]


def modified_loss_gd(
    mlp: MLP, params: MLPParams, X: ArrayLike, y: ArrayLike, loss: LossLike, h: float, *,
    backend: BackendLike = "numpy",
) -> float:
    """Modified loss of full-batch gradient descent with step ``h``.

    The MLP spelling of :func:`gcref.models.modified_loss_gd`.

    Parameters
    ----------
    mlp : gcref.MLP
    params : tuple of (W, b)
    X : ndarray, shape (N, d)
    y : array_like
        Targets for ``loss`` (see :mod:`gcref.losses`).
    loss : str or gcref.losses.Loss
    h : float >= 0
        Learning rate.
    backend : str

    Returns
    -------
    float

    Notes
    -----
    ``L~_GD = L + (h/4) ||grad L||^2`` with L the mean loss (docs/math.md section 5;
    Barrett and Dherin, Implicit Gradient Regularization).
    """
    data = _data(mlp, params, X, y, loss)
    return models.modified_loss_gd(
        mlp, data, loss, h, params=params, backend=backend, chunk_size=max(1, len(data[0]))
    )


def modified_loss_gd_grad(
    mlp: MLP, params: MLPParams, X: ArrayLike, y: ArrayLike, loss: LossLike, h: float, *,
    backend: BackendLike = "numpy",
) -> NumpyParams:
    """Gradient of :func:`modified_loss_gd`, a tuple of ``(dW_i, db_i)`` like ``params``.

    Notes
    -----
    ``grad L~_GD = grad L + (h/2) H grad L`` (docs/math.md section 5): one Hessian-vector
    product, analytic (R-operator) in ``numpy``.
    """
    data = _data(mlp, params, X, y, loss)
    vector = models.modified_loss_gd_grad(
        mlp, data, loss, h, params=params, backend=backend, chunk_size=max(1, len(data[0]))
    )
    return _grad_tuple(vector, mlp, params)


def modified_loss_sgd(
    mlp: MLP, params: MLPParams, X: ArrayLike, y: ArrayLike, loss: LossLike, h: float,
    batches: Sequence[ArrayLike], *, backend: BackendLike = "numpy",
) -> float:
    """Modified loss of one epoch of SGD with step ``h`` over the partition ``batches``.

    The MLP spelling of :func:`gcref.models.modified_loss_sgd`.

    Parameters
    ----------
    batches : sequence of 1-D integer arrays, length m
        A partition of ``range(N)`` into the mini-batches B_1..B_m.

    Returns
    -------
    float

    Notes
    -----
    ``L~_SGD = L + h/(4m) sum_j ||grad L_{B_j}||^2`` with L the mean loss over all N
    examples and ``L_{B_j}`` the mean loss over B_j (docs/math.md section 5; Smith, Dherin,
    Barrett and De). The other parameters are those of :func:`modified_loss_gd`.
    """
    X, y = _data(mlp, params, X, y, loss)
    h = check_finite_scalar(h, "h", nonnegative=True)
    return models.modified_loss_sgd(
        mlp, _partition(batches, X, y), loss, h, params=params, backend=backend,
        chunk_size=max(1, len(X)),
    )


def modified_loss_sgd_grad(
    mlp: MLP, params: MLPParams, X: ArrayLike, y: ArrayLike, loss: LossLike, h: float,
    batches: Sequence[ArrayLike], *, backend: BackendLike = "numpy",
) -> NumpyParams:
    """Gradient of :func:`modified_loss_sgd`, a tuple of ``(dW_i, db_i)``.

    Notes
    -----
    ``grad L + h/(4m) sum_j 2 H_{B_j} grad L_{B_j}``: one Hessian-vector product per batch.
    """
    X, y = _data(mlp, params, X, y, loss)
    h = check_finite_scalar(h, "h", nonnegative=True)
    vector = models.modified_loss_sgd_grad(
        mlp, _partition(batches, X, y), loss, h, params=params, backend=backend,
        chunk_size=max(1, len(X)),
    )
    return _grad_tuple(vector, mlp, params)


def modified_loss_per_example(
    mlp: MLP, params: MLPParams, X: ArrayLike, y: ArrayLike, loss: LossLike, h: float, *,
    form: str = "gradient", backend: BackendLike = "numpy",
) -> float:
    """Modified loss of SGD with batch size 1 (seed 000, eq. 6).

    The MLP spelling of :func:`gcref.models.modified_loss_per_example`.

    Parameters
    ----------
    form : {"gradient", "residual"}
        ``"gradient"``: from the per-example loss-gradient norms ``||grad_theta l_n||^2``;
        ``"residual"``: from ``eps_n^2 ||grad_theta f(x_n)||^2``, one output only.
        The two agree (the factorisation of docs/math.md section 4).

    Returns
    -------
    float

    Notes
    -----
    ``L~ = L + h/(4N) sum_n ||grad_theta l_n||^2 = L + h/(4N) sum_n eps_n^2 ||grad_theta f(x_n)||^2``
    (docs/math.md section 5). No per-example gradient is formed.
    """
    data = _data(mlp, params, X, y, loss)
    return models.modified_loss_per_example(
        mlp, data, loss, h, params=params, backend=backend, form=form,
        chunk_size=max(1, len(data[0])),
    )


def modified_loss_per_example_grad(
    mlp: MLP, params: MLPParams, X: ArrayLike, y: ArrayLike, loss: LossLike, h: float, *,
    backend: BackendLike = "numpy",
) -> NumpyParams:
    """Gradient of :func:`modified_loss_per_example`, a tuple of ``(dW_i, db_i)``.

    Notes
    -----
    ``grad L + h/(4N) 2 sum_n H_n grad_theta l_n``, with ``H_n`` the Hessian of the n-th
    per-example loss: in ``numpy`` one R-operator pass with per-example rank-one
    directions (vectorised over the batch); in autodiff backends the gradient of the
    per-example norm identity ``||g_i||^2 (1 + ||h_i||^2)``.
    """
    data = _data(mlp, params, X, y, loss)
    vector = models.modified_loss_per_example_grad(
        mlp, data, loss, h, params=params, backend=backend, chunk_size=max(1, len(data[0]))
    )
    return _grad_tuple(vector, mlp, params)


# -- residual factorisation and the transfer of pressure ---------------------------
@dataclass
class ResidualFactorisation(Record):
    """Per-example pieces of ``grad_theta l_n = J_theta(x_n)^T eps_n`` (docs/math.md section 4).

    Attributes
    ----------
    loss_grad_sq : ndarray, shape (N,)
        ``||grad_theta l_n||^2``, from the loss sensitivities.
    residual_sq : ndarray, shape (N,)
        ``||eps_n||^2``.
    param_grad_sq : ndarray, shape (N,)
        ``||J_theta(x_n)||_F^2 = ||grad_theta f(x_n)||_F^2`` (summed over the k outputs).
    jacobian_spectral_sq : ndarray, shape (N,)
        ``||J_theta(x_n)||_2^2``, the largest eigenvalue of the k x k Gram matrix.
    quadratic_form : ndarray, shape (N,)
        ``eps_n^T J_theta J_theta^T eps_n``, which equals ``loss_grad_sq``.
    """

    loss_grad_sq: NDArray[np.floating[Any]]
    residual_sq: NDArray[np.floating[Any]]
    param_grad_sq: NDArray[np.floating[Any]]
    jacobian_spectral_sq: NDArray[np.floating[Any]]
    quadratic_form: NDArray[np.floating[Any]]

    @property
    def bound(self) -> NDArray[np.floating[Any]]:
        """``||eps_n||^2 ||J_theta||_2^2 >= ||grad_theta l_n||^2``, shape (N,)."""
        return self.residual_sq * self.jacobian_spectral_sq


def jacobian_gram_native(
    backend: Backend, mlp: MLP, params: MLPParams, X: NativeArray,
) -> NativeArray:
    """``J_theta J_theta^T = sum_i Delta_i Delta_i^T (1 + ||h_i||^2)``, shape (N, k, k).

    ``J_theta(x)`` is the k x P parameter Jacobian; ``df_c/dW_i = outer(Delta_i[c], h_i)``
    and ``df_c/db_i = Delta_i[c]`` (docs/math.md section 1) give the Gram matrix without
    forming it.
    """
    hs = backend.forward(mlp, params, X).hs
    deltas = backend.sensitivities(mlp, params, X)
    xp = backend.xp
    return sum(
        xp.einsum("nco,ndo->ncd", D, D) * (1.0 + backend.sum_rows(h * h))[:, None, None]
        for D, h in zip(deltas, hs[:-1])
    )


def residual_factorisation(
    mlp: MLP, params: MLPParams, X: ArrayLike, y: ArrayLike, loss: LossLike, *,
    backend: BackendLike = "numpy",
) -> ResidualFactorisation:
    """Per-example factorisation of the loss gradient through the residual.

    Returns
    -------
    ResidualFactorisation

    Notes
    -----
    ``grad_theta l_n = J_theta(x_n)^T eps_n`` (docs/math.md section 4), so
    ``||grad_theta l_n||^2 = eps_n^T G_n eps_n <= ||eps_n||^2 ||J_theta(x_n)||_2^2`` with
    ``G_n = J_theta J_theta^T`` (k x k). For one output (squared or logistic loss) this is
    the equality ``||grad_theta l_n||^2 = eps_n^2 ||grad_theta f(x_n)||^2``.
    """
    with Call(mlp, params, X, backend, y, loss) as c:
        be = c.backend
        w, b = be.loss_grad_sq_norms(mlp, c.nparams, c.nX, c.ntargets, c.loss)
        gram = c.numpy(jacobian_gram_native(be, mlp, c.nparams, c.nX))
        out = c.numpy(be.forward(mlp, c.nparams, c.nX).output)
        loss_grad_sq = c.numpy(w).sum(axis=1) + c.numpy(b).sum(axis=1)
    eps = c.loss.residual(out, c.targets)
    return ResidualFactorisation(
        loss_grad_sq=loss_grad_sq,
        residual_sq=np.sum(eps * eps, axis=1),
        param_grad_sq=np.trace(gram, axis1=1, axis2=2),
        jacobian_spectral_sq=np.linalg.eigvalsh(gram)[:, -1],
        quadratic_form=np.einsum("nc,ncd,nd->n", eps, gram, eps),
    )


@dataclass
class PressureTransfer(Record):
    """Both sides of ``||grad_theta l_n||^2 >= eps_n^2 ||J(x_n)||_F^2 sum_i T_i^2(x_n)``.

    Attributes
    ----------
    loss_grad_sq : ndarray, shape (N,)
        ``||grad_theta l_n||^2``.
    input_pressure : ndarray, shape (N,)
        ``eps_n^2 ||J(x_n)||_F^2 sum_i T_i^2(x_n)``, never larger than ``loss_grad_sq``.
    """

    loss_grad_sq: NDArray[np.floating[Any]]
    input_pressure: NDArray[np.floating[Any]]


def pressure_transfer(
    mlp: MLP, params: MLPParams, X: ArrayLike, y: ArrayLike, loss: LossLike, *,
    backend: BackendLike = "numpy",
) -> PressureTransfer:
    """The transfer of the per-example pressure to the input gradient (one output).

    Returns
    -------
    PressureTransfer

    Notes
    -----
    docs/math.md section 5, last line:
    ``||grad_theta l_n||^2 >= eps_n^2 ||J(x_n)||_F^2 sum_i T_i^2(x_n)``. By the
    factorisation ``||grad_theta l_n||^2 = eps_n^2 ||grad_theta f(x_n)||^2`` it is the
    transfer theorem (docs/math.md section 3) times ``eps_n^2``. The terms
    ``||J||_F^2 T_i^2`` come from :func:`gcref.transfer.transfer_terms`, finite (zero)
    on dead layers.
    """
    from gcref.transfer import transfer_terms

    with Call(mlp, params, X, backend, y, loss) as c:
        if mlp.output_dim != 1:
            raise ValueError(
                "the transfer of pressure is stated for k = 1 output; "
                f"the model has k = {mlp.output_dim}"
            )
        w, b = c.backend.loss_grad_sq_norms(mlp, c.nparams, c.nX, c.ntargets, c.loss)
        out = c.numpy(c.backend.forward(mlp, c.nparams, c.nX).output)
        loss_grad_sq = c.numpy(w).sum(axis=1) + c.numpy(b).sum(axis=1)
    eps = c.loss.residual(out, c.targets)[:, 0]
    terms = transfer_terms(mlp, c.params, c.X, backend=c.backend)
    return PressureTransfer(loss_grad_sq, eps**2 * terms.layer_terms.sum(axis=1))
