"""connect(): local clusters, dask-gateway (password auth), GPU requests and worker faults."""

from __future__ import annotations

import dask
import dask.array as da
import pytest

from cloudlab import _tasks
from cloudlab.cluster import connect, describe_target, gpu_tasks


def test_describe_target_follows_gateway_config():
    with dask.config.set({"gateway.address": "http://127.0.0.1:1"}):
        assert describe_target() == "dask-gateway at http://127.0.0.1:1"
    with dask.config.set({"gateway.address": None}):
        assert describe_target().startswith("embedded LocalCluster")
    assert describe_target("tcp://10.0.0.1:8786") == "existing scheduler at tcp://10.0.0.1:8786"


def test_bad_cluster_argument_names_it():
    with pytest.raises(ValueError, match="nonsense"):
        connect("nonsense")


def test_local_gpu_without_dask_cuda_says_what_to_install():
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="dask-cuda"):
            connect("local", gpu=True)
    else:
        pytest.skip("dask-cuda installed: the error path does not apply")


def test_local_cluster_computes_and_closes_with_client():
    client = connect("local", n_workers=1)
    cluster = client.cluster
    x = da.arange(1000, chunks=100)
    assert client.compute(x.sum()).result() == 499500
    client.close()
    assert cluster.status.name == "closed"


def test_connect_picks_configured_gateway(gateway, s3_server, gcs_server):
    with dask.config.set(gateway.dask_config()):
        client = connect(n_workers=1, worker_memory=1.0)
    try:
        assert "gateway" in type(client.cluster).__name__.lower()
        client.wait_for_workers(1, timeout=120)
        x = da.random.default_rng(0).random((400, 400), chunks=100)
        expected = (x + x.T).mean().compute(scheduler="sync")
        assert client.compute((x + x.T).mean()).result() == pytest.approx(expected)
        # storage settings reach the gateway workers
        seen = client.submit(_tasks.worker_environment_value, "AWS_ENDPOINT_URL_S3").result()
        assert seen == s3_server.endpoint_url
        seen = client.submit(_tasks.worker_environment_value, "STORAGE_EMULATOR_HOST").result()
        assert seen == gcs_server["endpoint_url"]
    finally:
        name = client.cluster.name
        client.close()
    from dask_gateway import Gateway

    with dask.config.set(gateway.dask_config()):
        running = [report.name for report in Gateway().list_clusters()]
    assert name not in running


def test_gateway_gpu_workers_carry_the_gpu_resource(gateway):
    with dask.config.set(gateway.dask_config()):
        client = connect(gpu=True, n_workers=1)
    try:
        client.wait_for_workers(1, timeout=120)
        resources = [w["resources"] for w in client.scheduler_info()["workers"].values()]
        assert resources == [{"GPU": 1}]
        with gpu_tasks():
            total = da.ones(100, chunks=10).sum()
        assert client.compute(total).result() == 100
    finally:
        client.close()


def test_gateway_rejects_unknown_option_by_name(gateway):
    with dask.config.set(gateway.dask_config()), pytest.raises(ValueError, match="warp_drive"):
        connect(warp_drive=9)


def test_gateway_password_is_never_logged(gateway, gateway_client):
    assert gateway.password not in gateway.log.read_text(errors="replace")
    assert gateway.password not in repr(gateway_client)
    assert gateway.password not in repr(gateway_client.cluster)


# ------------------------------------------------------------- cluster options of the CLI
def _cli_args(*options: str):
    """Parsed ``cloudlab backdrop fit`` arguments with the given cluster options."""
    from cloudlab.cli import build_parser

    base = ["backdrop", "fit", "--in-dir", "in", "--out-dir", "out"]
    return build_parser().parse_args([*base, *options])


def _gateway_report(gateway, name: str):
    from dask_gateway import Gateway

    with dask.config.set(gateway.dask_config()):
        return Gateway().get_cluster(name)


def test_cli_sizes_reach_the_gateway(gateway):
    from cloudlab.commands._common import cluster_context

    args = _cli_args("--workers", "1", "--worker-memory", "0.75", "--worker-cores", "1")
    with dask.config.set(gateway.dask_config()), cluster_context(args) as client:
        client.wait_for_workers(1, timeout=120)
        report = _gateway_report(gateway, client.cluster.name)
        assert report.options["worker_memory"] == 0.75
        assert report.options["worker_cores"] == 1
        workers = client.scheduler_info()["workers"].values()
        assert [w["memory_limit"] for w in workers] == [int(0.75 * 2**30)]
        assert [w["nthreads"] for w in workers] == [1]


