"""JaxModel with the batch sharded over two host devices (issue 7, item 4).

XLA's device count is fixed when JAX starts, so the check runs in a subprocess started
with ``--xla_force_host_platform_device_count=2``; this test asserts on its exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax
    import numpy as np

    import gcref
    import gcref.models as gm
    from gcref.backends.jax_model import JaxModel
    from gcref.params import flatten_params
    from gcref.nets.jax import mlp_apply_from_gcref, small_cnn
    from gcref.tolerances import tolerance

    assert len(jax.devices()) == 2, jax.devices()
    RTOL, ATOL = tolerance(np.float64)
    N, CHUNK = 7, 3  # chunks 3, 3, 1: each padded to 4 rows, 2 per device


    def close(a, b):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


    def measures(model, X, y, loss, v):
        kw = dict(chunk_size=CHUNK)
        terms = gm.igr_terms(model, (X, y), loss, batch_size=2, **kw)
        estimate = gm.estimate_geometric_complexity(
            model, X, np.random.default_rng(3), n_probes=2, **kw
        )
        gc = {
            mode: gm.geometric_complexity(model, X, mode=mode, per_example=True, **kw)
            for mode in ("reverse", "forward")
        }
        return {
            "gc_reverse": gc["reverse"].per_example,
            "gc_forward": gc["forward"].per_example,
            "estimate": [estimate.value, estimate.stderr],
            "output_grads": gm.output_grad_sq_norms(model, X, **kw),
            "loss_grads": gm.loss_grad_sq_norms(model, (X, y), loss, **kw),
            "igr": [terms.loss, terms.full_batch, terms.mini_batch, terms.per_example],
            "hvp": gm.loss_hvp(model, (X, y), loss, v, **kw),
        }


    def sharded_measures(apply, params, X, y, loss, v):
        sharded = JaxModel(apply, params)
        assert sharded.shard, "two devices: sharding is the default"
        with gcref.get_backend("jax").scope(np.float64):
            placed = sharded._place(np.asarray(X[:CHUNK]), 4)
        assert len(placed.sharding.device_set) == 2, placed.sharding
        assert [s.data.shape[0] for s in placed.addressable_shards] == [2, 2]
        return measures(sharded, X, y, loss, v)


    rng = np.random.default_rng(0)
    net = gcref.MLP((3, 5, 2), activation="tanh")
    params = net.init(rng, bias="normal")
    X, y = rng.normal(size=(N, 3)), rng.normal(size=(N, 2))
    v = rng.normal(size=net.n_params)
    apply, tree = mlp_apply_from_gcref(net, params)
    # The MLP against the NumPy reference, the CNN against the same model unsharded.
    got = sharded_measures(apply, tree, X, y, "squared", v)
    mean_loss = gcref.mean_loss(net, params, X, y, "squared")
    batches = [np.arange(s, min(s + 2, N)) for s in range(0, N, 2)]
    reference = gcref.geometric_complexity(net, params, X, per_example=True)
    close(got["gc_reverse"], reference.per_example)
    close(got["gc_forward"], reference.per_example)
    estimate = gcref.estimate_geometric_complexity(
        net, params, X, np.random.default_rng(3), n_probes=2
    )
    close(got["estimate"], [estimate.value, estimate.stderr])
    close(got["output_grads"], gcref.param_grad_sq_norms(net, params, X).total)
    close(got["loss_grads"], gcref.loss_grad_sq_norms(net, params, X, y, "squared").total)
    close(got["igr"], [
        mean_loss,
        gcref.modified_loss_gd(net, params, X, y, "squared", 4.0) - mean_loss,
        gcref.modified_loss_sgd(net, params, X, y, "squared", 4.0, batches) - mean_loss,
        gcref.modified_loss_per_example(net, params, X, y, "squared", 4.0) - mean_loss,
    ])
    with_v = gcref.loss_hvp(net, params, X, y, "squared", gcref.unflatten_params(v, params))
    close(got["hvp"], flatten_params(with_v))

    init, cnn = small_cnn(in_channels=2, num_classes=3, width=4)
    cnn_params = jax.tree_util.tree_map(
        lambda a: np.asarray(a) + 0.1 * rng.normal(size=a.shape),
        init(rng, (6, 6, 2), dtype=np.float64),
    )
    Xc, yc = rng.normal(size=(N, 6, 6, 2)), rng.integers(0, 3, size=N)
    p = gm.parameter_vector(cnn, params=cnn_params).shape[0]
    args = (Xc, yc, "softmax_cross_entropy", rng.normal(size=p))
    got = sharded_measures(cnn, cnn_params, *args)
    want = measures(JaxModel(cnn, cnn_params, shard=False), *args)
    for name in want:
        close(got[name], want[name])

    # Held state (a Flax model's batch_stats): replicated like the parameters.
    def normalised(p, s, x):
        return jax.numpy.tanh(((x - s["mean"]) / s["scale"]) @ p["W"] + p["b"])

    theta = {"W": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}
    state = {"mean": rng.normal(size=3), "scale": 1.0 + rng.random(3)}
    v = rng.normal(size=8)
    got = measures(JaxModel(normalised, theta, state=state), X, y, "squared", v)
    want = measures(JaxModel(normalised, theta, state=state, shard=False), X, y, "squared", v)
    closed_over = measures(
        JaxModel(lambda p, x: normalised(p, state, x), theta, shard=False), X, y, "squared", v
    )
    for name in want:
        close(got[name], want[name])
        close(want[name], closed_over[name])

    # A NaN held by the second device only: row 5 of 7, in the chunk of rows 3-5 padded
    # with a copy of row 5; rows 3-4 lie on the first device, row 5 and its copy on the second.
    bad = X.copy()
    bad[5, 1] = np.nan
    for measure in (
        lambda m: gm.geometric_complexity(m, bad, chunk_size=CHUNK),
        lambda m: gm.loss_hvp(m, (bad, y), "squared", rng.normal(size=8), chunk_size=CHUNK),
    ):
        try:
            measure(JaxModel(normalised, theta, state=state))
        except ValueError as err:
            assert "X contains NaN or infinite values" in str(err), err
        else:
            raise AssertionError("a NaN on the second device was not refused")
    print("sharded results equal")
    """
)


def test_sharding_over_two_host_devices_gives_the_single_device_results():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sharded results equal" in done.stdout
