"""Sparse fully connected layer (compiled core) against dense float64 ``F.linear``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecnn import SparseWeight, sparse_linear
from conftest import assert_close, num_threads




def random_weight(shape, density, gen):
    w = torch.randn(shape, generator=gen)
    if density >= 1:
        return torch.where(w == 0, torch.ones_like(w), w)
    return w * (torch.rand(shape, generator=gen) < density)


def linear_ref(x, w, bias=None, relu=False):
    y = F.linear(x.double(), w.double(), None if bias is None else bias.double())
    return torch.relu(y) if relu else y


def make_input(n, k, layout, gen):
    if layout == "contiguous":
        return torch.randn(n, k, generator=gen)
    if layout == "transposed":  # (k, n) memory, batch contiguous
        return torch.randn(k, n, generator=gen).t()
    if layout == "sliced":  # every other feature
        return torch.randn(n, 2 * k, generator=gen)[:, ::2]
    raise AssertionError(layout)


IN_FEATURES = st.one_of(
    st.integers(1, 300),
    st.sampled_from([32767, 32768, 40000, 65535, 65536, 65537, 70000]),
)


@settings(max_examples=120)
@given(
    n=st.integers(1, 40),
    k=IN_FEATURES,
    o=st.integers(1, 40),
    density=st.sampled_from([0.0, 1e-3, 0.1, 0.5, 1.0]),
    bias=st.booleans(),
    relu=st.booleans(),
    layout=st.sampled_from(["contiguous", "transposed", "sliced"]),
    threads=st.sampled_from([1, 1, 2]),
    seed=st.integers(0, 2**31 - 1),
)
def test_linear_matches_dense_random(isa, n, k, o, density, bias, relu, layout, threads, seed):
    gen = torch.Generator().manual_seed(seed)
    if k > 300:
        density = min(density, 0.01)  # keep the big cases cheap
    wd = random_weight((o, k), density, gen)
    wd[0, k - 1] = 0.75  # the last column is always addressed
    sw = SparseWeight.from_dense(wd)
    assert sw.col_idx.dtype == (torch.int16 if k <= 65536 else torch.int32)
    x = make_input(n, k, layout, gen)
    b = torch.randn(o, generator=gen) if bias else None
    with num_threads(threads):
        y = sparse_linear(x, sw, b, relu=relu)
    with num_threads(1):
        ref = linear_ref(x, wd, b, relu)
    assert_close(y, ref)
    if relu:
        assert (y >= 0).all()


@pytest.mark.parametrize("k", [70000, 65536, 36000])
def test_linear_wide_all_columns(isa, k):
    """Every column >= 32768 used (int16 read as unsigned) / int32 columns beyond 65536."""
    gen = torch.Generator().manual_seed(k)
    wd = torch.zeros(3, k)
    cols = torch.arange(k - 40, k)
    wd[0, cols] = torch.randn(40, generator=gen)
    wd[1, :: max(1, k // 50)] = 1.0
    wd[2, 32760:32780] = -1.0
    sw = SparseWeight.from_dense(wd)
    b = torch.randn(3, generator=gen)
    for n in (17, 1):  # batch lanes, and the gathered dot products of batch 1
        x = torch.randn(n, k, generator=gen)
        y = sparse_linear(x, sw, b)
        assert_close(y, linear_ref(x, wd, b))
    assert torch.equal(sw.to_dense(), wd)


@pytest.mark.parametrize("lead", [(), (3,), (2, 5), (0,), (2, 0, 3)])
def test_linear_leading_dims(isa, lead):
    gen = torch.Generator().manual_seed(2)
    wd = random_weight((7, 12), 0.3, gen)
    x = torch.randn(*lead, 12, generator=gen)
    b = torch.randn(7, generator=gen)
    y = sparse_linear(x, SparseWeight.from_dense(wd), b, relu=True)
    assert y.shape == (*lead, 7)
    assert_close(y, linear_ref(x, wd, b, relu=True))


def test_linear_nonfinite_inputs(isa):
    gen = torch.Generator().manual_seed(4)
    wd = random_weight((9, 20), 0.3, gen)
    wd[:, 3] = 0  # column 3 never used: its NaN must still reach every output
    x = torch.randn(5, 20, generator=gen)
    x[0, 3] = float("nan")
    x[1, 7] = float("inf")
    x[2, 8] = float("-inf")
    x[3, 9] = float("inf")
    x[3, 10] = float("-inf")
    for relu in (False, True):
        y = sparse_linear(x, SparseWeight.from_dense(wd), relu=relu)
        ref = linear_ref(x, wd, relu=relu)
        assert torch.isnan(ref[0]).all()
        assert torch.equal(torch.isnan(y), torch.isnan(ref))
        assert torch.equal(torch.isinf(y), torch.isinf(ref))
        fin = torch.isfinite(ref)
        assert_close(y[fin], ref[fin])


@pytest.mark.parametrize("n", [20, 64, 70])
def test_linear_many_features_in_passes(isa, n):
    """9216 input features (CaffeNet's fc6) at batch 20-70: X^T of a batch tile outgrows half
    the L2 on our machines, so the planner sweeps the features in passes, each row's partial
    sums carried between them (csrc/linear.cpp)."""
    gen = torch.Generator().manual_seed(n)
    wd = random_weight((48, 9216), 0.1, gen)
    x = torch.randn(n, 9216, generator=gen)
    b = torch.randn(48, generator=gen)
    for relu in (False, True):
        assert_close(sparse_linear(x, SparseWeight.from_dense(wd), b, relu=relu), linear_ref(x, wd, b, relu=relu))


@pytest.mark.parametrize("features", ["1", "7", "64", "0"])
def test_linear_forced_passes(isa, monkeypatch, features):
    """SPARSECNN_LINEAR_PASS=n sweeps the input features in passes of n (0: one pass): every
    batch width (masked rows below one vector, several batch tiles), empty rows and columns
    beyond the last pass's start, NaN/Inf inputs, both column widths, 1 and 2 threads."""
    monkeypatch.setenv("SPARSECNN_LINEAR_PASS", features)
    gen = torch.Generator().manual_seed(int(features) + 11)
    for n, k, o, density in [(2, 50, 7, 0.3), (3, 300, 11, 0.1), (9, 129, 5, 0.5), (40, 200, 6, 0.2),
                             (70, 64, 3, 1.0), (130, 33, 4, 0.0), (17, 70000, 3, 0.001)]:
        wd = random_weight((o, k), density, gen)
        x = torch.randn(n, k, generator=gen)
        x[0, k // 2] = float("nan")
        x[-1, k - 1] = float("inf")
        b = torch.randn(o, generator=gen)
        ref = linear_ref(x, wd, b, relu=True)
        for threads in (1, 2):
            with num_threads(threads):
                y = sparse_linear(x, SparseWeight.from_dense(wd), b, relu=True)
            assert torch.equal(torch.isnan(y), torch.isnan(ref)), (n, k, o)
            fin = torch.isfinite(ref)
            assert_close(y[fin], ref[fin])


def test_linear_threads_identical_and_concurrent(isa):
    gen = torch.Generator().manual_seed(8)
    wd = random_weight((64, 300), 0.2, gen)
    sw = SparseWeight.from_dense(wd)
    xs = [torch.randn(1 + 7 * i, 300, generator=gen) for i in range(4)]
    with num_threads(1):
        ones = [sparse_linear(x, sw) for x in xs]
    with num_threads(2):
        twos = [sparse_linear(x, sw) for x in xs]
    for a, b, x in zip(ones, twos, xs):
        assert torch.equal(a, b)
        assert_close(a, linear_ref(x, wd))

    def worker(i):
        return all(torch.equal(sparse_linear(xs[i], sw), ones[i]) for _ in range(50))

    with ThreadPoolExecutor(4) as ex:
        assert all(ex.map(worker, range(4)))


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


@pytest.fixture
def sw():
    wd = torch.zeros(4, 6)
    wd[0, 1] = 1.0
    wd[3, 5] = -2.0
    return SparseWeight.from_dense(wd)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int32])
