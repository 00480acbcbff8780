"""cloudlab.storage: URL resolution and defaults, globbing, ranged reads, atomic writes, retries."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import dask
import fsspec
import numpy as np
import pytest
from astropy.io import fits
from botocore.exceptions import ClientError, EndpointConnectionError
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from cloudlab import fits as cf
from cloudlab import storage

STORAGE_VARS = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "STORAGE_EMULATOR_HOST",
)


class FlakyFileSystem(LocalFileSystem):
    """Local files under ``flakyfile://`` whose first ``failures`` reads fail like a dropped
    connection (or with ``error`` when set)."""

    protocol = "flakyfile"
    lock = threading.Lock()
    failures = 0
    calls = 0
    error: type[Exception] = ConnectionResetError

    @classmethod
    def arm(cls, failures: int, error: type[Exception] = ConnectionResetError) -> None:
        cls.failures, cls.calls, cls.error = failures, 0, error

    def cat_file(self, path, start=None, end=None, **kwargs):
        with self.lock:
            type(self).calls += 1
            if type(self).failures > 0:
                type(self).failures -= 1
                raise type(self).error(f"simulated failure reading {path}")
        return super().cat_file(path, start=start, end=end, **kwargs)


fsspec.register_implementation("flakyfile", FlakyFileSystem, clobber=True)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in STORAGE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.aws/credentials
    return monkeypatch


@pytest.fixture(autouse=True)
def _fast_retries():
    with dask.config.set({"cloudlab.storage-backoff": 0.001, "scheduler": "sync"}):
        yield


# ------------------------------------------------------------------------------ resolution
def test_local_paths(tmp_path: Path) -> None:
    fs, path = storage.resolve(str(tmp_path / "a.fits"))
    assert isinstance(fs, LocalFileSystem) and path == str(tmp_path / "a.fits")
    fs, path = storage.resolve(f"file://{tmp_path}/b.fits")
    assert isinstance(fs, LocalFileSystem) and path.endswith("/b.fits")
    assert storage.is_local(str(tmp_path)) and storage.is_local(f"file://{tmp_path}")
    assert not storage.is_local("s3://bucket/key")


POOL = {
    "config_kwargs": {
        "retries": storage.S3_BOTOCORE_RETRIES,
        "max_pool_connections": storage.S3_CONNECTIONS,
    }
}
"""What every S3 filesystem gets: no retries inside botocore (cloudlab and s3fs retry) and a
connection pool large enough for batched ranged reads."""


def test_s3_is_anonymous_by_default(clean_env: pytest.MonkeyPatch) -> None:
    assert storage.storage_options_for("s3://bucket/key") == {"anon": True, **POOL}
    fs, path = storage.resolve("s3://bucket/key.fits")
    assert fs.anon is True and path == "bucket/key.fits"


def test_s3_endpoint_and_credentials_from_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    opts = storage.storage_options_for("s3://bucket/key")
    assert opts == {"endpoint_url": "http://127.0.0.1:9", "anon": False, **POOL}
    clean_env.delenv("AWS_ENDPOINT_URL_S3")
    clean_env.setenv("AWS_ACCESS_KEY_ID", "someone")
    assert storage.storage_options_for("s3://bucket/key") == {"anon": False, **POOL}
    clean_env.delenv("AWS_ACCESS_KEY_ID")
    credentials = Path(os.environ["HOME"]) / ".aws" / "credentials"
    credentials.parent.mkdir(parents=True)
    credentials.write_text("[default]\n")
    assert storage.storage_options_for("s3://bucket/key") == {"anon": False, **POOL}


def test_s3_connection_pool_default_merges_with_callers_config(clean_env) -> None:
    retries = {"retries": {"max_attempts": 1}}
    opts = storage.storage_options_for("s3://b/k", storage_options={"config_kwargs": retries})
    assert opts["config_kwargs"] == {**retries, "max_pool_connections": storage.S3_CONNECTIONS}
    mine = {"config_kwargs": {"max_pool_connections": 3}}
    assert storage.storage_options_for("s3://b/k", storage_options=mine)["config_kwargs"] == {
        "retries": storage.S3_BOTOCORE_RETRIES,
        "max_pool_connections": 3,
    }
    assert "config_kwargs" not in storage.storage_options_for("gs://b/k")


def test_dask_config_and_explicit_options_take_precedence(clean_env: pytest.MonkeyPatch) -> None:
    with dask.config.set({"cloudlab.storage.s3": {"endpoint_url": "http://cfg", "anon": True}}):
        assert storage.storage_options_for("s3://b/k") == {
            "anon": True,
            "endpoint_url": "http://cfg",
            **POOL,
        }
        opts = storage.storage_options_for("s3://b/k", storage_options={"key": "k", "secret": "s"})
        assert opts["anon"] is False and opts["endpoint_url"] == "http://cfg"
        assert (
            storage.storage_options_for("s3://b/k", storage_options={"anon": True, "key": "k"})[
                "anon"
            ]
            is True
        )


def test_gcs_defaults(clean_env: pytest.MonkeyPatch) -> None:
    assert storage.storage_options_for("gs://bucket/key") == {"token": "anon"}
    clean_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/creds.json")
    assert storage.storage_options_for("gs://bucket/key") == {}


def test_unknown_protocol_is_named() -> None:
    with pytest.raises(ValueError, match="nosuchproto://x"):
        storage.resolve("nosuchproto://x/y")


def test_user_registered_protocol(tmp_path: Path) -> None:
    class MyFileSystem(MemoryFileSystem):
        protocol = "myproto"
        store: dict = {}
        pseudo_dirs = [""]

    fsspec.register_implementation("myproto", MyFileSystem, clobber=True)
    data = np.arange(24, dtype=">i4").reshape(4, 6)
    storage.write_bytes("myproto://dir/a.fits", _fits_bytes(data))
    assert storage.expand("myproto://dir/*.fits") == ["myproto://dir/a.fits"]
    np.testing.assert_array_equal(
        cf.open_hdu("myproto://dir/a.fits")[1:3, 2:5].values, data[1:3, 2:5]
    )


def _fits_bytes(data: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    fits.PrimaryHDU(data).writeto(buf)
    return buf.getvalue()


# ---------------------------------------------------------------------------------- expand
def test_expand(tmp_path: Path) -> None:
    for name in ("c.fits", "a.fits", "b.fits", "x.txt"):
        (tmp_path / name).write_bytes(b"1")
    assert storage.expand(str(tmp_path / "*.fits")) == [
        str(tmp_path / n) for n in ("a.fits", "b.fits", "c.fits")
    ]
    explicit = [str(tmp_path / "c.fits"), str(tmp_path / "a.fits")]
    assert storage.expand(explicit) == explicit  # order kept, not checked for existence
    assert storage.expand(f"file://{tmp_path}/[ab].fits") == [
        f"file://{tmp_path}/a.fits",
        f"file://{tmp_path}/b.fits",
    ]
    with pytest.raises(FileNotFoundError, match="no files match"):
        storage.expand(str(tmp_path / "*.nope"))
    detail = storage.expand_detail(str(tmp_path / "a.*"))
    assert detail[0][0] == str(tmp_path / "a.fits") and detail[0][1]["size"] == 1


def test_expand_memory_keeps_protocol() -> None:
    storage.write_bytes("memory://cl-expand/2.bin", b"2")
    storage.write_bytes("memory://cl-expand/1.bin", b"1")
    urls = storage.expand("memory://cl-expand/*.bin")
    assert all(u.startswith("memory://") for u in urls)
    assert [storage.read_bytes(u) for u in urls] == [b"1", b"2"]


# ------------------------------------------------------------------------ reads and writes
def test_cat_ranges_and_read_bytes(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 4
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    for url in (str(path), f"flakyfile://{path}", "memory://cl-cat/blob.bin"):
        if url.startswith("memory"):
            storage.write_bytes(url, blob)
        parts = storage.cat_ranges(url, [0, 10, 1000], [5, 20, 2000])
        assert parts == [blob[0:5], blob[10:20], blob[1000:]]  # short at end of file
        assert storage.read_bytes(url) == blob
    assert storage.cat_ranges(str(path), [], []) == []


def test_write_bytes_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.bin"
    storage.write_bytes(str(target), b"hello")
    assert target.read_bytes() == b"hello"
    storage.write_bytes(str(target), b"again")
    assert target.read_bytes() == b"again"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def test_atomic_write_success_and_failure(tmp_path: Path) -> None:
    target = tmp_path / "product.fits"
    with storage.atomic_write(str(target)) as tmp:
        assert not target.exists()
        Path(tmp).write_bytes(b"done")
    assert target.read_bytes() == b"done"
    with pytest.raises(RuntimeError, match="boom"):
        with storage.atomic_write(str(target)) as tmp:
            Path(tmp).write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"done"  # the old product is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["product.fits"]
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with storage.atomic_write(str(tmp_path / "empty.fits")):
            pass
    assert not (tmp_path / "empty.fits").exists()


def test_atomic_write_to_object_store() -> None:
    url = "memory://cl-atomic/result.bin"
    with pytest.raises(RuntimeError):
        with storage.atomic_write(url) as tmp:
            Path(tmp).write_bytes(b"partial")
            raise RuntimeError("fail")
    assert not fsspec.filesystem("memory").exists("/cl-atomic/result.bin")
    with storage.atomic_write(url) as tmp:
        Path(tmp).write_bytes(b"complete")
    assert storage.read_bytes(url) == b"complete"


# --------------------------------------------------------------------------------- retries
def test_transient_errors_are_retried(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"0123456789")
    FlakyFileSystem.arm(3)
    assert storage.cat_ranges(f"flakyfile://{path}", [2], [6]) == [b"2345"]
    assert FlakyFileSystem.calls == 4
    FlakyFileSystem.arm(3, TimeoutError)
    assert storage.read_bytes(f"flakyfile://{path}") == b"0123456789"
    FlakyFileSystem.arm(100)
    with dask.config.set({"cloudlab.storage-retries": 2}):
        with pytest.raises(ConnectionResetError):
            storage.cat_ranges(f"flakyfile://{path}", [0], [1])
    assert FlakyFileSystem.calls == 3


def test_permanent_errors_are_not_retried(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"x")
    for error in (FileNotFoundError, PermissionError):
        FlakyFileSystem.arm(5, error)
        with pytest.raises(error):
            storage.cat_ranges(f"flakyfile://{path}", [0], [1])
        assert FlakyFileSystem.calls == 1


def test_fits_reads_survive_transient_errors(tmp_path: Path) -> None:
    data = np.random.default_rng(1).normal(size=(30, 40)).astype("f4")
    path = tmp_path / "a.fits"
    fits.PrimaryHDU(data).writeto(path)
    cf.clear_cache()
    FlakyFileSystem.arm(2)  # the header read fails twice
    arr = cf.open_hdu(f"flakyfile://{path}", chunks=(10, 40))
    FlakyFileSystem.arm(2)  # and then the first chunk read
    np.testing.assert_array_equal(arr.values, data)
    assert FlakyFileSystem.calls == 2 + 3


def _client_error(status: int, code: str) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")


def test_is_transient() -> None:
    assert storage.is_transient(ConnectionResetError())
    assert storage.is_transient(TimeoutError())
    assert storage.is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert storage.is_transient(_client_error(503, "SlowDown"))
    assert storage.is_transient(_client_error(429, "TooManyRequests"))
    assert not storage.is_transient(_client_error(403, "AccessDenied"))
    wrapped = OSError(errno.EIO, "internal error")
    wrapped.__cause__ = _client_error(500, "InternalError")
    assert storage.is_transient(wrapped)  # how s3fs reports a 5xx
    assert storage.is_transient(OSError(errno.ECONNRESET, "reset"))
    assert not storage.is_transient(FileNotFoundError("x"))
    assert not storage.is_transient(PermissionError("x"))
    missing = FileNotFoundError("x")
    missing.__cause__ = ConnectionResetError()
    assert not storage.is_transient(missing)
    assert not storage.is_transient(ValueError("bad"))


# ---------------------------------------------------------------------- worker environment
def test_worker_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:5555")
    clean_env.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9023")
    clean_env.setenv("AWS_ACCESS_KEY_ID", "id")
    clean_env.setenv("UNRELATED_VARIABLE", "x")
    env = storage.worker_environment()
    assert env["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:5555"
    assert env["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:9023"
    assert env["AWS_ACCESS_KEY_ID"] == "id"
    assert env["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"
    assert "UNRELATED_VARIABLE" not in env
    with dask.config.set({"cloudlab.storage.s3": {"endpoint_url": "http://cfg:1"}}):
        env = storage.worker_environment()
    # a worker started with this environment sees the same dask config
    collected = dask.config.collect_env({"DASK_CLOUDLAB__STORAGE": env["DASK_CLOUDLAB__STORAGE"]})
    assert collected["cloudlab"]["storage"] == {"s3": {"endpoint_url": "http://cfg:1"}}
