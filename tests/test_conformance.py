"""The conformance checks of gcref.testing pass correct implementations and catch planted mistakes.

Correct implementations (``conformance_impls``, written from the definitions with each
framework's own autodiff) must pass every check in NumPy, torch and JAX; each planted
mistake, the usual ones (a sum for a mean, a missing 1/2, a left-out bias, a wrong sign,
h/2 for h/4, ...), must be caught with a message that names the quantity, the deviation,
the mistake and the drawn problem, which :func:`gcref.testing.strategies.make_problem`
rebuilds. Few examples per check and no shrinking keep this fast; the examples are
derandomised so that every check reuses the same shapes (JAX compiles per shape).
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from conformance_impls import QUANTITIES, jax_impls, numpy_impls, torch_impls
from conftest import require_backend
from hypothesis import Phase, settings

import gcref
from gcref.testing import conformance
from gcref.testing.conformance import ConformanceError
from gcref.testing.strategies import make_problem

EXAMPLES = {"numpy": 10, "torch": 6, "jax": 3}
# JAX compiles every primitive once per shape and activation (seconds each on the CPU):
# its checks here draw two architectures (one output, for the logistic loss, and two) and
# two activations; NumPy and torch draw every shape and activation.
OPTIONS = {"numpy": {}, "torch": {},
           "jax": {"architectures": ((3, 8, 2), (4, 5, 3, 1)), "activations": ("tanh", "relu")}}


def quick(framework, examples=None):
    return settings(
        max_examples=examples or EXAMPLES[framework],
        deadline=None,
        database=None,
        derandomize=True,
        phases=(Phase.explicit, Phase.generate),
    )


def impls(framework):
    if framework == "numpy":
        return numpy_impls
    require_backend(framework)
    return torch_impls() if framework == "torch" else jax_impls()


@pytest.mark.parametrize("framework", conformance.FRAMEWORKS)
@pytest.mark.parametrize("quantity", QUANTITIES)
def test_a_correct_implementation_passes(quantity, framework):
    check = getattr(conformance, f"check_{quantity}")
    result = check(getattr(impls(framework), quantity), framework, settings=quick(framework),
                   **OPTIONS[framework])
    assert result.passed
    assert result.framework == framework
    assert result.n_examples >= 1
    assert result.largest_deviation <= result.tolerance


# -- planted mistakes -------------------------------------------------------------------


def gc_summed(framework):
    if framework == "torch":
        import torch

        base = impls("torch")
        return lambda model, X: torch.sum(base.input_jacobian(model, X) ** 2)
    return lambda model, X: np.sum(numpy_impls.input_jacobian(model, X) ** 2)


def de_without_half(framework):
    return impls(framework).geometric_complexity


def bias_left_out(framework):
    """||grad_theta f||^2 over the weight matrices only."""
    if framework == "torch":
        from torch.func import functional_call, jacrev, vmap

        def fn(model, X):
            weights = {n: p.detach() for n, p in model.named_parameters() if n.endswith("weight")}
            jac = vmap(jacrev(lambda w, x: functional_call(model, w, (x[None],), strict=False)[0]),
                       in_dims=(None, 0))(weights, X)
            return sum((j**2).flatten(1).sum(1) for j in jac.values())

        return fn
    import jax
    import jax.numpy as jnp

    def fn(model, X):
        apply, params = model
        weights = tuple(W for W, _ in params)

        def f(ws, x):
            return apply(tuple((W, b) for W, (_, b) in zip(ws, params)), x[None])[0]

        jac = jax.vmap(jax.jacrev(f), in_axes=(None, 0))(weights, X)
        return sum(jnp.sum(j.reshape(j.shape[0], -1) ** 2, 1) for j in jac)

    return fn


def per_example_norms_of_mean_loss(framework):
    """||grad l_n||^2 with each example's loss divided by the batch size (a mean over one)."""
    base = impls(framework)
    return lambda model, X, y, loss: base.loss_grad_sq_norms(model, X, y, loss) / X.shape[0] ** 2


def per_example_modified_loss_from_mean_loss(framework):
    base = impls(framework)
    return lambda model, X, y, loss, h: base.modified_loss_gd(model, X, y, loss, h)


def hvp_wrong_sign(framework):
    base = impls(framework)
    if framework == "torch":
        return lambda model, X, y, loss, v: [-a for a in base.loss_hvp(model, X, y, loss, v)]
    import jax

    return lambda model, X, y, loss, v: jax.tree_util.tree_map(lambda a: -a, base.loss_hvp(model, X, y, loss, v))


