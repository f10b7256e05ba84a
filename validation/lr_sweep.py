"""Learning rate against geometric complexity on digits (seed 000, Fig. 2; seed 003).

The implicit regulariser of SGD, (h / 4m) sum_j ||grad L_{B_j}||^2 (MATH.md section 5), grows
with the learning rate h; through the transfer theorem its pressure reaches the input
gradients, so seed 000 predicts that, at the best test score, both the discrete Dirichlet
energy and ||grad L||^2 are lower for larger learning rates. A ReLU MLP on scikit-learn's
8 x 8 digits stands in for the seed's ResNet on CIFAR-10 (see ``validation._sweep``).

With ``--model resnet18 --cifar10 DIR`` the same protocol runs the seed's own setting: a CIFAR
ResNet-18 (gcref.nets.torch.resnet18) trained by torch SGD on a local CIFAR-10 directory
(validation.cifar10; nothing is downloaded), on the GPU when torch sees one, with the
Dirichlet energy measured by gcref.models.geometric_complexity.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import numpy as np

from validation import _sweep
from validation._report import Outcome
from validation.cifar10 import load_cifar10

NAME = "lr_sweep"
CLAIM = (
    "a classifier trained by SGD at a larger learning rate ends (at its best test score) with "
    "a lower discrete Dirichlet energy and a lower ||grad L||^2"
)
SOURCE = "seed 000, Fig. 2; seed 003"
RULE = (
    "held if the Spearman rank correlation between the learning rate and the seed-averaged "
    "value is below -0.8 for both the Dirichlet energy and ||grad L||^2"
)
QUICK = {"hidden": [16], "lrs": [0.02, 0.2], "batch_size": 64, "epochs": 1,
         "seeds": 1}
FULL = {"hidden": [128, 128], "lrs": [0.01, 0.02, 0.05, 0.1, 0.2, 0.3],
        "batch_size": 32, "epochs": 40, "seeds": 3}

THRESHOLD = -0.8


def run(settings, seed, out_dir, progress):
    values = settings["lrs"]
    out, seeds = _sweep.sweep(settings, "lr", values, seed, progress)
    summary, held, figure = judge(
        out, values, out_dir,
        f"Digits MLP {settings['hidden']}, SGD batch {settings['batch_size']}, "
        f"{settings['epochs']} epochs, mean of {len(seeds)} seeds at the best test epoch",
    )
    return Outcome(measured={"lrs": values, **summary}, held=held, figures=[figure],
                   seeds=[seed, *seeds], frameworks=["scikit-learn"])


def judge(out, values, out_dir, title):
    """Summary, verdict (:data:`RULE`) and figure of a learning-rate sweep's results."""
    summary = _sweep.summarise(out, values)
    held = (summary["spearman_dirichlet_energy"] < THRESHOLD
            and summary["spearman_grad_sq"] < THRESHOLD)
    figure = _sweep.plot(out_dir, NAME, summary, values, "learning rate h", True, title)
    return summary, held, figure


# The ResNet-18 / CIFAR-10 setting of seed 000's Fig. 2 (``--model resnet18 --cifar10 DIR``).
# A CPU runs only a narrow network on a few images (``--width``); the full setting is meant
# for a GPU, which is used whenever torch sees one.
RESNET_QUICK = {"model": "resnet18", "width": 4, "n_train": 64, "n_test": 32,
                "gc_examples": 16, "lrs": [0.01, 0.1], "batch_size": 16, "epochs": 1,
                "seeds": 1}
RESNET_FULL = {"model": "resnet18", "width": 64, "n_train": 10000, "n_test": 10000,
               "gc_examples": 1000, "lrs": [0.005, 0.01, 0.02, 0.05, 0.1, 0.2],
               "batch_size": 128, "epochs": 20, "seeds": 1}
CHUNK = 256


def add_arguments(group):
    """Options of the ResNet-18 / CIFAR-10 setting, for ``python -m validation``."""
    group.add_argument("--model", choices=("mlp", "resnet18"), default="mlp",
                       help="lr_sweep: the digits MLP (default) or a CIFAR ResNet-18 "
                            "(gcref.nets.torch.resnet18, needs --cifar10; GPU if torch sees one)")
    group.add_argument("--cifar10", metavar="DIR",
                       help="lr_sweep --model resnet18: a local CIFAR-10 directory in the "
                            "'CIFAR-10 python version' layout (data_batch_1..5, test_batch); "
                            "never downloaded")
    group.add_argument("--width", type=int,
                       help="lr_sweep --model resnet18: channels of the first stage (default "
                            f"{RESNET_FULL['width']}, {RESNET_QUICK['width']} with --quick)")


