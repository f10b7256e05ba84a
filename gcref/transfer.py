"""The transfer theorem: input-gradient norms bounded by parameter-gradient norms (MATH.md section 3).

Seed 000, Theorem 1 (and seed 003, eq. 43): for every layer i,

    A_i = ||W_i||_2 ||h'_i(x)||_2,     T_i^2 = (1 + ||h_i(x)||^2) / A_i^2,

the per-layer lemma ``||J||_F^2 (1 + ||h_i||^2) <= A_i^2 ||grad_{(W_i, b_i)} f||_F^2`` holds,
and summing it over the layers gives ``||J||_F^2 sum_i T_i^2 <= ||grad_theta f||_F^2``.

Everything is reported in a form that stays finite when a layer is dead (``A_i = 0``,
hence ``J = 0``): the lemma in product form, ``1 / T_i^2 = A_i^2 / (1 + ||h_i||^2)``
instead of ``T_i^2``, and each layer's term ``||J||_F^2 T_i^2`` set to its value 0 there.

The network's quantities come from the backend primitives (forward pass, hidden
Jacobians, input Jacobian, per-layer parameter-gradient norms), so this works in every
backend; the norms are then taken in NumPy, in float64.

Index conventions: ``N`` examples, layers i = 1..l stored 0-based along the last axis.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from gcref._checks import check_finite_scalar, check_positive_int
from gcref.primitives import Call
from gcref.results import Record

NORMS = ("spectral", "frobenius")

#: Seed of the fixed starting vectors of power iteration (reproducible, and almost
#: surely not orthogonal to the top singular vector).
_POWER_ITERATION_SEED = 0


@dataclass(frozen=True)
class TransferTerms(Record):
    """Every term of the transfer theorem, per example and per layer.

    All arrays are float64 and finite, dead layers included.

    Attributes
    ----------
    norm : {"spectral", "frobenius"}
        The matrix norm used for ``||W_i||`` and ``||h'_i||``.
    h_norms : ndarray, shape (N, l)
        ``||h_i(x)||``, the Euclidean norm of the input to layer i (``h_1 = x``).
    weight_norms : ndarray, shape (l,)
        ``||W_i||``.
    hidden_jacobian_norms : ndarray, shape (N, l)
        ``||h'_i(x)||`` (``h'_1 = I_d``).
    A : ndarray, shape (N, l)
        ``A_i = ||W_i|| ||h'_i||`` (seed 000, eq. 8).
    jacobian_sq_norms : ndarray, shape (N,)
        ``||J(x)||_F^2``.
    layer_grad_sq_norms : ndarray, shape (N, l)
        ``||grad_{(W_i, b_i)} f(x)||_F^2``, summed over the k outputs.
    grad_sq_norms : ndarray, shape (N,)
        ``||grad_theta f(x)||_F^2``.
    lemma_lhs, lemma_rhs : ndarray, shape (N, l)
        The per-layer lemma in product form: ``||J||_F^2 (1 + ||h_i||^2)`` and
        ``A_i^2 ||grad_{(W_i, b_i)} f||_F^2``; ``lemma_lhs <= lemma_rhs``.
    inv_T_sq : ndarray, shape (N, l)
        ``1 / T_i^2 = A_i^2 / (1 + ||h_i||^2)``, 0 for a dead layer.
    layer_terms : ndarray, shape (N, l)
        ``||J||_F^2 T_i^2``, computed as ``(||J||_F / A_i)^2 (1 + ||h_i||^2)``, and 0 where
        ``A_i = 0`` (then ``J = 0``). Each is at most ``||grad_{(W_i, b_i)} f||_F^2``.
    ratio : ndarray, shape (N,)
        ``||J||_F^2 sum_i T_i^2 / ||grad_theta f||_F^2`` in [0, 1]; 0 where
        ``||grad_theta f||_F^2`` is 0 or below the smallest normal number of the
        model's dtype (a subnormal quotient has no relative accuracy).
    """

    norm: str
    h_norms: np.ndarray
    weight_norms: np.ndarray
    hidden_jacobian_norms: np.ndarray
    A: np.ndarray
    jacobian_sq_norms: np.ndarray
    layer_grad_sq_norms: np.ndarray
    grad_sq_norms: np.ndarray
    lemma_lhs: np.ndarray
    lemma_rhs: np.ndarray
    inv_T_sq: np.ndarray
    layer_terms: np.ndarray
    ratio: np.ndarray

    @property
    def A_sq(self):
        """``A_i^2``, shape (N, l)."""
        return self.A**2

    @property
    def T_sq(self):
        """``T_i^2 = (1 + ||h_i||^2) / A_i^2``, shape (N, l); ``inf`` exactly where ``A_i = 0``.

        The only quantity here that is not finite on a dead layer; prefer
        :attr:`inv_T_sq` or :attr:`layer_terms`.
        """
        return _safe_divide(1.0 + self.h_norms**2, self.A_sq, fill=np.inf)


def transfer_terms(
    mlp,
    params,
    X,
    *,
    backend="numpy",
    norm="spectral",
    svd_max_dim=64,
    power_tol=1e-12,
    power_max_iter=10_000,
):
    """Per-example, per-layer terms of the transfer theorem.

    Parameters
    ----------
    mlp : gcref.MLP
    params : tuple of (W, b) pairs of ndarray
    X : ndarray, shape (N, d)
    backend : str or Backend
    norm : {"spectral", "frobenius"}
        ``"spectral"`` is the theorem; ``"frobenius"`` replaces every matrix norm by the
        Frobenius norm, a weaker bound that also holds (its ratio is never larger).
    svd_max_dim : int
        Spectral norms of matrices with ``min(rows, cols) <= svd_max_dim`` are exact, by
        SVD; larger ones come from :func:`spectral_norms` by power iteration.
    power_tol : float > 0
    power_max_iter : int >= 2
        Passed to :func:`spectral_norms` as ``tol`` and ``max_iter``.

    Returns
    -------
    TransferTerms

    Notes
    -----
    MATH.md section 3 (seed 000, Theorem 1 and eq. 8). The lemma follows from
    ``J = Delta_i W_i h'_i`` (MATH.md section 1): ``||J||_F <= ||Delta_i||_F A_i`` and
    ``||grad_{(W_i, b_i)} f||_F^2 = ||Delta_i||_F^2 (1 + ||h_i||^2)``. Spectral norms
    from power iteration are lower bounds accurate to ``power_tol``, so with them the
    inequalities hold up to that relative tolerance.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    svd_max_dim = check_positive_int(svd_max_dim, "svd_max_dim", minimum=0)
    # Checked here, under their own names: spectral_norms would call them tol and max_iter.
    power_tol = check_finite_scalar(power_tol, "power_tol", positive=True)
    power_max_iter = check_positive_int(power_max_iter, "power_max_iter", minimum=2)
    with Call(mlp, params, X, backend) as c:
        b = c.backend
        fwd = b.forward(mlp, c.nparams, c.nX)
        hs = [_float64(c.numpy(h)) for h in fwd.hs[:-1]]
        hidden_jacs = [_float64(c.numpy(h)) for h in b.hidden_jacobians(mlp, c.nparams, c.nX)]
        J = _float64(c.numpy(b.input_jacobian(mlp, c.nparams, c.nX)))
        weight_sq, bias_sq = b.param_grad_sq_norms(mlp, c.nparams, c.nX)
        layer_grad_sq = _float64(c.numpy(weight_sq)) + _float64(c.numpy(bias_sq))
        smallest_normal = np.finfo(c.dtype).tiny

    def matrix_norms(M):
        if norm == "frobenius":
            return np.sqrt(np.einsum("...ij,...ij->...", M, M))
        return spectral_norms(M, svd_max_dim=svd_max_dim, tol=power_tol, max_iter=power_max_iter)

    h_norms = np.stack([np.sqrt(np.einsum("ni,ni->n", h, h)) for h in hs], axis=1)
    weight_norms = np.array([float(matrix_norms(_float64(W))) for W, _ in c.params])
    jac_norms = np.stack([matrix_norms(hj) for hj in hidden_jacs], axis=1)
    A = weight_norms[None, :] * jac_norms
    J_sq = np.einsum("nkd,nkd->n", J, J)
    one_plus_h_sq = 1.0 + h_norms**2

    layer_terms = _safe_divide(np.sqrt(J_sq)[:, None], A, fill=0.0) ** 2 * one_plus_h_sq
    grad_sq = layer_grad_sq.sum(axis=1)
    return TransferTerms(
        norm=norm,
        h_norms=h_norms,
        weight_norms=weight_norms,
        hidden_jacobian_norms=jac_norms,
        A=A,
        jacobian_sq_norms=J_sq,
        layer_grad_sq_norms=layer_grad_sq,
        grad_sq_norms=grad_sq,
        lemma_lhs=J_sq[:, None] * one_plus_h_sq,
        lemma_rhs=A**2 * layer_grad_sq,
        inv_T_sq=A**2 / one_plus_h_sq,
        layer_terms=layer_terms,
        ratio=_safe_divide(
            layer_terms.sum(axis=1), np.where(grad_sq >= smallest_normal, grad_sq, 0.0), fill=0.0
        ),
    )


