"""Learning rate against geometric complexity on digits (seed 000, Fig. 2; seed 003).

The implicit regulariser of SGD, (h / 4m) sum_j ||grad L_{B_j}||^2 (MATH.md section 5), grows
with the learning rate h; through the transfer theorem its pressure reaches the input
gradients, so seed 000 predicts that both the discrete Dirichlet energy and ||grad L||^2
are lower for larger learning rates. Seed 000 measures each model at its best test score;
here every run is measured when its training loss first reaches a common target (the best
test accuracy up to there is recorded beside), so that the learning rate is not confounded
with training progress (see ``validation._sweep``). A ReLU MLP on scikit-learn's 8 x 8
digits stands in for the seed's ResNet on CIFAR-10.

With ``--model resnet18 --cifar10 DIR`` the same protocol runs the seed's own setting: a CIFAR
ResNet-18 (gcref.nets.torch.resnet18) trained by torch SGD on a local CIFAR-10 directory
(validation.cifar10; nothing is downloaded), on the GPU when torch sees one, with the
Dirichlet energy measured by gcref.models.geometric_complexity; ``--device`` chooses where
it trains.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import numpy as np

from validation import _sweep
from validation._report import Outcome
from validation._stats import run_seeds
from validation.cifar10 import load_cifar10

NAME = "lr_sweep"
CLAIM = (
    "a classifier trained by SGD at a larger learning rate reaches a given training loss with "
    "a lower discrete Dirichlet energy and a lower ||grad L||^2"
)
SOURCE = "seed 000, Fig. 2; seed 003"
RULE = (
    "every (learning rate, seed) run trains until its mean training loss first falls to "
    "target_loss (at most max_epochs epochs; runs that miss it are reported and left out of "
    "the fits); per seed, the least-squares slope of log DE^ and of log ||grad L||^2 against "
    "log h over the runs that reached the target. Held if, for both measures, the seed-mean "
    "slope is negative beyond 2 standard errors"
)
QUICK = {"hidden": [16], "lrs": [0.1, 0.4], "batch_size": 64, "target_loss": 1.0,
         "max_epochs": 6, "seeds": 2}
FULL = {"hidden": [128, 128], "lrs": [0.01, 0.02, 0.05, 0.1, 0.2, 0.4], "batch_size": 32,
        "target_loss": 0.02, "max_epochs": 400, "seeds": 5}
# Each run's key names its grid value: extending this grid reuses the runs done.
SWEPT = ("lrs",)
# The digits MLP trains with NumPy; only the ResNet-18 setting (configured()) uses --device.
USES_DEVICE = False


def run(settings, seed, context):
    values = settings["lrs"]
    records, seeds = _sweep.sweep(settings, "lr", values, seed, context)
    summary, held, figure = judge(
        records, values, context.out_dir,
        f"Digits MLP {settings['hidden']}, SGD batch {settings['batch_size']}, each run at "
        f"training loss {settings['target_loss']}, mean and standard error of {len(seeds)} seeds",
    )
    return Outcome(measured={"lrs": values, **summary}, held=held, figures=[figure],
                   seeds=[seed, *seeds], frameworks=["scikit-learn"],
                   notes="The MLP sweep trains with NumPy; --device applies to --model resnet18.")


def judge(records, values, out_dir, title):
    """Summary, verdict (:data:`RULE`) and figure of a learning-rate sweep's records."""
    summary, verdicts = _sweep.judge(records, values, sign=-1)
    held = verdicts["dirichlet_energy"] and verdicts["grad_sq"]
    figure = _sweep.plot(out_dir, NAME, summary, values, "learning rate h", title)
    return summary, held, figure


# The ResNet-18 / CIFAR-10 setting of seed 000's Fig. 2 (``--model resnet18 --cifar10 DIR``).
# A CPU runs only a narrow network on a few images (``--width``); the full setting is meant
# for a GPU, which is used whenever torch sees one.
RESNET_QUICK = {"model": "resnet18", "width": 4, "n_train": 64, "n_test": 32,
                "gc_examples": 16, "lrs": [0.01, 0.1], "batch_size": 16, "target_loss": 2.0,
                "max_epochs": 2, "seeds": 2}
RESNET_FULL = {"model": "resnet18", "width": 64, "n_train": 10000, "n_test": 10000,
               "gc_examples": 1000, "lrs": [0.005, 0.01, 0.02, 0.05, 0.1, 0.2],
               "batch_size": 128, "target_loss": 0.05, "max_epochs": 60, "seeds": 3}
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
                           run=run_resnet, USES_DEVICE=True, SWEPT=SWEPT)


