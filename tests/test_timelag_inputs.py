"""Timelag inputs whose time coordinate carries a unit are converted, never read as seconds."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
import xarray as xr
from astropy.time import Time

from cloudlab.errors import InputError
from cloudlab.timelag import maps

CADENCE_MIN = 0.2  # 12 s
SHIFT = 5  # samples: the true lag is 5 * 12 s = 60 s


def _pair(time, attrs=None):
    rng = np.random.default_rng(3)
    n = 64
    signal = np.convolve(rng.normal(size=n + SHIFT + 8), np.ones(4), mode="same")
    a = signal[SHIFT : SHIFT + n]
    b = signal[:n]
    cube = lambda v: xr.DataArray(  # noqa: E731
        np.tile(v[:, None, None], (1, 2, 2)),
        dims=("time", "y", "x"),
        coords={"time": xr.Variable("time", time, attrs=attrs or {})},
    )
    return cube(a), cube(b)


@pytest.mark.parametrize(
    "time, attrs",
    [
        (np.arange(64) * CADENCE_MIN, {"units": "min"}),
        (np.arange(64) * CADENCE_MIN / 60, {"units": "h"}),
        (np.arange(64) * 12.0, {"units": "s"}),
        (np.arange(64) * 12.0, None),
        (np.arange(64) * np.timedelta64(12, "s"), None),
        (np.datetime64("2020-01-01T00:00:00") + np.arange(64) * np.timedelta64(12, "s"), None),
    ],
)
def test_lag_is_in_seconds_whatever_the_time_unit(time, attrs):
    a, b = _pair(time, attrs)
    lag = maps.timelag_map(a, b).compute()
    assert np.abs(lag.values).max() == pytest.approx(60.0)


def test_time_seconds_quantity_and_astropy_time():
    expected = np.arange(5) * 720.0
    np.testing.assert_allclose(maps.time_seconds(np.arange(5) * 12 * u.min), expected)
    t = Time("2020-01-01T00:00:00") + np.arange(5) * 12 * u.min
    np.testing.assert_allclose(maps.time_seconds(t), expected, atol=1e-6)


def test_unparsable_time_unit_names_the_coordinate():
    coord = xr.DataArray(np.arange(4.0), dims="time", attrs={"units": "furlongs-ish"})
    with pytest.raises(InputError, match="'time'.*furlongs-ish"):
        maps.time_seconds(coord)
    with pytest.raises(InputError, match="'time'.*not a time unit"):
        maps.time_seconds(np.arange(4) * u.m)


def test_pixel_constant_to_float32_precision_is_nan():
    rng = np.random.default_rng(0)
    t = np.arange(50) * 12.0
    ulp = rng.integers(-1, 2, 50) * np.finfo(np.float32).eps
    flat = (np.float32(1234.5) * (1 + ulp)).astype(np.float32)  # constant up to round-off
    noisy = rng.normal(size=50).astype(np.float32)
    a = xr.DataArray(
        np.stack([flat, noisy], axis=1)[:, :, None], dims=("time", "y", "x"), coords={"time": t}
    )
    b = xr.DataArray(
        rng.normal(size=(50, 2, 1)).astype(np.float32), dims=("time", "y", "x"), coords={"time": t}
    )
    lag = maps.timelag_map(a, b).values
    peak = maps.max_correlation_map(a, b).values
    assert np.isnan(lag[0, 0]) and np.isnan(peak[0, 0])
    assert np.isfinite(lag[1, 0]) and np.isfinite(peak[1, 0])


def test_min_correlation_masks_weak_pixels():
    a, b = _pair(np.arange(64) * 12.0)
    b = b.copy(data=b.values.copy())
    b.values[:, 0, 0] = np.random.default_rng(9).normal(size=64)  # uncorrelated pixel
    full = maps.timelag_maps({94: a, 335: b}).compute()
    peak = full["max_correlation"].values[0]
    threshold = 0.9
    assert peak[0, 0] < threshold < peak[1, 1]
    masked = maps.timelag_maps({94: a, 335: b}, min_correlation=threshold).compute()
    lag = masked["timelag"].values[0]
    assert np.isnan(lag[0, 0]) and lag[1, 1] == full["timelag"].values[0, 1, 1]
    np.testing.assert_array_equal(masked["max_correlation"], full["max_correlation"])
    with pytest.raises(InputError, match="min_correlation.*1.5"):
        maps.timelag_maps({94: a, 335: b}, min_correlation=1.5)


@pytest.mark.parametrize("option", ["start", "end"])
def test_bad_start_end_names_the_option(option):
    from cloudlab.timelag.prepare import select_time

    cube, _ = _pair(np.datetime64("2020-01-01") + np.arange(64) * np.timedelta64(12, "s"))
    with pytest.raises(InputError, match=f"--{option}.*'yesterday'"):
        select_time(cube, **{option: "yesterday"})


def test_bad_duration_option_names_the_option(capsys):
    from cloudlab.cli import main

    with pytest.raises(SystemExit):
        main(["timelag", "--channel", "171=x.fits", "--cadence", "12parsecs"])
    err = capsys.readouterr().err
    assert "--cadence" in err and "12parsecs" in err


def test_channel_label_contradicting_wavelnth_is_refused():
    from cloudlab.timelag.prepare import prepare_channels

    cube, _ = _pair(np.datetime64("2020-01-01") + np.arange(64) * np.timedelta64(12, "s"))
    cube = cube.assign_coords(wavelength=193)
    with pytest.raises(InputError, match=r"channel 171.*WAVELNTH 193"):
        prepare_channels({171: cube, 193: cube}, drop_bad=False)
