"""Light-curve readers (QLP HDF5, Kepler/SPOC FITS, cutout photometry) and simulated data."""

from __future__ import annotations

import io
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

from cloudlab.cutouts import aperture_photometry
from cloudlab.io.lightcurves import (
    LightCurveError,
    read_kepler,
    read_lightcurves,
    read_qlp,
)
from cloudlab.simulate import lightcurves as simulate_lightcurves
from cloudlab.simulate.lightcurves import trapezoid

h5py = pytest.importorskip("h5py")

KEPLER90 = Path(__file__).parents[2] / "shared" / "data" / "kepler" / "kepler90"


@pytest.fixture(scope="module")
def qlp_dir(tmp_path_factory):
    dest = tmp_path_factory.mktemp("qlp")
    lc, tces = simulate_lightcurves(2, 2, 2, dest=str(dest), seed=5)
    return dest, lc, tces


def _write_h5(path, time, mag, qflag=None, bestap=1):
    with h5py.File(path, "w") as h5:
        lc = h5.create_group("LightCurve")
        lc["BJD"] = time
        if qflag is not None:
            lc["QFLAG"] = qflag
        phot = lc.create_group("AperturePhotometry")
        phot.attrs["bestap"] = bestap
        phot.create_group(f"Aperture_{bestap:03d}")["KSPMagnitude"] = mag


def test_read_qlp_returns_clean_relative_flux(qlp_dir):
    dest, lc, tces = qlp_dir
    for i, tic in enumerate(tces["tic_id"]):
        time, flux = read_qlp(str(dest / f"{tic}.h5"))
        truth = lc["flux"].values[i]
        # flagged cadences, NaN magnitudes and the bright outlier are all gone
        np.testing.assert_array_equal(time, lc["time"].values[i])
        np.testing.assert_allclose(flux, truth / np.median(truth), rtol=0, atol=1e-12)
        assert np.median(flux) == pytest.approx(1.0, abs=1e-12)


def test_read_qlp_clips_bright_side_only(tmp_path):
    rng = np.random.default_rng(0)
    time = np.arange(500) * 0.02
    mag = 10 + rng.normal(0, 1e-3, 500)
    mag[100] = 9.9  # brightening: clipped
    mag[200:205] = 10.3  # a deep dip: kept
    mag[300] = np.nan
    _write_h5(tmp_path / "a.h5", time, mag)  # no QFLAG: only non-finite and clip
    t, f = read_qlp(str(tmp_path / "a.h5"))
    assert 100 * 0.02 not in t and 300 * 0.02 not in t
    assert t.size == 498
    dip = f[np.isin(t, time[200:205])]
    np.testing.assert_allclose(
        dip, 10 ** (-(0.3 - (np.median(mag[np.isfinite(mag)]) - 10)) / 2.5), rtol=2e-3
    )


def test_read_qlp_quality_flags(tmp_path):
    time = np.arange(100) * 0.02
    mag = 10.0 + np.random.default_rng(3).normal(0, 1e-3, 100)
    qflag = np.zeros(100, int)
    qflag[10:20] = 4
    mag[10:20] = 5.0  # garbage in flagged cadences
    _write_h5(tmp_path / "q.h5", time, mag, qflag, bestap=3)
    t, f = read_qlp(str(tmp_path / "q.h5"))
    assert t.size == 90 and not np.isin(time[10:20], t).any()
    good = np.r_[mag[:10], mag[20:]]
    np.testing.assert_allclose(f, 10 ** (-(good - np.median(good)) / 2.5))


def test_read_qlp_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.h5"):
        read_qlp(str(tmp_path / "nothere.h5"))
    (tmp_path / "junk.h5").write_bytes(b"not an hdf5 file at all")
    with pytest.raises(LightCurveError, match="junk.h5"):
        read_qlp(str(tmp_path / "junk.h5"))
    with h5py.File(tmp_path / "empty.h5", "w") as h5:
        h5.create_group("LightCurve")
    with pytest.raises(LightCurveError, match="empty.h5"):
        read_qlp(str(tmp_path / "empty.h5"))
    _write_h5(tmp_path / "short.h5", np.arange(10.0), np.ones(9))
    with pytest.raises(LightCurveError, match="10 cadences"):
        read_qlp(str(tmp_path / "short.h5"))


@pytest.mark.skipif(not KEPLER90.exists(), reason=f"Kepler-90 light curves not found in {KEPLER90}")
def test_read_kepler_real_quarters():
    files = sorted(str(p) for p in KEPLER90.glob("*.fits"))
    time, flux = read_kepler(files[::-1])  # order of the files does not matter
    assert time.size == 4134 + 1008 + 4486  # finite points per quarter (upstream kepler_io_test)
    assert np.all(np.diff(time) > 0)
    assert np.isfinite(flux).all()
    t1, _ = read_kepler(files[1])
    assert t1.size == 1008


