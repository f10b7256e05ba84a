"""``gcref measure`` end to end, on model factories, weights and data that the tests write.

The values are checked against per-example loops of the frameworks' own autodiff
(``torch.autograd.functional.jacobian`` and ``torch.autograd.grad`` example by example,
``jax.jacfwd`` example by example): slow, obviously correct references that share no code
with :mod:`gcref.models`. The summary statistics are checked against NumPy's on those
reference values. Errors are checked for naming the option and what was expected.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from conftest import require_backend

import gcref
from gcref.cli import main

RTOL, ATOL = gcref.tolerance(np.float64)
N, D, K, BATCH = 9, 3, 2, 4

FACTORIES = '''
import numpy as np


def torch_net(width=5, dtype="float64"):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Tanh(), torch.nn.Linear(width, 2))
    return net.to(getattr(torch, dtype))


def jax_apply(p, x):
    import jax.numpy as jnp

    return jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]


def jax_params(width=5):
    rng = np.random.default_rng(1)
    return {"W1": rng.standard_normal((3, width)), "b1": rng.standard_normal(width),
            "W2": rng.standard_normal((width, 2)), "b2": rng.standard_normal(2)}


def jax_net(width=5):
    return jax_apply, jax_params(width)


def jax_apply_only():
    return jax_apply


def pairs():
    rng = np.random.default_rng(2)
    return rng.standard_normal((9, 3)), rng.standard_normal((9, 2))


def dict_batches(batch=4):
    X, y = pairs()
    return [{"image": X[s:s + batch], "label": y[s:s + batch]} for s in range(0, 9, batch)]


def not_a_model():
    return 3


def equinox_net(width=5):
    import equinox as eqx
    import jax

    with jax.enable_x64(True):
        mlp = eqx.nn.MLP(3, 2, width, 1, activation=jax.nn.tanh, key=jax.random.key(3))
        return jax.tree_util.tree_map(
            lambda a: a.astype("float64") if eqx.is_inexact_array(a) else a, mlp
        )
'''


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A directory with the factories module (on sys.path) and the data file, as cwd."""
    (tmp_path / "measure_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("measure_factories", None)
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((N, D)), rng.standard_normal((N, K))
    np.savez(tmp_path / "data.npz", X=X, y=y, inputs=X)
    yield tmp_path
    sys.modules.pop("measure_factories", None)


def run(argv, capsys):
    """``gcref measure`` in this process: ``(status, stdout, stderr)``."""
    status = main(["measure", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def run_json(argv, capsys, path):
    status, out, err = run([*argv, "--json", str(path)], capsys)
    assert status == 0, err
    return json.loads(path.read_text()), out


def data():
    rng = np.random.default_rng(2)
    return rng.standard_normal((N, D)), rng.standard_normal((N, K))


# -- references -----------------------------------------------------------------------------


def torch_reference(module, X, y, batch_size):
    """Every quantity by per-example loops of torch.autograd (squared loss)."""
    import torch

    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    params = list(module.parameters())

    def sq(grads):
        return sum(float((g**2).sum()) for g in grads)

    gc, pg, lg = [], [], []
    for n in range(X.shape[0]):
        J = torch.autograd.functional.jacobian(module, Xt[n : n + 1])
        gc.append(float((J**2).sum()))
        out = module(Xt[n : n + 1])[0]
        pg.append(sum(sq(torch.autograd.grad(out[i], params, retain_graph=True)) for i in range(K)))
        loss_n = 0.5 * ((out - yt[n]) ** 2).sum()
        lg.append(sq(torch.autograd.grad(loss_n, params)))

    def mean_loss(a, b):
        return 0.5 * ((module(Xt[a:b]) - yt[a:b]) ** 2).sum(dim=1).mean()

    loss = mean_loss(0, X.shape[0])
    full = sq(torch.autograd.grad(loss, params))
    mini = np.mean(
        [sq(torch.autograd.grad(mean_loss(s, s + batch_size), params)) for s in range(0, X.shape[0], batch_size)]
    )
    return {
        "gc": np.array(gc), "param": np.array(pg), "lossgrad": np.array(lg),
        "loss": loss.item(), "full_batch": full, "mini_batch": float(mini),
    }


def jax_reference(apply, params, X):
    """Per-example ||J(x_n)||_F^2 by jax.jacfwd, example by example, in float64."""
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        p = jax.tree_util.tree_map(jnp.asarray, params)
        f = lambda x: apply(p, x[None])[0]
        return np.array([float(jnp.sum(jax.jacfwd(f)(jnp.asarray(x)) ** 2)) for x in X])


def close(value, reference):
    np.testing.assert_allclose(value, reference, rtol=RTOL, atol=ATOL)


def check_summary(summary, values):
    values = np.asarray(values)
    assert summary["n"] == values.size
    close(summary["mean"], values.mean())
    close(summary["std"], values.std())
    close(summary["min"], values.min())
    close(summary["median"], np.median(values))
    close(summary["max"], values.max())
    close(summary["q0.05"], np.quantile(values, 0.05))
    close(summary["q0.95"], np.quantile(values, 0.95))


# -- torch ----------------------------------------------------------------------------------


@pytest.fixture
def torch_state(work):
    require_backend("torch")
    import measure_factories
    import torch

    net = measure_factories.torch_net()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.7)  # the file's weights, not the factory's: the state must be read
    torch.save(net.state_dict(), work / "net.pt")
    return net


ALL = "gc,gc_estimate,param_grad_sq_norms,loss_grad_sq_norms,igr_terms,loss"


def test_torch_state_dict_every_quantity(work, torch_state, capsys):
    out, table = run_json(
        ["--model", "measure_factories:torch_net", "--state", "net.pt", "--data", "data.npz",
         "--loss", "squared", "--batch-size", str(BATCH), "--quantities", ALL, "--probes", "3",
         "--seed", "5", "--per-example"],
        capsys, work / "out.json",
    )
    X, y = data()
    ref = torch_reference(torch_state, X, y, BATCH)
    r = out["results"]
    close(r["gc"]["value"], ref["gc"].mean())
    close(r["gc"]["per_example"], ref["gc"])
    check_summary(r["gc"]["per_example_summary"], ref["gc"])
    check_summary(r["param_grad_sq_norms"]["per_example_summary"], ref["param"])
    close(r["param_grad_sq_norms"]["per_example"], ref["param"])
    check_summary(r["loss_grad_sq_norms"]["per_example_summary"], ref["lossgrad"])
    close(r["loss"]["value"], ref["loss"])
    igr = r["igr_terms"]
    close([igr["loss"], igr["full_batch"], igr["mini_batch"], igr["per_example"]],
          [ref["loss"], ref["full_batch"], ref["mini_batch"], ref["lossgrad"].mean()])
    assert (igr["n_examples"], igr["n_batches"]) == (N, -(-N // BATCH))
    # The estimate is unbiased, not exact: within 5 standard errors of the exact value,
    # and the seed is the one recorded.
    est = r["gc_estimate"]
    assert est["n_probes"] == 3 and est["n_examples"] == N
    assert abs(est["value"] - ref["gc"].mean()) < 5 * est["stderr"]
    assert est["settings"]["seed"] == 5
    s = out["settings"]
    assert s["model"]["state"] == "net.pt" and s["model"]["framework"] == "torch"
    assert s["data"]["X"] == f"({N}, {D}) float64" and s["loss"] == "squared"
    assert s["quantities"] == ALL.split(",")
    for name in ("gc", "gc_estimate", "igr_terms.full_batch", "loss", "per-example statistics"):
        assert name in table
    assert f"{ref['gc'].mean():.6e}" in table


def test_the_same_seed_gives_the_same_estimate_and_another_seed_another(work, torch_state, capsys):
    argv = ["--model", "measure_factories:torch_net", "--state", "net.pt", "--data", "data.npz",
            "--quantities", "gc_estimate", "--probes", "2"]
    a, _ = run_json([*argv, "--seed", "1"], capsys, work / "a.json")
    b, _ = run_json([*argv, "--seed", "1"], capsys, work / "b.json")
    c, _ = run_json([*argv, "--seed", "2"], capsys, work / "c.json")
    value = lambda out: out["results"]["gc_estimate"]["value"]
    assert value(a) == value(b) != value(c)


def test_default_quantities_follow_the_options(work, torch_state, capsys):
    argv = ["--model", "measure_factories:torch_net", "--state", "net.pt", "--data", "data.npz"]
    bare, _ = run_json(argv, capsys, work / "a.json")
    assert list(bare["results"]) == ["gc", "param_grad_sq_norms"]
    labelled, _ = run_json([*argv, "--loss", "squared"], capsys, work / "b.json")
    assert list(labelled["results"]) == ["gc", "param_grad_sq_norms", "loss_grad_sq_norms", "loss"]


def test_torchscript_weights_go_into_the_factory_module(work, torch_state, capsys):
    import torch

    torch.jit.script(torch_state).save(str(work / "net.ts"))
    out, _ = run_json(
        ["--model", "measure_factories:torch_net", "--torchscript", "net.ts", "--data", "data.npz",
         "--quantities", "gc"], capsys, work / "out.json",
    )
    close(out["results"]["gc"]["value"], torch_reference(torch_state, *data(), BATCH)["gc"].mean())
    status, _, err = run(["--torchscript", "net.ts", "--data", "data.npz"], capsys)
    assert status == 2 and "--model" in err and "--exported" in err


def test_exported_program(work, torch_state, capsys):
    import torch

    program = torch.export.export(
        torch_state, (torch.zeros(4, D, dtype=torch.float64),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    torch.export.save(program, str(work / "net.pt2"))
    out, _ = run_json(
        ["--exported", "net.pt2", "--data", "data.npz", "--loss", "squared",
         "--quantities", "gc,param_grad_sq_norms,loss"], capsys, work / "out.json",
    )
    ref = torch_reference(torch_state, *data(), BATCH)
    close(out["results"]["gc"]["value"], ref["gc"].mean())
    close(out["results"]["param_grad_sq_norms"]["per_example_summary"]["mean"], ref["param"].mean())
    close(out["results"]["loss"]["value"], ref["loss"])


def test_float32_model_reads_float64_data(work, torch_state, capsys):
    import measure_factories
    import torch

    net = measure_factories.torch_net(dtype="float32")
    net.load_state_dict({k: v.float() for k, v in torch_state.state_dict().items()})
    torch.save(net.state_dict(), work / "net32.pt")
    out, _ = run_json(
        ["--model", "measure_factories:torch_net", "--model-arg", "dtype=float32", "--state",
         "net32.pt", "--data", "data.npz", "--quantities", "gc"], capsys, work / "out.json",
    )
    assert out["settings"]["dtype"] == "float32"
    rtol, atol = gcref.tolerance(np.float32)
    np.testing.assert_allclose(
        out["results"]["gc"]["value"], torch_reference(torch_state, *data(), BATCH)["gc"].mean(),
        rtol=10 * rtol, atol=atol,  # float32 forward and backward passes of a 3-5-2 net
    )


def test_dataset_factories_pairs_and_dict_batches(work, torch_state, capsys):
    ref = torch_reference(torch_state, *data(), BATCH)
    common = ["--model", "measure_factories:torch_net", "--state", "net.pt", "--loss", "squared"]
    pairs, _ = run_json(
        [*common, "--dataset", "measure_factories:pairs", "--quantities", "loss,gc"],
        capsys, work / "a.json",
    )
    close(pairs["results"]["loss"]["value"], ref["loss"])
    # An iterable of dict batches: read with --x-key/--y-key; its batches are the
    # mini-batches of igr_terms (no --batch-size).
    batches, _ = run_json(
        [*common, "--dataset", "measure_factories:dict_batches", "--dataset-arg", f"batch={BATCH}",
         "--x-key", "image", "--y-key", "label", "--quantities", "igr_terms,gc"],
        capsys, work / "b.json",
    )
    close(batches["results"]["igr_terms"]["mini_batch"], ref["mini_batch"])
    close(batches["results"]["gc"]["value"], ref["gc"].mean())


def test_npz_keys_are_selectable(work, torch_state, capsys):
    out, _ = run_json(
        ["--model", "measure_factories:torch_net", "--state", "net.pt", "--data", "data.npz",
         "--x-key", "inputs", "--quantities", "gc"], capsys, work / "out.json",
    )
    close(out["results"]["gc"]["value"], torch_reference(torch_state, *data(), BATCH)["gc"].mean())


# -- JAX ------------------------------------------------------------------------------------


@pytest.fixture
def jax_files(work):
    require_backend("jax")
    import measure_factories

    from gcref.measure import save_jax_params

    params = {k: 0.5 * v for k, v in measure_factories.jax_params().items()}
    save_jax_params(work / "params.npz", params)
    np.savez(work / "named.npz", **params)
    with open(work / "params.pkl", "wb") as fh:
        pickle.dump(params, fh)
    return measure_factories.jax_apply, params


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "measure_factories:jax_net", "--params", "params.npz"],
        ["--model", "measure_factories:jax_apply_only", "--params", "named.npz"],
        ["--model", "measure_factories:jax_net", "--params", "params.pkl"],
    ],
    ids=["keyed-npz", "named-npz", "pickle"],
)
def test_jax_parameter_files(work, jax_files, capsys, argv):
    apply, params = jax_files
    out, _ = run_json([*argv, "--data", "data.npz", "--quantities", "gc"], capsys, work / "out.json")
    ref = jax_reference(apply, params, data()[0])
    close(out["results"]["gc"]["value"], ref.mean())
    check_summary(out["results"]["gc"]["per_example_summary"], ref)
    assert out["settings"]["model"]["framework"] == "jax"


def test_jax_factory_params_without_a_file(work, jax_files, capsys):
    import measure_factories

    out, _ = run_json(
        ["--model", "measure_factories:jax_net", "--data", "data.npz", "--quantities", "gc"],
        capsys, work / "out.json",
    )
    ref = jax_reference(measure_factories.jax_apply, measure_factories.jax_params(), data()[0])
    close(out["results"]["gc"]["value"], ref.mean())


def test_jax_parameter_file_errors(work, jax_files, capsys):
    np.savez(work / "wrong.npz", W1=np.zeros((3, 5)))
    status, _, err = run(["--model", "measure_factories:jax_net", "--params", "wrong.npz",
                          "--data", "data.npz"], capsys)
    assert status == 2 and "--params" in err and "missing" in err and "['W1']" in err
    status, _, err = run(["--model", "measure_factories:jax_apply_only", "--data", "data.npz"], capsys)
    assert status == 2 and "--params" in err
    status, _, err = run(["--model", "measure_factories:jax_net", "--params", "params.npz",
                          "--device", "cuda", "--data", "data.npz"], capsys)
    assert status == 2 and "--device" in err and "JAX" in err


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--model", "measure_factories.torch_net"], ["--model", "package.module:function"]),
        (["--model", "no_such_module_xyz:f"], ["cannot import module 'no_such_module_xyz'"]),
        (["--model", "measure_factories:no_such"], ["has no attribute 'no_such'"]),
        (["--model", "measure_factories:not_a_model"], ["returned int"]),
        (["--model", "measure_factories:torch_net", "--model-arg", "width"], ["--model-arg", "key=value"]),
        (["--model", "measure_factories:torch_net", "--state", "absent.pt"], ["--state", "absent.pt", "no such file"]),
        (["--model", "measure_factories:torch_net", "--state", "net.pt", "--data", "absent.npz"],
         ["--data", "absent.npz", "no such file"]),
        (["--model", "measure_factories:torch_net", "--state", "net.pt", "--data", "data.npz",
          "--x-key", "pixels"], ["no array 'pixels'", "['X', 'inputs', 'y']", "--x-key"]),
        (["--model", "measure_factories:torch_net", "--state", "net.pt", "--data", "data.npz",
          "--y-key", "labels"], ["no array 'labels'", "--y-key"]),
        (["--model", "measure_factories:torch_net", "--state", "net.pt", "--data", "data.npz",
          "--x-key", "y", "--y-key", "X", "--quantities", "gc"], ["gc:"]),
        (["--model", "measure_factories:torch_net", "--state", "net.pt", "--data", "data.npz",
          "--quantities", "loss"], ["loss need --loss"]),
        (["--model", "measure_factories:torch_net", "--state", "net.pt", "--data", "data.npz",
          "--quantities", "igr_terms", "--loss", "squared"], ["--batch-size"]),
        (["--model", "measure_factories:torch_net", "--state", "net.pt", "--data", "data.npz",
          "--quantities", "gc,curvature"], ["unknown quantities ['curvature']"]),
        (["--model", "measure_factories:torch_net", "--state", "net.pt", "--data", "data.npz",
          "--loss", "hinge"], ["hinge"]),
        (["--model", "measure_factories:torch_net", "--model-arg", "width=7", "--state", "net.pt",
          "--data", "data.npz"], ["the weights do not fit", "size mismatch"]),
        (["--model", "measure_factories:torch_net", "--state", "data.npz", "--data", "data.npz"],
         ["--state", "weights_only"]),
        (["--model", "measure_factories:torch_net", "--state", "net.pt", "--params", "p.npz"],
         ["--params", "--state"]),
        (["--model", "measure_factories:torch_net", "--state", "net.pt"], ["--data", "--dataset"]),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, list) and all(isinstance(s, str) for s in v) else None,
)
def test_bad_input_exits_2_with_a_message(work, torch_state, capsys, argv, needles):
    status, _, err = run(argv, capsys)
    assert status == 2
    assert err.startswith("gcref measure: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)


def test_labelled_quantity_without_targets(work, torch_state, capsys):
    X, _ = data()
    np.savez(work / "x_only.npz", X=X)
    status, _, err = run(["--model", "measure_factories:torch_net", "--state", "net.pt",
                          "--data", "x_only.npz", "--loss", "squared", "--quantities", "loss"], capsys)
    assert status == 2 and "need targets" in err


def test_help_lists_quantities_and_examples(capsys):
    assert main(["measure", "--help"]) == 0
    text = capsys.readouterr().out
    for name in gcref.measure.QUANTITIES:
        assert name in text
    assert "--state" in text and "--exported" in text and "examples:" in text


def test_console_entry_with_pythonpath(work, torch_state):
    """``python -m gcref measure`` from another directory, the factory found through PYTHONPATH."""
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(work), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "gcref", "measure", "--model", "measure_factories:torch_net",
         "--state", str(work / "net.pt"), "--data", str(work / "data.npz"), "--quantities", "gc",
         "--json", "out.json"],
        check=False, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads((elsewhere / "out.json").read_text())
    close(out["results"]["gc"]["value"], torch_reference(torch_state, *data(), BATCH)["gc"].mean())


def test_cuda_device(work, torch_state, capsys):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    out, _ = run_json(
        ["--model", "measure_factories:torch_net", "--state", "net.pt", "--device", "cuda",
         "--data", "data.npz", "--loss", "squared", "--quantities", "gc,loss_grad_sq_norms"],
        capsys, work / "out.json",
    )
    ref = torch_reference(torch_state, *data(), BATCH)
    close(out["results"]["gc"]["value"], ref["gc"].mean())
    close(out["results"]["loss_grad_sq_norms"]["per_example_summary"]["mean"], ref["lossgrad"].mean())
    assert out["settings"]["model"]["device"] == "cuda"



def test_equinox_module_factory(work, capsys):
    """A factory returning an Equinox module is measured on its own arrays."""
    require_backend("jax")
    if not os.environ.get("CI"):  # under CI the dev extra must have installed it
        pytest.importorskip("equinox")
    import jax

    import measure_factories

    out, _ = run_json(
        ["--model", "measure_factories:equinox_net", "--data", "data.npz", "--quantities", "gc"],
        capsys, work / "out.json",
    )
    mlp = measure_factories.equinox_net()
    X = data()[0]
    with jax.enable_x64(True):
        jac = np.asarray(jax.vmap(jax.jacrev(mlp))(X))
    ref = np.sum(jac.reshape(N, -1) ** 2, axis=1)
    close(out["results"]["gc"]["value"], ref.mean())
    assert out["settings"]["model"]["framework"] == "jax"
    status, _, err = run(["--model", "measure_factories:equinox_net", "--data", "data.npz",
                          "--params", "data.npz"], capsys)
    assert status == 2 and "holds its own arrays" in err
