"""GPU layer benchmark: Triton direct sparse convolution vs. dense and lowered baselines.

For every layer x density x batch the following are timed (median, ms):

* ``ours``        -- :func:`sparsecnn.ops.triton_conv.sparse_conv2d_triton` (plan prebuilt),
* ``cudnn_fp32``  -- ``F.conv2d`` with cuDNN TF32 off (``allow_tf32 = False``, or
  ``torch.backends.cudnn.conv.fp32_precision = "ieee"`` on recent torch),
* ``cudnn_tf32``  -- ``F.conv2d`` with cuDNN TF32 on,
* ``cublas``      -- lowering: ``F.unfold`` + dense (grouped) fp32 matmul (TF32 off),
* ``cusparse``    -- lowering: ``F.unfold`` + ``torch.sparse_csr`` matmul with a
  block-diagonal CSR weight (one SpMM for all groups).

Speedups are ``t_baseline / t_ours``.  Timing uses CUDA events (``timer="events"``)
or ``triton.testing.do_bench`` (``timer="do_bench"``); on a CPU device (only
useful as a smoke test under ``TRITON_INTERPRET=1``) wall-clock time is used.

Example:
    >>> from sparsecnn.bench.gpu_layers import run_gpu_layer_bench, DEFAULT_LAYERS
    >>> rows = run_gpu_layer_bench(DEFAULT_LAYERS[:2], densities=(0.1, 0.3), batches=(1, 32))  # doctest: +SKIP
    >>> rows[0]["speedup_vs_cudnn_fp32"]  # doctest: +SKIP

Command line (GPU machine)::

    python -m sparsecnn.bench.gpu_layers --densities 0.05 0.1 0.3 --batches 1 32 --out gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F

from sparsecnn.ops import triton_conv

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_LAYERS", "format_table", "run_gpu_layer_bench", "prune_to_density", "main"]

#: AlexNet/CaffeNet conv layers (as in Park et al. 2017), a ResNet 3x3 and 1x1
#: layer and a MobileNet depthwise layer.
DEFAULT_LAYERS: List[Dict[str, Any]] = [
    dict(name="alexnet.conv1", in_channels=3, out_channels=96, kernel=(11, 11), stride=4, padding=0,
         groups=1, input_hw=(227, 227), weight=None),
    dict(name="alexnet.conv2", in_channels=96, out_channels=256, kernel=(5, 5), stride=1, padding=2,
         groups=2, input_hw=(27, 27), weight=None),
    dict(name="alexnet.conv3", in_channels=256, out_channels=384, kernel=(3, 3), stride=1, padding=1,
         groups=1, input_hw=(13, 13), weight=None),
    dict(name="alexnet.conv4", in_channels=384, out_channels=384, kernel=(3, 3), stride=1, padding=1,
         groups=2, input_hw=(13, 13), weight=None),
    dict(name="alexnet.conv5", in_channels=384, out_channels=256, kernel=(3, 3), stride=1, padding=1,
         groups=2, input_hw=(13, 13), weight=None),
    dict(name="resnet50.layer1.conv2", in_channels=64, out_channels=64, kernel=(3, 3), stride=1,
         padding=1, groups=1, input_hw=(56, 56), weight=None),
    dict(name="resnet50.layer3.conv3", in_channels=256, out_channels=1024, kernel=(1, 1), stride=1,
         padding=0, groups=1, input_hw=(14, 14), weight=None),
    dict(name="mobilenet.dw2", in_channels=64, out_channels=64, kernel=(3, 3), stride=2, padding=1,
         groups=64, input_hw=(112, 112), weight=None),
]


def _pair(v: Any) -> tuple:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v)


def prune_to_density(weight: torch.Tensor, density: float) -> torch.Tensor:
    """Magnitude-prune ``weight`` so that about ``density`` of its entries remain.

    Example:
        >>> w = prune_to_density(torch.randn(4, 4, 3, 3), 0.25)
        >>> int((w != 0).sum())
        36
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    keep = int(round(density * weight.numel()))
    if keep >= weight.numel():
        return weight.clone()
    out = torch.zeros_like(weight)
    if keep == 0:
        return out
    flat = weight.reshape(-1)
    idx = flat.abs().topk(keep).indices
    out.view(-1)[idx] = flat[idx]
    return out


