"""The data contract of :mod:`gcref.data`, through the measures of :mod:`gcref.models`.

Every form of the same seven examples (an array, ``(X, y)``, ``(X, y, extra)``, lists
and generators of batches, torch DataLoaders over ``TensorDataset(X, y)``, over
``TensorDataset(X)`` alone and over a dataset of dicts, dict batches read with
``input_key`` / ``target_key``, batches of a type of our own read by ``batch_fn``) gives
the same values as the one ``(X, y)`` pair, on a :class:`gcref.MLP` (numpy) and on its
torch module. The batches of an iterable are the SGD mini-batches, so the iterable forms
cut the data as ``batch_size=3`` cuts the pair. Then the errors, target dtypes, the
progress line and a loader failing part-way.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_backend

import gcref
from gcref import models

RTOL, ATOL = gcref.tolerance(np.float64)
N, D, K, BATCH = 7, 3, 2, 3
SLICES = [slice(s, s + BATCH) for s in range(0, N, BATCH)]


def problem():
    mlp = gcref.MLP((D, 4, K), activation="tanh")
    rng = np.random.default_rng(11)
    params = mlp.init(rng, scheme="lecun_normal", bias="normal")
    X = rng.normal(size=(N, D))
    y = rng.normal(size=(N, K))
    return mlp, params, X, y


MLP, PARAMS, X, Y = problem()


class Record:
    """A batch type of a user's own: what ``batch_fn`` is for."""

    def __init__(self, inputs, targets):
        self.inputs, self.targets = inputs, targets


def torch_module():
    require_backend("torch")
    from gcref.nets.torch import mlp_module

    return mlp_module(MLP, PARAMS)


def tensors(*arrays):
    require_backend("torch")
    import torch

    return [torch.as_tensor(a) for a in arrays]


def loader(*arrays):
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(*tensors(*arrays)), batch_size=BATCH)


class DictDataset:
    """A map-style dataset of dict examples; the default collate makes dict batches."""

    def __init__(self, X, y):
        self.X, self.y = tensors(X, y)

    def __len__(self):
        return self.X.shape[0]

    def __getitem__(self, i):
        return {"image": self.X[i], "label": self.y[i], "index": i}


def dict_loader(X, y):
    from torch.utils.data import DataLoader

    return DataLoader(DictDataset(X, y), batch_size=BATCH)


def generator(X, y):
    for s in SLICES:
        yield X[s], y[s]


#: name -> (build data, reading options). Each call builds afresh (generators are one-shot).
LABELLED_FORMS = {
    "tuple": (lambda: (X, Y), {}),
    "tuple-with-extra": (lambda: (X, Y, np.arange(N)), {}),
    "list-of-pairs": (lambda: [(X[s], Y[s]) for s in SLICES], {}),
    "list-of-lists-with-extra": (lambda: [[X[s], Y[s], np.ones(len(Y[s]))] for s in SLICES], {}),
    "generator": (lambda: generator(X, Y), {}),
    "dataloader-xy": (lambda: loader(X, Y), {}),
    "dataloader-xy-extra": (lambda: loader(X, Y, np.arange(N)), {}),
    "dict-batches": (
        lambda: [{"image": X[s], "label": Y[s], "id": "ignored"} for s in SLICES],
        {"input_key": "image", "target_key": "label"},
    ),
    "dataloader-of-dicts": (lambda: dict_loader(X, Y), {"input_key": "image", "target_key": "label"}),
    "batch-fn": (
        lambda: [Record(X[s], Y[s]) for s in SLICES],
        {"batch_fn": lambda r: (r.inputs, r.targets)},
    ),
}

#: Forms without labels, for the measures that need none.
UNLABELLED_FORMS = {
    "array": (lambda: X, {}),
    "one-tuple": (lambda: (X,), {}),
    "list-of-arrays": (lambda: [X[s] for s in SLICES], {}),
    "generator-of-arrays": (lambda: (X[s] for s in SLICES), {}),
    "dataloader-x-only": (lambda: loader(X), {}),
    "dict-batches-input-only": (lambda: [{"image": X[s]} for s in SLICES], {"input_key": "image"}),
    "batch-fn-x-only": (lambda: [Record(X[s], None) for s in SLICES], {"batch_fn": lambda r: r.inputs}),
    **LABELLED_FORMS,
}

