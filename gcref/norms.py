"""Norm-based capacity measures and margins (docs/math.md section 6; seeds 002 and 004).

Each norm is written once, as a ``*_native`` function on one backend's arrays
(``backend.xp`` element-wise operations, ``@`` and the backend's array helpers), so it
is differentiable in autograd, JAX and PyTorch and can serve as a penalty; the public
function of the same name without ``_native`` checks NumPy parameters, evaluates the
native version in the chosen backend and returns NumPy.

Index conventions
-----------------
Layers i = 1..l are stored 0-based: ``params[i - 1] == (W_i, b_i)``, ``W_i`` of shape
``(n_{i+1}, n_i)``. A unit v of layer i is an entry of ``z_i``; its incoming edges are
row v of ``W_i`` and, with biases, the bias ``b_i[v]``, an edge from a constant unit.

Biases
------
With ``bias=True`` a bias is an edge from a constant unit whose value is 1: in the path
norm it starts paths at its unit (docs/math.md section 6), in the group norms it belongs to
its unit's incoming group. With ``bias=False`` biases are ignored, which is the bias-free
network's norm whatever the biases hold.
"""

from __future__ import annotations

import numpy as np

from gcref._checks import check_finite_scalar, not_an_mlp
from gcref.backends import get_backend
from gcref.mlp import MLP
from gcref.primitives import predict
from gcref.losses import as_label_array

LAYER_NORM_KINDS = ("frobenius", "spectral")


# -- argument checks ---------------------------------------------------------------
def check_exponent(value, name):
    """Return a finite exponent > 0 as a float."""
    return check_finite_scalar(value, name, positive=True)


def check_group_exponent(q):
    """Return ``q`` as a float: finite and > 0, or ``inf``."""
    if not isinstance(q, bool) and isinstance(q, (int, float, np.integer, np.floating)) and q == np.inf:
        return np.inf
    return check_exponent(q, "q")


def _checked(mlp, params):
    if not isinstance(mlp, MLP):
        raise not_an_mlp(mlp)
    return mlp.check_params(params)


def _evaluate(native_fn, mlp, params, backend):
    """Evaluate ``native_fn(backend, native_params)`` on checked NumPy ``params``."""
    params = _checked(mlp, params)
    backend = get_backend(backend)
    with backend.scope(params[0][0].dtype):
        native = [(backend.asarray(W), backend.asarray(b)) for W, b in params]
        return backend.to_numpy(native_fn(backend, native))


# -- path norm -----------------------------------------------------------------------
def path_gammas_in(backend, params, p, *, bias=True):
    """Forward dynamic programme of Path-SGD (seed 002, Algorithm 1, line 4).

    Parameters
    ----------
    backend : Backend
    params : sequence of (W, b) native arrays
    p : float > 0
    bias : bool
        Biases start paths at their unit (edges from a constant unit with ``gamma_in = 1``).

    Returns
    -------
    list of l native arrays, entry ``i - 1`` of shape (n_{i+1},)
        ``gamma_in(v)`` for the units of layer i: the sum over the paths from an input (or,
        with biases, from a bias) to v of the product of ``|w|^p`` along the path.

    Notes
    -----
    ``gamma_in(layer 1) = |W_1|^p 1 (+ |b_1|^p)`` and
    ``gamma_in(layer i + 1) = |W_{i+1}|^p gamma_in(layer i) (+ |b_{i+1}|^p)``, element-wise powers
    (docs/math.md section 6). The inputs have ``gamma_in = 1``.
    """
    xp = backend.xp
    gammas = []
    for W, b in params:
        powered = xp.abs(W) ** p
        gamma = backend.sum_rows(powered) if not gammas else powered @ gammas[-1]
        if bias:
            gamma = gamma + xp.abs(b) ** p
        gammas.append(gamma)
    return gammas


def path_norm_native(backend, mlp, params, p=2, *, bias=True):
    """The l_p path norm ``||pi(w)||_p`` on one backend's arrays (differentiable).

    Parameters
    ----------
    backend : Backend
    mlp : MLP
    params : sequence of (W, b) native arrays
    p : float > 0
    bias : bool
        With biases, each bias starts paths at its unit.

    Returns
    -------
    native scalar

    Notes
    -----
    ``||pi(w)||_p^p = 1^T |W_l|^p ... |W_1|^p 1`` without biases; with biases, the bias
    ``b_i[v]`` adds the paths that start at unit v of layer i (docs/math.md section 6). A
    dynamic programme over the layers: paths are never enumerated.
    """
    p = check_exponent(p, "p")
    gamma_out = path_gammas_in(backend, params, p, bias=bias)[-1]
    return backend.sum_rows(gamma_out) ** (1.0 / p)


