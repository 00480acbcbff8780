"""AstroNet views: published vectors, bit-exactness against a plain reference, bad input."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import dask
import numpy as np
import pandas as pd
import pytest

from cloudlab.astronet import (
    EmptyLightCurveError,
    SparseLightCurveError,
    batch_views,
    read_tces,
    views,
    views_for,
)
from cloudlab.astronet import reference as ref
from cloudlab.astronet.views import (
    binned_view,
    count_below,
    fill_empty,
    fold_and_sort,
    numba_views,
    phase_fold,
)
from cloudlab.simulate import lightcurves as simulate_lightcurves

DATA = Path(__file__).parents[2] / "shared" / "data"
KEPLER90 = DATA / "kepler" / "kepler90"
TCES = DATA / "astronet" / "triage" / "tces.csv"


def _view(x, y, t_min, t_max, width, n):
    xs, ys, count = fold_and_sort(x[None], y[None], np.array([2.0]), np.array([0.15]))
    return binned_view(xs, ys, count, np.array([t_min]), np.array([t_max]), np.array([width]), n)


def test_published_view_generator_vectors():
    """``view_generator_test``: t = 0:0.1:1.9, flux = 0..19, P = 2, t0 = 0.15."""
    time, flux = np.arange(20) * 0.1, np.arange(20.0)
    global_view = _view(time, flux, -1.0, 1.0, 0.2, 10)
    raw = np.array([12.5, 14.5, 16.5, 18.5, 0.5, 2.5, 4.5, 6.5, 8.5, 10.5])
    np.testing.assert_allclose(
        global_view.values[0], (raw - np.median(raw)) / 9, rtol=0, atol=1e-15
    )
    np.testing.assert_allclose(
        global_view.values[0], np.array([3, 5, 7, 9, -9, -7, -5, -3, -1, 1]) / 9, atol=1e-15
    )
    local_view = _view(time, flux, -0.5, 0.5, 0.2, 5)
    np.testing.assert_allclose(local_view.values[0], [3, 1, -1, -0.5, 0], atol=1e-15)
    # raw medians, before normalisation, through the plain reference
    x = np.sort(phase_fold(time, 2.0, 0.15))
    y = flux[np.argsort(phase_fold(time, 2.0, 0.15))]
    np.testing.assert_array_equal(ref.median_filter(x, y, 10, 0.2, -1, 1), raw)
    np.testing.assert_array_equal(
        ref.median_filter(x, y, 5, 0.2, -0.5, 0.5), [17.5, 9.5, 1.5, 3.5, 5.5]
    )


def test_phase_fold_cases():
    time = np.arange(-5.0, 5.0, 0.5)
    for period, t0 in [(2.0, 0.0), (2.0, 0.25), (1.5, -3.2), (3.0, 1000.5)]:
        tau = phase_fold(time, period, t0)
        assert np.all(tau >= -period / 2) and np.all(tau < period / 2)
        cycles = (time - t0 - tau) / period
        np.testing.assert_allclose(cycles, np.round(cycles), atol=1e-9)
    assert phase_fold(np.array([0.25]), 2.0, 0.25)[0] == 0.0


def test_count_below_equals_searchsorted():
    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(-1, 1, (50, 300)), axis=1)
    x[:, -20:] = np.inf
    step = rng.uniform(0.01, 0.05, 50)
    edges = np.cumsum(np.c_[np.full(50, -1.0), np.repeat(step[:, None], 59, 1)], axis=1)
    x[:, 5] = edges[:, 10]  # points exactly on an edge
    x = np.sort(x, axis=1)
    counts = count_below(x, edges, edges[:, 0], step)
    for r in range(50):
        np.testing.assert_array_equal(counts[r], np.searchsorted(x[r], edges[r], "left"))


def _random_batch(n, seed, length=1300):
    rng = np.random.default_rng(seed)
    time = np.full((n, length), np.nan)
    flux = np.full((n, length), np.nan)
    period = rng.uniform(0.2, 15, n)
    duration = rng.uniform(0.02, 0.3, n) * np.minimum(period, 3)
    t0 = rng.uniform(1325, 1330, n)
    for i in range(n):
        m = rng.integers(3, length)
        cadence = rng.choice([1 / 48, 1 / 72, 1 / 144])
        t = 1325 + np.arange(m) * cadence
        phase = np.abs(np.mod(t - t0[i] + period[i] / 2, period[i]) - period[i] / 2)
        time[i, :m] = t
        flux[i, :m] = 1 + rng.normal(0, 1e-3, m) - 0.01 * (phase < duration[i] / 2)
        if i % 5 == 0:
            flux[i, rng.integers(0, m, m // 3)] = np.nan
        if i % 11 == 0:
            flux[i, :m] = np.round(flux[i, :m], 2)  # many ties in the medians
    return time, flux, period, t0, duration


@pytest.mark.parametrize("kind", ["triage", "kepler_bins"])
def test_views_bit_exact_against_plain_reference(kind):
    time, flux, period, t0, duration = _random_batch(120, seed=11)
    algorithm = "triage" if kind == "triage" else "kepler"
    if algorithm == "kepler":  # binning only: the detrending is tested separately
        out = _kepler_bins_only(time, flux, period, t0, duration)
    else:
        out = batch_views(time, flux, period, t0, duration, kind=algorithm)
    n_skipped = 0
    for i in range(len(period)):
        try:
            g, l = ref.views_for(time[i], flux[i], period[i], t0[i], duration[i], kind=algorithm)
        except ValueError as err:
            assert not out["valid"][i], (i, str(err))
            assert out["reason"][i]
            n_skipped += 1
            continue
        assert out["valid"][i], (i, out["reason"][i])
        np.testing.assert_array_equal(out["global_view"][i], g)
        np.testing.assert_array_equal(out["local_view"][i], l)
    if algorithm == "triage":
        assert 0 < n_skipped < len(period)  # the guards did fire, and not for everything


def _kepler_bins_only(time, flux, period, t0, duration):
    with mock.patch("cloudlab.astronet.spline.detrend_rows", side_effect=lambda t, f: f):
        return batch_views(time, flux, period, t0, duration, kind="kepler")


def test_empty_bins_interpolated_as_np_interp():
    # 30-min cadence folded at P = 0.35 d leaves many global bins empty
    time = 1325 + np.arange(1250) / 48
    flux = 1 + 0.01 * np.sin(2 * np.pi * time / 0.35)
    xs, ys, n = fold_and_sort(time[None], flux[None], np.array([0.35]), np.array([1325.0]))
    w = 1.2 * 0.35 / 201
    raw = ref.median_filter(xs[0, : n[0]], ys[0, : n[0]], 201, w, -0.175, 0.175, fill="median")
    empty = raw == np.median(ys[0, : n[0]])
    assert empty.sum() > 50
    g, _ = views_for(time, flux, 0.35, 1325.0, 0.05)
    g_ref, _ = ref.views_for(time, flux, 0.35, 1325.0, 0.05)
    np.testing.assert_array_equal(g, g_ref)
    values = np.array([[np.nan, 1.0, np.nan, np.nan, 4.0, np.nan]])
    filled, all_empty = fill_empty(values)
    np.testing.assert_array_equal(filled[0], np.interp(np.arange(6), [1, 4], [1.0, 4.0]))
    assert not all_empty[0]
    assert fill_empty(np.full((1, 4), np.nan))[1][0]


def test_views_recover_injected_signals():
    lc, tces = simulate_lightcurves(3, 3, 0, noise=5e-4, seed=4)
    out = views(lc, tces).compute()
    assert out["valid"].all()
    for i, row in tces.iterrows():
        g, l = out["global_view"].values[i], out["local_view"].values[i]
        assert np.median(g) == 0 and g.min() == -1
        assert np.median(l) == 0 and l.min() == -1
        # the dip sits at the centre: bins within the flat bottom / V of the eclipse
        in_local = np.flatnonzero(l < -0.5)
        assert abs(in_local.mean() - 30) < 2, row.Disposition
        in_global = np.flatnonzero(g < -0.5)
        assert abs(in_global.mean() - 100) < 2
        if row.Disposition == "PC":
            # flat bottom spans 0.8 D of the ±2 D window: ~0.8/4 * 61 bins below -0.5
            assert 8 <= in_local.size <= 16


def test_vetting_secondary_view_finds_secondary_eclipse():
    lc, tces = simulate_lightcurves(0, 3, 0, noise=3e-4, seed=9)
    deep = tces["secondary_depth"] > 0.01
    out = views(lc, tces, kind="vetting").compute()
    assert set(out.data_vars) >= {"global_view", "local_view", "secondary_view"}
    assert out.sizes["secondary_bin"] == 61
    result = batch_views(
        lc["time"].values, lc["flux"].values, tces.Period.values, tces.Epoc.values,
        tces.Duration.values, kind="vetting",
    )  # fmt: skip
    phase = result["secondary_phase"] / tces.Period.to_numpy()
    np.testing.assert_allclose(phase[deep], 0.5, atol=0.02)
    sec = out["secondary_view"].values[deep.to_numpy()]
    assert np.all(np.abs(np.argmin(sec, axis=1) - 30) <= 3)
    g, l, s = views_for(
        lc["time"].values[0], lc["flux"].values[0], *tces.loc[0, ["Period", "Epoc", "Duration"]],
        kind="vetting",
    )  # fmt: skip
    np.testing.assert_array_equal(s, out["secondary_view"].values[0])


def test_views_dataset_is_lazy_and_blockwise():
    lc, tces = simulate_lightcurves(3, 3, 4, seed=1)
    ds = views(lc, tces, batch_size=4)
    assert ds["global_view"].dims == ("tce", "global_bin")
    assert ds["local_view"].dims == ("tce", "local_bin")
    assert ds["global_view"].data.chunks[0] == (4, 4, 2)
    assert isinstance(ds["valid"].data, dask.array.Array)
    direct = batch_views(
        lc["time"].values, lc["flux"].values, tces.Period.values, tces.Epoc.values,
        tces.Duration.values,
    )  # fmt: skip
    computed = ds.compute(scheduler="synchronous")
    np.testing.assert_array_equal(computed["global_view"].values, direct["global_view"])
    np.testing.assert_array_equal(computed["local_view"].values, direct["local_view"])
    assert list(computed["tic_id"].values) == list(tces["tic_id"])


def test_bad_input_errors_and_reasons():
    time = 1325 + np.arange(1000) / 48
    flux = np.ones(1000) + np.random.default_rng(0).normal(0, 1e-3, 1000)
    with pytest.raises(ValueError, match="period"):
        views_for(time, flux, -1.0, 1326.0, 0.1)
    with pytest.raises(ValueError, match="period"):
        views_for(time, flux, np.nan, 1326.0, 0.1)
    with pytest.raises(ValueError, match="duration must be shorter"):
        views_for(time, flux, 0.5, 1326.0, 0.6)
    with pytest.raises(ValueError, match="outside the light curve"):
        views_for(time, flux, 2.0, 2458326.0, 0.1)  # BJD epoch against BTJD times
    with pytest.raises(EmptyLightCurveError):
        views_for(time, np.full(1000, np.nan), 2.0, 1326.0, 0.1)
    with pytest.raises(EmptyLightCurveError):
        views_for([], [], 2.0, 1326.0, 0.1)
    with pytest.raises(SparseLightCurveError, match="fewer than 5"):
        views_for(time[:4], flux[:4], 2.0, 1326.0, 0.1)
    with pytest.raises(SparseLightCurveError, match="coverage"):
        views_for(time[:100], flux[:100], 20.0, 1326.0, 0.2)  # 2 days of a 20-day orbit
    with pytest.raises(ValueError, match="kind"):
        views_for(time, flux, 2.0, 1326.0, 0.1, kind="nope")
    lc, tces = simulate_lightcurves(2, 0, 0, seed=2)
    tces = pd.concat([tces, tces.assign(tic_id=1), tces.iloc[:1].assign(Period=-3.0)])
    out = views(lc, tces.reset_index(drop=True)).compute()
    assert list(out["valid"].values) == [True, True, False, False, False]
    assert "no light curve for target 1" in out["reason"].values[2]
    assert "period" in out["reason"].values[4]
    assert np.isnan(out["global_view"].values[4]).all()
    with pytest.raises(ValueError, match="Epoc"):
        views(lc, tces.drop(columns="Epoc"))


@pytest.mark.skipif(not KEPLER90.exists(), reason=f"Kepler-90 light curves not found in {KEPLER90}")
def test_kepler_views_of_kepler90():
    from cloudlab.astronet.spline import detrend
    from cloudlab.io.lightcurves import read_kepler

    time, flux = read_kepler(str(KEPLER90 / "*.fits"))
    detrended, spacing = detrend(time, flux)
    assert 0.5 <= spacing <= 20
    assert np.nanmedian(detrended) == pytest.approx(1.0, abs=1e-3)
    assert np.nanstd(detrended) < 0.01 * np.std(flux / np.median(flux)) + 1e-3
    # Kepler-90 i (upstream README): P = 14.44912 d, t0 = 2.2 BKJD, D = 0.11267 d
    g, l = views_for(time, flux, 14.44912, 2.2, 0.11267, kind="kepler")
    assert g.shape == (2001,) and l.shape == (201,)
    for v in (g, l):
        assert np.median(v) == 0 and v.min() == -1
    keep = np.isfinite(detrended)
    g_ref, l_ref = ref.views_for(time[keep], detrended[keep], 14.44912, 2.2, 0.11267, kind="kepler")
    np.testing.assert_array_equal(g, g_ref)
    np.testing.assert_array_equal(l, l_ref)


@pytest.mark.skipif(not KEPLER90.exists(), reason=f"Kepler-90 light curves not found in {KEPLER90}")
def test_kepler90_views_follow_upstream_pipeline():
    """Upstream's process_light_curve (per-file arrays, pydl iterfit) → the same views."""
    from cloudlab.io.lightcurves import read_kepler

    files = sorted(KEPLER90.glob("*.fits"))
    parts = [read_kepler(str(f)) for f in files]  # upstream reads and splits file by file
    up_time, up_flux, up_spacing = ref.kepler_detrend([p[0] for p in parts], [p[1] for p in parts])
    assert up_time.size == 4134 + 1008 + 4486
    args = (14.44912, 2.2, 0.11267)
    g_up, l_up = ref.views_for(up_time, up_flux, *args, kind="kepler")
    time, flux = read_kepler([str(f) for f in files])
    g, l = views_for(time, flux, *args, kind="kepler")
    assert np.corrcoef(g, g_up)[0, 1] >= 0.999
    assert np.corrcoef(l, l_up)[0, 1] >= 0.999
    np.testing.assert_allclose(g, g_up, rtol=0, atol=1e-9)
    np.testing.assert_allclose(l, l_up, rtol=0, atol=1e-9)
    from cloudlab.astronet.spline import detrend

    assert detrend(time, flux)[1] == up_spacing


