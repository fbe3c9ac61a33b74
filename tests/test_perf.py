"""Tests of the roofline performance model (sparsecnn.perf)."""

from __future__ import annotations

import argparse
import json
import logging
import math

import numpy as np
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


# ---------------------------------------------------------------------- machine probe
def test_core_round_trip_probe(capsys):
    """The core-to-core round trip is a positive time between two allowed CPUs, bad CPUs and
    round counts raise, and ``sparsecnn info --json`` reports it."""
    import os

    from sparsecnn import _core
    from sparsecnn.cli import main

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("one CPU: no round trip to measure")
    t = _core.core_round_trip_ns(cpus[0], cpus[1], 2000)
    assert 1.0 < t < 1e6
    with pytest.raises(ValueError, match="must differ"):
        _core.core_round_trip_ns(cpus[0], cpus[0], 10)
    with pytest.raises(ValueError, match="not one this process may run on"):
        _core.core_round_trip_ns(cpus[0], 100000, 10)
    with pytest.raises(ValueError, match="rounds"):
        _core.core_round_trip_ns(cpus[0], cpus[1], 0)
    assert sorted(os.sched_getaffinity(0)) == cpus  # the caller's affinity is given back
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["core_round_trip_ns"] > 0


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


def test_kernel_work_is_the_cores_plan():
    """The model prices the plan the compiled core makes for the layer, not a copy of it."""
    import sparsecnn.ops as ops

    with ops.use_isa("avx512" if ops.isa_supported("avx512") else "portable"):
        w16 = 16 if ops.active_isa() == "avx512" else 8
        # 13x13 3x3 (CaffeNet conv5) at batch 1: per-image kernel, rows widened to 16:
        # 13 rows x 16 = 13 vectors per image, one tile; 3 shifted replicas laid out, at batch 1
        # once per thread at any density (the local schedule), once in all on one thread
        w = CONV5.kernel_work(1, threads=2)
        if w16 == 16:
            copy = 4 * 384 * 16 * 16 * 3
            assert (w["pixel_images"], w["lanes_images"], w["vec_fmas"], w["visits"]) == (1, 0, 13, 1)
            assert w["layout_bytes"] == 2 * copy and w["read_bytes"] == 4 * 384 * 13 * 13
            assert w["local_density"] == 0.0
            assert CONV5.kernel_work(1, threads=1, density=0.1)["layout_bytes"] == copy
            # batch 3 (row mode: 3 one-image blocks do not split evenly over 2 threads): from
            # density 2 threads x 2 x 55296 layout vectors / (256 x 1728 x 39) FMAs = 0.0128 up
            w3 = CONV5.kernel_work(3, threads=2, density=0.01)
            assert not w3["image_mode"] and w3["local_density"] == pytest.approx(2 * 2 * 55296 / (256 * 1728 * 39))
            assert w3["layout_bytes"] == 3 * copy
            assert CONV5.kernel_work(3, threads=2, density=0.1)["layout_bytes"] == 2 * 3 * copy
        else:
            # 8-float vectors: no replicas and rows not widened to a multiple of the width (a
            # misaligned 32-byte load crosses a line only half the time): one copy of 16 rows
            # (13 + 2 padding + 1 of slack) x 15 columns, 13 x 15 positions in 25 vectors
            w = CONV5.kernel_work(1, threads=1, density=0.1)
            assert w["layout_bytes"] == 4 * 384 * 16 * 15 and w["vec_fmas"] == 25
        # a batch of 16 (+1): one block of 16 in the batch-lanes kernel (169 pixel vectors per
        # nonzero, no widened lanes), the last image per image
        w = CONV5.kernel_work(w16 + 1, threads=2)
        assert w["lanes_images"] == w16 and w["pixel_images"] == 1
        assert w["lanes_vec_fmas"] == 13 * 13
        if w16 == 16:
            # tiles of 2 rows x 13 pixels: a channel's slice is 4 x 15 vectors (3840 B), 6 fit
            # the 24 KB of L1 a chunk may take; chunked from 16 nonzeros per chunk and output
            # channel, i.e. density 16 / (6 * 9); 192 channels per group = 32 chunks, whose
            # switches reload and store every output vector 31 times
            assert w["chunk_density"] == pytest.approx(16 / 54)
            dense = CONV5.kernel_work(w16 + 1, threads=2, density=0.5)
            assert dense["chunked"] and not w["chunked"] and w["chunk_vectors"] == 0
            assert dense["chunk_vectors"] == 256 * 13 * 13 * 2 * 31
        assert w["chunk_density"] > 0 and CONV5.kernel_work(1, threads=2)["chunk_density"] == math.inf
        # strided layers take the batch-lanes kernel, their input split into the 2 x 2 stride
        # phases: with AVX-512 from 128 nonzeros per output channel (of 128 x 9 columns here),
        # with AVX2 at any density
        s2 = LayerSpec("s2", "conv", 128, 128, (3, 3), (2, 2), (1, 1), (1, 1), 1, (56, 56))
        if w16 == 8:
            assert s2.kernel_work(16, 2)["lanes_density"] == 0.0
            assert s2.kernel_work(16, 2, 0.05)["lanes_images"] == 16
        if w16 == 16:
            assert s2.kernel_work(16, 2)["lanes_density"] == pytest.approx(128 / 1152)
            assert s2.kernel_work(16, 2, 0.05)["lanes_images"] == 0
            assert s2.kernel_work(16, 2, 0.3)["lanes_images"] == 16
            # 29 x 29 vectors per phase plane; on 2 threads two bands of 14 output rows, each
            # laying out 15 of the 29 phase rows
            assert s2.kernel_work(16, 1, 0.3)["layout_bytes"] == 4 * 16 * 128 * 4 * 29 * 29
            assert s2.kernel_work(16, 2, 0.3)["layout_bytes"] == 4 * 16 * 128 * 4 * 30 * 29
        assert s2.kernel_work(1, 2, 0.3)["lanes_images"] == 0 and s2.kernel_work(1, 2)["lanes_density"] == math.inf
        # 1x1 unpadded layers are read in place (no layout), never in the lanes kernel
        one = LayerSpec("c", "conv", 512, 2048, (1, 1), input_hw=(7, 7))
        w = one.kernel_work(16, threads=2)
        assert w["layout_bytes"] == 0 and w["lanes_images"] == 0 and w["pixel_images"] == 16
        # linear: the batch is the SIMD dimension
        w = FC.kernel_work(16, threads=2)
        assert w["vec_fmas"] == -(-16 // w16) and w["layout_bytes"] == 4 * 16 * 4096
        assert FC.kernel_work(1)["layout_bytes"] == 0


def test_strided_layers_lay_out_per_thread_in_row_mode():
    """A strided layer with contiguous rows takes the local schedule (every thread lays out the
    input it reads) as stride-1 ones do, at batch 1 at any density, at batch 3 from the plan's
    density: with the vCPUs in two core complexes one shared layout made them 1.1-3x slower
    (csrc/conv_pixels.cpp)."""
    s2 = LayerSpec("s2", "conv", 128, 128, (3, 3), stride=(2, 2), padding=(1, 1), input_hw=(56, 56))
    for batch in (1, 3):
        w = s2.kernel_work(batch, threads=2, density=0.1)
        assert not w["image_mode"] and (w["local_density"] == 0 if batch == 1 else 0 < w["local_density"] < 0.1)
        assert w["layout_bytes"] == 2 * batch * s2.kernel_work(1, threads=1, density=0.1)["layout_bytes"]
    # below it, one layout for both threads
    below = s2.kernel_work(3, threads=2, density=0.5 * w["local_density"])
    assert below["layout_bytes"] == s2.kernel_work(3, threads=1, density=0.5 * w["local_density"])["layout_bytes"]


# ---------------------------------------------------------------------- formulas
@pytest.mark.parametrize("spec,batch", [(CONV5, 1), (CONV5, 16), (CONV2, 4), (FC, 1), (FC, 64)])
@pytest.mark.parametrize("visit,epi", [(0.0, 0.0), (3.0, 20.0)])
@pytest.mark.parametrize("a_lanes", [None, 4.0])
def test_bounds_closed_form(spec, batch, visit, epi, a_lanes):
    """gamma = 1 (the paper's linear model): the bounds have a closed form."""
    m = _model(visit_slots=visit, epi_slots=epi, threads=2, a_lanes=a_lanes)
    t_dense = m.dense_time(spec, batch)
    # the plan at the bounds, priced alike at both (CONV5 at batch 1 lays the input out once
    # per thread from density 0.013, below both)
    ur = m.useful_range(spec, batch)
    assert ur is not None
    x0 = ur[0]
    assert m.coefficients(spec, batch, ur[1]) == pytest.approx(m.coefficients(spec, batch, x0), rel=1e-12)
    w = spec.kernel_work(batch, 2, x0)
    tau_l = m.tau_lanes if m.tau_lanes is not None else m.tau_fma
    fixed = m.t0 + m.memory_time(spec, batch, x0) + w["epilogues"] * m.tau_epi / 2
    kc = spec.weight_numel * (w["vec_fmas"] * m.tau_fma + w["lanes_vec_fmas"] * tau_l + w["visits"] * m.tau_visit) / 2
    b0 = spec.act_bytes(batch) / m.bandwidth(spec, batch)
    kb = m.b * spec.weight_bytes() / m.weight_bandwidth(spec)
    be = min((t_dense - fixed) / kc, (t_dense - fixed - b0) / kb)
    sat = min(1.0, max(0.0, (fixed + b0) / (kc - kb))) if kc > kb else 1.0
    assert ur[0] == pytest.approx(min(be, 1.0), rel=1e-9)
    assert ur[1] == pytest.approx(min(sat, ur[0]), rel=1e-9)
    # the compute term has no constant part: the saturation density is never 0
    assert ur[1] > 0


@pytest.mark.parametrize("gamma", [0.8, 0.9, 1.0])
@pytest.mark.parametrize("spec,batch", [(CONV5, 1), (CONV5, 16), (CONV2, 4), (FC, 64)])
def test_bounds_solve_their_equations(spec, batch, gamma):
    """With any gamma the bounds solve speedup = 1 and FMA work = density-independent floor."""
    m = _model(visit_slots=3.0, epi_slots=20.0, threads=2)
    m.gamma = gamma
    ur = m.useful_range(spec, batch)
    assert ur is not None
    be, sat = ur
    if be < 1.0:
        assert m.predict(spec, be, batch).speedup == pytest.approx(1.0, rel=1e-9)
        assert m.predict(spec, be * 0.9, batch).speedup > 1.0
    if 0.0 < sat < be:
        p = m.predict(spec, sat, batch)
        assert p.t_compute == pytest.approx(p.t_fixed + p.t_bw, rel=1e-9)
        assert p.t_sparse <= 2 * p.t_compute * (1 + 1e-9)
        assert m.predict(spec, sat * 0.9, batch).t_compute < m.predict(spec, sat * 0.9, batch).t_fixed + \
            m.predict(spec, sat * 0.9, batch).t_bw
    assert 0 < sat <= be


def test_saturation_is_positive_for_small_convs():
    # fmnist_vgg-like convs: a fit that made them compute bound at every density (sat = 0)
    # would keep GSL's stop rule from ever firing
    m = _model(threads=2, visit_slots=3.0, epi_slots=20.0, a=1.0, a_lanes=1.5, t0=20e-6)
    for cin, cout, hw in ((1, 32, 28), (32, 32, 28), (32, 64, 14), (64, 64, 14), (64, 128, 7)):
        s = LayerSpec("c", "conv", cin, cout, (3, 3), padding=(1, 1), input_hw=(hw, hw))
        for batch in (1, 64):
            ur = m.useful_range(s, batch)
            if ur is not None:
                assert 0 < ur[1] <= ur[0]


def test_paper_model_reduces_to_paper_formula():
    # no overheads, no widening (a 1x1 layer whose map is a multiple of the vector width, read
    # in place): t_sparse = max(a x C/F, (S_A + b x S_W)/B)
    spec = LayerSpec("c", "conv", 256, 256, (1, 1), input_hw=(32, 64))
    m = PerfModel.synthetic(F=100e9, B=10e9, a=3.0, b=2.0)
    x = 0.1
    p = m.predict(spec, x, 1)
    c, sa, sw = spec.flops(1), spec.act_bytes(1), spec.weight_bytes()
    assert p.t_dense == pytest.approx(c / 100e9)
    # the only extra is the output stream (the input's read-only scan goes with the FMA loop's
    # reads of the same input, priced by the bandwidth roof)
    assert p.t_fixed == pytest.approx(spec.output_bytes(1) / 10e9)
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
    assert _model(B=5e9, B_llc=5e9).predict(FC, 0.05, 1).bound == "bandwidth"
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
    assert json.loads(path.read_text())["model"]["tau_fma"] == m.tau_fma  # replaced by a good file


def test_stale_cache_recalibrates_with_warning(cache_env, caplog):
    tmp_path, calls = cache_env
    PerfModel.load_or_calibrate(threads=2)
    path = cal.cache_path(2)
    doc = json.loads(path.read_text())
    doc["key"]["version"] = "0.0.0-old"
    doc["model"]["tau_fma"] = 99.0
    path.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="sparsecnn.perf"):
        m = PerfModel.load_or_calibrate(threads=2)
    assert len(calls) == 2 and m.tau_fma != 99.0
    assert any("stale" in r.getMessage() for r in caplog.records)
    # bad constants inside a well-keyed file are also caught
    doc = json.loads(path.read_text())
    doc["model"]["machine"]["F"] = -1
    path.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="sparsecnn.perf"):
        PerfModel.load_or_calibrate(threads=2)
    assert len(calls) == 3


