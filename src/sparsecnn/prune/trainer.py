"""Training driver for ``sparsecnn prune``: dense / ESL / GESL / DNS / GDNS / GMP.

Single process or ``torchrun`` (DDP: gloo on CPU, nccl on CUDA); checkpoints
every epoch atomically and resumes bit-exactly (data order depends only on
``(seed, epoch)``; model, optimiser, scheduler, pruner, GSL and RNG states are
saved).

Example:
    >>> from sparsecnn.prune.trainer import TrainConfig, train
    >>> report = train(TrainConfig(model="tiny_cnn", dataset="synthetic", method="gesl",
    ...                            epochs=2, out="/tmp/gesl-demo"))   # doctest: +SKIP
    >>> report["final"]["test_acc"]                                   # doctest: +SKIP

Outputs in ``out``: ``checkpoint.pt`` (for ``resume``), ``model_pruned.pt``
(finalized state dict), ``masks.pt``, ``report.json``, ``density.png``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from . import _dist
from .gsl import GuidedSparsity, _default_make_spec, input_shapes_from_example
from .masks import finalize, overall_density, prunable_layers, sparsity_report
from .pruners import DNS, ESL, GMP, Pruner
from .roofline import AnalyticRoofline

__all__ = ["TrainConfig", "train", "METHODS"]

log = logging.getLogger(__name__)

METHODS = ("dense", "esl", "gesl", "dns", "gdns", "gmp")
CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """Everything a run depends on (saved in the checkpoint and the report)."""

    model: str = "fmnist_vgg"
    method: str = "gesl"
    epochs: int = 10
    lr: float = 0.05
    optimizer: str = "sgd"  # 'sgd' (momentum 0.9) | 'adam'
    momentum: float = 0.9
    weight_decay: float = 5e-5  # paper: 5e-5 works well alongside the lasso
    lr_schedule: str = "cosine"  # 'cosine' | 'none'
    batch_size: int = 128
    lam: float = 1e-3  # ESL/GESL lasso strength
    fc_multiplier: float | None = None  # None: 0.1 for guided methods, 1.0 otherwise
    c_rate: float = 1.0  # DNS threshold = mean|w| + c_rate*std|w|
    final_sparsity: float = 0.9  # GMP
    warmup_epochs: int = 1  # dense epochs before pruning starts (0 with a pretrained model)
    check_every: int | None = None  # GSL check period in steps; None = every epoch
    patience: int = 2  # GSL: checks a density must stay within tol to be "stabilised"
    tol: float = 0.01
    perf: str = "auto"  # 'auto' (calibrated PerfModel, else analytic) | 'analytic' | 'none'
    infer_batch: int = 16  # batch size the speedup projections are made for
    fit_layers: bool = True  # time the model's conv layers to correct the calibrated model (perf='auto')
    dataset: str = "fashion_mnist"  # | 'synthetic'
    data_dir: str | None = None
    subset: int | None = None
    pretrained: str | None = None  # state dict to start from
    out: str = "runs/prune"
    seed: int = 0
    resume: bool = False
    device: str = "auto"  # 'auto' | 'cpu' | 'cuda'
    workers: int = 0
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**d)


# ------------------------------------------------------------------- factories
def default_model_factory(cfg: TrainConfig) -> nn.Module:
    if cfg.model == "tiny_cnn":
        from .toy import TinyCNN

        return TinyCNN()
    from sparsecnn.models import get_model

    return get_model(cfg.model)


def default_data_factory(cfg: TrainConfig) -> tuple[Dataset, Dataset]:
    if cfg.dataset == "synthetic":
        from .toy import synthetic_datasets

        n = cfg.subset or 512
        return synthetic_datasets(n_train=n, n_test=max(n // 4, 32))
    from sparsecnn.data.fashion_mnist import fashion_mnist_loaders

    # only the datasets are used: the trainer builds its own (seed, epoch)-ordered loaders
    tl, vl = fashion_mnist_loaders(cfg.batch_size, root=cfg.data_dir, subset=cfg.subset,
                                   normalize=True, distributed=False, seed=cfg.seed)
    return tl.dataset, vl.dataset


def default_perf_factory(cfg: TrainConfig) -> Any:
    if cfg.perf == "none":
        return None
    if cfg.perf == "analytic":
        return AnalyticRoofline()
    try:
        from sparsecnn.perf import PerfModel
    except ImportError:
        log.warning("sparsecnn.perf unavailable; using the analytic roofline fallback")
        return AnalyticRoofline()
    # calibrate once (rank 0), the others then load the cached calibration
    if _dist.rank() == 0:
        model = PerfModel.load_or_calibrate()
    if _dist.is_dist():
        dist.barrier()
    if _dist.rank() != 0:
        model = PerfModel.load_or_calibrate()
    return model


# ------------------------------------------------------------------- helpers
def _fit_layers(perf: Any, model: nn.Module, shapes: dict[str, tuple[int, ...]], cfg: TrainConfig,
                saved: dict[str, Any] | None) -> dict[str, Any] | None:
    """Corrects a calibrated perf model with timings of the model's own conv layers at
    ``cfg.infer_batch`` (:meth:`sparsecnn.perf.PerfModel.fit_layers`; rank 0 times, every rank
    gets the result) before GSL takes its useful ranges from it, or applies ``saved`` (a resumed
    run's). Returns the per-layer records of ``fit_layers`` (what a checkpoint keeps), None where
    nothing was fitted (analytic model, ``fit_layers=False``)."""
    if perf is None or not hasattr(perf, "fit_layers") or not (cfg.fit_layers or saved):
        return None
    if saved is None:
        if _dist.rank() == 0:
            make_spec = _default_make_spec(perf)
            specs = [make_spec(m, tuple(shapes[n]), n) for n, m in prunable_layers(model).items()]
            saved = perf.fit_layers(specs, cfg.infer_batch, progress=cfg.progress and sys.stderr.isatty())
        saved = _dist.broadcast_object(saved)
    for rec in saved.values():  # each record holds its layer's key, scales and dense time
        perf.layer_scales[rec["key"]] = (rec["s_fixed"], rec["s_compute"])
        perf.dense[rec["key"]] = rec["t_dense"]
    return saved


def _setup_distributed(cfg: TrainConfig) -> tuple[torch.device, bool]:
    """Init the process group when launched by torchrun; return (device, we_initialised)."""
    want_cuda = cfg.device in ("auto", "cuda") and torch.cuda.is_available()
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    inited = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        inited = True
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local), inited
    return torch.device("cpu"), inited


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"].cpu())
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint intact


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _mask_digest(layers: dict[str, nn.Module]) -> str:
    h = hashlib.sha256()
    for name, m in layers.items():
        mask = getattr(m, "weight_mask", None)
        h.update(name.encode())
        if mask is not None:
            h.update(mask.detach().to("cpu", torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _Projector:
    """Per-layer predicted speedup / useful range, for reporting (any method)."""

    def __init__(self, perf: Any, model: nn.Module, shapes: dict[str, tuple[int, ...]], batch: int):
        self.perf, self.batch, self.specs, self.ranges = perf, batch, {}, {}
        if perf is None:
            return
        make_spec = _default_make_spec(perf)
        for name, m in prunable_layers(model).items():
            self.specs[name] = make_spec(m, shapes[name], name)
            r = perf.useful_range(self.specs[name], batch)
            self.ranges[name] = None if r is None else (float(r[0]), float(r[1]))

    def rows(self, model: nn.Module, gsl: GuidedSparsity | None,
             pruner: Pruner | None) -> list[dict[str, Any]]:
        rows = []
        for r in sparsity_report(model):
            name = r["name"]
            row = {k: r[k] for k in ("name", "type", "shape", "nnz", "density")}
            if self.perf is not None:
                p = self.perf.predict(self.specs[name], r["density"], self.batch)
                rng = self.ranges[name]
                row.update(speedup=float(p.speedup), bound=getattr(p, "bound", None),
                           breakeven_density=None if rng is None else rng[0],
                           saturation_density=None if rng is None else rng[1])
            if gsl is not None and name in gsl.state:
                row["state"] = gsl.state[name]
            elif pruner is not None and name in pruner.layers:
                row["state"] = "active" if pruner.is_enabled(name) else "stopped"
            else:
                row["state"] = "dense"
            rows.append(row)
        return rows


def _make_pruner(cfg: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer,
                 steps_per_epoch: int) -> Pruner | None:
    base = cfg.method.removeprefix("g") if cfg.method in ("gesl", "gdns") else cfg.method
    guided = cfg.method in ("gesl", "gdns")
    fc_mult = cfg.fc_multiplier if cfg.fc_multiplier is not None else (0.1 if guided else 1.0)
    if base == "dense":
        return None
    if base == "esl":
        return ESL(model, lam=cfg.lam, optimizer=opt, fc_multiplier=fc_mult)
    if base == "dns":
        # surgery probability decays to ~1/2 over the pruning phase
        prune_steps = max((cfg.epochs - cfg.warmup_epochs) * steps_per_epoch, 1)
        return DNS(model, c_rate=cfg.c_rate, gamma=1.0 / prune_steps, seed=cfg.seed, fc_multiplier=fc_mult)
    if base == "gmp":
        prune_steps = max((cfg.epochs - cfg.warmup_epochs) * steps_per_epoch, 2)
        end = max(int(0.75 * prune_steps), 1)  # last quarter: fine-tune at final sparsity
        return GMP(model, final_sparsity=cfg.final_sparsity, start_step=0, end_step=end,
                   frequency=max(steps_per_epoch // 10, 1), fc_multiplier=fc_mult)
    raise ValueError(f"unknown method {cfg.method!r}; choose from {METHODS}")


@torch.no_grad()
def _evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, count = 0.0, 0.0, 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += float((out.argmax(1) == y).sum())
        count += y.numel()
    loss_sum, correct, count = _dist.all_reduce_sum([loss_sum, correct, count])
    model.train()
    return loss_sum / max(count, 1), correct / max(count, 1)


def plot_density(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Bar chart of per-layer density over the shaded useful range (paper Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(rows) + 2) + 1.8, 3.6))  # + the legend on the right
    xs = np.arange(len(rows))
    for i, r in enumerate(rows):
        be, sat = r.get("breakeven_density"), r.get("saturation_density")
        if be is not None:
            ax.fill_between([i - 0.45, i + 0.45], sat, be, color="tab:green", alpha=0.25, lw=0,
                            label="useful range" if i == 0 or "useful range" not in
                            ax.get_legend_handles_labels()[1] else None)
    from matplotlib.patches import Patch

    colors = {"excluded": "tab:gray", "restored": "tab:orange", "saturated": "tab:purple"}
    names = {"excluded": "excluded (no speedup)", "restored": "restored (dense)", "saturated": "stopped (saturated)"}
    states = [r.get("state") or "" for r in rows]
    ax.bar(xs, [r["density"] for r in rows], width=0.5, color=[colors.get(st, "tab:blue") for st in states])
    handles = ax.get_legend_handles_labels()[0] + [  # one entry per layer state shown
        Patch(color=colors.get(st, "tab:blue"), label=names.get(st, st or "pruned")) for st in sorted(set(states))]
    ax.set_yscale("log")
    ax.set_ylim(1e-3, 1.2)
    ax.set_xticks(xs, [r["name"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("non-zero density")
    ax.set_title(title, fontsize=9)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------- main loop
def train(
    config: TrainConfig | dict[str, Any],
    *,
    model_factory: Callable[[TrainConfig], nn.Module] | None = None,
    data_factory: Callable[[TrainConfig], tuple[Dataset, Dataset]] | None = None,
    perf_factory: Callable[[TrainConfig], Any] | None = None,
    epoch_callback: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train/prune a model and write its outputs; returns the report dict.

    Args:
        config: a :class:`TrainConfig` or a dict of its fields.
        model_factory: ``cfg -> nn.Module`` (default: ``tiny_cnn`` or ``sparsecnn.models.get_model``).
        data_factory: ``cfg -> (train_dataset, test_dataset)`` (tests inject tiny datasets).
        perf_factory: ``cfg -> perf model`` (PerfModel duck type, or None).
        epoch_callback: called on every rank as ``(epoch, epoch_record)`` after the
            epoch's checkpoint is written (tests use it to simulate a kill).
    """
    cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose from {METHODS}")
    device, inited = _setup_distributed(cfg)
    try:
        return _train(cfg, device, model_factory or default_model_factory,
                      data_factory or default_data_factory, perf_factory or default_perf_factory,
                      epoch_callback)
    finally:
        if inited:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, device: torch.device, model_factory, data_factory, perf_factory,
           epoch_callback) -> dict[str, Any]:
    t0 = time.time()
    rank, world = _dist.rank(), _dist.world_size()
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    _seed_all(cfg.seed)

    train_ds, test_ds = data_factory(cfg)
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler,
                              num_workers=cfg.workers, pin_memory=device.type == "cuda")
    test_part = Subset(test_ds, list(range(rank, len(test_ds), world)))  # no padding: exact accuracy
    test_loader = DataLoader(test_part, batch_size=max(cfg.batch_size, 256), shuffle=False,
                             num_workers=cfg.workers)

    model = model_factory(cfg)
    if cfg.pretrained:
        model.load_state_dict(torch.load(cfg.pretrained, map_location="cpu"))
    model.to(device)
    example = train_ds[0][0].unsqueeze(0).to(device)
    shapes = input_shapes_from_example(model, example)

    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
    # Pruners attach masks after this; weight_orig is the *same* Parameter object as
    # weight, so the optimizer keeps tracking it.
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
             if cfg.lr_schedule == "cosine" else None)

    ckpt_path = out / CHECKPOINT
    ck = None
    if cfg.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck["config"]["method"] != cfg.method or ck["config"]["model"] != cfg.model:
            raise ValueError("checkpoint was written by a different method/model")

    perf = perf_factory(cfg)
    # a resumed run keeps the layer timings it started with: GSL's ranges must not move
    layer_fits = _fit_layers(perf, model, shapes, cfg, None if ck is None else ck.get("layer_fits"))
    pruner = _make_pruner(cfg, model, opt, len(train_loader))
    gsl = None
    if cfg.method in ("gesl", "gdns"):
        if perf is None:
            raise ValueError("guided methods need a performance model (perf != 'none')")
        gsl = GuidedSparsity(pruner, perf, shapes, batch=cfg.infer_batch, check_every=cfg.check_every,
                             patience=cfg.patience, tol=cfg.tol, optimizer=opt)
    ctrl = gsl if gsl is not None else pruner
    projector = _Projector(perf, model, shapes, cfg.infer_batch)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if sched is not None and ck.get("scheduler") is not None:
            sched.load_state_dict(ck["scheduler"])
        if pruner is not None:
            pruner.load_state_dict(ck["pruner"])
        if gsl is not None:
            gsl.load_state_dict(ck["gsl"])
        _set_rng_state(ck["rng"])
        history = ck["history"]
        start_epoch = ck["epoch"] + 1
        log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)
    elif cfg.resume:
        log.info("no checkpoint in %s; starting fresh", out)

    net: nn.Module = model
    if _dist.is_dist():
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    from tqdm.auto import tqdm

    show = cfg.progress and rank == 0 and sys.stderr.isatty()
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)  # data order depends only on (seed, epoch)
        pruning = ctrl is not None and epoch >= cfg.warmup_epochs
        if gsl is not None and pruning:
            gsl.start()  # snapshot of the dense weights to restore from
        net.train()
        loss_sum, correct, count = 0.0, 0.0, 0.0
        te = time.time()
        bar = tqdm(train_loader, desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}", disable=not show,
                   leave=False)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            if pruning:
                ctrl.step()
            loss_sum += loss.item() * y.numel()
            correct += float((logits.argmax(1) == y).sum())
            count += y.numel()
            if show:
                bar.set_postfix(loss=f"{loss_sum / count:.3f}", density=f"{overall_density(model):.3f}",
                                refresh=False)
        if sched is not None:
            sched.step()
        if pruning:
            ctrl.on_epoch_end(epoch)
        _dist.sync_module_from_rank0(model)  # guard against any cross-rank drift
        loss_sum, correct, count = _dist.all_reduce_sum([loss_sum, correct, count])
        test_loss, test_acc = _evaluate(net, test_loader, device)
        rows = projector.rows(model, gsl, pruner)
        rec = {
            "epoch": epoch,
            "pruning": pruning,
            "lr": opt.param_groups[0]["lr"],
            "train_loss": loss_sum / max(count, 1),
            "train_acc": correct / max(count, 1),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "overall_density": overall_density(model),
            "layers": [{k: r.get(k) for k in ("name", "density", "speedup", "state")} for r in rows],
            "time_s": time.time() - te,
        }
        history.append(rec)
        log.info("epoch %d/%d loss %.4f train %.4f test %.4f density %.4f (%.1fs)", epoch + 1, cfg.epochs,
                 rec["train_loss"], rec["train_acc"], test_acc, rec["overall_density"], rec["time_s"])
        if rank == 0:
            _atomic_save({
                "epoch": epoch,
                "config": dataclasses.asdict(cfg),
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": None if sched is None else sched.state_dict(),
                "pruner": None if pruner is None else pruner.state_dict(),
                "gsl": None if gsl is None else gsl.state_dict(),
                "rng": _rng_state(),
                "history": history,
                "layer_fits": layer_fits,
            }, ckpt_path)
        if _dist.is_dist():
            dist.barrier()
        if epoch_callback is not None:
            epoch_callback(epoch, rec)

    # ---- final outputs
    layers = pruner.layers if pruner is not None else prunable_layers(model)
    digest = _mask_digest(layers)
    digests = [digest]
    if _dist.is_dist():
        digests = [None] * world
        dist.all_gather_object(digests, digest)
    rows = projector.rows(model, gsl, pruner)
    test_loss, test_acc = _evaluate(net, test_loader, device)
    masks = {n: m.weight_mask.detach().cpu().bool() for n, m in layers.items() if hasattr(m, "weight_mask")}
    finalize(model)
    report = {
        "config": dataclasses.asdict(cfg),
        "world_size": world,
        "device": str(device),
        "epochs_run": len(history),
        "history": history,
        "final": {"test_acc": test_acc, "test_loss": test_loss, "overall_density": overall_density(model),
                  "layers": rows},
        "decisions": [] if gsl is None else gsl.decisions,
        "layer_fits": layer_fits,
        "mask_digests": digests,
        "ranks_agree": len(set(digests)) == 1,
        "files": {k: str(out / v) for k, v in (("model", "model_pruned.pt"), ("masks", "masks.pt"),
                                                ("report", "report.json"), ("plot", "density.png"),
                                                ("checkpoint", CHECKPOINT))},
        "time_s": time.time() - t0,
    }
    if not report["ranks_agree"]:
        log.error("ranks disagree on the final masks: %s", digests)
    if rank == 0:
        _atomic_save(model.state_dict(), out / "model_pruned.pt")
        _atomic_save(masks, out / "masks.pt")
        _atomic_write_text(json.dumps(report, indent=2, default=str), out / "report.json")
        plot_density(rows, out / "density.png",
                     title=f"{cfg.model} {cfg.method.upper()}  acc {100 * test_acc:.2f}%  "
                           f"density {report['final']['overall_density']:.3f}")
    if _dist.is_dist():
        dist.barrier()
    return report
