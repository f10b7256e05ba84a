"""Bad input of every kind gets a clear error, never a crash or a NaN (issue 16, item 4).

For each public entry point (the MLP functions of :mod:`gcref`, and :mod:`gcref.models`
with a :class:`gcref.MLP` and with a small torch module), Hypothesis corrupts one argument
of an otherwise valid call: wrong shapes and ranks, NaN and inf, integer, boolean,
complex and mixed dtypes, empty data, labels out of range, objects that are not arrays,
bad keyword values. The call must then either raise ``ValueError`` or ``TypeError`` (or a
subclass) whose message names the argument, or return a result without NaN (some
"bad" values are legitimately accepted, e.g. float labels for squared loss).

The corruptions are the test's own table (:data:`ARRAY_CORRUPTIONS` and the others), so a
failure names the entry point, the argument and the corruption; Hypothesis shrinks to the
simplest one.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from conftest import require_backend
from hypothesis import given
from hypothesis import strategies as st

import gcref
import gcref.models as gm

N, D = 6, 3

# -- corruptions ------------------------------------------------------------------------------


def _set_one(v, value, seed):
    out = np.array(v, dtype=np.float64, copy=True)
    if out.size:
        out.flat[seed % out.size] = value
    return out


# Each maps (valid array, seed) to a bad value.
ARRAY_CORRUPTIONS = {
    "nan": lambda v, s: _set_one(v, np.nan, s),
    "inf": lambda v, s: _set_one(v, np.inf, s),
    "-inf": lambda v, s: _set_one(v, -np.inf, s),
    "rank 0": lambda v, s: np.float64(1.0),
    "one axis fewer": lambda v, s: np.asarray(v)[0],
    "one axis more": lambda v, s: np.asarray(v)[None],
    "one row fewer": lambda v, s: np.asarray(v)[:-1],
    "one column fewer": lambda v, s: np.asarray(v)[..., :-1],
    "one column more": lambda v, s: np.concatenate([v, np.asarray(v)[..., :1]], axis=-1),
    "empty": lambda v, s: np.asarray(v)[:0],
    "int64": lambda v, s: np.round(np.asarray(v)).astype(np.int64),
    "float + 0.5": lambda v, s: np.asarray(v, dtype=np.float64) + 0.5,
    "bool": lambda v, s: np.asarray(v) > 0,
    "complex": lambda v, s: np.asarray(v) + 0j,
    "float32": lambda v, s: np.asarray(v, dtype=np.float32),
    "float16": lambda v, s: np.asarray(v, dtype=np.float16),
    "object array": lambda v, s: np.asarray(v).astype(object),
    "ragged list": lambda v, s: [[1.0, 2.0], [3.0]],
    "list of str": lambda v, s: ["a", "b"],
    "plus 10": lambda v, s: np.asarray(v) + 10,
    "minus 10": lambda v, s: np.asarray(v) - 10,
    "None": lambda v, s: None,
    "str": lambda v, s: "data",
    "dict": lambda v, s: {"x": 1},
    "object": lambda v, s: object(),
}

SCALARS = [-1.0, -1e-3, np.nan, np.inf, -np.inf, "0.1", None, [0.1], np.array([0.1, 0.2]), 1j, True]
COUNTS = [0, -1, 2.5, "4", None, True, np.nan, np.float64(3.0), [2]]
CHOICES = ["bogus", 5, None, ["squared"], 2.0]
RNGS = [None, 0, np.random.RandomState(0), "rng", object()]
MODELS = [None, "model", 3, object(), lambda x: x]
OTHER_MLP = gcref.MLP((D + 1, 4, 2))


def _params_corruptions(params, seed):
    (W1, b1), *rest = params
    return {
        "a layer fewer": params[:-1],
        "a layer more": (*params, params[-1]),
        "W transposed": ((W1.T, b1), *rest),
        "b missing": ((W1,), *rest),
        "NaN weight": ((_set_one(W1, np.nan, seed), b1), *rest),
        "inf bias": ((W1, _set_one(b1, np.inf, seed)), *rest),
        "int weight": ((np.round(W1).astype(np.int64), b1), *rest),
        "float32 weight": ((W1.astype(np.float32), b1), *rest),
        "list": [list(p) for p in params],
        "None": None,
        "str": "params",
        "flat vector": gcref.flatten_params(params),
    }


# -- the problem every call starts from ---------------------------------------------------------


def problem(loss):
    """A valid problem for ``loss``: MLP (D, 4, k), parameters, inputs and targets."""
    rng = np.random.default_rng(0)
    k = 1 if loss == "logistic" else 2
    # relu: the rescalings need a positively homogeneous activation.
    mlp = gcref.MLP((D, 4, k), activation="relu")
    # Zero biases: the normalised network (margins) is defined for bias-free networks.
    params = mlp.init(rng)
    X = rng.normal(size=(N, D))
    if loss == "squared":
        y = rng.normal(size=(N, k))
    else:
        y = np.array([0, 1, 1, 0, 1, 0])
    return mlp, params, X, y


def _top(fn, *names, **extra):
    """An entry point ``fn(mlp, params, <names>..., **extra)`` of the top-level package."""
    return fn, names, extra


# The MLP functions of gcref: (function, positional argument names after (mlp, params),
# keyword arguments and their slots). "batches" is a partition of the N examples.
TOP = {
    "forward": _top(gcref.forward, "X"),
    "predict": _top(gcref.predict, "X"),
    "input_jacobian": _top(gcref.input_jacobian, "X"),
    "input_vjp": _top(gcref.input_vjp, "X", "cotangent"),
    "hidden_jacobians": _top(gcref.hidden_jacobians, "X"),
    "sensitivities": _top(gcref.sensitivities, "X"),
    "param_jacobian": _top(gcref.param_jacobian, "X"),
    "param_grad_sq_norms": _top(gcref.param_grad_sq_norms, "X"),
    "geometric_complexity": _top(gcref.geometric_complexity, "data", chunk_size="count"),
    "dirichlet_energy": _top(gcref.dirichlet_energy, "data", chunk_size="count"),
    "estimate_geometric_complexity": _top(
        gcref.estimate_geometric_complexity, "data", "rng", n_probes="count", probe="choice"
    ),
    "transfer_terms": _top(
        gcref.transfer_terms, "X", norm="choice", svd_max_dim="count", power_tol="scalar",
        power_max_iter="count",
    ),
    "transfer_ratio": _top(gcref.transfer_ratio, "X", norm="choice"),
    "loss_grad_sq_norms": _top(gcref.loss_grad_sq_norms, "X", "y", "loss"),
    "per_example_loss": _top(gcref.per_example_loss, "X", "y", "loss"),
    "mean_loss": _top(gcref.mean_loss, "X", "y", "loss"),
    "residuals": _top(gcref.residuals, "X", "y", "loss"),
    "loss_sensitivities": _top(gcref.loss_sensitivities, "X", "y", "loss"),
    "loss_grad": _top(gcref.loss_grad, "X", "y", "loss"),
    "loss_hvp": _top(gcref.loss_hvp, "X", "y", "loss", "vector"),
    "pressure_transfer": _top(gcref.pressure_transfer, "X", "y", "loss"),
    "residual_factorisation": _top(gcref.residual_factorisation, "X", "y", "loss"),
    "modified_loss_gd": _top(gcref.modified_loss_gd, "X", "y", "loss", "h"),
    "modified_loss_gd_grad": _top(gcref.modified_loss_gd_grad, "X", "y", "loss", "h"),
    "modified_loss_per_example": _top(
        gcref.modified_loss_per_example, "X", "y", "loss", "h", form="choice"
    ),
    "modified_loss_per_example_grad": _top(gcref.modified_loss_per_example_grad, "X", "y", "loss", "h"),
    "modified_loss_sgd": _top(gcref.modified_loss_sgd, "X", "y", "loss", "h", "batches"),
    "modified_loss_sgd_grad": _top(gcref.modified_loss_sgd_grad, "X", "y", "loss", "h", "batches"),
    "gd_backward_error": _top(gcref.gd_backward_error, "X", "y", "loss", substeps="count"),
    "sgd_backward_error": _top(gcref.sgd_backward_error, "X", "y", "loss", "batches"),
    "margins": _top(gcref.margins, "X", "labels"),
    "margin": _top(gcref.margin, "X", "labels"),
    "path_norm": _top(gcref.path_norm, p="scalar"),
    "group_norm": _top(gcref.group_norm, p="scalar", q="scalar"),
    "product_norm": _top(gcref.product_norm),
    "layer_norms": _top(gcref.layer_norms, kind="choice"),
    "normalized_params": _top(gcref.normalized_params),
    "balanced_rescaling": _top(gcref.balanced_rescaling, p="scalar"),
    "random_rescaling": _top(gcref.random_rescaling, "rng", spread="scalar"),
    "rescale_node": _top(gcref.rescale_node, layer="count", unit="count", c="scalar"),
    "graph_volume": _top(gcref.graph_volume, "X", rng="rng", n_samples="count", batch_size="count",
                         max_facets="count"),
    "train": _top(gcref.train, "X", "y", "loss", steps="count", lr="scalar", batch_size="count",
                  rng="rng"),
}


LOSSES = ("squared", "softmax_cross_entropy", "logistic")


def losses_for(entry):
    """The losses whose problem suits ``entry`` (the pressure transfer is stated for k = 1)."""
    return ("logistic",) if entry == "pressure_transfer" else LOSSES


def valid_value(name, mlp, params, X, y, loss):
    rng = np.random.default_rng(1)
    k = mlp.output_dim
    return {
        "X": X,
        "data": X,
        "y": y,
        "labels": np.array([0, 1, 1, 0, 1, 0]) if k > 1 else np.array([1.0, -1, 1, -1, 1, -1]),
        "loss": loss,
        "cotangent": rng.normal(size=(N, k)),
        "vector": tuple((np.ones(ws), np.ones(bs)) for ws, bs in mlp.layer_shapes()),
        "h": 0.1,
        "batches": [np.arange(0, 3), np.arange(3, N)],
        "rng": rng,
        "chunk_size": 4,
        "n_probes": 2,
        "probe": "rademacher",
        "norm": "frobenius",
        "svd_max_dim": 2,
        "power_tol": 1e-10,
        "power_max_iter": 100,
        "substeps": 2,
        "p": 2,
        "q": 2,
        "kind": "spectral",
        "spread": 2.0,
        "layer": 1,
        "unit": 1,
        "c": 2.0,
        "form": "gradient",
        "n_samples": 16,
        "batch_size": 3,
        "max_facets": 1000,
        "steps": 2,
        "lr": 0.1,
    }[name]


def kind_of(name, extra):
    if name in extra:
        return extra[name]
    return {
        "X": "array", "data": "array", "y": "array", "labels": "array", "cotangent": "array", "vector": "params",
        "h": "scalar", "batches": "batches", "rng": "rng", "loss": "choice",
    }[name]


# Names a message about each argument may use (the argument itself, or what the
# function calls it in its message).
ALIASES = {
    # A model that does not match its parameters: the message is about the parameters.
    "mlp": ("mlp", "params"),
    "y": ("y", "target", "label"),
    "labels": ("labels", "y"),
    "batches": ("batches", "batch"),
    "vector": ("vector",),
    "loss": ("loss",),
    "data": ("data", "X", "y", "batch", "input", "target", "label"),
    "data:X": ("data", "X", "batch", "input"),
    "data:y": ("data", "y", "target", "label", "batch"),
    # A function is taken for a JAX apply(params, x).
    "model": ("model", "apply"),
}


# Arguments with one row per example: a row count that differs from X's may be reported
# as the other argument's error.
ROW_ALIGNED = ("y", "labels", "cotangent", "batches")


def names_for(slot, what, args):
    """The names a message about corruption ``what`` of argument ``slot`` may use."""
    names = ALIASES.get(slot, (slot,))
    if slot in ("X", "data") and what == "one row fewer":
        names += sum((ALIASES.get(n, (n,)) for n in ROW_ALIGNED if n in args), ())
    return names


def corruptions(kind, valid, seed):
    """Every bad value of an argument of ``kind``: a list of (description, value)."""
    if kind == "array":
        return [(what, make(valid, seed)) for what, make in ARRAY_CORRUPTIONS.items()]
    if kind == "values":
        # An array whose values are the data (a flat parameter vector): NaN in, NaN out
        # is what rebuilding a tree must do, so only the structure can be wrong.
        return [(what, make(valid, seed)) for what, make in ARRAY_CORRUPTIONS.items()
                if what not in ("nan", "inf", "-inf")]
    if kind == "params":
        return list(_params_corruptions(valid, seed).items())
    if kind == "batches":
        return [
            ("index out of range", [np.arange(0, 3), np.arange(3, N + 2)]),
            ("negative index", [np.arange(-1, 3), np.arange(3, N)]),
            ("float indices", [np.arange(0, 3) + 0.5, np.arange(3, N)]),
            ("overlapping", [np.arange(0, 4), np.arange(3, N)]),
            ("an example missing", [np.arange(0, 3), np.arange(3, N - 1)]),
            ("empty batch", [np.arange(0, N), np.arange(0)]),
            ("no batches", []),
            ("None", None),
            ("int", 3),
            ("nested too deep", [[np.arange(0, 3)], [np.arange(3, N)]]),
        ]
    if kind == "data":
        X = valid[0] if isinstance(valid, tuple) else valid
        return [("None", None), ("str", "data"), ("int", 3), ("empty list", []), ("(X,)", (X,)),
                ("(X, X, X)", (X, X, X)), ("dict without x", {"z": X}), ("object", object())]
    table = {"scalar": SCALARS, "count": COUNTS, "choice": CHOICES, "rng": RNGS,
             "model": MODELS, "mlp": [*MODELS, OTHER_MLP]}[kind]
    return [(describe(v), v) for v in table]


def describe(value):
    if value is OTHER_MLP:
        return "an MLP of other sizes"
    if callable(value) and not isinstance(value, type):
        return "a function"
    return repr(value)


# -- the calls ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    """A valid call of one entry point: its arguments by name, and how to corrupt each.

    ``kinds`` maps each corruptible argument to its kind (a key of :func:`corruptions`);
    ``"data:X"`` and ``"data:y"`` corrupt the inputs or the targets inside ``data``.
    """

    label: str
    fn: object
    positional: tuple
    args: dict
    kinds: dict

    def valid(self, slot):
        if slot.startswith("data:"):
            data = self.args["data"]
            if slot == "data:y":
                return data[1]
            return data[0] if isinstance(data, tuple) else data
        return self.args[slot]

    def corrupted(self, slot, bad):
        args = dict(self.args)
        if slot == "data:X":
            args["data"] = (bad, args["data"][1]) if isinstance(args["data"], tuple) else bad
        elif slot == "data:y":
            args["data"] = (args["data"][0], bad)
        else:
            args[slot] = bad
        return args

    def call(self, args):
        return self.fn(*(args[n] for n in self.positional),
                       **{n: v for n, v in args.items() if n not in self.positional})

    def names(self, slot, what):
        """The names a message about corruption ``what`` of ``slot`` may use."""
        names = ALIASES.get(slot, (slot,))
        if slot in ("X", "data", "data:X") and what == "one row fewer":
            names += sum((ALIASES.get(n, (n,)) for n in ROW_ALIGNED if n in self.args), ())
        return names


def top_case(entry, loss):
    fn, positional, extra = TOP[entry]
    mlp, params, X, y = problem(loss)
    args = {"mlp": mlp, "params": params}
    args.update((n, valid_value(n, mlp, params, X, y, loss)) for n in (*positional, *extra))
    kinds = {"mlp": "mlp", "params": "params"}
    kinds.update((n, kind_of(n, extra)) for n in (*positional, *extra))
    return Case(f"gcref.{entry}", fn, ("mlp", "params", *positional), args, kinds)


def other_cases():
    """The public functions that do not take (mlp, params) first, by name."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(N, D))
    one = gcref.MLP((1, 4, 1), activation="tanh")
    one_params = one.init(rng, bias="normal")
    _, params, _, _ = problem("squared")
    return {
        "hull_volume": Case("gcref.hull_volume", gcref.hull_volume, ("X",),
                            {"X": X, "max_facets": 1000}, {"X": "array", "max_facets": "count"}),
        "sample_in_hull": Case(
            "gcref.sample_in_hull", gcref.sample_in_hull, ("X", "n", "rng"),
            {"X": X, "n": 5, "rng": rng, "max_facets": 1000},
            {"X": "array", "n": "count", "rng": "rng", "max_facets": "count"},
        ),
        "polyline_length": Case("gcref.polyline_length", gcref.polyline_length, ("x", "y"),
                                {"x": X[:, 0], "y": X[:, 1]}, {"x": "array", "y": "array"}),
        "spectral_norms": Case(
            "gcref.spectral_norms", gcref.spectral_norms, ("M",),
            {"M": rng.normal(size=(2, 3, 4)), "svd_max_dim": 1, "tol": 1e-10, "max_iter": 100},
            {"M": "array", "svd_max_dim": "count", "tol": "scalar", "max_iter": "count"},
        ),
        "arc_length": Case(
            "gcref.arc_length", gcref.arc_length, ("mlp", "params", "X"),
            {"mlp": one, "params": one_params, "X": X[:, :1], "method": "adaptive", "rtol": 1e-6,
             "max_subintervals": 100},
            {"mlp": "mlp", "params": "params", "X": "array", "method": "choice", "rtol": "scalar",
             "max_subintervals": "count"},
        ),
        "unflatten_params": Case(
            "gcref.unflatten_params", gcref.unflatten_params, ("vector", "like"),
            {"vector": gcref.flatten_params(params), "like": params},
            {"vector": "values", "like": "params"},
        ),
    }


