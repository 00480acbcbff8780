"""cloudlab.timelag.prepare with local degradation and pointing tables (aiapy's formats), against
aiapy's degradation and update_pointing run with the same tables; tables that do not cover a
frame's time are refused before computing."""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable, Table

from cloudlab.errors import InputError
from cloudlab.io import aia
from cloudlab.simulate import aia_series
from cloudlab.timelag import prepare

pytest.importorskip("sunpy")
aiapy_calibrate = pytest.importorskip("aiapy.calibrate")

CHANNELS = (94, 171)


@pytest.fixture(autouse=True)
def _quiet():
    with dask.config.set(scheduler="synchronous"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------------ degradation
def _write_correction_table(path, rows) -> str:
    """An ``aia.response`` table as SolarSoft ships it (whitespace-separated text)."""
    names = ("DATE", "VER_NUM", "WAVE_STR", "WAVELNTH", "T_START", "T_STOP", "EFFA_P1",
             "EFFA_P2", "EFFA_P3", "EFF_AREA", "EFF_WVLN")  # fmt: skip
    Table(rows=rows, names=names).write(path, format="ascii.basic")
    return str(path)


def _epochs(channel: int, boundary: str, stop: str, area: float) -> list[tuple]:
    """Launch epoch, then two epochs meeting at ``boundary`` (inside the series)."""
    wave, eff = f"{channel}_THIN", float(channel) / 100
    return [
        ("2010-06-01T00:00:00", 10, wave, channel, "2010-03-24T00:00:00",
         "2010-05-01T00:00:00", 0.0, 0.0, 0.0, eff, channel),
        ("2012-01-01T00:00:00", 10, wave, channel, "2010-05-01T00:00:00", boundary,
         -1.5e-3, 2e-6, -1e-9, 0.9 * eff, channel),
        ("2012-01-02T00:00:00", 10, wave, channel, boundary, stop, 4e-2, -3e-3, 1e-4,
         area * eff, channel),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    return aia_series(
        str(tmp_path_factory.mktemp("level1")), channels=CHANNELS, shape=(16, 24), n_frames=12,
        cadence_s=24, level1=True, block=8, lag_map=np.zeros((16, 24)), pulse_width_s=12,
    )  # fmt: skip


def _boundary(series) -> str:
    times = aia.open_stack(series.files[171])["time"].values
    return np.datetime_as_string(times[6] - np.timedelta64(6, "s"), "s")


@pytest.fixture(scope="module")
def correction_table(series, tmp_path_factory) -> str:
    rows = [r for c in CHANNELS for r in _epochs(c, _boundary(series), "2030-01-01T00:00:00",
                                                   0.7 if c == 94 else 0.5)]  # fmt: skip
    return _write_correction_table(tmp_path_factory.mktemp("tables") / "response.txt", rows)


def _prepared(series, **options) -> dict:
    cubes = {c: aia.open_stack(series.files[c]) for c in CHANNELS}
    out = prepare(cubes, region=series.region, reference_time=series.reference_time,
                  align=False, **options)  # fmt: skip
    return {c: out[c].compute() for c in CHANNELS}


def test_degradation_equals_aiapy_with_the_same_local_table(series, correction_table):
    import sunpy.map
    from aiapy.calibrate.util import get_correction_table

    plain = _prepared(series)
    corrected = _prepared(series, correct_degradation=correction_table)
    table = get_correction_table(correction_table)
    for channel in CHANNELS:
        expected = []
        for url in corrected[channel]["url"].values:
            level1 = sunpy.map.Map(url)
            reference = aiapy_calibrate.correct_degradation(level1, correction_table=table)
            inside = level1.data > 0
            expected.append(np.median(level1.data[inside] / reference.data[inside]))
        expected = np.array(expected)
        got = plain[channel].values / corrected[channel].values
        ok = np.isfinite(got)
        assert ok.mean() > 0.9
        per_pixel = np.broadcast_to(expected[:, None, None], got.shape)
        np.testing.assert_allclose(got[ok], per_pixel[ok], rtol=1e-5)
        # the series crosses an epoch boundary: the factors jump there, the test sees both
        assert abs(expected[6] / expected[5] - 1) > 0.05
    # an astropy Table (as aiapy returns it) is taken as well as a file
    again = _prepared(series, correct_degradation=table)
    np.testing.assert_array_equal(again[171].values, corrected[171].values)


def test_a_degradation_table_that_ends_inside_the_series_is_refused(series, tmp_path):
    boundary = _boundary(series)
    rows = [r for c in CHANNELS for r in _epochs(c, "2011-01-01T00:00:00", boundary, 0.5)]
    path = _write_correction_table(tmp_path / "old.txt", rows)
    with pytest.raises(InputError, match=r"old\.txt.*no 94_THIN epoch for .*fits"):
        _prepared(series, correct_degradation=path)
    bad = tmp_path / "bad.txt"
    Table(rows=[("171_THIN", 1)], names=("WAVE_STR", "T_START")).write(bad, format="ascii.basic")
    with pytest.raises(InputError, match=r"bad\.txt.*'EFF_AREA'"):
        _prepared(series, correct_degradation=str(bad))
    with pytest.raises(InputError, match=r"none\.txt: cannot read it"):
        _prepared(series, correct_degradation=str(tmp_path / "none.txt"))


def test_command_line_passes_the_degradation_table(series, tmp_path):
    import argparse

    from cloudlab.commands import timelag as command

    boundary = _boundary(series)
    rows = [r for c in CHANNELS for r in _epochs(c, "2011-01-01T00:00:00", boundary, 0.5)]
    path = _write_correction_table(tmp_path / "old.txt", rows)
    parser = argparse.ArgumentParser(prog="cloudlab")
    command.register(parser.add_subparsers(dest="command"))
    (x0, y0), (x1, y1) = series.region
    argv = ["timelag", "--bottom-left", f"{x0},{y0}", "--top-right", f"{x1},{y1}",
            "--out", str(tmp_path / "out"), "--no-png", "--degradation-table", path]  # fmt: skip
    for channel in CHANNELS:
        argv += ["--channel", f"{channel}={series.files[channel][0].rsplit('/', 1)[0]}/*.fits"]
    with pytest.raises(InputError, match="add --prep"):
        parser.parse_args(argv).func(parser.parse_args(argv))
    args = parser.parse_args([*argv, "--prep"])
    with pytest.raises(InputError, match=r"old\.txt.*no 94_THIN epoch"):
        args.func(args)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ pointing
POINTING = {"X0": 2051.3, "Y0": 2043.8, "IMSCALE": 0.6042, "INSTROT": 0.53}


@pytest.fixture(scope="module")
def full_frame(tmp_path_factory) -> str:
    """A full 4096x4096 level-1 171 frame (RICE, HDU 1) with a smooth, structured image."""
    from sunpy.data.test import get_test_filepath

    header = fits.getheader(get_test_filepath("aia_171_level1.fits"))
    cards = [c for c in header.cards if c.keyword not in
             ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BLANK", "BSCALE",
              "BZERO", "COMMENT", "HISTORY", "")]  # fmt: skip
    out = fits.Header(cards)
    out.update(CDELT1=0.6, CDELT2=0.6, CRPIX1=2048.5, CRPIX2=2048.5, CROTA2=0.0)
    y, x = np.indices((4096, 4096), dtype=np.float32)
    image = (1000 + 400 * np.sin(x / 37) * np.cos(y / 53) + 0.05 * x).astype(np.int16)
    path = tmp_path_factory.mktemp("full") / "aia_171.fits"
    hdu = fits.CompImageHDU(image, out, compression_type="RICE_1", tile_shape=(1, 4096))
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    return str(path)


def _pointing_rows(start: str, middle: str, stop: str) -> Table:
    """Two 3-hour rows of the master pointing table; the second covers the frame."""
    row = {f"A_171_{k}": [v - 1.0, v] for k, v in POINTING.items()}
    row.update({f"A_094_{k}": [v, v] for k, v in POINTING.items()})
    return Table({"T_START": [start, middle], "T_STOP": [middle, stop], **row})


REGION = ((-300, -200), (-100, 0))


def _one(url: str, **options) -> np.ndarray:
    cube = prepare({171: aia.open_stack(url)}, region=REGION, align=False, derotate=False,
                   **options)  # fmt: skip
    return cube[171].values[0]


@pytest.mark.parametrize("missing", [None, "INSTROT"])
def test_pointing_update_equals_aiapy_update_pointing(full_frame, tmp_path, missing):
    """With a complete row, and with a missing (NaN) value that both keep from the header."""
    import sunpy.map
    from aiapy.calibrate import update_pointing
    from astropy.time import Time

    table = _pointing_rows("2011-02-14T21:00:00Z", "2011-02-15T00:00:00Z", "2011-02-15T03:00:00Z")
    if missing:
        table[f"A_171_{missing}"][1] = np.nan
    path = tmp_path / "pointing.csv"
    table.write(path, format="ascii.csv")
    # aiapy's get_pointing_table reads only JSOC or LMSAL: the same table, typed as it types it
    qtable = QTable(table)
    for key in ("T_START", "T_STOP"):
        qtable[key] = Time([t.rstrip("Z") for t in table[key]], scale="utc")
    for key in qtable.colnames[2:]:
        unit = {"X0": "pixel", "Y0": "pixel", "IMSCALE": "arcsec / pixel", "INSTROT": "deg"}
        qtable[key].unit = unit[key.split("_")[-1]]
    header = fits.getheader(full_frame, 1)
    reference = update_pointing(
        sunpy.map.Map(np.zeros((4096, 4096), np.float32), header), pointing_table=qtable
    )
    assert reference.meta["crpix1"] == pytest.approx(POINTING["X0"] + 1)
    assert (reference.meta["crota2"] == header["CROTA2"]) == (missing == "INSTROT")
    # the same frame with aiapy's updated keys written in its header
    edited = tmp_path / "edited.fits"
    with fits.open(full_frame) as hdus:
        for key in ("CRPIX1", "CRPIX2", "CDELT1", "CDELT2", "CROTA2"):
            hdus[1].header[key] = reference.meta[key.lower()]
        hdus.writeto(edited)
    expected = _one(str(edited))
    got = _one(full_frame, pointing_table=str(path))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_array_equal(_one(full_frame, pointing_table=table), got)
    np.testing.assert_array_equal(_one(full_frame, pointing_table=qtable), got)
    # the update moves the image: without it the result differs
    assert np.nanmax(np.abs(_one(full_frame) - got)) > 10


def test_a_pointing_table_outside_the_frame_time_or_on_a_cutout_is_refused(
    full_frame, series, tmp_path
):
    path = tmp_path / "pointing.csv"
    _pointing_rows("2011-02-14T18:00:00", "2011-02-14T21:00:00", "2011-02-15T00:00:00").write(
        path, format="ascii.csv"
    )
    with pytest.raises(InputError, match=r"pointing\.csv.*2011-02-15T00:00:01.*aia_171\.fits"):
        _one(full_frame, pointing_table=str(path))
    with pytest.raises(InputError, match="4096x4096"):
        _prepared(series, pointing_table=str(path))
