"""cloudlab.timelag.prepare: registration of level-1 AIA stacks against aiapy, sunpy and reproject,
known lags through registration and solar rotation, and bad input refused before computing."""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage

from cloudlab.errors import CloudlabError, FITSFormatError, InputError
from cloudlab.io import aia
from cloudlab.simulate import aia_series
from cloudlab.timelag import prepare, timelag_maps

#: on-disk region of sunpy's 128x128 full-disk test image (arcsec)
REGION = ((-600, -500), (500, 600))
#: aiapy's register scale for that image (19.18 arcsec/px rounded to a multiple of 0.6)
SCALE = 19.2
#: the tolerance of the issue; the measured agreement is ~1e-7 (float32 output). What is left is
#: interpolation at the edges: each task filters a window with a 16 px margin instead of the
#: whole image (the cubic-spline prefilter's influence decays as 0.268**16 ~ 1e-9)
RTOL = 1e-3

pytest.importorskip("sunpy")
aiapy_register = pytest.importorskip("aiapy.calibrate").register
pytest.importorskip("reproject")


@pytest.fixture(autouse=True)
def _quiet():
    with dask.config.set(scheduler="synchronous"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def sunpy_level1() -> str:
    from sunpy.data.test import get_test_filepath

    return str(get_test_filepath("aia_171_level1.fits"))


def _rolled_rice(source: str, dest: str) -> str:
    """sunpy's frame as JSOC would serve another channel: int16 RICE in HDU 1, rolled 0.7 deg,
    19.05 arcsec/px, reference pixel moved (a simulated level-1 frame with a known sky)."""
    with fits.open(source) as hdus:
        data, header = hdus[0].data, hdus[0].header
        cards = [c for c in header.cards if c.keyword not in
                 ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BLANK", "BSCALE",
                  "BZERO", "COMMENT", "HISTORY", "")]  # fmt: skip
        image = np.clip(np.rint(data * 4), 0, 32767).astype(np.int16)
    out = fits.Header(cards)
    out.update(CROTA2=0.7, CDELT1=19.05, CDELT2=19.05)
    out["CRPIX1"] += 1.3
    out["CRPIX2"] -= 2.1
    hdu = fits.CompImageHDU(image, out, compression_type="RICE_1", tile_shape=(1, 128))
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(dest)
    return dest


@pytest.fixture(scope="module", params=["sunpy-float64", "rolled-rice-int16"])
def level1_file(request, sunpy_level1, tmp_path_factory) -> str:
    if request.param == "sunpy-float64":
        return sunpy_level1
    return _rolled_rice(sunpy_level1, str(tmp_path_factory.mktemp("rice") / "aia.fits"))


def _registered(url: str, **options) -> tuple[np.ndarray, fits.Header]:
    """cloudlab's registration of one frame, back in DN (as the references keep it)."""
    cube = prepare({171: aia.open_stack(url)}, region=REGION, scale=SCALE, align=False, **options)
    out = cube[171]
    return out.values[0] * float(out["exptime"].values[0]), fits.Header.fromstring(
        out.attrs["fits_header"]
    )


def _assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    inner = (slice(2, -2), slice(2, -2))  # the interior: away from the region's edges
    assert np.isfinite(got[inner]).all() and np.isfinite(expected[inner]).all()
    rel = np.abs(got[inner] - expected[inner]) / np.abs(expected[inner])
    assert rel.max() <= RTOL, rel.max()


def test_single_frame_equals_aiapy_register_then_submap(level1_file):
    import sunpy.map
    from astropy.coordinates import SkyCoord

    level1 = sunpy.map.Map(level1_file)
    # in float, as cloudlab returns it (sunpy's rotate would round an int16 map to integers)
    registered = aiapy_register(sunpy.map.Map(level1.data.astype(np.float64), level1.meta))
    assert registered.scale[0].value == pytest.approx(SCALE)
    frame = registered.coordinate_frame
    (x0, y0), (x1, y1) = REGION
    expected = registered.submap(
        SkyCoord(x0, y0, unit="arcsec", frame=frame),
        top_right=SkyCoord(x1, y1, unit="arcsec", frame=frame),
    )
    got, header = _registered(level1_file, derotate=False)
    assert header["CRPIX1"] == pytest.approx(expected.meta["crpix1"])
    assert header["CRPIX2"] == pytest.approx(expected.meta["crpix2"])
    _assert_close(got, expected.data)


