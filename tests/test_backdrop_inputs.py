"""Backdrop on bad parameters and hostile inputs: clear early errors, reported NaN frames."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

from cloudlab import backdrop
from cloudlab.commands import backdrop as command
from cloudlab.errors import REASON, STATUS, InputError
from cloudlab.io.tess import open_ffis
from cloudlab.simulate.ffis import ffi_stack

NKNOTS = 6


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cloudlab")
    command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("npoly", 0, "1..20"),
        ("nrad", -1, "1..20"),
        ("degree", 0, "1..5"),
        ("nknots", 3, "4..1000"),
        ("nknots", 2.5, "4..1000"),
        ("frames_per_batch", 0, ">= 1"),
    ],
)
def test_fit_refuses_bad_parameters_before_reading(name, value, allowed):
    # an empty Dataset: had the fit looked at the data first it would complain about 'flux'
    with pytest.raises(InputError, match=rf"{name}={value!r} .*integer {allowed}"):
        backdrop.fit(xr.Dataset(), **{name: value})


@pytest.mark.parametrize(
    ("option", "value", "name"),
    [("--npoly", "0", "npoly"), ("--max-frames", "0", "max_frames"), ("--nknots", "1", "nknots")],
)
def test_cli_refuses_bad_parameters_before_opening_frames(tmp_path, option, value, name):
    missing = tmp_path / "no-such-dir"  # opening it would be a NotFoundError, not this
    with pytest.raises(InputError, match=rf"{name}={value} is out of range"):
        _run(["backdrop", "fit", "--in-dir", str(missing), "--out-dir", str(tmp_path / "o"),
              option, value])  # fmt: skip


def _blank(url: str, rows: slice) -> None:
    with fits.open(url, mode="update") as hdul:
        hdul[1].data[rows] = np.nan


@pytest.fixture
def stack(tmp_path):
    return ffi_stack(str(tmp_path / "in"), n_frames=4, shape=(64, 64), seed=3, ccd=1)


def test_mostly_nan_frame_is_reported_not_fitted(stack, tmp_path):
    truth = stack
    clean = backdrop.fit(open_ffis(f"{tmp_path / 'in'}/*_ffic.fits*"), nknots=NKNOTS).compute()
    _blank(truth.urls[1], slice(None))  # the whole image: science rows 0..63 NaN
    _blank(truth.urls[2], slice(0, 20))  # about 30 %: still fitted
    ffis = open_ffis(f"{tmp_path / 'in'}/*_ffic.fits*")
    name = truth.urls[1].rsplit("/", 1)[-1]
    with pytest.warns(UserWarning, match=rf"{name}: 100% of the unmasked science pixels are NaN"):
        w = backdrop.fit(ffis, nknots=NKNOTS).compute(scheduler="threads")  # warnings here
    assert w[STATUS].values.tolist() == ["ok", "nan_frame", "ok", "ok"]
    assert "NaN" in str(w[REASON].values[1]) and w[REASON].values[0] == ""
    for var in ("poly_w", "spline_w", "strap_w"):
        assert np.isnan(w[var].values[1]).all()
        assert np.isfinite(w[var].values[[0, 2, 3]]).all()
    # the other frames fit as well as without the blanked ones (64 x 64 pixels, 6 knots)
    rows, columns, good = ffis.row.values, ffis.column.values, w["star_mask"].values
    for t in (0, 3):
        error = np.median(np.abs(backdrop.evaluate(w, rows, columns, times=[t]).values[0]
                                 - truth.background(t))[good])  # fmt: skip
        before = np.median(np.abs(backdrop.evaluate(clean, rows, columns, times=[t]).values[0]
                                  - truth.background(t))[good])  # fmt: skip
        assert error < 1.5 * before + 0.05


def test_all_nan_input_says_so(stack, tmp_path):
    for url in stack.urls:
        _blank(url, slice(None))
    ffis = open_ffis(f"{tmp_path / 'in'}/*_ffic.fits*")
    first = stack.urls[0].rsplit("/", 1)[-1]
    with pytest.raises(InputError, match=rf"every frame is NaN \(4 frames, the first .*{first}"):
        backdrop.fit(ffis, nknots=NKNOTS).compute()


def _write_tpf(path, flux, times, corner_row, corner_column, *, sector=1, camera=1, ccd=1):
    n_t, n_r, n_c = flux.shape
    fmt = f"{n_r * n_c}E"
    dim = f"({n_c},{n_r})"
    cols = [
        fits.Column("TIME", "D", array=times),
        fits.Column("FLUX", fmt, dim=dim, array=flux),
        fits.Column("FLUX_BKG", fmt, dim=dim, array=np.zeros_like(flux)),
    ]
    table = fits.BinTableHDU.from_columns(cols)
    table.header["1CRV2P"] = corner_column + 1
    table.header["2CRV2P"] = corner_row + 1
    primary = fits.PrimaryHDU()
    primary.header.update(SECTOR=sector, CAMERA=camera, CCD=ccd)
    fits.HDUList([primary, table]).writeto(path)


@pytest.fixture
def fitted(stack, tmp_path):
    weights = backdrop.fit(open_ffis(f"{tmp_path / 'in'}/*_ffic.fits*"), nknots=NKNOTS).compute()
    frames = np.stack([fits.getdata(u, 1) for u in stack.urls])
    corner_row, corner_column = 10, 44 + 20
    flux = frames[:, corner_row : corner_row + 5, corner_column : corner_column + 4]
    return stack, weights, flux.astype(np.float32), corner_row, corner_column


def test_correct_tpf_refuses_another_sector_or_camera(fitted, tmp_path):
    truth, weights, flux, r0, c0 = fitted
    for key, kwargs in (("sector 7", {"sector": 7}), ("camera 3", {"camera": 3})):
        path = tmp_path / f"{key.replace(' ', '')}.fits"
        _write_tpf(path, flux, truth.times, r0, c0, **kwargs)
        with pytest.raises(InputError, match=rf"{path.name} is from {key}, weights fitted on"):
            backdrop.correct_tpf(path.read_bytes(), weights, name=str(path))


def test_correct_tpf_refuses_times_outside_the_weights(fitted, tmp_path):
    truth, weights, flux, r0, c0 = fitted
    path = tmp_path / "later.fits"
    _write_tpf(path, flux, truth.times + 30.0, r0, c0)
    with pytest.raises(InputError, match=r"later.fits covers times 13\d\d\.\d+\.\.13\d\d\.\d+ "):
        backdrop.correct_tpf(path.read_bytes(), weights, name=str(path))


def test_correct_tpf_refuses_an_already_corrected_tpf(fitted, tmp_path):
    truth, weights, flux, r0, c0 = fitted
    path = tmp_path / "tpf.fits"
    _write_tpf(path, flux, truth.times, r0, c0)
    once = backdrop.correct_tpf(path.read_bytes(), weights, name="tpf.fits")
    with pytest.raises(InputError, match="tpf_bkgsub.fits was already background-corrected"):
        backdrop.correct_tpf(once, weights, name="tpf_bkgsub.fits")


def test_apply_globs_writes_the_good_and_lists_the_all_nan_one(fitted, tmp_path, capsys):
    truth, weights, flux, r0, c0 = fitted
    weights_url = tmp_path / "w.fits"
    backdrop.write_weights_fits(weights, str(weights_url))
    tpfs = tmp_path / "tpfs"
    tpfs.mkdir()
    _write_tpf(tpfs / "a_tpf.fits", flux, truth.times, r0, c0)
    _write_tpf(tpfs / "b_tpf.fits", flux, truth.times, 500, 44 + 500)  # outside the fit
    out = tmp_path / "corrected"
    code = _run(["backdrop", "apply", "--weights", str(weights_url),
                 "--tpf", str(tpfs / "*_tpf.fits"), "--out-dir", str(out)])  # fmt: skip
    assert code == 1
    assert (out / "a_tpf_bkgsub.fits").exists()
    assert not (out / "b_tpf_bkgsub.fits").exists()
    printed = capsys.readouterr().out
    assert "1 of 2 TPFs corrected" in printed
    assert "not corrected: " in printed and "b_tpf.fits: the corrected flux would be NaN" in printed


def test_frame_times_with_units_are_converted():
    """BTJD times given as a Quantity (minutes, days) or an astropy Time match the same frames
    as bare days; datetimes and non-time units are refused, never read as bare days."""
    from astropy import units as u
    from astropy.time import Time

    frame_t = 2000.0 + np.arange(6) * (10 / 1440)  # 10-minute cadence, BTJD days
    w = xr.Dataset(coords={"time": frame_t})
    want = np.array([4, 1])
    days = frame_t[want] + 0.5 / 1440
    np.testing.assert_array_equal(backdrop.frame_index(w, days), want)
    np.testing.assert_array_equal(backdrop.frame_index(w, days * 1440 * u.min), want)
    np.testing.assert_array_equal(backdrop.frame_index(w, days * u.day), want)
    as_time = Time(days + 2457000.0, format="jd", scale="tdb")
    np.testing.assert_array_equal(backdrop.frame_index(w, as_time), want)
    np.testing.assert_array_equal(backdrop.frame_index(w, as_time.utc), want)
    with pytest.raises(InputError, match="datetimes"):
        backdrop.frame_index(w, np.array(["2021-01-01T00:00"], dtype="datetime64[ns]"))
    with pytest.raises(InputError, match="not a time unit"):
        backdrop.frame_index(w, days * u.m)