def test_robust_mask_is_idl_robust_mean():
    rng = np.random.default_rng(8)
    for cut in (2.0, 3.0, 5.0):
        y = rng.normal(0, 1, 2000)
        y[rng.integers(0, 2000, 60)] += rng.choice([-1, 1], 60) * rng.uniform(4, 20, 60)
        from cloudlab.astronet.spline import robust_mask

        mask = robust_mask(y, cut)
        np.testing.assert_array_equal(mask, ref.robust_mean(y, cut)[2])
        assert 0.8 < mask.mean() < 1.0 and not mask[np.abs(y) > cut + 2].any()


def test_spline_detrending_removes_trend_keeps_transit():
    from cloudlab.astronet.spline import detrend

    rng = np.random.default_rng(5)
    time = np.arange(0, 60, 1 / 48)
    time = time[(time < 29) | (time > 31)]  # a gap splits the light curve
    trend = 1 + 0.02 * np.sin(2 * np.pi * time / 13) + 0.001 * time
    transit = np.where(np.abs(np.mod(time - 3 + 2.5, 5) - 2.5) < 0.05, 0.995, 1.0)
    flux = trend * transit * (1 + rng.normal(0, 2e-4, time.size))
    detrended, _ = detrend(time, flux)
    out = np.abs(np.mod(time - 3 + 2.5, 5) - 2.5) > 0.2
    assert np.std(detrended[out]) < 3e-4
    inside = ~np.isclose(transit, 1.0)
    assert np.median(detrended[inside]) == pytest.approx(0.995, abs=1e-3)


