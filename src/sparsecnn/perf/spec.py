"""Layer geometry for the performance model.

A :class:`LayerSpec` holds everything the roofline model needs to know about a
convolution or fully connected layer: its shape, the input size and hence the
dense FLOP count ``C``, the activation bytes ``S_A`` and the dense weight bytes
``S_W`` of Park et al. (ICLR 2017), section 2.2.

Example:
    >>> import torch.nn as nn
    >>> s = LayerSpec.from_module(nn.Conv2d(256, 384, 3, padding=1), (1, 256, 13, 13), "conv3")
    >>> s.output_hw, s.flops(1)
    ((13, 13), 299040768)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LayerSpec", "FLOAT_BYTES", "SIMD_FLOATS"]

FLOAT_BYTES = 4
#: floats per vector the sparse kernel widens its output rows to (one zmm register).
SIMD_FLOATS = 16


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected a 2-tuple, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


@dataclass(frozen=True)
class LayerSpec:
    """Geometry of one conv (``kind='conv'``) or fully connected (``kind='linear'``) layer.

    A linear layer is described as a 1x1 convolution on a 1x1 input
    (``in_channels = in_features``, ``out_channels = out_features``).

    Example:
        >>> LayerSpec("fc", "linear", 4096, 1000).flops(2)
        16384000
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    input_hw: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        if self.kind not in ("conv", "linear"):
            raise ValueError(f"kind must be 'conv' or 'linear', got {self.kind!r}")
        for f in ("kernel", "stride", "padding", "dilation", "input_hw"):
            object.__setattr__(self, f, _pair(getattr(self, f)))
        object.__setattr__(self, "in_channels", int(self.in_channels))
        object.__setattr__(self, "out_channels", int(self.out_channels))
        object.__setattr__(self, "groups", int(self.groups))
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError("channels must be divisible by groups")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_module(cls, module: Any, input_shape: tuple[int, ...], name: str = "") -> "LayerSpec":
        """Build a spec from an ``nn.Conv2d`` or ``nn.Linear`` and its input shape (with batch).

        String padding (``'same'``/``'valid'``) is resolved to integers.

        Example:
            >>> import torch.nn as nn
            >>> LayerSpec.from_module(nn.Conv2d(3, 8, 3, padding="same"), (1, 3, 32, 32)).padding
            (1, 1)
        """
        import torch.nn as nn

        if isinstance(module, nn.Linear):
            return cls(name=name, kind="linear", in_channels=module.in_features,
                       out_channels=module.out_features)
        if isinstance(module, nn.Conv2d):
            if len(input_shape) != 4:
                raise ValueError(f"conv input shape must be NCHW, got {input_shape}")
            kernel = _pair(module.kernel_size)
            dilation = _pair(module.dilation)
            pad = module.padding
            if isinstance(pad, str):
                if pad == "valid":
                    pad = (0, 0)
                elif pad == "same":
                    # PyTorch puts the extra pixel (odd total) on the right; we model the
                    # symmetric part, which is what the padded copy mostly costs.
                    pad = tuple((d * (k - 1)) // 2 for d, k in zip(dilation, kernel))
                else:
                    raise ValueError(f"unknown padding {pad!r}")
            return cls(name=name, kind="conv", in_channels=module.in_channels,
                       out_channels=module.out_channels, kernel=kernel,
                       stride=_pair(module.stride), padding=_pair(pad), dilation=dilation,
                       groups=module.groups, input_hw=(int(input_shape[-2]), int(input_shape[-1])))
        raise TypeError(f"unsupported module type {type(module).__name__}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerSpec":
        """Inverse of :meth:`to_dict`; also accepts manifest.json layer entries.

        Example:
            >>> LayerSpec.from_dict({"in_channels": 3, "out_channels": 8, "kernel": 3}).kernel
            (3, 3)
        """
        return cls(
            name=str(d.get("name", "")), kind=str(d.get("kind", "conv")),
            in_channels=d["in_channels"], out_channels=d["out_channels"],
            kernel=d.get("kernel", (1, 1)), stride=d.get("stride", (1, 1)),
            padding=d.get("padding", (0, 0)), dilation=d.get("dilation", (1, 1)),
            groups=d.get("groups", 1), input_hw=d.get("input_hw", (1, 1)),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    # ------------------------------------------------------------------ geometry
    @property
    def output_hw(self) -> tuple[int, int]:
        """Output (OH, OW) of the layer."""
        if self.kind == "linear":
            return (1, 1)
        out = []
        for i in range(2):
            eff = self.dilation[i] * (self.kernel[i] - 1) + 1
            out.append((self.input_hw[i] + 2 * self.padding[i] - eff) // self.stride[i] + 1)
        return out[0], out[1]

    @property
    def padded_hw(self) -> tuple[int, int]:
        """Input size after zero padding (Hp, Wp)."""
        return (self.input_hw[0] + 2 * self.padding[0], self.input_hw[1] + 2 * self.padding[1])

    @property
    def weight_numel(self) -> int:
        """Number of dense weights (out * in/groups * kh * kw)."""
        return self.out_channels * (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]

    def macs(self, batch: int = 1) -> int:
        """Dense multiply-accumulates for ``batch`` images."""
        oh, ow = self.output_hw
        return batch * self.weight_numel * oh * ow

    def flops(self, batch: int = 1) -> int:
        """Dense FLOPs ``C = 2 * MACs`` (counting the zeros)."""
        return 2 * self.macs(batch)

    def input_bytes(self, batch: int = 1) -> int:
        """float32 bytes of the (unpadded) input activations."""
        h, w = self.input_hw
        return FLOAT_BYTES * batch * self.in_channels * h * w

    def output_bytes(self, batch: int = 1) -> int:
        """float32 bytes of the output activations."""
        oh, ow = self.output_hw
        return FLOAT_BYTES * batch * self.out_channels * oh * ow

    def act_bytes(self, batch: int = 1) -> int:
        """``S_A``: input plus output activation bytes (float32)."""
        return self.input_bytes(batch) + self.output_bytes(batch)

    def weight_bytes(self) -> int:
        """``S_W``: dense float32 weight bytes."""
        return FLOAT_BYTES * self.weight_numel

    def shifts(self) -> tuple[int, int]:
        """``(drmax, dqmax)``: largest row / column shift of a tap in the phased input,
        ``((KH-1)*dil_h)//stride_h`` and ``((KW-1)*dil_w)//stride_w`` (csrc/conv.cpp)."""
        if self.kind == "linear":
            return 0, 0
        return ((self.kernel[0] - 1) * self.dilation[0] // self.stride[0],
                (self.kernel[1] - 1) * self.dilation[1] // self.stride[1])

    def is_direct(self) -> bool:
        """True when the kernel reads the input in place (1x1-like: stride 1, no padding, no halo)."""
        if self.kind == "linear":
            return True
        return self.stride == (1, 1) and self.padding == (0, 0) and self.shifts()[1] == 0

    def _aligned(self, simd: int) -> bool:
        """Whether the kernel rounds rows up to the vector width and replicates the input."""
        if self.kind == "linear" or self.is_direct():
            return False
        dq = self.shifts()[1]
        w = self.output_hw[1] + dq
        wa = math.ceil(w / simd) * simd
        return wa * 4 <= w * 5 and dq + 1 <= 5

    def row_width(self, simd: int = SIMD_FLOATS) -> int:
        """Width ``wrow`` of a row of the kernel's phased input (csrc/conv.cpp, "phased layout").

        ``OW + dqmax``, rounded up to a multiple of ``simd`` when that widens rows by at most
        25 % and ``dqmax + 1 <= 5`` ("aligned loads"); ``W`` for a direct layer.

        Example:
            >>> LayerSpec("c", "conv", 8, 8, (3, 3), padding=(1, 1), input_hw=(13, 13)).row_width()
            16
        """
        if self.kind == "linear":
            return 1
        if self.is_direct():
            return self.input_hw[1]
        w = self.output_hw[1] + self.shifts()[1]
        return math.ceil(w / simd) * simd if self._aligned(simd) else w

    def replicas(self, simd: int = SIMD_FLOATS) -> int:
        """Copies of the phased input the kernel writes: ``dqmax + 1`` when aligned, else 1
        (0 for a direct layer, which is read in place)."""
        if self.kind == "linear" or self.is_direct():
            return 0
        return self.shifts()[1] + 1 if self._aligned(simd) else 1

    def phased_rows(self) -> int:
        """``hrows = OH + drmax + (1 if dqmax > 0 else 0)`` rows per phase plane."""
        dr, dq = self.shifts()
        return self.output_hw[0] + dr + (1 if dq > 0 else 0)

    def phases(self) -> int:
        """Number of stride phases some tap uses (``nphy * nphx``)."""
        phy = len({(r * self.dilation[0]) % self.stride[0] for r in range(self.kernel[0])})
        phx = len({(s * self.dilation[1]) % self.stride[1] for s in range(self.kernel[1])})
        return phy * phx

    def copy_bytes(self, batch: int = 1, simd: int = SIMD_FLOATS) -> int:
        """Bytes of the kernel's pass over the input before computing.

        Padded/strided layers are copied into a zero-padded, stride-phased buffer: read the
        input once, write ``replicas * phases * hrows * wrow`` floats per (image, channel)
        (:meth:`replicas`: one shifted copy per column shift when loads are aligned). Direct
        layers are only scanned for non-finite values (read the input). 0 for linear layers.
        """
        if self.kind == "linear":
            return 0
        if self.is_direct():
            return self.input_bytes(batch)
        plane = self.phases() * self.phased_rows() * self.row_width(simd)
        return self.input_bytes(batch) + FLOAT_BYTES * batch * self.in_channels * plane * self.replicas(simd)

    def kernel_positions(self, simd: int = SIMD_FLOATS) -> int:
        """Output positions the sparse kernel really computes per image and output channel.

        Each output row is swept over the whole widened row ``wrow`` (:meth:`row_width`;
        columns ``>= OW`` are computed and dropped), and the plane of ``OH * wrow`` positions
        is done in ``simd``-float vectors: ``ceil_simd(OH * wrow)``. For a linear layer this is 1.

        Example:
            >>> LayerSpec("c", "conv", 8, 8, (3, 3), padding=(1, 1), input_hw=(13, 13)).kernel_positions()
            208
        """
        if self.kind == "linear":
            return 1
        return math.ceil(self.output_hw[0] * self.row_width(simd) / simd) * simd

    def widening(self, simd: int = SIMD_FLOATS, max_acc: int = 28) -> float:
        """Ratio of computed to useful output positions (>= 1), see :meth:`kernel_positions`."""
        if self.kind == "linear":
            return 1.0
        oh, ow = self.output_hw
        return self.kernel_positions(simd) / float(oh * ow)

    def kernel_plan(self, batch: int, simd: int = SIMD_FLOATS, max_acc: int = 28) -> dict[str, int]:
        """Tiling of the conv kernel (mirrors csrc/conv.cpp, "plan the tiles").

        ``vectors`` per image plane, balanced position ``chunks`` of at most
        ``min(16, max_acc)`` vectors, ``nb`` images register-blocked per tile (largest of
        4, 3, 2, 1 with ``nb <= batch`` and ``nb * chunk <= max_acc``) and
        ``blocks = ceil(batch / nb)``. Every nonzero is visited once per (chunk, block) and
        does ``nb * nv`` vector FMAs there. A linear layer vectorises over the batch.

        Example:
            >>> LayerSpec("c", "conv", 8, 8, (3, 3), padding=(1, 1), input_hw=(13, 13)).kernel_plan(16)
            {'vectors': 13, 'chunks': 1, 'nb': 2, 'blocks': 8}
        """
        if self.kind == "linear":
            nvec = math.ceil(batch / simd)
            return {"vectors": nvec, "chunks": math.ceil(nvec / 8), "nb": 1, "blocks": 1}
        nvec = self.kernel_positions(simd) // simd
        nv_max = min(16, max_acc)
        chunks = math.ceil(nvec / nv_max)
        chunk_big = math.ceil(nvec / chunks)
        nb = 1
        for cand in (4, 3, 2, 1):
            if cand <= batch and cand * chunk_big <= max_acc:
                nb = cand
                break
        return {"vectors": nvec, "chunks": chunks, "nb": nb, "blocks": math.ceil(batch / nb)}

    def shape_key(self) -> str:
        """Name-independent key of the geometry (used to cache dense-conv timings)."""
        return (f"{self.kind}:{self.in_channels}x{self.out_channels}:k{self.kernel[0]}x{self.kernel[1]}"
                f":s{self.stride[0]}x{self.stride[1]}:p{self.padding[0]}x{self.padding[1]}"
                f":d{self.dilation[0]}x{self.dilation[1]}:g{self.groups}:i{self.input_hw[0]}x{self.input_hw[1]}")
