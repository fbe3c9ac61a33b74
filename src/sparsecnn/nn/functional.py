"""Functional API: ``sparse_conv2d`` and ``sparse_linear`` on a :class:`SparseWeight`.

Example:
    >>> import torch, torch.nn.functional as F
    >>> import sparsecnn
    >>> w = torch.randn(16, 8, 3, 3) * (torch.rand(16, 8, 3, 3) < 0.2)
    >>> x = torch.randn(2, 8, 10, 10)
    >>> y = sparsecnn.sparse_conv2d(x, sparsecnn.SparseWeight.from_dense(w), padding=1)
    >>> torch.allclose(y, F.conv2d(x, w, padding=1), atol=1e-5)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparsecnn.nn.weight import SparseWeight
from sparsecnn.ops.conv import _pair, call_sparse_conv2d, resolve_padding
from sparsecnn.ops.linear import call_sparse_linear

__all__ = ["sparse_conv2d", "sparse_linear"]


def sparse_conv2d(
    x: torch.Tensor,
    weight: SparseWeight,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | str | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    relu: bool = False,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same semantics as ``torch.nn.functional.conv2d`` (plus an optional fused ReLU).

    ``residual`` (the output's shape) is added before the ReLU in the same store:
    ``relu(conv2d(x, w, bias) + residual)``.

    ``padding`` may also be a 4-tuple ``(top, bottom, left, right)``. ``groups`` defaults to the
    weight's own; passing a different value than the weight was packed with is an error.
    Accepts a 3-D unbatched input like conv2d does.
    """
    if not isinstance(weight, SparseWeight):
        raise TypeError(f"sparse_conv2d: weight must be a SparseWeight (use SparseWeight.from_dense), got {type(weight).__name__}")
    if len(weight.shape) != 4:
        raise ValueError(f"sparse_conv2d: weight must be a conv weight (4-D), got shape {weight.shape}")
    if groups != 1 and weight.groups != 1 and groups != weight.groups:
        raise ValueError(f"sparse_conv2d: groups={groups} but the weight was packed with groups={weight.groups}")
    g = groups if groups != 1 else weight.groups
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"sparse_conv2d: input must be a tensor, got {type(x).__name__}")
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
        if isinstance(residual, torch.Tensor):
            residual = residual.unsqueeze(0)
    s, d = _pair(stride, "stride"), _pair(dilation, "dilation")
    if min(s) < 1 or min(d) < 1:
        raise ValueError(f"sparse_conv2d: stride and dilation must be positive, got {stride!r}, {dilation!r}")
    p = resolve_padding(padding, weight.shape[2:], s, d)
    for name, t in (("bias", bias), ("residual", residual)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"sparse_conv2d: {name} must be a tensor or None, got {type(t).__name__}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(f"sparse_conv2d: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    y = call_sparse_conv2d(x, weight.values, weight.col_idx, weight.row_ptr, list(weight.shape), bias, list(s), p, list(d), g, relu,
                           residual)
    return y.squeeze(0) if unbatched else y


def sparse_linear(x: torch.Tensor, weight: SparseWeight, bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """``torch.nn.functional.linear`` with a sparse weight; input (*, in_features)."""
    if not isinstance(weight, SparseWeight):
        raise TypeError(f"sparse_linear: weight must be a SparseWeight, got {type(weight).__name__}")
    if len(weight.shape) != 2:
        raise ValueError(f"sparse_linear: weight must be 2-D (out, in), got shape {weight.shape}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"sparse_linear: input must be a tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"sparse_linear: input last dim must be {weight.shape[1]}, got shape {tuple(x.shape)}")
    lead = x.shape[:-1]
    y = call_sparse_linear(x.reshape(-1, weight.shape[1]), weight.values, weight.col_idx, weight.row_ptr, weight.shape[0], bias, relu)
    return y.reshape(*lead, weight.shape[0])
