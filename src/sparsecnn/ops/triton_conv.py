"""Direct sparse convolution on GPUs with Triton (Escort-style).

The weight of a pruned convolution is stored in the package's packed CSR format
(one row per output channel, column ``c*kh*kw + r*kw + s``).  Following Park et
al. (ICLR 2017, section 2.1) the convolution is computed *directly* as a
sparse-matrix times virtual-dense-matrix product: no im2col lowering is done;
instead every nonzero's column index is turned once per call into an input
offset ``(c*H + r*dil_h)*W + s*dil_w`` (plus the group's channel base), and the
kernel gathers the input for a whole tile of output positions with that offset.

Kernel organisation (Escort, Chen et al. 2018):

* One Triton program computes a ``BLOCK_R x BLOCK_P`` output tile: ``BLOCK_R``
  output channels (a *row block*) times ``BLOCK_P`` output positions, the
  positions flattened over ``n*OH*OW`` so that one tile can span several
  images of a batch.
* Rows are sorted by their number of nonzeros (descending) before being cut
  into row blocks, so rows of one block have similar lengths (little masked
  work) and the heaviest blocks are launched first (longest-processing-time
  first scheduling).  Empty rows simply produce ``bias`` (or 0).
* Long rows can be split (``split_k``): every program then handles one chunk
  of the nonzeros and writes a partial sum into a workspace that is reduced
  afterwards; bias and ReLU are applied after the reduction.
* For each nonzero the program loads its weight, offset and ``(r*dil_h,
  s*dil_w)`` pair once and reuses them across the ``BLOCK_P`` positions.
* Padding is handled by masks on the gathered loads: no padded copy of the
  input is ever made.  Bias and ReLU are fused into the store.

The per-nonzero tables and the row ordering depend only on the weight, the
input spatial size and the convolution geometry; they are bundled in a
:class:`SparseConvPlan` that callers may build once with :func:`build_plan`
and pass to every call.  Without an explicit plan a small LRU cache keyed on
the weight tensors' identity and version counters is used.

Padding may be symmetric ``(ph, pw)`` or four-sided ``(top, bottom, left,
right)``; both are handled by masks.

The module imports without Triton; :func:`sparse_conv2d_triton` then raises a
``RuntimeError`` explaining how to install it.  Under ``TRITON_INTERPRET=1``
the kernel runs in Triton's interpreter on CPU tensors (slow, for testing).

Example:
    >>> import torch
    >>> from sparsecnn.ops.triton_conv import pack_dense_weight, sparse_conv2d_triton
    >>> w = torch.randn(8, 4, 3, 3) * (torch.rand(8, 4, 3, 3) < 0.3)
    >>> values, col_idx, row_ptr = pack_dense_weight(w)
    >>> x = torch.randn(2, 4, 16, 16, device="cuda")  # doctest: +SKIP
    >>> y = sparse_conv2d_triton(x, values.cuda(), col_idx.cuda(), row_ptr.cuda(),
    ...                          tuple(w.shape), None, (1, 1), (1, 1), (1, 1), 1, True)  # doctest: +SKIP
    >>> y.shape  # doctest: +SKIP
    torch.Size([2, 8, 16, 16])
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple

import torch

from .weight_cache import WeightCache

logger = logging.getLogger(__name__)

try:  # Triton is an optional dependency (extra "gpu").
    import triton
    import triton.language as tl

    _HAS_TRITON = True
    _TRITON_IMPORT_ERROR: Optional[BaseException] = None
except Exception as exc:  # pragma: no cover - depends on the environment
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    _HAS_TRITON = False
    _TRITON_IMPORT_ERROR = exc

__all__ = [
    "SparseConvPlan",
    "build_plan",
    "clear_plan_cache",
    "is_available",
    "interpreter_enabled",
    "pack_dense_weight",
    "sparse_conv2d_triton",
]

IntPair = Tuple[int, int]
Pad4 = Tuple[int, int, int, int]  # (top, bottom, left, right)

_DEFAULT_BLOCK_R = 4
_MAX_BLOCK_P = 256
_MIN_BLOCK_P = 64
_MAX_SPAN = 1 << 15  # (k-1)*dilation must fit in 15 bits (packed r/s table)


# --------------------------------------------------------------------------- #
# availability helpers
# --------------------------------------------------------------------------- #
def interpreter_enabled() -> bool:
    """Return True when Triton's interpreter is requested (``TRITON_INTERPRET``).

    Example:
        >>> import os; os.environ["TRITON_INTERPRET"] = "1"
        >>> interpreter_enabled()
        True
    """
    if _HAS_TRITON:
        knobs = getattr(triton, "knobs", None)
        if knobs is not None:
            try:
                return bool(knobs.runtime.interpret)
            except Exception:  # pragma: no cover - older/newer knob layout
                pass
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


def is_available() -> bool:
    """True if the Triton kernel can run here.

    That is: Triton is importable and either a CUDA device is present or the
    Triton interpreter is enabled (``TRITON_INTERPRET=1``, CPU tensors).

    Example:
        >>> from sparsecnn.ops.triton_conv import is_available
        >>> is_available() in (True, False)
        True
    """
    if not _HAS_TRITON:
        return False
    return interpreter_enabled() or torch.cuda.is_available()


def _require_triton() -> None:
    if not _HAS_TRITON:
        raise RuntimeError(
            "sparsecnn's GPU sparse convolution needs Triton, which could not be imported "
            f"({_TRITON_IMPORT_ERROR!r}). Install it with `pip install 'sparsecnn[gpu]'` "
            "or `pip install triton` (use --no-deps to keep your torch build)."
        )


# --------------------------------------------------------------------------- #
# packing helper (same format as the CPU kernel)
# --------------------------------------------------------------------------- #
def pack_dense_weight(weight: torch.Tensor, col_dtype: Optional[torch.dtype] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack a dense OIHW weight into ``(values, col_idx, row_ptr)``.

    ``col_idx`` is int16 (holding uint16 bit patterns) when the number of
    columns ``Cg*kh*kw`` is at most 65536, int32 otherwise, unless
    ``col_dtype`` forces one.  Runs on the weight's device.

    Example:
        >>> v, c, r = pack_dense_weight(torch.eye(2).reshape(2, 2, 1, 1))
        >>> v.tolist(), c.tolist(), r.tolist()
        ([1.0, 1.0], [0, 1], [0, 1, 2])
    """
    if weight.dim() != 4:
        raise ValueError(f"expected an OIHW weight, got shape {tuple(weight.shape)}")
    o = weight.shape[0]
    w2 = weight.detach().reshape(o, -1).to(torch.float32)
    ncols = w2.shape[1]
    mask = w2 != 0
    rows, cols = mask.nonzero(as_tuple=True)  # row-major => ascending columns per row
    values = w2[rows, cols].contiguous()
    counts = mask.sum(dim=1, dtype=torch.int64)
    row_ptr = torch.zeros(o + 1, dtype=torch.int64, device=weight.device)
    row_ptr[1:] = torch.cumsum(counts, 0)
    if col_dtype is None:
        col_dtype = torch.int16 if ncols <= 65536 else torch.int32
    if col_dtype == torch.int16:
        if ncols > 65536:
            raise ValueError(f"{ncols} columns do not fit a uint16 column index")
        col = cols.to(torch.int32)
        col = torch.where(col >= 32768, col - 65536, col).to(torch.int16)
    elif col_dtype == torch.int32:
        col = cols.to(torch.int32)
    else:
        raise ValueError(f"col_dtype must be torch.int16 or torch.int32, got {col_dtype}")
    return values, col.contiguous(), row_ptr.to(torch.int32)


