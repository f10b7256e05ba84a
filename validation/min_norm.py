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

The model is the linear model of ``gcref.MLP((D, 1), "identity")``; its gradient and NMGD's
update are written out in NumPy (``loss_grad``, ``nmgd_step``, both checked against gcref in
tests/test_validation.py), which makes the hundreds of thousands of steps of Fig. 6's
protocol take seconds. The training points are Chebyshev nodes, which keep the Vandermonde
matrix well enough conditioned for GD to converge.

GD on this quadratic loss is an affine map, ``w -> T w + c`` with ``T = I - h H``; the GD
phases after the perturbations apply it 100 steps at a time (``T^100`` and its offset,
formed once by 100 of the same steps), so that each phase can run until it has converged
(training loss below ``converged_loss``), about 4 x 10^5 steps here: the smallest non-zero
eigenvalue of H is 2e-5 of the largest. An earlier protocol stopped each phase at 10^5 plain
steps, where 443 of 450 phases had not converged.
"""

from __future__ import annotations

import numpy as np

from validation._report import Outcome, pyplot, save_figure
from validation._stats import above_bound, log_slope, run_seeds, summary, within

NAME = "min_norm"
CLAIM = (
    "degenerate polynomial regression (degree 30, 9 points, sin target): GD from zero reaches "
    "the minimum-norm solution; perturbations, each followed by GD to convergence, make the "
    "null-space norm grow like a random walk and raise the test loss; NMGD returns to the "
    "minimum norm at the rate of its anchor"
)
SOURCE = "seed 004, Figs. 5-6"
RULE = (
    "(1) GD from zero ends with a null-space norm below 1e-8 ||w+|| and within 1e-3 ||w+|| of "
    "w+ = pinv(A) y (one deterministic run); per seed, (2) after each of M perturbations "
    "N(0, sigma^2 I), GD runs until the training loss is below converged_loss (at most "
    "max_steps_between): the least-squares slope of log null-space norm against log m is "
    "within 0.15 of 1/2 (a random walk; a departure counts beyond 2 standard errors), and the "
    "final test loss exceeds w+'s beyond 2 standard errors; (3) NMGD from the perturbed "
    "weights: the slope of log ||w_n - w+|| against log n over the second half of its steps "
    "is within 0.2 of -a (the rate of its anchor lambda_n ~ n^-a, MATH.md section 6). Held if "
    "(1), (2) and (3) hold. The distance to the ridge-path point of strength "
    "mu_n = lambda_n / ((1 - lambda_n) gamma) is reported"
)
QUICK = {"degree": 30, "n_train": 9, "n_test": 100, "frequency": 1.0, "gd_steps": 3000,
         "perturbations": 4, "max_steps_between": 3000, "converged_loss": 1e-8,
         "sigma": 0.45, "nmgd_steps": 3000, "nmgd_exponent": 0.95, "nmgd_offset": 1,
         "step_fraction": 1.8, "records": 100, "seeds": 2}
FULL = {"degree": 30, "n_train": 9, "n_test": 100, "frequency": 1.0, "gd_steps": 60000,
        "perturbations": 15, "max_steps_between": 2000000, "converged_loss": 1e-12,
        "sigma": 0.45, "nmgd_steps": 120000, "nmgd_exponent": 0.95, "nmgd_offset": 1,
        "step_fraction": 1.8, "records": 200, "seeds": 30}

WALK_TOLERANCE = 0.15
RATE_TOLERANCE = 0.2
#: GD steps per application of the precomputed affine map in the GD phases.
GD_BLOCK = 100


def features(x, degree):
    """Monomials ``1, x, x^2, ..., x^degree``, shape (N, degree + 1): the design matrix of
    ``gcref.MLP((degree, 1), "identity")`` with its bias as the constant feature."""
    return x[:, None] ** np.arange(0, degree + 1)


def as_params(vector):
    """``(b, w_1, ..., w_D)`` as the parameters of ``gcref.MLP((D, 1), "identity")``."""
    return ((vector[None, 1:].copy(), vector[:1].copy()),)


def loss_grad(D, y, w):
    """Gradient of the mean squared loss ``(1/N) sum_n 1/2 (D w - y)_n^2`` (gcref's
    ``"squared"`` loss of the linear model; tests/test_validation.py checks it against
    gcref.loss_grad): ``D^T (D w - y) / N``."""
    return D.T @ (D @ w - y) / len(y)


def mean_loss(D, y, w):
    """``(1/N) sum_n 1/2 (D w - y)_n^2``."""
    return float(0.5 * np.mean((D @ w - y) ** 2))


def nmgd_step(w, grad, lr, a, n, offset):
    """One NMGD update (gcref.optimizers.NMGD; seed 004, eqs. 9 and 26):
    ``w - (1 - lambda_n) lr grad - lambda_n w`` with ``lambda_n = 1 / (n + offset)^a``."""
    lam = 1.0 / (n + offset) ** a
    return w - (1 - lam) * lr * grad - lam * w, lam


class Problem:
    """The regression problem: design matrices, targets, w+, a null-space basis, the step."""

    def __init__(self, settings, rng):
        degree, n_train = settings["degree"], settings["n_train"]
        self.x = np.cos(np.pi * (2 * np.arange(n_train) + 1) / (2 * n_train))
        self.x_test = np.sort(rng.uniform(-1, 1, settings["n_test"]))
        self.D, self.D_test = features(self.x, degree), features(self.x_test, degree)
        self.y = np.sin(2 * np.pi * settings["frequency"] * self.x)
        self.y_test = np.sin(2 * np.pi * settings["frequency"] * self.x_test)
        self.w_plus = np.linalg.pinv(self.D) @ self.y
        _, singular, Vt = np.linalg.svd(self.D)
        self.null_basis = Vt[len(singular):].T
        self.hessian = self.D.T @ self.D / n_train
        # The largest eigenvalue of the Hessian of the mean loss sets the stable steps.
        self.step = settings["step_fraction"] / (singular[0] ** 2 / n_train)
        # GD_BLOCK steps of GD as one affine map, formed by taking them: w -> M w + v.
        M, v = np.eye(len(self.w_plus)), np.zeros(len(self.w_plus))
        for _ in range(GD_BLOCK):
            M, v = M - self.step * (self.hessian @ M), v - self.step * loss_grad(self.D, self.y, v)
        self.block = M, v

    def gd_block(self, w):
        """``GD_BLOCK`` steps of GD from ``w`` (the same affine map as that many steps)."""
        M, v = self.block
        return M @ w + v

    def null_norm(self, w):
        return float(np.linalg.norm(self.null_basis.T @ w))

    def ridge(self, mu):
        """The ridge solution ``argmin L(w) + mu/2 ||w||^2``."""
        return np.linalg.solve(self.hessian + mu * np.eye(len(self.w_plus)),
                               self.D.T @ self.y / len(self.y))


def gd_from_zero(settings, problem):
    w = np.zeros(settings["degree"] + 1)
    for _ in range(settings["gd_steps"]):
        w = w - problem.step * loss_grad(problem.D, problem.y, w)
    return {"null_norm": problem.null_norm(w), "distance": float(np.linalg.norm(w - problem.w_plus)),
            "train_loss": mean_loss(problem.D, problem.y, w),
            "test_loss": mean_loss(problem.D_test, problem.y_test, w), "w": w}


def one_seed(settings, problem, start, run_seed, progress):
    """Perturbations with GD to convergence after each, then NMGD, from GD's solution."""
    rng = np.random.default_rng(run_seed)
    w = np.asarray(start, float).copy()
    record = {"null_norm": [], "test_loss": [], "train_loss": [], "steps": []}
    for m in range(settings["perturbations"]):
        w = w + rng.normal(0, settings["sigma"], w.shape)
        steps = 0
        while (steps < settings["max_steps_between"]
               and mean_loss(problem.D, problem.y, w) > settings["converged_loss"]):
            w = problem.gd_block(w)
            steps += GD_BLOCK
        record["null_norm"].append(problem.null_norm(w))
        record["test_loss"].append(mean_loss(problem.D_test, problem.y_test, w))
        record["train_loss"].append(mean_loss(problem.D, problem.y, w))
        record["steps"].append(steps)
        progress(m + 1, settings["perturbations"], f"seed {run_seed} perturbations")
    m = np.arange(1, settings["perturbations"] + 1)
    record["walk_slope"] = log_slope(m, record["null_norm"])
    n_steps = settings["nmgd_steps"]
    record_at = set(np.unique(np.geomspace(1, n_steps, settings["records"]).astype(int)).tolist())
    nmgd = {"n": [], "distance": [], "null_norm": [], "ridge_distance": []}
    for n in range(1, n_steps + 1):
        w, lam = nmgd_step(w, loss_grad(problem.D, problem.y, w), problem.step,
                           settings["nmgd_exponent"], n, settings["nmgd_offset"])
        if n in record_at:
            mu = lam / ((1 - lam) * problem.step)
            nmgd["n"].append(n)
            nmgd["distance"].append(float(np.linalg.norm(w - problem.w_plus)))
            nmgd["null_norm"].append(problem.null_norm(w))
            nmgd["ridge_distance"].append(float(np.linalg.norm(w - problem.ridge(mu))))
    half = np.asarray(nmgd["n"]) >= n_steps / 2
    record["nmgd"] = nmgd
    record["nmgd_rate"] = log_slope(np.asarray(nmgd["n"])[half], np.asarray(nmgd["distance"])[half])
    record["nmgd_final"] = {"distance": nmgd["distance"][-1], "null_norm": nmgd["null_norm"][-1],
                            "ridge_distance": nmgd["ridge_distance"][-1]}
    record["w_perturbed_final"] = w
    return record


