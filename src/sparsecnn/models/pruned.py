"""Load the real pruned weight sets (``shared/data/pruned/*.npz``) into models.

Each npz holds, per layer ``L``: ``L.shape`` (OIHW, fc as (out, in, 1, 1)), and the CSR arrays
``L.indptr`` / ``L.indices`` / ``L.values`` (rows = output channels, columns = the flattened
(in/groups, kh, kw) index); LeNet sets also hold ``L.bias``. ``manifest.json`` next to them
gives per-set metadata and per-layer geometry and density.

The directory is ``$SPARSECNN_PRUNED_DIR`` if set, else ``<repo root>/../shared/data/pruned``
(repo root = the first directory holding ``pyproject.toml`` above this file, or above the cwd).

Example:
    >>> from sparsecnn.models import caffenet
    >>> from sparsecnn.models.pruned import apply_pruned_weights, load_pruned_layers
    >>> w = load_pruned_layers("caffenet_l1_acc56.3")
    >>> float((w["conv3"] != 0).float().mean())  # doctest: +SKIP
    0.0489
    >>> apply_pruned_weights(caffenet(), "caffenet_l1_acc56.3")
    ['conv1', 'conv2', 'conv3', 'conv4', 'conv5']
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "PRUNED_DIR_ENV",
    "pruned_dir",
    "list_pruned_sets",
    "resolve_pruned_path",
    "load_manifest",
    "set_info",
    "layer_meta",
    "load_pruned_layers",
    "load_pruned_biases",
    "apply_pruned_weights",
]

log = logging.getLogger(__name__)

PRUNED_DIR_ENV = "SPARSECNN_PRUNED_DIR"


def _find_repo_root(start: Path) -> Path | None:
    for d in [start, *start.parents]:
        if (d / "pyproject.toml").is_file():
            return d
    return None


def pruned_dir(must_exist: bool = True) -> Path:
    """Directory holding the pruned ``*.npz`` sets and ``manifest.json``.

    ``$SPARSECNN_PRUNED_DIR`` wins; otherwise ``<repo root>/../shared/data/pruned``, the repo
    root being found by walking up from this file, then from the cwd.

    Raises:
        FileNotFoundError: if ``must_exist`` and the directory does not exist.

    Example:
        >>> pruned_dir().name
        'pruned'
    """
    env = os.environ.get(PRUNED_DIR_ENV)
    if env:
        path = Path(env).expanduser()
    else:
        root = _find_repo_root(Path(__file__).resolve().parent) or _find_repo_root(Path.cwd().resolve())
        path = ((root or Path.cwd()) / ".." / "shared" / "data" / "pruned").resolve()
    if must_exist and not path.is_dir():
        raise FileNotFoundError(
            f"pruned weight directory not found: {path} "
            f"(set ${PRUNED_DIR_ENV} or place the sets in <repo root>/../shared/data/pruned)"
        )
    return path


def list_pruned_sets() -> list[str]:
    """Names of the available sets (npz stems), sorted; empty if the directory is missing.

    Example:
        >>> "caffenet_l1_acc56.3" in list_pruned_sets()
        True
    """
    d = pruned_dir(must_exist=False)
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.npz"))


def resolve_pruned_path(set_name_or_path: str | os.PathLike[str]) -> Path:
    """Map a set name (``"caffenet_l1_acc56.3"``) or an npz path to an existing file path.

    Raises:
        FileNotFoundError: naming the path tried and the sets available.
    """
    p = Path(set_name_or_path)
    if p.suffix == ".npz" or p.is_file() or len(p.parts) > 1:
        if not p.is_file():
            raise FileNotFoundError(f"pruned weight file not found: {p}")
        return p
    cand = pruned_dir() / f"{p.name}.npz"
    if not cand.is_file():
        raise FileNotFoundError(
            f"pruned set {str(set_name_or_path)!r} not found: {cand} does not exist "
            f"(available: {', '.join(list_pruned_sets()) or 'none'})"
        )
    return cand


@lru_cache(maxsize=4)
def _manifest_cached(path: str, mtime: float) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt manifest {path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"corrupt manifest {path}: expected a JSON object at top level")
    return data


def load_manifest(directory: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Parsed ``manifest.json`` (set name -> metadata with a ``layers`` dict)."""
    path = Path(directory) if directory is not None else pruned_dir()
    path = path / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    return _manifest_cached(str(path), path.stat().st_mtime)


def _set_entry(set_name: str) -> dict[str, Any]:
    name = Path(set_name).name
    if name.endswith(".npz"):
        name = name[: -len(".npz")]
    man = load_manifest()
    if name not in man:
        raise KeyError(f"set {name!r} not in manifest (known: {', '.join(sorted(man))})")
    return man[name]


def set_info(set_name: str) -> dict[str, Any]:
    """Manifest metadata of one set (model, method, top1, source ...) without ``layers``."""
    return {k: v for k, v in _set_entry(set_name).items() if k != "layers"}


def layer_meta(set_name: str) -> dict[str, dict[str, Any]]:
    """Per-layer geometry and density from the manifest.

    Returns ``{layer: {in_channels, out_channels, input_hw, kernel, stride, padding, groups,
    density}}`` in manifest order.

    Example:
        >>> layer_meta("caffenet_l1_acc56.3")["conv2"]["groups"]
        2
    """
    return dict(_set_entry(set_name).get("layers", {}))


def _open_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"corrupt or unreadable pruned weight file {path}: {e}") from e


def _read_set(set_name_or_path: str | os.PathLike[str]) -> tuple[Path, dict[str, np.ndarray]]:
    path = resolve_pruned_path(set_name_or_path)
    return path, _open_npz(path)


