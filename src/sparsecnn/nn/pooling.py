"""Drop-in ``MaxPool2d`` and ``LocalResponseNorm`` that run the compiled core on CPU float32.

:func:`sparsecnn.sparsify` swaps them in for torch's: with the convolutions sparse, torch's
NCHW max pooling (it also computes argmax indices) and its multi-pass LRN became a third of
CaffeNet's time and a sixth of ResNet-50's at batch 16. Same results as torch; anything the
kernels do not cover (dilation, ``return_indices``, other dtypes or devices) runs torch's
implementation.

Example:
    >>> import torch
    >>> from sparsecnn.nn.pooling import MaxPool2d
    >>> x = torch.randn(1, 4, 11, 11)
    >>> torch.equal(MaxPool2d(3, 2, ceil_mode=True)(x), torch.nn.MaxPool2d(3, 2, ceil_mode=True)(x))
    True
"""

from __future__ import annotations

import torch
import torch.nn as nn

from sparsecnn.ops.pool import call_local_response_norm, call_max_pool2d

__all__ = ["LocalResponseNorm", "MaxPool2d"]


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose forward uses the compiled kernel when it applies."""

    @classmethod
    def from_torch(cls, m: nn.MaxPool2d) -> MaxPool2d:
        """A copy of ``m`` (same parameters)."""
        return cls(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices, m.ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.return_indices or _pair(self.dilation) != [1, 1] or not isinstance(x, torch.Tensor) or x.dim() != 4:
            return super().forward(x)
        return call_max_pool2d(x, _pair(self.kernel_size), _pair(self.stride), _pair(self.padding), bool(self.ceil_mode))


class LocalResponseNorm(nn.LocalResponseNorm):
    """``nn.LocalResponseNorm`` whose forward uses the compiled kernel on 4-D input."""

    @classmethod
    def from_torch(cls, m: nn.LocalResponseNorm) -> LocalResponseNorm:
        """A copy of ``m`` (same parameters)."""
        return cls(m.size, m.alpha, m.beta, m.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            return super().forward(x)
        return call_local_response_norm(x, self.size, self.alpha, self.beta, self.k)
