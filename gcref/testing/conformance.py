"""Conformance checks: verify your own implementation of a quantity against gcref's reference.

Each ``check_*`` function takes your function and the framework it is written for,
draws small MLP problems with Hypothesis (:mod:`gcref.testing.strategies`), builds the
model in that framework, calls your function on it and compares the result with gcref's
NumPy reference. A deviation raises :class:`ConformanceError` (an ``AssertionError``),
whose message names the quantity, the largest deviation, what the value matches instead
when it is a known mistake (a sum for a mean, a missing 1/2, a wrong sign, ...), and the
drawn problem with the call that rebuilds it. Needs Hypothesis (``gcref[testing]``).

The model your function receives
--------------------------------
``framework="numpy"``
    ``(mlp, params)``: the :class:`gcref.MLP` and its tuple of ``(W_i, b_i)`` float64
    arrays, ``W_i`` of shape ``(n_{i+1}, n_i)``, ``f(x) = W_l a(... a(W_1 x + b_1) ...) + b_l``.
``framework="torch"``
    A float64 ``torch.nn.Sequential`` of ``Linear`` and activation modules
    (:func:`gcref.nets.torch.mlp_module`); its ``parameters()`` are ``W_1, b_1, ...``.
``framework="jax"``
    ``(apply, params)``: ``apply(params, x)`` maps ``x`` of shape ``(n, d)`` to ``(n, k)``
    and ``params`` is a tuple of ``(W_i, b_i)`` pairs of float64 JAX arrays
    (:func:`gcref.nets.jax.mlp_apply_from_gcref`). Your function runs inside
    ``jax.enable_x64(True)``; jitted functions see a few fixed shapes
    (:data:`gcref.testing.strategies.REPRESENTATIVE_SIZES`, batches of 4), so that they
    compile a few times only.

Arrays passed to your function are the framework's: ``X`` float64 of shape ``(N, d)``;
targets ``y`` float64 of shape ``(N, k)`` for ``"squared"``, int64 of shape ``(N,)`` for
``"logistic"`` (0 or 1) and ``"softmax_cross_entropy"`` (class indices). Losses are those
of docs/math.md section 4, the empirical loss being the MEAN over examples. Parameter-
shaped values (the loss gradient, the HVP's vector and result) are nested tuples/lists
(or dicts) of arrays whose leaves come in the order ``W_1, b_1, ..., W_l, b_l`` (for
torch, the order of ``module.parameters()``). Results may be arrays of any of the three
frameworks or Python floats.

The output layer is linear (no output activation). Hidden layers are reachable for
MLP-specific quantities such as the transfer ratio: ``model[: 2 * i]`` (torch) and
``apply(params[:i], x)`` (JAX) compute ``h_{i+1}``, the output of the first i layers.

Call a check from a plain test or script, not from inside a Hypothesis ``@given`` test
(it runs its own). Every check also takes ``settings`` (a ``hypothesis.settings``; by
default 25 examples, no deadline, no example database), ``activations`` (the activation
names drawn), ``architectures`` (layer sizes to draw from) and ``rtol``/``atol`` (by
default :func:`gcref.tolerance` of float64), and returns a :class:`Conformance` summary
when every drawn problem passes. Tanh and sigmoid problems with saturated units
(``|z| > 6``) are skipped: there, exact implementations legitimately differ beyond
``rtol``.

Examples
--------
>>> import numpy as np, gcref
>>> from gcref.testing import conformance
>>> def my_gc(model, X):
...     mlp, params = model
...     J = gcref.input_jacobian(mlp, params, X)
...     return np.mean(np.sum(J ** 2, axis=(1, 2)))
>>> conformance.check_geometric_complexity(my_gc, "numpy").passed
True
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

try:
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings
    from hypothesis import strategies as st
except ImportError as error:
    raise ImportError(
        "gcref.testing.conformance needs Hypothesis: pip install 'gcref[testing]'"
    ) from error

import gcref
from gcref.params import flatten_params
from gcref.testing import strategies as gst

__all__ = [
    "FRAMEWORKS",
    "Conformance",
    "ConformanceError",
    "check_dirichlet_energy",
    "check_gc_estimate",
    "check_geometric_complexity",
    "check_input_jacobian",
    "check_loss_grad",
    "check_loss_grad_sq_norms",
    "check_loss_hvp",
    "check_modified_loss_gd",
    "check_modified_loss_per_example",
    "check_modified_loss_sgd",
    "check_param_grad_sq_norms",
    "check_path_norm",
    "check_transfer_ratio",
]

FRAMEWORKS = ("numpy", "torch", "jax")
DEFAULT_MAX_EXAMPLES = 25
STEP_SIZES = (0.05, 0.5)


class ConformanceError(AssertionError):
    """An implementation disagrees with gcref's reference on a drawn problem."""


@dataclass(frozen=True)
class Conformance:
    """Summary of a passed conformance check.

    Attributes
    ----------
    quantity : str
    framework : str
    n_examples : int
        Drawn problems on which the function was compared.
    largest_deviation : float
        Largest deviation seen, at most ``tolerance``: relative to the reference's scale
        (the largest absolute entry), or, for :func:`check_gc_estimate`, in standard errors.
    tolerance : float
        ``rtol``, or ``z`` for :func:`check_gc_estimate`.
    passed : bool
        Always True (a failure raises :class:`ConformanceError`).
    """

    quantity: str
    framework: str
    n_examples: int
    largest_deviation: float
    tolerance: float
    passed: bool = True


