"""Guided Sparsity Learning (Park et al., ICLR 2017, Sec. 2.3).

:class:`GuidedSparsity` wraps any :class:`~sparsecnn.prune.pruners.Pruner` and
uses a performance model to decide, per layer, whether pruning is worth it:

* **init** - project each layer; a layer whose ``useful_range`` is None (no
  density gives a speedup) is *excluded*: never pruned.
* **periodically** (every ``check_every`` steps, or at every epoch end):
  - density <= ``saturation_density`` (the upper bound of useful sparsity:
    the layer is bandwidth-bound, more pruning buys nothing) -> *stop*:
    the mask is frozen;
  - density stabilised (moved < ``tol`` over ``patience`` checks) but still
    > ``breakeven_density`` (sparse would be slower than dense) -> *restore*:
    stop pruning and put back the dense weights saved when pruning started.
* **priorities** - strength multipliers per layer type (fc lighter).

GESL = ``GuidedSparsity(ESL(...))``, GDNS = ``GuidedSparsity(DNS(...))``.

Example:
    >>> import torch, torch.nn as nn
    >>> from sparsecnn.prune import ESL, AnalyticRoofline
    >>> model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
    ...                       nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
    >>> shapes = input_shapes_from_example(model, torch.zeros(1, 1, 8, 8))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> gsl = GuidedSparsity(ESL(model, lam=1e-3, optimizer=opt), AnalyticRoofline(), shapes)
    >>> # training loop: optimizer.step(); gsl.step()   ...   gsl.on_epoch_end(epoch)
    >>> [d["action"] for d in gsl.decisions]  # doctest: +SKIP
    ['exclude']
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

from . import _dist
from .masks import layer_density, prunable_layers, set_mask, unwrap
from .pruners import Pruner

__all__ = ["GuidedSparsity", "input_shapes_from_example"]

log = logging.getLogger(__name__)

ACTIVE, EXCLUDED, SATURATED, RESTORED = "active", "excluded", "saturated", "restored"


def input_shapes_from_example(
    model: nn.Module, example_input: torch.Tensor, include_fc: bool = True
) -> dict[str, tuple[int, ...]]:
    """Input shape (batch dim set to 1) of every prunable layer, via forward hooks.

    Runs one forward in eval mode under ``no_grad`` (BatchNorm statistics are
    untouched) and restores the previous train/eval mode.

    >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    >>> input_shapes_from_example(m, torch.zeros(2, 1, 8, 8))
    {'0': (1, 1, 8, 8), '2': (1, 144)}
    """
    net = unwrap(model)
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, mod in prunable_layers(net, include_fc).items():
        def hook(_m: nn.Module, inputs: tuple[Any, ...], _n: str = name) -> None:
            shapes.setdefault(_n, (1, *tuple(inputs[0].shape[1:])))
        handles.append(mod.register_forward_pre_hook(hook))
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(example_input)
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return shapes


def _default_make_spec(perf_model: Any) -> Callable[[nn.Module, tuple[int, ...], str], Any]:
    if hasattr(perf_model, "make_spec"):
        return perf_model.make_spec
    from sparsecnn.perf import LayerSpec  # the calibrated model's spec type

    return lambda module, shape, name: LayerSpec.from_module(module, shape, name=name)


class GuidedSparsity:
    """Speedup-aware controller around a pruner (GESL/GDNS).

    Args:
        pruner: the underlying ESL/DNS/GMP pruner (its layers are the set S).
        perf_model: object with ``predict(spec, density, batch)`` (-> ``.speedup``,
            ``.bound``) and ``useful_range(spec, batch)`` (-> ``(breakeven_density,
            saturation_density)`` or None), e.g. ``sparsecnn.perf.PerfModel``.
        input_shapes: layer name -> input shape (see :func:`input_shapes_from_example`).
        batch: inference batch size the projections are made for.
        check_every: check every N pruner steps; None = only in ``on_epoch_end``.
        patience: number of consecutive checks a density must stay within
            ``tol`` to count as stabilised.
        tol: absolute density change regarded as "no change".
        fc_multiplier / conv_multiplier: pruning-strength priorities per layer
            type, applied to the pruner at construction (None = leave as is).
        optimizer: if given, a restored layer's optimiser state (momentum) is reset.
        make_spec: ``(module, input_shape, name) -> spec``; default: the perf
            model's ``make_spec`` if it has one, else ``sparsecnn.perf.LayerSpec.from_module``.
    """

    def __init__(
        self,
        pruner: Pruner,
        perf_model: Any,
        input_shapes: Mapping[str, tuple[int, ...]],
        batch: int = 16,
        check_every: int | None = None,
        patience: int = 3,
        tol: float = 0.01,
        fc_multiplier: float | None = None,
        conv_multiplier: float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        make_spec: Callable[[nn.Module, tuple[int, ...], str], Any] | None = None,
    ) -> None:
        self.pruner = pruner
        self.perf_model = perf_model
        self.batch = int(batch)
        self.check_every = check_every
        self.patience = max(int(patience), 1)
        self.tol = float(tol)
        self.optimizer = optimizer
        self.step_count = 0
        self.epoch = -1
        self.decisions: list[dict[str, Any]] = []
        self.history: dict[str, list[float]] = {n: [] for n in pruner.layers}
        self.projections: dict[str, dict[str, Any]] = {}
        self._snapshot: dict[str, torch.Tensor] | None = None

        for name, m in pruner.layers.items():
            if fc_multiplier is not None and isinstance(m, nn.Linear):
                pruner.set_multiplier(name, fc_multiplier)
            if conv_multiplier is not None and isinstance(m, nn.Conv2d):
                pruner.set_multiplier(name, conv_multiplier)

        make_spec = make_spec or _default_make_spec(perf_model)
        self.specs: dict[str, Any] = {}
        self.state: dict[str, str] = {}
        for name, m in pruner.layers.items():
            if name not in input_shapes:
                raise KeyError(f"no input shape for layer {name!r}")
            self.specs[name] = make_spec(m, tuple(input_shapes[name]), name)
        # a calibrated model may time dense layers: project on rank 0 only so all ranks agree
        ranges = None
        if _dist.rank() == 0:
            ranges = {}
            for name, spec in self.specs.items():
                rng = perf_model.useful_range(spec, self.batch)
                ranges[name] = None if rng is None else (float(rng[0]), float(rng[1]))
        self.ranges = _dist.broadcast_object(ranges)
        for name, m in pruner.layers.items():
            rng = self.ranges[name]
            self.state[name] = ACTIVE
            if rng is None:
                self.state[name] = EXCLUDED
                pruner.disable(name)
                self._decide(name, "exclude", "no speedup potential at any density (useful_range is None)",
                             layer_density(m))

    # -- projections ------------------------------------------------------------
    def breakeven_density(self, name: str) -> float | None:
        """Highest density at which sparse breaks even (lower bound of useful sparsity)."""
        r = self.ranges[name]
        return None if r is None else r[0]

    def saturation_density(self, name: str) -> float | None:
        """Density below which the layer is bandwidth-bound (upper bound of useful sparsity)."""
        r = self.ranges[name]
        return None if r is None else r[1]

    def project(self, name: str, density: float | None = None) -> dict[str, Any]:
        """Predicted speedup/bound of a layer at ``density`` (default: its current one)."""
        d = layer_density(self.pruner.layers[name]) if density is None else density
        p = self.perf_model.predict(self.specs[name], d, self.batch)
        return {"density": d, "speedup": float(p.speedup), "bound": getattr(p, "bound", None)}

    def summary(self) -> list[dict[str, Any]]:
        """One row per layer: state, density, predicted speedup and useful range."""
        rows = []
        for name, m in self.pruner.layers.items():
            proj = self.project(name)
            rows.append({
                "name": name,
                "type": "fc" if isinstance(m, nn.Linear) else "conv",
                "state": self.state[name],
                "density": proj["density"],
                "speedup": proj["speedup"],
                "bound": proj["bound"],
                "breakeven_density": self.breakeven_density(name),
                "saturation_density": self.saturation_density(name),
                "multiplier": self.pruner.multiplier[name],
            })
        return rows

    # -- training hooks -----------------------------------------------------------
    def start(self) -> None:
        """Save the dense weights to restore later; call when pruning starts (idempotent).

        ``step()`` calls it lazily, so weights after warm-up/pretraining are the ones kept.
        """
        if self._snapshot is None:
            self._take_snapshot()

    def step(self) -> None:
        """Call once after every ``optimizer.step()`` (instead of ``pruner.step()``)."""
        self.start()
        self.pruner.step()
        self.step_count += 1
        if self.check_every and self.step_count % self.check_every == 0:
            self.check()

    def on_epoch_end(self, epoch: int) -> None:
        """Call once per epoch; runs a check when ``check_every`` is None."""
        self.epoch = int(epoch)
        self.pruner.on_epoch_end(epoch)
        if not self.check_every:
            self.check()

    def _take_snapshot(self) -> None:
        # "original dense weights" = the weights pruning starts from
        self._snapshot = {
            n: m.weight_orig.detach().clone() for n, m in self.pruner.layers.items() if self.state[n] == ACTIVE
        }

    def check(self) -> list[dict[str, Any]]:
        """Apply the GSL rules to every active layer; returns the new decisions.

        Planned on rank 0 and broadcast, so all ranks take identical actions.
        """
        plan = None
        if _dist.rank() == 0:
            plan = self._plan()
        history, projections, actions = _dist.broadcast_object(plan)
        self.history, self.projections = history, projections
        new = []
        for name, action, reason in actions:
            if action == "stop":
                self.state[name] = SATURATED
                self.pruner.disable(name)
            elif action == "restore":
                self._restore(name)
            new.append(self._decide(name, action, reason, projections[name]["density"],
                                    projections[name]["speedup"]))
        return new

    def _plan(self) -> tuple[dict[str, list[float]], dict[str, dict[str, Any]], list[tuple[str, str, str]]]:
        history = {n: list(h) for n, h in self.history.items()}
        projections: dict[str, dict[str, Any]] = {}
        actions: list[tuple[str, str, str]] = []
        for name in self.pruner.layers:
            if self.state[name] == EXCLUDED:
                continue
            proj = self.project(name)
            projections[name] = proj
            if self.state[name] != ACTIVE:
                continue
            d = proj["density"]
            history[name].append(d)
            breakeven, saturation = self.ranges[name]  # type: ignore[misc]
            recent = history[name][-(self.patience + 1):]
            # a layer still fully dense has not started learning sparsity yet (lasso needs
            # time to drive weights to zero): not "stabilised"
            stable = (len(recent) > self.patience and max(recent) - min(recent) < self.tol
                      and d < 1.0)
            if d <= saturation:
                actions.append((name, "stop",
                                f"density {d:.4f} <= saturation density {saturation:.4f} "
                                "(upper bound of useful sparsity reached; bandwidth-bound)"))
            elif stable and d > breakeven:
                actions.append((name, "restore",
                                f"density stabilised at {d:.4f} (change < {self.tol} over {self.patience} "
                                f"checks) above breakeven density {breakeven:.4f}; sparse would be slower"))
        return history, projections, actions

    @torch.no_grad()
    def _restore(self, name: str) -> None:
        m = self.pruner.layers[name]
        self.state[name] = RESTORED
        self.pruner.disable(name)
        if self._snapshot is not None and name in self._snapshot:
            m.weight_orig.copy_(self._snapshot[name])
        set_mask(m, torch.ones_like(m.weight_mask))
        if self.optimizer is not None:
            self.optimizer.state.pop(m.weight_orig, None)  # stale momentum would undo the restore

    def _decide(self, name: str, action: str, reason: str, density: float,
                speedup: float | None = None) -> dict[str, Any]:
        rec = {
            "step": self.step_count,
            "epoch": self.epoch,
            "layer": name,
            "action": action,
            "reason": reason,
            "density": float(density),
            "speedup": None if speedup is None else float(speedup),
            "breakeven_density": self.breakeven_density(name),
            "saturation_density": self.saturation_density(name),
        }
        self.decisions.append(rec)
        log.info("GSL %s %s at step %d (density %.4f): %s", action, name, self.step_count, density, reason)
        return rec

    # -- checkpointing ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "epoch": self.epoch,
            "state": dict(self.state),
            "history": {n: list(h) for n, h in self.history.items()},
            "projections": dict(self.projections),
            "decisions": [dict(d) for d in self.decisions],
            # the ranges the decisions were made against: a resumed run must not take new ones
            # from a model calibrated (or timed) since
            "ranges": {n: None if r is None else list(r) for n, r in self.ranges.items()},
            "snapshot": None if self._snapshot is None else {n: t.cpu() for n, t in self._snapshot.items()},
        }

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        self.step_count = int(sd["step_count"])
        self.epoch = int(sd.get("epoch", -1))
        self.state.update(sd["state"])
        self.history = {n: list(h) for n, h in sd["history"].items()}
        self.projections = dict(sd.get("projections", {}))
        self.decisions = [dict(d) for d in sd["decisions"]]
        if sd.get("ranges") is not None:
            self.ranges.update({n: None if r is None else (float(r[0]), float(r[1])) for n, r in sd["ranges"].items()})
        snap = sd.get("snapshot")
        self._snapshot = None if snap is None else {
            n: t.to(self.pruner.layers[n].weight_orig.device) for n, t in snap.items()
        }
        for name, st in self.state.items():
            if st == ACTIVE:
                self.pruner.enable(name)
            else:
                self.pruner.disable(name)

    def __repr__(self) -> str:
        return f"GuidedSparsity({self.pruner!r}, states={self.state})"
