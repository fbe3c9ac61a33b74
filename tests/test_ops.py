"""The torch custom ops: opcheck, autograd, torch.compile / torch.export, ISA selection."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sparsecnn
import sparsecnn.ops as ops
from sparsecnn import SparseConv2d, SparseLinear, SparseWeight

SRC = str(Path(sparsecnn.__file__).resolve().parents[1])


def sparse_dense(shape, density, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    return w * (torch.rand(shape, generator=gen) < density)


# --------------------------------------------------------------------------------------------
# opcheck
# --------------------------------------------------------------------------------------------

CONV_ARGSETS = {
    # name: (weight shape, groups, bias, stride, padding, dilation, relu, input shape)
    "plain": ((6, 4, 3, 3), 1, False, [1, 1], [0, 0, 0, 0], [1, 1], False, (2, 4, 7, 7)),
    "bias_relu_pad": ((6, 4, 3, 3), 1, True, [1, 1], [1, 1, 1, 1], [1, 1], True, (1, 4, 6, 5)),
    "groups_stride_asym": ((6, 2, 3, 2), 2, True, [2, 1], [1, 0, 2, 1], [1, 2], False, (2, 4, 8, 9)),
    "int32_cols": ((2, 8192, 3, 3), 1, True, [1, 1], [1, 1, 1, 1], [1, 1], True, (1, 8192, 3, 3)),
    "residual_relu": ((6, 4, 3, 3), 1, True, [1, 1], [1, 1, 1, 1], [1, 1], True, (2, 4, 5, 6)),
    # channels-last input and residual: a channels-last output, in the fake kernel too
    "channels_last_residual": ((6, 4, 3, 3), 1, True, [2, 2], [1, 1, 1, 1], [1, 1], True, (2, 4, 7, 6)),
}


@pytest.mark.parametrize("name", sorted(CONV_ARGSETS))
def test_opcheck_sparse_conv2d(name):
    shape, groups, bias, stride, padding, dilation, relu, xshape = CONV_ARGSETS[name]
    sw = SparseWeight.from_dense(sparse_dense(shape, 0.02 if shape[1] > 1000 else 0.4, 1), groups=groups)
    assert sw.col_idx.dtype == (torch.int32 if name == "int32_cols" else torch.int16)
    fmt = torch.channels_last if name.startswith("channels_last") else torch.contiguous_format
    x = torch.randn(xshape).contiguous(memory_format=fmt).requires_grad_(True)
    vals = sw.values.clone().requires_grad_(True)
    b = torch.randn(shape[0], requires_grad=True) if bias else None
    args = (x, vals, sw.col_idx, sw.row_ptr, list(shape), b, stride, padding, dilation, groups, relu)
    if "residual" in name:  # gradient flows to the residual too
        oh, ow = ops.conv_output_size(xshape[2], xshape[3], shape[2:], stride, padding, dilation)
        args += (torch.randn(xshape[0], shape[0], oh, ow).contiguous(memory_format=fmt).requires_grad_(True),)
    result = torch.library.opcheck(torch.ops.sparsecnn.sparse_conv2d.default, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("bias, relu, in_features", [(False, False, 20), (True, True, 20), (True, False, 70000)])
def test_opcheck_sparse_linear(bias, relu, in_features):
    sw = SparseWeight.from_dense(sparse_dense((5, in_features), 0.3 if in_features < 100 else 0.001, 2))
    x = torch.randn(3, in_features, requires_grad=True)
    vals = sw.values.clone().requires_grad_(True)
    b = torch.randn(5, requires_grad=True) if bias else None
    args = (x, vals, sw.col_idx, sw.row_ptr, 5, b, relu)
    result = torch.library.opcheck(torch.ops.sparsecnn.sparse_linear.default, args)
    assert all(v == "SUCCESS" for v in result.values()), result


# --------------------------------------------------------------------------------------------
# gradients (the op is float32 only: compare with a dense float32 reference)
# --------------------------------------------------------------------------------------------


def _grads(fn, *inputs):
    out = fn(*inputs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(99))
    return out, torch.autograd.grad(out, inputs, g)


def _close(a, b, name):
    tol = 1e-4 * (1 + b.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= tol, f"{name}: max abs error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize(
    "shape, groups, stride, padding, dilation, relu",
    [
        ((8, 3, 3, 3), 1, 1, 1, 1, False),
        ((8, 3, 3, 3), 1, 1, 1, 1, True),
        ((6, 2, 3, 2), 3, (2, 1), (0, 2, 1, 0), (1, 2), True),
        ((4, 1, 5, 5), 4, 1, "same", 2, False),  # depthwise, dilated, 'same'
        ((4, 4500, 3, 3), 2, 1, 1, 1, False),  # 40500 columns: int16 read as unsigned
    ],
)
def test_conv_gradients_match_dense(shape, groups, stride, padding, dilation, relu):
    wd = sparse_dense(shape, 0.01 if shape[1] > 1000 else 0.5, 3)
    sw = SparseWeight.from_dense(wd, groups=groups)
    nnz_rows = torch.repeat_interleave(torch.arange(shape[0]), (sw.row_ptr[1:] - sw.row_ptr[:-1]).long())
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, shape[1] * groups, 9, 8, generator=gen, requires_grad=True)
    vals = sw.values.clone().requires_grad_(True)
    b = torch.randn(shape[0], generator=gen, requires_grad=True)

    def sparse_fn(x, vals, b):
        w = SparseWeight(vals, sw.col_idx, sw.row_ptr, shape, groups)
        return sparsecnn.sparse_conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, relu=relu)

    mask = wd != 0

    def dense_fn(x, vals, b):
        w = torch.zeros(shape).masked_scatter(mask, vals)  # row-major = CSR order
        t, bo, l, r = ops.resolve_padding(padding, shape[2:], (stride, stride) if isinstance(stride, int) else stride,
                                          (dilation, dilation) if isinstance(dilation, int) else dilation)
        y = F.conv2d(F.pad(x, (l, r, t, bo)), w, b, stride, 0, dilation, groups)
        return torch.relu(y) if relu else y

    assert int(mask.sum()) == vals.numel() == nnz_rows.numel()
    y, (gx, gv, gb) = _grads(sparse_fn, x, vals, b)
    yd, (gxd, gvd, gbd) = _grads(dense_fn, x, vals, b)
    _close(y, yd, "output")
    _close(gx, gxd, "grad x")
    _close(gv, gvd, "grad values")
    _close(gb, gbd, "grad bias")
    assert gv.shape == vals.shape and gv.abs().sum() > 0


@pytest.mark.parametrize("relu, in_features", [(False, 30), (True, 30), (True, 70000)])
def test_linear_gradients_match_dense(relu, in_features):
    wd = sparse_dense((6, in_features), 0.3 if in_features < 100 else 0.001, 5)
    sw = SparseWeight.from_dense(wd)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, in_features, generator=gen, requires_grad=True)
    vals = sw.values.clone().requires_grad_(True)
    b = torch.randn(6, generator=gen, requires_grad=True)
    mask = wd != 0

    def sparse_fn(x, vals, b):
        return sparsecnn.sparse_linear(x, SparseWeight(vals, sw.col_idx, sw.row_ptr, sw.shape), b, relu=relu)

    def dense_fn(x, vals, b):
        y = F.linear(x, torch.zeros(wd.shape).masked_scatter(mask, vals), b)
        return torch.relu(y) if relu else y

    y, gs = _grads(sparse_fn, x, vals, b)
    yd, gd = _grads(dense_fn, x, vals, b)
    _close(y, yd, "output")
    for a, d, n in zip(gs, gd, ("x", "values", "bias")):
        _close(a, d, f"grad {n}")


def test_module_backward_through_buffers_is_inference_only():
    """Module buffers do not require grad; the input gradient still flows."""
    m = SparseConv2d.from_dense(nn.Conv2d(2, 3, 3, padding=1))
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    m(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and x.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# torch.compile / torch.export
# --------------------------------------------------------------------------------------------


def small_model():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1, stride=2)
    lin = nn.Linear(8 * 4 * 4, 10)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.3)
        lin.weight.mul_(torch.rand_like(lin.weight) < 0.2)
    dense = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), lin).eval()
    sparse = nn.Sequential(SparseConv2d.from_dense(conv), nn.ReLU(), nn.Flatten(), SparseLinear.from_dense(lin)).eval()
    return dense, sparse


@pytest.fixture(scope="module")
def models():
    return small_model()


def test_sparse_model_matches_dense(models):
    dense, sparse = models
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        _close(sparse(x), dense(x), "model")


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_matches_eager(models, backend):
    torch._dynamo.reset()
    _, sparse = models
    compiled = torch.compile(sparse, backend=backend, fullgraph=True)
    for n in (2, 3):
        x = torch.randn(n, 3, 8, 8)
        with torch.no_grad():
            assert torch.equal(compiled(x), sparse(x))


def _have_inductor() -> bool:
    if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
        return False
    try:
        import torch._inductor  # noqa: F401
    except Exception:  # pragma: no cover
        return False
    return True


@pytest.mark.skipif(not _have_inductor(), reason="inductor needs a C++ compiler")
def test_torch_compile_inductor(models):
    torch._dynamo.reset()
    _, sparse = models
    compiled = torch.compile(sparse)  # default backend: inductor
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = sparse(x)
        y = compiled(x)
    _close(y, ref, "inductor")


def test_torch_export(models):
    _, sparse = models
    x = torch.randn(2, 3, 8, 8)
    ep = torch.export.export(sparse, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("sparsecnn.sparse_conv2d" in t for t in targets), targets
    assert any("sparsecnn.sparse_linear" in t for t in targets), targets
    with torch.no_grad():
        assert torch.equal(ep.module()(x), sparse(x))
        x2 = torch.randn(2, 3, 8, 8)
        assert torch.equal(ep.module()(x2), sparse(x2))


def test_torch_export_dynamic_batch(models):
    _, sparse = models
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(sparse, (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: batch},))
    for n in (1, 5):
        x = torch.randn(n, 3, 8, 8)
        with torch.no_grad():
            assert torch.equal(ep.module()(x), sparse(x))


# --------------------------------------------------------------------------------------------
# ISA selection
# --------------------------------------------------------------------------------------------


def _run_py(code: str, env_isa: str | None):
    env = {k: v for k, v in os.environ.items() if k != "SPARSECNN_ISA"}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    if env_isa is not None:
        env["SPARSECNN_ISA"] = env_isa
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


_ISA_CODE = """
import sparsecnn.ops as o, torch, sparsecnn
print(o.active_isa())
w = torch.zeros(2, 1, 3, 3); w[0, 0, 1, 1] = 2.0
y = sparsecnn.sparse_conv2d(torch.ones(1, 1, 4, 4), sparsecnn.SparseWeight.from_dense(w), padding=1)
print(float(y[0, 0].sum()), float(y[0, 1].sum()))
o.set_isa("auto")
print(o.active_isa())
"""


def test_isa_env_var_forces_portable():
    proc = _run_py(_ISA_CODE, "portable")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split()
    assert lines == ["portable", "32.0", "0.0", "portable"], proc.stdout  # 'auto' honours the env var


def test_isa_env_var_unknown_name_is_a_clear_error():
    proc = _run_py(_ISA_CODE, "sse9")
    assert proc.returncode != 0
    assert "ValueError" in proc.stderr and "unknown ISA 'sse9'" in proc.stderr, proc.stderr[-2000:]
    assert "Segmentation" not in proc.stderr


def test_isa_env_var_unsupported_name():
    unsupported = [n for n in ("avx512", "avx2") if not ops.isa_supported(n)]
    if not unsupported:
        pytest.skip("this CPU supports every variant")
    proc = _run_py(_ISA_CODE, unsupported[0])
    assert proc.returncode != 0
    assert "not supported by this CPU" in proc.stderr, proc.stderr[-2000:]


def test_isa_default_is_best_supported():
    proc = _run_py("import sparsecnn.ops as o; print(o.active_isa())", None)
    assert proc.returncode == 0, proc.stderr[-2000:]
    best = next(n for n in ("avx512", "avx2", "portable") if ops.isa_supported(n))
    assert proc.stdout.strip() == best


def test_set_isa_and_use_isa():
    assert ops.isa_supported("portable")
    assert not ops.isa_supported("sse9") and not ops.isa_supported("")
    before = ops.active_isa()
    with pytest.raises(ValueError, match="unknown ISA 'sse9'"):
        ops.set_isa("sse9")
    assert ops.active_isa() == before
    with ops.use_isa("portable"):
        assert ops.active_isa() == "portable"
    assert ops.active_isa() == before
    with pytest.raises(RuntimeError, match="boom"):
        with ops.use_isa("portable"):
            raise RuntimeError("boom")
    assert ops.active_isa() == before
    with pytest.raises(ValueError, match="unknown ISA"):
        with ops.use_isa("AVX2"):  # names are case sensitive
            pass
    assert ops.active_isa() == before
    for name in ("avx512", "avx2"):
        if not ops.isa_supported(name):
            with pytest.raises(ValueError, match="not supported by this CPU"):
                ops.set_isa(name)


def test_isa_variants_agree(models):
    """Every supported variant gives (numerically) the same output as the default one."""
    _, sparse = models
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        ref = sparse(x)
        for name in ("avx512", "avx2", "portable"):
            if ops.isa_supported(name):
                with ops.use_isa(name):
                    _close(sparse(x), ref, name)


def test_use_isa_can_be_nested():
    """``with use_isa(a): with use_isa(b): ...`` must not deadlock (run in a subprocess with a
    timeout, so a hang fails this test instead of the whole session)."""
    code = (
        "import sparsecnn.ops as o\n"
        "before = o.active_isa()\n"
        "with o.use_isa('portable'):\n"
        "    with o.use_isa('portable'):\n"
        "        inner = o.active_isa()\n"
        "    outer = o.active_isa()\n"
        "print(inner, outer, o.active_isa() == before)\n"
    )
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=15,
                              env={**os.environ, "PYTHONPATH": SRC})
    except subprocess.TimeoutExpired:
        pytest.fail("nested use_isa() deadlocked (sparsecnn/ops/isa.py holds a non-reentrant lock across the block)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["portable", "portable", "True"]


# ---------------------------------------------------------------------- weight cache
def test_weight_cache_hits_rebuilds_and_evicts():
    """Derived objects are built once per tensor objects and key, rebuilt after an in-place
    change, never matched to a new tensor that reuses a freed one's id, and evicted LRU."""
    from sparsecnn.ops.weight_cache import WeightCache

    cache, builds = WeightCache(size=2), []

    def build(t):
        builds.append(1)
        return float(t.sum())

    a = torch.ones(4)
    assert cache.get((a,), "k", lambda: build(a)) == 4.0
    assert cache.get((a,), "k", lambda: build(a)) == 4.0 and len(builds) == 1
    assert cache.get((a,), "other", lambda: build(a)) == 4.0 and len(builds) == 2  # another key
    a.mul_(2.0)  # version bump
    assert cache.get((a,), "k", lambda: build(a)) == 8.0 and len(builds) == 3
    b, c = torch.ones(2), torch.ones(3)
    cache.get((b,), "k", lambda: build(b))
    cache.get((c,), "k", lambda: build(c))
    assert len(cache) == 2  # size 2: the oldest entries went
    old_id = id(b)
    del b
    d = torch.zeros(5)  # may reuse b's id: the weak reference tells them apart
    got = cache.get((d,), "k", lambda: build(d))
    assert got == 0.0 or id(d) != old_id
    with torch.inference_mode():
        e = torch.ones(2)
        n = len(builds)
        cache.get((e,), "k", lambda: build(e))
        cache.get((e,), "k", lambda: build(e))
        assert len(builds) == n + 2  # no version counter: never cached
