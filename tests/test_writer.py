"""The one writer: overwrite policy, no half-written product, previous product survives failures.

Run locally, on the S3 emulator (moto_server), on the GCS emulator and on a real fsspec
filesystem that fails on its Nth write.
"""

from __future__ import annotations

import threading
from pathlib import Path

import dask
import dask.array as da
import fsspec
import numpy as np
import pytest
import xarray as xr
from fsspec.implementations.memory import MemoryFileSystem

from cloudlab import storage
from cloudlab.errors import OverwriteError, StorageError


class FailingWriteFileSystem(MemoryFileSystem):
    """An in-memory filesystem (``failwrite://``) whose writes or copies fail once armed.

    ``arm(n, "pipe")`` lets ``n`` object writes succeed and fails the next ones; ``arm(n,
    "copy")`` does the same for server-side copies.
    """

    protocol = "failwrite"
    store: dict = {}
    pseudo_dirs = [""]
    lock = threading.Lock()
    budget: dict = {"pipe": None, "copy": None}

    @classmethod
    def arm(cls, n: int | None, what: str = "pipe") -> None:
        cls.budget = {"pipe": None, "copy": None}
        cls.budget[what] = n

    def _spend(self, what: str, path: str) -> None:
        with self.lock:
            left = type(self).budget[what]
            if left is None:
                return
            if left <= 0:
                raise OSError(f"injected {what} failure at {path}")
            type(self).budget[what] = left - 1

    def pipe_file(self, path, value, *args, **kwargs):
        self._spend("pipe", path)
        return super().pipe_file(path, value, *args, **kwargs)

    def cp_file(self, path1, path2, **kwargs):
        self._spend("copy", path2)
        return super().cp_file(path1, path2, **kwargs)


fsspec.register_implementation("failwrite", FailingWriteFileSystem, clobber=True)


@pytest.fixture(autouse=True)
def _sync_scheduler():
    FailingWriteFileSystem.arm(None)
    with dask.config.set(scheduler="sync"):
        yield
    FailingWriteFileSystem.arm(None)


def _product(scale: float, n: int = 40, chunk: int = 10) -> xr.Dataset:
    """A lazy dataset with known values: ``value = scale * arange(n)``."""
    return xr.Dataset(
        {
            "value": ("x", da.arange(n, chunks=chunk) * scale),
            "label": ("x", np.array([f"item-{i}" for i in range(n)])),
        },
        coords={"x": np.arange(n)},
        attrs={"scale": scale},
    )


def _failing(n: int = 40, chunk: int = 10) -> xr.Dataset:
    """A lazy dataset whose last chunk raises while it is computed."""

    def boom(block, block_info=None):
        if block_info[0]["chunk-location"][0] == n // chunk - 1:
            raise RuntimeError("worker lost on the last chunk")
        return block

    data = da.arange(n, chunks=chunk).map_blocks(boom, dtype=float)
    return xr.Dataset({"value": ("x", data)}, coords={"x": np.arange(n)})


def _leftovers(url: str) -> list[str]:
    """Staging or aside copies next to ``url``."""
    fs, path = storage.resolve(url)
    parent = path.rstrip("/").rpartition("/")[0]
    fs.invalidate_cache(parent)
    return [p for p in fs.ls(parent, detail=False) if ".partial" in p or ".previous" in p]


@pytest.fixture(params=["local", "s3", "gcs", "failwrite"])
def base(request, tmp_path) -> str:
    """A fresh destination directory on each kind of storage."""
    if request.param == "local":
        return str(tmp_path)
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/products"
    if request.param == "gcs":
        return f"gs://{request.getfixturevalue('gcs_bucket')}/products"
    FailingWriteFileSystem.store.clear()
    return f"failwrite://run-{tmp_path.name}"


def test_write_zarr_policy_everywhere(base):
    url = f"{base}/maps.zarr"
    assert storage.write_zarr(_product(1.0), url, progress=False) == url
    first = storage.read_zarr(url).compute()
    np.testing.assert_array_equal(first["value"].values, np.arange(40.0))
    assert first.attrs == {"scale": 1.0}
    assert list(first["label"].values[:2]) == ["item-0", "item-1"]

    # overwrite=False refuses, naming the path, before anything is computed
    with pytest.raises(OverwriteError, match="maps.zarr already exists.*overwrite=True"):
        storage.write_zarr(_failing(), url, progress=False)

    # a failure while the new store is computed leaves the previous one readable and equal
    with pytest.raises(RuntimeError, match="worker lost"):
        storage.write_zarr(_failing(), url, overwrite=True, progress=False)
    xr.testing.assert_identical(storage.read_zarr(url).compute(), first)
    assert _leftovers(url) == []

    # overwrite=True replaces, also with a different layout (stale chunks removed)
    storage.write_zarr(_product(2.0, n=25, chunk=5), url, overwrite=True, progress=False)
    second = storage.read_zarr(url).compute()
    np.testing.assert_array_equal(second["value"].values, 2.0 * np.arange(25))
    assert second.attrs == {"scale": 2.0}
    assert _leftovers(url) == []
    fs, path = storage.resolve(url)
    fs.invalidate_cache(path)
    chunks = [p for p in fs.find(path) if "/value/" in p and not p.endswith(("json", "zarray"))]
    assert len(chunks) == 5  # 25 values in chunks of 5; the four old chunks of 10 are gone