def test_linear_error_dtype(sw, dtype):
    with pytest.raises(TypeError, match="float32"):
        sparse_linear(torch.ones(2, 6, dtype=dtype), sw)


@pytest.mark.parametrize("shape", [(2, 5), (2, 7), (6, 2), ()])
def test_linear_error_last_dim(sw, shape):
    with pytest.raises(ValueError, match="last dim must be 6"):
        sparse_linear(torch.randn(shape), sw)


def test_linear_error_weight(sw):
    with pytest.raises(TypeError, match="SparseWeight"):
        sparse_linear(torch.randn(2, 6), torch.randn(4, 6))
    with pytest.raises(ValueError, match="2-D"):
        sparse_linear(torch.randn(2, 6), SparseWeight.from_dense(torch.ones(4, 6, 1, 1)))
    with pytest.raises(TypeError, match="tensor"):
        sparse_linear([[0.0] * 6], sw)


def test_linear_error_bias(sw):
    with pytest.raises(ValueError, match="bias: expected 4 elements"):
        sparse_linear(torch.randn(2, 6), sw, torch.zeros(5))
    with pytest.raises(TypeError, match="bias: expected dtype float32"):
        sparse_linear(torch.randn(2, 6), sw, torch.zeros(4, dtype=torch.float64))


def test_linear_error_meta(sw):
    with pytest.raises(ValueError, match="input is on meta but the weight is on cpu"):
        sparse_linear(torch.empty(2, 6, device="meta"), sw)
    y = torch.ops.sparsecnn.sparse_linear(torch.empty(3, 6, device="meta"), sw.values.to("meta"), sw.col_idx.to("meta"),
                                          sw.row_ptr.to("meta"), 4, None, False)
    assert y.device.type == "meta" and tuple(y.shape) == (3, 4)


