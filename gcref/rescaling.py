"""Node rescaling symmetry of positively homogeneous networks (docs/math.md section 6; seed 002).

Index conventions
-----------------
The hidden units are the entries of ``z_i`` for layers i = 1..l-1 (docs/math.md numbering).
Rescaling factors are a list of l - 1 positive arrays, ``factors[i - 1]`` of shape
``(n_{i+1},)`` for the units of layer i. Rescaling unit v of layer i by c multiplies its
incoming weights (row v of ``W_i``) and its bias ``b_i[v]`` by c and its outgoing weights
(column v of ``W_{i+1}``) by 1/c. Input and output units are never rescaled.

For ReLU, leaky ReLU and identity activations (``Activation.positively_homogeneous``) a
rescaled network computes the same function; the functions here refuse other hidden
activations, for which the rescaled network would not be equivalent.
"""

from __future__ import annotations

import numpy as np

from gcref._checks import (
    check_finite_scalar,
    check_float_array,
    check_positive_int,
    check_rng,
    not_an_mlp,
)
from gcref.backends import get_backend
from gcref.mlp import MLP
from gcref.norms import check_exponent, path_gammas_in


def check_rescalable(mlp):
    """Raise ``ValueError`` unless node rescaling preserves the function of ``mlp``."""
    if not isinstance(mlp, MLP):
        raise not_an_mlp(mlp)
    if mlp.depth > 1 and not mlp.activation.positively_homogeneous:
        raise ValueError(
            f"node rescaling preserves f only for positively homogeneous hidden activations "
            f"(relu, leaky_relu, identity); the activation is {mlp.activation.name!r}"
        )


def _check_factors(mlp, factors, dtype):
    n_hidden = mlp.depth - 1
    if not isinstance(factors, (list, tuple)) or len(factors) != n_hidden:
        raise ValueError(
            f"factors must be a sequence of {n_hidden} arrays, one per hidden layer of sizes {mlp.sizes}"
        )
    out = []
    for i, c in enumerate(factors, 1):
        c = check_float_array(np.asarray(c, dtype=dtype), f"factors[{i - 1}]", shape=(mlp.sizes[i],))
        if np.any(c <= 0):
            raise ValueError(f"factors[{i - 1}] must be positive")
        out.append(c)
    return out


def rescale(mlp, params, factors):
    """Apply node rescalings to every hidden unit at once.

    Parameters
    ----------
    mlp : MLP
    params : tuple of (W, b) ndarray
    factors : sequence of l - 1 ndarray, ``factors[i - 1]`` of shape (n_{i+1},), all > 0

    Returns
    -------
    tuple of (W, b) ndarray
        ``W_i[v, u] * c_i[v] / c_{i-1}[u]`` and ``b_i[v] * c_i[v]``, with ``c_0 = c_l = 1``.

    Notes
    -----
    The composition of the node rescalings ``rho_{c,v}`` of docs/math.md section 6 over every
    hidden unit v.
    """
    check_rescalable(mlp)
    params = mlp.check_params(params)
    dtype = params[0][0].dtype
    factors = _check_factors(mlp, factors, dtype)
    ones_in = np.ones(mlp.input_dim, dtype=dtype)
    ones_out = np.ones(mlp.output_dim, dtype=dtype)
    into = [*factors, ones_out]
    outof = [ones_in, *factors]
    return tuple(
        (W * (c_out[:, None] / c_in[None, :]), b * c_out)
        for (W, b), c_out, c_in in zip(params, into, outof)
    )


def rescale_node(mlp, params, layer, unit, c):
    """The node rescaling ``rho_{c,v}`` of one hidden unit (docs/math.md section 6; seed 002).

    Parameters
    ----------
    mlp : MLP
    params : tuple of (W, b) ndarray
    layer : int, 1 <= layer <= l - 1
        The layer i (docs/math.md numbering) whose output unit is rescaled.
    unit : int, 0 <= unit < n_{i+1}
        The unit v: an entry of ``z_i``.
    c : float > 0

    Returns
    -------
    tuple of (W, b) ndarray
        Row v of ``W_i`` and ``b_i[v]`` times c, column v of ``W_{i+1}`` times 1/c.
    """
    if not isinstance(mlp, MLP):
        raise not_an_mlp(mlp)
    if mlp.depth < 2:
        raise ValueError("the network has no hidden unit to rescale (depth 1)")
    layer = check_positive_int(layer, "layer")
    if layer > mlp.depth - 1:
        raise ValueError(f"layer must lie in [1, {mlp.depth - 1}] (a hidden layer); got {layer}")
    unit = check_positive_int(unit, "unit", minimum=0)
    if unit >= mlp.sizes[layer]:
        raise ValueError(f"unit must lie in [0, {mlp.sizes[layer]}) for layer {layer}; got {unit}")
    c = check_finite_scalar(c, "c", positive=True)
    factors = [np.ones(n) for n in mlp.sizes[1:-1]]
    factors[layer - 1][unit] = c
    return rescale(mlp, params, factors)