MODELS = {
    "mlp-numpy": lambda: (MLP, {"params": PARAMS}),
    "torch-module": lambda: (torch_module(), {}),
}


def label_free(model, kw, data, options):
    return {
        "gc": models.geometric_complexity(model, data(), per_example=True, **kw, **options).per_example,
        "estimate": models.estimate_geometric_complexity(
            model, data(), np.random.default_rng(5), n_probes=2, **kw, **options
        ).value,
        "output_norms": models.output_grad_sq_norms(model, data(), **kw, **options).per_parameter,
    }


def labelled(model, kw, data, options, batched):
    """The measures with labels; ``batched``: the mini-batches come from the data itself."""
    sgd = {} if batched else {"batch_size": BATCH}
    terms = models.igr_terms(model, data(), "squared", **sgd, **kw, **options)
    return {
        "loss_norms": models.loss_grad_sq_norms(model, data(), "squared", **kw, **options).per_parameter,
        "mean_loss": models.mean_loss(model, data(), "squared", **kw, **options),
        "loss_grad": models.loss_grad(model, data(), "squared", **kw, **options),
        "igr": np.array([terms.loss, terms.full_batch, terms.mini_batch, terms.per_example,
                         terms.n_examples, terms.n_batches]),
        "sgd": models.modified_loss_sgd(model, data(), "squared", 0.3, **sgd, **kw, **options),
    }


def assert_same(got, want):
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("model_kind", list(MODELS))
@pytest.mark.parametrize("form", list(UNLABELLED_FORMS))
def test_every_form_gives_the_values_of_the_array(model_kind, form):
    model, kw = MODELS[model_kind]()
    data, options = UNLABELLED_FORMS[form]
    assert_same(label_free(model, kw, data, options), label_free(model, kw, lambda: X, {}))


@pytest.mark.parametrize("model_kind", list(MODELS))
@pytest.mark.parametrize("form", list(LABELLED_FORMS))
def test_every_labelled_form_gives_the_values_of_the_pair(model_kind, form):
    model, kw = MODELS[model_kind]()
    data, options = LABELLED_FORMS[form]
    batched = not form.startswith("tuple")
    assert_same(labelled(model, kw, data, options, batched),
                labelled(model, kw, lambda: (X, Y), {}, batched=False))


def test_the_pair_is_one_batch_and_its_mini_batches_are_blocks_of_batch_size():
    terms = models.igr_terms(MLP, (X, Y), "squared", params=PARAMS, batch_size=BATCH)
    assert (terms.n_examples, terms.n_batches) == (N, len(SLICES))
    # The mini-batch term, by its definition, from the gradients of each block.
    blocks = [models.loss_grad(MLP, (X[s], Y[s]), "squared", params=PARAMS) for s in SLICES]
    want = np.mean([g @ g for g in blocks])
    assert np.isclose(terms.mini_batch, want, rtol=RTOL, atol=ATOL)


# -- errors ------------------------------------------------------------------------------------


def gc(data, **options):
    return models.geometric_complexity(MLP, data, params=PARAMS, **options)


def loss(data, **options):
    return models.mean_loss(MLP, data, "squared", params=PARAMS, **options)


def test_a_dict_batch_without_input_key_says_to_pass_it():
    with pytest.raises(TypeError, match=r"data batch 0 is a dict with keys \['image', 'label'\]: pass input_key="):
        gc([{"image": X, "label": Y}])


def test_a_missing_key_is_named_with_the_keys_there_are():
    batches = [{"image": X, "label": Y}]
    with pytest.raises(KeyError, match=r"data batch 0 has no entry 'target'; its keys are \['image', 'label'\]"):
        loss(batches, input_key="image", target_key="target")
    with pytest.raises(KeyError, match="no entry 'x'"):
        gc(batches, input_key="x")