def run(settings, seed, context):
    problem = Problem(settings, np.random.default_rng(seed))
    w_norm = float(np.linalg.norm(problem.w_plus))
    gd = context.runs.get("gd_from_zero", gd_from_zero, settings, problem)
    seeds = run_seeds(seed, settings["seeds"])
    records = [context.runs.get(f"seed={s}", one_seed, settings, problem, gd["w"], s,
                                context.progress)
               for s in seeds]
    min_norm_test = mean_loss(problem.D_test, problem.y_test, problem.w_plus)
    walk = summary([r["walk_slope"] for r in records])
    excess = summary([r["test_loss"][-1] - min_norm_test for r in records])
    rate = summary([r["nmgd_rate"] for r in records])
    a = settings["nmgd_exponent"]
    held_gd = gd["null_norm"] < 1e-8 * w_norm and gd["distance"] < 1e-3 * w_norm
    held_walk = (within(walk["mean"], walk["stderr"], 0.5 - WALK_TOLERANCE, 0.5 + WALK_TOLERANCE)
                 and above_bound(excess["mean"], excess["stderr"], 0.0))
    held_nmgd = within(rate["mean"], rate["stderr"], -a - RATE_TOLERANCE, -a + RATE_TOLERANCE)
    measured = {
        "step": problem.step, "min_norm": w_norm, "min_norm_test_loss": min_norm_test,
        "null_space_dim": problem.null_basis.shape[1],
        "gd_from_zero": {k: v for k, v in gd.items() if k != "w"},
        "null_norm_after_each_perturbation": summary([r["null_norm"] for r in records], axis=0),
        "random_walk_slope": walk, "test_loss_excess_after_perturbations": excess,
        "steps_to_converge": summary([r["steps"] for r in records], axis=0),
        "nmgd_rate": rate,
        "nmgd_final_distance": summary([r["nmgd_final"]["distance"] for r in records]),
        "nmgd_final_ridge_distance": summary([r["nmgd_final"]["ridge_distance"] for r in records]),
        "parts_held": {"gd_from_zero": held_gd, "random_walk": held_walk, "nmgd_rate": held_nmgd},
    }
    figures = [plot_fits(context.out_dir, problem, settings, gd["w"],
                         records[0]["w_perturbed_final"]),
               plot_training(context.out_dir, records, settings, problem, min_norm_test)]
    return Outcome(measured=measured, held=bool(held_gd and held_walk and held_nmgd),
                   figures=figures, seeds=[seed, *seeds])


