"""Pruning methods: element-wise lasso (ESL), dynamic network surgery (DNS) and
gradual magnitude pruning (GMP), sharing one small :class:`Pruner` base.

Every pruner is driven by the training loop::

    loss.backward(); optimizer.step(); pruner.step()   # once per iteration
    pruner.on_epoch_end(epoch)                          # once per epoch

and exposes per-layer ``enable``/``disable`` and strength multipliers so that
:class:`~sparsecnn.prune.gsl.GuidedSparsity` can stop, restore or prioritise
layers.

Example:
    >>> import torch, torch.nn as nn
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> pruner = ESL(model, lam=0.5, optimizer=opt, fc_multiplier=0.1)
    >>> pruner.step()                     # proximal L1 step + threshold into mask
    >>> sorted(pruner.densities())
    ['0', '2']
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn

from .masks import (
    attach_mask,
    layer_density,
    prunable_layers,
    set_mask,
    set_straight_through,
    unwrap,
)

__all__ = ["Pruner", "ESL", "DNS", "GMP", "PRUNERS", "make_pruner"]

log = logging.getLogger(__name__)


class Pruner:
    """Base class: owns the masked layers, per-layer switches and multipliers.

    Args:
        model: the network (a DDP wrapper is unwrapped).
        layers: names (or a name->module mapping) to prune; default: all
            Conv2d (+ Linear when ``include_fc``) layers.
        include_fc: include Linear layers when ``layers`` is None.
        fc_multiplier: initial strength multiplier of Linear layers (the paper
            regularises fc layers more lightly).
    """

    method = "base"

    def __init__(
        self,
        model: nn.Module,
        layers: Iterable[str] | Mapping[str, nn.Module] | None = None,
        include_fc: bool = True,
        fc_multiplier: float = 1.0,
    ) -> None:
        self.model = unwrap(model)
        all_layers = prunable_layers(self.model, include_fc=True)
        if layers is None:
            self.layers = prunable_layers(self.model, include_fc=include_fc)
        elif isinstance(layers, Mapping):
            self.layers = dict(layers)
        else:
            self.layers = {n: all_layers[n] for n in layers}
        for m in self.layers.values():
            attach_mask(m)
        self.enabled: dict[str, bool] = {n: True for n in self.layers}
        self.multiplier: dict[str, float] = {
            n: (fc_multiplier if isinstance(m, nn.Linear) else 1.0) for n, m in self.layers.items()
        }
        self.step_count = 0

    # -- per-layer control ---------------------------------------------------
    def enable(self, name: str) -> None:
        """Resume pruning ``name``."""
        self.enabled[name] = True

    def disable(self, name: str) -> None:
        """Stop pruning ``name``: its mask is frozen from now on."""
        self.enabled[name] = False

    def is_enabled(self, name: str) -> bool:
        return self.enabled[name]

    def set_multiplier(self, name: str, value: float) -> None:
        """Scale this layer's pruning strength (0 = no pressure, 1 = nominal)."""
        self.multiplier[name] = float(value)

    def active_layers(self) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in self.layers.items() if self.enabled[n]]

    # -- queries --------------------------------------------------------------
    def densities(self) -> dict[str, float]:
        """Current non-zero density of every managed layer."""
        return {n: layer_density(m) for n, m in self.layers.items()}

    def masks(self) -> dict[str, torch.Tensor]:
        """Copies of the current masks (for comparisons/tests)."""
        return {n: m.weight_mask.detach().clone() for n, m in self.layers.items()}

    # -- training hooks -------------------------------------------------------
    def step(self) -> None:
        """Call once after every ``optimizer.step()``."""
        self.step_count += 1
        self._step()

    def _step(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def on_epoch_end(self, epoch: int) -> None:
        """Call once at the end of every epoch (no-op by default)."""

    def regularization_loss(self) -> torch.Tensor:
        """Extra loss term to add before ``backward`` (zero for proximal/mask methods)."""
        p = next(self.model.parameters())
        return torch.zeros((), device=p.device, dtype=p.dtype)

    # -- checkpointing --------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Pruner state; masks themselves live in the model's state dict."""
        return {
            "method": self.method,
            "step_count": self.step_count,
            "enabled": dict(self.enabled),
            "multiplier": dict(self.multiplier),
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("method", self.method) != self.method:
            raise ValueError(f"checkpoint is for {state['method']!r}, not {self.method!r}")
        self.step_count = int(state["step_count"])
        self.enabled.update(state["enabled"])
        self.multiplier.update(state["multiplier"])
        self._load_extra_state(state.get("extra", {}))

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        pass

    def _update_mask(self, module: nn.Module, mask: torch.Tensor) -> None:
        set_mask(module, mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={list(self.layers)}, step={self.step_count})"


class ESL(Pruner):
    """Element-wise sparsity learning: proximal lasso (soft-threshold) after each step.

    After every optimiser step each active layer's weights are shrunk by
    ``lr * lam * multiplier`` towards zero (the proximal operator of the L1
    penalty, which yields exact zeros, unlike adding ``lam*|w|`` to the loss);
    entries that reach ``|w| <= threshold`` are then zeroed in the mask and stay
    pruned (their gradient is masked).

    Args:
        lam: L1 strength (weight decay of the lasso term).
        optimizer: the learning rate is read from its param groups each step
            (so schedules apply); otherwise ``lr`` is used.
        lr: fixed learning rate when no optimizer is given.
        threshold: magnitude at or below which a weight is pruned into the mask.

    Example:
        >>> m = nn.Linear(8, 8)
        >>> p = ESL(m, lam=100.0, lr=1.0)   # absurdly strong: prunes everything
        >>> p.step(); p.densities()['']
        0.0
    """

    method = "esl"

    def __init__(
        self,
        model: nn.Module,
        lam: float = 1e-3,
        optimizer: torch.optim.Optimizer | None = None,
        lr: float | None = None,
        threshold: float = 0.0,
        fc_multiplier: float = 1.0,
        layers: Iterable[str] | Mapping[str, nn.Module] | None = None,
        include_fc: bool = True,
    ) -> None:
        super().__init__(model, layers, include_fc, fc_multiplier)
        if optimizer is None and lr is None:
            raise ValueError("ESL needs an optimizer (to read lr) or an explicit lr")
        self.lam = float(lam)
        self.optimizer = optimizer
        self.lr = lr
        self.threshold = float(threshold)

    def _lr_for(self, param: torch.Tensor) -> float:
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                if any(p is param for p in group["params"]):
                    return float(group["lr"])
        if self.lr is None:
            raise ValueError("parameter not found in optimizer and no lr given")
        return float(self.lr)

    @torch.no_grad()
    def _step(self) -> None:
        for name, m in self.active_layers():
            w, mask = m.weight_orig, m.weight_mask
            shrink = self._lr_for(w) * self.lam * self.multiplier[name]
            w.copy_(torch.sign(w) * torch.clamp(w.abs() - shrink, min=0.0) * mask)
            new_mask = mask * (w.abs() > self.threshold).to(mask.dtype)
            if not torch.equal(new_mask, mask):
                w.mul_(new_mask)
                self._update_mask(m, new_mask)

    def regularization_loss(self) -> torch.Tensor:
        """The L1 term ``sum_l lam*mult_l*|W_l|_1`` (for logging; the step is proximal)."""
        total = super().regularization_loss()
        for name, m in self.active_layers():
            total = total + self.lam * self.multiplier[name] * (m.weight_orig * m.weight_mask).abs().sum()
        return total

    def _extra_state(self) -> dict[str, Any]:
        return {"lam": self.lam, "threshold": self.threshold}


class DNS(Pruner):
    """Dynamic network surgery (Guo et al. 2016): prune *and splice*.

    Per layer, from the mean ``mu`` and std ``sigma`` of ``|w|`` measured when
    pruning starts, ``t = max(mu + c_rate*sigma, 0) * multiplier``; a weight with
    ``|w| <= a = 0.9 t`` is pruned and a pruned weight that grows to
    ``|w| > b = 1.1 t`` is spliced back. The dense ``weight_orig`` keeps
    training through a straight-through mask (value ``w*mask``, gradient to all
    of ``w``). The mask is recomputed every ``interval`` steps with probability
    ``(1 + gamma*iter)^-power`` (decaying), until ``stop_step``.

    Args:
        c_rate: float or per-layer dict; higher = more pruning.
        gamma, power: surgery-probability decay.
        interval: consider a mask update only every ``interval`` steps.
        stop_step: no more surgery after this step (None = never stop).
        seed: seeds the private generator for the surgery draws (identical on
            all ranks, saved in the state dict so resumes are exact).
    """

    method = "dns"

    def __init__(
        self,
        model: nn.Module,
        c_rate: float | Mapping[str, float] = 1.0,
        gamma: float = 1e-4,
        power: float = 1.0,
        interval: int = 1,
        stop_step: int | None = None,
        seed: int = 0,
        fc_multiplier: float = 1.0,
        layers: Iterable[str] | Mapping[str, nn.Module] | None = None,
        include_fc: bool = True,
    ) -> None:
        super().__init__(model, layers, include_fc, fc_multiplier)
        self.c_rate = {
            n: float(c_rate[n] if isinstance(c_rate, Mapping) else c_rate) for n in self.layers
        }
        self.gamma, self.power = float(gamma), float(power)
        self.interval = max(int(interval), 1)
        self.stop_step = stop_step
        self.generator = torch.Generator().manual_seed(int(seed))
        self.stats: dict[str, tuple[float, float]] = {}  # name -> (mu, sigma) of |w|
        for m in self.layers.values():
            set_straight_through(m, True)

    def _init_stats(self) -> None:
        for name, m in self.layers.items():
            a = (m.weight_orig * m.weight_mask).detach().abs()
            a = a[m.weight_mask.bool()]
            mu = float(a.mean()) if a.numel() else 0.0
            sigma = float(a.std(unbiased=False)) if a.numel() else 0.0
            self.stats[name] = (mu, sigma)

    def threshold(self, name: str) -> float:
        """Current base threshold ``t`` of a layer (``a = 0.9t``, ``b = 1.1t``)."""
        mu, sigma = self.stats[name]
        return max(mu + self.c_rate[name] * sigma, 0.0) * self.multiplier[name]

    def surgery_probability(self, step: int | None = None) -> float:
        it = self.step_count if step is None else step
        return (1.0 + self.gamma * it) ** (-self.power)

    @torch.no_grad()
    def _step(self) -> None:
        if not self.stats:
            self._init_stats()  # measured on the weights pruning starts from
        it = self.step_count - 1  # 0-based like the reference implementation
        if it % self.interval or (self.stop_step is not None and it >= self.stop_step):
            return
        # Draw every time (even if no layer is active) so the stream is deterministic.
        r = float(torch.rand((), generator=self.generator))
        if self.surgery_probability(it) <= r:
            return
        self.surgery()

    @torch.no_grad()
    def surgery(self) -> None:
        """Recompute the masks of all active layers once (prune + splice)."""
        if not self.stats:
            self._init_stats()
        for name, m in self.active_layers():
            t = self.threshold(name)
            a = m.weight_orig.detach().abs()
            mask = m.weight_mask
            keep = mask.bool()
            new = torch.where(keep, a > 0.9 * t, a > 1.1 * t).to(mask.dtype)
            if not torch.equal(new, mask):
                self._update_mask(m, new)

    def _extra_state(self) -> dict[str, Any]:
        return {
            "stats": dict(self.stats),
            "c_rate": dict(self.c_rate),
            "generator": self.generator.get_state(),
        }

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        self.stats = {k: tuple(v) for k, v in extra.get("stats", {}).items()}
        self.c_rate.update(extra.get("c_rate", {}))
        if "generator" in extra:
            self.generator.set_state(extra["generator"].cpu())


class GMP(Pruner):
    """Gradual magnitude pruning (Zhu & Gupta 2017).

    Target sparsity at step ``t``:
    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))**3`` for
    ``t0 <= t <= t1``, applied every ``frequency`` steps (and at ``t1``) by
    masking the smallest-magnitude weights of each active layer up to
    ``min(s_t * multiplier, 1)``. Pruned weights never come back.

    Example:
        >>> p = GMP(nn.Linear(10, 10), final_sparsity=0.5, start_step=0, end_step=10, frequency=1)
        >>> for _ in range(10): p.step()
        >>> p.densities()['']
        0.5
    """

    method = "gmp"

    def __init__(
        self,
        model: nn.Module,
        final_sparsity: float = 0.9,
        initial_sparsity: float = 0.0,
        start_step: int = 0,
        end_step: int = 1000,
        frequency: int = 100,
        fc_multiplier: float = 1.0,
        layers: Iterable[str] | Mapping[str, nn.Module] | None = None,
        include_fc: bool = True,
    ) -> None:
        super().__init__(model, layers, include_fc, fc_multiplier)
        if end_step <= start_step:
            raise ValueError("end_step must be > start_step")
        self.final_sparsity = float(final_sparsity)
        self.initial_sparsity = float(initial_sparsity)
        self.start_step, self.end_step = int(start_step), int(end_step)
        self.frequency = max(int(frequency), 1)

    def target_sparsity(self, step: int | None = None) -> float:
        """Scheduled sparsity ``s_t`` (before per-layer multipliers)."""
        t = self.step_count if step is None else step
        if t < self.start_step:
            return 0.0
        frac = min((t - self.start_step) / (self.end_step - self.start_step), 1.0)
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - frac) ** 3

    def _step(self) -> None:
        t = self.step_count
        if t < self.start_step or t > self.end_step:
            return
        if (t - self.start_step) % self.frequency and t != self.end_step:
            return
        self.prune_to(self.target_sparsity(t))

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Mask the smallest ``sparsity*multiplier`` fraction of each active layer."""
        for name, m in self.active_layers():
            s = min(max(sparsity * self.multiplier[name], 0.0), 1.0)
            n = m.weight_mask.numel()
            k = int(math.floor(s * n + 0.5))
            scores = (m.weight_orig * m.weight_mask).abs().flatten()
            new = torch.ones_like(scores)
            if k > 0:
                # stable sort: already-pruned zeros come first, ties broken by index
                idx = torch.argsort(scores, stable=True)[:k]
                new[idx] = 0
            new = new.view_as(m.weight_mask) * m.weight_mask  # monotone
            if not torch.equal(new, m.weight_mask):
                self._update_mask(m, new)

    def _extra_state(self) -> dict[str, Any]:
        return {"final_sparsity": self.final_sparsity, "start_step": self.start_step,
                "end_step": self.end_step, "frequency": self.frequency}


PRUNERS: dict[str, type[Pruner]] = {"esl": ESL, "dns": DNS, "gmp": GMP}


def make_pruner(method: str, model: nn.Module, **kwargs: Any) -> Pruner:
    """Build a pruner by name (``esl``, ``dns``, ``gmp``); kwargs go to its constructor."""
    try:
        cls = PRUNERS[method.lower()]
    except KeyError:
        raise ValueError(f"unknown pruning method {method!r}; choose from {sorted(PRUNERS)}") from None
    return cls(model, **kwargs)
