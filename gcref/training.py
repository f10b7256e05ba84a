"""Training by gradient descent, with and without explicit regularisers, and its metrics.

:func:`train` runs full-batch gradient descent or mini-batch SGD on the MEAN loss
(docs/math.md section 4) plus optional penalties, in any backend, and records metrics at
chosen steps. The objective of one step on the mini-batch B (all of D for full-batch GD) is

    L_B(theta) + sum of the penalties evaluated on B.

Penalties
---------
- :class:`L2Penalty` ``(strength)``: ``strength * sum_i ||W_i||_F^2`` (weights only).
- :class:`SpectralPenalty` ``(strength)``: ``strength * sum_i ||W_i||_2``; its gradient
  is ``strength * u_1 v_1^T`` per layer (top singular pair, assumed simple).
- :class:`IGRPenalty` ``(h)``: the implicit regulariser made explicit,
  ``(h/4) ||grad L_B||^2`` (docs/math.md section 5), gradient ``(h/2) H_B grad L_B``.
- :class:`PerExampleIGRPenalty` ``(h)``: ``h/(4|B|) sum_{n in B} ||grad_theta l_n||^2``
  (seed 000, eq. 6).
- :class:`GCPenalty` ``(strength)``: ``strength * GC(f, B)`` (docs/math.md section 2);
  autodiff backends only.

The ``numpy`` loop is the reference: it differentiates every penalty but GC by hand
(analytic gradients and Hessian-vector products). The autodiff backends take the same
gradients where they are written on the primitives (L2, spectral, the Hessian-vector
product of IGR) and reverse mode through ``value`` otherwise (per-example IGR, GC).

Backends
--------
- ``"jax"``: the gradient of the objective, and with a plain learning rate the whole
  update, is one ``jax.jit``-compiled function of the native parameters and the batch,
  traced once per batch shape inside ``jax.enable_x64`` when the parameters are float64.
- ``"torch"``: ``compiled=False`` runs the eager step: each penalty's ``gradient`` on the
  backend's primitives (the Hessian-vector product of the IGR penalty, reverse mode
  through the per-example norm identity). ``compiled=True`` writes the objective as
  ``mean loss + sum of the penalties' value`` on the same primitives, taken by
  :meth:`gcref.backends.torch.TorchBackend.functional` (derivatives by ``torch.func``
  transforms, which TorchDynamo traces; ``torch.autograd.grad`` breaks the graph),
  differentiates it with ``torch.func.grad`` and compiles the whole update with
  ``torch.compile(fullgraph=True)``. Compilation takes 5-30 s on a CPU and then saves
  70-80% of each step on small MLPs (measured on this project's shared 2-core
  machine), so ``compiled=None`` (the default) compiles runs of at least
  :data:`TORCH_COMPILE_MIN_STEPS` steps. A penalty of your own is compiled only if its
  class body sets ``compilable = True`` (see :class:`Penalty`); otherwise the step runs
  eagerly.
- ``"autograd"`` and ``"numpy"``: eager.

Each penalty is one definition: its ``value`` is what the compiled step differentiates
and what its ``gradient`` (analytic in ``numpy``, on the primitives elsewhere) is the
gradient of; the tests check the eager step of every backend against the ``numpy`` loop
and the compiled step against the eager one.

Divergence, progress, saving
----------------------------
Every step checks that the new parameters (and, with an optimiser object, the gradient)
are finite, and every recorded ``"loss"`` metric that it is finite; at the first that is
not, :func:`train` raises :class:`TrainingDiverged`, whose ``.step`` says where and whose
``.result`` holds the run up to the last finite parameters. The check is one reduction
inside the step function and one host read of its value per step. ``progress=`` shows a
progress line on stderr (by default only when stderr is a terminal).
:meth:`TrainResult.to_dict` gives the parameters, the history and the settings of the
run as JSON-serialisable values; :meth:`TrainResult.save` and :meth:`TrainResult.load`
write and read them as a JSON file.

Optimisers
----------
``lr=...`` takes plain gradient-descent steps ``theta <- theta - lr grad``. Any object
with ``update(mlp, params, grads, step) -> new_params`` (params and grads tuples of
``(W, b)`` NumPy arrays, ``step`` counted from 1), such as those of
:mod:`gcref.optimizers`, can be passed as ``optimizer=`` instead; its update runs in NumPy
on the gradient computed by the backend.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gcref._checks import check_finite_scalar, check_positive_int, check_rng
from gcref._progress import Progress
from gcref.igr import (
    gd_penalty_grad_native,
    gd_penalty_native,
    native_gradient,
    per_example_penalty_grad_native,
    per_example_penalty_native,
)
from gcref.params import combine as _combine
from gcref.params import flat_arrays as _flat
from gcref.params import pairs as _pairs
from gcref.primitives import Call
from gcref.results import jsonable

__all__ = [
    "METRICS",
    "GCPenalty",
    "IGRPenalty",
    "L2Penalty",
    "Penalty",
    "PerExampleIGRPenalty",
    "SpectralPenalty",
    "TrainResult",
    "TrainingDiverged",
    "train",
]

#: Metric names :func:`train` can record.
METRICS = ("loss", "gc", "igr", "transfer_ratio", "layer_norms")

#: ``compiled=None`` compiles the torch step for runs of at least this many steps.
TORCH_COMPILE_MIN_STEPS = 2000


# -- penalties ---------------------------------------------------------------------
class Penalty:
    """A term added to the loss of every step, on the native arrays of a backend.

    Subclasses implement ``value`` and may implement ``gradient``; the default gradient
    is reverse mode through ``value`` in autodiff backends and an error in ``numpy``.
    Both receive ``(backend, mlp, params, X, targets, loss)`` for the current batch.

    Attributes
    ----------
    compilable : bool
        Whether the compiled torch step (``train(..., compiled=True)``) may differentiate
        ``value``. Set it to True in the body of your own subclass when ``value`` uses
        only the backend's primitives and ``backend.xp`` (TorchDynamo then traces it);
        it is read from the class's own body, not inherited, since a subclass that
        rewrites ``value`` may no longer be traceable.
    """

    compilable = False

    def __init__(self, strength):
        self.strength = check_finite_scalar(strength, "strength", nonnegative=True)

    def value(self, backend, mlp, params, X, targets, loss):
        """The penalty, a native scalar."""
        raise NotImplementedError

    def gradient(self, backend, mlp, params, X, targets, loss):
        """Its gradient, a list of ``(dW_i, db_i)`` native pairs."""
        if not backend.differentiates:
            raise ValueError(_no_analytic_gradient(self, backend))
        return native_gradient(
            backend, lambda p: self.value(backend, mlp, p, X, targets, loss), params
        )

    def to_dict(self):
        """``{"type": class name, "strength": ...}``, JSON-serialisable."""
        return {"type": type(self).__name__, "strength": self.strength}

    def __repr__(self):
        return f"{type(self).__name__}({self.strength:g})"


class L2Penalty(Penalty):
    """``strength * sum_i ||W_i||_F^2``; biases are not penalised."""

    compilable = True

    def value(self, backend, mlp, params, X, targets, loss):
        return self.strength * sum(backend.xp.sum(W * W) for W, _ in params)

    def gradient(self, backend, mlp, params, X, targets, loss):
        return [(2.0 * self.strength * W, 0.0 * b) for W, b in params]


class SpectralPenalty(Penalty):
    """``strength * sum_i ||W_i||_2`` (largest singular value of each weight matrix).

    The gradient ``u_1 v_1^T`` needs a simple top singular value; it is the same in
    every backend (``xp.linalg.svd``), so the autodiff loops agree with ``numpy``.
    """

    compilable = True

    def value(self, backend, mlp, params, X, targets, loss):
        return self.strength * sum(
            backend.xp.linalg.svd(W, full_matrices=False)[1][0] for W, _ in params
        )

    def gradient(self, backend, mlp, params, X, targets, loss):
        out = []
        for W, b in params:
            U, _, Vh = backend.xp.linalg.svd(W, full_matrices=False)
            out.append((self.strength * (U[:, :1] @ Vh[:1, :]), 0.0 * b))
        return out


class IGRPenalty(Penalty):
    """``(h/4) ||grad L_B||^2``, the implicit gradient regulariser of step ``h`` made explicit."""

    compilable = True

    def __init__(self, h):
        super().__init__(h)

    def value(self, backend, mlp, params, X, targets, loss):
        return (self.strength / 4.0) * gd_penalty_native(backend, mlp, params, X, targets, loss)

    def gradient(self, backend, mlp, params, X, targets, loss):
        grads = gd_penalty_grad_native(backend, mlp, params, X, targets, loss)
        return [(self.strength / 4.0 * A, self.strength / 4.0 * a) for A, a in grads]


class PerExampleIGRPenalty(Penalty):
    """``h/(4|B|) sum_{n in B} ||grad_theta l_n||^2`` (seed 000, eq. 6)."""

    compilable = True

    def __init__(self, h):
        super().__init__(h)

    def _factor(self, X):
        return self.strength / (4.0 * X.shape[0])

    def value(self, backend, mlp, params, X, targets, loss):
        return self._factor(X) * per_example_penalty_native(backend, mlp, params, X, targets, loss)

    def gradient(self, backend, mlp, params, X, targets, loss):
        grads = per_example_penalty_grad_native(backend, mlp, params, X, targets, loss)
        return [(self._factor(X) * A, self._factor(X) * a) for A, a in grads]


class GCPenalty(Penalty):
    """``strength * GC(f, B)``, the geometric complexity of the batch (docs/math.md section 2).

    Autodiff backends only: the ``numpy`` backend has no analytic gradient of GC.
    """

    compilable = True

    def value(self, backend, mlp, params, X, targets, loss):
        from gcref.complexity import geometric_complexity_native

        return self.strength * geometric_complexity_native(mlp, params, X, backend=backend)


def _no_analytic_gradient(penalty, backend):
    return (
        f"{type(penalty).__name__} has no analytic gradient in the {backend.name} backend; "
        "train with backend='jax', 'torch' or 'autograd'"
    )


def _compilable(penalty):
    """``compilable`` as set in the penalty's own class body (see :class:`Penalty`)."""
    return bool(vars(type(penalty)).get("compilable", False))