# -- frameworks -----------------------------------------------------------------------


class _NumpyFramework:
    name = "numpy"

    def scope(self):
        return contextlib.nullcontext()

    def model(self, problem):
        return problem.mlp, self.params_like(problem.params)

    def array(self, a):
        return np.array(a)

    def params_like(self, tree):
        return tuple((np.array(W), np.array(b)) for W, b in tree)


class _TorchFramework:
    name = "torch"

    def __init__(self):
        import torch

        from gcref.nets.torch import mlp_module

        self.torch, self.mlp_module = torch, mlp_module

    def scope(self):
        return contextlib.nullcontext()

    def model(self, problem):
        return self.mlp_module(problem.mlp, problem.params, dtype=self.torch.float64)

    def array(self, a):
        a = np.asarray(a)
        if a.dtype.kind in "iu":
            return self.torch.as_tensor(a.astype(np.int64))
        return self.torch.as_tensor(a.astype(np.float64))

    def params_like(self, tree):
        return tuple(self.array(a) for pair in tree for a in pair)


class _JaxFramework:
    name = "jax"

    def __init__(self):
        import jax
        import jax.numpy as jnp

        from gcref.nets.jax import mlp_apply_from_gcref

        self.jax, self.jnp, self.mlp_apply_from_gcref = jax, jnp, mlp_apply_from_gcref
        enable = getattr(jax, "enable_x64", None)
        if enable is None:
            from jax.experimental import enable_x64 as enable
        self._enable_x64 = enable

    def scope(self):
        return self._enable_x64(True)

    def model(self, problem):
        apply, params = self.mlp_apply_from_gcref(problem.mlp, problem.params)
        return apply, self.params_like(params)

    def array(self, a):
        a = np.asarray(a)
        return self.jnp.asarray(a.astype(np.int64) if a.dtype.kind in "iu" else a.astype(np.float64))

    def params_like(self, tree):
        return tuple((self.array(W), self.array(b)) for W, b in tree)


def _framework(framework):
    if framework == "numpy":
        return _NumpyFramework()
    if framework == "torch":
        return _TorchFramework()
    if framework == "jax":
        return _JaxFramework()
    raise ValueError(f"framework must be one of {FRAMEWORKS}; got {framework!r}")


def _leaves(value):
    """Flatten a result (nested sequences or dicts of arrays of any framework) to NumPy leaves."""
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _leaves(item)]
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return [np.asarray(value, dtype=np.float64)]


def _as_array(value, quantity):
    leaves = _leaves(value)
    if len(leaves) != 1:
        raise ConformanceError(
            f"{quantity}: the function must return one array or number; got {len(leaves)} arrays"
        )
    return leaves[0]


def _as_vector(value):
    leaves = _leaves(value)
    return np.concatenate([np.ravel(leaf) for leaf in leaves]) if leaves else np.zeros(0)


# -- comparison and messages ----------------------------------------------------------


def _factor_names(problem, first=None):
    """Names of the factors by which a value commonly deviates; ``first`` takes precedence."""
    n = problem.X.shape[0]
    k = problem.mlp.output_dim
    names = dict(first or {})
    names.setdefault(2.0, "2 (a missing factor 1/2?)")
    names.setdefault(0.5, "1/2 (a factor 1/2 too many?)")
    names.setdefault(-1.0, "-1 (the wrong sign)")
    if n > 1:
        names.setdefault(float(n), f"N = {n}, the number of examples (a sum where the mean belongs?)")
        names.setdefault(1.0 / n, f"1/N = 1/{n} (a mean where a sum belongs?)")
    if k > 1:
        names.setdefault(float(k), f"k = {k}, the number of outputs")
        names.setdefault(1.0 / k, f"1/k = 1/{k}, one over the number of outputs")
    return names


def _proportionality(value, reference, rtol):
    """The constant c with value = c reference (entry by entry), or None."""
    scale = float(np.max(np.abs(reference)))
    if scale == 0.0:
        return None
    j = int(np.argmax(np.abs(reference)))
    c = float(value.ravel()[j] / reference.ravel()[j])
    if np.max(np.abs(value - c * reference)) <= 1e3 * rtol * max(scale, abs(c) * scale):
        return c
    return None


def _deviation(value, reference, rtol, atol):
    """Largest |value - reference| over ``max(|reference|_inf, atol / rtol)``, its index and that scale."""
    scale = max(float(np.max(np.abs(reference))) if reference.size else 0.0, atol / rtol)
    diff = np.abs(value - reference)
    j = int(np.argmax(diff)) if diff.size else 0
    return (float(diff.ravel()[j]) / scale if diff.size else 0.0), j, scale