# gcref.models: (positional argument names after (model, data), keyword arguments and
# their kinds). igr_terms needs batch_size for one (X, y) pair.
MODELS_ENTRIES = {
    "geometric_complexity": ((), {"chunk_size": "count", "mode": "choice"}),
    "dirichlet_energy": ((), {"chunk_size": "count", "mode": "choice"}),
    "estimate_geometric_complexity": (("rng",), {"n_probes": "count", "probe": "choice"}),
    "output_grad_sq_norms": ((), {"chunk_size": "count"}),
    "loss_grad_sq_norms": (("loss",), {"chunk_size": "count"}),
    "mean_loss": (("loss",), {"chunk_size": "count"}),
    "loss_grad": (("loss",), {"chunk_size": "count"}),
    "loss_hvp": (("loss", "vector"), {}),
    "igr_terms": (("loss",), {"batch_size": "count"}),
    "modified_loss_gd": (("loss", "h"), {}),
    "modified_loss_gd_grad": (("loss", "h"), {}),
    "modified_loss_per_example": (("loss", "h"), {"form": "choice"}),
    "modified_loss_per_example_grad": (("loss", "h"), {}),
    "modified_loss_sgd": (("loss", "h"), {"batch_size": "count"}),
    "modified_loss_sgd_grad": (("loss", "h"), {"batch_size": "count"}),
}


