"""A/B two builds of the compiled core on sparse fully connected layers, in one process.

The companion of ``ab_core.py`` (which explains why one process: separate runs drift by 10-30 %
on a shared 2-vCPU machine): CaffeNet's fc6, fc7 and fc8 shapes (9216 -> 4096, 4096 -> 4096,
4096 -> 1000) with random masks at ``--density``, at each ``--batch``. Both builds are checked
against ``torch.nn.functional.linear`` first, then timed in rounds that alternate which build
goes first; the dense ``F.linear`` (torch's SGEMM) is timed in the same rounds.

Usage::

    python benchmarks/ab_linear.py OLD/_core.cpython-311-x86_64-linux-gnu.so \\
        .venv/lib/python3.11/site-packages/sparsecnn/_core.cpython-311-x86_64-linux-gnu.so \\
        --batch 1 16 64 256 --density 0.1 --threads 2 [--rounds 8] [--json out.json]

Prints per shape and batch the median time of each build (ms), the change, and each build's
speedup over dense ``F.linear``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch

import sparsecnn
from sparsecnn.ops.conv import _dl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_core import load_core  # noqa: E402

#: CaffeNet's fully connected layers: (in_features, out_features)
SHAPES = {"fc6": (9216, 4096), "fc7": (4096, 4096), "fc8": (4096, 1000)}


def compare(cores: dict[str, ModuleType], batches: list[int], density: float, threads: int, rounds: int,
            seed: int = 0) -> list[dict[str, Any]]:
    """Median times (s) per shape and batch: ``{"layer", "batch", "dense", build: t, ...}``."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for name, (k, o) in SHAPES.items():
        w = torch.randn(o, k, generator=gen)
        w = w * (torch.rand(o, k, generator=gen) < density)
        bias = torch.randn(o, generator=gen)
        sw = sparsecnn.SparseWeight.from_dense(w)
        for n in batches:
            x = torch.randn(n, k, generator=gen)
            ref = torch.nn.functional.linear(x.double(), w.double(), bias.double())
            y = torch.empty(n, o)

            def sparse(core: ModuleType) -> Callable[[], None]:
                return lambda: core.linear(_dl(x), _dl(sw.values), _dl(sw.col_idx), _dl(sw.row_ptr), _dl(bias),
                                           _dl(y), o, False, threads)

            runs = {key: sparse(c) for key, c in cores.items()}
            for key, f in runs.items():
                f()
                err = float((y.double() - ref).abs().max())
                if err > 1e-3 * float(ref.abs().max()):
                    raise AssertionError(f"{key} differs from F.linear on {name}, batch {n}: max abs error {err}")

            def dense() -> None:
                torch.nn.functional.linear(x, w, bias)

            def timed(fn: Callable[[], None]) -> float:
                t = time.perf_counter()
                fn()
                return time.perf_counter() - t

            times: dict[str, list[float]] = {key: [] for key in [*runs, "dense"]}
            for i in range(rounds):
                order = list(runs) if i % 2 else list(runs)[::-1]
                for key in [*order, "dense"]:
                    fn = dense if key == "dense" else runs[key]
                    fn()
                    times[key] += [timed(fn) for _ in range(3)]
            rows.append({"layer": name, "batch": n, "density": density,
                         **{key: statistics.median(v) for key, v in times.items()}})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("old", help="path of the old _core extension file")
    p.add_argument("new", help="path of the new _core extension file")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8, help="rounds (each times every build 3 times; default 8)")
    p.add_argument("--json", metavar="FILE", help="also write the medians as JSON")
    a = p.parse_args(argv)
    rows = compare({"old": load_core(a.old), "new": load_core(a.new)}, a.batch, a.density, a.threads, a.rounds)
    print(f"density {a.density}, {a.threads} threads, medians of {3 * a.rounds} runs (ms)")
    print(f"{'layer':<6}{'batch':>6}{'old':>10}{'new':>10}{'change':>9}{'dense':>10}{'x old':>8}{'x new':>8}")
    for r in rows:
        print(f"{r['layer']:<6}{r['batch']:>6}{r['old'] * 1e3:10.3f}{r['new'] * 1e3:10.3f}"
              f"{(r['new'] / r['old'] - 1) * 100:+8.1f}%{r['dense'] * 1e3:10.3f}"
              f"{r['dense'] / r['old']:8.2f}{r['dense'] / r['new']:8.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"threads": a.threads, "density": a.density, "rounds": a.rounds, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
