"""``sparsecnn demo --quick``: the whole pipeline on a tiny subset."""

from __future__ import annotations

import json

import pytest

from sparsecnn.data import find_data_dir


def _have_fmnist() -> bool:
    try:
        d = find_data_dir()
    except FileNotFoundError:
        return False
    return any(d.glob("t10k-images*")) and any(d.glob("train-images*"))


@pytest.mark.skipif(not _have_fmnist(), reason="Fashion-MNIST IDX files not found (apt-get install dataset-fashion-mnist)")
def test_demo_quick(tmp_path, capsys):
    from sparsecnn.cli import main
    from sparsecnn.demo import DEMO_KEYS

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--check-every", "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    data = json.loads((out / "demo.json").read_text())
    assert printed["accuracy"] == data["accuracy"]
    for k in DEMO_KEYS:
        assert k in data, k
    assert data["train"]["epochs_run"] == 2
    # 512 images in batches of 64: 8 steps an epoch, 4 checks of 2 steps judge "stabilised"
    assert data["config"]["check_every"] == 2 and data["config"]["gsl_patience"] == 4
    assert all("useful_range" in L for L in data["layers"])
    assert 0.0 <= data["accuracy"]["dense"] <= 1.0
    assert abs(data["accuracy"]["dense"] - data["accuracy"]["sparse"]) <= 0.02
    assert [L["name"] for L in data["layers"]][:2] == ["features.conv1", "features.conv2"]
    assert all(L["decision"] in ("dense", "sparse") for L in data["layers"])
    assert set(data["latency"]["batches"]) == {"1", "16"}
    assert data["latency"]["threads"] >= 1
    assert data["sizes"]["roundtrip_identical"]
    for f in ("density.png", "latency.png", "model_sparse.safetensors", "model_dense.pt", "checkpoint.pt"):
        assert (out / f).is_file(), f


def test_demo_missing_data(tmp_path, capsys):
    from sparsecnn.cli import main

    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "--data-dir", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err
