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

``--layers DENSITY`` instead times single 3x3 layers (random masks at that density, channels-last
input) with the compiled core writing an NCHW output, the same call writing channels-last (its
transpose), and the NCHW call followed by torch's copy to channels-last::

    python benchmarks/channels_last.py --layers 0.3 --batch 16
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
#: ``--layers``: (input channels, output channels, map size) of CaffeNet conv3 and ResNet-50 layer1-4's 3x3
LAYER_SHAPES = {"caffenet.conv3": (256, 384, 13), "resnet50.layer1": (64, 64, 56), "resnet50.layer2": (128, 128, 28),
                "resnet50.layer3": (256, 256, 14), "resnet50.layer4": (512, 512, 7)}


def layer_rows(density: float, batch: int, rounds: int) -> list[dict]:
    """Per 3x3 shape: the core with an NCHW output, with a channels-last output, and NCHW plus
    torch's copy, all on the same channels-last input, calls interleaved (ms, medians)."""
    from sparsecnn import _core
    from sparsecnn.ops.conv import _dl

    rows = []
    for name, (cin, cout, hw) in LAYER_SHAPES.items():
        g = torch.Generator().manual_seed(0)
        w = torch.randn(cout, cin, 3, 3, generator=g) * (torch.rand(cout, cin, 3, 3, generator=g) < density)
        sw = sparsecnn.SparseWeight.from_dense(w)
        x = torch.randn(batch, cin, hw, hw, generator=g).contiguous(memory_format=torch.channels_last)
        out_n = torch.empty(batch, cout, hw, hw)
        out_c = torch.empty(batch, cout, hw, hw, memory_format=torch.channels_last)

        def core(out):
            _core.conv2d(_dl(x), _dl(sw.values), _dl(sw.col_idx), _dl(sw.row_ptr), None, _dl(out), cout, cin, 3, 3,
                         1, [1, 1], [1, 1, 1, 1], [1, 1], False, torch.get_num_threads(), None)

        cases = {"nchw_out": lambda: core(out_n), "channels_last_out": lambda: core(out_c),
                 "nchw_out_then_torch_copy": lambda: (core(out_n), out_c.copy_(out_n))}
        times: dict[str, list[float]] = {k: [] for k in cases}
        core(out_n)
        core(out_c)
        assert torch.allclose(out_c, out_n, atol=1e-4, rtol=1e-4)
        for r in range(rounds):
            for k in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
                cases[k]()
                t0 = time.perf_counter()
                cases[k]()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        rows.append({"layer": name, **med})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="resnet50")
    p.add_argument("--weights", default="resnet50_dlmc_magnitude_pruning_0.9", help="pruned set name")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--layers", type=float, metavar="DENSITY", help="time single 3x3 layers at this density instead")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.layers is not None:
        rows = layer_rows(args.layers, args.batch, args.rounds)
        print(f"3x3 layers, density {args.layers}, batch {args.batch}, {args.threads} threads, channels-last input, "
              f"medians of {args.rounds} (ms)")
        print(f"{'layer':18s} {'NCHW out':>9s} {'CL out':>9s} {'NCHW+copy':>10s}  CL out / NCHW out, NCHW+copy / NCHW out")
        for r in rows:
            a, b, c = r["nchw_out"], r["channels_last_out"], r["nchw_out_then_torch_copy"]
            print(f"{r['layer']:18s} {a:9.3f} {b:9.3f} {c:10.3f}  {b / a:.3f}, {c / a:.3f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"density": args.layers, "batch": args.batch, "threads": args.threads,
                           "rounds": args.rounds, "layers": rows}, f, indent=1)
        return 0
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
