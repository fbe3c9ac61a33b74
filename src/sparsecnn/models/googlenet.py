"""GoogLeNet (Inception v1, Szegedy et al. 2015) without the auxiliary heads.

Follows the original (BVLC) network: plain convolutions with bias, ReLU and LRN, no batch norm.
Stem names: ``conv1 relu1 pool1 norm1 conv2_reduce relu2_reduce conv2 relu2 norm2 pool2``;
then ``inception3a inception3b pool3 inception4a .. inception4e pool4 inception5a
inception5b avgpool dropout fc``. Each :class:`Inception` module has named convolutions
``branch1x1``, ``branch3x3_reduce``, ``branch3x3``, ``branch5x5_reduce``, ``branch5x5``,
``pool_proj`` (so e.g. ``inception4a.branch3x3`` is an ``nn.Conv2d``), each followed by its
own ``nn.ReLU`` named ``relu_<conv name>``.

Example:
    >>> import torch
    >>> from sparsecnn.models import googlenet
    >>> m = googlenet().eval()
    >>> m(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Inception", "GoogLeNet", "googlenet"]


class Inception(nn.Module):
    """Inception module: 1x1 | 1x1->3x3 | 1x1->5x5 | maxpool 3x3->1x1, concatenated."""

    def __init__(self, in_ch: int, ch1x1: int, ch3x3red: int, ch3x3: int,
                 ch5x5red: int, ch5x5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1x1 = nn.Conv2d(in_ch, ch1x1, 1)
        self.relu_branch1x1 = nn.ReLU(inplace=False)
        self.branch3x3_reduce = nn.Conv2d(in_ch, ch3x3red, 1)
        self.relu_branch3x3_reduce = nn.ReLU(inplace=False)
        self.branch3x3 = nn.Conv2d(ch3x3red, ch3x3, 3, padding=1)
        self.relu_branch3x3 = nn.ReLU(inplace=False)
        self.branch5x5_reduce = nn.Conv2d(in_ch, ch5x5red, 1)
        self.relu_branch5x5_reduce = nn.ReLU(inplace=False)
        self.branch5x5 = nn.Conv2d(ch5x5red, ch5x5, 5, padding=2)
        self.relu_branch5x5 = nn.ReLU(inplace=False)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
        self.pool_proj = nn.Conv2d(in_ch, pool_proj, 1)
        self.relu_pool_proj = nn.ReLU(inplace=False)
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.relu_branch1x1(self.branch1x1(x))
        b2 = self.relu_branch3x3_reduce(self.branch3x3_reduce(x))
        b2 = self.relu_branch3x3(self.branch3x3(b2))
        b3 = self.relu_branch5x5_reduce(self.branch5x5_reduce(x))
        b3 = self.relu_branch5x5(self.branch5x5(b3))
        b4 = self.relu_pool_proj(self.pool_proj(self.pool(x)))
        return torch.cat([b1, b2, b3, b4], 1)


# (in, 1x1, 3x3red, 3x3, 5x5red, 5x5, pool_proj) from Table 1 of the paper
_CFG: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64),
    "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}


class GoogLeNet(nn.Module):
    """GoogLeNet / Inception v1 for 3x224x224 input (no auxiliary classifiers)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.relu1 = nn.ReLU(inplace=False)
        self.pool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.norm1 = nn.LocalResponseNorm(5, 1e-4, 0.75)
        self.conv2_reduce = nn.Conv2d(64, 64, 1)
        self.relu2_reduce = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(64, 192, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=False)
        self.norm2 = nn.LocalResponseNorm(5, 1e-4, 0.75)
        self.pool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(*_CFG["inception3a"])
        self.inception3b = Inception(*_CFG["inception3b"])
        self.pool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(*_CFG["inception4a"])
        self.inception4b = Inception(*_CFG["inception4b"])
        self.inception4c = Inception(*_CFG["inception4c"])
        self.inception4d = Inception(*_CFG["inception4d"])
        self.inception4e = Inception(*_CFG["inception4e"])
        self.pool4 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception5a = Inception(*_CFG["inception5a"])
        self.inception5b = Inception(*_CFG["inception5b"])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        self.default_input_shape = (1, 3, 224, 224)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(self.pool1(self.relu1(self.conv1(x))))
        x = self.relu2_reduce(self.conv2_reduce(x))
        x = self.pool2(self.norm2(self.relu2(self.conv2(x))))
        x = self.pool3(self.inception3b(self.inception3a(x)))
        for name in ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e"):
            x = getattr(self, name)(x)
        x = self.pool4(x)
        x = self.inception5b(self.inception5a(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


def googlenet(num_classes: int = 1000) -> GoogLeNet:
    """Build an (untrained) GoogLeNet for 3x224x224 input."""
    return GoogLeNet(num_classes=num_classes)