def configured(options):
    """This experiment, or its ResNet-18 / CIFAR-10 setting, as the options ask.

    Raises ValueError for options that do not go together.
    """
    model, directory, width = options.get("model"), options.get("cifar10"), options.get("width")
    if model in (None, "mlp"):
        if directory is not None or width is not None:
            raise ValueError("--cifar10 and --width need --model resnet18")
        return sys.modules[__name__]
    if directory is None:
        raise ValueError("--model resnet18 needs --cifar10 DIR (a local CIFAR-10 directory)")
    if width is not None and width < 1:
        raise ValueError(f"--width must be a positive integer; got {width}")
    chosen = {"cifar10": os.fspath(directory)}
    if width is not None:
        chosen["width"] = width
    return SimpleNamespace(NAME=NAME, CLAIM=CLAIM, SOURCE="seed 000, Fig. 2", RULE=RULE,
                           QUICK={**RESNET_QUICK, **chosen}, FULL={**RESNET_FULL, **chosen},
                           run=run_resnet)


def run_resnet(settings, seed, out_dir, progress):
    """The learning-rate sweep of seed 000, Fig. 2 on a CIFAR ResNet-18 trained by torch SGD."""
    import torch

    from gcref.models import geometric_complexity
    from gcref.nets.torch import resnet18

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    X, labels = load_cifar10(settings["cifar10"], train=True, limit=settings["n_train"],
                             normalize=True)
    X_test, labels_test = load_cifar10(settings["cifar10"], train=False,
                                       limit=settings["n_test"], normalize=True)
    X, labels = torch.from_numpy(X).to(device), torch.from_numpy(labels).to(device)
    X_test = torch.from_numpy(X_test).to(device)
    labels_test = torch.from_numpy(labels_test).to(device)
    values = settings["lrs"]
    seeds = [seed + 1 + s for s in range(settings["seeds"])]
    shape = (len(values), len(seeds))
    out = _sweep.empty_results(shape)
    done = 0
    for j, lr in enumerate(values):
        for s, run_seed in enumerate(seeds):
            rng = np.random.default_rng(run_seed)
            # The module's initialisers draw from torch's global generator: fork it so that
            # the run's seed decides them and nothing outside changes.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(run_seed)
                model = resnet18(width=settings["width"]).to(device)
            best = train_resnet(model, X, labels, X_test, labels_test, lr=lr,
                                batch_size=settings["batch_size"], epochs=settings["epochs"],
                                rng=rng)
            model.load_state_dict(best["state"])
            gc = geometric_complexity(model, X[:settings["gc_examples"]], chunk_size=CHUNK)
            grad_sq, train_loss = resnet_grad_sq(model, X, labels)
            out["dirichlet_energy"][j, s] = gc / 2
            out["grad_sq"][j, s] = grad_sq
            out["test_accuracy"][j, s] = best["accuracy"]
            out["train_loss"][j, s] = train_loss
            out["best_epoch"][j, s] = best["epoch"]
            done += 1
            progress(done, shape[0] * shape[1], f"lr={lr}")
    summary, held, figure = judge(
        out, values, out_dir,
        f"CIFAR-10 ResNet-18 (width {settings['width']}), {len(X)} training images, SGD "
        f"batch {settings['batch_size']}, {settings['epochs']} epochs, mean of {len(seeds)} "
        "seeds at the best test epoch",
    )
    return Outcome(measured={"lrs": values, "device": device.type, **summary}, held=held,
                   figures=[figure], seeds=[seed, *seeds], frameworks=["torch"],
                   notes=f"Dirichlet energy on the first {settings['gc_examples']} training "
                         "images, ||grad L||^2 and the training loss on all of them, every "
                         "measure in eval mode (BatchNorm running statistics).")


def train_resnet(model, X, labels, X_test, labels_test, *, lr, batch_size, epochs, rng):
    """Plain SGD on the mean cross-entropy; the state and accuracy of the best test epoch."""
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    best = {"accuracy": -1.0}
    for epoch in range(epochs + 1):
        if epoch > 0:
            model.train()
            order = torch.from_numpy(rng.permutation(len(X))).to(X.device)
            for start in range(0, len(X), batch_size):
                batch = order[start:start + batch_size]
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(X[batch]), labels[batch]).backward()
                optimizer.step()
        accuracy = resnet_accuracy(model, X_test, labels_test)
        if accuracy > best["accuracy"]:
            best = {"accuracy": accuracy, "epoch": epoch,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    return best


def resnet_accuracy(model, X, labels):
    """Fraction of ``X`` classified as ``labels``, in eval mode."""
    import torch

    model.eval()
    with torch.no_grad():
        correct = sum(int((model(X[i:i + CHUNK]).argmax(dim=1) == labels[i:i + CHUNK]).sum())
                      for i in range(0, len(X), CHUNK))
    return correct / len(X)


def resnet_grad_sq(model, X, labels):
    """``||grad L||^2`` of the mean cross-entropy over all of ``X`` and that mean, in eval mode."""
    import torch

    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    loss_sum = 0.0
    for i in range(0, len(X), CHUNK):
        loss = torch.nn.functional.cross_entropy(model(X[i:i + CHUNK]), labels[i:i + CHUNK],
                                                 reduction="sum")
        for acc, g in zip(total, torch.autograd.grad(loss, params)):
            acc += g.double()
        loss_sum += float(loss.detach())
    return float(sum((acc / len(X)).pow(2).sum() for acc in total)), loss_sum / len(X)
