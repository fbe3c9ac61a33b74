"""Torch custom ops over the compiled kernels (CPU) and the Triton kernels (CUDA).

The ops take the raw CSR arrays, so ``torch.compile`` and ``torch.export`` see plain tensors;
:mod:`sparsecnn.nn` wraps them in :class:`~sparsecnn.nn.SparseWeight` and modules.

Example:
    >>> import sparsecnn.ops as ops
    >>> ops.active_isa() in ("avx512", "avx2", "portable")
    True
"""

from sparsecnn.ops.conv import call_sparse_conv2d, conv_output_size, resolve_padding, sparse_conv2d_op
from sparsecnn.ops.isa import active_isa, isa_supported, set_isa, use_isa
from sparsecnn.ops.linear import call_sparse_linear, sparse_linear_op
from sparsecnn.ops.pool import call_local_response_norm, call_max_pool2d

__all__ = [
    "active_isa",
    "call_sparse_conv2d",
    "call_local_response_norm",
    "call_max_pool2d",
    "call_sparse_linear",
    "conv_output_size",
    "isa_supported",
    "resolve_padding",
    "set_isa",
    "sparse_conv2d_op",
    "sparse_linear_op",
    "use_isa",
]
