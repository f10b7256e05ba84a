"""The result records of :mod:`gcref.results`: JSON round trips, and what :class:`GradNorms` promises.

Each record comes from the measure that produces it (so its ``settings`` are the real
ones), goes through ``json.dumps`` and ``json.loads``, and must give back every number
exactly (Python writes floats with enough digits to read them back bit for bit), with
NaN and infinities as ``null``.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

import gcref
from gcref import models
from gcref.results import Complexity, ComplexityEstimate, GradNorms, IGRTerms, jsonable

MLP = gcref.MLP((3, 4, 2), activation="tanh")
_RNG = np.random.default_rng(21)
PARAMS = MLP.init(_RNG, scheme="lecun_normal", bias="normal")
X = _RNG.normal(size=(6, 3))
Y = _RNG.integers(0, 2, size=6)
DATA = (X, Y)
LOSS = "softmax_cross_entropy"


def round_trip(record):
    """``record.to_dict()`` through JSON text (refusing NaN, which JSON has not)."""
    d = record.to_dict()
    return d, json.loads(json.dumps(d, allow_nan=False))


def test_complexity_round_trips():
    gc = models.geometric_complexity(MLP, X, params=PARAMS, per_example=True, chunk_size=4)
    assert isinstance(gc, Complexity)
    d, back = round_trip(gc)
    assert back == d
    assert back["type"] == "Complexity"
    assert back["value"] == gc.value
    assert np.array_equal(np.array(back["per_example"]), gc.per_example)
    assert back["settings"]["chunk_size"] == 4
    assert back["settings"]["mode"] == "auto"
    assert "MLP" in back["settings"]["model"]
    de = models.dirichlet_energy(MLP, X, params=PARAMS, per_example=True)
    assert round_trip(de)[1]["value"] == gc.value / 2


@pytest.mark.parametrize("n_probes", [1, 3])
def test_complexity_estimate_round_trips_with_a_missing_stderr_as_null(n_probes):
    est = models.estimate_geometric_complexity(
        MLP, X, np.random.default_rng(0), params=PARAMS, n_probes=n_probes, probe="rademacher"
    )
    assert isinstance(est, ComplexityEstimate)
    d, back = round_trip(est)
    assert back == d
    assert back["value"] == est.value
    assert (back["n_probes"], back["n_examples"]) == (n_probes, X.shape[0])
    assert back["settings"]["probe"] == "rademacher"
    if n_probes == 1:
        assert math.isnan(est.stderr) and back["stderr"] is None
    else:
        assert back["stderr"] == est.stderr > 0


@pytest.mark.parametrize("which", ["output", "loss"])
def test_grad_norms_round_trip(which):
    if which == "output":
        norms = models.output_grad_sq_norms(MLP, X, params=PARAMS)
    else:
        norms = models.loss_grad_sq_norms(MLP, DATA, LOSS, params=PARAMS)
    d, back = round_trip(norms)
    assert back == d
    assert np.array_equal(np.array(back["per_parameter"]), norms.per_parameter)
    assert back["names"] == ["W_1", "b_1", "W_2", "b_2"]
    if which == "loss":
        assert back["settings"]["loss"] == LOSS


def test_igr_terms_round_trip():
    terms = models.igr_terms(MLP, DATA, LOSS, params=PARAMS, batch_size=4)
    assert isinstance(terms, IGRTerms)
    d, back = round_trip(terms)
    assert back == d
    for name in ("loss", "full_batch", "mini_batch", "per_example", "n_examples", "n_batches"):
        assert back[name] == getattr(terms, name), name
    assert (back["n_examples"], back["n_batches"]) == (6, 2)
    assert back["settings"]["batch_size"] == 4
    assert back["settings"]["loss"] == LOSS


def test_input_keys_are_recorded_in_the_settings():
    batches = [{"x": X[:4]}, {"x": X[4:]}]
    gc = models.geometric_complexity(MLP, batches, params=PARAMS, per_example=True, input_key="x")
    assert round_trip(gc)[1]["settings"]["input_key"] == "x"


def test_jsonable_handles_what_records_hold():
    value = {
        "nan": float("nan"), "inf": -np.inf, "f32": np.float32(0.5), "i64": np.int64(3),
        "array": np.array([[1.0, np.nan], [2.0, 3.0]]), "tuple": (1, "a"), "bool": np.bool_(True),
        "none": None, "nested": {1: [np.float64(2.5)]}, "other": object,
    }
    out = jsonable(value)
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == {
        "nan": None, "inf": None, "f32": 0.5, "i64": 3, "array": [[1.0, None], [2.0, 3.0]],
        "tuple": [1, "a"], "bool": True, "none": None, "nested": {"1": [2.5]},
        "other": repr(object),
    }


def test_records_are_frozen_and_settings_do_not_count_in_equality():
    a = Complexity(1.0, np.zeros(2), {"chunk_size": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.value = 2.0
    e1 = ComplexityEstimate(1.0, 0.1, 2, 5, {"probe": "gaussian"})
    e2 = ComplexityEstimate(1.0, 0.1, 2, 5, {"probe": "sphere"})
    assert e1 == e2


# -- GradNorms ---------------------------------------------------------------------------------

PER = np.arange(12.0).reshape(3, 4)  # 3 examples, columns W_1, b_1, W_2, b_2


def mlp_norms():
    return GradNorms(PER, ("W_1", "b_1", "W_2", "b_2"))


def test_total_is_the_row_sum_and_asarray_gives_it():
    norms = mlp_norms()
    assert np.array_equal(norms.total, [0 + 1 + 2 + 3, 4 + 5 + 6 + 7, 8 + 9 + 10 + 11])
    assert np.array_equal(np.asarray(norms), norms.total)
    assert np.asarray(norms, dtype=np.float32).dtype == np.float32
    assert len(norms) == 3
    # It stands where an (N,) array of totals is expected.
    assert np.allclose(np.sqrt(norms), np.sqrt(norms.total))


def test_weights_biases_and_per_layer_pick_the_mlp_columns():
    norms = mlp_norms()
    assert np.array_equal(norms.weights, PER[:, [0, 2]])
    assert np.array_equal(norms.biases, PER[:, [1, 3]])
    assert np.array_equal(norms.per_layer, PER[:, [0, 2]] + PER[:, [1, 3]])


def test_from_layers_interleaves_weights_and_biases():
    w, b = PER[:, [0, 2]], PER[:, [1, 3]]
    norms = GradNorms.from_layers(w, b, {"source": "test"})
    assert norms.names == ("W_1", "b_1", "W_2", "b_2")
    assert np.array_equal(norms.per_parameter, PER)
    assert norms.settings == {"source": "test"}


def test_measured_mlp_norms_split_into_layers_that_sum_to_the_total():
    norms = models.loss_grad_sq_norms(MLP, DATA, LOSS, params=PARAMS)
    assert norms.weights.shape == norms.biases.shape == (6, MLP.depth)
    np.testing.assert_allclose(norms.weights.sum(axis=1) + norms.biases.sum(axis=1), norms.total,
                               rtol=1e-15, atol=0)


@pytest.mark.parametrize(
    "names",
    [("0.weight", "0.bias", "2.weight", "2.bias"), ("[0][0]", "[0][1]", "W_1", "W_2")],
    ids=["torch-names", "jax-and-unpaired-names"],
)
def test_weights_and_biases_are_refused_for_names_that_are_not_an_mlps(names):
    norms = GradNorms(PER, names)
    assert np.array_equal(norms.total, PER.sum(axis=1))
    for attribute in ("weights", "biases", "per_layer"):
        with pytest.raises(ValueError, match="defined for the parameters of a gcref.MLP"):
            getattr(norms, attribute)


@pytest.mark.parametrize(
    "per_parameter, names",
    [
        (np.zeros(4), ("W_1", "b_1", "W_2", "b_2")),
        (np.zeros((3, 3)), ("W_1", "b_1", "W_2", "b_2")),
        (np.zeros((3, 4, 1)), ("W_1", "b_1", "W_2", "b_2")),
        (np.zeros((3, 2)), ()),
    ],
    ids=["one-dimensional", "too-few-columns", "three-dimensional", "no-names"],
)
def test_the_shape_is_checked_against_the_names(per_parameter, names):
    with pytest.raises(ValueError, match=r"per_parameter must have shape \(N, \d+\), one column per name"):
        GradNorms(per_parameter, names)


# -- IGRTerms ----------------------------------------------------------------------------------


def test_igr_terms_give_the_modified_losses_and_check_h():
    terms = IGRTerms(loss=1.0, full_batch=2.0, mini_batch=3.0, per_example=4.0,
                     n_examples=8, n_batches=2)
    assert terms.modified_loss_gd(0.4) == 1.0 + 0.1 * 2.0
    assert terms.modified_loss_sgd(0.4) == 1.0 + 0.1 * 3.0
    assert terms.modified_loss_per_example(0.4) == 1.0 + 0.1 * 4.0
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="h"):
            terms.modified_loss_gd(bad)


def test_the_mlp_only_records_serialise_too():
    """TransferTerms, the residual factorisation, the pressure transfer and the backward error."""
    import gcref.backward_error as be

    rng = np.random.default_rng(5)
    mlp = gcref.MLP((2, 5, 1), activation="tanh")
    params = mlp.init(rng, bias="normal")
    X, y = rng.normal(size=(6, 2)), rng.normal(size=6)
    records = [
        gcref.transfer_terms(mlp, params, X),
        gcref.residual_factorisation(mlp, params, X, y, "squared"),
        gcref.pressure_transfer(mlp, params, X, y, "squared"),
        be.gd_backward_error(mlp, params, X, y, "squared"),
    ]
    for record in records:
        out = json.loads(json.dumps(record.to_dict(), allow_nan=False))
        assert out["type"] == type(record).__name__
    terms = json.loads(json.dumps(records[0].to_dict()))
    np.testing.assert_array_equal(terms["h_norms"], records[0].h_norms)