def transfer_ratio(mlp, params, X, *, backend="numpy", norm="spectral"):
    """``||J||_F^2 sum_i T_i^2 / ||grad_theta f||_F^2`` per example, shape (N,), in [0, 1].

    See :func:`transfer_terms` (MATH.md section 3); 0 where ``grad_theta f(x)`` is 0
    (or so small that its squared norm is subnormal).
    """
    return transfer_terms(mlp, params, X, backend=backend, norm=norm).ratio


def spectral_norms(M, *, svd_max_dim=64, tol=1e-12, max_iter=10_000):
    """Spectral norms ``||M_b||_2`` of a stack of matrices.

    Parameters
    ----------
    M : ndarray, shape (..., m, n)
    svd_max_dim : int
        Exact by SVD when ``min(m, n) <= svd_max_dim``; by power iteration otherwise.
    tol : float
        Power iteration stops when the extrapolated remaining increase of the estimate
        of ``||M_b||_2^2`` is at most ``tol`` times the estimate (see Notes).
    max_iter : int
        Most power iterations; reaching it without convergence warns.

    Returns
    -------
    ndarray, shape (...)
        float64; 0 for a zero matrix.

    Raises
    ------
    TypeError
        ``M`` is not a real (boolean, integer or floating) array.
    ValueError
        ``M`` is ragged, contains NaN or infinity, or has fewer than 2 dimensions.

    Notes
    -----
    Power iteration on ``M^T M``, vectorised over the stack: ``u = M v``,
    ``lam = ||u||^2`` (the Rayleigh quotient, a lower bound of ``||M||_2^2`` that increases
    with the iterations), ``v <- M^T u / ||M^T u||``. The increments ``delta_k`` of ``lam``
    shrink geometrically with a ratio ``q``, estimated as the larger of the last two
    ratios ``delta_k / delta_{k-1}``; iteration stops when the extrapolated remaining
    increase ``delta_k q / (1 - q)`` is at most ``tol lam``, so that the relative error
    of the norm is about ``tol / 2``. Two singular values closer than that cannot be told
    apart, and a top singular value within a relative gap ``g`` of the next one may be
    underestimated by up to about ``g``: use the SVD for such matrices. The starting
    vectors are fixed pseudo-random vectors, so the result is reproducible.
    """
    try:
        M = np.asarray(M)
    except ValueError as err:
        raise ValueError(f"M must be a rectangular array; {err}") from err
    if M.dtype.kind not in "biuf":
        raise TypeError(f"M must be a real array; got dtype {M.dtype}")
    M = _float64(M)
    if not np.all(np.isfinite(M)):
        raise ValueError("M contains NaN or infinite values")
    if M.ndim < 2:
        raise ValueError(f"M must have at least 2 dimensions; got shape {M.shape}")
    svd_max_dim = check_positive_int(svd_max_dim, "svd_max_dim", minimum=0)
    tol = check_finite_scalar(tol, "tol", positive=True)
    max_iter = check_positive_int(max_iter, "max_iter", minimum=2)
    m, n = M.shape[-2:]
    if M.size == 0:
        return np.zeros(M.shape[:-2])
    if min(m, n) <= svd_max_dim:
        return np.linalg.svd(M, compute_uv=False)[..., 0]
    flat = M.reshape(-1, m, n)
    return _power_iteration(flat, tol, max_iter).reshape(M.shape[:-2])


