"""sparsecnn.save / sparsecnn.load: round trips, file size, corrupted files."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

import sparsecnn
from sparsecnn import SparseConv2d
from sparsecnn.models import fmnist_vgg, resnet50
from sparsecnn.nn.serialization import read_metadata


def _sparse_model(amount: float = 0.9, widths=(16, 32, 64, 64)):
    torch.manual_seed(0)
    m = fmnist_vgg(widths=widths).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 2.0)
            mod.running_mean.normal_()
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            prune.l1_unstructured(mod, "weight", amount=amount)
            prune.remove(mod, "weight")
    x = torch.randn(2, 1, 28, 28)
    fast, _ = sparsecnn.sparsify(m, x, policy="all")
    return m, fast, x


@pytest.fixture(scope="module")
def models():
    return _sparse_model()


def test_round_trip_identical(models, tmp_path):
    _, fast, x = models
    p = tmp_path / "m.safetensors"
    sparsecnn.save(fast, p, arch={"name": "fmnist_vgg", "kwargs": {"widths": [16, 32, 64, 64]}})
    back = sparsecnn.load(p)
    assert type(back) is type(fast) and not back.training
    assert isinstance(back.features.conv2, SparseConv2d) and back.features.conv2.relu
    assert isinstance(back.features.bn2, nn.Identity)
    assert torch.equal(back(x), fast(x))
    assert read_metadata(p)["arch"]["name"] == "fmnist_vgg"
    sd1, sd2 = fast.state_dict(), back.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) and sd1[k].dtype == sd2[k].dtype for k in sd1)


def test_round_trip_dense_resnet_and_masks(tmp_path):
    m = resnet50(num_classes=10).eval()  # custom containers (Bottleneck), BN buffers
    p = tmp_path / "r.safetensors"
    sparsecnn.save(m, p)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(sparsecnn.load(p)(x), m(x))
    conv = nn.Conv2d(3, 4, 3)
    prune.random_unstructured(conv, "weight", amount=0.5)  # hooks are not stored: the mask is baked in
    sparsecnn.save(conv, tmp_path / "c.safetensors")
    back = sparsecnn.load(tmp_path / "c.safetensors")
    assert torch.equal(back.weight, conv.weight) and not hasattr(back, "weight_mask")


def test_file_size_90_percent_sparse(models, tmp_path):
    dense, fast, _ = models
    pd, ps = tmp_path / "dense.pt", tmp_path / "sparse.safetensors"
    torch.save(dense.state_dict(), pd)
    sparsecnn.save(fast, ps)
    assert os.path.getsize(ps) <= 0.25 * os.path.getsize(pd), (os.path.getsize(ps), os.path.getsize(pd))


def test_truncated_and_corrupted(models, tmp_path):
    _, fast, _ = models
    p = tmp_path / "m.safetensors"
    sparsecnn.save(fast, p)
    data = p.read_bytes()
    cases = {
        "empty": b"",
        "short": data[:5],
        "half": data[: len(data) // 2],
        "header_only": data[: 8 + int.from_bytes(data[:8], "little")],
        "garbage": b"\x00" * 64,
        "flip_data": data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:],
        "flip_header": data[:20] + bytes([data[20] ^ 0x55]) + data[21:],
    }
    for name, blob in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(blob)
        with pytest.raises(ValueError, match=name):
            sparsecnn.load(bad)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        sparsecnn.load(tmp_path / "nope.safetensors")


def test_foreign_class_refused(tmp_path):
    class Local(nn.Module):
        pass

    with pytest.raises(ValueError, match="cannot be imported"):
        sparsecnn.save(Local(), tmp_path / "x.safetensors")