def test_cli_adapt_lets_the_gateway_cluster_scale_itself(gateway):
    from cloudlab.commands._common import cluster_context

    args = _cli_args("--cluster", gateway.address, "--adapt", "1", "2")
    with dask.config.set(gateway.dask_config()), cluster_context(args) as client:
        client.wait_for_workers(1, timeout=120)  # the adaptive minimum, without any scale()
        assert client.compute(da.ones(50, chunks=10).sum()).result() == 50
        assert 1 <= len(client.scheduler_info()["workers"]) <= 2


def test_cli_sizes_for_a_local_cluster_and_the_dashboard_template(monkeypatch):
    from cloudlab.commands._common import cluster_context

    args = _cli_args("--cluster", "local", "--workers", "1", "--worker-memory", "0.5")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ann/")
    link = "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status"
    with dask.config.set({"distributed.dashboard.link": link}), cluster_context(args) as client:
        workers = list(client.scheduler_info()["workers"].values())
        assert [w["memory_limit"] for w in workers] == [2**29]
        port = client.scheduler_info()["services"]["dashboard"]
        assert client.dashboard_link == f"/user/ann/proxy/{port}/status"


@pytest.mark.parametrize(
    ("options", "culprit"),
    [
        (["--workers", "0"], "--workers"),
        (["--worker-memory", "-1"], "--worker-memory"),
        (["--worker-cores", "0"], "--worker-cores"),
        (["--adapt", "3", "1"], "--adapt MIN MAX"),
    ],
)
def test_cli_sizes_are_checked_before_anything_starts(options, culprit):
    from cloudlab.commands._common import cluster_context
    from cloudlab.errors import InputError

    with pytest.raises(InputError, match=culprit):
        cluster_context(_cli_args("--cluster", "http://127.0.0.1:1", *options))


def test_cli_sizes_refused_for_an_existing_scheduler():
    from cloudlab.commands._common import cluster_context
    from cloudlab.errors import InputError

    with pytest.raises(InputError, match="tcp://127.0.0.1:1"):
        cluster_context(_cli_args("--cluster", "tcp://127.0.0.1:1", "--workers", "3"))


def test_compute_on_a_cluster_leaves_in_memory_variables_on_the_client():
    """An xarray object computed on a cluster comes back identical to dask's local compute,
    while only its dask-backed variables travel (a catalog column does not)."""
    import numpy as np
    import xarray as xr

    from cloudlab.cluster import compute, submitted_parts

    catalog = np.random.default_rng(0).random(5000)  # 40 kB in memory, on the client only
    ds = xr.Dataset(
        {"flux": ("target", da.arange(5000, chunks=1000)), "mag": ("target", catalog)},
        coords={"lazy": ("target", da.ones(5000, chunks=2500)), "target": np.arange(5000)},
        attrs={"sector": 55},
    )
    arr = ds["flux"].assign_coords(mag=ds["mag"])
    parts, _ = submitted_parts([ds, arr, ds["flux"].data])
    flux, lazy = ds["flux"].data.name, ds["lazy"].data.name
    assert sorted(p.name for p in parts) == sorted([flux, lazy, flux, lazy, flux])
    client = connect("local", n_workers=1)
    try:
        got = compute(ds, arr, ds["flux"].data.sum(), progress=False)
    finally:
        client.close()
    xr.testing.assert_identical(got[0], ds.compute())
    xr.testing.assert_identical(got[1], arr.compute())
    assert got[2] == 5000 * 4999 // 2
    assert isinstance(got[0]["flux"].data, np.ndarray)


def test_active_client_is_the_scheduler_not_the_newest_client() -> None:
    """With two clients in a session, the one dask computes on is the active one (before, the
    newest client was asked and the older one, though active, was not recognised)."""
    from distributed import Client, LocalCluster

    from cloudlab.cluster import active_client

    with LocalCluster(n_workers=1, processes=False) as one, Client(one) as first:
        with LocalCluster(n_workers=1, processes=False) as two, Client(two) as second:
            with dask.config.set(scheduler=first.get):
                assert active_client() is first
            with dask.config.set(scheduler=second.get):
                assert active_client() is second
            with dask.config.set(scheduler="threads"):
                assert active_client() is None
