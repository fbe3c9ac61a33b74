"""Output memory format: the ops give the strides torch's own ops give (channels-last stays
channels-last), in eager mode and in their fake kernels."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch._prims_common as prims
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

import sparsecnn
from sparsecnn import SparseConv2d, SparseWeight, sparse_conv2d
from sparsecnn.nn import LocalResponseNorm, MaxPool2d
from sparsecnn.ops.memory_format import suggests_channels_last
from conftest import assert_close, num_threads

CL = torch.channels_last


def strided_input(rng: random.Random) -> torch.Tensor:
    """A 4-D tensor with sizes 0-3 and random strides: permuted, sliced or as_strided views."""
    sizes = [rng.choice([0, 1, 1, 2, 3]) for _ in range(4)]
    if rng.random() < 0.5:
        perm = rng.choice(list(itertools.permutations(range(4))))
        t = torch.empty([sizes[p] for p in perm]).permute([perm.index(k) for k in range(4)])
        return t[..., ::2] if rng.random() < 0.3 else t
    strides = [rng.choice([0, 1, 2, 3, 4, 6, 8, 12, 24, 48, 72]) for _ in range(4)]
    return torch.empty(4096).as_strided(sizes, strides)


def test_rule_is_torchs():
    """suggests_channels_last against torch's own suggest_memory_format on 20000 stride patterns
    (size-0/1 dimensions, zero strides, permutations and slices included)."""
    rng = random.Random(0)
    seen = 0
    for _ in range(20000):
        t = strided_input(rng)
        expected = prims.suggest_memory_format(t) == CL
        assert suggests_channels_last(t) == expected, (tuple(t.shape), t.stride())
        seen += expected
    assert seen > 100  # the patterns do include channels-last ones


LAYOUTS = ("contiguous", "channels_last", "channels_last_sliced", "n1hw_channels", "c11")


def layout_input(n, c, h, w, layout, gen):
    if layout == "channels_last":
        return torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=CL)
    if layout == "channels_last_sliced":  # a channel window of a channels-last tensor
        return torch.randn(n, c + 2, h, w, generator=gen).contiguous(memory_format=CL)[:, 1 : 1 + c]
    if layout == "n1hw_channels":  # one channel of a channels-last tensor: NCHW-contiguous looking, yet
        return torch.randn(n, 3, h, w, generator=gen).contiguous(memory_format=CL)[:, 1:2].expand(n, c, h, w)
    if layout == "c11":  # 1x1 maps in channels-last: strides (C, 1, C, C)
        return torch.randn(n, c, 1, 1, generator=gen).contiguous(memory_format=CL)
    return torch.randn(n, c, h, w, generator=gen)


@settings(max_examples=250)
@given(
    n=st.integers(1, 17), c=st.integers(1, 5), o=st.integers(1, 6), k=st.integers(1, 3), s=st.integers(1, 2),
    p=st.integers(0, 1), hw=st.integers(3, 9), layout=st.sampled_from(LAYOUTS), relu=st.booleans(),
    residual=st.sampled_from([None, "contiguous", "channels_last"]), seed=st.integers(0, 2**31 - 1),
)
def test_conv_strides_match_conv2d(n, c, o, k, s, p, hw, layout, relu, residual, seed):
    """sparse_conv2d's output strides equal F.conv2d's for the same input, values as in float64,
    and the fake kernel declares the same strides."""
    gen = torch.Generator().manual_seed(seed)
    x = layout_input(n, c, hw, hw + 1, layout, gen)
    c = x.shape[1]
    if layout == "c11":  # 1x1 maps: 1x1 kernels
        k = 1
    wd = torch.randn(o, c, k, k, generator=gen) * (torch.rand(o, c, k, k, generator=gen) < 0.5)
    b = torch.randn(o, generator=gen)
    ref = F.conv2d(x, wd, b, s, p)
    res = None
    if residual:
        res = torch.randn(ref.shape, generator=gen)
        res = res.contiguous(memory_format=CL) if residual == "channels_last" else res
    sw = SparseWeight.from_dense(wd)
    with num_threads(2):
        y = sparse_conv2d(x, sw, b, stride=s, padding=p, relu=relu, residual=res)
    assert y.stride() == ref.stride()
    want = F.conv2d(x.double(), wd.double(), b.double(), s, p) + (0 if res is None else res.double())
    assert_close(y, torch.relu(want) if relu else want)
    with FakeTensorMode() as mode:
        fx = mode.from_tensor(x)
        fy = torch.ops.sparsecnn.sparse_conv2d(
            fx, mode.from_tensor(sw.values), mode.from_tensor(sw.col_idx), mode.from_tensor(sw.row_ptr),
            list(wd.shape), None, [s, s], [p] * 4, [1, 1], 1, relu, None if res is None else mode.from_tensor(res))
    assert fy.stride() == y.stride()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pool_and_lrn_strides_match_torch(layout):
    gen = torch.Generator().manual_seed(3)
    for n in (0, 1, 2, 16):
        x = layout_input(n, 6, 9, 8, layout, gen)
        pairs = [(MaxPool2d(3, 2, 1, ceil_mode=True)(x), F.max_pool2d(x, 3, 2, 1, ceil_mode=True)),
                 (LocalResponseNorm(5, 1e-2, 0.75, 1.0)(x), F.local_response_norm(x, 5, 1e-2, 0.75, 1.0))]
        # torch's LRN (elementwise ops) copies an empty input's strides, zeros included: not
        # compared at n = 0, where no element is stored
        for (y, ref), strides in zip(pairs, (True, n > 0)):
            assert not strides or y.stride() == ref.stride(), (n, layout)
            assert_close(y, ref.double())
        with FakeTensorMode() as mode:
            fx = mode.from_tensor(x)
            fp = torch.ops.sparsecnn.max_pool2d(fx, [3, 3], [2, 2], [1, 1], True)
            fl = torch.ops.sparsecnn.local_response_norm(fx, 5, 1e-2, 0.75, 1.0)
        assert fp.stride() == pairs[0][0].stride() and fl.stride() == pairs[1][0].stride()


@pytest.mark.parametrize("batch", [1, 16])
def test_channels_last_resnet_through_sparsify(batch):
    """A channels-last ResNet-50 converted by sparsify: its sparse convs compute in NCHW
    (keep_format=False: one conversion at conv1, none after) and the logits match; with
    keep_format=True every sparse conv (the fused residual ones too) returns channels-last, as
    the dense convs did, with the same logits."""
    from sparsecnn.models import resnet50

    torch.manual_seed(0)
    model = resnet50(num_classes=10).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(torch.rand_like(m.weight) < 0.3)
    model = model.to(memory_format=CL)
    x = torch.randn(batch, 3, 64, 64).contiguous(memory_format=CL)
    fast, rep = sparsecnn.sparsify(model, x, policy="all")
    assert any(r.residual_fused for r in rep.layers)
    convs = [m for m in fast.modules() if isinstance(m, SparseConv2d)]
    assert len(convs) == 53
    for keep in (False, True):
        seen = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(out)) for m in convs]
        for m in convs:
            m.keep_format = keep
        with torch.no_grad():
            y, ref = fast(x), model(x)
        for h in hooks:
            h.remove()
        assert len(seen) == 53
        if keep:
            assert all(suggests_channels_last(t) or min(t.shape[2:]) == 1 for t in seen)
        else:
            assert all(t.is_contiguous() for t in seen)
        assert (y - ref).abs().max() <= 1e-3 * ref.abs().max()
