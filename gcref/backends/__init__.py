"""Backends by name: ``numpy`` (analytic), ``autograd``, ``jax``, ``torch``.

Each framework is imported inside its backend's constructor, never when ``gcref`` is
imported. ``available_backends()`` asks only whether a framework is installed, without
importing it.
"""

from __future__ import annotations

import importlib
import importlib.util

from gcref.backends._base import Backend, Forward

__all__ = [
    "Backend",
    "BackendNotAvailableError",
    "Forward",
    "available_backends",
    "backend_names",
    "get_backend",
]

# name -> (module, class, framework module that must be importable, pip extra)
_BACKENDS = {
    "numpy": ("gcref.backends.numpy", "NumpyBackend", "numpy", None),
    "autograd": ("gcref.backends.autograd", "AutogradBackend", "autograd", "autograd"),
    "jax": ("gcref.backends.jax", "JaxBackend", "jax", "jax"),
    "torch": ("gcref.backends.torch", "TorchBackend", "torch", "torch"),
}

_INSTANCES = {}


class BackendNotAvailableError(ImportError):
    """A known backend whose framework is not installed."""


def backend_names():
    """Every backend gcref knows, installed or not."""
    return list(_BACKENDS)


def available_backends():
    """Names of the backends whose framework is installed, ``numpy`` first."""
    return [
        name
        for name, (_, _, framework, _) in _BACKENDS.items()
        if importlib.util.find_spec(framework) is not None
    ]


def get_backend(backend="numpy"):
    """Return the backend instance for a name (or the instance itself).

    Raises
    ------
    ValueError
        For an unknown name.
    BackendNotAvailableError
        For a known backend whose framework is not installed; the message says how to
        install it.
    """
    if isinstance(backend, Backend):
        return backend
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a name or a Backend; got {type(backend).__name__}")
    if backend not in _BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {backend_names()}")
    if backend not in _INSTANCES:
        module_name, class_name, framework, extra = _BACKENDS[backend]
        if importlib.util.find_spec(framework) is None:
            raise BackendNotAvailableError(
                f"backend {backend!r} needs {framework}, which is not installed: "
                f"pip install 'gcref[{extra}]' (or 'gcref[all]' for every backend)"
            )
        module = importlib.import_module(module_name)
        _INSTANCES[backend] = getattr(module, class_name)()
    return _INSTANCES[backend]
