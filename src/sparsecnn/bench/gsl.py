"""The guided-sparsity bar table: accuracy, per-layer density and measured end-to-end speed of
the runs of ``sparsecnn prune`` (dense, GMP, ESL, GESL, DNS, GDNS) side by side.

Each run directory holds the trainer's ``report.json`` (test accuracy, per-layer density and
GSL state) and ``model_pruned.pt``; the speed of every pruned model is measured with
:func:`sparsecnn.bench.model.run_model_bench` (dense torch vs :func:`sparsecnn.sparsify`'d, in
one process, same threads, median of ``repeats``), all runs in the same process one after the
other.

Example:
    >>> from sparsecnn.bench.gsl import run_gsl_table, format_gsl_table
    >>> res = run_gsl_table("runs/gsl", batches=(1, 16))   # doctest: +SKIP
    >>> print(format_gsl_table(res))                        # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["METHOD_ORDER", "format_gsl_table", "run_gsl_table"]

log = logging.getLogger(__name__)

#: row order of the table (other run directories follow alphabetically)
METHOD_ORDER = ("dense", "gmp", "esl", "gesl", "dns", "gdns")


def _runs(root: Path) -> list[Path]:
    dirs = [d for d in root.iterdir() if (d / "report.json").is_file() and (d / "model_pruned.pt").is_file()]
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(dirs, key=lambda d: (rank.get(d.name, len(rank)), d.name))


def run_gsl_table(runs_dir: str | Path, batches: Sequence[int] = (1, 16), repeats: int = 20,
                  threads: int | None = None, policy: str = "measure", rounds: int = 1) -> dict[str, Any]:
    """Collect every run under ``runs_dir`` and measure its end-to-end speed.

    With ``rounds > 1`` every run is measured ``rounds`` times, round-robin over the runs, and
    each figure is the median over the rounds (``speedup_rounds`` keeps them all): on a machine
    whose speed drifts, one pass would favour whichever run was measured in a good moment.

    Returns ``{"runs": [{"name", "method", "config", "test_acc", "overall_density",
    "layers": [{"name", "density", "state"}], "speed": {batch: {"dense_ms", "sparse_ms",
    "speedup", "speedup_rounds", ...}}}], "dense_acc", "threads", "policy", "repeats", "rounds"}``.
    """
    from sparsecnn.bench.model import run_model_bench

    root = Path(runs_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no run directory {root}")
    rounds = max(1, int(rounds))
    out: dict[str, Any] = {"runs_dir": str(root), "policy": policy, "repeats": repeats, "rounds": rounds, "runs": []}
    dirs = _runs(root)
    reports = {d.name: json.loads((d / "report.json").read_text(encoding="utf-8")) for d in dirs}
    benches: dict[str, list[dict[str, Any]]] = {d.name: [] for d in dirs}
    for k in range(rounds):
        for d in dirs:
            cfg = reports[d.name].get("config", {})
            log.info("measuring %s (%s), round %d/%d", d.name, cfg.get("method"), k + 1, rounds)
            benches[d.name].append(run_model_bench(cfg.get("model", "fmnist_vgg"), weights=str(d / "model_pruned.pt"),
                                                   batches=batches, repeats=repeats, threads=threads, policy=policy))
    for d in dirs:
        cfg = reports[d.name].get("config", {})
        final = reports[d.name].get("final", {})
        bench = benches[d.name][0]
        out["threads"] = bench["threads"]
        out["isa"] = bench["isa"]
        out["runs"].append({
            "name": d.name, "method": cfg.get("method"), "model": cfg.get("model", "fmnist_vgg"),
            "config": {k: cfg.get(k) for k in ("epochs", "lr", "lam", "final_sparsity", "c_rate", "pretrained",
                                               "fc_multiplier", "infer_batch")},
            "test_acc": final.get("test_acc"), "overall_density": final.get("overall_density"),
            "layers": [{"name": L["name"], "density": L["density"], "state": L.get("state")}
                       for L in final.get("layers", [])],
            "speed": {str(b["batch"]): _median_speed([bb["batches"][i] for bb in benches[d.name]])
                      for i, b in enumerate(bench["batches"])},
        })
    dense = [r for r in out["runs"] if r["method"] == "dense"]
    out["dense_acc"] = dense[0]["test_acc"] if dense else None
    return out


def _median_speed(per_round: list[dict[str, Any]]) -> dict[str, Any]:
    """One batch's figures over the rounds: the median of each (the round-by-round speedups kept)."""
    med = {k: statistics.median(r[k] for r in per_round)
           for k in ("dense_ms", "folded_ms", "sparse_ms", "speedup", "speedup_vs_folded")}
    med["n_sparse"] = per_round[0]["n_sparse"]
    med["speedup_rounds"] = [r["speedup"] for r in per_round]
    return med


def format_gsl_table(res: dict[str, Any]) -> str:
    """Markdown table: method, accuracy (and its gap to dense), per-layer density, speedups."""
    runs = res["runs"]
    if not runs:
        return "no runs"
    layer_names = [L["name"].split(".")[-1] for L in runs[0]["layers"]]
    batches = sorted({int(b) for r in runs for b in r["speed"]})
    head = (["run", "method", "top-1 %", "vs dense"] + [f"{n} density" for n in layer_names]
            + [f"speedup b{b} (vs BN-folded)" for b in batches])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    dacc = res.get("dense_acc")
    for r in runs:
        acc = r["test_acc"]
        gap = "-" if dacc is None or acc is None else f"{100 * (acc - dacc):+.2f}"
        dens = [f"{L['density']:.3f}" + ("" if L.get("state") in (None, "dense", "active") else f" ({L['state']})")
                for L in r["layers"]]
        sp = [f"{r['speed'][str(b)]['speedup']:.2f}x ({r['speed'][str(b)]['speedup_vs_folded']:.2f}x)"
              if str(b) in r["speed"] else "-" for b in batches]
        lines.append("| " + " | ".join([r["name"], str(r["method"]), "-" if acc is None else f"{100 * acc:.2f}", gap]
                                       + dens + sp) + " |")
    lines.append("")
    lines.append(f"speedup: end to end over the dense torch model (in brackets: over the same model with BN "
                 f"folded, no sparse kernels); sparsecnn.sparsify(policy={res['policy']}), {res.get('threads')} "
                 f"threads, median of {res['repeats']}"
                 + (f", median over {res['rounds']} rounds" if res.get("rounds", 1) > 1 else "")
                 + f", isa {res.get('isa')}")
    return "\n".join(lines)
