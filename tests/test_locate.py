"""Sky position → camera/CCD/pixel: vectorised tess-point model and the cubes' own WCS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cloudlab.cutouts import locate
from cloudlab.cutouts.pointing import radec_to_pixel
from cloudlab.simulate import tess_sector

TCES = Path(__file__).resolve().parents[2] / "shared/data/astronet/triage/tces.csv"


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("cubes"))
    one = tess_sector(dest, ccd=1, n_frames=6, shape=(104, 107), ffis=False, seed=1)
    two = tess_sector(dest, ccd=2, n_frames=6, shape=(104, 107), ffis=False, seed=2)
    return dest, one, two


def _random_sky(n, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))


def test_pointing_model_equals_tess_point():
    import tess_stars2px

    # targets scattered over sector 55's field of view, plus random sky
    centre_ra, centre_dec = 323.0, 5.0
    rng = np.random.default_rng(0)
    ra = np.concatenate([centre_ra + rng.uniform(-15, 15, 150), _random_sky(150, 1)[0]])
    dec = np.concatenate([centre_dec + rng.uniform(-40, 60, 150), _random_sky(150, 1)[1]])
    ids = np.arange(len(ra)) + 1
    out = tess_stars2px.tess_stars2px_function_entry(ids, ra, dec, trySector=55)
    ref = pd.DataFrame(
        {"id": out[0], "cam": out[4], "ccd": out[5], "col": out[6], "row": out[7]}
    ).drop_duplicates("id")
    ref = ref[ref["id"] > 0].set_index("id")
    cam, ccd, col, row = radec_to_pixel(ra, dec, 55)
    hit = cam > 0
    assert set(ids[hit]) == set(ref.index)
    assert hit.sum() > 50
    r = ref.loc[ids[hit]]
    np.testing.assert_array_equal(cam[hit], r["cam"])
    np.testing.assert_array_equal(ccd[hit], r["ccd"])
    np.testing.assert_allclose(col[hit], r["col"] - 1, atol=1e-6)
    np.testing.assert_allclose(row[hit], r["row"] - 1, atol=1e-6)


@pytest.mark.skipif(not TCES.exists(), reason=f"real AstroNet tces.csv not found at {TCES}")
def test_agreement_with_real_tces():
    df = pd.read_csv(TCES, lineterminator="\r")
    agree = 0
    for sector, group in df.groupby("Sectors"):
        cam, ccd, _, _ = radec_to_pixel(group["RA"], group["Dec"], int(sector))
        agree += ((cam == group["camera"]) & (ccd == group["ccd"])).sum()
    assert len(df) == 16734
    assert agree / len(df) >= 0.995


def test_locate_pointing_reports_off_silicon():
    ra, dec = _random_sky(2000, 5)
    targets = pd.DataFrame({"ticid": np.arange(2000), "ra": ra, "dec": dec, "extra": "x"})
    res = locate(targets, sector=55)
    off = res.attrs["off_silicon"].to_frame()
    assert res.attrs["method"] == "pointing"
    assert len(res) + len(off) == 2000
    assert set(res["ticid"]).isdisjoint(off["ticid"])
    assert res["ticid"].is_monotonic_increasing and (res["extra"] == "x").all()
    assert res["camera"].between(1, 4).all() and res["ccd"].between(1, 4).all()
    assert res["column"].between(44, 2092).all() and res["row"].between(-1, 2048).all()
    assert (off["reason"] == "not on a science pixel of any CCD").all()


def test_bad_targets():
    targets = pd.DataFrame({"ticid": [1, 2, 3], "ra": [1.0, np.nan, 3.0], "dec": [0, 0, 95.0]})
    with pytest.raises(ValueError, match=r"2 target\(s\).*TIC 2, 3"):
        locate(targets, sector=55)
    with pytest.raises(ValueError, match="ticid, ra, dec"):
        locate(pd.DataFrame({"ra": [1.0]}), sector=55)
    good = pd.DataFrame({"ticid": [1], "ra": [1.0], "dec": [0.0]})
    with pytest.raises(ValueError, match="unknown TESS sector 0"):
        locate(good, sector=0)
    with pytest.raises(ValueError, match="method"):
        locate(good, sector=55, method="magic")


def test_locate_with_cube_wcs(sims):
    dest, one, two = sims
    stars = pd.concat([one.stars.iloc[:5], two.stars.iloc[:5]], ignore_index=True)
    lay = one.layout
    edge_ra, edge_dec = one.wcs.all_pix2world([[1.0, 50.0]], 0)[0]  # collateral column 1
    extra = pd.DataFrame({"ticid": [7, 8], "ra": [edge_ra, 100.0], "dec": [edge_dec, 80.0]})
    targets = pd.concat([stars[["ticid", "ra", "dec"]], extra], ignore_index=True)
    res = locate(targets, sector=55, cube_base=dest)
    assert res.attrs["method"] == "wcs"
    assert res["ticid"].tolist() == stars["ticid"].tolist()
    assert res["ccd"].tolist() == [1] * 5 + [2] * 5 and (res["camera"] == 1).all()
    np.testing.assert_allclose(res["column"], stars["column"], atol=1e-6)
    np.testing.assert_allclose(res["row"], stars["row"], atol=1e-6)
    assert res["cube_url"].iloc[0] == one.cube_url and res["cube_url"].iloc[-1] == two.cube_url
    off = res.attrs["off_silicon"].to_frame().set_index("ticid")
    assert off.loc[7, "reason"] == "collateral pixels of camera 1 CCD 1"
    assert "2 cube(s) found" in off.loc[8, "reason"]
    assert lay.lead_cols > 1
    # the pointing model agrees on camera and CCD
    assert locate(stars, sector=55, method="pointing")["ccd"].tolist() == res["ccd"].tolist()


def test_locate_wcs_without_cubes(tmp_path):
    targets = pd.DataFrame({"ticid": [1], "ra": [1.0], "dec": [0.0]})
    with pytest.raises(ValueError, match="no cube of sector 55 is reachable"):
        locate(targets, sector=55, cube_base=str(tmp_path))


def test_off_silicon_targets_carry_a_status(sims):
    dest, one, _ = sims
    edge_ra, edge_dec = one.wcs.all_pix2world([[1.0, 50.0]], 0)[0]  # collateral column 1
    targets = pd.DataFrame(
        {"ticid": [7, 8, 9], "ra": [edge_ra, 100.0, np.nan], "dec": [edge_dec, 80.0, 0.0]}
    )
    res = locate(targets, sector=55, cube_base=dest, on_error="skip")
    off = res.attrs["off_silicon"].to_frame()
    assert len(res) == 0
    assert off.columns.tolist() == ["ticid", "ra", "dec", "status", "reason"]
    assert off["status"].tolist() == ["collateral", "off_silicon", "bad_coordinates"]
    assert off["reason"].str.len().gt(0).all()