@pytest.mark.skipif(not TCES.exists(), reason=f"Triage tces.csv not found at {TCES}")
def test_read_real_tces_csv_with_cr_line_endings():
    tces = read_tces(str(TCES))
    assert len(tces) > 16000
    assert list(tces.columns[:4]) == ["row_id", "tic_id", "toi_id", "Disposition"]
    assert set(tces["Disposition"]) <= {"PC", "EB", "J", "O"}
    assert tces["Duration"].median() < 0.5  # days, not hours
    assert (tces["Transit_Depth"] > 0).all()
    raw = read_tces(str(TCES), clean=False)
    assert len(raw) == 16734


def test_views_from_cutout_photometry():
    """Light curves from a cutouts Dataset (target, time, row, column) feed the views directly."""
    import xarray as xr

    from cloudlab.cutouts import aperture_photometry

    lc, tces = simulate_lightcurves(2, 1, 0, noise=2e-4, seed=6)
    star = np.zeros((3, 3))
    star[1, 1], star[0, 1] = 0.8, 0.2
    cube = 500.0 * lc["flux"].values[:, :, None, None] * star + 1.0
    cutouts = xr.Dataset(
        {
            "flux": (("target", "time", "row", "column"), cube),
            "aperture": (("target", "row", "column"), np.broadcast_to(star > 0, (3, 3, 3))),
        },
        coords={"target": lc["target"].values, "time": lc["time"].values[0]},
    ).chunk({"target": 1})
    photometry = aperture_photometry(cutouts)
    out = views(photometry, tces).compute()
    direct = views(lc, tces).compute()
    assert out["valid"].all()
    np.testing.assert_allclose(out["local_view"].values, direct["local_view"].values, atol=1e-9)


