"""Minimum-norm solutions in degenerate linear regression (seed 004, Figs. 5-6; MATH.md section 6).

A linear model in polynomial features, f(x) = sum_{j=1..D} w_j x^j + b (the bias is the
constant feature), fitted to N < D + 1 points: the least-squares problem is degenerate, its
zero-loss solutions form an affine space, and the minimum-norm one is pinv(A) y with
A = [1, x, ..., x^D]. Gradients of the loss lie in the row space of A, so

- gradient descent from zero never leaves the row space and converges to pinv(A) y;
- a perturbation's null-space component is never removed by gradient descent: repeated
  perturbations make the null-space norm a random walk (growing like sqrt(m)) and, since the
  null-space component is an arbitrary polynomial vanishing on the data, raise the test error;
- NMGD (seed 004, eqs. 9 and 26) shrinks every start towards the minimum-norm solution.

The model is ``gcref.MLP((D, 1), "identity")``; the training points are Chebyshev nodes,
which keep the Vandermonde matrix well enough conditioned for GD to converge in seconds.
"""

from __future__ import annotations

import numpy as np

import gcref
from gcref.optimizers import NMGD, GradientDescent
from validation._report import Outcome, pyplot, save_figure

NAME = "min_norm"
CLAIM = (
    "degenerate polynomial regression (degree 30, 9 points, sin target): GD from zero reaches "
    "the minimum-norm solution; repeated perturbations make the null-space norm random-walk "
    "and raise the test error; NMGD returns to the minimum norm"
)
SOURCE = "seed 004, Figs. 5-6"
RULE = (
    "held if (1) GD from zero ends with a null-space norm below 1e-8 ||w+|| and within 1e-3 "
    "||w+|| of the minimum-norm solution w+ = pinv(A) y; (2) after the perturbations the "
    "null-space norm exceeds 2 sigma and the test error exceeds that of w+; (3) NMGD started "
    "from the perturbed weights ends with a null-space norm below 1e-3 of its start and a "
    "distance to w+ below a tenth of its start's"
)
QUICK = {"degree": 30, "n_train": 9, "n_test": 100, "frequency": 1.0, "gd_steps": 3000,
         "perturbations": 3, "steps_between": 1000, "sigma": 0.45, "nmgd_steps": 3000,
         "nmgd_exponent": 0.95, "nmgd_offset": 1, "step_fraction": 1.8, "records": 200}
FULL = {"degree": 30, "n_train": 9, "n_test": 100, "frequency": 1.0, "gd_steps": 60000,
        "perturbations": 15, "steps_between": 8000, "sigma": 0.45, "nmgd_steps": 120000,
        "nmgd_exponent": 0.95, "nmgd_offset": 1, "step_fraction": 1.8, "records": 400}


def features(x, degree):
    """Monomials ``x, x^2, ..., x^degree``, shape (N, degree); the bias is the constant."""
    return x[:, None] ** np.arange(1, degree + 1)


def as_vector(params):
    """``(b, w_1, ..., w_D)``: the coefficients of ``1, x, ..., x^D``."""
    (W, b), = params
    return np.concatenate([b, W[0]])


def as_params(vector):
    """Inverse of :func:`as_vector`."""
    return ((vector[None, 1:].copy(), vector[:1].copy()),)


class Tracker:
    """Train/test losses and distances to the minimum-norm solution along one long run."""

    def __init__(self, mlp, A, y, A_test, y_test, w_plus, null_basis, every):
        self.mlp, self.A, self.y, self.A_test, self.y_test = mlp, A, y, A_test, y_test
        self.w_plus, self.null_basis, self.every = w_plus, null_basis, every
        self.iteration = 0
        self.rows = []

    def record(self, params, phase, force=False):
        if not force and self.iteration % self.every:
            return
        w = as_vector(params)
        self.rows.append({
            "iteration": self.iteration,
            "phase": phase,
            "train": gcref.mean_loss(self.mlp, params, self.A, self.y, "squared"),
            "test": gcref.mean_loss(self.mlp, params, self.A_test, self.y_test, "squared"),
            "null_norm": float(np.linalg.norm(self.null_basis.T @ w)),
            "distance": float(np.linalg.norm(w - self.w_plus)),
            "norm": float(np.linalg.norm(w)),
        })

    def column(self, key):
        return np.array([r[key] for r in self.rows])


def descend(tracker, optimizer, params, n_steps, phase, progress):
    """``n_steps`` full-batch updates of ``optimizer``, recorded by ``tracker``."""
    for n in range(1, n_steps + 1):
        grads = gcref.loss_grad(tracker.mlp, params, tracker.A, tracker.y, "squared")
        params = optimizer.update(tracker.mlp, params, grads, n)
        tracker.iteration += 1
        tracker.record(params, phase)
        progress(n, n_steps, phase)
    tracker.record(params, phase, force=True)
    return params


