"""Tests for sparsecnn.data: IDX parsing and Fashion-MNIST loading."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsecnn.data import (
    DATA_DIR_ENV,
    fashion_mnist_loaders,
    find_data_dir,
    load_fashion_mnist,
    read_idx,
)


def _idx_bytes(arr: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
             np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}
    be = arr.astype(arr.dtype.newbyteorder(">")) if arr.dtype.itemsize > 1 else arr
    head = bytes([0, 0, codes[be.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + be.tobytes()


def _write(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    data = _idx_bytes(arr)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def _fake_dataset(root: Path, n_train: int = 50, n_test: int = 20, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write(root / f"{prefix}-images-idx3-ubyte{sfx}",
               rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), gz)
        _write(root / f"{prefix}-labels-idx1-ubyte{sfx}",
               rng.integers(0, 10, n, dtype=np.uint8), gz)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_uint8(tmp_path, gz):
    imgs = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
    labels = np.array([0, 9, 4], np.uint8)
    p = _write(tmp_path / ("img.gz" if gz else "img"), imgs, gz)
    q = _write(tmp_path / ("lab.gz" if gz else "lab"), labels, gz)
    out = read_idx(p)
    assert out.dtype == np.uint8 and out.shape == (3, 28, 28)
    np.testing.assert_array_equal(out, imgs)
    np.testing.assert_array_equal(read_idx(q), labels)


def test_read_idx_wider_types(tmp_path):
    a = np.arange(12, dtype=np.int32).reshape(3, 4) - 5
    b = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(read_idx(_write(tmp_path / "a", a.astype(">i4"))), a)
    out = read_idx(_write(tmp_path / "b", b.astype(">f4")))
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out, b)


def test_read_idx_corrupt(tmp_path):
    good = _idx_bytes(np.zeros((4, 28, 28), np.uint8))
    cases = {
        "badmagic": b"\x01\x00" + good[2:],
        "badtype": good[:2] + b"\x07" + good[3:],
        "shorthdr": good[:6],
        "truncated": good[:-10],
        "trailing": good + b"\x00\x00",
        "tiny": b"\x00",
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ValueError, match=name):
            read_idx(p)
    # truncated gzip stream
    gz = gzip.compress(good)
    p = tmp_path / "cut.gz"
    p.write_bytes(gz[: len(gz) // 2])
    with pytest.raises(ValueError, match="cut.gz"):
        read_idx(p)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "missing")


def test_find_data_dir(tmp_path, monkeypatch):
    assert find_data_dir(tmp_path) == tmp_path
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert find_data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        find_data_dir(tmp_path / "nowhere")


@pytest.mark.parametrize("gz", [False, True])
def test_load_and_loaders_on_fake_data(tmp_path, gz):
    _fake_dataset(tmp_path, gz=gz)
    x, y = load_fashion_mnist("train", root=tmp_path)
    assert x.shape == (50, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("val", root=tmp_path)
    train, test = fashion_mnist_loaders(16, root=tmp_path, subset=40)
    xb, yb = next(iter(train))
    assert xb.shape == (16, 1, 28, 28) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert len(train.dataset) == 40 and len(test.dataset) == 20
    raw, _ = fashion_mnist_loaders(8, root=tmp_path, normalize=False)
    xr = raw.dataset.tensors[0]
    assert 0.0 <= float(xr.min()) and float(xr.max()) <= 1.0
    dtr, dte = fashion_mnist_loaders(8, root=tmp_path, distributed=True, num_replicas=2, rank=0)
    assert type(dtr.sampler).__name__ == "DistributedSampler"
    assert len(dtr.sampler) == 25 and len(dte.sampler) == 10


def test_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_fashion_mnist("train", root=tmp_path)


def _real_dir() -> Path | None:
    try:
        d = find_data_dir()
    except FileNotFoundError:
        return None
    return d if any(d.glob("t10k-images-idx3-ubyte*")) else None


@pytest.mark.skipif(_real_dir() is None,
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist "
                           f"or set ${DATA_DIR_ENV})")
def test_real_fashion_mnist_test_split():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))