def _layer_weight(layer: Dict[str, Any], density: float, gen: torch.Generator) -> torch.Tensor:
    o, c, g = int(layer["out_channels"]), int(layer["in_channels"]), int(layer.get("groups", 1))
    kh, kw = _pair(layer["kernel"])
    w = layer.get("weight")
    if w is None:
        w = torch.randn(o, c // g, kh, kw, generator=gen)
        w = w * (torch.rand(w.shape, generator=gen) < density)
        return w
    w = torch.as_tensor(w, dtype=torch.float32).cpu()
    if tuple(w.shape) != (o, c // g, kh, kw):
        raise ValueError(f"layer {layer.get('name')}: weight shape {tuple(w.shape)} != {(o, c // g, kh, kw)}")
    return prune_to_density(w, density)


@contextlib.contextmanager
def _cudnn_tf32(enabled: bool) -> Iterator[None]:
    """Temporarily allow/forbid TF32 in cuDNN convolutions.

    Uses ``torch.backends.cudnn.conv.fp32_precision`` where it exists (recent torch
    refuses to mix it with the legacy ``allow_tf32`` flag), else ``allow_tf32``.
    """
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        old = conv.fp32_precision
        conv.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = old
        return
    old_flag = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old_flag


@contextlib.contextmanager
def _matmul_ieee() -> Iterator[None]:
    """Temporarily forbid TF32 in cuBLAS matmuls (the lowered baselines are fp32)."""
    mm = torch.backends.cuda.matmul
    if hasattr(mm, "fp32_precision"):
        old = mm.fp32_precision
        mm.fp32_precision = "ieee"
        try:
            yield
        finally:
            mm.fp32_precision = old
        return
    old_flag = mm.allow_tf32
    mm.allow_tf32 = False
    try:
        yield
    finally:
        mm.allow_tf32 = old_flag


def _time(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int, timer: str) -> float:
    """Median time of ``fn`` in milliseconds."""
    if device.type != "cuda":
        for _ in range(warmup):
            fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)
    if timer == "do_bench":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=max(1, warmup), rep=max(1, repeats),
                                             return_mode="median"))
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize(device)
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def block_diag_csr(w: torch.Tensor, groups: int) -> torch.Tensor:
    """(O, Cg, kh, kw) grouped weight -> CSR (O, C*kh*kw) block-diagonal matrix."""
    o = w.shape[0]
    k = w[0].numel()
    og = o // groups
    dense = torch.zeros(o, groups * k, dtype=w.dtype, device=w.device)
    w2 = w.reshape(o, k)
    for gi in range(groups):
        dense[gi * og:(gi + 1) * og, gi * k:(gi + 1) * k] = w2[gi * og:(gi + 1) * og]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return dense.to_sparse_csr()


