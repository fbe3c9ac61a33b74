"""Mutation tests of the compiled core's conv entry point: valid calls are right, and every call
with one thing broken raises a clear exception (no crash, no silent wrong answer).

Each case starts from a random valid configuration (seeded), checks the call against
``torch.nn.functional.conv2d`` in float64, then breaks one argument at a time: dtypes, ranks,
shapes (an output of the right size but another shape included), CSR arrays, geometry
parameters. This is how an output of the right size and the wrong shape was found being filled
in the wrong order (2026-11-27).
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from sparsecnn import SparseWeight, _core
from sparsecnn.ops.conv import _dl

ERRORS = (ValueError, TypeError, OverflowError)


def valid_case(seed: int) -> dict:
    rng = random.Random(seed)
    groups, cg, og = rng.choice([1, 1, 2, 3]), rng.choice([1, 2, 3]), rng.choice([1, 2, 4])
    kh, kw = rng.choice([1, 2, 3, 5]), rng.choice([1, 2, 3])
    cfg = dict(n=rng.choice([1, 2, 8, 9]), c=cg * groups, o=og * groups, cg=cg, groups=groups, kh=kh, kw=kw,
               s=[rng.choice([1, 2]), rng.choice([1, 2, 3])], d=[rng.choice([1, 2]), 1],
               p=[rng.randint(0, 2) for _ in range(4)])
    cfg["h"] = (kh - 1) * cfg["d"][0] + 1 + rng.randint(0, 8)
    cfg["w"] = kw + rng.randint(0, 10)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(cfg["o"], cg, kh, kw, generator=gen)
    cfg["weight"] = w * (torch.rand(w.shape, generator=gen) < rng.choice([0.1, 0.5, 1.0]))
    cfg["x"] = torch.randn(cfg["n"], cfg["c"], cfg["h"], cfg["w"], generator=gen)
    cfg["bias"] = torch.randn(cfg["o"], generator=gen)
    return cfg


def call(cfg: dict, **over) -> torch.Tensor:
    """The core's conv2d on cfg, any argument replaced through ``over``; returns the output."""
    sw = SparseWeight.from_dense(cfg["weight"], groups=cfg["groups"])
    oh = (cfg["h"] + cfg["p"][0] + cfg["p"][1] - cfg["d"][0] * (cfg["kh"] - 1) - 1) // cfg["s"][0] + 1
    ow = (cfg["w"] + cfg["p"][2] + cfg["p"][3] - cfg["d"][1] * (cfg["kw"] - 1) - 1) // cfg["s"][1] + 1
    a = dict(x=cfg["x"], values=sw.values, col=sw.col_idx, row_ptr=sw.row_ptr, bias=cfg["bias"],
             out=torch.empty(cfg["n"], cfg["o"], oh, ow), o=cfg["o"], cg=cfg["cg"], kh=cfg["kh"], kw=cfg["kw"],
             groups=cfg["groups"], s=list(cfg["s"]), p=list(cfg["p"]), d=list(cfg["d"]), residual=None)
    for k, v in over.items():
        a[k] = v(a) if callable(v) else v
    _core.conv2d(_dl(a["x"]), _dl(a["values"]), _dl(a["col"]), _dl(a["row_ptr"]),
                 None if a["bias"] is None else _dl(a["bias"]), _dl(a["out"]), a["o"], a["cg"], a["kh"], a["kw"],
                 a["groups"], a["s"], a["p"], a["d"], True, 2, None if a["residual"] is None else _dl(a["residual"]))
    return a["out"]


def _bump(t: torch.Tensor, i: int, v: int) -> torch.Tensor:
    t = t.clone()
    t[i] = v
    return t


def _reshaped(out: torch.Tensor) -> torch.Tensor:
    # as many elements, another shape
    n, o, oh, ow = out.shape
    for shape in [(n, o, ow, oh), (n, o * oh * ow, 1, 1), (n * o, 1, oh, ow), (1, n * o * oh * ow, 1, 1)]:
        if shape != tuple(out.shape):
            return torch.empty(shape)
    raise AssertionError("no other shape")


