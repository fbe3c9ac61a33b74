"""Benchmarks: kernel vs. dense torch per layer (``layers``), end to end per model (``model``),
and on the GPU (``gpu_layers``).

Command line::

    sparsecnn bench layers --set caffenet --batch 1 16 --threads 2
    sparsecnn bench layers --set sweep --json benchmarks/results/layers_sweep.json
    sparsecnn bench model caffenet --batch 1 16

The submodules are imported lazily (``sparsecnn.bench.layers`` etc.), so importing this
package is cheap.

Example:
    >>> from sparsecnn.bench import run_layer_bench  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_layer_bench", "format_layer_table"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from sparsecnn.bench import layers

        return getattr(layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
