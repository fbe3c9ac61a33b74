"""A small VGG-style CNN for Fashion-MNIST (1x28x28).

Layout for ``widths=(w1, w2, w3, w4)`` (the default is ``(32, 64, 128, 128)``)::

    features: conv1 bn1 relu1  conv2 bn2 relu2  pool1
              conv3 bn3 relu3  conv4 bn4 relu4  pool2
    pool (global average) -> flatten -> fc

All convolutions are 3x3, stride 1, padding 1 (so ``features.conv1`` .. ``features.convN``
carry almost all the FLOPs); a 2x2 max pool follows every second conv. Without batch norm
the ``bnK`` modules are absent and the convs get a bias. More or fewer widths work too
(at most three pools are inserted: 28 -> 14 -> 7 -> 3).

Example:
    >>> import torch
    >>> from sparsecnn.models import fmnist_vgg
    >>> m = fmnist_vgg().eval()
    >>> m(torch.zeros(m.default_input_shape)).shape
    torch.Size([1, 10])
    >>> [n for n, _ in m.named_modules() if n.startswith("features.conv")]
    ['features.conv1', 'features.conv2', 'features.conv3', 'features.conv4']
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FashionVGG", "fmnist_vgg"]


class FashionVGG(nn.Module):
    """VGG-style CNN for 1x28x28 input: ``features`` -> ``pool`` -> ``fc``."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 128), num_classes: int = 10,
                 batch_norm: bool = True, in_channels: int = 1) -> None:
        super().__init__()
        if len(widths) == 0 or any(int(w) <= 0 for w in widths):
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
        layers: list[tuple[str, nn.Module]] = []
        c = in_channels
        n_pool = 0
        for i, w in enumerate(widths, start=1):
            layers.append((f"conv{i}", nn.Conv2d(c, int(w), 3, padding=1, bias=not batch_norm)))
            if batch_norm:
                layers.append((f"bn{i}", nn.BatchNorm2d(int(w))))
            layers.append((f"relu{i}", nn.ReLU(inplace=False)))
            if i % 2 == 0 and n_pool < 3:
                n_pool += 1
                layers.append((f"pool{n_pool}", nn.MaxPool2d(2, 2)))
            c = int(w)
        self.features = nn.Sequential(OrderedDict(layers))
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c, num_classes)
        self.widths = tuple(int(w) for w in widths)
        self.default_input_shape = (1, in_channels, 28, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def fmnist_vgg(widths: Sequence[int] = (32, 64, 128, 128), num_classes: int = 10,
               batch_norm: bool = True) -> FashionVGG:
    """Build the Fashion-MNIST VGG-style CNN. See :class:`FashionVGG` for module names."""
    return FashionVGG(widths=widths, num_classes=num_classes, batch_norm=batch_norm)
