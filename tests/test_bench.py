"""Tests of the layer benchmark (``sparsecnn bench layers``): quick mode only, < 60 s."""

from __future__ import annotations

import argparse
import json
import statistics
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsecnn.bench import cli as bench_cli
from sparsecnn.bench.layers import break_even_density, format_layer_table, run_layer_bench

import sparsecnn  # noqa: E402

# subprocesses import the same sparsecnn as this process (the installed copy has the core)
SRC = Path(sparsecnn.__file__).resolve().parents[1]
ROW_KEYS = {
    "layer", "batch", "density", "nnz", "mask", "t_sparse_ms", "t_dense_ms", "t_lowered_ms",
    "speedup_vs_dense", "speedup_vs_lowered", "gflops_sparse_eff", "gflops_dense", "gflops_nonzero",
    "overhead_a", "max_rel_err", "set",
}
META_KEYS = {"cpu", "isa", "torch", "threads", "sgemm_gflops", "repeats", "set"}


def _require_pruned() -> None:
    """Skip when the pruned weights (../shared/data/pruned or $SPARSECNN_PRUNED_DIR) are absent:
    the layer sets take their shapes and masks from them."""
    from sparsecnn.models.pruned import pruned_dir

    try:
        pruned_dir()
    except FileNotFoundError as e:
        pytest.skip(f"pruned weights not available: {e}")


@pytest.fixture(scope="module")
def quick_result():
    _require_pruned()
    return run_layer_bench("sweep", batches=(1,), densities=(0.1, 0.6), quick=True,
                           layers=["caffenet.conv5"], threads=1, progress=False)


def test_quick_rows_consistent(quick_result):
    rows = quick_result["rows"]
    assert len(rows) == 2
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert r["layer"] == "caffenet.conv5" and r["mask"] == "random" and r["batch"] == 1
        assert r["t_sparse_ms"] > 0 and r["t_dense_ms"] > 0 and r["t_lowered_ms"] > 0
        assert r["speedup_vs_dense"] == pytest.approx(r["t_dense_ms"] / r["t_sparse_ms"])
        assert r["speedup_vs_lowered"] == pytest.approx(r["t_lowered_ms"] / r["t_sparse_ms"])
        assert r["max_rel_err"] < 1e-4
        assert r["nnz"] > 0 and abs(r["density"] - r["target_density"]) < 0.05
        # a = F_sgemm / nonzero GFLOP/s, nonzero FLOPs = 2 nnz N OH OW
        nz = 2.0 * r["nnz"] * r["batch"] * r["output_hw"][0] * r["output_hw"][1]
        assert r["gflops_nonzero"] == pytest.approx(nz / (r["t_sparse_ms"] * 1e6))
        assert r["overhead_a"] == pytest.approx(quick_result["meta"]["sgemm_gflops"] / r["gflops_nonzero"])
    meta = quick_result["meta"]
    assert META_KEYS <= set(meta) and meta["threads"] == 1 and meta["sgemm_gflops"] > 0
    # F_sgemm: the larger of the readings before and after the layers
    assert len(meta["sgemm_gflops_readings"]) == 2 and meta["sgemm_gflops"] == max(meta["sgemm_gflops_readings"])
    assert len(quick_result["break_even"]) == 1
    assert quick_result["break_even"][0]["status"] in ("interpolated", "always_faster", "never_faster")


def test_table_formats(quick_result):
    text = format_layer_table(quick_result)
    assert "caffenet.conv5" in text and "threads 1" in text and "SGEMM" in text
    assert "Break-even" in text
    json.dumps(quick_result)  # JSON-serialisable


def test_break_even_interpolation():
    assert break_even_density([(0.1, 1.0, 4.0), (0.5, 5.0, 4.0)])["density"] == pytest.approx(0.4)
    assert break_even_density([(0.1, 1.0, 4.0), (1.0, 3.0, 4.0)])["status"] == "always_faster"
    assert break_even_density([(0.1, 5.0, 4.0), (1.0, 9.0, 4.0)])["status"] == "never_faster"


def test_bad_arguments():
    with pytest.raises(ValueError):
        run_layer_bench("nope")
    with pytest.raises(ValueError):
        run_layer_bench("sweep", densities=(1.5,), quick=True, progress=False)


def test_cuda_errors_clearly(monkeypatch):
    import torch

    _require_pruned()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        run_layer_bench("sweep", densities=(0.1,), batches=(1,), layers=["conv5"], device="cuda", progress=False)


