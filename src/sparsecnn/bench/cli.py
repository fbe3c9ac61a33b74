"""``sparsecnn bench``: layer and model benchmarks against dense torch in the same process.

Usage::

    sparsecnn bench layers --set caffenet --batch 1 16 --threads 2 --repeats 15
    sparsecnn bench layers --set resnet50 --json benchmarks/results/layers_resnet50.json
    sparsecnn bench layers --set sweep --densities 0.05 0.1 0.3 1.0
    sparsecnn bench layers --set caffenet --device cuda         # Triton kernel vs cuDNN/cuSPARSE
    sparsecnn bench model caffenet --batch 1 16 --json -
    sparsecnn bench model fmnist_vgg --weights runs/gsl/gesl/model_pruned.pt
    sparsecnn bench gsl runs/gsl --json benchmarks/results/gsl.json   # the GSL bar table

Standalone (without the top-level CLI): ``python -m sparsecnn.bench.cli layers --quick``.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(); sub = p.add_subparsers(dest="command")
    >>> _ = add_parser(sub)
    >>> a = p.parse_args(["bench", "layers", "--set", "sweep", "--batch", "16"])
    >>> a.bench_command, a.set, a.batch
    ('layers', 'sweep', [16])
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["add_parser", "run", "build_parser", "main"]

log = logging.getLogger(__name__)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, nargs="+", default=None, metavar="N",
                   help="batch sizes (default: 1 16; 1 with --quick for layers)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median reported)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for the run (default: torch's current setting)")
    p.add_argument("--json", metavar="FILE_OR_-", default=None,
                   help="write the result as JSON to FILE ('-': print JSON to stdout instead of the table)")


def _fill(p: argparse.ArgumentParser) -> None:
    bsub = p.add_subparsers(dest="bench_command", metavar="{layers,model,gsl}")
    bsub.required = True
    pl = bsub.add_parser("layers", help="per-layer: sparse kernel vs torch conv2d vs unfold+torch.sparse.mm",
                         description="Times sparsecnn.sparse_conv2d, torch conv2d (oneDNN) and a lowered "
                                     "unfold + torch.sparse.mm baseline per layer, density and batch.")
    pl.add_argument("--set", default="caffenet", choices=["caffenet", "resnet50", "sweep", "all"],
                    help="caffenet: conv1-5 real weights; resnet50: representative layers, real masks; "
                         "sweep: density sweep with random masks (default caffenet)")
    pl.add_argument("--weights", default=None, metavar="SET_OR_NPZ",
                    help="pruned weight set or npz for the real-weight layers "
                         "(default caffenet_l1_acc56.3 / resnet50_dlmc_magnitude_pruning_0.9)")
    pl.add_argument("--densities", type=float, nargs="+", default=None,
                    help="sweep density grid (default 0.02 0.05 0.1 0.2 0.3 0.4 0.5 0.7 1.0); for "
                         "caffenet/resnet50: extra random-mask rows at these densities")
    pl.add_argument("--layers", nargs="+", default=None, metavar="NAME",
                    help="only these layers (e.g. conv3 layer3.1.conv2)")
    pl.add_argument("--isa", choices=["avx512", "avx2", "portable"], default=None, help="force a kernel variant")
    pl.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: the Triton kernel vs cuDNN/cuBLAS/cuSPARSE (sparsecnn.bench.gpu_layers)")
    pl.add_argument("--no-lowered", action="store_true", help="skip the unfold + torch.sparse.mm baseline")
    pl.add_argument("--max-time", type=float, default=None, metavar="S",
                    help="cap per timing in seconds: slow ones use fewer runs, at least 3 (default 1.5)")
    pl.add_argument("--quick", action="store_true", help="few repeats, small SGEMM, 2-point sweep (tests)")
    pl.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    _add_common(pl)
    pm = bsub.add_parser("model", help="end-to-end: a sparsified model vs the dense torch model",
                         description="End-to-end latency of a pruned model run with the sparse kernels vs dense torch.")
    pm.add_argument("name", help="model name (e.g. caffenet, resnet50)")
    pm.add_argument("--weights", default=None, metavar="SET", help="pruned weight set to load")
    pm.add_argument("--policy", default="all",
                    help="sparsecnn.sparsify policy: which layers run sparse (all, auto, measure, none; default all)")
    _add_common(pm)
    pg = bsub.add_parser("gsl", help="accuracy, densities and end-to-end speed of sparsecnn prune runs",
                         description="The guided-sparsity table: every run directory under RUNS_DIR (report.json + "
                                     "model_pruned.pt of sparsecnn prune), its accuracy, per-layer density and "
                                     "measured end-to-end speedup over the dense torch model.")
    pg.add_argument("runs_dir", help="directory holding one sub-directory per run (e.g. runs/gsl)")
    pg.add_argument("--policy", default="measure", help="sparsecnn.sparsify policy (default measure)")
    pg.add_argument("--rounds", type=int, default=1,
                    help="measure every run this many times, round-robin, and report the median speedup (default 1)")
    _add_common(pg)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand (with ``layers`` and ``model``) to a subparsers object."""
    p = subparsers.add_parser("bench", help="layer and model benchmarks against dense torch",
                              description="Benchmarks of the sparse kernels against dense torch in the same process.")
    _fill(p)
    p.set_defaults(func=run)
    return p