def test_kernel_fit_recovers_constants():
    """Noise-free samples of a known model: the fit lands on the truth (the priors agree with it)."""
    s7 = LayerSpec("s7", "conv", 256, 256, (1, 1), input_hw=(7, 7))
    tiny = LayerSpec("t", "conv", 16, 16, (3, 3), padding=(1, 1), input_hw=(8, 8))
    c56 = LayerSpec("c56", "conv", 64, 64, (3, 3), padding=(1, 1), input_hw=(56, 56))
    specs = [(CONV5, 0.02, 1), (CONV5, 0.3, 1), (CONV5, 0.1, 16), (CONV5, 0.4, 16), (CONV2, 0.1, 4),
             (CONV2, 0.05, 16), (s7, 0.05, 8), (CONV2, 0.3, 1), (s7, 0.3, 1), (c56, 0.05, 1), (c56, 0.3, 16),
             (tiny, 0.2, 1), (tiny, 0.6, 1), (c56, 0.5, 16)]
    # some batch-lanes samples sweep in channel chunks, others not, so tau_chunk and tau_lanes
    # both show (with AVX-512 exactly CONV5 at 0.4 and c56 at 0.5; AVX2's narrower tiles chunk more)
    import sparsecnn.ops as ops

    lanes = [w for w in (s.kernel_work(b, 2, x) for s, x, b in specs) if w["lanes_images"]]
    chunked = sum(w["chunked"] for w in lanes)
    assert 2 <= chunked < len(lanes)
    if ops.active_isa() == "avx512":
        assert chunked == 2
    truth = _model(threads=2, B_copy=8e9)
    # the memory rates' priors come from the probes: B_copy and B_llc of _model
    cal._set_params(truth, [0.35e-9, 0.3e-9, 0.2e-9, 0.25e-9, 0.45e-9, 2.5e-9, 30e-9, 0.9, 25e-6, 1 / 8e9, 1 / 80e9])
    samples = [{"spec": s.to_dict(), "density": x, "batch": b, "t": truth.predict(s, x, b).t_sparse}
               for s, x, b in specs]
    m = _model(threads=2, B_copy=8e9)
    rms = cal.fit_kernel(m, samples)
    assert rms < 1e-6 and m.b == 2.0  # b is fixed, not fitted
    assert m.tau_fma == pytest.approx(0.35e-9, rel=1e-4) and m.tau_lanes == pytest.approx(0.3e-9, rel=1e-4)
    assert m.gamma == pytest.approx(0.9, rel=1e-4) and m.tau_direct == pytest.approx(0.45e-9, rel=1e-4)
    assert m.t0 == pytest.approx(25e-6, rel=1e-4) and m.tau_epi == pytest.approx(30e-9, rel=1e-4)
    assert m.tau_chunk == pytest.approx(0.2e-9, rel=1e-4)
    # the per-image kernel's chunks: priced where a sample takes them (AVX2: CaffeNet conv5 at
    # 0.3, batch 1; AVX-512's 13x13 tiles cover whole planes, so none there)
    if any(s.kernel_work(b, 2, x)["pixel_chunked"] for s, x, b in specs):
        assert m.tau_pchunk == pytest.approx(0.25e-9, rel=1e-4)
    else:
        assert m.tau_pchunk is None


