"""Probe the machine, fit the sparse-kernel constants, and cache the result as JSON.

Steps (about 25-45 s, ``quick=True`` about 10 s):

1. ``F``: SGEMM FLOP/s (``torch.mm``), ``B_dram``/``B_llc``: STREAM triad on arrays
   far bigger than L3 / fitting L3, ``B_copy``: STREAM copy (DRAM).
2. Time ``sparsecnn.sparse_conv2d`` and ``F.conv2d`` interleaved (:func:`time_interleaved`)
   on synthetic layers shaped like the targets, 2 densities, batch 1 to 16 (both kernels),
   and fit ``tau_fma``, ``tau_lanes``, ``tau_chunk``, ``tau_pchunk``, ``tau_direct``, ``tau_visit``, ``tau_epi``, ``gamma``,
   ``t0``, ``B_copy`` and ``B_copy_llc`` of
   :class:`~sparsecnn.perf.model.PerfModel` (robust loss, Levenberg-Marquardt, no scipy needed);
   ``b`` is fixed at 1.5.
3. Fit the fallback dense roof ``F_conv = F_conv_max * C / (C + C_half)`` on the dense times.

Cache file: ``<dir>/perf-<key>.json``, ``<dir>`` = ``$SPARSECNN_CACHE_DIR`` or
``$XDG_CACHE_HOME/sparsecnn`` or ``~/.cache/sparsecnn``; ``<key>`` hashes CPU
model, ISA, threads, library version and the compiled core's build (also stored in the file
and re-checked).

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
           "time_sparse", "nelder_mead", "robust_least_squares", "random_sparse_weight"]

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
    """The identity a cached calibration must match: cpu, isa, threads, version, the compiled
    core's build (:func:`probe.core_fingerprint`), schema."""
    return {"cpu": probe.cpu_model(), "isa": probe.active_isa(),
            "threads": probe.num_threads(threads), "version": probe.library_version(),
            "core": probe.core_fingerprint(), "schema": SCHEMA_VERSION}


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
    """Write ``model`` to the cache atomically; returns the path (logs, never raises on I/O).

    The per-layer corrections of :meth:`PerfModel.fit_layers` stay out: they belong to the run
    that timed the layers (a GSL checkpoint keeps its own), not to the machine's calibration.
    """
    path = path or cache_path(threads)
    d = model.to_dict()
    d["layer_scales"] = {}
    doc = {"key": key_fields(threads), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": d}
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
    """Minimise ``f`` with a plain Nelder-Mead simplex (the 2-parameter dense-roof fit).

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


def robust_least_squares(residuals: Callable[[np.ndarray], np.ndarray], x0: Sequence[float],
                         n_data: int, scale: float = 0.1, iters: int = 200,
                         tol: float = 1e-12, max_step: float = 0.5) -> tuple[np.ndarray, float]:
    """Minimise ``sum soft_l1(r_i / scale) + sum r_j**2 / (2 scale**2)`` with Levenberg-Marquardt;
    returns the parameters and the loss there.

    ``residuals(x)`` returns the data residuals (the first ``n_data``, robust soft-L1 loss:
    a few outliers do not drag the fit) followed by prior residuals (plain squares). The robust
    loss is handled by reweighting (IRLS) at every step; the Jacobian is by forward
    differences. Unlike a simplex it follows the long curved valleys these fits have (a time
    constant trading off against a density exponent) to the bottom.

    Example:
        >>> f = lambda p: np.array([p[0] - 1.0, 10 * (p[1] - p[0] ** 2)])
        >>> x, loss = robust_least_squares(f, [-1.0, 2.0], n_data=2, scale=100)
        >>> x.round(4).tolist(), round(loss, 9)
        ([1.0, 1.0], 0.0)
    """
    x = np.asarray(x0, float).copy()

    def loss(r: np.ndarray) -> float:
        d = r[:n_data] / scale
        return float(np.sum(np.sqrt(1.0 + d * d) - 1.0) + 0.5 * np.sum((r[n_data:] / scale) ** 2))

    r = residuals(x)
    cur = loss(r)
    lam, done = 1e-3, False
    for _ in range(iters):
        # soft-L1 as weighted least squares: d(loss)/dr = w^2 r / scale^2 with
        # w^2 = 1 / sqrt(1 + (r / scale)^2) on the data rows
        w = np.ones_like(r)
        w[:n_data] = (1.0 + (r[:n_data] / scale) ** 2) ** -0.25
        rw = r * w
        h = 1e-6
        jac = np.empty((len(r), len(x)))
        for k in range(len(x)):
            xk = x.copy()
            xk[k] += h
            jac[:, k] = (residuals(xk) * w - rw) / h
        jtj, jtr = jac.T @ jac, jac.T @ rw
        improved = False
        while lam < 1e12:
            step = np.linalg.solve(jtj + lam * np.diag(np.diag(jtj) + 1e-12), -jtr)
            big = float(np.max(np.abs(step)))
            if big > max_step:  # a trust region: a long step can strand a parameter at 0
                step *= max_step / big
            r_new = residuals(x + step)
            new = loss(r_new)
            if new < cur:
                x, r, lam, improved = x + step, r_new, max(lam / 3.0, 1e-9), True
                done = cur - new < tol * max(1.0, cur)
                cur = new
                break
            lam *= 4.0
        if not improved or done:
            break
    return x, cur


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


#: (spec, densities, batches) timed during calibration: shapes like the layers the model is
#: used on -- 13x13 and 7x7 maps (few vectors per row), a grouped 5x5 at 27x27, 56x56 and 28x28
#: maps, a strided 3x3, 1x1 layers read in place -- at batch 1 (per-image kernel, channel
#: ranges shared by the threads), 4 (per-image kernel, a thread per image) and 16 (the
#: batch-lanes kernel; the strided 3x3 only at 0.3, per-image at 0.05; input-channel chunks at
#: the densest point of four layers), and a tiny layer that is all fixed cost.
CALIB_POINTS: list[tuple[LayerSpec, tuple[float, ...], tuple[int, ...]]] = [
    (_spec("c3x3_13", 192, 192, 3, 13, 1), (0.03, 0.15, 0.5), (1, 16)),
    (_spec("c5x5_27g2", 96, 256, 5, 27, 2, groups=2), (0.05, 0.3), (1, 16)),
    (_spec("c3x3_56", 64, 64, 3, 56, 1), (0.05, 0.3, 0.5), (1, 16)),
    (_spec("c3x3_28", 128, 128, 3, 28, 1), (0.1, 0.5), (4,)),
    (_spec("c3x3s2_56", 128, 128, 3, 56, 1, stride=2), (0.05, 0.3), (1, 4, 16)),
    (_spec("c3x3_7", 512, 512, 3, 7, 1), (0.05, 0.5), (1, 16)),
    (_spec("c1x1_28", 512, 128, 1, 28, 0), (0.05, 0.3), (1, 8)),
    (_spec("c1x1_14", 256, 512, 1, 14, 0), (0.05, 0.5), (1, 8)),
    (_spec("tiny", 16, 16, 3, 8, 1), (0.2,), (1,)),
]
QUICK_POINTS: list[tuple[LayerSpec, tuple[float, ...], tuple[int, ...]]] = [
    (_spec("c3x3_14", 128, 128, 3, 14, 1), (0.05, 0.4), (1, 16)),
    (_spec("c1x1_7", 512, 256, 1, 7, 0), (0.03, 0.3), (1,)),
    (_spec("tiny", 16, 16, 3, 8, 1), (0.2,), (1,)),
]

#: quantile of the interleaved call times used as "the" time of a call (see time_interleaved)
TIME_QUANTILE = 0.1
#: rms log error of the fit above which the calibration is flagged as taken under load (a quiet
#: machine fits within ~0.12)
LOADED_RMS = 0.25

#: starting points of the kernel fit (the first is FIT_PARAMS' values, the others perturbed)
FIT_STARTS = 4

#: fitted constants: (attribute, initial value); all positive, fitted in log space
FIT_PARAMS: tuple[tuple[str, float], ...] = (
    ("tau_fma", 0.4e-9), ("tau_lanes", 0.4e-9), ("tau_chunk", 0.3e-9), ("tau_pchunk", 0.3e-9), ("tau_direct", 0.4e-9), ("tau_visit", 2e-9),
    ("tau_epi", 20e-9), ("gamma", 0.9),
    ("t0", 2e-5), ("inv_B_copy", 1 / 20e9), ("inv_B_copy_llc", 1 / 60e9))


def _set_params(model: PerfModel, p: Sequence[float]) -> None:
    for (name, _), v in zip(FIT_PARAMS, p):
        if name.startswith("inv_"):
            setattr(model.machine, name[4:], 1.0 / v)
        elif name == "gamma":
            model.gamma = float(min(1.5, max(0.3, v)))
        else:
            setattr(model, name, float(v))


def fit_kernel(model: PerfModel, samples: list[dict[str, Any]]) -> float:
    """Fit the kernel constants (:data:`FIT_PARAMS`) on ``samples`` (dicts with spec, density,
    batch, t) in place; ``b`` stays fixed (1.5). Returns the rms log error.

    Minimises a robust (soft-L1) loss of the log time ratio with Levenberg-Marquardt
    (:func:`robust_least_squares`), so that a few samples slowed by other processes do not drag
    the fit. A constant the samples do not exercise (no batch-lanes sample: ``tau_lanes``; no
    1x1 layer read in place: ``tau_direct``) is tied to ``tau_fma``; without a sample the
    batch-lanes kernel sweeps in input-channel chunks, ``tau_chunk`` is None (chunks unpriced),
    and ``tau_pchunk`` likewise for the per-image kernel's chunks.
    """
    specs = [(LayerSpec.from_dict(s["spec"]), s["density"], s["batch"], s["t"]) for s in samples]
    threads = model.machine.threads
    plans = [spec.kernel_work(bsz, threads, x) for spec, x, bsz, _ in specs]
    has_lanes = any(w["lanes_images"] > 0 for w in plans)
    has_direct = any(w["direct"] for w in plans)
    has_chunks = any(w["chunked"] for w in plans)
    has_pchunks = any(w["pixel_chunked"] for w in plans)

    def errors(lp: np.ndarray) -> list[float]:
        _set_params(model, np.exp(lp))
        if not has_lanes:
            model.tau_lanes = None
        if not has_direct:
            model.tau_direct = None
        if not has_chunks:
            model.tau_chunk = None
        if not has_pchunks:
            model.tau_pchunk = None
        out = []
        for spec, x, bsz, tt in specs:
            tf, tc, tb = model.terms(spec, x, bsz)
            out.append(math.log((tf + max(tc, tb)) / tt))
        return out

    # weak priors from the STREAM probes keep the memory rates sane when the samples do not
    # identify them (a factor of 4 off the probe costs as much as one 10 % misfit)
    mach = model.machine
    prior = {"inv_B_copy": 1.0 / mach.B_copy, "inv_B_copy_llc": 1.0 / max(mach.B_llc, mach.B_copy)}
    lp_prior = np.array([math.log(prior.get(n, v)) for n, v in FIT_PARAMS])
    has_prior = np.array([n in prior for n, _ in FIT_PARAMS])

    # prior rows: 0.4 (d / ln 4)^2 each, against soft-L1 rows ~ (e / 0.1)^2 / 2 near the fit
    prior_w = math.sqrt(0.8) * 0.1 / math.log(4.0)

    def residuals(lp: np.ndarray) -> np.ndarray:
        return np.concatenate([errors(lp), prior_w * (lp - lp_prior)[has_prior]])

    lp0 = np.where(has_prior, lp_prior, np.log([v for _, v in FIT_PARAMS]))
    # several starts: the max(compute, bandwidth) kink has local minima (a layer that turns
    # bandwidth-bound stops constraining its compute constant, which then drifts to 0)
    rng = np.random.default_rng(0)
    starts = [lp0] + [lp0 + rng.uniform(-1.0, 1.0, len(lp0)) for _ in range(FIT_STARTS - 1)]
    fits = [robust_least_squares(residuals, x0, n_data=len(specs), scale=0.1) for x0 in starts]
    best = min(fits, key=lambda f: f[1])[0]
    errs = errors(best)
    return math.sqrt(sum(e * e for e in errs) / max(1, len(errs)))


def fit_dense(samples: list[tuple[int, float]], F: float) -> tuple[float, float]:
    """Fit ``F_conv_max, C_half`` of ``t = C (C + C_half) / (F_conv_max C)`` on (C, t) pairs."""
    if not samples:
        return F, 0.0

    def loss(p: np.ndarray) -> float:
        fmax, chalf = math.exp(p[0]), math.exp(p[1])
        return sum(math.log((c + chalf) / (fmax * t)) ** 2 for c, t in samples)

    p = nelder_mead(loss, [math.log(F), math.log(1e6)], step=1.0, iters=400)
    return math.exp(p[0]), math.exp(p[1])


def _dense_fn(spec: LayerSpec, x: torch.Tensor) -> Callable[[], object]:
    import torch.nn.functional as F

    if spec.kind == "linear":
        w = torch.randn(spec.out_channels, spec.in_channels)
        return lambda: F.linear(x.reshape(x.shape[0], -1), w)
    w = torch.randn(spec.out_channels, spec.in_channels // spec.groups, *spec.kernel)
    return lambda: F.conv2d(x, w, None, spec.stride, spec.padding, spec.dilation, spec.groups)


def time_interleaved(spec: LayerSpec, weights: Sequence[torch.Tensor], batch: int, rounds: int = 5,
                     min_time: float = 0.01, threads: int | None = None,
                     q: float = TIME_QUANTILE,
                     quiet: probe.QuietWaiter | None = None) -> tuple[float, list[float]]:
    """Seconds of one dense layer call and of one sparse kernel call for each weight.

    Dense and sparse calls are interleaved over ``rounds`` (each item runs for at least
    ``min_time`` and 3 calls per round) so that load from other processes hits both alike;
    the result per item is the ``q``-quantile of all its calls (``q = 0.5``: the median).
    Load from other processes only ever adds time -- a preempted worker stalls a whole
    parallel call -- so a low quantile estimates the unloaded time better than the median
    on a shared machine. With ``quiet``, each round first waits (within its budget) until
    other processes leave the CPUs alone. Returns ``(t_dense, [t_sparse per weight])``.
    """
    import sparsecnn

    old = torch.get_num_threads()
    torch.set_num_threads(probe.num_threads(threads))
    try:
        with torch.inference_mode():
            x = torch.randn(batch, spec.in_channels, *spec.input_hw)
            fns = [_dense_fn(spec, x)]
            for w in weights:
                sw = sparsecnn.SparseWeight.from_dense(w, groups=spec.groups)
                fns.append(lambda sw=sw: sparsecnn.sparse_conv2d(
                    x, sw, bias=None, stride=spec.stride, padding=spec.padding,
                    dilation=spec.dilation, groups=spec.groups))
            for fn in fns:  # warm-up: scratch buffers, oneDNN primitive cache, thread pools
                fn()
                fn()
            calls: list[list[float]] = [[] for _ in fns]
            for _ in range(max(1, rounds)):
                if quiet is not None:
                    quiet.wait()
                for i, fn in enumerate(fns):
                    spent, n = 0.0, 0
                    while n < 3 or spent < min_time:
                        t = time.perf_counter()
                        fn()
                        dt = time.perf_counter() - t
                        calls[i].append(dt)
                        spent, n = spent + dt, n + 1
                        if n >= 200:
                            break
    finally:
        torch.set_num_threads(old)
    qs = [float(np.quantile(c, q)) for c in calls]
    return qs[0], qs[1:]


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
    min_time = 0.005 if quick else 0.01
    samples: list[dict[str, Any]] = []
    dense_samples: list[tuple[int, float]] = []
    quiet = probe.QuietWaiter(budget=3.0 if quick else 10.0)
    for spec, densities, batches in pts:
        ws = [random_sparse_weight(spec, x, seed=i) for i, x in enumerate(densities)]
        for bsz in batches:
            td, tss = time_interleaved(spec, ws, bsz, rounds=5, min_time=min_time, threads=threads,
                                       quiet=quiet)
            model.dense[model.dense_key(spec, bsz)] = td
            dense_samples.append((spec.flops(bsz), td))
            for w, t in zip(ws, tss):
                xr = float((w != 0).float().mean())
                samples.append({"spec": spec.to_dict(), "density": xr, "batch": bsz, "t": t})
    rms = fit_kernel(model, samples)
    machine.F_conv_max, machine.C_half = fit_dense(dense_samples, F)
    rounds = 5 * sum(len(b) for _, _, b in pts)
    loaded = rms > LOADED_RMS or quiet.busy_rounds > rounds // 2
    model.fit_info = {"samples": samples, "rms_log_error": rms, "quick": quick,
                      "waited_for_quiet_s": round(quiet.waited, 2), "busy_rounds": quiet.busy_rounds,
                      "rounds": rounds, "loaded": loaded, "seconds": round(time.perf_counter() - t_start, 2)}
    if loaded:
        # GSL prunes and sparsify decides from these constants: a calibration disturbed by
        # other processes once excluded every layer of the demo. Say so loudly.
        log.warning("calibration taken under load (rms log error %.2f, %d of %d timing rounds found the CPUs "
                    "busy): the constants are suspect; rerun with --recalibrate on a quiet machine",
                    rms, quiet.busy_rounds, rounds)
    log.info("fit: tau_fma=%.3f ns (a=%.2f) tau_lanes=%.3f ns (a=%.2f) tau_chunk=%s tau_pchunk=%s tau_direct=%.3f ns tau_visit=%.2f ns "
             "tau_epi=%.1f ns "
             "gamma=%.3f t0=%.1f us B_copy=%.1f/%.1f GB/s b=%.2f (fixed), rms log err %.3f; "
             "F_conv_max=%.1f GFLOP/s C_half=%.3g; %.1f s",
             model.tau_fma * 1e9, model.a, (model.tau_lanes or model.tau_fma) * 1e9, model.a_lanes,
             "unpriced" if model.tau_chunk is None else f"{model.tau_chunk * 1e9:.3f} ns",
             "unpriced" if model.tau_pchunk is None else f"{model.tau_pchunk * 1e9:.3f} ns",
             (model.tau_direct or model.tau_fma) * 1e9,
             model.tau_visit * 1e9, model.tau_epi * 1e9, model.gamma, model.t0 * 1e6, machine.B_copy / 1e9,
             machine.B_copy_llc / 1e9, model.b, rms,
             machine.F_conv_max / 1e9, machine.C_half, model.fit_info["seconds"])
    return model
