"""AstroNet TFRecords, model, training, evaluation, checkpoints, catalog predictions and CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloudlab.astronet import predict_catalog, read_tfrecords, views, write_tfrecords
from cloudlab.astronet.model import CONFIGS, Column, build, get_config
from cloudlab.astronet.tfrecords import frame_records, iter_records, labels, split_indices
from cloudlab.astronet.train import (
    average_precision,
    evaluate,
    load,
    metrics,
    predict,
    roc_auc,
    save,
    train,
)
from cloudlab.simulate import lightcurves as simulate_lightcurves

tf = pytest.importorskip("tensorflow")

TRIAGE = Path(__file__).parents[2] / "shared" / "data" / "astronet" / "triage"
TINY = {
    "columns": {"global_view": Column(201, 2, 5, filters=2), "local_view": Column(61, 1, 7, 2)},
    "dense_layers": 1,
    "dense_units": 8,
    "learning_rate": 3e-3,
    "batch_size": 16,
}


@pytest.fixture(scope="module")
def simulated_views():
    lc, tces = simulate_lightcurves(12, 12, 16, noise=1e-3, seed=21)
    return views(lc, tces).compute(scheduler="synchronous"), lc, tces


@pytest.fixture(scope="module")
def tiny_model(simulated_views, tmp_path_factory):
    ds, _, _ = simulated_views
    ds = ds.assign(label=("tce", labels(ds["Disposition"].values)))
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.keras")
    model, history = train(ds, ds, config="local_global", steps=60, eval_every=20, seed=3,
                           checkpoint=path, **TINY)  # fmt: skip
    return model, history, path, ds


def test_split_indices_follow_reference_rule():
    shards = split_indices(1000)
    order = np.random.RandomState(123).permutation(1000)
    assert len(shards) == 10
    np.testing.assert_array_equal(shards["val-00000-of-00001"], order[800:900])
    np.testing.assert_array_equal(shards["test-00000-of-00001"], order[900:])
    sizes = [len(shards[f"train-{i:05d}-of-00008"]) for i in range(8)]
    np.testing.assert_array_equal(sizes, np.diff(np.linspace(0, 800, 9).astype(int)))
    np.testing.assert_array_equal(
        np.concatenate([shards[f"train-{i:05d}-of-00008"] for i in range(8)]), order[:800]
    )
    with pytest.raises(ValueError, match="split"):
        split_indices(10, (0.5, 0.1, 0.1))


def test_record_framing_matches_tensorflow(tmp_path):
    payloads = [b"abc", b"", bytes(range(256)) * 3]
    path = tmp_path / "x.tfrecord"
    path.write_bytes(frame_records(payloads))
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == payloads
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as writer:
        for p in payloads:
            writer.write(p)
    assert (tmp_path / "tf.tfrecord").read_bytes() == path.read_bytes()
    data = path.read_bytes()
    assert list(iter_records(data, check_crc=True)) == payloads
    with pytest.raises(ValueError, match="truncated"):
        list(iter_records(data[:-3], name="cut.tfrecord"))


def test_write_and_read_tfrecords_roundtrip(simulated_views, tmp_path):
    ds, _, tces = simulated_views
    counts = write_tfrecords(ds, str(tmp_path))
    assert counts["val-00000-of-00001"] == 4 and counts["test-00000-of-00001"] == 4
    assert sum(counts.values()) == int(ds["valid"].sum())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(counts)
    back = read_tfrecords(str(tmp_path / "*-of-*"))
    assert back.sizes == {"tce": 40, "global_bin": 201, "local_bin": 61}
    order = np.argsort(back["row_id"].values)
    np.testing.assert_array_equal(
        back["global_view"].values[order], ds["global_view"].values.astype(np.float32)
    )
    assert back["tic_id"].dtype == np.int64 and back["Period"].dtype == np.float64
    assert back["Disposition"].values[order].tolist() == tces["Disposition"].tolist()
    np.testing.assert_array_equal(back["label"].values[order], labels(tces["Disposition"]))
    np.testing.assert_array_equal(back["is_multi"].values, 0.0)
    # the feature types AstroNet's parser expects
    raw = next(iter(tf.data.TFRecordDataset(str(tmp_path / "val-00000-of-00001"))))
    example = tf.train.Example.FromString(raw.numpy())
    feature = example.features.feature
    assert len(feature["global_view"].float_list.value) == 201
    assert len(feature["local_view"].float_list.value) == 61
    assert feature["tic_id"].WhichOneof("kind") == "int64_list"
    assert feature["Period"].WhichOneof("kind") == "float_list"
    assert feature["Disposition"].WhichOneof("kind") == "bytes_list"
    x, y = next(iter(read_tfrecords(str(tmp_path / "*-of-*"), output="tf", batch_size=100)))
    np.testing.assert_array_equal(x["global_view"].numpy(), back["global_view"].values)
    np.testing.assert_array_equal(y.numpy()[:, 0], back["label"].values)
    with pytest.raises(ValueError, match="local_view"):
        write_tfrecords(ds.drop_vars("local_view"), str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


@pytest.mark.skipif(not TRIAGE.exists(), reason=f"Astronet-Triage TFRecords not found in {TRIAGE}")
def test_read_real_triage_test_shard():
    ds = read_tfrecords(str(TRIAGE / "test-00000-of-00001"))
    assert ds.sizes == {"tce": 1658, "global_bin": 201, "local_bin": 61}
    assert int(ds["label"].sum()) == 279
    np.testing.assert_allclose(np.median(ds["global_view"].values, axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(ds["global_view"].values.min(axis=1), -1, atol=1e-6)
    np.testing.assert_allclose(ds["local_view"].values.min(axis=1), -1, atol=1e-6)
    positives = ds["label"].values == 1
    centre = np.abs(np.argmin(ds["local_view"].values[positives], axis=1) - 30)
    assert np.median(centre) <= 2
    assert {"row_id", "tic_id", "Epoc", "Period", "Duration", "toi_id"} <= set(ds.data_vars)
    assert "?.01" in set(ds["toi_id"].values)
    stream = read_tfrecords(str(TRIAGE / "test-00000-of-00001"), output="tf", batch_size=2000)
    x, y = next(iter(stream))
    np.testing.assert_array_equal(x["local_view"].numpy(), ds["local_view"].values)
    assert float(y.numpy().sum()) == 279


def test_model_matches_reference_architecture():
    model = build("local_global")
    assert model.count_params() == 2_026_721
    shapes = {layer.name: tuple(layer.output.shape[1:]) for layer in model.layers}
    assert shapes["global_view_flatten"] == (768,)
    assert shapes["local_view_flatten"] == (352,)
    assert shapes["pre_logits_concat"] == (1120,)
    assert get_config("local_global").features == ("global_view", "local_view")
    assert CONFIGS["local_global"].learning_rate == 1e-5
    assert model.optimizer.epsilon == pytest.approx(1e-8)
    assert build("vetting").count_params() == 2_216_593
    with pytest.raises(ValueError, match="unknown"):
        build("nope")


def test_tiny_training_learns_and_checkpoints_roundtrip(tiny_model, tmp_path):
    model, history, path, ds = tiny_model
    assert history["step"] == [20, 40, 60]
    assert history["loss"][-1] < history["loss"][0]
    scores = predict(model, ds)
    assert roc_auc(ds["label"].values, scores) > 0.9
    loaded = load(path)
    np.testing.assert_allclose(predict(loaded, ds), scores, rtol=1e-6)
    other = str(tmp_path / "copy.keras")
    save(loaded, other)
    ensemble = predict([path, other], ds)
    np.testing.assert_allclose(ensemble, scores, rtol=1e-6)
    result = evaluate([model], ds)
    assert result["n"] == ds.sizes["tce"]
    assert sum(result["confusion"].values()) == ds.sizes["tce"]
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        load(str(tmp_path / "missing.keras"))
    (tmp_path / "junk.keras").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.keras"):
        load(str(tmp_path / "junk.keras"))


def test_ensemble_is_mean_probability(tiny_model, simulated_views):
    model, _, _, ds = tiny_model
    second, _ = train(ds, None, steps=10, seed=8, **TINY)
    both = predict([model, second], ds)
    np.testing.assert_allclose(both, (predict(model, ds) + predict(second, ds)) / 2, rtol=1e-6)


def test_metrics_against_brute_force():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.uniform(0, 1, 300) + 0.3 * y, 2)  # ties included
    pos, neg = s[y == 1], s[y == 0]
    brute = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert roc_auc(y, s) == pytest.approx(brute, abs=1e-12)
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx((1 + 2 / 3) / 2)
    m = metrics(np.array([1, 1, 0, 0]), np.array([0.9, 0.2, 0.6, 0.1]))
    assert m["confusion"] == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}
    assert m["accuracy"] == 0.5 and m["precision"] == 0.5 and m["recall"] == 0.5
    with pytest.raises(ValueError, match="both"):
        roc_auc([1, 1], [0.2, 0.3])


def test_predict_catalog_on_cluster(tiny_model, simulated_views, local_client):
    _, _, path, ds = tiny_model
    _, lc, tces = simulated_views
    graph = predict_catalog(lc, tces, path, batch_size=16)
    assert graph["prediction"].data.numblocks == (3,)  # 40 TCEs in batches of 16
    result = local_client.compute(graph["prediction"].data).result()
    np.testing.assert_allclose(result, predict(load(path), ds), rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="nothere"):
        predict_catalog(lc, tces, "/tmp/nothere.keras")


def test_cli_views_evaluate_predict(tiny_model, tmp_path, capsys):
    from cloudlab.cli import main

    _, _, path, _ = tiny_model
    src = tmp_path / "lc"
    simulate_lightcurves(4, 4, 4, dest=str(src), seed=13)
    out = tmp_path / "records"
    args = ["astronet", "views", "--lightcurves", str(src / "*.h5"), "--tces",
            str(src / "tces.csv"), "--dest", str(out)]  # fmt: skip
    assert main(args) == 0
    assert len(list(out.glob("*-of-*"))) == 10
    assert main(["astronet", "evaluate", "--data", str(out / "*"), "--checkpoints", path]) == 0
    assert '"auc"' in capsys.readouterr().out
    members = str(tmp_path / "m_{seed}.keras")
    args = ["astronet", "train", "--data", str(out), "--out", members, "--steps", "2",
            "--ensemble", "2"]  # fmt: skip
    assert main(args) == 0
    assert (tmp_path / "m_1.keras").exists() and (tmp_path / "m_2.keras").exists()
    assert main(["astronet", "train", "--data", str(out), "--out", path, "--ensemble", "2"]) == 2
    csv = tmp_path / "pred.csv"
    args = ["astronet", "predict", "--checkpoints", path, "--lightcurves", str(src / "*.h5"),
            "--tces", str(src / "tces.csv"), "--out", str(csv)]  # fmt: skip
    assert main(args) == 0
    import pandas as pd

    table = pd.read_csv(csv)
    assert len(table) == 12 and table["prediction"].between(0, 1).all()


def test_read_tfrecords_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_tfrecords(str(tmp_path / "none-*"))
    (tmp_path / "cut-00000").write_bytes(b"\x05\x00\x00")
    with pytest.raises(ValueError, match="cut-00000"):
        read_tfrecords(str(tmp_path / "cut-00000"))


def test_vetting_views_feed_the_vetting_model(tmp_path):
    lc, tces = simulate_lightcurves(3, 3, 2, noise=5e-4, seed=12)
    ds = views(lc, tces, kind="vetting").compute(scheduler="synchronous")
    assert "depth_change" in ds and ds["valid"].all()
    write_tfrecords(ds, str(tmp_path))
    back = read_tfrecords(str(tmp_path / "*-of-*"), label="vetting")
    assert back["secondary_view"].dims == ("tce", "secondary_bin")
    assert int(back["label"].sum()) == 3  # Vetting: only PC is positive
    model = build("vetting")
    names = {t.name.split(":")[0] for t in model.inputs}
    assert names == {"global_view", "local_view", "secondary_view", "depth_change"}
    scores = predict(model, back)
    assert scores.shape == (8,) and np.all((scores > 0) & (scores < 1))


def test_predict_catalog_gpu_annotation(tiny_model, simulated_views):
    _, _, path, _ = tiny_model
    _, lc, tces = simulated_views
    graph = predict_catalog(lc, tces, path, batch_size=16, gpu=True)
    layers = graph["prediction"].data.__dask_graph__().layers
    annotated = [layer for layer in layers.values() if layer.annotations]
    assert annotated and all(a.annotations["resources"] == {"GPU": 1} for a in annotated)
    views_layers = graph["global_view"].data.__dask_graph__().layers
    assert not any(layer.annotations for layer in views_layers.values())


@pytest.mark.gpu
def test_predict_catalog_on_gpu_workers(tiny_model, simulated_views):
    from cloudlab.cluster import connect

    _, _, path, ds = tiny_model
    _, lc, tces = simulated_views
    with connect("local", gpu=True, n_workers=1) as client:
        result = client.compute(predict_catalog(lc, tces, path, gpu=True)["prediction"]).result()
    np.testing.assert_allclose(result, predict(load(path), ds), rtol=1e-4)


def test_cli_train_offers_the_training_options(simulated_views, tmp_path, capsys):
    """--seed, --eval-every, --log json, --metrics, extra thresholds and the test split."""
    import json

    from cloudlab.cli import main

    ds, _, _ = simulated_views
    records = tmp_path / "records"
    write_tfrecords(ds, str(records), seed=1)
    metrics_url = tmp_path / "metrics.json"
    args = ["astronet", "train", "--data", str(records), "--out", str(tmp_path / "m_{seed}.keras"),
            "--steps", "2", "--eval-every", "1", "--seed", "5", "--log", "json",
            "--extra-threshold", "0.2", "--metrics", str(metrics_url)]  # fmt: skip
    assert main(args) == 0
    assert (tmp_path / "m_5.keras").exists()
    printed = capsys.readouterr().out
    assert printed.count('"val_accuracy"') == 2  # one JSON line per validation pass
    result = json.loads(metrics_url.read_text())
    assert result["seed"] == 5 and result["history"]["step"] == [1, 2]
    assert {"val", "test", "val_at_0.2", "test_at_0.2"} <= set(result)
    test_views = read_tfrecords(str(records / "test-*"))
    expect = evaluate(load(str(tmp_path / "m_5.keras")), test_views)
    assert result["test"]["n"] == expect["n"] == test_views.sizes["tce"]
    assert result["test"]["auc"] == pytest.approx(expect["auc"], abs=1e-6)


def _recording_scheduler(calls: list):
    """dask's threaded scheduler, recording how many output chunks each compute asks for."""
    import dask.threaded
    from dask.core import flatten

    def get(dsk, keys, **kwargs):
        calls.append(len(list(flatten(keys))))
        return dask.threaded.get(dsk, keys, **kwargs)

    return get