def test_non_array_entries_are_refused_with_the_batch_named():
    with pytest.raises(TypeError, match=r"data batch 1\['image'\] must be an array; got list"):
        gc([{"image": X}, {"image": X.tolist()}], input_key="image")
    with pytest.raises(TypeError, match=r"data batch 0\['label'\] must be an array; got str"):
        loss([{"image": X, "label": "cat"}], input_key="image", target_key="label")
    with pytest.raises(TypeError, match=r"data batch 0 must start with arrays X \(and y\); got \(list, list\)"):
        loss([(X.tolist(), Y.tolist())])
    with pytest.raises(TypeError, match="data batch 0 must be an array X or a pair"):
        gc([Record(X, Y)])
    with pytest.raises(TypeError, match="data must be an array X, a tuple"):
        gc(3.0)
    with pytest.raises(TypeError, match="data must be an array X, a tuple"):
        gc("X.npy")


def test_bad_reading_options_are_refused():
    with pytest.raises(TypeError, match="input_key must be a string; got int"):
        gc([{"image": X}], input_key=0)
    with pytest.raises(TypeError, match="batch_fn must be callable"):
        gc([X], batch_fn="inputs")
    with pytest.raises(TypeError, match="progress must be True, False or None"):
        gc(X, progress="yes")


def test_a_length_mismatch_names_the_batch():
    batches = [(X[:3], Y[:3]), (X[3:6], Y[3:5])]
    with pytest.raises(ValueError, match="data batch 1: X has 3 examples but y has 2 labels"):
        loss(batches)
    with pytest.raises(ValueError, match="data: X has 7 examples but y has 6 labels"):
        loss((X, Y[:-1]))
    with pytest.raises(ValueError, match=r"data batch 0: X has 7 examples but y has 5 labels"):
        loss([{"image": X, "label": Y[:5]}], input_key="image", target_key="label")


def test_a_bad_batch_is_named():
    bad = X.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="data batch 1 contains NaN"):
        gc([X, bad])
    with pytest.raises(ValueError, match=r"data batch 0 must have shape \(N, 3\)"):
        gc([X[:, :2]])


def test_labels_are_required_where_the_loss_needs_them():
    with pytest.raises(TypeError, match="data must carry labels"):
        loss(X)
    with pytest.raises(TypeError, match="data must carry labels"):
        loss([{"image": X}], input_key="image")


def test_empty_data_is_refused():
    with pytest.raises(ValueError, match="data holds no example"):
        gc([])
    with pytest.raises(ValueError, match="data holds no example"):
        loss(iter([]))


def test_a_generator_is_refused_where_two_passes_are_needed():
    with pytest.raises(TypeError, match="passes over data more than once"):
        models.modified_loss_gd_grad(MLP, generator(X, Y), "squared", 0.1, params=PARAMS)


# -- targets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_kind", list(MODELS))
def test_float32_regression_targets_are_accepted_for_a_float64_model(model_kind):
    model, kw = MODELS[model_kind]()
    y32 = Y.astype(np.float32)
    got = models.mean_loss(model, (X, y32), "squared", **kw)
    # The targets are compared in float64: exactly the float64 targets they round to.
    assert got == models.mean_loss(model, (X, y32.astype(np.float64)), "squared", **kw)
    assert not np.isclose(got, models.mean_loss(model, (X, Y), "squared", **kw), rtol=1e-12, atol=0)
    batches = loader(X, y32) if model_kind == "torch-module" else [(X, y32)]
    np.testing.assert_allclose(
        models.loss_grad(model, batches, "squared", **kw),
        models.loss_grad(model, [(X, y32.astype(np.float64))], "squared", **kw),
        rtol=RTOL, atol=ATOL,
    )


def test_float64_targets_are_accepted_for_a_float32_model():
    params32 = [(W.astype(np.float32), b.astype(np.float32)) for W, b in PARAMS]
    X32 = X.astype(np.float32)
    got = models.mean_loss(MLP, (X32, Y), "squared", params=params32)
    reference = models.mean_loss(MLP, (X, Y), "squared", params=PARAMS)
    rtol, atol = gcref.tolerance(np.float32)
    assert np.isclose(got, reference, rtol=rtol, atol=atol)


