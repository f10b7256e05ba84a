"""Users' own JAX ``apply(params, x)`` functions as a :class:`~gcref.backends._base.ModelAdapter`.

The MLP backend of the same framework is :mod:`gcref.backends.jax`.
"""

from __future__ import annotations

import contextlib

import numpy as np

from gcref._checks import all_finite
from gcref.backends.adapter import ModelAdapter

# -- users' own models ---------------------------------------------------------------------

#: ``(apply, primitive name, static arguments)`` -> :class:`_Primitive`, shared by every
#: :class:`JaxModel` of the same ``apply`` (``gcref.models`` wraps the model anew on each call).
_PRIMITIVES = {}
#: k by (apply, input shape, dtype, parameter structure), from shapes alone.
_OUTPUT_DIMS = {}
#: Input shapes each ``apply`` (and parameter structure) was checked for batch statistics
#: with (see :func:`gcref.models._checked`).
_CHECKED_SHAPES = {}


class _Primitive:
    """One ``jax.jit``-compiled per-chunk function and the batch sizes it was compiled for."""

    def __init__(self, fn):
        import jax

        self.jitted = jax.jit(fn)
        self.sizes = {}

    def padded_size(self, signature, n, multiple):
        """The batch size to run ``n`` examples at: a compiled size if one is large enough.

        The last chunk of a data set is usually smaller than the others; padding it to a
        size already compiled costs at most one chunk of computation instead of a
        compilation (measured: see ``JaxModel``).
        """
        sizes = self.sizes.setdefault(signature, set())
        n_pad = -(-n // multiple) * multiple
        larger = [s for s in sizes if s >= n_pad]
        if larger:
            return min(larger)
        sizes.add(n_pad)
        return n_pad


class _OwnError(ValueError, TypeError):
    """A complaint of gcref's about what ``apply`` returned (passed on as it is)."""


def _apply_checked(apply, params, X):
    """``apply(params, X)``, checked (while tracing) to be a float array of shape ``(n, k)``."""
    import jax.numpy as jnp

    out = apply(params, X)
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != X.shape[0]:
        raise _OwnError(
            f"apply(params, x) must return an array of shape (n, k) for a batch x of n "
            f"examples; for x of shape {tuple(X.shape)} it returned "
            f"{type(out).__name__ if shape is None else f'shape {tuple(shape)}'}"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise _OwnError(f"apply(params, x) must return floating-point values; got {out.dtype}")
    return out


def _with_input_scan(fn):
    """``fn`` that also returns whether its chunk ``X`` holds a NaN or an infinity.

    The scan is part of the compiled function, so it reads the chunk where the
    computation reads it. A separate NumPy scan before the call read it from memory
    instead: after the previous chunk's computation, a batch is out of the cache, and
    the scan of an MLP's 128 x 768 float32 chunk took 160 us there against 24 us in the
    cache (CPU, issue 17). Integer chunks (token ids) are finite by their dtype.
    Under XLA's fast-math flags that drop NaN and infinity semantics
    (``--xla_cpu_fast_math_honor_nans=false``), XLA may drop this scan too.
    """
    import jax.numpy as jnp

    def scanned(params, X, *args):
        if jnp.issubdtype(X.dtype, jnp.floating):
            bad = jnp.logical_not(jnp.all(jnp.isfinite(X)))
        else:
            bad = jnp.asarray(False)
        return fn(params, X, *args), bad

    return scanned


def _finite(jax, X):
    """Whether every entry of a floating NumPy or JAX array ``X`` is finite (integers are)."""
    if not np.issubdtype(X.dtype, np.floating):
        return True
    if isinstance(X, np.ndarray):
        return all_finite(X)
    return bool(jax.numpy.all(jax.numpy.isfinite(X)))


def _overridden(model, name):
    """Whether method ``name`` of ``model`` is not JaxModel's own (a subclass's, or a patch
    on the instance or the class).

    :meth:`JaxModel.begin` then calls it rather than JaxModel's begun form of it.
    """
    return name in vars(model) or getattr(type(model), name) is not _OWN_PRIMITIVES[name]


def _leaf_sq_sums(tree):
    """``sum(leaf^2)`` for each leaf, in ``tree_leaves`` order: shape ``(T,)``."""
    import jax
    import jax.numpy as jnp

    return jnp.stack([jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(tree)])


def _per_example_sq_sums(rows):
    """``rows`` of shape ``(m, n, ...)`` -> ``sum over m and ... of rows^2``, shape ``(n,)``."""
    import jax.numpy as jnp

    m, n = rows.shape[:2]
    return jnp.sum(jnp.square(rows).reshape(m, n, -1), axis=(0, 2))


def _outputs_fn(apply):
    def outputs(params, X):
        return _apply_checked(apply, params, X)

    return outputs


def _jacobian_reverse_fn(apply):
    import jax
    import jax.numpy as jnp

    def jacobian_sq_norms(params, X):
        # Per example (vmap over the chunk): one forward pass and k input-only VJPs, the
        # one-hot cotangents vmapped (params are constants: no weight gradient). Measured
        # on the CPU against one VJP of the whole chunk with the cotangent e_c on every
        # row: 1.3x (small CNN, 16x16x3) to 1.9x (MLP) faster, with the same numbers.
        _apply_checked(apply, params, X[:1])

        def one(x):
            out, vjp = jax.vjp(lambda x: apply(params, x[None])[0], x)
            rows = jax.vmap(lambda v: vjp(v)[0])(jnp.eye(out.shape[0], dtype=out.dtype))
            return jnp.sum(jnp.square(rows))

        return jax.vmap(one)(X)

    return jacobian_sq_norms


def _jacobian_forward_fn(apply):
    import jax
    import jax.numpy as jnp

    def jacobian_sq_norms(params, X):
        # One linearisation, d JVPs with the tangent e_j on every row (columns of J).
        _, jvp = jax.linearize(lambda x: _apply_checked(apply, params, x), X)
        d = int(np.prod(X.shape[1:]))
        basis = jnp.eye(d, dtype=X.dtype).reshape(d, 1, *X.shape[1:])
        return _per_example_sq_sums(jax.vmap(lambda t: jvp(jnp.broadcast_to(t, X.shape)))(basis))

    return jacobian_sq_norms


def _probe_fn(apply):
    import jax
    import jax.numpy as jnp

    def probe_sq_norms(params, X, probes):
        _, vjp = jax.vjp(lambda x: _apply_checked(apply, params, x), X)
        if probes.shape[1] == 1:
            # One probe: one VJP, not a vmap of one (measured 20% faster on a small MLP).
            (row,) = vjp(probes[:, 0])
            return jnp.sum(jnp.square(row).reshape(X.shape[0], -1), axis=1)[:, None]
        rows = jax.vmap(lambda v: vjp(v)[0], in_axes=1)(probes)
        P, n = rows.shape[:2]
        return jnp.sum(jnp.square(rows).reshape(P, n, -1), axis=2).T

    return probe_sq_norms


def _leaf_sq_columns(grads):
    """Per-example gradients (a pytree of ``(n, ...)`` leaves) -> ``||grad_p||^2``, ``(n, T)``."""
    import jax

    return jax.vmap(_leaf_sq_sums)(grads)


def _layer_plan(apply, norm_method, params, X):
    """The norm identities' plan of ``apply`` at ``X``'s example shape, or ``None`` (``vmap``).

    Run while tracing: from shapes alone.
    """
    if norm_method == "vmap":
        return None
    import jax

    from gcref.backends.jax_layers import layer_plan

    shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    example = jax.ShapeDtypeStruct((1, *X.shape[1:]), X.dtype)
    plan, why = layer_plan(lambda p, x: _apply_checked(apply, p, x), shapes, example)
    if plan is None and norm_method == "identity":
        raise ValueError(
            f"norm_method='identity' does not apply to this function: {why}; "
            "use norm_method='auto' (falls back to vmap(grad)) or 'vmap'"
        )
    return plan


def _recorded(plan, leaves, X, perturbations):
    """The recorded forward pass over a chunk: outputs ``(n, k)`` and per-site records."""
    import jax

    from gcref.backends.jax_layers import recorded_forward

    outs, records = jax.vmap(
        lambda x, e: recorded_forward(plan, leaves, x[None], e), in_axes=(0, 0)
    )(X, perturbations)
    return outs[0][:, 0], records


def _identity_loss_norms(plan, loss, params, X, targets, weights, param_grad):
    """One recorded forward and one backward pass: ``(sum w l, l (n,), grad or None, (n, T))``.

    The gradient with respect to each site's zero perturbation is its output cotangent;
    with ``param_grad`` the same backward pass also gives ``sum_n w_n grad l_n``.
    """
    import jax
    import jax.numpy as jnp

    from gcref.backends.jax_layers import site_sq_norms, zero_perturbations

    leaves, treedef = jax.tree_util.tree_flatten(params)

    def total(lv, eps):
        out, records = _recorded(plan, lv, X, eps)
        per = loss.per_example(out, targets)
        return jnp.sum(weights * per), (per, records)

    argnums = (0, 1) if param_grad else 1
    (value, (per, records)), grads = jax.value_and_grad(total, argnums=argnums, has_aux=True)(
        leaves, zero_perturbations(plan, X.shape[0])
    )
    if not param_grad:
        norms = jax.vmap(lambda r, g: site_sq_norms(plan, leaves, r, g))(records, grads)
        return value, per, None, norms
    grad_leaves, cotangents = grads
    norms, kernel_grads = jax.vmap(
        lambda r, g: site_sq_norms(plan, leaves, r, g, conv_grads=True)
    )(records, cotangents)
    # A convolution kernel's summed gradient is the sum of its per-example gradients,
    # which the norms formed already (padded rows have zero cotangents): the batched
    # pass's own kernel gradient is then unused and compiled away. Measured on the small
    # CNN (CPU, chunks of 128): the fused primitive 12% slower than jit(vmap(grad))
    # before, when every kernel was differentiated twice.
    grad_leaves = list(grad_leaves)
    for leaf, g in kernel_grads.items():
        grad_leaves[leaf] = jnp.sum(g, axis=0)
    return value, per, jax.tree_util.tree_unflatten(treedef, grad_leaves), norms


def _per_example_loss_grads(apply, loss, params, X, targets):
    """``vmap(value_and_grad)``: per-example losses ``(n,)`` and gradients (``(n, ...)`` leaves)."""
    import jax

    def one(xi, ti):
        def loss_n(p):
            return loss.per_example(_apply_checked(apply, p, xi[None]), ti[None])[0]

        return jax.value_and_grad(loss_n)(params)

    return jax.vmap(one)(X, targets)


def _output_grad_fn(apply, norm_method):
    import jax
    import jax.numpy as jnp

    from gcref.backends.jax_layers import site_sq_norms, zero_perturbations

    def output_grad_sq_norms(params, X):
        plan = _layer_plan(apply, norm_method, params, X)
        if plan is None:
            def one(xi):
                jac = jax.jacrev(lambda p: _apply_checked(apply, p, xi[None])[0])(params)
                return _leaf_sq_sums(jac)

            return jax.vmap(one)(X)
        # One recorded forward pass, k backward passes to the sites only (no weight
        # gradient), each with the cotangent e_o on every example.
        leaves = jax.tree_util.tree_leaves(params)
        out, vjp, records = jax.vjp(
            lambda eps: _recorded(plan, leaves, X, eps),
            zero_perturbations(plan, X.shape[0]),
            has_aux=True,
        )
        k = out.shape[1]

        def per_output(c):
            (cotangents,) = vjp(c)
            return jax.vmap(lambda r, g: site_sq_norms(plan, leaves, r, g))(records, cotangents)

        # One output after another (lax.map): a vmap over the outputs around the vmap over
        # the examples has no batching rule for a convolution's kernel gradient (raised
        # NotImplementedError under shard_map with JAX 0.10.2), and holds k cotangents.
        basis = jnp.broadcast_to(jnp.eye(k, dtype=out.dtype)[:, None, :], (k, *out.shape))
        return jnp.sum(jax.lax.map(per_output, basis), axis=0)

    return output_grad_sq_norms


def _loss_grad_norms_fn(apply, loss, norm_method):
    import jax
    import jax.numpy as jnp

    def loss_grad_sq_norms(params, X, targets):
        plan = _layer_plan(apply, norm_method, params, X)
        if plan is None:
            values, grads = _per_example_loss_grads(apply, loss, params, X, targets)
            return values, _leaf_sq_columns(grads)
        ones = jnp.ones(X.shape[0], dtype=jax.tree_util.tree_leaves(params)[0].dtype)
        _, values, _, norms = _identity_loss_norms(
            plan, loss, params, X, targets, ones, param_grad=False
        )
        return values, norms

    return loss_grad_sq_norms


def _loss_grad_sum_norms_fn(apply, loss, norm_method):
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    def loss_grad_sum_and_sq_norms(params, X, targets, weights):
        # One backward pass for the summed gradient and the per-example norms.
        plan = _layer_plan(apply, norm_method, params, X)
        if plan is None:
            values, grads = _per_example_loss_grads(apply, loss, params, X, targets)
            grad = jax.tree_util.tree_map(lambda g: jnp.tensordot(weights, g, axes=1), grads)
            return jnp.sum(weights * values), ravel_pytree(grad)[0], _leaf_sq_columns(grads)
        value, _, grad, norms = _identity_loss_norms(
            plan, loss, params, X, targets, weights, param_grad=True
        )
        return value, ravel_pytree(grad)[0], norms

    return loss_grad_sum_and_sq_norms


def _weighted_loss_sum(apply, loss, params, X, targets, weights):
    """``sum_n w_n l_n``: the weights are 0 on padding rows, 1 elsewhere."""
    import jax.numpy as jnp

    per = loss.per_example(_apply_checked(apply, params, X), targets)
    return jnp.sum(weights * per)


def _loss_grad_sum_fn(apply, loss):
    import jax
    from jax.flatten_util import ravel_pytree

    def loss_grad_sum(params, X, targets, weights):
        value, grad = jax.value_and_grad(
            lambda p: _weighted_loss_sum(apply, loss, p, X, targets, weights)
        )(params)
        return value, ravel_pytree(grad)[0]

    return loss_grad_sum


def _loss_hvp_sum_fn(apply, loss):
    import jax
    from jax.flatten_util import ravel_pytree

    def loss_hvp_sum(params, X, targets, weights, tangent):
        grad = jax.grad(lambda p: _weighted_loss_sum(apply, loss, p, X, targets, weights))
        return ravel_pytree(jax.jvp(grad, (params,), (tangent,))[1])[0]

    return loss_hvp_sum


def _penalty_grad_sum_fn(apply, loss, norm_method):
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    def per_example_penalty_grad_sum(params, X, targets, weights):
        # Half the gradient of sum_n w_n ||grad l_n||^2: reverse mode over the norm
        # identities (a function of theta equal to the norms), or over vmap(grad).
        plan = _layer_plan(apply, norm_method, params, X)

        def penalty(p):
            if plan is None:
                _, grads = _per_example_loss_grads(apply, loss, p, X, targets)
                norms = _leaf_sq_columns(grads)
            else:
                norms = _identity_loss_norms(
                    plan, loss, p, X, targets, jnp.ones_like(weights), param_grad=False
                )[3]
            return jnp.sum(weights * jnp.sum(norms, axis=1))

        return ravel_pytree(jax.grad(penalty)(params))[0] / 2

    return per_example_penalty_grad_sum


def _with_state(factory):
    """``factory`` for ``apply(params, state, x)``: the state is the primitive's last argument.

    The state (a Flax model's other collections, an Equinox model's non-float arrays) is
    an argument of the compiled function, not a constant folded into it: new values of
    it (running statistics after a training step) reuse the compilation.
    """

    def make(apply, *statics):
        def fn(params, *args):
            *args, state = args
            return factory(lambda p, x: apply(p, state, x), *statics)(params, *args)

        return fn

    return make


_FACTORIES = {
    "outputs": _outputs_fn,
    "reverse": _jacobian_reverse_fn,
    "forward": _jacobian_forward_fn,
    "probes": _probe_fn,
    "output_grad_sq_norms": _output_grad_fn,
    "loss_grad_sq_norms": _loss_grad_norms_fn,
    "loss_grad_sum": _loss_grad_sum_fn,
    "loss_grad_sum_and_sq_norms": _loss_grad_sum_norms_fn,
    "loss_hvp_sum": _loss_hvp_sum_fn,
    "per_example_penalty_grad_sum": _penalty_grad_sum_fn,
}


#: What each output of a primitive is: "sum" over the chunk's examples or one row per
#: example ("rows"); primitives not listed return rows.
_OUTPUTS = {
    "loss_grad_sum": ("sum", "sum"),
    "loss_grad_sum_and_sq_norms": ("sum", "sum", "rows"),
    "loss_hvp_sum": "sum",
    "per_example_penalty_grad_sum": "sum",
}


#: How per-example parameter-gradient norms are computed (see ``JaxModel``).
NORM_METHODS = ("auto", "identity", "vmap")


class JaxModel(ModelAdapter):
    """A JAX ``apply(params, x)`` function with its parameter pytree, for :mod:`gcref.models`.

    Parameters
    ----------
    apply : callable
        ``apply(params, x)`` on a batch ``x`` of shape ``(n, *input_shape)``, returning
        ``(n, k)`` (``apply(params, state, x)`` with ``state``); every example must be
        computed independently of the others. Flax and Equinox models are split into
        these by :func:`gcref.backends.jax_frameworks.adapt`, which
        :func:`gcref.models.wrap` calls.
    params : pytree of float32 or float64 arrays
        theta: all leaves of one dtype, finite (no integer, function or other leaf).
        Floating inputs must have the same dtype; integer inputs (token ids) are passed
        as they are to every measure that does not differentiate with respect to the
        input.
    state : pytree of arrays, optional
        Values ``apply`` reads but gcref holds fixed (a Flax model's ``batch_stats``, an
        Equinox model's integer arrays): an argument of every compiled function, so
        new values of it reuse the compilations.
    shard : bool, optional
        Place each chunk with a ``NamedSharding`` over a 1-D mesh of this process's
        ``jax.local_devices()`` along the batch axis (parameters replicated), so that one
        process uses every device. Default: when there is more than one local device.
    norm_method : {"auto", "identity", "vmap"}
        How per-example parameter-gradient norms (and their gradient) are computed.
        ``"identity"``: from each layer's input and output cotangent, recorded in one
        forward and one backward pass (:mod:`gcref.backends.jax_layers`: dense,
        convolution, bias and scale parameters each entering ``apply`` once), without
        per-example gradients; an error if ``apply`` uses a parameter otherwise.
        ``"vmap"``: ``jax.vmap`` of ``jax.grad`` (per-example gradients).
        ``"auto"`` (default): the identities where they apply, else ``vmap``.

    Notes
    -----
    Each primitive is ``jax.jit``-compiled once per ``apply`` and per chunk shape and
    dtype; the compilations are shared by every ``JaxModel`` of the same ``apply``
    object (pass the same function, not a new ``lambda``, to reuse them). A chunk smaller
    than a size already compiled (the last chunk of a data set) is padded to that size
    by repeating its last example, and chunks are padded to a multiple of the device
    count when sharded; padding rows are sliced off per-example results and weighted by
    zero in sums. Padding the last chunk pays: it costs at most one chunk of computation,
    while compiling a new size cost 3 to 4 full chunks on the CPU here (the small CNN of
    :mod:`gcref.nets.jax` on 16x16x3 images, chunks of 256: 1.5 s against 0.40 s for
    exact GC, 3.5 s against 1.3 s for the per-example output-gradient norms), and more
    on an accelerator, where a chunk is fast and compilation is not.

    float64: every call runs inside ``jax.enable_x64(True)`` when the parameters are
    float64; float32 models compute in float32 (their per-example squared norms summed
    in float32 inside the compiled function) and every result is returned, and
    accumulated by :mod:`gcref.models`, in NumPy float64.

    Parameter vectors (:meth:`parameter_vector`, :meth:`loss_grad_sum`,
    :meth:`loss_hvp_sum`) follow ``jax.flatten_util.ravel_pytree``: the leaves in
    ``jax.tree_util.tree_leaves`` order, each flattened in C order. They are NumPy
    float64 arrays, the "native vectors" of this adapter: JAX has float64 only inside
    ``jax.enable_x64``, while :mod:`gcref.models` adds vectors outside of it.

    Several processes: after ``jax.distributed.initialize``, each process passes its
    own shard of the data and :meth:`all_reduce_sum` adds every process's sums
    (``process_allgather`` in float64), so that every process gets the values of the
    whole data set (docs/math.md sections 2 and 5 as for one process); chunks are only
    sharded over each process's local devices.

    :meth:`loss_grad_sum_and_sq_norms`, the IGR terms' primitive, takes the summed
    gradient and the per-example norms from one backward pass with either norm method
    (the vmap one sums the per-example gradients it forms anyway).

    Each compiled primitive also scans its chunk for NaN and infinities, and the result
    is not returned when it finds one (``ValueError: X contains NaN or infinite
    values``). :meth:`begin` dispatches a chunk without waiting for it, so that
    :mod:`gcref.models` prepares the next chunk of a batch while one computes.
    """

    def __init__(self, apply, params, *, state=None, shard=None, norm_method="auto"):
        import jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        from gcref.backends import get_backend

        if not callable(apply):
            raise TypeError(
                f"apply must be a function apply(params, x); got {type(apply).__name__}"
            )
        try:
            hash(apply)
        except TypeError:
            raise TypeError(
                "apply must be hashable (a function): its compilations are cached by it"
            ) from None
        if norm_method not in NORM_METHODS:
            raise ValueError(
                f"norm_method must be one of {NORM_METHODS}; got {norm_method!r}"
            )
        self.norm_method = norm_method
        self._tangent = (None, None)
        self._session_depth, self._session_tangent = 0, None
        self._jax = jax
        self._backend = get_backend("jax")
        self.apply = apply
        leaves, treedef = _checked_param_leaves(jax, params)
        self.dtype = leaves[0].dtype
        self._treedef = treedef
        self._shapes = tuple(leaf.shape for leaf in leaves)
        self._stateful = state is not None
        state_leaves, state_treedef = _checked_state_leaves(jax, state)
        self._state_structure = (
            state_treedef, tuple((leaf.shape, str(leaf.dtype)) for leaf in state_leaves)
        ) if self._stateful else None
        devices = jax.local_devices()
        self.shard = len(devices) > 1 if shard is None else bool(shard)
        self._n_devices = len(devices) if self.shard else 1
        with self._backend.scope(self.dtype):
            if self.shard:
                mesh = Mesh(np.array(devices), ("batch",))
                self._batch_sharding = NamedSharding(mesh, PartitionSpec("batch"))
                self._replicated = NamedSharding(mesh, PartitionSpec())
            else:
                self._batch_sharding = self._replicated = None
            self.params = self._put_params(leaves)
            self.state = None
            if self._stateful:
                tree = jax.tree_util.tree_unflatten(state_treedef, state_leaves)
                self.state = (
                    jax.device_put(tree, self._replicated) if self.shard
                    else jax.tree_util.tree_map(jax.numpy.asarray, tree)
                )

    def __repr__(self):
        return f"JaxModel({getattr(self.apply, '__name__', type(self.apply).__name__)})"

    @contextlib.contextmanager
    def session(self):
        """One measure call: the HVP's tangent is found by the identity of the vector.

        gcref.models passes one vector object with every chunk of a call; inside the
        session its placed leaves are reused without comparing the vector entry by entry
        (an O(p) pass per chunk, 4% of an MLP's HVP). Outside, a vector is compared with
        the last one placed, so one changed in place is placed again. Re-entrant.
        """
        self._session_depth += 1
        try:
            yield self
        finally:
            self._session_depth -= 1
            if not self._session_depth:
                self._session_tangent = None

    def independence_cache(self):
        key = (self.apply, self._treedef, self._shapes, self._state_structure)
        return _CHECKED_SHAPES.setdefault(key, set())

    def rounding_tolerance(self):
        from gcref.tolerances import tolerance

        return tolerance(self.dtype)

    def check_batch(self, X, name):
        """Run the model on the batch's shapes only (no compilation): a wrong input shape is
        named here, not in a trace deep inside JAX.

        Returns the batch, its dtype checked (a NumPy array stays the same object). Its
        values are scanned for NaN and infinities chunk by chunk, inside each compiled
        primitive (:func:`_with_input_scan`), before any result is returned; here too
        when ``jax_debug_nans`` or ``jax_debug_infs`` is on.
        """
        with self._backend.scope(self.dtype):
            checked = self._checked_batch(X)
            jax = self._jax
            if (jax.config.jax_debug_nans or jax.config.jax_debug_infs) and not _finite(
                jax, checked
            ):
                # JAX's NaN debugging re-runs a call op by op and raises at the first NaN
                # it computes, before the compiled scan could name the input.
                raise ValueError(f"{name}: X contains NaN or infinite values")
        try:
            self.output_dim(X)
        except _OwnError:
            raise
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{name}: apply(params, x) cannot be called on examples of shape "
                f"{tuple(X.shape[1:])}: {err}"
            ) from err
        return checked

    def check_input_derivatives(self, X, name):
        dtype = X.dtype if hasattr(X, "dtype") else np.asarray(X).dtype
        if not np.issubdtype(dtype, np.floating):
            raise TypeError(
                f"{name}: X must have a floating dtype for derivatives with respect to the "
                f"input; got {dtype}. For token ids (an embedding lookup), measure at the "
                "embedding's output: write apply as head(params, embed(params, x)) and pass "
                "embed(params, X) to the measure of head; for numbers, convert them with "
                f"X.astype(numpy.{self.dtype})"
            )

    # -- placement -------------------------------------------------------------------
    def _put_params(self, leaves):
        """Leaves (NumPy or JAX) as the parameter pytree, replicated when sharding."""
        jax = self._jax
        tree = jax.tree_util.tree_unflatten(self._treedef, list(leaves))
        if self.shard:
            return jax.device_put(tree, self._replicated)
        return jax.tree_util.tree_map(self._backend.xp.asarray, tree)

    def _checked_batch(self, X, name="X"):
        """``X`` as a NumPy or JAX array of the parameters' dtype (or of integers).

        Its values are scanned in the compiled primitives (:func:`_with_input_scan`).
        """
        if type(X) is np.ndarray and X.dtype == self.dtype:
            return X  # the common case, once per chunk: nothing to convert or refuse
        jax = self._jax
        if not isinstance(X, jax.Array):
            X = np.asarray(X.detach().cpu() if hasattr(X, "detach") else X)
        if np.issubdtype(X.dtype, np.integer):
            # Token ids for an embedding: kept as they are, for every measure that does not
            # differentiate with respect to the input (those call check_input_derivatives).
            return X
        if not np.issubdtype(X.dtype, np.floating):
            raise TypeError(
                f"{name} must hold floating-point values ({self.dtype}, the parameters' "
                f"dtype), or integers (token ids); got {X.dtype}. Convert it with "
                f"{name}.astype(numpy.{self.dtype})"
            )
        if X.dtype != self.dtype:
            raise TypeError(
                f"{name} has dtype {X.dtype} but the model's parameters are {self.dtype}; "
                "mixed dtypes are not promoted: convert one of them"
            )
        return X

    def _place(self, a, n_pad):
        """``a`` padded to ``n_pad`` rows by repeating its last row, on the devices."""
        jax, jnp = self._jax, self._backend.xp
        n = a.shape[0]
        if n_pad > n:
            lib = np if isinstance(a, np.ndarray) else jnp
            a = lib.concatenate([a, lib.repeat(a[-1:], n_pad - n, axis=0)])
        if self.shard:
            return jax.device_put(a, self._batch_sharding)
        # A NumPy chunk goes to the compiled function as it is: jit's own transfer is
        # cheaper than a separate jnp.asarray dispatch per chunk.
        return a

    def _start(self, name, statics, X, *rows, weights=False, extra=()):
        """Dispatch primitive ``name`` on a checked, padded and placed chunk.

        Returns a function that waits for the result and returns ``(out, n)``, or raises
        if the compiled scan found a NaN or an infinity in the chunk. ``rows`` are NumPy
        arrays with one row per example (targets, probes), cast to the model's dtype;
        ``weights`` appends the 0/1 padding mask.
        """
        n_batched = 1 + len(rows) + int(weights)
        if self._stateful:
            extra = (*extra, self.state)
        key = (self.apply, name, statics, self._n_devices if self.shard else 0, n_batched,
               self._stateful)
        if key not in _PRIMITIVES:
            factory = _FACTORIES[name]
            fn = (_with_state(factory) if self._stateful else factory)(self.apply, *statics)
            if self.shard:
                fn = self._sharded(fn, n_batched, len(extra), _OUTPUTS.get(name, "rows"))
            _PRIMITIVES[key] = _Primitive(_with_input_scan(fn))
        primitive = _PRIMITIVES[key]
        with self._backend.scope(self.dtype):
            X = self._checked_batch(X)
            n = X.shape[0]
            signature = (tuple(X.shape[1:]), X.dtype, self._treedef, self._shapes,
                         self._state_structure, self.dtype, self.shard)
            n_pad = primitive.padded_size(signature, n, self._n_devices)
            arrays = [self._place(X, n_pad)]
            arrays += [self._place(np.asarray(r, dtype=self.dtype), n_pad) for r in rows]
            if weights:
                arrays.append(self._place((np.arange(n_pad) < n).astype(self.dtype), n_pad))
            out, bad = primitive.jitted(self.params, *arrays, *extra)

        def result():
            if np.asarray(bad):
                raise ValueError("X contains NaN or infinite values")
            return out, n

        return result

    def _sharded(self, fn, n_batched, n_replicated, outputs):
        """``fn`` run by ``shard_map`` on each device's slice of the batch.

        Each device computes its own examples; ``outputs`` says which results are sums
        (``"sum"``, ``psum``-ed over the devices) and which are rows (``"rows"``),
        one kind or a tuple of kinds, one per result. ``check_vma=False`` keeps the
        per-device gradient with respect to the replicated parameters (with it, JAX
        would sum the gradients of every device, which is wrong for per-example
        quantities). ``shard_map`` rather than sharding propagation under ``jit``: on
        the CPU with JAX 0.10.2, the latter returned wrong per-example parameter
        gradients of a convolution for the examples of the second device.
        """
        jax = self._jax
        batch, replicated = self._batch_sharding.spec, self._replicated.spec
        kinds = outputs if isinstance(outputs, tuple) else (outputs,)

        def local(params, *args):
            out = fn(params, *args)
            parts = out if isinstance(outputs, tuple) else (out,)
            parts = tuple(
                jax.lax.psum(part, "batch") if kind == "sum" else part
                for part, kind in zip(parts, kinds)
            )
            return parts if isinstance(outputs, tuple) else parts[0]

        specs = tuple(replicated if kind == "sum" else batch for kind in kinds)
        return jax.shard_map(
            local,
            mesh=self._batch_sharding.mesh,
            in_specs=(replicated, *[batch] * n_batched, *[replicated] * n_replicated),
            out_specs=specs if isinstance(outputs, tuple) else specs[0],
            check_vma=False,
        )

    def _begin_rows(self, name, statics, X, *rows):
        done = self._start(name, statics, X, *rows)

        def complete():
            out, n = done()
            return np.asarray(out, dtype=np.float64)[:n]

        return complete

    asynchronous = True

    def begin(self, primitive, *args):
        """Dispatch ``primitive`` on a chunk and return at once; the function returned waits.

        JAX runs a compiled call asynchronously, so gcref.models prepares the next chunk
        of a batch (slicing, checks, probes, the dispatch) while this one computes. On
        the CPU here that hid most of the 0.2 ms of Python work between two chunks of an
        MLP, which run after the computation has left the caches (issue 17). The
        arguments must not change until the work is completed: JAX on the CPU reads a
        NumPy chunk where it lies.
        """
        if primitive not in self._BEGUN or _overridden(self, primitive):
            return super().begin(primitive, *args)
        return getattr(self, "_begin_" + primitive)(*args)

    # -- the ModelAdapter primitives -------------------------------------------------
    def outputs(self, X):
        return self._begin_rows("outputs", (), X)()

    def output_dim(self, X):
        # Shapes only (checked as in every primitive): compiles nothing, unlike running
        # the model on one example.
        jax = self._jax
        key = (self.apply, tuple(X.shape[1:]), X.dtype, self.dtype, self._treedef,
               self._shapes, self._state_structure)
        if key not in _OUTPUT_DIMS:
            with self._backend.scope(self.dtype):
                X = self._checked_batch(X)
                example = jax.ShapeDtypeStruct((1, *X.shape[1:]), X.dtype)
                apply = self.apply
                if self._stateful:
                    state = self.state

                    def apply(params, x):
                        return self.apply(params, state, x)

                out = jax.eval_shape(
                    lambda params, x: _apply_checked(apply, params, x), self.params, example
                )
            _OUTPUT_DIMS[key] = int(out.shape[1])
        return _OUTPUT_DIMS[key]

    def jacobian_sq_norms(self, X, mode):
        return self._begin_jacobian_sq_norms(X, mode)()

    def _begin_jacobian_sq_norms(self, X, mode):
        if mode not in ("reverse", "forward"):
            raise ValueError(f"mode must be 'reverse' or 'forward'; got {mode!r}")
        return self._begin_rows(mode, (), X)

    def probe_sq_norms(self, X, probes):
        return self._begin_probe_sq_norms(X, probes)()

    def _begin_probe_sq_norms(self, X, probes):
        return self._begin_rows("probes", (), X, probes)

    def output_grad_sq_norms(self, X):
        return self._begin_output_grad_sq_norms(X)()

    def _begin_output_grad_sq_norms(self, X):
        return self._begin_rows("output_grad_sq_norms", (self.norm_method,), X)

    def loss_grad_sq_norms(self, X, targets, loss):
        return self._begin_loss_grad_sq_norms(X, targets, loss)()

    def _begin_loss_grad_sq_norms(self, X, targets, loss):
        done = self._start("loss_grad_sq_norms", (loss, self.norm_method), X, targets)

        def complete():
            (values, sq_norms), n = done()
            return (
                np.asarray(values, dtype=np.float64)[:n],
                np.asarray(sq_norms, dtype=np.float64)[:n],
            )

        return complete

    def loss_grad_sum_and_sq_norms(self, X, targets, loss):
        return self._begin_loss_grad_sum_and_sq_norms(X, targets, loss)()

    def _begin_loss_grad_sum_and_sq_norms(self, X, targets, loss):
        done = self._start(
            "loss_grad_sum_and_sq_norms", (loss, self.norm_method), X, targets, weights=True
        )

        def complete():
            (value, grad, sq_norms), n = done()
            return (
                float(value),
                np.asarray(grad, dtype=np.float64),
                np.asarray(sq_norms, dtype=np.float64)[:n],
            )

        return complete

    def loss_grad_sum(self, X, targets, loss):
        return self._begin_loss_grad_sum(X, targets, loss)()

    def _begin_loss_grad_sum(self, X, targets, loss):
        done = self._start("loss_grad_sum", (loss,), X, targets, weights=True)

        def complete():
            (value, grad), _ = done()
            return float(value), np.asarray(grad, dtype=np.float64)

        return complete

    def loss_hvp_sum(self, X, targets, loss, vector):
        return self._begin_loss_hvp_sum(X, targets, loss, vector)()

    def _begin_loss_hvp_sum(self, X, targets, loss, vector):
        # gcref.models passes the same vector for every chunk: it is cut into leaves and
        # placed once (measured: 15% of an MLP's HVP with 265k parameters, chunks of 128).
        # Inside a session the vector object is recognised by identity; otherwise a copy
        # is kept and compared, so a vector changed in place is placed again.
        in_session = self._session_tangent is not None and self._session_tangent[0] is vector
        if in_session:
            tangent = self._session_tangent[1]
        else:
            cached_vector, tangent = self._tangent
            if cached_vector is None or not np.array_equal(cached_vector, vector):
                with self._backend.scope(self.dtype):
                    tangent = self._put_params(self._unflatten(vector))
                self._tangent = (np.array(vector, dtype=np.float64), tangent)
            if self._session_depth:
                self._session_tangent = (vector, tangent)
        done = self._start("loss_hvp_sum", (loss,), X, targets, weights=True, extra=(tangent,))

        def complete():
            # In the parameters' dtype: gcref.models adds the chunks pairwise and only the
            # few partial sums in float64 (a conversion per chunk saved).
            return np.asarray(done()[0])

        return complete

    def per_example_penalty_grad_sum(self, X, targets, loss):
        return self._begin_per_example_penalty_grad_sum(X, targets, loss)()

    def _begin_per_example_penalty_grad_sum(self, X, targets, loss):
        done = self._start(
            "per_example_penalty_grad_sum", (loss, self.norm_method), X, targets, weights=True
        )
        return lambda: np.asarray(done()[0], dtype=np.float64)

    #: The primitives :meth:`begin` dispatches without waiting (``_begin_<name>``).
    _BEGUN = frozenset({
        "jacobian_sq_norms", "probe_sq_norms", "output_grad_sq_norms", "loss_grad_sq_norms",
        "loss_grad_sum_and_sq_norms", "loss_grad_sum", "loss_hvp_sum",
        "per_example_penalty_grad_sum",
    })

    def parameter_names(self):
        paths = self._jax.tree_util.tree_flatten_with_path(self.params)[0]
        return tuple(self._jax.tree_util.keystr(path) or "params" for path, _ in paths)

    def n_parameters(self):
        return sum(int(np.prod(s)) for s in self._shapes)

    def parameter_vector(self):
        leaves = self._jax.tree_util.tree_leaves(self.params)
        return np.concatenate([np.ravel(np.asarray(leaf, dtype=np.float64)) for leaf in leaves])

    def to_native_vector(self, vector):
        vector = np.asarray(vector, dtype=np.float64)
        p = sum(int(np.prod(s)) for s in self._shapes)
        if vector.shape != (p,):
            raise ValueError(
                f"vector must have shape ({p},), one entry per parameter; got {vector.shape}"
            )
        return vector

    def to_numpy(self, x):
        return np.asarray(x)

    def all_reduce_sum(self, x):
        """Sum over the processes of ``jax.distributed`` (the identity in one process).

        Every process gathers every process's ``x`` (``process_allgather``, in float64)
        and adds them in process order, so that all get the same float64 sum.
        """
        jax = self._jax
        if jax.process_count() == 1:
            return x
        from jax.experimental import multihost_utils

        with jax.enable_x64(True):
            gathered = multihost_utils.process_allgather(np.asarray(x, dtype=np.float64))
        return np.sum(np.asarray(gathered, dtype=np.float64), axis=0)

    def _unflatten(self, vector):
        """A float64 ``(p,)`` vector as leaves of the parameters' shapes and dtype."""
        sizes = [int(np.prod(s)) for s in self._shapes]
        pieces = np.split(np.asarray(vector), np.cumsum(sizes)[:-1])
        return [piece.reshape(s).astype(self.dtype) for piece, s in zip(pieces, self._shapes)]


#: JaxModel's own primitives with a begun form, as defined (see :func:`_overridden`).
_OWN_PRIMITIVES = {name: vars(JaxModel)[name] for name in JaxModel._BEGUN}


def _checked_param_leaves(jax, params):
    """The leaves of ``params`` as arrays, checked: float32 or float64, one dtype, finite."""
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not path_leaves:
        raise ValueError("params must be a pytree with at least one array leaf; got no leaf")
    leaves, dtype = [], None
    for path, leaf in path_leaves:
        where = f"params{jax.tree_util.keystr(path)}"
        if not hasattr(leaf, "dtype") or not hasattr(leaf, "shape"):
            raise TypeError(
                f"params must be a pytree of float arrays; {where} is a {type(leaf).__name__} "
                "(for an Equinox module, pass eqx.partition(model, eqx.is_inexact_array)[0] as "
                "params and eqx.combine it with the rest inside apply)"
            )
        if leaf.dtype not in (np.float32, np.float64):
            raise TypeError(
                f"params must be a pytree of float32 or float64 arrays; {where} has dtype "
                f"{leaf.dtype}"
            )
        if dtype is not None and leaf.dtype != dtype:
            raise TypeError(
                f"params must share one dtype; {where} is {leaf.dtype} but earlier leaves are "
                f"{dtype}: convert them"
            )
        dtype = leaf.dtype
        if not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError(f"{where} contains NaN or infinite values")
        leaves.append(leaf)
    return leaves, treedef


def _checked_state_leaves(jax, state):
    """The leaves of a model's fixed state (any array dtype; floats finite) and its treedef."""
    if state is None:
        return [], None
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    leaves = []
    for path, leaf in path_leaves:
        where = f"state{jax.tree_util.keystr(path)}"
        if not hasattr(leaf, "dtype") or not hasattr(leaf, "shape"):
            raise TypeError(
                f"state must be a pytree of arrays; {where} is a {type(leaf).__name__}"
            )
        if np.issubdtype(leaf.dtype, np.floating) and not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError(f"{where} contains NaN or infinite values")
        leaves.append(leaf)
    return leaves, treedef
