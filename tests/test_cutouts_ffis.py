"""Cutouts straight from FFIs equal the cube path pixel for pixel (same sector, both written by
the simulator; and a cube built by astrocut's CubeFactory from the same FFIs)."""

from __future__ import annotations

import time
import warnings

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cloudlab.cutouts import make_cutouts, write_tpfs
from cloudlab.errors import InputError
from cloudlab.simulate import tess_sector

SHAPE = (140, 150)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("ffis"))
    return tess_sector(dest, n_frames=9, shape=SHAPE, seed=11)


@pytest.fixture(autouse=True)
def _sync_scheduler():
    with dask.config.set(scheduler="synchronous"):
        yield


def _targets(sim, pixels):
    """Targets at 0-based (column, row) pixels of the simulated WCS, plus a star catalog row."""
    from astropy.wcs import WCS

    ra, dec = WCS(sim.wcs_header).all_pix2world(np.asarray(pixels, float), 0).T
    return pd.DataFrame({"ticid": np.arange(len(ra)) + 100, "ra": ra, "dec": dec})


# interior, every edge, corners, two targets sharing rows, one off the image
PIXELS = [[70.2, 60.7], [0.3, 50.0], [149.0, 139.4], [75.0, 0.2], [3.0, 138.0],
          [80.4, 61.1], [400.0, 60.0]]  # fmt: skip


@pytest.mark.parametrize("size", [5, (4, 7)], ids=["5x5", "4x7"])
def test_ffis_equal_the_cube_pixel_for_pixel(sim, size):
    targets = _targets(sim, PIXELS)
    glob = f"{sim.dest}/*_ffic.fits"
    cube = make_cutouts(targets, cube_url=sim.cube_url, size=size, on_error="skip")
    ffis = make_cutouts(targets, ffis=glob, size=size, on_error="skip")
    cube, ffis = cube.compute(), ffis.compute()
    assert ffis.sizes == cube.sizes and ffis.sizes["target"] == len(PIXELS) - 1
    for name in ("flux", "flux_err", "aperture", "time", "ticid", "corner_column", "corner_row",
                 "center_column", "center_row", "sector", "camera", "ccd", "cube_time",
                 "cube_quality", "cube_ffi_file", "status"):  # fmt: skip
        xr.testing.assert_identical(ffis[name], cube[name])
    # the simulator's cube table holds BARYCORR before its FFI cards were printed (last digit)
    np.testing.assert_allclose(ffis["cube_barycorr"], cube["cube_barycorr"], rtol=1e-14)
    assert np.isfinite(ffis["flux"][0].values).all()  # real pixels, not padding
    assert ffis["cube_url"].item() == glob
    # the off-image target, both ways, named with where it was cut from
    assert ffis.attrs["failed"] == cube.attrs["failed"].replace(sim.cube_url, glob)


