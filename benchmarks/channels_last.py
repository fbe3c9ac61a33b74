"""Channels-last models end to end: sparsified against dense, both memory formats, one process.

A pruned model (real weights from ../shared/data/pruned) is sparsified (``policy="all"``: every
conv sparse) and timed, calls interleaved, median of ``--rounds``:

* dense NCHW / dense channels-last: the pruned model run by torch (oneDNN), input and weights in
  that format;
* sparse NCHW: the sparsified model on NCHW input;
* sparse channels-last: on channels-last input, as ``sparsify`` converts (``keep_format=False``:
  the activations turn NCHW at the first sparse layer);
* sparse channels-last, format kept: every sparse conv returning channels-last as ``nn.Conv2d``
  would (``keep_format=True``), two conversions per layer.

Usage::

    SPARSECNN_PRUNED_DIR=../shared/data/pruned python benchmarks/channels_last.py \\
        --model resnet50 --weights resnet50_dlmc_magnitude_pruning_0.9 --batch 16 [--json out.json]

Prints the times (ms) and each sparse variant's speedup over the dense model of the same input
format.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import sparsecnn
from sparsecnn.models import caffenet, resnet50
from sparsecnn.models.pruned import apply_pruned_weights

MODELS = {"resnet50": (resnet50, 224), "caffenet": (caffenet, 227)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="resnet50")
    p.add_argument("--weights", default="resnet50_dlmc_magnitude_pruning_0.9", help="pruned set name")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    build, size = MODELS[args.model]
    dense = build().eval()
    apply_pruned_weights(dense, args.weights)
    dense_cl = build().eval()
    dense_cl.load_state_dict(dense.state_dict())
    dense_cl = dense_cl.to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, size, size)
    xcl = x.contiguous(memory_format=torch.channels_last)
    fast, _ = sparsecnn.sparsify(dense, x, policy="all")
    convs = [m for m in fast.modules() if isinstance(m, sparsecnn.SparseConv2d)]

    def keep(flag: bool):
        def run():
            for m in convs:
                m.keep_format = flag
            return fast(xcl)
        return run

    cases = {"dense NCHW": lambda: dense(x), "dense channels-last": lambda: dense_cl(xcl),
             "sparse NCHW": lambda: fast(x), "sparse channels-last": keep(False),
             "sparse channels-last, format kept": keep(True)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    with torch.inference_mode():
        ref = dense(x)
        for name, f in cases.items():
            err = (f() - ref).abs().max().item() / ref.abs().max().item()
            assert err < 1e-3, (name, err)
        for r in range(args.rounds):
            order = list(cases) if r % 2 == 0 else list(cases)[::-1]
            for name in order:
                t0 = time.perf_counter()
                cases[name]()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    base = {"NCHW": med["dense NCHW"], "channels-last": med["dense channels-last"]}
    print(f"{args.model} ({args.weights}), batch {args.batch}, {args.threads} threads, medians of {args.rounds} (ms)")
    rows = []
    for name, ms in med.items():
        fmt = "NCHW" if "NCHW" in name else "channels-last"
        speedup = base[fmt] / ms
        rows.append({"case": name, "ms": ms, "speedup_over_dense_same_format": speedup})
        print(f"{name:36s} {ms:9.2f}   {speedup:5.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "weights": args.weights, "batch": args.batch, "threads": args.threads,
                       "rounds": args.rounds, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