def test_derotation_equals_sunpy_propagate_with_solar_surface_and_reproject(level1_file):
    import sunpy.map
    from sunpy.coordinates import propagate_with_solar_surface

    got, header = _registered(level1_file, derotate=True, reference_time="2011-02-15T12:00:00")
    target = sunpy.map.Map(np.zeros(got.shape), header)
    with propagate_with_solar_surface():
        expected = sunpy.map.Map(level1_file).reproject_to(
            target.wcs, algorithm="interpolation", order="bicubic"
        )
    _assert_close(got, expected.data)
    # 12 h of rotation moves the disk centre by ~6 pixels: the two must differ
    still, _ = _registered(level1_file, derotate=False)
    assert np.nanmax(np.abs(still - got) / got) > 0.1


# ------------------------------------------------------------------ simulated level-1 series
@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Three channels, level-1 frames (own scale, roll, reference pixel), rotating Sun."""
    return aia_series(
        str(tmp_path_factory.mktemp("level1")), channels=(94, 335, 171), shape=(32, 64),
        n_frames=100, cadence_s=24, level1=True, block=16,
    )  # fmt: skip


def _uniform_truth(series, a: int, b: int) -> np.ndarray:
    """Pixels 5 or more pixels inside a block whose truth (lag and pulses) is uniform."""
    keys = [series.expected_lag(a, b), *series.pulse_times]
    same = [ndimage.maximum_filter(k, 11) == ndimage.minimum_filter(k, 11) for k in keys]
    return np.all(same, axis=0)


def test_simulated_level1_frames_differ_per_channel(series):
    headers = {c: fits.getheader(series.files[c][0], 1) for c in (94, 335, 171)}
    for key in ("CDELT1", "CROTA2", "CRPIX1"):
        assert len({h[key] for h in headers.values()}) == 3, key
    assert headers[94]["NAXIS1"] > 64 and headers[94]["LVL_NUM"] == 1.0


def test_prepared_frames_match_the_truth_at_their_times(series):
    cubes = {c: aia.open_stack(series.files[c]) for c in (94, 171)}
    prepared = prepare(cubes, region=series.region, reference_time=series.reference_time,
                       align=False)  # fmt: skip
    for channel, cube in prepared.items():
        assert cube.shape == (100, 32, 64)
        assert len(cube.data.__dask_graph__()) == 100  # one task per frame
        truth = series.rate(channel, cube["time"].values)
        inside = _uniform_truth(series, 94, 171)
        rel = np.abs(cube.values - truth)[:, inside] / truth[:, inside]
        assert rel.max() < 5e-3 and np.median(rel) < 1e-3  # int16 rounding, spline ringing
    # without derotation the blocks drift by ~11 px over the series, so the light curves of
    # pixels near block edges mix with their neighbours'
    still = prepare(cubes, region=series.region, reference_time=series.reference_time,
                    align=False, derotate=False)[94]  # fmt: skip
    truth = series.rate(94, still["time"].values)
    rel_still = np.abs(still.values - truth)[:, inside] / truth[:, inside]
    rel = np.abs(prepared[94].values - truth)[:, inside] / truth[:, inside]
    assert rel_still.max() > 10 * rel.max()


def test_prepare_then_timelag_maps_recovers_the_injected_lags(series):
    cubes = {c: aia.open_stack(series.files[c]) for c in (94, 335, 171)}
    maps = timelag_maps(
        prepare(cubes, region=series.region, reference_time=series.reference_time)
    ).compute()
    for pair in maps["pair"].values:
        a, b = (int(c) for c in pair.split("-"))
        inside = _uniform_truth(series, a, b)
        assert inside.sum() > 500
        expected = series.expected_lag(a, b)[inside]
        np.testing.assert_array_equal(maps["timelag"].sel(pair=pair).values[inside], expected)


def test_runs_on_a_local_cluster(series, local_client):
    cubes = {c: aia.open_stack(series.files[c][:6]) for c in (94, 171)}
    options = dict(region=series.region, reference_time=series.reference_time, align=False)
    lazy = prepare(cubes, **options)
    remote = local_client.compute(lazy[171].data).result()
    with dask.config.set(scheduler="synchronous"):
        local = prepare(cubes, **options)[171].values
    np.testing.assert_array_equal(remote, local)


@pytest.mark.gateway
def test_runs_on_the_gateway_with_workers_reading_s3(series, gateway_client, s3_bucket):
    """Level-1 frames on the S3 emulator, registered and derotated by gateway workers."""
    import fsspec

    fs = fsspec.filesystem("s3")
    remote = {}
    for channel in (94, 171):
        remote[channel] = []
        for path in series.files[channel][:6]:
            url = f"s3://{s3_bucket}/lev1/{channel:04d}/{path.rsplit('/', 1)[-1]}"
            fs.put_file(path, url)
            remote[channel].append(url)
    options = dict(region=series.region, reference_time=series.reference_time, align=False)
    with dask.config.set(scheduler=gateway_client):
        on_gateway = prepare({c: aia.open_stack(u) for c, u in remote.items()}, **options)
        got = {c: cube.values for c, cube in on_gateway.items()}
    local = prepare({c: aia.open_stack(series.files[c][:6]) for c in remote}, **options)
    for channel, cube in local.items():
        assert np.isfinite(got[channel]).mean() > 0.9
        np.testing.assert_array_equal(got[channel], cube.values)


# ------------------------------------------------------------------ bad input
def _frame_with(tmp_path, source: str, name: str, **changes) -> str:
    with fits.open(source) as hdus:
        header = hdus[1].header.copy()
        data = hdus[1].data
    for key, value in changes.items():
        if value is None:
            del header[key]
        else:
            header[key] = value
    hdu = fits.CompImageHDU(data, header, compression_type="RICE_1")
    path = str(tmp_path / name)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    return path


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"CROTA2": None}, "CROTA2"),
        ({"CDELT1": None}, "CDELT1"),
        ({"CTYPE1": "PIXEL", "CTYPE2": "PIXEL"}, "WCS"),
        ({"CDELT1": "wide"}, "CDELT1"),
        ({"HGLN_OBS": None}, "HGLN_OBS"),
    ],
)
def test_bad_headers_name_the_file_and_key(series, tmp_path, changes, match):
    bad = _frame_with(tmp_path, series.files[171][3], "bad.fits", **changes)
    cube = aia.open_stack([*series.files[171][:3], bad])
    with pytest.raises(FITSFormatError, match=f"bad.fits.*{match}|{match}.*bad.fits"):
        prepare({171: cube}, region=series.region, align=False)


@pytest.mark.parametrize("key", ["T_OBS", "EXPTIME"])
def test_missing_time_or_exposure_is_refused_when_opening(series, tmp_path, key):
    bad = _frame_with(tmp_path, series.files[171][3], "bad.fits", **{key: None})
    with pytest.raises(FITSFormatError, match=f"{key}.*bad.fits"):
        aia.open_stack([*series.files[171][:3], bad])


def test_region_outside_a_frame_or_off_the_disk_is_refused(series, sunpy_level1):
    cube = {171: aia.open_stack(series.files[171][:4])}
    with pytest.raises(InputError, match=r"aia_lev1_171a.*reaches outside"):
        prepare(cube, region=((-500, 0), (-300, 100)), align=False)
    full_disk = {171: aia.open_stack(sunpy_level1)}
    with pytest.raises(InputError, match=r"aia_171_level1.fits.*off the solar disk"):
        prepare(full_disk, region=((1100, 0), (1200, 100)), scale=SCALE, align=False)
    with pytest.raises(InputError, match="scale"):
        prepare(cube, region=series.region, scale=0)
    with pytest.raises(InputError, match="rotation_model"):
        prepare(cube, region=series.region, rotation_model="solid")
    with pytest.raises(CloudlabError, match="top_right"):
        prepare(cube, region=((0, 0), (-10, -10)))


def test_command_line_prep_derotate_recovers_the_injected_lags(series, tmp_path):
    import argparse

    import xarray as xr

    from cloudlab.commands import timelag as command

    parser = argparse.ArgumentParser(prog="cloudlab")
    command.register(parser.add_subparsers(dest="command"))
    (x0, y0), (x1, y1) = series.region
    out = tmp_path / "out"
    args = parser.parse_args([
        "timelag", "--channel", f"94={series.files[94][0].rsplit('/', 1)[0]}/*.fits",
        "--channel", f"171={series.files[171][0].rsplit('/', 1)[0]}/*.fits",
        "--prep", "--derotate", "--reference-time", str(series.reference_time),
        "--bottom-left", f"{x0},{y0}", "--top-right", f"{x1},{y1}", "--out", str(out), "--no-png",
    ])  # fmt: skip
    assert args.prep and args.derotate and args.scale == 0.6
    assert args.func(args) == 0
    maps = xr.open_zarr(out / "timelag_maps.zarr").compute()
    inside = _uniform_truth(series, 94, 171)
    got = maps["timelag"].sel(pair="94-171").values
    np.testing.assert_array_equal(got[inside], series.expected_lag(94, 171)[inside])


# ------------------------------------------------------------------ full-size geometry
def _level1_header(k: int) -> fits.Header:
    """A full 4096x4096 level-1 header (its own scale, roll and reference pixel)."""
    header = fits.Header()
    cards = {
        "SIMPLE": True, "BITPIX": 16, "NAXIS": 2, "NAXIS1": 4096, "NAXIS2": 4096,
        "TELESCOP": "SDO/AIA", "WAVELNTH": 171, "EXPTIME": 2.0, "QUALITY": 0,
        "T_OBS": f"2011-02-15T00:00:{1 + 12 * k:02d}.34Z", "CTYPE1": "HPLN-TAN",
        "CTYPE2": "HPLT-TAN", "CUNIT1": "arcsec", "CUNIT2": "arcsec",
        "CDELT1": 0.6 * (1 + 0.003 * (k - 1)), "CDELT2": 0.6 * (1 + 0.003 * (k - 1)),
        "CRPIX1": 2048.5 + 1.7 * k, "CRPIX2": 2048.5 - 1.3 * k, "CRVAL1": 0.0, "CRVAL2": 0.0,
        "CROTA2": 0.1 + 0.05 * k, "HGLN_OBS": 0.0, "HGLT_OBS": -6.82,
        "DSUN_OBS": 1.47724815e11, "RSUN_REF": 696000000.0,
    }  # fmt: skip
    for key, value in cards.items():
        header[key] = value
    return header


@pytest.mark.parametrize("derotate", [True, False])
def test_coarse_pixel_map_is_within_a_thousandth_of_a_pixel_of_the_exact_map(tmp_path, derotate):
    from dataclasses import replace

    from cloudlab.fits import hdu_info
    from cloudlab.testing.sparse import sparse_fits
    from cloudlab.timelag import register

    path = tmp_path / "frame.fits"
    sparse_fits(path, [_level1_header(2)])
    info = hdu_info(str(path), 0)
    t_obs = np.datetime64("2011-02-15T00:00:25.34")
    t_ref = t_obs + np.timedelta64(6, "h")  # 6 h of rotation: a curved map
    frame = register.frame_of(info, t_obs, 2.0, t_ref)
    if derotate:
        frame = replace(frame, observer=register.observers([info], [t_obs])[0],
                        axis_drift=float(register.hgs_axis_drift(t_ref, [t_obs])[0]))  # fmt: skip
    exact = {}
    regions = {"400": ((-450, -50), (-50, 350)), "wide": ((-400, -400), (300, 300)),
               "limb": ((600, -200), (1000, 200))}  # fmt: skip
    for name, region in regions.items():
        grid = register.grid_for(frame, region, 0.6, info.shape, t_ref, 696e6, derotate,
                                 "howard", 16)  # fmt: skip
        x, y = register.fast_pixel_map(frame, grid)
        ex, ey = register.pixel_map(frame, grid, *np.indices(grid.shape, dtype=np.float64))
        exact[name] = (x, y, ex, ey)
        finite = np.isfinite(ex)
        np.testing.assert_array_equal(np.isfinite(x), finite)
        assert np.abs(x - ex)[finite].max() <= register.MAP_TOLERANCE
        assert np.abs(y - ey)[finite].max() <= register.MAP_TOLERANCE
    for name in ("400", "wide"):  # 668 and 1167 px: nodes every 32 and (unless derotated) 256
        x, y, ex, ey = exact[name]
        assert 0 < np.abs(x - ex).max() < 1e-4  # interpolated, not computed per pixel
    if derotate:  # beyond the limb the map is undefined: computed per pixel, NaN there
        x, y, ex, ey = exact["limb"]
        assert np.isnan(ex).any()
        np.testing.assert_array_equal(x, ex)
    # a check that fails falls back to the exact map
    grid = register.grid_for(frame, ((-450, -50), (-50, 350)), 0.6, info.shape, t_ref, 696e6,
                             derotate, "howard", 16)  # fmt: skip
    x, _ = register.fast_pixel_map(frame, grid, tolerance=1e-15)
    np.testing.assert_array_equal(x, exact["400"][2])


def _rice_frame(path, k: int) -> str:
    """A 1024x1024 RICE frame (one tile per row) of a limb-darkened disk, 2.4 arcsec/px."""
    header = _level1_header(k)
    for key in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2"):
        del header[key]
    header["CDELT1"] = header["CDELT2"] = 2.4 * (1 + 0.003 * (k - 1))
    header["CRPIX1"], header["CRPIX2"] = 512.5 + 0.4 * k, 512.5 - 0.3 * k
    yy, xx = np.indices((1024, 1024))
    r = np.hypot(xx - 512, yy - 512) / 400
    disk = np.where(r < 1, 0.4 + 0.6 * np.sqrt(np.clip(1 - r * r, 0, 1)), 0.02)
    noise = np.random.default_rng(k).integers(0, 40, disk.shape)
    image = (3000 * disk * (1 + 0.2 * np.sin(xx / 13) * np.cos(yy / 17)) + noise).astype(np.int16)
    hdu = fits.CompImageHDU(image, header, compression_type="RICE_1", tile_shape=(1, 1024))
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    return str(path)


def test_prepared_region_of_a_rice_frame_fetches_only_the_rows_it_touches(tmp_path):
    """Through a filesystem without ``fileno`` (as for remote files), registering a region reads
    the headers, the tile table and the compressed rows the region and its interpolation margin
    touch, and gives what the same frame gives read from the local disk."""
    from astropy.wcs import WCS

    from cloudlab.testing.counting import CountingFileSystem

    path = _rice_frame(tmp_path / "aia_lev1_171a_000.fits", 2)
    region, margin = ((-300, -100), (100, 300)), 16
    CountingFileSystem.reset()
    cube = prepare({171: aia.open_stack(f"countreads://{path}")}, region=region,
                   derotate=False, align=False, margin=margin)[171]  # fmt: skip
    got = cube.values
    counts = CountingFileSystem.reset()
    local = prepare({171: aia.open_stack(path)}, region=region, derotate=False, align=False,
                    margin=margin)[171]  # fmt: skip
    np.testing.assert_array_equal(got, local.values)
    # the frame rows the grid maps to (astropy's WCS), widened by the margin and the spline
    grid = WCS(fits.Header.fromstring(cube.attrs["fits_header"]))
    ny, nx = got.shape[1:]
    edge = np.concatenate([np.c_[np.arange(nx), np.zeros(nx)], np.c_[np.arange(nx),
                           np.full(nx, ny - 1)], np.c_[np.zeros(ny), np.arange(ny)],
                           np.c_[np.full(ny, nx - 1), np.arange(ny)]])  # fmt: skip
    with fits.open(path, disable_image_compression=True) as hdul:
        wcs = WCS(fits.getheader(path, 1))
        _, rows = wcs.world_to_pixel_values(*grid.pixel_to_world_values(edge[:, 0], edge[:, 1]))
        first, last = int(np.floor(rows.min())) - margin - 1, int(np.ceil(rows.max())) + margin + 1
        table = hdul[1]
        headers = hdul.fileinfo(1)["datLoc"]  # both headers
        compressed = table.header["NAXIS1"] * table.header["NAXIS2"]
        touched = sum(len(table.data["COMPRESSED_DATA"][r]) for r in range(first, last + 1))
        heap = int(table.header["PCOUNT"])
    assert touched < heap / 3
    # headers: open_stack scans them twice (the image HDU, then the stack; reading the first 8
    # FITS blocks at least); the tile table is read with the compressed HDU's header in one
    # request that has room for 16-byte rows (these are 8: up to one table's worth more)
    scans = 2 * max(headers, 8 * 2880)
    assert counts["bytes"] <= touched + 2 * compressed + scans + headers, counts
    assert counts["get"] <= 4, counts  # two header scans; the tile table; the tiles
