"""Training by gradient descent, with and without explicit regularisers, and its metrics.

:func:`train` runs full-batch gradient descent or mini-batch SGD on the MEAN loss
(MATH.md section 4) plus optional penalties, in any backend, and records metrics at
chosen steps. The objective of one step on the mini-batch B (all of D for full-batch GD) is

    L_B(theta) + sum of the penalties evaluated on B.

Penalties
---------
- :class:`L2Penalty` ``(strength)``: ``strength * sum_i ||W_i||_F^2`` (weights only).
- :class:`SpectralPenalty` ``(strength)``: ``strength * sum_i ||W_i||_2``; its gradient
  is ``strength * u_1 v_1^T`` per layer (top singular pair, assumed simple).
- :class:`IGRPenalty` ``(h)``: the implicit regulariser made explicit,
  ``(h/4) ||grad L_B||^2`` (MATH.md section 5), gradient ``(h/2) H_B grad L_B``.
- :class:`PerExampleIGRPenalty` ``(h)``: ``h/(4|B|) sum_{n in B} ||grad_theta l_n||^2``
  (seed 000, eq. 6).
- :class:`GCPenalty` ``(strength)``: ``strength * GC(f, B)`` (MATH.md section 2);
  autodiff backends only.

The ``numpy`` loop is the reference: it differentiates every penalty but GC by hand
(analytic gradients and Hessian-vector products). The autodiff backends differentiate
the IGR penalty by the same Hessian-vector product and the others by reverse mode.

Backends
--------
- ``"jax"``: the gradient of the objective, and with a plain learning rate the whole
  update, is one ``jax.jit``-compiled function of the native parameters and the batch,
  traced once per batch shape inside ``jax.enable_x64`` when the parameters are float64.
- ``"torch"``: ``compiled=True`` builds the objective of the step from ``torch.func``
  transforms (``grad`` for the gradient and the IGR penalty, ``vmap(grad)`` for the
  per-example penalty, ``vmap(jacrev)`` for GC, ``matrix_norm(ord=2)`` for the spectral
  penalty) and compiles the whole update with ``torch.compile(fullgraph=True)``.
  ``compiled=False`` runs the eager step on the backend's primitives (the analytic
  Hessian-vector product of the IGR penalty, the per-example norm identity); TorchDynamo
  cannot compile that one, since it breaks the graph at every ``torch.autograd.grad``.
  Compilation takes 10-25 s on a CPU and then saves about two thirds of each step on
  small MLPs (measured on this project's 2-core machine), so ``compiled=None`` (the
  default) compiles runs of at least :data:`TORCH_COMPILE_MIN_STEPS` steps. Penalties of
  your own (other :class:`Penalty` subclasses) run eagerly.
- ``"autograd"`` and ``"numpy"``: eager.

Optimisers
----------
``lr=...`` takes plain gradient-descent steps ``theta <- theta - lr grad``. Any object
with ``update(mlp, params, grads, step) -> new_params`` (params and grads tuples of
``(W, b)`` NumPy arrays, ``step`` counted from 1), such as those of
:mod:`gcref.optimizers`, can be passed as ``optimizer=`` instead; its update runs in NumPy
on the gradient computed by the backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gcref._checks import check_finite_scalar, check_positive_int, check_rng
from gcref.backends._autodiff import AutodiffBackend
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

__all__ = [
    "GCPenalty",
    "IGRPenalty",
    "L2Penalty",
    "METRICS",
    "Penalty",
    "PerExampleIGRPenalty",
    "SpectralPenalty",
    "TrainResult",
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
    """

    def __init__(self, strength):
        self.strength = check_finite_scalar(strength, "strength", nonnegative=True)

    def value(self, backend, mlp, params, X, targets, loss):
        """The penalty, a native scalar."""
        raise NotImplementedError

    def gradient(self, backend, mlp, params, X, targets, loss):
        """Its gradient, a list of ``(dW_i, db_i)`` native pairs."""
        if not isinstance(backend, AutodiffBackend):
            raise ValueError(
                f"{type(self).__name__} has no analytic gradient in the numpy backend; "
                "train with backend='jax', 'torch' or 'autograd'"
            )
        return native_gradient(
            backend, lambda p: self.value(backend, mlp, p, X, targets, loss), params
        )

    def __repr__(self):
        return f"{type(self).__name__}({self.strength:g})"