def _plain_depth(tau, flux, duration, q):
    core = np.abs(tau) < duration * (1 - 2 * min(max(q, 0), 0.4)) / 2
    inside = core if core.sum() >= 4 else np.abs(tau) < duration / 2
    return flux[np.abs(tau) >= duration / 2].mean() - flux[inside].mean()


def test_vetting_depth_change_from_two_apertures(tmp_path):
    import glob

    from cloudlab.io.lightcurves import read_lightcurves, read_qlp_apertures

    _, truth = simulate_lightcurves(2, 3, 1, dest=str(tmp_path), noise=3e-4, seed=4)
    files = sorted(glob.glob(str(tmp_path / "*.h5")))
    lc = read_lightcurves(files, reader="qlp-vetting")
    assert {"flux_small", "flux_big"} <= set(lc.data_vars)
    tces = read_tces(str(tmp_path / "tces.csv"), vetting=True).assign(Qingress=0.1)
    out = views(lc, tces, kind="vetting").compute()
    assert out["valid"].all()
    for i, row in tces.iterrows():
        time, flux, small, big = read_qlp_apertures(files[i])
        tau = phase_fold(time, row.Period, row.Epoc)
        expected = (
            _plain_depth(tau, big, row.Duration, 0.1) - _plain_depth(tau, small, row.Duration, 0.1)
        ) / np.std(small[np.abs(tau) > row.Duration / 2])
        assert out["depth_change"].values[i] == pytest.approx(expected, rel=1e-9, abs=1e-9)
        blended = truth.loc[truth.tic_id == row.tic_id, "big_aperture_ratio"].item() > 1
        assert (out["depth_change"].values[i] > 5) == blended