def torch_module(k):
    require_backend("torch")
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D, 4), torch.nn.Tanh(), torch.nn.Linear(4, k)).double()


def model_case(kind, entry, loss):
    positional, extra = MODELS_ENTRIES[entry]
    mlp, params, X, y = problem(loss)
    model = mlp if kind == "mlp" else torch_module(mlp.output_dim)
    n_params = sum(W.size + b.size for W, b in params)
    valid = {"rng": np.random.default_rng(1), "loss": loss, "vector": np.ones(n_params), "h": 0.1,
             "chunk_size": 4, "mode": "auto", "n_probes": 2, "probe": "rademacher",
             "batch_size": 3, "form": "gradient"}
    with_targets = "loss" in positional
    args = {"model": model, "data": (X, y) if with_targets else X}
    args.update((n, valid[n]) for n in (*positional, *extra))
    kinds = {"model": "model", "data": "data", "data:X": "array"}
    if with_targets:
        kinds["data:y"] = "array"
    kinds.update((n, extra.get(n) or kind_of(n, {})) for n in (*positional, *extra))
    if kind == "mlp":
        args["params"], kinds["params"] = params, "params"
    kinds["vector"] = "array"
    if "vector" not in args:
        del kinds["vector"]
    return Case(f"gcref.models.{entry} ({kind})", getattr(gm, entry), ("model", "data", *positional),
                args, kinds)



