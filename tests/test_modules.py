"""SparseConv2d / SparseLinear modules and the SparseWeight packing."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from sparsecnn import SparseConv2d, SparseLinear, SparseWeight


def pruned_conv(seed, *args, amount=0.8, **kwargs):
    torch.manual_seed(seed)
    conv = nn.Conv2d(*args, **kwargs)
    prune.l1_unstructured(conv, "weight", amount=amount)
    return conv


def assert_close(y, ref):
    assert y.shape == ref.shape, (y.shape, ref.shape)
    err = (y.double() - ref.double()).abs().max().item()
    tol = 1e-4 * (1 + ref.abs().max().item())
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g}"


def conv_ref(conv, x):
    """The (pruned) conv in float64."""
    w = (conv.weight_orig * conv.weight_mask) if hasattr(conv, "weight_mask") else conv.weight
    m = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode).double()
    with torch.no_grad():
        m.weight.copy_(w)
        if conv.bias is not None:
            m.bias.copy_(conv.bias)
        return m(x.double())


# --------------------------------------------------------------------------------------------
# SparseConv2d.from_dense
# --------------------------------------------------------------------------------------------

CONV_CASES = [
    dict(args=(8, 16, 3), kwargs=dict(padding=1)),
    dict(args=(8, 16, 3), kwargs=dict(padding=1, bias=False, stride=2)),
    dict(args=(6, 12, (3, 5)), kwargs=dict(padding=(1, 2), groups=3, dilation=(2, 1))),
    dict(args=(8, 8, 3), kwargs=dict(padding="same", groups=8)),
    dict(args=(4, 6, (4, 2)), kwargs=dict(padding="same", dilation=2)),  # asymmetric 'same'
    dict(args=(4, 6, 3), kwargs=dict(padding="valid", stride=(2, 1))),
    dict(args=(4, 6, 3), kwargs=dict(padding=1, padding_mode="reflect")),
    dict(args=(4, 6, 3), kwargs=dict(padding=(2, 1), padding_mode="circular", stride=2)),
    dict(args=(4, 6, 5), kwargs=dict(padding=2, padding_mode="replicate")),
    dict(args=(4, 6, 3), kwargs=dict(padding="same", padding_mode="reflect")),
    dict(args=(4, 8, 1), kwargs=dict()),
]


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("relu", [False, True])
def test_sparse_conv2d_from_pruned(case, relu):
    c = CONV_CASES[case]
    conv = pruned_conv(case, *c["args"], **c["kwargs"])
    assert hasattr(conv, "weight_orig")
    sconv = SparseConv2d.from_dense(conv, relu=relu)
    w = (conv.weight_orig * conv.weight_mask).detach()
    assert sconv.sparse_weight.nnz == int((w != 0).sum())
    assert abs(sconv.density - 0.2) < 0.05
    assert torch.equal(sconv.sparse_weight.to_dense(), w)
    x = torch.randn(2, conv.in_channels, 11, 10)
    with torch.no_grad():
        y = sconv(x)
        ref = conv(x)
    if relu:
        ref = torch.relu(ref)
    assert_close(y, ref)
    assert_close(y, torch.relu(conv_ref(conv, x)) if relu else conv_ref(conv, x))
    # unbatched input
    with torch.no_grad():
        assert_close(sconv(x[1]), y[1])


def test_from_dense_unpruned_and_errors():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    with torch.no_grad():
        conv.weight[conv.weight.abs() < 0.1] = 0
    s = SparseConv2d.from_dense(conv)
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        assert_close(s(x), conv(x))
    assert "nnz=" in repr(s) and "kernel_size=(3, 3)" in repr(s)
    with pytest.raises(TypeError, match="expected nn.Conv2d"):
        SparseConv2d.from_dense(nn.Linear(3, 4))
    with pytest.raises(TypeError, match="expected nn.Linear"):
        SparseLinear.from_dense(conv)
    with pytest.raises(ValueError, match="padding_mode"):
        SparseConv2d(SparseWeight.from_dense(torch.ones(2, 1, 1, 1)), padding_mode="mirror")
    with pytest.raises(ValueError, match="conv weight"):
        SparseConv2d(SparseWeight.from_dense(torch.ones(2, 1)))
    with pytest.raises(ValueError, match="2-D"):
        SparseLinear(SparseWeight.from_dense(torch.ones(2, 1, 1, 1)))
    with pytest.raises(ValueError, match="input channels"):
        s(torch.randn(1, 4, 6, 6))


# --------------------------------------------------------------------------------------------
# state_dict
# --------------------------------------------------------------------------------------------


def test_conv_state_dict_round_trip_different_nnz():
    src = SparseConv2d.from_dense(pruned_conv(1, 8, 12, 3, padding=1, groups=2, amount=0.9), relu=True)
    dst = SparseConv2d.from_dense(pruned_conv(2, 8, 12, 3, padding=1, groups=2, amount=0.3), relu=True)
    sd = src.state_dict()
    assert set(sd) == {"values", "col_idx", "row_ptr", "bias"}
    assert sd["values"].numel() != dst.values.numel()
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    result = dst.load_state_dict(torch.load(buf, weights_only=True))
    assert not result.missing_keys and not result.unexpected_keys
    assert dst.values.numel() == src.values.numel()
    assert torch.equal(dst.sparse_weight.to_dense(), src.sparse_weight.to_dense())
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


def test_conv_state_dict_adopts_bias():
    src = SparseConv2d.from_dense(pruned_conv(3, 4, 4, 3, padding=1))
    dst = SparseConv2d.from_dense(pruned_conv(4, 4, 4, 3, padding=1, bias=False))
    assert dst.bias is None
    dst.load_state_dict(src.state_dict())
    x = torch.randn(1, 4, 5, 5)
    assert torch.equal(dst(x), src(x))


def test_linear_state_dict_round_trip_different_nnz():
    torch.manual_seed(5)
    a, b = nn.Linear(30, 10), nn.Linear(30, 10)
    prune.l1_unstructured(a, "weight", amount=0.95)
    prune.l1_unstructured(b, "weight", amount=0.1)
    src, dst = SparseLinear.from_dense(a, relu=True), SparseLinear.from_dense(b, relu=True)
    assert src.values.numel() != dst.values.numel()
    dst.load_state_dict(src.state_dict())
    x = torch.randn(4, 30)
    assert torch.equal(dst(x), src(x))
    with torch.no_grad():
        assert_close(src(x), torch.relu(a(x)))


def _corruptions():
    def monotone(sd):
        rp = sd["row_ptr"].clone()
        a, b = int(rp[1]), int(rp[2])
        rp[1], rp[2] = b + 1, a
        sd["row_ptr"] = rp

    def end(sd):
        sd["row_ptr"] = sd["row_ptr"].clone()
        sd["row_ptr"][-1] += 1

    def col_range(sd):
        c = sd["col_idx"].clone()
        c[-1] = 40  # beyond the 36 columns
        sd["col_idx"] = c

    def dtype(sd):
        sd["values"] = sd["values"].double()

    def length(sd):
        sd["row_ptr"] = sd["row_ptr"][:-1].clone()

    def unsorted(sd):
        c, rp = sd["col_idx"].clone(), sd["row_ptr"]
        r = int(torch.argmax(rp[1:] - rp[:-1]))
        j = int(rp[r])
        c[j], c[j + 1] = c[j + 1].clone(), c[j].clone()
        sd["col_idx"] = c

    return {"row_ptr_not_monotone": monotone, "row_ptr_end": end, "col_out_of_range": col_range,
            "values_dtype": dtype, "row_ptr_length": length, "unsorted_columns": unsorted}


CORRUPTIONS = _corruptions()


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_conv_load_state_dict_rejects_corrupted(kind):
    m = SparseConv2d.from_dense(pruned_conv(6, 4, 8, 3, padding=1, amount=0.5))
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    CORRUPTIONS[kind](sd)
    with pytest.raises(RuntimeError, match="invalid sparse weight"):
        m.load_state_dict(sd)


def test_linear_load_state_dict_rejects_corrupted():
    m = SparseLinear.from_dense(nn.Linear(36, 5))
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["col_idx"][0] = 36
    with pytest.raises(RuntimeError, match="column indices out of range"):
        m.load_state_dict(sd)


# --------------------------------------------------------------------------------------------
# SparseLinear
# --------------------------------------------------------------------------------------------


def test_sparse_linear_from_pruned():
    torch.manual_seed(9)
    lin = nn.Linear(50, 20)
    prune.l1_unstructured(lin, "weight", amount=0.85)
    s = SparseLinear.from_dense(lin)
    assert s.sparse_weight.nnz == int((lin.weight != 0).sum())
    x = torch.randn(3, 4, 50)
    with torch.no_grad():
        assert_close(s(x), lin(x))
        assert_close(s(x[0, 0]), lin(x[0, 0]))
    with pytest.raises(ValueError, match="last dim must be 50"):
        s(torch.randn(3, 49))
    s2 = SparseLinear.from_dense(nn.Linear(5, 3, bias=False))
    assert s2.bias is None
    assert "nnz=15" in repr(s2)


# --------------------------------------------------------------------------------------------
# SparseWeight
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, col_bytes",
    [((16, 8, 3, 3), 2), ((5, 70000), 4), ((3, 65536), 2), ((7, 12), 2), ((2, 8192, 3, 3), 4)],
)
def test_sparse_weight_nbytes_and_dense(shape, col_bytes):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=gen) * (torch.rand(shape, generator=gen) < 0.05)
    sw = SparseWeight.from_dense(w)
    nnz = int((w != 0).sum())
    assert sw.nnz == nnz and sw.shape == shape and sw.groups == 1
    assert sw.col_idx.element_size() == col_bytes
    assert sw.nbytes == (4 + col_bytes) * nnz + 4 * (shape[0] + 1)
    assert sw.density == pytest.approx(nnz / w.numel())
    d = sw.to_dense()
    assert d.dtype == torch.float32 and d.shape == w.shape
    assert torch.equal(d, w)
    assert sw.values.dtype == torch.float32 and sw.row_ptr.dtype == torch.int32
    assert "nnz=" in repr(sw)


def test_sparse_weight_exact_values_and_special():
    w = torch.zeros(3, 2, 2, 2, dtype=torch.float64)
    w[0, 0, 0, 0] = 1e-30  # tiny, not zero
    w[1, 1, 1, 1] = float("nan")  # NaN counts as nonzero
    w[2, 0, 1, 0] = -0.0  # negative zero is zero (pruned)
    w[2, 1, 0, 1] = 3.25
    sw = SparseWeight.from_dense(w, groups=1)
    assert sw.nnz == 3
    d = sw.to_dense()
    assert d[0, 0, 0, 0] == torch.tensor(1e-30, dtype=torch.float32)
    assert torch.isnan(d[1, 1, 1, 1]) and d[2, 1, 0, 1] == 3.25
    assert torch.equal(sw.row_ptr, torch.tensor([0, 1, 2, 3], dtype=torch.int32))
    for dt in (torch.float16, torch.bfloat16):
        w2 = torch.tensor([[0.5, 0.0], [0.0, -2.0]], dtype=dt)
        assert torch.equal(SparseWeight.from_dense(w2).to_dense(), w2.float())


def test_sparse_weight_from_dense_errors():
    with pytest.raises(TypeError, match="floating point"):
        SparseWeight.from_dense(torch.ones(2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="4-D"):
        SparseWeight.from_dense(torch.ones(2, 2, 2))
    with pytest.raises(TypeError, match="expected a tensor"):
        SparseWeight.from_dense([[1.0]])
    with pytest.raises(ValueError, match="divisible by groups"):
        SparseWeight.from_dense(torch.ones(3, 1, 1, 1), groups=2)


def test_sparse_weight_constructor_errors():
    v = torch.tensor([1.0])
    c = torch.tensor([0], dtype=torch.int16)
    rp = torch.tensor([0, 1], dtype=torch.int32)
    assert SparseWeight(v, c, rp, (1, 4)).nnz == 1
    with pytest.raises(TypeError, match="values must be float32"):
        SparseWeight(v.double(), c, rp, (1, 4))
    with pytest.raises(TypeError, match="col_idx must be int16 or int32"):
        SparseWeight(v, c.long(), rp, (1, 4))
    with pytest.raises(TypeError, match="row_ptr must be int32"):
        SparseWeight(v, c, rp.long(), (1, 4))
    with pytest.raises(ValueError, match="row_ptr must have 2 entries"):
        SparseWeight(v, c, torch.tensor([0, 1, 1], dtype=torch.int32), (1, 4))
    with pytest.raises(ValueError, match="positive sizes"):
        SparseWeight(v, c, rp, (1, 0))
    with pytest.raises(ValueError, match="do not fit 16-bit"):
        SparseWeight(v, c, rp, (1, 70000))
    with pytest.raises(ValueError, match="equal length"):
        SparseWeight(v, torch.tensor([0, 1], dtype=torch.int16), rp, (1, 4))
