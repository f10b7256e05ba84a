"""gcref.models, the measures on users' own models, tested without any framework.

``NumpyMLPModel`` below is a test-only :class:`~gcref.backends.adapter.ModelAdapter` over a
:class:`gcref.MLP` and its NumPy parameters, built on the analytic ``numpy`` backend. It
lets every function of :mod:`gcref.models` be compared with the MLP function that
computes the same quantity (which the rest of the suite checks against finite
differences), and the streaming (arrays, pairs, lists of uneven batches, generators,
chunk sizes) be checked on its own.
"""

from __future__ import annotations

import weakref

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gcref
from gcref import models
from gcref.backends.adapter import ModelAdapter
from conftest import require_backend
from gcref.testing.strategies import Problem, problems

RTOL = 1e-10
CHUNK_SIZES = (1, 2, 3, 256)


class NumpyMLPModel(ModelAdapter):
    """A gcref.MLP seen through the ModelAdapter interface (tests only)."""

    def __init__(self, mlp, params):
        self.mlp = mlp
        self.params = params
        self.backend = gcref.get_backend("numpy")

    def _X(self, X):
        return np.asarray(X, dtype=np.float64)

    def outputs(self, X):
        return self.backend.forward(self.mlp, self.params, self._X(X)).output

    def jacobian_sq_norms(self, X, mode):
        assert mode in ("reverse", "forward"), mode
        J = self.backend.input_jacobian(self.mlp, self.params, self._X(X))
        return np.einsum("nkd,nkd->n", J, J)

    def probe_sq_norms(self, X, probes):
        n, n_probes, k = probes.shape
        rows = np.repeat(self._X(X), n_probes, axis=0)
        vjp = self.backend.input_vjp(self.mlp, self.params, rows, probes.reshape(n * n_probes, k))
        return np.sum(vjp * vjp, axis=1).reshape(n, n_probes)

    def parameter_names(self):
        return tuple(f"{kind}_{i}" for i in range(1, self.mlp.depth + 1) for kind in "Wb")

    def output_grad_sq_norms(self, X):
        w, b = self.backend.param_grad_sq_norms(self.mlp, self.params, self._X(X))
        return np.stack([w, b], axis=2).reshape(w.shape[0], -1)

    def loss_grad_sq_norms(self, X, targets, loss):
        X = self._X(X)
        per = loss.per_example(self.outputs(X), targets)
        w, b = self.backend.loss_grad_sq_norms(self.mlp, self.params, X, targets, loss)
        return per, np.stack([w, b], axis=2).reshape(w.shape[0], -1)

    def per_example_penalty_grad_sum(self, X, targets, loss):
        grads = self.backend.per_example_penalty_grad(self.mlp, self.params, self._X(X), targets, loss)
        return gcref.flatten_params(grads) / 2

    def loss_grad_sum(self, X, targets, loss):
        X = self._X(X)
        n = X.shape[0]
        total = float(np.sum(loss.per_example(self.outputs(X), targets)))
        grad = self.backend.loss_grad(self.mlp, self.params, X, targets, loss)
        return total, n * gcref.flatten_params(grad)

    def loss_hvp_sum(self, X, targets, loss, vector):
        X = self._X(X)
        v = gcref.unflatten_params(vector, self.params)
        hv = self.backend.loss_hvp(self.mlp, self.params, X, targets, loss, v)
        return X.shape[0] * gcref.flatten_params(hv)

    def parameter_vector(self):
        return gcref.flatten_params(self.params)

    def to_native_vector(self, vector):
        return np.asarray(vector, dtype=np.float64)

    def to_numpy(self, x):
        return np.asarray(x)


class ModeSpy(NumpyMLPModel):
    """Records the mode :func:`gcref.models.geometric_complexity` asks for, chunk by chunk."""

    def __init__(self, mlp, params):
        super().__init__(mlp, params)
        self.modes = []

    def jacobian_sq_norms(self, X, mode):
        self.modes.append(mode)
        return super().jacobian_sq_norms(X, mode)


def adapter(problem):
    return NumpyMLPModel(problem.mlp, problem.params)


# -- strategies ---------------------------------------------------------------------------
LOSSES = ("squared", "logistic", "softmax_cross_entropy")


def loss_fits(loss, k):
    return {"squared": True, "logistic": k == 1, "softmax_cross_entropy": k >= 2}[loss]


