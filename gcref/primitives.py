"""Public MLP primitives in any backend, on NumPy arrays (docs/math.md sections 1 and 4).

Each function checks its inputs, converts them to the chosen backend's arrays, calls the
backend and returns NumPy arrays. ``backend`` is a name (``"numpy"``, ``"autograd"``,
``"jax"``, ``"torch"``) or a backend instance; see :func:`gcref.available_backends`.

Index conventions: layers are listed 0-based (entry ``i - 1`` belongs to layer i);
``N`` examples, ``d`` inputs, ``k`` outputs, ``n_i`` units entering layer i.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gcref import models
from gcref._checks import check_float_array, not_an_mlp
from gcref.backends import get_backend
from gcref.backends._base import Forward
from gcref.losses import get_loss
from gcref.mlp import MLP
from gcref.params import flatten_params, unflatten_params
from gcref.results import GradNorms

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import ArrayLike, DTypeLike, NDArray

    from typing_extensions import Self

    from gcref._typing import BackendLike, LossLike, MLPParams, NativeArray, NumpyParams


#: What :class:`Call` receives when the function it serves takes no loss.
NO_LOSS = object()


class Call:
    """A checked call into one backend: validated NumPy inputs and their native twins."""

    # ``None`` when the call has no loss; the functions with a loss read them unchecked.
    loss: Any
    targets: Any

    def __init__(
        self, mlp: MLP, params: MLPParams, X: ArrayLike, backend: BackendLike,
        y: ArrayLike | None = None, loss: Any = NO_LOSS,
    ) -> None:
        if not isinstance(mlp, MLP):
            raise not_an_mlp(mlp)
        self.mlp = mlp
        self.params = mlp.check_params(params)
        self.dtype = self.params[0][0].dtype
        self.X = mlp.check_inputs(X, self.dtype)
        self.backend = get_backend(backend)
        # Only a call without a loss leaves it out: loss=None passed by a user is an error.
        self.loss = None if loss is NO_LOSS else get_loss(loss)
        self.targets = None
        if self.loss is not None:
            if y is None:
                raise ValueError("y is required with a loss")
            self.targets = self.loss.prepare_targets(
                y, self.X.shape[0], mlp.output_dim, self.dtype
            )

    def native(self, x: ArrayLike) -> NativeArray:
        return self.backend.asarray(x)

    def native_params(self, params: MLPParams | None = None) -> list[tuple[Any, Any]]:
        return [(self.native(W), self.native(b)) for W, b in (params or self.params)]

    def __enter__(self) -> Self:
        self._scope = self.backend.scope(self.dtype)
        self._scope.__enter__()
        self.nparams = self.native_params()
        self.nX = self.native(self.X)
        self.ntargets = None if self.targets is None else self.native(self.targets)
        return self

    def __exit__(self, *exc: object) -> Any:
        return self._scope.__exit__(*exc)

    def numpy(self, x: Any) -> Any:
        """Native array, or nested list/tuple of them -> NumPy, same nesting."""
        if isinstance(x, (list, tuple)):
            return type(x)(self.numpy(a) for a in x)
        return self.backend.to_numpy(x)


def forward(
    mlp: MLP, params: MLPParams, X: ArrayLike, *, backend: BackendLike = "numpy",
) -> Forward:
    """Forward pass with every layer's values.

    Returns
    -------
    Forward
        ``zs[i - 1]`` = z_i of shape (N, n_{i+1}); ``hs[i - 1]`` = h_i of shape (N, n_i);
        ``hs[-1]`` = f(X) of shape (N, k).
    """
    with Call(mlp, params, X, backend) as c:
        fwd = c.backend.forward(mlp, c.nparams, c.nX)
        return Forward(c.numpy(fwd.zs), c.numpy(fwd.hs))


def predict(
    mlp: MLP, params: MLPParams, X: ArrayLike, *, backend: BackendLike = "numpy",
) -> NDArray[Any]:
    """Network output f(X), shape (N, k)."""
    return forward(mlp, params, X, backend=backend).output


def input_jacobian(
    mlp: MLP, params: MLPParams, X: ArrayLike, *, backend: BackendLike = "numpy",
) -> NDArray[Any]:
    """Input Jacobians J(x) = df/dx, shape (N, k, d) (docs/math.md section 1)."""
    with Call(mlp, params, X, backend) as c:
        return c.numpy(c.backend.input_jacobian(mlp, c.nparams, c.nX))


def input_vjp(
    mlp: MLP, params: MLPParams, X: ArrayLike, cotangent: ArrayLike, *,
    backend: BackendLike = "numpy",
) -> NDArray[Any]:
    """Vector-Jacobian products ``v_n^T J(x_n)``, shape (N, d), for ``cotangent`` v of shape (N, k)."""
    with Call(mlp, params, X, backend) as c:
        v = check_float_array(
            cotangent, "cotangent", shape=(c.X.shape[0], mlp.output_dim), dtype=c.dtype
        )
        return c.numpy(c.backend.input_vjp(mlp, c.nparams, c.nX, c.native(v)))


def hidden_jacobians(
    mlp: MLP, params: MLPParams, X: ArrayLike, *, backend: BackendLike = "numpy",
) -> Sequence[NDArray[Any]]:
    """Hidden Jacobians ``[h'_1, ..., h'_l]``, ``h'_i = dh_i/dx`` of shape (N, n_i, d); h'_1 = I."""
    with Call(mlp, params, X, backend) as c:
        return c.numpy(c.backend.hidden_jacobians(mlp, c.nparams, c.nX))


def sensitivities(
    mlp: MLP, params: MLPParams, X: ArrayLike, *, backend: BackendLike = "numpy",
) -> Sequence[NDArray[Any]]:
    """Sensitivities ``[Delta_1, ..., Delta_l]``, ``Delta_i = df/dz_i`` of shape (N, k, n_{i+1})."""
    with Call(mlp, params, X, backend) as c:
        return c.numpy(c.backend.sensitivities(mlp, c.nparams, c.nX))


def param_jacobian(
    mlp: MLP, params: MLPParams, X: ArrayLike, *, backend: BackendLike = "numpy",
) -> list[tuple[NDArray[Any], ...]]:
    """Per-example parameter Jacobians of f.

    Returns
    -------
    list of (dW_i, db_i)
        ``dW_i`` of shape (N, k, n_{i+1}, n_i), ``db_i`` of shape (N, k, n_{i+1}):
        ``dW_i[n, c] = d f_c(x_n) / d W_i``.
    """
    with Call(mlp, params, X, backend) as c:
        return [tuple(pair) for pair in c.numpy(c.backend.param_jacobian(mlp, c.nparams, c.nX))]


def param_grad_sq_norms(
    mlp: MLP, params: MLPParams, X: ArrayLike, *, backend: BackendLike = "numpy",
) -> GradNorms:
    """Per-example squared norms of ``grad_theta f`` (summed over the k outputs), by layer.

    The MLP spelling of :func:`gcref.models.output_grad_sq_norms`: computed from
    ``||Delta_i||_F^2 (1 + ||h_i||^2)`` (docs/math.md section 1, last identity) without
    forming per-example gradients.

    Returns
    -------
    GradNorms
        ``.weights``, ``.biases`` and ``.per_layer`` of shape (N, l); ``.total`` of shape (N,).
    """
    X = _batch(_mlp(mlp), params, X)
    norms = models.output_grad_sq_norms(
        mlp, X, params=params, backend=backend, chunk_size=_whole(X)
    )
    return _in_dtype(norms, X.dtype)


def loss_grad_sq_norms(
    mlp: MLP, params: MLPParams, X: ArrayLike, y: ArrayLike, loss: LossLike, *,
    backend: BackendLike = "numpy",
) -> GradNorms:
    """Per-example squared norms of ``grad_theta l(f(x_n), y_n)``, by layer.

    The MLP spelling of :func:`gcref.models.loss_grad_sq_norms`: ``||grad_{W_i} l_n||^2
    = ||g_i||^2 ||h_i||^2`` with ``g_i = dl_n/dz_i`` (docs/math.md sections 1 and 4); no
    per-example gradient is formed.
    """
    data = _pair(_mlp(mlp), params, X, y, loss)
    norms = models.loss_grad_sq_norms(
        mlp, data, loss, params=params, backend=backend, chunk_size=_whole(X)
    )
    return _in_dtype(norms, data[0].dtype)


def per_example_loss(
    mlp: MLP, params: MLPParams, X: ArrayLike, y: ArrayLike, loss: LossLike, *,
    backend: BackendLike = "numpy",
) -> NDArray[Any]:
    """``l(f(x_n), y_n)`` for every example, shape (N,) (docs/math.md section 4)."""
    with Call(mlp, params, X, backend, y, loss) as c:
        out = c.backend.forward(mlp, c.nparams, c.nX).output
        return c.numpy(c.loss.per_example(out, c.ntargets))


def mean_loss(
    mlp: MLP, params: MLPParams, X: ArrayLike, y: ArrayLike, loss: LossLike, *,
    backend: BackendLike = "numpy",
) -> float:
    """The empirical loss L(theta) = (1/N) sum_n l(f(x_n), y_n) (docs/math.md section 4).

    The MLP spelling of :func:`gcref.models.mean_loss`.
    """
    return models.mean_loss(
        _mlp(mlp), _pair(mlp, params, X, y, loss), loss, params=params, backend=backend, chunk_size=_whole(X)
    )


def residuals(
    mlp: MLP, params: MLPParams, X: ArrayLike, y: ArrayLike, loss: LossLike, *,
    backend: BackendLike = "numpy",
) -> NDArray[Any]:
    """``eps_n = dl/df`` at ``f(x_n)``, shape (N, k) (docs/math.md section 4)."""
    with Call(mlp, params, X, backend, y, loss) as c:
        out = c.numpy(c.backend.forward(mlp, c.nparams, c.nX).output)
        return c.loss.residual(out, c.targets)


def loss_sensitivities(
    mlp: MLP, params: MLPParams, X: ArrayLike, y: ArrayLike, loss: LossLike, *,
    backend: BackendLike = "numpy",
) -> Sequence[NDArray[Any]]:
    """``[g_1, ..., g_l]`` with ``g_i = dl_n/dz_i`` of shape (N, n_{i+1}), per example."""
    with Call(mlp, params, X, backend, y, loss) as c:
        return c.numpy(c.backend.loss_sensitivities(mlp, c.nparams, c.nX, c.ntargets, c.loss))


def loss_grad(
    mlp: MLP, params: MLPParams, X: ArrayLike, y: ArrayLike, loss: LossLike, *,
    backend: BackendLike = "numpy",
) -> NumpyParams:
    """Gradient of the mean loss, as a tuple of ``(dW_i, db_i)`` like ``params``.

    The MLP spelling of :func:`gcref.models.loss_grad`, in the parameters' dtype.
    """
    params = _mlp(mlp).check_params(params)
    vector = models.loss_grad(
        mlp, _pair(mlp, params, X, y, loss), loss, params=params, backend=backend, chunk_size=_whole(X)
    )
    return _like(vector, params)


def loss_hvp(
    mlp: MLP, params: MLPParams, X: ArrayLike, y: ArrayLike, loss: LossLike, vector: MLPParams, *,
    backend: BackendLike = "numpy",
) -> NumpyParams:
    """Hessian of the mean loss times ``vector`` (a tuple shaped like ``params``).

    The MLP spelling of :func:`gcref.models.loss_hvp`, in the parameters' dtype. The
    ``numpy`` backend uses Pearlmutter's R-operator (an exact second-order pass); the
    autodiff backends differentiate the gradient.
    """
    params = _mlp(mlp).check_params(params)
    data = _pair(mlp, params, X, y, loss)
    vec = mlp.check_params(vector, name="vector")
    if vec[0][0].dtype != params[0][0].dtype:
        raise TypeError(
            f"vector has dtype {vec[0][0].dtype} but params are {params[0][0].dtype}; "
            "mixed dtypes are not promoted"
        )
    hv = models.loss_hvp(
        mlp, data, loss, flatten_params(vec), params=params, backend=backend, chunk_size=_whole(X)
    )
    return _like(hv, params)


# -- the data contract of the single-batch MLP functions -----------------------------------


def _mlp(mlp: object) -> MLP:
    if not isinstance(mlp, MLP):
        raise not_an_mlp(mlp)
    return mlp


def _batch(mlp: MLP, params: MLPParams, X: ArrayLike) -> NDArray[Any]:
    """One batch ``X``, checked under its own name (``"X ..."`` in the errors)."""
    dtype = mlp.check_params(params)[0][0].dtype
    return mlp.check_inputs(check_float_array(X, "X", ndim=2, dtype=dtype), dtype)


def _pair(
    mlp: MLP, params: MLPParams, X: ArrayLike, y: ArrayLike, loss: LossLike,
) -> tuple[NDArray[Any], Any]:
    """``(X, y)`` checked as one batch: ``y`` against the loss, in the parameters' dtype.

    The single-batch MLP functions keep their strict contract (targets in the
    parameters' dtype); :mod:`gcref.models` accepts targets of any float dtype.
    """
    X = _batch(mlp, params, X)
    if y is None:
        raise ValueError("y is required with a loss")
    dtype = X.dtype
    get_loss(loss).prepare_targets(y, X.shape[0], mlp.output_dim, dtype)
    return X, (y if hasattr(y, "shape") else np.asarray(y))


def _in_dtype(norms: GradNorms, dtype: DTypeLike) -> GradNorms:
    """The single-batch functions answer in the parameters' dtype, like every primitive."""
    return GradNorms(norms.per_parameter.astype(dtype), norms.names, norms.settings)


def _whole(X: Any) -> int:
    """A chunk that holds the whole batch: these functions answer for one batch at once."""
    return max(1, len(X))


def _like(vector: ArrayLike, params: MLPParams) -> NumpyParams:
    """A float64 vector as a tuple of ``(W, b)`` pairs of the parameters' shapes and dtype."""
    dtype = params[0][0].dtype
    return tuple(
        (W.astype(dtype), b.astype(dtype)) for W, b in unflatten_params(vector, params)
    )