class _Checker:
    """Runs one quantity's comparison over drawn problems and keeps the summary."""

    def __init__(self, quantity, framework, rtol, atol, activations=None, architectures=None):
        self.quantity = quantity
        self.framework = _framework(framework)
        self.activations = gst.ACTIVATION_NAMES if activations is None else tuple(activations)
        if not self.activations:
            raise ValueError("activations must name at least one activation")
        for name in self.activations:
            gcref.get_activation(name)
        self.architectures = None if architectures is None else tuple(tuple(int(n) for n in a) for a in architectures)
        if self.architectures is not None and not self.architectures:
            raise ValueError("architectures must hold at least one tuple of layer sizes")
        default_rtol, default_atol = gcref.tolerance(np.float64)
        self.rtol = default_rtol if rtol is None else float(rtol)
        self.atol = default_atol if atol is None else float(atol)
        self.n_examples = 0
        self.largest = 0.0

    def call(self, fn, problem, *args, setting=""):
        try:
            return fn(*args)
        except ConformanceError:
            raise
        except Exception as error:
            raise ConformanceError(
                f"{self.quantity}: the function raised {type(error).__name__}: {error}\n"
                f"  problem: {problem.describe()}{setting}"
            ) from error

    def compare(self, value, reference, problem, *, setting="", alternatives=(), shape_matters=True):
        """Raise ConformanceError unless ``value`` matches ``reference``."""
        reference = np.asarray(reference, dtype=np.float64)
        value = np.asarray(value, dtype=np.float64)
        where = f"\n  problem: {problem.describe()}{setting}"
        if (shape_matters and value.shape != reference.shape) or value.size != reference.size:
            raise ConformanceError(
                f"{self.quantity}: the function returned shape {value.shape}; the reference has "
                f"shape {reference.shape}{where}"
            )
        value = value.reshape(reference.shape)
        if not np.all(np.isfinite(value)):
            raise ConformanceError(
                f"{self.quantity}: the function returned non-finite values (NaN or inf) where "
                f"the reference is finite{where}"
            )
        deviation, j, scale = _deviation(value, reference, self.rtol, self.atol)
        self.n_examples += 1
        if deviation <= self.rtol:
            self.largest = max(self.largest, deviation)
            return
        got, expected = value.ravel()[j], reference.ravel()[j]
        entry = "" if reference.ndim == 0 else f" at flat index {j}"
        message = (
            f"{self.quantity}: largest deviation {abs(got - expected):.6g}{entry} "
            f"(got {got:.10g}, reference {expected:.10g}), {deviation:.3g} relative to the "
            f"reference's scale {scale:.3g}; tolerance rtol={self.rtol:g}"
        )
        message += self._diagnosis(value, reference, problem, alternatives)
        raise ConformanceError(message + where)

    def _diagnosis(self, value, reference, problem, alternatives):
        """What the value matches: a known mistake, else a factor times the reference."""
        for label, alternative in alternatives:
            alternative = np.asarray(alternative, dtype=np.float64).reshape(reference.shape)
            if _deviation(value, alternative, self.rtol, self.atol)[0] <= self.rtol:
                return f".\n  The value matches {label}"
        c = _proportionality(value, reference, self.rtol)
        if c is None:
            return ""
        names = _factor_names(problem)
        for factor, name in names.items():
            if abs(c - factor) <= 1e-6 * abs(factor):
                return f".\n  The value is {name} times the reference"
        return f".\n  The value is {c:.6g} times the reference"

    def result(self, tolerance=None):
        return Conformance(self.quantity, self.framework.name, self.n_examples, self.largest,
                           self.rtol if tolerance is None else tolerance)


def _settings(settings):
    if settings is None:
        return hypothesis_settings(
            max_examples=DEFAULT_MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.filter_too_much],
        )
    if not isinstance(settings, hypothesis_settings):
        raise TypeError(f"settings must be a hypothesis.settings; got {type(settings).__name__}")
    return settings


def _problems(checker, loss=None, min_examples=1):
    """The strategy of the checker's problems: any shape, or a menu of architectures."""
    activations, architectures = checker.activations, checker.architectures
    if architectures is None and checker.framework.name == "jax":
        architectures = gst.REPRESENTATIVE_SIZES
    if architectures is not None:
        batch = max(gst.REPRESENTATIVE_BATCH, min_examples)
        if loss is None:
            return gst.fixed_shape_problems(architectures, batch=batch, activation_names=activations)
        return gst.loss_problems(loss, fixed_shapes=True, architectures=architectures, batch=batch,
                                 activation_names=activations)
    if loss is None:
        return gst.problems(min_examples=min_examples, max_examples=max(5, min_examples),
                            activation_names=activations)
    return gst.loss_problems(loss, min_examples=min_examples, max_examples=max(5, min_examples),
                             activation_names=activations)


def _losses(losses):
    losses = tuple(losses)
    for loss in losses:
        gcref.get_loss(loss)
    if not losses:
        raise ValueError("losses must name at least one loss")
    return losses


def _run(body, strategy, settings):
    """Run ``body(problem, data)`` on drawn problems under ``settings``."""

    @_settings(settings)
    @given(problem=strategy, data=st.data())
    def conformance(problem, data):
        gst.assume_unsaturated(problem.mlp, problem.params, problem.X)
        body(problem, data)

    conformance()


def _run_with_loss(checker, body, settings, losses, min_examples=1):
    """Draw a loss, then a problem whose outputs suit it, and targets."""
    losses = _losses(losses)

    @_settings(settings)
    @given(data=st.data())
    def conformance(data):
        loss = data.draw(st.sampled_from(losses), label="loss")
        problem = data.draw(_problems(checker, loss, min_examples), label="problem")
        gst.assume_unsaturated(problem.mlp, problem.params, problem.X)
        y = problem.targets(loss)
        body(problem, loss, y, data)

    conformance()


# -- the checks -----------------------------------------------------------------------