# -- the properties ---------------------------------------------------------------------------


def contains_nan(result):
    """Whether any float in ``result`` (arrays, tensors, dataclasses, sequences, dicts) is NaN."""
    if result is None or isinstance(result, (str, bool, int)):
        return False
    if dataclasses.is_dataclass(result):
        return any(contains_nan(getattr(result, f.name)) for f in dataclasses.fields(result))
    if isinstance(result, dict):
        return any(contains_nan(v) for v in result.values())
    if isinstance(result, (tuple, list)):
        return any(contains_nan(v) for v in result)
    if hasattr(result, "detach"):  # a torch tensor
        result = result.detach().cpu().numpy()
    if not (np.isscalar(result) or hasattr(result, "__array__")):
        return False
    array = np.asarray(result)
    return array.dtype.kind in "fc" and bool(np.isnan(array).any())


def check_outcome(case, slot, what, bad):
    """A ValueError/TypeError naming the argument, or a result without NaN; else AssertionError."""
    label = f"{case.label} with {slot} = {what}"
    if "loss" in case.args:
        label += f" (loss {case.args['loss']!r})"
    names = case.names(slot, what)
    try:
        result = case.call(case.corrupted(slot, bad))
    except (ValueError, TypeError) as err:
        message = str(err)
        pattern = "|".join(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![a-z0-9_])" for n in names)
        assert re.search(pattern, message), f"{label}: the message names none of {names}: {message!r}"
        return
    except Exception as err:  # the point: nothing else may escape
        raise AssertionError(f"{label}: raised {type(err).__name__}: {err}") from err
    assert not contains_nan(result), f"{label}: returned NaN: {result!r}"


