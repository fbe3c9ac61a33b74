"""Which kernel variant (AVX-512, AVX2, portable) the compiled core runs.

The core picks the best variant the CPU supports. ``SPARSECNN_ISA=avx2`` (or ``portable``,
``avx512``, ``auto``) in the environment, or :func:`set_isa`, forces one.

Example:
    >>> from sparsecnn.ops import use_isa, active_isa
    >>> with use_isa("portable"):
    ...     active_isa()
    'portable'
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from sparsecnn import _core

_lock = threading.RLock()  # re-entrant: use_isa blocks may nest


def active_isa() -> str:
    """Name of the kernel variant in use: ``'avx512'``, ``'avx2'`` or ``'portable'``."""
    return _core.active_isa()


def isa_supported(name: str) -> bool:
    """Whether this CPU can run the named variant."""
    return bool(_core.isa_supported(name))


def set_isa(name: str) -> None:
    """Force a variant (``'avx512'``, ``'avx2'``, ``'portable'``) or ``'auto'``.

    Raises ``ValueError`` for an unknown name or one the CPU lacks.
    """
    _core.set_isa(name)


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[None]:
    """Run a block with a forced variant, restoring the previous one afterwards."""
    with _lock:
        previous = active_isa()
        set_isa(name)
        try:
            yield
        finally:
            set_isa(previous)