def check_input_jacobian(fn, framework="numpy", *, settings=None, activations=None, architectures=None, rtol=None, atol=None):
    """Check ``fn(model, X) -> J`` of shape (N, k, d), the input Jacobians ``df/dx`` (docs/math.md section 1).

    Parameters
    ----------
    fn : callable
        ``fn(model, X)`` with the model and ``X`` of ``framework`` (see the module docstring).
    framework : {"numpy", "torch", "jax"}
    settings : hypothesis.settings, optional
    activations : sequence of str, optional
        Activation names to draw (default: all of :data:`gcref.testing.strategies.ACTIVATION_NAMES`).
    architectures : sequence of tuple of int, optional
        Layer sizes ``(d, ..., k)`` to draw from, with batches of 4 examples (fewer
        compilations for jitted code); by default any shape (depth up to 4, widths up to
        8, up to 5 examples) in NumPy and torch, and
        :data:`gcref.testing.strategies.REPRESENTATIVE_SIZES` in JAX.
    rtol, atol : float, optional

    Returns
    -------
    Conformance

    Raises
    ------
    ConformanceError
        On the first drawn problem (after Hypothesis's shrinking) where ``fn`` deviates.
    """
    checker = _Checker("input Jacobian", framework, rtol, atol, activations, architectures)
    fw = checker.framework

    def body(problem, data):
        reference = gcref.input_jacobian(problem.mlp, problem.params, problem.X)
        alternatives = []
        if reference.shape[1] == reference.shape[2]:
            alternatives.append(("the transposed Jacobians (shape (N, d, k) where (N, k, d) belongs)",
                                 np.swapaxes(reference, 1, 2)))
        with fw.scope():
            value = checker.call(fn, problem, fw.model(problem), fw.array(problem.X))
            value = _as_array(value, checker.quantity)
        checker.compare(value, reference, problem, alternatives=alternatives)

    _run(body, _problems(checker), settings)
    return checker.result()


def _check_scalar_of_model(quantity, reference_fn, alternatives_fn, fn, framework, settings,
                           activations, architectures, rtol, atol):
    checker = _Checker(quantity, framework, rtol, atol, activations, architectures)
    fw = checker.framework

    def body(problem, data):
        reference = reference_fn(problem)
        with fw.scope():
            value = _as_array(checker.call(fn, problem, fw.model(problem), fw.array(problem.X)), quantity)
        checker.compare(value, reference, problem, alternatives=alternatives_fn(problem, reference))

    _run(body, _problems(checker), settings)
    return checker.result()


def check_geometric_complexity(fn, framework="numpy", *, settings=None, activations=None, architectures=None, rtol=None,
                               atol=None):
    """Check ``fn(model, X) -> GC``, the mean over the N examples of ``||J(x_n)||_F^2``.

    Parameters and returns as :func:`check_input_jacobian`.

    Notes
    -----
    ``GC(f, D) = (1/|D|) sum_{x in D} ||J(x)||_F^2`` (docs/math.md section 2; seed 003).
    """

    def reference(problem):
        return gcref.geometric_complexity(problem.mlp, problem.params, problem.X)

    def alternatives(problem, gc):
        n = problem.X.shape[0]
        return [(f"the sum over the N = {n} examples, where GC is their mean", n * gc),
                ("the Dirichlet energy GC / 2 (a factor 1/2 too many)", gc / 2)]

    return _check_scalar_of_model("geometric complexity", reference, alternatives, fn, framework,
                                  settings, activations, architectures, rtol, atol)


def check_dirichlet_energy(fn, framework="numpy", *, settings=None, activations=None, architectures=None, rtol=None,
                           atol=None):
    """Check ``fn(model, X) -> DE``, the discrete Dirichlet energy ``GC / 2``.

    Parameters and returns as :func:`check_input_jacobian`.

    Notes
    -----
    ``DE^(f, D) = (1 / (2 |D|)) sum_{x in D} ||J(x)||_F^2`` (docs/math.md section 2;
    seed 000, eq. 5).
    """

    def reference(problem):
        return gcref.dirichlet_energy(problem.mlp, problem.params, problem.X)

    def alternatives(problem, de):
        n = problem.X.shape[0]
        return [("the geometric complexity 2 DE: the factor 1/2 of the Dirichlet energy is missing", 2 * de),
                (f"the sum over the N = {n} examples, where DE is their mean (halved)", n * de)]

    return _check_scalar_of_model("Dirichlet energy", reference, alternatives, fn, framework,
                                  settings, activations, architectures, rtol, atol)


