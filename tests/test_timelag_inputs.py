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
    from cloudlab.timelag.steps import select_time

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
    from cloudlab.timelag.steps import prepare_channels

    cube, _ = _pair(np.datetime64("2020-01-01") + np.arange(64) * np.timedelta64(12, "s"))
    cube = cube.assign_coords(wavelength=193)
    with pytest.raises(InputError, match=r"channel 171.*WAVELNTH 193"):
        prepare_channels({171: cube, 193: cube}, drop_bad=False)


# ------------------------------------------------------------------ frames missing from a channel
@pytest.fixture(scope="module")
def series(tmp_path_factory):
    from cloudlab.simulate import aia_series

    root = tmp_path_factory.mktemp("aia")
    return aia_series(str(root), channels=(94, 171), shape=(4, 5), n_frames=40, seed=1)


def _open(series, drop: dict[int, slice] | None = None):
    from cloudlab.io.aia import open_stack

    drop = drop or {}
    channels = {}
    for channel, files in series.files.items():
        keep = [f for i, f in enumerate(files) if i not in range(40)[drop.get(channel, slice(0))]]
        channels[channel] = open_stack(keep)
    return channels


def test_a_gap_longer_than_max_gap_is_refused_naming_channel_and_times(series):
    from cloudlab.timelag.steps import prepare_channels

    channels = _open(series, {171: slice(10, 14)})  # 4 frames missing: a 60 s step, 5 cadences
    before, after = series.t_obs[171][9], series.t_obs[171][14]
    pattern = rf"channel 171 has no frame for .*{str(before)[:19]}.*{str(after)[:19]}.*--allow-gaps"
    with pytest.raises(InputError, match=pattern):
        prepare_channels(channels)
    with pytest.warns(UserWarning, match=r"channel 171 has no frame .*interpolated across"):
        prepared = prepare_channels(channels, allow_gaps=True)
    assert prepared[171].sizes["time"] >= 38
    prepare_channels(channels, max_gap=5)  # a tolerance of 5 cadences bridges it
    with pytest.raises(InputError, match="max_gap"):
        prepare_channels(channels, max_gap=0)


def test_gaps_up_to_max_gap_and_outside_the_common_span_are_accepted(series):
    import warnings

    from cloudlab.timelag.steps import prepare_channels

    # two missing frames in 94 (a 3-cadence step) and 10 missing at the start of 171 (the common
    # span then starts later, so nothing is interpolated across them)
    channels = _open(series, {94: slice(20, 22), 171: slice(0, 10)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepared = prepare_channels(channels)
        # a grid finer than the frames: cadences are the frames' spacing, not the grid step
        prepare_channels(_open(series, {94: slice(20, 21)}), cadence=6)
    assert prepared[94]["time"].values[0] >= series.t_obs[171][10]
    with pytest.raises(InputError, match=r"channel 94 .*\(5.0 cadences of 12 s\)"):
        prepare_channels(_open(series, {94: slice(20, 24)}), cadence=6)


def test_command_line_refuses_a_gap_unless_allow_gaps(series, tmp_path, capsys):
    import shutil

    from cloudlab.cli import main

    sim = tmp_path / "sim"
    for channel, files in series.files.items():
        (sim / str(channel)).mkdir(parents=True)
        for i, f in enumerate(files):
            if channel == 94 or not 15 <= i < 20:
                shutil.copy(f, sim / str(channel))
    argv = ["timelag", "--channel", f"94={sim}/94/*.fits", "--channel", f"171={sim}/171/*.fits",
            "--out", str(tmp_path / "out"), "--no-png"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "channel 171 has no frame" in err and "--allow-gaps" in err
    assert not (tmp_path / "out").exists()
    with pytest.warns(UserWarning, match="channel 171"):
        assert main([*argv, "--allow-gaps"]) == 0
    assert (tmp_path / "out" / "timelag_maps.zarr").exists()


# ------------------------------------------------------------------ channel labels and WAVELNTH
def test_label_contradicting_wavelnth_names_the_file_in_prepare_and_timelag_maps(series):
    from cloudlab.timelag import timelag_maps
    from cloudlab.timelag.steps import prepare_channels

    channels = _open(series)
    first_171 = sorted(series.files[171])[0]
    swapped = {94: channels[94], 193: channels[171]}
    with pytest.raises(InputError, match=rf"{first_171}.*WAVELNTH 171.*labelled 193.*--channel"):
        prepare_channels(swapped)
    # prepared cubes relabelled afterwards: timelag_maps refuses them too
    prepared = prepare_channels(channels)
    with pytest.raises(InputError, match=r"channel 193.*WAVELNTH 171.*labelled 193"):
        timelag_maps({94: prepared[94], 193: prepared[171]})
    # the header alone is enough, and names that are not numbers are not checked
    bare = prepared[171].drop_vars("wavelength")
    with pytest.raises(InputError, match=r"channel 193.*attrs\['fits_header'\].*WAVELNTH 171"):
        timelag_maps({94: prepared[94], 193: bare})
    assert timelag_maps({"hot": prepared[94], "warm": bare}).sizes["pair"] == 1


def test_command_line_label_contradicting_wavelnth_names_file_label_and_wavelnth(
    series, tmp_path, capsys
):
    from cloudlab.cli import main

    directory = str(series.files[171][0]).rsplit("/", 1)[0]
    argv = ["timelag", "--channel", f"94={directory.rsplit('/', 1)[0]}/0094/*.fits",
            "--channel", f"131={directory}/*.fits", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "WAVELNTH 171 Å but is labelled 131" in err and "--channel 171=FILES" in err
    assert sorted(series.files[171])[0] in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", ["--start", "--end"])
def test_command_line_unreadable_time_names_the_option(series, option, tmp_path, capsys):
    from cloudlab.cli import main

    directory = str(series.files[94][0]).rsplit("/", 2)[0]
    argv = ["timelag", "--channel", f"94={directory}/0094/*.fits", "--channel",
            f"171={directory}/0171/*.fits", "--out", str(tmp_path / "out"),
            option, "13/02/2011"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"({option})" in err[0] and "'13/02/2011'" in err[0]
    assert not (tmp_path / "out").exists()
