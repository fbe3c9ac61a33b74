"""``sparsecnn::sparse_conv2d``: the direct sparse convolution as a torch custom op.

The op takes the CSR arrays of the weight (see :class:`sparsecnn.nn.SparseWeight`), so
``torch.compile`` / ``torch.export`` trace it as one opaque node with a fake (meta)
implementation for shapes. CPU tensors run the compiled core, CUDA tensors the Triton kernel.
It is differentiable in the input, the nonzero values and the bias (the backward runs dense
torch ops, it is meant for fine-tuning, not for speed).

Example:
    >>> import torch
    >>> from sparsecnn.ops import sparse_conv2d_op
    >>> w = torch.tensor([[[[0.0, 2.0], [0.0, 0.0]]]])  # one nonzero at (r=0, s=1)
    >>> vals = torch.tensor([2.0]); col = torch.tensor([1], dtype=torch.int16)
    >>> rp = torch.tensor([0, 1], dtype=torch.int32)
    >>> x = torch.arange(9.0).reshape(1, 1, 3, 3)
    >>> sparse_conv2d_op(x, vals, col, rp, [1, 1, 2, 2], None, [1, 1], [0, 0, 0, 0], [1, 1], 1, False)
    tensor([[[[ 2.,  4.],
              [ 8., 10.]]]])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.dlpack import to_dlpack as _to_dlpack

from sparsecnn import _core
from sparsecnn.ops.memory_format import empty_in_format_of, in_format_of, memory_format_of

__all__ = [
    "call_sparse_conv2d",
    "conv_output_size",
    "csr_coords",
    "csr_to_dense",
    "eager_cpu_call",
    "resolve_padding",
    "sparse_conv2d_op",
]


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(i) for i in v)
    if len(t) == 1:
        return (t[0], t[0])
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v!r}")
    return t  # type: ignore[return-value]


def resolve_padding(
    padding: int | str | Sequence[int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> list[int]:
    """Turns conv2d's padding (int, pair, 4-tuple, ``'same'``, ``'valid'``) into
    ``[top, bottom, left, right]``.

    ``'same'`` follows torch: total padding ``d*(k-1)``, the odd pixel going bottom/right; it
    needs stride 1.

    >>> resolve_padding("same", (4, 3), (1, 1), (1, 1))
    [1, 2, 1, 1]
    """
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0, 0, 0]
        if padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            out = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]
            return out
        raise ValueError(f"padding must be 'same', 'valid', an int or a tuple, got {padding!r}")
    if isinstance(padding, int):
        p = [padding] * 4
    else:
        t = [int(i) for i in padding]
        if len(t) == 1:
            p = t * 4
        elif len(t) == 2:
            p = [t[0], t[0], t[1], t[1]]
        elif len(t) == 4:
            p = t
        else:
            raise ValueError(f"padding must have 1, 2 or 4 values, got {padding!r}")
    if any(v < 0 for v in p):
        raise ValueError(f"negative padding is not allowed, got {padding!r}")
    return p


def conv_output_size(
    h: int, w: int, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]
) -> tuple[int, int]:
    """Output (OH, OW) for padding ``[top, bottom, left, right]``; works on SymInts too."""
    oh = (h + padding[0] + padding[1] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w + padding[2] + padding[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return oh, ow


def csr_columns(col_idx: torch.Tensor) -> torch.Tensor:
    """Column indices as int64; int16 ones hold uint16 bit patterns (layers of up to 65536 columns).

    >>> csr_columns(torch.tensor([-1, 2], dtype=torch.int16)).tolist()
    [65535, 2]
    """
    cols = col_idx.to(torch.int64)
    return cols & 0xFFFF if col_idx.dtype == torch.int16 else cols


def csr_coords(col_idx: torch.Tensor, row_ptr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) int64 index of every nonzero."""
    counts = (row_ptr[1:] - row_ptr[:-1]).to(torch.int64)
    rows = torch.repeat_interleave(torch.arange(row_ptr.numel() - 1, device=row_ptr.device), counts)
    return rows, csr_columns(col_idx)