def test_chunked_sweep_is_priced_from_its_density():
    """From the plan's chunk density up the batch-lanes part is priced as the chunked sweep
    (linear in x, plus the partial sums' traffic); the break-even lies where speedup = 1 on
    whichever side of the step the last crossing is."""
    m = _model(threads=2, visit_slots=3.0, epi_slots=20.0, a_lanes=2.0)
    m.gamma = 0.9
    w = CONV5.kernel_work(16, 2, 0.5)
    xc = w["chunk_density"]
    assert w["chunked"] and not CONV5.kernel_work(16, 2, 0.9 * xc)["chunked"]
    unpriced = m.predict(CONV5, 0.5, 16).t_compute
    m.tau_chunk = 0.5 * m.tau_lanes
    below, above = m.predict(CONV5, 0.9 * xc, 16), m.predict(CONV5, 0.5, 16)
    assert below.t_compute == pytest.approx(m.coefficients(CONV5, 16)[2] * 0.1 * (0.9 * xc / 0.1) ** 0.9)
    visits = CONV5.weight_numel * w["visits"] * m.tau_visit / 2 * 0.1 * (0.5 / 0.1) ** 0.9  # not chunk-dependent
    chunked = visits + (0.5 * CONV5.weight_numel * w["lanes_vec_fmas"] + w["chunk_vectors"]) * m.tau_chunk / 2
    assert above.t_compute == pytest.approx(chunked) and above.t_compute < unpriced
    for tau in (0.3, 0.5, 0.8, 1.5):  # chunks cheaper or dearer than the unchunked sweep
        m.tau_chunk = tau * m.tau_lanes
        be = m.breakeven_density(CONV5, 16)
        assert be is not None and 0 < be
        if be < 1:
            if abs(be - xc) < 1e-5:  # the step itself (the plan counts whole nonzeros): faster below, slower from it
                assert m.predict(CONV5, be * (1 - 1e-4), 16).speedup >= 1.0 > m.predict(CONV5, be * (1 + 1e-9), 16).speedup
            else:
                assert m.predict(CONV5, be, 16).speedup == pytest.approx(1.0, rel=1e-6)
            assert all(m.predict(CONV5, x, 16).speedup < 1.0 for x in np.linspace(be * 1.001, 1.0, 50))