@st.composite
def labelled_problems(draw, max_examples=9):
    """A ``Problem`` with N in 1..max_examples, a loss that suits its k, and its labels."""
    problem = draw(problems(max_examples=max_examples))
    k = problem.mlp.output_dim
    loss = draw(st.sampled_from([name for name in LOSSES if loss_fits(name, k)]))
    return problem, loss, problem.targets(loss)


@st.composite
def cut_points(draw, n):
    """Sorted interior cut positions of ``range(n)``: uneven batches, none empty."""
    return sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1))) if n > 1 else []


def split(array, cuts):
    return np.split(array, cuts)


def close(actual, expected, rtol=RTOL, scale=None):
    """``actual == expected`` to ``rtol`` relative to ``scale`` (default: max of ``|expected|``)."""
    expected = np.asarray(expected, dtype=np.float64)
    if scale is None:
        scale = np.max(np.abs(expected), initial=0.0)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


# -- every function equals the MLP function -------------------------------------------------
@given(labelled_problems(), st.sampled_from(CHUNK_SIZES), st.data())
def test_measures_equal_the_mlp_functions(drawn, chunk_size, data):
    problem, loss, y = drawn
    mlp, params, X = problem.mlp, problem.params, problem.X
    model = adapter(problem)

    gc = models.geometric_complexity(model, X, chunk_size=chunk_size, per_example=True)
    ref = gcref.geometric_complexity(mlp, params, X, per_example=True)
    close(gc.value, ref.value)
    close(gc.per_example, ref.per_example)
    assert models.geometric_complexity(model, X, chunk_size=chunk_size) == gc.value

    de = models.dirichlet_energy(model, X, chunk_size=chunk_size, per_example=True)
    assert de.value == gc.value / 2
    np.testing.assert_array_equal(de.per_example, gc.per_example / 2)
    assert models.dirichlet_energy(model, X, chunk_size=chunk_size) == gc.value / 2
    close(de.value, gcref.dirichlet_energy(mlp, params, X))

    probe = data.draw(st.sampled_from(gcref.complexity.PROBES), label="probe")
    n_probes = data.draw(st.integers(1, 3), label="n_probes")
    seed = data.draw(st.integers(0, 2**32 - 1), label="probe seed")
    est = models.estimate_geometric_complexity(
        model, X, np.random.default_rng(seed), n_probes=n_probes, probe=probe, chunk_size=chunk_size
    )
    est_ref = gcref.estimate_geometric_complexity(
        mlp, params, X, np.random.default_rng(seed), n_probes=n_probes, probe=probe
    )
    close(est.value, est_ref.value)
    if n_probes == 1:
        assert np.isnan(est.stderr) and np.isnan(est_ref.stderr)
    else:
        # Rademacher probes with k = 1 give a zero variance, up to rounding on the scale of GC.
        close(est.stderr, est_ref.stderr, scale=est_ref.value)
    assert (est.n_probes, est.n_examples) == (n_probes, X.shape[0])

    close(
        models.output_grad_sq_norms(model, X, chunk_size=chunk_size),
        gcref.param_grad_sq_norms(mlp, params, X).total,
    )
    close(
        models.loss_grad_sq_norms(model, (X, y), loss, chunk_size=chunk_size),
        gcref.loss_grad_sq_norms(mlp, params, X, y, loss).total,
    )
    close(models.parameter_vector(model), gcref.flatten_params(params))

    v = problem.direction()
    close(
        models.loss_hvp(model, (X, y), loss, gcref.flatten_params(v), chunk_size=chunk_size),
        gcref.flatten_params(gcref.loss_hvp(mlp, params, X, y, loss, v)),
    )