NUMBA = pytest.mark.skipif(numba_views is None, reason="numba not installed")


@NUMBA
@pytest.mark.parametrize("kind", ["triage", "vetting", "kepler_bins"])
def test_numba_and_numpy_engines_identical(kind):
    """The compiled kernel (the default with numba) and the NumPy fallback agree exactly."""
    time, flux, period, t0, duration = _random_batch(120 if kind != "vetting" else 16, seed=23)
    time[3, ::2] = np.nan  # gaps in time as well as in flux
    flux[7, :] = np.nan  # an empty light curve
    period[9] = -1.0  # bad parameters
    results = {}
    for engine in ("numpy", "numba"):
        if kind == "kepler_bins":
            with mock.patch("cloudlab.astronet.spline.detrend_rows", side_effect=lambda t, f: f):
                results[engine] = batch_views(
                    time, flux, period, t0, duration, kind="kepler", engine=engine
                )
        else:
            results[engine] = batch_views(
                time, flux, period, t0, duration, kind=kind, engine=engine
            )
    a, b = results["numpy"], results["numba"]
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert 0 < a["valid"].sum() < len(period)
    assert len(set(a["reason"])) > 2  # several different guards fired


@NUMBA
def test_numba_kernel_published_vectors():
    """``view_generator_test`` through the compiled single-view kernel."""
    tau = phase_fold(np.arange(20) * 0.1, 2.0, 0.15)
    flux = np.arange(20.0)
    span = (tau.min(), tau.max())
    scratch = (np.empty(20), np.empty((2, 10)), np.empty((2, 20), np.int64), np.empty(11, np.int64))
    out = np.empty(10)
    assert numba_views._bin_view(tau, flux, *span, -1.0, 1.0, 0.2, False, out, *scratch) == 0
    np.testing.assert_allclose(out, np.array([3, 5, 7, 9, -9, -7, -5, -3, -1, 1]) / 9, atol=1e-15)
    out = np.empty(5)
    assert numba_views._bin_view(tau, flux, *span, -0.5, 0.5, 0.2, False, out, *scratch) == 0
    np.testing.assert_allclose(out, [3, 1, -1, -0.5, 0], atol=1e-15)
    code = numba_views._bin_view(tau[:4], flux[:4], *span, -1.0, 1.0, 0.2, False, out, *scratch)
    assert code == numba_views.FEW_IN_WINDOW


