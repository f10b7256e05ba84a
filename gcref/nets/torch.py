"""PyTorch networks for validation and benchmarks: a CIFAR ResNet-18, a small CNN, an MLP.

No torchvision: every network is written here. ``width`` shrinks a network for tests
(a ResNet-18 of width 4 on 8x8 images runs in milliseconds on a CPU).

Index conventions: a batch ``X`` has shape ``(N, C, H, W)`` for the convolutional
networks and ``(N, d)`` for :func:`mlp_module`; every network returns ``(N, k)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gcref.activations import get_activation, leaky_relu

__all__ = ["BasicBlock", "ResNet18", "SmallCNN", "mlp_module", "resnet18"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection (He et al., 2016).

    The shortcut is the identity, or a 1x1 convolution with BatchNorm when the stride or
    the number of channels changes the shape.
    """

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """The CIFAR ResNet-18: 3x3 stem of stride 1, no max-pool, BasicBlocks ``[2, 2, 2, 2]``.

    Parameters
    ----------
    num_classes : int
        Outputs k.
    width : int
        Channels of the stem and first stage; the stages have ``width * (1, 2, 4, 8)``
        (64 is the standard network, about 11.2 million parameters).
    in_channels : int
        Input channels (3 for CIFAR-10).

    Notes
    -----
    Input ``(N, in_channels, H, W)`` with any ``H, W`` (32 for CIFAR); output ``(N, num_classes)``
    after a global average pool and a linear layer.
    """

    def __init__(self, num_classes=10, width=64, in_channels=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages = []
        channels = width
        for i, out_channels in enumerate(width * m for m in (1, 2, 4, 8)):
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(
                    BasicBlock(channels, out_channels, stride),
                    BasicBlock(out_channels, out_channels, 1),
                )
            )
            channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


def resnet18(num_classes=10, width=64, in_channels=3):
    """A :class:`ResNet18` (the standard CIFAR-10 network with the defaults)."""
    return ResNet18(num_classes=num_classes, width=width, in_channels=in_channels)


class SmallCNN(nn.Module):
    """Three convolutions with ReLU, a global average pool and a linear layer.

    Parameters
    ----------
    in_channels : int
    num_classes : int
        Outputs k.
    width : int
        Channels of the first convolution; the next two have ``2 * width``.

    Notes
    -----
    ``conv 3x3 (padding 1) -> relu -> conv 3x3 (stride 2, padding 1) -> relu ->
    conv 3x3 (no padding) -> relu -> mean over positions -> linear``. Input
    ``(N, in_channels, H, W)`` with ``H, W >= 5``.
    """

    def __init__(self, in_channels=3, num_classes=10, width=16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3),
            nn.ReLU(),
        )
        self.linear = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.linear(self.features(x).mean(dim=(2, 3)))


def _activation_module(activation):
    """The ``torch.nn`` module computing a gcref activation, or a ValueError."""
    simple = {"identity": nn.Identity, "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    name = activation.name
    if name in simple and get_activation(name) is activation:
        return simple[name]()
    if name == "softplus" and get_activation(name) is activation:
        # Beyond x = 40, log1p(exp(-x)) < 1e-17 x and sigmoid(x) rounds to 1 in float64,
        # so switching to the identity there changes no value and no derivative.
        return nn.Softplus(beta=1.0, threshold=40.0)
    if name.startswith("leaky_relu"):
        # The slope is the derivative on the negative side; leaky_relu(slope) returns the
        # one object of that slope, so a custom activation merely named alike is refused.
        slope = float(activation.d1(np.array([-1.0]))[0])
        if leaky_relu(slope) is activation:
            return nn.LeakyReLU(slope)
    raise ValueError(
        f"activation {name!r} has no torch.nn module here; mlp_module supports identity, relu, "
        "leaky_relu(slope), tanh, sigmoid and softplus"
    )


def mlp_module(mlp, params, dtype=torch.float64):
    """The ``torch.nn.Sequential`` computing the gcref MLP ``mlp`` with its NumPy ``params``.

    Parameters
    ----------
    mlp : gcref.MLP
    params : tuple of (W_i, b_i)
        NumPy arrays; ``W_i`` of shape ``(n_{i+1}, n_i)`` is copied into ``nn.Linear.weight``
        (the same layout), ``b_i`` into its bias.
    dtype : torch.dtype
        The module's dtype.

    Returns
    -------
    torch.nn.Sequential
        ``Linear, activation, ..., Linear, output activation`` (docs/math.md section 1); its
        parameters in ``parameters()`` order are ``W_1, b_1, ..., W_l, b_l``, the order of
        :func:`gcref.params.flatten_params`.

    Raises
    ------
    ValueError
        For an activation with no torch.nn module here (a custom one).
    """
    params = mlp.check_params(params)
    layers = []
    for i, (W, b) in enumerate(params):
        linear = nn.Linear(W.shape[1], W.shape[0], dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(np.asarray(W)))
            linear.bias.copy_(torch.as_tensor(np.asarray(b)))
        layers += [linear, _activation_module(mlp.layer_activation(i))]
    return nn.Sequential(*layers)
