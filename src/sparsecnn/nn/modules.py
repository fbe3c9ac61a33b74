"""``SparseConv2d`` and ``SparseLinear``: drop-in inference modules over the sparse kernels.

Their state_dict holds the compressed form (``values``, ``col_idx``, ``row_ptr``, ``bias``) and
round-trips through ``load_state_dict`` even when the number of nonzeros differs.

Example:
    >>> import torch, torch.nn as nn
    >>> import torch.nn.utils.prune as prune
    >>> from sparsecnn import SparseConv2d
    >>> conv = nn.Conv2d(8, 16, 3, padding=1)
    >>> _ = prune.l1_unstructured(conv, "weight", amount=0.9)
    >>> sconv = SparseConv2d.from_dense(conv)
    >>> x = torch.randn(1, 8, 12, 12)
    >>> torch.allclose(sconv(x), conv(x), atol=1e-5)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparsecnn.nn.weight import SparseWeight
from sparsecnn.ops.conv import _pair, call_sparse_conv2d, resolve_padding
from sparsecnn.ops.linear import call_sparse_linear

__all__ = ["SparseConv2d", "SparseLinear", "dense_weight_of"]


def dense_weight_of(module: nn.Module) -> torch.Tensor:
    """The effective weight of a conv/linear, honouring ``torch.nn.utils.prune`` masks."""
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


class _SparseBase(nn.Module):
    def _set_weight(self, weight: SparseWeight, bias: torch.Tensor | None) -> None:
        self.register_buffer("values", weight.values)
        self.register_buffer("col_idx", weight.col_idx)
        self.register_buffer("row_ptr", weight.row_ptr)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).contiguous())

    @property
    def sparse_weight(self) -> SparseWeight:
        """The packed weight (validated)."""
        return SparseWeight(self.values, self.col_idx, self.row_ptr, self.weight_shape, getattr(self, "groups", 1))

    @property
    def density(self) -> float:
        return self.sparse_weight.density

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # The number of nonzeros is data, not architecture: adopt the incoming sizes.
        for name in ("values", "col_idx", "row_ptr", "bias"):
            t = state_dict.get(prefix + name)
            if isinstance(t, torch.Tensor):
                cur = self._buffers.get(name)
                if cur is None or cur.shape != t.shape or cur.dtype != t.dtype:
                    self._buffers[name] = torch.empty_like(t, device=cur.device if cur is not None else t.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        try:
            self.sparse_weight  # validates the loaded CSR arrays
        except (ValueError, TypeError) as e:
            error_msgs.append(f"{prefix}: invalid sparse weight: {e}")


class SparseConv2d(_SparseBase):
    """Conv2d with an element-wise sparse weight, run by the direct sparse convolution.

    ``relu=True`` fuses a following ReLU into the kernel's store; ``forward(x, residual)``
    also adds a residual tensor (the output's shape) before that ReLU, in the same store: a
    ResNet block's ``relu(bn3(conv3(x)) + identity)`` in one pass.

    ``keep_format=True`` (the default) gives the output the memory format ``nn.Conv2d`` would
    (channels-last for a channels-last input). ``False`` makes a channels-last input NCHW first
    and returns NCHW, the kernels' native format: in a channels-last model the first sparse
    layer converts once and the rest run without conversions (a sparsified channels-last ResNet-50
    at batch 16 on a Zen 3: 683 ms with ``True``, 506 with ``False``, 496 on NCHW input;
    ``benchmarks/channels_last.py``). :func:`sparsecnn.sparsify` sets it.

    >>> conv = SparseConv2d.from_dense(nn.Conv2d(3, 4, 3), keep_format=False)
    >>> conv(torch.ones(1, 3, 5, 5).to(memory_format=torch.channels_last)).is_contiguous()
    True
    """

    keep_format = True  # class default: modules saved before the attribute existed load with it

    def __init__(
        self,
        weight: SparseWeight,
        bias: torch.Tensor | None = None,
        stride: int | Sequence[int] = 1,
        padding: int | str | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int | None = None,
        padding_mode: str = "zeros",
        relu: bool = False,
        keep_format: bool = True,
    ) -> None:
        super().__init__()
        if len(weight.shape) != 4:
            raise ValueError(f"SparseConv2d: expected a conv weight, got shape {weight.shape}")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"SparseConv2d: unknown padding_mode {padding_mode!r}")
        self.groups = weight.groups if groups is None else int(groups)
        self.out_channels, cg, kh, kw = weight.shape
        self.in_channels = cg * self.groups
        self.kernel_size = (kh, kw)
        self.weight_shape = tuple(weight.shape)
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        self.padding = padding
        self._pad = resolve_padding(padding, self.kernel_size, self.stride, self.dilation)
        self.padding_mode = padding_mode
        self.relu = bool(relu)
        self.keep_format = bool(keep_format)
        self._set_weight(weight, bias)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, relu: bool = False, keep_format: bool = True) -> SparseConv2d:
        """Packs an ``nn.Conv2d`` (plain, or pruned with ``torch.nn.utils.prune``)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"SparseConv2d.from_dense: expected nn.Conv2d, got {type(conv).__name__}")
        w = SparseWeight.from_dense(dense_weight_of(conv), groups=conv.groups)
        return cls(w, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode, relu,
                   keep_format)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        pad = self._pad
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
            if residual is not None:
                residual = residual.unsqueeze(0)
        if not self.keep_format:
            x = x.contiguous()  # NCHW in, NCHW out (a no-op for NCHW input)
        if self.padding_mode != "zeros" and any(pad):
            x = F.pad(x, (pad[2], pad[3], pad[0], pad[1]), mode=self.padding_mode)
            pad = [0, 0, 0, 0]
        b = self._buffers  # plain dict reads: nn.Module.__getattr__ costs ~1 us a buffer
        y = call_sparse_conv2d(
            x, b["values"], b["col_idx"], b["row_ptr"], list(self.weight_shape), b["bias"],
            list(self.stride), list(pad), list(self.dilation), self.groups, self.relu, residual,
        )
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, relu={self.relu}, "
            f"{'' if self.keep_format else 'keep_format=False, '}nnz={self.values.numel()}"
        )


class SparseLinear(_SparseBase):
    """Linear layer with a sparse weight (sparse matrix times dense matrix)."""

    def __init__(self, weight: SparseWeight, bias: torch.Tensor | None = None, relu: bool = False) -> None:
        super().__init__()
        if len(weight.shape) != 2:
            raise ValueError(f"SparseLinear: expected a 2-D weight, got shape {weight.shape}")
        self.out_features, self.in_features = weight.shape
        self.weight_shape = tuple(weight.shape)
        self.relu = bool(relu)
        self._set_weight(weight, bias)

    @classmethod
    def from_dense(cls, linear: nn.Linear, relu: bool = False) -> SparseLinear:
        """Packs an ``nn.Linear`` (plain, or pruned with ``torch.nn.utils.prune``)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"SparseLinear.from_dense: expected nn.Linear, got {type(linear).__name__}")
        return cls(SparseWeight.from_dense(dense_weight_of(linear)), linear.bias, relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"SparseLinear: input last dim must be {self.in_features}, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        b = self._buffers  # plain dict reads, as in SparseConv2d.forward
        y = call_sparse_linear(x.reshape(-1, self.in_features), b["values"], b["col_idx"], b["row_ptr"],
                               self.out_features, b["bias"], self.relu)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, relu={self.relu}, nnz={self.values.numel()}"
