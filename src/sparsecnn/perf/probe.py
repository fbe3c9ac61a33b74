"""Machine probes: compute roof ``F``, bandwidth roofs ``B`` and dense-conv speed.

* ``F`` -- SGEMM throughput of a large square ``torch.mm`` (median of repeats).
* ``B`` -- STREAM-style triad / copy run by the compiled core
  (``sparsecnn._core.stream_triad`` / ``stream_copy``), on arrays far larger than
  L3 (DRAM roof) and on arrays that fit L3 but not L2 (cache roof).
* dense conv -- time of ``F.conv2d`` for one layer shape and batch (oneDNN is
  often not at SGEMM speed; the model uses the measured figure per layer).

Example:
    >>> from sparsecnn.perf import probe
    >>> f = probe.sgemm_flops(n=256, repeats=3)   # doctest: +SKIP
    >>> f > 1e9                                    # doctest: +SKIP
    True
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from .spec import LayerSpec

__all__ = [
    "median_time", "interleaved_medians", "settle_allocator", "sgemm_flops", "stream_bandwidth", "copy_bandwidth", "dense_conv_time",
    "cpu_model", "active_isa", "library_version", "cache_sizes", "num_threads", "QuietWaiter",
]

log = logging.getLogger(__name__)


#: The largest block whose free still raises glibc's mmap threshold (its cap is 32 MiB with the header).
SETTLE_BYTES = 31 << 20
_settled = False


def settle_allocator(nbytes: int = SETTLE_BYTES) -> None:
    """Allocate and free one ``nbytes`` block so that later timings see a long-running process's
    allocator, not a fresh one's.

    glibc serves blocks above its mmap threshold (128 KB at start) as fresh mappings, faulted in
    page by page, until the process frees such a block: the threshold then rises to its size
    (only for blocks of at most 32 MiB: freeing a 32 MiB tensor, a little more with its header,
    left it at 128 KB), the heap's trim threshold to twice that, and later blocks come from the
    heap, reused without faults. A model that has run a few batches is in that state; a fresh
    process timing one layer call after another is not, and its outputs' page faults (about 1 us
    per 4 KB page on a VM) can swamp the layer (docs/benchmarks.md, "Memory allocator"). The
    default is the largest block that still counts: after a 16 MiB one, a dense conv2d with 12.8 MB
    outputs still gave its heap back after every call while two other such tensors were alive
    (9,400 page faults a call, 18.6 ms instead of 9.1). :func:`median_time` and
    :func:`interleaved_medians` call it once per process, before their first timing.

    Example:
        >>> settle_allocator(1 << 20)
    """
    global _settled
    block = torch.empty(max(1, nbytes // 4), dtype=torch.float32)
    block.fill_(0.0)  # touch it, as a real activation would be
    del block
    _settled = _settled or nbytes >= SETTLE_BYTES


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1,
                min_time: float = 0.0, max_repeats: int = 200) -> float:
    """Median wall time of ``fn()`` in seconds.

    Runs ``warmup`` untimed calls, then at least ``repeats`` timed calls and more
    (up to ``max_repeats``) until ``min_time`` seconds have been spent.

    Example:
        >>> median_time(lambda: sum(range(100)), repeats=3) > 0
        True
    """
    if not _settled:
        settle_allocator()
    for _ in range(warmup):
        fn()
    ts: list[float] = []
    spent = 0.0
    while len(ts) < repeats or (spent < min_time and len(ts) < max_repeats):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        ts.append(dt)
        spent += dt
    return statistics.median(ts)


def interleaved_medians(fns: Sequence[Callable[[], object]], repeats: int = 5,
                        sync: Callable[[], object] | None = None) -> list[float]:
    """Median wall time of each of ``fns`` in seconds, their calls interleaved round by round so
    that a load change on a shared machine hits all of them alike (one warm-up call each;
    ``sync``, e.g. ``torch.cuda.synchronize``, after each call).

    Example:
        >>> a, b = interleaved_medians([lambda: sum(range(10)), lambda: sum(range(10000))], repeats=3)
        >>> 0 < a < b
        True
    """
    if not _settled:
        settle_allocator()
    for fn in fns:
        fn()
        if sync is not None:
            sync()
    ts: list[list[float]] = [[] for _ in fns]
    for _ in range(max(1, repeats)):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            if sync is not None:
                sync()
            ts[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in ts]


def _cpu_busy() -> tuple[float, float] | None:
    """(busy seconds of all CPUs, CPU seconds of this process) now, or None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        tick = os.sysconf("SC_CLK_TCK")
        busy = (sum(v) - v[3] - v[4]) / tick
        t = os.times()
        return busy, t.user + t.system
    except (OSError, ValueError, AttributeError):
        return None


