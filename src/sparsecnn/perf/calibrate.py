"""Probe the machine, fit the sparse-kernel constants, and cache the result as JSON.

Steps (about 15-30 s, ``quick=True`` about 5-10 s):

1. ``F``: SGEMM FLOP/s (``torch.mm``), ``B_dram``/``B_llc``: STREAM triad on arrays
   far bigger than L3 / fitting L3, ``B_copy``: STREAM copy (DRAM).
2. Time ``sparsecnn.sparse_conv2d`` on a few synthetic layers and densities, and
   fit ``a`` (compute overhead), ``b`` (sparse storage overhead) and ``t0``
   (fixed per-call cost) of :class:`~sparsecnn.perf.model.PerfModel` by minimising
   the squared log error (Nelder-Mead, no scipy needed).
3. Time ``F.conv2d`` on the same layers and fit the fallback dense roof
   ``F_conv = F_conv_max * C / (C + C_half)``.

Cache file: ``<dir>/perf-<key>.json``, ``<dir>`` = ``$SPARSECNN_CACHE_DIR`` or
``$XDG_CACHE_HOME/sparsecnn`` or ``~/.cache/sparsecnn``; ``<key>`` hashes CPU
model, ISA, threads and library version (also stored in the file and re-checked).

Example:
    >>> from sparsecnn.perf.calibrate import cache_path
    >>> cache_path(threads=2).name.startswith("perf-")
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import probe
from .model import SCHEMA_VERSION, Machine, PerfModel
from .spec import LayerSpec

__all__ = ["cache_dir", "cache_key", "cache_path", "load_or_calibrate", "calibrate",
           "time_sparse", "nelder_mead", "random_sparse_weight"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- cache location
def cache_dir() -> Path:
    """Directory of the calibration cache (``SPARSECNN_CACHE_DIR`` overrides)."""
    env = os.environ.get("SPARSECNN_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sparsecnn"


def key_fields(threads: int | None = None) -> dict[str, Any]:
    """The identity a cached calibration must match: cpu, isa, threads, version, schema."""
    return {"cpu": probe.cpu_model(), "isa": probe.active_isa(),
            "threads": probe.num_threads(threads), "version": probe.library_version(),
            "schema": SCHEMA_VERSION}


def cache_key(threads: int | None = None) -> str:
    """Short hash of :func:`key_fields`."""
    blob = json.dumps(key_fields(threads), sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def cache_path(threads: int | None = None) -> Path:
    """Path of this machine's calibration file."""
    return cache_dir() / f"perf-{cache_key(threads)}.json"


def _load(path: Path, expect: dict[str, Any]) -> PerfModel | None:
    """Load a cached model, or None (with a warning) when missing/corrupted/stale."""
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(d, dict):
            raise ValueError("top level is not an object")
    except (OSError, ValueError) as e:
        log.warning("perf cache %s is corrupted (%s); recalibrating", path, e)
        return None
    if d.get("key") != expect:
        log.warning("perf cache %s is stale (key %s != %s); recalibrating", path, d.get("key"), expect)
        return None
    try:
        return PerfModel.from_dict(d["model"])
    except (KeyError, TypeError, ValueError) as e:
        log.warning("perf cache %s is unreadable (%s); recalibrating", path, e)
        return None


