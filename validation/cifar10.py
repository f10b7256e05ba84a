"""A local CIFAR-10 directory in the "CIFAR-10 python version" layout; never downloads.

The layout is that of ``cifar-10-python.tar.gz`` unpacked: ``data_batch_1`` ...
``data_batch_5`` (training) and ``test_batch``, each a pickled dict with ``b"data"``, a
uint8 array of shape (n, 3072) holding the red, green and blue 32 x 32 planes of each image
in that order, and ``b"labels"``, n class indices in 0..9.
"""

from __future__ import annotations

import os
import pickle

import numpy as np

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
N_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
# Per-channel mean and standard deviation of the 50000 training images in [0, 1].
CHANNEL_MEAN = (0.4914, 0.4822, 0.4465)
CHANNEL_STD = (0.2470, 0.2435, 0.2616)


def load_cifar10(directory, *, train=True, limit=None, normalize=False):
    """Images and labels of a local CIFAR-10 directory.

    Parameters
    ----------
    directory : str or os.PathLike
        A directory holding ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``.
    train : bool
        The five training batches (in order) if true, else the test batch.
    limit : int or None
        Keep the first ``limit`` images only (batches past it are not read).
    normalize : bool
        Subtract ``CHANNEL_MEAN`` and divide by ``CHANNEL_STD`` channel by channel.

    Returns
    -------
    images : ndarray of float32, shape (n, 3, 32, 32)
        Pixels scaled to [0, 1] (or normalised per channel).
    labels : ndarray of int64, shape (n,)

    Raises
    ------
    FileNotFoundError
        When ``directory`` or one of the batch files it needs does not exist.
    ValueError
        When a batch is not a pickled dict with uint8 ``b"data"`` of shape (n, 3072) and n
        ``b"labels"`` in 0..9, or ``limit`` is not a positive integer.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))
                              or limit < 1):
        raise ValueError(f"limit must be a positive integer or None; got {limit!r}")
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"CIFAR-10 directory {directory!r} does not exist (expected the "
                                "unpacked 'CIFAR-10 python version'; nothing is downloaded)")
    images, labels, count = [], [], 0
    for name in TRAIN_FILES if train else TEST_FILES:
        if limit is not None and count >= limit:
            break
        data, batch_labels = read_batch(os.path.join(directory, name))
        images.append(data)
        labels.append(batch_labels)
        count += len(batch_labels)
    images = np.concatenate(images)[:limit].reshape(-1, *IMAGE_SHAPE).astype(np.float32) / 255
    if normalize:
        mean = np.asarray(CHANNEL_MEAN, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(CHANNEL_STD, np.float32).reshape(1, 3, 1, 1)
        images = (images - mean) / std
    return images, np.concatenate(labels)[:limit].astype(np.int64)


def read_batch(path):
    """``data`` (uint8, shape (n, 3072)) and ``labels`` (shape (n,)) of one checked batch file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR-10 batch file {path!r} does not exist")
    try:
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError) as exc:
        raise ValueError(f"{path!r} is not a pickled CIFAR-10 batch: {exc}") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path!r} must hold a dict with b'data' and b'labels'; got {keys}")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != int(np.prod(IMAGE_SHAPE)):
        described = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                     else type(data).__name__)
        raise ValueError(f"{path!r}: b'data' must be a uint8 array of shape (n, 3072); "
                         f"got {described}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer) \
            or labels.min(initial=0) < 0 or labels.max(initial=0) >= N_CLASSES:
        raise ValueError(f"{path!r}: b'labels' must be {len(data)} integers in 0..9; got "
                         f"{labels.dtype} values of shape {labels.shape}")
    return data, labels