def test_soft_labels_of_any_float_dtype_are_accepted():
    mlp = gcref.MLP((D, 4, 3), activation="softplus")
    rng = np.random.default_rng(2)
    params = mlp.init(rng, scheme="lecun_normal", bias="normal")
    soft = rng.dirichlet(np.ones(3), size=N)
    want = models.mean_loss(mlp, (X, soft), "softmax_cross_entropy", params=params)
    # Cross-entropy with soft labels, written out: mean of logsumexp(f) - <q, f>.
    f = gcref.forward(mlp, params, X).output
    lse = np.log(np.sum(np.exp(f), axis=1))
    assert np.isclose(want, np.mean(lse - np.sum(soft * f, axis=1)), rtol=RTOL, atol=ATOL)
    soft32 = soft.astype(np.float32)
    got = models.mean_loss(mlp, (X, soft32 / soft32.sum(axis=1, keepdims=True)),
                           "softmax_cross_entropy", params=params)
    assert np.isclose(got, want, rtol=1e-6)


def test_class_labels_of_shape_n_by_1_for_softmax_get_a_right_answer():
    mlp = gcref.MLP((D, 4, 3), activation="tanh")
    params = mlp.init(np.random.default_rng(3), scheme="lecun_normal", bias="normal")
    labels = np.random.default_rng(4).integers(0, 3, size=N)
    want = models.mean_loss(mlp, (X, labels), "softmax_cross_entropy", params=params)
    try:
        got = models.mean_loss(mlp, (X, labels[:, None]), "softmax_cross_entropy", params=params)
    except (TypeError, ValueError) as err:
        # Refusing is fine if the message says what to do: labels of shape (N,).
        message = str(err)
        assert "astype(numpy.float64)" not in message, message
        assert f"({N},)" in message, message
    else:
        assert np.isclose(got, want, rtol=RTOL, atol=ATOL)


# -- progress and failures ---------------------------------------------------------------------


