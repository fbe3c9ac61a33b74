"""``save`` / ``load``: a (sparsified) model in one safetensors file, without pickle.

File layout (a standard safetensors file, readable by any safetensors tool):

* tensors: every parameter and buffer of every module, keyed by its qualified name
  (``features.conv2.values``, ``features.conv2.col_idx`` ...). Sparse modules hold the packed
  CSR arrays, so a 90%-sparse model takes about ``(4 + 2) / 4 x 0.1 = 15%`` of its dense size.
* metadata key ``"sparsecnn"``: JSON with

  - ``format`` (1) and the library ``version``;
  - ``tree``: the module tree. Each node is ``{"class": "pkg.mod.QualName", "training",
    "attrs", "params", "buffers", "children"}``; ``attrs`` are the module's own plain
    attributes (``__dict__`` minus ``nn.Module``'s internals; ints, floats, strings, None,
    tuples, lists, dicts, ``torch.Size``/``dtype``/``device``), ``params``/``buffers`` name
    the tensors (or None) with ``requires_grad`` / persistence;
  - ``sha256`` of every tensor's bytes (so any bit flip in the data is detected);
  - ``arch``: the optional user dict passed to :func:`save` (e.g. ``{"name": "fmnist_vgg",
    "kwargs": {...}}``), informational.

:func:`load` rebuilds every module as ``cls.__new__(cls)`` + ``nn.Module.__init__`` + the saved
attributes and tensors, so no constructor arguments are needed and no code is unpickled;
``forward`` comes from the class, which is imported by name. Only classes from ``torch.nn`` and
``sparsecnn`` are imported unless ``load(..., allow=("mypackage.",))`` widens that.

Limitations: hooks are not saved (``torch.nn.utils.prune`` masks are baked into ``weight``);
a module object registered under two names is loaded as two copies; attributes that are not
plain data (functions, arbitrary objects) make :func:`save` raise ``ValueError``.

Example:
    >>> import os, tempfile, torch, torch.nn as nn, sparsecnn
    >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval()
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> sparsecnn.save(m, path)
    >>> x = torch.randn(1, 3, 8, 8)
    >>> torch.equal(sparsecnn.load(path)(x), m(x))
    True
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = ["FORMAT_VERSION", "load", "read_metadata", "save"]

FORMAT_VERSION = 1
_META_KEY = "sparsecnn"
_DEFAULT_ALLOW = ("torch.nn.", "sparsecnn.")
_MODULE_INTERNALS = frozenset(nn.Module().__dict__) | {"training"}


# ---------------------------------------------------------------------------- encoding
def _encode(v: Any, where: str) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, torch.Size):
        return {"__size__": [int(i) for i in v]}
    if isinstance(v, tuple):
        return {"__tuple__": [_encode(i, where) for i in v]}
    if isinstance(v, list):
        return [_encode(i, where) for i in v]
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {"__dict__": {k: _encode(i, where) for k, i in v.items()}}
    if isinstance(v, torch.dtype):
        return {"__dtype__": str(v).removeprefix("torch.")}
    if isinstance(v, torch.device):
        return {"__device__": str(v)}
    raise ValueError(f"sparsecnn.save: attribute {where} of type {type(v).__name__} is not plain data "
                     "and cannot be stored")


def _decode(v: Any) -> Any:
    if isinstance(v, list):
        return [_decode(i) for i in v]
    if isinstance(v, dict):
        if "__tuple__" in v:
            return tuple(_decode(i) for i in v["__tuple__"])
        if "__size__" in v:
            return torch.Size(v["__size__"])
        if "__dict__" in v:
            return {k: _decode(i) for k, i in v["__dict__"].items()}
        if "__dtype__" in v:
            dt = getattr(torch, v["__dtype__"], None)
            if not isinstance(dt, torch.dtype):
                raise ValueError(f"unknown dtype {v['__dtype__']!r}")
            return dt
        if "__device__" in v:
            return torch.device(v["__device__"])
        raise ValueError(f"unknown encoded value {v!r}")
    return v


def _class_name(m: nn.Module, where: str) -> str:
    cls = type(m)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if "<locals>" in cls.__qualname__ or cls.__module__ == "__main__":
        raise ValueError(f"sparsecnn.save: module {where or '<root>'} is a {name}, which cannot be imported "
                         "by name at load time (define it at the top level of an importable module)")
    return name


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def _describe(m: nn.Module, prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    where = prefix.rstrip(".") or "<root>"
    masked = hasattr(m, "weight_orig") and hasattr(m, "weight_mask")
    params: dict[str, Any] = {}
    buffers: dict[str, Any] = {}
    for name, p in m._parameters.items():
        if masked and name == "weight_orig":
            continue
        params[name] = None if p is None else {"requires_grad": bool(p.requires_grad)}
        if p is not None:
            tensors[prefix + name] = p.detach()
    if masked:  # bake the pruning mask in: the hook is not stored
        w = m.weight_orig * m.weight_mask.to(m.weight_orig.dtype)
        params["weight"] = {"requires_grad": bool(m.weight_orig.requires_grad)}
        tensors[prefix + "weight"] = w.detach()
    for name, b in m._buffers.items():
        if masked and name == "weight_mask":
            continue
        buffers[name] = None if b is None else {"persistent": name not in m._non_persistent_buffers_set}
        if b is not None:
            tensors[prefix + name] = b.detach()
    attrs = {}
    for k, v in m.__dict__.items():
        if k in _MODULE_INTERNALS or (masked and k == "weight"):
            continue
        if isinstance(v, torch.Tensor):
            raise ValueError(f"sparsecnn.save: {where}.{k} is a tensor attribute that is neither a parameter "
                             "nor a buffer")
        attrs[k] = _encode(v, f"{where}.{k}")
    children = {name: None if c is None else _describe(c, f"{prefix}{name}.", tensors)
                for name, c in m._modules.items()}
    return {"class": _class_name(m, where), "training": bool(m.training), "attrs": attrs,
            "params": params, "buffers": buffers, "children": children}


# ---------------------------------------------------------------------------- save
def save(model: nn.Module, path: str | os.PathLike[str], arch: dict[str, Any] | None = None) -> None:
    """Write ``model`` (structure + every tensor) to a safetensors file at ``path``.

    Args:
        model: any module tree of ``torch.nn`` / ``sparsecnn`` classes (others load with
            ``load(..., allow=...)``), e.g. the output of :func:`sparsecnn.sparsify`.
        path: destination; written atomically (a temporary file is renamed).
        arch: optional JSON-serialisable description stored alongside (informational).

    Raises:
        ValueError: a module holds state that cannot be stored (see the module docstring).
    """
    from safetensors.torch import save_file

    import sparsecnn

    tensors: dict[str, torch.Tensor] = {}
    tree = _describe(model, "", tensors)
    # safetensors refuses shared storage: give every tensor its own contiguous CPU copy
    tensors = {k: t.detach().to("cpu").contiguous().clone() for k, t in tensors.items()}
    meta = {"format": FORMAT_VERSION, "version": sparsecnn.__version__, "tree": tree, "arch": arch,
            "sha256": {k: _digest(t) for k, t in tensors.items()}}
    try:
        text = json.dumps(meta, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"sparsecnn.save: arch is not JSON-serialisable: {e}") from e
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={_META_KEY: text})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------------------- load
def _read(path: Path) -> tuple[bytes, dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"sparsecnn.load: no such file: {path}")
    buf = path.read_bytes()
    bad = f"sparsecnn.load: {path} is not a valid sparsecnn safetensors file"
    if len(buf) < 8:
        raise ValueError(f"{bad}: truncated ({len(buf)} bytes)")
    n = int.from_bytes(buf[:8], "little")
    if n > len(buf) - 8:
        raise ValueError(f"{bad}: truncated (header of {n} bytes, file of {len(buf)})")
    try:
        header = json.loads(buf[8:8 + n].decode("utf-8"))
        meta = json.loads(header["__metadata__"][_META_KEY])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{bad}: unreadable header or metadata ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION or "tree" not in meta:
        raise ValueError(f"{bad}: unsupported format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    return buf, meta


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata of a file written by :func:`save` (``arch``, ``tree``, ``version`` ...)."""
    return _read(Path(path))[1]


