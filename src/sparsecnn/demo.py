"""``sparsecnn demo``: train, prune (GESL), sparsify and measure a Fashion-MNIST CNN.

Steps (about 10 minutes on 2 cores with the defaults; ``--quick`` takes well under a minute):

1. train ``fmnist_vgg`` (``--widths``) dense for ``--dense-epochs`` epochs, then prune it with
   guided ESL for ``--prune-epochs`` epochs (:func:`sparsecnn.prune.trainer.train`, method
   ``gesl``, checkpoint every epoch: ``--resume`` continues an interrupted run);
2. :func:`sparsecnn.sparsify` the pruned model (BN folding, dense/sparse per layer with
   ``--policy``, ReLU fusion);
3. test accuracy before and after, per-layer density and decision, end-to-end latency of the
   dense pruned model, the BN-folded dense model and the sparsified model at batch 1 and 16
   (median of ``--repeats``, ``--threads`` torch threads), file sizes (``torch.save`` of the
   dense state dict vs :func:`sparsecnn.save`);
4. writes into ``--out`` (default ``runs/demo``): the trainer's outputs (``density.png``,
   ``report.json``, ``checkpoint.pt``, ``model_pruned.pt``), ``model_dense.pt``,
   ``model_sparse.safetensors``, ``latency.png`` and ``demo.json``.

Example:
    $ sparsecnn demo                      # the full run
    $ sparsecnn demo --quick --json       # a tiny smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run", "DEMO_KEYS"]

log = logging.getLogger(__name__)

#: top-level keys of demo.json
DEMO_KEYS = ("config", "train", "accuracy", "overall_density", "layers", "latency", "sizes", "files", "time_s")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand (sets ``func=run``)."""
    p = subparsers.add_parser("demo", help="train + prune + sparsify a Fashion-MNIST CNN, report speed and size",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX directory (default: Debian's)")
    p.add_argument("--subset", type=int, default=None, help="training images to use (default 12000; quick 512)")
    p.add_argument("--test-subset", type=int, default=None, help="test images to use (default all; quick 256)")
    p.add_argument("--widths", type=int, nargs="+", default=None, help="conv widths (default 32 64 64 128)")
    p.add_argument("--dense-epochs", type=int, default=None, help="dense warm-up epochs (default 2)")
    p.add_argument("--prune-epochs", type=int, default=None, help="GESL epochs (default 8)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--lam", type=float, default=None, help="ESL lasso strength (default 1e-2)")
    p.add_argument("--check-every", type=int, default=None,
                   help="GSL check period in training steps (default 25; quick: every epoch)")
    p.add_argument("--policy", default="measure", choices=("auto", "measure", "all", "none"),
                   help="sparsify policy (default: measure)")
    p.add_argument("--repeats", type=int, default=None, help="latency repeats (default 30; quick 5)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for inference timings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue training from OUT/checkpoint.pt")
    p.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    p.add_argument("--json", action="store_true", help="print demo.json")
    p.set_defaults(func=run)
    return p


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    q = bool(args.quick)

    def pick(v, full, quick):
        return v if v is not None else (quick if q else full)

    return {
        "widths": tuple(pick(args.widths, (32, 64, 64, 128), (8, 16, 16, 16))),
        "subset": pick(args.subset, 12000, 512),
        "test_subset": pick(args.test_subset, None, 256),
        "dense_epochs": pick(args.dense_epochs, 2, 1),
        "prune_epochs": pick(args.prune_epochs, 8, 1),
        "lam": pick(args.lam, 1e-2, 3e-3),
        # checks every 25 steps stop a layer at its bound; once an epoch, a lasso of 1e-2 takes
        # conv2-4 to half their bounds between two checks
        "check_every": pick(args.check_every, 25, None),
        "repeats": pick(args.repeats, 30, 5),
        "batch_size": args.batch_size,
        "lr": args.lr,
        "policy": args.policy,
        "seed": args.seed,
        "quick": q,
    }


def _datasets(data_dir: str | None, subset: int | None, test_subset: int | None, seed: int):
    import torch
    from torch.utils.data import TensorDataset

    from sparsecnn.data import FMNIST_MEAN, FMNIST_STD, load_fashion_mnist

    xtr, ytr = load_fashion_mnist("train", data_dir)
    xte, yte = load_fashion_mnist("test", data_dir)
    if subset:
        idx = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed))[:subset]
        xtr, ytr = xtr[idx], ytr[idx]
    if test_subset:
        xte, yte = xte[:test_subset], yte[:test_subset]

    def f(x):
        return ((x.to(torch.float32) / 255.0 - FMNIST_MEAN) / FMNIST_STD).unsqueeze(1)

    return TensorDataset(f(xtr), ytr), TensorDataset(f(xte), yte)


