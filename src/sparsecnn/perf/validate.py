"""Measure the sparse kernel on a grid of layers/densities/batches and score the model.

Grid: CaffeNet conv2-5 (real pruned weights of ``caffenet_l1_acc56.3``, magnitude-pruned
further for lower densities, random masks above their native density) and a set of
ResNet-50 layers (real DLMC masks at their native densities, random masks elsewhere),
densities 0.03..0.6, batch 1 and 16.

Scores: per point ``pred/meas - 1`` of the speedup; median ``|pred/meas - 1|``, fraction
within 25 %; per (layer, batch) the measured break-even density (speedup = 1,
log-log interpolation) and whether it lies in the predicted break-even band
(:meth:`PerfModel.breakeven_band`, +-2 x the calibration's rms log error) and, the strict
reading, at or below the predicted break-even (point estimate).

Example:
    >>> from sparsecnn.perf.validate import measured_breakeven
    >>> measured_breakeven([0.1, 0.2, 0.4], [4.0, 2.0, 0.5])
    (0.282843, '')
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from . import probe
from .calibrate import random_sparse_weight, time_interleaved
from .model import PerfModel
from .spec import LayerSpec

__all__ = ["ValPoint", "validation_layers", "run_validation", "measured_breakeven",
           "summarize", "format_report", "DENSITIES", "BATCHES"]

log = logging.getLogger(__name__)

#: 0.3 and 0.5 place points around the break-evens (0.3-0.6): the measured break-even is
#: interpolated between neighbours, so a coarse grid adds its own error to the comparison
DENSITIES: tuple[float, ...] = (0.03, 0.06, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
BATCHES: tuple[int, ...] = (1, 16)
CAFFENET_SET = "caffenet_l1_acc56.3"
RESNET_SET = "resnet50_dlmc_magnitude_pruning_0.8"
RESNET_LAYERS = ("layer1.0.conv2", "layer2.0.conv2", "layer3.1.conv2", "layer4.1.conv2",
                 "layer2.1.conv1", "layer3.1.conv3")


@dataclass
class ValPoint:
    """One measured point of the validation grid."""

    layer: str
    batch: int
    density: float
    source: str  # 'real' | 'magnitude' | 'random'
    t_dense: float
    t_sparse: float
    pred_t_dense: float
    pred_t_sparse: float
    bound: str

    @property
    def speedup(self) -> float:
        return self.t_dense / self.t_sparse

    @property
    def pred_speedup(self) -> float:
        return self.pred_t_dense / self.pred_t_sparse

    @property
    def ratio(self) -> float:
        """predicted / measured speedup."""
        return self.pred_speedup / self.speedup


def _manifest() -> dict[str, Any]:
    from sparsecnn.models.pruned import load_manifest

    return load_manifest()


def _load_weights(set_name: str) -> dict[str, torch.Tensor]:
    try:
        from sparsecnn.models.pruned import load_pruned_layers

        return load_pruned_layers(set_name)
    except Exception as e:  # noqa: BLE001
        log.warning("pruned set %s unavailable (%s); using random masks only", set_name, e)
        return {}


def validation_layers() -> list[tuple[str, LayerSpec, torch.Tensor | None]]:
    """(prefix, spec, real weight or None) of the validation grid's layers."""
    out: list[tuple[str, LayerSpec, torch.Tensor | None]] = []
    try:
        man = _manifest()
    except Exception as e:  # noqa: BLE001
        log.warning("manifest unavailable (%s)", e)
        man = {}
    caffe = man.get(CAFFENET_SET, {}).get("layers", {})
    cw = _load_weights(CAFFENET_SET) if caffe else {}
    for name in ("conv2", "conv3", "conv4", "conv5"):
        if name in caffe:
            spec = LayerSpec.from_dict({**caffe[name], "name": f"caffenet.{name}"})
            out.append(("caffenet", spec, cw.get(name)))
    res = man.get(RESNET_SET, {}).get("layers", {})
    rw = _load_weights(RESNET_SET) if res else {}
    for name in RESNET_LAYERS:
        if name in res:
            spec = LayerSpec.from_dict({**res[name], "name": f"resnet50.{name}"})
            out.append(("resnet50", spec, rw.get(name)))
    return out


def _weight_at(spec: LayerSpec, real: torch.Tensor | None, density: float,
               seed: int) -> tuple[torch.Tensor, str]:
    """Weight of ``density``: magnitude-pruned real weight if possible, else random mask."""
    if real is not None:
        real_density = float((real != 0).float().mean())
        if density <= real_density * 1.0001:
            k = max(1, int(round(density * real.numel())))
            thr = real.abs().flatten().kthvalue(real.numel() - k + 1).values
            w = real * (real.abs() >= thr)
            return w, ("real" if density >= real_density * 0.9999 else "magnitude")
    return random_sparse_weight(spec, density, seed=seed), "random"


