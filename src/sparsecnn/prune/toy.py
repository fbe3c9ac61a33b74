"""A tiny CNN and a learnable synthetic image dataset for smoke runs and tests.

Used by ``sparsecnn prune --model tiny_cnn --dataset synthetic`` so the whole
pruning pipeline (incl. torchrun) can be exercised in seconds, without
downloading Fashion-MNIST.

Example:
    >>> train_ds, test_ds = synthetic_datasets(n_train=64, n_test=16)
    >>> x, y = train_ds[0]
    >>> tuple(x.shape), TinyCNN()(x[None]).shape[-1]
    ((1, 28, 28), 10)
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

__all__ = ["TinyCNN", "synthetic_datasets"]


class TinyCNN(nn.Module):
    """conv(1->8) - conv(8->16) - pool - conv(16->32) - pool - fc(32*7*7 -> classes)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 7 * 7, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _make(n: int, num_classes: int, size: int, gen: torch.Generator) -> TensorDataset:
    y = torch.randint(0, num_classes, (n,), generator=gen)
    x = torch.randn(n, 1, size, size, generator=gen) * 0.5
    # each class lights up its own horizontal band: easy, but needs the convs
    band = max(size // num_classes, 1)
    for c in range(num_classes):
        r0 = (c * band) % size
        x[y == c, :, r0:r0 + band, :] += 1.5
    return TensorDataset(x, y)


def synthetic_datasets(n_train: int = 512, n_test: int = 128, num_classes: int = 10,
                       size: int = 28, seed: int = 1234) -> tuple[TensorDataset, TensorDataset]:
    """Deterministic (train, test) datasets of 1 x size x size images."""
    gen = torch.Generator().manual_seed(seed)
    return _make(n_train, num_classes, size, gen), _make(n_test, num_classes, size, gen)