def _emit(result: dict[str, Any], table: str, json_arg: str | None) -> None:
    if json_arg == "-":
        json.dump(result, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
        return
    print(table)
    if json_arg:
        from pathlib import Path

        path = Path(json_arg)
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
        print(f"\nwrote {path}", file=sys.stderr)


def _run_layers(args: argparse.Namespace) -> int:
    from sparsecnn.bench.layers import format_layer_table, run_layer_bench

    batches = args.batch or ([1] if args.quick else [1, 16])
    result = run_layer_bench(
        args.set, weights=args.weights, batches=batches, densities=args.densities,
        repeats=args.repeats if args.repeats is not None else 15, threads=args.threads, isa=args.isa,
        device=args.device, quick=args.quick, layers=args.layers, lowered=not args.no_lowered,
        max_time_s=args.max_time, progress=not args.no_progress,
    )
    _emit(result, format_layer_table(result), args.json)
    return 0


def _run_model(args: argparse.Namespace) -> int:
    try:
        from sparsecnn.bench.model import format_model_table, run_model_bench
    except ImportError as e:
        print(f"sparsecnn bench model: the model benchmark is not available ({e})", file=sys.stderr)
        return 2
    result = run_model_bench(
        args.name, weights=args.weights, batches=tuple(args.batch or (1, 16)),
        repeats=args.repeats if args.repeats is not None else 10, threads=args.threads, policy=args.policy,
    )
    _emit(result, format_model_table(result), args.json)
    return 0


def _run_gsl(args: argparse.Namespace) -> int:
    from sparsecnn.bench.gsl import format_gsl_table, run_gsl_table

    result = run_gsl_table(args.runs_dir, batches=tuple(args.batch or (1, 16)),
                           repeats=args.repeats if args.repeats is not None else 20, threads=args.threads,
                           policy=args.policy, rounds=args.rounds)
    _emit(result, format_gsl_table(result), args.json)
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch ``sparsecnn bench {layers,model,gsl}``; errors print a one-line message, exit 2."""
    handlers = {"layers": _run_layers, "model": _run_model, "gsl": _run_gsl}
    cmd = getattr(args, "bench_command", None)
    if cmd not in handlers:
        print("sparsecnn bench: choose a benchmark: layers, model or gsl", file=sys.stderr)
        return 2
    try:
        return handlers[cmd](args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        if getattr(args, "verbose", False):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"sparsecnn bench {cmd}: error: {msg}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """A standalone parser (``python -m sparsecnn.bench.cli layers ...``)."""
    p = argparse.ArgumentParser(prog="sparsecnn bench", description="Benchmarks of the sparse kernels against dense torch.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, full tracebacks")
    _fill(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