class L2Penalty(Penalty):
    """``strength * sum_i ||W_i||_F^2``; biases are not penalised."""

    def value(self, backend, mlp, params, X, targets, loss):
        return self.strength * sum(backend.xp.sum(W * W) for W, _ in params)

    def gradient(self, backend, mlp, params, X, targets, loss):
        return [(2.0 * self.strength * W, 0.0 * b) for W, b in params]


class SpectralPenalty(Penalty):
    """``strength * sum_i ||W_i||_2`` (largest singular value of each weight matrix).

    The gradient ``u_1 v_1^T`` needs a simple top singular value; it is the same in
    every backend (``xp.linalg.svd``), so the autodiff loops agree with ``numpy``.
    """

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

    def __init__(self, h):
        super().__init__(h)

    def value(self, backend, mlp, params, X, targets, loss):
        return (self.strength / 4.0) * gd_penalty_native(backend, mlp, params, X, targets, loss)

    def gradient(self, backend, mlp, params, X, targets, loss):
        grads = gd_penalty_grad_native(backend, mlp, params, X, targets, loss)
        return [(self.strength / 4.0 * A, self.strength / 4.0 * a) for A, a in grads]


class PerExampleIGRPenalty(Penalty):
    """``h/(4|B|) sum_{n in B} ||grad_theta l_n||^2`` (seed 000, eq. 6)."""

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
    """``strength * GC(f, B)``, the geometric complexity of the batch (MATH.md section 2).

    Autodiff backends only: the ``numpy`` backend has no analytic gradient of GC.
    """

    def value(self, backend, mlp, params, X, targets, loss):
        from gcref.complexity import geometric_complexity_native

        return self.strength * geometric_complexity_native(mlp, params, X, backend=backend)


_COMPILABLE = (L2Penalty, SpectralPenalty, IGRPenalty, PerExampleIGRPenalty, GCPenalty)


