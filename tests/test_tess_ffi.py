"""open_ffis: science-region geometry from headers, laziness, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from _paths import REAL_FFI
from astropy.io import fits

from cloudlab.io.tess import open_ffis
from cloudlab.io.tess_ffi import FFIError, frame_source
from cloudlab.simulate.ffis import ffi_stack
from cloudlab.storage import resolve


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    dest = tmp_path_factory.mktemp("ffis")
    truth = ffi_stack(str(dest), n_frames=3, shape=(64, 80), seed=5, ccd=3, bad_frames=[2])
    return truth, dest


@pytest.mark.skipif(not REAL_FFI.exists(), reason=f"real trimmed FFI not found at {REAL_FFI}")
def test_real_trimmed_ffi_geometry():
    ds = open_ffis(str(REAL_FFI))
    # the file is trimmed to 128 x 173: 44 leading virtual columns + 129 science columns
    assert ds["flux"].shape == (1, 128, 129)
    assert (ds.attrs["sector"], ds.attrs["camera"], ds.attrs["ccd"]) == (1, 1, 4)
    assert ds.attrs["image_column_offset"] == 44 and ds.attrs["image_row_offset"] == 0
    np.testing.assert_array_equal(ds["ccd_column"].values[[0, -1]], [45, 173])
    np.testing.assert_array_equal(ds["ccd_row"].values[[0, -1]], [1, 128])
    image = fits.getdata(REAL_FFI, 1)
    np.testing.assert_array_equal(ds["flux"].values[0], image[:, 44:])
    assert np.median(ds["flux"].values[0, :, 0]) > 100  # sky, not the 69 e/s collateral column
    with fits.open(REAL_FFI) as hdul:
        h = hdul[1].header
        np.testing.assert_allclose(ds["time"].values[0], (h["TSTART"] + h["TSTOP"]) / 2)
        np.testing.assert_allclose(ds["tstart_tjd"].values[0], hdul[0].header["TSTART"])
        err = hdul[2].data  # the uncertainty image is trimmed to 128 x 128 from the same origin
    np.testing.assert_array_equal(ds["flux_err"].values[0, :, :84], err[:, 44:])
    assert np.isnan(ds["flux_err"].values[0, :, 84:]).all()
    assert ds["quality"].values[0] == 0


def test_simulated_stack(sim):
    truth, dest = sim
    ds = open_ffis(str(dest / "*.fits"))
    assert isinstance(ds["flux"].data, da.Array)
    assert ds["flux"].dims == ("time", "row", "column")
    assert ds["flux"].shape == (3, 64, 80)
    np.testing.assert_allclose(ds["time"].values, truth.times)
    np.testing.assert_allclose(ds["tstart_tjd"].values, truth.tstart_tjd)
    np.testing.assert_array_equal(ds["quality"].values, [0, 0, 32])
    assert (ds.attrs["sector"], ds.attrs["camera"], ds.attrs["ccd"]) == (1, 1, 3)
    raw = fits.getdata(truth.urls[1], 1)
    np.testing.assert_array_equal(ds["flux"].values[1], raw[:64, 44:124])
    # pixels far from every star carry the known background plus noise of the stated size
    rr, cc = np.mgrid[:64, :80]
    far = np.ones((64, 80), bool)
    for r, c, _ in truth.stars:
        far &= np.hypot(rr - r, cc - c) > 6
    assert far.sum() > 200
    resid = (ds["flux"].values[0] - truth.background(0))[far]
    err = ds["flux_err"].values[0][far]
    assert abs(np.median(resid)) < 0.05
    mad_sigma = 1.4826 * np.median(np.abs(resid - np.median(resid)))
    np.testing.assert_allclose(mad_sigma, np.median(err), rtol=0.15)
    np.testing.assert_allclose(np.median(err), 0.39, atol=0.05)


def test_gzipped_frames_read_whole(sim, tmp_path):
    truth, dest = sim
    gz = ffi_stack(str(tmp_path), n_frames=3, shape=(64, 80), seed=5, ccd=3, compress=True)
    assert all(u.endswith(".fits.gz") for u in gz.urls)
    plain = open_ffis(str(dest / "*.fits"))["flux"].values
    packed = open_ffis(str(tmp_path / "*.fits.gz"))["flux"].values
    np.testing.assert_array_equal(packed, plain)


def test_memory_filesystem():
    url = "memory://cloudlab-test-ffis/stack"
    truth = ffi_stack(url, n_frames=2, shape=(32, 40), seed=1)
    ds = open_ffis(url + "/*.fits")
    assert ds["flux"].shape == (2, 32, 40)
    np.testing.assert_allclose(ds["time"].values, truth.times)


def test_mixed_ccds_are_refused(sim, tmp_path):
    truth, dest = sim
    other = ffi_stack(str(tmp_path), n_frames=1, shape=(64, 80), seed=2, ccd=1)
    with pytest.raises(FFIError, match="different sector/camera/CCD"):
        open_ffis([*truth.urls, *other.urls])


def test_missing_and_corrupt_frames(sim, tmp_path):
    truth, _ = sim
    with pytest.raises(FileNotFoundError, match="not found"):
        open_ffis([*truth.urls, str(tmp_path / "nope_ffic.fits")])
    broken = tmp_path / Path(truth.urls[0]).name
    shutil.copy(truth.urls[0], broken)
    with open(broken, "r+b") as f:
        f.truncate(20000)
    urls = [str(broken), *truth.urls[1:]]
    with pytest.raises(FFIError, match="could not be read") as info:
        open_ffis(urls)
    assert str(broken) in str(info.value)
    with pytest.warns(UserWarning, match="skipping 1 unreadable"):
        ds = open_ffis(urls, on_error="skip")
    assert ds.sizes["time"] == 2
    assert ds.attrs["skipped"] == [str(broken)]
    with pytest.raises(ValueError, match="on_error"):
        open_ffis(urls, on_error="ignore")
    with pytest.raises(FileNotFoundError, match="no files match"):
        open_ffis(str(tmp_path / "none*.fits"))


@pytest.mark.parametrize("waited", [False, True])
def test_local_frames_in_threads_only_when_their_reads_wait(sim, tmp_path, scan_threads, waited):
    """Local frames are read one after another; the rest go to threads only when the first
    ones waited on the disk longer than they computed. The stack and the frames skipped are the
    same either way."""
    import threading

    from cloudlab.fits import clear_cache
    from cloudlab.io import tess_ffi

    truth, _ = sim
    broken = tmp_path / Path(truth.urls[1]).name
    shutil.copy(truth.urls[1], broken)
    with open(broken, "r+b") as f:
        f.truncate(20000)
    readers = scan_threads(tess_ffi, "_frame_meta", waited)
    clear_cache()
    with pytest.warns(UserWarning, match="skipping 1 unreadable"):
        ds = open_ffis([truth.urls[2], str(broken), truth.urls[0], truth.urls[1]], on_error="skip")
    assert (readers != {threading.get_ident()}) == waited
    assert ds.attrs["skipped"] == [str(broken)]
    assert list(ds["url"].values) == truth.urls
    np.testing.assert_allclose(ds["time"].values, truth.times)
    np.testing.assert_array_equal(ds["quality"].values, [0, 0, 32])


def test_status_reason_and_frame_source(sim, tmp_path):
    truth, dest = sim
    options = {"auto_mkdir": True}  # a harmless local option, passed explicitly
    ds = open_ffis(str(dest / "*.fits"), storage_options=options)
    assert list(ds["status"].values) == ["ok"] * 3 and list(ds["reason"].values) == [""] * 3
    assert ds["flux"].attrs["units"] == "electron / s"
    assert "storage_options" not in ds.attrs  # options never enter attrs
    part = ds.isel(time=[2, 0], row=slice(5, 25), column=slice(10, 40))
    source = frame_source(part, storage_options=options)
    assert source.urls == (truth.urls[2], truth.urls[0])
    assert source.box == (5, 44 + 10, 20, 30) and source.hdu == 1
    assert source.storage_options == options and "auto_mkdir" not in repr(source)
    np.testing.assert_array_equal(source.read(source.urls[0]), part["flux"].values[0])
    assert frame_source(ds.isel(row=[0, 2])) is None  # not contiguous: use the flux chunks
    assert frame_source(ds.drop_vars("url")) is None
    # a stack without an uncertainty HDU says so per frame
    with fits.open(truth.urls[0]) as hdul:
        fits.HDUList([hdul[0].copy(), hdul[1].copy()]).writeto(tmp_path / "noerr_ffic.fits")
    one = open_ffis(str(tmp_path / "noerr_ffic.fits"))
    assert list(one["status"].values) == ["no_uncertainty"]
    assert "no uncertainty HDU" in str(one["reason"].values[0])
    assert np.isnan(one["flux_err"].values).all()


def test_opening_a_stack_costs_two_requests_per_frame(object_store, tmp_path):
    """Primary, calibrated-image and uncertainty headers of each frame from one walk: two GETs
    per frame (the listing gives the sizes) on a shaped S3 store; then one GET per frame."""
    from cloudlab.fits import clear_cache
    from cloudlab.testing import Shaper

    n = 6
    with Shaper(object_store.port, latency=0.002, bandwidth=None) as shaper:
        options = object_store.storage_options(shaper.endpoint_url)
        prefix = f"s3://data/{tmp_path.name}"
        truth = ffi_stack(prefix, n_frames=n, shape=(40, 48), seed=3, storage_options=options)
        clear_cache()
        shaper.reset()
        ds = open_ffis(f"{prefix}/*.fits", storage_options=options)
        opened = shaper.reset()
        assert opened.requests.get("HEAD", 0) == 0
        assert opened.total_requests <= 1 + 2 * n  # the listing, then two per frame
        flux = ds["flux"].compute(scheduler="threads")
        read = shaper.reset()
        assert read.total_requests == n  # one ranged read per frame, no revalidation
        fs, _ = resolve(truth.urls[0], storage_options=options)
        r0, c0 = ds.attrs["image_row_offset"], ds.attrs["image_column_offset"]
        for k, url in enumerate(truth.urls):  # the pixels astropy reads from the same object
            with fs.open(url, "rb") as f:
                image = fits.getdata(f, 1)
            np.testing.assert_array_equal(flux.values[k], image[r0 : r0 + 40, c0 : c0 + 48])
