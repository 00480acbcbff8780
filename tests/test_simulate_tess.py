"""Synthetic TESS sector: FFIs, cube, truth, and astrocut reading the cube."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from cloudlab import fits as cf
from cloudlab.cutouts.pointing import radec_to_pixel
from cloudlab.io.tess import cube_meta
from cloudlab.simulate import tess_sector
from cloudlab.simulate.background import scattered_light
from cloudlab.simulate.tess import DetectorLayout


def read_cube(url: str) -> dict:
    """A cube's flux and flux_err as lazy ``(time, row, column)`` arrays (read through
    ``cloudlab.fits.open_hdu``) and its mid-exposure times."""
    pixels = cf.open_hdu(url, 1, dims=("row", "column", "time", "plane"))
    return {
        "flux": pixels.isel(plane=0).transpose("time", "row", "column"),
        "flux_err": pixels.isel(plane=1).transpose("time", "row", "column"),
        "time": cube_meta(url).time,
    }


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    dest = tmp_path_factory.mktemp("sector")
    return tess_sector(str(dest), n_frames=40, shape=(104, 107), seed=3)


def test_layout_scales_collateral():
    full = DetectorLayout.for_shape((2078, 2136))
    assert (full.lead_cols, full.trail_cols, full.top_rows) == (44, 44, 30)
    assert full.science_shape == (2048, 2048)
    small = DetectorLayout.for_shape((208, 214))
    assert (small.lead_cols, small.top_rows) == (4, 3)
    assert small.science_cols == slice(4, 210)
    with pytest.raises(ValueError, match="larger than a TESS FFI"):
        DetectorLayout.for_shape((3000, 100))
    with pytest.raises(ValueError, match="too small"):
        DetectorLayout.for_shape((9, 9))


def test_ffi_headers(sim):
    assert len(sim.ffi_urls) == 40
    with fits.open(sim.ffi_urls[5]) as hdul:
        p, cal, unc = hdul[0].header, hdul[1].header, hdul[2].header
        assert p["TELESCOP"] == "TESS" and p["SECTOR"] == 55
        assert (p["CAMERA"], p["CCD"]) == (1, 1)
        # primary times are TJD (spacecraft), ext 1 times BTJD: they differ by BARYCORR
        assert p["TSTART"] == pytest.approx(cal["TSTART"] - cal["BARYCORR"], abs=1e-9)
        assert cal["TSTART"] == pytest.approx(sim.tstart[5])
        assert cal["TSTOP"] - cal["TSTART"] == pytest.approx(200 / 86400)
        assert p["DATE-OBS"].endswith("Z") and len(p["DATE-OBS"]) == 24
        assert cal["DQUALITY"] == sim.quality[5]
        assert cal["CTYPE2"] == "DEC--TAN-SIP" and cal["A_ORDER"] == 3
        assert "AP_1_0" in cal and cal["BUNIT"] == "electrons/s"
        assert hdul[1].data.dtype == np.dtype(">f4") and hdul[1].data.shape == (104, 107)
        assert unc["IMAGTYPE"] == "uncert"
        lay = sim.layout
        assert cal["SCCSA"] == lay.science_cols.start + 1
        assert cal["SCCED"] == lay.science_cols.stop
        assert cal["SCIROWE"] == lay.science_rows.stop
    assert (sim.quality > 0).sum() >= 3
    assert sim.nan_frames and np.isnan(fits.getdata(sim.ffi_urls[sim.nan_frames[0]], 1)).all()


def test_cube_equals_ffis(sim):
    cube = fits.getdata(sim.cube_url, 1)
    assert cube.shape == (104, 107, 40, 2)
    for i in (0, 17, 39):
        np.testing.assert_array_equal(cube[:, :, i, 0], fits.getdata(sim.ffi_urls[i], 1))
        np.testing.assert_array_equal(cube[:, :, i, 1], fits.getdata(sim.ffi_urls[i], 2))
    table = fits.getdata(sim.cube_url, 2)
    np.testing.assert_allclose(table["TSTART"], sim.tstart)
    np.testing.assert_array_equal(table["DQUALITY"], sim.quality)
    assert table["FFI_FILE"][3] == sim.ffi_urls[3].rsplit("/", 1)[1]
    with fits.open(sim.cube_url) as hdul:
        assert hdul[0].header["ORIGIN"] == "STScI/MAST"
        assert hdul[0].header["SECTOR"] == 55
        assert len(hdul[1].header) == 9


def test_collateral_is_empty_and_science_has_stars(sim):
    frame = np.nanmedian(fits.getdata(sim.cube_url, 1)[..., 0], axis=2)
    lay = sim.layout
    science = frame[lay.science_rows, lay.science_cols]
    collateral = np.concatenate(
        [frame[:, : lay.lead_cols].ravel(), frame[lay.science_rows.stop :].ravel()]
    )
    assert np.abs(np.median(collateral)) < 1.0
    assert np.median(science) > 10.0


def test_star_positions_match_wcs_and_image(sim):
    meta = cube_meta(sim.cube_url)
    col, row = meta.wcs.all_world2pix(sim.stars["ra"], sim.stars["dec"], 0)
    np.testing.assert_allclose(col, sim.stars["column"], atol=1e-6)
    np.testing.assert_allclose(row, sim.stars["row"], atol=1e-6)
    # the centroid of a bright, isolated, unsaturated star is at its true position
    frame = np.nanmedian(fits.getdata(sim.cube_url, 1)[..., 0], axis=2) - np.nanmedian(
        sim.background(), axis=0
    )
    stars = sim.stars
    bright = stars[(stars["tmag"] > 8) & (stars["tmag"] < 11)]
    checked = 0
    for _, s in bright.iterrows():
        others = stars[(stars.index != s.name)]
        if (np.hypot(others["row"] - s["row"], others["column"] - s["column"]) < 6).any():
            continue
        r0, c0 = int(round(s["row"])), int(round(s["column"]))
        if not (4 <= r0 < 96 and 8 <= c0 < 99):
            continue
        box = frame[r0 - 3 : r0 + 4, c0 - 3 : c0 + 4]
        yy, xx = np.mgrid[r0 - 3 : r0 + 4, c0 - 3 : c0 + 4]
        assert (box * yy).sum() / box.sum() == pytest.approx(s["row"], abs=0.1)
        assert (box * xx).sum() / box.sum() == pytest.approx(s["column"], abs=0.1)
        checked += 1
    assert checked >= 1


def test_wcs_follows_tess_point(sim):
    cam, ccd, col, row = radec_to_pixel(sim.stars["ra"], sim.stars["dec"], 55)
    assert (cam == 1).all() and (ccd == 1).all()
    spoc_col, spoc_row = sim.layout.to_spoc(sim.stars["row"], sim.stars["column"])
    np.testing.assert_allclose(col + 1, spoc_col, atol=0.05)
    np.testing.assert_allclose(row + 1, spoc_row, atol=0.05)


def test_background_truth(sim):
    bg = sim.background()
    assert bg.shape == (40, 104, 107)
    np.testing.assert_array_equal(
        bg[:, 5:9],
        scattered_light(sim.shape, sim.times, seed=sim.background_seed, rows=slice(5, 9))
        * sim.layout.science_mask()[5:9],
    )
    # pixels far from every star measure the background
    flux = read_cube(sim.cube_url)["flux"].values
    rr, cc = np.mgrid[0:104, 0:107]
    far = np.ones((104, 107), bool)
    for _, s in sim.stars.iterrows():
        far &= np.hypot(rr - s["row"], cc - s["column"]) > 5
    far &= sim.layout.science_mask()
    good = [i for i in range(40) if i not in sim.nan_frames]
    resid = (flux[good] - bg[good])[:, far]
    assert far.sum() > 20
    assert abs(np.median(resid)) < 0.5


def test_injected_transit_visible(sim):
    stars = sim.stars
    flux = read_cube(sim.cube_url)["flux"].values
    seen = 0
    for _, s in stars[stars["depth"] > 0].iterrows():
        phase = (sim.times - s["t0"] + 0.5 * s["period"]) % s["period"] - 0.5 * s["period"]
        inside = np.abs(phase) <= s["duration"] / 2
        inside[sim.nan_frames] = False
        outside = ~inside
        outside[sim.nan_frames] = False
        if inside.sum() < 2:
            continue
        r0, c0 = int(round(s["row"])), int(round(s["column"]))
        ap = flux[:, max(r0 - 3, 0) : r0 + 4, max(c0 - 3, 0) : c0 + 4].sum(axis=(1, 2))
        bg = sim.background()[:, max(r0 - 3, 0) : r0 + 4, max(c0 - 3, 0) : c0 + 4].sum(axis=(1, 2))
        star = ap - bg
        depth = 1 - np.median(star[inside]) / np.median(star[outside])
        assert depth == pytest.approx(s["depth"], abs=max(0.3 * s["depth"], 0.004))
        seen += 1
    assert seen >= 1


def test_astrocut_cuts_the_same_values(sim):
    from astrocut import TessCubeCutout
    from astropy.coordinates import SkyCoord

    ds = read_cube(sim.cube_url)
    s = sim.stars.sort_values("tmag").iloc[3]
    cut = TessCubeCutout(
        sim.cube_url, coordinates=SkyCoord(s["ra"], s["dec"], unit="deg"), cutout_size=8
    ).cutouts[0]
    (c0, c1), (r0, r1) = cut.cutout_lims
    np.testing.assert_array_equal(cut.data, ds["flux"][:, r0:r1, c0:c1].values)
    np.testing.assert_array_equal(cut.uncertainty, ds["flux_err"][:, r0:r1, c0:c1].values)


def test_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="camera and ccd"):
        tess_sector(str(tmp_path), camera=5)
    with pytest.raises(ValueError, match="unknown TESS sector 999"):
        tess_sector(str(tmp_path), sector=999)
    with pytest.raises(ValueError, match="n_frames"):
        tess_sector(str(tmp_path), n_frames=0)
    with pytest.raises(ValueError, match="nothing to write"):
        tess_sector(str(tmp_path), ffis=False, cube=False)
    assert not any(tmp_path.iterdir())


def test_cube_only_to_s3(s3_bucket):
    dest = f"s3://{s3_bucket}/s55"
    sim = tess_sector(dest, n_frames=6, shape=(60, 64), ffis=False, seed=1)
    assert sim.ffi_urls == [] and sim.cube_url.startswith("s3://")
    ds = read_cube(sim.cube_url)
    assert ds["flux"].shape == (6, 60, 64)
    np.testing.assert_allclose(ds["time"], sim.times)
    assert np.isfinite(ds["flux"][:, 10:20, 10:20].values).all()


def test_cli_simulate_tess(tmp_path, capsys):
    from cloudlab.cli import main

    rc = main(["simulate", "tess", str(tmp_path), "--frames", "4", "--shape", "60x64",
               "--no-ffis", "--catalog", str(tmp_path / "stars.csv")])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "cube:" in out and (tmp_path / "tess-s0055-1-1-cube.fits").exists()
    assert (tmp_path / "stars.csv").read_text().startswith("ticid,ra,dec")


# ----------------------------------------------------------------------------- vetting sector


def test_transit_factor_shapes():
    """Box (the star_catalog default), trapezoid, secondary eclipse and variability."""
    from cloudlab.simulate.stars import transit_factor

    stars = pd.DataFrame(
        {
            "depth": [0.01, 0.2, 0.0, 0.0],
            "period": [2.0, 2.0, np.nan, np.nan],
            "t0": [1.0, 1.0, np.nan, np.nan],
            "duration": [0.2, 0.2, np.nan, np.nan],
            "ingress": [np.nan, 0.5, np.nan, np.nan],
            "secondary_depth": [np.nan, 0.05, np.nan, np.nan],
            "var_amplitude": [np.nan, np.nan, 0.01, np.nan],
            "var_period": [np.nan, np.nan, 4.0, np.nan],
            "var_t0": [np.nan, np.nan, 0.5, np.nan],
            "var_harmonic": [np.nan, np.nan, 0.5, np.nan],
        }
    )
    t = np.array([1.0, 1.05, 1.09, 1.15, 2.0, 2.05, 3.0, 0.5, 1.5, 2.5])
    f = transit_factor(stars, t)
    np.testing.assert_allclose(f[0], [0.99, 0.99, 0.99, 1, 1, 1, 0.99, 1, 1, 1])
    # V: the full depth only at mid-eclipse, half of it half-way out; secondary at phase 0.5
    np.testing.assert_allclose(f[1, :4], [0.8, 0.9, 0.98, 1.0])
    np.testing.assert_allclose(f[1, 4:7], [0.95, 0.975, 0.8])
    # 1 - A (cos φ + h cos 2φ): faintest at var_t0, φ = 2π (t - 0.5) / 4
    np.testing.assert_allclose(f[2, 7:], [1 - 0.015, 1 - 0.01 * (0 - 0.5), 1 - 0.01 * (-1 + 0.5)])
    assert (f[3] == 1).all()


def test_background_of_a_window_is_the_larger_images():
    times = np.array([2800.0, 2805.3])
    full = scattered_light((300, 320), times, seed=4)
    window = scattered_light((40, 50), times, seed=4, within=((300, 320), (200, 130)))
    np.testing.assert_array_equal(window, full[:, 200:240, 130:180])
    with pytest.raises(ValueError, match="does not fit"):
        scattered_light((40, 50), times, within=((300, 320), (290, 0)))


@pytest.fixture(scope="module")
def vet_sim(tmp_path_factory):
    from cloudlab.simulate.vetting import vetting_sector

    dest = tmp_path_factory.mktemp("vetting")
    return vetting_sector(
        str(dest), n_planets=2, n_ebs=2, n_noise=1, n_variables=2, n_blends=2, seed=7
    )


def _box(row, col):
    r, c = int(round(row)), int(round(col))
    return slice(r - 1, r + 2), slice(c - 1, c + 2)


def _phase(times, period, t0):
    return (times - t0 + 0.5 * period) % period - 0.5 * period


def _dip(lc, inside, outside):
    return np.median(lc[outside]) - np.mean(lc[inside])


def test_vetting_catalog_is_a_tce_bulk_file_with_the_truth(vet_sim):
    from cloudlab.io.catalogs import read_tce
    from cloudlab.simulate.vetting import BULK_COLUMNS

    tces = vet_sim.tces
    bulk = read_tce(vet_sim.catalog_url)
    assert list(bulk.columns) == list(BULK_COLUMNS)
    assert bulk.attrs["comments"]["Mission"] == "TESS"
    pd.testing.assert_frame_equal(bulk, tces[list(BULK_COLUMNS)], check_dtype=False)
    truth = pd.read_csv(vet_sim.truth_url, dtype={"tceid": str})
    assert (truth["tceid"] == tces["tceid"]).all()
    assert (truth["kind"] == tces["kind"]).all()
    assert dict(tces["kind"].value_counts()) == {
        "planet": 2, "eb": 2, "noise": 1, "variable": 2, "blend": 2
    }  # fmt: skip
    assert (tces["positive"] == tces["kind"].isin(["planet", "eb"])).all()
    assert tces["ticid"].is_unique and (tces["tce_plnt_num"] == 1).all()
    times = vet_sim.sector.times
    assert np.ptp(times) == pytest.approx(27.0, abs=0.05)
    assert np.median(np.diff(times)) == pytest.approx(1800 / 86400)
    transits = tces[tces["kind"].isin(["planet", "eb", "blend"])]
    assert (transits["snr"] >= 7.1).all()
    # every TCE sits on its target: the catalog's coordinates are the star's
    stars = vet_sim.sector.stars.set_index("ticid")
    np.testing.assert_allclose(stars.loc[tces["ticid"], "ra"], tces["ra"])
    assert (stars.loc[tces["ticid"], "kind"].to_numpy() == tces["kind"].to_numpy()).all()


def test_vetting_signals_are_in_the_pixels(vet_sim):
    """Each kind's signal measured in the cube's 3 × 3 pixels around its target (true background
    removed) equals the noise-free light of the catalog's stars there (their PSF images times
    ``transit_factor``), and has the shape its kind should have."""
    from cloudlab.simulate.stars import render_stars, transit_factor

    sim, tces = vet_sim.sector, vet_sim.tces
    good = np.ones(len(sim.times), bool)
    good[sim.nan_frames] = False
    t = sim.times[good]
    flux = read_cube(sim.cube_url)["flux"].values[good] - sim.background()[good]
    stars = sim.stars
    factor = transit_factor(stars, t)
    images = np.stack([render_stars(sim.shape, stars.iloc[[k]]) for k in range(len(stars))])
    by_tic = stars.reset_index(drop=True).set_index("ticid")

    def light_curves(star):
        box = _box(star["row"], star["column"])
        measured = flux[:, box[0], box[1]].sum(axis=(1, 2))
        model = images[:, box[0], box[1]].sum(axis=(1, 2)) @ factor
        return measured / np.median(measured), model / np.median(model)

    for tce in tces.itertuples():
        star = by_tic.loc[tce.ticid]
        own = factor[stars.index[stars["ticid"] == tce.ticid][0]]
        lc, model = light_curves(star)
        period, t0, duration = tce.tce_period, tce.tce_time0bt, tce.tce_duration / 24
        phase = _phase(t, period, t0)
        inside, outside = np.abs(phase) < 0.25 * duration, np.abs(phase) > duration
        sigma = np.std(lc[outside] - model[outside]) / np.sqrt(inside.sum())
        dip = _dip(lc, inside, outside)
        assert dip == pytest.approx(_dip(model, inside, outside), abs=5 * sigma), tce.kind
        if tce.kind in ("planet", "eb"):
            assert tce.tce_depth == pytest.approx(star["depth"] * 1e6)
            assert dip > 10 * sigma
        if tce.kind == "eb":  # V-shaped primary; the secondary eclipse at phase 0.5
            assert star["ingress"] >= 0.3 and 0 < star["secondary_depth"] < star["depth"]
            second = np.abs(_phase(t, period, t0 + period / 2)) < 0.25 * duration
            measured = _dip(lc, second, outside & ~second)
            assert measured == pytest.approx(_dip(model, second, outside & ~second), abs=5 * sigma)
            assert measured > 5 * sigma
        if tce.kind == "noise":  # a quiet star: nothing at the made-up ephemeris
            assert (own == 1).all() and abs(dip) < 5 * sigma
        if tce.kind == "variable":  # the TCE's epoch is a minimum of the star's variability
            cycles = (t0 - star["var_t0"]) / star["var_period"]
            assert cycles == pytest.approx(round(cycles), abs=1e-9)
            assert np.corrcoef(lc, model)[0, 1] > 0.95 and np.ptp(own) > 0.004
        if tce.kind == "blend":
            # the target has no signal of its own: its aperture dips because the neighbour's
            # light leaks in (the catalog depth is that diluted depth), and the neighbour's own
            # aperture dips deeper
            assert (own == 1).all() and dip > 5 * sigma
            assert 0.4 * tce.tce_depth * 1e-6 < dip < 1.05 * tce.tce_depth * 1e-6
            source = by_tic.loc[tce.source_ticid]
            assert source["kind"] == "neighbour"
            assert np.hypot(source["row"] - star["row"], source["column"] - star["column"]) < 3.6
            there, _ = light_curves(source)
            assert _dip(there, inside, outside) > 1.5 * dip


def test_vetting_sector_refuses_bad_counts_and_cli_writes_a_catalog_vet_reads(tmp_path, capsys):
    from cloudlab.cli import main
    from cloudlab.pipelines import read_catalog
    from cloudlab.simulate import vetting_sector

    with pytest.raises(ValueError, match="negative TCE counts"):
        vetting_sector(str(tmp_path), n_blends=-1)
    with pytest.raises(ValueError, match="no TCE requested"):
        vetting_sector(str(tmp_path), n_planets=0, n_ebs=0, n_noise=0, n_variables=0, n_blends=0)
    with pytest.raises(ValueError, match="stars lacks the columns"):
        tess_sector(str(tmp_path), stars=pd.DataFrame({"row": [5.0], "column": [5.0]}))
    with pytest.raises(ValueError, match="background="):
        tess_sector(str(tmp_path), background="sky")
    assert not any(tmp_path.iterdir())
    args = ["simulate", "vetting", str(tmp_path), "--planets", "1", "--ebs", "1", "--noise", "1",
            "--variables", "1", "--blends", "0", "--days", "5", "--seed", "2"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 TCEs" in out and "tess-s0055-tcestats.csv" in out
    catalog = read_catalog(str(tmp_path / "tess-s0055-tcestats.csv"))
    truth = pd.read_csv(tmp_path / "tess-s0055-truth.csv", dtype={"tceid": str})
    assert sorted(truth["kind"]) == ["eb", "noise", "planet", "variable"]
    assert set(catalog["tceid"]) == set(truth["tceid"])
    assert (tmp_path / "tess-s0055-1-1-cube.fits").exists()
