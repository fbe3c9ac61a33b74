"""Fit the performance model to the layers it is asked about, by timing them.

The calibration (:mod:`sparsecnn.perf.calibrate`) fits eleven machine constants on a fixed
set of layer shapes; a layer far from those shapes inherits the fit's extrapolation error,
and on a noisy machine the constants themselves move from one calibration to the next. The
useful density range is a crossing of two terms, so it moves more than either: on the demo
network's 3x3 layers at batch 16 (2-core Zen 3), twelve calibrations of one build put
conv2's saturation density anywhere from 0.083 to 0.178, while timing the layer showed the
fixed term 2-4x too high and the true value near 0.03.

:func:`fit_layers` times each given conv layer at its real shape and batch, with random masks
at a few densities, interleaved with the dense conv (:func:`~sparsecnn.perf.calibrate.
time_interleaved`), and fits two corrections per layer, ``s_fixed`` and ``s_compute``:
``t_sparse = s_fixed t_fixed + max(s_compute t_compute, t_bw)``. The model keeps its shape
(density exponent, plan changes, bandwidth roof); only the two scales move, tied to 1 by a
weak prior so a layer whose time barely depends on the density does not send ``s_compute``
anywhere. The measured dense time replaces the cached one, so the break-even compares
timings taken side by side. The scales live in :attr:`PerfModel.layer_scales` (in
``to_dict``, not in the calibration cache: they belong to the run that timed the layers) and
:meth:`PerfModel.terms` applies them.

Example:
    >>> from sparsecnn.perf import LayerSpec, PerfModel
    >>> m = PerfModel.synthetic(F=1e11, B=2e10, t0=5e-3)        # a fixed cost far too high
    >>> s = LayerSpec("c", "conv", 8, 16, (3, 3), padding=(1, 1), input_hw=(10, 10))
    >>> info = fit_layers(m, [s], batch=2, rounds=2, progress=False)
    >>> info[s.name]["s_fixed"] < 0.5 and m.predict(s, 0.1, 2).t_sparse < 5e-3
    True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import probe
from .calibrate import random_sparse_weight, robust_least_squares, time_interleaved
from .spec import LayerSpec

if TYPE_CHECKING:
    from .model import PerfModel

__all__ = ["FIT_DENSITIES", "fit_layers", "fit_scales", "time_layer"]

log = logging.getLogger(__name__)

#: densities each layer is timed at: several below 0.1 (the saturation densities of pruned
#: layers lie there) and up to 0.8 (break-even densities of large layers)
FIT_DENSITIES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8)
#: prior on the log scales: a factor of 4 off 1 costs as much as one 10 % misfit (as the
#: calibration's priors on its memory rates)
PRIOR_WEIGHT = math.sqrt(0.8) * 0.1 / math.log(4.0)


def time_layer(spec: LayerSpec, batch: int, densities: Sequence[float], threads: int, rounds: int = 9,
               min_time: float = 0.01, quiet: probe.QuietWaiter | None = None
               ) -> tuple[list[float], float, list[float]]:
    """``(actual densities, t_dense, [t_sparse per density])`` in seconds: the conv layer with
    uniform random masks at ``densities`` and the dense conv, interleaved over ``rounds``
    (:func:`~sparsecnn.perf.calibrate.time_interleaved`, its low quantile)."""
    ws = [random_sparse_weight(spec, x, seed=i) for i, x in enumerate(densities)]
    td, ts = time_interleaved(spec, ws, batch, rounds=rounds, min_time=min_time, threads=threads,
                              quiet=quiet)
    return [float((w != 0).float().mean()) for w in ws], td, ts


def fit_scales(model: PerfModel, spec: LayerSpec, batch: int, densities: Sequence[float],
               times: Sequence[float]) -> tuple[float, float, float]:
    """``(s_fixed, s_compute, rms log error)`` that make ``model`` fit ``times`` (seconds of the
    sparse kernel at ``densities``) of ``spec`` at ``batch``; ignores scales already set for it.

    Example:
        >>> from sparsecnn.perf import LayerSpec, PerfModel
        >>> m = PerfModel.synthetic(F=1e11, B=2e10, t0=1e-4)
        >>> s = LayerSpec("c", "conv", 64, 64, (3, 3), padding=(1, 1), input_hw=(28, 28))
        >>> xs = [0.0, 0.05, 0.1, 0.3]
        >>> def true_time(x):   # the layer's fixed term half the model's, its FMAs twice as slow
        ...     tf, tc, tb = m.terms(s, x, 1)
        ...     return 0.5 * tf + max(2 * tc, tb)
        >>> sf, sc, rms = fit_scales(m, s, 1, xs, [true_time(x) for x in xs])
        >>> round(sf, 1), round(sc, 1), rms < 0.02
        (0.5, 2.0, True)
    """
    if len(densities) != len(times) or not times:
        raise ValueError("fit_scales needs one time per density, at least one")
    if any(not (t > 0 and math.isfinite(t)) for t in times):
        raise ValueError(f"times must be positive and finite, got {list(times)}")
    terms = [model.terms(spec, x, batch, scaled=False) for x in densities]
    logt = np.log(np.asarray(times, float))

    def errors(lp: np.ndarray) -> np.ndarray:
        sf, sc = np.exp(lp)
        return np.array([math.log(sf * tf + max(sc * tc, tb)) for tf, tc, tb in terms]) - logt

    def residuals(lp: np.ndarray) -> np.ndarray:
        return np.concatenate([errors(lp), PRIOR_WEIGHT * lp])

    lp, _ = robust_least_squares(residuals, [0.0, 0.0], n_data=len(times), scale=0.1)
    rms = float(np.sqrt(np.mean(errors(lp) ** 2)))
    return float(math.exp(lp[0])), float(math.exp(lp[1])), rms


def fit_layers(model: PerfModel, specs: Sequence[LayerSpec], batch: int,
               densities: Sequence[float] = FIT_DENSITIES, rounds: int = 9, min_time: float = 0.01,
               progress: bool = True, quiet_budget: float = 10.0) -> dict[str, dict[str, Any]]:
    """Time every conv layer of ``specs`` at ``batch`` and fit its scales into ``model``.

    For each conv spec (linear layers and repeated geometries are skipped): the sparse kernel
    at each of ``densities`` (uniform random masks) and the dense conv, interleaved over
    ``rounds`` rounds, the low quantile of each (see :func:`~sparsecnn.perf.calibrate.
    time_interleaved`); then :func:`fit_scales`. Sets ``model.layer_scales`` and
    ``model.dense`` for each layer's key. Uses ``model.machine.threads`` threads.

    Returns ``{spec.name: {"key", "densities", "t_sparse", "t_dense", "s_fixed", "s_compute",
    "rms_log_error"}}`` (times in seconds); a layer sharing another's geometry gets that
    layer's record.
    """
    from tqdm.auto import tqdm

    if int(batch) < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not densities or any(not 0.0 <= float(x) <= 1.0 for x in densities):
        raise ValueError(f"densities must be in [0, 1], got {list(densities)}")
    batch = int(batch)
    convs = [s for s in specs if s.kind == "conv"]
    by_key: dict[str, dict[str, Any]] = {}
    out: dict[str, dict[str, Any]] = {}
    quiet = probe.QuietWaiter(budget=quiet_budget)
    threads = max(1, model.machine.threads)
    for spec in tqdm(convs, desc="timing layers", unit="layer", disable=not progress, leave=False):
        key = model.dense_key(spec, batch)
        if key not in by_key:
            xs, td, ts = time_layer(spec, batch, densities, threads, rounds=rounds, min_time=min_time,
                                    quiet=quiet)
            sf, sc, rms = fit_scales(model, spec, batch, xs, ts)
            model.layer_scales[key] = (sf, sc)
            model.dense[key] = td
            by_key[key] = {"key": key, "densities": xs, "t_sparse": ts, "t_dense": td,
                           "s_fixed": sf, "s_compute": sc, "rms_log_error": rms}
            log.info("%s (batch %d): s_fixed %.2f, s_compute %.2f, rms log error %.3f", spec.name,
                     batch, sf, sc, rms)
        out[spec.name] = by_key[key]
    if quiet.busy_rounds:
        log.warning("%d of the layer timing rounds found the CPUs busy: the layer fits may be off",
                    quiet.busy_rounds)
    return out
