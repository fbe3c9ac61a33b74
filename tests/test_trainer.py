"""The pruning trainer: short runs, kill-and-resume exactness, torchrun on CPU, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src"
try:
    import sparsecnn.prune  # noqa: F401
except ImportError:
    sys.path.insert(0, str(SRC))

from sparsecnn.prune import AnalyticRoofline  # noqa: E402
from sparsecnn.prune.cli import add_parser, config_from_args, format_table  # noqa: E402
from sparsecnn.prune.toy import TinyCNN, synthetic_datasets  # noqa: E402
from sparsecnn.prune.trainer import TrainConfig, train  # noqa: E402


def tiny_data(cfg):
    return synthetic_datasets(n_train=192, n_test=64, seed=7)


def tiny_model(cfg):
    return TinyCNN(width=8)


def config(out: Path, **kw) -> TrainConfig:
    base = dict(model="tiny_cnn", dataset="synthetic", method="gesl", epochs=2, batch_size=32, lr=0.05,
                lam=0.1, warmup_epochs=0, check_every=3, patience=3, perf="analytic",
                out=str(out), seed=3, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def run(cfg, **kw):
    return train(cfg, model_factory=tiny_model, data_factory=tiny_data,
                 perf_factory=lambda c: AnalyticRoofline(), **kw)


def test_two_epoch_run_writes_outputs(tmp_path):
    rep = run(config(tmp_path))
    assert rep["epochs_run"] == 2 and len(rep["history"]) == 2
    assert set(rep["history"][0]) >= {"train_loss", "test_acc", "overall_density", "layers"}
    assert rep["history"][-1]["layers"][1]["speedup"] is not None
    for f in ("checkpoint.pt", "model_pruned.pt", "masks.pt", "report.json", "density.png"):
        assert (tmp_path / f).stat().st_size > 0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["final"]["overall_density"] == pytest.approx(rep["final"]["overall_density"])
    states = {r["name"]: r["state"] for r in rep["final"]["layers"]}
    # the analytic roofline excludes the 1-channel first conv and the fc layer (paper: conv1, fc)
    assert states["features.0"] == "excluded" and states["classifier.1"] == "excluded"
    assert any(d["action"] == "exclude" for d in rep["decisions"])
    dens = {r["name"]: r["density"] for r in rep["final"]["layers"]}
    assert dens["features.0"] == 1.0 and dens["features.2"] < 1.0
    # finalized: loads into a plain model, zeros baked in
    m = TinyCNN(width=8)
    m.load_state_dict(torch.load(tmp_path / "model_pruned.pt"))
    masks = torch.load(tmp_path / "masks.pt")
    assert torch.all(m.features[2].weight[~masks["features.2"]] == 0)
    assert "features.2" in format_table(rep)


class Killed(Exception):
    pass


@pytest.mark.parametrize("method", ["gesl", "gdns", "gmp"])
def test_kill_and_resume_gives_identical_masks(tmp_path, method):
    cfg = config(tmp_path / "full", method=method, epochs=3, final_sparsity=0.7, c_rate=0.5)
    full = run(cfg)

    def kill_after_first(epoch, rec):
        if epoch == 0:
            raise Killed

    part = dataclasses.replace(cfg, out=str(tmp_path / "part"))
    with pytest.raises(Killed):
        run(part, epoch_callback=kill_after_first)
    assert (tmp_path / "part" / "checkpoint.pt").exists()
    assert not (tmp_path / "part" / "masks.pt").exists()
    resumed = run(dataclasses.replace(part, resume=True))

    m_full = torch.load(tmp_path / "full" / "masks.pt")
    m_res = torch.load(tmp_path / "part" / "masks.pt")
    assert m_full.keys() == m_res.keys()
    for k in m_full:
        assert torch.equal(m_full[k], m_res[k]), k
    w_full = torch.load(tmp_path / "full" / "model_pruned.pt")
    w_res = torch.load(tmp_path / "part" / "model_pruned.pt")
    for k in w_full:
        assert torch.equal(w_full[k], w_res[k]), k
    assert resumed["decisions"] == full["decisions"]
    assert [h["test_acc"] for h in resumed["history"]] == [h["test_acc"] for h in full["history"]]
    assert min(h["overall_density"] for h in full["history"]) < 1.0


def test_resume_of_finished_run_is_a_noop(tmp_path):
    cfg = config(tmp_path, method="esl", epochs=1)
    first = run(cfg)
    again = run(dataclasses.replace(cfg, resume=True))
    assert again["epochs_run"] == 1
    assert again["final"]["overall_density"] == first["final"]["overall_density"]


def test_torchrun_two_processes_cpu(tmp_path):
    """GDNS under torchrun with the calibrated model (a 1-thread calibration: its own cache entry)."""
    out = tmp_path / "ddp"
    # The subprocesses must import the same sparsecnn as this process (an installed copy has the
    # compiled core; the source tree may not).
    import sparsecnn

    pkg_root = str(Path(sparsecnn.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([pkg_root, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "sparsecnn.prune.cli", "--model", "tiny_cnn", "--dataset", "synthetic", "--subset", "128",
           "--method", "gdns", "--epochs", "2", "--batch-size", "16", "--warmup-epochs", "0",
           "--check-every", "2", "--perf", "auto", "--device", "cpu", "--no-progress",
           "--out", str(out), "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["world_size"] == 2
    assert rep["ranks_agree"] and len(rep["mask_digests"]) == 2
    # rank 0 timed the conv layers for the calibrated model, every rank took its ranges from them
    assert set(rep["layer_fits"]) == {"features.0", "features.2", "features.5"}
    assert rep["final"]["overall_density"] < 1.0
    assert (out / "density.png").exists()


def test_cli_parser_roundtrip():
    parser = argparse.ArgumentParser(prog="sparsecnn")
    sub = parser.add_subparsers(dest="cmd")
    add_parser(sub)
    args = parser.parse_args(["prune", "--model", "fmnist_vgg", "--method", "gdns", "--epochs", "4",
                              "--out", "/tmp/x", "--resume", "--subset", "1000", "--data-dir", "/d", "--json"])
    cfg = config_from_args(args)
    assert (cfg.model, cfg.method, cfg.epochs, cfg.out, cfg.resume, cfg.subset, cfg.data_dir) == (
        "fmnist_vgg", "gdns", 4, "/tmp/x", True, 1000, "/d")
    assert args.json and callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["prune", "--method", "magic"])


def test_fmnist_vgg_smoke(tmp_path):
    """Integration with the real model zoo (runs once sparsecnn.models exists)."""
    models = pytest.importorskip("sparsecnn.models")
    cfg = config(tmp_path, model="fmnist_vgg", epochs=1, batch_size=64)
    rep = train(cfg, data_factory=tiny_data, perf_factory=lambda c: AnalyticRoofline(),
                model_factory=lambda c: models.get_model(c.model))
    assert rep["epochs_run"] == 1 and rep["final"]["layers"]


@pytest.mark.slow
def test_calibrated_perf_model_smoke(tmp_path):
    """GESL driven by the calibrated PerfModel (runs once sparsecnn.perf exists)."""
    pytest.importorskip("sparsecnn.perf")
    rep = train(config(tmp_path, perf="auto", epochs=1), model_factory=tiny_model, data_factory=tiny_data)
    assert rep["final"]["layers"][0]["speedup"] is not None


def test_gsl_ranges_come_from_the_timed_layers_and_survive_resume(tmp_path, monkeypatch):
    """With a calibrated-type model, the trainer times the conv layers at infer_batch first and
    GSL's useful ranges are the corrected model's; a resumed run reuses those timings."""
    from sparsecnn.perf import LayerSpec, PerfModel
    from sparsecnn.prune.gsl import input_shapes_from_example

    threads = torch.get_num_threads()

    def perf(c):  # a fixed cost far too high: the timings must correct it
        return PerfModel.synthetic(F=1e11, B=2e10, t0=1e-3, threads=threads)

    cfg = config(tmp_path, epochs=2, infer_batch=2)

    def kill_after_first(epoch, rec):
        if epoch == 0:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, model_factory=tiny_model, data_factory=tiny_data, perf_factory=perf,
              epoch_callback=kill_after_first)

    def no_refit(*a, **k):
        raise AssertionError("the resumed run timed the layers again")

    monkeypatch.setattr(PerfModel, "fit_layers", no_refit)
    rep = train(dataclasses.replace(cfg, resume=True), model_factory=tiny_model, data_factory=tiny_data,
                perf_factory=perf)
    fits = rep["layer_fits"]
    assert set(fits) == {"features.0", "features.2", "features.5"}
    corrected = perf(cfg)
    for f in fits.values():
        assert f["s_fixed"] < 0.5 and len(f["t_sparse"]) == len(f["densities"])
        corrected.layer_scales[f["key"]] = (f["s_fixed"], f["s_compute"])
        corrected.dense[f["key"]] = f["t_dense"]
    model = TinyCNN(width=8)
    shapes = input_shapes_from_example(model, torch.zeros(1, 1, 28, 28))
    mods = dict(model.named_modules())
    rows = {r["name"]: r for r in rep["final"]["layers"]}
    for name in fits:
        rng = corrected.useful_range(LayerSpec.from_module(mods[name], shapes[name], name=name), 2)
        got = (rows[name]["breakeven_density"], rows[name]["saturation_density"])
        assert got == ((None, None) if rng is None else pytest.approx(rng)), name

    off = train(config(tmp_path / "off", epochs=1, fit_layers=False), model_factory=tiny_model,
                data_factory=tiny_data, perf_factory=perf)
    assert off["layer_fits"] is None
