"""Model zoo: the CNNs the sparse kernels are benchmarked on, plus pruned-weight loading.

Public builders (all return untrained ``nn.Module`` objects with a ``default_input_shape``
attribute, e.g. ``(1, 3, 227, 227)`` for CaffeNet):

- :func:`caffenet` (alias ``alexnet`` in :func:`get_model`): layers ``conv1``..``conv5``,
  ``fc6``..``fc8`` as top-level children of an ``nn.Sequential``.
- :func:`vgg16`: torchvision names (``features.0`` ... ``classifier.6``).
- :func:`resnet50`: torchvision names (``layer1.0.conv1``, ``layer1.0.downsample.0``, ``fc``).
- :func:`googlenet`: ``inception3a`` .. ``inception5b`` with named branch convs.
- :func:`fmnist_vgg`: small VGG-style CNN for 1x28x28 Fashion-MNIST
  (``features.conv1`` .. ``features.conv4``, ``fc``).

Example:
    >>> import torch
    >>> from sparsecnn.models import get_model
    >>> from sparsecnn.models.pruned import apply_pruned_weights
    >>> m = get_model("caffenet").eval()
    >>> apply_pruned_weights(m, "caffenet_l1_acc56.3")
    ['conv1', 'conv2', 'conv3', 'conv4', 'conv5']
    >>> m(torch.zeros(m.default_input_shape)).shape
    torch.Size([1, 1000])
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .caffenet import CaffeNet, caffenet
from .fmnist import FashionVGG, fmnist_vgg
from .googlenet import GoogLeNet, Inception, googlenet
from .pruned import (
    apply_pruned_weights,
    layer_meta,
    list_pruned_sets,
    load_manifest,
    load_pruned_biases,
    load_pruned_layers,
    pruned_dir,
    set_info,
)
from .resnet import Bottleneck, ResNet, resnet50
from .vgg import VGG, vgg16

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "caffenet": caffenet,
    "alexnet": caffenet,
    "vgg16": vgg16,
    "resnet50": resnet50,
    "googlenet": googlenet,
    "fmnist_vgg": fmnist_vgg,
}

#: Names accepted by :func:`get_model`.
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def get_model(name: str, **kw: Any) -> nn.Module:
    """Build a model by name (case-insensitive, ``-`` treated as ``_``).

    Example:
        >>> get_model("fmnist_vgg", widths=(16, 32, 64, 64)).widths
        (16, 32, 64, 64)

    Raises:
        ValueError: unknown name (the message lists :data:`MODEL_NAMES`).
    """
    key = name.lower().replace("-", "_")
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    return _BUILDERS[key](**kw)


__all__ = [
    "MODEL_NAMES", "get_model",
    "caffenet", "vgg16", "resnet50", "googlenet", "fmnist_vgg",
    "CaffeNet", "VGG", "ResNet", "Bottleneck", "GoogLeNet", "Inception", "FashionVGG",
    "pruned_dir", "list_pruned_sets", "load_manifest", "set_info", "layer_meta",
    "load_pruned_layers", "load_pruned_biases", "apply_pruned_weights",
]
