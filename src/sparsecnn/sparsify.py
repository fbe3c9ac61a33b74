"""``sparsify``: turn a pruned PyTorch model into a fast one.

:func:`sparsify` works on a deep copy of the model in eval mode and

1. traces one forward pass on ``example_inputs`` (forward hooks on every module plus a
   :class:`~torch.overrides.TorchFunctionMode` that records every torch call consuming a
   conv/linear/BN output), so it knows the execution order, each layer's input shape and
   who consumes each tensor -- without ``torch.fx`` (which cannot trace every model);
2. folds every eval-mode ``BatchNorm2d`` whose input is exactly a ``Conv2d`` output (and
   only consumed by it) into that conv; the folded conv keeps the pruning mask's zeros,
   the BN becomes ``nn.Identity``;
3. decides dense vs sparse per ``Conv2d``/``Linear`` (``policy``):
   ``"auto"`` -- the roofline :class:`~sparsecnn.perf.PerfModel` (sparse if predicted faster),
   ``"measure"`` -- the prediction plus timing both versions on the layer's real input
   (median of a few repeats; the faster wins), ``"all"`` / ``"none"`` -- forced.
   On CUDA without an explicit ``perf_model`` (no GPU roofline): sparse below density 0.3;
4. replaces the chosen layers by :class:`~sparsecnn.nn.SparseConv2d` /
   :class:`~sparsecnn.nn.SparseLinear` and fuses a following ``nn.ReLU`` into the kernel's
   store when the layer's (BN-folded) output has no consumer but that ReLU module
   (the ReLU becomes ``nn.Identity``); the sparse convs compute in NCHW
   (``keep_format=False``: a channels-last model's activations turn NCHW at its first sparse
   layer instead of paying two conversions in every one);
5. calls ``fuse_residual()`` on every module that has one (e.g. the ResNet
   :class:`~sparsecnn.models.resnet.Bottleneck`): the block moves its residual add and final
   ReLU into its last (sparse) conv's store, which saves two passes over the block's output;
6. on CPU, swaps ``nn.MaxPool2d`` and ``nn.LocalResponseNorm`` for
   :class:`~sparsecnn.nn.MaxPool2d` / :class:`~sparsecnn.nn.LocalResponseNorm` (same results,
   one memory pass each: torch's NCHW versions were a third of CaffeNet's batch-16 time once
   its convolutions were sparse); ``policy="none"`` leaves them.

The result is a plain ``nn.Module`` that runs under ``torch.compile`` and
``torch.export.export`` (the sparse kernels are torch custom ops).

Example:
    >>> import torch, torch.nn as nn
    >>> import torch.nn.utils.prune as prune
    >>> import sparsecnn
    >>> m = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()).eval()
    >>> _ = prune.l1_unstructured(m[0], "weight", amount=0.9)
    >>> x = torch.randn(2, 8, 12, 12)
    >>> fast, report = sparsecnn.sparsify(m, x, policy="all")
    >>> type(fast[0]).__name__, fast[0].relu, type(fast[1]).__name__
    ('SparseConv2d', True, 'Identity')
    >>> torch.allclose(fast(x), m(x), atol=1e-5)
    True
    >>> report.layers[0].bn_folded, report.layers[0].relu_fused
    ('1', '2')
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from sparsecnn.nn.modules import SparseConv2d, SparseLinear, dense_weight_of
from sparsecnn.nn.pooling import LocalResponseNorm, MaxPool2d

__all__ = ["POLICIES", "GPU_FALLBACK_DENSITY", "LayerDecision", "SparsifyReport", "sparsify"]

log = logging.getLogger(__name__)

POLICIES = ("auto", "measure", "all", "none")
#: without a GPU roofline, CUDA layers go sparse below this density
GPU_FALLBACK_DENSITY = 0.3
_OUTPUT = "<model output>"


# ---------------------------------------------------------------------------- report
@dataclass
class LayerDecision:
    """What :func:`sparsify` did with one conv/linear layer (times in seconds)."""

    name: str
    type: str  # 'conv' | 'linear'
    shape: tuple[int, ...]
    density: float
    decision: str  # 'sparse' | 'dense'
    reason: str
    input_shape: tuple[int, ...] | None = None
    pred_dense_s: float | None = None
    pred_sparse_s: float | None = None
    pred_speedup: float | None = None
    meas_dense_s: float | None = None
    meas_sparse_s: float | None = None
    relu_fused: str | None = None  # name of the ReLU module fused into the kernel
    residual_fused: bool = False  # the block's residual add (and its ReLU) run in this conv's store
    bn_folded: str | None = None  # name of the BatchNorm2d folded into the weight

    @property
    def meas_speedup(self) -> float | None:
        if self.meas_dense_s and self.meas_sparse_s:
            return self.meas_dense_s / self.meas_sparse_s
        return None


@dataclass
class SparsifyReport:
    """Per-layer decisions of :func:`sparsify`; :meth:`table` and :meth:`to_dict`."""

    policy: str
    batch: int
    threads: int
    device: str
    perf_model: str
    layers: list[LayerDecision] = field(default_factory=list)
    max_rel_error: float | None = None  # |sparsified - original|_max / |original|_max on example_inputs
    time_s: float = 0.0
    fast_ops: list[str] = field(default_factory=list)  # pooling / LRN modules swapped for the core's

    @property
    def n_sparse(self) -> int:
        return sum(1 for r in self.layers if r.decision == "sparse")

    def layer(self, name: str) -> LayerDecision:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        d = asdict(self)
        for row, r in zip(d["layers"], self.layers):
            row["shape"] = list(r.shape)
            row["input_shape"] = None if r.input_shape is None else list(r.input_shape)
            row["meas_speedup"] = r.meas_speedup
        d["n_sparse"] = self.n_sparse
        return d

    def table(self) -> str:
        """Human-readable table, one row per conv/linear layer."""

        def ms(t: float | None) -> str:
            return "-" if t is None else f"{1e3 * t:.3f}"

        def x(s: float | None) -> str:
            return "-" if s is None else f"{s:.2f}x"

        head = (f"{'layer':<26}{'type':<7}{'density':>8} {'decision':<8}{'pred ms d/s':>17}{'pred':>8}"
                f"{'meas ms d/s':>17}{'meas':>8}  {'bn':<4}{'relu':<5}{'res':<4}reason")
        lines = [head, "-" * len(head)]
        for r in self.layers:
            pred = f"{ms(r.pred_dense_s)}/{ms(r.pred_sparse_s)}"
            meas = f"{ms(r.meas_dense_s)}/{ms(r.meas_sparse_s)}"
            lines.append(f"{r.name:<26}{r.type:<7}{r.density:>8.4f} {r.decision:<8}{pred:>17}{x(r.pred_speedup):>8}"
                         f"{meas:>17}{x(r.meas_speedup):>8}  {'yes' if r.bn_folded else '-':<4}"
                         f"{'yes' if r.relu_fused else '-':<5}{'yes' if r.residual_fused else '-':<4}{r.reason}")
        err = "-" if self.max_rel_error is None else f"{self.max_rel_error:.2e}"
        if self.fast_ops:
            lines.append(f"pooling/LRN run by the core: {', '.join(self.fast_ops)}")
        lines.append(f"policy {self.policy}, batch {self.batch}, {self.threads} threads, {self.device}, "
                     f"perf model {self.perf_model}: {self.n_sparse}/{len(self.layers)} layers sparse, "
                     f"max rel. error {err}, {self.time_s:.1f}s")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- tracing
@dataclass
class _Call:
    name: str
    inp: Any = None
    out: Any = None


class _Tracer(TorchFunctionMode):
    """Records, for every watched tensor, which module (innermost running) consumed it."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.watch: dict[int, tuple[torch.Tensor, list[str | None]]] = {}

    def add(self, t: Any) -> None:
        if isinstance(t, torch.Tensor) and id(t) not in self.watch:
            self.watch[id(t)] = (t, [])

    def uses(self, t: Any) -> list[str | None]:
        e = self.watch.get(id(t)) if isinstance(t, torch.Tensor) else None
        return e[1] if e is not None and e[0] is t else []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.watch:
            res, _ = tree_flatten(out)
            if any(isinstance(r, torch.Tensor) for r in res):  # metadata queries (dim, shape) are no use
                owner = self.stack[-1] if self.stack else None
                flat, _ = tree_flatten((args, kwargs))
                seen: set[int] = set()
                for a in flat:
                    if isinstance(a, torch.Tensor) and id(a) not in seen:
                        seen.add(id(a))
                        e = self.watch.get(id(a))
                        if e is not None and e[0] is a:
                            e[1].append(owner)
        return out


