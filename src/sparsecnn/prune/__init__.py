"""Pruning for sparse inference: masks, ESL/DNS/GMP pruners and Guided Sparsity Learning.

Example (GESL on any CNN)::

    from sparsecnn.prune import ESL, GuidedSparsity, input_shapes_from_example, finalize
    pruner = ESL(model, lam=1e-3, optimizer=opt)
    gsl = GuidedSparsity(pruner, perf_model, input_shapes_from_example(model, x[:1]),
                         fc_multiplier=0.1)
    for epoch in range(E):
        for x, y in loader:
            ...; loss.backward(); opt.step(); gsl.step()
        gsl.on_epoch_end(epoch)
    finalize(model)

The training driver behind ``sparsecnn prune`` is :func:`sparsecnn.prune.trainer.train`.
"""

from .gsl import GuidedSparsity, input_shapes_from_example
from .masks import (
    attach_mask,
    finalize,
    get_mask,
    is_masked,
    layer_density,
    overall_density,
    prunable_layers,
    set_mask,
    sparsity_report,
)
from .pruners import DNS, ESL, GMP, PRUNERS, Pruner, make_pruner
from .roofline import AnalyticRoofline

__all__ = [
    "AnalyticRoofline",
    "DNS",
    "ESL",
    "GMP",
    "GuidedSparsity",
    "PRUNERS",
    "Pruner",
    "attach_mask",
    "finalize",
    "get_mask",
    "input_shapes_from_example",
    "is_masked",
    "layer_density",
    "make_pruner",
    "overall_density",
    "prunable_layers",
    "set_mask",
    "sparsity_report",
]