def _check_compiled(compiled, backend, penalties, steps):
    """Whether to compile the torch step; see :func:`train`."""
    if compiled is not None and not isinstance(compiled, bool):
        raise TypeError(f"compiled must be True, False or None; got {compiled!r}")
    if not callable(getattr(backend, "functional", None)):
        if compiled:
            raise ValueError(
                f"compiled=True applies to the torch backend; got backend {backend.name!r} "
                "(the jax step is always jitted)"
            )
        return False
    custom = [p for p in penalties if not _compilable(p)]
    if compiled and custom:
        raise ValueError(
            f"compiled=True cannot compile the penalty {custom[0]!r}: its class does not "
            "set compilable = True in its own body (do so once its value uses only the "
            "backend's primitives and backend.xp, which TorchDynamo can trace)"
        )
    if compiled is None:
        return not custom and steps >= TORCH_COMPILE_MIN_STEPS
    return compiled


def _check_penalties(penalties):
    if isinstance(penalties, Penalty):
        penalties = (penalties,)
    penalties = tuple(penalties)
    for p in penalties:
        if not isinstance(p, Penalty):
            raise TypeError(f"penalties must be Penalty objects; got {type(p).__name__}")
    return penalties


# -- one step ----------------------------------------------------------------------
def objective_value(backend, mlp, params, X, targets, loss, penalties):
    """``L_B + sum penalties`` on native arrays, a native scalar."""
    return backend.mean_loss(mlp, params, X, targets, loss) + sum(
        penalty.value(backend, mlp, params, X, targets, loss) for penalty in penalties
    )


