"""A self-contained analytic roofline (paper Sec. 2.2) with the PerfModel duck type.

This is a *fallback* for :mod:`sparsecnn.prune` only (tests, machines where
the calibrated :class:`sparsecnn.perf.PerfModel` is unavailable, ``--perf
analytic``): it uses fixed platform numbers instead of measured ones.

    t_dense  = C/F                       (the paper assumes dense is compute-bound)
    t_sparse = max(alpha*x*C/F, (S_A + beta*x*S_W)/B)

A layer whose activation traffic alone exceeds ``t_dense`` (first conv with one
input channel, 1x1 convs, small-batch fc) has no speedup potential.

Example:
    >>> import torch.nn as nn
    >>> rf = AnalyticRoofline()            # Xeon E5-2697 v4 numbers from Table 1
    >>> spec = rf.make_spec(nn.Conv2d(64, 64, 3, padding=1), (1, 64, 28, 28))
    >>> breakeven, saturation = rf.useful_range(spec, batch=16)
    >>> saturation < breakeven <= 1 / 3 + 1e-9
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

__all__ = ["AnalyticRoofline", "RooflineSpec", "RooflinePrediction"]


@dataclass(frozen=True)
class RooflineSpec:
    """Per-sample FLOPs and bytes of one layer (weights are shared across a batch)."""

    name: str
    kind: str
    flops: float
    act_bytes: float
    weight_bytes: float


@dataclass(frozen=True)
class RooflinePrediction:
    t_dense: float
    t_sparse: float
    speedup: float
    bound: str  # 'compute' | 'bandwidth'


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class AnalyticRoofline:
    """Roofline of the paper with fixed ``F`` (FLOP/s), ``B`` (B/s), ``alpha``, ``beta``."""

    def __init__(self, flops_per_s: float = 2150e9, bytes_per_s: float = 122e9,
                 alpha: float = 3.0, beta: float = 2.0, dtype_bytes: int = 4) -> None:
        self.F, self.B = float(flops_per_s), float(bytes_per_s)
        self.alpha, self.beta, self.dtype_bytes = float(alpha), float(beta), int(dtype_bytes)

    def make_spec(self, module: nn.Module, input_shape: tuple[int, ...], name: str = "") -> RooflineSpec:
        """FLOPs/bytes for one sample of a Conv2d or Linear with the given input shape."""
        b = self.dtype_bytes
        if isinstance(module, nn.Conv2d):
            _, cin, h, w = input_shape
            kh, kw = module.kernel_size
            sh, sw = _pair(module.stride)
            dh, dw = _pair(module.dilation)
            if isinstance(module.padding, str):
                ho, wo = (h, w) if module.padding == "same" else (
                    (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1)
            else:
                ph, pw = _pair(module.padding)
                ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
                wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
            cout = module.out_channels
            flops = 2.0 * cout * ho * wo * (cin // module.groups) * kh * kw
            act = b * (cin * h * w + cout * ho * wo)
            return RooflineSpec(name, "conv", flops, act, b * module.weight.numel())
        if isinstance(module, nn.Linear):
            flops = 2.0 * module.in_features * module.out_features
            act = b * (module.in_features + module.out_features)
            return RooflineSpec(name, "fc", flops, act, b * module.weight.numel())
        raise TypeError(f"unsupported layer type {type(module).__name__}")

    def _terms(self, spec: RooflineSpec, batch: int) -> tuple[float, float, float]:
        return spec.flops * batch, spec.act_bytes * batch, spec.weight_bytes

    def predict(self, spec: RooflineSpec, density: float, batch: int) -> RooflinePrediction:
        C, SA, SW = self._terms(spec, batch)
        t_dense = C / self.F
        tc = self.alpha * density * C / self.F
        tb = (SA + self.beta * density * SW) / self.B
        t_sparse = max(tc, tb)
        return RooflinePrediction(t_dense, t_sparse, t_dense / t_sparse if t_sparse > 0 else float("inf"),
                                  "compute" if tc >= tb else "bandwidth")

    def useful_range(self, spec: RooflineSpec, batch: int) -> tuple[float, float] | None:
        """``(breakeven_density, saturation_density)`` or None if no density speeds up."""
        C, SA, SW = self._terms(spec, batch)
        t_dense = C / self.F
        # speedup == 1 where the larger of the two sparse terms reaches t_dense
        x_compute = t_dense * self.F / (self.alpha * C)
        x_bw = (t_dense * self.B - SA) / (self.beta * SW)
        breakeven = min(x_compute, x_bw, 1.0)
        if breakeven <= 0.0:
            return None
        denom = self.alpha * C / self.F - self.beta * SW / self.B
        saturation = (SA / self.B) / denom if denom > 0 else breakeven
        return breakeven, min(saturation, breakeven)
