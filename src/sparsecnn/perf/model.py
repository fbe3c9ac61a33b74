"""Roofline performance model of direct sparse convolution (Park et al., ICLR 2017, sec. 2.2).

The paper's model::

    t_dense  = C / F
    t_sparse = max(a * x * C / F,  (S_A + b * x * S_W) / B)

with ``C`` the dense FLOPs, ``x`` the weight density, ``S_A``/``S_W`` activation and
dense weight bytes, ``F`` SGEMM FLOP/s and ``B`` memory bandwidth. This module keeps
that shape but refines each term for this library's kernel (csrc/conv.cpp) and machine::

    t_dense   = C / F_conv(layer, batch)        measured oneDNN conv time of the layer
                                                (or fitted F_conv = Fc * C / (C + C_half))
    t_sparse  = t_fixed + max(t_compute, t_bw)
    t_fixed   = t0                              per call: dispatch, validation, table, pool
              + copy_bytes / B_copy             phased input + (dqmax+1) aligned replicas
                                                (a read-only scan for direct 1x1 layers);
                                                B_copy_llc when it fits in L3
              + c_out * N * OC * vectors / th   epilogue (bias/ReLU/unwiden store)
    t_compute = a_nb * x * C * w / F            vector FMAs over the widened positions:
                                                w = ceil16(OH * wrow) / (OH * OW); a_nb = a
                                                for 1-image tiles, a_batch for nb > 1
              + c_nz * x * K * chunks * blocks / th     scalar work per (nonzero, tile)
    t_bw      = S_A / B_act + b * x * S_W / B_w         b = 1.5 (4-byte value + 2-byte index)

``a * 2 * 16 / F`` is the time of one 16-float vector FMA (per thread, ``F`` counts all
threads), so ``a`` is how far the kernel's FMA rate is below SGEMM. ``a``, ``a_batch``,
``t0``, ``B_copy`` and ``B_copy_llc`` are fitted (``c_nz``, ``c_out`` are tied to ``a``) by :mod:`sparsecnn.perf.calibrate`;
``b`` is fixed. Both sparse terms are linear in ``x`` and ``t_compute(0) = 0``, so the
useful density range has a closed form (:meth:`PerfModel.useful_range`).

Example:
    >>> from sparsecnn.perf import LayerSpec, PerfModel
    >>> m = PerfModel.synthetic(F=100e9, B=20e9, a=3.0, b=2.0)
    >>> s = LayerSpec("conv5", "conv", 384, 256, (3, 3), padding=(1, 1), groups=2, input_hw=(13, 13))
    >>> p = m.predict(s, 0.1, batch=1)
    >>> p.bound, round(p.speedup, 2) > 1
    ('compute', True)
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .spec import LayerSpec

__all__ = ["Machine", "Prediction", "PerfModel", "SCHEMA_VERSION"]

log = logging.getLogger(__name__)

#: (vector width in floats, max accumulators) of the conv micro-kernel per ISA (csrc/isa/*.cpp)
ISA_SIMD: dict[str, tuple[int, int]] = {"avx512": (16, 28), "avx2": (8, 12), "portable": (8, 8)}

#: bump when the JSON layout or the meaning of a fitted constant changes
SCHEMA_VERSION = 5

#: storage overhead of the sparse weights: 4-byte value + 2-byte column index per nonzero
B_STORAGE = 1.5


@dataclass
class Machine:
    """Probed machine figures (all SI units: FLOP/s, bytes/s, bytes).

    Example:
        >>> Machine(F=1e11, B_dram=2e10).B_llc   # defaults to B_dram
        20000000000.0
    """

    F: float
    B_dram: float
    B_llc: float = 0.0
    B_copy: float = 0.0
    #: copy bandwidth when the phased input fits in L3 (defaults to ``B_copy``)
    B_copy_llc: float = 0.0
    l2_bytes: int = 1 << 20
    l3_bytes: int = 32 << 20
    threads: int = 1
    cpu: str = "unknown"
    isa: str = "unknown"
    version: str = "unknown"
    #: fitted dense-conv roof used for layers whose dense time was not measured
    F_conv_max: float = 0.0
    C_half: float = 0.0

    @property
    def simd(self) -> tuple[int, int]:
        """(floats per vector, accumulator registers) of the kernel for :attr:`isa`."""
        return ISA_SIMD.get(self.isa, ISA_SIMD["avx512"])

    def __post_init__(self) -> None:
        self.F, self.B_dram = float(self.F), float(self.B_dram)
        self.B_llc = float(self.B_llc or self.B_dram)
        self.B_copy = float(self.B_copy or self.B_dram)
        self.B_copy_llc = float(self.B_copy_llc or self.B_copy)
        self.F_conv_max = float(self.F_conv_max or self.F)


@dataclass(frozen=True)
class Prediction:
    """Model output for one layer, density and batch.

    ``bound`` is ``'compute'`` or ``'bandwidth'`` (which sparse roof is binding).
    ``t_compute``/``t_bw``/``t_fixed`` split ``t_sparse = t_fixed + max(t_compute, t_bw)``.
    """

    t_dense: float
    t_sparse: float
    speedup: float
    bound: str
    t_compute: float = 0.0
    t_bw: float = 0.0
    t_fixed: float = 0.0

    @property
    def effective_flops(self) -> float:
        """Dense FLOPs divided by sparse time (the paper's "effective FLOP/s") per second of t_dense."""
        return self.speedup / self.t_dense if self.t_dense > 0 else math.nan


@dataclass
class PerfModel:
    """Calibrated roofline model; see the module docstring for the formula.

    Create with :meth:`load_or_calibrate` (probe + fit, cached as JSON) or
    :meth:`synthetic` (hand-set constants, for tests and what-if studies).
    """

    machine: Machine
    #: vector-FMA time relative to SGEMM for 1-image tiles (batch 1)
    a: float = 3.0
    #: storage overhead (bytes per nonzero / 4); fixed, not fitted
    b: float = B_STORAGE
    t0: float = 0.0
    #: vector-FMA time relative to SGEMM for tiles of nb > 1 images (None: same as ``a``)
    a_batch: float | None = None
    #: seconds per (nonzero, position tile) visit on one thread: index/broadcast overhead
    c_nz: float = 0.0
    #: seconds per output vector on one thread: epilogue (bias/ReLU/unwiden store)
    c_out: float = 0.0
    #: dense layer timings, ``"<shape_key>|b<batch>" -> seconds``
    dense: dict[str, float] = field(default_factory=dict)
    #: calibration diagnostics (points, residuals); informative only
    fit_info: dict[str, Any] = field(default_factory=dict)
    measure_dense: bool = True
    schema: int = SCHEMA_VERSION

    # ------------------------------------------------------------------ construction
    @classmethod
    def synthetic(cls, F: float, B: float, a: float = 3.0, b: float = B_STORAGE, t0: float = 0.0,
                  B_llc: float | None = None, B_copy: float | None = None,
                  F_conv: float | None = None, threads: int = 1, c_nz: float = 0.0,
                  c_out: float = 0.0, isa: str = "avx512",
                  a_batch: float | None = None) -> "PerfModel":
        """A model with given constants, no probing; dense conv runs at ``F_conv`` (default ``F``).

        Example:
            >>> PerfModel.synthetic(F=1e11, B=1e10).a
            3.0
        """
        m = Machine(F=F, B_dram=B, B_llc=B_llc or B, B_copy=B_copy or B,
                    F_conv_max=F_conv or F, C_half=0.0, threads=threads, isa=isa)
        return cls(machine=m, a=a, b=b, t0=t0, c_nz=c_nz, c_out=c_out, a_batch=a_batch,
                   measure_dense=False)

    @classmethod
    def load_or_calibrate(cls, recalibrate: bool = False, threads: int | None = None,
                          quick: bool = False) -> "PerfModel":
        """Load the cached calibration for this machine, or probe and fit one (< 1 min).

        The cache lives in ``$SPARSECNN_CACHE_DIR`` or ``$XDG_CACHE_HOME/sparsecnn``
        (``~/.cache/sparsecnn``), keyed by CPU model, ISA, thread count and library
        version. A corrupted or stale file is logged and replaced.

        Example:
            >>> m = PerfModel.load_or_calibrate(quick=True)   # doctest: +SKIP
        """
        from . import calibrate

        return calibrate.load_or_calibrate(recalibrate=recalibrate, threads=threads, quick=quick)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable representation (inverse of :meth:`from_dict`)."""
        return {"schema": self.schema, "machine": asdict(self.machine), "a": self.a, "b": self.b,
                "t0": self.t0, "a_batch": self.a_batch, "c_nz": self.c_nz, "c_out": self.c_out, "dense": dict(self.dense), "fit_info": self.fit_info,
                "measure_dense": self.measure_dense}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PerfModel":
        """Rebuild from :meth:`to_dict`; raises ``KeyError``/``ValueError`` on bad input."""
        if int(d.get("schema", -1)) != SCHEMA_VERSION:
            raise ValueError(f"schema {d.get('schema')} != {SCHEMA_VERSION}")
        m = cls(machine=Machine(**d["machine"]), a=float(d["a"]), b=float(d["b"]),
                t0=float(d["t0"]),
                a_batch=None if d.get("a_batch") is None else float(d["a_batch"]), c_nz=float(d.get("c_nz", 0.0)), c_out=float(d.get("c_out", 0.0)),
                dense={str(k): float(v) for k, v in d.get("dense", {}).items()},
                fit_info=dict(d.get("fit_info", {})), measure_dense=bool(d.get("measure_dense", True)))
        for v in (m.a, m.b, m.t0, m.c_nz, m.c_out, m.machine.F, m.machine.B_dram, m.a_batch or 0.0):
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"bad constant {v}")
        if m.machine.F <= 0 or m.machine.B_dram <= 0:
            raise ValueError("F and B must be positive")
        return m

    # ------------------------------------------------------------------ terms
    def bandwidth(self, spec: LayerSpec, batch: int) -> float:
        """Bandwidth for the activations: L3 roof when ``S_A`` fits in L3, else DRAM."""
        if spec.act_bytes(batch) <= 0.75 * self.machine.l3_bytes:
            return self.machine.B_llc
        return self.machine.B_dram

    def weight_bandwidth(self, spec: LayerSpec) -> float:
        """Bandwidth for the sparse weights: L3 roof when even the dense-density CSR
        (``b * S_W``) fits in L3, else DRAM."""
        if self.b * spec.weight_bytes() <= 0.75 * self.machine.l3_bytes:
            return self.machine.B_llc
        return self.machine.B_dram

    def pad_time(self, spec: LayerSpec, batch: int) -> float:
        """Time of the kernel's input pass: phased/padded copy, or a read-only finiteness scan."""
        nbytes = spec.copy_bytes(batch, self.machine.simd[0])
        if not nbytes:
            return 0.0
        in_cache = nbytes <= 0.75 * self.machine.l3_bytes
        return nbytes / (self.machine.B_copy_llc if in_cache else self.machine.B_copy)

    def dense_key(self, spec: LayerSpec, batch: int) -> str:
        """Cache key for the dense timing of ``spec`` at ``batch``."""
        return f"{spec.shape_key()}|b{int(batch)}"

    def dense_time(self, spec: LayerSpec, batch: int, measure: bool | None = None) -> float:
        """``t_dense``: measured oneDNN time when known (or ``measure``), else the fitted roof.

        The fallback is ``C / F_conv`` with ``F_conv = F_conv_max * C / (C + C_half)``
        (small layers run further below the roof).
        """
        key = self.dense_key(spec, batch)
        if key in self.dense:
            return self.dense[key]
        if measure if measure is not None else self.measure_dense:
            from .probe import dense_conv_time

            t = dense_conv_time(spec, batch, threads=self.machine.threads)
            self.dense[key] = t
            return t
        c = spec.flops(batch)
        f_conv = self.machine.F_conv_max * c / (c + self.machine.C_half)
        return c / f_conv

    def plan(self, spec: LayerSpec, batch: int) -> dict[str, int]:
        """The kernel's tiling (mirrors csrc/conv.cpp): vectors, chunks and image blocks."""
        return spec.kernel_plan(batch, *self.machine.simd)

    def coefficients(self, spec: LayerSpec, batch: int) -> tuple[float, float, float, float, float]:
        """``(t_fixed, c0, kc, b0, kb)`` with ``t_compute = c0 + kc x`` and ``t_bw = b0 + kb x``.

        * ``kc x = a_nb x C w / F + c_nz x K chunks blocks / threads`` (vector FMAs over the
          widened positions, ``a_nb`` = ``a`` for 1-image tiles, ``a_batch`` when ``nb > 1``;
          plus the scalar work per nonzero and tile), ``c0 = 0``,
        * ``b0 = S_A / B_act``, ``kb = b S_W / B_w`` (L3 or DRAM roof, see :meth:`bandwidth`),
        * ``t_fixed = t0 + copy_bytes / B_copy + c_out N OC vectors / threads``.
        """
        simd, max_acc = self.machine.simd
        pl = spec.kernel_plan(batch, simd, max_acc)
        th = max(1, self.machine.threads)
        a_nb = self.a if pl["nb"] <= 1 or self.a_batch is None else self.a_batch
        kc = a_nb * spec.flops(batch) * spec.widening(simd, max_acc) / self.machine.F
        kc += self.c_nz * spec.weight_numel * pl["chunks"] * pl["blocks"] / th
        epi = self.c_out * batch * spec.out_channels * pl["vectors"] / th
        b0 = spec.act_bytes(batch) / self.bandwidth(spec, batch)
        kb = self.b * spec.weight_bytes() / self.weight_bandwidth(spec)
        return self.t0 + self.pad_time(spec, batch) + epi, 0.0, kc, b0, kb

    def terms(self, spec: LayerSpec, density: float, batch: int) -> tuple[float, float, float]:
        """``(t_fixed, t_compute, t_bw)`` of the sparse kernel at ``density``."""
        t_fixed, c0, kc, b0, kb = self.coefficients(spec, batch)
        x = float(density)
        return t_fixed, c0 + kc * x, b0 + kb * x

    # ------------------------------------------------------------------ public API
    def predict(self, spec: LayerSpec, density: float, batch: int = 1) -> Prediction:
        """Predicted dense/sparse time, speedup and binding roof for one layer.

        Example:
            >>> m = PerfModel.synthetic(F=1e11, B=1e10, a=2.0, b=2.0)
            >>> s = LayerSpec("fc", "linear", 4096, 4096)
            >>> m.predict(s, 0.1, batch=1).bound
            'bandwidth'
        """
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"density must be in [0, 1], got {density}")
        t_dense = self.dense_time(spec, batch)
        t_fixed, t_comp, t_bw = self.terms(spec, density, batch)
        t_sparse = t_fixed + max(t_comp, t_bw)
        return Prediction(t_dense=t_dense, t_sparse=t_sparse, speedup=t_dense / t_sparse,
                          bound="compute" if t_comp >= t_bw else "bandwidth",
                          t_compute=t_comp, t_bw=t_bw, t_fixed=t_fixed)

    def breakeven_density(self, spec: LayerSpec, batch: int = 1) -> float | None:
        """Density where predicted speedup = 1 (paper's lower bound of sparsity), or None.

        ``t_fixed + max(c0 + kc x, b0 + kb x) = t_dense`` holds at
        ``x = min((T - c0)/kc, (T - b0)/kb)`` with ``T = t_dense - t_fixed``
        (see :meth:`coefficients`); may exceed 1 (sparse faster even when dense).
        """
        t_dense = self.dense_time(spec, batch)
        t_fixed, c0, kc, b0, kb = self.coefficients(spec, batch)
        budget = t_dense - t_fixed
        if budget <= max(c0, b0):  # even x -> 0 is not faster than dense
            return None
        xc = (budget - c0) / kc if kc > 0 else math.inf
        xb = (budget - b0) / kb if kb > 0 else math.inf
        return min(xc, xb)

    def saturation_density(self, spec: LayerSpec, batch: int = 1) -> float:
        """Density below which pruning buys little (upper bound of useful sparsity), in [0, 1].

        The paper's bound is where ``t_compute`` meets the bandwidth roof ``S_A / B``. Here
        the density-independent floor also holds the per-call fixed cost and the input
        copy (memory bound, like ``S_A``), so the bound is where the FMA work equals the
        floor: ``c0 + kc x = t_fixed + b0 + kb x``, i.e.
        ``x = (t_fixed + b0 - c0) / (kc - kb)``. Below it more than half the sparse time
        does not shrink with density (at most another 2x to gain). 1.0 when the floor
        dominates at every density.
        """
        t_fixed, c0, kc, b0, kb = self.coefficients(spec, batch)
        floor = t_fixed + b0 - c0
        if kc <= kb:
            return 1.0
        return min(1.0, max(0.0, floor / (kc - kb)))

    def useful_range(self, spec: LayerSpec, batch: int = 1) -> tuple[float, float] | None:
        """``(breakeven_density, saturation_density)``, or None when pruning never pays.

        Prune the layer below ``breakeven`` to get a speedup; pruning below
        ``saturation`` buys (almost) nothing more. ``breakeven`` is capped at 1.

        Example:
            >>> m = PerfModel.synthetic(F=1e11, B=2e10, a=3.0, b=2.0)
            >>> s = LayerSpec("c", "conv", 384, 256, (3, 3), padding=(1, 1), input_hw=(13, 13))
            >>> lo, hi = m.useful_range(s, 1)
            >>> 0 < hi < lo <= 1
            True
        """
        be = self.breakeven_density(spec, batch)
        if be is None or be <= 0:
            return None
        sat = self.saturation_density(spec, batch)
        return (min(be, 1.0), min(sat, min(be, 1.0)))