def _power_iteration(M, tol, max_iter):
    """``||M_b||_2`` for ``M`` of shape (B, m, n) by power iteration on ``M_b^T M_b``."""
    rng = np.random.default_rng(_POWER_ITERATION_SEED)
    v = rng.standard_normal(M.shape[::2])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    lam, deltas = None, []
    done = np.zeros(M.shape[0], dtype=bool)
    rounding = 8 * np.finfo(np.float64).eps
    for _ in range(max_iter):
        u = np.einsum("bmn,bn->bm", M, v)
        new_lam = np.einsum("bm,bm->b", u, u)
        if lam is not None:
            deltas = [*deltas[-2:], np.abs(new_lam - lam)]
            done |= deltas[-1] <= rounding * new_lam
        if len(deltas) == 3:
            # The larger of the last two contraction ratios: a transient (the first
            # step, components that die out fast) makes a single ratio too optimistic.
            q = np.maximum(
                _safe_divide(deltas[2], deltas[1], fill=1.0),
                _safe_divide(deltas[1], deltas[0], fill=1.0),
            )
            done |= deltas[2] * q <= tol * new_lam * (1.0 - q)
        lam = new_lam
        if np.all(done):
            return np.sqrt(lam)
        w = np.einsum("bmn,bm->bn", M, u)
        v = _safe_divide(w, np.linalg.norm(w, axis=1, keepdims=True), fill=0.0)
    warnings.warn(
        f"power iteration did not reach tol={tol} in {max_iter} iterations; "
        "the spectral norms returned are lower bounds",
        RuntimeWarning,
        stacklevel=3,
    )
    return np.sqrt(lam)


def _safe_divide(numerator, denominator, fill):
    """``numerator / denominator`` where the denominator is positive, ``fill`` elsewhere; no warning."""
    numerator, denominator = np.broadcast_arrays(
        np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    )
    out = np.full(numerator.shape, fill, dtype=np.float64)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


def _float64(x):
    return np.asarray(x, dtype=np.float64)
