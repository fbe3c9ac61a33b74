"""``sparsecnn::sparse_linear``: sparse weight times dense input, as a torch custom op.

Example:
    >>> import torch
    >>> from sparsecnn.ops import sparse_linear_op
    >>> vals = torch.tensor([3.0]); col = torch.tensor([1], dtype=torch.int16)
    >>> rp = torch.tensor([0, 1, 1], dtype=torch.int32)          # W = [[0, 3], [0, 0]]
    >>> sparse_linear_op(torch.tensor([[1.0, 2.0]]), vals, col, rp, 2, None, False)
    tensor([[6., 0.]])
"""

from __future__ import annotations

import warnings

import torch

from sparsecnn import _core
from sparsecnn.ops.conv import _alloc, _bare, _dl, csr_columns, csr_coords, csr_to_dense, eager_cpu_call
from sparsecnn.ops.weight_cache import WeightCache

__all__ = ["call_sparse_linear", "sparse_linear_op"]


def _check(x: torch.Tensor, values: torch.Tensor) -> None:
    if x.dtype != torch.float32:
        raise TypeError(f"sparse_linear: input must be float32, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"sparse_linear: input must be 2-D (N, in_features), got shape {tuple(x.shape)}")
    if not (x.is_cpu and values.is_cpu) and x.device != values.device:
        raise ValueError(f"sparse_linear: input is on {x.device} but the weight is on {values.device}")


def _sparse_linear_cpu(
    x: torch.Tensor,
    values: torch.Tensor,
    col_idx: torch.Tensor,
    row_ptr: torch.Tensor,
    out_features: int,
    bias: torch.Tensor | None,
    relu: bool,
) -> torch.Tensor:
    _check(x, values)
    out = _alloc((x.shape[0], out_features), "sparse_linear")
    _core.linear(
        _dl(_bare(x)), _dl(_bare(values)), _dl(col_idx), _dl(row_ptr),
        None if bias is None else _dl(_bare(bias).contiguous()),
        _dl(out), out_features, bool(relu), torch.get_num_threads(),
    )
    return out


@torch.library.custom_op("sparsecnn::sparse_linear", mutates_args=(), device_types="cpu")
def sparse_linear_op(
    x: torch.Tensor,
    values: torch.Tensor,
    col_idx: torch.Tensor,
    row_ptr: torch.Tensor,
    out_features: int,
    bias: torch.Tensor | None,
    relu: bool,
) -> torch.Tensor:
    """``x @ W.T (+ bias) (relu)`` with W (out_features x in_features) in CSR."""
    return _sparse_linear_cpu(x, values, col_idx, row_ptr, out_features, bias, relu)


def call_sparse_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    col_idx: torch.Tensor,
    row_ptr: torch.Tensor,
    out_features: int,
    bias: torch.Tensor | None,
    relu: bool,
) -> torch.Tensor:
    """:func:`sparse_linear_op`, run directly when :func:`~sparsecnn.ops.conv.eager_cpu_call` allows it."""
    if eager_cpu_call(x, values, bias):
        return _sparse_linear_cpu(x, values, col_idx, row_ptr, out_features, bias, relu)
    return sparse_linear_op(x, values, col_idx, row_ptr, out_features, bias, relu)


# Up to this batch the CUDA fully connected layer runs cuSPARSE's CSR SpMM, above it the Triton
# kernel (a 1x1 convolution of a 1x1 image). H100, CaffeNet fc6/fc7 shapes at density 0.05-0.3
# (benchmarks/results/gpu_linear_h100.txt): at batch 1 cuSPARSE took 0.13-0.19 ms, Triton 0.13-0.60;
# at batch 2-8 cuSPARSE 0.15-0.91 ms, Triton 0.13-0.65. Both lose to the dense layer there
# (0.03-0.10 ms, reading the dense weight at ~2.7 TB/s): docs/gpu.md.
CUSPARSE_MAX_BATCH = 1


# torch CSR tensors (int64 indices) per weight: converting the indices took 0.05-0.1 ms a call
_CSR_CACHE = WeightCache(size=64)


def _torch_csr(values: torch.Tensor, col_idx: torch.Tensor, row_ptr: torch.Tensor,
               shape: tuple[int, int]) -> torch.Tensor:
    # Built without invariant checks (they sync): SparseWeight checked row_ptr and the columns.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        return torch.sparse_csr_tensor(row_ptr.to(torch.int64), csr_columns(col_idx), values, shape,
                                       check_invariants=False)


@sparse_linear_op.register_kernel("cuda")
def _sparse_linear_cuda(x, values, col_idx, row_ptr, out_features, bias, relu):
    _check(x, values)
    n, c = x.shape
    if n <= CUSPARSE_MAX_BATCH:
        w = _CSR_CACHE.get((values, col_idx, row_ptr), ("csr", out_features, c),
                           lambda: _torch_csr(values, col_idx, row_ptr, (out_features, c)))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            y = (w @ x.t()).t().contiguous()
        if bias is not None:
            y = y + bias
        return torch.relu(y) if relu else y
    from sparsecnn.ops import triton_conv

    y = triton_conv.sparse_conv2d_triton(x.reshape(n, c, 1, 1), values, col_idx, row_ptr, [out_features, c, 1, 1],
                                         bias, (1, 1), (0, 0), (1, 1), 1, relu)
    return y.reshape(n, out_features)


@sparse_linear_op.register_fake
def _sparse_linear_fake(x, values, col_idx, row_ptr, out_features, bias, relu):
    _check(x, values)
    return x.new_empty((x.shape[0], out_features))


def _setup_context(ctx, inputs, output):
    x, values, col_idx, row_ptr, out_features, bias, relu = inputs
    ctx.save_for_backward(x, values, col_idx, row_ptr, output if relu else None)
    ctx.params = (out_features, relu, bias is not None)


def _backward(ctx, grad):
    x, values, col_idx, row_ptr, out = ctx.saved_tensors
    out_features, relu, has_bias = ctx.params
    if relu:
        grad = grad * (out > 0)
    dense = csr_to_dense(values, col_idx, row_ptr, (out_features, x.shape[1]))
    gx = grad @ dense
    gw = grad.t() @ x
    rows, cols = csr_coords(col_idx, row_ptr)
    gbias = grad.sum(0) if has_bias else None
    return gx, gw[rows, cols], None, None, None, gbias, None


sparse_linear_op.register_autograd(_backward, setup_context=_setup_context)