def test_per_image_chunks_are_priced_from_their_density():
    """Where the per-image kernel sweeps in input-channel chunks (batch 1, a layer whose tiles
    cover part of each plane), a fitted tau_pchunk prices its FMAs linearly in x; below the
    chunk density, and without tau_pchunk, the unchunked x^gamma price holds."""
    c56 = LayerSpec("c56", "conv", 64, 64, (3, 3), padding=(1, 1), input_hw=(56, 56))
    m = _model(threads=2, visit_slots=3.0, epi_slots=20.0)
    m.gamma = 0.9
    w = c56.kernel_work(1, 2, 0.6)
    xc = w["pixel_chunk_density"]
    if not w["pixel_chunked"]:
        pytest.skip(f"{ops_isa()}: no per-image chunks at this geometry")
    assert not c56.kernel_work(1, 2, 0.9 * xc)["pixel_chunked"]
    unpriced = m.predict(c56, 0.6, 1).t_compute
    assert unpriced == pytest.approx(m.coefficients(c56, 1, 0.6)[2] * 0.1 * (0.6 / 0.1) ** 0.9)
    m.tau_pchunk = 0.5 * m.tau_fma
    visits = c56.weight_numel * w["visits"] * m.tau_visit / 2 * 0.1 * (0.6 / 0.1) ** 0.9
    assert m.predict(c56, 0.6, 1).t_compute == pytest.approx(visits + 0.6 * c56.weight_numel * w["vec_fmas"] * m.tau_pchunk / 2)
    below = m.predict(c56, 0.9 * xc, 1).t_compute
    assert below == pytest.approx(m.coefficients(c56, 1, 0.9 * xc)[2] * 0.1 * (0.9 * xc / 0.1) ** 0.9)


