"""Hypothesis strategies for MLP problems, named after what they draw.

Needs Hypothesis (``pip install gcref[testing]``); ``import gcref`` and
``import gcref.testing`` do not import it.

Random arrays come from a ``numpy.random.Generator`` seeded by a drawn integer, so that
every example is reproducible from Hypothesis's own record (and from the seed printed by
the conformance checks, see :func:`make_problem`) and no global seed is touched. Sizes are
bounded (depth up to 4, widths up to 8, batches up to 5 by default): the strategies are
meant for properties that run hundreds of examples in seconds.

Examples
--------
>>> from hypothesis import given, settings
>>> import gcref
>>> from gcref.testing import strategies as gst
>>> @settings(max_examples=5)
... @given(gst.problems())
... def test_gc_is_nonnegative(problem):
...     assert gcref.geometric_complexity(problem.mlp, problem.params, problem.X) >= 0
>>> test_gc_is_nonnegative()
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

try:
    from hypothesis import assume
    from hypothesis import strategies as st
except ImportError as error:
    raise ImportError(
        "gcref.testing.strategies needs Hypothesis: pip install 'gcref[testing]'"
    ) from error

import gcref
from gcref.rescaling import random_rescaling_factors

__all__ = [
    "ACTIVATION_NAMES",
    "DTYPES",
    "LOSS_NAMES",
    "PARAMETER_SCALES",
    "PROBE_KINDS",
    "REPRESENTATIVE_BATCH",
    "REPRESENTATIVE_SIZES",
    "SATURATING",
    "UNSATURATED_Z",
    "Problem",
    "activations",
    "assume_unsaturated",
    "batches",
    "fixed_shape_problems",
    "labels",
    "loss_problems",
    "make_problem",
    "minibatch_partitions",
    "mlps",
    "params",
    "probes",
    "problems",
    "problems_for",
    "rescalings",
    "seeds",
    "targets",
]

ACTIVATION_NAMES = ("identity", "relu", "leaky_relu", "tanh", "sigmoid", "softplus")
PARAMETER_SCALES = (0.25, 1.0, 2.0)
DTYPES = (np.float64, np.float32)
LOSS_NAMES = ("squared", "logistic", "softmax_cross_entropy")
PROBE_KINDS = ("gaussian", "rademacher", "sphere")
#: Output dimensions each loss accepts: (fewest, most or None).
LOSS_OUTPUTS = {"squared": (1, None), "logistic": (1, 1), "softmax_cross_entropy": (2, None)}
_SEED_MAX = 2**32 - 1


def seeds():
    """A seed for ``numpy.random.default_rng``: an integer in ``[0, 2^32)``."""
    return st.integers(0, _SEED_MAX)


def _check_dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise TypeError(f"dtype must be float32 or float64; got {dt}")
    return dt


def _activation_code(activation):
    """Python source that rebuilds ``activation`` (a name or ``gcref.leaky_relu(slope)``)."""
    name = gcref.get_activation(activation).name
    if name.startswith("leaky_relu("):
        return f"gcref.{name}"
    return repr(name)


@dataclass
class Problem:
    """An MLP, its parameters and a batch, with the generator that drew them.

    Attributes
    ----------
    mlp : gcref.MLP
    params : tuple of (W, b) pairs of ndarray
    X : ndarray, shape (n, d)
    rng : numpy.random.Generator
        The generator that drew ``params`` and ``X``; later draws (targets, directions)
        continue its stream.
    seed : int or None
        The seed of ``rng``, when the problem came from :func:`make_problem`.
    scale : float or None
        The weight scale ``params`` were drawn at.
    """

    mlp: gcref.MLP
    params: tuple
    X: np.ndarray
    rng: np.random.Generator
    seed: int | None = None
    scale: float | None = None

    def targets(self, loss):
        """Targets for ``loss``, drawn from ``self.rng`` (see :func:`targets`)."""
        return targets(self.rng, loss, self.X.shape[0], self.mlp.output_dim, self.X.dtype)

    def direction(self):
        """A random parameter-shaped direction (standard normal entries, the params' dtype)."""
        return tuple(
            (self.rng.normal(size=W.shape).astype(W.dtype), self.rng.normal(size=b.shape).astype(b.dtype))
            for W, b in self.params
        )

    def describe(self):
        """The problem in words and the call that rebuilds it.

        Returns
        -------
        str
            Sizes, activation, batch shape, dtype, scale and seed, with the
            :func:`make_problem` call that replays them (when the seed is known).
        """
        sizes = self.mlp.sizes
        activation = _activation_code(self.mlp.activation)
        dtype = np.dtype(self.X.dtype).name
        text = (
            f"MLP(sizes={sizes}, activation={activation}), X of shape {self.X.shape}, "
            f"{dtype}, weight scale {self.scale}, seed {self.seed}"
        )
        if self.seed is None or self.scale is None:
            return text
        return (
            text + f"; replay: gcref.testing.strategies.make_problem({sizes}, {activation}, "
            f"n={self.X.shape[0]}, seed={self.seed}, scale={self.scale}, dtype=numpy.{dtype})"
        )


def make_problem(sizes, activation, n, seed, *, scale=1.0, dtype=np.float64):
    """The :class:`Problem` that the strategies draw for these choices (a replay).

    Parameters
    ----------
    sizes : tuple of int
        ``(d, n_2, ..., k)``.
    activation : str or gcref.Activation
    n : int
        Number of examples.
    seed : int
        Seeds the generator that draws the parameters (LeCun normal weights times
        ``scale``, biases drawn alike) and then ``X`` (standard normal).
    scale : float
    dtype : float32 or float64

    Returns
    -------
    Problem
    """
    dtype = _check_dtype(dtype)
    mlp = gcref.MLP(tuple(sizes), activation=activation)
    rng = np.random.default_rng(seed)
    drawn = mlp.init(rng, scheme="lecun_normal", scale=scale, bias="normal", dtype=dtype)
    X = rng.normal(size=(n, mlp.input_dim)).astype(dtype)
    return Problem(mlp, drawn, X, rng, seed=seed, scale=scale)


def targets(rng, loss, n, k, dtype=np.float64):
    """Targets of ``n`` examples for ``loss`` on ``k`` outputs.

    Parameters
    ----------
    rng : numpy.random.Generator
    loss : str or gcref.losses.Loss
    n, k : int
    dtype : float32 or float64
        The dtype of squared-loss targets.

    Returns
    -------
    ndarray
        ``"squared"``: standard normal, shape (n, k); ``"logistic"``: integers in {0, 1},
        shape (n,); ``"softmax_cross_entropy"``: class indices in ``[0, k)``, shape (n,).
    """
    name = gcref.get_loss(loss).name
    if name == "squared":
        return rng.normal(size=(n, k)).astype(_check_dtype(dtype))
    if name == "logistic":
        return rng.integers(0, 2, size=n)
    return rng.integers(0, k, size=n)


@st.composite
def activations(draw, names=ACTIVATION_NAMES):
    """A hidden activation: a registered name, or leaky ReLU with a drawn slope."""
    name = draw(st.sampled_from(names))
    if name == "leaky_relu" and draw(st.booleans()):
        return gcref.leaky_relu(draw(st.sampled_from((0.0, 0.1, 0.5))))
    return name


@st.composite
def mlps(draw, max_depth=4, max_width=8, max_inputs=6, max_outputs=4, min_outputs=1,
         activation_names=ACTIVATION_NAMES, min_depth=1):
    """A :class:`gcref.MLP` description: depth, widths, inputs ``d``, outputs ``k``, activation.

    Depth in ``[min_depth, max_depth]`` (number of weight layers), hidden widths in
    ``[1, max_width]``, ``d`` in ``[1, max_inputs]``, ``k`` in ``[min_outputs, max_outputs]``.
    """
    depth = draw(st.integers(min_depth, max_depth))
    d = draw(st.integers(1, max_inputs))
    k = draw(st.integers(min_outputs, max_outputs))
    hidden = [draw(st.integers(1, max_width)) for _ in range(depth - 1)]
    return gcref.MLP((d, *hidden, k), activation=draw(activations(activation_names)))


@st.composite
def params(draw, mlp, scales=PARAMETER_SCALES, dtype=np.float64):
    """Parameters of ``mlp`` at a scale drawn from ``scales``: LeCun normal weights, drawn biases."""
    dtype = _check_dtype(dtype)
    rng = np.random.default_rng(draw(seeds()))
    scale = draw(st.sampled_from(scales))
    return mlp.init(rng, scheme="lecun_normal", scale=scale, bias="normal", dtype=dtype)


@st.composite
def batches(draw, d, min_examples=1, max_examples=5, dtype=np.float64, scale=1.0):
    """A batch ``X`` of shape (n, d), n in ``[min_examples, max_examples]``, normal entries times ``scale``."""
    dtype = _check_dtype(dtype)
    n = draw(st.integers(min_examples, max_examples))
    rng = np.random.default_rng(draw(seeds()))
    return (scale * rng.normal(size=(n, d))).astype(dtype)


@st.composite
def labels(draw, loss, n, k, dtype=np.float64):
    """Targets of ``n`` examples for ``loss`` on ``k`` outputs (see :func:`targets`)."""
    return targets(np.random.default_rng(draw(seeds())), loss, n, k, dtype)


@st.composite
def rescalings(draw, mlp, spread=4.0):
    """Node-rescaling factors for :func:`gcref.rescale`: one positive array per hidden layer.

    Log-uniform in ``[1 / spread, spread]`` (:func:`gcref.rescaling.random_rescaling_factors`).
    """
    return random_rescaling_factors(mlp, np.random.default_rng(draw(seeds())), spread)


@st.composite
def minibatch_partitions(draw, n, min_size=1):
    """A partition of ``range(n)`` into mini-batches of equal size (at least ``min_size``).

    Returns
    -------
    list of ndarray
        ``m`` sorted int64 arrays of size ``n / m`` each, from a drawn permutation; the
        size is drawn among the divisors of ``n`` that are at least ``min_size``.
    """
    sizes = [s for s in range(max(1, min_size), n + 1) if n % s == 0]
    if not sizes:
        raise ValueError(f"n = {n} examples cannot be split into batches of at least {min_size}")
    size = draw(st.sampled_from(sizes))
    order = np.random.default_rng(draw(seeds())).permutation(n)
    return [np.sort(order[j : j + size]).astype(np.int64) for j in range(0, n, size)]


@st.composite
def probes(draw, k, n, n_probes=1, kinds=PROBE_KINDS, dtype=np.float64):
    """Probe vectors for the GC estimator: shape (n, n_probes, k), and their kind.

    Returns
    -------
    (ndarray, str)
        Gaussian (standard normal entries), Rademacher (random signs) or sphere (uniform
        on the unit sphere of R^k) probes, with ``E[v v^T] = I_k`` for the first two and
        ``I_k / k`` for the last (docs/math.md section 2).
    """
    dtype = _check_dtype(dtype)
    kind = draw(st.sampled_from(kinds))
    rng = np.random.default_rng(draw(seeds()))
    shape = (n, n_probes, k)
    if kind == "gaussian":
        v = rng.normal(size=shape)
    elif kind == "rademacher":
        v = rng.choice((-1.0, 1.0), size=shape)
    elif kind == "sphere":
        v = rng.normal(size=shape)
        v /= np.linalg.norm(v, axis=-1, keepdims=True)
    else:
        raise ValueError(f"kinds must hold 'gaussian', 'rademacher' or 'sphere'; got {kind!r}")
    return v.astype(dtype), kind


#: Layer sizes that together span depth 1-4, widths 1-8, d 1-6 and k 1-4. The ``jax``
#: backend compiles each primitive once per shape (seconds), so its properties draw
#: architectures from this set and vary everything else: values, activations, scales.
REPRESENTATIVE_SIZES = (
    (1, 1),
    (6, 4),
    (3, 8, 2),
    (2, 1, 3),
    (4, 5, 3, 1),
    (1, 8, 2, 7, 2),
    (5, 3, 6, 4, 4),
)
REPRESENTATIVE_BATCH = 4


def _problem(draw, mlp, n, scales=PARAMETER_SCALES, dtype=np.float64):
    """Parameters at a drawn scale with drawn biases, and a batch of ``n`` examples."""
    seed = draw(seeds())
    scale = draw(st.sampled_from(scales))
    return make_problem(mlp.sizes, mlp.activation, n, seed, scale=scale, dtype=dtype)


@st.composite
def problems(draw, max_examples=5, min_outputs=1, max_outputs=4, min_examples=1,
             scales=PARAMETER_SCALES, dtype=np.float64, **mlp_kwargs):
    """A :class:`Problem`: a drawn MLP (see :func:`mlps`), parameters at a drawn scale, a batch.

    ``mlp_kwargs`` go to :func:`mlps`; the batch has ``min_examples`` to ``max_examples`` rows.
    """
    mlp = draw(mlps(min_outputs=min_outputs, max_outputs=max_outputs, **mlp_kwargs))
    return _problem(draw, mlp, draw(st.integers(min_examples, max_examples)), scales, dtype)


@st.composite
def fixed_shape_problems(draw, architectures=REPRESENTATIVE_SIZES, batch=REPRESENTATIVE_BATCH,
                         activation_names=ACTIVATION_NAMES, scales=PARAMETER_SCALES, dtype=np.float64):
    """A :class:`Problem` whose architecture and batch size come from a fixed menu.

    Compiled backends reuse their compilations across such examples; activations, scales,
    parameters and inputs still vary freely.
    """
    sizes = draw(st.sampled_from(architectures))
    mlp = gcref.MLP(sizes, activation=draw(activations(activation_names)))
    return _problem(draw, mlp, batch, scales, dtype)


def problems_for(backend, architectures=REPRESENTATIVE_SIZES, batch=REPRESENTATIVE_BATCH):
    """:func:`problems` of every shape, or :func:`fixed_shape_problems` for ``jax``."""
    if backend == "jax":
        return fixed_shape_problems(architectures, batch)
    return problems()


def loss_problems(loss, *, fixed_shapes=False, **kwargs):
    """A :class:`Problem` whose number of outputs suits ``loss``; draw its targets with ``.targets(loss)``.

    ``logistic`` needs one output and ``softmax_cross_entropy`` at least two. With
    ``fixed_shapes``, the architectures are those of :data:`REPRESENTATIVE_SIZES` that
    suit the loss (the others keyword arguments go to :func:`fixed_shape_problems`);
    otherwise ``kwargs`` go to :func:`problems`.
    """
    name = gcref.get_loss(loss).name
    lo, hi = LOSS_OUTPUTS[name]
    if fixed_shapes:
        given = tuple(kwargs.pop("architectures", REPRESENTATIVE_SIZES))
        archs = tuple(s for s in given if s[-1] >= lo and (hi is None or s[-1] <= hi))
        if not archs:
            raise ValueError(
                f"architectures has no entry with the outputs the {name!r} loss needs "
                f"(k >= {lo}{'' if hi is None else f' and k <= {hi}'}); got {given}"
            )
        return fixed_shape_problems(archs, **kwargs)
    max_outputs = kwargs.pop("max_outputs", 4)
    return problems(min_outputs=lo, max_outputs=max_outputs if hi is None else min(hi, max_outputs), **kwargs)


# tanh' and sigmoid' are tiny near saturation and backends evaluate them by different
# formulas, so they agree to 1e-9 relative only where no unit is close to saturation.
SATURATING = ("tanh", "sigmoid")
UNSATURATED_Z = 6.0


def assume_unsaturated(mlp, params, X):
    """Reject (``hypothesis.assume``) examples where a tanh or sigmoid unit has ``|z| > UNSATURATED_Z``."""
    if mlp.activation.name in SATURATING:
        zs = gcref.forward(mlp, params, X).zs[:-1]
        assume(all(np.all(np.abs(z) <= UNSATURATED_Z) for z in zs))
