"""The same FITS regions read from a local file, the S3 emulator and the GCS emulator."""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from cloudlab import cluster, storage
from cloudlab import fits as cf

RNG = np.random.default_rng(7)


def _files(tmp_path: Path) -> dict[str, Path]:
    """A multi-extension file (float cube, scaled int16 with BLANK, table, RICE image) and a
    small stack."""
    pixels = RNG.integers(-499, 500, (40, 50)).astype("i2")
    pixels[5, 2:9] = -500  # BLANK
    scaled = fits.ImageHDU(pixels, name="SCALED")
    scaled.header["BSCALE"] = 0.5
    scaled.header["BZERO"] = 10.0
    scaled.header["BLANK"] = -500
    mef = tmp_path / "mef.fits"
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(RNG.normal(size=(6, 40, 50)).astype("f4"), name="CUBE"),
            scaled,
            fits.BinTableHDU.from_columns(
                [fits.Column("TIME", "D", array=np.arange(20.0))], name="TABLE"
            ),
            fits.CompImageHDU(
                RNG.integers(0, 3000, (64, 40)).astype("i4"),
                compression_type="RICE_1",
                tile_shape=(16, 40),
                name="RICE",
            ),
        ]
    ).writeto(mef)
    files = {"mef.fits": mef}
    for i in range(4):
        hdu = fits.PrimaryHDU(RNG.normal(size=(20, 30)).astype("f4"))
        hdu.header["TSTART"] = 10.0 * i
        path = tmp_path / f"stack_{i}.fits"
        hdu.writeto(path)
        files[path.name] = path
    return files


def _upload(files: dict[str, Path], prefix: str) -> None:
    for name, path in files.items():
        storage.write_bytes(f"{prefix}/{name}", path.read_bytes())


REGIONS = {
    "CUBE": (slice(1, 4), slice(10, 20), slice(5, 45)),
    "SCALED": (slice(3, 30), slice(0, 7)),
    "RICE": (slice(10, 50), slice(3, 33)),
}


@pytest.fixture
def stores(tmp_path: Path, s3_bucket: str, gcs_bucket: str) -> dict[str, str]:
    files = _files(tmp_path)
    prefixes = {"local": str(tmp_path), "s3": f"s3://{s3_bucket}", "gcs": f"gs://{gcs_bucket}"}
    _upload(files, prefixes["s3"])
    _upload(files, prefixes["gcs"])
    with dask.config.set(scheduler="threads"):
        yield prefixes


def test_same_regions_local_s3_gcs(stores: dict[str, str]) -> None:
    local = f"{stores['local']}/mef.fits"
    for hdu, region in REGIONS.items():
        ref = fits.getdata(local, hdu)[region]
        for store, prefix in stores.items():
            arr = cf.open_hdu(f"{prefix}/mef.fits", hdu, chunks="auto")
            got = arr[region].values
            assert got.dtype == ref.dtype.newbyteorder("="), (store, hdu)
            np.testing.assert_array_equal(got, ref, err_msg=f"{store} {hdu}")
    assert np.isnan(fits.getdata(local, "SCALED")).any()  # BLANK really present


def test_same_header_info_everywhere(stores: dict[str, str]) -> None:
    infos = {s: cf.hdu_info(f"{p}/mef.fits", "RICE") for s, p in stores.items()}
    offsets = {(i.index, i.header_offset, i.data_offset, i.data_size) for i in infos.values()}
    assert len(offsets) == 1
    assert all(i.kind == "compressed" for i in infos.values())


def test_stack_and_headers_from_object_stores(stores: dict[str, str]) -> None:
    ref = np.stack([fits.getdata(f"{stores['local']}/stack_{i}.fits") for i in range(4)])
    for store, prefix in stores.items():
        stack = cf.open_stack(f"{prefix}/stack_*.fits", keys=["TSTART"], dim="time")
        np.testing.assert_array_equal(stack.values, ref, err_msg=store)
        np.testing.assert_array_equal(stack[:, 2:5, 7:9].values, ref[:, 2:5, 7:9])
        np.testing.assert_array_equal(stack["TSTART"].values, [0.0, 10.0, 20.0, 30.0])
        urls = list(stack["url"].values)
        assert all(u.startswith(prefix.split("://")[0]) for u in urls)
        df = cf.read_headers(f"{prefix}/stack_*.fits")
        assert list(df["TSTART"]) == [0.0, 10.0, 20.0, 30.0]
        with pytest.raises(FileNotFoundError, match="missing_9"):
            cf.open_stack([urls[0], f"{prefix}/missing_9.fits"])


def test_table_from_object_stores(stores: dict[str, str]) -> None:
    ref = Table.read(f"{stores['local']}/mef.fits", hdu="TABLE")
    for prefix in stores.values():
        got = cf.read_table(f"{prefix}/mef.fits", "TABLE")
        np.testing.assert_array_equal(got["TIME"], ref["TIME"])


def test_bad_input_on_object_stores(stores: dict[str, str]) -> None:
    for prefix in (stores["s3"], stores["gcs"]):
        storage.write_bytes(f"{prefix}/junk.fits", b"definitely not FITS" * 200)
        with pytest.raises(cf.FITSError, match="not a FITS file") as err:
            cf.open_hdu(f"{prefix}/junk.fits")
        assert "junk.fits" in str(err.value)
        with pytest.raises(FileNotFoundError, match="absent.fits"):
            cf.open_hdu(f"{prefix}/absent.fits")
        with pytest.raises(cf.FITSError, match="out of range"):
            cf.open_hdu(f"{prefix}/mef.fits", 9)


@pytest.mark.gateway
def test_stack_on_gateway_workers_from_s3(stores: dict[str, str], gateway_client) -> None:
    """Headers are read and chunks computed by gateway workers (other processes) from S3."""
    prefix = stores["s3"]
    ref = np.stack([fits.getdata(f"{stores['local']}/stack_{i}.fits") for i in range(4)])
    with gateway_client.as_current(), dask.config.set(scheduler=gateway_client.get):
        assert cluster.active_client() is gateway_client
        stack = cf.open_stack(f"{prefix}/stack_*.fits", keys=["TSTART"])
        got = gateway_client.compute(stack.data[:, 5:15, 3:20]).result()
        cube = cf.open_hdu(f"{prefix}/mef.fits", "CUBE")
        region = gateway_client.compute(cube.data[1:4, 10:20]).result()
    np.testing.assert_array_equal(got, ref[:, 5:15, 3:20])
    np.testing.assert_array_equal(
        region, fits.getdata(f"{stores['local']}/mef.fits", "CUBE")[1:4, 10:20]
    )
