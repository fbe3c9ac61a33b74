"""Figure-3-style plots: effective GFLOP/s and speedup vs density with the roofs.

Example:
    >>> from sparsecnn.perf import PerfModel, LayerSpec
    >>> from sparsecnn.perf.plot import plot_layers
    >>> m = PerfModel.synthetic(F=1e11, B=2e10)
    >>> s = LayerSpec("conv5", "conv", 384, 256, (3, 3), padding=(1, 1), groups=2, input_hw=(13, 13))
    >>> plot_layers(m, [s], batch=1, path="/tmp/fig3.png")   # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from .model import PerfModel
from .spec import LayerSpec

__all__ = ["plot_layers"]

log = logging.getLogger(__name__)


def plot_layers(model: PerfModel, specs: Sequence[LayerSpec], batch: int, path: str,
                measured: Mapping[str, Sequence[tuple[float, float, float]]] | None = None,
                title: str | None = None) -> str:
    """Write a PNG with, per layer, effective GFLOP/s (top) and speedup (bottom) vs density.

    ``measured`` maps layer name -> ``[(density, t_dense, t_sparse), ...]`` drawn as markers.
    Roofs drawn: compute roof ``C / t_compute`` (the kernel's FMAs at overhead ``a``),
    bandwidth roof ``C B / (S_A + b x S_W)``,
    the per-call floor ``C / t_fixed`` (fixed cost, input copy, epilogue),
    dense (oneDNN) level ``C / t_dense``, and SGEMM ``F``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(specs))
    fig, axes = plt.subplots(2, n, figsize=(4.6 * n, 7.2), squeeze=False)
    xs = np.logspace(np.log10(0.005), 0, 200)
    mach = model.machine
    for j, spec in enumerate(specs):
        c = spec.flops(batch)
        preds = [model.predict(spec, float(x), batch) for x in xs]
        t_dense = preds[0].t_dense
        eff = np.array([c / p.t_sparse for p in preds]) / 1e9
        comp_roof = np.array([c / max(p.t_compute, 1e-30) for p in preds]) / 1e9
        bw_roof = np.array([c / max(p.t_bw, 1e-30) for p in preds]) / 1e9
        sp = np.array([p.speedup for p in preds])
        ax, ax2 = axes[0][j], axes[1][j]
        ax.loglog(xs, eff, "k-", lw=2, label="model (sparse, effective)")
        lanes = model.work(spec, batch)["lanes_images"] > 0
        a_k = model.a_lanes if lanes else model.a
        floor = np.array([c / max(p.t_fixed, 1e-30) for p in preds]) / 1e9
        ax.loglog(xs, comp_roof, "C0--", label=f"compute roof (a={a_k:.2f}, {'batch lanes' if lanes else 'per image'})")
        ax.loglog(xs, floor, "C8-.", lw=1, label="fixed cost + copy floor")
        ax.loglog(xs, bw_roof, "C1:", lw=2, label=f"bandwidth roof (b={model.b:.2f})")
        ax.axhline(c / t_dense / 1e9, color="C2", ls="-.", label="dense conv (oneDNN)")
        ax.axhline(mach.F / 1e9, color="C7", ls="-", lw=0.8, label="SGEMM F")
        ax2.loglog(xs, sp, "k-", lw=2, label="model speedup")
        ax2.axhline(1.0, color="C3", lw=0.8)
        ur = model.useful_range(spec, batch)
        band = model.breakeven_band(spec, batch)
        if band and band[1] > band[0]:
            ax2.axvspan(band[0], band[1], color="C4", alpha=0.12,
                        label=f"break-even band {band[0]:.2f}..{band[1]:.2f}")
        if ur:
            for v, lab in zip(ur, ("break-even", "saturation")):
                ax2.axvline(v, color="C4" if lab == "break-even" else "C5", ls="--", lw=1,
                            label=f"{lab} {v:.3f}")
        for x_, td, ts in (measured or {}).get(spec.name, []):
            ax.loglog([x_], [c / ts / 1e9], "o", color="C3", ms=5)
            ax2.loglog([x_], [td / ts], "o", color="C3", ms=5)
        if measured and measured.get(spec.name):
            ax.plot([], [], "o", color="C3", label="measured")
            ax2.plot([], [], "o", color="C3", label="measured")
        ax.set_ylim(max(1.0, float(np.min(eff)) / 3), float(np.max(eff)) * 3)
        ax.set_title(f"{spec.name} (batch {batch})", fontsize=10)
        ax.set_ylabel("effective GFLOP/s")
        ax2.set_ylabel("speedup over dense")
        ax2.set_xlabel("non-zero density x")
        ax.grid(True, which="both", alpha=0.3)
        ax2.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
        ax2.legend(fontsize=7, loc="upper right")
    fig.suptitle(title or (f"Direct sparse convolution roofline, {mach.cpu}, {mach.threads} threads, "
                           f"F={mach.F / 1e9:.0f} GFLOP/s, B={mach.B_dram / 1e9:.0f} GB/s"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log.info("wrote %s", path)
    return path
