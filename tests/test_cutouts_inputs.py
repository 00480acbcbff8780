"""Issue 11, cutouts: catalogs in the shapes people have, damaged TPFs, no network."""

from __future__ import annotations

import errno
import logging
import os
import re
import socket

import numpy as np
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


def _botocore_retries(caplog) -> int:
    """How many times botocore itself decided to retry (its DEBUG log)."""
    return sum(r.getMessage().lower().startswith("retry needed") for r in caplog.records)


def test_unreachable_s3_no_botocore_retries(monkeypatch, caplog) -> None:
    """botocore's own retries (4 more attempts, 10-15 s of backoff on main) are off."""
    pytest.importorskip("s3fs")
    from cloudlab.io.tess import cube_meta

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    caplog.set_level(logging.DEBUG, logger="botocore")
    caplog.set_level(logging.DEBUG, logger="aiobotocore")
    with pytest.raises(StorageError) as info:
        cube_meta("s3://bucket/tess-s0055-1-1-cube.fits")
    assert endpoint in str(info.value)
    assert "tess-s0055-1-1-cube.fits" in str(info.value)
    assert _botocore_retries(caplog) == 0  # main: 4 per request
    # a caller's own botocore retry setting is kept (and the log line counted above exists)
    caplog.clear()
    options = {"config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}}}
    with pytest.raises(StorageError):
        storage.read_bytes("s3://bucket/other.fits", storage_options=options)
    assert _botocore_retries(caplog) >= 1


def test_damaged_tpfs_are_rewritten_or_reported(tmp_path) -> None:
    import dask
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


@pytest.mark.parametrize("name", ["ticid", "TICID", "tic_id", "TIC", "ID", "Id"])
def test_catalog_tic_column_names(tmp_path, name) -> None:
    from cloudlab.io.catalogs import read_tce

    path = tmp_path / "targets.csv"
    path.write_text(f"{name},ra,dec\nTIC 123,10.5,-20.25\n456,11.0,-21.0\ntic-789,12,-22\n")
    df = read_tce(path)
    assert df["ticid"].tolist() == [123, 456, 789]
    assert df["ticid"].dtype == np.int64


def test_catalog_positions_only(tmp_path) -> None:
    from cloudlab.io.catalogs import read_tce

    path = tmp_path / "targets.csv"
    path.write_text("RA,Dec\n123.45671,12.34559\n5.0,-3.5\n")
    df = read_tce(path)
    assert df["ticid"].tolist() == ["J123.4567+12.3456", "J005.0000-03.5000"]
    assert df["ra"].tolist() == [123.45671, 5.0]


@pytest.mark.parametrize(
    ("text", "culprit"),
    [
        ("ticid,ra,dec\n1,2,3\n,4,5\n", "row 1: is empty"),
        ("ticid,ra,dec\n1,2,3\n2,4,5\nabc,6,7\n", "row 2: 'abc' is not a TIC id"),
        ("TIC,ra,dec\nTIC 1,2,3\nTIC x,4,5\n", "row 1: 'TIC x' is not a TIC id"),
        ("ra,dec\n1,2\n3,\n", "'dec', row 1 is empty"),
        ("ra,dec\n1,2\nx,3\n", "'ra', row 1: 'x' is not a number"),
        ("name,mag\na,1\n", "no 'ticid' column"),
    ],
)
def test_catalog_bad_cells_name_the_row(tmp_path, text, culprit) -> None:
    from cloudlab.errors import InputError
    from cloudlab.io.catalogs import read_tce

    path = tmp_path / "targets.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(culprit)) as info:
        read_tce(path)
    assert "targets.csv" in str(info.value)


def test_missing_coordinates_say_how_to_supply_them() -> None:
    import pandas as pd

    from cloudlab.errors import InputError
    from cloudlab.io.catalogs import add_coordinates

    with pytest.raises(InputError, match="TIC 5") as info:
        add_coordinates(pd.DataFrame({"ticid": [5]}))
    assert "--coords" in str(info.value) and "--resolve" in str(info.value)


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_cli_refuses_nonpositive_limit(tmp_path, capsys, limit) -> None:
    from cloudlab.cli import main

    catalog = tmp_path / "targets.csv"
    catalog.write_text("ticid,ra,dec\n1,2,3\n")
    argv = ["cutouts", "--catalog", str(catalog), "--sector", "5", "--out", str(tmp_path / "o")]
    assert main([*argv, "--limit", limit]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--limit {limit}" in err
    assert not (tmp_path / "o").exists()


def test_cli_positions_only_catalog(tmp_path, capsys) -> None:
    import dask

    from cloudlab.cli import main
    from cloudlab.simulate import tess_sector

    sim = tess_sector(str(tmp_path / "cubes"), n_frames=4, shape=(40, 41), ffis=False, seed=2)
    ((ra, dec),) = sim.wcs.all_pix2world([[20.0, 21.0]], 0)
    catalog = tmp_path / "positions.csv"
    catalog.write_text(f"RA,DEC\n{ra},{dec}\n")
    out = tmp_path / "tpfs"
    with dask.config.set(scheduler="synchronous"):
        code = main(["cutouts", "--catalog", str(catalog), "--cube", sim.cube_url, "--size", "5",
                     "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr()
    (name,) = os.listdir(out)
    assert name == f"ticJ{ra:08.4f}_{dec:07.4f}_s0055-1-1_5x5_tpf.fits"  # J<ra>+<dec>
