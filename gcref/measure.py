"""Measure a saved model on saved data: the library behind ``gcref measure``.

A model is loaded from

- **torch**: an importable factory ``package.module:function`` returning a
  ``torch.nn.Module`` (called with the ``--model-arg key=value`` keywords), with its
  weights from a state dict (``torch.save(module.state_dict(), path)``, read with
  ``torch.load(weights_only=True)``) or from a TorchScript file (its ``state_dict``,
  loaded into the factory's architecture: gcref differentiates with ``torch.func``,
  which does not run TorchScript code); or an exported program alone
  (``torch.export.save``), run as it was exported;
- **JAX**: an importable factory returning a Flax nnx or Equinox module (its own arrays
  are theta; the factory loads them), or ``apply`` or ``(apply, params)``, with
  ``apply(params, x)`` on a batch ``x``, and a parameter file: a ``.npz`` written by
  :func:`save_jax_params` (one array per leaf of the factory's ``params``, keyed by its
  key path), a ``.npz`` of named arrays that becomes the dict ``params`` (factory
  returning ``apply`` alone), or a pickle of the whole pytree (``.pkl``/``.pickle``;
  unpickling runs code: load only files you trust).

Data are an ``.npz`` file with an input array and optional targets (keys chosen), or an
importable dataset factory returning ``X``, ``(X, y)``, a dict of arrays or an iterable
of batches (:mod:`gcref.data`). Floating inputs given as arrays are converted to the
model's dtype.

Each quantity is one measure of :mod:`gcref.models`, and its result is returned with the
settings that produced it (:func:`measure_quantities`).
"""

from __future__ import annotations

import ast
import importlib
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gcref.results import jsonable

__all__ = [
    "DEFAULT_QUANTILES",
    "LABELLED",
    "QUANTITIES",
    "LoadedData",
    "LoadedModel",
    "load_callable",
    "load_data",
    "load_model",
    "measure_quantities",
    "parse_keywords",
    "save_jax_params",
    "summary",
]

#: The quantities, in the order they are measured, and what each one is.
QUANTITIES: dict[str, str] = {
    "gc": "geometric complexity (1/N) sum_n ||J(x_n)||_F^2, with per-example statistics",
    "gc_estimate": "probe estimate of the geometric complexity and its standard error",
    "param_grad_sq_norms": "per-example ||grad_theta f(x_n)||_F^2 (summed over outputs), statistics",
    "loss_grad_sq_norms": "per-example ||grad_theta l_n||^2, statistics",
    "igr_terms": "loss, ||grad L||^2, mean mini-batch ||grad L_B||^2, mean per-example ||grad l_n||^2",
    "loss": "mean loss (1/N) sum_n l(f(x_n), y_n)",
}
#: The quantities that need targets and a loss.
LABELLED = ("loss_grad_sq_norms", "igr_terms", "loss")
DEFAULT_QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.75, 0.95)


# -- factories and keyword arguments --------------------------------------------------------


def load_callable(spec: str, what: str = "--model") -> Callable[..., Any]:
    """The callable named by ``spec = "package.module:function"`` (``function`` may be dotted).

    The current directory is searched first, as ``python -m`` does.

    Raises
    ------
    ValueError
        When ``spec`` is not of the form ``module:function``, the module cannot be
        imported or it has no such attribute.
    TypeError
        When the attribute is not callable.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(
            f"{what} must be 'package.module:function' (an importable module and a callable "
            f"in it); got {spec!r}"
        )
    module_name, attr = spec.split(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"{what} {spec!r}: cannot import module {module_name!r} ({err}); it must be on "
            "PYTHONPATH or in the current directory"
        ) from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{what} {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable")
    return obj


def parse_keywords(pairs: Sequence[str] | None, what: str = "--model-arg") -> dict[str, Any]:
    """``["width=16", "act='tanh'"]`` -> ``{"width": 16, "act": "tanh"}``.

    Each value is read as a Python literal (numbers, strings, tuples, ``True``, ``None``);
    a value that is not one is kept as a string (``act=tanh``).
    """
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"{what} must be key=value with key a Python name; got {pair!r}")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out


def _existing(path: str | os.PathLike[str], what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} {str(path)!r}: no such file")
    return p


# -- models ---------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model ready for :mod:`gcref.models`: ``model`` (and ``params`` for JAX).

    Attributes
    ----------
    framework : {"torch", "jax"}
    model : torch.nn.Module or callable
    params : pytree or None
        The JAX parameters; ``None`` for torch.
    dtype : numpy.dtype
        The parameters' dtype, to which floating inputs are converted.
    settings : dict
        Where the model came from, for the JSON output.
    """

    framework: str
    model: Any
    params: Any
    dtype: np.dtype[Any]
    settings: dict[str, Any] = field(default_factory=dict)


