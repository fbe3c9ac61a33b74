"""Weight masks kept in PyTorch's ``torch.nn.utils.prune`` form.

A pruned layer holds ``weight_orig`` (the trainable dense parameter) and a
``weight_mask`` buffer; a forward pre-hook recomputes ``weight`` from both
before every forward. This module adds helpers to find prunable layers,
set masks in place, measure density and bake masks in (``finalize``).

Example:
    >>> import torch.nn as nn
    >>> from sparsecnn.prune.masks import attach_mask, refresh_weight, layer_density, finalize
    >>> conv = nn.Conv2d(1, 2, 3)
    >>> mask = attach_mask(conv)          # all-ones mask, weight_orig/weight_mask
    >>> _ = mask[0].zero_(); refresh_weight(conv)
    >>> round(layer_density(conv), 2)
    0.5
    >>> _ = finalize(conv)               # conv.weight is a plain Parameter again
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import prune

__all__ = [
    "PRUNABLE_TYPES",
    "attach_mask",
    "set_mask",
    "get_mask",
    "is_masked",
    "refresh_weight",
    "set_straight_through",
    "effective_weight",
    "prunable_layers",
    "layer_density",
    "sparsity_report",
    "overall_density",
    "finalize",
    "unwrap",
]

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


class _MaskHook(prune.CustomFromMask):
    """``CustomFromMask`` whose product can be straight-through.

    With ``module._sparsecnn_ste`` set (DNS), the forward value is
    ``weight_orig * weight_mask`` but the gradient reaches *all* of
    ``weight_orig`` unmasked, so pruned weights keep training and can be
    spliced back when they grow (Guo et al. 2016). Otherwise it is the plain
    masked product (masked entries get zero gradient).
    """

    def apply_mask(self, module: nn.Module) -> torch.Tensor:
        mask = getattr(module, self._tensor_name + "_mask")
        orig = getattr(module, self._tensor_name + "_orig")
        mask = mask.to(dtype=orig.dtype)
        if getattr(module, "_sparsecnn_ste", False) and torch.is_grad_enabled():
            # value: orig*mask exactly (orig - orig*1 == 0, orig - orig*0 == orig);
            # gradient: identity w.r.t. orig.
            return orig - (orig * (1.0 - mask)).detach()
        return mask * orig


def unwrap(model: nn.Module) -> nn.Module:
    """Return the inner module of a DDP/DataParallel wrapper (or ``model``)."""
    return getattr(model, "module", model) if isinstance(
        model, (nn.parallel.DistributedDataParallel, nn.DataParallel)
    ) else model


def is_masked(module: nn.Module) -> bool:
    """True if ``module.weight`` is reparametrised as ``weight_orig * weight_mask``."""
    return hasattr(module, "weight_mask") and hasattr(module, "weight_orig")


def refresh_weight(module: nn.Module) -> None:
    """Recompute ``module.weight`` from orig and mask (the hook does this each forward)."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == "weight":
            with torch.no_grad():
                setattr(module, "weight", hook.apply_mask(module))
            return


def attach_mask(module: nn.Module, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Ensure ``module`` carries a weight mask; return the live ``weight_mask`` buffer.

    The first call registers the reparametrisation with ``custom_from_mask``
    semantics (all-ones unless ``mask`` is given); later calls overwrite the
    existing buffer in place (``prune.custom_from_mask`` would instead multiply
    masks, which makes splicing weights back impossible).
    """
    if not is_masked(module):
        init = torch.ones_like(module.weight) if mask is None else mask.to(module.weight)
        _MaskHook.apply(module, "weight", mask=init)
        # CustomFromMask keeps a reference to its construction mask; drop it.
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, _MaskHook):
                hook.mask = None
    elif mask is not None:
        set_mask(module, mask)
    return module.weight_mask


def get_mask(module: nn.Module) -> torch.Tensor | None:
    """The live ``weight_mask`` buffer, or None for an unmasked layer."""
    return module.weight_mask if is_masked(module) else None


def set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Overwrite the mask of an already masked layer (in place) and refresh ``weight``."""
    with torch.no_grad():
        module.weight_mask.copy_(mask.to(module.weight_mask))
    refresh_weight(module)


def set_straight_through(module: nn.Module, enabled: bool = True) -> None:
    """Let gradients reach pruned entries of ``weight_orig`` (DNS) or not."""
    module._sparsecnn_ste = bool(enabled)


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the layer actually uses (``orig * mask`` or plain weight), detached."""
    if is_masked(module):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


def prunable_layers(model: nn.Module, include_fc: bool = True) -> dict[str, nn.Module]:
    """Conv2d (and, with ``include_fc``, Linear) layers by qualified name, in order.

    >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    >>> list(prunable_layers(m))
    ['0', '2']
    """
    types = PRUNABLE_TYPES if include_fc else (nn.Conv2d,)
    return {n: m for n, m in unwrap(model).named_modules() if isinstance(m, types)}


def layer_density(module: nn.Module) -> float:
    """Fraction of non-zero entries in the effective weight (1.0 = dense)."""
    w = effective_weight(module)
    return float(torch.count_nonzero(w).item()) / max(w.numel(), 1)


def sparsity_report(model: nn.Module, include_fc: bool = True) -> list[dict[str, Any]]:
    """One row per prunable layer: name, type, shape, numel, nnz, density, masked."""
    rows = []
    for name, m in prunable_layers(model, include_fc).items():
        w = effective_weight(m)
        nnz = int(torch.count_nonzero(w).item())
        rows.append({
            "name": name,
            "type": "conv" if isinstance(m, nn.Conv2d) else "fc",
            "shape": list(w.shape),
            "numel": w.numel(),
            "nnz": nnz,
            "density": nnz / max(w.numel(), 1),
            "masked": is_masked(m),
        })
    return rows


def overall_density(model: nn.Module, include_fc: bool = True) -> float:
    """Non-zeros over all prunable weights divided by their total size."""
    rows = sparsity_report(model, include_fc)
    total = sum(r["numel"] for r in rows)
    return sum(r["nnz"] for r in rows) / max(total, 1)


def finalize(model: nn.Module) -> nn.Module:
    """Bake every mask into its weight (``prune.remove``) so pruned entries are exact zeros.

    Afterwards ``state_dict()`` holds plain ``weight`` tensors again and the
    model can be loaded into an unpruned architecture.
    """
    for m in unwrap(model).modules():
        if is_masked(m):
            prune.remove(m, "weight")
            if hasattr(m, "_sparsecnn_ste"):
                del m._sparsecnn_ste
    return model
