"""Independent implementations of every quantity the conformance checks verify, per framework.

Written as a user would write them, from the definitions of docs/math.md and the
framework's own autodiff (torch.func, jax), not from gcref's primitives: NumPy by
hand-coded forward-mode Jacobians and back-propagation, torch and JAX by automatic
differentiation. ``tests/test_conformance.py`` shows each passes, and that the planted
mistakes (small edits of these) are caught.

Each framework's functions share the names of the quantities: ``input_jacobian``,
``geometric_complexity``, ``dirichlet_energy``, ``gc_estimate``, ``param_grad_sq_norms``,
``loss_grad_sq_norms``, ``loss_grad``, ``loss_hvp``, ``modified_loss_gd``,
``modified_loss_sgd``, ``modified_loss_per_example``, ``transfer_ratio``, ``path_norm``,
with the signatures of :mod:`gcref.testing.conformance`.
"""

from __future__ import annotations

import types

import numpy as np

QUANTITIES = (
    "input_jacobian",
    "geometric_complexity",
    "dirichlet_energy",
    "gc_estimate",
    "param_grad_sq_norms",
    "loss_grad_sq_norms",
    "loss_grad",
    "loss_hvp",
    "modified_loss_gd",
    "modified_loss_sgd",
    "modified_loss_per_example",
    "transfer_ratio",
    "path_norm",
)


# -- NumPy: hand-written forward-mode Jacobians and back-propagation --------------------


def _np_forward(mlp, params, x):
    """Layer inputs h_i, their input Jacobians h'_i and pre-activations z_i for one example."""
    h, dh = x, np.eye(x.size)
    hs, dhs, zs = [], [], []
    for i, (W, b) in enumerate(params):
        hs.append(h)
        dhs.append(dh)
        z = W @ h + b
        zs.append(z)
        act = mlp.layer_activation(i)
        h, dh = act(z), act.d1(z)[:, None] * (W @ dh)
    return hs, dhs, zs, h, dh


def _np_param_grads(mlp, params, x, cotangent):
    """grad_theta <cotangent, f(x)> by back-propagation, as a list W_1, b_1, ..."""
    hs, _, zs, _, _ = _np_forward(mlp, params, x)
    grads = [None] * (2 * len(params))
    g = cotangent
    for i in reversed(range(len(params))):
        g = mlp.layer_activation(i).d1(zs[i]) * g
        grads[2 * i], grads[2 * i + 1] = np.outer(g, hs[i]), g
        g = params[i][0].T @ g
    return grads


def _np_loss_and_residual(f, y, loss):
    if loss == "squared":
        return 0.5 * np.sum((f - y) ** 2), f - y
    if loss == "logistic":
        return np.logaddexp(0.0, f[0]) - y * f[0], np.array([1 / (1 + np.exp(-f[0])) - y])
    m = np.max(f)
    lse = m + np.log(np.sum(np.exp(f - m)))
    return lse - f[y], np.exp(f - lse) - np.eye(f.size)[y]


def _np_per_example_loss_grads(model, X, y, loss):
    mlp, params = model
    out = []
    for x, t in zip(X, y):
        f = _np_forward(mlp, params, x)[3]
        value, eps = _np_loss_and_residual(f, t, loss)
        out.append((value, _np_param_grads(mlp, params, x, eps)))
    return out


def _np_flat(grads):
    return np.concatenate([np.ravel(g) for g in grads])


def _np_input_jacobian(model, X):
    mlp, params = model
    return np.stack([_np_forward(mlp, params, x)[4] for x in X])


def _np_gc(model, X):
    return float(np.mean(np.sum(_np_input_jacobian(model, X) ** 2, axis=(1, 2))))


def _np_gc_estimate(model, X, seed):
    """Two Rademacher probes per example; the standard error of docs/math.md section 2."""
    rng = np.random.default_rng(seed)
    J = _np_input_jacobian(model, X)
    v = rng.choice((-1.0, 1.0), size=(X.shape[0], 2, J.shape[1]))
    stats = np.sum(np.einsum("npk,nkd->npd", v, J) ** 2, axis=2)
    n, p = stats.shape
    return stats.mean(), np.sqrt(np.sum(stats.var(axis=1, ddof=1)) / (p * n**2))


