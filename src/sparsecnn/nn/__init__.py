"""Sparse modules, weight packing and the functional API.

Example:
    >>> from sparsecnn.nn import SparseWeight, SparseConv2d, SparseLinear, sparse_conv2d
"""

from sparsecnn.nn.functional import sparse_conv2d, sparse_linear
from sparsecnn.nn.modules import SparseConv2d, SparseLinear, dense_weight_of
from sparsecnn.nn.pooling import LocalResponseNorm, MaxPool2d
from sparsecnn.nn.weight import SparseWeight

__all__ = [
    "LocalResponseNorm", "MaxPool2d", "SparseConv2d", "SparseLinear", "SparseWeight", "dense_weight_of",
    "sparse_conv2d", "sparse_linear",
]
