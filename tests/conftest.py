"""Session fixtures: real S3 (moto_server), GCS (gcp-storage-emulator) and dask-gateway servers on
127.0.0.1, started once per test run and stopped by PID."""

from __future__ import annotations

import os

# Must be set before gcsfs is imported anywhere, here and on every worker (see docs/infra notes).
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

import secrets
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlab.testing.objectstore import aws_environment, free_port

BIN = Path(sys.executable).parent
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def wait_http_ok(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers HTTP 200, failing early if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server for {url} exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL after 20 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def start_server(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a server in its own process group, its output going to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


# --------------------------------------------------------------------------------------------- S3
class S3Server:
    """A running moto_server and a way to restart it (to exercise retries)."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.key = "testing"
        self.secret = "testing"
        self.log = tmp / "moto.log"
        self.start()

    def start(self) -> None:
        """Start moto_server on this port (it keeps no state across restarts)."""
        self.process = start_server(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)], self.log
        )
        wait_http_ok(f"{self.endpoint_url}/moto-api/", self.process)

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto_server on 127.0.0.1; the AWS_* variables point every s3:// URL at it."""
    server = S3Server(tmp_path_factory.mktemp("moto"))
    with aws_environment(server.endpoint_url, server.key, server.secret):
        yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the S3 emulator; its name (URLs are ``s3://<name>/…``)."""
    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(
        key=s3_server.key,
        secret=s3_server.secret,
        endpoint_url=s3_server.endpoint_url,
        skip_instance_cache=True,
    )
    fs.mkdir(name)
    return name


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory):
    """s3rver on 127.0.0.1 (concurrent, objects kept as plain files), with a bucket ``data``;
    installed by ``make tools``. Unshaped: tests put a ``cloudlab.testing.Shaper`` in front."""
    from cloudlab.testing import ObjectStore

    store = ObjectStore(tmp_path_factory.mktemp("s3rver") / "root", buckets=["data"])
    yield store
    store.stop()


# -------------------------------------------------------------------------------------------- GCS
@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """gcp-storage-emulator on 127.0.0.1; STORAGE_EMULATOR_HOST points gs:// URLs at it."""
    port = free_port()
    host = f"http://127.0.0.1:{port}"
    process = start_server(
        [
            str(BIN / "gcp-storage-emulator"),
            "start",
            "-H",
            "127.0.0.1",
            "--port",
            str(port),
            "--in-memory",
        ],  # fmt: skip
        tmp_path_factory.mktemp("gcs") / "gcs.log",
    )
    wait_http_ok(f"{host}/storage/v1/b", process)
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    yield {"endpoint_url": host}
    stop_process(process)
    if saved is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = saved


@pytest.fixture
def gcs_bucket(gcs_server: dict[str, str]) -> str:
    """A fresh bucket on the GCS emulator; its name (URLs are ``gs://<name>/…``)."""
    import gcsfs

    name = f"test-{uuid.uuid4().hex[:12]}"
    fs = gcsfs.GCSFileSystem(
        endpoint_url=gcs_server["endpoint_url"], token="anon", project="test",
        skip_instance_cache=True,
    )  # fmt: skip
    fs.mkdir(name)
    return name


# ---------------------------------------------------------------------------------------- gateway
GATEWAY_CONFIG = """
from dask_gateway_server.options import Float, Integer, Mapping, Options

c.DaskGateway.address = "127.0.0.1:0"
c.Proxy.address = "127.0.0.1:{http_port}"
c.Proxy.tcp_address = "127.0.0.1:{tcp_port}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.SimpleAuthenticator.password = {password!r}
c.LocalBackend.clusters_directory = {clusters!r}
c.ClusterConfig.scheduler_cmd = [{dask!r}, "scheduler"]
c.ClusterConfig.worker_cmd = [{dask!r}, "worker"]
c.ClusterConfig.idle_timeout = 600


def handler(options):
    environment = dict(options.environment)
    if options.worker_gpus:
        environment["DASK_DISTRIBUTED__WORKER__RESOURCES"] = repr({{"GPU": options.worker_gpus}})
    return {{
        "worker_cores": options.worker_cores,
        "worker_memory": "%fG" % options.worker_memory,
        "environment": environment,
    }}


c.Backend.cluster_options = Options(
    Integer("worker_cores", 1, min=1, max=2),
    Float("worker_memory", 1.5, min=0.5, max=4),
    Integer("worker_gpus", 0, min=0, max=1),
    Mapping("environment", {{}}),
    handler=handler,
)
"""


class Gateway:
    """A running dask-gateway-server with password authentication."""

    def __init__(self, tmp: Path):
        self.http_port, self.tcp_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.http_port}"
        self.proxy_address = f"gateway://127.0.0.1:{self.tcp_port}"
        self.username = "astronomer"
        self.password = secrets.token_urlsafe(16)
        self.log = tmp / "gateway.log"
        config = tmp / "gateway_config.py"
        config.write_text(
            GATEWAY_CONFIG.format(
                http_port=self.http_port,
                tcp_port=self.tcp_port,
                password=self.password,
                clusters=str(tmp / "clusters"),
                dask=str(BIN / "dask"),
            )
        )
        env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        self.process = start_server(
            [str(BIN / "dask-gateway-server"), "-f", str(config)], self.log, env=env
        )
        wait_http_ok(f"{self.address}/api/health", self.process)

    def dask_config(self) -> dict[str, object]:
        """The dask config a JupyterHub (daskhub) would set for its users."""
        return {
            "gateway.address": self.address,
            "gateway.proxy-address": self.proxy_address,
            "gateway.auth.type": "basic",
            "gateway.auth.kwargs": {"username": self.username, "password": self.password},
        }


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """dask-gateway-server (UnsafeLocalBackend, SimpleAuthenticator with a random password)."""
    server = Gateway(tmp_path_factory.mktemp("gateway"))
    yield server
    stop_process(server.process)


@pytest.fixture(scope="session")
def gateway_client(gateway: Gateway, s3_server: S3Server, gcs_server: dict[str, str]):
    """A Client on a 2-worker gateway cluster whose workers see the S3 and GCS emulators."""
    import dask

    from cloudlab.cluster import connect

    with dask.config.set(gateway.dask_config()):
        client = connect(n_workers=2)
    client.wait_for_workers(2, timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def local_client():
    """A small embedded LocalCluster (2 single-thread worker processes) on 127.0.0.1."""
    from cloudlab.cluster import connect

    client = connect("local", n_workers=2)
    yield client
    client.close()


@pytest.fixture
def scan_threads(monkeypatch: pytest.MonkeyPatch):
    """Arrange a local header scan (``cloudlab.fits.tables.map_files``): after its first file it
    goes on in threads when ``waited`` (as if the reads waited on the disk), else serially; and
    record the threads that call ``module.name`` (the per-file reader). Returns
    ``arrange(module, name, waited) -> set of thread idents``."""
    import threading

    from cloudlab.fits import tables

    def arrange(module, name: str, waited: bool) -> set[int]:
        readers: set[int] = set()
        read = getattr(module, name)

        def recorded(*args, **kwargs):
            readers.add(threading.get_ident())
            return read(*args, **kwargs)

        monkeypatch.setattr(module, name, recorded)
        monkeypatch.setattr(tables, "PROBE_FILES", 1)
        monkeypatch.setattr(tables, "WAIT_RATIO", 0.0 if waited else float("inf"))
        return readers

    return arrange


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from cloudlab.backend import gpu_available

    if gpu_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