def run_validation(model: PerfModel, densities: Sequence[float] = DENSITIES,
                   batches: Sequence[int] = BATCHES, min_time: float = 0.08,
                   layers: list[tuple[str, LayerSpec, torch.Tensor | None]] | None = None,
                   progress: bool = True, rounds: int = 5,
                   quiet_budget: float = 60.0) -> list[ValPoint]:
    """Time dense and sparse layers on the grid; returns measured points with predictions.

    Dense times are re-measured here (and stored in ``model.dense``) so that the
    comparison uses the same run's conditions.
    """
    layers = layers if layers is not None else validation_layers()
    points: list[ValPoint] = []
    threads = model.machine.threads
    quiet = probe.QuietWaiter(budget=quiet_budget)
    for _, spec, real in layers:
        grid = sorted(set(densities))
        if real is not None:
            grid = sorted(set(grid) | {round(float((real != 0).float().mean()), 4)})
        ws = [_weight_at(spec, real, x, seed=1000 + i) for i, x in enumerate(grid)]
        for bsz in batches:
            # dense and sparse timings interleaved (medians of rounds): the machine is shared
            td, tss = time_interleaved(spec, [w for w, _ in ws], bsz, rounds=rounds,
                                       min_time=min_time / rounds, threads=threads, quiet=quiet)
            model.dense[model.dense_key(spec, bsz)] = td
            for (w, src), ts in zip(ws, tss):
                xr = float((w != 0).float().mean())
                pred = model.predict(spec, xr, bsz)
                points.append(ValPoint(spec.name, bsz, xr, src, td, ts, pred.t_dense,
                                       pred.t_sparse, pred.bound))
                if progress:
                    log.info("%-24s b=%-3d x=%.3f %-9s meas %.2fx pred %.2fx", spec.name, bsz, xr,
                             src, td / ts, pred.speedup)
    log.info("waited %.1f s for other processes (%d busy checks)", quiet.waited, quiet.busy_rounds)
    return points


def measured_breakeven(densities: Sequence[float], speedups: Sequence[float]) -> tuple[float, str]:
    """Density where the measured speedup crosses 1 (log-log interpolation).

    Returns ``(density, flag)`` with flag ``''`` (interpolated), ``'>'`` (speedup > 1 at
    every density: break-even above the grid) or ``'<'`` (below the grid).
    """
    pts = sorted(zip(densities, speedups))
    if all(s > 1 for _, s in pts):
        return pts[-1][0], ">"
    if all(s <= 1 for _, s in pts):
        return pts[0][0], "<"
    # last crossing from >1 to <=1 going up in density
    for (x0, s0), (x1, s1) in zip(pts, pts[1:]):
        if s0 > 1 >= s1:
            l0, l1 = math.log(s0), math.log(s1)
            f = l0 / (l0 - l1)
            return round(math.exp(math.log(x0) + f * (math.log(x1) - math.log(x0))), 6), ""
    return pts[-1][0], ">"


#: width of the predicted break-even band checked against the measured break-even, in units of
#: the calibration's rms log error (see :meth:`PerfModel.breakeven_band`)
BAND_Z = 2.0
#: largest calibration rms log error whose band counts: a noisy calibration widens the band until
#: it holds anything (quiet calibrations on the 2-core machine: 0.10-0.13)
MAX_BAND_SIGMA = 0.15


def _brackets(lo: float, hi: float, sat: float, be: float, flag: str) -> bool:
    """Whether the measured break-even ``be`` (``flag`` as :func:`measured_breakeven`) lies in
    the predicted ``[lo, hi]`` and above the predicted saturation density ``sat``."""
    if flag == ">":  # sparse still faster at the grid's top density: break-even above it
        return hi >= be
    if flag == "<":  # sparse slower already at the grid's lowest density: break-even below it
        return lo <= be
    return max(lo, sat) <= be <= hi