def test_read_kepler_simulated_fits(tmp_path):
    lc, tces = simulate_lightcurves(1, 1, 0, dest=str(tmp_path), fmt="fits", seed=2)
    time, flux = read_kepler(str(tmp_path / f"{tces['tic_id'][1]}.fits"))
    np.testing.assert_array_equal(time, lc["time"].values[1])
    np.testing.assert_allclose(flux, lc["flux"].values[1] * 1e4, rtol=1e-6)
    (tmp_path / "bad.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    with pytest.raises(LightCurveError, match="bad.fits"):
        read_kepler(str(tmp_path / "bad.fits"))
    with pytest.raises(FileNotFoundError):
        read_kepler(str(tmp_path / "none-*.fits"))


def test_read_lightcurves_one_task_per_batch(qlp_dir):
    dest, lc, tces = qlp_dir
    files = sorted(str(p) for p in dest.glob("*.h5"))
    ds = read_lightcurves(files, batch_size=4)
    assert ds.sizes["target"] == 6
    assert ds["flux"].data.numblocks == (2, 1)  # 6 targets in batches of 4
    assert list(ds["target"].values) == sorted(tces["tic_id"])
    computed = ds.compute()
    for i, url in enumerate(files):
        t, f = read_qlp(url)
        np.testing.assert_array_equal(computed["time"].values[i, : t.size], t)
        np.testing.assert_array_equal(computed["flux"].values[i, : f.size], f)
        assert np.isnan(computed["flux"].values[i, f.size :]).all()


def test_read_lightcurves_with_the_cadence_count_given(qlp_dir, tmp_path):
    """``cadences`` given: the same light curves, NaN-padded to that length; a light curve
    longer than it is refused by file name when its task runs, never cut short."""
    dest, _, _ = qlp_dir
    files = sorted(str(p) for p in dest.glob("*.h5"))
    scanned = read_lightcurves(files, batch_size=4).compute()
    longest = scanned.sizes["cadence"]
    given = read_lightcurves(files, batch_size=4, cadences=longest + 5).compute()
    assert given.sizes["cadence"] == longest + 5
    for name in ("time", "flux"):
        np.testing.assert_array_equal(given[name].values[:, :longest], scanned[name].values)
        assert np.isnan(given[name].values[:, longest:]).all()
    lengths = [read_qlp(u)[0].size for u in files]  # cleaned: at most the raw length
    longest_files = [Path(u).name for u, n in zip(files, lengths, strict=True) if n == max(lengths)]
    short = read_lightcurves(files, batch_size=4, cadences=max(lengths) - 1)
    with pytest.raises(LightCurveError, match="|".join(longest_files)):
        short.compute()
    with pytest.raises(ValueError, match="cadences must be at least 1"):
        read_lightcurves(files, cadences=0)


def test_relative_paths_read_from_any_working_directory(qlp_dir, tmp_path, monkeypatch):
    """Cluster workers may run elsewhere: a lazy read keeps what the relative path meant."""
    from cloudlab.fits import open_hdu

    dest, lc, tces = qlp_dir
    tic = int(tces["tic_id"][0])
    image = np.arange(12, dtype=">f4").reshape(3, 4)
    fits.writeto(dest / "image.fits", image, overwrite=True)
    monkeypatch.chdir(dest)
    ds = read_lightcurves([f"{tic}.h5"])
    arr = open_hdu("image.fits")
    monkeypatch.chdir(tmp_path)  # nothing of that name here
    time, flux = read_qlp(str(dest / f"{tic}.h5"))
    np.testing.assert_array_equal(ds["flux"].values[0, : flux.size], flux)
    np.testing.assert_array_equal(arr.values, image)


def test_aperture_photometry_recovers_star_flux():
    rng = np.random.default_rng(1)
    ntime = 50
    star = 1000 * (1 - 0.01 * (np.arange(ntime) % 10 == 0))
    image = np.zeros((2, ntime, 5, 5)) + 2.0
    image[:, :, 2, 2] += star
    image += rng.normal(0, 1e-6, image.shape)
    aperture = np.zeros((2, 5, 5), bool)
    aperture[:, 1:4, 1:4] = True
    cutouts = xr.Dataset(
        {
            "flux": (("target", "time", "row", "column"), image),
            "aperture": (("target", "row", "column"), aperture),
        },
        coords={"time": np.arange(ntime) * 0.02},
    ).chunk({"target": 1})
    out = aperture_photometry(cutouts, relative=False)
    assert isinstance(out["flux"].data, dask.array.Array)
    np.testing.assert_allclose(out["flux"].values[0], star + 9 * 2.0, rtol=1e-6)
    rel = aperture_photometry(cutouts)["flux"].values[1]
    np.testing.assert_allclose(rel, (star + 18) / np.median(star + 18), rtol=1e-6)
    with pytest.raises(ValueError, match="aperture"):
        aperture_photometry(cutouts.drop_vars("aperture"))


def test_simulated_signals_have_known_depth():
    lc, tces = simulate_lightcurves(3, 3, 2, noise=0.0, seed=7)
    for i, row in tces.iterrows():
        time, flux = lc["time"].values[i], lc["flux"].values[i]
        phase = np.mod(time - row.Epoc + row.Period / 2, row.Period) - row.Period / 2
        centre = np.abs(phase) < 0.02 * row.Duration
        if row.Disposition == "J":
            continue
        if centre.any():
            assert 1 - flux[centre].min() == pytest.approx(row.depth, rel=0.2)
        out = np.abs(phase) > row.Duration
        if row.Disposition == "PC":
            np.testing.assert_allclose(flux[out], 1.0)
    assert trapezoid(np.array([0.0, 0.05, 0.2]), 0.2, 0.02)[0] == 1.0
    assert trapezoid(np.array([0.2]), 0.2, 0.02)[0] == 0.0


def test_simulated_tces_csv_has_cr_line_endings(tmp_path):
    simulate_lightcurves(1, 0, 0, dest=str(tmp_path), seed=1)
    raw = (tmp_path / "tces.csv").read_bytes()
    assert b"\r" in raw and b"\n" not in raw
    assert io.BytesIO(raw).read().startswith(b"row_id,tic_id")
