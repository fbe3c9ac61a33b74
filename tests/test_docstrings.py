"""Every docstring example of the package runs and prints what it says.

The guide asks for a short example in each docstring; examples that need what this machine may
lack (a CUDA device, Triton's GPU backend) are marked ``# doctest: +SKIP``, everything else runs
here against the installed package, so an example cannot go stale when the code moves on.
"""

from __future__ import annotations

import doctest
import importlib
import logging
import pkgutil

import pytest

import sparsecnn
from sparsecnn.models.pruned import pruned_dir

#: modules whose examples read the real pruned weights (../shared/data/pruned)
NEEDS_PRUNED = {"sparsecnn.models", "sparsecnn.models.pruned"}


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(sparsecnn.__path__, "sparsecnn.")
                  if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name):
    if name in NEEDS_PRUNED:
        try:
            pruned_dir()
        except FileNotFoundError as e:
            pytest.skip(f"pruned weights not available: {e}")
    module = importlib.import_module(name)
    logging.disable(logging.CRITICAL)  # examples print results, not the library's log lines
    try:
        res = doctest.testmod(module, report=False, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    finally:
        logging.disable(logging.NOTSET)
    assert res.failed == 0, f"{res.failed} of {res.attempted} docstring examples of {name} failed (python -m doctest -v)"
