"""Roofline performance model of direct sparse convolution (Park et al., ICLR 2017).

Public API:

* :class:`LayerSpec` -- layer geometry, FLOPs ``C``, activation bytes ``S_A``, weight bytes ``S_W``.
* :class:`PerfModel` -- ``load_or_calibrate()``, ``predict()``, ``useful_range()``.
* :class:`Prediction`, :class:`Machine`.

Example:
    >>> from sparsecnn.perf import LayerSpec, PerfModel
    >>> m = PerfModel.synthetic(F=1e11, B=2e10)
    >>> s = LayerSpec("conv3", "conv", 256, 384, (3, 3), padding=(1, 1), input_hw=(13, 13))
    >>> m.predict(s, 0.05, batch=1).speedup > 1
    True
"""

from .model import Machine, PerfModel, Prediction
from .spec import LayerSpec

__all__ = ["LayerSpec", "Machine", "PerfModel", "Prediction"]
