"""CPU layer benchmark: direct sparse convolution vs. dense torch and a lowered sparse baseline.

For every layer x density x batch, in the same process and with the same thread count:

* ``sparse``  -- :func:`sparsecnn.sparse_conv2d` (our compiled kernel, weight packed once),
* ``dense``   -- ``torch.nn.functional.conv2d`` (oneDNN) on the dense (zero-filled) weight,
* ``lowered`` -- ``F.unfold`` + ``torch.sparse.mm`` with a torch CSR weight
  (``dense.to_sparse_csr()``, block-diagonal for grouped layers: one SpMM for all groups).

Each time is the median of ``repeats`` runs after a warm-up, under ``torch.inference_mode``.
To keep very slow baselines affordable, a timing whose warm-up run is long uses fewer runs
(never fewer than ``min_repeats``, at most ``max_time_s`` seconds per timing); the number of runs
actually used is recorded per row (``n_sparse``, ``n_dense``, ``n_lowered``). The fastest run of the
sparse and conv2d timings is kept too (``t_sparse_min_ms``, ``t_dense_min_ms``,
``speedup_vs_dense_min``, ``overhead_a_min``): on a loaded machine it is the more robust figure.

Per row: ``speedup_vs_dense = t_dense / t_sparse``, ``speedup_vs_lowered = t_lowered / t_sparse``,
effective GFLOP/s (``dense FLOPs / time``; dense FLOPs ``= 2 * O * C/g * kh * kw * N * OH * OW``)
and the overhead ``a = F_sgemm / (nonzero FLOPs / t_sparse)`` with ``nonzero FLOPs =
2 * nnz * N * OH * OW`` and ``F_sgemm`` the machine's SGEMM GFLOP/s (median of a large square
``torch.mm``, measured before and after the layers, the larger of the two readings: on a shared
machine one reading moved by a third between runs, and a low one made ``a`` look small): ``a``
is how many times slower than SGEMM peak the kernel processes a useful (nonzero) FLOP (the
paper's 3.2 assumes ``a`` of about 2--3).

Layer sets:

* ``caffenet``: conv1--conv5 with the real pruned weights of a set (default
  ``caffenet_l1_acc56.3``), geometry from the manifest,
* ``resnet50``: representative 3x3 and 1x1 layers with the real masks of
  ``resnet50_dlmc_magnitude_pruning_0.9`` (values: the file's random normal values),
* ``sweep``: CaffeNet conv3--5 and ResNet-50 3x3 shapes with random masks (uniform random
  pruning of a random normal weight) over a density grid; reports the break-even density
  (interpolated where ``t_sparse = t_dense``) per layer and batch.

``--densities`` on ``caffenet``/``resnet50`` adds random-mask rows at those densities.

Example:
    >>> from sparsecnn.bench.layers import run_layer_bench, format_layer_table
    >>> res = run_layer_bench("sweep", batches=(1,), densities=(0.1,), quick=True,
    ...                       layers=["caffenet.conv5"], progress=False)  # doctest: +SKIP
    >>> print(format_layer_table(res))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from sparsecnn.bench.gpu_layers import block_diag_csr

__all__ = [
    "DEFAULT_SWEEP_DENSITIES",
    "TARGETS",
    "LAYER_SETS",
    "caffenet_layers",
    "resnet50_layers",
    "sweep_layers",
    "break_even_density",
    "run_layer_bench",
    "format_layer_table",
]

LAYER_SETS = ("caffenet", "resnet50", "sweep", "all")
DEFAULT_CAFFENET = "caffenet_l1_acc56.3"
DEFAULT_RESNET50 = "resnet50_dlmc_magnitude_pruning_0.9"
DEFAULT_SWEEP_DENSITIES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
QUICK_SWEEP_DENSITIES = (0.1, 0.5)

#: ResNet-50 layers benchmarked by ``--set resnet50`` (3x3 first, then 1x1).
RESNET50_LAYERS = (
    "layer1.0.conv2", "layer2.0.conv2", "layer2.1.conv2", "layer3.1.conv2", "layer4.1.conv2",
    "layer1.0.conv1", "layer3.1.conv3", "layer2.0.downsample.0",
)
RESNET50_3X3 = RESNET50_LAYERS[:5]
CAFFENET_SWEEP = ("conv3", "conv4", "conv5")

#: the issue's bar (see docs/benchmarks.md)
TARGETS = {
    "caffenet_geomean_speedup_batch16": 6.0,
    "caffenet_geomean_speedup_batch1": 4.0,
    "median_overhead_a_3x3_d0.3_max": 2.0,
    "resnet50_3x3_break_even_batch16_min": 0.35,
}


# ------------------------------------------------------------------------------- layer lists
def _geom(meta: dict[str, Any]) -> dict[str, Any]:
    k = meta["kernel"]
    hw = meta["input_hw"]
    return dict(
        in_channels=int(meta["in_channels"]), out_channels=int(meta["out_channels"]),
        kernel=(int(k[0]), int(k[1])) if isinstance(k, (list, tuple)) else (int(k), int(k)),
        stride=int(meta.get("stride", 1)), padding=int(meta.get("padding", 0)),
        groups=int(meta.get("groups", 1)),
        input_hw=(int(hw[0]), int(hw[1])) if isinstance(hw, (list, tuple)) else (int(hw), int(hw)),
    )


def _real_layers(set_name: str, names: Sequence[str] | None, prefix: str) -> list[dict[str, Any]]:
    from sparsecnn.models.pruned import load_pruned_layers, layer_meta

    meta = layer_meta(set_name)
    weights = load_pruned_layers(set_name)
    out = []
    for name in names if names is not None else list(meta):
        if name not in meta or name not in weights:
            raise KeyError(f"layer {name!r} not in pruned set {set_name!r}")
        layer = dict(name=f"{prefix}.{name}", **_geom(meta[name]))
        w = weights[name]
        exp = (layer["out_channels"], layer["in_channels"] // layer["groups"], *layer["kernel"])
        if tuple(w.shape) != exp:
            raise ValueError(f"{set_name}:{name}: weight shape {tuple(w.shape)} != manifest geometry {exp}")
        layer["weight"] = w
        layer["weights_set"] = set_name
        out.append(layer)
    return out


def caffenet_layers(weights: str | None = None) -> list[dict[str, Any]]:
    """CaffeNet conv1--conv5 with the real pruned weights of ``weights`` (set name or npz)."""
    return _real_layers(weights or DEFAULT_CAFFENET, ["conv1", "conv2", "conv3", "conv4", "conv5"], "caffenet")


def resnet50_layers(weights: str | None = None) -> list[dict[str, Any]]:
    """The representative ResNet-50 layers (:data:`RESNET50_LAYERS`) with the set's real masks."""
    return _real_layers(weights or DEFAULT_RESNET50, list(RESNET50_LAYERS), "resnet50")


