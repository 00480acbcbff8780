"""cloudlab.timelag: sunkit-image-exact cross-correlation maps, lazy, distributed and on GPU."""

from __future__ import annotations

import astropy.units as u
import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from sunkit_image import time_lag as skt

from cloudlab.chunking import plan_spatial_chunks
from cloudlab.timelag import (
    cross_correlation,
    default_pairs,
    max_correlation_map,
    timelag_bytes_per_pixel,
    timelag_map,
    timelag_maps,
)

#: the six AIA channels, hot to cool
AIA = (94, 335, 211, 193, 171, 131)


@pytest.fixture(autouse=True)
def _synchronous():
    with dask.config.set(scheduler="synchronous"):
        yield


def cube(values: np.ndarray, times, header: str | None = None) -> xr.DataArray:
    """A DataArray with time first and generic spatial dims."""
    dims = ("time", "y", "x")[: values.ndim] if values.ndim <= 3 else None
    attrs = {"fits_header": header} if header else {}
    return xr.DataArray(values, dims=dims, coords={"time": times}, attrs=attrs)


def gaussian_pulses(spatial: tuple[int, ...]):
    """sunkit-image's test case: sigma 0.02 s pulses at 0.4 s and 0.6 s, 500 samples in 1 s."""
    t = np.linspace(0, 1, 500)
    pulse = [np.exp(-((t - c) ** 2) / (2 * 0.02**2)) for c in (0.4, 0.6)]
    shape = (500, *spatial)
    a, b = (np.broadcast_to(p.reshape((-1,) + (1,) * len(spatial)), shape).copy() for p in pulse)
    return t, a, b


def random_walks(shape=(96, 6, 7), shift=5, seed=3):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=shape).cumsum(axis=0)
    b = np.roll(a, shift, axis=0) + 0.3 * rng.normal(size=shape)
    return a, b


def wcs_header(crpix1=10.0) -> str:
    header = fits.Header()
    for key, value in {
        "CTYPE1": "HPLN-TAN", "CTYPE2": "HPLT-TAN", "CUNIT1": "arcsec", "CUNIT2": "arcsec",
        "CDELT1": 0.6, "CDELT2": 0.6, "CRPIX1": crpix1, "CRPIX2": 5.0, "CRVAL1": 0.0,
        "CRVAL2": 0.0, "DATE-OBS": "2011-02-13T15:00:00", "HGLN_OBS": 0.0, "HGLT_OBS": -6.8,
        "DSUN_OBS": 1.477e11, "RSUN_REF": 696000000.0,
    }.items():  # fmt: skip
        header[key] = value
    return header.tostring()


# ------------------------------------------------------------------ reference values and maths
@pytest.mark.parametrize("spatial", [(5, 5), (10,), (1,)])
def test_gaussian_pulse_reference_values(spatial):
    t, a, b = gaussian_pulses(spatial)
    lag = timelag_map(cube(a, t), cube(b, t))
    peak = max_correlation_map(cube(a, t), cube(b, t))
    assert isinstance(lag.data, da.Array) and lag.attrs["units"] == "s"
    assert lag.shape == spatial and peak.shape == spatial
    np.testing.assert_allclose(lag.values, 100 / 499, rtol=0, atol=1e-9)
    np.testing.assert_allclose(lag.values, 0.2004008016, rtol=0, atol=1e-9)
    np.testing.assert_allclose(peak.values, 0.9846631528, rtol=0, atol=1e-9)
    np.testing.assert_allclose(timelag_map(cube(b, t), cube(a, t)).values, -0.2004008016, atol=1e-9)


@pytest.mark.parametrize(
    "bounds",
    [None, (-240.0, 240.0), [-36, 36] * u.s, (-0.02 * u.h, 0.05 * u.h), (60.0, 60.0)],
)
def test_equal_to_sunkit_image(bounds):
    a, b = random_walks()
    t = np.arange(a.shape[0]) * 12.0
    sk_bounds = None if bounds is None else u.Quantity([u.Quantity(v, u.s) for v in bounds])
    ref_lag = skt.time_lag(a, b, t * u.s, lag_bounds=sk_bounds).to_value(u.s)
    ref_peak = skt.max_cross_correlation(a, b, t * u.s, lag_bounds=sk_bounds)
    lag = timelag_map(cube(a, t), cube(b, t), lag_bounds=bounds).values
    peak = max_correlation_map(cube(a, t), cube(b, t), lag_bounds=bounds).values
    np.testing.assert_allclose(lag, ref_lag, rtol=0, atol=1e-6)
    np.testing.assert_allclose(peak, ref_peak, rtol=0, atol=1e-6)
    if bounds is None:  # with the injected shift, the peak is not at a bound
        assert np.mean(lag == 60.0) > 0.9