def _exported_module(program_module: Any) -> Any:
    """A ``torch.export`` program's module as a module whose mode switches stay outside it.

    An exported program's module refuses ``train()``/``eval()``: its behaviour was fixed
    when it was exported. The wrapper keeps its mode flag to itself, so that the measures'
    switch to inference mode reaches no exported submodule.
    """
    import torch

    class ExportedProgram(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.program = inner

        def train(self, mode: bool = True) -> ExportedProgram:
            self.training = mode
            return self

        def forward(self, x: Any) -> Any:
            return self.program(x)

    return ExportedProgram(program_module)


def _torch_dtype(module: Any) -> np.dtype[Any]:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return np.dtype(str(t.dtype).removeprefix("torch."))
    return np.dtype(np.float32)


def _is_torch_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def load_model(
    factory: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    framework: str = "auto",
    state: str | os.PathLike[str] | None = None,
    torchscript: str | os.PathLike[str] | None = None,
    exported: str | os.PathLike[str] | None = None,
    params: str | os.PathLike[str] | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> LoadedModel:
    """Load a torch module or a JAX function with its weights (module docstring).

    Parameters
    ----------
    factory : str, optional
        ``"package.module:function"`` returning a ``torch.nn.Module``, or a JAX ``apply``
        or ``(apply, params)``; required unless ``exported`` is given.
    kwargs : mapping, optional
        Keyword arguments of the factory.
    framework : {"auto", "torch", "jax"}
        ``"auto"``: JAX with ``params``, torch with a torch file or a ``device``, else
        from what the factory returns.
    state : path, optional
        A torch state dict saved with ``torch.save``, read with ``weights_only=True``.
    torchscript : path, optional
        A TorchScript file whose ``state_dict`` is loaded into the factory's module.
    exported : path, optional
        A ``torch.export.save`` file, run as exported (no factory).
    params : path, optional
        The JAX parameters: ``.npz`` or ``.pkl``/``.pickle``; required when the factory
        returns ``apply`` alone.
    device : str, optional
        Torch only: where the module runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``); inputs
        follow it. Default ``"cpu"``.
    dtype : {"float32", "float64"}, optional
        Convert the parameters to this dtype (default: keep theirs).

    Raises
    ------
    ValueError
        For a bad factory or framework, a missing or unreadable file, weights that do not
        fit the architecture, or options of the other framework.
    """
    torch_files = [
        name for name, v in (("--state", state), ("--torchscript", torchscript), ("--exported", exported))
        if v is not None
    ]
    if len(torch_files) > 1:
        raise ValueError(f"give at most one of --state, --torchscript, --exported; got {torch_files}")
    if torch_files and params is not None:
        raise ValueError(f"--params is for JAX models and {torch_files[0]} for torch ones: give one")
    if framework not in ("auto", "torch", "jax"):
        raise ValueError(f"framework must be 'auto', 'torch' or 'jax'; got {framework!r}")
    if dtype not in (None, "float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64; got {dtype!r}")
    if framework == "auto" and (params is not None or torch_files or device is not None):
        framework = "jax" if params is not None else "torch"
    if framework == "jax" and (torch_files or device is not None):
        given = torch_files + (["--device"] if device is not None else [])
        raise ValueError(
            f"{', '.join(given)} apply to torch models; a JAX model runs on JAX's default "
            "device (set JAX_PLATFORMS=cpu or cuda) with --params"
        )
    if framework == "torch" and params is not None:
        raise ValueError("--params is for JAX models: a torch model takes --state or --torchscript")
    if exported is not None:
        if factory is not None:
            raise ValueError("--exported is a whole program: leave --model out")
        return _torch_model(_load_exported(exported), {"exported": str(exported)}, device, dtype)
    if factory is None:
        raise ValueError(
            "--model package.module:function is required (the architecture), unless "
            "--exported names a torch.export file"
        )
    made = load_callable(factory, "--model")(**dict(kwargs or {}))
    settings: dict[str, Any] = {"model": factory, "model_args": dict(kwargs or {})}
    if framework == "auto":
        framework = "torch" if _is_torch_module(made) else "jax"
    if framework == "torch":
        if not _is_torch_module(made):
            raise ValueError(
                f"--model {factory!r} returned {type(made).__name__}; a torch factory must "
                "return a torch.nn.Module"
            )
        return _torch_model(_with_weights(made, factory, state, torchscript, settings), settings, device, dtype)
    return _jax_model(made, factory, params, dtype, settings)


def _load_exported(path: str | os.PathLike[str]) -> Any:
    import torch

    file = _existing(path, "--exported")
    try:
        program = torch.export.load(str(file))
    except Exception as err:
        raise ValueError(f"--exported {str(file)!r}: not a torch.export file ({err})") from err
    return _exported_module(program.module())


def _with_weights(
    module: Any, factory: str, state: str | os.PathLike[str] | None,
    torchscript: str | os.PathLike[str] | None, settings: dict[str, Any],
) -> Any:
    import torch

    weights = None
    if state is not None:
        path = _existing(state, "--state")
        try:
            weights = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(
                f"--state {str(path)!r}: cannot read it with torch.load(weights_only=True) ({err})"
            ) from err
        if not isinstance(weights, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in weights.values()
        ):
            raise ValueError(
                f"--state {str(path)!r} must hold a state dict (names -> tensors, as "
                f"module.state_dict() returns); got {type(weights).__name__}"
            )
        settings["state"] = str(path)
    if torchscript is not None:
        path = _existing(torchscript, "--torchscript")
        try:
            weights = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as err:
            raise ValueError(f"--torchscript {str(path)!r}: not a TorchScript file ({err})") from err
        settings["torchscript"] = str(path)
    if weights is not None:
        try:
            module.load_state_dict(weights)
        except RuntimeError as err:
            raise ValueError(f"the weights do not fit the module of --model {factory!r}: {err}") from err
    return module


def _torch_model(module: Any, settings: dict[str, Any], device: str | None, dtype: str | None) -> LoadedModel:
    import torch

    device = "cpu" if device is None else device
    if dtype is not None:
        module = module.to(getattr(torch, dtype))
    try:
        module = module.to(torch.device(device))
    except (RuntimeError, AssertionError) as err:
        raise ValueError(f"--device {device!r}: {err}") from err
    settings = {"framework": "torch", **settings, "device": device}
    return LoadedModel("torch", module, None, _torch_dtype(module), settings)


def save_jax_params(path: str | os.PathLike[str], params: Any) -> None:
    """Write a JAX parameter pytree as ``.npz``, one array per leaf keyed by its key path.

    :func:`load_model` reads it back into the structure the factory returns.
    """
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    arrays: dict[str, Any] = {jax.tree_util.keystr(p): np.asarray(leaf) for p, leaf in leaves}
    np.savez(path, **arrays)


def _npz_into(template: Any, arrays: Mapping[str, NDArray[Any]], where: str) -> Any:
    import jax

    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    keys = [jax.tree_util.keystr(p) for p, _ in paths]
    missing = [k for k in keys if k not in arrays]
    extra = sorted(set(arrays) - set(keys))
    if missing or extra:
        raise ValueError(
            f"--params {where}: its arrays must be the leaves of the factory's params, keyed "
            f"by key path (as gcref.measure.save_jax_params writes); missing {missing}, "
            f"unexpected {extra}"
        )
    leaves = []
    for key, (_, like) in zip(keys, paths):
        value = arrays[key]
        if tuple(value.shape) != tuple(np.shape(like)):
            raise ValueError(
                f"--params {where}: leaf {key} has shape {tuple(value.shape)}; the factory's "
                f"params have {tuple(np.shape(like))}"
            )
        leaves.append(value)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _jax_model(
    made: Any, factory: str, params: str | os.PathLike[str] | None, dtype: str | None,
    settings: dict[str, Any],
) -> LoadedModel:
    import jax

    from gcref.backends.jax_frameworks import adapt, holds_parameters

    if holds_parameters(made):
        # A Flax nnx or Equinox module: its own arrays are theta; the factory loads them.
        for flag, value in (("--params", params), ("--dtype", dtype)):
            if value is not None:
                raise ValueError(
                    f"{flag} does not apply to --model {factory!r}: it returned a "
                    f"{type(made).__name__} (a Flax nnx or Equinox module), which holds its own "
                    "arrays; load its weights (and cast them) in the factory"
                )
        adapter = adapt(made, None)
        return LoadedModel("jax", made, None, np.dtype(adapter.dtype),
                           {"framework": "jax", **settings})
    template = None
    if isinstance(made, tuple) and len(made) == 2 and callable(made[0]):
        apply, template = made
    elif callable(made) and not isinstance(made, tuple):
        apply = made
    else:
        raise ValueError(
            f"--model {factory!r} returned {type(made).__name__}; a JAX factory must return "
            "apply or (apply, params), with apply(params, x) on a batch x (a torch factory "
            "a torch.nn.Module)"
        )
    tree = template
    if params is not None:
        path = _existing(params, "--params")
        settings["params"] = str(path)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            tree = arrays if template is None else _npz_into(template, arrays, repr(str(path)))
        elif path.suffix in (".pkl", ".pickle"):
            with open(path, "rb") as fh:
                tree = pickle.load(fh)
        else:
            raise ValueError(f"--params {str(path)!r}: expected a .npz, .pkl or .pickle file")
    if tree is None:
        raise ValueError(f"--model {factory!r} returned apply alone: pass --params with its parameters")
    if dtype is not None:
        tree = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=dtype), tree)
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError("the JAX parameters have no leaf: there is nothing to differentiate")
    return LoadedModel("jax", apply, tree, np.dtype(leaves[0].dtype), {"framework": "jax", **settings})


