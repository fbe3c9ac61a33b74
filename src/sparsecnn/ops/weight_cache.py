"""A small LRU cache of objects derived from weight tensors (GPU plans, index conversions).

The torch ops receive a weight as plain tensors on every call; whatever is derived from them
once (the Triton kernel's plan, the int64 CSR cuSPARSE wants) is kept here, keyed on the tensor
objects themselves. An entry holds weak references and the tensors' version counters, so a
freed weight never matches a new tensor that reuses its ``id`` and a weight modified in place
is rebuilt. Inference tensors have no version counter: their results are not cached.

Example:
    >>> import torch
    >>> cache = WeightCache(size=4)
    >>> w = torch.ones(3)
    >>> cache.get((w,), "sum", lambda: float(w.sum())), cache.get((w,), "sum", lambda: -1.0)
    (3.0, 3.0)
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional, Sequence

import torch

__all__ = ["WeightCache"]


def _versions(tensors: Sequence[torch.Tensor]) -> Optional[tuple]:
    try:
        return tuple(t._version for t in tensors)
    except RuntimeError:  # inference tensors have no version counter
        return None


class WeightCache:
    """LRU map from (tensor objects, extra key) to a value built once; thread-safe."""

    def __init__(self, size: int = 64) -> None:
        self.size = int(size)
        self._entries: "OrderedDict[tuple, tuple]" = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, tensors: Sequence[torch.Tensor], key: Hashable, build: Callable[[], Any]) -> Any:
        """The value cached for these exact tensors and ``key``, else ``build()`` (then cached)."""
        vers = _versions(tensors)
        full = (tuple(id(t) for t in tensors), key)
        if vers is not None:
            with self._lock:
                entry = self._entries.get(full)
                if entry is not None:
                    refs, old_vers, value = entry
                    if old_vers == vers and all(r() is t for r, t in zip(refs, tensors)):
                        self._entries.move_to_end(full)
                        return value
                    del self._entries[full]
        value = build()
        if vers is not None:
            with self._lock:
                self._entries[full] = (tuple(weakref.ref(t) for t in tensors), vers, value)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return value