@pytest.mark.parametrize(
    "values, col, row_ptr, msg",
    [
        ([1.0, 2.0], [1, 5], [0, 2, 1, 2, 2], "non-decreasing"),
        ([1.0, 2.0], [1, 5], [0, 1, 1, 1, 1], r"row_ptr\[-1\]"),
        ([1.0, 2.0], [1, 6], [0, 1, 1, 1, 2], "out of range"),
        ([1.0, 2.0], [5, 1], [0, 2, 2, 2, 2], "strictly increasing"),
        ([1.0, 2.0], [1, 1], [0, 2, 2, 2, 2], "strictly increasing"),
        ([1.0, 2.0], [1, 5], [0, 1, 2], "row count"),
    ],
)
@pytest.mark.parametrize("col_dtype", [torch.int16, torch.int32])
def test_linear_raw_op_corrupted_csr(values, col, row_ptr, msg, col_dtype):
    with pytest.raises(ValueError, match=msg):
        torch.ops.sparsecnn.sparse_linear(
            torch.randn(3, 6), torch.tensor(values), torch.tensor(col, dtype=col_dtype),
            torch.tensor(row_ptr, dtype=torch.int32), 4, None, False,
        )


def test_linear_raw_op_negative_int32_column():
    with pytest.raises(ValueError, match="out of range"):
        torch.ops.sparsecnn.sparse_linear(
            torch.randn(3, 6), torch.tensor([1.0]), torch.tensor([-3], dtype=torch.int32),
            torch.tensor([0, 1, 1, 1, 1], dtype=torch.int32), 4, None, False,
        )


def test_linear_raw_op_16bit_columns_too_narrow():
    with pytest.raises(ValueError, match="16-bit column indices cannot address"):
        torch.ops.sparsecnn.sparse_linear(
            torch.empty(1, 1).expand(2, 70000), torch.tensor([1.0]), torch.tensor([3], dtype=torch.int16),
            torch.tensor([0, 1], dtype=torch.int32), 1, None, False,
        )


def test_linear_raw_op_shape_errors(sw):
    with pytest.raises(ValueError, match="2-D"):
        torch.ops.sparsecnn.sparse_linear(torch.randn(2, 3, 6), sw.values, sw.col_idx, sw.row_ptr, 4, None, False)
    with pytest.raises(ValueError, match="row count"):
        torch.ops.sparsecnn.sparse_linear(torch.randn(2, 6), sw.values, sw.col_idx, sw.row_ptr, 3, None, False)