def _as_args(example_inputs: Any) -> tuple[Any, ...]:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def _first_tensor(obj: Any) -> torch.Tensor | None:
    for t in tree_flatten(obj)[0]:
        if isinstance(t, torch.Tensor):
            return t
    return None


def _trace(model: nn.Module, args: tuple[Any, ...], keep_inputs: bool):
    names: dict[int, str] = {}
    for n, m in model.named_modules():
        names.setdefault(id(m), n)
    tracer = _Tracer()
    calls: dict[str, list[_Call]] = defaultdict(list)
    watched = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
    handles = []

    def pre(mod: nn.Module, inputs: tuple[Any, ...]) -> None:
        name = names[id(mod)]
        tracer.stack.append(name)
        inp = inputs[0] if inputs else None
        if keep_inputs and isinstance(mod, (nn.Conv2d, nn.Linear)) and isinstance(inp, torch.Tensor):
            inp_rec: Any = inp.detach().clone()
        else:
            inp_rec = inp
        calls[name].append(_Call(name, inp_rec, None))

    def post(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        name = names[id(mod)]
        if tracer.stack and tracer.stack[-1] == name:
            tracer.stack.pop()
        calls[name][-1].out = output
        if isinstance(mod, watched) or isinstance(mod, nn.ReLU):
            tracer.add(output)

    seen: set[int] = set()
    for m in model.modules():
        if id(m) in seen:
            continue
        seen.add(id(m))
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        with torch.no_grad(), tracer:
            out = model(*args)
    finally:
        for h in handles:
            h.remove()
    for t in tree_flatten(out)[0]:
        if isinstance(t, torch.Tensor):
            e = tracer.watch.get(id(t))
            if e is not None and e[0] is t:
                e[1].append(_OUTPUT)
    return out, calls, tracer


# ---------------------------------------------------------------------------- folding
def _is_plain(m: nn.Module, cls: type) -> bool:
    return isinstance(m, cls) and type(m).forward is cls.forward


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new ``nn.Conv2d`` equal to ``bn(conv(x))`` in eval mode (computed in float64).

    The effective (masked) weight is scaled per output channel, so pruned zeros stay zeros.
    """
    w = dense_weight_of(conv)
    dt = w.dtype
    w64 = w.to(torch.float64)
    std = torch.sqrt(bn.running_var.to(torch.float64) + bn.eps)
    gamma = bn.weight.to(torch.float64) if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.to(torch.float64) if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    b = conv.bias.detach().to(torch.float64) if conv.bias is not None else torch.zeros_like(std)
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                    device=w.device, dtype=dt)
    new.weight = nn.Parameter((w64 * scale.reshape(-1, 1, 1, 1)).to(dt), requires_grad=False)
    new.bias = nn.Parameter(((b - bn.running_mean.to(torch.float64)) * scale + beta).to(dt), requires_grad=False)
    return new.eval()


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (_is_plain(bn, nn.BatchNorm2d) and bn.track_running_stats and bn.running_mean is not None
            and bn.running_var is not None and bn.num_features == conv.out_channels)


# ---------------------------------------------------------------------------- timing
def _deepcopy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also copes with ``torch.nn.utils.prune``'d modules (whose computed
    ``weight`` attribute is a non-leaf tensor, which deepcopy refuses)."""
    memo: dict[int, Any] = {}
    for m in model.modules():
        for v in m.__dict__.values():
            if isinstance(v, torch.Tensor) and v.grad_fn is not None:
                memo[id(v)] = v.detach().clone()
    return copy.deepcopy(model, memo)


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def _rel_err(a: Any, b: Any) -> float:
    ta, tb = tree_flatten(a)[0], tree_flatten(b)[0]
    worst = 0.0
    for x, y in zip(ta, tb):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.is_floating_point():
            d = (x.detach().double() - y.detach().double()).abs().max().item() if x.numel() else 0.0
            s = x.detach().double().abs().max().item() if x.numel() else 0.0
            worst = max(worst, d / s if s > 0 else d)
    return worst


# ---------------------------------------------------------------------------- main
def sparsify(
    model: nn.Module,
    example_inputs: Any,
    policy: str = "auto",
    perf_model: Any = None,
    threads: int | None = None,
    repeats: int = 5,
) -> tuple[nn.Module, SparsifyReport]:
    """Fold BN, pick dense/sparse per layer, swap in sparse modules and fuse ReLUs.

    Args:
        model: a (pruned) model; not modified (a deep copy is converted, in eval mode).
            Pruning masks of ``torch.nn.utils.prune`` are honoured.
        example_inputs: a tensor or a tuple of positional inputs; its batch size is the
            batch the decisions are made for.
        policy: ``"auto"`` (performance model), ``"measure"`` (model + timing both
            versions on the real input), ``"all"`` (every conv/linear sparse) or ``"none"``.
        perf_model: anything with ``predict(spec, density, batch)`` returning ``t_dense``,
            ``t_sparse``, ``speedup``; default: ``PerfModel.load_or_calibrate(threads=threads)``
            on CPU, the density rule (< 0.3) on CUDA.
        threads: torch threads for the decisions and timings (default: current setting).
        repeats: timed repeats per version with ``policy="measure"``.

    Returns:
        ``(fast_model, report)``; ``fast_model`` is in eval mode, on the model's device.
    """
    if policy not in POLICIES:
        raise ValueError(f"sparsify: policy must be one of {POLICIES}, got {policy!r}")
    t_start = time.time()
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _sparsify(model, _as_args(example_inputs), policy, perf_model, threads, repeats, t_start)
    finally:
        torch.set_num_threads(old_threads)


def _get_perf(perf_model: Any, policy: str, cuda: bool, threads: int | None) -> tuple[Any, str]:
    if policy not in ("auto", "measure"):
        return None, "none"
    if perf_model is not None:
        return perf_model, type(perf_model).__name__
    if cuda:
        return None, f"none (no GPU roofline: sparse below density {GPU_FALLBACK_DENSITY})"
    try:
        from sparsecnn.perf import PerfModel

        return PerfModel.load_or_calibrate(threads=threads), "PerfModel (calibrated)"
    except Exception as e:  # noqa: BLE001 - never fail the conversion over the model
        log.warning("sparsify: performance model unavailable (%s); using the density rule", e)
        return None, f"none ({type(e).__name__}: density rule)"


def _sparsify(model, args, policy, perf_model, threads, repeats, t_start):
    net = _deepcopy(model).eval()
    ref, calls, tracer = _trace(net, args, keep_inputs=policy == "measure")
    x0 = _first_tensor(args)
    batch = int(x0.shape[0]) if x0 is not None and x0.dim() > 0 else 1
    params = [p for p in net.parameters()]
    device = params[0].device if params else (x0.device if x0 is not None else torch.device("cpu"))
    cuda = device.type == "cuda"
    perf, perf_name = _get_perf(perf_model, policy, cuda, threads)

    modules = dict(net.named_modules())
    paths: dict[int, list[str]] = defaultdict(list)
    for n, m in net.named_modules(remove_duplicate=False):
        paths[id(m)].append(n)
    ncalls = Counter({n: len(c) for n, c in calls.items()})
    report = SparsifyReport(policy=policy, batch=batch, threads=torch.get_num_threads(), device=str(device),
                            perf_model=perf_name)
    to_identity: list[str] = []

    for name, m in list(modules.items()):
        is_conv, is_lin = _is_plain(m, nn.Conv2d), _is_plain(m, nn.Linear)
        if not (is_conv or is_lin):
            continue
        w = dense_weight_of(m)
        density = float((w != 0).sum()) / max(w.numel(), 1)
        row = LayerDecision(name=name, type="conv" if is_conv else "linear", shape=tuple(w.shape),
                            density=density, decision="dense", reason="")
        report.layers.append(row)
        rec = calls.get(name, [])
        if len(rec) == 1 and isinstance(rec[0].inp, torch.Tensor):
            row.input_shape = tuple(rec[0].inp.shape)

        # ---- BN folding and ReLU detection (only for a module run exactly once, at one path)
        layer: nn.Module = m
        relu_name = None
        if len(rec) == 1 and len(paths[id(m)]) == 1:
            out = rec[0].out
            if is_conv:
                uses = tracer.uses(out)
                owners = set(uses)
                if len(owners) == 1 and uses[0] not in (None, _OUTPUT):
                    bn_name = uses[0]
                    bn = modules.get(bn_name)
                    bn_rec = calls.get(bn_name, [])
                    if (bn is not None and _foldable(m, bn) and len(bn_rec) == 1 and bn_rec[0].inp is out
                            and len(paths[id(bn)]) == 1):
                        layer = fold_bn(m, bn)
                        row.bn_folded = bn_name
                        to_identity.append(bn_name)
                        out = bn_rec[0].out
            uses = tracer.uses(out)
            if uses and uses[0] not in (None, _OUTPUT):
                r_name = uses[0]
                r = modules.get(r_name)
                r_rec = calls.get(r_name, [])
                if (r is not None and _is_plain(r, nn.ReLU) and len(r_rec) == 1 and r_rec[0].inp is out
                        and len(paths[id(r)]) == 1 and (r.inplace or set(uses) == {r_name})):
                    relu_name = r_name
            if layer is not m:
                for p in paths[id(m)]:
                    _set_module(net, p, layer)

        # ---- decision
        if w.dtype != torch.float32:
            row.reason = f"dtype {w.dtype} (the sparse kernels are float32)"
        elif policy == "none":
            row.reason = "policy none"
        elif policy == "all":
            row.decision, row.reason = "sparse", "policy all"
        elif not rec:
            row.reason = "not executed by example_inputs"
        else:
            _decide(row, layer, rec, perf, policy, cuda, repeats, relu_name, batch)

        if row.decision == "sparse":
            fuse = relu_name is not None
            new = _sparse_module(layer, fuse).to(device).eval()
            for p in paths[id(m)]:
                _set_module(net, p, new)
            if fuse:
                row.relu_fused = relu_name
                to_identity.append(relu_name)

    for n in to_identity:
        _set_module(net, n, nn.Identity())
    rows = {r.name: r for r in report.layers}
    for bname, blk in list(net.named_modules()):
        fuse = getattr(blk, "fuse_residual", None)
        if callable(fuse) and not isinstance(blk, (SparseConv2d, SparseLinear)):
            conv = fuse()
            if conv is not None:
                row = rows.get(f"{bname}.{conv}" if bname else conv)
                if row is not None:
                    row.residual_fused = True
    if device.type == "cpu" and policy != "none":
        for name, mod in list(net.named_modules()):
            fast = (MaxPool2d.from_torch(mod) if type(mod) is nn.MaxPool2d
                    else LocalResponseNorm.from_torch(mod) if type(mod) is nn.LocalResponseNorm else None)
            if fast is not None:
                for p in paths.get(id(mod), [name]):
                    _set_module(net, p, fast)
                report.fast_ops.append(name)
    net.eval()
    with torch.no_grad():
        report.max_rel_error = _rel_err(ref, net(*args))
    report.time_s = time.time() - t_start
    log.info("sparsify: %d/%d layers sparse (policy %s), max rel. error %.2e", report.n_sparse,
             len(report.layers), policy, report.max_rel_error)
    return net, report


def _layer_batch(row: LayerDecision) -> int:
    if row.input_shape is None:
        return 1
    if row.type == "linear":
        return max(1, math.prod(row.input_shape[:-1]))
    return int(row.input_shape[0]) if len(row.input_shape) == 4 else 1


def _sparse_module(layer: nn.Module, relu: bool) -> SparseConv2d | SparseLinear:
    """The sparse replacement of a ``Conv2d`` / ``Linear``; convs compute in NCHW (``keep_format=False``)."""
    if isinstance(layer, nn.Conv2d):
        return SparseConv2d.from_dense(layer, relu=relu, keep_format=False)
    return SparseLinear.from_dense(layer, relu=relu)


def _decide(row: LayerDecision, layer: nn.Module, rec: list[_Call], perf: Any, policy: str, cuda: bool,
            repeats: int, relu_name: str | None, batch: int) -> None:
    reason = ""
    pred_ok = False
    if perf is not None and row.input_shape is not None:
        try:
            from sparsecnn.perf import LayerSpec

            make_spec = getattr(perf, "make_spec", None)  # e.g. prune.AnalyticRoofline has its own spec type
            spec = (make_spec(layer, row.input_shape, row.name) if callable(make_spec)
                    else LayerSpec.from_module(layer, row.input_shape, row.name))
            p = perf.predict(spec, row.density, _layer_batch(row))
            row.pred_dense_s, row.pred_sparse_s = float(p.t_dense), float(p.t_sparse)
            row.pred_speedup = float(p.speedup)
            pred_ok = True
            bound = getattr(p, "bound", None)
            sparse = row.pred_speedup > 1.0
            row.decision = "sparse" if sparse else "dense"
            reason = (f"predicted {row.pred_speedup:.2f}x" + (f" ({bound} bound)" if bound else "")
                      + ("" if sparse else ": dense faster"))
        except Exception as e:  # noqa: BLE001 - fall back to the density rule
            log.warning("sparsify: no prediction for %s (%s)", row.name, e)
            reason = f"no prediction ({type(e).__name__})"
    if not pred_ok:
        sparse = row.density < GPU_FALLBACK_DENSITY
        row.decision = "sparse" if sparse else "dense"
        why = "no GPU roofline" if cuda and perf is None else (reason or "no performance model")
        reason = f"density {row.density:.3f} {'<' if sparse else '>='} {GPU_FALLBACK_DENSITY} ({why})"
        log.info("sparsify: %s: %s", row.name, reason)
    if policy == "measure" and isinstance(rec[0].inp, torch.Tensor):
        from sparsecnn.perf.probe import interleaved_medians

        x = rec[0].inp
        fuse = relu_name is not None
        sp = _sparse_module(layer, fuse).to(x.device)
        with torch.inference_mode():
            dense_fn = (lambda: torch.relu(layer(x))) if fuse else (lambda: layer(x))
            row.meas_dense_s, row.meas_sparse_s = interleaved_medians(
                [dense_fn, lambda: sp(x)], repeats, sync=torch.cuda.synchronize if cuda else None)
        sparse = row.meas_sparse_s < row.meas_dense_s
        row.decision = "sparse" if sparse else "dense"
        reason = (f"measured {row.meas_dense_s / row.meas_sparse_s:.2f}x"
                  + ("" if sparse else ": dense faster") + (f"; {reason}" if reason else ""))
    row.reason = reason
