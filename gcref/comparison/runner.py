"""The engine of ``gcref compare``: the default problem, and every row in every backend.

:func:`default_problem` builds the built-in problem (a small MLP on synthetic data, drawn
from one seed, no download). :func:`compare` imports every module of
:mod:`gcref.comparison` (so rows registered by any feature module appear without being
listed here), evaluates each row in each chosen backend, times it, and measures its
largest relative deviation from the ``numpy`` backend with
:func:`gcref.tolerances.relative_deviation`. A row that raises is reported as failed; it
never stops the comparison.
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
from gcref.comparison.registry import ROWS, Problem
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
        Best wall time over the repeats.
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


def compare(problem, backends=None, tol=None, quantities=None, repeats=1):
    """Evaluate every registered row in every backend and compare with ``numpy``.

    Parameters
    ----------
    problem : gcref.comparison.registry.Problem
        Usually :func:`default_problem`.
    backends : sequence of str, optional
        Backends to evaluate; every installed one by default. ``numpy`` is always
        evaluated (first), as the reference.
    tol : float, optional
        Largest accepted relative deviation; by default the ``rtol`` of
        :func:`gcref.tolerance` for the problem's dtype.
    quantities : sequence of str, optional
        Rows to evaluate; every registered row by default.
    repeats : int >= 1
        Each row is evaluated this many times per backend and the best time kept (the
        first call in JAX includes compilation for each new shape).

    Returns
    -------
    Comparison

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
    names = list(dict.fromkeys([REFERENCE, *(backends or gcref.available_backends())]))
    for name in names:
        # Instantiating first raises early for a bad name and keeps each framework's
        # import time out of the first row's timing.
        gcref.get_backend(name)
    rows, import_errors = load_rows()
    if quantities is not None:
        unknown = [q for q in quantities if q not in rows]
        if unknown:
            raise ValueError(f"unknown quantities {unknown}; expected some of {list(rows)}")
        rows = {q: rows[q] for q in quantities}

    results = []
    for quantity, fn in rows.items():
        reference = None
        for backend in names:
            result = _evaluate(quantity, fn, problem, backend, repeats)
            if backend == REFERENCE:
                reference = result.value
            _measure_deviation(result, reference, dtype)
            results.append(result)
    return Comparison(tol, dtype, names, results, import_errors)


def _evaluate(quantity, fn, problem, backend, repeats):
    best = math.inf
    value = None
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            raw = fn(problem, backend)
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
