"""Data and the plain mini-batch SGD loop shared by the classification experiments."""

from __future__ import annotations

import numpy as np

import gcref
from gcref.optimizers import GradientDescent


def digits(rng, test_fraction=0.25):
    """scikit-learn's 8 x 8 digits (shipped with it, never downloaded), split at random.

    Pixels are scaled to [0, 1]. Returns ``X_train, y_train, X_test, y_test`` with integer
    class labels.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    X = data.data / 16.0
    order = rng.permutation(len(X))
    n_test = int(round(test_fraction * len(X)))
    test, train = order[:n_test], order[n_test:]
    return X[train], data.target[train], X[test], data.target[test]


def accuracy(mlp, params, X, labels):
    """Fraction of examples whose largest output is their label."""
    return float(np.mean(np.argmax(gcref.predict(mlp, params, X), axis=1) == labels))


def sgd_epochs(mlp, params, X, y, loss, *, lr, batch_size, epochs, rng, after_epoch=None,
               optimizer=None, weight_decay=0.0):
    """Mini-batch SGD over at most ``epochs`` reshuffled passes; ``after_epoch(epoch, params)``
    is called before the first epoch (with 0) and after each one, and training stops early
    when it returns True. ``weight_decay`` adds ``weight_decay * sum_i ||W_i||_F^2`` to each
    batch loss (biases not penalised; gcref.training.L2Penalty's convention). Returns the
    parameters."""
    optimizer = optimizer or GradientDescent(lr)
    if after_epoch is not None and after_epoch(0, params):
        return params
    step = 0
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(X))
        for start in range(0, len(X), batch_size):
            batch = order[start:start + batch_size]
            grads = gcref.loss_grad(mlp, params, X[batch], y[batch], loss)
            if weight_decay:
                grads = [(gW + 2.0 * weight_decay * W, gb)
                         for (gW, gb), (W, _) in zip(grads, params)]
            step += 1
            params = optimizer.update(mlp, params, grads, step)
        if after_epoch is not None and after_epoch(epoch, params):
            break
    return params