def _check_compiled(compiled, backend, penalties, steps):
    """Whether to compile the torch step; see :func:`train`."""
    if compiled is not None and not isinstance(compiled, bool):
        raise TypeError(f"compiled must be True, False or None; got {compiled!r}")
    if backend.name != "torch":
        if compiled:
            raise ValueError(
                f"compiled=True applies to the torch backend; got backend {backend.name!r} "
                "(the jax step is always jitted)"
            )
        return False
    custom = [p for p in penalties if type(p) not in _COMPILABLE]
    if compiled and custom:
        raise ValueError(
            f"compiled=True cannot compile the penalty {custom[0]!r}: only "
            f"{', '.join(cls.__name__ for cls in _COMPILABLE)} are written for torch.func"
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
def objective_gradient(backend, mlp, params, X, targets, loss, penalties):
    """Gradient of ``L_B + sum penalties`` on native arrays, a list of ``(dW, db)``."""
    grads = backend.loss_grad(mlp, params, X, targets, loss)
    for penalty in penalties:
        grads = _combine(
            1.0, grads, 1.0, penalty.gradient(backend, mlp, params, X, targets, loss)
        )
    return grads


def _step_function(backend, mlp, loss, penalties, lr, compiled=False):
    """``step(flat_params, X, targets) -> flat`` new params (``lr`` given) or gradient.

    One function of native arrays; jitted as a whole in JAX, compiled as a whole in
    torch when ``compiled``.
    """
    if compiled:
        return _torch_compiled_step(backend, mlp, loss, penalties, lr)

    def step(flat, X, targets):
        params = _pairs(flat)
        grads = objective_gradient(backend, mlp, params, X, targets, loss, penalties)
        if lr is None:
            return _flat(grads)
        return _flat(_combine(1.0, params, -lr, grads))

    if backend.name == "jax":
        import jax

        return jax.jit(step)
    if backend.name == "torch":
        import torch

        def step_without_graph(flat, X, targets):
            # Nested derivatives enable grad where they need it; the step's result must
            # not carry a graph from one step into the next.
            with torch.no_grad():
                return step(flat, X, targets)

        return step_without_graph
    return step


def _torch_compiled_step(backend, mlp, loss, penalties, lr):
    """The torch step as one ``torch.compile``d function of ``torch.func`` transforms.

    Each penalty's value is written with ``torch.func`` so that the whole objective is
    differentiated by ``torch.func.grad``; the values are the same formulas as the
    penalties' ``value`` methods (the tests check the step against the numpy loop).
    """
    import torch
    from torch.func import grad, jacrev, vmap

    def mean_loss(flat, X, targets):
        return backend.mean_loss(mlp, _pairs(flat), X, targets, loss)

    def example_loss(flat, x, t):
        return mean_loss(flat, x[None], t[None])

    def example_output(x, flat):
        return backend.forward(mlp, _pairs(flat), x[None]).output[0]

    def sq_norm(tensors):
        return sum(torch.sum(t * t) for t in tensors)

    def penalty_value(penalty, flat, X, targets):
        s = penalty.strength
        if isinstance(penalty, L2Penalty):
            return s * sq_norm(W for W, _ in _pairs(flat))
        if isinstance(penalty, SpectralPenalty):
            return s * sum(torch.linalg.matrix_norm(W, ord=2) for W, _ in _pairs(flat))
        if isinstance(penalty, IGRPenalty):
            return s / 4.0 * sq_norm(grad(mean_loss)(flat, X, targets))
        if isinstance(penalty, PerExampleIGRPenalty):
            per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))(flat, X, targets)
            return s / (4.0 * X.shape[0]) * sq_norm(per_example)
        J = vmap(jacrev(example_output), in_dims=(0, None))(X, flat)
        return s * torch.sum(J * J) / X.shape[0]

    def objective(flat, X, targets):
        return mean_loss(flat, X, targets) + sum(
            penalty_value(p, flat, X, targets) for p in penalties
        )

    def step(flat, X, targets):
        g = grad(objective)(flat, X, targets)
        if lr is None:
            return g
        return tuple(p - lr * q for p, q in zip(flat, g))

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
        The parameters after the last step.
    history : dict of str -> ndarray
        ``"step"`` (R,), the steps at which metrics were recorded (0 is the start), and
        one array per recorded quantity: ``"loss"``, ``"gc"``, ``"igr"`` and
        ``"transfer_ratio"`` of shape (R,); ``"frobenius_norms"`` and
        ``"spectral_norms"`` of shape (R, l) for ``"layer_norms"``.
    """

    params: tuple
    history: dict


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
          igr_h=None, compiled=None):
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

    Returns
    -------
    TrainResult

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
    if not isinstance(c.backend, AutodiffBackend):
        for p in penalties:
            if isinstance(p, GCPenalty):
                raise ValueError(
                    "GCPenalty has no analytic gradient in the numpy backend; "
                    "train with backend='jax', 'torch' or 'autograd'"
                )

    compiled = _check_compiled(compiled, c.backend, penalties, steps)
    history = {"step": []}

    def record(step, current):
        history["step"].append(step)
        for name in metrics:
            for key, value in _metric_values(name, mlp, current, c.X, y, c.loss, igr_h).items():
                history.setdefault(key, []).append(value)

    current = c.params
    record(0, current)
    with c:
        step_fn = _step_function(c.backend, mlp, c.loss, penalties, lr, compiled)
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
            out = step_fn(flat, Xb, tb)
            if lr is None:
                grads = tuple(tuple(pair) for pair in c.numpy(_pairs(out)))
                current = tuple(optimizer.update(mlp, current, grads, step))
                flat = _flat(c.native_params(current))
            else:
                flat = out
            if (record_every is not None and step % record_every == 0) or step == steps:
                if lr is not None:
                    current = tuple(tuple(pair) for pair in c.numpy(_pairs(flat)))
                if history["step"][-1] != step:
                    record(step, current)
        if lr is not None:
            current = tuple(tuple(pair) for pair in c.numpy(_pairs(flat)))
    return TrainResult(current, {key: np.asarray(value) for key, value in history.items()})