def objective_gradient(backend, mlp, params, X, targets, loss, penalties):
    """Gradient of ``L_B + sum penalties`` on native arrays, a list of ``(dW, db)``."""
    grads = backend.loss_grad(mlp, params, X, targets, loss)
    for penalty in penalties:
        grads = _combine(
            1.0, grads, 1.0, penalty.gradient(backend, mlp, params, X, targets, loss)
        )
    return grads


def _entry_sum(xp, arrays):
    """The sum of every entry of ``arrays``: finite when they all are, unless it overflows."""
    return sum(xp.sum(a) for a in arrays)


def _all_finite(xp, arrays, total):
    """Whether every entry of ``arrays`` is finite, given their :func:`_entry_sum` ``total``.

    One host read of ``total``; the element-wise scan runs only when it is not finite.
    """
    return math.isfinite(float(total)) or all(bool(xp.all(xp.isfinite(a))) for a in arrays)


def _step_function(backend, mlp, loss, penalties, lr, compiled=False):
    """``step(flat_params, X, targets) -> (flat, total)``: the new params (``lr`` given)
    or the gradient, and the sum of their entries (:func:`_entry_sum`).

    One function of native arrays; jitted as a whole in JAX, compiled as a whole in
    torch when ``compiled``.
    """
    if compiled:
        return _torch_compiled_step(backend, mlp, loss, penalties, lr)

    def step(flat, X, targets):
        params = _pairs(flat)
        grads = objective_gradient(backend, mlp, params, X, targets, loss, penalties)
        out = _flat(grads) if lr is None else _flat(_combine(1.0, params, -lr, grads))
        return out, _entry_sum(backend.xp, out)

    return backend.step_function(step)


