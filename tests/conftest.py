"""Shared fixtures for the tests of the compiled core (conv, linear, modules, ops)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

# Triton reads TRITON_INTERPRET when it is first imported, and any test module may import it
# first: without a GPU, run the GPU kernels' tests through the interpreter from the start.
if "TRITON_INTERPRET" not in os.environ:
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    except ImportError:
        pass

_SRC = Path(__file__).resolve().parents[1] / "src"
if importlib.util.find_spec("sparsecnn") is None and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from hypothesis import HealthCheck, settings  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _private_perf_cache(tmp_path_factory):
    """Calibrations made by tests go to a directory of the session, not the user's cache: one
    taken under pytest's load would otherwise drive the user's next sparsify/GSL decisions."""
    old = os.environ.get("SPARSECNN_CACHE_DIR")
    os.environ["SPARSECNN_CACHE_DIR"] = str(tmp_path_factory.mktemp("perf-cache"))
    yield
    if old is None:
        os.environ.pop("SPARSECNN_CACHE_DIR", None)
    else:
        os.environ["SPARSECNN_CACHE_DIR"] = old


import sparsecnn.ops as ops  # noqa: E402

settings.register_profile(
    "sparsecnn",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "sparsecnn-ci",
    parent=settings.get_profile("sparsecnn"),
    derandomize=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "sparsecnn"))

ISA_NAMES = ("avx512", "avx2", "portable")


@pytest.fixture(params=ISA_NAMES)
def isa(request) -> str:
    """Runs the test with each kernel variant the CPU supports forced (others are skipped).

    The test body must not call ``use_isa`` itself (its lock is held for the whole test).
    """
    name = request.param
    if not ops.isa_supported(name):
        pytest.skip(f"ISA {name!r} is not supported by this CPU")
    with ops.use_isa(name):
        assert ops.active_isa() == name
        yield name



@contextlib.contextmanager
def num_threads(n):
    """torch (and therefore the core, which is handed torch.get_num_threads()) on n threads."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def assert_close(y, ref):
    """float32 result within 1e-4 * (1 + max|ref|) of a float64 reference, same shape."""
    import torch

    assert y.dtype == torch.float32
    assert tuple(y.shape) == tuple(ref.shape), (tuple(y.shape), tuple(ref.shape))
    if ref.numel() == 0:
        return
    err = (y.double() - ref).abs().max().item()
    tol = 1e-4 * (1.0 + ref.abs().max().item())
    assert err <= tol, f"max abs error {err:.3g} > tolerance {tol:.3g}"