def test_cross_correlation_equals_sunkit_and_numpy_correlate():
    a, b = random_walks(shape=(40, 3, 4))
    t = np.arange(40) * 12.0
    cc = cross_correlation(cube(a, t), cube(b, t))
    assert cc.dims == ("lag", "y", "x") and cc.sizes["lag"] == 79
    np.testing.assert_allclose(cc["lag"].values, skt.get_lags(t * u.s).to_value(u.s))
    ref = skt.cross_correlation(a, b, skt.get_lags(t * u.s))
    np.testing.assert_allclose(cc.values, ref, rtol=0, atol=1e-12)
    za = (a[:, 1, 2] - a[:, 1, 2].mean()) / a[:, 1, 2].std()
    zb = (b[:, 1, 2] - b[:, 1, 2].mean()) / b[:, 1, 2].std()
    np.testing.assert_allclose(cc.values[:, 1, 2], np.correlate(zb, za, "full") / 40, atol=1e-12)
    bounded = cross_correlation(cube(a, t), cube(b, t), lag_bounds=(-24, 36))
    np.testing.assert_array_equal(bounded["lag"].values, [-24, -12, 0, 12, 24, 36])
    np.testing.assert_allclose(bounded.values, cc.sel(lag=slice(-24, 36)).values, atol=1e-12)


def test_datetime_times_give_the_same_maps_as_seconds():
    a, b = random_walks()
    seconds = np.arange(a.shape[0]) * 12.0
    stamps = np.datetime64("2011-02-13T15:00:03.62", "ns") + (seconds * 1e9).astype(
        "timedelta64[ns]"
    )
    by_seconds = timelag_map(cube(a, seconds), cube(b, seconds)).values
    by_datetime = timelag_map(cube(a, stamps), cube(b, stamps)).values
    np.testing.assert_array_equal(by_seconds, by_datetime)


def test_float32_input_matches_sunkit_float64():
    a, b = random_walks()
    t = np.arange(a.shape[0]) * 12.0
    peak = max_correlation_map(cube(a.astype(np.float32), t), cube(b.astype(np.float32), t))
    ref = skt.max_cross_correlation(a.astype(np.float32), b.astype(np.float32), t * u.s)
    assert peak.dtype == np.float64
    np.testing.assert_allclose(peak.values, ref, atol=1e-6)


def test_nan_and_flat_pixels_are_nan_not_the_most_negative_lag():
    a, b = random_walks(shape=(50, 3, 3))
    t = np.arange(50) * 12.0
    a[7, 0, 0] = np.nan
    b[:, 1, 1] = 42.0
    a[:, 2, 2] = 1e3 * (1 + 1e-17 * np.arange(50))  # flat up to rounding
    lag = timelag_map(cube(a, t), cube(b, t)).values
    peak = max_correlation_map(cube(a, t), cube(b, t)).values
    bad = np.zeros((3, 3), bool)
    bad[0, 0] = bad[1, 1] = bad[2, 2] = True
    assert np.isnan(lag[bad]).all() and np.isnan(peak[bad]).all()
    assert np.isfinite(lag[~bad]).all()
    ref = skt.time_lag(np.nan_to_num(a), b, t * u.s).to_value(u.s)
    np.testing.assert_allclose(lag[~bad], ref[~bad], atol=1e-6)
    # what sunkit-image does there: the most negative lag
    assert skt.time_lag(a, b, t * u.s).to_value(u.s)[0, 0] == -49 * 12.0


# ------------------------------------------------------------------------------ many pairs
def test_default_pairs_are_the_15_hot_to_cool_pairs():
    pairs = default_pairs([171, 94, 131, 335, 193, 211])
    assert len(pairs) == 15
    assert pairs[0] == (94, 335) and pairs[-1] == (171, 131)
    rank = {c: i for i, c in enumerate(AIA)}
    assert all(rank[a] < rank[b] for a, b in pairs)


