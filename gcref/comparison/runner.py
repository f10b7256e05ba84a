"""The engine of ``gcref compare``: the default problem, and every row in every backend.

:func:`default_problem` builds the built-in problem (a small MLP on synthetic data, drawn
from one seed, no download). :func:`compare` imports every module of
:mod:`gcref.comparison` (so rows registered by any feature module appear without being
listed here), evaluates each row in each chosen backend, times it, and measures its
largest relative deviation from the ``numpy`` backend with
:func:`gcref.tolerances.relative_deviation`. The model backends (``torch-module``,
``jax-function``; :mod:`gcref.comparison.models`) evaluate the model rows, each against
the ``numpy`` value of its quantity. Every timing follows one untimed warm-up call, so
that JIT compilation and first-call caches are not counted. A row that raises is
reported as failed; it never stops the comparison.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

import gcref
import gcref.comparison
from gcref._checks import check_dtype, check_finite_scalar, check_positive_int
from gcref.comparison.registry import MODEL_BACKENDS, MODEL_ROWS, ROWS, Problem
from gcref.tolerances import relative_deviation, tolerance

#: The reference every other backend is measured against.
REFERENCE = "numpy"

DEFAULT_SIZES = (3, 16, 16, 2)
DEFAULT_ACTIVATION = "tanh"
DEFAULT_N_EXAMPLES = 32

# Imported first so that the core primitives lead the table.
_CORE_ROWS_MODULE = "gcref.comparison.primitives"


def default_problem(
    sizes=DEFAULT_SIZES,
    activation=DEFAULT_ACTIVATION,
    n_examples=DEFAULT_N_EXAMPLES,
    seed=0,
    dtype=np.float64,
):
    """The built-in problem: an MLP on synthetic data, all drawn from ``seed``.

    Parameters
    ----------
    sizes : sequence of int
        ``(d, n_2, ..., k)``, as for :class:`gcref.MLP`.
    activation : str
        Hidden activation; the output activation is the identity.
    n_examples : int >= 1
        N.
    seed : int
        Seed of the one ``numpy.random.Generator`` that draws everything, and the
        ``rng_seed`` that rows drawing their own random numbers use.
    dtype : float32 or float64

    Returns
    -------
    gcref.comparison.registry.Problem
        ``X`` of shape (N, d) standard normal; LeCun-normal weights with drawn biases (so
        that no bias gradient vanishes by construction); regression targets
        ``y = sin(X A) + 0.1 noise`` of shape (N, k) for the squared loss; class labels
        ``argmax(X A)`` in ``[0, k)``; a standard-normal parameter ``direction``.
    """
    dtype = check_dtype(dtype)
    n_examples = check_positive_int(n_examples, "n_examples")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    mlp = gcref.MLP(sizes, activation=activation)
    rng = np.random.default_rng(seed)
    params = mlp.init(rng, scheme="lecun_normal", bias="normal", dtype=dtype)
    d, k = mlp.input_dim, mlp.output_dim
    X = rng.normal(size=(n_examples, d))
    A = rng.normal(size=(d, k)) / np.sqrt(d)
    scores = X @ A
    y = np.sin(scores) + 0.1 * rng.normal(size=(n_examples, k))
    direction = tuple(
        (rng.normal(size=W.shape).astype(dtype), rng.normal(size=b.shape).astype(dtype))
        for W, b in params
    )
    return Problem(
        mlp=mlp,
        params=params,
        X=X.astype(dtype),
        y=y.astype(dtype),
        loss="squared",
        direction=direction,
        labels=np.argmax(scores, axis=1),
        rng_seed=int(seed),
    )


def load_rows():
    """Import every module of :mod:`gcref.comparison` and return the registered rows.

    Returns
    -------
    rows : dict
        Row name -> row function, in registration order (the core primitives first).
    import_errors : dict
        Module name -> error text, for modules that failed to import.

    The model backends and model rows register into
    :data:`gcref.comparison.registry.MODEL_BACKENDS` and ``MODEL_ROWS`` on the way.
    """
    errors = {}
    names = [_CORE_ROWS_MODULE] + sorted(
        f"{gcref.comparison.__name__}.{info.name}"
        for info in pkgutil.iter_modules(gcref.comparison.__path__)
    )
    for name in dict.fromkeys(names):
        try:
            importlib.import_module(name)
        except Exception as err:  # a broken feature module must not hide the others
            errors[name] = f"{type(err).__name__}: {err}"
    return dict(ROWS), errors


@dataclass
class RowResult:
    """One row of the table: one quantity in one backend.

    Attributes
    ----------
    quantity, backend : str
    value : float or ndarray or None
        ``None`` when the row failed.
    max_rel_dev : float or None
        Largest deviation from the ``numpy`` value relative to its scale; ``None`` when
        either value is missing.
    seconds : float
        Best wall time over the repeats, which follow one untimed warm-up call.
    error : str or None
        Why the row failed.
    """

    quantity: str
    backend: str
    value: object
    max_rel_dev: object
    seconds: float
    error: object = None

    def within(self, tol):
        """True when the row succeeded and its deviation is finite and at most ``tol``."""
        return self.error is None and math.isfinite(self.max_rel_dev) and self.max_rel_dev <= tol

    def to_json(self):
        """The row as ``{"quantity", "backend", "value", "max_rel_dev", "seconds"}``.

        A failed row has ``value`` and ``max_rel_dev`` set to ``None`` and an extra
        ``"error"`` entry.
        """
        if self.value is None:
            value = None
        elif np.ndim(self.value) == 0:
            value = float(self.value)
        else:
            value = np.asarray(self.value, dtype=np.float64).tolist()
        out = {
            "quantity": self.quantity,
            "backend": self.backend,
            "value": value,
            "max_rel_dev": None if self.max_rel_dev is None else float(self.max_rel_dev),
            "seconds": float(self.seconds),
        }
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class Comparison:
    """The outcome of :func:`compare`.

    Attributes
    ----------
    tolerance : float
        Largest relative deviation accepted.
    dtype : numpy dtype
    backends : list of str
        In evaluation order, ``numpy`` first.
    rows : list of RowResult
        Grouped by quantity, backends in the order of ``backends``.
    import_errors : dict
        Module name -> error text for row modules that failed to import.
    """

    tolerance: float
    dtype: np.dtype
    backends: list
    rows: list
    import_errors: dict = field(default_factory=dict)

    @property
    def failures(self):
        """Rows that raised or deviate from ``numpy`` by more than the tolerance."""
        return [r for r in self.rows if not r.within(self.tolerance)]

    @property
    def ok(self):
        """True when every row is within tolerance and every row module imported."""
        return not self.failures and not self.import_errors

    def to_json(self):
        """``{"ok", "tolerance", "backends", "rows"}``, plus ``"import_errors"`` if any."""
        out = {
            "ok": self.ok,
            "tolerance": float(self.tolerance),
            "backends": list(self.backends),
            "rows": [r.to_json() for r in self.rows],
        }
        if self.import_errors:
            out["import_errors"] = dict(self.import_errors)
        return out


def as_row_value(value):
    """A row's return value as a float or a NumPy array.

    A list or tuple of arrays (one per layer, say) becomes one flat array.
    """
    if isinstance(value, (list, tuple)):
        return np.concatenate([np.ravel(as_row_value(v)) for v in value])
    arr = np.asarray(value)
    if arr.ndim == 0:
        return float(arr)
    return arr


def model_backend_names():
    """The registered model backends, in registration order (after :func:`load_rows`)."""
    load_rows()
    return list(MODEL_BACKENDS)


def _resolve_backends(backends):
    """``(MLP backend names with numpy first, model backend names)``, checked."""
    load_rows()
    if backends is None:
        installed = gcref.available_backends()
        mlp_names = installed
        model_names = [m.name for m in MODEL_BACKENDS.values() if m.framework in installed]
    else:
        mlp_names = [name for name in backends if name not in MODEL_BACKENDS]
        model_names = [name for name in backends if name in MODEL_BACKENDS]
    mlp_names = list(dict.fromkeys([REFERENCE, *mlp_names]))
    for name in mlp_names:
        # Instantiating first raises early for a bad name and keeps each framework's
        # import time out of the first row's timing.
        try:
            gcref.get_backend(name)
        except ValueError as err:
            raise ValueError(f"{err}, or a model backend among {list(MODEL_BACKENDS)}") from None
    for name in dict.fromkeys(model_names):
        framework = MODEL_BACKENDS[name].framework
        try:
            gcref.get_backend(framework)
        except gcref.BackendNotAvailableError as err:
            raise gcref.BackendNotAvailableError(f"model backend {name!r} needs {framework}: {err}") from None
    return mlp_names, list(dict.fromkeys(model_names))


def compare(problem, backends=None, tol=None, quantities=None, repeats=1):
    """Evaluate every registered row in every backend and compare with ``numpy``.

    Parameters
    ----------
    problem : gcref.comparison.registry.Problem
        Usually :func:`default_problem`.
    backends : sequence of str, optional
        Backends to evaluate: gcref backends (``numpy``, ``autograd``, ``jax``,
        ``torch``), which run the MLP functions, and model backends (``torch-module``,
        ``jax-function``), which run :mod:`gcref.models` on the MLP as a user's model.
        By default every installed one. ``numpy`` is always evaluated (first), as the
        reference.
    tol : float, optional
        Largest accepted relative deviation; by default the ``rtol`` of
        :func:`gcref.tolerance` for the problem's dtype.
    quantities : sequence of str, optional
        Rows to evaluate; every registered row by default.
    repeats : int >= 1
        Timed evaluations per row and backend, after one untimed warm-up call (the first
        call in JAX compiles for each new shape); the best time is kept.

    Returns
    -------
    Comparison
        Its ``backends`` are the gcref backends then the model backends; a model backend
        has a row for each quantity it computes.

    Raises
    ------
    ValueError
        For an unknown backend or quantity.
    gcref.BackendNotAvailableError
        For a known backend that is not installed.
    """
    dtype = np.dtype(problem.params[0][0].dtype)
    tol = tolerance(dtype)[0] if tol is None else check_finite_scalar(tol, "tol", positive=True)
    repeats = check_positive_int(repeats, "repeats")
    rows, import_errors = load_rows()
    mlp_names, model_names = _resolve_backends(backends)
    if quantities is not None:
        unknown = [q for q in quantities if q not in rows]
        if unknown:
            raise ValueError(f"unknown quantities {unknown}; expected some of {list(rows)}")
        rows = {q: rows[q] for q in quantities}
    orphans = sorted(set(MODEL_ROWS) - set(ROWS))
    if orphans:
        import_errors["gcref.comparison.registry"] = f"model rows without a numpy row: {orphans}"
    built = {name: _build_model(name, problem) for name in model_names}

    results = []
    for quantity, fn in rows.items():
        reference = None
        for backend in mlp_names:
            result = _evaluate(quantity, backend, lambda: fn(problem, backend), repeats)
            if backend == REFERENCE:
                reference = result.value
            _measure_deviation(result, reference, dtype)
            results.append(result)
        model_fn = MODEL_ROWS.get(quantity)
        for name in model_names if model_fn is not None else ():
            model, error = built[name]
            if error is not None:
                result = RowResult(quantity, name, None, None, 0.0, error)
            else:
                result = _evaluate(quantity, name, lambda: model_fn(problem, *model), repeats)
            _measure_deviation(result, reference, dtype)
            results.append(result)
    return Comparison(tol, dtype, [*mlp_names, *model_names], results, import_errors)


def _build_model(name, problem):
    """``((model, params), None)``, or ``(None, error text)`` when building fails."""
    try:
        return MODEL_BACKENDS[name].build(problem), None
    except Exception as err:  # report the backend's rows as failed and carry on
        return None, f"building the {name} model failed: {type(err).__name__}: {err}"


def _evaluate(quantity, backend, call, repeats):
    """Call ``call()`` once untimed, then ``repeats`` times timed; a RowResult."""
    start = time.perf_counter()
    try:
        call()
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            raw = call()
            best = min(best, time.perf_counter() - start)
        value = as_row_value(raw)
    except Exception as err:  # report the row as failed and carry on with the others
        frame = traceback.extract_tb(err.__traceback__)[-1]
        where = f" ({frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})"
        elapsed = time.perf_counter() - start
        return RowResult(quantity, backend, None, None, elapsed, f"{type(err).__name__}: {err}{where}")
    return RowResult(quantity, backend, value, None, best)


def _measure_deviation(result, reference, dtype):
    if result.error is not None:
        return
    if reference is None:
        result.error = f"no {REFERENCE} reference to compare with"
        return
    try:
        result.max_rel_dev = relative_deviation(result.value, reference, dtype)
    except ValueError as err:
        result.error = str(err)