def test_bench_parser_dispatch():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    bench_cli.add_parser(sub)
    a = p.parse_args(["bench", "layers", "--set", "resnet50", "--batch", "1", "16", "--json", "-", "--quick"])
    assert (a.bench_command, a.set, a.batch, a.json, a.quick) == ("layers", "resnet50", [1, 16], "-", True)
    assert a.func is bench_cli.run
    a = p.parse_args(["bench", "model", "caffenet", "--repeats", "3"])
    assert (a.bench_command, a.name, a.repeats) == ("model", "caffenet", 3)


def _cli_cmd() -> list[str]:
    """``python -m sparsecnn.cli`` if the full CLI imports, else the standalone bench CLI."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    probe = subprocess.run([sys.executable, "-c", "import sparsecnn.cli as c; c.build_parser()"],
                           env=env, capture_output=True, text=True, timeout=60)
    if probe.returncode == 0:
        return [sys.executable, "-m", "sparsecnn.cli", "bench"]
    return [sys.executable, "-m", "sparsecnn.bench.cli"]


def test_cli_layers_json():
    _require_pruned()
    env = dict(os.environ, PYTHONPATH=str(SRC))
    cmd = _cli_cmd() + ["layers", "--set", "caffenet", "--quick", "--json", "-"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert {"meta", "rows", "break_even", "summary"} <= set(res)
    assert META_KEYS <= set(res["meta"])
    assert [r["layer"] for r in res["rows"]] == [f"caffenet.conv{i}" for i in range(1, 6)]
    for r in res["rows"]:
        assert ROW_KEYS <= set(r) and r["mask"] == "real" and r["batch"] == 1
        assert r["speedup_vs_dense"] == pytest.approx(r["t_dense_ms"] / r["t_sparse_ms"])
    assert "caffenet_conv2_5_geomean_speedup_batch1" in res["summary"]


def test_cli_error_is_one_line(capsys):
    _require_pruned()
    rc = bench_cli.main(["layers", "--set", "caffenet", "--weights", "no_such_set", "--quick", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no_such_set" in err and "Traceback" not in err


def test_gsl_table_over_real_runs(tmp_path):
    """`sparsecnn bench gsl`: two tiny fmnist_vgg runs of the trainer, measured end to end."""
    from sparsecnn.bench.gsl import format_gsl_table, run_gsl_table
    from sparsecnn.models import get_model
    from sparsecnn.prune import AnalyticRoofline
    from sparsecnn.prune.toy import synthetic_datasets
    from sparsecnn.prune.trainer import TrainConfig, train

    for method in ("gesl", "dense"):
        cfg = TrainConfig(model="fmnist_vgg", dataset="synthetic", method=method, epochs=1, batch_size=32,
                          lam=0.05, warmup_epochs=0, perf="analytic", out=str(tmp_path / method), seed=1,
                          progress=False)
        train(cfg, model_factory=lambda c: get_model(c.model),
              data_factory=lambda c: synthetic_datasets(n_train=96, n_test=32, seed=2),
              perf_factory=lambda c: AnalyticRoofline())
    (tmp_path / "not_a_run").mkdir()
    res = run_gsl_table(tmp_path, batches=(1, 2), repeats=1, threads=1, policy="all")
    assert [r["name"] for r in res["runs"]] == ["dense", "gesl"]  # table order, non-runs skipped
    assert res["dense_acc"] == res["runs"][0]["test_acc"]
    for r in res["runs"]:
        assert [L["name"] for L in r["layers"]][:2] == ["features.conv1", "features.conv2"]
        for b in ("1", "2"):
            sp = r["speed"][b]
            assert sp["speedup"] == pytest.approx(sp["dense_ms"] / sp["sparse_ms"])
            assert sp["speedup_vs_folded"] == pytest.approx(sp["folded_ms"] / sp["sparse_ms"])
    text = format_gsl_table(res)
    assert "| gesl | gesl |" in text and "speedup b2" in text
    json.dumps(res)
    # rounds: every run measured round-robin, each figure the median over the rounds
    res3 = run_gsl_table(tmp_path, batches=(1,), repeats=1, threads=1, policy="all", rounds=3)
    for r in res3["runs"]:
        sp = r["speed"]["1"]
        assert len(sp["speedup_rounds"]) == 3 and sp["speedup"] == statistics.median(sp["speedup_rounds"])
    assert "median over 3 rounds" in format_gsl_table(res3)
    with pytest.raises(FileNotFoundError):
        run_gsl_table(tmp_path / "missing")


def test_ab_resnet_shape_mode(tmp_path, capsys):
    """benchmarks/ab_resnet.py --shape: one build against itself on a random-mask layer, checked
    against conv2d, both medians reported (table and JSON)."""
    import importlib.util
    import sys

    bench_dir = Path(__file__).parents[1] / "benchmarks"
    sys.path.insert(0, str(bench_dir))  # ab_resnet imports ab_core's loader
    try:
        spec = importlib.util.spec_from_file_location("ab_resnet", bench_dir / "ab_resnet.py")
        ab = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ab)
    finally:
        sys.path.remove(str(bench_dir))
    core = sparsecnn._core.__file__
    out = tmp_path / "ab.json"
    assert ab.main([core, core, "--shape", "24", "7", "--densities", "0.2,0.5", "--batch", "16", "--threads", "1",
                    "--rounds", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert len(res["layers"]) == 2
    for t in res["layers"].values():
        assert t["old"] > 0 and t["new"] > 0
    assert "sum" in capsys.readouterr().out


def test_ab_core_compares_two_loaded_builds(tmp_path, capsys):
    """benchmarks/ab_core.py loads a core file twice side by side, checks both against conv2d
    and reports both timings; the same build against itself gives matching results."""
    _require_pruned()
    import importlib.util

    spec = importlib.util.spec_from_file_location("ab_core", Path(__file__).parents[1] / "benchmarks" / "ab_core.py")
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    core = sparsecnn._core.__file__
    out = tmp_path / "ab.json"
    assert ab.main([core, core, "--batch", "2", "--threads", "1", "--rounds", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["layers"]) == {"conv2", "conv3", "conv4", "conv5"}
    for r in res["layers"].values():
        assert r["dense"] > 0
        for state in ("warm", "after_dense"):
            assert r[state]["old"] > 0 and r[state]["new"] > 0
    assert res["geomean"]["warm"]["old"] > 0 and res["geomean"]["after_dense"]["new"] > 0
    assert "geomean speedup" in capsys.readouterr().out


def test_ab_core_random_masks_at_a_density(tmp_path):
    """``ab_core.py --density`` compares the builds on the 3x3 shapes with random masks (no
    pruned weights needed), the stride-1 ones unless ``--shapes`` names others."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ab_core", Path(__file__).parents[1] / "benchmarks" / "ab_core.py")
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    core = sparsecnn._core.__file__
    out = tmp_path / "ab.json"
    assert ab.main([core, core, "--batch", "1", "--threads", "1", "--rounds", "1", "--density", "0.05",
                    "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["layers"]) == set(ab.DEFAULT_SHAPES)
    for r in res["layers"].values():
        assert r["warm"]["old"] > 0 and r["warm"]["new"] > 0
    # a stride-2 shape, named: its output is checked against conv2d's too
    assert ab.main([core, core, "--batch", "1", "--threads", "1", "--rounds", "1", "--density", "0.05",
                    "--shapes", "r14s2", "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())["layers"]) == {"r14s2"}


def test_channels_last_benchmark(tmp_path, capsys):
    """benchmarks/channels_last.py: the five variants of a pruned CaffeNet, each checked against
    the dense model before it is timed, speedups against the dense model of the same format."""
    _require_pruned()
    import importlib.util

    spec = importlib.util.spec_from_file_location("channels_last", Path(__file__).parents[1] / "benchmarks" / "channels_last.py")
    cl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cl)
    out = tmp_path / "cl.json"
    assert cl.main(["--model", "caffenet", "--weights", "caffenet_l1_acc56.3", "--batch", "1", "--threads", "1",
                    "--rounds", "1", "--json", str(out)]) == 0
    rows = {r["case"]: r for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == 5 and all(r["ms"] > 0 for r in rows.values())
    assert rows["dense NCHW"]["speedup_over_dense_same_format"] == 1.0
    assert "sparse channels-last, format kept" in capsys.readouterr().out


def test_channels_last_layer_costs(tmp_path):
    """benchmarks/channels_last.py --layers: the core's NCHW and channels-last outputs agree
    before they are timed, on every shape."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("channels_last", Path(__file__).parents[1] / "benchmarks" / "channels_last.py")
    cl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cl)
    out = tmp_path / "layers.json"
    assert cl.main(["--layers", "0.02", "--batch", "1", "--threads", "1", "--rounds", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["layers"]
    assert [r["layer"] for r in rows] == list(cl.LAYER_SHAPES)
    assert all(r["nchw_out"] > 0 and r["channels_last_out"] > 0 for r in rows)