@given(labelled_problems(), st.sampled_from(CHUNK_SIZES), st.data())
def test_igr_terms_equal_the_modified_losses(drawn, chunk_size, data):
    problem, loss, y = drawn
    mlp, params, X = problem.mlp, problem.params, problem.X
    n = X.shape[0]
    batch_size = data.draw(st.integers(1, n), label="batch_size")
    h = data.draw(st.sampled_from((1e-3, 0.1, 1.0, 7.5)), label="h")
    partition = [np.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]

    terms = models.igr_terms(
        adapter(problem), (X, y), loss, batch_size=batch_size, chunk_size=chunk_size
    )
    assert (terms.n_examples, terms.n_batches) == (n, len(partition))
    close(terms.loss, gcref.mean_loss(mlp, params, X, y, loss))
    close(terms.modified_loss_gd(h), gcref.modified_loss_gd(mlp, params, X, y, loss, h))
    close(
        terms.modified_loss_sgd(h), gcref.modified_loss_sgd(mlp, params, X, y, loss, h, partition)
    )
    close(
        terms.modified_loss_per_example(h),
        gcref.modified_loss_per_example(mlp, params, X, y, loss, h),
    )
    # The penalties on their own (the modified losses above are dominated by L when h is small).
    grad = gcref.flatten_params(gcref.loss_grad(mlp, params, X, y, loss))
    close(terms.full_batch, grad @ grad)
    close(terms.per_example, np.mean(gcref.loss_grad_sq_norms(mlp, params, X, y, loss).total))


# -- streaming ------------------------------------------------------------------------------
#: The forms of :func:`forms_of` that carry labels.
LABELLED = ("pair", "list of pairs", "list of lists", "generator of pairs")


def forms_of(X, y, cuts):
    """The same data set as an array or pair, a list of uneven batches, a generator."""
    Xs, ys = split(X, cuts), split(y, cuts)
    return {
        "array": X,
        "pair": (X, y),
        "list of arrays": Xs,
        "list of pairs": list(zip(Xs, ys)),
        "list of lists": [[a, b] for a, b in zip(Xs, ys)],
        "generator of pairs": ((a, b) for a, b in zip(Xs, ys)),
        "generator of arrays": (a for a in Xs),
    }


@given(labelled_problems(), st.data())
def test_streaming_gives_the_same_values(drawn, data):
    problem, loss, y = drawn
    X = problem.X
    model = adapter(problem)
    cuts = data.draw(cut_points(X.shape[0]), label="cuts")
    seed = data.draw(st.integers(0, 2**32 - 1), label="probe seed")
    gc = models.geometric_complexity(model, X, per_example=True)
    est = models.estimate_geometric_complexity(model, X, np.random.default_rng(seed), n_probes=2)
    grad_sq = models.loss_grad_sq_norms(model, (X, y), loss)
    v = gcref.flatten_params(problem.direction())
    hv = models.loss_hvp(model, (X, y), loss, v)
    # The reference values above use the default chunk of 256 (one chunk); each form is
    # read again in chunks of a drawn size.
    chunk_size = data.draw(st.sampled_from(CHUNK_SIZES[:-1]), label="chunk_size")
    for form in forms_of(X, y, cuts).values():
        got = models.geometric_complexity(model, form, chunk_size=chunk_size, per_example=True)
        close(got.value, gc.value)
        close(got.per_example, gc.per_example)
    for form in forms_of(X, y, cuts).values():
        got = models.estimate_geometric_complexity(
            model, form, np.random.default_rng(seed), n_probes=2, chunk_size=chunk_size
        )
        close([got.value, got.stderr], [est.value, est.stderr], scale=est.value)
    for name in LABELLED:
        form = forms_of(X, y, cuts)[name]
        close(models.loss_grad_sq_norms(model, form, loss, chunk_size=chunk_size), grad_sq)
    for name in LABELLED:
        form = forms_of(X, y, cuts)[name]
        close(models.loss_hvp(model, form, loss, v, chunk_size=chunk_size), hv)


class RowsTracker(NumpyMLPModel):
    """Notes, at each call, how many of the per-example arrays it returned are alive."""

    def __init__(self, mlp, params):
        super().__init__(mlp, params)
        self.returned, self.alive_at_call = [], []

    def _track(self, rows):
        self.alive_at_call.append(sum(ref() is not None for ref in self.returned))
        self.returned.append(weakref.ref(rows))
        return rows

    def jacobian_sq_norms(self, X, mode):
        return self._track(super().jacobian_sq_norms(X, mode))

    def output_grad_sq_norms(self, X):
        return self._track(super().output_grad_sq_norms(X))

    def loss_grad_sq_norms(self, X, targets, loss):
        losses, rows = super().loss_grad_sq_norms(X, targets, loss)
        return losses, self._track(rows)


@pytest.mark.parametrize("measure", ["geometric_complexity", "output_grad_sq_norms",
                                     "loss_grad_sq_norms"])