# --------------------------------------------------------------------------- #
# plan: per-nonzero offset tables + load-balanced row order
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class SparseConvPlan:
    """Per-weight, per-input-size precomputed tables for the Triton kernel.

    Attributes:
        weight_shape: (O, Cg, kh, kw).
        input_hw: (H, W) the tables were built for.
        stride, dilation, groups: convolution geometry.
        padding: (top, bottom, left, right).
        values: float32 [max(nnz,1)] weights in CSR order.
        offsets: int32/int64 [max(nnz,1)] ``(grp*Cg + c)*H*W + r*dil_h*W + s*dil_w``.
        rs: int32 [max(nnz,1)] ``(r*dil_h) << 16 | (s*dil_w)`` for the padding masks.
        slot_row: int32 [O] output channel of each sorted slot (rows by nnz, descending).
        slot_start: int32/int64 [O] CSR start of each slot's row.
        slot_len: int32 [O] nnz of each slot's row.
        block_r: rows per program.
        block_len: int32 [ceil(O/block_r)] longest row of each row block.
        max_row_nnz: longest row overall.
        nnz: number of nonzeros.

    Example:
        >>> w = torch.randn(8, 4, 3, 3) * (torch.rand(8, 4, 3, 3) < 0.3)
        >>> v, c, r = pack_dense_weight(w)
        >>> plan = build_plan(v, c, r, (8, 4, 3, 3), (16, 16), (1, 1), (1, 1), (1, 1), 1)
        >>> x = torch.randn(2, 4, 16, 16, device="cuda")  # doctest: +SKIP
        >>> y = sparse_conv2d_triton(x, v.cuda(), c.cuda(), r.cuda(), (8, 4, 3, 3), None, (1, 1), (1, 1),
        ...                          (1, 1), 1, False, plan=plan)  # doctest: +SKIP
    """

    weight_shape: Tuple[int, int, int, int]
    input_hw: IntPair
    stride: IntPair
    padding: Pad4
    dilation: IntPair
    groups: int
    values: torch.Tensor
    offsets: torch.Tensor
    rs: torch.Tensor
    slot_row: torch.Tensor
    slot_start: torch.Tensor
    slot_len: torch.Tensor
    block_r: int
    block_len: torch.Tensor
    max_row_nnz: int
    nnz: int

    @property
    def device(self) -> torch.device:
        """Device holding the tables."""
        return self.values.device

    def matches(self, weight_shape: Sequence[int], input_hw: IntPair, stride: IntPair,
                padding: Pad4, dilation: IntPair, groups: int, device: torch.device) -> bool:
        """True if this plan was built for the given geometry and device."""
        return (tuple(self.weight_shape) == tuple(int(v) for v in weight_shape)
                and tuple(self.input_hw) == tuple(input_hw) and tuple(self.stride) == tuple(stride)
                and tuple(self.padding) == tuple(padding) and tuple(self.dilation) == tuple(dilation)
                and self.groups == groups and self.values.device == torch.device(device))


