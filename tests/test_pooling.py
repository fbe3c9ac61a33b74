"""Max pooling and LRN from the compiled core against torch (float32, exact / 1e-6)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import sparsecnn
from sparsecnn import _core
from sparsecnn.nn import LocalResponseNorm, MaxPool2d
from conftest import num_threads


@st.composite
def pool_configs(draw):
    kh, kw = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    return dict(
        n=draw(st.integers(0, 3)), c=draw(st.integers(1, 5)), kernel=(kh, kw),
        stride=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        padding=(draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))),
        ceil_mode=draw(st.booleans()),
        # from 1: ceil_mode lets a window reach past the input, even a kernel wider than it
        h=draw(st.integers(1, kh + 14)), w=draw(st.integers(1, kw + 30)),
        layout=draw(st.sampled_from(["contiguous", "channels_last", "sliced"])),
        nan=draw(st.booleans()), threads=draw(st.sampled_from([1, 2])), seed=draw(st.integers(0, 2**31 - 1)),
    )


@given(cfg=pool_configs())
def test_max_pool_matches_torch(cfg):
    gen = torch.Generator().manual_seed(cfg["seed"])
    shape = (cfg["n"], cfg["c"], cfg["h"], cfg["w"])
    x = torch.randn(shape, generator=gen)
    if cfg["layout"] == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif cfg["layout"] == "sliced":
        x = torch.randn(cfg["n"], cfg["c"], cfg["h"], 2 * cfg["w"], generator=gen)[..., ::2]
    if cfg["nan"] and x.numel():
        x[tuple(int(torch.randint(s, (1,), generator=gen)) for s in x.shape)] = float("nan")
    m = MaxPool2d(cfg["kernel"], cfg["stride"], cfg["padding"], ceil_mode=cfg["ceil_mode"])
    try:
        ref = F.max_pool2d(x, cfg["kernel"], cfg["stride"], cfg["padding"], ceil_mode=cfg["ceil_mode"])
    except RuntimeError:  # torch refuses (no window fits): so must we (channels-last runs torch's kernel)
        with pytest.raises((ValueError, RuntimeError), match="smaller than the kernel|too small"):
            m(x)
        return
    old = torch.get_num_threads()
    torch.set_num_threads(cfg["threads"])
    try:
        y = m(x)
    finally:
        torch.set_num_threads(old)
    assert y.shape == ref.shape and y.stride() == ref.stride()
    assert torch.equal(y.isnan(), ref.isnan())
    assert torch.equal(y.nan_to_num(0.0), ref.nan_to_num(0.0))


def test_max_pool_every_isa(isa):
    """Each kernel variant (vertical then horizontal pass, the stride-2 lane pick, the tails of
    rows narrower and wider than a vector, NaN) against torch on random geometries."""
    gen = torch.Generator().manual_seed(11)
    pick = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
    for it in range(150):
        kh, kw = pick(1, 5), pick(1, 5)
        stride = (pick(1, 3), pick(1, 3) if it % 3 else 2)
        padding = (pick(0, kh // 2), pick(0, kw // 2))
        h, w = kh + pick(0, 10), kw + pick(0, 45)
        x = torch.randn(pick(1, 2), pick(1, 4), h, w, generator=gen)
        if it % 4 == 3:
            x.view(-1)[pick(0, x.numel() - 1)] = float("nan")
        ceil = bool(it % 2)
        ref = F.max_pool2d(x, (kh, kw), stride, padding, ceil_mode=ceil)
        with num_threads(1 + it % 2):
            y = MaxPool2d((kh, kw), stride, padding, ceil_mode=ceil)(x)
        where = f"case {it}: x {tuple(x.shape)} kernel {(kh, kw)} stride {stride} padding {padding} ceil {ceil}"
        assert torch.equal(y.isnan(), ref.isnan()), where
        assert torch.equal(y.nan_to_num(0.0), ref.nan_to_num(0.0)), where


@pytest.mark.parametrize("size, alpha, beta, k", [(5, 1e-4, 0.75, 1.0), (3, 0.5, 0.5, 2.0), (4, 0.1, 1.3, 1.0),
                                                   (1, 1.0, 0.75, 1.0), (9, 1e-2, 0.75, 1.0)])
@pytest.mark.parametrize("shape", [(2, 7, 5, 6), (1, 1, 3, 3), (3, 16, 13, 13), (0, 4, 2, 2), (2, 19, 3, 1)])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])  # two kernels in lrn.cpp
def test_lrn_matches_torch(size, alpha, beta, k, shape, fmt):
    x = (torch.randn(shape) * 4).contiguous(memory_format=fmt)
    with num_threads(2):
        y = LocalResponseNorm(size, alpha, beta, k)(x)
    ref = F.local_response_norm(x.double(), size, alpha, beta, k)
    assert y.dtype == torch.float32 and y.shape == x.shape
    if x.numel():
        assert y.stride() == F.local_response_norm(x, size, alpha, beta, k).stride()
        assert (y.double() - ref).abs().max().item() <= 1e-5 * (1 + ref.abs().max().item())


def test_lrn_every_isa(isa):
    """Each kernel variant, both layouts, beta 0.75 (square roots) and others (pow), channel
    counts and plane sizes around the vector width, windows wider than the channels."""
    gen = torch.Generator().manual_seed(5)
    pick = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
    for it in range(60):
        c, size = pick(1, 40), pick(1, 9)
        beta = 0.75 if it % 3 else (0.5, 1.3)[it % 2]
        fmt = torch.channels_last if it % 2 else torch.contiguous_format
        x = (torch.randn(pick(1, 3), c, pick(1, 9), pick(1, 70), generator=gen) * 4).contiguous(memory_format=fmt)
        with num_threads(1 + it % 2):
            y = LocalResponseNorm(size, 1e-2, beta, 1.5)(x)
        ref = F.local_response_norm(x.double(), size, 1e-2, beta, 1.5)
        where = f"case {it}: x {tuple(x.shape)} {fmt} size {size} beta {beta}"
        assert y.stride() == x.stride(), where
        assert (y.double() - ref).abs().max().item() <= 1e-5 * (1 + ref.abs().max().item()), where


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_lrn_nan_propagates_like_torch(fmt):
    x = torch.randn(1, 6, 4, 4)
    x[0, 2, 1, 1] = float("nan")
    x[0, 5, 3, 0] = float("inf")
    x = x.contiguous(memory_format=fmt)
    y, ref = LocalResponseNorm(5)(x), F.local_response_norm(x, 5)
    assert torch.equal(y.isnan(), ref.isnan())


def test_other_dtypes_and_dilation_fall_back_to_torch():
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64)
    assert torch.equal(MaxPool2d(3, 2)(x), F.max_pool2d(x, 3, 2))
    x32 = x.float()
    assert torch.equal(MaxPool2d(3, 2, dilation=2)(x32), F.max_pool2d(x32, 3, 2, dilation=2))
    y, idx = MaxPool2d(2, return_indices=True)(x32)
    assert idx.dtype == torch.int64
    assert torch.allclose(LocalResponseNorm(3)(x), F.local_response_norm(x, 3))


def test_max_pool_kernel_wider_than_input_ceil_mode():
    """ceil_mode: a kernel wider than the padded input still has its one window (as in torch)."""
    x = torch.randn(2, 2, 3, 2)
    ref = F.max_pool2d(x, [4, 3], [1, 2], [1, 0], ceil_mode=True)
    assert ref.shape == (2, 2, 2, 1)
    assert torch.equal(MaxPool2d([4, 3], [1, 2], [1, 0], ceil_mode=True)(x), ref)


def test_huge_stride_and_lrn_size():
    """A stride of 2^30 (one output column) and an LRN window of 10^12 channels: legal, and sized
    by what they touch (the pooling scratch once grew with the stride; an LRN window that long
    would be a loop and a buffer of 10^12)."""
    x = torch.randn(2, 3, 6, 7)
    ref = F.max_pool2d(x, (2, 3), (2, 2**30))
    assert ref.shape[-1] == 1
    assert torch.equal(MaxPool2d((2, 3), (2, 2**30))(x), ref)
    size, alpha = 10**12, 0.3
    for fmt in (torch.contiguous_format, torch.channels_last):
        xf = x.contiguous(memory_format=fmt)
        # every window covers every channel: torch's LRN of 2c + 1 channels with the same alpha / size
        want = F.local_response_norm(xf, 7, alpha * 7 / size, 0.75, 1.0)
        assert torch.allclose(LocalResponseNorm(size, alpha, 0.75, 1.0)(xf), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("call, match", [
    (lambda o: _core.max_pool2d(torch.randn(1, 2, 5, 5), o, [3, 3], [0, 1], [0, 0], False, 1), "positive"),
    (lambda o: _core.max_pool2d(torch.randn(1, 2, 5, 5), o, [3, 3], [1, 1], [2, 0], False, 1), "padding"),
    (lambda o: _core.max_pool2d(torch.randn(1, 2, 2, 5), o, [3, 3], [1, 1], [0, 0], False, 1), "smaller than the kernel"),
    (lambda o: _core.max_pool2d(torch.randn(1, 2, 5, 5), o, [3, 3], [1, 1], [0, 0], False, 1), "out has shape"),
    (lambda o: _core.max_pool2d(torch.randn(1, 2, 10, 5)[:, :, ::2], o, [3, 3], [1, 1], [0, 0], False, 1), "contiguous"),
    (lambda o: _core.max_pool2d(torch.randn(2, 5, 5), o, [3, 3], [1, 1], [0, 0], False, 1), "4-D"),
    (lambda o: _core.local_response_norm(torch.randn(1, 2, 5, 5), torch.empty(1, 2, 5, 4), 3, 1e-4, 0.75, 1.0, 1), "shape"),
    (lambda o: _core.local_response_norm(torch.randn(1, 2, 5, 5), torch.empty(1, 2, 5, 5), 0, 1e-4, 0.75, 1.0, 1), "size"),
    (lambda o: _core.local_response_norm(torch.randn(1, 2, 5, 5), torch.empty(1, 2, 5, 5), 3, float("nan"), 0.75, 1.0, 1), "finite"),
])
def test_core_rejects_bad_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(torch.empty(1, 2, 2, 2))


def test_raw_op_rejects_bad_dtype():
    with pytest.raises(TypeError, match="float32"):
        torch.ops.sparsecnn.max_pool2d(torch.randn(1, 1, 4, 4, dtype=torch.float64), [2, 2], [2, 2], [0, 0], False)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_opcheck_pool_and_lrn(fmt):
    x = torch.randn(2, 3, 9, 8).contiguous(memory_format=fmt).requires_grad_(True)
    for op, args in [(torch.ops.sparsecnn.max_pool2d.default, (x, [3, 2], [2, 1], [1, 0], True)),
                     (torch.ops.sparsecnn.local_response_norm.default, (x, 5, 1e-2, 0.75, 1.0))]:
        result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), result


def test_sparsify_swaps_pooling_and_lrn_and_compiles():
    from sparsecnn.models import caffenet

    torch.manual_seed(0)
    m = caffenet(num_classes=10).eval()
    x = torch.randn(2, 3, 227, 227)
    fast, rep = sparsecnn.sparsify(m, x, policy="all")
    assert rep.fast_ops == ["pool1", "norm1", "pool2", "norm2", "pool5"]
    assert type(fast.pool1) is MaxPool2d and type(fast.norm2) is LocalResponseNorm
    with torch.no_grad():
        ref = m(x)
        assert (fast(x) - ref).abs().max() <= 1e-4 * ref.abs().max()
        ep = torch.export.export(fast, (x,))
        assert (ep.module()(x) - ref).abs().max() <= 1e-4 * ref.abs().max()
    keep, rep_none = sparsecnn.sparsify(m, x, policy="none")
    assert rep_none.fast_ops == [] and type(keep.pool1) is nn.MaxPool2d