def test_per_example_rows_are_copied_not_kept(small, measure):
    # A streamed measure keeps its per-example results in its own buffer: each array the
    # adapter returned (a framework's memory, in a real adapter) is let go by the next
    # chunk but one (a loop variable may hold the last). Keeping them all pinned freed
    # input blocks on glibc (benchmarks/RESULTS.md).
    problem, y = small
    tracker = RowsTracker(problem.mlp, problem.params)
    reference = adapter(problem)
    X = np.concatenate([problem.X] * 5)
    Y = np.concatenate([y] * 5)
    data = (X, Y) if measure == "loss_grad_sq_norms" else X
    keywords = {"per_example": True} if measure == "geometric_complexity" else {}
    args = ("squared",) if measure == "loss_grad_sq_norms" else ()
    got = getattr(models, measure)(tracker, data, *args, chunk_size=4, **keywords)
    want = getattr(models, measure)(reference, data, *args, chunk_size=30, **keywords)
    assert len(tracker.returned) == 8  # 30 examples in chunks of 4
    assert max(tracker.alive_at_call) <= 1, tracker.alive_at_call
    if measure == "geometric_complexity":
        got, want = got.per_example, want.per_example
    else:
        got, want = got.per_parameter, want.per_parameter
    assert got.shape == want.shape and got.flags.owndata
    close(got, want)


@pytest.mark.parametrize("independent", [False, True])
def test_the_batch_statistics_check_runs_once_per_call_unless_independent(
    small, independent, monkeypatch
):
    # Once per measure call for an adapter that may couple examples (it remembers no
    # shapes: independence_cache is None); never for one whose examples are independent
    # by construction (a gcref MLP), which was checked on every call before.
    problem, y = small
    model = adapter(problem)
    model.examples_independent = independent
    checked = []
    real = models._check_independent
    monkeypatch.setattr(models, "_check_independent",
                        lambda a, X: checked.append(X.shape[0]) or real(a, X))
    models.loss_grad(model, (problem.X, y), "squared", chunk_size=2)
    models.geometric_complexity(model, problem.X, chunk_size=2)
    assert checked == ([] if independent else [2, 2])


@given(labelled_problems(), st.data())
def test_sgd_term_depends_on_the_batches_not_the_chunks(drawn, data):
    problem, loss, y = drawn
    mlp, params, X = problem.mlp, problem.params, problem.X
    model = adapter(problem)
    cuts = data.draw(cut_points(X.shape[0]), label="cuts")
    Xs, ys = split(X, cuts), split(y, cuts)
    # Brute force: the mean over the batches of the squared norm of each batch's mean gradient.
    batch_grads = [
        gcref.flatten_params(gcref.loss_grad(mlp, params, a, b, loss)) for a, b in zip(Xs, ys)
    ]
    mini_batch = np.mean([g @ g for g in batch_grads])
    whole = models.igr_terms(model, (X, y), loss, batch_size=X.shape[0])
    chunk_sizes = data.draw(
        st.lists(st.sampled_from(CHUNK_SIZES), min_size=3, max_size=3), label="chunk sizes"
    )
    forms = (list(zip(Xs, ys)), [[a, b] for a, b in zip(Xs, ys)], ((a, b) for a, b in zip(Xs, ys)))
    for chunk_size, form in zip(chunk_sizes, forms):
        terms = models.igr_terms(model, form, loss, chunk_size=chunk_size)
        assert (terms.n_examples, terms.n_batches) == (X.shape[0], len(Xs))
        close(terms.mini_batch, mini_batch)
        close(
            [terms.loss, terms.full_batch, terms.per_example],
            [whole.loss, whole.full_batch, whole.per_example],
        )
    # One batch: the SGD term is the full-batch one.
    close(whole.mini_batch, whole.full_batch)


# -- the mode of the exact GC -----------------------------------------------------------------
@pytest.mark.parametrize(
    "sizes, auto_mode",
    [((1, 4, 3), "forward"), ((2, 3), "forward"), ((3, 3), "reverse"), ((4, 5, 1), "reverse")],
)
def test_auto_mode_is_forward_exactly_when_d_below_k(sizes, auto_mode):
    mlp = gcref.MLP(sizes, activation="tanh")
    rng = np.random.default_rng(0)
    params = mlp.init(rng, bias="normal")
    X = rng.normal(size=(5, sizes[0]))
    for mode, expected in (("auto", auto_mode), ("forward", "forward"), ("reverse", "reverse")):
        spy = ModeSpy(mlp, params)
        value = models.geometric_complexity(spy, [X[:2], X[2:]], mode=mode, chunk_size=2)
        assert spy.modes == [expected] * 3
        close(value, gcref.geometric_complexity(mlp, params, X))


