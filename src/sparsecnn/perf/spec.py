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

__all__ = ["LayerSpec", "FLOAT_BYTES"]

FLOAT_BYTES = 4
#: batch vectors of one sparse_linear tile at most (kLinearMaxVectors, csrc/isa/kernels.hpp)
LINEAR_MAX_VECTORS = 8
#: kernel plans per (shape, batch, threads, isa, density), filled by LayerSpec.kernel_work
_WORK_CACHE: dict[tuple[str, int, int, str, float], dict[str, Any]] = {}
_WORK_CACHE_SIZE = 8192


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

    def kernel_work(self, batch: int, threads: int = 1, density: float = 0.0) -> dict[str, Any]:
        """The work the sparse kernel plans for this layer at this weight density (the compiled
        core's own plan; the density decides input-channel chunks and whether a strided layer
        takes the batch-lanes kernel).

        Convolutions ask ``sparsecnn._core.conv2d_plan`` (the planner ``sparse_conv2d`` runs,
        for the active ISA and ``threads``): ``vec_fmas`` / ``lanes_vec_fmas`` (vector FMAs per
        nonzero weight in the per-image / batch-lanes kernel, whole batch), ``visits`` (tile
        visits per nonzero), ``epilogues`` (output channel x tile stores), ``layout_bytes`` /
        ``read_bytes`` (the input pass), ``layout_buffer_bytes`` (one buffer: a block of images
        per thread in image mode, else the batch), ``footprint``, ``direct`` (the input is read
        in place, unaligned), which kernel runs how many images, ``chunked`` (the batch-lanes
        kernel sweeps in input-channel chunks; then ``chunk_vectors`` partial-sum loads and
        stores; ``pixel_chunked`` the same for the per-image kernel) and the densities from which
        chunks (``chunk_density``, ``pixel_chunk_density``), the batch-lanes
        kernel (``lanes_density``) and, in the per-image kernel's row mode, a layout per thread
        (``local_density``; ``layout_bytes`` then counts every copy) are taken.
        A linear layer vectorises over the batch (tiles of up to ``LINEAR_MAX_VECTORS`` vectors),
        transposing the input unless the batch is 1.

        Example:
            >>> w = LayerSpec("c", "conv", 256, 384, (3, 3), padding=(1, 1), input_hw=(13, 13)).kernel_work(1)
            >>> (w["pixel_images"], w["lanes_images"], w["vec_fmas"] > 0)
            (1, 0, True)
        """
        from sparsecnn import _core

        density = min(1.0, max(0.0, float(density)))
        key = (self.shape_key(), int(batch), int(threads), _core.active_isa(), density)
        hit = _WORK_CACHE.get(key)
        if hit is not None:
            return hit
        if self.kind == "linear":
            # csrc/linear.cpp: batch 1 reads the input row in place; larger batches transpose
            # it to X^T (rows padded to whole vectors from one vector up) and run batch tiles
            # of up to LINEAR_MAX_VECTORS vectors, each streaming the weight once
            simd = int(_core.conv2d_plan(1, 1, 1, 1, 1, 1, 1, 1, 1, [1, 1], [0, 0, 0, 0], [1, 1], 1)["vector_width"])
            nvec = math.ceil(batch / simd)
            chunks = math.ceil(nvec / LINEAR_MAX_VECTORS)
            ldx = batch if batch < simd else nvec * simd
            moved = 0 if batch == 1 else FLOAT_BYTES * ldx * self.in_channels
            w = {"vector_width": simd, "lanes_images": 0, "pixel_images": batch, "vec_fmas": nvec,
                 "lanes_vec_fmas": 0, "visits": chunks, "epilogues": self.out_channels * chunks,
                 "layout_bytes": moved, "layout_buffer_bytes": moved, "read_bytes": moved, "footprint": float(moved or FLOAT_BYTES * self.in_channels),
                 "image_mode": False, "direct": False, "chunked": False, "chunk_vectors": 0,
                 "chunk_density": math.inf, "lanes_density": math.inf, "local_density": math.inf,
                 "pixel_chunked": False, "pixel_chunk_density": math.inf}
        else:
            cg = self.in_channels // self.groups
            w = dict(_core.conv2d_plan(
                int(batch), self.in_channels, self.input_hw[0], self.input_hw[1], self.out_channels, cg,
                self.kernel[0], self.kernel[1], self.groups, list(self.stride),
                [self.padding[0], self.padding[0], self.padding[1], self.padding[1]], list(self.dilation),
                int(threads), density))
        if len(_WORK_CACHE) >= _WORK_CACHE_SIZE:  # the model's bisections ask at many densities
            _WORK_CACHE.clear()
        _WORK_CACHE[key] = w
        return w

    def shape_key(self) -> str:
        """Name-independent key of the geometry (used to cache dense-conv timings)."""
        return (f"{self.kind}:{self.in_channels}x{self.out_channels}:k{self.kernel[0]}x{self.kernel[1]}"
                f":s{self.stride[0]}x{self.stride[1]}:p{self.padding[0]}x{self.padding[1]}"
                f":d{self.dilation[0]}x{self.dilation[1]}:g{self.groups}:i{self.input_hw[0]}x{self.input_hw[1]}")