# -- data -----------------------------------------------------------------------------------


@dataclass
class LoadedData:
    """Data for :mod:`gcref.models` and how to read them.

    Attributes
    ----------
    data : array, (X, y) tuple or iterable of batches
    has_targets : bool or None
        Whether targets are present; ``None`` for an iterable (known when read).
    input_key, target_key : str or None
        For an iterable of dict batches.
    settings : dict
        Where the data came from, for the JSON output.
    """

    data: Any
    has_targets: bool | None
    input_key: str | None = None
    target_key: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def _as_input(X: Any, dtype: np.dtype[Any]) -> Any:
    """A NumPy floating input in the model's dtype; anything else as it is."""
    if isinstance(X, np.ndarray) and X.dtype.kind == "f" and X.dtype != dtype:
        return X.astype(dtype)
    return X


def _describe(a: Any) -> str:
    return f"{tuple(a.shape)} {getattr(a, 'dtype', '')}".strip()


def load_data(
    npz: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    dataset_kwargs: Mapping[str, Any] | None = None,
    *,
    x_key: str | None = None,
    y_key: str | None = None,
    dtype: np.dtype[Any] | None = None,
) -> LoadedData:
    """Read an ``.npz`` file or call a dataset factory.

    Parameters
    ----------
    npz : path, optional
        A file with the input array under ``x_key`` (default ``"X"``) and, optionally,
        targets under ``y_key`` (default ``"y"``; an error when named but absent).
    dataset : str, optional
        ``"package.module:function"`` returning ``X``, ``(X, y)``, a dict of arrays (read
        with ``x_key``, ``y_key``) or an iterable of batches (dict batches read with them).
    dataset_kwargs : mapping, optional
        Keyword arguments of the dataset factory.
    dtype : numpy.dtype, optional
        Convert floating NumPy inputs to it (the model's dtype).

    Raises
    ------
    ValueError
        For a missing file or key, a bad factory or a factory's result of no known form.
    """
    if (npz is None) == (dataset is None):
        raise ValueError("give exactly one of --data file.npz and --dataset package.module:function")
    target = np.dtype(np.float64) if dtype is None else dtype
    if npz is not None:
        path = _existing(npz, "--data")
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (ValueError, OSError) as err:
            raise ValueError(f"--data {str(path)!r}: not an .npz file of arrays ({err})") from err
        return _from_arrays(arrays, x_key, y_key, target, {"data": str(path)}, f"--data {str(path)!r}")
    assert dataset is not None
    made = load_callable(dataset, "--dataset")(**dict(dataset_kwargs or {}))
    settings: dict[str, Any] = {"dataset": dataset, "dataset_args": dict(dataset_kwargs or {})}
    where = f"--dataset {dataset!r}"
    if isinstance(made, Mapping):
        return _from_arrays(made, x_key, y_key, target, settings, where)
    if hasattr(made, "shape") and hasattr(made, "ndim"):
        settings["X"] = _describe(made)
        return LoadedData(_as_input(made, target), False, settings=settings)
    if isinstance(made, tuple):
        if len(made) != 2 or not all(hasattr(a, "shape") for a in made):
            raise ValueError(f"{where} returned a tuple; expected (X, y) of two arrays")
        settings.update(X=_describe(made[0]), y=_describe(made[1]))
        return LoadedData((_as_input(made[0], target), made[1]), True, settings=settings)
    if isinstance(made, Iterable) and not isinstance(made, (str, bytes)):
        settings["batches"] = type(made).__name__
        return LoadedData(made, None, x_key, y_key, settings)
    raise ValueError(
        f"{where} returned {type(made).__name__}; expected X, (X, y), a dict of arrays or an "
        "iterable of batches"
    )