def test_timelag_maps_equal_pairwise_maps_and_read_each_channel_once():
    rng = np.random.default_rng(0)
    t = np.arange(64) * 12.0
    base = rng.normal(size=(64, 8, 6)).cumsum(axis=0)
    values = {c: np.roll(base, i, axis=0) + 0.2 * rng.normal(size=base.shape)
              for i, c in enumerate((94, 335, 171))}  # fmt: skip
    reads = []

    def counted(block, channel):
        reads.append(channel)
        return block

    channels = {
        c: cube(v, t).copy(
            data=da.from_array(v, chunks=(64, 4, 3)).map_blocks(
                counted, channel=c, dtype=float, meta=np.empty((0, 0, 0))
            )
        )
        for c, v in values.items()
    }
    ds = timelag_maps(channels, lag_bounds=(-120, 120))
    assert reads == [] and isinstance(ds["timelag"].data, da.Array)  # lazy
    assert list(ds["pair"].values) == ["94-335", "94-171", "335-171"]
    computed = ds.compute()
    assert sorted(reads) == sorted([c for c in values for _ in range(4)])  # 4 blocks each
    for a, b in [(94, 335), (94, 171), (335, 171)]:
        plain = {c: cube(v, t) for c, v in values.items()}
        np.testing.assert_allclose(
            computed["timelag"].sel(pair=f"{a}-{b}").values,
            timelag_map(plain[a], plain[b], lag_bounds=(-120, 120)).values,
        )
        np.testing.assert_allclose(
            computed["max_correlation"].sel(pair=f"{a}-{b}").values,
            max_correlation_map(plain[a], plain[b], lag_bounds=(-120, 120)).values,
        )
    assert (computed["timelag"].sel(pair="94-171") == 24.0).mean() > 0.9


# ------------------------------------------------------------------------------ bad input
def test_bad_input_raises_clear_errors():
    a, b = random_walks(shape=(30, 2, 2))
    t = np.arange(30) * 12.0
    uneven = t.copy()
    uneven[5] += 3
    with pytest.raises(ValueError, match="evenly sampled"):
        timelag_map(cube(a, uneven), cube(b, uneven))
    with pytest.raises(ValueError, match="same times"):
        timelag_map(cube(a, t), cube(b, t + 1))
    with pytest.raises(ValueError, match="spatial shape"):
        timelag_map(cube(a, t), cube(b[:, :1], t))
    with pytest.raises(ValueError, match="select no lag"):
        timelag_map(cube(a, t), cube(b, t), lag_bounds=(100, 105))
    with pytest.raises(ValueError, match="outside the series"):
        timelag_map(cube(a, t), cube(b, t), lag_bounds=(-1 * u.h, 1 * u.h))
    with pytest.raises(ValueError, match="above upper"):
        timelag_map(cube(a, t), cube(b, t), lag_bounds=(10, -10))
    with pytest.raises(ValueError, match="no frames"):
        timelag_map(cube(a[:0], t[:0]), cube(b[:0], t[:0]))
    with pytest.raises(ValueError, match="no 'time'"):
        timelag_map(xr.DataArray(a, dims=("t", "y", "x")), cube(b, t))
    with pytest.raises(ValueError, match="different WCS"):
        timelag_map(cube(a, t, wcs_header(10.0)), cube(b, t, wcs_header(11.0)))
    with pytest.raises(ValueError, match="not in"):
        timelag_maps({94: cube(a, t), 171: cube(b, t)}, pairs=[(94, 335)])
    with pytest.raises(ValueError, match="no channel pairs"):
        timelag_maps({94: cube(a, t)})


