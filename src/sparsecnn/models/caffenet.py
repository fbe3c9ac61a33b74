"""CaffeNet (the BVLC reference AlexNet variant), as in Caffe's ``bvlc_reference_caffenet``.

The network is a flat :class:`torch.nn.Sequential`, so every layer is a top-level child
with Caffe's names (``conv1`` .. ``conv5``, ``fc6`` .. ``fc8``) and every ReLU is its own
``nn.ReLU`` module right after the layer it follows (``relu1`` after ``conv1`` ...), which
lets a converter fuse conv -> relu by walking the children in order.

Example:
    >>> import torch
    >>> from sparsecnn.models import caffenet
    >>> m = caffenet().eval()
    >>> m(torch.zeros(m.default_input_shape)).shape
    torch.Size([1, 1000])
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

__all__ = ["CaffeNet", "caffenet"]


class CaffeNet(nn.Sequential):
    """CaffeNet: conv1 96x11x11/4, pool, LRN, conv2 (groups=2), pool, LRN, conv3-5, pool, fc6-8.

    Layer order (child names): ``conv1 relu1 pool1 norm1 conv2 relu2 pool2 norm2 conv3 relu3
    conv4 relu4 conv5 relu5 pool5 flatten fc6 relu6 drop6 fc7 relu7 drop7 fc8``.
    Input 3x227x227 (``default_input_shape``); conv5 output 256x6x6.
    """

    default_input_shape: tuple[int, int, int, int] = (1, 3, 227, 227)

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 96, kernel_size=11, stride=4)),
                    ("relu1", nn.ReLU(inplace=False)),
                    ("pool1", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)),
                    ("norm1", nn.LocalResponseNorm(5, 1e-4, 0.75)),
                    ("conv2", nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2)),
                    ("relu2", nn.ReLU(inplace=False)),
                    ("pool2", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)),
                    ("norm2", nn.LocalResponseNorm(5, 1e-4, 0.75)),
                    ("conv3", nn.Conv2d(256, 384, kernel_size=3, padding=1)),
                    ("relu3", nn.ReLU(inplace=False)),
                    ("conv4", nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2)),
                    ("relu4", nn.ReLU(inplace=False)),
                    ("conv5", nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2)),
                    ("relu5", nn.ReLU(inplace=False)),
                    ("pool5", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)),
                    ("flatten", nn.Flatten(1)),
                    ("fc6", nn.Linear(256 * 6 * 6, 4096)),
                    ("relu6", nn.ReLU(inplace=False)),
                    ("drop6", nn.Dropout(dropout)),
                    ("fc7", nn.Linear(4096, 4096)),
                    ("relu7", nn.ReLU(inplace=False)),
                    ("drop7", nn.Dropout(dropout)),
                    ("fc8", nn.Linear(4096, num_classes)),
                ]
            )
        )
        self.default_input_shape = (1, 3, 227, 227)


def caffenet(num_classes: int = 1000) -> CaffeNet:
    """Build an (untrained) CaffeNet. See :class:`CaffeNet`.

    Example:
        >>> m = caffenet(num_classes=10)
        >>> dict(m.named_modules())["conv3"].weight.shape
        torch.Size([384, 256, 3, 3])
    """
    return CaffeNet(num_classes=num_classes)