def run_gpu_layer_bench(
    layers: Sequence[Dict[str, Any]],
    densities: Sequence[float],
    batches: Sequence[int] = (1, 32),
    repeats: int = 50,
    device: str | torch.device = "cuda",
    warmup: int = 10,
    timer: str = "events",
    seed: int = 0,
    baselines: Sequence[str] = ("cudnn_fp32", "cudnn_tf32", "cublas", "cusparse"),
) -> List[Dict[str, Any]]:
    """Benchmark every layer x density x batch and return one dict per configuration.

    Args:
        layers: dicts with ``name, in_channels, out_channels, kernel, stride, padding,
            groups, input_hw`` and optional ``weight`` (dense OIHW tensor, magnitude-pruned
            to each density) or None (random normal weight, Bernoulli mask at density);
            optional ``dilation`` (default 1).
        densities: fractions of nonzero weights.
        batches: batch sizes.
        repeats, warmup: timed / untimed iterations (for ``timer="do_bench"`` they are
            milliseconds, as in ``triton.testing.do_bench``).
        device: "cuda" (a CPU device only works as a smoke test under TRITON_INTERPRET=1).
        timer: "events" (CUDA events, median) or "do_bench".
        seed: RNG seed for weights and inputs.
        baselines: subset of ``cudnn_fp32, cudnn_tf32, cublas, cusparse``.

    Returns:
        list of dicts with ``layer, density, batch, nnz, ..., t_ours_ms, t_<baseline>_ms,
        speedup_vs_<baseline>, max_rel_err`` (error of ours vs. cuDNN fp32 / F.conv2d).

    Example:
        >>> rows = run_gpu_layer_bench(DEFAULT_LAYERS[2:3], densities=(0.1,), batches=(1,))  # doctest: +SKIP
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run_gpu_layer_bench needs a CUDA device (torch.cuda.is_available() is False)")
    if not triton_conv.is_available():
        raise RuntimeError("Triton is not available (pip install triton) or no CUDA device/interpreter")
    unknown = set(baselines) - {"cudnn_fp32", "cudnn_tf32", "cublas", "cusparse"}
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}")
    gen = torch.Generator().manual_seed(seed)
    old_bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    results: List[Dict[str, Any]] = []
    try:
        for layer in layers:
            name = layer.get("name", "layer")
            c, o, g = int(layer["in_channels"]), int(layer["out_channels"]), int(layer.get("groups", 1))
            k = _pair(layer["kernel"])
            stride, padding = _pair(layer.get("stride", 1)), _pair(layer.get("padding", 0))
            dilation = _pair(layer.get("dilation", 1))
            h, w = _pair(layer["input_hw"])
            for density in densities:
                wd = _layer_weight(layer, float(density), gen).to(dev)
                values, col_idx, row_ptr = triton_conv.pack_dense_weight(wd)
                bias = torch.randn(o, generator=gen).to(dev)
                plan = triton_conv.build_plan(values, col_idx, row_ptr, wd.shape, (h, w), stride,
                                              padding, dilation, g, device=dev)
                w_csr = block_diag_csr(wd, g) if "cusparse" in baselines else None
                w_grp = wd.reshape(g, o // g, -1)
                for nb in batches:
                    x = torch.randn(nb, c, h, w, generator=gen).to(dev)

                    def ours() -> torch.Tensor:
                        return triton_conv.sparse_conv2d_triton(
                            x, values, col_idx, row_ptr, wd.shape, bias, stride, padding, dilation,
                            g, False, plan=plan)

                    def cudnn() -> torch.Tensor:
                        return F.conv2d(x, wd, bias, stride, padding, dilation, g)

                    def lowered_cols() -> torch.Tensor:
                        return F.unfold(x, k, dilation=dilation, padding=padding, stride=stride)

                    oh = (h + 2 * padding[0] - dilation[0] * (k[0] - 1) - 1) // stride[0] + 1
                    ow = (w + 2 * padding[1] - dilation[1] * (k[1] - 1) - 1) // stride[1] + 1

                    def cublas() -> torch.Tensor:
                        cols = lowered_cols().view(nb, g, -1, oh * ow)
                        out = torch.matmul(w_grp, cols).view(nb, o, oh, ow)
                        return out + bias.view(1, o, 1, 1)

                    def cusparse() -> torch.Tensor:
                        cols = lowered_cols().permute(1, 0, 2).reshape(-1, nb * oh * ow)
                        out = (w_csr @ cols).view(o, nb, oh, ow).permute(1, 0, 2, 3)
                        return out + bias.view(1, o, 1, 1)

                    with _cudnn_tf32(False):
                        ref = cudnn()
                    got = ours()
                    err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
                    row: Dict[str, Any] = dict(
                        layer=name, density=float(density), batch=int(nb), nnz=plan.nnz,
                        in_channels=c, out_channels=o, kernel=k, stride=stride, padding=padding,
                        dilation=dilation, groups=g, input_hw=(h, w), output_hw=(oh, ow),
                        device=str(torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev),
                        max_rel_err=err,
                    )
                    row["t_ours_ms"] = _time(ours, dev, repeats, warmup, timer)
                    if "cudnn_fp32" in baselines:
                        with _cudnn_tf32(False):
                            row["t_cudnn_fp32_ms"] = _time(cudnn, dev, repeats, warmup, timer)
                    if "cudnn_tf32" in baselines:
                        with _cudnn_tf32(True):
                            row["t_cudnn_tf32_ms"] = _time(cudnn, dev, repeats, warmup, timer)
                    with _matmul_ieee():
                        if "cublas" in baselines:
                            row["t_cublas_ms"] = _time(cublas, dev, repeats, warmup, timer)
                        if "cusparse" in baselines:
                            row["t_cusparse_ms"] = _time(cusparse, dev, repeats, warmup, timer)
                    for b in baselines:
                        row[f"speedup_vs_{b}"] = row[f"t_{b}_ms"] / max(row["t_ours_ms"], 1e-9)
                    flops = 2.0 * plan.nnz * nb * oh * ow
                    row["ours_gflops"] = flops / (row["t_ours_ms"] * 1e6) if row["t_ours_ms"] > 0 else 0.0
                    logger.info("%s d=%.3f N=%d ours=%.4fms %s", name, density, nb, row["t_ours_ms"],
                                " ".join(f"{b}={row[f't_{b}_ms']:.4f}ms" for b in baselines))
                    results.append(row)
    finally:
        torch.backends.cudnn.benchmark = old_bench
    return results


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """The rows of :func:`run_gpu_layer_bench` as a text table (times in ms; "x" columns are
    speedups ``t_baseline / t_ours``; "-" where a baseline was not run).

    Example:
        >>> print(format_table([]).splitlines()[0].split())
        ['layer', 'N', 'dens', 'ours', 'cuDNN', 'x', 'cuDNN', 'x', 'TF32', 'x', 'cuBLAS', 'x', 'cuSPARSE']
    """
    def col(r: Dict[str, Any], key: str, width: int, fmt: str) -> str:
        v = r.get(key)
        return f"{'-' if v is None else format(v, fmt):>{width}}"

    hdr = (f"{'layer':<26}{'N':>4}{'dens':>7}{'ours':>10}{'cuDNN':>9}{'x cuDNN':>9}{'x TF32':>8}{'x cuBLAS':>10}"
           f"{'x cuSPARSE':>12}")
    lines = [hdr, "-" * len(hdr)]
    for r in rows:
        lines.append(f"{r['layer']:<26}{r['batch']:>4}{r['density']:>7.3f}{r['t_ours_ms']:>10.4f}"
                     + col(r, "t_cudnn_fp32_ms", 9, ".4f") + col(r, "speedup_vs_cudnn_fp32", 9, ".2f")
                     + col(r, "speedup_vs_cudnn_tf32", 8, ".2f") + col(r, "speedup_vs_cublas", 10, ".2f")
                     + col(r, "speedup_vs_cusparse", 12, ".2f"))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: ``python -m sparsecnn.bench.gpu_layers --out results.json``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", nargs="*", default=None, help="names from DEFAULT_LAYERS (default: all)")
    ap.add_argument("--densities", nargs="+", type=float, default=[0.05, 0.1, 0.2, 0.3, 0.5, 1.0])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--timer", choices=["events", "do_bench"], default="events")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None, help="write results as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    layers = DEFAULT_LAYERS if not args.layers else [l for l in DEFAULT_LAYERS if l["name"] in args.layers]
    if not layers:
        ap.error(f"no layer matches {args.layers}")
    rows = run_gpu_layer_bench(layers, args.densities, args.batches, repeats=args.repeats,
                               device=args.device, warmup=args.warmup, timer=args.timer)
    print(f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else args.device}  "
          f"torch {torch.__version__}; times: median of {args.repeats} runs (ms)")
    print(format_table(rows))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)
        logger.info("wrote %d rows to %s", len(rows), args.out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