def plot_fits(out_dir, problem, settings, w_gd, w_nmgd):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    grid = np.linspace(-1, 1, 400)
    G = features(grid, settings["degree"])
    ax.plot(grid, np.sin(2 * np.pi * settings["frequency"] * grid), color="0.6", lw=3,
            label="target sin")
    ax.plot(grid, G @ w_gd, label="GD from zero (minimum norm)")
    ax.plot(grid, G @ w_nmgd, "--", label="NMGD after the perturbations (first seed)")
    ax.plot(problem.x, problem.y, "ko", label="training points")
    spread = np.max(np.abs(G @ w_gd))
    ax.set_ylim(-3 * spread, 3 * spread)
    ax.set_title(f"Degree-{settings['degree']} polynomial fits to {settings['n_train']} points")
    ax.set_xlabel("x")
    ax.set_ylabel("f(x)")
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "min_norm_fits.png")


def plot_training(out_dir, records, settings, problem, min_norm_test):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    m = np.arange(1, settings["perturbations"] + 1)
    null = summary([r["null_norm"] for r in records], axis=0)
    axes[0].errorbar(m, null["mean"], yerr=null["stderr"], marker="o", capsize=3,
                     label="measured (mean, s.e.)")
    axes[0].plot(m, settings["sigma"] * np.sqrt(m * problem.null_basis.shape[1]), "k--",
                 label=r"$\sigma\sqrt{m\,\dim\ker A}$")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_title(f"Null-space norm after m perturbations, {len(records)} seeds")
    axes[0].set_xlabel("perturbations m")
    axes[0].legend(fontsize=8)
    test = summary([r["test_loss"] for r in records], axis=0)
    axes[1].errorbar(m, test["mean"], yerr=test["stderr"], marker="o", capsize=3,
                     label="after GD to convergence")
    axes[1].axhline(min_norm_test, color="k", ls=":", label="test loss of pinv(A) y")
    axes[1].set_yscale("log")
    axes[1].set_title("Test loss after m perturbations")
    axes[1].set_xlabel("perturbations m")
    axes[1].legend(fontsize=8)
    n = np.asarray(records[0]["nmgd"]["n"])
    dist = summary([r["nmgd"]["distance"] for r in records], axis=0)
    ridge = summary([r["nmgd"]["ridge_distance"] for r in records], axis=0)
    axes[2].errorbar(n, dist["mean"], yerr=dist["stderr"], label=r"$\|w_n - w^+\|$")
    axes[2].plot(n, ridge["mean"], label="distance to the ridge-path point")
    a = settings["nmgd_exponent"]
    axes[2].plot(n, dist["mean"][-1] * (n / n[-1]) ** -a, "k:", label=f"slope -{a}")
    axes[2].set_xscale("log")
    axes[2].set_yscale("log")
    axes[2].set_title("NMGD from the perturbed weights")
    axes[2].set_xlabel("NMGD step n")
    axes[2].legend(fontsize=8)
    return save_figure(fig, out_dir, "min_norm_training.png")