def draw_and_check(case, data):
    slot = data.draw(st.sampled_from(sorted(case.kinds)), label="argument")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    what, bad = data.draw(
        st.sampled_from(corruptions(case.kinds[slot], case.valid(slot), seed)), label="corruption"
    )
    check_outcome(case, slot, what, bad)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("entry", sorted(TOP))
def test_the_unspoilt_calls_succeed(entry, loss):
    # Without this, a table entry that is itself invalid would make every draw "pass".
    if loss not in losses_for(entry):
        pytest.skip(f"{entry} is not defined for the {loss} loss")
    case = top_case(entry, loss)
    assert not contains_nan(case.call(case.args))


@pytest.mark.parametrize("entry", sorted(other_cases()))
def test_the_unspoilt_other_calls_succeed(entry):
    case = other_cases()[entry]
    assert not contains_nan(case.call(case.args))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("entry", sorted(MODELS_ENTRIES))
@pytest.mark.parametrize("kind", ["mlp", "torch"])
def test_the_unspoilt_model_calls_succeed(kind, entry, loss):
    case = model_case(kind, entry, loss)
    assert not contains_nan(case.call(case.args))


@pytest.mark.parametrize("entry", sorted(TOP))
@given(data=st.data())
def test_top_level_functions_reject_bad_input_clearly(entry, data):
    loss = data.draw(st.sampled_from(losses_for(entry)), label="loss")
    draw_and_check(top_case(entry, loss), data)


