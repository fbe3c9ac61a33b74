"""Roofline performance model of direct sparse convolution (Park et al., ICLR 2017, sec. 2.2).

The paper's model::

    t_dense  = C / F
    t_sparse = max(a * x * C / F,  (S_A + b * x * S_W) / B)

with ``C`` the dense FLOPs, ``x`` the weight density, ``S_A``/``S_W`` activation and
dense weight bytes, ``F`` SGEMM FLOP/s and ``B`` memory bandwidth. This module keeps that
shape, but counts the work the way this library's kernels do it: the compiled core reports
its own plan for a layer (``_core.conv2d_plan``: which kernel, how many vector FMAs and tile
visits per nonzero, how many bytes it lays out, how many epilogues), and the model prices it::

    t_dense   = measured oneDNN conv time of the layer at this batch (cached), or the fitted
                roof C / F_conv with F_conv = F_conv_max * C / (C + C_half)
    t_sparse  = t_fixed + max(t_compute, t_bw)
    t_fixed   = t0                                  per call: dispatch, validation, threads
              + (layout + read + output bytes) / B_mem   the memory streams: the input laid
                                                    out for the kernel (no read for a 1x1
                                                    layer read in place) and the fresh output;
                                                    B_mem = B_copy_llc when they fit in L3,
                                                    else B_copy
              + epilogues * tau_epi / threads       stores: bias/ReLU/residual, transposes
    t_compute = (x / 0.1)^gamma * 0.1 * nnz_dense * (fmas * tau_fma + lanes_fmas * tau_lanes
                                                     + visits * tau_visit) / threads
                (tau_direct instead of tau_fma for 1x1 layers read in place; from the
                density where the batch-lanes kernel sweeps its input in L1-sized chunks of
                input channels, its part is  (x nnz_dense lanes_fmas + chunk_vectors) tau_chunk
                / threads  instead: FMAs fed from L1 plus the partial sums' reloads and stores;
                where the per-image kernel does, its part is  x nnz_dense fmas tau_pchunk / threads)
    t_bw      = S_A / B_act + b * x * S_W / B_w     b = 1.5 (4-byte value + 2-byte index)

``tau_fma`` is the time of one vector FMA (with its load, mostly from L2) on one thread in
the per-image kernel at density 0.1, ``tau_lanes`` in the batch-lanes kernel, ``tau_chunk`` in
its chunked sweep (loads from L1), ``tau_pchunk`` in the per-image kernel's, ``tau_direct``
when the per-image kernel reads a 1x1 layer's input in place (unaligned loads, no layout). The cost of a
nonzero falls slowly as the density grows (longer rows: more of a tile's input is reused from
L1 by the next output channels), hence ``x^gamma`` with a fitted ``gamma`` a little below 1
(the paper's model is linear, ``gamma = 1``). The paper's overhead is
``a = tau_fma * F / (2 * W * threads)`` (vector width ``W``): how far below SGEMM each useful
FLOP runs. The eleven constants ``tau_fma, tau_lanes, tau_chunk, tau_pchunk, tau_direct, tau_visit, tau_epi, gamma,
t0, B_copy, B_copy_llc`` are fitted by :mod:`sparsecnn.perf.calibrate`; ``b`` is fixed. Both sparse
terms increase with ``x`` between the densities where the kernel's plan changes (input-channel
chunks, a strided layer taking the batch-lanes kernel: :meth:`PerfModel.plan_changes`), so the useful
density range (:meth:`PerfModel.useful_range`) is found by bisection. The break-even comes with a band (:meth:`PerfModel.breakeven_band`) from the fit's own
rms error: where the predicted speedup is ``exp(-/+ 2 sigma)``.

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
ISA_SIMD: dict[str, tuple[int, int]] = {"avx512": (16, 28), "avx2": (8, 14), "portable": (8, 8)}

#: bump when the JSON layout or the meaning of a fitted constant changes
SCHEMA_VERSION = 8

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
    #: rate of the kernel's memory streams (input layout read + written, output written; bytes
    #: per second, all threads) beyond L3, and within L3; fitted
    B_copy: float = 0.0
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


def _scale_pair(v: Any) -> tuple[float, float]:
    """A saved ``(s_fixed, s_compute)``; ValueError on anything else (a corrupted cache is
    recalibrated, not a crash)."""
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ValueError(f"layer scales must be a pair, got {v!r}")
    return float(v[0]), float(v[1])


@dataclass
class PerfModel:
    """Calibrated roofline model; see the module docstring for the formula.

    Create with :meth:`load_or_calibrate` (probe + fit, cached as JSON) or
    :meth:`synthetic` (hand-set constants, for tests and what-if studies).
    """

    machine: Machine
    #: seconds per vector FMA (and its load) on one thread, per-image kernel
    tau_fma: float = 1e-9
    #: the same for the batch-lanes kernel (None: ``tau_fma``)
    tau_lanes: float | None = None
    #: the same for the batch-lanes kernel's sweep in input-channel chunks, also per partial-sum
    #: vector reloaded or stored at a chunk switch (None: chunks not priced, ``tau_lanes``)
    tau_chunk: float | None = None
    #: the same for the per-image kernel's sweep in input-channel chunks (None: not priced,
    #: ``tau_fma``)
    tau_pchunk: float | None = None
    #: the same for 1x1 layers read in place by the per-image kernel (None: ``tau_fma``)
    tau_direct: float | None = None
    #: seconds per (nonzero, tile) visit on one thread: column, table, broadcast, address
    tau_visit: float = 0.0
    #: seconds per epilogue (output channel x tile) on one thread
    tau_epi: float = 0.0
    #: exponent of the density in the compute term (1: the paper's linear model)
    gamma: float = 1.0
    t0: float = 0.0
    #: storage overhead (bytes per nonzero / 4); fixed, not fitted
    b: float = B_STORAGE
    #: dense layer timings, ``"<shape_key>|b<batch>" -> seconds``
    dense: dict[str, float] = field(default_factory=dict)
    #: per-layer corrections from timing the layer itself (:meth:`fit_layers`), same keys as
    #: ``dense`` -> ``(s_fixed, s_compute)``: ``t_fixed`` and ``t_compute`` of that layer at that
    #: batch are multiplied by them
    layer_scales: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: calibration diagnostics (points, residuals); informative only
    fit_info: dict[str, Any] = field(default_factory=dict)
    measure_dense: bool = True
    schema: int = SCHEMA_VERSION

    # ------------------------------------------------------------------ derived
    def _fma_slot(self) -> float:
        """Seconds one thread would spend on a vector FMA at the SGEMM rate."""
        simd = self.machine.simd[0]
        return 2.0 * simd * max(1, self.machine.threads) / self.machine.F

    @property
    def a(self) -> float:
        """The paper's compute overhead of the per-image kernel: vector-FMA time / SGEMM's."""
        return self.tau_fma / self._fma_slot()

    @property
    def a_lanes(self) -> float:
        """Compute overhead of the batch-lanes kernel (see :attr:`a`)."""
        return (self.tau_lanes if self.tau_lanes is not None else self.tau_fma) / self._fma_slot()

    # ------------------------------------------------------------------ construction
    @classmethod
    def synthetic(cls, F: float, B: float, a: float = 3.0, b: float = B_STORAGE, t0: float = 0.0,
                  B_llc: float | None = None, B_copy: float | None = None,
                  F_conv: float | None = None, threads: int = 1, visit_slots: float = 0.0,
                  epi_slots: float = 0.0, isa: str | None = None, a_lanes: float | None = None) -> "PerfModel":
        """A model with given constants, no probing; dense conv runs at ``F_conv`` (default ``F``).

        ``isa`` (default: the core's active one) sets the vector width that prices a vector FMA;
        it must be the one whose plans :meth:`work` reads, or every FMA count is off by the ratio
        of the widths.

        ``a`` (``a_lanes``) sets ``tau_fma`` (``tau_lanes``); ``visit_slots`` and ``epi_slots``
        price a tile visit and an epilogue in vector-FMA slots.

        Example:
            >>> round(PerfModel.synthetic(F=1e11, B=1e10).a, 6)
            3.0
        """
        if isa is None:
            from sparsecnn import _core

            isa = _core.active_isa()
        m = Machine(F=F, B_dram=B, B_llc=B_llc or B, B_copy=B_copy or B, B_copy_llc=B_copy or B,
                    F_conv_max=F_conv or F, C_half=0.0, threads=threads, isa=isa)
        model = cls(machine=m, b=b, t0=t0, measure_dense=False)
        slot = model._fma_slot()
        model.tau_fma = a * slot
        model.tau_lanes = None if a_lanes is None else a_lanes * slot
        model.tau_visit = visit_slots * slot
        model.tau_epi = epi_slots * slot
        return model

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

    def fit_layers(self, specs: list[LayerSpec], batch: int, **kw: Any) -> dict[str, dict[str, Any]]:
        """Time these conv layers at ``batch`` and fit each one's two corrections (fixed and
        compute term) into this model; see :mod:`sparsecnn.perf.layer_fit` (keyword arguments
        go to its ``fit_layers``).

        Example:
            >>> m = PerfModel.synthetic(F=1e11, B=2e10)
            >>> s = LayerSpec("c", "conv", 8, 8, (3, 3), padding=(1, 1), input_hw=(8, 8))
            >>> _ = m.fit_layers([s], batch=1, rounds=1, progress=False)
            >>> m.dense_key(s, 1) in m.layer_scales
            True
        """
        from . import layer_fit

        return layer_fit.fit_layers(self, specs, batch, **kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable representation (inverse of :meth:`from_dict`)."""
        return {"schema": self.schema, "machine": asdict(self.machine), "tau_fma": self.tau_fma,
                "tau_lanes": self.tau_lanes, "tau_chunk": self.tau_chunk, "tau_pchunk": self.tau_pchunk, "tau_direct": self.tau_direct, "tau_visit": self.tau_visit,
                "tau_epi": self.tau_epi,
                "gamma": self.gamma, "t0": self.t0, "b": self.b, "dense": dict(self.dense),
                "layer_scales": {k: list(v) for k, v in self.layer_scales.items()}, "fit_info": self.fit_info,
                "measure_dense": self.measure_dense}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PerfModel":
        """Rebuild from :meth:`to_dict`; raises ``KeyError``/``ValueError`` on bad input."""
        if int(d.get("schema", -1)) != SCHEMA_VERSION:
            raise ValueError(f"schema {d.get('schema')} != {SCHEMA_VERSION}")
        m = cls(machine=Machine(**d["machine"]), tau_fma=float(d["tau_fma"]),
                tau_lanes=None if d.get("tau_lanes") is None else float(d["tau_lanes"]),
                tau_chunk=None if d.get("tau_chunk") is None else float(d["tau_chunk"]),
                tau_pchunk=None if d.get("tau_pchunk") is None else float(d["tau_pchunk"]),
                tau_direct=None if d.get("tau_direct") is None else float(d["tau_direct"]),
                tau_visit=float(d.get("tau_visit", 0.0)), tau_epi=float(d.get("tau_epi", 0.0)),
                gamma=float(d.get("gamma", 1.0)), t0=float(d["t0"]), b=float(d["b"]),
                dense={str(k): float(v) for k, v in d.get("dense", {}).items()},
                layer_scales={str(k): _scale_pair(v) for k, v in d.get("layer_scales", {}).items()},
                fit_info=dict(d.get("fit_info", {})), measure_dense=bool(d.get("measure_dense", True)))
        for v in (m.tau_fma, m.tau_lanes or 0.0, m.tau_chunk or 0.0, m.tau_pchunk or 0.0, m.tau_direct or 0.0, m.tau_visit, m.tau_epi, m.t0, m.b, m.machine.F, m.machine.B_dram,
                  m.machine.B_copy, m.machine.B_copy_llc):
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"bad constant {v}")
        for sf, sc in m.layer_scales.values():
            if not (math.isfinite(sf) and math.isfinite(sc) and sf > 0 and sc > 0):
                raise ValueError(f"bad layer scales ({sf}, {sc})")
        if m.machine.F <= 0 or m.machine.B_dram <= 0 or m.tau_fma <= 0 or not 0.3 <= m.gamma <= 1.5:
            raise ValueError("F, B and tau_fma must be positive and gamma in [0.3, 1.5]")
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

    def work(self, spec: LayerSpec, batch: int, x: float = 0.0) -> dict[str, Any]:
        """The kernel's own plan for this layer, batch and density (see :meth:`LayerSpec.kernel_work`)."""
        return spec.kernel_work(batch, self.machine.threads, x)

    def plan_changes(self, spec: LayerSpec, batch: int) -> list[float]:
        """Densities in (0, 1] where the kernel's plan changes (the batch-lanes kernel taking a
        strided layer, input-channel chunks, each thread laying the input out itself): the sparse
        time may step there."""
        w = self.work(spec, batch, 1.0)
        return sorted({x for x in (w["lanes_density"], w["chunk_density"], w["pixel_chunk_density"], w["local_density"])
                       if 0.0 < x <= 1.0})

    def memory_time(self, spec: LayerSpec, batch: int, x: float = 0.0) -> float:
        """Time of the kernel's memory streams: the input read (not for a 1x1 layer read in
        place, see below) and the output written (at the L3 rate when both tensors
        fit in L3), and the layout written into its buffer (at the L3 rate when the buffers the
        threads fill at a time fit in L3: one block of images per thread, or the whole batch)."""
        mach = self.machine
        w = self.work(spec, batch, x)
        llc = 0.75 * mach.l3_bytes
        tensors = w["read_bytes"] + spec.output_bytes(batch)
        # a 1x1 layer read in place has no layout; its one input pass is a read-only NaN/Inf scan
        # just before the FMA loop reads the same input from cache (per image in image mode):
        # one stream, priced by the bandwidth roof S_A / B. Pricing the scan here as well put
        # ResNet-50 layer2.1.conv1 at batch 16 2-3x too slow (calibration rms 0.113 -> 0.102,
        # validation within 25 %: 90 -> 96 %, on the same measurements)
        streamed = tensors - w["read_bytes"] if w["direct"] else tensors
        t = streamed / (mach.B_copy_llc if tensors <= llc else mach.B_copy)
        buffers = w["layout_buffer_bytes"] * (max(1, mach.threads) if w["image_mode"] else 1)
        return t + w["layout_bytes"] / (mach.B_copy_llc if buffers <= llc else mach.B_copy)

    def coefficients(self, spec: LayerSpec, batch: int, x: float = 0.0) -> tuple[float, float, float, float, float]:
        """``(t_fixed, c0, kc, b0, kb)`` of the kernel's plan at density ``x``, with ``t_compute =
        c0 + kc x`` and ``t_bw = b0 + kb x`` as long as that plan holds (:meth:`plan_changes`;
        :meth:`compute_time` also prices input-channel chunks).

        * ``kc = nnz_dense (fmas tau_fma + lanes_fmas tau_lanes + visits tau_visit) / threads``
          from the kernel's plan (:meth:`work`), ``c0 = 0`` (with ``gamma != 1``,
          ``t_compute = kc 0.1 (x / 0.1)^gamma``, see :meth:`compute_time`);
        * ``b0 = S_A / B_act``, ``kb = b S_W / B_w`` (L3 or DRAM roof, see :meth:`bandwidth`);
        * ``t_fixed = t0 + memory_time + epilogues tau_epi / threads`` (:meth:`memory_time`).
        """
        w = self.work(spec, batch, x)
        th = max(1, self.machine.threads)
        tau_l = self.tau_lanes if self.tau_lanes is not None else self.tau_fma
        tau_p = self.tau_direct if (w["direct"] and self.tau_direct is not None) else self.tau_fma
        per_nz = w["vec_fmas"] * tau_p + w["lanes_vec_fmas"] * tau_l + w["visits"] * self.tau_visit
        kc = spec.weight_numel * per_nz / th
        t_fixed = self.t0 + self.memory_time(spec, batch, x) + w["epilogues"] * self.tau_epi / th
        b0 = spec.act_bytes(batch) / self.bandwidth(spec, batch)
        kb = self.b * spec.weight_bytes() / self.weight_bandwidth(spec)
        return t_fixed, 0.0, kc, b0, kb

    def _density_scale(self, x: float) -> float:
        """``0.1 (x / 0.1)^gamma`` (``x`` when ``gamma = 1``)."""
        return x if self.gamma == 1.0 else 0.1 * (max(x, 0.0) / 0.1) ** self.gamma

    def compute_time(self, spec: LayerSpec, batch: int, x: float) -> float:
        """``t_compute`` at density ``x``: ``c0 + kc 0.1 (x / 0.1)^gamma`` (:meth:`coefficients`);
        where the plan sweeps in input-channel chunks (a fitted ``tau_chunk`` given) the
        batch-lanes part is priced as ``(x nnz_dense lanes_fmas + chunk_vectors) tau_chunk /
        threads``, linear in ``x`` (FMAs fed from L1 do not get cheaper with longer rows), and
        where the per-image kernel does (a fitted ``tau_pchunk``) its part as ``x nnz_dense fmas
        tau_pchunk / threads``."""
        _, c0, kc, _, _ = self.coefficients(spec, batch, x)
        w = self.work(spec, batch, x)
        th = max(1, self.machine.threads)
        nnz = spec.weight_numel
        scaled, linear = kc, 0.0  # parts priced x^gamma and linear in x
        if self.tau_chunk is not None and w["chunked"] and w["lanes_vec_fmas"]:
            tau_l = self.tau_lanes if self.tau_lanes is not None else self.tau_fma
            scaled -= nnz * w["lanes_vec_fmas"] * tau_l / th
            linear += (x * nnz * w["lanes_vec_fmas"] + w["chunk_vectors"]) * self.tau_chunk / th
        if self.tau_pchunk is not None and w["pixel_chunked"] and w["vec_fmas"]:
            tau_p = self.tau_direct if (w["direct"] and self.tau_direct is not None) else self.tau_fma
            scaled -= nnz * w["vec_fmas"] * tau_p / th
            linear += x * nnz * w["vec_fmas"] * self.tau_pchunk / th
        return c0 + scaled * self._density_scale(x) + linear

    def terms(self, spec: LayerSpec, density: float, batch: int,
              scaled: bool = True) -> tuple[float, float, float]:
        """``(t_fixed, t_compute, t_bw)`` of the sparse kernel at ``density``; a layer timed by
        :meth:`fit_layers` has its ``t_fixed`` and ``t_compute`` scaled by its fitted corrections
        (unless ``scaled=False``)."""
        x = float(density)
        t_fixed, _, _, b0, kb = self.coefficients(spec, batch, x)
        t_comp = self.compute_time(spec, batch, x)
        scales = self.layer_scales.get(self.dense_key(spec, batch)) if scaled and self.layer_scales else None
        if scales is not None:
            t_fixed, t_comp = t_fixed * scales[0], t_comp * scales[1]
        return t_fixed, t_comp, b0 + kb * x

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

    @staticmethod
    def _bisect(f, lo: float, hi: float, iters: int = 100) -> float:
        """Root of ``f`` in ``[lo, hi]`` given ``f(lo) < 0 <= f(hi)``."""
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            if f(mid) < 0:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    def breakeven_density(self, spec: LayerSpec, batch: int = 1, target: float = 1.0) -> float | None:
        """Density where predicted speedup = 1 (paper's lower bound of sparsity), or None.

        The root of ``t_fixed + max(t_compute(x), t_bw(x)) = t_dense / target`` (increasing in
        ``x`` between the densities where the kernel's plan changes, :meth:`plan_changes`; the
        last root when there are several; with one plan throughout and ``gamma = 1`` it is
        ``min((T - c0)/kc, (T - b0)/kb)``, ``T = t_dense / target
        - t_fixed``). ``target`` other than 1 gives the density of that predicted speedup (used
        by :meth:`breakeven_band`). May exceed 1 (sparse faster even when dense); None when
        even ``x -> 0`` does not reach ``target``.
        """
        if not target > 0:
            raise ValueError(f"target speedup must be positive, got {target}")
        limit = self.dense_time(spec, batch) / target

        def excess(x: float) -> float:
            t_fixed, t_comp, t_bw = self.terms(spec, x, batch)
            return t_fixed + max(t_comp, t_bw) - limit

        if excess(0.0) >= 0:  # even x -> 0 is not faster than dense
            return None

        hi = 1.0
        while excess(hi) < 0 and hi < 1e6:
            hi *= 2.0
        if excess(hi) < 0:
            return math.inf
        # between the densities where the plan changes the time increases: the break-even is in
        # the last piece that still beats dense where it starts
        starts = [0.0] + [x for x in self.plan_changes(spec, batch) if x < hi]
        ends = starts[1:] + [hi]
        for lo, end in reversed(list(zip(starts, ends))):
            if excess(lo) < 0:
                return self._bisect(excess, lo, end)
        return 0.0

    @property
    def uncertainty(self) -> float:
        """Typical relative error of a predicted time: the calibration fit's rms log error
        (``fit_info["rms_log_error"]``), 0 for a model that was not fitted."""
        s = self.fit_info.get("rms_log_error", 0.0) if isinstance(self.fit_info, dict) else 0.0
        try:
            s = float(s)
        except (TypeError, ValueError):
            return 0.0
        return s if math.isfinite(s) and s > 0 else 0.0

    def breakeven_band(self, spec: LayerSpec, batch: int = 1, z: float = 2.0) -> tuple[float, float] | None:
        """``(low, high)`` densities between which the true break-even lies, given the model's
        own error: where the predicted speedup is ``exp(+z sigma)`` (low: the pessimistic edge)
        and ``exp(-z sigma)`` (high: the optimistic edge), with ``sigma`` = :attr:`uncertainty`
        from the calibration fit (``z = 2``: about 95 % if the errors are normal). Both capped
        at 1; ``low`` is 0 when even the sparsest layer would not reach ``exp(z sigma)``. None
        when even the optimistic edge never pays. With ``sigma = 0`` both equal the break-even.

        Example:
            >>> m = PerfModel.synthetic(F=1e11, B=2e10, a=3.0, b=2.0)
            >>> m.fit_info = {"rms_log_error": 0.1}
            >>> s = LayerSpec("c", "conv", 384, 256, (3, 3), padding=(1, 1), input_hw=(13, 13))
            >>> lo, hi = m.breakeven_band(s, 1)
            >>> lo < m.breakeven_density(s, 1) < hi
            True
        """
        if not (math.isfinite(z) and z >= 0):
            raise ValueError(f"z must be a finite non-negative number, got {z}")
        spread = math.exp(z * self.uncertainty)
        hi = self.breakeven_density(spec, batch, target=1.0 / spread)
        if hi is None or hi <= 0:
            return None
        lo = self.breakeven_density(spec, batch, target=spread)
        return (min(lo or 0.0, 1.0), min(hi, 1.0))

    def saturation_density(self, spec: LayerSpec, batch: int = 1) -> float:
        """Density below which pruning buys little (upper bound of useful sparsity), in [0, 1].

        The paper's bound is where ``t_compute`` meets the bandwidth roof ``S_A / B``. Here
        the density-independent floor also holds the per-call fixed cost and the input
        layout (memory bound, like ``S_A``), so the bound is the (first) density where the FMA
        work equals the floor: ``t_compute(x) = t_fixed + t_bw(x)`` (with ``gamma = 1``,
        ``x = (t_fixed + b0 - c0) / (kc - kb)``). Below it more than half the sparse time does
        not shrink with density (at most another 2x to gain). 1.0 when the floor dominates at
        every density.
        """
        def gap(x: float) -> float:
            t_fixed, t_comp, t_bw = self.terms(spec, x, batch)
            return t_comp - (t_fixed + t_bw)

        if gap(0.0) >= 0:
            return 0.0
        grid = [0.0] + [10 ** (k / 8.0) for k in range(-32, 1)]  # 1e-4 .. 1, log-spaced
        for lo, hi in zip(grid, grid[1:]):
            if gap(hi) >= 0:
                return self._bisect(gap, lo, hi)
        return 1.0

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