def test_failure_while_writing_chunks_keeps_previous_store():
    url = "failwrite://mid/store.zarr"
    FailingWriteFileSystem.store.clear()
    storage.write_zarr(_product(1.0), url, progress=False)
    before = storage.read_zarr(url).compute()
    FailingWriteFileSystem.arm(3)  # the 4th object written fails: metadata and first chunks ok
    with pytest.raises(OSError, match="injected pipe failure"):
        storage.write_zarr(_product(5.0), url, overwrite=True, progress=False)
    FailingWriteFileSystem.arm(None)
    xr.testing.assert_identical(storage.read_zarr(url).compute(), before)
    assert _leftovers(url) == []


def test_failure_while_copying_into_place_names_the_complete_copy():
    url = "failwrite://switch/store.zarr"
    FailingWriteFileSystem.store.clear()
    storage.write_zarr(_product(1.0), url, progress=False)
    FailingWriteFileSystem.arm(0, "copy")
    with pytest.raises(StorageError, match=r"complete at failwrite://.*\.partial") as info:
        storage.write_zarr(_product(3.0), url, overwrite=True, progress=False)
    FailingWriteFileSystem.arm(None)
    staging = str(info.value).split("complete at ")[1].split(" but")[0]
    np.testing.assert_array_equal(storage.read_zarr(staging)["value"].values, 3.0 * np.arange(40))
    # nothing was copied: the previous store is still whole
    np.testing.assert_array_equal(storage.read_zarr(url)["value"].values, np.arange(40.0))


def test_metadata_is_copied_after_every_chunk():
    keys = ["s/.zmetadata", "s/a/.zarray", "s/a/0", "s/.zgroup", "s/a/1", "s/b/zarr.json"]
    ordered = storage._metadata_last(keys, "s")
    assert ordered[:2] == ["s/a/0", "s/a/1"]
    assert set(ordered[2:4]) == {"s/a/.zarray", "s/b/zarr.json"}
    assert set(ordered[4:]) == {"s/.zmetadata", "s/.zgroup"}


def test_write_zarr_computes_on_the_active_cluster(local_client, tmp_path):
    url = str(tmp_path / "c.zarr")
    with dask.config.set(scheduler=None):
        storage.write_zarr(_product(4.0), url, progress=False)
    np.testing.assert_array_equal(storage.read_zarr(url)["value"].values, 4.0 * np.arange(40))


def test_write_file_and_write_bytes_policy(base):
    url = f"{base}/table.fits"
    with storage.write_file(url) as tmp:
        Path(tmp).write_bytes(b"first")
    assert storage.read_bytes(url) == b"first"
    ran = []
    with pytest.raises(OverwriteError, match="table.fits already exists"):
        with storage.write_file(url):
            ran.append(True)
    assert ran == []  # refused before the body (the computation) ran
    with pytest.raises(RuntimeError, match="half"):
        with storage.write_file(url, overwrite=True) as tmp:
            Path(tmp).write_bytes(b"hal")
            raise RuntimeError("half written")
    assert storage.read_bytes(url) == b"first"
    with storage.write_file(url, overwrite=True) as tmp:
        Path(tmp).write_bytes(b"second")
    assert storage.read_bytes(url) == b"second"
    with pytest.raises(OverwriteError):
        storage.write_bytes(url, b"third", overwrite=False)
    assert storage.read_bytes(url) == b"second"
    storage.write_bytes(url, b"third", overwrite=True)
    assert storage.read_bytes(url) == b"third"


def test_check_writable_names_every_existing_destination(base):
    urls = [f"{base}/dir/f{i}.bin" for i in range(8)]
    for url in urls[::2]:
        storage.write_bytes(url, b"x")
    assert storage.existing(urls) == urls[::2]
    assert storage.existing(f"{base}/dir/none.bin") == []
    storage.check_writable(urls, overwrite=True)
    with pytest.raises(OverwriteError, match=r"f0\.bin.*f2\.bin.*f4\.bin.*f6\.bin already exist"):
        storage.check_writable(urls)
    storage.check_writable(urls[1::2])


def test_storage_options_never_reach_the_store(tmp_path):
    secret = "SENTINEL-writer-0123456789"
    ds = _product(1.0)
    ds.attrs.update(storage_options={"secret": secret}, note=f"opened with {secret}", keep="yes")
    ds["value"].attrs["storage_options"] = {"token": secret}
    url = str(tmp_path / "s.zarr")
    storage.write_zarr(ds, url, storage_options={"secret": secret}, progress=False)
    back = storage.read_zarr(url)
    assert back.attrs == {"scale": 1.0, "keep": "yes"}
    assert "storage_options" not in back["value"].attrs
    for path in Path(url).rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes()