class QuietWaiter:
    """Waits (within a total budget) until other processes leave the CPUs alone.

    The kernel's thread pool and oneDNN's OpenMP team stall whenever one of their threads
    is preempted, so a timing taken while other processes run can be several times too
    slow. ``wait()`` samples ``/proc/stat`` over ``window`` seconds and returns once the
    CPU time used by *other* processes is below ``max_other`` cores, or when the budget
    is spent (then it measures anyway). ``waited`` and ``busy_rounds`` record what happened.

    Example:
        >>> w = QuietWaiter(budget=0.0)
        >>> w.wait()
        False
    """

    def __init__(self, budget: float = 10.0, max_other: float = 0.3, window: float = 0.05) -> None:
        self.budget, self.max_other, self.window = float(budget), float(max_other), float(window)
        self.waited = 0.0
        self.busy_rounds = 0

    def other_load(self) -> float | None:
        """Cores used by other processes over one window (None when unknown)."""
        a = _cpu_busy()
        t = time.perf_counter()
        time.sleep(self.window)
        b = _cpu_busy()
        dt = time.perf_counter() - t
        if a is None or b is None or dt <= 0:
            return None
        return max(0.0, ((b[0] - a[0]) - (b[1] - a[1])) / dt)

    def wait(self) -> bool:
        """True when the machine was quiet (or became quiet) before the budget ran out."""
        while self.waited < self.budget:
            t = time.perf_counter()
            load = self.other_load()
            if load is None or load <= self.max_other:
                return True
            self.busy_rounds += 1
            time.sleep(0.05)
            self.waited += time.perf_counter() - t
        return False


def num_threads(threads: int | None = None) -> int:
    """Thread count the model is for (``torch.get_num_threads()`` by default)."""
    return int(threads) if threads else int(torch.get_num_threads())


