"""End-to-end model benchmark: dense torch model vs. its :func:`sparsecnn.sparsify`'d version.

In one process, same thread count, same random input (the model's ``default_input_shape`` at
each batch): the median of ``repeats`` forward passes of each model after a warm-up, under
``torch.inference_mode``, the runs of the models interleaved (a load change on a shared
machine hits all alike). Three models: the dense torch model as given, the same model with
BatchNorm folded into its convolutions (``sparsify(policy="none")``: what BN folding alone
buys, no sparse kernel) and the sparsified one; speedups are reported against both. A second, shorter pass with forward hooks times every conv/linear
layer in both models (per-layer breakdown; a sparse layer with a fused ReLU includes it).

Weights: ``weights`` is a pruned set name or npz path (see :mod:`sparsecnn.models.pruned`),
e.g. ``resnet50_dlmc_magnitude_pruning_0.9`` or ``caffenet_l1_acc56.3``, or a state dict saved
with ``torch.save`` (``.pt``/``.pth``, e.g. the ``model_pruned.pt`` of ``sparsecnn prune``). The CaffeNet sets
hold conv1-5 only: for an end-to-end run fc6 and fc7 are then magnitude-pruned (L1, torch's
``prune.l1_unstructured``) to 10% density, and the result says so in ``notes``.

Example:
    >>> from sparsecnn.bench.model import run_model_bench, format_model_table
    >>> res = run_model_bench("fmnist_vgg", batches=(1,), repeats=3)  # doctest: +SKIP
    >>> print(format_model_table(res))  # doctest: +SKIP
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from sparsecnn.bench.layers import max_rel_error
from sparsecnn.perf.probe import interleaved_medians

__all__ = ["run_model_bench", "format_model_table", "CAFFENET_FC_DENSITY"]

#: density fc6/fc7 are magnitude-pruned to when a CaffeNet set has conv layers only
CAFFENET_FC_DENSITY = 0.1


def _load_model(name: str, weights: str | None) -> tuple[nn.Module, list[str]]:
    import torch.nn.utils.prune as prune

    from sparsecnn.models import get_model
    from sparsecnn.models.pruned import apply_pruned_weights

    torch.manual_seed(0)
    model = get_model(name).eval()
    notes: list[str] = []
    if weights is None:
        notes.append("random (unpruned) weights: the sparse layers are dense")
        return model, notes
    if weights.endswith((".pt", ".pth")):
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        notes.append(f"state dict {weights}")
        return model, notes
    applied = apply_pruned_weights(model, weights)
    notes.append(f"pruned weights of {weights} applied to {len(applied)} layers")
    if name.lower() in ("caffenet", "alexnet"):
        mods = dict(model.named_modules())
        for fc in ("fc6", "fc7"):
            if fc not in applied and isinstance(mods.get(fc), nn.Linear):
                prune.l1_unstructured(mods[fc], "weight", amount=1.0 - CAFFENET_FC_DENSITY)
                prune.remove(mods[fc], "weight")
                notes.append(f"{fc} is not in {weights}: magnitude-pruned (torch L1) to "
                             f"{CAFFENET_FC_DENSITY:.0%} density for the end-to-end run")
    return model, notes


def _time_models(models: Sequence[nn.Module], x: torch.Tensor, repeats: int) -> list[float]:
    with torch.inference_mode():
        return interleaved_medians([lambda m=m: m(x) for m in models], repeats)


def _layer_times(model: nn.Module, names: Sequence[str], x: torch.Tensor, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {n: [] for n in names}
    start: dict[str, float] = {}
    handles = []
    mods = dict(model.named_modules())
    for n in names:
        m = mods.get(n)
        if m is None:
            continue

        def pre(_m, _i, _n=n):
            start[_n] = time.perf_counter()

        def post(_m, _i, _o, _n=n):
            times[_n].append(time.perf_counter() - start[_n])

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.inference_mode():
            model(x)  # warm-up
            for v in times.values():
                v.clear()
            for _ in range(max(1, repeats)):
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {n: statistics.median(v) for n, v in times.items() if v}


def run_model_bench(name: str, weights: str | None = None, batches: Sequence[int] = (1, 16), repeats: int = 10,
                    threads: int | None = None, policy: str = "all") -> dict[str, Any]:
    """Benchmark ``name`` dense vs. sparsified at each batch; returns a JSON-friendly dict.

    Args:
        name: a :func:`sparsecnn.models.get_model` name.
        weights: pruned set name or npz path (None: the random dense weights).
        batches: batch sizes to time.
        repeats: timed forward passes per model and batch (median reported).
        threads: torch threads (default: the current setting).
        policy: :func:`sparsecnn.sparsify` policy; with ``"auto"``/``"measure"`` the model is
            sparsified separately for every batch (decisions depend on the batch).

    Returns:
        ``{"model", "weights", "notes", "policy", "threads", "repeats", "statistic", "isa",
        "torch", "cpu", "batches": [{"batch", "dense_ms", "sparse_ms", "speedup", "folded_ms",
        "speedup_vs_folded", "max_rel_error", "n_sparse", "layers": [...]}], "sparsify": report of the
        first batch}``.
    """
    import sparsecnn
    from sparsecnn import ops

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        model, notes = _load_model(name, weights)
        shape = tuple(getattr(model, "default_input_shape", (1, 3, 224, 224)))
        result: dict[str, Any] = {
            "model": name, "weights": weights, "notes": notes, "policy": policy,
            "threads": torch.get_num_threads(), "repeats": repeats, "statistic": "median",
            "isa": ops.active_isa(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "input_shape": list(shape[1:]), "batches": [], "sparsify": None,
        }
        fast = None
        folded, _ = sparsecnn.sparsify(model, torch.randn(1, *shape[1:]), policy="none")
        g = torch.Generator().manual_seed(0)
        for b in batches:
            x = torch.randn(int(b), *shape[1:], generator=g)
            if fast is None or policy in ("auto", "measure"):
                # all/none do not depend on the batch: trace at batch 1 (the trace keeps activations)
                ex = x if policy in ("auto", "measure") else x[:1]
                fast, rep = sparsecnn.sparsify(model, ex, policy=policy)
                if result["sparsify"] is None:
                    result["sparsify"] = rep.to_dict()
            t_dense, t_folded, t_sparse = _time_models([model, folded, fast], x, repeats)
            with torch.inference_mode():
                err = max_rel_error(lambda: model(x), lambda: fast(x))  # outputs freed before the per-layer timings
            names = [r.name for r in rep.layers]
            lr = max(1, min(repeats, 5))
            ld, ls = _layer_times(model, names, x, lr), _layer_times(fast, names, x, lr)
            layers = []
            for r in rep.layers:
                d, s = ld.get(r.name), ls.get(r.name)
                layers.append({"name": r.name, "type": r.type, "density": r.density, "decision": r.decision,
                               "relu_fused": r.relu_fused is not None, "bn_folded": r.bn_folded is not None,
                               "dense_ms": None if d is None else 1e3 * d, "sparse_ms": None if s is None else 1e3 * s,
                               "speedup": d / s if d and s else None})
            result["batches"].append({"batch": int(b), "dense_ms": 1e3 * t_dense, "sparse_ms": 1e3 * t_sparse,
                                      "speedup": t_dense / t_sparse, "folded_ms": 1e3 * t_folded,
                                      "speedup_vs_folded": t_folded / t_sparse, "max_rel_error": err,
                                      "n_sparse": rep.n_sparse, "layers": layers})
        return result
    finally:
        torch.set_num_threads(old)


def format_model_table(result: dict[str, Any]) -> str:
    """Human-readable tables: end-to-end per batch, then the per-layer breakdown."""
    lines = [f"{result['model']} ({result['weights'] or 'random weights'}), policy {result['policy']}, "
             f"{result['threads']} threads, median of {result['repeats']}, isa {result['isa']}"]
    lines += [f"  note: {n}" for n in result["notes"]]
    lines.append(f"{'batch':>6}{'dense ms':>12}{'BN-folded ms':>14}{'sparse ms':>12}{'speedup':>9}"
                 f"{'vs folded':>11}{'sparse layers':>15}{'max rel err':>13}")
    for b in result["batches"]:
        lines.append(f"{b['batch']:>6}{b['dense_ms']:>12.3f}{b['folded_ms']:>14.3f}{b['sparse_ms']:>12.3f}"
                     f"{b['speedup']:>8.2f}x{b['speedup_vs_folded']:>10.2f}x"
                     f"{b['n_sparse']:>8}/{len(b['layers']):<6}{b['max_rel_error']:>13.1e}")
    for b in result["batches"]:
        lines += ["", f"per layer, batch {b['batch']} (sparse time includes a fused ReLU):",
                  f"{'layer':<26}{'density':>8}  {'decision':<8}{'dense ms':>10}{'sparse ms':>11}{'speedup':>9}"]
        for L in b["layers"]:
            d = "-" if L["dense_ms"] is None else f"{L['dense_ms']:.3f}"
            s = "-" if L["sparse_ms"] is None else f"{L['sparse_ms']:.3f}"
            sp = "-" if L["speedup"] is None else f"{L['speedup']:.2f}x"
            lines.append(f"{L['name']:<26}{L['density']:>8.4f}  {L['decision']:<8}{d:>10}{s:>11}{sp:>9}")
    return "\n".join(lines)