def run_resnet(settings, seed, context):
    """The learning-rate sweep of seed 000, Fig. 2 on a CIFAR ResNet-18 trained by torch SGD,
    each run measured when its training loss first reaches ``target_loss``."""
    import torch

    device = torch.device(context.device)
    X, labels = load_cifar10(settings["cifar10"], train=True, limit=settings["n_train"],
                             normalize=True)
    X_test, labels_test = load_cifar10(settings["cifar10"], train=False,
                                       limit=settings["n_test"], normalize=True)
    data = [torch.from_numpy(a).to(device) for a in (X, labels, X_test, labels_test)]
    values = settings["lrs"]
    seeds = run_seeds(seed, settings["seeds"])
    records, done = [], 0
    for lr in values:
        row = []
        for run_seed in seeds:
            row.append(context.runs.get(f"lr={lr},seed={run_seed}", resnet_run, settings,
                                        data, lr, run_seed, device))
            done += 1
            context.progress(done, len(values) * len(seeds), f"lr={lr}")
        records.append(row)
    summary, held, figure = judge(
        records, values, context.out_dir,
        f"CIFAR-10 ResNet-18 (width {settings['width']}), {len(X)} training images, SGD "
        f"batch {settings['batch_size']}, each run at training loss {settings['target_loss']}, "
        f"mean and standard error of {len(seeds)} seeds",
    )
    return Outcome(measured={"lrs": values, "device": device.type, **summary}, held=held,
                   figures=[figure], seeds=[seed, *seeds], frameworks=["torch"],
                   notes=f"Dirichlet energy on the first {settings['gc_examples']} training "
                         "images, ||grad L||^2 and the training loss on all of them, every "
                         "measure in eval mode (BatchNorm running statistics).")


def resnet_run(settings, data, lr, run_seed, device):
    """One (learning rate, seed) run of the ResNet-18 sweep: the record of _sweep.MEASURES."""
    import torch

    from gcref.models import geometric_complexity
    from gcref.nets.torch import resnet18

    X, labels, X_test, labels_test = data
    rng = np.random.default_rng(run_seed)
    # The module's initialisers draw from torch's global generator: fork it so that the run's
    # seed decides them and nothing outside changes.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(run_seed)
        model = resnet18(width=settings["width"]).to(device)
    record = train_resnet(model, X, labels, X_test, labels_test, lr=lr,
                          batch_size=settings["batch_size"], target_loss=settings["target_loss"],
                          max_epochs=settings["max_epochs"], rng=rng)
    gc = geometric_complexity(model, X[:settings["gc_examples"]], chunk_size=CHUNK)
    record["grad_sq"], record["train_loss"] = resnet_grad_sq(model, X, labels)
    record["dirichlet_energy"] = gc / 2
    return record


def train_resnet(model, X, labels, X_test, labels_test, *, lr, batch_size, target_loss,
                 max_epochs, rng):
    """Plain SGD on the mean cross-entropy until the training loss (eval mode) is at most
    ``target_loss`` or ``max_epochs`` have run; the model is left at the stopping epoch.
    Returns ``reached``, ``epoch``, ``test_accuracy`` there and the best test accuracy
    (and its epoch) up to it."""
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    best_accuracy, best_epoch = -1.0, 0
    for epoch in range(max_epochs + 1):
        if epoch > 0:
            model.train()
            order = torch.from_numpy(rng.permutation(len(X))).to(X.device)
            for start in range(0, len(X), batch_size):
                batch = order[start:start + batch_size]
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(X[batch]), labels[batch]).backward()
                optimizer.step()
        accuracy = resnet_accuracy(model, X_test, labels_test)
        if accuracy > best_accuracy:
            best_accuracy, best_epoch = accuracy, epoch
        loss = resnet_loss(model, X, labels)
        if loss <= target_loss:
            break
    return {"reached": loss <= target_loss, "epoch": epoch, "test_accuracy": accuracy,
            "best_test_accuracy": best_accuracy, "best_test_epoch": best_epoch}


def resnet_loss(model, X, labels):
    """Mean cross-entropy over ``X``, in eval mode."""
    import torch

    model.eval()
    with torch.no_grad():
        total = sum(float(torch.nn.functional.cross_entropy(
            model(X[i:i + CHUNK]), labels[i:i + CHUNK], reduction="sum"))
            for i in range(0, len(X), CHUNK))
    return total / len(X)


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
