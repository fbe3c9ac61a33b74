"""A/B two builds of the compiled core in one process, calls interleaved.

On the shared 2-vCPU machine, timings of separate processes drift by 10-30 % while the other
tenants come and go (and while the two vCPUs move between core complexes, docs/kernel.md "Where
the layout lives"); two kernels run back to back in one process see the same state. This
loads two ``_core`` extension files side by side (each under its own module object), checks
both against ``torch.nn.functional.conv2d``, then times each build in two states, rounds
alternating which build goes first, on the CaffeNet conv2-5 layers with the real pruned weights
(``caffenet_l1_acc56.3``), or with ``--density`` 3x3 shapes with random masks:

* warm: a call, then ``--warm`` calls back to back, timed (as ``sparsecnn bench layers`` times
  a layer: its input, layout and output in cache);
* after dense: each timed call right after a dense conv2d on the same input (which evicts the
  layout and the output; what a call finds in a network between dense layers).

Usage::

    # the old build: e.g. a worktree of the previous commit, `pip wheel` or a cmake build dir
    python benchmarks/ab_core.py OLD/_core.cpython-311-x86_64-linux-gnu.so \\
        .venv/lib/python3.11/site-packages/sparsecnn/_core.cpython-311-x86_64-linux-gnu.so \\
        --batch 16 --threads 2 [--rounds 10] [--json out.json]

Prints per layer and state the median time of each build (ms), the change, and the speedup over
dense conv2d of each; the geometric means over the four layers last.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time
from types import ModuleType
from typing import Any, Callable

import torch

import sparsecnn
from sparsecnn.perf.probe import settle_allocator, sgemm_flops
from sparsecnn.models.pruned import load_pruned_layers
from sparsecnn.ops.conv import _dl

#: CaffeNet conv2-5: input channels, map size, padding, groups
LAYERS = {"conv2": (96, 27, 2, 2), "conv3": (256, 13, 1, 1), "conv4": (384, 13, 1, 2), "conv5": (384, 13, 1, 2)}
#: ``--density``: 3x3 shapes (input, output channels, input map size, stride) with random masks,
#: CaffeNet conv3-5's (groups 1) and ResNet-50's as in ``bench layers --set sweep``, and (not
#: run unless ``--shapes`` names them) ResNet-50's three stride-2 3x3 layers
SHAPES = {"c3": (256, 384, 13, 1), "c4": (384, 384, 13, 1), "c5": (384, 256, 13, 1), "r56": (64, 64, 56, 1),
          "r28": (128, 128, 28, 1), "r14": (256, 256, 14, 1), "r7": (512, 512, 7, 1),
          "r56s2": (128, 128, 56, 2), "r28s2": (256, 256, 28, 2), "r14s2": (512, 512, 14, 2)}
DEFAULT_SHAPES = ("c3", "c4", "c5", "r56", "r28", "r14", "r7")


def layer_cases(density: float | None,
                shapes: tuple[str, ...] = DEFAULT_SHAPES) -> dict[str, tuple[torch.Tensor, int, int, int, int, int]]:
    """Weight, input channels, map size, padding, groups and stride per layer: CaffeNet conv2-5
    with the real pruned weights, or (density given) ``shapes`` of :data:`SHAPES` with random
    masks at that density."""
    if density is None:
        weights = load_pruned_layers("caffenet_l1_acc56.3")
        return {name: (weights[name], cin, hw, pad, groups, 1) for name, (cin, hw, pad, groups) in LAYERS.items()}
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name in shapes:
        cin, o, hw, stride = SHAPES[name]
        w = torch.randn(o, cin, 3, 3, generator=gen)
        out[name] = (w * (torch.rand(w.shape, generator=gen) < density), cin, hw, 1, 1, stride)
    return out


def load_core(path: str) -> ModuleType:
    """Import one ``_core`` extension file as a module object of its own."""
    spec = importlib.util.spec_from_file_location("_core", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compare(cores: dict[str, ModuleType], batch: int, threads: int, rounds: int, warm: int = 5,
            cold: int = 3, density: float | None = None, shapes: tuple[str, ...] = DEFAULT_SHAPES) -> dict[str, Any]:
    """Median times (s) per layer: ``{"warm": {build: t}, "after_dense": {build: t}, "dense": t}``."""
    torch.set_num_threads(threads)
    # First, as `sparsecnn bench layers` does: glibc's malloc in the bench's state (dense
    # conv2d's outputs from the heap, not fresh pages: CaffeNet conv2 at batch 16 took 22 ms
    # before, 14.5 ms after on this VM), and the machine's SGEMM rate for the record.
    settle_allocator()
    out: dict[str, Any] = {"batch": batch, "threads": threads, "rounds": rounds, "layers": {},
                           "sgemm_gflops": sgemm_flops(repeats=7) / 1e9}
    for name, (w, cin, hw, pad, groups, stride) in layer_cases(density, shapes).items():
        o, cg, kh, kw = w.shape
        x = torch.randn(batch, cin, hw, hw)
        bias = torch.randn(o)
        sw = sparsecnn.SparseWeight.from_dense(w, groups=groups)
        ref = torch.nn.functional.conv2d(x, w, bias, stride=stride, padding=pad, groups=groups).relu_()
        y = torch.empty_like(ref)

        def sparse(core: ModuleType) -> Callable[[], None]:
            return lambda: core.conv2d(_dl(x), _dl(sw.values), _dl(sw.col_idx), _dl(sw.row_ptr), _dl(bias), _dl(y),
                                       o, cg, kh, kw, groups, [stride] * 2, [pad] * 4, [1, 1], True, threads, None)

        runs = {k: sparse(c) for k, c in cores.items()}
        for k, f in runs.items():
            f()
            check_output(y, ref, f"{k} on {name}")

        def dense() -> None:
            torch.nn.functional.conv2d(x, w, bias, stride=stride, padding=pad, groups=groups)

        def timed(fn: Callable[[], None]) -> float:
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t

        times: dict[str, dict[str, list[float]]] = {"warm": {k: [] for k in runs}, "after_dense": {k: [] for k in runs}}
        dense_times: list[float] = []
        for i in range(rounds):
            for k in (list(runs) if i % 2 else list(runs)[::-1]):
                runs[k]()
                times["warm"][k] += [timed(runs[k]) for _ in range(warm)]
                for _ in range(cold):
                    dense_times.append(timed(dense))
                    times["after_dense"][k].append(timed(runs[k]))
        out["layers"][name] = {state: {k: statistics.median(v) for k, v in d.items()} for state, d in times.items()}
        out["layers"][name]["dense"] = statistics.median(dense_times)
    return out


def check_output(y: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """Raises when a build's output differs from conv2d's by more than 1e-3 of its largest value."""
    err = float((y - ref).abs().max())
    if err > 1e-3 * float(ref.abs().max()):
        raise AssertionError(f"{what} differs from conv2d: max abs error {err}")


def ab_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every A/B script takes: the two core files, the batch and the threads."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("old", help="path of the old _core extension file")
    p.add_argument("new", help="path of the new _core extension file")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    return p


def main(argv: list[str] | None = None) -> int:
    p = ab_parser(__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=10, help="rounds per layer (default 10; each times every build "
                   "5 times warm and 3 times after dense)")
    p.add_argument("--density", type=float, help="random masks at this density on 3x3 shapes (CaffeNet conv3-5, "
                   "ResNet-50) instead of CaffeNet conv2-5's real weights")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(DEFAULT_SHAPES),
                   help="with --density: which shapes (default the stride-1 ones; r56s2 r28s2 r14s2 are "
                   "ResNet-50's stride-2 3x3 layers)")
    p.add_argument("--json", metavar="FILE", help="also write the medians as JSON")
    a = p.parse_args(argv)
    res = compare({"old": load_core(a.old), "new": load_core(a.new)}, a.batch, a.threads, a.rounds, density=a.density,
                  shapes=tuple(a.shapes))
    print(f"batch {a.batch}, {a.threads} threads, SGEMM {res['sgemm_gflops']:.1f} GFLOP/s, "
          f"medians of {a.rounds} rounds (ms)")
    print(f"{'layer':<8}{'state':<13}{'old':>9}{'new':>9}{'change':>9}{'dense':>9}{'x old':>8}{'x new':>8}")
    res["geomean"] = {}
    for state in ("warm", "after_dense"):
        logs = {"old": 0.0, "new": 0.0}
        for name, lay in res["layers"].items():
            r, d = lay[state], lay["dense"]
            for k in logs:
                logs[k] += math.log(d / r[k])
            print(f"{name:<8}{state:<13}{r['old'] * 1e3:9.3f}{r['new'] * 1e3:9.3f}{(r['new'] / r['old'] - 1) * 100:+8.1f}%"
                  f"{d * 1e3:9.3f}{d / r['old']:8.2f}{d / r['new']:8.2f}")
        n = len(res["layers"])
        res["geomean"][state] = {k: math.exp(v / n) for k, v in logs.items()}
        print(f"geomean speedup over dense conv2d, {state}: old {res['geomean'][state]['old']:.2f}, "
              f"new {res['geomean'][state]['new']:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
