"""The batch-1 launch floor on a GPU: SparseConv2d called eagerly and replayed from a CUDA graph,
against cuDNN fp32 treated the same way, CaffeNet conv2-5 with the `caffenet_l1_acc56.3` weights.

At batch 1 the Triton kernel took 0.08-0.13 ms where cuDNN took 0.02-0.07 (docs/gpu.md): launch
work on the host (the op's dispatch, Triton's launcher) plus the kernel's dependent loop. A CUDA
graph replays the recorded launches without the host work, so the graph's time is what the kernel
itself costs. With --compiled, also `torch.compile(mode="reduce-overhead")` of both modules
(Inductor records CUDA graphs itself), batch 1 only. Every time is the median of CUDA-event
timings of single calls (ms).

    SPARSECNN_PRUNED_DIR=... python benchmarks/gpu_graphs.py [--compiled] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

import torch
import torch.nn as nn

import sparsecnn
from sparsecnn.bench.gpu_layers import _cudnn_tf32, _time
from sparsecnn.models.pruned import load_pruned_layers

# (name, in, out, kernel, padding, groups, input size): CaffeNet conv2-5
LAYERS = [("conv2", 96, 256, 5, 2, 2, 27), ("conv3", 256, 384, 3, 1, 1, 13),
          ("conv4", 384, 384, 3, 1, 2, 13), ("conv5", 384, 256, 3, 1, 2, 13)]


def graphed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[Callable[[], None], torch.Tensor]:
    """``fn(x)`` captured in a CUDA graph: (replay, the graph's output tensor)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture: plans, cuDNN algorithms, allocations
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = fn(x)
    return graph.replay, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--compiled", action="store_true", help="also torch.compile(mode='reduce-overhead'), batch 1")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    weights = load_pruned_layers("caffenet_l1_acc56.3")
    rows = []
    print(f"{'layer':<7}{'N':>3}{'sparse':>9}{'graph':>9}{'cudnn':>9}{'graph':>9}{'x cudnn':>9}{'x graphed':>11}"
          f"{'max err':>10}")
    with torch.no_grad(), _cudnn_tf32(False):
        for name, cin, cout, k, pad, groups, hw in LAYERS:
            conv = nn.Conv2d(cin, cout, k, padding=pad, groups=groups)
            conv.weight.copy_(weights[name])
            sp = sparsecnn.SparseConv2d.from_dense(conv).to(dev)
            conv = conv.to(dev)
            for n in args.batch:
                x = torch.randn(n, cin, hw, hw, device=dev)
                t = {"sparse": _time(lambda: sp(x), dev, args.repeats, 20, "events"),
                     "cudnn": _time(lambda: conv(x), dev, args.repeats, 20, "events")}
                replay_sp, y_sp = graphed(sp, x)
                replay_dn, y_dn = graphed(conv, x)
                t["sparse_graph"] = _time(replay_sp, dev, args.repeats, 20, "events")
                t["cudnn_graph"] = _time(replay_dn, dev, args.repeats, 20, "events")
                replay_sp()
                replay_dn()
                torch.cuda.synchronize()
                err = ((y_sp - y_dn).abs().max() / y_dn.abs().max().clamp_min(1e-30)).item()
                row = dict(layer=f"caffenet.{name}", batch=n, density=float((conv.weight != 0).float().mean()),
                           **{f"{k}_ms": v for k, v in t.items()}, max_rel_error=err,
                           speedup=t["cudnn"] / t["sparse"], speedup_graphed=t["cudnn_graph"] / t["sparse_graph"])
                if args.compiled and n == 1:
                    c_sp = torch.compile(sp, mode="reduce-overhead", fullgraph=True)
                    c_dn = torch.compile(conv, mode="reduce-overhead", fullgraph=True)
                    t["sparse_compiled"] = _time(lambda: c_sp(x), dev, args.repeats, 20, "events")
                    t["cudnn_compiled"] = _time(lambda: c_dn(x), dev, args.repeats, 20, "events")
                    y_c = c_sp(x).clone()
                    row_c = ((y_c - y_dn).abs().max() / y_dn.abs().max().clamp_min(1e-30)).item()
                    print(f"{name:<7}{n:>3} compiled (reduce-overhead): sparse {t['sparse_compiled']:.4f} ms, "
                          f"cudnn {t['cudnn_compiled']:.4f} ms, x {t['cudnn_compiled'] / t['sparse_compiled']:.2f}, "
                          f"max err {row_c:.1e}")
                    row.update(sparse_compiled_ms=t["sparse_compiled"], cudnn_compiled_ms=t["cudnn_compiled"],
                               max_rel_error_compiled=row_c)
                rows.append(row)
                print(f"{name:<7}{n:>3}{t['sparse']:>9.4f}{t['sparse_graph']:>9.4f}{t['cudnn']:>9.4f}"
                      f"{t['cudnn_graph']:>9.4f}{row['speedup']:>9.2f}{row['speedup_graphed']:>11.2f}{err:>10.1e}")
    if args.json:
        meta = dict(gpu=torch.cuda.get_device_name(0), torch=torch.__version__, repeats=args.repeats)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