def _decreasing(rp: torch.Tensor) -> torch.Tensor:
    # a row pointer above the next one (needs two rows)
    rp = rp.clone()
    rp[1] = rp[2] + 1
    return rp


# name -> replacement of one argument (a value, or a function of the valid arguments); each must
# be refused
MUTATIONS = {
    "x float64": dict(x=lambda a: a["x"].double()),
    "x 3-D": dict(x=lambda a: a["x"][0]),
    "x other channel count": dict(x=lambda a: torch.randn(a["x"].shape[0], a["x"].shape[1] + 1, *a["x"].shape[2:])),
    "out float64": dict(out=lambda a: a["out"].double()),
    "out one element short": dict(out=lambda a: a["out"].reshape(-1)[:-1]),
    "out one column more": dict(out=lambda a: torch.empty(*a["out"].shape[:3], a["out"].shape[3] + 1)),
    "out same size, other shape": dict(out=lambda a: _reshaped(a["out"])),
    "values float16": dict(values=lambda a: a["values"].half()),
    "values one short": dict(values=lambda a: a["values"][:-1]),
    "col int64": dict(col=lambda a: a["col"].long()),
    "col past the last column": dict(col=lambda a: _bump(a["col"], 0, a["cg"] * a["kh"] * a["kw"])),
    "col negative": dict(col=lambda a: _bump(a["col"].int(), -1, -1)),
    "row_ptr int64": dict(row_ptr=lambda a: a["row_ptr"].long()),
    "row_ptr end != nnz": dict(row_ptr=lambda a: _bump(a["row_ptr"], -1, int(a["row_ptr"][-1]) + 1)),
    "row_ptr start != 0": dict(row_ptr=lambda a: _bump(a["row_ptr"], 0, 1)),
    "row_ptr decreasing": dict(row_ptr=lambda a: _decreasing(a["row_ptr"])),
    "row_ptr one row short": dict(row_ptr=lambda a: a["row_ptr"][:-1]),
    "bias one short": dict(bias=lambda a: a["bias"][:-1]),
    "residual other shape": dict(residual=lambda a: torch.randn(a["out"].shape[0], a["out"].shape[1], 1, 1)),
    "negative padding": dict(p=lambda a: [-1] + a["p"][1:]),
    "padding of 3 values": dict(p=lambda a: a["p"][:3]),
    "stride 0": dict(s=lambda a: [0, a["s"][1]]),
    "dilation 0": dict(d=lambda a: [0, a["d"][1]]),
    "groups 0": dict(groups=0),
    "groups not dividing": dict(groups=lambda a: a["groups"] + 1 if a["o"] % (a["groups"] + 1) else a["groups"] + 2),
    "kernel height 0": dict(kh=0),
    "kernel of 2^40": dict(kh=1 << 40),
    "out_channels off by one": dict(o=lambda a: a["o"] + 1),
    "cin_per_group off by one": dict(cg=lambda a: a["cg"] + 1),
}

SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS)
def test_valid_calls_match_torch(seed):
    cfg = valid_case(seed)
    y = call(cfg)
    xp = F.pad(cfg["x"].double(), (cfg["p"][2], cfg["p"][3], cfg["p"][0], cfg["p"][1]))
    ref = F.conv2d(xp, cfg["weight"].double(), cfg["bias"].double(), stride=cfg["s"], dilation=cfg["d"],
                   groups=cfg["groups"]).relu()
    assert y.shape == ref.shape
    assert torch.allclose(y.double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(MUTATIONS))
@pytest.mark.parametrize("seed", SEEDS)
def test_each_broken_argument_is_refused(seed, name):
    cfg = valid_case(seed)
    sw = SparseWeight.from_dense(cfg["weight"], groups=cfg["groups"])
    if name.startswith(("col", "values one short")) and sw.nnz < 2:
        pytest.skip("needs nonzeros to break")
    if name == "row_ptr decreasing" and cfg["o"] < 2:
        pytest.skip("needs two rows")
    with pytest.raises(ERRORS):
        call(cfg, **MUTATIONS[name])
