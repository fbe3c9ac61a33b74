"""Direct sparse convolution (compiled core) against dense float64 ``F.conv2d``.

Covers: a hypothesis property test over random geometries for every ISA variant the CPU
supports, real pruned CaffeNet / ResNet-50 layers, 16-bit (read as unsigned) and 32-bit column
indices, empty / unbatched inputs, NaN/Inf propagation, concurrency, thread-count determinism
and the error messages for bad input.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsecnn
from sparsecnn import SparseWeight, sparse_conv2d
from sparsecnn.ops.conv import resolve_padding
from sparsecnn.ops.memory_format import suggests_channels_last
from conftest import assert_close, num_threads

SRC = str(Path(sparsecnn.__file__).resolve().parents[1])

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def random_weight(shape, density, gen, dtype=torch.float32):
    """A dense weight with about ``density`` nonzeros (density 1: no zeros at all)."""
    w = torch.randn(shape, generator=gen, dtype=dtype)
    if density >= 1:
        return torch.where(w == 0, torch.ones_like(w), w)
    mask = torch.rand(shape, generator=gen) < density
    return w * mask




def pad4(padding, kernel, stride, dilation):
    return resolve_padding(padding, tuple(kernel), tuple(stride), tuple(dilation))


def dense_ref(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, relu=False):
    """float64 reference; ``padding`` in any form sparse_conv2d accepts."""
    s = (stride, stride) if isinstance(stride, int) else tuple(stride)
    d = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
    t, b, l, r = pad4(padding, w.shape[2:], s, d)
    xp = F.pad(x.double().contiguous(), (l, r, t, b))
    y = F.conv2d(xp, w.double(), None if bias is None else bias.double(), s, 0, d, groups)
    return torch.relu(y) if relu else y


def unfold_ref(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, relu=False):
    """float64 reference by explicit im2col + matmul (much faster than float64 ``F.conv2d`` on
    dilated / channels-last shapes, which take torch's slow paths); used by the property test."""
    s = (stride, stride) if isinstance(stride, int) else tuple(stride)
    d = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
    kh, kw = w.shape[2:]
    t, b, l, r = pad4(padding, (kh, kw), s, d)
    n, c, h, wd = x.shape
    xp = F.pad(x.double().contiguous(), (l, r, t, b))
    oh = (h + t + b - d[0] * (kh - 1) - 1) // s[0] + 1
    ow = (wd + l + r - d[1] * (kw - 1) - 1) // s[1] + 1
    cols = F.unfold(xp, (kh, kw), dilation=d, stride=s)  # (N, C*kh*kw, L)
    o = w.shape[0]
    cols = cols.view(n, groups, (c // groups) * kh * kw, oh * ow)
    wg = w.double().reshape(groups, o // groups, -1)
    y = torch.einsum("gok,ngkl->ngol", wg, cols).reshape(n, o, oh, ow)
    if bias is not None:
        y = y + bias.double().view(1, o, 1, 1)
    return torch.relu(y) if relu else y


def make_layout(x_shape, layout, gen):
    """An input of shape ``x_shape`` in the given memory layout (values random)."""
    n, c, h, w = x_shape
    if layout == "contiguous":
        x = torch.randn(x_shape, generator=gen)
    elif layout == "channels_last":
        x = torch.randn(x_shape, generator=gen).contiguous(memory_format=torch.channels_last)
    elif layout == "sliced_w":  # every other column: stride 2 in W
        x = torch.randn(n, c, h, 2 * w + 1, generator=gen)[..., 1::2]
    elif layout == "sliced_c":  # a channel window: non-dense batch stride
        x = torch.randn(n, c + 3, h, w, generator=gen)[:, 2 : 2 + c]
    elif layout == "sliced_n":  # every other image
        x = torch.randn(2 * n, c, h, w, generator=gen)[::2]
    elif layout == "transposed":  # H and W swapped in memory
        x = torch.randn(n, c, w, h, generator=gen).transpose(2, 3)
    else:  # pragma: no cover
        raise AssertionError(layout)
    assert tuple(x.shape) == tuple(x_shape)
    if layout != "contiguous" and x.numel() > 1 and min(x_shape) > 1:
        assert not x.is_contiguous()
    return x


# --------------------------------------------------------------------------------------------
# property test
# --------------------------------------------------------------------------------------------

DENSITIES = (0.0, 1e-3, 0.1, 0.5, 1.0)
LAYOUTS = ("contiguous", "channels_last", "sliced_w", "sliced_c", "sliced_n", "transposed")


@st.composite
def conv_configs(draw):
    # 5+: a partial block of images; 8+ / 16+: the batch-lanes kernel (AVX2 / AVX-512 width),
    # with a remainder for the per-image kernel
    n = draw(st.one_of(st.integers(1, 4), st.integers(5, 9), st.integers(16, 18)))
    depthwise = draw(st.booleans())
    if depthwise:
        c = draw(st.integers(1, 6))
        groups, cg, o = c, 1, c * draw(st.integers(1, 2))
    else:
        groups = draw(st.sampled_from([1, 1, 2, 3]))
        cg = draw(st.integers(1, 4))
        c = cg * groups
        o = groups * draw(st.integers(1, 5))
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pmode = draw(st.sampled_from(["int", "pair", "four", "same", "valid"]))
    if pmode == "same":
        sh = sw = 1
    else:
        sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if pmode == "int":
        padding = draw(st.integers(0, 3))
    elif pmode == "pair":
        padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    elif pmode == "four":
        padding = tuple(draw(st.integers(0, 4)) for _ in range(4))
    else:
        padding = pmode
    t, b, l, r = pad4(padding, (kh, kw), (sh, sw), (dh, dw))
    ekh, ekw = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    # choose the output size (1x1 outputs often), derive the input size from it
    oh = draw(st.one_of(st.just(1), st.integers(1, 12)))
    ow = draw(st.one_of(st.just(1), st.integers(1, 24)))
    h = max(1, (oh - 1) * sh + ekh - t - b + draw(st.integers(0, sh - 1)))
    w = max(1, (ow - 1) * sw + ekw - l - r + draw(st.integers(0, sw - 1)))
    return dict(
        n=n, c=c, o=o, cg=cg, groups=groups, kernel=(kh, kw), h=h, w=w,
        stride=draw(st.sampled_from([(sh, sw), sh])) if sh == sw else (sh, sw),
        dilation=draw(st.sampled_from([(dh, dw), dh])) if dh == dw else (dh, dw),
        padding=padding,
        density=draw(st.sampled_from(DENSITIES)),
        bias=draw(st.booleans()),
        relu=draw(st.booleans()),
        residual=draw(st.sampled_from([None, None, "contiguous", "channels_last"])),
        layout=draw(st.sampled_from(LAYOUTS)),
        pass_groups=draw(st.booleans()),
        # mostly one thread: tiny problems on contended cores spend their time spin-waiting
        threads=draw(st.sampled_from([1, 1, 1, 2])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@settings(max_examples=600)
@given(cfg=conv_configs())
def test_conv_matches_dense_random(isa, cfg):
    gen = torch.Generator().manual_seed(cfg["seed"])
    wd = random_weight((cfg["o"], cfg["cg"], *cfg["kernel"]), cfg["density"], gen)
    sw = SparseWeight.from_dense(wd, groups=cfg["groups"])
    x = make_layout((cfg["n"], cfg["c"], cfg["h"], cfg["w"]), cfg["layout"], gen)
    bias = torch.randn(cfg["o"], generator=gen) if cfg["bias"] else None
    kw = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"])
    groups_arg = cfg["groups"] if cfg["pass_groups"] else 1
    with num_threads(1):
        ref = unfold_ref(x, wd, bias, groups=cfg["groups"], **kw)
    res = None
    if cfg["residual"]:  # a fused residual connection: relu(conv + bias + residual)
        res = torch.randn(ref.shape, generator=gen)
        if cfg["residual"] == "channels_last":
            res = res.contiguous(memory_format=torch.channels_last)
        ref = ref + res.double()
    if cfg["relu"]:
        ref = torch.relu(ref)
    with num_threads(cfg["threads"]):
        y = sparse_conv2d(x, sw, bias, groups=groups_arg, relu=cfg["relu"], residual=res, **kw)
    assert_close(y, ref)
    # dense, in the format torch's conv2d gives (exact strides against it: test_memory_format.py)
    assert y.is_contiguous(memory_format=torch.channels_last if suggests_channels_last(x) else torch.contiguous_format)
    if cfg["relu"]:
        assert (y >= 0).all()


@pytest.mark.parametrize("stride, padding, dilation, groups", [(1, 0, 1, 1), ((2, 3), (1, 0, 2, 1), (2, 1), 2), (1, "same", 3, 4)])
def test_unfold_reference_matches_conv2d(stride, padding, dilation, groups):
    gen = torch.Generator().manual_seed(0)
    w = random_weight((8, 4 // groups, 3, 2), 0.5, gen)
    x = torch.randn(2, 4, 11, 9, generator=gen)
    b = torch.randn(8, generator=gen)
    a = unfold_ref(x, w, b, stride, padding, dilation, groups, relu=True)
    ref = dense_ref(x, w, b, stride, padding, dilation, groups, relu=True)
    assert a.shape == ref.shape
    assert torch.allclose(a, ref, atol=1e-12)


# --------------------------------------------------------------------------------------------
# explicit layers
# --------------------------------------------------------------------------------------------


def test_caffenet_conv1_like(isa):
    """11x11 stride 4 on 3 channels (CaffeNet conv1 geometry), random 30% dense weight."""
    gen = torch.Generator().manual_seed(1)
    wd = random_weight((96, 3, 11, 11), 0.3, gen)
    b = torch.randn(96, generator=gen)
    x = torch.randn(2, 3, 227, 227, generator=gen)
    y = sparse_conv2d(x, SparseWeight.from_dense(wd), b, stride=4, relu=True)
    assert y.shape == (2, 96, 55, 55)
    assert_close(y, dense_ref(x, wd, b, stride=4, relu=True))


def _pruned(set_name):
    from sparsecnn.models.pruned import load_pruned_layers

    try:
        return load_pruned_layers(set_name)
    except (FileNotFoundError, KeyError) as e:  # data set not shipped with this checkout
        pytest.skip(f"pruned set {set_name} not available: {e}")


CAFFE_LAYERS = {  # name: (groups, input hw, padding)
    "conv2": (2, 27, 2),
    "conv3": (1, 13, 1),
    "conv4": (2, 13, 1),
    "conv5": (2, 13, 1),
}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("layer", sorted(CAFFE_LAYERS))
def test_caffenet_pruned_layers(isa, layer, batch):
    wd = _pruned("caffenet_l1_acc56.3")[layer]
    groups, hw, pad = CAFFE_LAYERS[layer]
    sw = SparseWeight.from_dense(wd, groups=groups)
    assert 0 < sw.density < 0.6
    assert torch.equal(sw.to_dense(), wd)
    gen = torch.Generator().manual_seed(sorted(CAFFE_LAYERS).index(layer) * 10 + batch)
    x = torch.relu(torch.randn(batch, wd.shape[1] * groups, hw, hw, generator=gen))
    b = torch.randn(wd.shape[0], generator=gen)
    y = sparse_conv2d(x, sw, b, padding=pad, relu=True)
    assert y.shape == (batch, wd.shape[0], hw, hw)
    assert_close(y, dense_ref(x, wd, b, padding=pad, groups=groups, relu=True))


@pytest.mark.parametrize("layer", ["conv2", "conv5"])
def test_caffenet_pruned_layers_batch_lanes(isa, layer):
    """Batches of 16+ images: whole blocks run the batch-lanes kernel, the rest the per-image one."""
    wd = _pruned("caffenet_l1_acc56.3")[layer]
    groups, hw, pad = CAFFE_LAYERS[layer]
    sw = SparseWeight.from_dense(wd, groups=groups)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(17, wd.shape[1] * groups, hw, hw, generator=gen)
    b = torch.randn(wd.shape[0], generator=gen)
    res = torch.randn(17, wd.shape[0], hw, hw, generator=gen)
    with num_threads(2):
        y = sparse_conv2d(x, sw, b, padding=pad, relu=True, residual=res)
    assert_close(y, torch.relu(dense_ref(x, wd, b, padding=pad, groups=groups) + res.double()))


@pytest.mark.parametrize("n, c, o, hw, k, pad, dil, groups, relu", [
    (16, 5, 7, 9, 3, 1, 1, 1, False),      # one block, R rows x P pixels tiles with row remainder
    (32, 4, 6, 20, 3, (0, 2, 1, 0), 1, 2, True),  # two blocks, asymmetric padding, several pixel chunks
    (18, 3, 3, 11, 5, 4, 2, 3, True),      # dilation, depthwise-like groups, remainder of 2 images
    (16, 2, 4, 5, 1, 1, 1, 1, False),      # 1x1 with padding
    (16, 3, 2, 3, 3, 0, 1, 1, True),       # a single output pixel per image
    (16, 3, 4, 14, 3, 1, 1, 1, True),      # rows of 17 pixels: one tile per row, two transposes
    (16, 2, 3, 56, 3, 1, 1, 1, False),     # 56 + 3 = 59 wide rows: three chunks of 19-20 pixels
])
def test_batch_lanes_shapes(isa, n, c, o, hw, k, pad, dil, groups, relu):
    gen = torch.Generator().manual_seed(n * 100 + c)
    wd = random_weight((o * groups, c, k, k), 0.4, gen)
    sw = SparseWeight.from_dense(wd, groups=groups)
    x = torch.randn(n, c * groups, hw, hw + 3, generator=gen)
    b = torch.randn(o * groups, generator=gen)
    for threads in (1, 2):
        with num_threads(threads):
            y = sparse_conv2d(x, sw, b, padding=pad, dilation=dil, relu=relu)
        assert_close(y, unfold_ref(x, wd, b, padding=pad, dilation=dil, groups=groups, relu=relu))


@pytest.mark.parametrize("n, c, o, hw, k, stride, pad, dil, groups", [
    (16, 16, 8, (14, 14), (3, 3), 2, 1, 1, 1),         # 2 x 2 phases, ResNet's strided 3x3
    (33, 3, 8, (39, 41), (11, 11), 4, 0, 1, 1),        # CaffeNet conv1-like: 4 x 4 phases, 2 blocks + 1
    (16, 12, 6, (17, 19), (3, 5), (3, 2), (2, 0, 1, 3), (2, 1), 2),  # dilation: phases (0, 2, 1) of 3 rows
    (16, 8, 4, (15, 16), (4, 4), (2, 3), 1, 1, 1),     # even kernel, different strides
    (16, 64, 8, (56, 56), (2, 2), 4, 0, 1, 1),         # stride 4 > kernel: one of four phases per axis
    (16, 256, 4, (28, 28), (3, 3), 2, 1, 1, 1),        # 256 channels: 14-pixel rows split in 2 (L2 footprint)
])
def test_batch_lanes_strided(isa, n, c, o, hw, k, stride, pad, dil, groups):
    """Strided layers with >= 128 nonzeros per output channel take the batch-lanes kernel, the
    input split into its stride phases; against conv2d in float64, 1 and 2 threads."""
    gen = torch.Generator().manual_seed(n + c + o)
    wd = random_weight((o * groups, c, *k), 1.0, gen)
    assert wd.count_nonzero() / wd.shape[0] >= 128
    sw = SparseWeight.from_dense(wd, groups=groups)
    x = torch.randn(n, c * groups, *hw, generator=gen)
    b = torch.randn(o * groups, generator=gen)
    xp = F.pad(x, pad if isinstance(pad, tuple) and len(pad) == 4 else (pad,) * 4)
    pair = (lambda v: [v, v] if isinstance(v, int) else list(v))
    plan = sparsecnn._core.conv2d_plan(n, c * groups, xp.shape[2], xp.shape[3], o * groups, c, k[0], k[1], groups,
                                       pair(stride), [0, 0, 0, 0], pair(dil), 2, 1.0)
    assert plan["lanes_images"] == n // plan["vector_width"] * plan["vector_width"]
    for threads in (1, 2):
        with num_threads(threads):
            y = sparse_conv2d(xp, sw, b, stride=stride, dilation=dil, groups=groups, relu=True)
        assert_close(y, dense_ref(xp, wd, b, stride=stride, dilation=dil, groups=groups).clamp_min(0))


@pytest.mark.parametrize("width", [17, 27, 59])
def test_batch_lanes_wide_rows_with_residual(isa, width):
    """Rows wider than one transpose (P > W) store in groups of W, residual and ReLU fused."""
    gen = torch.Generator().manual_seed(width)
    wd = random_weight((6, 4, 3, 3), 0.3, gen)
    sw = SparseWeight.from_dense(wd)
    x = torch.randn(16, 4, 5, width, generator=gen)
    b = torch.randn(6, generator=gen)
    res = torch.randn(16, 6, 5, width, generator=gen)
    with num_threads(2):
        y = sparse_conv2d(x, sw, b, padding=1, relu=True, residual=res)
    assert_close(y, torch.relu(dense_ref(x, wd, b, padding=1) + res.double()))


@pytest.mark.parametrize("c, o, groups, density", [
    (256, 64, 1, 1.0),    # 147K nonzeros
    (256, 256, 2, 0.5),   # groups: columns are local to a group
])
def test_batch_lanes_offsets_pass_split_over_threads(isa, c, o, groups, density):
    """From 2^17 nonzeros the batch-lanes kernel turns columns into input offsets on all threads
    (kParallelOffsets, csrc/conv_lanes.cpp); the result must not depend on it. (32-bit columns,
    > 65536 per group, never take the batch-lanes kernel: a tile's input would exceed any L2.)"""
    gen = torch.Generator().manual_seed(c + o)
    wd = random_weight((o, c // groups, 3, 3), density, gen)
    sw = SparseWeight.from_dense(wd, groups=groups)
    assert sw.nnz >= 1 << 17
    plan = sparsecnn._core.conv2d_plan(16, c, 4, 5, o, c // groups, 3, 3, groups, [1, 1], [1, 1, 1, 1], [1, 1], 2,
                                       density)
    assert plan["lanes_images"] == 16 // plan["vector_width"] * plan["vector_width"]
    x = torch.randn(16, c, 4, 5, generator=gen)
    b = torch.randn(o, generator=gen)
    ref = dense_ref(x, wd, b, padding=1, groups=groups)
    for threads in (1, 2):
        with num_threads(threads):
            y = sparse_conv2d(x, sw, b, padding=1, groups=groups)
        assert_close(y, ref)


def test_batch_lanes_input_channel_chunks_by_default(tmp_path):
    """By default (SPARSECNN_LANES_CHUNK unset = auto) rows dense enough over many channels are
    swept in L1-sized channel chunks, partial sums kept between them (csrc/conv_lanes.cpp);
    every ISA, 1 and 2 threads, residual and ReLU fused, against conv2d in float64."""
    from sparsecnn.perf import LayerSpec

    for groups in (1, 2):
        spec = LayerSpec("c", "conv", 64 * groups, 24 * groups, (3, 3), padding=(1, 1), groups=groups,
                         input_hw=(13, 13))
        assert spec.kernel_work(16, 2)["chunk_density"] < 0.6  # both densities below are chunked
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent("""
        import sys, torch, sparsecnn
        from sparsecnn import ops
        g = torch.Generator().manual_seed(0)
        out = {}
        for density, groups in ((0.6, 1), (1.0, 2)):
            w = torch.randn(24 * groups, 64, 3, 3, generator=g)
            w = w * (torch.rand(w.shape, generator=g) < density)
            x = torch.randn(16, 64 * groups, 13, 13, generator=g)
            b = torch.randn(24 * groups, generator=g)
            r = torch.randn(16, 24 * groups, 13, 13, generator=g)
            sw = sparsecnn.SparseWeight.from_dense(w, groups=groups)
            for isa in ("avx512", "avx2", "portable"):
                if not ops.isa_supported(isa):
                    continue
                with ops.use_isa(isa):
                    for threads in (1, 2):
                        torch.set_num_threads(threads)
                        y = sparsecnn.sparse_conv2d(x, sw, b, padding=1, relu=True, residual=r)
                        out[(density, groups, isa, threads)] = (w, x, b, r, y)
        torch.save(out, sys.argv[1])
    """))
    path = tmp_path / "out.pt"
    env = {k: v for k, v in os.environ.items() if k != "SPARSECNN_LANES_CHUNK"}
    subprocess.run([sys.executable, str(script), str(path)], check=True, env=env)
    results = torch.load(path)
    assert len(results) >= 4
    for (density, groups, isa, threads), (w, x, b, r, y) in results.items():
        assert_close(y, torch.relu(dense_ref(x, w, b, padding=1, groups=groups) + r.double()))


def test_per_image_input_channel_chunks_by_default(isa):
    """By default the per-image kernel sweeps rows dense enough over many channels in L1-sized
    channel chunks where its tiles cover part of each plane (csrc/conv_pixels.cpp): batch 1
    (row mode) and 3, 1 and 2 threads, residual and ReLU fused, against conv2d in float64.
    20x20 maps: at 28x28 an AVX-512 tile's slice of one channel is so wide that a 32 KiB L1
    (Zen 4) holds 4 channels, too few for the chunks to pay below density 1."""
    from sparsecnn.perf import LayerSpec

    gen = torch.Generator().manual_seed(3)
    for groups in (1, 2):
        spec = LayerSpec("c", "conv", 64 * groups, 24 * groups, (3, 3), padding=(1, 1), groups=groups,
                         input_hw=(20, 20))
        for batch in (1, 3):
            if "SPARSECNN_PIXELS_CHUNK" not in os.environ:
                assert spec.kernel_work(batch, 2, 0.9)["pixel_chunked"]
            w = torch.randn(24 * groups, 64, 3, 3, generator=gen)
            w = w * (torch.rand(w.shape, generator=gen) < 0.9)
            x = torch.randn(batch, 64 * groups, 20, 20, generator=gen)
            b = torch.randn(24 * groups, generator=gen)
            r = torch.randn(batch, 24 * groups, 20, 20, generator=gen)
            sw = SparseWeight.from_dense(w, groups=groups)
            ref = torch.relu(dense_ref(x, w, b, padding=1, groups=groups) + r.double())
            for threads in (1, 2):
                with num_threads(threads):
                    y = sparse_conv2d(x, sw, b, padding=1, groups=groups, relu=True, residual=r)
                assert_close(y, ref)


def test_per_image_chunks_on_strided_layers(isa):
    """A stride-2 3x3 layer's tiles read four phase planes, so the per-image kernel chunks its
    channels from a lower density than at stride 1 (csrc/conv_pixels.cpp): by default at
    density 0.7 here (AVX-512 with a 32 KiB L1 chunks batch 3 from 0.56), batch 1 (row mode)
    and 3, 1 and 2 threads, against conv2d in float64."""
    from sparsecnn.perf import LayerSpec

    gen = torch.Generator().manual_seed(5)
    spec = LayerSpec("s2", "conv", 96, 40, (3, 3), stride=(2, 2), padding=(1, 1), input_hw=(40, 40))
    flat = LayerSpec("s1", "conv", 96, 40, (3, 3), padding=(1, 1), input_hw=(20, 20))
    for batch in (1, 3):
        if "SPARSECNN_PIXELS_CHUNK" not in os.environ:
            w = spec.kernel_work(batch, 2, 0.7)
            assert w["pixel_chunked"]
            assert w["pixel_chunk_density"] < flat.kernel_work(batch, 2, 0.7)["pixel_chunk_density"]
        check_stride2_relu(gen, 40, 96, batch, 40, density=0.7)


def check_stride2_relu(gen, out_ch, in_ch, batch, hw, density=0.3):
    """A random 3x3 stride-2 layer with bias and fused ReLU on 1 and 2 threads against conv2d
    in float64."""
    w = torch.randn(out_ch, in_ch, 3, 3, generator=gen)
    w = w * (torch.rand(w.shape, generator=gen) < density)
    x = torch.randn(batch, in_ch, hw, hw, generator=gen)
    b = torch.randn(out_ch, generator=gen)
    sw = SparseWeight.from_dense(w)
    ref = torch.relu(dense_ref(x, w, b, stride=2, padding=1))
    for threads in (1, 2):
        with num_threads(threads):
            y = sparse_conv2d(x, sw, b, stride=2, padding=1, relu=True)
        assert_close(y, ref)


def test_batch_lanes_tile_beyond_the_l2(isa):
    """Where no batch-lanes tile's input fits the L2 (many channels, stride 2: ResNet-50
    layer4.0.conv2), the smallest tile runs anyway (csrc/conv_lanes.cpp) rather than the
    per-image kernel: batch 16, 1 and 2 threads, against conv2d in float64."""
    from sparsecnn.perf import LayerSpec
    from sparsecnn.perf.probe import cache_sizes

    def spec(cin):
        return LayerSpec("s", "conv", cin, 16, (3, 3), stride=(2, 2), padding=(1, 1), input_hw=(14, 14))

    l2 = cache_sizes()["l2"]
    cin = 64
    while spec(cin).kernel_work(16, 2, 0.3)["footprint"] <= l2 and cin < 8192:
        cin *= 2
    plan = spec(cin).kernel_work(16, 2, 0.3)
    assert plan["footprint"] > l2
    if "SPARSECNN_BATCH_LANES" not in os.environ:
        assert plan["lanes_images"] == 16 // plan["vector_width"] * plan["vector_width"]
    check_stride2_relu(torch.Generator().manual_seed(6), 16, cin, 16, 14)


@pytest.mark.parametrize("var, on, off, batch", [
    ("SPARSECNN_BATCH_LANES", "1", "0", 16),  # batch-lanes kernel vs per-image kernel only
    ("SPARSECNN_LANES_CHUNK", "3", "0", 16),  # input-channel chunks of 3 channels vs none
    ("SPARSECNN_SCHEDULE", "local", "shared", 16),  # bands vs one layout shared by the threads
    ("SPARSECNN_PIXELS_CHUNK", "3", "0", 1),  # the per-image kernel's chunks of 3 channels vs none
    ("SPARSECNN_PIXELS_CHUNK", "3", "0", 3),
])
def test_kernel_switch_gives_same_results(tmp_path, var, on, off, batch):
    """The environment switches of the kernels change the path, not the result."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, torch, sparsecnn\n"
        "g = torch.Generator().manual_seed(0)\n"
        "w = torch.randn(8, 10, 3, 3, generator=g) * (torch.rand(8, 10, 3, 3, generator=g) < 0.3)\n"
        f"x = torch.randn({batch}, 10, 12, 12, generator=g)\n"
        "torch.save(sparsecnn.sparse_conv2d(x, sparsecnn.SparseWeight.from_dense(w), padding=1), sys.argv[1])\n"
    )
    outs = []
    for flag in (on, off):
        out = tmp_path / f"y{flag}.pt"
        subprocess.run([sys.executable, str(script), str(out)], check=True, env=dict(os.environ, **{var: flag}))
        outs.append(torch.load(out))
    assert (outs[0] - outs[1]).abs().max() <= 1e-5 * (1 + outs[1].abs().max())


@pytest.mark.parametrize("h, w, kernel, dilation, padding", [
    (1, 1, (2, 1), (1, 3), "same"),  # the case hypothesis found: planes of 2 x 1 floats
    (3, 2, (3, 1), 1, (1, 0)),  # planes of 5 x 2
    (2, 3, (3, 3), 1, 1),  # 4 x 5: the spill stays inside the plane
])
def test_narrow_planes_laid_out_by_several_tasks(isa, h, w, kernel, dilation, padding):
    """Planes of the per-image layout narrower than a vector, laid out by two threads: a row's
    whole-vector store must not reach past its plane into a channel another task has already
    laid out (it did until 2026-11-27: 1-wide maps lost a channel's first rows now and then;
    a race, hence the repeats)."""
    gen = torch.Generator().manual_seed(h * 10 + w)
    c = 3
    # one nonzero, in channel 0 (whose planes follow the previous image's last channel), on
    # the kernel's first row: sparse enough for the one layout all threads share (per-thread
    # copies would cost more than the FMAs)
    wd = torch.zeros(c, 1, *kernel)
    wd[0, 0, 0, 0] = 1.5
    sw = SparseWeight.from_dense(wd, groups=c)
    for n in (2, 3, 18):
        x = torch.randn(n, c, h, w, generator=gen)
        ref = unfold_ref(x, wd, groups=c, padding=padding, dilation=dilation)
        with num_threads(2):
            for _ in range(100):
                assert_close(sparse_conv2d(x, sw, groups=c, padding=padding, dilation=dilation), ref)


@pytest.mark.parametrize("schedule", ["local", "shared"])
def test_schedules_match_conv2d(tmp_path, schedule):
    """Both ways the threads share a call (SPARSECNN_SCHEDULE: bands / private layouts, or one
    shared layout; csrc/conv_internal.hpp) give conv2d's result: batch-lanes (16, 32 images) and
    per-image row mode (1, 3 images), 2 and 3 threads, strides, dilation, groups, uneven padding,
    maps down to one output row (bands cut inside a row tile, by output channel), a residual,
    and NaN/Inf in rows that only one band reads. The script saves its inputs and outputs;
    the float64 references are computed here."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent("""
        import sys, torch, sparsecnn
        g = torch.Generator().manual_seed(5)
        cases = [  # batch, cin, cout, k, hw, stride, padding, dilation, groups, density
            (16, 8, 12, (3, 3), (13, 13), 1, 1, 1, 2, 0.3),
            (32, 6, 10, (5, 5), (27, 11), 1, 2, 1, 1, 0.2),
            (16, 4, 8, (3, 3), (17, 15), 2, (1, 0, 2, 1), 1, 1, 0.9),
            (16, 6, 6, (3, 2), (9, 12), 3, 1, 2, 3, 0.6),
            (16, 5, 7, (3, 3), (3, 40), 1, 0, 1, 1, 0.5),  # one output row, 38 pixels
            (16, 4, 4, (3, 3), (4, 4), 1, 0, 1, 4, 1.0),  # depthwise, 2 x 2 output
            (1, 8, 12, (3, 3), (13, 13), 1, 1, 1, 2, 0.3),
            (3, 6, 10, (5, 5), (15, 9), 1, 2, 1, 1, 0.4),
            (1, 4, 8, (3, 3), (11, 10), 2, 1, 1, 1, 0.7),
        ]
        out = []
        for threads in (2, 3):
            torch.set_num_threads(threads)
            for n, cin, cout, k, hw, stride, pad, dil, groups, dens in cases:
                w = torch.randn(cout, cin // groups, *k, generator=g)
                w = w * (torch.rand(w.shape, generator=g) < dens)
                x = torch.randn(n, cin, *hw, generator=g)
                x[-1, 0, hw[0] - 1, 0] = float("inf")  # last rows: the last band only
                x[0, cin - 1, 0, hw[1] - 1] = float("nan")  # first rows: the first band only
                b = torch.randn(cout, generator=g)
                sw = sparsecnn.SparseWeight.from_dense(w, groups=groups)
                pads = pad if isinstance(pad, tuple) else (pad,) * 4
                xp = torch.nn.functional.pad(x, (pads[2], pads[3], pads[0], pads[1]))
                y0 = torch.nn.functional.conv2d(xp, w, b, stride=stride, dilation=dil, groups=groups)
                r = torch.randn(y0.shape, generator=g)
                y = sparsecnn.sparse_conv2d(xp, sw, b, stride=stride, dilation=dil, relu=True, residual=r)
                out.append((threads, xp, w, b, r, stride, dil, groups, y))
        torch.save(out, sys.argv[1])
    """))
    path = tmp_path / "out.pt"
    subprocess.run([sys.executable, str(script), str(path)], check=True,
                   env=dict(os.environ, SPARSECNN_SCHEDULE=schedule))
    results = torch.load(path)
    assert len(results) == 18
    with_nan = 0
    for threads, xp, w, b, r, stride, dil, groups, y in results:
        ref = torch.relu(dense_ref(xp, w, b, stride=stride, dilation=dil, groups=groups) + r.double())
        with_nan += bool(torch.isnan(ref).any())
        assert torch.equal(torch.isnan(y), torch.isnan(ref)), (threads, tuple(xp.shape), tuple(w.shape))
        fin = torch.isfinite(ref)
        assert_close(y[fin], ref[fin])
    assert with_nan >= 12  # (a strided window may skip the corner pixels)


RESNET_LAYERS = {  # name: (input hw, stride, padding)
    "layer1.0.conv1": (56, 1, 0),
    "layer1.0.conv2": (56, 1, 1),
    "layer2.0.conv2": (56, 2, 1),
    "layer2.0.downsample.0": (56, 2, 0),
}


@pytest.mark.parametrize("layer", sorted(RESNET_LAYERS))
def test_resnet50_pruned_layers(isa, layer):
    wd = _pruned("resnet50_dlmc_magnitude_pruning_0.9")[layer]
    hw, stride, pad = RESNET_LAYERS[layer]
    sw = SparseWeight.from_dense(wd)
    assert 0.02 < sw.density < 0.3
    gen = torch.Generator().manual_seed(7)
    x = torch.relu(torch.randn(2, wd.shape[1], hw, hw, generator=gen))
    y = sparse_conv2d(x, sw, stride=stride, padding=pad)
    assert y.shape == (2, wd.shape[0], (hw + 2 * pad - wd.shape[2]) // stride + 1, (hw + 2 * pad - wd.shape[3]) // stride + 1)
    assert_close(y, dense_ref(x, wd, stride=stride, padding=pad))


# --------------------------------------------------------------------------------------------
# column index width
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, hw, want_dtype",
    [
        ((4, 4096, 3, 3), (5, 6), torch.int16),  # 36864 columns: int16 read as unsigned
        ((2, 65536, 1, 1), (2, 3), torch.int16),  # exactly 65536 columns: last one is 0xFFFF
        ((2, 8192, 3, 3), (4, 5), torch.int32),  # 73728 columns: int32 path
    ],
)
def test_wide_column_indices(isa, shape, hw, want_dtype):
    gen = torch.Generator().manual_seed(3)
    wd = random_weight(shape, 0.05, gen)
    wd.view(shape[0], -1)[:, -1] = 1.5  # the highest column is used
    wd.view(shape[0], -1)[0, 40000 % wd[0].numel()] = -2.0
    sw = SparseWeight.from_dense(wd)
    assert sw.col_idx.dtype == want_dtype
    if want_dtype == torch.int16:
        assert (sw.col_idx < 0).any(), "columns >= 32768 must be stored as negative int16"
    assert torch.equal(sw.to_dense(), wd)
    x = torch.randn(2, shape[1], *hw, generator=gen)
    b = torch.randn(shape[0], generator=gen)
    for padding in (0, 1):
        y = sparse_conv2d(x, sw, b, padding=padding)
        assert_close(y, dense_ref(x, wd, b, padding=padding))


# --------------------------------------------------------------------------------------------
# shapes: empty batch, unbatched
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding, stride", [(0, 1), (1, 2), ("same", 1)])
def test_empty_batch(isa, padding, stride):
    wd = random_weight((6, 3, 3, 3), 0.5, torch.Generator().manual_seed(0))
    x = torch.randn(0, 3, 9, 8)
    y = sparse_conv2d(x, SparseWeight.from_dense(wd), torch.ones(6), stride=stride, padding=padding)
    ref = dense_ref(x, wd, torch.ones(6), stride=stride, padding=padding)
    assert y.shape == ref.shape and y.shape[0] == 0 and y.dtype == torch.float32


def test_zero_weight_gives_bias_only(isa):
    wd = torch.zeros(5, 2, 3, 3)
    b = torch.arange(5.0) - 2
    x = torch.randn(2, 2, 7, 7)
    sw = SparseWeight.from_dense(wd)
    assert sw.nnz == 0
    y = sparse_conv2d(x, sw, b, padding=1)
    assert torch.equal(y, b.view(1, 5, 1, 1).expand(2, 5, 7, 7))
    y = sparse_conv2d(x, sw, b, padding=1, relu=True)
    assert torch.equal(y, torch.relu(b).view(1, 5, 1, 1).expand(2, 5, 7, 7))


def test_unbatched_input(isa):
    gen = torch.Generator().manual_seed(5)
    wd = random_weight((8, 2, 3, 3), 0.3, gen)
    x = torch.randn(4, 10, 11, generator=gen)
    sw = SparseWeight.from_dense(wd, groups=2)
    y = sparse_conv2d(x, sw, stride=2, padding=1)
    ref = dense_ref(x.unsqueeze(0), wd, stride=2, padding=1, groups=2).squeeze(0)
    assert y.shape == (8, 5, 6)
    assert_close(y, ref)


# --------------------------------------------------------------------------------------------
# NaN / Inf
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(
    "density, stride, padding, dilation, groups",
    [
        (0.3, 1, 0, 1, 1),  # unpadded 3x3 (phased layout, no padding)
        (0.3, 1, 2, 1, 1),
        (0.0, 1, 1, 1, 1),  # all-zero weight: dense conv still gives NaN (0 * Inf)
        (0.2, 2, 1, 1, 2),
        (0.5, 3, (0, 2, 1, 0), 2, 1),
        (0.5, 1, "same", 1, 4),
    ],
)
@pytest.mark.parametrize("batch", [2, 16])  # 16: the batch-lanes kernel (its layout checks whole blocks)
def test_nonfinite_inputs_match_dense(isa, batch, density, stride, padding, dilation, groups, relu):
    gen = torch.Generator().manual_seed(11)
    wd = random_weight((8, 4 // groups, 3, 3), density, gen)
    x = torch.randn(batch, 4, 12, 13, generator=gen)
    x[-1, 3, 6, 12] = float("inf")  # the last image: the last lane of a block
    x[0, 0, 0, 0] = float("nan")  # corner: touched by padding windows
    x[0, 1, 5, 6] = float("inf")
    x[1, 2, 11, 12] = float("-inf")
    x[1, 3, 7, 0] = float("nan")
    x[1, 0, 3, 3] = float("inf")
    x[1, 0, 3, 4] = float("-inf")  # +Inf and -Inf in one window: NaN
    sw = SparseWeight.from_dense(wd, groups=groups)
    kw = dict(stride=stride, padding=padding, dilation=dilation, relu=relu)
    b = torch.randn(8, generator=gen)
    y = sparse_conv2d(x, sw, b, **kw)
    ref = dense_ref(x, wd, b, groups=groups, **kw)
    assert y.shape == ref.shape
    assert torch.isnan(ref).any()
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isposinf(y), torch.isposinf(ref))
    assert torch.equal(torch.isneginf(y), torch.isneginf(ref))
    fin = torch.isfinite(ref)
    assert_close(y[fin], ref[fin])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_nonfinite_direct_path_1x1(isa, layout):
    """1x1 stride-1 unpadded conv reads the input in place: NaN must still propagate."""
    gen = torch.Generator().manual_seed(12)
    wd = random_weight((6, 5, 1, 1), 0.3, gen)
    x = make_layout((1, 5, 6, 7), layout, gen)
    x[0, 2, 3, 3] = float("nan")
    x[0, 4, 0, 6] = float("inf")
    y = sparse_conv2d(x, SparseWeight.from_dense(wd))
    ref = dense_ref(x, wd)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.isnan(y[:, :, 3, 3]).all() and torch.isnan(ref[:, :, 3, 3]).all()


@pytest.mark.parametrize("layout", ["channels_last", "sliced_w", "transposed"])
def test_rows_not_contiguous_at_a_lanes_batch(isa, layout):
    """An input whose rows are not contiguous (channels-last, strided columns, H and W swapped)
    at a batch the batch-lanes kernel takes is copied to NCHW first (csrc/conv.cpp,
    copy_to_nchw), then runs as a contiguous one: the same result as conv2d in float64,
    a NaN and an Inf propagating, 1 and 2 threads; a batch of 17 leaves one image to the
    per-image kernel."""
    gen = torch.Generator().manual_seed(14)
    wd = random_weight((24, 20, 3, 3), 0.3, gen)
    b = torch.randn(24, generator=gen)
    for n in (16, 17):
        x = make_layout((n, 20, 11, 13), layout, gen)
        x[3, 5, 4, 6] = float("nan")
        x[9, 0, 10, 12] = float("inf")
        ref = dense_ref(x, wd, b, padding=1)
        for threads in (1, 2):
            with num_threads(threads):
                y = sparse_conv2d(x, SparseWeight.from_dense(wd), b, padding=1)
            assert torch.equal(torch.isnan(y), torch.isnan(ref))
            fin = torch.isfinite(ref)
            assert_close(y[fin], ref[fin])


def test_relu_of_nan_is_nan(isa):
    wd = torch.zeros(2, 1, 1, 1)
    wd[0] = 1.0
    x = torch.tensor([[[[float("nan"), -1.0, 2.0]]]])
    y = sparse_conv2d(x, SparseWeight.from_dense(wd), relu=True)
    assert torch.isnan(y[0, :, 0, 0]).all()  # channel 1 has weight 0: 0 * NaN = NaN too
    assert torch.equal(y[0, 0, 0, 1:], torch.tensor([0.0, 2.0]))
    assert torch.equal(y[0, 1, 0, 1:], torch.tensor([0.0, 0.0]))


# --------------------------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------------------------


def test_concurrent_python_threads(isa):
    gen = torch.Generator().manual_seed(21)
    configs = []
    for i in range(4):
        wd = random_weight((12, 6, 3, 3), 0.2 + 0.1 * i, gen)
        sw = SparseWeight.from_dense(wd)
        xs = [torch.randn(1 + (j % 3), 6, 9 + i, 10 + j % 4, generator=gen) for j in range(5)]
        refs = [dense_ref(x, wd, stride=1 + i % 2, padding=1).float() for x in xs]
        configs.append((sw, xs, refs, 1 + i % 2))

    def worker(i):
        sw, xs, refs, stride = configs[i]
        worst = 0.0
        for k in range(50):
            j = k % len(xs)
            y = sparse_conv2d(xs[j], sw, stride=stride, padding=1)
            assert y.shape == refs[j].shape
            worst = max(worst, (y - refs[j]).abs().max().item() / (1 + refs[j].abs().max().item()))
        return worst

    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(worker, range(4)))
    assert max(results) <= 1e-4, results


def test_thread_count_does_not_change_results(isa):
    gen = torch.Generator().manual_seed(31)
    wd = random_weight((64, 16, 3, 3), 0.2, gen)
    sw = SparseWeight.from_dense(wd)
    x = torch.randn(3, 16, 20, 21, generator=gen)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = sparse_conv2d(x, sw, padding=1, stride=(1, 2))
        torch.set_num_threads(2)
        y2 = sparse_conv2d(x, sw, padding=1, stride=(1, 2))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(y1, y2)
    assert_close(y1, dense_ref(x, wd, padding=1, stride=(1, 2)))


def test_repeated_calls_reuse_scratch_correctly(isa):
    """A large call followed by a small one (the scratch buffer is reused per thread)."""
    gen = torch.Generator().manual_seed(41)
    big = random_weight((8, 8, 5, 5), 0.3, gen)
    small = random_weight((3, 2, 3, 3), 0.5, gen)
    xb = torch.randn(2, 8, 40, 40, generator=gen)
    xs = torch.randn(1, 2, 5, 5, generator=gen)
    for _ in range(2):
        assert_close(sparse_conv2d(xb, SparseWeight.from_dense(big), padding=2), dense_ref(xb, big, padding=2))
        assert_close(sparse_conv2d(xs, SparseWeight.from_dense(small), padding=1), dense_ref(xs, small, padding=1))


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


@pytest.fixture
def sw33():
    wd = random_weight((4, 2, 3, 3), 0.5, torch.Generator().manual_seed(2))
    wd[0, 0, 0, 0] = 1.0
    return SparseWeight.from_dense(wd)


def _raw(x, sw, *, shape=None, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1, values=None, col=None, rp=None):
    return torch.ops.sparsecnn.sparse_conv2d(
        x,
        sw.values if values is None else values,
        sw.col_idx if col is None else col,
        sw.row_ptr if rp is None else rp,
        list(sw.shape if shape is None else shape),
        bias, list(stride), list(padding), list(dilation), groups, False,
    )


def test_error_float64_input(sw33):
    with pytest.raises(TypeError, match="float32"):
        sparse_conv2d(torch.randn(1, 2, 5, 5, dtype=torch.float64), sw33)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.float16, torch.bfloat16])
def test_error_non_float32_input(sw33, dtype):
    with pytest.raises(TypeError, match="float32"):
        sparse_conv2d(torch.ones(1, 2, 5, 5, dtype=dtype), sw33)


@pytest.mark.parametrize("shape", [(2, 5), (1, 1, 2, 5, 5), (5,)])
def test_error_wrong_rank(sw33, shape):
    with pytest.raises(ValueError, match="4-D"):
        sparse_conv2d(torch.randn(shape), sw33)


def test_error_non_tensor_input(sw33):
    with pytest.raises(TypeError, match="tensor"):
        sparse_conv2d([[1.0]], sw33)


def test_error_channel_mismatch(sw33):
    with pytest.raises(ValueError, match="input channels"):
        sparse_conv2d(torch.randn(1, 3, 5, 5), sw33)
    with pytest.raises(ValueError, match="input channels"):
        _raw(torch.randn(1, 3, 5, 5), sw33)


def test_error_groups():
    wd = torch.ones(4, 2, 3, 3)
    with pytest.raises(ValueError, match="divisible by groups"):
        SparseWeight.from_dense(wd, groups=3)
    sw2 = SparseWeight.from_dense(wd, groups=2)
    with pytest.raises(ValueError, match="packed with groups=2"):
        sparse_conv2d(torch.randn(1, 8, 5, 5), sw2, groups=4)
    with pytest.raises(ValueError, match="input channels"):  # weight groups=1, asked for 3
        sparse_conv2d(torch.randn(1, 4, 5, 5), SparseWeight.from_dense(wd), groups=3)
    # raw op: 4 output channels cannot be split into 3 groups (checked in the core)
    with pytest.raises(ValueError, match=r"output channels \(4\) not divisible by groups \(3\)"):
        _raw(torch.randn(1, 6, 5, 5), SparseWeight.from_dense(wd), groups=3)
    with pytest.raises(ValueError, match="input channels"):
        _raw(torch.randn(1, 2, 5, 5), SparseWeight.from_dense(wd), groups=0)


@pytest.mark.parametrize("padding", [-1, (1, -1), (0, 0, -2, 0)])
def test_error_negative_padding(sw33, padding):
    with pytest.raises(ValueError, match="negative padding"):
        sparse_conv2d(torch.randn(1, 2, 5, 5), sw33, padding=padding)


def test_error_negative_padding_raw(sw33):
    with pytest.raises(ValueError, match="negative padding"):
        _raw(torch.randn(1, 2, 5, 5), sw33, padding=(0, 0, -1, 0))


@pytest.mark.parametrize("stride", [0, -1, (1, 0), (-2, 1)])
def test_error_bad_stride(sw33, stride):
    with pytest.raises(ValueError, match="stride"):
        sparse_conv2d(torch.randn(1, 2, 5, 5), sw33, stride=stride)


def test_error_bad_stride_and_dilation_raw(sw33):
    with pytest.raises(ValueError, match="stride must be positive"):
        _raw(torch.randn(1, 2, 5, 5), sw33, stride=(0, 1))
    with pytest.raises(ValueError, match="dilation must be positive"):
        _raw(torch.randn(1, 2, 5, 5), sw33, dilation=(1, 0))
    with pytest.raises(ValueError, match="stride larger than 64"):
        _raw(torch.randn(1, 2, 5, 500), sw33, stride=(1, 65))
    with pytest.raises(ValueError, match="padding 4"):
        _raw(torch.randn(1, 2, 5, 5), sw33, padding=(1, 1))


def test_error_bad_dilation(sw33):
    with pytest.raises(ValueError, match="dilation"):
        sparse_conv2d(torch.randn(1, 2, 5, 5), sw33, dilation=0)


def test_error_same_padding_with_stride(sw33):
    with pytest.raises(ValueError, match="strided"):
        sparse_conv2d(torch.randn(1, 2, 9, 9), sw33, padding="same", stride=2)


def test_error_unknown_padding_string(sw33):
    with pytest.raises(ValueError, match="padding must be"):
        sparse_conv2d(torch.randn(1, 2, 9, 9), sw33, padding="full")
    with pytest.raises(ValueError, match="1, 2 or 4 values"):
        sparse_conv2d(torch.randn(1, 2, 9, 9), sw33, padding=(1, 1, 1))


@pytest.mark.parametrize("hw, dilation, padding", [((2, 5), 1, 0), ((5, 2), 1, 0), ((4, 4), 2, 0), ((1, 1), 1, (0, 1, 1, 1))])
def test_error_input_smaller_than_kernel(sw33, hw, dilation, padding):
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        sparse_conv2d(torch.randn(1, 2, *hw), sw33, dilation=dilation, padding=padding)


def test_zero_size_spatial_input_is_an_error(sw33):
    with pytest.raises(ValueError, match="height and width must be positive"):
        sparse_conv2d(torch.randn(1, 2, 0, 5), sw33, padding=2)


@pytest.mark.parametrize("bias", [torch.zeros(3), torch.zeros(5), torch.zeros(4, 1), torch.zeros(())])
def test_error_bias_shape(sw33, bias):
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        sparse_conv2d(torch.randn(1, 2, 5, 5), sw33, bias)


def test_error_bias_raw(sw33):
    with pytest.raises(ValueError, match="bias: expected 4 elements"):
        _raw(torch.randn(1, 2, 5, 5), sw33, bias=torch.zeros(3))
    with pytest.raises(TypeError, match="bias: expected dtype float32"):
        _raw(torch.randn(1, 2, 5, 5), sw33, bias=torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("residual, err, match", [
    (torch.zeros(1, 4, 3, 3), ValueError, "residual must have the output's shape"),
    (torch.zeros(2, 4, 5, 5), ValueError, "residual must have the output's shape"),
    (torch.zeros(4, 5, 5), ValueError, "residual must have the output's shape"),
    (torch.zeros(1, 4, 5, 5, dtype=torch.float64), TypeError, "residual must be float32"),
    ("r", TypeError, "residual must be a tensor"),
])
def test_error_residual(sw33, residual, err, match):
    x = torch.randn(1, 2, 7, 7)  # output (1, 4, 5, 5)
    with pytest.raises(err, match=match):
        sparse_conv2d(x, sw33, residual=residual)


def test_error_residual_raw_core(sw33):
    """The compiled core checks the residual itself (shape, dtype, layout), not only the op."""
    from sparsecnn import _core

    x = torch.randn(1, 2, 7, 7)
    out = torch.empty(1, 4, 5, 5)
    args = (x, sw33.values, sw33.col_idx, sw33.row_ptr, None, out, 4, 2, 3, 3, 1, [1, 1], [0, 0, 0, 0], [1, 1], False, 1)
    for bad, match in [(torch.zeros(1, 4, 5, 4), "residual: shape"), (torch.zeros(1, 4, 5, 10)[..., ::2], "contiguous"),
                       (torch.zeros(1, 4, 5, 5, dtype=torch.float64), "residual")]:
        with pytest.raises((ValueError, TypeError), match=match):
            _core.conv2d(*args, residual=bad)
    ok = torch.randn(1, 4, 5, 5)
    _core.conv2d(*args, residual=ok)
    assert torch.allclose(out, sparse_conv2d(x, sw33) + ok, atol=1e-5)
    # a channels-last output takes a channels-last residual (read in place), not an NCHW one
    with pytest.raises(ValueError, match=r"residual: must be in the output's memory format \(NCHW"):
        _core.conv2d(*args, residual=ok.contiguous(memory_format=torch.channels_last))
    cl = torch.empty(1, 4, 5, 5, memory_format=torch.channels_last)
    args_cl = args[:5] + (cl,) + args[6:]
    with pytest.raises(ValueError, match=r"residual: must be in the output's memory format \(channels-last"):
        _core.conv2d(*args_cl, residual=ok)
    _core.conv2d(*args_cl, residual=ok.contiguous(memory_format=torch.channels_last))
    assert torch.equal(cl, out)
    with pytest.raises(ValueError, match="out: must be contiguous, NCHW or channels-last"):
        _core.conv2d(*(args[:5] + (torch.empty(1, 5, 5, 4).permute(0, 3, 2, 1),) + args[6:]))


@pytest.mark.parametrize("shape", [(1, 5, 5, 4), (4, 1, 5, 5), (1, 4, 25, 1), (1, 100, 1, 1)])
def test_error_out_shape_raw_core(sw33, shape):
    """An output with as many elements as the call's but another shape is refused, not filled
    in the wrong order; likewise for linear's and max-pooling's outputs."""
    from sparsecnn import _core

    x = torch.randn(1, 2, 7, 7)
    args = (x, sw33.values, sw33.col_idx, sw33.row_ptr, None)
    rest = (4, 2, 3, 3, 1, [1, 1], [0, 0, 0, 0], [1, 1], False, 1)
    with pytest.raises(ValueError, match=r"sparse_conv2d: out has shape .*expected \(1, 4, 5, 5\)"):
        _core.conv2d(*args, torch.empty(shape), *rest)
    lw = SparseWeight.from_dense(torch.randn(5, 6))
    with pytest.raises(ValueError, match=r"sparse_linear: out has shape \(5, 4\), expected \(4, 5\)"):
        _core.linear(torch.randn(4, 6), lw.values, lw.col_idx, lw.row_ptr, None, torch.empty(5, 4), 5, False, 1)
    with pytest.raises(ValueError, match=r"max_pool2d: out has shape \(1, 2, 3, 2\), expected \(1, 2, 2, 3\)"):
        _core.max_pool2d(torch.randn(1, 2, 4, 6), torch.empty(1, 2, 3, 2), [2, 2], [2, 2], [0, 0], False, 1)


@pytest.mark.parametrize("weight", [torch.ones(4, 2, 3, 3), None, "w"])
def test_error_weight_not_sparse(weight):
    with pytest.raises(TypeError, match="SparseWeight"):
        sparse_conv2d(torch.randn(1, 2, 5, 5), weight)


def test_error_linear_weight_given_to_conv():
    with pytest.raises(ValueError, match="4-D"):
        sparse_conv2d(torch.randn(1, 2, 5, 5), SparseWeight.from_dense(torch.ones(3, 2)))


def test_meta_tensors(sw33):
    # mixed devices: an error, not a crash
    with pytest.raises(ValueError, match="input is on meta but the weight is on cpu"):
        sparse_conv2d(torch.empty(1, 2, 5, 5, device="meta"), sw33)
    # all on meta: the fake kernel gives the shape
    y = _raw(torch.empty(2, 2, 7, 6, device="meta"), sw33, values=sw33.values.to("meta"), col=sw33.col_idx.to("meta"),
             rp=sw33.row_ptr.to("meta"), stride=(2, 1), padding=(1, 0, 0, 2))
    assert y.device.type == "meta" and tuple(y.shape) == (2, 4, 3, 6)
    cpu = _raw(torch.randn(2, 2, 7, 6), sw33, stride=(2, 1), padding=(1, 0, 0, 2))
    assert cpu.shape == y.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_cpu_mismatch(sw33):  # pragma: no cover - CPU-only CI
    with pytest.raises(ValueError, match="is on cuda"):
        sparse_conv2d(torch.randn(1, 2, 5, 5, device="cuda"), sw33)


# --- corrupted CSR ----------------------------------------------------------------------------

def _corrupt_cases():
    # weight (3, 1, 2, 2): 4 columns, nnz 4
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    c16 = lambda *a: torch.tensor(a, dtype=torch.int16)  # noqa: E731
    c32 = lambda *a: torch.tensor(a, dtype=torch.int32)  # noqa: E731
    rp = lambda *a: torch.tensor(a, dtype=torch.int32)  # noqa: E731
    return {
        "row_ptr_not_monotone": (v, c16(0, 1, 2, 3), rp(0, 3, 1, 4), "non-decreasing"),
        "row_ptr_start": (v, c16(0, 1, 2, 3), rp(1, 2, 3, 4), "row_ptr"),
        "row_ptr_end": (v, c16(0, 1, 2, 3), rp(0, 1, 2, 3), "row_ptr"),
        "col_out_of_range": (v, c16(0, 1, 2, 4), rp(0, 2, 3, 4), "out of range"),
        "col_negative32": (v, c32(0, 1, -1, 3), rp(0, 2, 3, 4), "out of range"),
        "col_big16": (v, c16(0, 1, -1, 3), rp(0, 2, 3, 4), "out of range"),  # -1 = 65535
        "unsorted": (v, c16(1, 0, 2, 3), rp(0, 2, 3, 4), "strictly increasing"),
        "duplicate": (v, c32(2, 2, 0, 3), rp(0, 2, 3, 4), "strictly increasing"),
    }


CORRUPT = _corrupt_cases()


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupted_csr_raw_op_raises(case):
    v, c, rp, msg = CORRUPT[case]
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match=msg):
        torch.ops.sparsecnn.sparse_conv2d(x, v, c, rp, [3, 1, 2, 2], None, [1, 1], [0, 0, 0, 0], [1, 1], 1, False)
    with pytest.raises(ValueError, match=msg):  # padded / strided path validates as well
        torch.ops.sparsecnn.sparse_conv2d(x, v, c, rp, [3, 1, 2, 2], None, [2, 1], [1, 0, 1, 1], [1, 1], 1, True)


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_corrupted_csr_large_weight_names_first_bad_row(dtype, threads):
    """From 65536 nonzeros the column check is split over the threads; every thread's share is
    checked and the error names the first bad row whichever thread found it."""
    o, cg = 64, 128  # 64 x 1152 columns, dense: 73728 nonzeros
    w = torch.randn(o, cg, 3, 3)
    sw = SparseWeight.from_dense(w)
    assert sw.nnz >= 65536
    rp = sw.row_ptr
    x = torch.randn(1, cg, 5, 5)

    def call(col):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return torch.ops.sparsecnn.sparse_conv2d(x, sw.values, col, rp, [o, cg, 3, 3], None, [1, 1], [1, 1, 1, 1],
                                                     [1, 1], 1, False)
        finally:
            torch.set_num_threads(old)

    base = sw.col_idx.to(dtype)
    torch.testing.assert_close(call(base), F.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)
    for bad_rows, kind in (([60], "range"), ([40, 7], "range"), ([63], "order"), ([50, 20], "order")):
        col = base.clone()
        for r in bad_rows:
            j = int(rp[r])
            if kind == "range":
                col[int(rp[r + 1]) - 1] = cg * 9  # one past the last column
            else:
                col[j], col[j + 1] = col[j + 1].clone(), col[j].clone()
        msg = "out of range in row" if kind == "range" else "strictly increasing"
        with pytest.raises(ValueError, match=rf"{msg}.*\(row {min(bad_rows)}\)" if kind == "order"
                           else rf"{msg} {min(bad_rows)} "):
            call(col)


@pytest.mark.parametrize("case", ["row_ptr_not_monotone", "row_ptr_start", "row_ptr_end", "col_out_of_range", "col_negative32", "col_big16"])
def test_corrupted_csr_constructor_raises(case):
    v, c, rp, _ = CORRUPT[case]
    with pytest.raises(ValueError, match="SparseWeight: (row_ptr|column indices)"):
        SparseWeight(v, c, rp, (3, 1, 2, 2))


@pytest.mark.parametrize("case", ["unsorted", "duplicate"])
def test_unsorted_columns_constructor(case):
    """The kernels need strictly increasing columns per row; SparseWeight must not accept others."""
    v, c, rp, _ = CORRUPT[case]
    with pytest.raises(ValueError, match="SparseWeight"):
        SparseWeight(v, c, rp, (3, 1, 2, 2))


def test_corrupted_csr_layout_raw_op():
    v = torch.tensor([1.0, 2.0])
    c = torch.tensor([0, 3], dtype=torch.int16)
    rp = torch.tensor([0, 1, 2, 2], dtype=torch.int32)
    x = torch.randn(1, 1, 4, 4)

    def call(values=v, col=c, row_ptr=rp, shape=(3, 1, 2, 2)):
        return torch.ops.sparsecnn.sparse_conv2d(x, values, col, row_ptr, list(shape), None, [1, 1], [0, 0, 0, 0], [1, 1], 1, False)

    ref = dense_ref(x, torch.tensor([[[[1.0, 0], [0, 0]]], [[[0, 0], [0, 2.0]]], [[[0, 0], [0, 0]]]]))
    assert_close(call(), ref)
    with pytest.raises(ValueError, match="row count"):
        call(row_ptr=torch.tensor([0, 1, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match="differ in length"):
        call(col=torch.tensor([0], dtype=torch.int16))
    with pytest.raises(ValueError, match="contiguous"):
        call(values=torch.tensor([1.0, 9.0, 2.0, 9.0])[::2])
    with pytest.raises(TypeError, match="int16 or int32"):
        call(col=c.to(torch.int64))
    with pytest.raises(TypeError, match="row_ptr: expected dtype int32"):
        call(row_ptr=rp.to(torch.int64))
    with pytest.raises(TypeError, match="values: expected dtype float32"):
        call(values=v.double())
    with pytest.raises(ValueError, match="1-D"):
        call(values=v.view(2, 1), col=c.view(2, 1))
    with pytest.raises(ValueError, match="16-bit column indices cannot address"):
        torch.ops.sparsecnn.sparse_conv2d(torch.empty(1, 1, 1, 1).expand(1, 70000, 2, 2), v, c, rp, [3, 70000, 1, 1],
                                          None, [1, 1], [0, 0, 0, 0], [1, 1], 1, False)


# --- huge shapes (run in a subprocess: a regression here could crash the interpreter) -------

_HUGE_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from sparsecnn import SparseWeight, sparse_conv2d
    res = {}
    def run(name, fn):
        try:
            y = fn()
            res[name] = "ok " + str(tuple(y.shape))
        except Exception as e:  # noqa: BLE001
            res[name] = type(e).__name__ + ": " + str(e)[:200]
    one = SparseWeight.from_dense(torch.ones(1, 1, 1, 1))
    # 300000 channels x 100 x 100 (zero-stride view, no memory): 32-bit offsets overflow
    w = torch.zeros(1, 300000, 1, 1); w[0, 5] = 1; w[0, -1] = 2
    wide = SparseWeight.from_dense(w)
    xe = torch.empty(1, 1, 1, 1).expand(1, 300000, 100, 100)
    run("wide_padded", lambda: sparse_conv2d(xe, wide, padding=1))
    w = torch.zeros(1, 1000000, 1, 1); w[0, 7] = 1; w[0, -1] = 2
    wider = SparseWeight.from_dense(w)
    xw = torch.empty(1, 1, 1, 1).expand(1, 1000000, 100, 100)
    run("wide_strided", lambda: sparse_conv2d(xw, wider, stride=2))
    # 50000 x 50000 image behind a zero-stride view, strided down to a small output
    xb = torch.empty(1, 1, 1, 1).expand(1, 1, 50000, 50000)
    run("big_image_stride64", lambda: sparse_conv2d(xb, one, stride=64))
    # parameters beyond the core's 2^40 limit
    run("huge_padding", lambda: sparse_conv2d(torch.randn(1, 1, 3, 3), one, padding=2**41))
    run("huge_dilation", lambda: sparse_conv2d(torch.randn(1, 1, 3, 3), SparseWeight.from_dense(torch.ones(1, 1, 2, 1)), dilation=2**41))
    # output that cannot be allocated
    run("huge_output", lambda: sparse_conv2d(torch.randn(1, 1, 1, 1), one, padding=(2**39, 0, 2**20, 0)))
    print(json.dumps(res))
    """
)


def test_huge_shapes_fail_cleanly():
    proc = subprocess.run(
        [sys.executable, "-c", _HUGE_SCRIPT],
        capture_output=True, text=True, timeout=180,
        env={**__import__("os").environ, "PYTHONPATH": SRC},
    )
    assert proc.returncode == 0, f"subprocess died (rc={proc.returncode}): {proc.stderr[-2000:]}"
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["wide_padded"].startswith("OverflowError") and "32-bit offsets" in res["wide_padded"], res
    assert res["wide_strided"].startswith("OverflowError"), res
    assert res["big_image_stride64"] == "ok (1, 1, 782, 782)", res
    assert res["huge_padding"].startswith("OverflowError"), res
    assert res["huge_dilation"].startswith(("OverflowError", "ValueError")), res
    # the op allocates the output with torch before the core sees the call
    assert res["huge_output"].split(":")[0] in ("OverflowError", "ValueError", "MemoryError", "RuntimeError"), res


def test_expanded_input_values(isa):
    """A zero-stride (expanded) input is read correctly (strides 0 are legal)."""
    base = torch.randn(1, 3, 1, 1)
    x = base.expand(2, 3, 6, 7)
    wd = random_weight((4, 3, 3, 3), 0.5, torch.Generator().manual_seed(9))
    y = sparse_conv2d(x, SparseWeight.from_dense(wd), padding=1)
    assert_close(y, dense_ref(x.contiguous(), wd, padding=1))