# -- bad input ----------------------------------------------------------------------------------
@pytest.fixture
def small():
    mlp = gcref.MLP((3, 4, 2), activation="tanh")
    rng = np.random.default_rng(1)
    params = mlp.init(rng, bias="normal")
    X = rng.normal(size=(6, 3))
    y = rng.normal(size=(6, 2))
    return Problem(mlp, params, X, rng), y


def test_bad_mode_probe_and_chunk_size(small):
    problem, y = small
    model, X = adapter(problem), problem.X
    with pytest.raises(ValueError, match="mode"):
        models.geometric_complexity(model, X, mode="sideways")
    with pytest.raises(ValueError, match="mode"):
        models.dirichlet_energy(model, X, mode="sideways")
    with pytest.raises(ValueError, match="probe"):
        models.estimate_geometric_complexity(model, X, np.random.default_rng(0), probe="uniform")
    with pytest.raises(TypeError, match="rng"):
        models.estimate_geometric_complexity(model, X, 0)
    with pytest.raises(ValueError, match="n_probes"):
        models.estimate_geometric_complexity(model, X, np.random.default_rng(0), n_probes=0)
    calls = [
        lambda **kw: models.geometric_complexity(model, X, **kw),
        lambda **kw: models.estimate_geometric_complexity(model, X, np.random.default_rng(0), **kw),
        lambda **kw: models.output_grad_sq_norms(model, X, **kw),
        lambda **kw: models.loss_grad_sq_norms(model, (X, y), "squared", **kw),
        lambda **kw: models.igr_terms(model, (X, y), "squared", batch_size=2, **kw),
        lambda **kw: models.loss_hvp(model, (X, y), "squared", np.ones(problem.mlp.n_params), **kw),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="chunk_size"):
            call(chunk_size=0)
        with pytest.raises(TypeError, match="chunk_size"):
            call(chunk_size=2.5)


def all_measures(model, data, vector):
    """Every measure on ``data``, as zero-argument calls."""
    return {
        "geometric_complexity": lambda: models.geometric_complexity(model, data),
        "dirichlet_energy": lambda: models.dirichlet_energy(model, data),
        "estimate": lambda: models.estimate_geometric_complexity(
            model, data, np.random.default_rng(0)
        ),
        "output_grad_sq_norms": lambda: models.output_grad_sq_norms(model, data),
        "loss_grad_sq_norms": lambda: models.loss_grad_sq_norms(model, data, "squared"),
        "igr_terms": lambda: models.igr_terms(model, data, "squared"),
        "loss_hvp": lambda: models.loss_hvp(model, data, "squared", vector),
    }


def test_empty_data_is_refused(small):
    problem, y = small
    model, X = adapter(problem), problem.X
    v = models.parameter_vector(model)
    for data in ([], iter([]), [(X[:0], y[:0])]):
        for call in all_measures(model, data, v).values():
            with pytest.raises(ValueError, match="no example"):
                call()
    for name, call in all_measures(model, X[:0], v).items():
        if name in ("geometric_complexity", "dirichlet_energy", "estimate", "output_grad_sq_norms"):
            with pytest.raises(ValueError, match="no example"):
                call()
    with pytest.raises(ValueError, match="no example"):
        models.igr_terms(model, (X[:0], y[:0]), "squared", batch_size=2)
    with pytest.raises(ValueError, match="no example"):
        models.loss_hvp(model, (X[:0], y[:0]), "squared", v)
    with pytest.raises(ValueError, match="no example"):
        models.loss_grad_sq_norms(model, (X[:0], y[:0]), "squared")


def test_labels_are_required_where_a_loss_is(small):
    problem, y = small
    model, X = adapter(problem), problem.X
    v = models.parameter_vector(model)
    for make in (lambda: X, lambda: [X[:3], X[3:]], lambda: (a for a in (X[:3], X[3:]))):
        with pytest.raises(TypeError, match="labels"):
            models.loss_grad_sq_norms(model, make(), "squared")
        with pytest.raises(TypeError, match="labels"):
            models.loss_hvp(model, make(), "squared", v)
    with pytest.raises(TypeError, match="labels"):
        models.igr_terms(model, X, "squared")