def gd_with_h_over_2(framework):
    base = impls(framework)

    def fn(model, X, y, loss, h):
        L = base.modified_loss_gd(model, X, y, loss, 0.0)
        return L + h / 2 * base.grad_sq(model, X, y, loss)

    return fn


def sgd_averaged_over_examples(framework):
    base = impls(framework)

    def fn(model, X, y, loss, h, batches):
        penalty = sum(base.grad_sq(model, X[b], y[b], loss) for b in batches)
        return base.modified_loss_gd(model, X, y, loss, 0.0) + h / (4 * X.shape[0]) * penalty

    return fn


def path_norm_without_biases(framework):
    def fn(model, p):
        _, params = model
        v = np.ones(params[0][0].shape[1])
        for W, _ in params:
            v = np.abs(W) ** p @ v
        return np.sum(v) ** (1 / p)

    return fn


def estimate_with_sphere_probes_without_k(framework):
    """Probes uniform on the unit sphere, whose statistic needs the factor k."""

    def fn(model, X, seed):
        J = numpy_impls.input_jacobian(model, X)
        v = np.random.default_rng(seed).normal(size=J.shape[:2])
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return np.mean(np.sum(np.einsum("nk,nkd->nd", v, J) ** 2, axis=1))

    return fn


def transfer_ratio_with_frobenius_norms(framework):
    def fn(model, X):
        mlp, params = model
        return gcref.transfer_ratio(mlp, params, X, norm="frobenius")

    return fn


PLANTED = [
    ("geometric_complexity", "torch", gc_summed, r"matches the sum over the N = \d+ examples"),
    ("geometric_complexity", "numpy", gc_summed, r"matches the sum over the N = \d+ examples"),
    ("dirichlet_energy", "jax", de_without_half, r"the factor 1/2 of the Dirichlet energy is missing"),
    ("param_grad_sq_norms", "torch", bias_left_out, r"the bias terms .* are left out"),
    ("param_grad_sq_norms", "jax", bias_left_out, r"the bias terms .* are left out"),
    ("loss_grad_sq_norms", "torch", per_example_norms_of_mean_loss,
     r"a mean-loss normalisation where the per-example loss belongs"),
    ("modified_loss_per_example", "jax", per_example_modified_loss_from_mean_loss,
     r"the mean loss's gradient where the per-example gradients belong"),
    ("loss_hvp", "torch", hvp_wrong_sign, r"-H v: the wrong sign"),
    ("loss_hvp", "jax", hvp_wrong_sign, r"-H v: the wrong sign"),
    ("modified_loss_gd", "jax", gd_with_h_over_2, r"h/2 in place of h/4"),
    ("modified_loss_gd", "torch", gd_with_h_over_2, r"h/2 in place of h/4"),
    ("modified_loss_sgd", "torch", sgd_averaged_over_examples,
     r"averaged over the N = \d+ examples instead of the m = \d+ batches"),
    ("path_norm", "numpy", path_norm_without_biases, r"without bias paths"),
    ("gc_estimate", "numpy", estimate_with_sphere_probes_without_k, r"1/k = 1/\d+"),
    ("transfer_ratio", "numpy", transfer_ratio_with_frobenius_norms, r"Frobenius norms in place of spectral"),
]

QUANTITY_NAMES = {
    "geometric_complexity": "geometric complexity",
    "dirichlet_energy": "Dirichlet energy",
    "param_grad_sq_norms": "per-example ||grad_theta f||^2",
    "loss_grad_sq_norms": "per-example ||grad_theta l_n||^2",
    "modified_loss_per_example": "modified loss (per example)",
    "loss_hvp": "loss Hessian-vector product",
    "modified_loss_gd": "modified loss (full-batch GD)",
    "modified_loss_sgd": "modified loss (SGD epoch)",
    "path_norm": "path norm",
    "gc_estimate": "GC probe estimate",
    "transfer_ratio": "transfer ratio",
}


@pytest.mark.parametrize(
    "quantity, framework, planted, explanation",
    PLANTED,
    ids=[f"{q}-{fw}-{planted.__name__}" for q, fw, planted, _ in PLANTED],
)
def test_a_planted_mistake_is_caught_and_named(quantity, framework, planted, explanation):
    if framework != "numpy":
        require_backend(framework)
    check = getattr(conformance, f"check_{quantity}")
    with pytest.raises(ConformanceError) as caught:
        check(planted(framework), framework, settings=quick(framework, examples=20), **OPTIONS[framework])
    message = str(caught.value)
    assert message.startswith(QUANTITY_NAMES[quantity] + ":")
    assert re.search(explanation, message), message
    assert "replay: gcref.testing.strategies.make_problem(" in message
    assert isinstance(caught.value, AssertionError)


