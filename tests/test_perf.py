"""Tests of the roofline performance model (sparsecnn.perf)."""

from __future__ import annotations

import argparse
import json
import logging
import math

import pytest
import torch
from torch import nn

from sparsecnn.perf import LayerSpec, PerfModel, Prediction
from sparsecnn.perf import calibrate as cal
from sparsecnn.perf.validate import measured_breakeven

CONV5 = LayerSpec("conv5", "conv", 384, 256, (3, 3), (1, 1), (1, 1), (1, 1), 2, (13, 13))
CONV2 = LayerSpec("conv2", "conv", 96, 256, (5, 5), (1, 1), (2, 2), (1, 1), 2, (27, 27))
FC = LayerSpec("fc", "linear", 4096, 4096)


def _model(**kw) -> PerfModel:
    base = dict(F=150e9, B=30e9, a=2.5, b=2.0, t0=20e-6, B_llc=80e-0 * 1e9, B_copy=25e9, F_conv=170e9)
    base.update(kw)
    return PerfModel.synthetic(**base)


def _kernel_available() -> bool:
    try:
        import sparsecnn

        return hasattr(sparsecnn, "sparse_conv2d") and hasattr(sparsecnn._core, "stream_triad")
    except Exception:
        return False


# ---------------------------------------------------------------------- LayerSpec
def test_layerspec_from_conv2d():
    s = LayerSpec.from_module(nn.Conv2d(96, 256, 5, padding=2, groups=2), (8, 96, 27, 27), "conv2")
    assert (s.kind, s.name, s.groups, s.kernel, s.padding, s.stride) == ("conv", "conv2", 2, (5, 5), (2, 2), (1, 1))
    assert s.output_hw == (27, 27)
    macs = 256 * 48 * 25 * 27 * 27
    assert s.flops(1) == 2 * macs and s.flops(8) == 16 * macs
    assert s.act_bytes(2) == 4 * 2 * (96 + 256) * 27 * 27
    assert s.weight_bytes() == 4 * 256 * 48 * 25
    assert LayerSpec.from_dict(s.to_dict()) == s
    assert LayerSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_layerspec_strided_same_and_linear():
    s = LayerSpec.from_module(nn.Conv2d(3, 64, 7, stride=2, padding=3), (1, 3, 224, 224))
    assert s.output_hw == (112, 112)
    same = LayerSpec.from_module(nn.Conv2d(8, 8, 5, padding="same", dilation=2), (1, 8, 20, 20))
    assert same.padding == (4, 4) and same.output_hw == (20, 20)
    lin = LayerSpec.from_module(nn.Linear(4096, 1000), (16, 4096), "fc8")
    assert lin.kind == "linear" and lin.flops(16) == 2 * 16 * 4096 * 1000
    assert lin.weight_bytes() == 4 * 4096 * 1000 and lin.act_bytes(16) == 4 * 16 * (4096 + 1000)
    with pytest.raises(TypeError):
        LayerSpec.from_module(nn.ReLU(), (1, 3, 4, 4))


def test_kernel_widening():
    # padded width 15 -> 13 rows x 15 = 195 positions -> 208 (SIMD) for 169 useful
    assert CONV5.kernel_positions() == 208
    assert CONV5.widening() == pytest.approx(208 / 169)
    assert FC.widening() == 1.0
    wide = LayerSpec("w", "conv", 8, 8, (1, 1), input_hw=(64, 64))
    assert wide.widening() == 1.0 and wide.is_direct() and wide.copy_bytes(2) == wide.input_bytes(2)
    # stride 2, 3x3, pad 1 on 56x56: OW=28, dqmax = 1, wrow = 29 -> aligned to 32 (+10 %),
    # two phases each way, hrows = OH + 1 + 1, two replicas (dq = 0, 1)
    s2 = LayerSpec("s2", "conv", 128, 128, (3, 3), (2, 2), (1, 1), input_hw=(56, 56))
    assert s2.shifts() == (1, 1) and s2.row_width() == 32 and s2.replicas() == 2 and not s2.is_direct()
    assert s2.copy_bytes(1) == s2.input_bytes(1) + 4 * 128 * 4 * 30 * 32 * 2
    # 5x5 pad 2 on 27x27 (CaffeNet conv2): wrow = 31 -> 32, 5 replicas, hrows = 27 + 4 + 1
    c2 = CONV2
    assert c2.row_width() == 32 and c2.replicas() == 5 and c2.phased_rows() == 32
    assert c2.copy_bytes(2) == c2.input_bytes(2) + 4 * 2 * 96 * 32 * 32 * 5
    assert c2.kernel_positions() == 27 * 32
    # 7x7 map, 3x3: wrow = 9 -> 16 would widen by 78 %: not aligned, one copy
    s7 = LayerSpec("s7", "conv", 512, 512, (3, 3), padding=(1, 1), input_hw=(7, 7))
    assert s7.row_width() == 9 and s7.replicas() == 1 and s7.kernel_positions() == 64
    # 7x7 kernel, stride 1 (dqmax = 6: 7 replicas > 5): never aligned
    big = LayerSpec("k7", "conv", 3, 64, (7, 7), (1, 1), (3, 3), input_hw=(60, 60))
    assert big.replicas() == 1 and big.row_width() == 60 + 6
    # stride 2 (ResNet stem): dqmax = 3, wrow = 115 -> 128 (+11 %), 4 replicas, 4 phases
    stem = LayerSpec("k7", "conv", 3, 64, (7, 7), (2, 2), (3, 3), input_hw=(224, 224))
    assert stem.replicas() == 4 and stem.row_width() == 128 and stem.phases() == 4