def check_gc_estimate(fn, framework="numpy", *, replicates=30, z=6.0, settings=None, activations=None, architectures=None,
                      rtol=None, atol=None):
    """Check a random-probe estimator ``fn(model, X, seed) -> GC estimate`` statistically.

    Parameters
    ----------
    fn : callable
        ``fn(model, X, seed)`` returns an unbiased estimate of the geometric complexity
        from random probes drawn from the integer ``seed`` (a float), or the pair
        ``(estimate, standard_error)``.
    framework : {"numpy", "torch", "jax"}
    replicates : int
        Calls per drawn problem, with seeds ``s, s + 1, ...``.
    z : float
        Allowed deviation of the replicates' mean from GC, in standard errors of that mean.
    settings, activations, architectures, rtol, atol
        As in :func:`check_input_jacobian`.

    Returns
    -------
    Conformance

    Notes
    -----
    The mean of ``R`` independent estimates must lie within ``z`` standard errors
    ``s / sqrt(R)`` of ``GC`` (plus the exact tolerance), ``s`` the replicates' sample
    standard deviation: with ``z = 6`` an unbiased estimator fails with negligible
    probability, while a bias (a missing factor ``k`` for sphere probes, a sum for a mean)
    is caught. A reported standard error must be calibrated: its root mean square over
    the replicates lies within a factor 4 of ``s`` (docs/math.md section 2).
    """
    replicates = int(replicates)
    if replicates < 5:
        raise ValueError(f"replicates must be at least 5; got {replicates}")
    checker = _Checker("GC probe estimate", framework, rtol, atol, activations, architectures)
    fw = checker.framework

    def body(problem, data):
        gc = gcref.geometric_complexity(problem.mlp, problem.params, problem.X)
        first = data.draw(gst.seeds(), label="seed")
        values, errors = [], []
        with fw.scope():
            model, X = fw.model(problem), fw.array(problem.X)
            for r in range(replicates):
                out = checker.call(fn, problem, model, X, first + r, setting=f"; seed {first + r}")
                leaves = _leaves(out)
                values.append(float(leaves[0]))
                if len(leaves) > 1:
                    errors.append(float(leaves[1]))
        values = np.array(values)
        mean, sd = float(values.mean()), float(values.std(ddof=1))
        stderr = sd / np.sqrt(replicates)
        setting = f"; seeds {first}..{first + replicates - 1}"
        where = f"\n  problem: {problem.describe()}{setting}"
        allowed = z * stderr + checker.rtol * max(abs(gc), checker.atol / checker.rtol)
        checker.n_examples += 1
        if abs(mean - gc) > allowed:
            ratio = mean / gc if gc != 0 else np.inf
            k = problem.mlp.output_dim
            names = _factor_names(problem, {1.0 / k: f"1/k = 1/{k}, one over the number of outputs "
                                            "(sphere probes without their factor k?)"} if k > 1 else None)
            close = [(abs(mean - factor * gc), name) for factor, name in names.items()
                     if abs(mean - factor * gc) <= z * stderr + checker.atol]
            hint = f".\n  The mean is about {min(close)[1]} times GC" if close else ""
            raise ConformanceError(
                f"{checker.quantity}: the mean of {replicates} estimates is {mean:.10g} "
                f"(standard error {stderr:.3g}); GC is {gc:.10g}, a deviation of "
                f"{abs(mean - gc) / max(stderr, 1e-300):.3g} standard errors (allowed {z:g}), "
                f"ratio {ratio:.6g}{hint}{where}"
            )
        checker.largest = max(checker.largest, z * abs(mean - gc) / allowed)
        finite = [e for e in errors if np.isfinite(e)]
        if finite:
            rms = float(np.sqrt(np.mean(np.square(finite))))
            scale = checker.atol + checker.rtol * abs(gc)
            if (rms > 4 * sd + scale) or (4 * rms + scale < sd):
                raise ConformanceError(
                    f"{checker.quantity}: the reported standard error (root mean square {rms:.3g} "
                    f"over {replicates} calls) is not calibrated: the estimates' own standard "
                    f"deviation is {sd:.3g} (allowed: within a factor 4){where}"
                )

    _run(body, _problems(checker), settings)
    return checker.result(tolerance=z)


def check_param_grad_sq_norms(fn, framework="numpy", *, settings=None, activations=None, architectures=None, rtol=None,
                              atol=None):
    """Check ``fn(model, X) -> (N,)``: per example, ``||grad_theta f(x_n)||_F^2`` summed over the k outputs.

    Parameters and returns as :func:`check_input_jacobian`.

    Notes
    -----
    ``||grad_theta f(x)||_F^2 = sum_c ||grad_theta f_c(x)||^2 = sum_i ||Delta_i||_F^2
    (1 + ||h_i||^2)``, weights and biases (docs/math.md section 1).
    """
    checker = _Checker("per-example ||grad_theta f||^2", framework, rtol, atol, activations, architectures)
    fw = checker.framework

    def body(problem, data):
        mlp, params, X = problem.mlp, problem.params, problem.X
        norms = gcref.param_grad_sq_norms(mlp, params, X)
        reference = np.asarray(norms.total)
        summed_outputs = sum(
            np.sum(np.sum(g, axis=1).reshape(X.shape[0], -1) ** 2, axis=1)
            for pair in gcref.param_jacobian(mlp, params, X) for g in pair
        )
        alternatives = [
            ("the weights' part alone: the bias terms ||grad_b f||^2 are left out",
             np.asarray(norms.weights).sum(axis=1)),
            (("||grad_theta sum_c f_c||^2, the gradient of the summed outputs (cross terms between "
             "outputs), where the sum over outputs of ||grad_theta f_c||^2 belongs"), summed_outputs),
        ]
        with fw.scope():
            value = _as_array(checker.call(fn, problem, fw.model(problem), fw.array(X)), checker.quantity)
        checker.compare(value, reference, problem, alternatives=alternatives)

    _run(body, _problems(checker), settings)
    return checker.result()


_LOSSES = gst.LOSS_NAMES


def _loss_setting(loss, extra=""):
    return f"; loss {loss!r}, y = problem.targets({loss!r}){extra}"