def test_the_message_replays_the_drawn_problem():
    """The make_problem call in a failure's message rebuilds the very problem it names."""
    with pytest.raises(ConformanceError) as caught:
        conformance.check_geometric_complexity(gc_summed("numpy"), "numpy", settings=quick("numpy"))
    message = str(caught.value)
    call = re.search(r"replay: gcref\.testing\.strategies\.(make_problem\(.*\))", message).group(1)
    problem = eval(call, {"make_problem": make_problem, "gcref": gcref, "numpy": np})
    got = float(re.search(r"got ([-0-9.e+]+)", message).group(1))
    reference = float(re.search(r"reference ([-0-9.e+]+)", message).group(1))
    assert got == pytest.approx(float(gc_summed("numpy")((problem.mlp, problem.params), problem.X)), rel=1e-9)
    assert reference == pytest.approx(
        gcref.geometric_complexity(problem.mlp, problem.params, problem.X), rel=1e-9
    )


def test_an_exception_in_the_users_function_names_the_problem():
    def broken(model, X):
        raise RuntimeError("shape mismatch in my code")

    with pytest.raises(ConformanceError, match=r"raised RuntimeError: shape mismatch in my code(.|\n)*problem: MLP"):
        conformance.check_geometric_complexity(broken, "numpy", settings=quick("numpy"))


def test_a_wrong_shape_is_reported_as_such():
    with pytest.raises(ConformanceError, match=r"returned shape \(\d+, \d+\); the reference has shape"):
        conformance.check_param_grad_sq_norms(
            lambda model, X: np.zeros((X.shape[0], 2)), "numpy", settings=quick("numpy")
        )


def test_nan_is_reported_as_such():
    with pytest.raises(ConformanceError, match="non-finite"):
        conformance.check_path_norm(lambda model, p: np.nan, "numpy", settings=quick("numpy"))


def test_bad_arguments_are_refused_early():
    with pytest.raises(ValueError, match="framework must be one of"):
        conformance.check_geometric_complexity(numpy_impls.geometric_complexity, "tensorflow")
    with pytest.raises(TypeError, match="settings must be a hypothesis.settings"):
        conformance.check_geometric_complexity(numpy_impls.geometric_complexity, "numpy", settings={"max_examples": 3})
    with pytest.raises(ValueError, match="unknown loss|loss"):
        conformance.check_loss_grad(numpy_impls.loss_grad, "numpy", losses=("hinge",))
    with pytest.raises(ValueError, match="replicates"):
        conformance.check_gc_estimate(numpy_impls.gc_estimate, "numpy", replicates=2)
    with pytest.raises(ValueError, match="ps must hold positive"):
        conformance.check_path_norm(numpy_impls.path_norm, "numpy", ps=(0.0,))


def test_the_checks_are_reachable_from_gcref_testing_and_only_they_import_hypothesis():
    code = (
        "import sys, gcref, gcref.testing as t\n"
        "assert 'hypothesis' not in sys.modules, 'import gcref.testing imported hypothesis'\n"
        "assert t.check_loss_hvp is __import__('gcref.testing.conformance', fromlist=['x']).check_loss_hvp\n"
        "assert 'hypothesis' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_architectures_restrict_the_drawn_shapes():
    seen = set()

    def gc(model, X):
        mlp, _params = model
        seen.add((mlp.sizes, X.shape[0]))
        return numpy_impls.geometric_complexity(model, X)

    conformance.check_geometric_complexity(gc, "numpy", settings=quick("numpy"),
                                           architectures=((2, 3, 1), (1, 1)))
    assert seen and seen <= {((2, 3, 1), 4), ((1, 1), 4)}


def test_without_hypothesis_the_checker_works_and_the_kit_says_what_to_install():
    code = (
        "import sys\n"
        "sys.modules['hypothesis'] = None\n"
        "import numpy as np, gcref.testing as t\n"
        "assert t.check_jvp(np.sin, np.ones(2), lambda v: np.cos(np.ones(2)) * v, np.random.default_rng(0)).passed\n"
        "for name in ('gcref.testing.strategies', 'gcref.testing.conformance'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError as error:\n"
        "        assert \"pip install 'gcref[testing]'\" in str(error), error\n"
        "    else:\n"
        "        raise SystemExit(name + ' imported without hypothesis')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_miscalibrated_standard_error_is_caught():
    """An estimate whose reported standard error is 10 times too large (a sqrt(N) slip and more)."""

    def fn(model, X, seed):
        value, stderr = numpy_impls.gc_estimate(model, X, seed)
        return value, 10 * stderr

    with pytest.raises(ConformanceError, match="standard error .* is not calibrated"):
        conformance.check_gc_estimate(fn, "numpy", settings=quick("numpy", examples=20))