def run(settings, seed, out_dir, progress):
    rng = np.random.default_rng(seed)
    degree, n_train = settings["degree"], settings["n_train"]

    def target(x):
        return np.sin(2 * np.pi * settings["frequency"] * x)

    x = np.cos(np.pi * (2 * np.arange(n_train) + 1) / (2 * n_train))
    x_test = np.sort(rng.uniform(-1, 1, settings["n_test"]))
    A, A_test = features(x, degree), features(x_test, degree)
    y, y_test = target(x), target(x_test)
    design = np.hstack([np.ones((n_train, 1)), A])
    w_plus = np.linalg.pinv(design) @ y
    _, singular, Vt = np.linalg.svd(design)
    null_basis = Vt[len(singular):].T
    hessian_top = singular[0] ** 2 / n_train  # Hessian of the mean loss 1/(2N) ||A w - y||^2
    step = settings["step_fraction"] / hessian_top

    mlp = gcref.MLP((degree, 1), activation="identity")
    total = (settings["gd_steps"] + settings["perturbations"] * settings["steps_between"]
             + settings["nmgd_steps"])
    tracker = Tracker(mlp, A, y, A_test, y_test, w_plus, null_basis,
                      max(1, total // settings["records"]))

    params = as_params(np.zeros(degree + 1))
    tracker.record(params, "GD from zero", force=True)
    gd = GradientDescent(step)
    params = descend(tracker, gd, params, settings["gd_steps"], "GD from zero", progress)
    gd_end = tracker.rows[-1]
    gd_fit = predict_curve(mlp, params, degree)

    after_perturbation = []
    for m in range(settings["perturbations"]):
        params = as_params(as_vector(params) + rng.normal(0, settings["sigma"], degree + 1))
        after_perturbation.append(float(np.linalg.norm(null_basis.T @ as_vector(params))))
        params = descend(tracker, gd, params, settings["steps_between"], "perturbed GD",
                         progress)
    perturbed_end = tracker.rows[-1]
    perturbed_fit = predict_curve(mlp, params, degree)

    nmgd = NMGD(step, settings["nmgd_exponent"], offset=settings["nmgd_offset"])
    params = descend(tracker, nmgd, params, settings["nmgd_steps"], "NMGD", progress)
    nmgd_end = tracker.rows[-1]
    nmgd_fit = predict_curve(mlp, params, degree)

    w_norm = float(np.linalg.norm(w_plus))
    min_norm_test = gcref.mean_loss(mlp, as_params(w_plus), A_test, y_test, "squared")
    held_gd = gd_end["null_norm"] < 1e-8 * w_norm and gd_end["distance"] < 1e-3 * w_norm
    held_walk = (perturbed_end["null_norm"] > 2 * settings["sigma"]
                 and perturbed_end["test"] > min_norm_test)
    held_nmgd = (nmgd_end["null_norm"] < 1e-3 * perturbed_end["null_norm"]
                 and nmgd_end["distance"] < 0.1 * perturbed_end["distance"])
    measured = {
        "step": step,
        "min_norm": w_norm,
        "min_norm_test_loss": min_norm_test,
        "gd_from_zero": gd_end,
        "null_norm_after_each_perturbation": after_perturbation,
        "after_perturbations": perturbed_end,
        "nmgd": nmgd_end,
        "parts_held": {"gd_from_zero": held_gd, "random_walk": held_walk, "nmgd": held_nmgd},
    }

    figures = [plot_fits(out_dir, x, y, target, gd_fit, perturbed_fit, nmgd_fit),
               plot_training(out_dir, tracker, after_perturbation, settings["sigma"],
                             null_basis.shape[1], min_norm_test)]
    return Outcome(measured=measured, held=held_gd and held_walk and held_nmgd,
                   figures=figures, seeds=[seed])


def predict_curve(mlp, params, degree):
    grid = np.linspace(-1, 1, 400)
    return grid, gcref.predict(mlp, params, features(grid, degree))[:, 0]


def plot_fits(out_dir, x, y, target, gd_fit, perturbed_fit, nmgd_fit):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    grid = gd_fit[0]
    ax.plot(grid, target(grid), color="0.6", lw=3, label="target sin")
    ax.plot(*gd_fit, label="GD from zero (minimum norm)")
    ax.plot(*perturbed_fit, label="GD after perturbations")
    ax.plot(*nmgd_fit, "--", label="NMGD from the perturbed weights")
    ax.plot(x, y, "ko", label="training points")
    spread = np.max(np.abs(gd_fit[1]))
    ax.set_ylim(-3 * spread, 3 * spread)
    ax.set_title("Degree-30 polynomial fits to 9 points")
    ax.set_xlabel("x")
    ax.set_ylabel("f(x)")
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "min_norm_fits.png")


def plot_training(out_dir, tracker, after_perturbation, sigma, null_dim, min_norm_test):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    it = tracker.column("iteration")
    axes[0].semilogy(it, np.maximum(tracker.column("train"), 1e-32), label="train")
    axes[0].semilogy(it, tracker.column("test"), label="test")
    axes[0].axhline(min_norm_test, color="k", ls=":", label="test loss of pinv(A) y")
    axes[0].set_title("Loss along GD from zero, perturbed GD, then NMGD")
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("mean squared loss")
    axes[0].legend(fontsize=8)
    axes[1].semilogy(it, np.maximum(tracker.column("null_norm"), 1e-17), label="null-space norm")
    axes[1].semilogy(it, np.maximum(tracker.column("distance"), 1e-17),
                     label=r"$\|w - w^+\|$")
    axes[1].axhline(np.linalg.norm(tracker.w_plus), color="k", ls=":", label=r"$\|w^+\|$")
    axes[1].set_title("Distance to the minimum-norm solution")
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("norm")
    axes[1].legend(fontsize=8)
    m = np.arange(1, len(after_perturbation) + 1)
    axes[2].plot(m, after_perturbation, "o-", label="measured")
    axes[2].plot(m, sigma * np.sqrt(m * null_dim), "k--",
                 label=r"random walk $\sigma\sqrt{m\,\dim\ker A}$")
    axes[2].set_title("Null-space norm after m perturbations")
    axes[2].set_xlabel("number of perturbations m")
    axes[2].set_ylabel("null-space norm")
    axes[2].legend(fontsize=8)
    return save_figure(fig, out_dir, "min_norm_training.png")
