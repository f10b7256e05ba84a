"""Flax (linen and nnx) and Equinox models as :class:`~gcref.backends.jax_model.JaxModel` s.

:func:`adapt` is what :func:`gcref.models.wrap` does with a JAX model. It splits a
framework's model into what gcref differentiates, theta, and what it holds fixed:

- **Flax linen**: ``model.apply`` (or the module, or ``functools.partial(model.apply,
  train=False)``) with its variables dict. theta is the ``params`` collection; every
  other collection (``batch_stats``, ...) is held fixed, as the ``state`` argument of
  the compiled functions (new statistics after a training step reuse the compilation).
  Keyword arguments of a ``partial`` are passed to every call.
- **Flax nnx**: the module itself, no ``params``. theta is its ``nnx.Param`` variables,
  ``nnx.split(model, nnx.Param, ...)``; every other variable (``nnx.BatchStat``, RNG
  state) is held fixed. The module is called on a batch.
- **Equinox**: the module itself, no ``params``. theta is its floating-point arrays
  (``eqx.partition(model, eqx.is_inexact_array)``), other arrays are held fixed, and
  the rest (functions, sizes) is static. An Equinox module is called on one example,
  as is the library's convention: gcref maps it over the batch with ``jax.vmap``.
- Anything else callable is a plain ``apply(params, x)`` on a batch. A ``params`` dict
  that looks like a Flax variables dict (a ``"params"`` key beside others) passed with
  such a function warns: every collection in it would be differentiated.

No framework is imported here: a model is recognised only through the modules its
framework has already imported (``sys.modules``).
"""

from __future__ import annotations

import functools
import sys
import warnings

#: The ``apply(params, state, x)`` built for each framework model, by a hashable key of
#: what it depends on, so that JaxModel's compilations (cached by ``apply``) are reused
#: from one measure call to the next.
_APPLIES = {}


def adapt(model, params, **options):
    """The :class:`~gcref.backends.jax_model.JaxModel` of a JAX model of any kind above.

    ``options`` are JaxModel's keyword arguments (``shard``, ``norm_method``).
    """
    from gcref.backends.jax_model import JaxModel

    for recognise in (_linen, _nnx, _equinox):
        found = recognise(model, params)
        if found is not None:
            apply, theta, state = found
            return JaxModel(apply, theta, state=state, **options)
    if params is None:
        raise TypeError(
            "a function model needs params: pass apply(params, x) as model and its "
            "parameter pytree as params (a Flax nnx or Equinox module takes none)"
        )
    _warn_if_variables(params)
    return JaxModel(model, params, **options)


def holds_parameters(model):
    """Whether ``model`` is a Flax nnx or Equinox module: one that holds its own arrays."""
    nnx, eqx = sys.modules.get("flax.nnx"), sys.modules.get("equinox")
    return bool(
        (nnx is not None and isinstance(model, nnx.Module))
        or (eqx is not None and isinstance(model, eqx.Module))
    )


def _cached_apply(key, build):
    """The cached ``apply`` for ``key``; a new one (compiled anew) when the key is unhashable."""
    try:
        hash(key)
    except TypeError:
        return build()
    if key not in _APPLIES:
        _APPLIES[key] = build()
    return _APPLIES[key]


# -- Flax linen -------------------------------------------------------------------------------


def _linen(model, params):
    linen = sys.modules.get("flax.linen")
    if linen is None:
        return None
    kwargs = {}
    target = model
    if isinstance(target, functools.partial):
        if target.args:
            raise TypeError(
                "a functools.partial of a Flax model's apply may fix keyword arguments only "
                f"(train=False, ...); got positional arguments {target.args!r}"
            )
        kwargs = dict(target.keywords)
        target = target.func
    module = getattr(target, "__self__", None) if callable(target) else None
    if isinstance(target, linen.Module):
        module = target
    elif not (isinstance(module, linen.Module) and getattr(target, "__name__", "") == "apply"):
        return None
    if params is None:
        raise TypeError(
            "a Flax linen model needs params: its variables, as returned by model.init"
        )
    if not hasattr(params, "keys") or "params" not in params:
        raise TypeError(
            "params of a Flax linen model must be its variables dict, with a 'params' "
            f"collection (as model.init returns); got {type(params).__name__}"
            + (f" with keys {sorted(params.keys())}" if hasattr(params, "keys") else "")
        )
    theta = params["params"]
    state = {name: params[name] for name in params.keys() if name != "params"}

    def build():
        def apply(p, s, x):
            return module.apply({"params": p, **s}, x, **kwargs)

        apply.__name__ = f"{type(module).__name__}.apply"
        return apply

    key = ("linen", module, tuple(sorted(kwargs.items())))
    return _cached_apply(key, build), theta, state


# -- Flax nnx ---------------------------------------------------------------------------------


def _nnx(model, params):
    nnx = sys.modules.get("flax.nnx")
    if nnx is None or not isinstance(model, nnx.Module):
        return None
    if params is not None:
        raise TypeError(
            "params must be left out for a Flax nnx module: its nnx.Param variables are "
            "theta (to measure other values, nnx.update the module first)"
        )
    graphdef, theta, state = nnx.split(model, nnx.Param, ...)

    def build():
        def apply(p, s, x):
            return nnx.merge(graphdef, p, s)(x)

        apply.__name__ = f"{type(model).__name__}.__call__"
        return apply

    return _cached_apply(("nnx", graphdef), build), theta, state


# -- Equinox ----------------------------------------------------------------------------------


def _equinox(model, params):
    eqx = sys.modules.get("equinox")
    if eqx is None or not isinstance(model, eqx.Module):
        return None
    if params is not None:
        raise TypeError(
            "params must be left out for an Equinox module: its floating-point arrays are "
            "theta (eqx.partition(model, eqx.is_inexact_array))"
        )
    import jax

    theta, rest = eqx.partition(model, eqx.is_inexact_array)
    state, static = eqx.partition(rest, eqx.is_array)

    def build():
        def apply(p, s, x):
            return jax.vmap(eqx.combine(p, s, static))(x)

        apply.__name__ = f"{type(model).__name__}.__call__"
        return apply

    return _cached_apply(("equinox", static), build), theta, state


# -- plain functions --------------------------------------------------------------------------


def _warn_if_variables(params):
    """Warn when a plain function's params look like a Flax variables dict."""
    keys = list(params.keys()) if hasattr(params, "keys") else []
    others = [k for k in keys if k != "params"]
    if "params" in keys and others:
        warnings.warn(
            f"params has a 'params' collection beside {sorted(map(str, others))}: every "
            "collection will be differentiated as theta (running statistics included). For "
            "a Flax linen model pass model.apply itself (or functools.partial(model.apply, "
            "...)) with its variables: gcref then differentiates 'params' and holds the "
            "other collections fixed",
            UserWarning,
            stacklevel=4,
        )
