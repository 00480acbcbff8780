"""No secret reaches a product or the output: a sentinel credential pushed through every writer.

The credentials are real ones for the S3 emulator (moto_server accepts any key), given as
``storage_options`` to every reader and writer and, for a CLI run, through the environment. Every
object written (and every local file) is read back byte by byte and searched for the sentinels.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import s3fs
import xarray as xr
from astropy.io import fits

from cloudlab import backdrop, dre, storage
from cloudlab.astronet import views, write_tfrecords
from cloudlab.cutouts import make_cutouts, write_tpfs
from cloudlab.io.tess import open_ffis
from cloudlab.io.tess_ffi import frame_source
from cloudlab.simulate import lightcurves as simulate_lightcurves
from cloudlab.simulate import tess_sector
from cloudlab.simulate.ffis import ffi_stack
from cloudlab.simulate.galaxies import gaussian_psf, sersic_stamp
from cloudlab.timelag import plot_maps, timelag_maps, write_fits, write_zarr

KEY = "SENTINELKEY7F3A9C1E"
SECRET = "SENTINEL-SECRET-9c1e-2b7d-credential"
TOKEN = "SENTINEL-TOKEN-42ab-session"
SENTINELS = [s.encode() for s in (KEY, SECRET, TOKEN)]


def _clean(data: bytes, where: str) -> None:
    for sentinel in SENTINELS:
        assert sentinel not in data, f"{sentinel!r} leaked into {where}"


def _dre_inputs():
    """Two Sérsic galaxies on a tiny model grid (B = 32)."""
    grid = dre.model_grid(
        ax_ratio=(0.5, 0.5, 2), angle=(0.0, 90.0, 2), log_r=(0.5, 0.3, 2), boxsize=32
    ).compute()
    psf = gaussian_psf(2.0, 9)
    rng = np.random.default_rng(2)
    obj = np.array([sersic_stamp(4.0, q, 0.0, 0.8, size=32) * 4e4 for q in (0.5, 1.0)])
    obj = (obj + rng.normal(0, 1, obj.shape)).astype(np.float32)
    cuts = xr.Dataset(
        {
            "obj": (("galaxy", "y", "x"), obj),
            "seg": (("galaxy", "y", "x"), obj > 3.0),
            "rms": (("galaxy", "y", "x"), np.ones_like(obj)),
        },
        coords={"NUMBER": ("galaxy", [1, 2]), "name": ("galaxy", ["00_0001", "00_0002"])},
    ).chunk({"galaxy": 1})
    return grid, psf, cuts


def _timelag_maps():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(30, 4, 5)).cumsum(axis=0)
    b = np.roll(a, 3, axis=0) + 0.3 * rng.normal(size=a.shape)
    t = np.arange(30) * 12.0
    cards = {"CTYPE1": "HPLN-TAN", "CTYPE2": "HPLT-TAN", "CDELT1": 0.6, "CDELT2": 0.6,
             "CUNIT1": "arcsec", "CUNIT2": "arcsec"}  # fmt: skip
    header = fits.Header(cards).tostring()
    cubes = {
        c: xr.DataArray(
            v, dims=("time", "y", "x"), coords={"time": t}, attrs={"fits_header": header}
        )  # fmt: skip
        for c, v in ((94, a), (335, b))
    }
    return timelag_maps(cubes)


def test_no_sentinel_secret_in_any_product_or_output(
    s3_server, s3_bucket, tmp_path, monkeypatch, capsys, caplog
):
    opts = {"key": KEY, "secret": SECRET, "token": TOKEN, "endpoint_url": s3_server.endpoint_url}
    base = f"s3://{s3_bucket}"
    out = f"{base}/products"
    with dask.config.set(scheduler="sync"):
        # BackDrop: FFIs read with the credentials, weights/masks as FITS and zarr
        ffi_stack(f"{base}/in/ffis", n_frames=3, shape=(64, 64), seed=1, storage_options=opts)
        ffis = open_ffis(f"{base}/in/ffis/*.fits", storage_options=opts)
        source = frame_source(ffis, storage_options=opts)
        for text in (repr(ffis), repr(ffis.attrs), repr(source)):
            _clean(text.encode(), "the FFI stack's repr/attrs")
        weights = backdrop.fit(ffis, nknots=6, storage_options=opts).compute()
        _clean(pickle.dumps(weights.attrs), "the weights' attrs")
        backdrop.write_weights_fits(weights, f"{out}/w.fits", storage_options=opts)
        backdrop.write_weights_zarr(weights, f"{out}/w.zarr", storage_options=opts)
        backdrop.write_masks_fits(weights, f"{out}/masks.fits", storage_options=opts)
        again = backdrop.read_weights(f"{out}/w.zarr", storage_options=opts)
        np.testing.assert_allclose(again["poly_w"].values, weights["poly_w"].values)

        # timelag: zarr (even with the options planted in attrs), FITS, PNG
        maps = _timelag_maps()
        maps.attrs["storage_options"] = opts
        write_zarr(maps, f"{out}/maps.zarr", storage_options=opts)
        write_fits(maps, f"{out}/fits", storage_options=opts)
        plot_maps(maps, f"{out}/png", storage_options=opts)

        # DRE: summary FITS, χ as HDF5 and zarr, cuts HDF5, mosaics FITS + PNG
        grid, psf, cuts = _dre_inputs()
        result = dre.fit(cuts, grid, psf)
        dre.write_summary(dre.summarize(result), f"{out}/dre/t_dre.fits", storage_options=opts)
        dre.write_chi_hdf5(result, f"{out}/dre/t_chi.h5", storage_options=opts)
        dre.write_chi_zarr(result, f"{out}/dre/t_chi.zarr", storage_options=opts)
        dre.write_cuts_hdf5(cuts, f"{out}/dre/t_cuts.h5", storage_options=opts)
        dre.write_mosaics(
            dre.mosaics(result, cuts), f"{out}/dre/mosaics", prefix="t_", storage_options=opts
        )

        # TPFs written by the tasks, with the credentials in the graph
        sim = tess_sector(str(tmp_path / "cubes"), n_frames=4, shape=(104, 107), ffis=False)
        ra, dec = sim.wcs.all_pix2world(np.array([[40.0, 50.0], [60.0, 55.0]]), 0).T
        targets = pd.DataFrame({"ticid": [1, 2], "ra": ra, "dec": dec})
        tpfs = write_tpfs(
            make_cutouts(targets, cube_url=sim.cube_url, size=4),
            f"{out}/tpfs",
            storage_options=opts,
        )
        assert len(tpfs) == 2

        # TFRecords
        lc, tces = simulate_lightcurves(3, 3, 2, noise=5e-4, seed=12)
        write_tfrecords(views(lc, tces).compute(), f"{out}/records", storage_options=opts)

    # a CLI run with the credentials in the environment: nothing in stdout, stderr or the logs
    from cloudlab.cli import main

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="cloudlab")
    capsys.readouterr()
    argv = ["backdrop", "fit", "--in-dir", f"{base}/in/ffis", "--out-dir", f"{base}/cli",
            "--nknots", "6", "--format", "both", "--masks", "--verbose"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "wrote s3://" in printed.out
    _clean((printed.out + printed.err + caplog.text).encode(), "the CLI's output or logs")

    # every object and every local file, byte by byte
    fs = s3fs.S3FileSystem(
        key=KEY, secret=SECRET, endpoint_url=s3_server.endpoint_url, skip_instance_cache=True
    )
    objects = fs.find(s3_bucket)
    products = [o for o in objects if "/products/" in o or "/cli/" in o]
    assert len(products) > 40
    for name in (".png", ".h5", ".fits", "zarr.json", ".zmetadata", "train-00000-of-00008"):
        assert any(o.endswith(name) for o in products), name
    for key in objects:
        _clean(fs.cat_file(key), key)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            _clean(Path(path).read_bytes(), str(path))


def test_storage_options_leave_no_trace_in_frame_source_repr():
    options = {"key": KEY, "secret": SECRET}
    ds = xr.Dataset(
        {"flux": (("time", "row", "column"), np.zeros((1, 2, 2), np.float32))},
        coords={
            "url": ("time", ["s3://b/f.fits"]),
            "ccd_row": ("row", [1, 2]),
            "ccd_column": ("column", [45, 46]),
        },
    )
    source = frame_source(ds, storage_options=options)
    assert source.box == (0, 44, 2, 2) and source.storage_options == options
    _clean(repr(source).encode(), "FrameSource.repr")
    with pytest.raises(AttributeError):
        source.hdu = 2  # frozen
    assert storage._secret_values({"key": KEY, "client_kwargs": {"token": TOKEN}}) == {KEY, TOKEN}