def random_rescaling_factors(mlp, rng, spread=4.0):
    """Log-uniform random factors ``c = exp(U(-log spread, log spread))`` for every hidden unit.

    Parameters
    ----------
    mlp : MLP
    rng : numpy.random.Generator
    spread : float >= 1
        Factors lie in ``[1 / spread, spread]``.

    Returns
    -------
    list of l - 1 ndarray, entry ``i - 1`` of shape (n_{i+1},)
    """
    if not isinstance(mlp, MLP):
        raise not_an_mlp(mlp)
    check_rng(rng)
    spread = check_finite_scalar(spread, "spread", positive=True)
    if spread < 1:
        raise ValueError(f"spread must be >= 1; got {spread}")
    log_spread = np.log(spread)
    return [np.exp(rng.uniform(-log_spread, log_spread, size=n)) for n in mlp.sizes[1:-1]]


def random_rescaling(mlp, params, rng, spread=4.0):
    """A random rescaling-equivalent network.

    Parameters
    ----------
    mlp : MLP
    params : tuple of (W, b) ndarray
    rng : numpy.random.Generator
    spread : float >= 1
        Log-uniform factors in ``[1 / spread, spread]``, see :func:`random_rescaling_factors`.

    Returns
    -------
    params : tuple of (W, b) ndarray
        The rescaled network, computing the same function.
    factors : list of ndarray
        The factors used, for :func:`rescale`.
    """
    factors = random_rescaling_factors(mlp, rng, spread)
    return rescale(mlp, params, factors), factors


def balanced_rescaling(mlp, params, p=2):
    """A rescaling-equivalent network that minimises ``mu_{p,inf}`` of the weights.

    Parameters
    ----------
    mlp : MLP
    params : tuple of (W, b) ndarray
    p : float > 0

    Returns
    -------
    params : tuple of (W, b) ndarray
        The balanced network; it computes the same function. Biases follow the rescaling
        of their unit but do not enter the group norm (``bias=False``).
    factors : list of ndarray
        The factors used, for :func:`rescale`.

    Raises
    ------
    ValueError
        For a hidden activation that is not positively homogeneous, a hidden unit without
        any non-zero path from the inputs, or a network whose path norm is zero: there the
        minimum is not attained.

    Notes
    -----
    Closed form, no iteration. With ``g_i = gamma_in`` of the units of layer i (the forward
    dynamic programme of Path-SGD over ``|W|^p``, without biases) and
    ``M = max_o g_l[o]^{1/p}`` over the output units o, the factors are
    ``c_i = t^i g_i^{-1/p}`` with ``t = M^{1/l}``. Every hidden unit's incoming group then
    has p-norm t and every output unit's at most t, so ``mu_{p,inf} = t``.

    This is the minimum: for any rescaling, induction over the layers gives
    ``g_l[o] <= mu_{p,inf}^{p l}``, so ``mu_{p,inf}^l >= max_o ||pi_o||_p`` where
    ``pi_o`` holds the paths that end at output o. With one output this is
    ``min mu_{p,inf}^l = ||pi(w)||_p`` (seed 002; docs/math.md section 6); with k outputs the
    minimum is ``max_o ||pi_o||_p``, which lies between ``k^{-1/p} ||pi||_p`` and
    ``||pi||_p``.
    """
    check_rescalable(mlp)
    params = mlp.check_params(params)
    p = check_exponent(p, "p")
    gammas = path_gammas_in(get_backend("numpy"), params, p, bias=False)
    for i, gamma in enumerate(gammas[:-1], 1):
        if np.any(gamma == 0):
            raise ValueError(
                f"a unit of layer {i} has no non-zero path from the inputs: "
                "the minimum of mu_{p,inf} over rescalings is not attained"
            )
    largest = float(np.max(gammas[-1])) ** (1.0 / p)
    if largest == 0:
        raise ValueError("the path norm is zero: the minimum of mu_{p,inf} is not attained")
    t = largest ** (1.0 / mlp.depth)
    factors = [t**i * gamma ** (-1.0 / p) for i, gamma in enumerate(gammas[:-1], 1)]
    return rescale(mlp, params, factors), factors
