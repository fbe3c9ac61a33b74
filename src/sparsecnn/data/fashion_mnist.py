"""Fashion-MNIST from IDX files (e.g. the Debian package ``dataset-fashion-mnist``).

The data directory is ``root`` if given, else ``$SPARSECNN_DATA_DIR``, else
``/usr/share/datasets/fashion-mnist``. Files may be raw or gzipped
(``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``).

Example:
    >>> from sparsecnn.data import fashion_mnist_loaders
    >>> train, test = fashion_mnist_loaders(batch_size=128, subset=1024)  # doctest: +SKIP
    >>> x, y = next(iter(train))  # doctest: +SKIP
    >>> x.shape, y.dtype  # doctest: +SKIP
    (torch.Size([128, 1, 28, 28]), torch.int64)
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_DATA_DIR",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "FMNIST_CLASSES",
    "find_data_dir",
    "read_idx",
    "load_fashion_mnist",
    "fashion_mnist_loaders",
]

log = logging.getLogger(__name__)

DATA_DIR_ENV = "SPARSECNN_DATA_DIR"
DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530
FMNIST_CLASSES: tuple[str, ...] = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# IDX type byte -> big-endian numpy dtype
_IDX_DTYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4",
                               0x0D: ">f4", 0x0E: ">f8"}
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_INSTALL_HINT = ("install it with `apt-get install dataset-fashion-mnist`, set "
                 f"${DATA_DIR_ENV}, or pass --data-dir / root=")


def find_data_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """Locate the Fashion-MNIST directory: ``root``, else ``$SPARSECNN_DATA_DIR``, else the Debian path.

    Raises:
        FileNotFoundError: the chosen directory does not exist (with an install hint).

    Example:
        >>> find_data_dir()  # doctest: +SKIP
        PosixPath('/usr/share/datasets/fashion-mnist')
    """
    if root is not None:
        path, why = Path(root).expanduser(), "root"
    elif os.environ.get(DATA_DIR_ENV):
        path, why = Path(os.environ[DATA_DIR_ENV]).expanduser(), f"${DATA_DIR_ENV}"
    else:
        path, why = DEFAULT_DATA_DIR, "default"
    if not path.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST directory not found: {path} ({why}); {_INSTALL_HINT}")
    return path


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    try:
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as g:
                return g.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"corrupt or truncated gzip file {path}: {e}") from e


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an IDX file (raw or gzip-compressed, detected by content).

    Header: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then each dimension as a
    big-endian uint32; the data follows, big-endian, and must fill the file exactly.

    Returns:
        A native-endian array of the stored dtype and shape.

    Raises:
        FileNotFoundError: missing file.
        ValueError: bad magic, unknown type, truncated or oversized data (names the path).

    Example:
        >>> read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").shape  # doctest: +SKIP
        (10000,)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(buf)} bytes)")
    z0, z1, tcode, ndim = buf[0], buf[1], buf[2], buf[3]
    if z0 != 0 or z1 != 0:
        raise ValueError(f"{path}: bad IDX magic {buf[:4].hex()} (first two bytes must be zero)")
    if tcode not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX data type 0x{tcode:02x}")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    hdr = 4 + 4 * ndim
    if len(buf) < hdr:
        raise ValueError(f"{path}: truncated IDX header (need {hdr} bytes, have {len(buf)})")
    dims = struct.unpack(f">{ndim}I", buf[4:hdr])
    dtype = np.dtype(_IDX_DTYPES[tcode])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(buf) - hdr
    if have != expected:
        kind = "truncated" if have < expected else "has trailing bytes"
        raise ValueError(f"{path}: IDX data {kind}: dims {dims} need {expected} bytes, "
                         f"file has {have}")
    arr = np.frombuffer(buf, dtype=dtype, offset=hdr).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _find_file(root: Path, prefix: str, kind: str, idx: int) -> Path:
    stems = [f"{prefix}-{kind}-idx{idx}-ubyte", f"{prefix}-{kind}.idx{idx}-ubyte"]
    for stem in stems:
        for suffix in ("", ".gz"):
            p = root / f"{stem}{suffix}"
            if p.is_file():
                return p
    raise FileNotFoundError(f"no {stems[0]}[.gz] in {root}; {_INSTALL_HINT}")


def load_fashion_mnist(split: str = "train",
                       root: str | os.PathLike[str] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split as ``(images uint8 N x 28 x 28, labels int64 N)``.

    Args:
        split: ``"train"`` (60000) or ``"test"`` (10000).
        root: data directory (see :func:`find_data_dir`).

    Example:
        >>> x, y = load_fashion_mnist("test")  # doctest: +SKIP
        >>> x.shape, y.shape  # doctest: +SKIP
        (torch.Size([10000, 28, 28]), torch.Size([10000]))
    """
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = find_data_dir(root)
    prefix = _SPLIT_PREFIX[split]
    ipath = _find_file(d, prefix, "images", 3)
    lpath = _find_file(d, prefix, "labels", 1)
    images, labels = read_idx(ipath), read_idx(lpath)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"{ipath}: expected uint8 N x 28 x 28 images, got "
                         f"{images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{lpath}: expected {len(images)} labels, got shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(FMNIST_CLASSES)):
        raise ValueError(f"{lpath}: labels outside [0, {len(FMNIST_CLASSES)})")
    log.debug("loaded Fashion-MNIST %s: %d images from %s", split, len(images), d)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def _to_float(images: torch.Tensor, normalize: bool) -> torch.Tensor:
    x = images.to(torch.float32).div_(255.0).unsqueeze(1)
    if normalize:
        x.sub_(FMNIST_MEAN).div_(FMNIST_STD)
    return x