def test_cli_predict_writes_batch_by_batch(tiny_model, tmp_path):
    import dask
    import pandas as pd

    from cloudlab.astronet import write_predictions
    from cloudlab.cli import main
    from cloudlab.storage import read_zarr

    _, _, path, _ = tiny_model
    src = tmp_path / "lc"
    lc, tces = simulate_lightcurves(4, 4, 4, dest=str(src), seed=13)
    expected = predict_catalog(lc, tces, path, batch_size=4).compute(scheduler="synchronous")
    csv = tmp_path / "pred.csv"
    args = ["astronet", "predict", "--checkpoints", path, "--lightcurves", str(src / "*.h5"),
            "--tces", str(src / "tces.csv"), "--out", str(csv), "--batch-size", "4"]  # fmt: skip
    calls: list[int] = []
    # 4 TCEs of reasons (<U96) exceed 1 KiB: the client asks for one batch at a time
    with dask.config.set({"array.chunk-size": "1KiB", "scheduler": _recording_scheduler(calls)}):
        assert main(args) == 0
    table = pd.read_csv(csv, keep_default_na=False)
    assert len(calls) == 3 and max(calls) == 3  # 12 TCEs in 3 batches: prediction, status, reason
    np.testing.assert_array_equal(table["tic_id"], tces["tic_id"])
    np.testing.assert_allclose(table["prediction"], expected["prediction"].values, rtol=1e-6)
    np.testing.assert_array_equal(table["status"], expected["status"].values)
    np.testing.assert_array_equal(table["reason"], expected["reason"].values)

    store = str(tmp_path / "pred.zarr")
    graph = predict_catalog(lc, tces, path, batch_size=4)
    counts = write_predictions(graph, store, progress=False)
    back = read_zarr(store)
    assert counts == {"written": int(expected["valid"].sum()), "skipped": 0}
    assert back["prediction"].chunks == ((4, 4, 4),)  # one chunk per batch, written per batch
    np.testing.assert_allclose(back["prediction"].values, expected["prediction"].values, rtol=1e-6)
    np.testing.assert_array_equal(back["Period"].values, tces["Period"].values)
    with pytest.raises(FileExistsError):
        write_predictions(graph, store, progress=False)