@pytest.mark.parametrize("entry", sorted(other_cases()))
@given(data=st.data())
def test_other_functions_reject_bad_input_clearly(entry, data):
    draw_and_check(other_cases()[entry], data)


@pytest.mark.parametrize("entry", sorted(MODELS_ENTRIES))
@pytest.mark.parametrize("kind", ["mlp", "torch"])
@given(data=st.data())
def test_model_measures_reject_bad_input_clearly(kind, entry, data):
    loss = data.draw(st.sampled_from(LOSSES), label="loss")
    draw_and_check(model_case(kind, entry, loss), data)


@pytest.mark.parametrize(
    ("entry", "loss", "slot", "what"),
    [
        ("residuals", "squared", "loss", "None"),
        ("train", "squared", "loss", "None"),
        ("mean_loss", "softmax_cross_entropy", "y", "ragged list"),
        ("pressure_transfer", "logistic", "y", "ragged list"),
        ("margins", "squared", "labels", "ragged list"),
        ("models.loss_hvp", "squared", "vector", "ragged list"),
        ("models.modified_loss_gd_grad", "squared", "data", "int"),
        ("unflatten_params", None, "vector", "None"),
        ("unflatten_params", None, "like", "b missing"),
    ],
)
def test_the_gaps_the_fuzz_found_are_closed(entry, loss, slot, what):
    """Each corruption once crashed with a message naming nothing (issue 16); now clear."""
    if loss is None:
        case = other_cases()[entry]
    elif entry.startswith("models."):
        case = model_case("mlp", entry.removeprefix("models."), loss)
    else:
        case = top_case(entry, loss)
    bad = dict(corruptions(case.kinds[slot], case.valid(slot), 0))[what]
    check_outcome(case, slot, what, bad)