def _import_class(name: str, allow: tuple[str, ...]) -> type:
    if not any(name.startswith(a) for a in allow):
        raise ValueError(f"class {name} is not allowed (allowed prefixes: {', '.join(allow)}; "
                         "pass load(..., allow=...) to trust more)")
    mod_name, _, qual = name.rpartition(".")
    obj: Any = None
    # the qualname may be nested (Outer.Inner): try the longest importable module prefix
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p, None)
            if obj is None:
                break
        break
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ValueError(f"class {name} cannot be imported (or is not an nn.Module)")
    return obj


def _build(node: dict[str, Any], prefix: str, tensors: dict[str, torch.Tensor], allow: tuple[str, ...]) -> nn.Module:
    cls = _import_class(node["class"], allow)
    m = cls.__new__(cls)
    nn.Module.__init__(m)
    for k, v in node["attrs"].items():
        m.__dict__[k] = _decode(v)
    m.training = bool(node["training"])
    for name, info in node["params"].items():
        m._parameters[name] = None if info is None else nn.Parameter(
            tensors.pop(prefix + name), requires_grad=bool(info["requires_grad"]))
    for name, info in node["buffers"].items():
        m._buffers[name] = None if info is None else tensors.pop(prefix + name)
        if info is not None and not info["persistent"]:
            m._non_persistent_buffers_set.add(name)
    for name, child in node["children"].items():
        m._modules[name] = None if child is None else _build(child, f"{prefix}{name}.", tensors, allow)
    return m


