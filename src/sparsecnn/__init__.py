"""sparsecnn: pruned CNNs that actually run faster.

Direct sparse convolution (Park et al., ICLR 2017) for CPUs and GPUs, a roofline performance
model of it, guided sparsity learning, and the tools to turn a pruned PyTorch model into a
fast one.

Example:
    >>> import torch, sparsecnn
    >>> w = torch.randn(32, 16, 3, 3) * (torch.rand(32, 16, 3, 3) < 0.1)
    >>> y = sparsecnn.sparse_conv2d(torch.randn(1, 16, 8, 8), sparsecnn.SparseWeight.from_dense(w), padding=1)
    >>> y.shape
    torch.Size([1, 32, 8, 8])
"""

import logging

import torch  # noqa: F401  (the ops register with torch.library at import)

from sparsecnn.nn import SparseConv2d, SparseLinear, SparseWeight, sparse_conv2d, sparse_linear
from sparsecnn.nn.serialization import load, save
from sparsecnn.sparsify import SparsifyReport, sparsify

__version__ = "0.1.0"
__all__ = [
    "SparseConv2d", "SparseLinear", "SparseWeight", "SparsifyReport", "__version__", "load", "save",
    "sparse_conv2d", "sparse_linear", "sparsify",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