def test_kernel_plan_mirrors_conv_cpp():
    # 13x13 3x3: 13 rows x 16 = 208 positions = 13 vectors, one chunk; 2 images per tile (26 <= 28)
    assert CONV5.kernel_plan(1) == {"vectors": 13, "chunks": 1, "nb": 1, "blocks": 1}
    assert CONV5.kernel_plan(16) == {"vectors": 13, "chunks": 1, "nb": 2, "blocks": 8}
    # 27x32 = 864 positions = 54 vectors -> 4 balanced chunks of <= 14: nb = 2 (28 <= 28)
    assert CONV2.kernel_plan(16) == {"vectors": 54, "chunks": 4, "nb": 2, "blocks": 8}
    # 7x7 1x1 direct: 49 positions -> 4 vectors, 4 images per tile
    s = LayerSpec("c", "conv", 512, 2048, (1, 1), input_hw=(7, 7))
    assert s.kernel_plan(16) == {"vectors": 4, "chunks": 1, "nb": 4, "blocks": 4}
    assert s.kernel_plan(3)["nb"] == 3


# ---------------------------------------------------------------------- formulas
@pytest.mark.parametrize("spec,batch", [(CONV5, 1), (CONV5, 16), (CONV2, 4), (FC, 1), (FC, 64)])
@pytest.mark.parametrize("c_nz,c_out", [(0.0, 0.0), (2e-9, 1e-9)])
@pytest.mark.parametrize("a_batch", [None, 4.0])
def test_bounds_closed_form(spec, batch, c_nz, c_out, a_batch):
    m = _model(c_nz=c_nz, c_out=c_out, threads=2, a_batch=a_batch)
    t_dense = m.dense_time(spec, batch)
    plan = spec.kernel_plan(batch, 16, 28)
    fixed = m.t0 + m.pad_time(spec, batch) + c_out * batch * spec.out_channels * plan["vectors"] / 2
    bw = m.bandwidth(spec, batch)
    a = a_batch if (a_batch and plan["nb"] > 1) else m.a
    kc = (a * spec.flops(batch) * spec.widening() / m.machine.F
          + c_nz * spec.weight_numel * plan["chunks"] * plan["blocks"] / 2)
    b0 = spec.act_bytes(batch) / bw
    kb = m.b * spec.weight_bytes() / m.weight_bandwidth(spec)
    be = min((t_dense - fixed) / kc, (t_dense - fixed - b0) / kb)
    sat = min(1.0, max(0.0, (fixed + b0) / (kc - kb))) if kc > kb else 1.0
    ur = m.useful_range(spec, batch)
    assert ur is not None
    assert ur[0] == pytest.approx(min(be, 1.0), rel=1e-12)
    assert ur[1] == pytest.approx(min(sat, ur[0]), rel=1e-12)
    if be < 1.0:
        assert m.predict(spec, ur[0], batch).speedup == pytest.approx(1.0, rel=1e-9)
        assert m.predict(spec, ur[0] * 0.9, batch).speedup > 1.0
    if 0.0 < sat < 1.0:  # FMA work = density-independent floor (fixed + S_A/B + b x S_W/B)
        p = m.predict(spec, sat, batch)
        assert p.t_compute == pytest.approx(p.t_fixed + p.t_bw, rel=1e-9)
        assert p.t_sparse <= 2 * p.t_compute * (1 + 1e-9)
    # the compute term has no constant part: the saturation density is never 0
    assert ur[1] > 0


def test_saturation_is_positive_for_small_convs():
    # fmnist_vgg-like convs: the old fit made them compute bound at every density (sat = 0),
    # so GSL's stop rule never fired
    m = _model(threads=2, c_nz=1e-9, c_out=2e-9, a=1.0, a_batch=1.8, t0=40e-6)
    for cin, cout, hw in ((1, 32, 28), (32, 32, 28), (32, 64, 14), (64, 64, 14), (64, 128, 7)):
        s = LayerSpec("c", "conv", cin, cout, (3, 3), padding=(1, 1), input_hw=(hw, hw))
        for batch in (1, 64):
            ur = m.useful_range(s, batch)
            if ur is not None:
                assert 0 < ur[1] <= ur[0]