def _pair(v: Any, name: str) -> IntPair:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return t  # type: ignore[return-value]


def _pad4(v: Any) -> Pad4:
    """Padding as (top, bottom, left, right) from an int, (ph, pw) or a 4-sequence."""
    if isinstance(v, int):
        return (v, v, v, v)
    t = tuple(int(a) for a in v)
    if len(t) == 2:
        return (t[0], t[0], t[1], t[1])
    if len(t) == 4:
        return t  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, (ph, pw) or (top, bottom, left, right), got {v!r}")


def _output_hw(h: int, w: int, k: Sequence[int], stride: IntPair, padding: Pad4,
               dilation: IntPair) -> IntPair:
    oh = (h + padding[0] + padding[1] - dilation[0] * (k[0] - 1) - 1) // stride[0] + 1
    ow = (w + padding[2] + padding[3] - dilation[1] * (k[1] - 1) - 1) // stride[1] + 1
    return oh, ow


def _check_geometry(weight_shape: Sequence[int], stride: IntPair, padding: Pad4,
                    dilation: IntPair, groups: int) -> Tuple[int, int, int, int]:
    if len(weight_shape) != 4:
        raise ValueError(f"weight_shape must be (O, Cg, kh, kw), got {tuple(weight_shape)}")
    o, cg, kh, kw = (int(v) for v in weight_shape)
    if min(o, cg, kh, kw) <= 0:
        raise ValueError(f"weight_shape must be positive, got {tuple(weight_shape)}")
    if groups <= 0 or o % groups != 0:
        raise ValueError(f"out_channels={o} must be divisible by groups={groups}")
    if min(stride) <= 0 or min(dilation) <= 0:
        raise ValueError(f"stride {stride} and dilation {dilation} must be positive")
    if min(padding) < 0:
        raise ValueError(f"padding {padding} must be non-negative")
    if (kh - 1) * dilation[0] >= _MAX_SPAN or (kw - 1) * dilation[1] >= _MAX_SPAN:
        raise ValueError("kernel extent (k-1)*dilation must be < 32768")
    return o, cg, kh, kw