def _np_param_grad_sq_norms(model, X):
    mlp, params = model
    k = mlp.output_dim
    return np.array([
        sum(np.sum(_np_flat(_np_param_grads(mlp, params, x, np.eye(k)[c])) ** 2) for c in range(k))
        for x in X
    ])


def _np_loss_grad_sq_norms(model, X, y, loss):
    return np.array([np.sum(_np_flat(g) ** 2) for _, g in _np_per_example_loss_grads(model, X, y, loss)])


def _np_mean_loss_and_grad(model, X, y, loss):
    terms = _np_per_example_loss_grads(model, X, y, loss)
    return np.mean([v for v, _ in terms]), np.mean([_np_flat(g) for _, g in terms], axis=0)


def _np_loss_grad(model, X, y, loss):
    return _np_mean_loss_and_grad(model, X, y, loss)[1]


def _np_loss_hessian(f, loss):
    """d^2 l / df^2 for one example."""
    if loss == "squared":
        return np.eye(f.size)
    if loss == "logistic":
        s = 1 / (1 + np.exp(-f[0]))
        return np.array([[s * (1 - s)]])
    p = np.exp(f - np.max(f))
    p /= p.sum()
    return np.diag(p) - np.outer(p, p)


def _np_loss_hvp(model, X, y, loss, v):
    """Pearlmutter's R-operator applied by hand to the forward and backward passes."""
    mlp, params = model
    total = 0.0
    for x, t in zip(X, y):
        hs, zs, rhs, rzs = [], [], [], []
        h, rh = x, np.zeros_like(x)
        for i, ((W, b), (dW, db)) in enumerate(zip(params, v)):
            act = mlp.layer_activation(i)
            z, rz = W @ h + b, dW @ h + W @ rh + db
            hs.append(h), rhs.append(rh), zs.append(z), rzs.append(rz)
            h, rh = act(z), act.d1(z) * rz
        g = _np_loss_and_residual(h, t, loss)[1]
        rg = _np_loss_hessian(h, loss) @ rh
        out = [None] * (2 * len(params))
        for i in reversed(range(len(params))):
            act, (W, _), (dW, _) = mlp.layer_activation(i), params[i], v[i]
            delta = act.d1(zs[i]) * g
            rdelta = act.d2(zs[i]) * rzs[i] * g + act.d1(zs[i]) * rg
            out[2 * i] = np.outer(rdelta, hs[i]) + np.outer(delta, rhs[i])
            out[2 * i + 1] = rdelta
            g, rg = W.T @ delta, dW.T @ delta + W.T @ rdelta
        total = total + _np_flat(out)
    return total / X.shape[0]


def _np_modified_loss_gd(model, X, y, loss, h):
    L, g = _np_mean_loss_and_grad(model, X, y, loss)
    return L + h / 4 * g @ g


def _np_modified_loss_sgd(model, X, y, loss, h, batches):
    L = _np_mean_loss_and_grad(model, X, y, loss)[0]
    penalty = sum(np.sum(_np_loss_grad(model, X[b], y[b], loss) ** 2) for b in batches)
    return L + h / (4 * len(batches)) * penalty


def _np_modified_loss_per_example(model, X, y, loss, h):
    L = _np_mean_loss_and_grad(model, X, y, loss)[0]
    return L + h / (4 * X.shape[0]) * np.sum(_np_loss_grad_sq_norms(model, X, y, loss))


def _np_transfer_ratio(model, X):
    mlp, params = model
    out = []
    for x in X:
        hs, dhs, _, _, J = _np_forward(mlp, params, x)
        grad_sq = _np_param_grad_sq_norms(model, x[None])[0]
        total = 0.0
        for (W, _), h, dh in zip(params, hs, dhs):
            a = np.linalg.norm(W, 2) * np.linalg.norm(dh, 2)
            if a > 0:
                total += (1 + h @ h) / a**2
        out.append(0.0 if grad_sq == 0 else np.sum(J**2) * total / grad_sq)
    return np.array(out)