def path_norm(mlp, params, p=2, *, bias=True, backend="numpy"):
    """The l_p path norm of the network (docs/math.md section 6; seed 002).

    Parameters
    ----------
    mlp : MLP
    params : tuple of (W, b) ndarray
    p : float > 0
    bias : bool
        With biases (the default), each bias starts paths at its unit; ``False`` gives the
        path norm of the weights alone.
    backend : str or Backend

    Returns
    -------
    float

    Notes
    -----
    ``||pi(w)||_p = (sum over input-to-output paths of prod |w_e|^p)^(1/p)``, computed as
    ``(1^T |W_l|^p ... |W_1|^p 1)^(1/p)`` (element-wise powers). For ReLU, leaky ReLU and
    identity activations it is invariant under node rescaling.

    Examples
    --------
    >>> import numpy as np, gcref
    >>> from gcref.norms import path_norm
    >>> mlp = gcref.MLP((1, 2, 1))
    >>> params = ((np.array([[1.0], [2.0]]), np.zeros(2)), (np.array([[3.0, 4.0]]), np.zeros(1)))
    >>> path_norm(mlp, params, p=1)     # |1 * 3| + |2 * 4|
    11.0
    """
    p = check_exponent(p, "p")
    return float(_evaluate(lambda be, ps: path_norm_native(be, mlp, ps, p, bias=bias), mlp, params, backend))


# -- group norms ---------------------------------------------------------------------
def group_norm_native(backend, mlp, params, p=2, q=2, *, bias=True):
    """The group norm ``mu_{p,q}(w)`` on one backend's arrays (differentiable).

    Parameters
    ----------
    backend : Backend
    mlp : MLP
    params : sequence of (W, b) native arrays
    p : float > 0
    q : float > 0 or inf
    bias : bool
        A bias belongs to its unit's incoming group.

    Returns
    -------
    native scalar

    Notes
    -----
    ``mu_{p,q}(w) = (sum_v (sum_{u->v} |w_{u->v}|^p)^{q/p})^{1/q}``; for ``q = inf`` the max
    over v of ``(sum_{u->v} |w_{u->v}|^p)^{1/p}`` (docs/math.md section 6). v runs over every
    non-input unit, the outputs included.
    """
    p = check_exponent(p, "p")
    q = check_group_exponent(q)
    xp = backend.xp
    groups = []
    for W, b in params:
        group = backend.sum_rows(xp.abs(W) ** p)
        if bias:
            group = group + xp.abs(b) ** p
        groups.append(group)
    if q == np.inf:
        largest = backend.stack([xp.max(group) for group in groups], 0)
        return xp.max(largest) ** (1.0 / p)
    total = sum(backend.sum_rows(group ** (q / p)) for group in groups)
    return total ** (1.0 / q)


def group_norm(mlp, params, p=2, q=2, *, bias=True, backend="numpy"):
    """The group norm ``mu_{p,q}`` (docs/math.md section 6; seed 002).

    Parameters
    ----------
    mlp : MLP
    params : tuple of (W, b) ndarray
    p : float > 0
    q : float > 0, or ``numpy.inf`` for the per-unit max norm ``mu_{p,inf}``
    bias : bool
        With biases (the default), a bias belongs to its unit's incoming group, so that
        ``mu_{2,2}`` is the Euclidean norm of every parameter.
    backend : str or Backend

    Returns
    -------
    float

    Notes
    -----
    ``mu_{p,q}(w) = (sum_v (sum_{u->v} |w_{u->v}|^p)^{q/p})^{1/q}``. ``mu_{p,inf}`` is not
    invariant under node rescaling; its minimum over rescalings is in
    :func:`gcref.rescaling.balanced_rescaling`.
    """
    p = check_exponent(p, "p")
    q = check_group_exponent(q)
    return float(
        _evaluate(lambda be, ps: group_norm_native(be, mlp, ps, p, q, bias=bias), mlp, params, backend)
    )


# -- per-layer norms and the product norm ---------------------------------------------
def _check_kind(kind):
    if kind not in LAYER_NORM_KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {LAYER_NORM_KINDS}")
    return kind


def layer_norms_native(backend, mlp, params, kind="frobenius"):
    """Per-layer norms of the weight matrices on one backend's arrays (differentiable).

    Parameters
    ----------
    backend : Backend
    mlp : MLP
    params : sequence of (W, b) native arrays
    kind : {"frobenius", "spectral"}

    Returns
    -------
    native array, shape (l,)
        ``||W_i||_F`` or ``||W_i||_2`` (the largest singular value). Biases are not included.
    """
    kind = _check_kind(kind)
    xp = backend.xp
    if kind == "frobenius":
        norms = [backend.sum_rows((W * W).reshape(-1)) ** 0.5 for W, _ in params]
    else:
        norms = [xp.linalg.svd(W, full_matrices=False)[1][0] for W, _ in params]
    return backend.stack(norms, 0)


def layer_norms(mlp, params, kind="frobenius", *, backend="numpy"):
    """Per-layer Frobenius or spectral norms of the weights.

    Parameters
    ----------
    mlp : MLP
    params : tuple of (W, b) ndarray
    kind : {"frobenius", "spectral"}
    backend : str or Backend

    Returns
    -------
    ndarray, shape (l,)
        Entry ``i - 1`` is ``||W_i||_F`` or the largest singular value of ``W_i``.
    """
    kind = _check_kind(kind)
    return np.asarray(_evaluate(lambda be, ps: layer_norms_native(be, mlp, ps, kind), mlp, params, backend))


