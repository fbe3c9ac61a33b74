"""A/B two builds of the compiled core in one process, calls interleaved.

On the shared 2-vCPU machine, timings of separate processes drift by 10-30 % while the other
tenants come and go; two kernels run back to back in one process see the same state. This
loads two ``_core`` extension files side by side (each under its own module object), checks
both against ``torch.nn.functional.conv2d``, then times old, new and dense conv2d in turn
(cycling through all six orders) on the CaffeNet conv2-5 layers with the real pruned weights
(``caffenet_l1_acc56.3``).

Usage::

    # the old build: e.g. a worktree of the previous commit, `pip wheel` or a cmake build dir
    python benchmarks/ab_core.py OLD/_core.cpython-311-x86_64-linux-gnu.so \\
        .venv/lib/python3.11/site-packages/sparsecnn/_core.cpython-311-x86_64-linux-gnu.so \\
        --batch 16 --threads 2 [--iters 60] [--json out.json]

Prints per layer the median time of each build (ms), the change, and the speedup over dense
conv2d of each; the geometric mean over the four layers last.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import statistics
import sys
import time
from types import ModuleType
from typing import Any, Callable

import torch

import sparsecnn
from sparsecnn.bench.layers import measure_sgemm_gflops
from sparsecnn.perf.probe import settle_allocator
from sparsecnn.models.pruned import load_pruned_layers
from sparsecnn.ops.conv import _dl

#: CaffeNet conv2-5: input channels, map size, padding, groups
LAYERS = {"conv2": (96, 27, 2, 2), "conv3": (256, 13, 1, 1), "conv4": (384, 13, 1, 2), "conv5": (384, 13, 1, 2)}


def load_core(path: str) -> ModuleType:
    """Import one ``_core`` extension file as a module object of its own."""
    spec = importlib.util.spec_from_file_location("_core", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compare(cores: dict[str, ModuleType], batch: int, threads: int, iters: int) -> dict[str, Any]:
    """Median times (s) of each core and of dense conv2d per layer, calls interleaved."""
    torch.set_num_threads(threads)
    # First, as `sparsecnn bench layers` does: glibc's malloc in the bench's state (dense
    # conv2d's outputs from the heap, not fresh pages: CaffeNet conv2 at batch 16 took 22 ms
    # before, 14.5 ms after on this VM), and the machine's SGEMM rate for the record.
    settle_allocator()
    out: dict[str, Any] = {"batch": batch, "threads": threads, "iters": iters, "layers": {},
                           "sgemm_gflops": measure_sgemm_gflops()}
    weights = load_pruned_layers("caffenet_l1_acc56.3")
    for name, (cin, hw, pad, groups) in LAYERS.items():
        w = weights[name]
        o, cg, kh, kw = w.shape
        x = torch.randn(batch, cin, hw, hw)
        bias = torch.randn(o)
        sw = sparsecnn.SparseWeight.from_dense(w, groups=groups)
        y = torch.empty(batch, o, hw, hw)
        ref = torch.nn.functional.conv2d(x, w, bias, padding=pad, groups=groups).relu_()

        def sparse(core: ModuleType) -> Callable[[], None]:
            return lambda: core.conv2d(_dl(x), _dl(sw.values), _dl(sw.col_idx), _dl(sw.row_ptr), _dl(bias), _dl(y),
                                       o, cg, kh, kw, groups, [1, 1], [pad] * 4, [1, 1], True, threads, None)

        runs = {k: sparse(c) for k, c in cores.items()}
        for k, f in runs.items():
            f()
            err = float((y - ref).abs().max())
            if err > 1e-3 * float(ref.abs().max()):
                raise AssertionError(f"{k} differs from conv2d on {name}: max abs error {err}")
        runs["dense"] = lambda: torch.nn.functional.conv2d(x, w, bias, padding=pad, groups=groups)
        times: dict[str, list[float]] = {k: [] for k in runs}
        # every order of the three in turn: what runs right after dense conv2d (or after
        # itself) finds the caches in another state, and each gets each position equally
        orders = list(itertools.permutations(runs))
        for i in range(iters):
            for k in orders[i % len(orders)]:
                t = time.perf_counter()
                runs[k]()
                times[k].append(time.perf_counter() - t)
        out["layers"][name] = {k: statistics.median(v[max(1, iters // 10):]) for k, v in times.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("old", help="path of the old _core extension file")
    p.add_argument("new", help="path of the new _core extension file")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=60, help="timed rounds per layer (default 60, a multiple of 6)")
    p.add_argument("--json", metavar="FILE", help="also write the medians as JSON")
    a = p.parse_args(argv)
    res = compare({"old": load_core(a.old), "new": load_core(a.new)}, a.batch, a.threads, a.iters)
    print(f"batch {a.batch}, {a.threads} threads, SGEMM {res['sgemm_gflops']:.1f} GFLOP/s, "
          f"median of {a.iters} interleaved rounds (ms)")
    print(f"{'layer':<8}{'old':>9}{'new':>9}{'change':>9}{'dense':>9}{'x old':>8}{'x new':>8}")
    logs = {"old": 0.0, "new": 0.0}
    for name, r in res["layers"].items():
        for k in logs:
            logs[k] += math.log(r["dense"] / r[k])
        print(f"{name:<8}{r['old'] * 1e3:9.3f}{r['new'] * 1e3:9.3f}{(r['new'] / r['old'] - 1) * 100:+8.1f}%"
              f"{r['dense'] * 1e3:9.3f}{r['dense'] / r['old']:8.2f}{r['dense'] / r['new']:8.2f}")
    n = len(res["layers"])
    res["geomean"] = {k: math.exp(v / n) for k, v in logs.items()}
    print(f"geomean speedup over dense conv2d: old {res['geomean']['old']:.2f}, new {res['geomean']['new']:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
