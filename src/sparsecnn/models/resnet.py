"""ResNet-50 v1.5 with torchvision's exact module names.

Names: ``conv1 bn1 relu maxpool layer1..layer4 avgpool fc``; a block ``layerS.B`` has
``conv1 bn1 conv2 bn2 conv3 bn3`` and, for the first block of a stage, ``downsample.0``
(1x1 conv) and ``downsample.1`` (BN). The stride of a stage sits on the 3x3 ``conv2`` (v1.5).
These names match the pruned ResNet-50 sets in ``shared/data/pruned``.

Unlike torchvision, each bottleneck uses three separate ReLU modules (``relu1``, ``relu2``,
``relu`` after the residual add) so a converter can see which conv each one follows, and
offers :meth:`Bottleneck.fuse_residual`: once :func:`sparsecnn.sparsify` has made ``conv3``
sparse (BN folded), the residual add and the final ReLU run in conv3's store, which saves two
passes over the block's output (a third of ResNet-50's time at batch 16 once the convolutions
are sparse).

Example:
    >>> from sparsecnn.models import resnet50
    >>> m = resnet50()
    >>> dict(m.named_modules())["layer2.0.conv2"].stride
    (2, 2)
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Bottleneck", "ResNet", "resnet50"]


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4) bottleneck with identity or projection shortcut."""

    expansion = 4
    residual_fused = False  # set by fuse_residual

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        if self.residual_fused:
            return self.conv3(out, identity)  # relu(conv3(out) + identity), one store
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def fuse_residual(self) -> str | None:
        """Move the residual add and the final ReLU into ``conv3``'s store.

        Called by :func:`sparsecnn.sparsify` after it converted the block; applies only when
        ``conv3`` is a :class:`~sparsecnn.nn.SparseConv2d` without its own ReLU and ``bn3`` was
        folded into it. Returns the name of the fused conv (``"conv3"``), or None.
        """
        from sparsecnn.nn import SparseConv2d

        if (isinstance(self.conv3, SparseConv2d) and not self.conv3.relu and isinstance(self.bn3, nn.Identity)
                and type(self.relu) is nn.ReLU and not self.residual_fused):
            self.conv3.relu = True
            self.relu = nn.Identity()
            self.residual_fused = True
            return "conv3"
        return None


class ResNet(nn.Module):
    """ResNet with bottleneck blocks (torchvision layout)."""

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 6, 3),
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        self.default_input_shape = (1, 3, 224, 224)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride,
                          bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(num_classes: int = 1000) -> ResNet:
    """Build an (untrained) ResNet-50 v1.5 for 3x224x224 input."""
    return ResNet((3, 4, 6, 3), num_classes=num_classes)