def save(model: PerfModel, threads: int | None = None, path: Path | None = None) -> Path:
    """Write ``model`` to the cache atomically; returns the path (logs, never raises on I/O)."""
    path = path or cache_path(threads)
    doc = {"key": key_fields(threads), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "model": model.to_dict()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not write perf cache %s: %s", path, e)
    return path


def load_or_calibrate(recalibrate: bool = False, threads: int | None = None,
                      quick: bool = False) -> PerfModel:
    """Cached model for this machine, calibrating (and caching) when needed. Never raises
    on a bad cache file: it is logged and replaced."""
    threads = probe.num_threads(threads)
    path = cache_path(threads)
    expect = key_fields(threads)
    if not recalibrate:
        m = _load(path, expect)
        if m is not None:
            log.debug("loaded perf model from %s", path)
            return m
    m = calibrate(threads=threads, quick=quick)
    save(m, threads, path)
    return m


# ---------------------------------------------------------------------- fitting helper
def nelder_mead(f: Callable[[np.ndarray], float], x0: Sequence[float], step: float = 0.5,
                iters: int = 400, tol: float = 1e-10) -> np.ndarray:
    """Minimise ``f`` with a plain Nelder-Mead simplex (enough for 2-4 parameters).

    Example:
        >>> nelder_mead(lambda p: (p[0] - 1) ** 2 + (p[1] + 2) ** 2, [0, 0]).round(3).tolist()
        [1.0, -2.0]
    """
    x0 = np.asarray(x0, float)
    n = len(x0)
    pts = [x0] + [x0 + step * np.eye(n)[i] for i in range(n)]
    vals = [f(p) for p in pts]
    for _ in range(iters):
        order = np.argsort(vals)
        pts = [pts[i] for i in order]
        vals = [vals[i] for i in order]
        if abs(vals[-1] - vals[0]) < tol:
            break
        c = np.mean(pts[:-1], axis=0)
        xr = c + (c - pts[-1])
        fr = f(xr)
        if fr < vals[0]:
            xe = c + 2 * (c - pts[-1])
            fe = f(xe)
            pts[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = xr, fr
        else:
            xc = c + 0.5 * (pts[-1] - c)
            fc = f(xc)
            if fc < vals[-1]:
                pts[-1], vals[-1] = xc, fc
            else:
                pts = [pts[0]] + [pts[0] + 0.5 * (p - pts[0]) for p in pts[1:]]
                vals = [vals[0]] + [f(p) for p in pts[1:]]
    return pts[int(np.argmin(vals))]


# ---------------------------------------------------------------------- kernel timing
def random_sparse_weight(spec: LayerSpec, density: float, seed: int = 0) -> torch.Tensor:
    """Dense OIHW weight with a uniform random mask of the given density."""
    g = torch.Generator().manual_seed(seed)
    shape = (spec.out_channels, spec.in_channels // spec.groups, *spec.kernel)
    w = torch.randn(shape, generator=g)
    mask = torch.rand(shape, generator=g) < density
    return w * mask


def time_sparse(spec: LayerSpec, weight: torch.Tensor, batch: int, min_time: float = 0.05,
                repeats: int = 5, threads: int | None = None) -> float:
    """Median seconds of one ``sparsecnn.sparse_conv2d`` call (weight conversion excluded)."""
    import sparsecnn

    old = torch.get_num_threads()
    torch.set_num_threads(probe.num_threads(threads))
    try:
        sw = sparsecnn.SparseWeight.from_dense(weight, groups=spec.groups)
        x = torch.randn(batch, spec.in_channels, *spec.input_hw)
        with torch.inference_mode():
            fn = lambda: sparsecnn.sparse_conv2d(  # noqa: E731
                x, sw, bias=None, stride=spec.stride, padding=spec.padding,
                dilation=spec.dilation, groups=spec.groups)
            return probe.median_time(fn, repeats=repeats, warmup=2, min_time=min_time)
    finally:
        torch.set_num_threads(old)


def _spec(name: str, cin: int, cout: int, k: int, hw: int, pad: int, stride: int = 1,
          groups: int = 1) -> LayerSpec:
    return LayerSpec(name, "conv", cin, cout, (k, k), (stride, stride), (pad, pad), (1, 1),
                     groups, (hw, hw))


#: (spec, densities, batches) timed during calibration
CALIB_POINTS: list[tuple[LayerSpec, tuple[float, ...], tuple[int, ...]]] = [
    (_spec("c3x3_28", 128, 128, 3, 28, 1), (0.05, 0.2, 0.5), (1, 4)),
    (_spec("c3x3_14", 256, 256, 3, 14, 1), (0.03, 0.15, 0.4), (1, 8)),
    (_spec("c1x1_7", 1024, 512, 1, 7, 0), (0.02, 0.1, 0.4), (1, 8)),
    (_spec("c5x5_27g2", 96, 256, 5, 27, 2, groups=2), (0.1, 0.3), (1,)),
    (_spec("c3x3_56", 64, 64, 3, 56, 1), (0.1, 0.4), (1, 4)),
    (_spec("tiny", 16, 16, 3, 8, 1), (0.2,), (1,)),
]
QUICK_POINTS: list[tuple[LayerSpec, tuple[float, ...], tuple[int, ...]]] = [
    (_spec("c3x3_14", 128, 128, 3, 14, 1), (0.05, 0.4), (1,)),
    (_spec("c1x1_7", 512, 256, 1, 7, 0), (0.03, 0.3), (1,)),
    (_spec("tiny", 16, 16, 3, 8, 1), (0.2,), (1,)),
]


def fit_kernel(model: PerfModel, samples: list[dict[str, Any]]) -> tuple[float, float, float, float]:
    """Fit ``a``, ``b``, ``t0``, ``c_nz``, ``c_out`` on ``samples`` (dicts with spec,
    density, batch, t) in place, minimising the squared log error of the time.

    Returns ``(a, b, t0, rms_log_error)``.
    """
    specs = [(LayerSpec.from_dict(s["spec"]), s["density"], s["batch"], s["t"]) for s in samples]

    def loss(p: np.ndarray) -> float:
        model.a, model.b, model.t0 = math.exp(p[0]), math.exp(p[1]), math.exp(p[2])
        model.c_nz, model.c_out = math.exp(p[3]), math.exp(p[4])
        err = 0.0
        for spec, x, bsz, t in specs:
            tf, tc, tb = model.terms(spec, x, bsz)
            err += math.log((tf + max(tc, tb)) / t) ** 2
        return err

    x0 = [math.log(2.0), math.log(2.0), math.log(1e-5), math.log(1e-9), math.log(1e-10)]
    best = nelder_mead(loss, x0, step=1.0, iters=1500)
    best = nelder_mead(loss, best, step=0.3, iters=1500)  # restart: NM stalls in 5-D
    rms = math.sqrt(loss(best) / max(1, len(specs)))
    return model.a, model.b, model.t0, rms


def fit_dense(samples: list[tuple[int, float]], F: float) -> tuple[float, float]:
    """Fit ``F_conv_max, C_half`` of ``t = C (C + C_half) / (F_conv_max C)`` on (C, t) pairs."""
    if not samples:
        return F, 0.0

    def loss(p: np.ndarray) -> float:
        fmax, chalf = math.exp(p[0]), math.exp(p[1])
        return sum(math.log((c + chalf) / (fmax * t)) ** 2 for c, t in samples)

    p = nelder_mead(loss, [math.log(F), math.log(1e6)], step=1.0, iters=400)
    return math.exp(p[0]), math.exp(p[1])


def calibrate(threads: int | None = None, quick: bool = False,
              points: list[tuple[LayerSpec, tuple[float, ...], tuple[int, ...]]] | None = None) -> PerfModel:
    """Probe the machine and fit the model (see module docstring). Needs the compiled core."""
    t_start = time.perf_counter()
    threads = probe.num_threads(threads)
    caches = probe.cache_sizes()
    big = max(4 * caches["l3"], 64 << 20) if not quick else max(2 * caches["l3"], 32 << 20)
    llc = max(caches["l2"] * 2, min(caches["l3"] // 6, 8 << 20))
    F = probe.sgemm_flops(1024 if quick else 2048, repeats=3 if quick else 5, threads=threads)
    B_dram = probe.stream_bandwidth(big, repeats=3 if quick else 5, threads=threads)
    B_llc = probe.stream_bandwidth(llc, repeats=20, threads=threads)
    B_copy = probe.copy_bandwidth(big, repeats=3 if quick else 5, threads=threads)
    machine = Machine(F=F, B_dram=B_dram, B_llc=max(B_llc, B_dram), B_copy=B_copy,
                      l2_bytes=caches["l2"], l3_bytes=caches["l3"], threads=threads,
                      cpu=probe.cpu_model(), isa=probe.active_isa(), version=probe.library_version())
    log.info("probe: F=%.1f GFLOP/s B_dram=%.1f GB/s B_llc=%.1f GB/s B_copy=%.1f GB/s",
             F / 1e9, B_dram / 1e9, B_llc / 1e9, B_copy / 1e9)
    model = PerfModel(machine=machine)

    pts = points if points is not None else (QUICK_POINTS if quick else CALIB_POINTS)
    min_time = 0.02 if quick else 0.06
    samples: list[dict[str, Any]] = []
    dense_samples: list[tuple[int, float]] = []
    for spec, densities, batches in pts:
        for bsz in batches:
            td = probe.dense_conv_time(spec, bsz, min_time=min_time, threads=threads)
            model.dense[model.dense_key(spec, bsz)] = td
            dense_samples.append((spec.flops(bsz), td))
            for i, x in enumerate(densities):
                w = random_sparse_weight(spec, x, seed=i)
                xr = float((w != 0).float().mean())
                t = time_sparse(spec, w, bsz, min_time=min_time, threads=threads)
                samples.append({"spec": spec.to_dict(), "density": xr, "batch": bsz, "t": t})
    a, b, t0, rms = fit_kernel(model, samples)
    machine.F_conv_max, machine.C_half = fit_dense(dense_samples, F)
    model.fit_info = {"samples": samples, "rms_log_error": rms, "quick": quick,
                      "seconds": round(time.perf_counter() - t_start, 2)}
    log.info("fit: a=%.3f b=%.3f t0=%.1f us c_nz=%.2f ns c_out=%.2f ns (rms log err %.3f) "
             "F_conv_max=%.1f GFLOP/s C_half=%.3g in %.1f s", a, b, t0 * 1e6, model.c_nz * 1e9,
             model.c_out * 1e9, rms, machine.F_conv_max / 1e9, machine.C_half, model.fit_info["seconds"])
    return model
