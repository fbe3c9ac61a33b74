"""The ``sparsecnn prune`` subcommand.

Wire it into the top-level CLI with::

    from sparsecnn.prune import cli as prune_cli
    prune_cli.add_parser(subparsers)          # sets func=prune_cli.run
    ...
    return args.func(args)

Examples::

    sparsecnn prune --model fmnist_vgg --method gesl --epochs 10 --out runs/gesl
    sparsecnn prune --method gesl --epochs 10 --out runs/gesl --resume   # after a kill
    torchrun --nproc-per-node 2 -m sparsecnn.prune.cli --method gdns --out runs/gdns
    python -m sparsecnn.prune.cli --model tiny_cnn --dataset synthetic --epochs 2 --out /tmp/t --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from .trainer import METHODS, TrainConfig

__all__ = ["add_parser", "run", "main", "config_from_args", "format_table"]


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = TrainConfig()
    p.add_argument("--model", default=d.model, help="model name (sparsecnn.models.get_model) or tiny_cnn")
    p.add_argument("--method", default=d.method, choices=METHODS, help="pruning method")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--optimizer", default=d.optimizer, choices=("sgd", "adam"))
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=("cosine", "none"))
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lam", type=float, default=d.lam, help="ESL/GESL lasso strength")
    p.add_argument("--fc-multiplier", type=float, default=d.fc_multiplier,
                   help="pruning strength of fc layers relative to conv (default 0.1 guided, 1 otherwise)")
    p.add_argument("--c-rate", type=float, default=d.c_rate, help="DNS threshold: mean + c*std of |w|")
    p.add_argument("--final-sparsity", type=float, default=d.final_sparsity, help="GMP target sparsity")
    p.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs, help="dense epochs before pruning")
    p.add_argument("--check-every", type=int, default=d.check_every,
                   help="GSL check period in steps (default: every epoch)")
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--tol", type=float, default=d.tol)
    p.add_argument("--perf", default=d.perf, choices=("auto", "analytic", "none"),
                   help="performance model: calibrated (auto), built-in roofline (analytic) or none")
    p.add_argument("--infer-batch", type=int, default=d.infer_batch,
                   help="batch size the speedup projections and GSL's useful ranges are made for")
    p.add_argument("--no-fit-layers", dest="fit_layers", action="store_false",
                   help="take the useful ranges from the calibrated model alone, without first timing "
                        "the model's conv layers at --infer-batch (a few seconds a layer)")
    p.add_argument("--dataset", default=d.dataset, choices=("fashion_mnist", "synthetic"))
    p.add_argument("--data-dir", default=d.data_dir)
    p.add_argument("--subset", type=int, default=d.subset, help="use only N training images")
    p.add_argument("--pretrained", default=d.pretrained, help="state dict to start from")
    p.add_argument("--out", default=d.out, help="output directory")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``prune`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser("prune", help="train with (guided) pruning",
                              description="Train/prune a CNN with dense/ESL/GESL/DNS/GDNS/GMP.")
    _configure(p)
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def format_table(report: dict[str, Any]) -> str:
    """Human-readable per-layer table of the final model."""
    lines = [f"{'layer':<24}{'type':<6}{'state':<10}{'density':>9}{'speedup':>9}{'useful range':>18}"]
    for r in report["final"]["layers"]:
        be, sat = r.get("breakeven_density"), r.get("saturation_density")
        rng = "-" if be is None else f"[{sat:.3f}, {be:.3f}]"
        sp = r.get("speedup")
        lines.append(f"{r['name']:<24}{r['type']:<6}{r.get('state', ''):<10}{r['density']:>9.4f}"
                     f"{'-' if sp is None else f'{sp:.2f}x':>9}{rng:>18}")
    f = report["final"]
    lines.append(f"test accuracy {100 * f['test_acc']:.2f}%   overall density {f['overall_density']:.4f}   "
                 f"({report['time_s']:.0f}s, world size {report['world_size']})")
    lines.append(f"outputs in {report['files']['report'].rsplit('/', 1)[0]}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Execute ``sparsecnn prune``; prints the table (or JSON) on rank 0."""
    from .trainer import train

    report = train(config_from_args(args))
    if int(os.environ.get("RANK", "0")) == 0:  # the process group is gone by now
        print(json.dumps(report, indent=2, default=str) if args.json else format_table(report))
    return 0 if report.get("ranks_agree", True) else 1


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``python -m sparsecnn.prune.cli [options]``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = _configure(argparse.ArgumentParser(prog="sparsecnn prune"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