def _np_path_norm(model, p):
    _, params = model
    v = np.ones(params[0][0].shape[1])
    for W, b in params:
        v = np.abs(W) ** p @ v + np.abs(b) ** p
    return np.sum(v) ** (1 / p)


numpy_impls = types.SimpleNamespace(
    input_jacobian=_np_input_jacobian,
    geometric_complexity=_np_gc,
    dirichlet_energy=lambda model, X: _np_gc(model, X) / 2,
    gc_estimate=_np_gc_estimate,
    param_grad_sq_norms=_np_param_grad_sq_norms,
    loss_grad_sq_norms=_np_loss_grad_sq_norms,
    loss_grad=_np_loss_grad,
    loss_hvp=_np_loss_hvp,
    modified_loss_gd=_np_modified_loss_gd,
    modified_loss_sgd=_np_modified_loss_sgd,
    modified_loss_per_example=_np_modified_loss_per_example,
    transfer_ratio=_np_transfer_ratio,
    path_norm=_np_path_norm,
)


# -- torch: torch.func and torch.autograd ---------------------------------------------


def torch_impls():
    """The torch implementations (imports torch)."""
    import torch
    from torch.func import functional_call, grad, jacrev, vmap

    def per_example_loss(f, y, loss):
        if loss == "squared":
            return 0.5 * ((f - y) ** 2).sum(-1)
        if loss == "logistic":
            return torch.nn.functional.softplus(f[..., 0]) - y * f[..., 0]
        return torch.logsumexp(f, -1) - f.gather(-1, y[..., None])[..., 0]

    def mean_loss(model, X, y, loss):
        return per_example_loss(model(X), y, loss).mean()

    def input_jacobian(model, X):
        return vmap(jacrev(lambda x: model(x[None])[0]))(X)

    def geometric_complexity(model, X):
        return (input_jacobian(model, X) ** 2).sum(dim=(1, 2)).mean()

    def gc_estimate(model, X, seed):
        gen = torch.Generator().manual_seed(seed)
        X = X.clone().requires_grad_(True)
        f = model(X)
        stats = []
        for _ in range(2):
            v = torch.randn(f.shape, generator=gen, dtype=f.dtype)
            (vjp,) = torch.autograd.grad(f, X, v, retain_graph=True)
            stats.append((vjp**2).sum(1))
        stats = torch.stack(stats, 1)
        n, p = stats.shape
        return stats.mean(), (stats.var(1).sum() / (p * n**2)).sqrt()

    def params_of(model):
        return {name: p.detach() for name, p in model.named_parameters()}

    def param_grad_sq_norms(model, X):
        def f(params, x):
            return functional_call(model, params, (x[None],))[0]

        jac = vmap(jacrev(f), in_dims=(None, 0))(params_of(model), X)
        return sum((j**2).flatten(1).sum(1) for j in jac.values())

    def loss_grad_sq_norms(model, X, y, loss):
        def l(params, x, t):
            return per_example_loss(functional_call(model, params, (x[None],))[0], t, loss)

        grads = vmap(grad(l), in_dims=(None, 0, 0))(params_of(model), X, y)
        return sum((g**2).flatten(1).sum(1) for g in grads.values())

    def loss_grad(model, X, y, loss):
        return torch.autograd.grad(mean_loss(model, X, y, loss), list(model.parameters()))

    def grad_sq(model, X, y, loss):
        return sum((g**2).sum() for g in loss_grad(model, X, y, loss))

    def loss_hvp(model, X, y, loss, v):
        params = list(model.parameters())
        g = torch.autograd.grad(mean_loss(model, X, y, loss), params, create_graph=True)
        return torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)

    def modified_loss_gd(model, X, y, loss, h):
        return mean_loss(model, X, y, loss) + h / 4 * grad_sq(model, X, y, loss)

    def modified_loss_sgd(model, X, y, loss, h, batches):
        penalty = sum(grad_sq(model, X[b], y[b], loss) for b in batches)
        return mean_loss(model, X, y, loss) + h / (4 * len(batches)) * penalty

    def modified_loss_per_example(model, X, y, loss, h):
        norms = loss_grad_sq_norms(model, X, y, loss)
        return mean_loss(model, X, y, loss) + h / 4 * norms.mean()

    def layer_inputs(model, x):
        """h_1 = x, h_2, ..., h_l: the input of every Linear layer."""
        hs, h = [], x
        for module in model:
            if isinstance(module, torch.nn.Linear):
                hs.append(h)
            h = module(h)
        return tuple(hs)

    def transfer_ratio(model, X):
        weights = [m.weight.detach() for m in model if isinstance(m, torch.nn.Linear)]
        grad_sq = param_grad_sq_norms(model, X)
        J_sq = (input_jacobian(model, X) ** 2).sum(dim=(1, 2))
        out = []
        for n, x in enumerate(X):
            hs = layer_inputs(model, x)
            dhs = jacrev(lambda x: layer_inputs(model, x))(x)
            total = 0.0
            for W, h, dh in zip(weights, hs, dhs):
                a = torch.linalg.matrix_norm(W, 2) * torch.linalg.matrix_norm(dh, 2)
                if a > 0:
                    total = total + (1 + h @ h) / a**2
            out.append(torch.zeros(()) if grad_sq[n] == 0 else J_sq[n] * total / grad_sq[n])
        return torch.stack([torch.as_tensor(r, dtype=torch.float64) for r in out])

    def path_norm(model, p):
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        v = torch.ones(linears[0].in_features, dtype=torch.float64)
        for m in linears:
            v = m.weight.detach().abs() ** p @ v + m.bias.detach().abs() ** p
        return v.sum() ** (1 / p)

    return types.SimpleNamespace(
        input_jacobian=input_jacobian,
        geometric_complexity=geometric_complexity,
        dirichlet_energy=lambda model, X: geometric_complexity(model, X) / 2,
        gc_estimate=gc_estimate,
        param_grad_sq_norms=param_grad_sq_norms,
        loss_grad_sq_norms=loss_grad_sq_norms,
        loss_grad=loss_grad,
        loss_hvp=loss_hvp,
        modified_loss_gd=modified_loss_gd,
        modified_loss_sgd=modified_loss_sgd,
        modified_loss_per_example=modified_loss_per_example,
        transfer_ratio=transfer_ratio,
        path_norm=path_norm,
        per_example_loss=per_example_loss,
        mean_loss=mean_loss,
        grad_sq=grad_sq,
    )