def _torch_compiled_step(backend, mlp, loss, penalties, lr):
    """The torch step as one ``torch.compile``d function.

    The objective is :func:`objective_value`, the penalties' own ``value`` methods on the
    backend's primitives, evaluated on ``backend.functional()`` (derivatives by
    ``torch.func`` transforms, which TorchDynamo traces with ``fullgraph=True``), and is
    differentiated by ``torch.func.grad``.
    """
    import torch

    functional = backend.functional()

    def objective(flat, X, targets):
        return objective_value(functional, mlp, _pairs(flat), X, targets, loss, penalties)

    gradient = torch.func.grad(objective)

    def step(flat, X, targets):
        g = gradient(flat, X, targets)
        out = g if lr is None else tuple(p - lr * q for p, q in zip(flat, g))
        return out, _entry_sum(torch, out)

    return torch.compile(step, fullgraph=True)


# -- metrics -----------------------------------------------------------------------
def _metric_values(name, mlp, params, X, y, loss, igr_h):
    """Metric ``name`` at ``params`` on the whole data set, with the numpy backend."""
    if name == "loss":
        from gcref.primitives import mean_loss

        return {"loss": mean_loss(mlp, params, X, y, loss)}
    if name == "gc":
        from gcref.complexity import geometric_complexity

        return {"gc": float(geometric_complexity(mlp, params, X))}
    if name == "igr":
        from gcref.igr import modified_loss_gd
        from gcref.primitives import mean_loss

        value = modified_loss_gd(mlp, params, X, y, loss, igr_h) - mean_loss(mlp, params, X, y, loss)
        return {"igr": value}
    if name == "transfer_ratio":
        from gcref.transfer import transfer_ratio

        return {"transfer_ratio": float(np.mean(transfer_ratio(mlp, params, X)))}
    frob = np.array([np.linalg.norm(W) for W, _ in params])
    spec = np.array([np.linalg.norm(W, 2) for W, _ in params])
    return {"frobenius_norms": frob, "spectral_norms": spec}


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    params : tuple of (W, b) ndarray
        The parameters after the last step (after the last finite step when
        ``diverged_at`` is set).
    history : dict of str -> ndarray
        ``"step"`` (R,), the steps at which metrics were recorded (0 is the start), and
        one array per recorded quantity: ``"loss"``, ``"gc"``, ``"igr"`` and
        ``"transfer_ratio"`` of shape (R,); ``"frobenius_norms"`` and
        ``"spectral_norms"`` of shape (R, l) for ``"layer_norms"``.
    settings : dict
        The arguments that produced the run, as JSON-serialisable values: ``"mlp"``
        (``sizes``, ``activation``, ``output_activation``), ``"loss"``, ``"dtype"``,
        ``"n_examples"``, ``"steps"``, ``"lr"``, ``"optimizer"`` (its ``repr``),
        ``"batch_size"``, ``"rng_state"`` (``rng.bit_generator.state`` before training,
        for SGD; assign it to a new generator's ``bit_generator.state`` to replay the
        run), ``"penalties"`` (``Penalty.to_dict()`` each), ``"backend"``,
        ``"compiled"`` (as resolved), ``"record_every"``, ``"metrics"``, ``"igr_h"``.
    diverged_at : int or None
        The step at which training stopped on a non-finite value (see
        :class:`TrainingDiverged`); ``None`` for a run that completed.
    """

    params: tuple
    history: dict
    settings: dict = field(default_factory=dict)
    diverged_at: int | None = None

    def to_dict(self):
        """The run as JSON-serialisable values (``json.dumps`` accepts them).

        Returns
        -------
        dict
            ``"type"`` (``"TrainResult"``), ``"dtype"`` (of the parameters), ``"params"``
            (``[[W_1, b_1], ...]`` as nested lists), ``"history"`` (lists),
            ``"settings"`` and ``"diverged_at"``. Non-finite floats become ``None``
            (:func:`gcref.results.jsonable`); :meth:`from_dict` reads them back as NaN.
        """
        return {
            "type": type(self).__name__,
            "dtype": np.asarray(self.params[0][0]).dtype.name,
            "params": jsonable([[np.asarray(W), np.asarray(b)] for W, b in self.params]),
            "history": jsonable(self.history),
            "settings": jsonable(self.settings),
            "diverged_at": self.diverged_at,
        }

    @classmethod
    def from_dict(cls, data):
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        ValueError
            When ``data`` is not the ``to_dict()`` of a ``TrainResult``.
        """
        if not isinstance(data, dict) or data.get("type") != cls.__name__:
            raise ValueError(
                f"data must be the to_dict() of a {cls.__name__} (a dict with "
                f"type={cls.__name__!r}); got {type(data).__name__}"
                + (f" of type {data.get('type')!r}" if isinstance(data, dict) else "")
            )
        dtype = np.dtype(data["dtype"])
        params = tuple(
            (np.asarray(W, dtype=dtype), np.asarray(b, dtype=dtype)) for W, b in data["params"]
        )
        history = {
            key: np.asarray(value, dtype=np.int64 if key == "step" else np.float64)
            for key, value in data["history"].items()
        }
        return cls(params, history, dict(data["settings"]), data["diverged_at"])

    def save(self, path):
        """Write :meth:`to_dict` to ``path`` as JSON (strict: no NaN tokens)."""
        Path(path).write_text(json.dumps(self.to_dict(), allow_nan=False))

    @classmethod
    def load(cls, path):
        """Read a file written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


class TrainingDiverged(ValueError):
    """:func:`train` stopped because a value stopped being finite.

    Attributes
    ----------
    step : int
        The first step (counted from 1; 0 is the start) after which a parameter, the
        gradient (with an optimiser object) or the recorded ``"loss"`` metric is not
        finite.
    result : TrainResult
        The run up to the last finite parameters, with ``diverged_at = step``: for a
        non-finite parameter or gradient, ``params`` after step ``step - 1`` and the
        history up to a record at that step (added if ``record_every`` had not chosen
        it); for a non-finite recorded loss, ``params`` after ``step`` and the history
        up to that record.
    """

    def __init__(self, message, step, result):
        super().__init__(message)
        self.step = step
        self.result = result

    def __reduce__(self):
        return type(self), (self.args[0], self.step, self.result)


def _check_metrics(metrics, lr, optimizer, igr_h):
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    for name in metrics:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; expected some of {METRICS}")
    if "igr" in metrics and igr_h is None:
        igr_h = lr if lr is not None else getattr(optimizer, "lr", None)
        if igr_h is None:
            raise ValueError("the 'igr' metric needs igr_h (the step h of (h/4)||grad L||^2)")
    return metrics, igr_h


def _epoch_batches(rng, n, batch_size):
    """A shuffled epoch: consecutive slices of a permutation; the last may be smaller."""
    order = rng.permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def train(mlp, params, X, y, loss, *, steps, lr=None, optimizer=None, batch_size=None,
          rng=None, penalties=(), backend="numpy", record_every=None, metrics=("loss",),
          igr_h=None, compiled=None, progress=None):
    """Train an MLP by full-batch gradient descent or mini-batch SGD.

    Parameters
    ----------
    mlp : gcref.MLP
    params : tuple of (W, b)
        Starting parameters (not modified).
    X : ndarray, shape (N, d)
    y : array_like
        Targets for ``loss``.
    loss : str or gcref.losses.Loss
    steps : int >= 0
        Number of updates.
    lr : float > 0, optional
        Learning rate of plain gradient descent. Exactly one of ``lr`` and ``optimizer``.
    optimizer : object with ``update(mlp, params, grads, step)``, optional
        See the module docstring.
    batch_size : int, optional
        ``None``: full-batch gradient descent. Otherwise SGD: each epoch shuffles the
        examples with ``rng`` and takes consecutive mini-batches of ``batch_size`` (the
        last one smaller when ``batch_size`` does not divide N).
    rng : numpy.random.Generator
        Required for SGD.
    penalties : Penalty or sequence of Penalty
        Added to the mini-batch loss at every step.
    backend : str
    record_every : int, optional
        Record metrics at step 0, every ``record_every`` steps and after the last step;
        ``None`` records at the start and the end only.
    metrics : sequence of str
        Some of :data:`METRICS`: ``"loss"`` (mean loss on all of D), ``"gc"``
        (geometric complexity on D), ``"igr"`` (``(h/4) ||grad L||^2`` on D),
        ``"transfer_ratio"`` (its mean over D), ``"layer_norms"`` (Frobenius and spectral
        norm of every W_i). Computed on NumPy copies with the analytic ``numpy`` backend.
    igr_h : float, optional
        h of the ``"igr"`` metric; by default ``lr`` (or ``optimizer.lr``).
    compiled : bool, optional
        Torch only: ``torch.compile`` the step (see the module docstring). ``None``
        compiles when ``steps >= TORCH_COMPILE_MIN_STEPS`` and every penalty is one of
        this module's. JAX always jits; ``True`` with another backend is an error.
    progress : bool, optional
        Show a progress line (steps done, rate) on stderr; ``None`` (the default) shows it
        only when stderr is a terminal.

    Returns
    -------
    TrainResult
        With the settings of the run (:attr:`TrainResult.settings`); save it with
        :meth:`TrainResult.save`.

    Raises
    ------
    TrainingDiverged
        At the first step after which a parameter, the gradient or a recorded loss is
        not finite; its ``.result`` holds the run up to there.

    Examples
    --------
    >>> import numpy as np, gcref
    >>> from gcref.training import train, IGRPenalty
    >>> mlp = gcref.MLP((1, 16, 1), activation="tanh")
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(-1, 1, size=(20, 1)); y = np.sin(3 * X)
    >>> result = train(mlp, mlp.init(rng), X, y, "squared", steps=100, lr=0.1,
    ...                penalties=[IGRPenalty(0.5)], metrics=("loss", "gc"), record_every=50)
    >>> result.history["step"].tolist()
    [0, 50, 100]
    """
    steps = check_positive_int(steps, "steps", minimum=0)
    if (lr is None) == (optimizer is None):
        raise ValueError("give exactly one of lr (plain gradient descent) and optimizer")
    if lr is not None:
        lr = check_finite_scalar(lr, "lr", positive=True)
    elif not callable(getattr(optimizer, "update", None)):
        raise TypeError("optimizer must have a method update(mlp, params, grads, step)")
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")
        check_rng(rng)
    if record_every is not None:
        record_every = check_positive_int(record_every, "record_every")
    penalties = _check_penalties(penalties)
    metrics, igr_h = _check_metrics(metrics, lr, optimizer, igr_h)

    c = Call(mlp, params, X, backend, y, loss)
    n = c.X.shape[0]
    if not c.backend.differentiates:
        for p in penalties:
            if type(p).gradient is Penalty.gradient:
                raise ValueError(_no_analytic_gradient(p, c.backend))

    compiled = _check_compiled(compiled, c.backend, penalties, steps)
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None; got {progress!r}")
    settings = {
        "mlp": {
            "sizes": list(mlp.sizes),
            "activation": mlp.activation.name,
            "output_activation": mlp.output_activation.name,
        },
        "loss": c.loss.name or repr(c.loss),
        "dtype": c.X.dtype.name,
        "n_examples": n,
        "steps": steps,
        "lr": lr,
        "optimizer": None if optimizer is None else repr(optimizer),
        "batch_size": batch_size,
        "rng_state": None if batch_size is None else rng.bit_generator.state,
        "penalties": [p.to_dict() for p in penalties],
        "backend": c.backend.name,
        "compiled": compiled,
        "record_every": record_every,
        "metrics": list(metrics),
        "igr_h": igr_h,
    }
    history = {"step": []}

    def result(params, diverged_at=None):
        arrays = {key: np.asarray(value) for key, value in history.items()}
        return TrainResult(params, arrays, settings, diverged_at)

    def stop(step, what, last_step, last_params):
        """Raise :class:`TrainingDiverged`; the history ends with a record at ``last_step``."""
        if history["step"][-1] != last_step:
            history["step"].append(last_step)
            for name in metrics:
                values = _metric_values(name, mlp, last_params, c.X, y, c.loss, igr_h)
                for key, value in values.items():
                    history[key].append(value)
        raise TrainingDiverged(
            f"training diverged at step {step} of {steps}: {what} is not finite; lower the "
            f"learning rate. The run up to step {last_step} is this error's .result",
            step,
            result(last_params, step),
        )

    def record(step, current):
        history["step"].append(step)
        for name in metrics:
            for key, value in _metric_values(name, mlp, current, c.X, y, c.loss, igr_h).items():
                history.setdefault(key, []).append(value)
        if "loss" in metrics and not math.isfinite(history["loss"][-1]):
            stop(step, "the loss on the whole data set", step, current)

    current = c.params
    with c, Progress("train", progress, total=steps, unit="steps") as bar:
        record(0, current)
        step_fn = _step_function(c.backend, mlp, c.loss, penalties, lr, compiled)
        xp = c.backend.xp
        flat = _flat(c.nparams)
        batches = []
        for step in range(1, steps + 1):
            if batch_size is None:
                Xb, tb = c.nX, c.ntargets
            else:
                if not batches:
                    batches = _epoch_batches(rng, n, batch_size)
                idx = batches.pop(0)
                Xb, tb = c.native(c.X[idx]), c.native(c.targets[idx])
            out, total = step_fn(flat, Xb, tb)
            if lr is None:
                if not _all_finite(xp, out, total):
                    stop(step, "the gradient", step - 1, current)
                grads = tuple(tuple(pair) for pair in c.numpy(_pairs(out)))
                updated = tuple(optimizer.update(mlp, current, grads, step))
                if not _all_finite(np, _flat(updated), _entry_sum(np, _flat(updated))):
                    stop(step, "a parameter", step - 1, current)
                current = updated
                flat = _flat(c.native_params(current))
            else:
                if not _all_finite(xp, out, total):
                    previous = tuple(tuple(pair) for pair in c.numpy(_pairs(flat)))
                    stop(step, "a parameter", step - 1, previous)
                flat = out
            bar.advance()
            if (record_every is not None and step % record_every == 0) or step == steps:
                if lr is not None:
                    current = tuple(tuple(pair) for pair in c.numpy(_pairs(flat)))
                if history["step"][-1] != step:
                    record(step, current)
        if lr is not None:
            current = tuple(tuple(pair) for pair in c.numpy(_pairs(flat)))
    return result(current)
