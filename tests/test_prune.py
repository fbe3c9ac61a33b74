"""Masks and the ESL / DNS / GMP pruners on tiny models with synthetic data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    import sparsecnn.prune  # noqa: F401
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sparsecnn.prune import (  # noqa: E402
    DNS,
    ESL,
    GMP,
    attach_mask,
    finalize,
    is_masked,
    layer_density,
    make_pruner,
    overall_density,
    prunable_layers,
    set_mask,
    sparsity_report,
)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(64, 4),
    )


def synthetic(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    for c in range(4):  # class-dependent bright quadrant -> learnable
        r, q = divmod(c, 2)
        x[y == c, :, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 1.0
    return x, y


def train(model: nn.Module, pruner, steps: int, lr: float = 0.05, opt=None) -> list[float]:
    x, y = synthetic()
    opt = opt or torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    densities = []
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()
        densities.append(overall_density(model))
    return densities


# ---------------------------------------------------------------- masks
def test_prunable_layers_and_mask_form():
    m = tiny_model()
    assert list(prunable_layers(m)) == ["0", "2", "6"]
    assert list(prunable_layers(m, include_fc=False)) == ["0", "2"]
    conv = m[0]
    mask = attach_mask(conv)
    names = dict(conv.named_parameters())
    assert "weight_orig" in names and "weight" not in names
    assert "weight_mask" in dict(conv.named_buffers())
    assert mask is conv.weight_mask and torch.all(mask == 1)
    new = torch.ones_like(mask)
    new[:4] = 0
    set_mask(conv, new)
    assert layer_density(conv) == pytest.approx(0.5)
    assert torch.all(conv.weight[:4] == 0)  # refreshed without a forward
    rows = {r["name"]: r for r in sparsity_report(m)}
    assert rows["0"]["density"] == pytest.approx(0.5) and rows["0"]["masked"]
    assert rows["6"]["type"] == "fc" and not rows["6"]["masked"]
    # state dict carries weight_orig + weight_mask
    sd = m.state_dict()
    assert "0.weight_orig" in sd and "0.weight_mask" in sd


def test_finalize_bakes_zeros():
    m = tiny_model()
    mask = attach_mask(m[2])
    mask.view(-1)[::2] = 0
    x, _ = synthetic(4)
    before = m(x)
    finalize(m)
    assert not is_masked(m[2])
    assert isinstance(m[2].weight, nn.Parameter)
    assert "2.weight" in m.state_dict() and "2.weight_orig" not in m.state_dict()
    assert torch.all(m[2].weight.view(-1)[::2] == 0)
    torch.testing.assert_close(m(x), before)
    # loads into a plain, never-pruned architecture
    tiny_model(1).load_state_dict(m.state_dict())


# ---------------------------------------------------------------- ESL
def test_esl_proximal_gives_exact_zeros():
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -0.5, 0.05, -0.02]]))
    p = ESL(lin, lam=1.0, lr=0.1)  # shrink by 0.1
    p.step()
    torch.testing.assert_close(lin.weight_orig, torch.tensor([[0.4, -0.4, 0.0, 0.0]]))
    assert lin.weight_mask.tolist() == [[1.0, 1.0, 0.0, 0.0]]


def test_esl_increases_sparsity_and_fc_is_lighter():
    m = tiny_model()
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    p = ESL(m, lam=0.5, optimizer=opt, fc_multiplier=0.05)
    dens = train(m, p, 60, opt=opt)
    assert dens[-1] < 0.7 * dens[0]
    d = p.densities()
    assert d["2"] < d["6"]  # fc regularised 20x more lightly
    masks = p.masks()
    train(m, p, 10, opt=opt)
    for n, old in masks.items():  # ESL never revives a pruned weight
        assert torch.all(p.layers[n].weight_mask <= old)
        assert torch.all(p.layers[n].weight[old == 0] == 0)


def test_esl_disabled_layer_is_frozen():
    m = tiny_model()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    p = ESL(m, lam=0.5, optimizer=opt)
    p.disable("0")
    train(m, p, 20, opt=opt)
    assert torch.all(m[0].weight_mask == 1)
    assert layer_density(m[2]) < 1.0


# ---------------------------------------------------------------- DNS
def test_dns_prunes_and_splices_back():
    lin = nn.Linear(5, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0, 0.9, 0.05, -0.02]]))
    p = DNS(lin, c_rate=0.0, gamma=0.0)  # probability 1: surgery every step
    p.step()
    mu = torch.tensor([1.0, 1.0, 0.9, 0.05, 0.02]).mean().item()
    assert p.threshold("") == pytest.approx(mu)
    assert lin.weight_mask.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]]
    # the masked weight grows above b = 1.1 t -> spliced back
    with torch.no_grad():
        lin.weight_orig[0, 3] = 1.2 * mu
        lin.weight_orig[0, 2] = 0.85 * mu  # below a = 0.9 t -> pruned
    p.step()
    assert lin.weight_mask.tolist() == [[1.0, 1.0, 0.0, 1.0, 0.0]]
    # hysteresis: between a and b a pruned weight stays pruned
    with torch.no_grad():
        lin.weight_orig[0, 2] = 1.0 * mu
    p.step()
    assert lin.weight_mask[0, 2] == 0


def test_dns_straight_through_gradient():
    lin = nn.Linear(3, 1, bias=False)
    p = DNS(lin)
    set_mask(lin, torch.tensor([[1.0, 0.0, 1.0]]))
    x = torch.ones(2, 3)
    out = lin(x)
    torch.testing.assert_close(out, (x * (lin.weight_orig * lin.weight_mask)).sum(1, keepdim=True))
    out.sum().backward()
    assert lin.weight_orig.grad[0, 1] != 0  # pruned weight still trains
    assert p.method == "dns"


def test_dns_training_increases_sparsity_and_resumes_exactly():
    def run(split: bool):
        m = tiny_model()
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        p = DNS(m, c_rate=0.5, gamma=0.05, seed=3)
        if not split:
            return train(m, p, 30, opt=opt), p.masks()
        train(m, p, 15, opt=opt)
        state = {"m": m.state_dict(), "o": opt.state_dict(), "p": p.state_dict()}
        m2 = tiny_model(5)
        opt2 = torch.optim.SGD(m2.parameters(), lr=0.05, momentum=0.9)
        p2 = DNS(m2, c_rate=0.5, gamma=0.05, seed=99)
        m2.load_state_dict(state["m"])
        opt2.load_state_dict(state["o"])
        p2.load_state_dict(state["p"])
        return train(m2, p2, 15, opt=opt2), p2.masks()

    dens, masks = run(False)
    assert dens[-1] < 0.8
    _, masks2 = run(True)
    for n in masks:
        assert torch.equal(masks[n], masks2[n])


# ---------------------------------------------------------------- GMP
def test_gmp_follows_cubic_schedule():
    lin = nn.Linear(20, 50)
    p = GMP(lin, final_sparsity=0.8, initial_sparsity=0.0, start_step=10, end_step=50, frequency=10)
    expected = {10: 0.0, 20: 0.8 * (1 - 0.75 ** 3), 30: 0.8 * (1 - 0.5 ** 3), 40: 0.8 * (1 - 0.25 ** 3), 50: 0.8}
    prev = 1.0
    for t in range(1, 61):
        p.step()
        d = layer_density(lin)
        if t in expected:
            assert p.target_sparsity() == pytest.approx(expected[t])
            assert d == pytest.approx(1 - expected[t], abs=1e-3)
        elif t < 10:
            assert d == 1.0
        assert d <= prev + 1e-12
        prev = d
    assert layer_density(lin) == pytest.approx(0.2)
    # the smallest weights are the ones that went
    kept = lin.weight_orig[lin.weight_mask.bool()].abs().min()
    gone = lin.weight_orig[~lin.weight_mask.bool()].abs().max()
    assert kept >= gone


def test_gmp_on_model_with_multiplier():
    m = tiny_model()
    p = make_pruner("gmp", m, final_sparsity=0.6, end_step=20, frequency=5, fc_multiplier=0.5)
    train(m, p, 20)
    d = p.densities()
    assert d["0"] == pytest.approx(0.4, abs=0.02) and d["2"] == pytest.approx(0.4, abs=0.01)
    assert d["6"] == pytest.approx(0.7, abs=0.01)


def test_make_pruner_rejects_unknown():
    with pytest.raises(ValueError):
        make_pruner("magic", tiny_model())
    with pytest.raises(ValueError):
        ESL(tiny_model())  # no lr source
