"""``sparsecnn::max_pool2d`` and ``sparsecnn::local_response_norm``: the layers around the sparse
convolutions, as torch custom ops over the compiled core (CPU, float32; the output
channels-last where the input is, as torch's: LRN normalises either layout in place, max
pooling of a channels-last input runs torch's channels-last kernel, faster than a copy).

torch's CPU ``max_pool2d`` on NCHW tensors also computes argmax indices and its
``LocalResponseNorm`` is five passes over the tensor; once the convolutions are sparse these
took a third of CaffeNet's batch-16 time. Same results as torch (NaN propagates through max
pooling); other devices and dtypes go to torch's own functions. Differentiable through torch's
functions (recomputed in the backward).

Example:
    >>> import torch, torch.nn.functional as F
    >>> from sparsecnn.ops.pool import call_max_pool2d
    >>> x = torch.randn(2, 3, 9, 9)
    >>> torch.equal(call_max_pool2d(x, [3, 3], [2, 2], [1, 1], True), F.max_pool2d(x, 3, 2, 1, ceil_mode=True))
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparsecnn import _core
from sparsecnn.ops.conv import _alloc, _bare, _dl, eager_cpu_call
from sparsecnn.ops.memory_format import empty_in_format_of, memory_format_of, suggests_channels_last

__all__ = ["call_local_response_norm", "call_max_pool2d", "local_response_norm_op", "max_pool2d_op"]


def _check(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: input must be a tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"{what}: input must be float32, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{what}: input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")


def _pool_out(x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int], ceil_mode: bool) -> tuple:
    n, c, h, w = x.shape
    return (n, c, _core.pool_output_size(h, kernel[0], stride[0], padding[0], ceil_mode),
            _core.pool_output_size(w, kernel[1], stride[1], padding[1], ceil_mode))


def _max_pool2d_cpu(x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int], ceil_mode: bool) -> torch.Tensor:
    _check(x, "max_pool2d")
    if suggests_channels_last(x):
        # torch's channels-last kernel: 2.3 ms on CaffeNet pool1 at batch 16, where the copies
        # to NCHW and back alone take 8 (Zen 3, 2 threads)
        return F.max_pool2d(x.detach(), kernel, stride, padding, ceil_mode=ceil_mode)
    out = _alloc(_pool_out(x, kernel, stride, padding, ceil_mode), "max_pool2d")
    _core.max_pool2d(_dl(_bare(x).contiguous()), _dl(out), kernel, stride, padding, bool(ceil_mode),
                     torch.get_num_threads())
    return out


@torch.library.custom_op("sparsecnn::max_pool2d", mutates_args=(), device_types="cpu")
def max_pool2d_op(x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int], ceil_mode: bool) -> torch.Tensor:
    """``F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode)`` (dilation 1)."""
    return _max_pool2d_cpu(x, kernel, stride, padding, ceil_mode)


@max_pool2d_op.register_fake
def _max_pool2d_fake(x, kernel, stride, padding, ceil_mode):
    _check(x, "max_pool2d")
    # torch's own rule, on SymInts
    def size(n, k, s, p):
        o = (n + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
        if ceil_mode and (o - 1) * s >= n + p:
            o = o - 1
        return o
    return empty_in_format_of(x, (x.shape[0], x.shape[1], size(x.shape[2], kernel[0], stride[0], padding[0]),
                                  size(x.shape[3], kernel[1], stride[1], padding[1])))


def _pool_setup(ctx, inputs, output):
    x, kernel, stride, padding, ceil_mode = inputs
    ctx.save_for_backward(x)
    ctx.params = (list(kernel), list(stride), list(padding), ceil_mode)


def _pool_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    kernel, stride, padding, ceil_mode = ctx.params
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = F.max_pool2d(xg, kernel, stride, padding, ceil_mode=ceil_mode)
        (gx,) = torch.autograd.grad(y, (xg,), grad)
    return gx, None, None, None, None


max_pool2d_op.register_autograd(_pool_backward, setup_context=_pool_setup)


def call_max_pool2d(x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int], ceil_mode: bool) -> torch.Tensor:
    """Max pooling: the compiled kernel for CPU float32 input, torch's ``F.max_pool2d`` otherwise."""
    if not (isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.dim() == 4 and x.is_cpu):
        return F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode)
    if eager_cpu_call(x):
        return _max_pool2d_cpu(x, kernel, stride, padding, ceil_mode)
    return max_pool2d_op(x, kernel, stride, padding, ceil_mode)


def _lrn_cpu(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    _check(x, "local_response_norm")
    fmt = memory_format_of(x)  # the core normalises either format in place of its layout
    out = _alloc(tuple(x.shape), "local_response_norm", fmt)
    _core.local_response_norm(_dl(_bare(x).contiguous(memory_format=fmt)), _dl(out), int(size), float(alpha),
                              float(beta), float(k), torch.get_num_threads())
    return out


@torch.library.custom_op("sparsecnn::local_response_norm", mutates_args=(), device_types="cpu")
def local_response_norm_op(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """``F.local_response_norm(x, size, alpha, beta, k)`` (channels-last input gives channels-last output)."""
    return _lrn_cpu(x, size, alpha, beta, k)


@local_response_norm_op.register_fake
def _lrn_fake(x, size, alpha, beta, k):
    _check(x, "local_response_norm")
    return empty_in_format_of(x, tuple(x.shape))


def _lrn_setup(ctx, inputs, output):
    x, size, alpha, beta, k = inputs
    ctx.save_for_backward(x)
    ctx.params = (size, alpha, beta, k)


def _lrn_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = F.local_response_norm(xg, *ctx.params)
        (gx,) = torch.autograd.grad(y, (xg,), grad)
    return gx, None, None, None, None


local_response_norm_op.register_autograd(_lrn_backward, setup_context=_lrn_setup)


def call_local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """LRN across channels: the compiled kernel for 4-D CPU float32 input, torch's otherwise."""
    if not (isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.dim() == 4 and x.is_cpu):
        return F.local_response_norm(x, size, alpha, beta, k)
    if eager_cpu_call(x):
        return _lrn_cpu(x, size, alpha, beta, k)
    return local_response_norm_op(x, size, alpha, beta, k)
