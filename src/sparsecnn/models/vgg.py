"""VGG-16 (configuration D, no batch norm) with torchvision's module names.

Convolutions live in ``features`` at torchvision's indices (``features.0``, ``features.2``,
``features.5`` ... ``features.28``), each followed by its own ``nn.ReLU`` at the next index;
the classifier is ``classifier.0`` / ``.3`` / ``.6``.

Example:
    >>> import torch
    >>> from sparsecnn.models import vgg16
    >>> m = vgg16(num_classes=10).eval()
    >>> m(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VGG", "vgg16", "VGG16_CFG"]

VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                              512, 512, 512, "M", 512, 512, 512, "M"]


def _make_features(cfg: list[int | str], in_channels: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            c = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG network: ``features`` -> ``avgpool`` (adaptive 7x7) -> ``classifier``."""

    def __init__(self, cfg: list[int | str] = VGG16_CFG, num_classes: int = 1000,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.features = _make_features(cfg)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=False), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=False), nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        self.default_input_shape = (1, 3, 224, 224)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16(num_classes: int = 1000) -> VGG:
    """Build an (untrained) VGG-16 for 3x224x224 input."""
    return VGG(VGG16_CFG, num_classes=num_classes)