# ------------------------------------------------------------------------------ chunk planner
def test_chunk_planner_keeps_tasks_under_the_memory_limit():
    per_pixel = timelag_bytes_per_pixel(3600, 2)
    assert per_pixel * 300 * 300 > 5.2e9  # the C array alone is ~5.2 GB for 300x300 pixels
    limit = 4 * 2**30
    with dask.config.set({"array.chunk-size": "8GiB"}):  # capped by the worker's memory
        chunks = plan_spatial_chunks((4096, 4096), per_pixel, memory_limit=limit)
    assert chunks[0] * chunks[1] * per_pixel <= 0.5 * limit
    assert chunks[0] * chunks[1] * per_pixel > 0.1 * limit  # not needlessly small
    chunks = plan_spatial_chunks((4096, 4096), per_pixel, memory_limit=limit)
    size = chunks[0] * chunks[1] * per_pixel  # by default: dask's array.chunk-size
    assert 0.25 * 128 * 2**20 < size <= 128 * 2**20
    assert plan_spatial_chunks((20, 30), 8.0, memory_limit=2**30) == (20, 30)
    with pytest.raises(ValueError, match="one pixel needs"):
        plan_spatial_chunks((10, 10), 2.0**30, memory_limit=2**20)


def test_planned_chunks_are_used_when_inputs_are_in_memory(monkeypatch):
    import cloudlab.chunking

    monkeypatch.setattr(cloudlab.chunking, "worker_memory_limit", lambda client=None: 2**20)
    a, b = random_walks(shape=(64, 40, 40))
    t = np.arange(64) * 12.0
    lag = timelag_map(cube(a, t), cube(b, t))
    blocks = lag.data.numblocks
    assert blocks[0] * blocks[1] > 1
    np.testing.assert_allclose(lag.values, skt.time_lag(a, b, t * u.s).to_value(u.s))