def build_plan(values: torch.Tensor, col_idx: torch.Tensor, row_ptr: torch.Tensor,
               weight_shape: Sequence[int], input_hw: Sequence[int], stride: Any, padding: Any,
               dilation: Any, groups: int, device: Optional[torch.device | str] = None,
               block_r: int = _DEFAULT_BLOCK_R) -> SparseConvPlan:
    """Build the offset tables and the load-balanced row order (runs with torch on ``device``).

    The tables depend on the weight, the input's (H, W) and the conv geometry
    but not on the batch size, so a layer can build its plan once per input
    size and reuse it.  This synchronises with the device once (row lengths).

    Example:
        >>> v, c, r = pack_dense_weight(torch.randn(8, 4, 3, 3))
        >>> plan = build_plan(v, c, r, (8, 4, 3, 3), (16, 16), 1, 1, 1, 1)
        >>> plan.nnz
        288
    """
    stride, padding, dilation = _pair(stride, "stride"), _pad4(padding), _pair(dilation, "dilation")
    o, cg, kh, kw = _check_geometry(weight_shape, stride, padding, dilation, groups)
    h, w = (int(v) for v in input_hw)
    dev = torch.device(device) if device is not None else values.device
    if block_r <= 0 or block_r & (block_r - 1):
        raise ValueError(f"block_r must be a power of two, got {block_r}")

    values = values.to(device=dev, dtype=torch.float32).reshape(-1).contiguous()
    col_idx = col_idx.to(dev).reshape(-1)
    row_ptr = row_ptr.to(device=dev, dtype=torch.int64).reshape(-1)
    nnz = values.numel()
    if col_idx.numel() != nnz:
        raise ValueError(f"values ({nnz}) and col_idx ({col_idx.numel()}) differ in length")
    if row_ptr.numel() != o + 1:
        raise ValueError(f"row_ptr must have O+1={o + 1} entries, got {row_ptr.numel()}")
    if col_idx.dtype == torch.int16:
        col = col_idx.to(torch.int32) & 0xFFFF  # stored as uint16 bit patterns
    elif col_idx.dtype in (torch.int32, torch.int64):
        col = col_idx.to(torch.int32)
    else:
        raise TypeError(f"col_idx must be int16 or int32, got {col_idx.dtype}")

    row_len = row_ptr[1:] - row_ptr[:-1]
    # one host sync: validate the CSR structure and get the longest row.
    stats = torch.stack([row_ptr[0], row_ptr[-1], row_len.min(), row_len.max()]).tolist()
    if stats[0] != 0 or stats[1] != nnz or stats[2] < 0:
        raise ValueError(f"inconsistent row_ptr: starts at {stats[0]}, ends at {stats[1]} "
                         f"(nnz={nnz}), min row length {stats[2]}")
    max_row_nnz = int(stats[3])
    if nnz:
        cmin, cmax = torch.aminmax(col)
        if int(cmin) < 0 or int(cmax) >= cg * kh * kw:
            raise ValueError(f"col_idx out of range [0, {cg * kh * kw})")

    khw = kh * kw
    hw = h * w
    big = (cg * groups) * hw >= 2**31 or nnz >= 2**31
    idx_dtype = torch.int64 if big else torch.int32
    c = col // khw
    rem = col - c * khw
    r = rem // kw
    s = rem - r * kw
    rows_of_nz = torch.repeat_interleave(torch.arange(o, device=dev, dtype=torch.int64), row_len)
    grp = rows_of_nz // (o // groups)
    dr = r.to(torch.int64) * dilation[0]
    ds = s.to(torch.int64) * dilation[1]
    offsets = ((grp * cg + c.to(torch.int64)) * hw + dr * w + ds).to(idx_dtype)
    rs = ((dr << 16) | ds).to(torch.int32)

    # Load balance: rows sorted by nnz (descending, stable) and cut into blocks.
    order = torch.argsort(row_len, descending=True, stable=True)
    slot_len = row_len[order]
    slot_start = row_ptr[:-1][order]
    nblk = (o + block_r - 1) // block_r
    padded = torch.zeros(nblk * block_r, dtype=torch.int64, device=dev)
    padded[:o] = slot_len
    block_len = padded.view(nblk, block_r).amax(dim=1)

    def nonempty(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # Triton wants a valid pointer even when nothing is ever read.
        t = t.to(dtype)
        return t.contiguous() if t.numel() else torch.zeros(1, dtype=dtype, device=dev)

    plan = SparseConvPlan(
        weight_shape=(o, cg, kh, kw), input_hw=(h, w), stride=stride, padding=padding,
        dilation=dilation, groups=int(groups),
        values=nonempty(values, torch.float32), offsets=nonempty(offsets, idx_dtype),
        rs=nonempty(rs, torch.int32), slot_row=order.to(torch.int32).contiguous(),
        slot_start=slot_start.to(idx_dtype).contiguous(), slot_len=slot_len.to(torch.int32).contiguous(),
        block_r=block_r, block_len=block_len.to(torch.int32).contiguous(),
        max_row_nnz=max_row_nnz, nnz=nnz,
    )
    logger.debug("built sparse conv plan: shape=%s input=%s nnz=%d max_row=%d blocks=%d",
                 plan.weight_shape, plan.input_hw, nnz, max_row_nnz, nblk)
    return plan


# --------------------------------------------------------------------------- #
# the Triton kernel
# --------------------------------------------------------------------------- #
if _HAS_TRITON:

    def _direct_sparse_conv_kernel(
        x_ptr, out_ptr, bias_ptr,
        val_ptr, off_ptr, rs_ptr,
        slot_row_ptr, slot_start_ptr, slot_len_ptr, block_len_ptr,
        O, C_HW, H, W, OW, OHW, P, OUT_NUMEL,
        stride_h, stride_w, pad_h, pad_w, chunk,
        HAS_BIAS: tl.constexpr, RELU: tl.constexpr, SPLIT: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
    ):
        """One program: BLOCK_R sorted rows x BLOCK_P flattened output positions."""
        pid_p = tl.program_id(0)
        pid_r = tl.program_id(1)
        pid_s = tl.program_id(2)

        # output positions of this tile (flattened over n*OH*OW)
        p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        p_mask = p < P
        n = p // OHW
        q = p - n * OHW
        oh = q // OW
        ow = q - oh * OW
        ih0 = oh * stride_h - pad_h
        iw0 = ow * stride_w - pad_w
        x_base = n.to(tl.int64) * C_HW + (ih0 * W + iw0)

        # rows of this block (already sorted by nnz)
        slots = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        s_mask = slots < O
        rows = tl.load(slot_row_ptr + slots, mask=s_mask, other=0)
        start = tl.load(slot_start_ptr + slots, mask=s_mask, other=0)
        length = tl.load(slot_len_ptr + slots, mask=s_mask, other=0)
        blk_len = tl.load(block_len_ptr + pid_r)
        k_lo = pid_s * chunk
        k_hi = tl.minimum(k_lo + chunk, blk_len)

        acc = tl.zeros((BLOCK_R, BLOCK_P), dtype=tl.float32)
        for k in range(k_lo, k_hi):
            nz = k < length
            idx = start + k
            # one weight + one offset per (row, nonzero), reused over BLOCK_P positions
            wv = tl.load(val_ptr + idx, mask=nz, other=0.0)
            off = tl.load(off_ptr + idx, mask=nz, other=0)
            rs = tl.load(rs_ptr + idx, mask=nz, other=0)
            dr = rs >> 16
            ds = rs & 0xFFFF
            ih = ih0[None, :] + dr[:, None]
            iw = iw0[None, :] + ds[:, None]
            m = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W) & p_mask[None, :] & nz[:, None]
            xv = tl.load(x_ptr + (x_base[None, :] + off[:, None]), mask=m, other=0.0)
            acc += wv[:, None] * xv

        out_off = (n.to(tl.int64) * O * OHW + q)[None, :] + rows.to(tl.int64)[:, None] * OHW
        o_mask = s_mask[:, None] & p_mask[None, :]
        if SPLIT:
            out_off += pid_s.to(tl.int64) * OUT_NUMEL
        else:
            if HAS_BIAS:
                b = tl.load(bias_ptr + rows, mask=s_mask, other=0.0)
                acc += b[:, None]
            if RELU:
                acc = tl.maximum(acc, 0.0)
        tl.store(out_ptr + out_off, acc, mask=o_mask)

