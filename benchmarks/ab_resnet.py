"""A/B two builds of the compiled core on ResNet-50 3x3 layers, in one process (as ab_core.py).

Two modes:

* default: the eight 3x3 convolutions of ResNet-50 (``layerX.0.conv2`` strided, ``layerX.1.conv2``
  not) with the real masks of ``resnet50_dlmc_magnitude_pruning_0.9`` at their native density;
* ``--shape C HW --densities D1,D2,...``: one C -> C 3x3 stride-1 layer on HW x HW maps with random
  masks at each density (e.g. ``--shape 512 7`` is layer4.1.conv2, ``--shape 256 14`` layer3.1).

Each call has bias and a fused ReLU and is checked once against ``torch.nn.functional.conv2d``;
rounds alternate which build goes first; the median of each build's timed calls is printed with
the change (``--json FILE`` writes them too).

Usage::

    python benchmarks/ab_resnet.py OLD.so NEW.so [--batch 16] [--threads 2] [--rounds 10] [--json FILE]
    python benchmarks/ab_resnet.py OLD.so NEW.so --shape 512 7 --densities 0.1,0.2,0.4,0.6
"""

from __future__ import annotations

import json
import statistics
import time
from types import ModuleType
from typing import Callable

import torch

import sparsecnn
from ab_core import ab_parser, check_output, load_core
from sparsecnn.models.pruned import load_pruned_layers
from sparsecnn.ops.conv import _dl
from sparsecnn.perf.probe import settle_allocator

#: input map size of each stage's first block (its conv2 has stride 2 from layer2 on)
STAGE_HW = {"layer1": 56, "layer2": 56, "layer3": 28, "layer4": 14}
LAYERS = [f"layer{s}.{b}.conv2" for s in (1, 2, 3, 4) for b in (0, 1)]


def ab_times(cores: dict[str, ModuleType], w: torch.Tensor, hw: int, stride: int, batch: int, threads: int,
             rounds: int, gen: torch.Generator) -> dict[str, float]:
    """Median time (ms) of each build on one layer: weight ``w`` (O, C, 3, 3), padding 1."""
    o, c = w.shape[:2]
    sw = sparsecnn.SparseWeight.from_dense(w)
    bias = torch.randn(o, generator=gen)
    x = torch.relu(torch.randn(batch, c, hw, hw, generator=gen))
    oh = (hw + 2 - 3) // stride + 1
    y = torch.empty(batch, o, oh, oh)

    def call(core: ModuleType) -> Callable[[], None]:
        return lambda: core.conv2d(_dl(x), _dl(sw.values), _dl(sw.col_idx), _dl(sw.row_ptr), _dl(bias), _dl(y), o, c,
                                   3, 3, 1, [stride, stride], [1, 1, 1, 1], [1, 1], True, threads, None)

    fns = {k: call(core) for k, core in cores.items()}
    ref = torch.nn.functional.conv2d(x, w, bias, stride=stride, padding=1).relu_()
    for k, f in fns.items():
        f()
        check_output(y, ref, k)
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for k in (list(fns) if r % 2 else list(fns)[::-1]):
            fns[k]()
            for _ in range(10 if batch == 1 else 3):
                t0 = time.perf_counter()
                fns[k]()
                ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in ts.items()}


def main(argv: list[str] | None = None) -> int:
    p = ab_parser(__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--shape", type=int, nargs=2, metavar=("C", "HW"), help="one C -> C layer on HW x HW maps")
    p.add_argument("--densities", default="0.1,0.3,0.6", help="with --shape: comma-separated densities")
    p.add_argument("--json", metavar="FILE", help="also write the medians as JSON")
    a = p.parse_args(argv)
    settle_allocator()
    torch.set_num_threads(a.threads)
    cores = {"old": load_core(a.old), "new": load_core(a.new)}
    gen = torch.Generator().manual_seed(0)
    rows: list[tuple[str, dict[str, float]]] = []
    if a.shape:
        c, hw = a.shape
        for d in (float(v) for v in a.densities.split(",")):
            w = torch.randn(c, c, 3, 3, generator=gen) * (torch.rand(c, c, 3, 3, generator=gen) < d)
            rows.append((f"{c}>{c} {hw}x{hw} d={d:.2f}", ab_times(cores, w, hw, 1, a.batch, a.threads, a.rounds, gen)))
    else:
        weights = load_pruned_layers("resnet50_dlmc_magnitude_pruning_0.9")
        for name in LAYERS:
            stage, block = name.split(".")[0], int(name.split(".")[1])
            first = block == 0
            hw = STAGE_HW[stage] if first or stage == "layer1" else STAGE_HW[stage] // 2
            stride = 2 if first and stage != "layer1" else 1
            rows.append((name, ab_times(cores, weights[name], hw, stride, a.batch, a.threads, a.rounds, gen)))
    print(f"batch {a.batch}, {a.threads} threads, medians of {a.rounds} rounds (ms)")
    tot = {"old": 0.0, "new": 0.0}
    for label, t in rows:
        tot = {k: tot[k] + t[k] for k in tot}
        print(f"{label:24s} old {t['old']:8.3f}  new {t['new']:8.3f}  {(t['new'] / t['old'] - 1) * 100:+6.1f} %")
    print(f"{'sum':24s} old {tot['old']:8.3f}  new {tot['new']:8.3f}  {(tot['new'] / tot['old'] - 1) * 100:+6.1f} %")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"batch": a.batch, "threads": a.threads, "rounds": a.rounds,
                       "layers": {label: t for label, t in rows}, "sum": tot}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