def test_ffis_as_a_list_in_any_order_and_tpfs(sim, tmp_path):
    targets = _targets(sim, PIXELS[:2])
    shuffled = list(reversed(sim.ffi_urls))  # frames are put in time order from their headers
    ds = make_cutouts(targets, ffis=shuffled, size=5)
    ref = make_cutouts(targets, cube_url=sim.cube_url, size=5)
    np.testing.assert_array_equal(ds["flux"].values, ref["flux"].values)
    assert len(ds["flux"].data.chunks[1]) >= 1  # chunked along frames only
    with dask.config.set({"array.chunk-size": "100B"}):  # one FFI per task: still equal
        small = make_cutouts(targets, ffis=shuffled, size=5)
    assert len(small["flux"].data.chunks[1]) == len(sim.ffi_urls)
    np.testing.assert_array_equal(small["flux_err"].values, ref["flux_err"].values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        urls = write_tpfs(ds, str(tmp_path / "tpf"))
    from astropy.io import fits

    with fits.open(urls[0]) as hdul:
        np.testing.assert_array_equal(hdul[1].data["FLUX"], ref["flux"].values[0])


def test_ffis_refusals(sim, tmp_path):
    targets = _targets(sim, PIXELS[:1])
    with pytest.raises(InputError, match="cube_url or ffis"):
        make_cutouts(targets, ffis=sim.ffi_urls, cube_url=sim.cube_url)
    other = tess_sector(str(tmp_path / "ccd2"), ccd=2, n_frames=2, shape=SHAPE, seed=3,
                        cube=False)  # fmt: skip
    with pytest.raises(InputError, match="camera, CCD, sector"):
        make_cutouts(targets, ffis=[*sim.ffi_urls[:2], *other.ffi_urls])
    with pytest.raises(FileNotFoundError, match="no files match"):
        make_cutouts(targets, ffis=str(tmp_path / "none*.fits"))


def test_ffis_equal_a_cube_astrocut_builds_from_them(sim, tmp_path):
    astrocut = pytest.importorskip("astrocut")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cube = astrocut.CubeFactory().make_cube(
            sim.ffi_urls, str(tmp_path / "astrocut-cube.fits"), verbose=False
        )
    targets = _targets(sim, PIXELS[:6])
    ref = make_cutouts(targets, cube_url=str(cube), size=(6, 5)).compute()
    ds = make_cutouts(targets, ffis=sim.ffi_urls, size=(6, 5)).compute()
    for name in ("flux", "flux_err", "aperture", "time", "corner_column", "corner_row",
                 "cube_barycorr", "cube_quality"):  # fmt: skip
        np.testing.assert_array_equal(ds[name].values, ref[name].values, err_msg=name)
    # astrocut leaves SECTOR blank unless told; the FFIs' primary headers have it
    assert set(ds["sector"].values) == {55} and set(ref["sector"].values) == {0}


def test_cli_cuts_from_ffis(sim, tmp_path, capsys):
    from astropy.io import fits

    from cloudlab.cli import main

    ((ra, dec),) = _targets(sim, PIXELS[:1])[["ra", "dec"]].to_numpy()
    base = ["cutouts", "--target", "TIC 9", "--ra", str(ra), "--dec", str(dec), "--size", "5"]
    glob = f"{sim.dest}/*_ffic.fits"
    assert main([*base, "--ffis", glob, "--out", str(tmp_path / "f")]) == 0
    assert main([*base, "--cube", sim.cube_url, "--out", str(tmp_path / "c")]) == 0
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == [
        "ffi-headers.parquet",  # the FFIs' headers, for the next run
        "tic9_s0055-1-1_5x5_tpf.fits",
    ]
    name = "tic9_s0055-1-1_5x5_tpf.fits"
    with fits.open(tmp_path / "f" / name) as a, fits.open(tmp_path / "c" / name) as b:
        np.testing.assert_array_equal(a[1].data["FLUX"], b[1].data["FLUX"])
        np.testing.assert_array_equal(a[1].data["TIME"], b[1].data["TIME"])
    capsys.readouterr()
    assert main([*base, "--ffis", glob, "--cube", sim.cube_url, "--out", str(tmp_path / "x")]) == 2
    assert "--ffis and --cube exclude each other" in capsys.readouterr().err
    assert main([*base, "--ffis", glob, "--sector", "54", "--out", str(tmp_path / "y")]) != 0
    assert "contradicts" in capsys.readouterr().err


def _upload_ffis(sim, object_store, shaper, folder: str):
    """Put the sector's FFIs in ``s3://data/{folder}`` behind ``shaper``; return the storage
    options through it, the folder's URL and the filesystem."""
    from cloudlab.storage import resolve

    options = object_store.storage_options(shaper.endpoint_url)
    prefix = f"s3://data/{folder}"
    fs, _ = resolve(prefix, storage_options=options)
    for url in sim.ffi_urls:
        fs.put(url, f"{prefix.removeprefix('s3://')}/{url.rsplit('/', 1)[-1]}")
    return options, prefix, fs


def test_requests_per_ffi_on_an_object_store(sim, object_store, tmp_path):
    """Headers: two GETs per FFI (one walk); pixels: one GET per HDU per FFI for targets whose
    rows overlap, one per target otherwise; the values equal the local cube's."""
    from cloudlab.fits import clear_cache
    from cloudlab.testing import Shaper

    with Shaper(object_store.port, latency=0.002, bandwidth=None) as shaper:
        options, prefix, _ = _upload_ffis(sim, object_store, shaper, tmp_path.name)
        n = len(sim.ffi_urls)
        clear_cache()
        shaper.reset()
        # two targets sharing rows, one far below them
        targets = _targets(sim, [[30.0, 100.0], [90.0, 101.0], [60.0, 20.0]])
        ds = make_cutouts(targets, ffis=f"{prefix}/*_ffic.fits", size=5, storage_options=options)
        opened = shaper.reset()
        assert opened.requests.get("HEAD", 0) == 0 and opened.total_requests <= 1 + 2 * n
        flux = ds["flux"].compute(scheduler="threads")
        read = shaper.reset()
        assert read.total_requests == 2 * 2 * n  # 2 HDUs x 2 row bands per FFI
    ref = make_cutouts(targets, cube_url=sim.cube_url, size=5)
    np.testing.assert_array_equal(flux.values, ref["flux"].values)


def test_header_index_saves_every_header_request(sim, object_store, tmp_path):
    """The second session reads every FFI header from the index: only the listing and the index
    itself are requested; a rewritten FFI is read again and the index rewritten."""
    from cloudlab.fits import clear_cache
    from cloudlab.fits.header import fingerprint_of
    from cloudlab.testing import Shaper

    with Shaper(object_store.port, latency=0.002, bandwidth=None) as shaper:
        options, ffi_dir, fs = _upload_ffis(sim, object_store, shaper, f"{tmp_path.name}/ffi")
        prefix = f"s3://data/{tmp_path.name}"
        glob, index = f"{ffi_dir}/*_ffic.fits", f"{prefix}/out/ffi-headers.parquet"
        targets = _targets(sim, PIXELS[:3])
        first = make_cutouts(targets, ffis=glob, ffi_index=index, size=5, storage_options=options)
        assert fs.exists(index.removeprefix("s3://"))
        clear_cache()
        fs.invalidate_cache()
        shaper.reset()
        again = make_cutouts(targets, ffis=glob, ffi_index=index, size=5, storage_options=options)
        opened = shaper.reset()
        assert opened.total_requests <= 3, opened  # the listing and the index, no FFI header
        np.testing.assert_array_equal(again["flux"].values, first["flux"].values)
        # rewrite one FFI (same bytes, new modification marker): only it is read again.
        # Object stores mark modifications to the second and the bytes (so the ETag) are the
        # same: wait for the next second, or a fast machine rewrites it unnoticeably.
        name = sim.ffi_urls[0].rsplit("/", 1)[-1]
        key = f"{prefix.removeprefix('s3://')}/ffi/{name}"
        before = fingerprint_of(fs.info(key))
        time.sleep(1.1)
        fs.put(sim.ffi_urls[0], key)
        fs.invalidate_cache()
        assert fingerprint_of(fs.info(key)) != before
        clear_cache()
        fs.invalidate_cache()
        shaper.reset()
        make_cutouts(targets, ffis=glob, ffi_index=index, size=5, storage_options=options)
        opened = shaper.reset()
        assert 3 < opened.total_requests <= 3 + 2 + 1, opened  # + its two header reads + a PUT