def check_loss_grad_sq_norms(fn, framework="numpy", *, losses=_LOSSES, settings=None, activations=None, architectures=None,
                             rtol=None, atol=None):
    """Check ``fn(model, X, y, loss) -> (N,)``: per example, ``||grad_theta l(f(x_n), y_n)||^2``.

    Parameters
    ----------
    fn : callable
        ``fn(model, X, y, loss)``, ``loss`` one of the names in ``losses``.
    losses : sequence of str
        The losses drawn (those of docs/math.md section 4 that ``fn`` implements).
    framework, settings, activations, architectures, rtol, atol
        As in :func:`check_input_jacobian`.

    Returns
    -------
    Conformance

    Notes
    -----
    ``grad_theta l_n = J_theta(x_n)^T eps_n`` with ``eps_n = dl/df`` (docs/math.md
    sections 1 and 4), weights and biases, for the per-example loss ``l_n`` (not the mean
    loss over the batch).
    """
    checker = _Checker("per-example ||grad_theta l_n||^2", framework, rtol, atol, activations, architectures)
    fw = checker.framework

    def body(problem, loss, y, data):
        mlp, params, X = problem.mlp, problem.params, problem.X
        n = X.shape[0]
        norms = gcref.loss_grad_sq_norms(mlp, params, X, y, loss)
        reference = np.asarray(norms.total)
        mean_grad = flatten_params(gcref.loss_grad(mlp, params, X, y, loss))
        alternatives = [
            ("the weights' part alone: the bias terms are left out", np.asarray(norms.weights).sum(axis=1)),
            ((f"||grad_theta (l_n / N)||^2: each example's loss divided by N = {n}, a mean-loss "
             "normalisation where the per-example loss belongs"), reference / n**2),
            (("||grad_theta L||^2 of the mean loss, repeated for every example, where the "
             "per-example loss belongs"), np.full(n, mean_grad @ mean_grad)),
        ]
        with fw.scope():
            value = checker.call(fn, problem, fw.model(problem), fw.array(X), fw.array(y), loss,
                                 setting=_loss_setting(loss))
            value = _as_array(value, checker.quantity)
        checker.compare(value, reference, problem, setting=_loss_setting(loss), alternatives=alternatives)

    _run_with_loss(checker, body, settings, losses)
    return checker.result()


def check_loss_grad(fn, framework="numpy", *, losses=_LOSSES, settings=None, activations=None, architectures=None, rtol=None,
                    atol=None):
    """Check ``fn(model, X, y, loss) -> grad_theta L``, the gradient of the mean loss.

    Parameters
    ----------
    fn : callable
        ``fn(model, X, y, loss)`` returns the gradient as parameter-shaped arrays (leaves
        in the order ``W_1, b_1, ..., W_l, b_l``; see the module docstring).
    losses, framework, settings, activations, architectures, rtol, atol
        As in :func:`check_loss_grad_sq_norms`.

    Returns
    -------
    Conformance

    Notes
    -----
    ``L(theta) = (1/N) sum_n l(f(x_n), y_n)`` (docs/math.md section 4).
    """
    checker = _Checker("loss gradient", framework, rtol, atol, activations, architectures)
    fw = checker.framework

    def body(problem, loss, y, data):
        mlp, params, X = problem.mlp, problem.params, problem.X
        n = X.shape[0]
        reference = flatten_params(gcref.loss_grad(mlp, params, X, y, loss))
        alternatives = [(f"the gradient of the summed loss (N = {n} times the mean's)", n * reference),
                        ("minus the gradient (the wrong sign)", -reference)]
        with fw.scope():
            value = checker.call(fn, problem, fw.model(problem), fw.array(X), fw.array(y), loss,
                                 setting=_loss_setting(loss))
            value = _as_vector(value)
        checker.compare(value, reference, problem, setting=_loss_setting(loss), alternatives=alternatives,
                        shape_matters=False)

    _run_with_loss(checker, body, settings, losses)
    return checker.result()


def check_loss_hvp(fn, framework="numpy", *, losses=_LOSSES, settings=None, activations=None, architectures=None, rtol=None,
                   atol=None):
    """Check ``fn(model, X, y, loss, v) -> H v``, the Hessian of the mean loss times a vector.

    Parameters
    ----------
    fn : callable
        ``fn(model, X, y, loss, v)``; ``v`` is parameter-shaped (numpy and jax: a tuple of
        ``(W, b)`` pairs; torch: a tuple of tensors in ``parameters()`` order), and so is
        the result.
    losses, framework, settings, activations, architectures, rtol, atol
        As in :func:`check_loss_grad_sq_norms`.

    Returns
    -------
    Conformance

    Notes
    -----
    ``H = d^2 L / d theta^2`` of the mean loss (docs/math.md sections 4 and 5); ``v`` has
    standard normal entries (``problem.direction()`` after the targets).
    """
    checker = _Checker("loss Hessian-vector product", framework, rtol, atol, activations, architectures)
    fw = checker.framework

    def body(problem, loss, y, data):
        mlp, params, X = problem.mlp, problem.params, problem.X
        n = X.shape[0]
        v = problem.direction()
        reference = flatten_params(gcref.loss_hvp(mlp, params, X, y, loss, v))
        alternatives = [("-H v: the wrong sign", -reference),
                        (f"the summed loss's H v (N = {n} times the mean's)", n * reference)]
        setting = _loss_setting(loss, ", v = problem.direction()")
        with fw.scope():
            value = checker.call(fn, problem, fw.model(problem), fw.array(X), fw.array(y), loss,
                                 fw.params_like(v), setting=setting)
            value = _as_vector(value)
        checker.compare(value, reference, problem, setting=setting, alternatives=alternatives,
                        shape_matters=False)

    _run_with_loss(checker, body, settings, losses)
    return checker.result()


