"""Packing a pruned weight into the kernel's format.

A :class:`SparseWeight` is a CSR matrix with one row per output channel. Column indices are the
flattened ``(c, r, s)`` position inside the row's group (``c*kh*kw + r*kw + s``), stored in
16 bits whenever the layer has at most 65536 columns (so the storage overhead per nonzero is
1.5x the value, not the paper's 2x). The kernels turn columns into input offsets per call
(the "virtual dense matrix"); the packed form itself does not depend on the input size.

Example:
    >>> import torch
    >>> from sparsecnn import SparseWeight
    >>> w = torch.zeros(8, 4, 3, 3); w[0, 1, 2, 2] = 1.5; w[7, 0, 0, 0] = -2.0
    >>> sw = SparseWeight.from_dense(w)
    >>> sw.nnz, sw.shape, sw.col_idx.dtype
    (2, (8, 4, 3, 3), torch.int16)
    >>> torch.equal(sw.to_dense(), w)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparsecnn.ops.conv import csr_columns, csr_to_dense

__all__ = ["SparseWeight"]

_MAX16 = 1 << 16


class SparseWeight:
    """A pruned conv (OIHW) or linear (out x in) weight in CSR form.

    Attributes:
        values: float32 nonzeros, row by row, columns ascending.
        col_idx: int16 (read as unsigned) or int32 column indices.
        row_ptr: int32, ``rows + 1`` entries.
    """

    __slots__ = ("values", "col_idx", "row_ptr", "_shape", "_groups")

    def __init__(
        self,
        values: torch.Tensor,
        col_idx: torch.Tensor,
        row_ptr: torch.Tensor,
        shape: Sequence[int],
        groups: int = 1,
    ) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (2, 4) or any(s < 1 for s in shape):
            raise ValueError(f"SparseWeight: shape must be (O, C/g, kh, kw) or (out, in) with positive sizes, got {shape}")
        if groups < 1 or (len(shape) == 4 and shape[0] % groups):
            raise ValueError(f"SparseWeight: out channels {shape[0]} not divisible by groups={groups}")
        if values.dtype != torch.float32:
            raise TypeError(f"SparseWeight: values must be float32, got {values.dtype}")
        if col_idx.dtype not in (torch.int16, torch.int32):
            raise TypeError(f"SparseWeight: col_idx must be int16 or int32, got {col_idx.dtype}")
        if row_ptr.dtype != torch.int32:
            raise TypeError(f"SparseWeight: row_ptr must be int32, got {row_ptr.dtype}")
        if values.dim() != 1 or col_idx.shape != values.shape:
            raise ValueError("SparseWeight: values and col_idx must be 1-D of equal length")
        if row_ptr.shape != (shape[0] + 1,):
            raise ValueError(f"SparseWeight: row_ptr must have {shape[0] + 1} entries, got {tuple(row_ptr.shape)}")
        cols = self._cols(shape)
        if col_idx.dtype == torch.int16 and cols > _MAX16:
            raise ValueError(f"SparseWeight: {cols} columns do not fit 16-bit indices")
        rp = row_ptr.cpu()
        nnz = values.numel()
        if rp[0].item() != 0 or rp[-1].item() != nnz or bool((rp[1:] < rp[:-1]).any()):
            raise ValueError("SparseWeight: row_ptr must start at 0, be non-decreasing and end at nnz")
        if nnz:
            c = csr_columns(col_idx.cpu())
            if int(c.min()) < 0 or int(c.max()) >= cols:
                raise ValueError(f"SparseWeight: column indices out of range [0, {cols})")
            # Columns must ascend strictly within each row (the kernels walk rows as runs).
            step = c[1:] - c[:-1]
            row_start = torch.zeros(nnz, dtype=torch.bool)
            starts = rp[:-1][rp[:-1] < nnz].to(torch.int64)
            row_start[starts] = True
            if bool(((step <= 0) & ~row_start[1:]).any()):
                raise ValueError("SparseWeight: column indices must be strictly increasing within each row")
        self.values = values.contiguous()
        self.col_idx = col_idx.contiguous()
        self.row_ptr = row_ptr.contiguous()
        self._shape = shape
        self._groups = int(groups)

    @staticmethod
    def _cols(shape: Sequence[int]) -> int:
        n = 1
        for s in shape[1:]:
            n *= int(s)
        return n

    @classmethod
    def from_dense(cls, weight: torch.Tensor, groups: int = 1) -> SparseWeight:
        """Packs a dense weight; its exact zeros are the pruned entries (NaN counts as nonzero).

        Accepts float32/float64/float16/bfloat16 OIHW conv weights or 2-D linear weights;
        values are stored as float32.
        """
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"SparseWeight.from_dense: expected a tensor, got {type(weight).__name__}")
        if not weight.is_floating_point():
            raise TypeError(f"SparseWeight.from_dense: weight must be floating point, got {weight.dtype}")
        if weight.dim() not in (2, 4):
            raise ValueError(f"SparseWeight.from_dense: weight must be 4-D (O, C/g, kh, kw) or 2-D, got {tuple(weight.shape)}")
        w = weight.detach().to(torch.float32)
        rows = w.shape[0]
        w2 = w.reshape(rows, -1)
        cols = w2.shape[1]
        if w.numel() >= 2**31:
            raise ValueError("SparseWeight.from_dense: weights with 2^31 or more entries are not supported")
        nz = w2 != 0
        idx = nz.nonzero()  # row-major, so columns ascend within each row
        counts = nz.sum(1, dtype=torch.int64)
        row_ptr = torch.zeros(rows + 1, dtype=torch.int64, device=w.device)
        row_ptr[1:] = counts.cumsum(0)
        col = idx[:, 1]
        if cols <= _MAX16:
            col = torch.where(col >= 32768, col - _MAX16, col).to(torch.int16)
        else:
            col = col.to(torch.int32)
        return cls(w2[nz], col, row_ptr.to(torch.int32), tuple(w.shape), groups)

    # --- properties ---
    @property
    def shape(self) -> tuple[int, ...]:
        """Dense shape: (O, C/groups, kh, kw) for conv, (out, in) for linear."""
        return self._shape

    @property
    def groups(self) -> int:
        return self._groups

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def density(self) -> float:
        """Fraction of nonzeros."""
        total = 1
        for s in self._shape:
            total *= s
        return self.nnz / total

    @property
    def nbytes(self) -> int:
        """Bytes of the packed arrays (values + column indices + row pointers)."""
        return sum(t.numel() * t.element_size() for t in (self.values, self.col_idx, self.row_ptr))

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to_dense(self) -> torch.Tensor:
        """The exact dense weight (float32)."""
        return csr_to_dense(self.values, self.col_idx, self.row_ptr, self._shape)

    def to(self, device: str | torch.device) -> SparseWeight:
        """A copy on another device (e.g. ``"cuda"``); the packed form moves as is."""
        return SparseWeight(self.values.to(device), self.col_idx.to(device), self.row_ptr.to(device), self._shape, self._groups)

    def cuda(self) -> SparseWeight:
        return self.to("cuda")

    def cpu(self) -> SparseWeight:
        return self.to("cpu")

    def __repr__(self) -> str:
        return f"SparseWeight(shape={self._shape}, groups={self._groups}, nnz={self.nnz}, density={self.density:.4f})"
