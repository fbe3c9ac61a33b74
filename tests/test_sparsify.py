"""sparsecnn.sparsify: BN folding, ReLU fusion, policies, accuracy, compile/export."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

import sparsecnn
from sparsecnn import SparseConv2d, SparseLinear
from sparsecnn.models import fmnist_vgg, resnet50
from sparsecnn.models import pruned as P
from sparsecnn.perf import PerfModel
from sparsecnn.sparsify import fold_bn

RESNET_SET = "resnet50_dlmc_magnitude_pruning_0.9"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))


def _pruned_cnn(amount: float = 0.9) -> nn.Module:
    torch.manual_seed(0)
    m = fmnist_vgg(widths=(8, 16, 16, 32)).eval()
    _randomize_bn(m)
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            prune.l1_unstructured(mod, "weight", amount=amount)
    return m


@pytest.fixture(scope="module")
def cnn():
    return _pruned_cnn()


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_fold_bn_exact():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6)
    prune.random_unstructured(conv, "weight", amount=0.7)
    seq = nn.Sequential(conv, bn).eval()
    _randomize_bn(seq)
    folded = fold_bn(conv, bn)
    xx = torch.randn(2, 4, 9, 9)
    assert _rel(folded(xx), seq(xx)) < 1e-5
    assert torch.equal(folded.weight == 0, conv.weight == 0)  # the mask's zeros survive


def test_bn_folded_and_relu_fused(cnn, x):
    fast, rep = sparsecnn.sparsify(cnn, x, policy="all")
    for i in range(1, 5):
        row = rep.layer(f"features.conv{i}")
        assert row.bn_folded == f"features.bn{i}" and row.relu_fused == f"features.relu{i}"
        assert isinstance(fast.features.get_submodule(f"conv{i}"), SparseConv2d)
        assert fast.features.get_submodule(f"conv{i}").relu
        assert isinstance(fast.features.get_submodule(f"bn{i}"), nn.Identity)
        assert isinstance(fast.features.get_submodule(f"relu{i}"), nn.Identity)
    assert isinstance(fast.fc, SparseLinear) and rep.layer("fc").relu_fused is None
    assert _rel(fast(x), cnn(x)) < 1e-4
    assert rep.max_rel_error < 1e-4
    assert not hasattr(cnn.features.conv1, "relu")  # the input model is untouched
    assert isinstance(cnn.features.bn1, nn.BatchNorm2d)


def test_relu_not_fused_when_output_shared():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.relu = nn.ReLU()

        def forward(self, x):
            y = self.conv(x)
            return self.relu(y) + y  # the conv output has a second consumer

    m = Two().eval()
    x = torch.randn(1, 3, 6, 6)
    fast, rep = sparsecnn.sparsify(m, x, policy="all")
    assert rep.layer("conv").relu_fused is None and isinstance(fast.relu, nn.ReLU)
    assert _rel(fast(x), m(x)) < 1e-5


def test_bn_not_folded_when_conv_output_reused():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    m = Skip().eval()
    _randomize_bn(m)
    x = torch.randn(2, 3, 5, 5)
    fast, rep = sparsecnn.sparsify(m, x, policy="all")
    assert rep.layer("conv").bn_folded is None and isinstance(fast.bn, nn.BatchNorm2d)
    assert _rel(fast(x), m(x)) < 1e-5


@pytest.mark.parametrize("policy", ["all", "none", "auto", "measure"])
def test_policies(cnn, x, policy):
    perf = PerfModel.synthetic(F=5e10, B=1e10, a=1.5, b=1.5)  # no calibration in tests
    fast, rep = sparsecnn.sparsify(cnn, x, policy=policy, perf_model=perf, repeats=2)
    kinds = {r.name: r.decision for r in rep.layers}
    assert len(kinds) == 5
    if policy == "all":
        assert set(kinds.values()) == {"sparse"}
    if policy == "none":
        assert set(kinds.values()) == {"dense"}
        assert not any(isinstance(m, (SparseConv2d, SparseLinear)) for m in fast.modules())
    if policy in ("auto", "measure"):
        assert all(r.pred_speedup is not None and r.pred_dense_s > 0 for r in rep.layers)
    if policy == "measure":
        for r in rep.layers:
            assert r.meas_dense_s > 0 and r.meas_sparse_s > 0
            assert r.decision == ("sparse" if r.meas_sparse_s < r.meas_dense_s else "dense")
    for r in rep.layers:  # the module types follow the decisions
        mod = fast.get_submodule(r.name)
        assert isinstance(mod, (SparseConv2d, SparseLinear)) == (r.decision == "sparse")
    assert _rel(fast(x), cnn(x)) < 1e-4
    d = rep.to_dict()
    assert d["policy"] == policy and len(d["layers"]) == 5
    assert "features.conv2" in rep.table()


def test_bad_policy(cnn, x):
    with pytest.raises(ValueError, match="policy"):
        sparsecnn.sparsify(cnn, x, policy="fastest")


def test_compile_and_export(cnn, x):
    fast, _ = sparsecnn.sparsify(cnn, x, policy="all")
    ref = fast(x)
    compiled = torch.compile(fast, backend="aot_eager")
    assert _rel(compiled(x), ref) < 1e-5
    ep = torch.export.export(fast, (x,))
    assert _rel(ep.module()(x), ref) < 1e-5


needs_resnet_set = pytest.mark.skipif(not (P.pruned_dir(must_exist=False) / f"{RESNET_SET}.npz").is_file(),
                                      reason=f"pruned set {RESNET_SET} not found")


def _pruned_resnet50() -> nn.Module:
    """ResNet-50 with the real 90 % masks and random BN statistics, in eval mode."""
    torch.manual_seed(0)
    m = resnet50().eval()
    P.apply_pruned_weights(m, RESNET_SET)
    _randomize_bn(m)
    return m


@needs_resnet_set
def test_resnet50_pruned_matches():
    m = _pruned_resnet50()
    x = torch.randn(1, 3, 64, 64)
    fast, rep = sparsecnn.sparsify(m, x, policy="all")
    assert rep.n_sparse == 54
    assert rep.layer("layer1.0.conv1").relu_fused == "layer1.0.relu1"
    assert rep.layer("layer1.0.conv3").relu_fused is None  # the residual add comes first...
    # ...so the block moves the add and its ReLU into conv3's store instead
    assert all(rep.layer(f"{s}.conv3").residual_fused for s in ("layer1.0", "layer2.3", "layer4.2"))
    assert not rep.layer("layer1.0.conv2").residual_fused
    assert fast.layer1[0].residual_fused and isinstance(fast.layer1[0].relu, nn.Identity)
    assert fast.layer1[0].conv3.relu
    assert rep.layer("layer1.0.downsample.0").bn_folded == "layer1.0.downsample.1"
    with torch.no_grad():
        assert _rel(fast(x), m(x)) < 1e-4


@needs_resnet_set
def test_resnet_residual_fusion_only_when_conv3_sparse(tmp_path):
    """A dense conv3 keeps the block's own add + ReLU; a fused model saves, loads and compiles."""
    m = _pruned_resnet50()
    x = torch.randn(2, 3, 64, 64)
    dense, rep = sparsecnn.sparsify(m, x, policy="none")
    assert not any(r.residual_fused for r in rep.layers)
    assert not dense.layer1[0].residual_fused and isinstance(dense.layer1[0].relu, nn.ReLU)
    fast, _ = sparsecnn.sparsify(m, x, policy="all")
    path = tmp_path / "r50.safetensors"
    sparsecnn.save(fast, path)
    back = sparsecnn.load(path)
    assert back.layer3[2].residual_fused
    with torch.no_grad():
        ref = m(x)
        assert _rel(back(x), ref) < 1e-4
        assert _rel(torch.compile(fast, backend="aot_eager")(x), ref) < 1e-4


_FAULTS_SCRIPT = """
import resource, sys, torch
import torch.nn.functional as F
from sparsecnn.perf.probe import settle_allocator
if sys.argv[1] == "settle":
    settle_allocator()
x, w = torch.randn(16, 32, 28, 28), torch.randn(64, 32, 3, 3)
for _ in range(4):  # a timing loop of one dense conv (3.2 MB output)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    F.conv2d(x, w, padding=1)  # the output is freed at once
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_settle_allocator_stops_page_faults_of_repeated_calls():
    """In a fresh process every call of this dense conv faults ~1950 pages in (measured), call
    after call; after settle_allocator() its fourth call faults none: the state sparsify times in."""
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    assert faults("fresh") >= 500
    assert faults("settle") < 100