def sweep_layers() -> list[dict[str, Any]]:
    """Shapes (no weights) of CaffeNet conv3--5 and the ResNet-50 3x3 layers."""
    from sparsecnn.models.pruned import layer_meta

    out = []
    cm = layer_meta(DEFAULT_CAFFENET)
    out += [dict(name=f"caffenet.{n}", weight=None, **_geom(cm[n])) for n in CAFFENET_SWEEP]
    rm = layer_meta(DEFAULT_RESNET50)
    out += [dict(name=f"resnet50.{n}", weight=None, **_geom(rm[n])) for n in RESNET50_3X3]
    return out


def _random_weight(layer: dict[str, Any], density: float, gen: torch.Generator) -> torch.Tensor:
    o, c, g = layer["out_channels"], layer["in_channels"], layer["groups"]
    kh, kw = layer["kernel"]
    w = torch.randn(o, c // g, kh, kw, generator=gen)
    if density >= 1.0:
        return w
    return w * (torch.rand(w.shape, generator=gen) < density)


# ----------------------------------------------------------------------------------- timing
def _time_ms(fn: Callable[[], Any], repeats: int, min_repeats: int, max_time_s: float, warmup: int = 1,
             stats: list[float] | None = None) -> tuple[float, int]:
    """Median wall time (ms) of ``fn`` and the number of timed runs used (the minimum goes to ``stats``)."""
    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
        fn()
    first = (time.perf_counter() - t0) / max(1, warmup)
    n = repeats
    if first > 0 and first * repeats > max_time_s:
        n = max(min_repeats, min(repeats, int(max_time_s / first)))
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    if stats is not None:
        stats.append(min(ts))
    return statistics.median(ts), n


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[int]:
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def _machine() -> dict[str, Any]:
    from sparsecnn import ops

    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    return dict(cpu=model, logical_cpus=os.cpu_count(), isa=ops.active_isa(), torch=torch.__version__,
                python=platform.python_version())


# ------------------------------------------------------------------------------ measurement
def _geometry(layer: dict[str, Any]) -> tuple[int, int, int, int, int, int, int, int, int, int]:
    c, o, g = layer["in_channels"], layer["out_channels"], layer["groups"]
    kh, kw = layer["kernel"]
    s, p = layer["stride"], layer["padding"]
    h, wd = layer["input_hw"]
    return c, o, g, kh, kw, s, p, h, wd, (h + 2 * p - kh) // s + 1


def max_rel_error(ref_fn: Callable[[], torch.Tensor], got_fn: Callable[[], torch.Tensor]) -> float:
    """``max |got - ref| / max |ref|`` of one call of each, with both outputs freed on return.

    Timings must not run while such outputs are alive: two live 12.8 MB outputs (ResNet-50
    layer1 at batch 16) left glibc's heap so that the dense conv2d's blocks were returned to the
    OS after every call and faulted in again (9,400 page faults a call, 18.0 ms instead of 9.3).

    Example:
        >>> max_rel_error(lambda: torch.ones(3), lambda: torch.full((3,), 1.5))
        0.5
    """
    ref, got = ref_fn(), got_fn()
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _measure(layer: dict[str, Any], w: torch.Tensor, batch: int, source: str, gen: torch.Generator,
             repeats: int, min_repeats: int, max_time_s: float) -> dict[str, Any]:
    """Sparse kernel and dense conv2d times of one layer (the lowered baseline: :func:`_add_lowered`,
    the overhead a: :func:`_set_overhead`)."""
    import sparsecnn

    c, o, g, kh, kw, s, p, h, wd, oh = _geometry(layer)
    ow = (wd + 2 * p - kw) // s + 1
    sw = sparsecnn.SparseWeight.from_dense(w, groups=g)
    x = torch.randn(batch, c, h, wd, generator=gen)
    row: dict[str, Any] = dict(
        layer=layer["name"], batch=int(batch), density=sw.density, nnz=sw.nnz, mask=source,
        in_channels=c, out_channels=o, kernel=[kh, kw], stride=s, padding=p, groups=g,
        input_hw=[h, wd], output_hw=[oh, ow], t_lowered_ms=None, n_lowered=0,
    )

    def sparse() -> torch.Tensor:
        return sparsecnn.sparse_conv2d(x, sw, stride=s, padding=p)

    def dense() -> torch.Tensor:
        return F.conv2d(x, w, None, s, p, 1, g)

    with torch.inference_mode():
        row["max_rel_err"] = max_rel_error(dense, sparse)
        mins: list[float] = []
        row["t_sparse_ms"], row["n_sparse"] = _time_ms(sparse, repeats, min_repeats, max_time_s, stats=mins)
        row["t_dense_ms"], row["n_dense"] = _time_ms(dense, repeats, min_repeats, max_time_s, stats=mins)
        row["t_sparse_min_ms"], row["t_dense_min_ms"] = mins
    dense_flops = 2.0 * o * (c // g) * kh * kw * batch * oh * ow
    nz_flops = 2.0 * sw.nnz * batch * oh * ow
    ts, td = row["t_sparse_ms"], row["t_dense_ms"]
    row["speedup_vs_dense"] = td / ts
    row["speedup_vs_dense_min"] = row["t_dense_min_ms"] / row["t_sparse_min_ms"]  # best-of-runs (robust to load)
    row["speedup_vs_lowered"] = None
    row["gflops_sparse_eff"] = dense_flops / (ts * 1e6)
    row["gflops_dense"] = dense_flops / (td * 1e6)
    row["gflops_lowered_eff"] = None
    row["gflops_nonzero"] = nz_flops / (ts * 1e6)
    return row


def _set_overhead(row: dict[str, Any], sgemm_gflops: float) -> None:
    """a = F_sgemm / nonzero GFLOP/s of the median run (``overhead_a``) and of the fastest one."""
    nz = row["gflops_nonzero"]
    row["overhead_a"] = sgemm_gflops / nz if nz > 0 else None
    row["overhead_a_min"] = sgemm_gflops / nz * row["t_sparse_min_ms"] / row["t_sparse_ms"] if nz > 0 else None


def _add_lowered(row: dict[str, Any], layer: dict[str, Any], w: torch.Tensor, gen: torch.Generator,
                 repeats: int, min_repeats: int, max_time_s: float) -> None:
    """Times the lowered baseline (``F.unfold`` + ``torch.sparse.mm``) of a measured row.

    Run in a pass of its own after every sparse/dense timing: torch's sparse matmul leaves
    its threads spinning for a while, which slowed the next layer's sparse kernel by up to 40 %
    when the three timings were interleaved per layer.
    """
    c, o, g, kh, kw, s, p, h, wd, oh = _geometry(layer)
    ow = (wd + 2 * p - kw) // s + 1
    batch = row["batch"]
    x = torch.randn(batch, c, h, wd, generator=gen)
    w_csr = block_diag_csr(w, g)
    ck = c * kh * kw

    def low() -> torch.Tensor:
        cols = F.unfold(x, (kh, kw), padding=p, stride=s)  # (N, C*kh*kw, L)
        cols = cols.permute(1, 0, 2).reshape(ck, batch * oh * ow)
        y = torch.sparse.mm(w_csr, cols)  # (O, N*L)
        return y.view(o, batch, oh, ow).permute(1, 0, 2, 3)

    with torch.inference_mode():
        row["t_lowered_ms"], row["n_lowered"] = _time_ms(low, repeats, min_repeats, max_time_s)
    tl = row["t_lowered_ms"]
    row["speedup_vs_lowered"] = tl / row["t_sparse_ms"]
    row["gflops_lowered_eff"] = 2.0 * o * (c // g) * kh * kw * batch * oh * ow / (tl * 1e6)


def break_even_density(points: Sequence[tuple[float, float, float]]) -> dict[str, Any]:
    """Break-even density from ``(density, t_sparse, t_dense)`` points.

    Returns ``{"density": d or None, "status": ...}``; ``status`` is ``"interpolated"`` (the
    first density where the sparse kernel stops being faster, linearly interpolated between
    the grid points around it), ``"always_faster"`` (faster at every density: the break-even
    is above the largest one measured) or ``"never_faster"`` (slower at every density).

    >>> break_even_density([(0.1, 1.0, 4.0), (0.5, 5.0, 4.0)])["density"]
    0.4
    """
    pts = sorted(points)
    if not pts:
        return {"density": None, "status": "no_data"}
    diff = [(d, ts - td) for d, ts, td in pts]
    if diff[0][1] >= 0:
        return {"density": None, "status": "never_faster", "below": diff[0][0]}
    for (d0, f0), (d1, f1) in zip(diff, diff[1:]):
        if f0 < 0 <= f1:
            d = d0 + (d1 - d0) * (-f0) / (f1 - f0)
            return {"density": round(d, 4), "status": "interpolated"}
    return {"density": None, "status": "always_faster", "above": diff[-1][0]}


def _geomean(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def _summary(rows: list[dict[str, Any]], break_even: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cn = [r for r in rows if r["set"] == "caffenet" and r["mask"] == "real"
          and r["layer"].split(".")[-1] in ("conv2", "conv3", "conv4", "conv5")]
    for b in sorted({r["batch"] for r in cn}):
        sel = [r["speedup_vs_dense"] for r in cn if r["batch"] == b]
        out[f"caffenet_conv2_5_geomean_speedup_batch{b}"] = _geomean(sel)
        sel = [r["speedup_vs_dense_min"] for r in cn if r["batch"] == b and r.get("speedup_vs_dense_min")]
        if sel:
            out[f"caffenet_conv2_5_geomean_speedup_bestof_batch{b}"] = _geomean(sel)
        sel = [r["speedup_vs_lowered"] for r in cn if r["batch"] == b and r["speedup_vs_lowered"]]
        out[f"caffenet_conv2_5_geomean_speedup_vs_lowered_batch{b}"] = _geomean(sel)
    sw3 = [r for r in rows if r["set"] == "sweep" and tuple(r["kernel"]) == (3, 3) and r["overhead_a"]]
    if sw3:
        grid = sorted({r.get("target_density", r["density"]) for r in sw3})
        d03 = min(grid, key=lambda d: abs(d - 0.3))
        sel = [r["overhead_a"] for r in sw3 if r.get("target_density", r["density"]) == d03]
        out["overhead_a_3x3_density"] = d03
        out["median_overhead_a_3x3"] = statistics.median(sel)
        for b in sorted({r["batch"] for r in sw3}):
            selb = [r["overhead_a"] for r in sw3 if r["batch"] == b and r.get("target_density") == d03]
            if selb:
                out[f"median_overhead_a_3x3_batch{b}"] = statistics.median(selb)
    be16 = [e for e in break_even if e["layer"].startswith("resnet50.") and e["batch"] == 16]
    if be16:
        vals = []
        for e in be16:
            if e["status"] == "interpolated":
                vals.append(e["density"])
            elif e["status"] == "always_faster":
                vals.append(e["above"])  # a lower bound
            else:
                vals.append(0.0)
        out["resnet50_3x3_break_even_batch16"] = {e["layer"]: e["density"] for e in be16}
        out["resnet50_3x3_break_even_batch16_min"] = min(vals)
        out["resnet50_3x3_break_even_batch16_median"] = statistics.median(vals)
    # the bar
    checks: dict[str, Any] = {}
    for b, key in ((16, "caffenet_geomean_speedup_batch16"), (1, "caffenet_geomean_speedup_batch1")):
        v = out.get(f"caffenet_conv2_5_geomean_speedup_batch{b}")
        if v is not None:
            checks[key] = {"measured": v, "target": f">= {TARGETS[key]}", "met": v >= TARGETS[key]}
    if "median_overhead_a_3x3" in out:
        v = out["median_overhead_a_3x3"]
        t = TARGETS["median_overhead_a_3x3_d0.3_max"]
        checks["median_overhead_a_3x3_d0.3"] = {"measured": v, "target": f"<= {t}", "met": v <= t}
    if "resnet50_3x3_break_even_batch16_min" in out:
        v = out["resnet50_3x3_break_even_batch16_min"]
        t = TARGETS["resnet50_3x3_break_even_batch16_min"]
        checks["resnet50_3x3_break_even_batch16"] = {"measured": v, "target": f">= {t}", "met": v >= t}
    out["targets"] = checks
    return out


def run_layer_bench(
    layer_set: str = "caffenet",
    weights: str | None = None,
    batches: Sequence[int] = (1, 16),
    densities: Sequence[float] | None = None,
    repeats: int = 15,
    threads: int | None = None,
    isa: str | None = None,
    device: str = "cpu",
    quick: bool = False,
    layers: Sequence[str] | None = None,
    lowered: bool = True,
    max_time_s: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Runs the layer benchmark and returns ``{"meta", "rows", "break_even", "summary"}``.

    Args:
        layer_set: ``caffenet``, ``resnet50``, ``sweep`` or ``all``.
        weights: pruned set name or npz path for the real-weight set (CaffeNet for
            ``caffenet``/``all``, ResNet-50 for ``resnet50``).
        batches: batch sizes.
        densities: ``sweep``: the density grid (default :data:`DEFAULT_SWEEP_DENSITIES`);
            ``caffenet``/``resnet50``: extra random-mask rows at these densities.
        repeats: timed runs per measurement (median is reported), after one warm-up run.
        threads: ``torch.set_num_threads`` for the run (default: torch's current setting).
        isa: force a kernel variant (``avx512``, ``avx2``, ``portable``).
        device: ``cpu`` or ``cuda`` (delegates to :func:`sparsecnn.bench.gpu_layers.run_gpu_layer_bench`).
        quick: fewer repeats, a smaller SGEMM and a 2-point sweep (for tests).
        layers: keep only layers whose name ends with one of these (e.g. ``["conv3"]``).
        lowered: also time the ``unfold + torch.sparse.mm`` baseline.
        max_time_s: time cap per timing (fewer runs for slow ones; default 1.5 s, 0.2 s quick).
        seed: RNG seed for random masks and inputs.
        progress: tqdm bar on stderr.

    Rows hold ``layer, batch, density, nnz, mask ("real"/"random"), t_sparse_ms, t_dense_ms,
    t_lowered_ms, speedup_vs_dense, speedup_vs_lowered, gflops_sparse_eff, gflops_dense,
    gflops_nonzero, overhead_a, max_rel_err`` and the geometry.

    Raises:
        ValueError: unknown set / bad arguments. RuntimeError: ``device="cuda"`` without CUDA.
    """
    if layer_set not in LAYER_SETS:
        raise ValueError(f"unknown layer set {layer_set!r} (choose from {', '.join(LAYER_SETS)})")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not batches or any(int(b) < 1 for b in batches):
        raise ValueError(f"batch sizes must be positive, got {list(batches)}")
    if densities is not None and any(not 0.0 < float(d) <= 1.0 for d in densities):
        raise ValueError(f"densities must be in (0, 1], got {list(densities)}")
    if quick:
        repeats = min(repeats, 3)
    max_time_s = max_time_s if max_time_s is not None else (0.2 if quick else 1.5)
    min_repeats = 1 if quick else 3

    # -- the measurement list
    sets = ["caffenet", "resnet50", "sweep"] if layer_set == "all" else [layer_set]
    plan: list[tuple[str, dict[str, Any], float | None, int]] = []  # (set, layer, density or None=real, batch)
    for st in sets:
        if st == "sweep":
            lays = sweep_layers()
            grid = densities if densities is not None else (QUICK_SWEEP_DENSITIES if quick else DEFAULT_SWEEP_DENSITIES)
        else:
            w_arg = weights if (st == "caffenet" or layer_set == st) else None
            lays = caffenet_layers(w_arg) if st == "caffenet" else resnet50_layers(w_arg)
            grid = densities or ()
        if layers:
            lays = [l for l in lays if any(l["name"] == n or l["name"].endswith("." + n) for n in layers)]
        for lay in lays:
            for b in batches:
                if st != "sweep":
                    plan.append((st, lay, None, int(b)))
                for d in grid:
                    plan.append((st, lay, float(d), int(b)))
    if not plan:
        raise ValueError(f"no layer selected (set {layer_set!r}, layers {list(layers or [])})")

    if device == "cuda":
        return _run_gpu(plan, repeats, seed)
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")

    from sparsecnn.ops import use_isa
    from sparsecnn.perf.probe import settle_allocator, sgemm_flops

    settle_allocator()  # dense and sparse timed in a long-running process's allocator state
    isa_ctx = use_isa(isa) if isa else contextlib.nullcontext()
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with _threads(threads) as nthreads, isa_ctx:
        meta = _machine()
        meta.update(set=layer_set, weights=weights, batches=[int(b) for b in batches],
                    densities=list(densities) if densities is not None else None, repeats=repeats,
                    min_repeats=min_repeats, max_time_s=max_time_s, threads=nthreads, quick=quick,
                    device="cpu", timing="median of repeats after 1 warm-up run, torch.inference_mode")
        n_sgemm = 512 if quick else 2048
        meta["sgemm_n"] = n_sgemm
        readings = [sgemm_flops(n_sgemm, 3 if quick else 7) / 1e9]
        it: Any = plan
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(plan, desc="bench layers", unit="cfg", leave=False)
        weight_cache: dict[tuple[str, float], torch.Tensor] = {}
        deferred: list[tuple[dict[str, Any], dict[str, Any], torch.Tensor]] = []
        for st, lay, d, b in it:
            if progress:
                it.set_postfix_str(f"{lay['name']} N={b}" + (f" d={d}" if d is not None else ""))
            if d is None:
                w, source = lay["weight"], "real"
            else:
                key = (lay["name"], d)
                if key not in weight_cache:  # same random weight at every batch size
                    weight_cache[key] = _random_weight(lay, d, gen)
                w, source = weight_cache[key], "random"
            row = _measure(lay, w, b, source, gen, repeats, min_repeats, max_time_s)
            if lowered:
                deferred.append((row, lay, w))
            row["set"] = st
            if d is not None:
                row["target_density"] = d
            if lay.get("weights_set") and d is None:
                row["weights"] = lay["weights_set"]
            rows.append(row)
        for row, lay, w in deferred:  # the lowered baseline in a pass of its own (see _add_lowered)
            _add_lowered(row, lay, w, gen, repeats, min_repeats, max_time_s)
        readings.append(sgemm_flops(n_sgemm, 3 if quick else 7) / 1e9)
        meta["sgemm_gflops_readings"] = readings
        meta["sgemm_gflops"] = max(readings)
        for row in rows:
            _set_overhead(row, meta["sgemm_gflops"])
        meta["isa"] = __import__("sparsecnn.ops", fromlist=["active_isa"]).active_isa()
    meta["elapsed_s"] = time.perf_counter() - t_start

    break_even = []
    for st in {r["set"] for r in rows}:
        groups: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for r in rows:
            if r["set"] == st and r["mask"] == "random":
                groups.setdefault((r["layer"], r["batch"]), []).append((r["target_density"], r["t_sparse_ms"], r["t_dense_ms"]))
        for (name, b), pts in groups.items():
            if len(pts) >= 2:
                break_even.append(dict(set=st, layer=name, batch=b, **break_even_density(pts)))
    break_even.sort(key=lambda e: (e["set"], e["batch"], e["layer"]))
    return dict(meta=meta, rows=rows, break_even=break_even, summary=_summary(rows, break_even))


def _run_gpu(plan: list[tuple[str, dict[str, Any], float | None, int]], repeats: int, seed: int) -> dict[str, Any]:
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda: CUDA is not available (torch.cuda.is_available() is False; "
                           f"torch {torch.__version__} built {'with' if torch.version.cuda else 'without'} CUDA)")
    from sparsecnn.bench.gpu_layers import run_gpu_layer_bench

    rows: list[dict[str, Any]] = []
    for st, lay, d, b in plan:
        spec = {k: v for k, v in lay.items() if k not in ("weights_set",)}
        if d is None:
            w = lay["weight"]
            dens = float((w != 0).float().mean())
            spec["weight"] = w  # magnitude pruning to its own density keeps it as is
        else:
            dens, spec["weight"] = d, None
        for r in run_gpu_layer_bench([spec], densities=(dens,), batches=(b,), repeats=max(repeats, 10), seed=seed):
            r["set"] = st
            r["mask"] = "real" if d is None else "random"
            rows.append(r)
    meta = dict(device="cuda", gpu=torch.cuda.get_device_name(0), torch=torch.__version__, repeats=max(repeats, 10))
    return dict(meta=meta, rows=rows, break_even=[], summary={})


# ------------------------------------------------------------------------------- formatting
def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_layer_table(result: dict[str, Any]) -> str:
    """A readable text table (plus break-even densities and the summary) of a result."""
    meta, rows = result.get("meta", {}), result.get("rows", [])
    lines = []
    if meta.get("device") == "cuda":
        from sparsecnn.bench.gpu_layers import format_table

        lines.append(f"GPU: {meta.get('gpu')}  torch {meta.get('torch')}; times: median of {meta.get('repeats')} runs (ms)")
        return "\n".join(lines + [format_table(rows)])
    lines.append(f"CPU: {meta.get('cpu')} ({meta.get('logical_cpus')} logical CPUs), ISA {meta.get('isa')}, "
                 f"torch {meta.get('torch')}, threads {meta.get('threads')}")
    readings = meta.get("sgemm_gflops_readings")
    of = f", the larger of {readings[0]:.1f} before and {readings[1]:.1f} after" if readings and len(readings) == 2 else ""
    lines.append(f"SGEMM {meta.get('sgemm_gflops', 0):.1f} GFLOP/s (torch.mm {meta.get('sgemm_n')}^2{of}); times: median of "
                 f"{meta.get('repeats')} runs (ms); eff GF/s = dense FLOPs / time; a = F_sgemm / nonzero GF/s")
    hdr = (f"{'layer':<30}{'mask':>7}{'N':>4}{'dens':>7}{'sparse':>10}{'conv2d':>10}{'lowered':>10}"
           f"{'x conv':>8}{'x low':>8}{'effGF/s':>9}{'nzGF/s':>8}{'a':>8}")
    lines += ["", hdr, "-" * len(hdr)]
    for r in rows:
        lines.append(
            f"{r['layer']:<30}{r['mask']:>7}{r['batch']:>4}{r['density']:>7.3f}{r['t_sparse_ms']:>10.3f}"
            f"{r['t_dense_ms']:>10.3f}{_f(r['t_lowered_ms'], '.3f'):>10}{r['speedup_vs_dense']:>8.2f}"
            f"{_f(r['speedup_vs_lowered'], '.2f'):>8}{r['gflops_sparse_eff']:>9.1f}{r['gflops_nonzero']:>8.1f}"
            f"{_f(r['overhead_a'], '.2f'):>8}")
    be = result.get("break_even", [])
    if be:
        lines += ["", "Break-even density (sparse time = conv2d time, interpolated):"]
        for e in be:
            if e["status"] == "interpolated":
                v = f"{e['density']:.3f}"
            elif e["status"] == "always_faster":
                v = f"> {e['above']} (faster at every density)"
            elif e["status"] == "never_faster":
                v = f"< {e['below']} (slower at every density)"
            else:
                v = "-"
            lines.append(f"  {e['layer']:<28} N={e['batch']:<3} {v}")
    summ = result.get("summary", {})
    if any(k != "targets" for k in summ) or summ.get("targets"):
        lines += ["", "Summary:"]
        for k, v in summ.items():
            if k in ("targets", "resnet50_3x3_break_even_batch16"):
                continue
            lines.append(f"  {k}: {_f(v, '.3f') if isinstance(v, float) else v}")
        for k, c in summ.get("targets", {}).items():
            lines.append(f"  target {k}: measured {c['measured']:.3f}, target {c['target']} -> "
                         f"{'MET' if c['met'] else 'NOT MET'}")
    return "\n".join(lines)
