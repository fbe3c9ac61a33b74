"""Which memory format an op's output takes: torch's rule, so a channels-last model stays channels-last.

torch's conv2d, max_pool2d and local_response_norm return a channels-last tensor for an input
whose strides look channels-last (``Tensor.suggest_memory_format()``), NCHW otherwise. The ops
follow the same rule in their real kernels (the compiled core writes a channels-last conv or
LRN output itself; the CUDA conv copies its NCHW result with :func:`in_format_of`) and in their
fake (meta) ones (:func:`empty_in_format_of`), so ``torch.compile`` sees the strides the kernel
gives.

Example:
    >>> import torch
    >>> x = torch.ones(2, 3, 4, 4)
    >>> suggests_channels_last(x), suggests_channels_last(x.to(memory_format=torch.channels_last))
    (False, True)
"""

from __future__ import annotations

import torch

__all__ = ["empty_in_format_of", "in_format_of", "memory_format_of", "suggests_channels_last"]


def suggests_channels_last(x: torch.Tensor) -> bool:
    """Whether torch would call ``x``'s strides channels-last (c10's ``is_channels_last_strides_2d``).

    The rule of ``Tensor.suggest_memory_format()`` for 4-D tensors, ambiguous cases (a size-1
    channel or spatial dimension whose strides fit both) resolved to NCHW as torch does. Written
    out here because ``torch._prims_common.suggest_memory_format`` costs 7-80 us a call, most of
    a small layer's fixed cost at batch 1.

    >>> suggests_channels_last(torch.ones(2, 3, 1, 1).to(memory_format=torch.channels_last))
    True
    >>> suggests_channels_last(torch.ones(2, 3, 1, 1))  # the same memory, NCHW strides
    False
    """
    if x.dim() != 4 or x.layout != torch.strided:
        return False
    sizes, strides = x.shape, x.stride()
    if strides[1] == 0:
        return False
    low = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < low:
            return False
        if d == 0 and low == strides[1]:  # N111-like: NCHW by default
            return False
        low = strides[d] * sizes[d] if sizes[d] > 1 else strides[d]
    return True


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format torch's conv2d / max_pool2d / LRN output takes for input ``x``.

    >>> memory_format_of(torch.ones(1, 2, 3, 3).to(memory_format=torch.channels_last))
    torch.channels_last
    """
    return torch.channels_last if suggests_channels_last(x) else torch.contiguous_format


def in_format_of(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` (computed NCHW) in the memory format torch's own op would give for input ``x``.

    Channels-last when :func:`suggests_channels_last` says so for ``x``: a fresh tensor of exactly
    the strides ``torch.empty(..., memory_format=torch.channels_last)`` gives (those the fake
    kernels declare), else ``out`` itself.

    >>> y = in_format_of(torch.ones(1, 2, 3, 3).to(memory_format=torch.channels_last), torch.ones(1, 4, 3, 3))
    >>> y.stride()
    (36, 1, 12, 4)
    """
    if not suggests_channels_last(x):
        return out
    cl = torch.empty(out.shape, dtype=out.dtype, device=out.device, memory_format=torch.channels_last)
    return cl.copy_(out)


def empty_in_format_of(x: torch.Tensor, shape: tuple) -> torch.Tensor:
    """An uninitialised output of ``shape`` in the format :func:`in_format_of` gives: what the fake kernels return.

    >>> empty_in_format_of(torch.ones(1, 2, 3, 3), (1, 4, 3, 3)).is_contiguous()
    True
    """
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))