def _grad_sq(mlp, params, X, y, loss):
    g = flatten_params(gcref.loss_grad(mlp, params, X, y, loss))
    return float(g @ g)


def check_modified_loss_gd(fn, framework="numpy", *, losses=_LOSSES, settings=None, activations=None, architectures=None,
                           rtol=None, atol=None):
    """Check ``fn(model, X, y, loss, h) -> L + (h/4) ||grad L||^2``, gradient descent's modified loss.

    Parameters
    ----------
    fn : callable
        ``fn(model, X, y, loss, h)`` with ``h`` the learning rate (a float).
    losses, framework, settings, activations, architectures, rtol, atol
        As in :func:`check_loss_grad_sq_norms`.

    Returns
    -------
    Conformance

    Notes
    -----
    docs/math.md section 5 (Barrett and Dherin, Implicit Gradient Regularization).
    """
    checker = _Checker("modified loss (full-batch GD)", framework, rtol, atol, activations, architectures)
    fw = checker.framework

    def body(problem, loss, y, data):
        mlp, params, X = problem.mlp, problem.params, problem.X
        h = data.draw(st.sampled_from(STEP_SIZES), label="h")
        reference = gcref.modified_loss_gd(mlp, params, X, y, loss, h)
        L, g2 = gcref.mean_loss(mlp, params, X, y, loss), _grad_sq(mlp, params, X, y, loss)
        alternatives = [("L + (h/2) ||grad L||^2: h/2 in place of h/4", L + h / 2 * g2),
                        ("L + h ||grad L||^2: h in place of h/4", L + h * g2),
                        ("L - (h/4) ||grad L||^2: the penalty with the wrong sign", L - h / 4 * g2),
                        ("the loss L alone: the penalty is missing", L)]
        setting = _loss_setting(loss, f", h = {h}")
        with fw.scope():
            value = checker.call(fn, problem, fw.model(problem), fw.array(X), fw.array(y), loss, h,
                                 setting=setting)
            value = _as_array(value, checker.quantity)
        checker.compare(value, reference, problem, setting=setting, alternatives=alternatives)

    _run_with_loss(checker, body, settings, losses)
    return checker.result()


def check_modified_loss_sgd(fn, framework="numpy", *, losses=_LOSSES, settings=None, activations=None, architectures=None,
                            rtol=None, atol=None):
    """Check ``fn(model, X, y, loss, h, batches) -> L + h/(4m) sum_j ||grad L_{B_j}||^2``.

    Parameters
    ----------
    fn : callable
        ``fn(model, X, y, loss, h, batches)``; ``batches`` is a list of m one-dimensional
        int64 NumPy arrays, a partition of ``range(N)`` into mini-batches of equal size
        (at least 2), which index ``X`` and ``y`` of every framework.
    losses, framework, settings, activations, architectures, rtol, atol
        As in :func:`check_loss_grad_sq_norms`.

    Returns
    -------
    Conformance

    Notes
    -----
    ``L`` is the mean loss over all N examples and ``L_{B_j}`` the mean loss over
    ``B_j``: the penalty averages over the m batches, not over the N examples
    (docs/math.md section 5; Smith, Dherin, Barrett and De).
    """
    checker = _Checker("modified loss (SGD epoch)", framework, rtol, atol, activations, architectures)
    fw = checker.framework

    def body(problem, loss, y, data):
        mlp, params, X = problem.mlp, problem.params, problem.X
        n = X.shape[0]
        h = data.draw(st.sampled_from(STEP_SIZES), label="h")
        batches = data.draw(gst.minibatch_partitions(n, min_size=2), label="batches")
        m = len(batches)
        reference = gcref.modified_loss_sgd(mlp, params, X, y, loss, h, batches)
        L = gcref.mean_loss(mlp, params, X, y, loss)
        penalty = sum(_grad_sq(mlp, params, X[b], y[b], loss) for b in batches)
        alternatives = [
            ((f"L + h/(4N) sum_j ||grad L_Bj||^2: the penalty averaged over the N = {n} examples "
             f"instead of the m = {m} batches"), L + h / (4 * n) * penalty),
            ("L + h/(2m) sum_j ||grad L_Bj||^2: h/2 in place of h/4", L + h / (2 * m) * penalty),
            ("the full-batch (GD) modified loss L + (h/4) ||grad L||^2",
             gcref.modified_loss_gd(mlp, params, X, y, loss, h)),
            ("the per-example (batch size 1) modified loss",
             gcref.modified_loss_per_example(mlp, params, X, y, loss, h)),
        ]
        setting = _loss_setting(loss, f", h = {h}, batches = {[b.tolist() for b in batches]}")
        with fw.scope():
            value = checker.call(fn, problem, fw.model(problem), fw.array(X), fw.array(y), loss, h,
                                 [np.array(b) for b in batches], setting=setting)
            value = _as_array(value, checker.quantity)
        checker.compare(value, reference, problem, setting=setting, alternatives=alternatives)

    _run_with_loss(checker, body, settings, losses, min_examples=2)
    return checker.result()