# -- messages that named the wrong thing (issue 16) ------------------------------------------


def test_power_iteration_arguments_are_named_as_the_caller_spelt_them():
    mlp, params, X, _ = problem("squared")
    with pytest.raises(ValueError, match=r"^power_max_iter must be >= 2; got 0$"):
        gcref.transfer_terms(mlp, params, X, power_max_iter=0)
    with pytest.raises(ValueError, match=r"^power_tol must be > 0; got 0.0$"):
        gcref.transfer_terms(mlp, params, X, power_tol=0.0)
    with pytest.raises(TypeError, match=r"^power_max_iter must be an integer"):
        gcref.transfer_terms(mlp, params, X, power_max_iter=10.5)


def test_the_unknown_activation_hint_works_in_python_and_on_the_command_line(capsys):
    from gcref.cli import main

    with pytest.raises(ValueError, match="unknown activation 'leakyrelu'") as info:
        gcref.MLP((D, 4, 1), activation="leakyrelu")
    hint = re.search(r"'(leaky_relu\([0-9.]+\))'", str(info.value)).group(1)
    slope = float(hint.removeprefix("leaky_relu(").removesuffix(")"))
    mlp = gcref.MLP((D, 4, 1), activation=hint)
    assert mlp.activation is gcref.leaky_relu(slope)
    assert mlp.activation(np.array([-1.0]))[0] == -slope
    # The name of a leaky ReLU is that spelling, so it reads back exactly (saved MLPs).
    odd = gcref.leaky_relu(0.1 + 0.2)
    assert gcref.get_activation(odd.name) is odd
    status = main(["compare", "--backends", "numpy", "--quantities", "forward", "--sizes", "2,3,1",
                   "--n-examples", "4", "--activation", hint])
    assert status == 0, capsys.readouterr().err
    assert f"({hint})" in capsys.readouterr().out
    for bad, message in [("leaky_relu(-1)", "slope must be finite and >= 0"),
                         ("leaky_relu(x)", "the slope must be a number")]:
        with pytest.raises(ValueError, match=re.escape(f"activation {bad!r}: ") + message):
            gcref.MLP((D, 4, 1), activation=bad)
