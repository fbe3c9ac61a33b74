"""The ``sparsecnn`` command line.

Subcommands (each also takes ``--json``):

- ``sparsecnn demo``: train a small CNN on Fashion-MNIST, prune it with guided sparsity
  learning, sparsify it, report accuracy, densities, latency and file sizes.
- ``sparsecnn bench layers`` / ``sparsecnn bench model NAME``: kernel and end-to-end benchmarks
  against dense torch in the same process.
- ``sparsecnn model NETWORK``: the roofline performance model per layer (``--plot``,
  ``--validate``).
- ``sparsecnn prune``: (guided) pruning during training, also under torchrun.
- ``sparsecnn info``: kernel variant, threads (and whether they are torch's OpenMP threads), versions.

Example:
    $ sparsecnn info --json
    $ sparsecnn bench layers --set caffenet --batch 16
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

# subcommand -> module providing add_parser(subparsers) and run(args) -> int
_SUBCOMMANDS = {
    "demo": "sparsecnn.demo",
    "bench": "sparsecnn.bench.cli",
    "model": "sparsecnn.perf.cli",
    "prune": "sparsecnn.prune.cli",
}


def _info(args: argparse.Namespace) -> int:
    import torch

    import sparsecnn
    from sparsecnn import _core, ops

    info = {
        "version": sparsecnn.__version__,
        "torch": torch.__version__,
        "isa": ops.active_isa(),
        "isa_supported": {n: ops.isa_supported(n) for n in ("avx512", "avx2", "portable")},
        "threads": torch.get_num_threads(),
        "threading": _core.threading_backend(),
        "cuda": torch.cuda.is_available(),
    }
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        # ~100 ns: the first two CPUs share a core complex; 400+: they do not (docs/kernel.md)
        info["core_round_trip_ns"] = round(_core.core_round_trip_ns(cpus[0], cpus[1], 20000), 1)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>14}: {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subcommand modules are imported here)."""
    parser = argparse.ArgumentParser(prog="sparsecnn", description="Pruned CNNs that actually run faster.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in _SUBCOMMANDS.items():
        mod = importlib.import_module(module)
        p = mod.add_parser(sub)
        p.set_defaults(func=mod.run)
    p = sub.add_parser("info", help="kernel variant, threads, versions and the core-to-core round trip")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sparsecnn`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