def _from_arrays(
    arrays: Mapping[str, Any], x_key: str | None, y_key: str | None, dtype: np.dtype[Any],
    settings: dict[str, Any], where: str,
) -> LoadedData:
    keys = sorted(map(str, arrays))
    xk = "X" if x_key is None else x_key
    if xk not in arrays:
        raise ValueError(f"{where} has no array {xk!r} (keys: {keys}); choose one with --x-key")
    X = arrays[xk]
    settings.update(x_key=xk, X=_describe(X))
    yk = "y" if y_key is None else y_key
    if yk not in arrays:
        if y_key is not None:
            raise ValueError(f"{where} has no array {yk!r} (keys: {keys}); choose one with --y-key")
        return LoadedData(_as_input(X, dtype), False, settings=settings)
    y = arrays[yk]
    settings.update(y_key=yk, y=_describe(y))
    return LoadedData((_as_input(X, dtype), y), True, settings=settings)


# -- the measures ---------------------------------------------------------------------------


def summary(values: ArrayLike, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> dict[str, float]:
    """``n``, ``mean``, ``std``, ``min``, the quantiles, ``median`` and ``max`` of the values.

    Keys in that order, the quantiles ``q<p>`` (``q0.05``) sorted around the median;
    ``std`` is the population standard deviation (``ddof=0``); quantiles are NumPy's
    default linear interpolation.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("summary of no values: at least one example is needed")
    points = sorted({*quantiles, 0.5})
    out: dict[str, float] = {"n": v.size, "mean": float(np.mean(v)), "std": float(np.std(v))}
    out["min"] = float(np.min(v))
    for q in points:
        out["median" if q == 0.5 else f"q{q:g}"] = float(np.quantile(v, q))
    out["max"] = float(np.max(v))
    return out


def _check_quantities(quantities: Sequence[str]) -> list[str]:
    unknown = [q for q in quantities if q not in QUANTITIES]
    if unknown:
        raise ValueError(f"unknown quantities {unknown}; expected some of {list(QUANTITIES)}")
    if len(set(quantities)) != len(quantities):
        raise ValueError(f"quantities are listed more than once: {list(quantities)}")
    return [q for q in QUANTITIES if q in quantities]


def measure_quantities(
    model: LoadedModel,
    data: LoadedData,
    quantities: Sequence[str],
    *,
    loss: str | None = None,
    chunk_size: int = 256,
    n_probes: int = 1,
    probe: str = "gaussian",
    seed: int = 0,
    batch_size: int | None = None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    per_example: bool = False,
    progress: bool | None = None,
) -> dict[str, dict[str, Any]]:
    """Each quantity of ``quantities`` (keys of :data:`QUANTITIES`) as a JSON-ready dict.

    Parameters
    ----------
    loss : str, optional
        Required for the quantities of :data:`LABELLED`.
    n_probes, probe, seed
        Of ``gc_estimate``: probes per example, their distribution, and the seed of the
        ``numpy.random.default_rng`` they are drawn from.
    batch_size : int, optional
        Of ``igr_terms`` on arrays: the size of the SGD mini-batches (consecutive blocks).
    quantiles : sequence of float
        Of the per-example statistics, besides mean, std, min, median and max.
    per_example : bool
        Also return the per-example values (large for large data).

    Returns
    -------
    dict
        Per quantity: its values, ``settings`` (the measure's arguments) and ``seconds``.

    Raises
    ------
    ValueError
        For an unknown quantity, a missing loss, targets or batch size, or any error of
        the measure itself (named after the quantity).

    Notes
    -----
    Each quantity is one measure of :mod:`gcref.models`: ``gc`` and ``gc_estimate``
    ``GC(f, D) = (1/N) sum_n ||J(x_n)||_F^2`` (docs/math.md section 2);
    ``param_grad_sq_norms`` ``||grad_theta f(x_n)||_F^2`` (docs/math.md sections 1 and 3);
    ``loss_grad_sq_norms`` ``||grad_theta l_n||^2`` (docs/math.md section 4);
    ``igr_terms`` ``L``, ``||grad L||^2``, ``(1/m) sum_j ||grad L_{B_j}||^2`` and
    ``(1/N) sum_n ||grad_theta l_n||^2`` (docs/math.md section 5); ``loss`` ``L``.
    """
    from gcref import models

    chosen = _check_quantities(quantities)
    for q in quantiles:
        if not 0 <= q <= 1:
            raise ValueError(f"quantiles must lie in [0, 1]; got {q}")
    labelled = [q for q in chosen if q in LABELLED]
    if labelled and loss is None:
        raise ValueError(f"{', '.join(labelled)} need --loss (one of squared, logistic, softmax_cross_entropy)")
    if labelled and data.has_targets is False:
        raise ValueError(
            f"{', '.join(labelled)} need targets: the data have none ({data.settings}); "
            "give y in the .npz (--y-key) or have the dataset return (X, y)"
        )
    if "igr_terms" in chosen and isinstance(data.data, tuple) and batch_size is None:
        raise ValueError(
            "igr_terms needs --batch-size for data given as arrays: the SGD term is over "
            "mini-batches of that many consecutive examples"
        )
    common: dict[str, Any] = {
        "params": model.params, "chunk_size": chunk_size, "input_key": data.input_key,
        "target_key": data.target_key, "progress": progress,
    }

    def gc() -> dict[str, Any]:
        r = models.geometric_complexity(model.model, data.data, per_example=True, **common)
        out = {"value": r.value, "per_example_summary": summary(r.per_example, quantiles)}
        return _with(out, r.settings, r.per_example if per_example else None)

    def gc_estimate() -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        r = models.estimate_geometric_complexity(
            model.model, data.data, rng, n_probes=n_probes, probe=probe, **common
        )
        out = {"value": r.value, "stderr": r.stderr, "n_probes": r.n_probes, "n_examples": r.n_examples}
        return _with(out, {**r.settings, "seed": seed, "n_probes": n_probes}, None)

    def grad_norms(r: Any) -> dict[str, Any]:
        out = {
            "per_example_summary": summary(r.total, quantiles),
            "per_parameter_mean": dict(zip(r.names, np.mean(r.per_parameter, axis=0).tolist())),
        }
        return _with(out, r.settings, r.total if per_example else None)

    def param_grad_sq_norms() -> dict[str, Any]:
        return grad_norms(models.output_grad_sq_norms(model.model, data.data, **common))

    def loss_grad_sq_norms() -> dict[str, Any]:
        assert loss is not None
        return grad_norms(models.loss_grad_sq_norms(model.model, data.data, loss, **common))

    def igr_terms() -> dict[str, Any]:
        assert loss is not None
        r = models.igr_terms(model.model, data.data, loss, batch_size=batch_size, **common)
        out = r.to_dict()
        out.pop("type")
        return out

    def mean_loss() -> dict[str, Any]:
        assert loss is not None
        value = models.mean_loss(model.model, data.data, loss, **common)
        return _with({"value": value}, {"loss": loss, "chunk_size": chunk_size}, None)

    run: dict[str, Callable[[], dict[str, Any]]] = {
        "gc": gc, "gc_estimate": gc_estimate, "param_grad_sq_norms": param_grad_sq_norms,
        "loss_grad_sq_norms": loss_grad_sq_norms, "igr_terms": igr_terms, "loss": mean_loss,
    }
    results: dict[str, dict[str, Any]] = {}
    for name in chosen:
        start = time.perf_counter()
        try:
            out = run[name]()
        except (ValueError, TypeError, KeyError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            raise ValueError(f"{name}: {message}") from err
        out["seconds"] = time.perf_counter() - start
        results[name] = jsonable(out)
    return results


def _with(out: dict[str, Any], settings: Mapping[str, Any], values: Any) -> dict[str, Any]:
    out["settings"] = dict(settings)
    if values is not None:
        out["per_example"] = np.asarray(values)
    return out