else:  # pragma: no cover
    _direct_sparse_conv_kernel = None  # type: ignore[assignment]

_JITTED: dict = {}

# --------------------------------------------------------------------------- #
# plan cache (for callers that do not keep their own plan, e.g. the torch op)
# --------------------------------------------------------------------------- #
_PLAN_CACHE = WeightCache(size=64)


def clear_plan_cache() -> None:
    """Drop every cached :class:`SparseConvPlan`.

    Example:
        >>> clear_plan_cache()
    """
    _PLAN_CACHE.clear()


def _cached_plan(values: torch.Tensor, col_idx: torch.Tensor, row_ptr: torch.Tensor,
                 geometry: tuple, device: torch.device, block_r: int) -> SparseConvPlan:
    """Plan for these exact tensor objects; rebuilt if any of them was modified in place
    (:class:`~sparsecnn.ops.weight_cache.WeightCache`)."""
    weight_shape, hw, stride, padding, dilation, groups = geometry
    key = ("plan", tuple(weight_shape), hw, stride, padding, dilation, groups, str(device), block_r)
    return _PLAN_CACHE.get((values, col_idx, row_ptr), key, lambda: build_plan(
        values, col_idx, row_ptr, weight_shape, hw, stride, padding, dilation, groups, device=device,
        block_r=block_r))


