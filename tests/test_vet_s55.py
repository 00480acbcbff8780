"""``cloudlab vet`` on the real Sector 55 TCE catalog, against simulated cubes on the S3 emulator.

The TIKE quick-cutouts story (the TCEs deeper than 10⁶ ppm: 13 targets) carried through to
predictions. The TCE file has no coordinates, so the test places the targets itself: ten on a
small simulated window of camera 1 CCD 1, written at MAST's key layout
(``s3://stpubdata/tess/public/mast/tess-s0055-1-1-cube.fits``) on the emulator, two on camera 2
CCD 3 (whose cube is not there) and one outside the sector's field. Seven of the ten stars
eclipse at their TCE's own ephemeris (with a secondary eclipse at phase 0.5), three are quiet.
The command runs on the whole catalog (2294 TCEs): every TCE without coordinates must come back
with a status, the eclipsing binaries ranked above the quiet stars by the shipped ensemble.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.wcs import WCS

from cloudlab.cli import main
from cloudlab.cutouts.pointing import radec_to_pixel
from cloudlab.io.catalogs import filter_tces, one_per_tic, read_tce
from cloudlab.simulate.stars import tmag_to_flux
from cloudlab.simulate.tess import DetectorLayout, sector_wcs, tess_sector

S55 = (
    Path(__file__).parents[2]
    / "shared/data/tess/tce/tess2022217141447-s0055-s0055_dvr-tcestats.csv"
)
MAST = "s3://stpubdata/tess/public/mast"
SPACING = 14  # pixels between simulated targets (one per 11 × 11 cutout)


def _place(targets: pd.DataFrame, options: dict, seed: int = 55):
    """Simulate camera 1 CCD 1 of sector 55 with the first ten targets; coordinates for all.

    Returns the simulated sector, the coordinate table (real TIC ids) and each TIC's truth
    (``eb``, ``quiet``, ``other_ccd``, ``off_silicon``).
    """
    rng = np.random.default_rng(seed)
    n_on = len(targets) - 3
    on = targets.iloc[:n_on]
    layout = DetectorLayout.for_shape((48, 96))
    k = np.arange(n_on)
    eb = k % 3 != 1
    depth = np.where(eb, rng.uniform(0.1, 0.3, n_on), 0.0)
    jitter = rng.uniform(-1.0, 1.0, (2, n_on))
    stars = pd.DataFrame(
        {
            "row": layout.science_rows.start + SPACING * (k // 5 + 0.5) + jitter[0],
            "column": layout.science_cols.start + SPACING * (k % 5 + 0.5) + jitter[1],
            "tmag": rng.uniform(9.0, 11.0, n_on),
            "depth": depth,
            "period": np.where(eb, on["tce_period"], np.nan),
            "t0": np.where(eb, on["tce_time0bt"], np.nan),
            "duration": np.where(eb, on["tce_duration"] / 24.0, np.nan),
            "ingress": np.where(eb, 0.4, 0.0),
            "secondary_depth": 0.3 * depth,
        }
    )
    stars["flux"] = tmag_to_flux(stars["tmag"].to_numpy())
    sim = tess_sector(
        MAST, sector=55, camera=1, ccd=1, n_frames=1296, shape=(48, 96), cadence_s=1800,
        seed=seed, ffis=False, stars=stars, background="ccd", storage_options=options,
    )  # fmt: skip
    header, _ = sector_wcs(55, 2, 3, DetectorLayout.for_shape((2078, 2136)))
    ra2, dec2 = WCS(header).pixel_to_world_values([700.0, 1400.0], [900.0, 1200.0])
    coords = pd.DataFrame(
        {
            "ticid": targets["ticid"].to_numpy(),
            "ra": np.r_[sim.stars["ra"].to_numpy()[:n_on], ra2, 200.0],
            "dec": np.r_[sim.stars["dec"].to_numpy()[:n_on], dec2, -60.0],
        }
    )
    truth = pd.Series(
        [*np.where(eb, "eb", "quiet"), "other_ccd", "other_ccd", "off_silicon"],
        index=targets["ticid"].to_numpy(),
    )
    return sim, coords, truth


@pytest.mark.skipif(not S55.exists(), reason=f"real S55 TCE file not found at {S55}")
def test_cli_vets_the_real_s55_catalog_on_simulated_cubes_in_s3(s3_server, tmp_path, capsys):
    pytest.importorskip("tensorflow")
    import s3fs

    options = {"key": s3_server.key, "secret": s3_server.secret,
               "client_kwargs": {"endpoint_url": s3_server.endpoint_url}}  # fmt: skip
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    if not fs.exists("stpubdata"):
        fs.mkdir("stpubdata")
    catalog = read_tce(S55)
    deep = filter_tces(catalog, depth=(1e6, None))
    targets = one_per_tic(deep).sort_values("ticid").reset_index(drop=True)
    assert (len(catalog), len(deep), len(targets)) == (2294, 15, 13)  # the TIKE selection
    sim, coords, truth = _place(targets, options)
    assert sim.cube_url == f"{MAST}/tess-s0055-1-1-cube.fits"
    camera, ccd, _, _ = radec_to_pixel(coords["ra"].to_numpy(), coords["dec"].to_numpy(), 55)
    assert camera.tolist() == [1] * 10 + [2, 2, 0] and ccd[:12].tolist() == [1] * 10 + [3, 3]
    coords.to_csv(tmp_path / "tic_coords.csv", index=False)

    out = tmp_path / "vetting-s55"
    args = ["vet", "--catalog", str(S55), "--sector", "55", "--coords",
            str(tmp_path / "tic_coords.csv"), "--out", str(out), "--top", "12"]  # fmt: skip
    assert main(args) == 0  # cubes default to MAST's bucket, here the emulator's
    printed = capsys.readouterr().out
    assert "catalog: 2294 TCEs on 1601 targets" in printed
    on_silicon = truth.index[truth.isin(["eb", "quiet"])]
    n_vetted = int(catalog["ticid"].isin(on_silicon).sum())  # their shallower TCEs too
    assert f"{n_vetted} of 2294 TCEs vetted" in printed

    table = pd.read_csv(out / "vetting.csv", dtype={"tceid": str})
    assert len(table) == 2294 and set(table["tceid"]) == set(catalog["tceid"])
    kind = table["ticid"].map(truth).fillna("no_coordinates")
    assert (table.loc[kind == "no_coordinates", "status"] == "no_coordinates").all()
    assert (table.loc[kind == "off_silicon", "status"] == "off_silicon").all()
    other = table[kind == "other_ccd"]
    assert len(other) == 2 and (other["status"] == "cube_error").all()
    assert other["reason"].str.contains("tess-s0055-2-3-cube.fits").all()
    vetted = table[kind.isin(["eb", "quiet"])]
    assert len(vetted) == n_vetted and (vetted["status"] == "ok").all()
    assert table["prediction"].notna().sum() == n_vetted
    # ranked: the vetted TCEs first, by score (the prediction, 0 where the dip is off target)
    assert table["rank"].iloc[:n_vetted].tolist() == list(range(1, n_vetted + 1))
    assert (np.diff(table["score"].iloc[:n_vetted]) <= 0).all()
    assert (table["score"].iloc[:n_vetted] <= table["prediction"].iloc[:n_vetted]).all()
    # the truth: the selected (deep) TCEs of the binaries score high, any TCE of a quiet star low
    selected = vetted["tceid"].isin(deep["tceid"])
    eb = vetted.loc[selected & (kind[vetted.index] == "eb"), "prediction"]
    quiet = vetted.loc[kind[vetted.index] == "quiet", "prediction"]
    assert len(eb) == 8  # seven binaries; TIC 1882909457's two TCEs are its two eclipses
    assert len(quiet) >= 3
    assert eb.min() > 0.9 and quiet.max() < 0.1
    # the binaries' eclipses are on their targets: the centroid test keeps their scores
    assert (vetted.loc[eb.index, "score"] == eb).all()
    lcs = sorted(p.name for p in (out / "lc").iterdir())
    assert lcs == sorted(f"tic{t}-s0055_lc.fits" for t in on_silicon)
