"""Tests of the Triton direct sparse convolution (sparsecnn.ops.triton_conv).

Without a GPU the kernel runs in Triton's interpreter on CPU tensors
(``TRITON_INTERPRET=1`` is set below before Triton is imported).  On a CUDA
machine the compiled kernel is tested instead, unless ``TRITON_INTERPRET`` is
already set in the environment.  Shapes are kept small: the interpreter is slow.
"""

from __future__ import annotations

import os

import torch

os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")

import itertools  # noqa: E402
import logging  # noqa: E402
from typing import Optional, Tuple  # noqa: E402

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from sparsecnn.ops import triton_conv as tc  # noqa: E402

logger = logging.getLogger(__name__)

INTERPRET = tc.interpreter_enabled()
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("TRITON_INTERPRET=0 and no CUDA device", allow_module_level=True)
DEVICE = torch.device("cpu" if INTERPRET else "cuda")


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def pack(w: torch.Tensor, col_dtype: Optional[torch.dtype] = None
         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference packer written independently of the module under test.

    >>> v, c, r = pack(torch.ones(1, 1, 1, 2)); r.tolist()
    [0, 2]
    """
    o = w.shape[0]
    w2 = w.reshape(o, -1).cpu()
    ncols = w2.shape[1]
    vals, cols, ptr = [], [], [0]
    for i in range(o):
        nzc = torch.nonzero(w2[i], as_tuple=False).flatten()
        cols.append(nzc)
        vals.append(w2[i, nzc])
        ptr.append(ptr[-1] + nzc.numel())
    col = torch.cat(cols) if cols else torch.zeros(0, dtype=torch.int64)
    if col_dtype is None:
        col_dtype = torch.int16 if ncols <= 65536 else torch.int32
    if col_dtype == torch.int16:
        col = col.to(torch.int32)
        col = torch.where(col >= 32768, col - 65536, col)  # uint16 bit pattern in int16
    values = torch.cat(vals).to(torch.float32) if vals else torch.zeros(0)
    return values, col.to(col_dtype), torch.tensor(ptr, dtype=torch.int32)


def sparse_weight(shape: Tuple[int, ...], density: float, gen: torch.Generator) -> torch.Tensor:
    w = torch.randn(shape, generator=gen)
    if density >= 1.0:
        return w
    return w * (torch.rand(shape, generator=gen) < density)


def reference(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], stride, padding, dilation,
              groups: int, relu: bool) -> torch.Tensor:
    y = F.conv2d(x.double().cpu(), w.double().cpu(), None if b is None else b.double().cpu(),
                 stride, padding, dilation, groups)
    return y.relu() if relu else y


def check(y: torch.Tensor, ref: torch.Tensor) -> None:
    assert y.dtype == torch.float32
    assert y.is_contiguous()
    assert tuple(y.shape) == tuple(ref.shape)
    scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    torch.testing.assert_close(y.double().cpu(), ref, rtol=1e-4, atol=1e-5 * scale)


def run_case(n: int, c: int, o: int, hw: Tuple[int, int], k: Tuple[int, int], stride, padding, dilation,
             groups: int, density: float, bias: bool, relu: bool, seed: int = 0,
             col_dtype: Optional[torch.dtype] = None, **kw) -> None:
    gen = torch.Generator().manual_seed(seed)
    w = sparse_weight((o, c // groups, *k), density, gen)
    x = torch.randn(n, c, *hw, generator=gen)
    b = torch.randn(o, generator=gen) if bias else None
    values, col, row_ptr = pack(w, col_dtype)
    y = tc.sparse_conv2d_triton(
        x.to(DEVICE), values.to(DEVICE), col.to(DEVICE), row_ptr.to(DEVICE), tuple(w.shape),
        None if b is None else b.to(DEVICE), stride, padding, dilation, groups, relu, **kw)
    check(y, reference(x, w, b, stride, padding, dilation, groups, relu))


# --------------------------------------------------------------------------- #
# correctness against F.conv2d (float64)
# --------------------------------------------------------------------------- #
# (n, c, o, hw, kernel, stride, padding, dilation, groups, density, bias, relu)
CASES = [
    pytest.param(1, 4, 6, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1), 1, 0.5, True, True, id="3x3-s1-p1"),
    pytest.param(3, 4, 6, (9, 9), (3, 3), (2, 2), (1, 1), (1, 1), 1, 0.1, False, False, id="3x3-s2-b3-d0.1"),
    pytest.param(2, 3, 5, (10, 11), (3, 3), (3, 3), (2, 2), (1, 1), 1, 0.5, True, False, id="3x3-s3-p2"),
    pytest.param(1, 3, 4, (11, 9), (5, 5), (1, 1), (2, 2), (1, 1), 1, 0.5, False, True, id="5x5-p2"),
    pytest.param(2, 3, 4, (12, 12), (5, 5), (2, 1), (4, 2), (2, 2), 1, 0.5, True, True, id="5x5-dil2-asym"),
    pytest.param(1, 4, 4, (9, 7), (3, 1), (2, 1), (1, 0), (1, 1), 1, 0.5, True, False, id="3x1-asym-pad"),
    pytest.param(2, 4, 4, (7, 9), (1, 3), (1, 2), (0, 1), (1, 2), 1, 0.5, False, False, id="1x3-dil"),
    pytest.param(3, 8, 6, (5, 5), (1, 1), (1, 1), (0, 0), (1, 1), 1, 0.5, True, True, id="1x1"),
    pytest.param(2, 8, 6, (7, 6), (1, 1), (2, 2), (0, 0), (1, 1), 1, 0.5, False, False, id="1x1-s2"),
    pytest.param(1, 4, 5, (4, 5), (1, 1), (1, 1), (2, 1), (1, 1), 1, 0.5, True, True, id="1x1-pad-ring"),
    pytest.param(1, 3, 4, (23, 23), (11, 11), (4, 4), (0, 0), (1, 1), 1, 0.3, True, True, id="11x11-s4"),
    pytest.param(2, 3, 4, (19, 21), (11, 11), (4, 4), (2, 2), (1, 1), 1, 0.1, True, False, id="11x11-s4-p2-b2"),
    pytest.param(2, 4, 6, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1), 2, 0.5, True, True, id="groups2"),
    pytest.param(1, 6, 4, (7, 8), (5, 5), (1, 1), (2, 2), (1, 1), 2, 0.5, False, False, id="groups2-5x5"),
    pytest.param(3, 6, 6, (9, 7), (3, 3), (1, 1), (1, 2), (1, 1), 6, 1.0, False, False, id="depthwise"),
    pytest.param(2, 6, 6, (9, 9), (3, 3), (2, 2), (1, 1), (1, 1), 6, 0.5, True, True, id="depthwise-s2"),
    pytest.param(1, 4, 8, (6, 6), (3, 3), (1, 1), (1, 1), (2, 2), 4, 0.5, True, False, id="depthwise-mult2-dil2"),
    pytest.param(2, 4, 6, (6, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1, 0.0, True, True, id="density0-bias-relu"),
    pytest.param(1, 4, 6, (6, 6), (3, 3), (2, 2), (0, 0), (1, 1), 2, 0.0, False, False, id="density0"),
    pytest.param(3, 4, 6, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, 1.0, True, True, id="density1"),
    pytest.param(1, 5, 7, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1), 1, 0.1, True, False, id="odd-O-d0.1"),
    pytest.param(1, 2, 3, (3, 3), (3, 3), (1, 1), (0, 0), (1, 1), 1, 1.0, False, False, id="1x1-output"),
]


@pytest.mark.parametrize("n,c,o,hw,k,stride,padding,dilation,groups,density,bias,relu", CASES)
def test_matches_conv2d(n, c, o, hw, k, stride, padding, dilation, groups, density, bias, relu):
    run_case(n, c, o, hw, k, stride, padding, dilation, groups, density, bias, relu)


GRID = list(itertools.product((1, 2, 3), (0, 1, 2), (1, 2), (1, 2, "dw")))


@pytest.mark.parametrize("stride,padding,dilation,groups", GRID,
                         ids=[f"s{s}-p{p}-dil{d}-g{g}" for s, p, d, g in GRID])
def test_geometry_grid(stride, padding, dilation, groups):
    c, o = 4, 4
    g = c if groups == "dw" else groups
    seed = stride * 100 + padding * 10 + dilation
    run_case(2 if stride > 1 else 1, c, o, (7, 8), (3, 3), (stride, stride), (padding, padding),
             (dilation, dilation), g, 0.5, bool(seed % 2), bool(padding % 2), seed=seed)


@pytest.mark.parametrize("bias,relu", list(itertools.product((False, True), repeat=2)))
@pytest.mark.parametrize("density", (0.0, 0.1, 0.5, 1.0))
def test_bias_relu_density(bias, relu, density):
    run_case(2, 4, 5, (6, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1, density, bias, relu,
             seed=int(density * 10) + 2 * bias + relu)


# --------------------------------------------------------------------------- #
# format details, layouts, plan, split, block sizes
# --------------------------------------------------------------------------- #
def test_int32_and_int16_columns_agree():
    run_case(2, 4, 6, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, 0.5, True, False, col_dtype=torch.int32)
    run_case(2, 4, 6, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, 0.5, True, False, col_dtype=torch.int16)


def test_uint16_columns_above_32767():
    """Cg*kh*kw = 4100*9 > 32767: int16 storage holds negative (uint16) patterns."""
    gen = torch.Generator().manual_seed(5)
    w = sparse_weight((3, 4100, 3, 3), 0.004, gen)
    w[0, -1, 2, 2] = 1.5  # largest column: 36899
    values, col, row_ptr = pack(w, torch.int16)
    assert int(col.min()) < 0
    x = torch.randn(1, 4100, 4, 4, generator=gen)
    y = tc.sparse_conv2d_triton(x.to(DEVICE), values.to(DEVICE), col.to(DEVICE), row_ptr.to(DEVICE),
                                tuple(w.shape), None, (1, 1), (1, 1), (1, 1), 1, False)
    check(y, reference(x, w, None, 1, 1, 1, 1, False))


def test_channels_last_and_noncontiguous_input():
    gen = torch.Generator().manual_seed(7)
    w = sparse_weight((6, 4, 3, 3), 0.5, gen)
    values, col, row_ptr = [t.to(DEVICE) for t in pack(w)]
    x = torch.randn(2, 4, 9, 9, generator=gen)
    ref = reference(x, w, None, 1, 1, 1, 1, True)
    xcl = x.to(DEVICE).to(memory_format=torch.channels_last)
    check(tc.sparse_conv2d_triton(xcl, values, col, row_ptr, tuple(w.shape), None,
                                  (1, 1), (1, 1), (1, 1), 1, True), ref)
    big = torch.randn(2, 8, 9, 12, generator=gen)
    xs = big[:, ::2, :, 1:10]  # strided view
    check(tc.sparse_conv2d_triton(xs.to(DEVICE), values, col, row_ptr, tuple(w.shape), None,
                                  (1, 1), (1, 1), (1, 1), 1, True),
          reference(xs.contiguous(), w, None, 1, 1, 1, 1, True))


def test_plan_reuse_across_batches_and_mismatch():
    gen = torch.Generator().manual_seed(8)
    w = sparse_weight((8, 4, 3, 3), 0.3, gen)
    b = torch.randn(8, generator=gen)
    values, col, row_ptr = [t.to(DEVICE) for t in pack(w)]
    plan = tc.build_plan(values, col, row_ptr, w.shape, (6, 6), (1, 1), (1, 1), (1, 1), 1, device=DEVICE)
    assert plan.nnz == int((w != 0).sum())
    for n in (1, 3):
        x = torch.randn(n, 4, 6, 6, generator=gen)
        y = tc.sparse_conv2d_triton(x.to(DEVICE), values, col, row_ptr, tuple(w.shape), b.to(DEVICE),
                                    (1, 1), (1, 1), (1, 1), 1, False, plan=plan)
        check(y, reference(x, w, b, 1, 1, 1, 1, False))
    with pytest.raises(ValueError, match="plan"):
        tc.sparse_conv2d_triton(torch.randn(1, 4, 7, 7, device=DEVICE), values, col, row_ptr,
                                tuple(w.shape), None, (1, 1), (1, 1), (1, 1), 1, False, plan=plan)


@pytest.mark.parametrize("pad4", [(0, 1, 2, 0), (2, 0, 0, 1), (1, 2, 1, 1)])
def test_four_sided_padding(pad4):
    """(top, bottom, left, right) padding == F.pad then a padding-free conv."""
    gen = torch.Generator().manual_seed(sum(pad4))
    w = sparse_weight((5, 4, 3, 3), 0.5, gen)
    b = torch.randn(5, generator=gen)
    x = torch.randn(2, 4, 7, 6, generator=gen)
    values, col, row_ptr = [t.to(DEVICE) for t in pack(w)]
    for stride in ((1, 1), (2, 1)):
        y = tc.sparse_conv2d_triton(x.to(DEVICE), values, col, row_ptr, tuple(w.shape), b.to(DEVICE),
                                    stride, pad4, (1, 1), 1, True)
        xp = F.pad(x, (pad4[2], pad4[3], pad4[0], pad4[1]))
        check(y, reference(xp, w, b, stride, 0, 1, 1, True))


def test_plan_cache_hits_and_invalidation():
    tc.clear_plan_cache()
    gen = torch.Generator().manual_seed(13)
    w = sparse_weight((4, 4, 3, 3), 0.5, gen)
    values, col, row_ptr = [t.to(DEVICE) for t in pack(w)]
    x = torch.randn(1, 4, 6, 6, generator=gen).to(DEVICE)
    args = (tuple(w.shape), None, (1, 1), (1, 1), (1, 1), 1, False)
    y1 = tc.sparse_conv2d_triton(x, values, col, row_ptr, *args)
    assert len(tc._PLAN_CACHE) == 1
    tc.sparse_conv2d_triton(x, values, col, row_ptr, *args)
    assert len(tc._PLAN_CACHE) == 1  # hit
    values.mul_(2.0)  # in-place change -> version bump -> rebuilt plan
    y2 = tc.sparse_conv2d_triton(x, values, col, row_ptr, *args)
    torch.testing.assert_close(y2, 2 * y1, rtol=1e-5, atol=1e-5)
    tc.sparse_conv2d_triton(x, values, col, row_ptr, *args, cache_plan=False)
    assert len(tc._PLAN_CACHE) == 1
    tc.clear_plan_cache()
    assert len(tc._PLAN_CACHE) == 0


def test_load_balanced_row_order():
    """Rows of very different lengths (incl. empty rows) are sorted into blocks."""
    gen = torch.Generator().manual_seed(9)
    w = torch.randn(9, 4, 3, 3, generator=gen)
    for i, d in enumerate([0.0, 1.0, 0.05, 0.0, 0.5, 0.9, 0.02, 0.3, 0.0]):
        w[i] *= torch.rand(4, 3, 3, generator=gen) < d
    values, col, row_ptr = pack(w)
    plan = tc.build_plan(values, col, row_ptr, w.shape, (6, 6), 1, 1, 1, 1, block_r=2)
    lens = plan.slot_len.tolist()
    assert lens == sorted(lens, reverse=True)
    assert plan.block_len.tolist() == [max(lens[i:i + 2]) for i in range(0, 9, 2)]
    x = torch.randn(2, 4, 6, 6, generator=gen)
    b = torch.randn(9, generator=gen)
    for br in (1, 2, 8):
        y = tc.sparse_conv2d_triton(x.to(DEVICE), values.to(DEVICE), col.to(DEVICE), row_ptr.to(DEVICE),
                                    tuple(w.shape), b.to(DEVICE), (1, 1), (1, 1), (1, 1), 1, True,
                                    block_r=br, block_p=16)
        check(y, reference(x, w, b, 1, 1, 1, 1, True))


@pytest.mark.parametrize("split_k", (2, 3, 1000))
def test_split_long_rows(split_k):
    run_case(2, 6, 5, (6, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1, 0.7, True, True, seed=split_k,
             split_k=split_k)
    run_case(1, 4, 4, (6, 6), (3, 3), (2, 2), (1, 1), (1, 1), 4, 1.0, False, False, seed=split_k,
             split_k=split_k)


def test_default_block_p_fills_the_sms(monkeypatch):
    """Widest of 256/128/64 with at least two programs per SM; never wider than the positions."""
    monkeypatch.setattr(tc, "_sm_count", lambda device: 132)
    dev = torch.device("cpu")
    assert tc._default_block_p(32 * 169, 96, dev) == 256   # CaffeNet conv3, batch 32: 22 x 96 programs
    assert tc._default_block_p(169, 96, dev) == 64         # batch 1: 3 x 96 >= 264 only at 64
    assert tc._default_block_p(169, 64, dev) == 64         # too few programs even at 64: 64 is the floor
    assert tc._default_block_p(5, 1000, dev) == 16         # a linear layer at batch 5: 16 positions
    assert tc._default_block_p(729, 64, dev) == 128        # CaffeNet conv2, batch 1


@pytest.mark.parametrize("batch", [1, 2, 7])  # batch 1: cuSPARSE's SpMM; above: the Triton kernel
def test_linear_cuda_paths(batch):
    from sparsecnn.ops import linear

    gen = torch.Generator().manual_seed(batch)
    w = sparse_weight((9, 40000), 0.001, gen)  # 40000 columns: int16 indices read as unsigned
    w[3, 39999] = 1.5
    x = torch.randn(batch, 40000, generator=gen)
    b = torch.randn(9, generator=gen)
    values, col, row_ptr = pack(w)
    assert col.dtype == torch.int16
    y = linear._sparse_linear_cuda(x.to(DEVICE), values.to(DEVICE), col.to(DEVICE), row_ptr.to(DEVICE), 9,
                                   b.to(DEVICE), True)
    ref = torch.relu(x.double() @ w.double().t() + b.double())
    check(y, ref)


def test_pack_dense_weight_matches_reference_packer():
    gen = torch.Generator().manual_seed(10)
    w = sparse_weight((5, 3, 3, 3), 0.4, gen)
    for got, exp in zip(tc.pack_dense_weight(w), pack(w)):
        assert got.dtype == exp.dtype
        assert torch.equal(got, exp)


# --------------------------------------------------------------------------- #
# errors and availability
# --------------------------------------------------------------------------- #
def test_is_available():
    assert tc.is_available()


def test_input_validation():
    gen = torch.Generator().manual_seed(11)
    w = sparse_weight((4, 2, 3, 3), 0.5, gen)
    v, c, r = [t.to(DEVICE) for t in pack(w)]
    x = torch.randn(1, 2, 5, 5, device=DEVICE)
    args = ((1, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="channels"):
        tc.sparse_conv2d_triton(torch.randn(1, 3, 5, 5, device=DEVICE), v, c, r, w.shape, None, *args, 1, False)
    with pytest.raises(TypeError):
        tc.sparse_conv2d_triton(x.double(), v, c, r, w.shape, None, *args, 1, False)
    with pytest.raises(ValueError, match="output size"):
        tc.sparse_conv2d_triton(torch.randn(1, 2, 2, 2, device=DEVICE), v, c, r, w.shape, None, *args, 1, False)
    with pytest.raises(ValueError, match="row_ptr"):
        tc.sparse_conv2d_triton(x, v, c, r[:-1], w.shape, None, *args, 1, False)
    with pytest.raises(ValueError, match="divisible"):
        tc.sparse_conv2d_triton(x, v, c, r, (4, 2, 3, 3), None, *args, 3, False)
    with pytest.raises(ValueError, match="bias"):
        tc.sparse_conv2d_triton(x, v, c, r, w.shape, torch.zeros(3, device=DEVICE), *args, 1, False)


def test_missing_triton_gives_clear_error(monkeypatch):
    monkeypatch.setattr(tc, "_HAS_TRITON", False)
    monkeypatch.setattr(tc, "_TRITON_IMPORT_ERROR", ImportError("No module named 'triton'"))
    assert not tc.is_available()
    with pytest.raises(RuntimeError, match="pip install"):
        tc.sparse_conv2d_triton(torch.zeros(1, 1, 3, 3), torch.ones(1), torch.zeros(1, dtype=torch.int16),
                                torch.tensor([0, 1], dtype=torch.int32), (1, 1, 1, 1), None,
                                (1, 1), (0, 0), (1, 1), 1, False)


@pytest.mark.skipif(not INTERPRET, reason="only meaningful for the interpreter run")
def test_cpu_tensor_without_interpreter_is_rejected(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    w = torch.ones(1, 1, 1, 1)
    v, c, r = pack(w)
    with pytest.raises(RuntimeError, match="CUDA"):
        tc.sparse_conv2d_triton(torch.zeros(1, 1, 3, 3), v, c, r, w.shape, None, (1, 1), (0, 0), (1, 1), 1, False)


def test_gpu_bench_smoke():
    """The benchmark module imports and runs (tiny layer; on CPU via the interpreter)."""
    from sparsecnn.bench import gpu_layers

    layer = dict(name="tiny", in_channels=4, out_channels=4, kernel=(3, 3), stride=1, padding=1,
                 groups=2, input_hw=(5, 5), weight=None)
    rows = gpu_layers.run_gpu_layer_bench([layer], densities=(0.5,), batches=(2,), repeats=1, warmup=0,
                                          device=DEVICE)
    assert len(rows) == 1
    row = rows[0]
    assert row["max_rel_err"] < 1e-4
    for key in ("t_ours_ms", "t_cudnn_fp32_ms", "t_cudnn_tf32_ms", "t_cublas_ms", "t_cusparse_ms",
                "speedup_vs_cusparse"):
        assert row[key] > 0
    w = torch.randn(4, 4, 3, 3)
    assert int((gpu_layers.prune_to_density(w, 0.25) != 0).sum()) == 36


# --------------------------------------------------------------------------- #
# compiled kernel on a real GPU
# --------------------------------------------------------------------------- #
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET,
                    reason="needs a CUDA device and TRITON_INTERPRET unset/0 (compiled kernel)")
def test_compiled_kernel_on_cuda():
    gen = torch.Generator().manual_seed(12)
    for (n, c, o, hw, k, s, p, d, g, dens) in [
        (8, 64, 96, (28, 28), (3, 3), 1, 1, 1, 1, 0.2),
        (4, 96, 256, (27, 27), (5, 5), 1, 2, 1, 2, 0.1),
        (2, 3, 96, (227, 227), (11, 11), 4, 0, 1, 1, 0.3),
        (8, 64, 64, (56, 56), (3, 3), 2, 1, 1, 64, 1.0),
        (1, 512, 512, (7, 7), (3, 3), 1, 1, 1, 1, 0.3),  # few tiles, long rows: auto split
    ]:
        w = sparse_weight((o, c // g, *k), dens, gen)
        x = torch.randn(n, c, *hw, generator=gen)
        b = torch.randn(o, generator=gen)
        v, col, rp = [t.cuda() for t in pack(w)]
        y = tc.sparse_conv2d_triton(x.cuda(), v, col, rp, tuple(w.shape), b.cuda(), (s, s), (p, p), (d, d),
                                    g, True)
        torch.cuda.synchronize()
        check(y, reference(x, w, b, s, p, d, g, True))