def ops_isa() -> str:
    import sparsecnn.ops as ops

    return ops.active_isa()


def test_robust_least_squares_ignores_an_outlier():
    """Soft-L1: one wild sample barely moves a line fitted through nine good ones."""
    xs = np.linspace(0.0, 1.0, 10)
    ys = 2.0 * xs + 1.0
    ys[3] += 5.0
    p, _ = cal.robust_least_squares(lambda p: p[0] * xs + p[1] - ys, [0.0, 0.0], n_data=10, scale=0.1)
    assert p == pytest.approx([2.0, 1.0], abs=0.05)


# ---------------------------------------------------------------------- CLI
def test_network_layers_and_cli_table(cache_env, capsys, caplog):
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
    # every layer with a break-even has its band around it (sigma: the calibration's fit error)
    assert out["model"]["uncertainty"] >= 0
    for r in out["layers"]:
        if r["useful_range"] is not None:
            lo, hi = r["breakeven_band"]
            assert lo <= r["useful_range"][0] <= hi
    args = p.parse_args(["model", str(path), "--batch", "2", "--no-measure-dense"])
    assert args.func(args) == 0
    assert "b-e band" in capsys.readouterr().out
    # --fit-layers: the conv layer is timed and corrected, the fc layer is not
    args = p.parse_args(["model", str(path), "--batch", "2", "--json", "--fit-layers"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    fit = out["layers"][0]["layer_fit"]
    assert fit is not None and fit["s_fixed"] > 0 and fit["s_compute"] > 0
    assert out["layers"][1]["layer_fit"] is None
    args = p.parse_args(["model", str(path), "--batch", "2", "--fit-layers"])
    assert args.func(args) == 0
    assert "corrected per layer" in capsys.readouterr().out
    # the corrections are not cached with the calibration: the next run is uncorrected again
    assert PerfModel.load_or_calibrate().layer_scales == {}
    # --plot times the plotted conv layer on random masks and draws it
    png = tmp_path / "fig.png"
    args = p.parse_args(["model", str(path), "--batch", "2", "--json", "--plot", str(png), "--layers", "0"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["plot"] == str(png) and png.stat().st_size > 0
    assert "no measured points" not in caplog.text


# ---------------------------------------------------------------------- end to end (needs kernel)
@pytest.mark.skipif(not _kernel_available(), reason="compiled sparse kernel not built")
def test_quick_calibration_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECNN_CACHE_DIR", str(tmp_path))
    m = PerfModel.load_or_calibrate(recalibrate=True, quick=True)
    for v in (m.a, m.a_lanes, m.b, m.machine.F, m.machine.B_dram, m.machine.B_llc, m.machine.B_copy):
        assert math.isfinite(v) and v > 0
    assert m.t0 >= 0 and cal.cache_path().exists()
    p = m.predict(CONV5, 0.1, 1)
    assert math.isfinite(p.speedup) and p.speedup > 0
    again = PerfModel.load_or_calibrate(quick=True)  # from the cache, no recalibration
    assert (again.tau_fma, again.tau_lanes, again.b, again.t0, again.machine) == (
        m.tau_fma, m.tau_lanes, m.b, m.t0, m.machine)


@pytest.mark.parametrize("slower,in_band,at_or_below", [(1.1, True, True), (0.9, True, False),
                                                          (1.5, False, True), (0.6, False, False)])
def test_validation_summary_scores_breakeven(slower, in_band, at_or_below):
    """Measured times ``slower`` x the model's, model error sigma = 0.1: the break-even band
    (+-2 sigma, speedups 0.82..1.22) holds the measured break-even for 10 % errors, not for
    40-50 %; the strict check holds when the measured break-even is at or below the predicted
    one; the summary reports the ratio's bias."""
    from sparsecnn.models.pruned import pruned_dir
    from sparsecnn.perf.validate import DENSITIES, ValPoint, summarize, validation_layers

    try:
        pruned_dir()
    except FileNotFoundError as e:
        pytest.skip(f"pruned weights not available: {e}")
    spec = next(s for _, s, _ in validation_layers() if s.name == "caffenet.conv3")
    m = _model(visit_slots=3.0, epi_slots=20.0, threads=2)
    m.fit_info = {"rms_log_error": 0.1}
    pts = []
    for x in DENSITIES + (0.8, 1.0):
        p = m.predict(spec, x, 1)
        pts.append(ValPoint(spec.name, 1, x, "random", p.t_dense, slower * p.t_sparse, p.t_dense,
                            p.t_sparse, p.bound))
    s = summarize(m, pts)
    (layer,) = s["layers"]
    assert layer["flag"] == ""
    assert (layer["brackets"], layer["brackets_point"]) == (in_band, at_or_below)
    assert s["all_bracket"] == in_band and s["band_sigma"] == 0.1
    m.fit_info = {"rms_log_error": 0.5}  # a calibration under load: its band does not count
    assert not summarize(m, pts)["all_bracket"]
    assert s["median_abs_err"] == pytest.approx(abs(slower - 1), rel=1e-6)
    assert (s["breakeven_ratio_mean"] > 1.0) == (slower > 1)


@pytest.mark.parametrize("sigma", [0.0, 0.05, 0.2])
@pytest.mark.parametrize("spec,batch", [(CONV5, 1), (CONV5, 16), (CONV2, 4)])
def test_breakeven_band_solves_its_speedups(spec, batch, sigma):
    """The band's edges are where the predicted speedup is exp(+-2 sigma); sigma = 0 gives the
    break-even itself; the band widens with sigma."""
    m = _model(visit_slots=3.0, epi_slots=20.0, threads=2)
    m.gamma = 0.9
    m.fit_info = {"rms_log_error": sigma}
    be = m.breakeven_density(spec, batch)
    lo, hi = m.breakeven_band(spec, batch)
    assert lo <= be <= hi
    if sigma == 0:
        assert lo == pytest.approx(be, rel=1e-9) and hi == pytest.approx(min(be, 1.0), rel=1e-9)
    for edge, want in ((lo, math.exp(2 * sigma)), (hi, math.exp(-2 * sigma))):
        if 0 < edge < 1:
            assert m.predict(spec, edge, batch).speedup == pytest.approx(want, rel=1e-9)
    if sigma:
        assert lo < be < hi
    with pytest.raises(ValueError, match="z must be"):
        m.breakeven_band(spec, batch, z=-1.0)
    m.fit_info = {"rms_log_error": "garbage"}  # a hand-edited cache: no band, no crash
    assert m.uncertainty == 0.0


# ------------------------------------------------------------------ layer fits
def test_layer_fit_corrects_a_model_that_is_far_off():
    """A model whose fixed cost is 100x too high predicts the timed layer after fit_layers;
    the scales survive serialisation and move the useful range with them. Batch 1: the kernel
    lays the input out per thread at every density there, so its time does not depend on where
    the VM's two vCPUs sit (at batch 2 the shared layout below density 0.023 ran 2-3x slower
    with them in two core complexes)."""
    from sparsecnn.perf import layer_fit

    m = PerfModel.synthetic(F=1e11, B=2e10, t0=2e-2, threads=2)
    s = LayerSpec("c", "conv", 32, 64, (3, 3), padding=(1, 1), input_hw=(28, 28))
    assert m.useful_range(s, 1) is None  # 20 ms a call: never faster than dense
    info = m.fit_layers([s, LayerSpec("same", "conv", 32, 64, (3, 3), padding=(1, 1), input_hw=(28, 28)),
                         LayerSpec("fc", "linear", 64, 10)], batch=1, rounds=2, progress=False)
    assert set(info) == {"c", "same"} and info["same"] is info["c"]  # linear skipped, geometry once
    rec = info["c"]
    key = m.dense_key(s, 1)
    assert m.layer_scales[key] == (rec["s_fixed"], rec["s_compute"]) and m.dense[key] == rec["t_dense"]
    assert rec["s_fixed"] < 0.2  # 20 ms of fixed cost was wrong by far
    for x, t in zip(rec["densities"], rec["t_sparse"]):
        assert 0.5 < m.predict(s, x, 1).t_sparse / t < 2.0, (x, t)
    assert rec["rms_log_error"] < 0.4
    back = PerfModel.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back.layer_scales == m.layer_scales
    assert back.predict(s, 0.1, 1).t_sparse == pytest.approx(m.predict(s, 0.1, 1).t_sparse)
    # 29 MFLOP dense against a sparse call of tens of microseconds at density 0.005
    assert m.useful_range(s, 1) is not None
    # other batches keep the calibrated model's terms
    assert m.terms(s, 0.1, 4) == PerfModel.synthetic(F=1e11, B=2e10, t0=2e-2, threads=2).terms(s, 0.1, 4)
    with pytest.raises(ValueError, match="batch"):
        layer_fit.fit_layers(m, [s], batch=0)
    with pytest.raises(ValueError, match="densities"):
        layer_fit.fit_layers(m, [s], batch=1, densities=(0.1, 1.5))
    with pytest.raises(ValueError, match="positive"):
        layer_fit.fit_scales(m, s, 2, [0.1], [0.0])
    bad = m.to_dict()
    for scales in ([float("nan"), 1.0], [1.0], 3.0, [0.0, 1.0]):
        bad["layer_scales"] = {key: scales}
        with pytest.raises(ValueError, match="layer scales"):
            PerfModel.from_dict(bad)


def test_fit_scales_moves_the_saturation_density_as_the_terms_say():
    """Halving the fixed term halves the density at which the compute term meets it (gamma 1,
    no bandwidth term in the way), and the fit finds the scales of synthetic timings."""
    from sparsecnn.perf import layer_fit

    m = PerfModel.synthetic(F=1e11, B=1e13, t0=1e-4, threads=1)
    s = LayerSpec("c", "conv", 64, 64, (3, 3), padding=(1, 1), input_hw=(28, 28))
    sat = m.saturation_density(s, 1)
    xs = [0.0, 0.01, 0.03, 0.1, 0.3]
    ts = [0.5 * m.terms(s, x, 1)[0] + max(m.terms(s, x, 1)[1], m.terms(s, x, 1)[2]) for x in xs]
    sf, sc, rms = layer_fit.fit_scales(m, s, 1, xs, ts)
    assert sf == pytest.approx(0.5, rel=0.03) and sc == pytest.approx(1.0, rel=0.03) and rms < 0.01
    m.layer_scales[m.dense_key(s, 1)] = (sf, sc)
    assert m.saturation_density(s, 1) == pytest.approx(sat * sf, rel=0.05)
    # a refit starts from the calibrated terms, not from the layer's current scales
    assert layer_fit.fit_scales(m, s, 1, xs, ts)[:2] == pytest.approx((sf, sc))