def test_engine_argument(monkeypatch):
    import importlib

    views_module = importlib.import_module("cloudlab.astronet.views")
    time = 1325 + np.arange(500) / 48
    flux = 1 + np.random.default_rng(1).normal(0, 1e-3, 500)
    with pytest.raises(ValueError, match="engine"):
        batch_views(time, flux, 2.0, 1326.0, 0.1, engine="gpu")
    expected = batch_views(time, flux, 2.0, 1326.0, 0.1, engine="numpy")
    monkeypatch.setattr(views_module, "numba_views", None)  # as without numba installed
    with pytest.raises(ValueError, match="needs numba"):
        batch_views(time, flux, 2.0, 1326.0, 0.1, engine="numba")
    fallback = batch_views(time, flux, 2.0, 1326.0, 0.1)  # "auto" falls back to NumPy
    assert fallback["valid"][0]
    np.testing.assert_array_equal(fallback["global_view"], expected["global_view"])


@NUMBA
def test_numba_median_equals_np_median():
    """Rank (≤ 16 values) and quickselect (more) medians, odd and even counts, with ties."""
    rng = np.random.default_rng(8)
    for count in [*range(1, 40), 101, 200, 1001]:
        for values in (rng.normal(size=count), np.round(rng.normal(size=count), 1)):
            got = numba_views._median(values.copy(), count)
            assert got == np.median(values), (count, got, np.median(values))


def test_views_of_lightcurve_files_read_each_batchs_own_files(tmp_path):
    """Views of a :func:`read_lightcurves` Dataset: each task reads only the light curves of
    its own TCEs (no task depends on a light-curve block, so a catalog in any order costs a
    task only its own rows), with the views of the same light curves held in memory, whatever
    the catalog order, with two TCEs per target and a target without a light curve."""
    import glob

    from cloudlab.io.lightcurves import files_of, read_lightcurves

    simulate_lightcurves(3, 3, 2, dest=str(tmp_path), seed=11)
    files = sorted(glob.glob(str(tmp_path / "*.h5")))
    lc = read_lightcurves(files, batch_size=3)
    assert files_of(lc) is not None
    assert files_of(lc.isel(target=slice(None, None, -1))) is None  # other targets: no recipe
    tces = read_tces(str(tmp_path / "tces.csv"))
    lost = tces.iloc[:1].assign(tic_id=999)
    catalog = pd.concat([tces, tces, lost]).sample(frac=1, random_state=2).reset_index(drop=True)
    direct = views(lc, catalog, batch_size=4)
    data = direct["global_view"].data
    layer = data.name.removesuffix("-global_view")  # the batch tasks, under their outputs
    assert data.dask.dependencies[layer] == set()  # reads its files itself
    direct = direct.compute()
    in_memory = views(lc.compute(), catalog, batch_size=4).compute()
    reordered = views(lc.isel(target=slice(None, None, -1)), catalog, batch_size=4).compute()
    for other in (in_memory, reordered):
        for name in ("global_view", "local_view", "status", "reason", "valid"):
            np.testing.assert_array_equal(direct[name].values, other[name].values)
    lost_row = int(np.flatnonzero(catalog["tic_id"].to_numpy() == 999)[0])
    assert direct["status"].values[lost_row] == "no_lightcurve"
    assert "999" in direct["reason"].values[lost_row]
    assert direct["valid"].values.sum() >= 2 * len(tces) - 2  # the simulated TCEs have views