def test_paper_model_reduces_to_paper_formula():
    # no overheads, no widening (wide map), no padding: t_sparse = max(a x C/F, (S_A + b x S_W)/B)
    spec = LayerSpec("c", "conv", 256, 256, (1, 1), input_hw=(32, 64))
    m = PerfModel.synthetic(F=100e9, B=10e9, a=3.0, b=2.0)
    x = 0.1
    p = m.predict(spec, x, 1)
    c, sa, sw = spec.flops(1), spec.act_bytes(1), spec.weight_bytes()
    assert p.t_dense == pytest.approx(c / 100e9)
    # the only extra is the kernel's read-only scan of the input (t_fixed)
    assert p.t_fixed == pytest.approx(spec.input_bytes(1) / 10e9)
    assert p.t_sparse - p.t_fixed == pytest.approx(max(3 * x * c / 100e9, (sa + 2 * x * sw) / 10e9))
    assert m.predict(spec, 1 / 3, 1).t_compute == pytest.approx(p.t_dense)


def test_monotone_in_density_and_bound_switch():
    m = _model()
    xs = [0.001, 0.005, 0.01, 0.03, 0.1, 0.3, 0.6, 1.0]
    preds = [m.predict(CONV5, x, 1) for x in xs]
    assert all(isinstance(p, Prediction) for p in preds)
    sp = [p.speedup for p in preds]
    ts = [p.t_sparse for p in preds]
    assert all(a >= b for a, b in zip(sp, sp[1:]))
    assert all(a <= b for a, b in zip(ts, ts[1:]))
    assert preds[-1].bound == "compute"
    assert m.predict(FC, 0.05, 1).bound == "bandwidth"
    # more batch amortises the fixed cost: speedup at fixed density does not drop
    assert m.predict(CONV5, 0.05, 16).speedup >= m.predict(CONV5, 0.05, 1).speedup * 0.999


def test_hopeless_layer_returns_none():
    m = PerfModel.synthetic(F=100e9, B=10e9, a=3.0, b=2.0)
    thin = LayerSpec("thin", "conv", 8, 8, (1, 1), input_hw=(112, 112))  # activation-bound 1x1
    assert m.useful_range(thin, 1) is None
    assert m.breakeven_density(thin, 1) is None
    # a huge fixed cost also kills small layers
    tiny = LayerSpec("tiny", "conv", 16, 16, (3, 3), padding=(1, 1), input_hw=(8, 8))
    assert PerfModel.synthetic(F=100e9, B=10e9, t0=1e-3).useful_range(tiny, 1) is None


def test_density_validation_and_roundtrip():
    m = _model()
    m.dense["k|b1"] = 1e-3
    with pytest.raises(ValueError):
        m.predict(CONV5, 1.5, 1)
    m2 = PerfModel.from_dict(json.loads(json.dumps(m.to_dict())))
    assert m2.to_dict() == m.to_dict()
    assert m2.predict(CONV5, 0.1, 2) == m.predict(CONV5, 0.1, 2)


def test_measured_breakeven():
    assert measured_breakeven([0.1, 0.2, 0.4], [4.0, 2.0, 0.5])[0] == pytest.approx(0.2 * 2 ** 0.5, rel=1e-5)
    assert measured_breakeven([0.1, 0.2], [3.0, 2.0]) == (0.2, ">")
    assert measured_breakeven([0.1, 0.2], [0.9, 0.5]) == (0.1, "<")


# ---------------------------------------------------------------------- cache
@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECNN_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_calibrate(threads=None, quick=False, points=None):
        calls.append((threads, quick))
        return _model(threads=threads or 1)

    monkeypatch.setattr(cal, "calibrate", fake_calibrate)
    return tmp_path, calls


def test_cache_roundtrip_and_recalibrate(cache_env):
    tmp_path, calls = cache_env
    m1 = PerfModel.load_or_calibrate(threads=2)
    path = cal.cache_path(2)
    assert path.parent == tmp_path and path.exists() and len(calls) == 1
    m2 = PerfModel.load_or_calibrate(threads=2)
    assert len(calls) == 1 and m2.to_dict() == m1.to_dict()
    PerfModel.load_or_calibrate(threads=2, recalibrate=True)
    assert len(calls) == 2
    PerfModel.load_or_calibrate(threads=1)  # other thread count -> other key
    assert len(calls) == 3 and cal.cache_path(1) != path