def product_norm_native(backend, mlp, params):
    """``rho = prod_k ||W_k||_F`` on one backend's arrays (differentiable)."""
    norms = layer_norms_native(backend, mlp, params, "frobenius")
    rho = norms[0]
    for i in range(1, mlp.depth):
        rho = rho * norms[i]
    return rho


def product_norm(mlp, params, *, backend="numpy"):
    """The product norm ``rho = prod_k ||W_k||_F`` (docs/math.md section 6; seed 004, section 2).

    Parameters
    ----------
    mlp : MLP
    params : tuple of (W, b) ndarray
    backend : str or Backend

    Returns
    -------
    float

    Notes
    -----
    For bias-free networks with positively one-homogeneous activations
    ``f = rho f~``, with f~ the network of :func:`normalized_params`.
    """
    return float(_evaluate(lambda be, ps: product_norm_native(be, mlp, ps), mlp, params, backend))


# -- the normalised network and its margins --------------------------------------------
def normalized_params(mlp, params):
    """Layers of the normalised network f~: ``V_k = W_k / ||W_k||_F`` (seed 004, section 2).

    Parameters
    ----------
    mlp : MLP
    params : tuple of (W, b) ndarray
        A bias-free network: every bias must be zero.

    Returns
    -------
    tuple of (V, b) ndarray
        The normalised weights and the (zero) biases.

    Raises
    ------
    ValueError
        If a bias is non-zero (the normalised network of seed 004 is defined for bias-free
        networks, where ``f = rho f~`` holds for positively one-homogeneous activations),
        or a weight matrix is zero.

    Notes
    -----
    ``f~`` is defined for any activation; the identity ``f = rho f~`` needs a positively
    one-homogeneous hidden and output activation (ReLU, leaky ReLU, identity).
    """
    params = _checked(mlp, params)
    out = []
    for i, (W, b) in enumerate(params, 1):
        if np.any(b != 0):
            raise ValueError(
                f"b_{i} is non-zero: the normalised network f~ (seed 004) is defined for "
                "bias-free networks; set every bias to zero"
            )
        norm = np.linalg.norm(W)
        if norm == 0:
            raise ValueError(f"W_{i} is zero: it cannot be normalised")
        out.append((W / norm, b.copy()))
    return tuple(out)


def _check_labels(mlp, y, n):
    """Labels as an int array: +-1 for one output, class indices in [0, k) for k >= 2."""
    y = as_label_array(y)
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},): one label per example; got {y.shape}")
    if y.dtype.kind not in "biuf":
        raise TypeError(f"y must hold numeric labels; got dtype {y.dtype}")
    k = mlp.output_dim
    if k == 1:
        if not np.all((y == 1) | (y == -1)):
            raise ValueError("with one output the margin needs labels y in {-1, +1}")
        return y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise TypeError(f"with k = {k} outputs y must hold integer class labels; got dtype {y.dtype}")
    if np.any(y < 0) or np.any(y >= k):
        raise ValueError(f"class labels must lie in [0, {k}); got values in [{y.min()}, {y.max()}]")
    return y


def margins(mlp, params, X, y, *, normalized=True, backend="numpy"):
    """Per-example margins: the margin distribution over a data set (docs/math.md section 6).

    Parameters
    ----------
    mlp : MLP
    params : tuple of (W, b) ndarray
    X : ndarray, shape (N, d)
    y : ndarray, shape (N,)
        Labels in {-1, +1} for one output; integer classes in [0, k) for k >= 2 outputs.
    normalized : bool
        Margins of the normalised network f~ (the default; the network must be bias-free,
        see :func:`normalized_params`) or of f itself.
    backend : str or Backend
        Evaluates the network through :func:`gcref.predict`.

    Returns
    -------
    ndarray, shape (N,)
        ``y_n f(x_n)`` for one output; ``f_{y_n}(x_n) - max_{j != y_n} f_j(x_n)`` for k >= 2.
    """
    params = _checked(mlp, params)
    if normalized:
        params = normalized_params(mlp, params)
    out = predict(mlp, params, X, backend=backend)
    labels = _check_labels(mlp, y, out.shape[0])
    if mlp.output_dim == 1:
        return labels * out[:, 0]
    rows = np.arange(out.shape[0])
    others = out.copy()
    others[rows, labels] = -np.inf
    return out[rows, labels] - others.max(axis=1)


def margin(mlp, params, X, y, *, normalized=True, backend="numpy"):
    """The margin ``min_n`` of :func:`margins`: ``min_n y_n f~(x_n)`` for +-1 labels.

    Parameters and normalisation as in :func:`margins`.

    Returns
    -------
    float
    """
    return float(np.min(margins(mlp, params, X, y, normalized=normalized, backend=backend)))