def test_packed_file_names_round_trip():
    from cloudlab.io.lightcurves import pack_groups, unpack_groups

    groups = [["s3://b/a 1.fits"], ["x.h5", "y.h5", "z.h5"], [""], ["ü/é.fits"]]
    names = [f"s3://stpubdata/tess/public/tid/s0001/{k:016d}-s_lc.fits" for k in range(1000)]
    assert unpack_groups(pack_groups(groups)) == groups
    assert unpack_groups(pack_groups([])) == []
    assert len(pack_groups([[n] for n in names])) < 20 * len(names)  # ~90 characters each


def test_views_of_lightcurves_on_s3_equal_those_of_local_files(s3_bucket, tmp_path):
    """The S3 emulator holds the same files: each task reads its targets in threads, and the
    views are those of the local copies."""
    import glob

    from cloudlab import storage
    from cloudlab.io.lightcurves import read_lightcurves

    local = tmp_path / "lc"
    simulate_lightcurves(2, 2, 1, dest=str(local), seed=3)
    simulate_lightcurves(2, 2, 1, dest=f"s3://{s3_bucket}/lc", seed=3)
    remote = storage.expand(f"s3://{s3_bucket}/lc/*.h5")
    assert len(remote) == 5
    tces = read_tces(str(local / "tces.csv")).iloc[::-1]
    with dask.config.set(scheduler="threads"):
        got = views(read_lightcurves(remote), tces, batch_size=3).compute()
        want = views(read_lightcurves(sorted(glob.glob(str(local / "*.h5")))), tces).compute()
    assert got["valid"].values.all()
    for name in ("global_view", "local_view", "status"):
        np.testing.assert_array_equal(got[name].values, want[name].values)


def test_views_mark_the_tces_of_an_unreadable_file_and_go_on(tmp_path):
    """A light-curve file gone (or longer than the ``cadences`` given) after the Dataset was
    opened: its TCEs get status ``unreadable`` with a reason naming the file; the other TCEs of
    the same task get the views they get when every file is there."""
    import glob

    from cloudlab.io.lightcurves import read_lightcurves

    simulate_lightcurves(2, 2, 1, dest=str(tmp_path), seed=8)
    files = sorted(glob.glob(str(tmp_path / "*.h5")))
    tces = pd.concat([read_tces(str(tmp_path / "tces.csv"))] * 2, ignore_index=True)
    want = views(read_lightcurves(files), tces).compute()
    lc = read_lightcurves(files)
    gone = files[1]
    Path(gone).unlink()
    got = views(lc, tces, batch_size=len(tces)).compute()
    lost = tces["tic_id"].to_numpy() == int(Path(gone).stem)
    assert lost.sum() == 2
    assert (got["status"].values[lost] == "unreadable").all()
    assert all(Path(gone).name in r for r in got["reason"].values[lost])
    assert not got["valid"].values[lost].any()
    for name in ("global_view", "local_view", "status", "reason"):
        np.testing.assert_array_equal(got[name].values[~lost], want[name].values[~lost])
    there = [f for f in files if f != gone]
    short = views(read_lightcurves(there, cadences=10), tces[~lost]).compute()
    assert (short["status"].values == "unreadable").all()
    assert all("cadences=10" in r for r in short["reason"].values)