def test_igr_terms_ask_for_labels_in_an_iterable(small):
    problem, _ = small
    X = problem.X
    with pytest.raises(TypeError, match="labels"):
        models.igr_terms(adapter(problem), [X[:3], X[3:]], "squared")


def test_batch_size_goes_with_a_pair_only(small):
    problem, y = small
    model, X = adapter(problem), problem.X
    with pytest.raises(TypeError, match="batch_size"):
        models.igr_terms(model, [(X, y)], "squared", batch_size=2)
    with pytest.raises(TypeError, match="batch_size"):
        models.igr_terms(model, (X, y), "squared")
    with pytest.raises(ValueError, match="batch_size"):
        models.igr_terms(model, (X, y), "squared", batch_size=0)


def test_malformed_data_is_refused(small):
    problem, y = small
    model, X = adapter(problem), problem.X
    with pytest.raises(ValueError, match=r"data: X has 6 examples but y has 5"):
        models.loss_grad_sq_norms(model, (X, y[:5]), "squared")
    with pytest.raises(ValueError, match=r"data batch 1: X has 3 examples but y has 2"):
        models.loss_grad_sq_norms(model, [(X[:3], y[:3]), (X[3:], y[4:])], "squared")
    with pytest.raises(ValueError, match=r"X has 6 examples but y has 5"):
        models.igr_terms(model, (X, y[:5]), "squared", batch_size=2)
    with pytest.raises(ValueError, match=r"X must have shape \(n, \*input_shape\)"):
        models.geometric_complexity(model, X[:, 0])
    with pytest.raises(ValueError, match=r"data: X must have shape"):
        models.loss_grad_sq_norms(model, (X[:, 0], y), "squared")
    with pytest.raises(ValueError, match=r"data batch 1: X must have shape"):
        models.geometric_complexity(model, [X[:3], X[3:, 0]])
    for data in ("abc", b"abc", 3.0, None):
        with pytest.raises(TypeError, match="data must be"):
            models.geometric_complexity(model, data)
    with pytest.raises(TypeError, match="input_key"):
        models.geometric_complexity(model, {"X": X})
    with pytest.raises(TypeError, match="data batch 0 must be an array X or a pair"):
        models.geometric_complexity(model, ["abc"])
    # Extra fields after (X, y), as datasets with weights or indices yield, are ignored.
    assert models.igr_terms(model, (X, y, y), "squared", batch_size=2) == models.igr_terms(
        model, (X, y), "squared", batch_size=2
    )


def test_hvp_vector_is_checked(small):
    problem, y = small
    model, X = adapter(problem), problem.X
    p = problem.mlp.n_params
    with pytest.raises(ValueError, match=rf"vector must have shape \({p},\)"):
        models.loss_hvp(model, (X, y), "squared", np.ones(p + 1))
    with pytest.raises(ValueError, match="vector must have shape"):
        models.loss_hvp(model, (X, y), "squared", np.ones((p, 1)))
    for bad in (np.nan, np.inf):
        v = np.ones(p)
        v[3] = bad
        with pytest.raises(ValueError, match="vector must hold finite"):
            models.loss_hvp(model, (X, y), "squared", v)


def test_wrap_refuses_what_it_cannot_adapt(small):
    problem, _ = small
    model = adapter(problem)
    assert models.wrap(model) is model
    with pytest.raises(TypeError, match="params must be left out"):
        models.wrap(model, params=problem.params)
    with pytest.raises(TypeError, match=r"a gcref\.MLP needs params="):
        models.wrap(problem.mlp)
    with pytest.raises(TypeError, match="backend must be left out"):
        models.wrap(model, backend="numpy")
    with pytest.raises(TypeError, match="needs params"):
        models.wrap(lambda params, x: x)
    with pytest.raises(TypeError, match="needs params"):
        models.geometric_complexity(lambda params, x: x, problem.X)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module or a JAX apply"):
        models.wrap(3)


def test_wrap_refuses_params_with_a_torch_module():
    require_backend("torch")
    import torch

    with pytest.raises(TypeError, match="params must be left out for a torch.nn.Module"):
        models.wrap(torch.nn.Linear(2, 1), params={"w": np.ones(2)})