@pytest.mark.parametrize("content", ["{not json", "[]", '{"key": 1}', ""])
def test_corrupted_cache_recalibrates_with_warning(cache_env, caplog, content):
    tmp_path, calls = cache_env
    path = cal.cache_path(2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="sparsecnn.perf"):
        m = PerfModel.load_or_calibrate(threads=2)
    assert isinstance(m, PerfModel) and len(calls) == 1
    assert any("recalibrating" in r.getMessage() for r in caplog.records)
    assert json.loads(path.read_text())["model"]["a"] == m.a  # replaced by a good file


def test_stale_cache_recalibrates_with_warning(cache_env, caplog):
    tmp_path, calls = cache_env
    PerfModel.load_or_calibrate(threads=2)
    path = cal.cache_path(2)
    doc = json.loads(path.read_text())
    doc["key"]["version"] = "0.0.0-old"
    doc["model"]["a"] = 99.0
    path.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="sparsecnn.perf"):
        m = PerfModel.load_or_calibrate(threads=2)
    assert len(calls) == 2 and m.a != 99.0
    assert any("stale" in r.getMessage() for r in caplog.records)
    # bad constants inside a well-keyed file are also caught
    doc = json.loads(path.read_text())
    doc["model"]["machine"]["F"] = -1
    path.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="sparsecnn.perf"):
        PerfModel.load_or_calibrate(threads=2)
    assert len(calls) == 3


def test_nelder_mead_fit_recovers_constants():
    s7 = LayerSpec("s7", "conv", 256, 256, (1, 1), input_hw=(7, 7))
    specs = [(CONV5, 0.02, 1), (CONV5, 0.3, 1), (CONV5, 0.1, 8), (CONV2, 0.1, 4), (CONV2, 0.05, 16),
             (s7, 0.05, 8), (CONV2, 0.3, 1), (s7, 0.3, 1),
             (LayerSpec("t", "conv", 16, 16, (3, 3), padding=(1, 1), input_hw=(8, 8)), 0.2, 1)]
    truth = _model(a=1.1, a_batch=1.8, t0=40e-6, threads=2, B_copy=8e9)
    truth.machine.B_copy_llc = 30e9
    cal._set_params(truth, [1.1, 1.8, 40e-6, 1 / 8e9, 1 / 30e9])  # ties c_nz, c_out to a
    samples = [{"spec": s.to_dict(), "density": x, "batch": b, "t": truth.predict(s, x, b).t_sparse}
               for s, x, b in specs]
    m = _model(a=1.0, t0=1e-6, threads=2, B_copy=8e9, B_llc=30e9)  # the probes (priors) agree
    a, b, t0, rms = cal.fit_kernel(m, samples)
    assert rms < 2e-3 and b == 2.0  # b is fixed, not fitted
    assert a == pytest.approx(1.1, rel=0.03) and m.a_batch == pytest.approx(1.8, rel=0.03)
    assert t0 == pytest.approx(40e-6, rel=0.1) and m.machine.B_copy_llc == pytest.approx(30e9, rel=0.1)


# ---------------------------------------------------------------------- CLI
def test_network_layers_and_cli_table(cache_env, capsys):
    from sparsecnn.perf.cli import add_parser, network_layers

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    with torch.no_grad():
        net[0].weight[:, :, 0] = 0
    layers = network_layers(net, (2, 3, 6, 6))
    assert [s.name for s, _ in layers] == ["0", "3"]
    assert layers[0][0].input_hw == (6, 6) and layers[0][1] == pytest.approx(2 / 3)
    net.default_input_shape = (1, 3, 6, 6)
    tmp_path, _ = cache_env
    path = tmp_path / "net.pt"
    torch.save(net, path)
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="cmd"))
    args = p.parse_args(["model", str(path), "--batch", "2", "--json", "--no-measure-dense"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["layer"] for r in out["layers"]] == ["0", "3"]
    assert all(r["speedup"] > 0 for r in out["layers"])


# ---------------------------------------------------------------------- end to end (needs kernel)
@pytest.mark.skipif(not _kernel_available(), reason="compiled sparse kernel not built")
def test_quick_calibration_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECNN_CACHE_DIR", str(tmp_path))
    m = PerfModel.load_or_calibrate(recalibrate=True, quick=True)
    for v in (m.a, m.b, m.machine.F, m.machine.B_dram, m.machine.B_llc, m.machine.B_copy):
        assert math.isfinite(v) and v > 0
    assert m.t0 >= 0 and cal.cache_path().exists()
    p = m.predict(CONV5, 0.1, 1)
    assert math.isfinite(p.speedup) and p.speedup > 0
    again = PerfModel.load_or_calibrate(quick=True)  # from the cache, no recalibration
    assert (again.a, again.b, again.t0, again.machine) == (m.a, m.b, m.t0, m.machine)