def cpu_model() -> str:
    """CPU model string (from /proc/cpuinfo on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def active_isa() -> str:
    """ISA the compiled kernel dispatches to ('avx512' | 'avx2' | 'portable'), or 'unknown'."""
    try:
        from sparsecnn import ops  # type: ignore[attr-defined]

        return str(ops.active_isa())
    except Exception as e:  # noqa: BLE001 - core may be missing or not built
        log.debug("active_isa unavailable: %s", e)
        return "unknown"


def library_version() -> str:
    """``sparsecnn.__version__`` (or 'unknown')."""
    try:
        import sparsecnn

        return str(getattr(sparsecnn, "__version__", "unknown"))
    except Exception:  # noqa: BLE001
        return "unknown"


@functools.lru_cache(maxsize=1)
def core_fingerprint() -> str:
    """First 12 hex digits of the SHA-1 of the compiled core's file ('unknown' without it).

    Part of the calibration cache key: a rebuilt kernel (same version number, e.g. a developer's
    checkout) must not be priced with the constants of the previous build.
    """
    try:
        from sparsecnn import _core

        return hashlib.sha1(Path(_core.__file__).read_bytes()).hexdigest()[:12]
    except Exception:  # noqa: BLE001
        return "unknown"


def cache_sizes() -> dict[str, int]:
    """Per-core L2 and shared L3 sizes in bytes (sysfs; defaults 1 MiB / 32 MiB)."""
    sizes = {"l2": 1 << 20, "l3": 32 << 20}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in sorted(os.listdir(base)):
            p = os.path.join(base, idx)
            try:
                level = int(open(os.path.join(p, "level")).read())
                typ = open(os.path.join(p, "type")).read().strip()
                s = open(os.path.join(p, "size")).read().strip().upper()
            except OSError:
                continue
            if typ == "Instruction":
                continue
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1], 1)
            val = int(s[:-1]) * mult if s[-1] in "KMG" else int(s)
            if level == 2:
                sizes["l2"] = val
            elif level == 3:
                sizes["l3"] = val
    except OSError:
        pass
    return sizes


def sgemm_flops(n: int = 2048, repeats: int = 5, threads: int | None = None) -> float:
    """Achievable SGEMM FLOP/s: median time of an ``n x n`` ``torch.mm``.

    Example:
        >>> sgemm_flops(128, repeats=3) > 0
        True
    """
    old = torch.get_num_threads()
    torch.set_num_threads(num_threads(threads))
    try:
        a = torch.randn(n, n)
        b = torch.randn(n, n)
        c = torch.empty(n, n)
        t = median_time(lambda: torch.mm(a, b, out=c), repeats=repeats, warmup=2)
    finally:
        torch.set_num_threads(old)
    return 2.0 * n ** 3 / t


def _core():
    from sparsecnn import _core  # type: ignore[attr-defined]

    return _core


def stream_bandwidth(nbytes_per_array: int = 128 << 20, repeats: int = 5,
                     threads: int | None = None) -> float:
    """STREAM triad bandwidth ``a = b + s*c`` in bytes/s (12 bytes per float counted).

    Uses ``sparsecnn._core.stream_triad``; falls back to ``torch.add(..., out=)``
    with a warning when the compiled core is missing.
    """
    n = max(1024, nbytes_per_array // 4)
    a, b, c = torch.empty(n), torch.rand(n), torch.rand(n)
    th = num_threads(threads)
    try:
        core = _core()
        fn = lambda: core.stream_triad(a, b, c, 3.0, th)  # noqa: E731
        fn()
    except Exception as e:  # noqa: BLE001
        log.warning("sparsecnn._core.stream_triad unavailable (%s); using torch.add", e)
        fn = lambda: torch.add(b, c, alpha=3.0, out=a)  # noqa: E731
    reps = repeats if nbytes_per_array > (8 << 20) else max(repeats, 50)
    t = median_time(fn, repeats=reps, warmup=2)
    return 12.0 * n / t


def copy_bandwidth(nbytes_per_array: int = 128 << 20, repeats: int = 5,
                   threads: int | None = None) -> float:
    """STREAM copy bandwidth ``dst = src`` in bytes/s (8 bytes per float counted)."""
    n = max(1024, nbytes_per_array // 4)
    dst, src = torch.empty(n), torch.rand(n)
    th = num_threads(threads)
    try:
        core = _core()
        fn = lambda: core.stream_copy(dst, src, th)  # noqa: E731
        fn()
    except Exception as e:  # noqa: BLE001
        log.warning("sparsecnn._core.stream_copy unavailable (%s); using Tensor.copy_", e)
        fn = lambda: dst.copy_(src)  # noqa: E731
    reps = repeats if nbytes_per_array > (8 << 20) else max(repeats, 50)
    t = median_time(fn, repeats=reps, warmup=2)
    return 8.0 * n / t


def dense_conv_time(spec: LayerSpec, batch: int, repeats: int = 5, min_time: float = 0.05,
                    threads: int | None = None) -> float:
    """Median seconds of the dense torch/oneDNN layer (``F.conv2d`` / ``F.linear``).

    Example:
        >>> s = LayerSpec("c", "conv", 16, 16, (3, 3), padding=(1, 1), input_hw=(8, 8))
        >>> dense_conv_time(s, 1, repeats=3, min_time=0) > 0
        True
    """
    import torch.nn.functional as F

    old = torch.get_num_threads()
    torch.set_num_threads(num_threads(threads))
    try:
        with torch.inference_mode():
            if spec.kind == "linear":
                x = torch.randn(batch, spec.in_channels)
                w = torch.randn(spec.out_channels, spec.in_channels)
                fn = lambda: F.linear(x, w)  # noqa: E731
            else:
                x = torch.randn(batch, spec.in_channels, *spec.input_hw)
                w = torch.randn(spec.out_channels, spec.in_channels // spec.groups, *spec.kernel)
                fn = lambda: F.conv2d(x, w, None, spec.stride, spec.padding,  # noqa: E731
                                      spec.dilation, spec.groups)
            return median_time(fn, repeats=repeats, warmup=2, min_time=min_time)
    finally:
        torch.set_num_threads(old)
