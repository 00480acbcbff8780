"""TCE vetting pipeline: catalog → cutouts → light curves → AstroNet, and its products.

A small simulated sector (known transits) is vetted with an untrained AstroNet model saved to a
temporary checkpoint (the predictions are arbitrary there; what is checked is everything else).
Light curves and apertures are compared with lightkurve run on the TPFs the pipeline writes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from cloudlab.cli import main
from cloudlab.errors import InputError, OverwriteError
from cloudlab.pipelines import read_catalog, threshold_aperture, vet_tces, write_vetting
from cloudlab.simulate import tess_sector
from cloudlab.tess_detector import BAD_QUALITY_BITS


def _no_compute(dsk, keys, **kwargs):
    raise AssertionError("something was computed before the sink")


@pytest.fixture(scope="module")
def sector(tmp_path_factory):
    dest = tmp_path_factory.mktemp("vet-sector")
    return tess_sector(str(dest), n_frames=240, cadence_s=1800, ffis=False, seed=5)


@pytest.fixture(scope="module")
def tces(sector):
    """Every transiting star with its true ephemeris, three quiet stars with made-up ones."""
    stars = sector.stars
    planets = stars[stars["depth"] > 0]
    quiet = stars[stars["depth"] == 0].nlargest(3, "flux")
    rows = [
        {"ticid": s.ticid, "tce_plnt_num": 1, "tce_period": s.period, "tce_time0bt": s.t0,
         "tce_duration": s.duration * 24, "tce_depth": s.depth * 1e6, "ra": s.ra, "dec": s.dec}
        for s in planets.itertuples()
    ]  # fmt: skip
    for k, s in enumerate(quiet.itertuples()):
        rows.append({"ticid": s.ticid, "tce_plnt_num": 1, "tce_period": 1.3 + 0.2 * k,
                     "tce_time0bt": sector.times[0] + 0.4, "tce_duration": 2.0,
                     "tce_depth": 300.0, "ra": s.ra, "dec": s.dec})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    pytest.importorskip("tensorflow")
    from cloudlab.astronet.model import build
    from cloudlab.astronet.train import save

    url = str(tmp_path_factory.mktemp("model") / "untrained.keras")
    save(build("local_global"), url)
    return url


@pytest.fixture(scope="module")
def vetted(sector, tces, model):
    ds = vet_tces(tces, sector=55, cubes=sector.cube_url, models=[model])
    return ds, ds.compute(scheduler="threads")


def test_graph_is_lazy_until_the_sink(sector, tces, model, tmp_path):
    with dask.config.set(scheduler=_no_compute):
        ds = vet_tces(tces, sector=55, cubes=sector.cube_url, models=[model])
        for name in ("prediction", "status", "reason", "flux", "global_view", "cutout_flux"):
            assert ds[name].chunks is not None, name
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "vetting.csv").write_text("old")
        with pytest.raises(OverwriteError, match="vetting.csv"):
            write_vetting(ds, str(tmp_path / "out"))  # refused before anything is computed
    assert (tmp_path / "out" / "vetting.csv").read_text() == "old"


def test_injected_transits_dip_at_the_view_centres(sector, vetted):
    _, done = vetted
    planets = set(sector.stars.loc[sector.stars["depth"] > 0, "ticid"])
    rows = [i for i, t in enumerate(done["ticid"].values) if t in planets]
    assert len(rows) == len(planets) >= 2
    for i in rows:
        assert done["status"].values[i] == "ok", done["reason"].values[i]
        local = done["local_view"].values[i]
        glob = done["global_view"].values[i]
        # the minimum lies inside the transit: ±D/2 is 61/8 local bins, 201·D/(2P) global bins
        half = 0.5 * done["duration"].values[i] / done["period"].values[i] * 201
        assert abs(int(np.argmin(local)) - 30) <= 61 / 8
        assert abs(int(np.argmin(glob)) - 100) <= max(half, 1.5)
        assert np.nanmean(local[26:35]) < -0.5 < np.nanmean(np.r_[local[:8], local[-8:]])


def test_light_curve_depth_matches_the_injected_transit(sector, vetted):
    """Depth in the light curve = injected depth × the target's share of the aperture's starlight
    (neighbours dilute it), from the simulation's own star images."""
    from cloudlab.simulate.stars import render_stars

    _, done = vetted
    stars = sector.stars
    everyone = render_stars(sector.shape, stars)
    time = done["time"].values
    checked = 0
    for k, tic in enumerate(done["tic"].values):
        star = stars.set_index("ticid").loc[tic]
        if star["depth"] == 0:
            continue
        r0, c0 = int(done["corner_row"].values[k]), int(done["corner_column"].values[k])
        ny, nx = done.sizes["row"], done.sizes["column"]
        aperture = done["aperture"].values[k]
        alone = render_stars(sector.shape, stars[stars["ticid"] == tic])
        share = alone[r0 : r0 + ny, c0 : c0 + nx][aperture].sum()
        share /= everyone[r0 : r0 + ny, c0 : c0 + nx][aperture].sum()
        flux = done["flux"].values[k]
        phase = (time - star["t0"] + 0.5 * star["period"]) % star["period"] - 0.5 * star["period"]
        inside = np.isfinite(flux) & (np.abs(phase) < 0.3 * star["duration"])
        outside = np.isfinite(flux) & (np.abs(phase) > star["duration"])
        assert inside.sum() >= 3
        depth = np.median(flux[outside]) - np.median(flux[inside])
        assert depth == pytest.approx(star["depth"] * share, rel=0.15)
        assert np.nanmedian(flux) == pytest.approx(1.0)
        checked += 1
    assert checked >= 2


