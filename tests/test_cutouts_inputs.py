"""Issue 11, cutouts: catalogs in the shapes people have, damaged TPFs, no network."""

from __future__ import annotations

import errno
import logging
import os
import socket

import pytest

from cloudlab import storage
from cloudlab.errors import StorageError


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_refused_and_dns_errors_are_not_transient() -> None:
    assert not storage.is_transient(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert not storage.is_transient(socket.gaierror(-2, "Name or service not known"))
    wrapped = OSError("could not connect")
    wrapped.__cause__ = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    assert not storage.is_transient(wrapped)
    assert storage.is_transient(ConnectionResetError())  # a dropped connection is retried


def test_unreachable_s3_fails_without_retries(monkeypatch, caplog) -> None:
    pytest.importorskip("s3fs")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with caplog.at_level(logging.WARNING, logger="cloudlab.storage"):
        with pytest.raises(StorageError) as info:
            storage.read_bytes("s3://bucket/cube.fits")
    assert endpoint in str(info.value)
    assert "s3://bucket/cube.fits" in str(info.value)
    retries = [r for r in caplog.records if "transient error" in r.getMessage()]
    assert retries == []  # main retried 5 times (with backoff) before giving up


def test_damaged_tpfs_are_rewritten_or_reported(tmp_path) -> None:
    import dask
    import numpy as np
    import pandas as pd
    from astropy.io import fits

    from cloudlab.cutouts import make_cutouts, write_tpfs
    from cloudlab.cutouts.tpf import TPFWriteError
    from cloudlab.simulate import tess_sector

    sim = tess_sector(str(tmp_path / "cubes"), n_frames=6, shape=(40, 41), ffis=False, seed=1)
    ra, dec = sim.wcs.all_pix2world([[20.0, 20.0], [25.0, 15.0], [12.0, 30.0]], 0).T
    targets = pd.DataFrame({"ticid": [11, 12, 13], "ra": ra, "dec": dec})
    out = tmp_path / "tpfs"
    with dask.config.set(scheduler="synchronous"):
        ds = make_cutouts(targets, cube_url=sim.cube_url, size=5)
        urls = write_tpfs(ds, str(out))
        good = open(urls[2], "rb").read()
        open(urls[0], "wb").close()  # 0-byte file left by a killed run
        os.remove(urls[1])
        os.mkdir(urls[1])  # a directory under the TPF's name
        with pytest.raises(TPFWriteError) as info:
            write_tpfs(ds, str(out))
    assert list(info.value.failed) == [urls[1]]
    assert "directory" in info.value.failed[urls[1]]
    with fits.open(urls[0]) as hdul:  # the 0-byte file was rewritten, not counted as done
        assert hdul[1].data["FLUX"].shape == (6, 5, 5)
        np.testing.assert_array_equal(hdul[1].data["FLUX"], ds["flux"][0].values)
    assert open(urls[2], "rb").read() == good  # the complete one was kept