def _layer_names(arrays: dict[str, np.ndarray]) -> list[str]:
    names: list[str] = []
    for k in arrays:
        if k.endswith(".shape"):
            names.append(k[: -len(".shape")])
    return names


def _dense_from_csr(path: Path, name: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    try:
        shape = tuple(int(s) for s in arrays[f"{name}.shape"])
        indptr = arrays[f"{name}.indptr"].astype(np.int64)
        indices = arrays[f"{name}.indices"].astype(np.int64)
        values = arrays[f"{name}.values"]
    except KeyError as e:
        raise ValueError(f"{path}: layer {name!r} is missing array {e}") from e
    if len(shape) != 4 or any(s <= 0 for s in shape):
        raise ValueError(f"{path}: layer {name!r} has invalid shape {shape}")
    rows, cols = shape[0], int(np.prod(shape[1:]))
    nnz = len(values)
    if (indptr.ndim != 1 or len(indptr) != rows + 1 or indptr[0] != 0 or indptr[-1] != nnz
            or np.any(np.diff(indptr) < 0)):
        raise ValueError(f"{path}: layer {name!r} has an invalid CSR indptr "
                         f"(len {len(indptr)}, expected {rows + 1}, nnz {nnz})")
    if len(indices) != nnz:
        raise ValueError(f"{path}: layer {name!r}: {len(indices)} indices but {nnz} values")
    if nnz and (indices.min() < 0 or indices.max() >= cols):
        raise ValueError(f"{path}: layer {name!r} has column indices outside [0, {cols})")
    w = np.zeros((rows, cols), np.float32)
    w[np.repeat(np.arange(rows), np.diff(indptr)), indices] = values.astype(np.float32)
    return w.reshape(shape)


def load_pruned_layers(set_name_or_path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Dense float32 weights of every layer in a set, zeros where pruned.

    Args:
        set_name_or_path: a set name from :func:`list_pruned_sets` or a path to an npz.

    Returns:
        ``{layer name: OIHW tensor}`` in file order; fc layers stay (out, in, 1, 1) as stored.

    Raises:
        FileNotFoundError: unknown set / missing file.
        ValueError: corrupt, truncated or inconsistent file (the message names the path).

    Example:
        >>> w = load_pruned_layers("caffenet_l1_acc56.3")
        >>> tuple(w["conv2"].shape)
        (256, 48, 5, 5)
    """
    path, arrays = _read_set(set_name_or_path)
    names = _layer_names(arrays)
    if not names:
        raise ValueError(f"{path}: no layers found (expected '<layer>.shape' arrays)")
    out = {n: torch.from_numpy(_dense_from_csr(path, n, arrays)) for n in names}
    log.debug("loaded %d pruned layers from %s", len(out), path)
    return out


def load_pruned_biases(set_name_or_path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Biases stored in a set (only the LeNet sets have them); ``{}`` if none."""
    path, arrays = _read_set(set_name_or_path)
    return {k[: -len(".bias")]: torch.from_numpy(np.asarray(v, np.float32))
            for k, v in arrays.items() if k.endswith(".bias")}


def apply_pruned_weights(model: nn.Module, set_name_or_path: str | os.PathLike[str],
                         strict: bool = False) -> list[str]:
    """Copy a set's pruned weights (and biases, if stored) into ``model`` in place.

    Each layer goes to the module with the same qualified name (``model.named_modules()``);
    fc weights stored as (out, in, 1, 1) are reshaped to ``nn.Linear``'s (out, in).

    Args:
        model: the target network (e.g. ``resnet50()``).
        set_name_or_path: set name or npz path.
        strict: if True, a layer of the file with no matching module is an error;
            otherwise it is skipped with a warning. Model layers absent from the file (e.g.
            CaffeNet's fc6-fc8, which the CaffeNet sets do not hold) are always left as is.

    Returns:
        The names of the layers whose weights were set, in file order.

    Raises:
        ValueError: shape mismatch (naming the layer), or a module without a weight.
        KeyError: ``strict`` and a layer has no module in ``model``.

    Example:
        >>> from sparsecnn.models import resnet50
        >>> names = apply_pruned_weights(resnet50(), "resnet50_dlmc_magnitude_pruning_0.9")
        >>> len(names)
        54
    """
    weights = load_pruned_layers(set_name_or_path)
    biases = load_pruned_biases(set_name_or_path)
    modules = dict(model.named_modules())
    applied: list[str] = []
    for name, w in weights.items():
        mod = modules.get(name)
        if mod is None:
            msg = f"layer {name!r} of {set_name_or_path} has no module of that name in {type(model).__name__}"
            if strict:
                raise KeyError(msg)
            log.warning("%s; skipped", msg)
            continue
        target = getattr(mod, "weight", None)
        if not isinstance(target, torch.Tensor):
            raise ValueError(f"layer {name!r}: module {type(mod).__name__} has no weight tensor")
        src = w
        if target.dim() == 2 and w.dim() == 4 and w.shape[2:] == (1, 1):
            src = w.reshape(w.shape[0], w.shape[1])
        if tuple(src.shape) != tuple(target.shape):
            raise ValueError(
                f"layer {name!r}: pruned weight shape {tuple(w.shape)} does not match the "
                f"model's {tuple(target.shape)} ({type(mod).__name__})"
            )
        with torch.no_grad():
            target.copy_(src)
            b = biases.get(name)
            if b is not None and isinstance(getattr(mod, "bias", None), torch.Tensor):
                if tuple(b.shape) != tuple(mod.bias.shape):
                    raise ValueError(f"layer {name!r}: bias shape {tuple(b.shape)} does not "
                                     f"match the model's {tuple(mod.bias.shape)}")
                mod.bias.copy_(b)
        applied.append(name)
    log.info("applied %d pruned layers from %s", len(applied), set_name_or_path)
    return applied