def test_light_curves_and_apertures_equal_lightkurves_on_the_written_tpfs(vetted, tmp_path):
    lk = pytest.importorskip("lightkurve")
    ds, done = vetted
    write_vetting(ds, str(tmp_path), lightcurves=False, table=False, plots=False)
    for k, tic in enumerate(done["tic"].values):
        path = next((tmp_path / "tpf").glob(f"tic{tic}_*_tpf.fits"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tpf = lk.read(path, quality_bitmask=BAD_QUALITY_BITS)
        ref = (
            float(done["center_column"].values[k] - done["corner_column"].values[k]),
            float(done["center_row"].values[k] - done["corner_row"].values[k]),
        )
        mask = tpf.create_threshold_mask(threshold=3, reference_pixel=ref)
        np.testing.assert_array_equal(done["aperture"].values[k], mask)
        np.testing.assert_array_equal(tpf.pipeline_mask, mask)  # APERTURE bit 2
        lc = tpf.to_lightcurve(aperture_mask=mask)
        times = done["time"].values
        ours = done["sap_flux"].values[k] + done["background"].values[k] * mask.sum()
        at = np.searchsorted(times, lc.time.value)
        finite = np.isfinite(ours[at])
        np.testing.assert_allclose(ours[at][finite], lc.flux.value[finite], rtol=1e-5)
        removed = (done["quality"].values[k] & BAD_QUALITY_BITS) != 0
        assert np.isnan(done["flux"].values[k][removed]).all()


def test_threshold_aperture_keeps_the_region_nearest_the_target():
    image = np.random.default_rng(1).normal(0.0, 1.0, (9, 9)).clip(-2, 2)
    image[1:3, 1:3] = 50.0  # another star
    image[5:8, 5:8] = 100.0  # the target's
    mask = threshold_aperture(image, (6.2, 5.8))
    assert mask.sum() == 9 and mask[5:8, 5:8].all()
    assert threshold_aperture(image, (2.0, 2.0)).sum() == 4
    assert not threshold_aperture(image, (6.2, 5.8), max_offset=0.1).any()
    assert not threshold_aperture(np.full((5, 5), np.nan), (2, 2)).any()
    far = threshold_aperture(image, (0.0, 8.0), max_offset=2.0)
    assert not far.any()


def test_in_memory_models_predict_as_their_checkpoints(sector, tces, model, vetted):
    from cloudlab.astronet.train import load

    ds = vet_tces(tces, sector=55, cubes=sector.cube_url, models=[load(model)])
    np.testing.assert_allclose(
        ds["prediction"].values, vetted[1]["prediction"].values, rtol=1e-6, equal_nan=True
    )


def test_statuses_name_what_went_wrong(sector, tces, model, tmp_path):
    import shutil

    cube = tmp_path / Path(sector.cube_url).name
    shutil.copy(sector.cube_url, cube)
    victim = tces.iloc[-1]
    with fits.open(cube, mode="update", memmap=True) as hdul:  # blank the victim's pixels
        r = int(round(sector.stars.set_index("ticid").loc[victim["ticid"], "row"]))
        c = int(round(sector.stars.set_index("ticid").loc[victim["ticid"], "column"]))
        hdul[1].data[r - 8 : r + 9, c - 8 : c + 9, :, 0] = np.nan
    extra = pd.DataFrame(
        [
            {**tces.iloc[0].to_dict(), "ticid": 11, "ra": 10.0, "dec": -80.0},  # another camera
            {**tces.iloc[0].to_dict(), "ticid": 13, "ra": 306.0, "dec": 13.0},  # no cube 2-3
            {**tces.iloc[0].to_dict(), "ticid": 12, "ra": np.nan, "dec": np.nan},
            {**tces.iloc[0].to_dict(), "tce_plnt_num": 2, "tce_period": np.nan},
            {**tces.iloc[0].to_dict(), "tce_plnt_num": 3, "tce_time0bt": 9000.0},
        ]
    )
    table = pd.concat([tces, extra], ignore_index=True)
    ds = vet_tces(table, sector=55, cubes=str(tmp_path), models=[model]).compute()
    status = dict(zip(ds["tceid"].values, ds["status"].values, strict=True))
    reason = dict(zip(ds["tceid"].values, ds["reason"].values, strict=True))
    assert status["11-01"] == "off_silicon" and "sector 55" in reason["11-01"]
    assert status["12-01"] == "no_coordinates" and "coords=" in reason["12-01"]
    missing = f"{tmp_path}/tess-s0055-2-3-cube.fits"  # the whole URL, however long
    assert status["13-01"] == "cube_error" and missing in reason["13-01"], reason["13-01"]
    assert len(reason["13-01"]) > 96, reason["13-01"]
    first = tces["ticid"].iloc[0]
    assert status[f"{first}-02"] == "bad_ephemeris"
    assert status[f"{first}-03"] != "ok" and reason[f"{first}-03"]
    assert status[f"{int(victim['ticid'])}-01"] == "no_pixels"
    assert status[f"{first}-01"] == "ok"
    bad = ds["status"].values != "ok"
    assert np.isnan(ds["prediction"].values[bad]).all()
    assert np.isfinite(ds["prediction"].values[~bad]).all()
    with pytest.raises(InputError, match="TIC 11"):
        vet_tces(table, sector=55, cubes=str(tmp_path), models=[model], on_error="raise")


def test_catalog_formats(tmp_path, tces):
    bulk = tces.assign(tceid=[f"{t}-01" for t in tces["ticid"]])
    bulk_path = tmp_path / "bulk.csv"
    bulk_path.write_text("# Mission = TESS\n" + bulk.to_csv(index=False))
    a = read_catalog(str(bulk_path))
    np.testing.assert_allclose(a["duration"], tces["tce_duration"] / 24)
    astronet = pd.DataFrame(
        {"tic_id": tces["ticid"], "Period": tces["tce_period"], "Epoc": tces["tce_time0bt"],
         "Duration": tces["tce_duration"], "Transit_Depth": tces["tce_depth"],
         "Disposition": "PC"}
    )  # fmt: skip
    astronet_path = tmp_path / "tces.csv"
    astronet.to_csv(astronet_path, index=False)
    coords = tmp_path / "coords.csv"
    tces[["ticid", "ra", "dec"]].to_csv(coords, index=False)
    b = read_catalog(str(astronet_path), coords=str(coords))
    for column in ("ticid", "period", "t0", "duration", "ra", "dec"):
        np.testing.assert_allclose(a[column], b[column])
    with pytest.raises(InputError, match="neither"):
        read_catalog(pd.DataFrame({"x": [1]}))


def test_write_vetting_products_open(vetted, tmp_path):
    lk = pytest.importorskip("lightkurve")
    ds, done = vetted
    table = write_vetting(ds, str(tmp_path))
    csv = pd.read_csv(tmp_path / "vetting.csv").fillna({"reason": ""})
    pd.testing.assert_frame_equal(csv, pd.read_parquet(tmp_path / "vetting.parquet"))
    assert list(csv["rank"]) == list(range(1, len(csv) + 1))
    scores = csv["score"].dropna().to_numpy()
    assert (np.diff(scores) <= 0).all() and len(scores) == len(table)
    assert (csv["score"] <= csv["prediction"]).all()
    for k, tic in enumerate(done["tic"].values):
        path = tmp_path / "lc" / f"tic{tic}-s0055_lc.fits"
        lc = lk.read(path)
        assert lc.meta["TICID"] == tic and lc.meta["SECTOR"] == 55
        kept = np.isfinite(done["flux"].values[k])
        np.testing.assert_allclose(lc.time.value, done["time"].values[kept])
        np.testing.assert_allclose(lc.flux.value, done["flux"].values[k][kept], rtol=1e-6)
        assert np.isfinite(lc.flux.value).all()
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert len(pngs) == len(done["tce"])
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    with pytest.raises(OverwriteError):
        write_vetting(ds, str(tmp_path))


def test_cli_runs_end_to_end_and_fails_in_one_line(sector, tces, model, tmp_path, capsys):
    catalog = tmp_path / "tces.csv"
    tces.to_csv(catalog, index=False)
    args = ["vet", "--catalog", str(catalog), "--sector", "55", "--cubes", sector.cube_url,
            "--models", model, "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "rank" in out and f"{len(tces)} of {len(tces)} TCEs vetted" in out
    table = pd.read_csv(tmp_path / "out" / "vetting.csv")
    assert table.loc[0, "ticid"] in set(tces["ticid"])
    before = (tmp_path / "out" / "vetting.csv").stat().st_mtime_ns
    assert main(args) == 2  # refused before any work
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    assert (tmp_path / "out" / "vetting.csv").stat().st_mtime_ns == before
    assert main([*args, "--overwrite", "--limit", "2"]) == 0
    assert len(pd.read_csv(tmp_path / "out" / "vetting.csv")) == 2
    capsys.readouterr()
    assert main([*args[:-2], "--out", str(tmp_path / "o2"), "--limit", "0"]) == 2
    assert "--limit" in capsys.readouterr().err
    missing = [*args[:2], str(tmp_path / "nope.csv"), *args[3:-2], "--out", str(tmp_path / "o3")]
    assert main(missing) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.csv" in err


def test_predictions_separate_planets_from_look_alikes(tmp_path):
    """The shipped Astronet-Triage ensemble on a simulated sector of planets, eclipsing binaries,
    noise, variables and blends: planets and binaries rank above noise and variables, and above
    blends too once the centroid test has moved the blends' dips onto their neighbours. The
    pipeline's light curves show what the truth says: the binaries' secondary eclipses, and the
    blends' dips although their targets are quiet."""
    pytest.importorskip("tensorflow")
    from cloudlab.simulate.vetting import separation, vetting_sector

    sim = vetting_sector(str(tmp_path), seed=11)
    ds = vet_tces(sim.catalog_url, sector=55, cubes=sim.cube_url, models=None).compute()
    assert (ds["status"].values == "ok").all(), ds["reason"].values
    predictions = pd.Series(ds["prediction"].values, index=ds["tceid"].values)
    assert separation(sim.tces, predictions)["auc"] >= 0.9
    # the light curves alone pass blends; the difference-image centroid test catches them, so
    # the score separates planets and binaries from everything else
    scores = pd.Series(ds["score"].values, index=ds["tceid"].values)
    assert separation(sim.tces, scores)["auc_all"] >= 0.9
    truth = sim.tces.set_index("tceid").loc[ds["tceid"].values]
    offset = ds["centroid_offset"].values
    kind = truth["kind"].to_numpy()
    assert (offset[np.isin(kind, ["planet", "eb"])] < 1.0).all()  # on the target
    assert (offset[kind == "blend"] > 1.0).all()  # on the neighbour, 1.5-3.5 pixels away
    stars = sim.sector.stars.set_index("ticid")
    time = ds["time"].values
    checked = {"eb": 0, "blend": 0}
    for k, tce in enumerate(truth.itertuples()):
        if tce.kind not in checked:
            continue
        flux = ds["flux"].values[ds["tic_index"].values[k]]
        period, t0, duration = tce.tce_period, tce.tce_time0bt, tce.tce_duration / 24
        phase = (time - t0) / period % 1.0
        width = 0.25 * duration / period
        primary = np.isfinite(flux) & ((phase < width) | (phase > 1 - width))
        secondary = np.isfinite(flux) & (np.abs(phase - 0.5) < width)
        outside = np.isfinite(flux) & ~primary & ~secondary
        outside &= np.abs((phase + 0.5) % 1.0 - 0.5) > duration / period
        sigma = np.std(flux[outside]) / np.sqrt(min(primary.sum(), secondary.sum()))
        if tce.kind == "eb":
            assert np.median(flux[outside]) - np.mean(flux[secondary]) > 5 * sigma
        else:
            assert stars.loc[tce.ticid, "depth"] == 0 and np.isnan(
                stars.loc[tce.ticid, "var_period"]
            )
            assert np.median(flux[outside]) - np.mean(flux[primary]) > 5 * sigma
        checked[tce.kind] += 1
    assert checked == {"eb": 4, "blend": 3}