def load(path: str | os.PathLike[str], device: str | torch.device | None = None,
         allow: tuple[str, ...] | list[str] = ()) -> nn.Module:
    """Rebuild the model written by :func:`save` (same classes, attributes, tensors, mode).

    Args:
        path: file written by :func:`save`.
        device: move the model there after loading (default: CPU).
        allow: extra module-name prefixes whose classes may be imported (besides
            ``torch.nn.`` and ``sparsecnn.``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a truncated, corrupted or foreign file (the message names it).
    """
    from safetensors.torch import load as st_load

    path = Path(path)
    buf, meta = _read(path)
    bad = f"sparsecnn.load: {path} is not a valid sparsecnn safetensors file"
    try:
        tensors = st_load(buf)
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends: report, never crash
        raise ValueError(f"{bad}: {type(e).__name__}: {e}") from e
    sums = meta.get("sha256", {})
    if set(sums) != set(tensors):
        raise ValueError(f"{bad}: tensor list does not match its checksums")
    for k, t in tensors.items():
        if _digest(t) != sums[k]:
            raise ValueError(f"{bad}: tensor {k!r} is corrupted (checksum mismatch)")
    try:
        model = _build(meta["tree"], "", dict(tensors), tuple(_DEFAULT_ALLOW) + tuple(allow))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{bad}: inconsistent module tree ({type(e).__name__}: {e})") from e
    except ValueError as e:
        raise ValueError(f"{bad}: {e}") from e
    for m in model.modules():  # validate packed sparse weights
        sw = getattr(type(m), "sparse_weight", None)
        if isinstance(sw, property):
            try:
                m.sparse_weight  # noqa: B018
            except (ValueError, TypeError) as e:
                raise ValueError(f"{bad}: invalid sparse weight: {e}") from e
    return model if device is None else model.to(device)
