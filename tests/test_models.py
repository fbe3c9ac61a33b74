"""Tests for sparsecnn.models: architectures, names, and pruned-weight loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sparsecnn.models import (
    MODEL_NAMES,
    caffenet,
    fmnist_vgg,
    get_model,
    googlenet,
    resnet50,
    vgg16,
)
from sparsecnn.models import pruned as P

RESNET_SET = "resnet50_dlmc_magnitude_pruning_0.9"
CAFFE_SET = "caffenet_l1_acc56.3"


def _have_set(name: str) -> bool:
    d = P.pruned_dir(must_exist=False)
    return (d / f"{name}.npz").is_file() and (d / "manifest.json").is_file()


needs_resnet_set = pytest.mark.skipif(not _have_set(RESNET_SET),
                                      reason=f"pruned set {RESNET_SET} not found in ../shared/data/pruned")
needs_caffe_set = pytest.mark.skipif(not _have_set(CAFFE_SET),
                                     reason=f"pruned set {CAFFE_SET} not found in ../shared/data/pruned")


def _write_csr_npz(path: Path, layers: dict[str, np.ndarray]) -> None:
    arrays: dict[str, np.ndarray] = {}
    for name, w in layers.items():
        m = w.reshape(w.shape[0], -1)
        rows, cols = np.nonzero(m)
        arrays[f"{name}.shape"] = np.array(w.shape, np.int64)
        arrays[f"{name}.indptr"] = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m.shape[0]))]).astype(np.int32)
        arrays[f"{name}.indices"] = cols.astype(np.int32)
        arrays[f"{name}.values"] = m[rows, cols].astype(np.float32)
    np.savez(path, **arrays)


# ---------------------------------------------------------------- architectures


@pytest.mark.parametrize(
    "builder,shape,classes",
    [
        (caffenet, (1, 3, 227, 227), 1000),
        (googlenet, (1, 3, 224, 224), 1000),
        (resnet50, (1, 3, 224, 224), 1000),
        (vgg16, (1, 3, 224, 224), 1000),
        (fmnist_vgg, (1, 1, 28, 28), 10),
    ],
)
def test_forward_shapes(builder, shape, classes):
    m = builder().eval()
    assert tuple(m.default_input_shape) == shape
    with torch.no_grad():
        y = m(torch.randn(shape))
    assert y.shape == (1, classes)
    assert torch.isfinite(y).all()


def test_num_classes_and_get_model():
    assert set(MODEL_NAMES) >= {"caffenet", "alexnet", "vgg16", "resnet50", "googlenet", "fmnist_vgg"}
    m = get_model("alexnet", num_classes=7).eval()
    assert dict(m.named_modules())["fc8"].out_features == 7
    assert get_model("fmnist_vgg", num_classes=3).fc.out_features == 3
    assert dict(get_model("resnet50", num_classes=5).named_modules())["fc"].out_features == 5
    with pytest.raises(ValueError, match="unknown model"):
        get_model("lenet9000")


def test_caffenet_structure():
    m = caffenet()
    mods = dict(m.named_modules())
    for n in ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]:
        assert n in mods
    assert isinstance(mods["conv3"], nn.Conv2d)
    assert (mods["conv1"].kernel_size, mods["conv1"].stride) == ((11, 11), (4, 4))
    assert [mods[f"conv{i}"].groups for i in range(1, 6)] == [1, 2, 1, 2, 2]
    # every conv / fc (except the last) is directly followed by its own non-inplace ReLU
    children = list(m.named_children())
    for i, (name, mod) in enumerate(children):
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and name != "fc8":
            nxt = children[i + 1][1]
            assert isinstance(nxt, nn.ReLU) and not nxt.inplace, name
    # BVLC order: relu, pool, then LRN
    order = [n for n, _ in children]
    assert order.index("pool1") < order.index("norm1") < order.index("conv2")


def test_fmnist_vgg_names():
    m = fmnist_vgg()
    names = [n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d)]
    assert names == ["features.conv1", "features.conv2", "features.conv3", "features.conv4"]
    mods = dict(m.named_modules())
    assert all(mods[n].kernel_size == (3, 3) and mods[n].padding == (1, 1) for n in names)
    assert isinstance(mods["features.bn1"], nn.BatchNorm2d)
    m2 = fmnist_vgg(widths=(8, 16, 16, 32, 32, 64), batch_norm=False).eval()
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m2.modules())
    assert m2(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_googlenet_names():
    mods = dict(googlenet().named_modules())
    for blk in ["inception3a", "inception3b", "inception4a", "inception4e", "inception5b"]:
        for conv in ["branch1x1", "branch3x3_reduce", "branch3x3", "branch5x5_reduce", "branch5x5", "pool_proj"]:
            assert isinstance(mods[f"{blk}.{conv}"], nn.Conv2d)
    assert mods["inception5b.branch1x1"].out_channels == 384


def test_resnet50_v15_stride_on_conv2():
    mods = dict(resnet50().named_modules())
    assert mods["layer2.0.conv2"].stride == (2, 2)
    assert mods["layer2.0.conv1"].stride == (1, 1)
    assert mods["layer2.0.downsample.0"].stride == (2, 2)
    assert isinstance(mods["layer4.2.bn3"], nn.BatchNorm2d)
    n_conv = sum(isinstance(x, nn.Conv2d) for x in mods.values())
    assert n_conv == 53


# ---------------------------------------------------------------- pruned sets


def _check_geometry(model: nn.Module, set_name: str, input_shape) -> None:
    """Compare each manifest layer's geometry (incl. input_hw) with the model's module."""
    meta = P.layer_meta(set_name)
    mods = dict(model.named_modules())
    seen: dict[str, tuple[int, int]] = {}
    hooks = [mods[n].register_forward_pre_hook(
        lambda mod, inp, n=n: seen.__setitem__(n, tuple(inp[0].shape[-2:]) if inp[0].dim() == 4 else (1, 1)))
        for n in meta]
    with torch.no_grad():
        model.eval()(torch.zeros(input_shape))
    for h in hooks:
        h.remove()
    for n, g in meta.items():
        mod = mods[n]
        if isinstance(mod, nn.Linear):
            assert (mod.in_features, mod.out_features) == (g["in_channels"], g["out_channels"]), n
            continue
        assert mod.in_channels == g["in_channels"] and mod.out_channels == g["out_channels"], n
        assert list(mod.kernel_size) == list(g["kernel"]), n
        assert mod.stride == (g["stride"],) * 2 and mod.padding == (g["padding"],) * 2, n
        assert mod.groups == g["groups"], n
        assert list(seen[n]) == list(g["input_hw"]), n


@needs_resnet_set
def test_resnet50_loads_pruned_set():
    model = resnet50()
    meta = P.layer_meta(RESNET_SET)
    mods = dict(model.named_modules())
    missing = [n for n in meta if n not in mods]
    assert not missing, f"resnet50 lacks modules {missing}"
    applied = P.apply_pruned_weights(model, RESNET_SET, strict=True)
    assert sorted(applied) == sorted(meta) and len(applied) == 54
    nnz = total = 0
    for n in applied:
        w = mods[n].weight.detach()
        d = float((w != 0).float().mean())
        assert abs(d - meta[n]["density"]) < 5e-3, (n, d)
        nnz += int((w != 0).sum())
        total += w.numel()
    assert abs(nnz / total - 0.1) < 0.01
    assert mods["fc"].weight.shape == (1000, 2048)
    _check_geometry(model, RESNET_SET, (1, 3, 224, 224))


@needs_caffe_set
def test_caffenet_loads_pruned_set():
    model = caffenet()
    applied = P.apply_pruned_weights(model, CAFFE_SET)
    assert applied == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    meta = P.layer_meta(CAFFE_SET)
    mods = dict(model.named_modules())
    for n in applied:
        d = float((mods[n].weight != 0).float().mean())
        assert abs(d - meta[n]["density"]) < 1e-3, (n, d, meta[n]["density"])
    _check_geometry(model, CAFFE_SET, model.default_input_shape)
    # the dense weights round-trip the CSR arrays exactly
    w = P.load_pruned_layers(CAFFE_SET)["conv3"]
    z = np.load(P.pruned_dir() / f"{CAFFE_SET}.npz")
    assert int((w != 0).sum()) == len(z["conv3.values"])
    assert w.dtype == torch.float32 and tuple(w.shape) == tuple(z["conv3.shape"])
    assert CAFFE_SET in P.list_pruned_sets()
    assert "top1" in P.set_info(CAFFE_SET)


@needs_caffe_set
def test_truncated_npz_gives_clear_error(tmp_path):
    src = P.pruned_dir() / f"{CAFFE_SET}.npz"
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        P.load_pruned_layers(bad)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="junk.npz"):
        P.load_pruned_layers(str(junk))


def test_missing_files_and_sets(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        P.load_pruned_layers(tmp_path / "nope.npz")
    monkeypatch.setenv(P.PRUNED_DIR_ENV, str(tmp_path))
    assert P.pruned_dir() == tmp_path
    assert P.list_pruned_sets() == []
    with pytest.raises(FileNotFoundError, match="no_such_set"):
        P.load_pruned_layers("no_such_set")
    monkeypatch.setenv(P.PRUNED_DIR_ENV, str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="absent"):
        P.pruned_dir()


def test_synthetic_set_roundtrip_and_errors(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    model = fmnist_vgg(widths=(4, 8, 8, 8), num_classes=3)
    mods = dict(model.named_modules())
    w1 = rng.standard_normal(tuple(mods["features.conv1"].weight.shape)).astype(np.float32)
    w1[rng.random(w1.shape) < 0.7] = 0
    wfc = rng.standard_normal((3, 8, 1, 1)).astype(np.float32)
    _write_csr_npz(tmp_path / "toy.npz", {"features.conv1": w1, "fc": wfc})
    monkeypatch.setenv(P.PRUNED_DIR_ENV, str(tmp_path))
    assert P.list_pruned_sets() == ["toy"]
    dense = P.load_pruned_layers("toy")
    assert torch.equal(dense["features.conv1"], torch.from_numpy(w1))
    assert tuple(dense["fc"].shape) == (3, 8, 1, 1)
    assert P.apply_pruned_weights(model, "toy") == ["features.conv1", "fc"]
    assert torch.equal(mods["features.conv1"].weight.detach(), torch.from_numpy(w1))
    assert torch.equal(mods["fc"].weight.detach(), torch.from_numpy(wfc[:, :, 0, 0]))
    # shape mismatch names the layer
    with pytest.raises(ValueError, match="features.conv1"):
        P.apply_pruned_weights(fmnist_vgg(widths=(5, 8, 8, 8), num_classes=3), "toy")
    # unknown layer: skipped unless strict
    assert P.apply_pruned_weights(caffenet(num_classes=3), "toy") == []
    with pytest.raises(KeyError, match="features.conv1"):
        P.apply_pruned_weights(caffenet(num_classes=3), "toy", strict=True)
    # inconsistent CSR -> ValueError with the path
    z = dict(np.load(tmp_path / "toy.npz"))
    z["fc.indices"] = z["fc.indices"] + 100
    np.savez(tmp_path / "badcsr.npz", **z)
    with pytest.raises(ValueError, match="badcsr.npz.*fc"):
        P.load_pruned_layers("badcsr")