# ------------------------------------------------------------------------------ outputs
def test_to_map_and_writers_keep_wcs_and_values(tmp_path):
    import sunpy.map

    from cloudlab.timelag import plot_maps, to_map, write_fits, write_zarr

    a, b = random_walks(shape=(40, 9, 11))
    t = np.arange(40) * 12.0
    header = wcs_header()
    ds = timelag_maps({94: cube(a, t, header), 335: cube(b, t, header)})
    maps = to_map(ds)
    lag_map = maps["timelag"]["94-335"]
    assert isinstance(lag_map, sunpy.map.GenericMap)
    assert lag_map.unit == u.s and lag_map.data.shape == (9, 11)
    np.testing.assert_allclose(lag_map.data, ds["timelag"].sel(pair="94-335").values)
    assert lag_map.reference_pixel.x.to_value(u.pix) == pytest.approx(9.0)  # CRPIX1 - 1
    assert lag_map.scale.axis1.to_value(u.arcsec / u.pix) == pytest.approx(0.6)

    [fits_url] = write_fits(ds, str(tmp_path / "fits"))
    [cc_url] = write_fits(ds, str(tmp_path / "fits"), variable="max_correlation")
    assert cc_url.endswith("/max_correlation_94_335.fits")
    with fits.open(fits_url) as hdus, fits.open(cc_url) as cc_hdus:
        assert len(hdus) == 1 and len(cc_hdus) == 1
        np.testing.assert_allclose(hdus[0].data, lag_map.data)
        np.testing.assert_allclose(cc_hdus[0].data, maps["max_correlation"]["94-335"].data)
        assert hdus[0].header["BUNIT"] == "s" and hdus[0].header["CHAN_A"] == 94
        assert hdus[0].header["CRPIX1"] == 10.0
    store = write_zarr(ds, str(tmp_path / "maps.zarr"))
    back = xr.open_zarr(store).compute()
    xr.testing.assert_allclose(back, ds.compute())
    pngs = plot_maps(ds, str(tmp_path / "png"))
    assert [p.rsplit("/", 1)[1] for p in pngs] == ["timelag_94_335.png"]
    assert open(pngs[0], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_writers_leave_nothing_behind_on_error(tmp_path):
    from cloudlab.timelag import write_fits, write_zarr

    a, b = random_walks(shape=(20, 2, 2))
    t = np.arange(20) * 12.0

    def fail(block):
        raise RuntimeError("worker lost")

    broken = cube(a, t).copy(data=da.from_array(a, chunks=-1).map_blocks(fail, dtype=float))
    ds = timelag_maps({94: broken, 335: cube(b, t)})
    with pytest.raises(RuntimeError, match="worker lost"):
        write_zarr(ds, str(tmp_path / "maps.zarr"))
    with pytest.raises(RuntimeError, match="worker lost"):
        write_fits(ds, str(tmp_path / "fits"))
    assert list(tmp_path.rglob("*")) == []


def test_write_zarr_to_s3(s3_bucket):
    from cloudlab.timelag import write_zarr

    a, b = random_walks(shape=(20, 3, 3))
    t = np.arange(20) * 12.0
    ds = timelag_maps({94: cube(a, t), 335: cube(b, t)})
    url = write_zarr(ds, f"s3://{s3_bucket}/out/maps.zarr")
    back = xr.open_zarr(url).compute()
    xr.testing.assert_allclose(back, ds.compute())


# ------------------------------------------------------------------------------ where it runs
def test_runs_on_a_distributed_cluster(local_client):
    """sunkit-image's time_lag loses its units under distributed (its issue #276); ours not."""
    a, b = random_walks(shape=(60, 8, 8))
    t = np.arange(60) * 12.0
    channels = {94: cube(a, t).chunk({"x": 4}), 335: cube(b, t).chunk({"x": 4})}
    ds = timelag_maps(channels)
    with dask.config.set(scheduler=local_client):
        distributed = ds.compute()
    ref = skt.time_lag(a, b, t * u.s).to_value(u.s)
    np.testing.assert_allclose(distributed["timelag"].sel(pair="94-335").values, ref, atol=1e-6)
    assert distributed["timelag"].attrs["units"] == "s"
    np.testing.assert_allclose(
        distributed["max_correlation"].sel(pair="94-335").values,
        skt.max_cross_correlation(a, b, t * u.s),
        atol=1e-6,
    )


@pytest.mark.gpu
def test_kernels_run_on_cupy_blocks():
    import cupy

    from cloudlab.backend import to_gpu

    a, b = random_walks(shape=(64, 8, 8))
    t = np.arange(64) * 12.0
    gpu = {c: cube(v, t).copy(data=to_gpu(da.from_array(v, chunks=(64, 4, 4))))
           for c, v in ((94, a), (335, b))}  # fmt: skip
    ds = timelag_maps(gpu)
    assert isinstance(ds["timelag"].data._meta, cupy.ndarray)
    lag = cupy.asnumpy(ds["timelag"].sel(pair="94-335").data.compute())
    np.testing.assert_allclose(lag, skt.time_lag(a, b, t * u.s).to_value(u.s), atol=1e-6)
    from cloudlab.timelag import to_map

    np.testing.assert_allclose(to_map(ds["timelag"].sel(pair="94-335")).data, lag)


# ------------------------------------------------------------------------------ command line
def test_command_line_simulates_and_writes_all_outputs(tmp_path):
    import argparse

    from cloudlab.commands import timelag as command

    parser = argparse.ArgumentParser(prog="cloudlab")
    command.register(parser.add_subparsers(dest="command"))
    sim = tmp_path / "sim"
    args = parser.parse_args(["timelag", "simulate", str(sim), "--channels", "94,335",
                              "--shape", "6x8", "--frames", "30"])  # fmt: skip
    assert args.func(args) == 0
    out = tmp_path / "out"
    args = parser.parse_args([
        "timelag", "--channel", f"94={sim}/0094/*.fits", "--channel", f"335={sim}/0335/*.fits",
        "--lag-bounds", "-2min", "2min", "--bottom-left", "-401.08,48.62", "--top-right",
        "-398.98,51.38", "--out", str(out),
    ])  # fmt: skip
    assert args.lag_bounds == [-120.0, 120.0] and args.bottom_left == (-401.08, 48.62)
    assert args.func(args) == 0
    maps = xr.open_zarr(out / "timelag_maps.zarr").compute()
    assert list(maps["pair"].values) == ["94-335"] and maps["timelag"].shape[1:] == (6, 4)
    assert np.isin(maps["timelag"].values, [0.0, 12.0, 24.0, 36.0]).all()
    assert (out / "fits" / "timelag_94_335.fits").exists()
    assert (out / "png" / "timelag_94_335.png").exists()
    with pytest.raises(ValueError, match="at least two channels"):
        bad = parser.parse_args(["timelag", "--channel", f"94={sim}/0094/*.fits", "--out", "x"])
        bad.func(bad)
    with pytest.raises(SystemExit):
        parser.parse_args(["timelag", "--lag-bounds", "-3 parsecs", "3h"])
