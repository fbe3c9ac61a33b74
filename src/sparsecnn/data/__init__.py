"""Datasets: Fashion-MNIST from IDX files.

Example:
    >>> from sparsecnn.data import load_fashion_mnist
    >>> x, y = load_fashion_mnist("test")  # doctest: +SKIP
    >>> x.shape  # doctest: +SKIP
    torch.Size([10000, 28, 28])
"""

from .fashion_mnist import (
    DATA_DIR_ENV,
    DEFAULT_DATA_DIR,
    FMNIST_CLASSES,
    FMNIST_MEAN,
    FMNIST_STD,
    fashion_mnist_loaders,
    find_data_dir,
    load_fashion_mnist,
    read_idx,
)

__all__ = [
    "DATA_DIR_ENV", "DEFAULT_DATA_DIR", "FMNIST_CLASSES", "FMNIST_MEAN", "FMNIST_STD",
    "find_data_dir", "read_idx", "load_fashion_mnist", "fashion_mnist_loaders",
]