# -- JAX: jax.grad, jax.jacrev, jax.vmap, forward-over-reverse --------------------------


def jax_impls():
    """The JAX implementations (imports jax)."""
    import jax
    import jax.numpy as jnp

    def per_example_loss(f, y, loss):
        if loss == "squared":
            return 0.5 * jnp.sum((f - y) ** 2, -1)
        if loss == "logistic":
            return jnp.logaddexp(0.0, f[..., 0]) - y * f[..., 0]
        return jax.nn.logsumexp(f, -1) - jnp.take_along_axis(f, y[..., None], -1)[..., 0]

    def mean_loss_of(apply, params, X, y, loss):
        return jnp.mean(per_example_loss(apply(params, X), y, loss))

    def input_jacobian(model, X):
        apply, params = model
        return jax.vmap(jax.jacrev(lambda x: apply(params, x[None])[0]))(X)

    def geometric_complexity(model, X):
        return jnp.mean(jnp.sum(input_jacobian(model, X) ** 2, axis=(1, 2)))

    def gc_estimate(model, X, seed):
        apply, params = model
        f, vjp = jax.vjp(lambda X: apply(params, X), X)
        keys = jax.random.split(jax.random.PRNGKey(seed), 2)
        stats = jnp.stack([jnp.sum(vjp(jax.random.normal(key, f.shape, f.dtype))[0] ** 2, 1)
                           for key in keys], 1)
        n, p = stats.shape
        return jnp.mean(stats), jnp.sqrt(jnp.sum(jnp.var(stats, 1, ddof=1)) / (p * n**2))

    def tree_sq_norms(tree):
        return sum(jnp.sum(leaf.reshape(leaf.shape[0], -1) ** 2, 1) for leaf in jax.tree_util.tree_leaves(tree))

    def param_grad_sq_norms(model, X):
        apply, params = model
        jac = jax.vmap(jax.jacrev(lambda p, x: apply(p, x[None])[0]), in_axes=(None, 0))(params, X)
        return tree_sq_norms(jac)

    def loss_grad_sq_norms(model, X, y, loss):
        apply, params = model

        def l(p, x, t):
            return per_example_loss(apply(p, x[None])[0], t, loss)

        return tree_sq_norms(jax.vmap(jax.grad(l), in_axes=(None, 0, 0))(params, X, y))

    def loss_grad(model, X, y, loss):
        apply, params = model
        return jax.grad(mean_loss_of, argnums=1)(apply, params, X, y, loss)

    def grad_sq(model, X, y, loss):
        return sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(loss_grad(model, X, y, loss)))

    def loss_hvp(model, X, y, loss, v):
        apply, params = model

        def g(p):
            return jax.grad(mean_loss_of, argnums=1)(apply, p, X, y, loss)

        return jax.jvp(g, (params,), (v,))[1]

    def modified_loss_gd(model, X, y, loss, h):
        apply, params = model
        return mean_loss_of(apply, params, X, y, loss) + h / 4 * grad_sq(model, X, y, loss)

    def modified_loss_sgd(model, X, y, loss, h, batches):
        apply, params = model
        penalty = sum(grad_sq(model, X[b], y[b], loss) for b in batches)
        return mean_loss_of(apply, params, X, y, loss) + h / (4 * len(batches)) * penalty

    def modified_loss_per_example(model, X, y, loss, h):
        apply, params = model
        return mean_loss_of(apply, params, X, y, loss) + h / 4 * jnp.mean(loss_grad_sq_norms(model, X, y, loss))

    def transfer_ratio(model, X):
        apply, params = model
        grad_sq = param_grad_sq_norms(model, X)
        J_sq = jnp.sum(input_jacobian(model, X) ** 2, axis=(1, 2))
        out = []
        for n in range(X.shape[0]):
            total = 0.0
            for i, (W, _) in enumerate(params):
                # h_i, the input of layer i: the network's first i - 1 layers.
                def head(x, i=i):
                    return apply(params[:i], x[None])[0] if i else x

                h, dh = head(X[n]), jax.jacrev(head)(X[n])
                a = float(jnp.linalg.norm(W, 2) * jnp.linalg.norm(dh, 2))
                if a > 0:
                    total = total + (1 + h @ h) / a**2
            out.append(0.0 if grad_sq[n] == 0 else J_sq[n] * total / grad_sq[n])
        return jnp.stack([jnp.asarray(r) for r in out])

    def path_norm(model, p):
        _, params = model
        v = jnp.ones(params[0][0].shape[1])
        for W, b in params:
            v = jnp.abs(W) ** p @ v + jnp.abs(b) ** p
        return jnp.sum(v) ** (1 / p)

    return types.SimpleNamespace(
        input_jacobian=input_jacobian,
        geometric_complexity=geometric_complexity,
        dirichlet_energy=lambda model, X: geometric_complexity(model, X) / 2,
        gc_estimate=gc_estimate,
        param_grad_sq_norms=param_grad_sq_norms,
        loss_grad_sq_norms=loss_grad_sq_norms,
        loss_grad=loss_grad,
        loss_hvp=loss_hvp,
        modified_loss_gd=modified_loss_gd,
        modified_loss_sgd=modified_loss_sgd,
        modified_loss_per_example=modified_loss_per_example,
        transfer_ratio=transfer_ratio,
        path_norm=path_norm,
        per_example_loss=per_example_loss,
        mean_loss_of=mean_loss_of,
        grad_sq=grad_sq,
    )