def test_progress_true_writes_a_line_to_stderr(capsys):
    gc([X[s] for s in SLICES], progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("\r") and captured.err.endswith("\n"), repr(captured.err)
    assert "geometric_complexity: 7 examples" in captured.err


def test_progress_false_and_the_default_off_a_terminal_write_nothing(capsys):
    gc(X, progress=False)
    loss((X, Y), progress=False)
    models.igr_terms(MLP, (X, Y), "squared", params=PARAMS, batch_size=2, progress=False)
    gc(X)  # stderr is not a terminal under capsys
    assert capsys.readouterr() == ("", "")


def failing_loader():
    yield X[:3], Y[:3]
    raise RuntimeError("the disk went away")


class FailingDataset:
    def __len__(self):
        return N

    def __getitem__(self, i):
        if i == 4:
            raise OSError(f"cannot read example {i}")
        return tensors(X[i], Y[i])


def test_a_loader_that_fails_part_way_propagates_its_error():
    with pytest.raises(RuntimeError, match="the disk went away"):
        loss(failing_loader())
    with pytest.raises(RuntimeError, match="the disk went away"):
        models.igr_terms(MLP, failing_loader(), "squared", params=PARAMS)
    with pytest.raises(RuntimeError, match="the disk went away"):
        gc((x for x, _ in failing_loader()))


def test_a_dataloader_that_fails_part_way_propagates_its_error():
    require_backend("torch")
    from torch.utils.data import DataLoader

    with pytest.raises(OSError, match="cannot read example 4"):
        loss(DataLoader(FailingDataset(), batch_size=BATCH))


# -- one chunk ahead within a batch (issue 17) -------------------------------------------


@pytest.mark.parametrize("sizes", [[5], [3, 4], [1, 1, 2], [6, 0, 2]])
def test_chunk_ends_marks_the_last_chunk_of_each_batch(sizes):
    from gcref.data import chunk_ends, chunks

    rng = np.random.default_rng(40)
    batches = [rng.normal(size=(n, 2)) for n in sizes]
    got = list(chunk_ends(batches, 2, need_targets=False))
    want_last = [s + 2 >= n for n in sizes for s in range(0, n, 2)]
    assert [last for _, _, last in got] == want_last
    np.testing.assert_array_equal(np.concatenate([X for X, _, _ in got]), np.concatenate(batches))
    assert [X.shape for X, _ in chunks(batches, 2, need_targets=False)] == [
        X.shape for X, _, _ in got
    ]


class _Asynchronous:
    asynchronous = True


ASYNCHRONOUS = _Asynchronous()


def test_one_ahead_begins_the_next_chunk_first_and_drains_each_batch():
    """Chunk j+1 of a batch is begun before chunk j is completed; the last chunk of a
    batch is completed before the next batch is read (a loader may refill its memory)."""
    log = []

    def pieces():
        for j, last in enumerate([False, False, True, False, True]):
            log.append(f"read {j}")
            yield j, last

    def begin(j):
        log.append(f"begin {j}")
        return lambda: log.append(f"complete {j}") or 10 * j

    assert list(models._one_ahead(ASYNCHRONOUS, pieces(), begin)) == [0, 10, 20, 30, 40]
    assert log == [
        "read 0", "begin 0", "read 1", "begin 1", "complete 0", "read 2", "begin 2",
        "complete 1", "complete 2", "read 3", "begin 3", "read 4", "begin 4", "complete 3",
        "complete 4",
    ]
    # An adapter that computes at once (the default) completes each chunk before reading on.
    log.clear()
    assert list(models._one_ahead(models.ModelAdapter(), pieces(), begin)) == [0, 10, 20, 30, 40]
    assert log == [f"{step} {j}" for j in range(5) for step in ("read", "begin", "complete")]


def test_one_ahead_completes_the_pending_chunk_before_raising_a_later_error():
    """A bad chunk's own error comes first, as in data order; a good one is still completed."""

    def pieces():
        yield "first", False
        yield "second", False

    for fails, message in ((True, "first chunk: NaN"), (False, "second chunk: bad labels")):
        log = []

        def begin(name, fails=fails, log=log):
            if name == "second":
                raise ValueError("second chunk: bad labels")

            def completed():
                if fails:
                    raise ValueError("first chunk: NaN")
                log.append("completed")

            return completed

        with pytest.raises(ValueError, match=message):
            list(models._one_ahead(ASYNCHRONOUS, pieces(), begin))
        assert log == ([] if fails else ["completed"])

    # An error in reading the next chunk (a loader failing), likewise.
    def failing_reads():
        yield "first", False
        raise OSError("the loader failed")

    log = []
    with pytest.raises(OSError, match="the loader failed"):
        list(models._one_ahead(ASYNCHRONOUS, failing_reads(), lambda name: lambda: log.append(name)))
    assert log == ["first"]


def test_one_ahead_completes_a_chunk_left_pending_when_the_pieces_end():
    """Pieces that end without marking a last chunk still give every result."""
    pieces = [(j, False) for j in range(3)]
    assert list(models._one_ahead(ASYNCHRONOUS, pieces, lambda j: lambda: j)) == [0, 1, 2]


def test_a_loader_refilling_one_buffer_gives_the_values_of_copies(monkeypatch):
    """Each batch lies in the memory of the last, overwritten by the loader. An adapter
    that reads a chunk only when it completes it (as JAX on the CPU may read a NumPy
    chunk while the next is prepared) still gives the values of separate arrays: the
    last chunk of a batch is completed before the next batch is read."""
    from gcref.backends.mlp_model import MLPModel

    def deferred(self, primitive, *args):
        return lambda: getattr(self, primitive)(*args)  # reads X now, not when begun

    monkeypatch.setattr(MLPModel, "begin", deferred)
    monkeypatch.setattr(MLPModel, "asynchronous", True)
    inputs, labels = np.empty((BATCH, D)), np.empty((BATCH, K))

    def refilled():
        for s in SLICES:
            n = len(X[s])
            inputs[:n], labels[:n] = X[s], Y[s]
            yield inputs[:n], labels[:n]

    copies = [(X[s].copy(), Y[s].copy()) for s in SLICES]
    for measure in (
        lambda data: models.geometric_complexity(MLP, data, params=PARAMS, per_example=True,
                                                 chunk_size=2).per_example,
        lambda data: models.loss_grad_sq_norms(MLP, data, "squared", params=PARAMS,
                                               chunk_size=2).total,
        lambda data: models.loss_hvp(MLP, data, "squared", np.ones(MLP.n_params),
                                     params=PARAMS, chunk_size=2),
    ):
        np.testing.assert_allclose(measure(refilled()), measure(copies), rtol=RTOL, atol=ATOL)