def csr_to_dense(values: torch.Tensor, col_idx: torch.Tensor, row_ptr: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Rebuilds the dense weight (any shape whose first dim is the row count) from CSR."""
    rows = int(shape[0])
    cols = 1
    for s in shape[1:]:
        cols *= int(s)
    r, c = csr_coords(col_idx, row_ptr)
    dense = torch.zeros(rows * cols, dtype=values.dtype, device=values.device)
    dense.index_put_((r * cols + c,), values, accumulate=True)
    return dense.reshape(*[int(s) for s in shape])


def _bare(t: torch.Tensor) -> torch.Tensor:
    """``t`` without autograd history, for DLPack (which refuses tensors that require grad);
    ``detach`` only where needed: it costs ~0.7 us a call.

    >>> _bare(torch.ones(1, requires_grad=True)).requires_grad
    False
    """
    return t.detach() if t.requires_grad else t


def _dl(t: torch.Tensor | None) -> object:
    """``t`` as a DLPack capsule for the core (None stays None).

    nanobind imports a capsule directly; given the tensor it goes through ``Tensor.__dlpack__``
    and ``__dlpack_device__`` (Python methods, ~1.5 us each), which cost ~8 us of a batch-1 conv
    call's fixed ~11 us. The core validates the capsule's dtype, shape and strides as before.

    >>> type(_dl(torch.ones(2))).__name__
    'PyCapsule'
    """
    return None if t is None else _to_dlpack(t)


def _alloc(shape: tuple[int, ...], what: str,
           memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    try:
        return torch.empty(shape, dtype=torch.float32, memory_format=memory_format)
    except RuntimeError as e:  # torch reports allocation failure as RuntimeError
        raise MemoryError(f"{what}: cannot allocate the output of shape {tuple(shape)}: {e}") from None


def _check(x: torch.Tensor, values: torch.Tensor, weight_shape: Sequence[int], groups: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"sparse_conv2d: input must be a tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"sparse_conv2d: input must be float32, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"sparse_conv2d: input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if not (x.is_cpu and values.is_cpu) and x.device != values.device:  # (is_cpu is 4x cheaper than .device)
        raise ValueError(f"sparse_conv2d: input is on {x.device} but the weight is on {values.device}")
    if len(weight_shape) != 4:
        raise ValueError(f"sparse_conv2d: weight shape must be (O, C/groups, kh, kw), got {list(weight_shape)}")
    if groups < 1 or x.shape[1] != weight_shape[1] * groups:
        raise ValueError(
            f"sparse_conv2d: weight {list(weight_shape)} with groups={groups} expects "
            f"{weight_shape[1] * groups} input channels, got input of shape {tuple(x.shape)}"
        )


def _sparse_conv2d_cpu(
    x: torch.Tensor,
    values: torch.Tensor,
    col_idx: torch.Tensor,
    row_ptr: torch.Tensor,
    weight_shape: list[int],
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    relu: bool,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    _check(x, values, weight_shape, groups)
    o, cg, kh, kw = map(int, weight_shape)
    n, _, h, w = x.shape
    oh, ow = _core.output_size(h, w, kh, kw, stride, padding, dilation)
    _check_residual(residual, x, (n, o, oh, ow))
    # The output takes torch's memory format for x; the core writes channels-last itself
    # (and reads a residual in the output's format in place).
    fmt = memory_format_of(x)
    out = _alloc((n, o, oh, ow), "sparse_conv2d", fmt)
    # Even an empty batch goes to the core: it validates the weight and bias first.
    _core.conv2d(
        _dl(_bare(x)), _dl(_bare(values)), _dl(col_idx), _dl(row_ptr),
        None if bias is None else _dl(_bare(bias).contiguous()),
        _dl(out), o, cg, kh, kw, groups, stride, padding, dilation, bool(relu),
        torch.get_num_threads(),
        None if residual is None else _dl(_bare(residual).contiguous(memory_format=fmt)),
    )
    return out


def _check_residual(residual: torch.Tensor | None, x: torch.Tensor, out_shape: Sequence) -> None:
    if residual is None:
        return
    if not isinstance(residual, torch.Tensor):
        raise TypeError(f"sparse_conv2d: residual must be a tensor, got {type(residual).__name__}")
    if residual.dtype != torch.float32:
        raise TypeError(f"sparse_conv2d: residual must be float32, got {residual.dtype}")
    if residual.device != x.device:
        raise ValueError(f"sparse_conv2d: residual is on {residual.device} but the input is on {x.device}")
    if tuple(residual.shape) != tuple(out_shape):
        raise ValueError(f"sparse_conv2d: residual must have the output's shape {tuple(out_shape)}, "
                         f"got {tuple(residual.shape)}")


@torch.library.custom_op("sparsecnn::sparse_conv2d", mutates_args=(), device_types="cpu")
def sparse_conv2d_op(
    x: torch.Tensor,
    values: torch.Tensor,
    col_idx: torch.Tensor,
    row_ptr: torch.Tensor,
    weight_shape: list[int],
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    relu: bool,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Direct sparse conv2d, ``relu(conv2d(x, W) + bias + residual)``.

    ``padding`` is ``[top, bottom, left, right]``; ``bias``, ``residual`` (same shape as the
    output: a fused residual connection) and the ReLU are optional.
    """
    return _sparse_conv2d_cpu(x, values, col_idx, row_ptr, weight_shape, bias, stride, padding, dilation, groups,
                              relu, residual)


def eager_cpu_call(*tensors: torch.Tensor | None) -> bool:
    """Whether a call on these tensors may skip torch's dispatcher and run the CPU kernel directly.

    True for plain CPU tensors in eager mode with nothing to record: no autograd (grad mode off
    or no input requiring grad), no tracing, compiling, export or active torch function /
    dispatch mode. The custom op's dispatch costs 15-25 us a call, a tenth of a sparse layer at
    batch 1; everything that needs the op (autograd, ``torch.compile``, ``torch.export``, fake
    tensors, CUDA) still goes through it.

    >>> eager_cpu_call(torch.ones(2), None)
    True
    >>> eager_cpu_call(torch.ones(2, requires_grad=True))
    False
    """
    if torch.compiler.is_compiling() or torch._C._is_tracing():
        return False
    if torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (type(t) not in _PLAIN or not t.is_cpu or (grad and t.requires_grad)):
            return False
    return True


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def call_sparse_conv2d(
    x: torch.Tensor,
    values: torch.Tensor,
    col_idx: torch.Tensor,
    row_ptr: torch.Tensor,
    weight_shape: list[int],
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    relu: bool,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`sparse_conv2d_op`, run directly when :func:`eager_cpu_call` allows it (same result)."""
    if eager_cpu_call(x, values, bias, residual):
        return _sparse_conv2d_cpu(x, values, col_idx, row_ptr, weight_shape, bias, stride, padding, dilation, groups,
                                  relu, residual)
    return sparse_conv2d_op(x, values, col_idx, row_ptr, weight_shape, bias, stride, padding, dilation, groups, relu,
                            residual)


@sparse_conv2d_op.register_kernel("cuda")
def _sparse_conv2d_cuda(x, values, col_idx, row_ptr, weight_shape, bias, stride, padding, dilation, groups, relu,
                        residual=None):
    _check(x, values, weight_shape, groups)
    from sparsecnn.ops import triton_conv

    xin = x
    if padding[0] != padding[1] or padding[2] != padding[3]:
        # The Triton kernel takes symmetric padding; pad the extra rows/columns explicitly.
        x = F.pad(x, (padding[2] - min(padding[2], padding[3]), padding[3] - min(padding[2], padding[3]),
                      padding[0] - min(padding[0], padding[1]), padding[1] - min(padding[0], padding[1])))
        sym = (min(padding[0], padding[1]), min(padding[2], padding[3]))
    else:
        sym = (padding[0], padding[2])
    # The Triton kernel has no residual input: add it after, then the ReLU.
    y = triton_conv.sparse_conv2d_triton(
        x, values, col_idx, row_ptr, list(weight_shape), bias, tuple(stride), sym, tuple(dilation), groups,
        relu and residual is None,
    )
    if residual is not None:
        _check_residual(residual, xin, y.shape)
        y = y.add_(residual)
        if relu:
            y = y.relu_()
    return in_format_of(xin, y)


@sparse_conv2d_op.register_fake
def _sparse_conv2d_fake(x, values, col_idx, row_ptr, weight_shape, bias, stride, padding, dilation, groups, relu,
                        residual=None):
    _check(x, values, weight_shape, groups)
    oh, ow = conv_output_size(x.shape[2], x.shape[3], weight_shape[2:], stride, padding, dilation)
    _check_residual(residual, x, (x.shape[0], weight_shape[0], oh, ow))
    return empty_in_format_of(x, (x.shape[0], weight_shape[0], oh, ow))


def _setup_context(ctx, inputs, output):
    x, values, col_idx, row_ptr, weight_shape, bias, stride, padding, dilation, groups, relu, residual = inputs
    ctx.save_for_backward(x, values, col_idx, row_ptr, output if relu else None)
    ctx.params = (list(weight_shape), list(stride), list(padding), list(dilation), groups, relu, bias is not None,
                  residual is not None)


def _backward(ctx, grad):
    x, values, col_idx, row_ptr, out = ctx.saved_tensors
    weight_shape, stride, padding, dilation, groups, relu, has_bias, has_residual = ctx.params
    if relu:
        grad = grad * (out > 0)
    dense = csr_to_dense(values, col_idx, row_ptr, weight_shape)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        wg = dense.detach().requires_grad_(True)
        xp = F.pad(xg, (padding[2], padding[3], padding[0], padding[1]))
        y = F.conv2d(xp, wg, None, stride, 0, dilation, groups)
        gx, gw = torch.autograd.grad(y, (xg, wg), grad)
    rows, cols = csr_coords(col_idx, row_ptr)
    gvals = gw.reshape(weight_shape[0], -1)[rows, cols]
    gbias = grad.sum((0, 2, 3)) if has_bias else None
    return gx, gvals, None, None, None, gbias, None, None, None, None, None, grad if has_residual else None


sparse_conv2d_op.register_autograd(_backward, setup_context=_setup_context)