def summarize(model: PerfModel, points: list[ValPoint]) -> dict[str, Any]:
    """Error statistics and per-layer break-even bracketing: ``brackets`` (the measured break-even
    lies in the predicted band, :meth:`PerfModel.breakeven_band` at ``z = BAND_Z``) and
    ``brackets_point`` (between the predicted saturation and break-even densities)."""
    errs = [abs(p.ratio - 1) for p in points]
    out: dict[str, Any] = {
        "n": len(points),
        "median_abs_err": statistics.median(errs) if errs else math.nan,
        "within_25": sum(e <= 0.25 for e in errs) / len(errs) if errs else math.nan,
        "max_abs_err": max(errs) if errs else math.nan,
        "layers": [],
    }
    by: dict[tuple[str, int], list[ValPoint]] = {}
    for p in points:
        by.setdefault((p.layer, p.batch), []).append(p)
    specs = {s.name: s for _, s, _ in validation_layers()}
    for (name, bsz), pts in by.items():
        be, flag = measured_breakeven([p.density for p in pts], [p.speedup for p in pts])
        spec = specs.get(name)
        ur = model.useful_range(spec, bsz) if spec is not None else None
        band = model.breakeven_band(spec, bsz, z=BAND_Z) if spec is not None else None
        if ur is None:  # the model says sparse never pays: right if it never did
            ok = ok_point = flag == "<"
        else:
            pe, sat = ur
            ok = _brackets(*(band or (pe, pe)), sat, be, flag)
            # strict reading: measured break-even between saturation and the point estimate
            ok_point = _brackets(pe if flag else sat, pe, sat, be, flag)
        out["layers"].append({"layer": name, "batch": bsz, "measured_breakeven": be, "flag": flag,
                              "pred_range": ur, "pred_band": band, "brackets": ok,
                              "brackets_point": ok_point,
                              "pred_breakeven_ratio": (ur[0] / be if ur and not flag else None)})
    out["band_z"], out["band_sigma"] = BAND_Z, model.uncertainty
    out["all_bracket"] = all(l["brackets"] for l in out["layers"]) and model.uncertainty <= MAX_BAND_SIGMA
    # predicted / measured break-even where the measured speedup crosses 1 inside the grid:
    # the bias (mean) and spread (median |r - 1|) of the model's lower bound of sparsity
    ratios = [l["pred_breakeven_ratio"] for l in out["layers"] if l["pred_breakeven_ratio"]]
    out["breakeven_ratio_mean"] = statistics.fmean(ratios) if ratios else math.nan
    out["breakeven_ratio_median_abs_err"] = statistics.median(abs(r - 1) for r in ratios) if ratios else math.nan
    out["breakeven_within_15"] = sum(abs(r - 1) <= 0.15 for r in ratios) / len(ratios) if ratios else math.nan
    return out


def format_report(points: list[ValPoint], summary: dict[str, Any]) -> str:
    """Markdown tables of the validation points and the per-layer break-even check."""
    lines = ["| layer | batch | density | weights | bound | t_dense ms | t_sparse ms | meas speedup "
             "| pred speedup | pred/meas |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p.layer} | {p.batch} | {p.density:.3f} | {p.source} | {p.bound} | "
                     f"{p.t_dense * 1e3:.3f} | {p.t_sparse * 1e3:.3f} | {p.speedup:.2f} | "
                     f"{p.pred_speedup:.2f} | {p.ratio:.2f} |")
    z, sigma = summary.get("band_z", BAND_Z), summary.get("band_sigma", 0.0)
    lines += ["", f"| layer | batch | measured break-even | predicted break-even, saturation "
              f"| break-even band (+-{z:g} sigma) | in band | at or below break-even |", "|---|---|---|---|---|---|---|"]
    for l in summary["layers"]:
        ur, band = l["pred_range"], l.get("pred_band")
        rng = "none" if ur is None else f"{ur[0]:.3f}, {ur[1]:.3f}"
        bnd = "none" if band is None else f"{band[0]:.3f}..{band[1]:.3f}"
        lines.append(f"| {l['layer']} | {l['batch']} | {l['flag']}{l['measured_breakeven']:.3f} | {rng} | {bnd} | "
                     f"{'yes' if l['brackets'] else 'NO'} | {'yes' if l.get('brackets_point') else 'no'} |")
    n_layers = len(summary["layers"])
    lines += ["", f"points: {summary['n']}, median |pred/meas - 1| = {summary['median_abs_err'] * 100:.1f} %, "
              f"within 25 %: {summary['within_25'] * 100:.0f} %, max: {summary['max_abs_err'] * 100:.0f} %; "
              f"measured break-even inside the predicted band (+-{z:g} x the fit's rms log error "
              f"{sigma:.3f}{'' if sigma <= MAX_BAND_SIGMA else f', above {MAX_BAND_SIGMA}: too wide to count'}) "
              f"for all layers: {'yes' if summary['all_bracket'] else 'no'} "
              f"({sum(l['brackets'] for l in summary['layers'])} of {n_layers}); at or below the point "
              f"estimate: {sum(bool(l.get('brackets_point')) for l in summary['layers'])} of {n_layers}; "
              f"predicted / measured break-even: mean {summary['breakeven_ratio_mean']:.3f}, "
              f"median |r - 1| {summary['breakeven_ratio_median_abs_err'] * 100:.1f} %, "
              f"within 15 %: {summary['breakeven_within_15'] * 100:.0f} %"]
    return "\n".join(lines)


def points_to_dicts(points: list[ValPoint]) -> list[dict[str, Any]]:
    """JSON-friendly list of points (with derived speedups)."""
    return [{**asdict(p), "speedup": p.speedup, "pred_speedup": p.pred_speedup} for p in points]
