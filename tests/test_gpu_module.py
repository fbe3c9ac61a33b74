"""The modules and torch ops on a CUDA device: forward against float64 references, backward,
torch.compile, save/load. Skipped where no CUDA device is (CI); run by benchmarks/gpu_check.sh."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                       reason="needs a CUDA device (and the compiled Triton kernel)"),
]
pytest.importorskip("triton", reason="triton is not installed")

import sparsecnn  # noqa: E402


def _pruned_conv(c: int, o: int, k: int, density: float, gen: torch.Generator, **kw) -> nn.Conv2d:
    conv = nn.Conv2d(c, o, k, **kw)
    with torch.no_grad():
        conv.weight.mul_((torch.rand(conv.weight.shape, generator=gen) < density).float())
    return conv


def _close(got: torch.Tensor, ref: torch.Tensor) -> None:
    err = (got.double().cpu() - ref.double().cpu()).abs().max().item()
    assert err <= 1e-4 * max(1.0, ref.abs().max().item()), f"max abs error {err}"


@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=2, padding=1), dict(padding="same", dilation=2),
                                dict(groups=4, padding=0), dict(groups=16, padding=1)])
def test_sparse_conv2d_module_on_cuda(kw):
    gen = torch.Generator().manual_seed(3)
    conv = _pruned_conv(16, 32 if kw.get("groups") != 16 else 16, 3, 0.2, gen, **kw)
    sp = sparsecnn.SparseConv2d.from_dense(conv).cuda()
    x = torch.randn(4, 16, 15, 13, generator=gen)
    ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), conv.stride, conv.padding, conv.dilation,
                   conv.groups)
    y = sp(x.cuda())
    assert y.is_cuda and y.shape == ref.shape
    _close(y, ref)


def test_fused_relu_and_channels_last_on_cuda():
    gen = torch.Generator().manual_seed(4)
    conv = _pruned_conv(8, 24, 5, 0.3, gen, padding=2)
    sp = sparsecnn.SparseConv2d.from_dense(conv, relu=True).cuda()
    x = torch.randn(2, 8, 11, 11, generator=gen)
    ref = torch.relu(F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=2))
    xcl = x.cuda().to(memory_format=torch.channels_last)
    y = sp(xcl)
    _close(y, ref)
    assert y.stride() == F.conv2d(xcl, conv.weight.cuda(), padding=2).stride()  # channels-last, as cuDNN's


def test_backward_matches_dense_on_cuda():
    gen = torch.Generator().manual_seed(5)
    conv = _pruned_conv(8, 16, 3, 0.25, gen, padding=1)
    sp = sparsecnn.SparseConv2d.from_dense(conv).cuda()
    x = torch.randn(3, 8, 9, 9, generator=gen, dtype=torch.float64)
    xs = x.float().cuda().requires_grad_(True)
    sp(xs).square().sum().backward()
    xd = x.clone().requires_grad_(True)
    F.conv2d(xd, conv.weight.double(), conv.bias.double(), padding=1).square().sum().backward()
    _close(xs.grad, xd.grad)


@pytest.mark.parametrize("batch", [1, 5, 40])  # cuSPARSE up to CUSPARSE_MAX_BATCH, Triton above
def test_sparse_linear_on_cuda(batch):
    gen = torch.Generator().manual_seed(6)
    lin = nn.Linear(300, 70)
    with torch.no_grad():
        lin.weight.mul_((torch.rand(lin.weight.shape, generator=gen) < 0.1).float())
    sp = sparsecnn.SparseLinear.from_dense(lin, relu=True).cuda()
    x = torch.randn(batch, 300, generator=gen)
    ref = torch.relu(F.linear(x.double(), lin.weight.double(), lin.bias.double()))
    y = sp(x.cuda())
    assert y.is_contiguous()
    _close(y, ref)


def test_sparse_linear_cusparse_matrix_is_cached_per_weight():
    """The cuSPARSE path builds its int64 CSR matrix once per weight, again after an in-place change."""
    from sparsecnn.ops import linear

    linear._CSR_CACHE.clear()
    gen = torch.Generator().manual_seed(10)
    lin = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        lin.weight.mul_((torch.rand(lin.weight.shape, generator=gen) < 0.2).float())
    sp = sparsecnn.SparseLinear.from_dense(lin).cuda()
    x = torch.randn(1, 64, generator=gen)
    y1 = sp(x.cuda())
    sp(x.cuda())
    assert len(linear._CSR_CACHE) == 1
    with torch.no_grad():
        sp.values.mul_(2.0)
    _close(sp(x.cuda()), 2 * F.linear(x.double(), lin.weight.double()))
    _close(y1, F.linear(x.double(), lin.weight.double()))
    assert len(linear._CSR_CACHE) == 1


def test_sparse_linear_backward_on_cuda():
    gen = torch.Generator().manual_seed(9)
    lin = nn.Linear(40, 30)
    with torch.no_grad():
        lin.weight.mul_((torch.rand(lin.weight.shape, generator=gen) < 0.2).float())
    sp = sparsecnn.SparseLinear.from_dense(lin).cuda()
    x = torch.randn(12, 40, generator=gen, dtype=torch.float64)
    xs = x.float().cuda().requires_grad_(True)
    sp(xs).square().sum().backward()
    xd = x.clone().requires_grad_(True)
    F.linear(xd, lin.weight.double(), lin.bias.double()).square().sum().backward()
    _close(xs.grad, xd.grad)


def test_torch_compile_on_cuda():
    gen = torch.Generator().manual_seed(7)
    conv = _pruned_conv(8, 16, 3, 0.2, gen, padding=1)
    model = nn.Sequential(sparsecnn.SparseConv2d.from_dense(conv, relu=True), nn.Flatten(),
                          nn.Linear(16 * 7 * 7, 10)).cuda()
    x = torch.randn(2, 8, 7, 7, generator=gen).cuda()
    ref = model(x)
    got = torch.compile(model, fullgraph=True)(x)
    _close(got, ref)


def test_save_load_to_cuda(tmp_path):
    gen = torch.Generator().manual_seed(8)
    conv = _pruned_conv(8, 16, 3, 0.2, gen, padding=1)
    model = nn.Sequential(sparsecnn.SparseConv2d.from_dense(conv))
    path = tmp_path / "m.pt"
    sparsecnn.save(model, path)
    back = sparsecnn.load(path, device="cuda")
    x = torch.randn(1, 8, 6, 6, generator=gen)
    _close(back(x.cuda()), model(x))