def _accuracy(model, ds, batch: int = 500) -> float:
    import torch

    correct = 0
    with torch.inference_mode():
        for i in range(0, len(ds), batch):
            x, y = ds.tensors[0][i:i + batch], ds.tensors[1][i:i + batch]
            correct += int((model(x).argmax(1) == y).sum())
    return correct / max(len(ds), 1)


def _latencies(models: list, x, repeats: int) -> list[float]:
    """Median seconds per forward of each model (warm-up first; runs interleaved)."""
    import torch

    with torch.inference_mode():
        for m in models:
            for _ in range(3):
                m(x)
        ts: list[list[float]] = [[] for _ in models]
        for _ in range(repeats):
            for i, m in enumerate(models):
                t0 = time.perf_counter()
                m(x)
                ts[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in ts]


def _plot_latency(lat: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    batches = list(lat["batches"])
    kinds = [("dense_ms", "dense (pruned, torch)", "tab:gray"), ("dense_folded_ms", "dense, BN folded", "tab:blue"),
             ("sparse_ms", "sparsified", "tab:green")]
    fig, axes = plt.subplots(1, len(batches), figsize=(3.2 * len(batches) + 1, 3.4))
    axes = np.atleast_1d(axes)
    for ax, b in zip(axes, batches):
        vals = [lat["batches"][b][k] for k, _, _ in kinds]
        ax.bar(range(len(kinds)), vals, color=[c for _, _, c in kinds])
        ax.set_xticks(range(len(kinds)), [n for _, n, _ in kinds], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("latency (ms, median)")
        ax.set_title(f"batch {b}: {lat['batches'][b]['speedup']:.2f}x", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def demo(args: argparse.Namespace) -> dict[str, Any]:
    """Run the demo and return the demo.json dict."""
    import torch

    import sparsecnn
    from sparsecnn.models import fmnist_vgg
    from sparsecnn.prune.trainer import TrainConfig, train

    t0 = time.time()
    s = _settings(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_ds, test_ds = _datasets(args.data_dir, s["subset"], s["test_subset"], s["seed"])
    cfg = TrainConfig(
        model="fmnist_vgg", method="gesl", epochs=s["dense_epochs"] + s["prune_epochs"],
        warmup_epochs=s["dense_epochs"], lr=s["lr"], lam=s["lam"], batch_size=s["batch_size"],
        check_every=s["check_every"],
        perf="analytic" if s["quick"] else "auto", infer_batch=16, data_dir=args.data_dir,
        subset=s["subset"], out=str(out), seed=s["seed"], resume=args.resume, device="cpu",
        progress=True,
    )
    if cfg.check_every:
        # "stabilised" (GSL's restore rule) is judged over `patience` checks: keep it about an epoch
        steps = -(-len(train_ds) // cfg.batch_size)
        cfg.patience = max(cfg.patience, round(steps / cfg.check_every))
    widths = s["widths"]
    report = train(cfg, model_factory=lambda c: fmnist_vgg(widths=widths),
                   data_factory=lambda c: (train_ds, test_ds))

    pruned = fmnist_vgg(widths=widths)
    pruned.load_state_dict(torch.load(out / "model_pruned.pt", map_location="cpu"))
    pruned.eval()

    threads = args.threads or torch.get_num_threads()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x16 = test_ds.tensors[0][:16]
        perf = None
        if s["quick"]:  # no calibration run for the smoke test
            from sparsecnn.prune.roofline import AnalyticRoofline

            perf = AnalyticRoofline()
        fast, srep = sparsecnn.sparsify(pruned, x16, policy=s["policy"], perf_model=perf, threads=threads)
        folded, _ = sparsecnn.sparsify(pruned, x16, policy="none")
        acc_dense, acc_sparse = _accuracy(pruned, test_ds), _accuracy(fast, test_ds)
        lat: dict[str, Any] = {"threads": threads, "repeats": s["repeats"], "statistic": "median",
                               "batches": {}}
        for b in (1, 16):
            xb = test_ds.tensors[0][:b]
            t = _latencies([pruned, folded, fast], xb, s["repeats"])
            row = {"dense_ms": 1e3 * t[0], "dense_folded_ms": 1e3 * t[1], "sparse_ms": 1e3 * t[2]}
            row["speedup"] = row["dense_ms"] / row["sparse_ms"]
            row["speedup_vs_folded"] = row["dense_folded_ms"] / row["sparse_ms"]
            lat["batches"][b] = row
    finally:
        torch.set_num_threads(old_threads)

    dense_path, sparse_path = out / "model_dense.pt", out / "model_sparse.safetensors"
    torch.save(pruned.state_dict(), dense_path)
    sparsecnn.save(fast, sparse_path, arch={"name": "fmnist_vgg", "kwargs": {"widths": list(widths)},
                                            "sparsified": True})
    back = sparsecnn.load(sparse_path)
    with torch.inference_mode():
        roundtrip = bool(torch.equal(back(x16), fast(x16)))
    sizes = {"dense_torch_save_bytes": os.path.getsize(dense_path),
             "sparse_safetensors_bytes": os.path.getsize(sparse_path)}
    sizes["ratio"] = sizes["sparse_safetensors_bytes"] / sizes["dense_torch_save_bytes"]
    sizes["roundtrip_identical"] = roundtrip

    _plot_latency(lat, out / "latency.png",
                  f"fmnist_vgg{list(widths)} GESL, {threads} threads, acc {100 * acc_sparse:.2f}%")
    fin = report["final"]
    proj = {r["name"]: r for r in fin["layers"]}
    layers = []
    for r in srep.to_dict()["layers"]:
        layers.append({k: r[k] for k in ("name", "type", "shape", "density", "decision", "reason", "pred_speedup",
                                         "meas_dense_s", "meas_sparse_s", "meas_speedup", "bn_folded", "relu_fused")}
                      | {"gsl_state": proj.get(r["name"], {}).get("state"),
                         "useful_range": _useful_range(proj.get(r["name"], {}))})
    result = {
        "config": s | {"widths": list(widths), "data_dir": args.data_dir, "out": str(out),
                       "gsl_patience": cfg.patience},
        "train": {"epochs_run": report["epochs_run"], "time_s": report["time_s"],
                  "history": [{k: h[k] for k in ("epoch", "pruning", "train_loss", "test_acc", "overall_density",
                                                 "time_s")} for h in report["history"]]},
        "accuracy": {"dense": acc_dense, "sparse": acc_sparse, "test_images": len(test_ds)},
        "overall_density": fin["overall_density"],
        "layers": layers,
        "gsl_layer_timings": report.get("layer_fits"),
        "sparsify": {"policy": srep.policy, "batch": srep.batch, "n_sparse": srep.n_sparse,
                     "max_rel_error": srep.max_rel_error, "perf_model": srep.perf_model},
        "latency": lat,
        "sizes": sizes,
        "files": {"density_plot": str(out / "density.png"), "latency_plot": str(out / "latency.png"),
                  "dense_model": str(dense_path), "sparse_model": str(sparse_path),
                  "train_report": str(out / "report.json"), "demo_json": str(out / "demo.json")},
        "time_s": time.time() - t0,
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _useful_range(row: dict[str, Any]) -> list[float] | None:
    """GSL's ``[saturation, breakeven]`` density of a layer (None: excluded or not pruned)."""
    sat, be = row.get("saturation_density"), row.get("breakeven_density")
    return None if sat is None or be is None else [sat, be]


def format_summary(r: dict[str, Any]) -> str:
    """The human-readable summary printed by ``sparsecnn demo``."""
    c = r["config"]
    lines = [f"fmnist_vgg widths {c['widths']}: {r['train']['epochs_run']} epochs ({c['dense_epochs']} dense + "
             f"{c['prune_epochs']} GESL) on {c['subset']} images in {r['train']['time_s']:.0f}s",
             f"accuracy: pruned dense {100 * r['accuracy']['dense']:.2f}%  sparsified "
             f"{100 * r['accuracy']['sparse']:.2f}%  ({r['accuracy']['test_images']} test images)",
             f"overall density {r['overall_density']:.4f}", "",
             f"{'layer':<18}{'density':>9}  {'GSL range':<15}{'decision':<8}{'measured':>10}  reason"]
    for L in r["layers"]:
        ms = "-" if L["meas_speedup"] is None else f"{L['meas_speedup']:.2f}x"
        rng = L.get("useful_range")
        rs = "-" if rng is None else f"[{rng[0]:.3f}, {rng[1]:.2f}]"
        lines.append(f"{L['name']:<18}{L['density']:>9.4f}  {rs:<15}{L['decision']:<8}{ms:>10}  {L['reason']}")
    lat = r["latency"]
    lines += ["", f"latency, median of {lat['repeats']}, {lat['threads']} threads:"]
    for b, v in lat["batches"].items():
        lines.append(f"  batch {b:>2}: dense {v['dense_ms']:.3f} ms  dense+BN folded {v['dense_folded_ms']:.3f} ms  "
                     f"sparse {v['sparse_ms']:.3f} ms  -> {v['speedup']:.2f}x ({v['speedup_vs_folded']:.2f}x vs folded)")
    sz = r["sizes"]
    lines += [f"file size: torch.save {sz['dense_torch_save_bytes'] / 1024:.1f} KiB, sparsecnn.save "
              f"{sz['sparse_safetensors_bytes'] / 1024:.1f} KiB ({100 * sz['ratio']:.1f}%)",
              f"outputs in {c['out']} (demo.json, density.png, latency.png); {r['time_s']:.0f}s total"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Execute ``sparsecnn demo``: 0 on success, 2 when the data is missing."""
    try:
        result = demo(args)
    except FileNotFoundError as e:
        print(f"sparsecnn demo: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str) if args.json else format_summary(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sparsecnn.demo [options]``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="sparsecnn")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["demo", *(argv if argv is not None else sys.argv[1:])]))


if __name__ == "__main__":
    sys.exit(main())