def check_modified_loss_per_example(fn, framework="numpy", *, losses=_LOSSES, settings=None,
                                    activations=None, architectures=None, rtol=None, atol=None):
    """Check ``fn(model, X, y, loss, h) -> L + h/(4N) sum_n ||grad_theta l_n||^2`` (batch size 1).

    Parameters
    ----------
    fn : callable
        ``fn(model, X, y, loss, h)``.
    losses, framework, settings, activations, architectures, rtol, atol
        As in :func:`check_loss_grad_sq_norms`.

    Returns
    -------
    Conformance

    Notes
    -----
    Seed 000, eq. 6; docs/math.md section 5. ``l_n`` is the loss of example n alone.
    """
    checker = _Checker("modified loss (per example)", framework, rtol, atol, activations, architectures)
    fw = checker.framework

    def body(problem, loss, y, data):
        mlp, params, X = problem.mlp, problem.params, problem.X
        h = data.draw(st.sampled_from(STEP_SIZES), label="h")
        reference = gcref.modified_loss_per_example(mlp, params, X, y, loss, h)
        L = gcref.mean_loss(mlp, params, X, y, loss)
        per_example = float(np.sum(np.asarray(gcref.loss_grad_sq_norms(mlp, params, X, y, loss).total)))
        n = X.shape[0]
        alternatives = [
            (("the full-batch modified loss L + (h/4) ||grad L||^2: the mean loss's gradient "
             "where the per-example gradients belong"), gcref.modified_loss_gd(mlp, params, X, y, loss, h)),
            ("L + h/(2N) sum_n ||grad l_n||^2: h/2 in place of h/4", L + h / (2 * n) * per_example),
            ("L + (h/4) sum_n ||grad l_n||^2: the penalty summed over examples, not averaged",
             L + h / 4 * per_example),
        ]
        setting = _loss_setting(loss, f", h = {h}")
        with fw.scope():
            value = checker.call(fn, problem, fw.model(problem), fw.array(X), fw.array(y), loss, h,
                                 setting=setting)
            value = _as_array(value, checker.quantity)
        checker.compare(value, reference, problem, setting=setting, alternatives=alternatives)

    _run_with_loss(checker, body, settings, losses)
    return checker.result()


def check_transfer_ratio(fn, framework="numpy", *, settings=None, activations=None, architectures=None, rtol=None, atol=None):
    """Check ``fn(model, X) -> (N,)``: ``||J||_F^2 sum_i T_i^2 / ||grad_theta f||_F^2`` per example.

    Parameters and returns as :func:`check_input_jacobian`.

    Notes
    -----
    ``T_i^2 = (1 + ||h_i||^2) / (||W_i||_2 ||h'_i(x)||_2)^2`` with spectral norms; the
    ratio lies in [0, 1] and is 0 where ``grad_theta f(x) = 0`` (docs/math.md section 3;
    seed 000, Theorem 1).
    """
    checker = _Checker("transfer ratio", framework, rtol, atol, activations, architectures)
    fw = checker.framework

    def body(problem, data):
        mlp, params, X = problem.mlp, problem.params, problem.X
        reference = np.asarray(gcref.transfer_ratio(mlp, params, X))
        alternatives = [("the ratio with Frobenius norms in place of spectral norms",
                         np.asarray(gcref.transfer_ratio(mlp, params, X, norm="frobenius")))]
        with fw.scope():
            value = _as_array(checker.call(fn, problem, fw.model(problem), fw.array(X)), checker.quantity)
        checker.compare(value, reference, problem, alternatives=alternatives)

    _run(body, _problems(checker), settings)
    return checker.result()


def check_path_norm(fn, framework="numpy", *, ps=(1.0, 2.0), settings=None, activations=None, architectures=None, rtol=None,
                    atol=None):
    """Check ``fn(model, p) -> ||pi(w)||_p``, the l_p path norm with bias paths.

    Parameters
    ----------
    fn : callable
        ``fn(model, p)`` with ``p`` a float drawn from ``ps``.
    ps : sequence of float
    framework, settings, activations, architectures, rtol, atol
        As in :func:`check_input_jacobian`.

    Returns
    -------
    Conformance

    Notes
    -----
    ``||pi(w)||_p = (sum over paths of prod |w_e|^p)^(1/p)``, where each bias starts
    paths at its unit (docs/math.md section 6; seed 002).
    """
    ps = tuple(float(p) for p in ps)
    if not ps or any(p <= 0 for p in ps):
        raise ValueError(f"ps must hold positive exponents; got {ps}")
    checker = _Checker("path norm", framework, rtol, atol, activations, architectures)
    fw = checker.framework

    def body(problem, data):
        mlp, params = problem.mlp, problem.params
        p = data.draw(st.sampled_from(ps), label="p")
        reference = gcref.path_norm(mlp, params, p)
        alternatives = [("the path norm without bias paths (weights only)",
                         gcref.path_norm(mlp, params, p, bias=False)),
                        (f"||pi||_p^p: the 1/p-th root is missing (p = {p:g})", reference**p)]
        setting = f"; p = {p:g}"
        with fw.scope():
            value = _as_array(checker.call(fn, problem, fw.model(problem), p, setting=setting), checker.quantity)
        checker.compare(value, reference, problem, setting=setting, alternatives=alternatives)

    _run(body, _problems(checker), settings)
    return checker.result()

