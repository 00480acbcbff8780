"""The trained AstroNet ensemble shipped with cloudlab and its compact weight format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cloudlab.astronet import predict_catalog, read_tfrecords, shipped_models, views
from cloudlab.astronet.model import build
from cloudlab.astronet.shipped import SHIPPED, export, load_compact, read_header
from cloudlab.astronet.train import evaluate, load, predict, save
from cloudlab.errors import InputError, NotFoundError, OverwriteError
from cloudlab.simulate import lightcurves as simulate_lightcurves

tf = pytest.importorskip("tensorflow")

TRIAGE = Path(__file__).parents[2] / "shared" / "data" / "astronet" / "triage"
TEST_SHARD = TRIAGE / "test-00000-of-00001"


@pytest.fixture(scope="module")
def simulated():
    lc, tces = simulate_lightcurves(6, 6, 6, noise=1e-3, seed=31)
    return lc, tces, views(lc, tces).compute(scheduler="synchronous")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two full-size ``local_global`` checkpoints with different random weights."""
    folder = tmp_path_factory.mktemp("members")
    paths = []
    for seed in (1, 2):
        tf.keras.utils.set_random_seed(seed)
        paths.append(str(folder / f"m{seed}.keras"))
        save(build("local_global"), paths[-1])
    return paths


def test_shipped_weights_are_small_and_described():
    header = read_header()
    assert header["config"] == "local_global" and header["dtype"] == "float16"
    assert header["members"] == ["m1.keras", "m2.keras", "m3.keras"]
    assert "--steps 4968" in header["notes"]
    assert sum(np.prod(s) for s in header["shapes"]) == 2_026_721
    assert SHIPPED.stat().st_size < 12e6  # 3 × 2.03 M float16 weights, compressed


@pytest.mark.skipif(not TEST_SHARD.exists(), reason=f"Triage test shard not found: {TEST_SHARD}")
def test_shipped_ensemble_on_real_test_shard():
    test = read_tfrecords(str(TEST_SHARD))
    models = shipped_models()
    assert len(models) == 3 and shipped_models()[0] is models[0]  # loaded once
    result = evaluate(None, test)
    assert result["n"] == 1658
    assert result["auc"] >= 0.98
    assert result["accuracy"] >= 0.96
    assert evaluate(models, test) == result
    # the members are different models: each alone differs from the ensemble mean
    single = [predict(m, test) for m in models]
    assert all(np.abs(p - predict(None, test)).max() > 1e-3 for p in single)


def test_export_roundtrip_within_float16_precision(checkpoints, simulated, tmp_path):
    _, _, ds = simulated
    ds = ds.isel(tce=ds["valid"].values)
    exact = predict(checkpoints, ds)
    url = str(tmp_path / "ensemble.npz")
    header = export(checkpoints, url, notes="two random members")
    assert header["members"] == ["m1.keras", "m2.keras"] and header["notes"]
    assert header["bytes"] == Path(url).stat().st_size
    compact = load_compact(url)
    difference = np.abs(predict(compact, ds) - exact)
    assert 0 < difference.max() < 1e-3  # float16 weights: close, not identical
    for member, path in zip(compact, checkpoints, strict=True):
        for a, b in zip(member.get_weights(), load(path).get_weights(), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-7)
    full = str(tmp_path / "full.npz")
    export(checkpoints, full, dtype="float32")
    np.testing.assert_array_equal(predict(load_compact(full), ds), exact)


def test_export_refusals(checkpoints, tmp_path):
    url = str(tmp_path / "e.npz")
    export(checkpoints[:1], url)
    with pytest.raises(OverwriteError, match="e.npz"):  # refused before reading anything
        export([str(tmp_path / "absent.keras")], url)
    export(checkpoints[1:], url, overwrite=True)
    assert read_header(url)["members"] == ["m2.keras"]
    with pytest.raises(InputError, match="dtype"):
        export(checkpoints, str(tmp_path / "x.npz"), dtype="int8")
    with pytest.raises(InputError, match="no checkpoint"):
        export([], str(tmp_path / "x.npz"))
    tiny = build("local_global", dense_units=8)
    with pytest.raises(InputError, match="weight shapes"):
        export([tiny], str(tmp_path / "x.npz"))
    with pytest.raises(NotFoundError, match="absent.npz"):
        load_compact(str(tmp_path / "absent.npz"))
    (tmp_path / "bad.npz").write_bytes(b"not an archive")
    with pytest.raises(InputError, match="bad.npz"):
        load_compact(str(tmp_path / "bad.npz"))


def test_predict_catalog_defaults_to_shipped_ensemble(simulated):
    lc, tces, ds = simulated
    graph = predict_catalog(lc, tces, batch_size=8)
    result = graph["prediction"].compute(scheduler="synchronous").values
    valid = ds["valid"].values
    np.testing.assert_allclose(
        result[valid], predict(shipped_models(), ds.isel(tce=valid)), rtol=1e-6
    )
    assert np.isnan(result[~valid]).all()
    # simulated planets and eclipsing binaries score above the junk TCEs
    labelled = tces["Disposition"].isin(["PC", "EB"]).to_numpy()
    assert result[valid & labelled].mean() > result[valid & ~labelled].mean()
    with pytest.raises(InputError, match="Triage views"):
        predict_catalog(lc, tces, kind="kepler")
    with pytest.raises(InputError, match="empty list"):
        predict_catalog(lc, tces, [])


def test_cli_predict_without_checkpoints_and_export(checkpoints, simulated, tmp_path, capsys):
    from cloudlab.astronet import write_tfrecords
    from cloudlab.cli import main

    _, _, ds = simulated
    records = tmp_path / "records"
    write_tfrecords(ds, str(records), seed=1)
    out = tmp_path / "pred.csv"
    assert main(["astronet", "predict", "--data", str(records / "*"), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    data = read_tfrecords(str(records / "*"), label=None)
    np.testing.assert_allclose(table["prediction"], predict(None, data), rtol=1e-6)
    capsys.readouterr()
    npz = tmp_path / "e.npz"
    args = ["astronet", "export", "--checkpoints", *checkpoints, "--out", str(npz),
            "--check", str(records / "*")]  # fmt: skip
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["members"] == ["m1.keras", "m2.keras"]
    assert 0 < result["max_probability_difference"] < 1e-3
    assert result["exported"]["n"] == result["checkpoints"]["n"] == data.sizes["tce"]
    assert main(args) == 2  # exists: refused without --overwrite