def _kernel() -> Callable:
    """The jitted kernel, compiled or interpreted according to TRITON_INTERPRET *now*.

    Decoration is deferred so that setting ``TRITON_INTERPRET`` after this module
    was imported (e.g. by a test module) still takes effect.
    """
    _require_triton()
    interp = interpreter_enabled()
    fn = _JITTED.get(interp)
    if fn is None:
        fn = triton.jit(_direct_sparse_conv_kernel)
        _JITTED[interp] = fn
    return fn


def _next_pow2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _default_block_p(npos: int, n_rblocks: int, device: torch.device) -> int:
    """The widest position block (256 down to 64) whose grid still gives every SM two programs.

    On an H100 (benchmarks/gpu_tune.py, CaffeNet conv2-5 and a ResNet-50 3x3 layer) 256 was the
    fastest of 64/128/256 at batch 32 (5-13 % over 128), and at batch 1, where a row block's few
    positions make few programs, the narrower blocks that fill the SMs were.
    """
    bp, target = _MAX_BLOCK_P, 2 * _sm_count(device)
    while bp > _MIN_BLOCK_P and triton.cdiv(npos, bp) * n_rblocks < target:
        bp //= 2
    return max(16, min(bp, _next_pow2(npos)))


def _auto_split(plan: SparseConvPlan, n_tiles: int, device: torch.device) -> int:
    """Split long rows only when the grid is too small to fill the GPU."""
    if device.type != "cuda" or plan.max_row_nnz < 512:
        return 1
    target = 2 * _sm_count(device)
    if n_tiles >= target:
        return 1
    return max(1, min((target + n_tiles - 1) // n_tiles, plan.max_row_nnz // 128, 16))


# --------------------------------------------------------------------------- #
# public entry point
# --------------------------------------------------------------------------- #
def sparse_conv2d_triton(
    x: torch.Tensor,
    values: torch.Tensor,
    col_idx: torch.Tensor,
    row_ptr: torch.Tensor,
    weight_shape: Sequence[int],
    bias: Optional[torch.Tensor],
    stride: IntPair,
    padding: Sequence[int],
    dilation: IntPair,
    groups: int,
    relu: bool,
    *,
    plan: Optional[SparseConvPlan] = None,
    block_r: Optional[int] = None,
    block_p: Optional[int] = None,
    split_k: Optional[int] = None,
    num_warps: int = 4,
    cache_plan: bool = True,
) -> torch.Tensor:
    """Direct sparse 2-D convolution from the packed CSR weight, on GPU via Triton.

    Same result as ``F.conv2d(x, dense_weight, bias, stride, padding, dilation,
    groups)`` followed by ``relu`` when ``relu`` is true.

    Args:
        x: (N, C, H, W) float32 on a CUDA device (CPU under ``TRITON_INTERPRET=1``);
            non-contiguous / channels-last input is made NCHW-contiguous.
        values, col_idx, row_ptr: packed weight (see module docstring).
        weight_shape: (O, Cg, kh, kw), ``Cg = C // groups``.
        bias: optional float32 [O].
        stride, dilation: pairs of ints.
        padding: non-negative ``(ph, pw)`` (symmetric, as ``F.conv2d``) or
            ``(top, bottom, left, right)``; handled by masks either way.
        groups: number of groups (``groups == C == O`` is depthwise).
        relu: apply ReLU in the epilogue.
        plan: tables from :func:`build_plan`.  If None, a plan is built (one host
            sync) and, with ``cache_plan``, kept in a small LRU cache keyed on the
            identity and version counters of ``values/col_idx/row_ptr`` and the
            geometry, so repeated calls with the same weight tensors reuse it.
        block_r, block_p: rows / positions per program (powers of two).
        split_k: number of chunks each row block's nonzeros are split into
            (None = heuristic: only when the grid is too small for the GPU).
        num_warps: Triton launch parameter.

    Returns:
        (N, O, OH, OW) float32 contiguous tensor.

    Example:
        >>> w = torch.randn(8, 4, 3, 3) * (torch.rand(8, 4, 3, 3) < 0.3)
        >>> v, c, r = (t.cuda() for t in pack_dense_weight(w))  # doctest: +SKIP
        >>> x, b = torch.randn(2, 4, 16, 16, device="cuda"), torch.randn(8, device="cuda")  # doctest: +SKIP
        >>> sparse_conv2d_triton(x, v, c, r, (8, 4, 3, 3), b, (1, 1), (1, 1), (1, 1), 1, True).shape  # doctest: +SKIP
        torch.Size([2, 8, 16, 16])
    """
    _require_triton()
    stride, padding, dilation = _pair(stride, "stride"), _pad4(padding), _pair(dilation, "dilation")
    o, cg, kh, kw = _check_geometry(weight_shape, stride, padding, dilation, groups)
    if x.dim() != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype != torch.float32:
        raise TypeError(f"x must be float32, got {x.dtype}")
    nb, c, h, w = x.shape
    if c != cg * groups:
        raise ValueError(f"input has {c} channels but weight expects {cg}*{groups}={cg * groups}")
    if x.device.type != "cuda" and not interpreter_enabled():
        raise RuntimeError(
            f"sparse_conv2d_triton needs a CUDA tensor (got {x.device}); "
            "set TRITON_INTERPRET=1 to run Triton's interpreter on CPU tensors")
    oh, ow = _output_hw(h, w, (kh, kw), stride, padding, dilation)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"output size would be {oh}x{ow} for input {h}x{w}, kernel {kh}x{kw}")
    if bias is not None:
        if bias.numel() != o:
            raise ValueError(f"bias must have {o} elements, got {bias.numel()}")
        bias = bias.to(device=x.device, dtype=torch.float32).reshape(-1).contiguous()

    if plan is None:
        geometry = ((o, cg, kh, kw), (h, w), stride, padding, dilation, groups)
        if cache_plan:
            plan = _cached_plan(values, col_idx, row_ptr, geometry, x.device, block_r or _DEFAULT_BLOCK_R)
        else:
            plan = build_plan(values, col_idx, row_ptr, *geometry, device=x.device,
                              block_r=block_r or _DEFAULT_BLOCK_R)
    elif not plan.matches((o, cg, kh, kw), (h, w), stride, padding, dilation, groups, x.device):
        raise ValueError("plan was built for a different geometry, input size or device")
    if block_r is not None and block_r != plan.block_r:
        raise ValueError(f"block_r={block_r} differs from the plan's block_r={plan.block_r}")
    br = plan.block_r

    x = x.contiguous()  # NCHW (also converts channels-last)
    ohw = oh * ow
    npos = nb * ohw
    if npos * max(o, 1) == 0:
        return torch.zeros((nb, o, oh, ow), dtype=torch.float32, device=x.device)
    if npos >= 2**31:
        raise ValueError("N*OH*OW must be < 2**31")

    n_rblocks = plan.block_len.numel()
    bp = block_p or _default_block_p(npos, n_rblocks, x.device)
    if bp & (bp - 1):
        raise ValueError(f"block_p must be a power of two, got {bp}")
    n_ptiles = triton.cdiv(npos, bp)
    splits = split_k if split_k is not None else _auto_split(plan, n_ptiles * n_rblocks, x.device)
    splits = max(1, min(int(splits), max(plan.max_row_nnz, 1)))
    chunk = max(1, triton.cdiv(max(plan.max_row_nnz, 1), splits))
    splits = triton.cdiv(max(plan.max_row_nnz, 1), chunk)

    out_numel = nb * o * ohw
    if splits == 1:
        out = torch.empty((nb, o, oh, ow), dtype=torch.float32, device=x.device)
        target = out
    else:
        target = torch.zeros((splits, nb, o, oh, ow), dtype=torch.float32, device=x.device)
    grid = (n_ptiles, n_rblocks, splits)
    _kernel()[grid](
        x, target, bias if bias is not None else plan.values,
        plan.values, plan.offsets, plan.rs,
        plan.slot_row, plan.slot_start, plan.slot_len, plan.block_len,
        o, c * h * w, h, w, ow, ohw, npos, out_numel,
        stride[0], stride[1], padding[0], padding[2], chunk,
        HAS_BIAS=bias is not None, RELU=bool(relu), SPLIT=splits > 1,
        BLOCK_R=br, BLOCK_P=bp, num_warps=num_warps,
    )
    if splits == 1:
        return out
    out = target.sum(dim=0)
    if bias is not None:
        out += bias.view(1, o, 1, 1)
    if relu:
        out.relu_()
    return out