def fashion_mnist_loaders(batch_size: int, root: str | os.PathLike[str] | None = None,
                          subset: int | None = None, normalize: bool = True,
                          distributed: bool = False, seed: int = 0, num_workers: int = 0,
                          test_batch_size: int | None = None,
                          num_replicas: int | None = None, rank: int | None = None
                          ) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders of float ``N x 1 x 28 x 28`` images (in memory) and int64 labels.

    Args:
        batch_size: training batch size (also the test batch size unless ``test_batch_size``).
        root: data directory (see :func:`find_data_dir`).
        subset: if given, use a seeded random subset of this many training images and the
            first ``subset`` test images (handy for quick runs).
        normalize: scale to [0, 1] then standardise with mean 0.2860, std 0.3530;
            otherwise just [0, 1].
        distributed: use :class:`DistributedSampler` for both loaders (train shuffled with
            ``seed``; test unshuffled, padded to a multiple of the world size). Needs an
            initialised process group unless ``num_replicas`` and ``rank`` are given.
            Call ``train_loader.sampler.set_epoch(epoch)`` each epoch.
        seed: seeds the subset choice and the shuffling.
        num_workers: DataLoader workers (0 is fine: the data is already tensors).

    Example:
        >>> train, test = fashion_mnist_loaders(64, subset=512)  # doctest: +SKIP
        >>> next(iter(train))[0].shape  # doctest: +SKIP
        torch.Size([64, 1, 28, 28])
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    xtr, ytr = load_fashion_mnist("train", root)
    xte, yte = load_fashion_mnist("test", root)
    if subset is not None:
        if subset <= 0:
            raise ValueError(f"subset must be positive, got {subset}")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(xtr), generator=g)[: min(subset, len(xtr))]
        xtr, ytr = xtr[idx], ytr[idx]
        xte, yte = xte[:subset], yte[:subset]
    train_ds = TensorDataset(_to_float(xtr, normalize), ytr)
    test_ds = TensorDataset(_to_float(xte, normalize), yte)
    tbs = test_batch_size or batch_size
    if distributed:
        tr_s = DistributedSampler(train_ds, num_replicas=num_replicas, rank=rank,
                                  shuffle=True, seed=seed)
        te_s = DistributedSampler(test_ds, num_replicas=num_replicas, rank=rank, shuffle=False)
        train = DataLoader(train_ds, batch_size=batch_size, sampler=tr_s,
                           num_workers=num_workers, drop_last=False)
        test = DataLoader(test_ds, batch_size=tbs, sampler=te_s, num_workers=num_workers)
    else:
        g = torch.Generator().manual_seed(seed)
        train = DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=g,
                           num_workers=num_workers)
        test = DataLoader(test_ds, batch_size=tbs, shuffle=False, num_workers=num_workers)
    log.info("Fashion-MNIST loaders: %d train / %d test images, batch %d%s",
             len(train_ds), len(test_ds), batch_size, " (distributed)" if distributed else "")
    return train, test
