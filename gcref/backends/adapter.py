"""The per-chunk interface every model is measured through.

:mod:`gcref.models` writes each measure once on these primitives and owns the data loop,
the float64 accumulation and the reduction across processes. The adapters are

- :class:`gcref.backends.mlp_model.MLPModel`: a :class:`gcref.MLP` with its parameters
  on one MLP backend (the ``numpy`` backend supplies its hand-derived primitives; the
  ``autograd``, ``jax`` and ``torch`` backends differentiate the same MLP);
- :class:`gcref.backends.torch_model.TorchModel`: any ``torch.nn.Module``;
- :class:`gcref.backends.jax_model.JaxModel`: a JAX ``apply(params, x)`` with its pytree.

Index conventions: ``n`` examples in the chunk, ``k`` outputs, ``d`` input features (the
product of ``input_shape``), ``P`` probes, ``p`` parameters in ``T`` tensors; ``J(x) =
df/dx`` of shape ``(k, d)``; ``J_theta(x) = df/dtheta`` of shape ``(k, p)``.
"""

from __future__ import annotations

import contextlib

import numpy as np

__all__ = ["ModelAdapter"]


class ModelAdapter:
    """A model as gcref sees it: per-chunk primitives on its own arrays.

    Each primitive receives one chunk: ``X`` an array of any kind (NumPy, the
    framework's own) of shape ``(n, *input_shape)``, ``targets`` a float64 NumPy array
    ``(n, k)`` from :meth:`gcref.losses.Loss.prepare_targets`. Adapters convert to their
    own arrays, on the model's device and in the model's dtype.

    Parameters are flattened in one fixed order (:meth:`parameter_vector`), tensor by
    tensor (:meth:`parameter_names`). "Native vectors" are whatever the adapter adds with
    ``+`` and converts with :meth:`to_numpy` (a float64 tensor on the model's device in
    torch; a float64 NumPy array elsewhere).

    Every example must be computed independently of the others in its chunk (a
    ``BatchNorm`` in training mode couples them): adapters evaluate the model in
    inference mode.

    To measure a model of a new kind, subclass this and implement the primitives; every
    function of :mod:`gcref.models` then works on it (see the README's architecture
    section).
    """


    def outputs(self, X):
        """``f(X)`` as float64 NumPy, shape ``(n, k)``."""
        raise NotImplementedError

    def output_dim(self, X):
        """``k``, the number of outputs, for inputs shaped like ``X``.

        The default runs the model on one example; adapters may answer without running it.
        """
        return self.outputs(X[:1]).shape[1]

    #: Whether examples are computed independently by construction (a gcref MLP): the
    #: measures then skip their check for batch statistics.
    examples_independent = False

    def independence_cache(self):
        """A set in which the measures remember the input shapes already checked for
        batch statistics, or ``None`` to check on every call (the default).

        Whether a model couples the examples of a batch is a property of its structure,
        not of its weights: adapters that can tell one model from another keep the set
        per model, so that the check costs its forward passes once per model and shape.
        """
        return None

    def rounding_tolerance(self):
        """``(rtol, atol)`` within which two evaluations of the same outputs may differ."""
        from gcref.tolerances import tolerance

        return tolerance(np.float32)

    def session(self):
        """A context for one measure call: work done once, not per chunk.

        The measures of :mod:`gcref.models` run every chunk of a call inside it. Adapters
        use it to switch modes, place parameters and find theta once (see
        :meth:`gcref.backends.torch_model.TorchModel.session`); the default does nothing.
        """
        return contextlib.nullcontext(self)

    #: Whether :meth:`begin` returns before the work is done (JAX); gcref.models then
    #: begins the next chunk of a batch before it completes one.
    asynchronous = False

    def begin(self, primitive, *args):
        """Start primitive ``primitive`` (a method's name) on a chunk; return a function that
        completes it and returns what the primitive returns.

        For an adapter whose framework computes asynchronously (:attr:`asynchronous`:
        JAX), gcref.models begins the next chunk of a batch before it completes this one,
        so that one chunk is prepared while the other computes. The default computes at
        once.
        """
        result = getattr(self, primitive)(*args)
        return lambda: result

    def check_batch(self, X, name):
        """Validate one batch before it is cut into chunks; return it (possibly converted).

        ``name`` (``"data"``, ``"data batch 3"``) is what the error calls it. The default
        accepts it: the primitives check each chunk themselves.
        """
        return X

    def check_input_derivatives(self, X, name):
        """Refuse a batch on which derivatives with respect to the input are undefined.

        Called before the input-Jacobian measures (GC and its estimate); the default
        accepts every batch that :meth:`check_batch` accepted.
        """

    def jacobian_sq_norms(self, X, mode):
        """``||J(x_n)||_F^2`` per example, float64 NumPy ``(n,)``.

        ``mode`` is ``"reverse"`` (k input-only vector-Jacobian products sharing one
        forward pass, no weight gradient) or ``"forward"`` (d Jacobian-vector products).
        Both give the same numbers; the choice is one of speed.
        """
        raise NotImplementedError

    def probe_sq_norms(self, X, probes):
        """``||v_{n,p}^T J(x_n)||^2``, float64 NumPy ``(n, P)``, for ``probes`` of shape ``(n, P, k)``."""
        raise NotImplementedError

    def parameter_names(self):
        """The names of theta's ``T`` tensors, in the order of :meth:`parameter_vector`."""
        raise NotImplementedError

    def output_grad_sq_norms(self, X):
        """``||grad_p f(x_n)||_F^2`` summed over the k outputs, per tensor p: float64 NumPy ``(n, T)``."""
        raise NotImplementedError

    def loss_grad_sq_norms(self, X, targets, loss):
        """Per-example losses ``(n,)`` and ``||grad_p l_n||^2`` per tensor ``(n, T)``, float64 NumPy."""
        raise NotImplementedError

    def loss_grad_sum(self, X, targets, loss):
        """``(sum_n l_n, sum_n grad_theta l_n)``: a float and a native float64 vector ``(p,)``.

        The vector must be a new one on every call, not a buffer the adapter reuses: the
        caller keeps the first chunk's vector as its running sum."""
        raise NotImplementedError

    def loss_grad_sum_and_sq_norms(self, X, targets, loss):
        """``(sum_n l_n, sum_n grad_theta l_n, ||grad_p l_n||^2 (n, T))``: what the IGR terms need.

        The default calls :meth:`loss_grad_sq_norms` and :meth:`loss_grad_sum`; adapters
        that can take both from one backward pass override it.
        """
        _, sq_norms = self.loss_grad_sq_norms(X, targets, loss)
        total, grad = self.loss_grad_sum(X, targets, loss)
        return total, grad, sq_norms

    def loss_hvp_sum(self, X, targets, loss, vector):
        """``sum_n H_n v`` with ``H_n`` the Hessian of ``l_n``; ``vector`` native ``(p,)``.

        ``vector`` is :meth:`to_native_vector`'s float64 vector, or the array
        :meth:`as_native_vector` kept (any floating dtype).

        Returns a native ``(p,)`` vector in float64 or the parameters' dtype, or any value
        that adds to another of its kind with ``+`` and that :meth:`to_numpy` and
        :meth:`to_numpy_copy` turn into one (the torch adapter keeps one tensor per
        parameter). The caller adds the chunks' values pairwise and the few partial sums
        in float64. A new value on every call, as for :meth:`loss_grad_sum`."""
        raise NotImplementedError

    def per_example_penalty_grad_sum(self, X, targets, loss):
        """``sum_n H_n grad_theta l_n``, half the gradient of ``sum_n ||grad_theta l_n||^2``: native ``(p,)``.

        A new vector on every call, as for :meth:`loss_grad_sum`."""
        raise NotImplementedError

    def parameter_vector(self):
        """The parameters, flattened in the adapter's fixed order, float64 NumPy ``(p,)``."""
        raise NotImplementedError

    def n_parameters(self):
        """``p``, the number of parameters; the default flattens :meth:`parameter_vector`."""
        return int(self.parameter_vector().shape[0])

    def as_native_vector(self, vector, name):
        """``vector`` checked and kept as it is if it is already an array of the adapter's
        framework (on its device, in its dtype), else ``None`` (the caller converts it
        through NumPy).

        Checked: shape ``(p,)``, a floating dtype, finite values (a ``ValueError`` naming
        ``name`` otherwise). The default takes none: a NumPy array is the host's own.
        """
        return None

    def to_native_vector(self, vector):
        """A float64 NumPy ``(p,)`` vector as a native float64 vector on the model's device.

        The default keeps it a float64 NumPy array (checked to have one entry per
        parameter): the native vectors of adapters whose frameworks add vectors on the
        host.
        """
        vector = np.asarray(vector, dtype=np.float64)
        p = self.n_parameters()
        if vector.shape != (p,):
            raise ValueError(
                f"vector must have shape ({p},), one entry per parameter; got {vector.shape}"
            )
        return vector

    def to_numpy(self, x):
        """A native array as NumPy (float64 kept)."""
        raise NotImplementedError

    def to_numpy_copy(self, x):
        """A native vector as a new float64 NumPy array, which the caller may write to.

        The default copies :meth:`to_numpy`'s array (which may be the adapter's own or
        read-only); adapters that can convert and copy in one pass override it.
        """
        return np.array(self.to_numpy(x), dtype=np.float64)

    def vector_sq_norm(self, vector):
        """``||v||^2`` of a native vector, as a float (on the host only at the end)."""
        v = self.to_numpy(vector).astype(np.float64)
        return float(v @ v)

    def all_reduce_sum(self, x):
        """Sum ``x`` (float64 NumPy, or a native vector) over cooperating processes.

        The identity unless the framework runs several processes (``torch.distributed``).
        """
        return x

    def input_features(self, X):
        """``d``, the number of input features of one example."""
        return int(np.prod(X.shape[1:]))
