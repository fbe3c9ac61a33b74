"""``sparsecnn model``: per-layer roofline projections, Figure-3 plots and validation.

Usage::

    sparsecnn model caffenet --batch 16                 # table with weights' densities
    sparsecnn model resnet50 --batch 1 --density 0.1    # what-if density for every layer
    sparsecnn model caffenet --batch 1 --plot fig.png --layers conv2,conv5
    sparsecnn model caffenet --validate                 # measure the kernel on the grid
    sparsecnn model caffenet --batch 16 --fit-layers    # time each conv layer first, correct the model

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(); sub = p.add_subparsers(dest="cmd")
    >>> _ = add_parser(sub)
    >>> p.parse_args(["model", "caffenet", "--batch", "4"]).batch
    4
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from typing import Any, Sequence

import torch
from torch import nn

from .model import PerfModel
from .spec import LayerSpec

__all__ = ["add_parser", "run", "main", "network_layers"]

log = logging.getLogger(__name__)

NETWORKS = ("caffenet", "resnet50", "vgg16", "googlenet")
#: pruned set applied by default to a named network, so its table shows real densities
DEFAULT_PRUNED = {"caffenet": "caffenet_l1_acc56.3", "resnet50": "resnet50_dlmc_magnitude_pruning_0.9"}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``model`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "model", help="roofline performance model of direct sparse convolution",
        description="Per-layer projected speedup of direct sparse convolution over dense "
                    "(Park et al. 2017 roofline, calibrated on this machine).")
    p.add_argument("network", help=f"one of {', '.join(NETWORKS)} or a path to a saved nn.Module")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--density", type=float, default=None,
                   help="use this weight density for every layer instead of the weights'")
    p.add_argument("--pruned", default=None,
                   help="pruned weight set to load into a named network (default: caffenet_l1_acc56.3 "
                        "for caffenet, resnet50_dlmc_magnitude_pruning_0.9 for resnet50; 'none' for dense)")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="write a Figure-3-style plot")
    p.add_argument("--layers", default=None, help="comma-separated layer names for --plot")
    p.add_argument("--fit-layers", action="store_true",
                   help="time each conv layer at --batch first (random masks at densities 0.005-0.8) and "
                        "correct the model's fixed and compute terms per layer (PerfModel.fit_layers)")
    p.add_argument("--validate", action="store_true",
                   help="measure the kernel on the validation grid and report model errors")
    p.add_argument("--recalibrate", action="store_true", help="redo the machine calibration")
    p.add_argument("--quick", action="store_true", help="quick (less accurate) calibration")
    p.add_argument("--threads", type=int, default=None, help="threads (default torch.get_num_threads())")
    p.add_argument("--no-measure-dense", action="store_true",
                   help="use the fitted dense-conv roof instead of timing F.conv2d per layer")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
    return p


# ---------------------------------------------------------------------- network -> layers
def _load_network(network: str, pruned: str | None) -> nn.Module:
    if os.path.exists(network):
        obj = torch.load(network, map_location="cpu", weights_only=False)
        if not isinstance(obj, nn.Module):
            raise SystemExit(f"{network}: expected a saved nn.Module, got {type(obj).__name__}")
        return obj
    from sparsecnn.models import get_model

    m = get_model(network)
    set_name = pruned if pruned is not None else DEFAULT_PRUNED.get(network)
    if set_name and set_name.lower() != "none":
        try:
            from sparsecnn.models.pruned import apply_pruned_weights

            applied = apply_pruned_weights(m, set_name)
            log.info("applied pruned set %s to %d layers", set_name, len(applied))
        except Exception as e:  # noqa: BLE001
            log.warning("could not apply pruned set %s: %s", set_name, e)
    return m


def _density(module: nn.Module) -> float:
    d = getattr(module, "density", None)
    if callable(d):
        d = d()
    if isinstance(d, (int, float)):
        return float(d)
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and w.numel():
        return float((w != 0).float().mean())
    return 1.0


def _as_spec(module: nn.Module, shape: tuple[int, ...], name: str) -> LayerSpec | None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return LayerSpec.from_module(module, shape, name)
    # duck-typed sparse modules (sparsecnn.nn) that mirror Conv2d / Linear attributes
    if all(hasattr(module, a) for a in ("in_channels", "out_channels", "kernel_size")) and len(shape) == 4:
        return LayerSpec(name, "conv", module.in_channels, module.out_channels, module.kernel_size,
                         getattr(module, "stride", 1), getattr(module, "padding", 0),
                         getattr(module, "dilation", 1), getattr(module, "groups", 1), shape[-2:])
    if all(hasattr(module, a) for a in ("in_features", "out_features")):
        return LayerSpec(name, "linear", module.in_features, module.out_features)
    return None


def network_layers(model: nn.Module, input_shape: Sequence[int] | None = None
                   ) -> list[tuple[LayerSpec, float]]:
    """(spec, weight density) of every conv / linear layer, in execution order.

    Input shapes come from forward hooks on one zero image.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
        >>> [s.name for s, _ in network_layers(net, (1, 3, 4, 4))]
        ['0', '2']
    """
    shape = tuple(input_shape or getattr(model, "default_input_shape", (1, 3, 224, 224)))
    shape = (1, *shape[1:])
    found: list[tuple[LayerSpec, float]] = []
    hooks = []
    for name, mod in model.named_modules():
        if not name or (list(mod.children()) and not isinstance(mod, (nn.Conv2d, nn.Linear))):
            continue

        def hook(m: nn.Module, inp: tuple, out: Any, name: str = name) -> None:
            if not inp or not isinstance(inp[0], torch.Tensor):
                return
            spec = _as_spec(m, tuple(inp[0].shape), name)
            if spec is not None:
                found.append((spec, _density(m)))

        hooks.append(mod.register_forward_hook(hook))
    try:
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(shape))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return found


# ---------------------------------------------------------------------- output
def _interval_str(lo_hi: tuple[float, float] | None) -> str:
    return "-" if lo_hi is None else f"{lo_hi[0]:.3f}..{lo_hi[1]:.3f}"


def _table(rows: list[dict[str, Any]], batch: int, model: PerfModel) -> str:
    m = model.machine
    head = (f"# {m.cpu}, {m.isa}, {m.threads} threads: F={m.F / 1e9:.0f} GFLOP/s, "
            f"B_dram={m.B_dram / 1e9:.1f} GB/s, B_llc={m.B_llc / 1e9:.1f} GB/s; "
            f"a={model.a:.2f} a_lanes={model.a_lanes:.2f} b={model.b:.2f} "
            f"t0={model.t0 * 1e6:.1f} us B_copy={m.B_copy / 1e9:.1f}/{m.B_copy_llc / 1e9:.1f} GB/s; "
            f"fit error sigma={model.uncertainty:.3f} (b-e band: +-2 sigma); batch {batch}")
    fitted = any(r.get("layer_fit") for r in rows)
    if fitted:
        head += "\n# corrected per layer by timing it (fit: the factors on the fixed and compute terms)"
    cols = ("layer", "shape", "GFLOP", "S_A MB", "S_W MB", "density", "dense ms", "sparse ms",
            "speedup", "useful x (sat..b-e)", "b-e band", "bound") + (("fit",) if fitted else ())
    lines = [head, "  ".join(f"{c:>12}" if i else f"{c:<24}" for i, c in enumerate(cols))]
    for r in rows:
        vals = (r["layer"], r["shape"], f"{r['gflop']:.3f}", f"{r['S_A'] / 1e6:.2f}",
                f"{r['S_W'] / 1e6:.2f}", f"{r['density']:.3f}", f"{r['t_dense'] * 1e3:.3f}",
                f"{r['t_sparse'] * 1e3:.3f}", f"{r['speedup']:.2f}x", _interval_str(ur[::-1] if (ur := r["useful_range"]) else None),  # (saturation, break-even)
                _interval_str(r["breakeven_band"]), r["bound"])
        if fitted:
            f = r.get("layer_fit")
            vals += ("-" if f is None else f"{f['s_fixed']:.2f}/{f['s_compute']:.2f}",)
        lines.append("  ".join(f"{v:>12}" if i else f"{v:<24}" for i, v in enumerate(vals)))
    td = sum(r["t_dense"] for r in rows)
    ts = sum(r["t_sparse"] for r in rows)
    lines.append(f"total conv/fc: dense {td * 1e3:.2f} ms, sparse {ts * 1e3:.2f} ms, "
                 f"speedup {td / ts:.2f}x (per-layer best-of: "
                 f"{td / sum(min(r['t_dense'], r['t_sparse']) for r in rows):.2f}x)")
    return "\n".join(lines)


def _shape_str(s: LayerSpec) -> str:
    if s.kind == "linear":
        return f"fc {s.in_channels}>{s.out_channels}"
    g = f"/g{s.groups}" if s.groups > 1 else ""
    st = f"s{s.stride[0]}" if s.stride != (1, 1) else ""
    return f"{s.kernel[0]}x{s.kernel[1]}{st} {s.in_channels}>{s.out_channels}{g} @{s.input_hw[0]}"


def run(args: argparse.Namespace) -> int:
    """Execute ``sparsecnn model`` with parsed ``args``; returns the exit code."""
    model = PerfModel.load_or_calibrate(recalibrate=args.recalibrate, threads=args.threads,
                                        quick=getattr(args, "quick", False))
    if getattr(args, "no_measure_dense", False):
        model.measure_dense = False
    batch = int(args.batch)
    if args.density is not None and not 0 < args.density <= 1:
        print("--density must be in (0, 1]", file=sys.stderr)
        return 2
    try:
        net = _load_network(args.network, getattr(args, "pruned", None))
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"cannot load network {args.network!r}: {e}", file=sys.stderr)
        return 2
    layers = network_layers(net)
    fits: dict[str, dict[str, Any]] = {}
    if getattr(args, "fit_layers", False):
        fits = model.fit_layers([spec for spec, _ in layers], batch, progress=sys.stderr.isatty())
    rows = []
    for spec, dens in layers:
        x = float(args.density) if args.density is not None else dens
        p = model.predict(spec, x, batch)
        rows.append({"layer": spec.name, "shape": _shape_str(spec), "spec": spec.to_dict(),
                     "gflop": spec.flops(batch) / 1e9, "S_A": spec.act_bytes(batch),
                     "S_W": spec.weight_bytes(), "density": x, "t_dense": p.t_dense,
                     "t_sparse": p.t_sparse, "speedup": p.speedup, "bound": p.bound,
                     "useful_range": model.useful_range(spec, batch),
                     "breakeven_band": model.breakeven_band(spec, batch),
                     "layer_fit": None if spec.name not in fits else
                     {k: fits[spec.name][k] for k in ("s_fixed", "s_compute", "rms_log_error")}})
    from .calibrate import save

    save(model, model.machine.threads)  # keeps newly measured dense timings

    out: dict[str, Any] = {"network": args.network, "batch": batch, "model": {
        "a": model.a, "a_lanes": model.a_lanes, "tau_fma": model.tau_fma, "tau_lanes": model.tau_lanes,
        "tau_chunk": model.tau_chunk, "tau_pchunk": model.tau_pchunk, "tau_visit": model.tau_visit, "tau_epi": model.tau_epi, "b": model.b, "t0": model.t0, "F": model.machine.F,
        "B_dram": model.machine.B_dram, "B_llc": model.machine.B_llc,
        "uncertainty": model.uncertainty}, "layers": rows}

    if args.plot:
        from .plot import plot_layers

        names = [s.strip() for s in (args.layers or "").split(",") if s.strip()]
        by_name = {s.name: s for s, _ in layers}
        if not names:
            names = [s.name for s, _ in layers if s.kind == "conv"][-2:]
        missing = [n for n in names if n not in by_name]
        if missing:
            print(f"unknown layers for --plot: {', '.join(missing)}", file=sys.stderr)
            return 2
        specs = [by_name[n] for n in names]
        measured = _measure_for_plot(model, specs, batch)
        plot_layers(model, specs, batch, args.plot, measured=measured)
        out["plot"] = args.plot

    if args.validate:
        from .validate import format_report, points_to_dicts, run_validation, summarize

        pts = run_validation(model)
        summ = summarize(model, pts)
        out["validation"] = {"points": points_to_dicts(pts), "summary": summ}
        save(model, model.machine.threads)

    if args.json:
        print(json.dumps(out, indent=1, default=str))
    else:
        print(_table(rows, batch, model))
        if args.plot:
            print(f"plot written to {args.plot}")
        if args.validate:
            print()
            print(format_report(pts, summ))
    if args.validate:
        s = out["validation"]["summary"]
        ok = s["median_abs_err"] <= 0.15 and s["within_25"] >= 0.9 and s["all_bracket"]
        return 0 if ok else 1
    return 0


def _measure_for_plot(model: PerfModel, specs: Sequence[LayerSpec], batch: int,
                      densities: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)
                      ) -> dict[str, list[tuple[float, float, float]]]:
    """Measured (density, t_dense, t_sparse) on random masks for the plotted layers."""
    try:
        from .layer_fit import time_layer
        from .probe import QuietWaiter

        out: dict[str, list[tuple[float, float, float]]] = {}
        quiet = QuietWaiter(budget=20.0)
        for spec in specs:
            if spec.kind != "conv":
                continue
            xs, td, tss = time_layer(spec, batch, densities, model.machine.threads, rounds=5, quiet=quiet)
            model.dense[model.dense_key(spec, batch)] = td
            out[spec.name] = [(x, td, ts) for x, ts in zip(xs, tss)]
        return out
    except Exception as e:  # noqa: BLE001
        log.warning("no measured points on the plot (%s)", e)
        return {}


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m sparsecnn.perf NETWORK ...``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="sparsecnn")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "model":
        argv = ["model", *argv]
    return run(parser.parse_args(argv))
