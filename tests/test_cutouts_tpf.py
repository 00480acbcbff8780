"""TPF keywords and APERTURE bits (read back by lightkurve and astropy), NaN padding against
astrocut, and the single-target / multi-sector / angular-size command line."""

from __future__ import annotations

import os
import warnings

import dask
import numpy as np
import pandas as pd
import pytest
from _paths import REAL_FFI
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

from cloudlab.cutouts import make_cutouts, write_tpfs
from cloudlab.cutouts.cutout import target_status
from cloudlab.simulate import tess_sector

SHAPE = (60, 62)
N_FRAMES = 8


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("cubes"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s55 = tess_sector(dest, sector=55, n_frames=N_FRAMES, shape=SHAPE, ffis=False, seed=7)
        s56 = tess_sector(dest, sector=56, n_frames=N_FRAMES, shape=SHAPE, ffis=False, seed=8)
    return dest, s55, s56


@pytest.fixture(autouse=True)
def _sync_scheduler():
    with dask.config.set(scheduler="synchronous"):
        yield


def _brightest(sim, n=1, margin=6):
    """The ``n`` brightest simulated stars at least ``margin`` pixels inside the image."""
    s = sim.stars
    inside = s["column"].between(margin, SHAPE[1] - 1 - margin) & s["row"].between(
        margin, SHAPE[0] - 1 - margin
    )
    return s[inside].sort_values("tmag").iloc[:n].reset_index(drop=True)


def _read(path):
    import lightkurve as lk

    return lk.read(path, quality_bitmask="none")


def test_tpf_keywords_from_the_cube(sims, tmp_path):
    _, sim, _ = sims
    stars = _brightest(sim, 2)
    targets = stars[["ticid", "ra", "dec"]].assign(
        Tmag=stars["tmag"], teff=[5800.0, np.nan], RADIUS=[1.1, 0.7]
    )
    ds = make_cutouts(targets, cube_url=sim.cube_url, size=9)
    paths = write_tpfs(ds, str(tmp_path))
    row = Table.read(sim.cube_url, hdu=2)  # per-FFI header keywords of the cube, via astropy
    for i, path in enumerate(paths):
        tpf = _read(path)
        primary, pixels = tpf.get_header(0), tpf.get_header(1)
        assert tpf.targetid == int(targets["ticid"][i])
        assert primary["OBJECT"] == f"TIC {targets['ticid'][i]}"
        assert (primary["SECTOR"], primary["CAMERA"], primary["CCD"]) == (55, 1, 1)
        assert primary["TESSMAG"] == pytest.approx(stars["tmag"][i])
        assert primary["RADIUS"] == pytest.approx([1.1, 0.7][i])
        assert "LOGG" not in primary  # not in the target list: left out, not invented
        if i == 0:
            assert primary["TEFF"] == 5800.0
        else:  # unknown: the card is there without a value, as SPOC writes it
            assert primary["TEFF"] is None or isinstance(primary["TEFF"], fits.card.Undefined)
        assert primary["RADESYS"] == "ICRS"
        for key in ("DEADC", "INT_TIME", "READTIME", "FRAMETIM", "NUM_FRM", "TIERRELA", "TIMEDEL"):
            assert pixels[key] == pytest.approx(row[key][0]), key
            assert "default" not in pixels.comments[key]  # measured, not a default
        time = tpf.time.value
        assert pixels["TIMEDEL"] == pytest.approx(np.median(np.diff(time)))
        assert pixels["TIMEPIXR"] == 0.5  # TIME is the middle of each exposure
        np.testing.assert_allclose(time, 0.5 * (row["TSTART"] + row["TSTOP"]))
        assert pixels["TSTART"] == pytest.approx(row["TSTART"][0])
        assert pixels["TSTOP"] == pytest.approx(row["TSTOP"][-1])
        assert pixels["TELAPSE"] == pytest.approx(row["TSTOP"][-1] - row["TSTART"][0])
        assert pixels["EXPOSURE"] == pytest.approx(np.sum(row["EXPOSURE"]))  # per-FFI, summed
        assert pixels["LIVETIME"] == pytest.approx(pixels["TELAPSE"] * row["DEADC"][0])
        reference = Time(pixels["BJDREFI"] + pixels["BJDREFF"], format="jd", scale="tdb")
        assert primary["MJDREFI"] + primary["MJDREFF"] == pytest.approx(reference.mjd)
        assert tpf.time.format == "btjd" and tpf.time.scale == "tdb"


def test_tess_defaults_are_marked(tmp_path):
    astrocut = pytest.importorskip("astrocut")
    maker = pytest.importorskip("astrocut.tests.utils_for_test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ffis = maker.create_test_ffis(12, 3, dir_name=str(tmp_path))
        url = astrocut.CubeFactory().make_cube(
            ffis, str(tmp_path / "cube.fits"), sector=9, verbose=False
        )
    row = Table.read(url, hdu=2)
    assert "INT_TIME" not in row.colnames  # astrocut's test FFIs have no frame keywords
    from cloudlab.io.tess import cube_meta

    ((ra, dec),) = cube_meta(url).wcs.all_pix2world([[6.0, 5.0]], 0)
    ds = make_cutouts(pd.DataFrame({"ticid": [3], "ra": [ra], "dec": [dec]}), cube_url=url, size=3)
    (path,) = write_tpfs(ds, str(tmp_path / "tpf"))
    header = fits.getheader(path, 1)
    for key in ("DEADC", "INT_TIME", "READTIME", "FRAMETIM", "TIERRELA"):
        assert header.comments[key].endswith("(TESS default)"), key
    assert header["FRAMETIM"] == pytest.approx(header["INT_TIME"] + header["READTIME"])
    time = 0.5 * (row["TSTART"] + row["TSTOP"])
    assert header["TIMEDEL"] == pytest.approx(np.median(np.diff(time)))
    assert "median TIME step" in header.comments["TIMEDEL"]
    assert header["NUM_FRM"] == round(header["TIMEDEL"] * 86400 / header["FRAMETIM"])


def test_aperture_bits_in_lightkurve(sims, tmp_path):
    _, sim, _ = sims
    stars = _brightest(sim, 1)
    ds = make_cutouts(stars[["ticid", "ra", "dec"]], cube_url=sim.cube_url, size=11)
    (path,) = write_tpfs(ds, str(tmp_path))
    tpf = _read(path)
    pipeline, background = tpf.pipeline_mask, tpf.background_mask
    x = float(ds["center_column"][0] - ds["corner_column"][0])
    y = float(ds["center_row"][0] - ds["corner_row"][0])
    col, row = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    assert pipeline[row, col]  # the star's pixel
    assert 1 < pipeline.sum() < pipeline.size / 3  # around the star, not the whole stamp
    rows, cols = np.nonzero(pipeline)
    assert np.hypot(rows - y, cols - x).max() <= 0.3 * 11 + 1e-9
    assert background.sum() > pipeline.sum() and not (background & pipeline).any()
    median = np.nanmedian(tpf.flux.value, axis=0)
    assert median[pipeline].min() > np.median(median[background])  # brighter than the sky
    bits = fits.getdata(path, 2)
    assert ((bits & 1) == 1).all()  # every pixel on the image
    assert fits.getheader(path, 2)["NPIXSAP"] == pipeline.sum()
    # lightkurve's pipeline photometry is the sum over bit 2
    lc = tpf.to_lightcurve(aperture_mask="pipeline")
    np.testing.assert_allclose(
        lc.flux.value, np.nansum(tpf.flux.value[:, pipeline], axis=1), rtol=1e-6
    )
    # a cutout of the TPF keeps the bits and round-trips through lightkurve's to_fits
    small = tpf.cutout(center=(col, row), size=5)
    out = tmp_path / "small.fits"
    small.to_fits(str(out))
    again = _read(str(out))
    np.testing.assert_array_equal(again.pipeline_mask, small.pipeline_mask)
    np.testing.assert_array_equal(again.background_mask, small.background_mask)
    assert again.pipeline_mask.any()
    np.testing.assert_array_equal(again.flux.value, small.flux.value)
    assert (again.column, again.row) == (small.column, small.row)


def test_given_pipeline_aperture_kept(sims, tmp_path):
    _, sim, _ = sims
    stars = _brightest(sim, 1)
    ds = make_cutouts(stars[["ticid", "ra", "dec"]], cube_url=sim.cube_url, size=6)
    mine = np.zeros((6, 6), np.int32)
    mine[2:4, 2:4] = 2
    ds["aperture"] = ds["aperture"] | mine[None]
    (path,) = write_tpfs(ds, str(tmp_path))
    tpf = _read(path)
    np.testing.assert_array_equal(tpf.pipeline_mask, mine == 2)
    assert not (tpf.background_mask & tpf.pipeline_mask).any()


@pytest.fixture(scope="module")
def astrocut_cube(tmp_path_factory):
    astrocut = pytest.importorskip("astrocut")
    maker = pytest.importorskip("astrocut.tests.utils_for_test")
    dest = tmp_path_factory.mktemp("acube")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ffis = maker.create_test_ffis(14, 3, dir_name=str(dest))
        return astrocut.CubeFactory().make_cube(
            ffis, str(dest / "cube.fits"), sector=4, verbose=False
        )


@pytest.mark.parametrize("pixel", [[0.2, 6.0], [13.0, 13.0], [0.0, 0.0]], ids=str)
def test_padding_equals_astrocut_cube_cut(astrocut_cube, tmp_path, pixel):
    import astrocut
    from astropy.coordinates import SkyCoord

    from cloudlab.io.tess import cube_meta

    meta = cube_meta(astrocut_cube)
    ((ra, dec),) = meta.wcs.all_pix2world([pixel], 0)
    targets = pd.DataFrame({"ticid": [11], "ra": [ra], "dec": [dec]})
    ds = make_cutouts(targets, cube_url=astrocut_cube, size=(5, 4), pad=True)
    (path,) = write_tpfs(ds, str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = astrocut.cube_cut(astrocut_cube, SkyCoord(ra, dec, unit="deg"), [4, 5],
                                memory_only=True)  # fmt: skip
    ours = fits.open(path)
    flux = np.asarray(ours[1].data["FLUX"])
    assert np.isnan(flux).any()  # reaches off the image
    np.testing.assert_array_equal(flux, np.asarray(ref[1].data["FLUX"]))
    np.testing.assert_array_equal(ours[1].data["FLUX_ERR"], ref[1].data["FLUX_ERR"])
    np.testing.assert_array_equal(ours[2].data & 1, ref[2].data)  # collected = astrocut's 1/0
    assert ((ours[2].data == 0) == np.isnan(flux).all(axis=0)).all()  # padded: no bits at all
    # refused instead with pad=False: named, with the way out
    with pytest.raises(ValueError, match=r"TIC 11: the 5×4 cutout .* reaches off .*pad=True"):
        make_cutouts(targets, cube_url=astrocut_cube, size=(5, 4), pad=False)
    inside = pd.DataFrame({"ticid": [12], "ra": [meta.wcs.all_pix2world([[7.0, 7.0]], 0)[0][0]],
                           "dec": [meta.wcs.all_pix2world([[7.0, 7.0]], 0)[0][1]]})  # fmt: skip
    skipped = make_cutouts(pd.concat([targets, inside]), cube_url=astrocut_cube, size=(5, 4),
                           pad=False, on_error="skip")  # fmt: skip
    assert target_status(skipped)["status"].tolist() == ["ok", "off_edge"]


def _cli(argv, capsys):
    from cloudlab.cli import main

    code = main(["cutouts", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_single_target_angular_size_several_sectors(sims, tmp_path, capsys):
    dest, s55, s56 = sims
    star = _brightest(s55, 1)
    tic, ra, dec = int(star["ticid"][0]), float(star["ra"][0]), float(star["dec"][0])
    out = tmp_path / "one"
    code, text, err = _cli(["--target", f"TIC {tic}", "--ra", str(ra), "--dec", str(dec),
                            "--sector", "55", "56", "--cube-base", dest, "--size", "2arcmin",
                            "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    names = sorted(os.listdir(out))
    # 2 arcmin = 5.7 pixels of 21 arcsec: 6×6; sector 56's CCD 1 of camera 1 is elsewhere on the sky
    assert f"tic{tic}_s0055-1-1_6x6_tpf.fits" in names
    assert "1 TPF(s)" in text and "sector 56: " in err  # nothing to cut there: said, not fatal
    tpf = _read(str(out / f"tic{tic}_s0055-1-1_6x6_tpf.fits"))
    assert tpf.targetid == tic and tpf.shape[1:] == (6, 6)
    # both sectors when the target is on both cubes: one cube each, same star position
    both = tmp_path / "both"
    code, text, err = _cli(["--ra", str(ra), "--dec", str(dec), "--cube", s55.cube_url,
                            s56.cube_url, "--size-arcsec", "90", "--out", str(both)],
                           capsys)  # fmt: skip
    ((col, row),) = s56.wcs.all_world2pix([[ra, dec]], 0)
    on_56 = 0 <= col < SHAPE[1] and 0 <= row < SHAPE[0]
    assert code == 0, err
    files = sorted(os.listdir(both))
    assert len(files) == (2 if on_56 else 1)
    assert all(f.startswith(f"ticJ{ra:08.4f}") and "_5x5_" in f for f in files)  # 90″ → 5 px
    assert files[0].split("_")[-3].startswith("s0055")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--target", "TICX"], "--target"),
        (["--target", "1", "--size", "2kg"], "--size"),
        (["--target", "1", "--size", "-3"], "--size"),
        (["--target", "1", "--size-arcsec", "0"], "--size-arcsec"),
        (["--target", "1", "--size", "4", "--size-arcsec", "60"], "--size-arcsec"),
    ],
)
def test_cli_bad_options_name_the_option(sims, tmp_path, capsys, argv, named):
    dest, _, _ = sims
    with pytest.raises(SystemExit) as exit_:
        _cli([*argv, "--sector", "55", "--cube-base", dest, "--out", str(tmp_path / "o")], capsys)
    assert exit_.value.code == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--ra", "10"], "--ra needs --dec"),
        (["--ra", "10", "--dec", "95"], "--ra 10.0 --dec 95.0"),
        (["--target", "5", "--min-depth", "3"], "--min-depth"),
        (
            [
                "--target",
                "5",
                "--ra",
                "1",
                "--dec",
                "2",
                "--cube",
                "a.fits",
                "b.fits",
                "--sector",
                "5",
            ],
            "--sector",
        ),  # fmt: skip
        (["--sector", "5"], "--catalog, --target TIC or --ra/--dec"),
        (["--target", "5", "--ra", "1", "--dec", "2"], "--sector"),
    ],
)
def test_cli_option_errors(tmp_path, capsys, argv, named):
    code, _, err = _cli([*argv, "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert named in err and err.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()


def test_spoc_aperture_known_star_and_faint_fallback():
    from cloudlab.cutouts.tpf import spoc_aperture

    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[0:15, 0:15]
    star = 5000.0 * np.exp(-((cols - 9.3) ** 2 + (rows - 4.6) ** 2) / (2 * 0.8**2))
    flux = 100.0 + star + rng.normal(0, 1.0, (6, 15, 15))
    collected = np.ones((15, 15), np.int32)
    collected[:, :2] = 0  # two padded columns
    flux[:, :, :2] = np.nan
    bits = spoc_aperture(flux, collected, (9.3, 4.6))
    pipeline, background = bits & 2 > 0, bits & 4 > 0
    truth = star > 5 * 1.0  # pixels where the star is well above the noise
    assert pipeline[truth].all() and pipeline.sum() < 50  # the star, not the stamp
    assert not (pipeline & ~truth & (star < 1)).any()  # no pure-sky pixel
    assert not (background & (star > 3)).any() and background.sum() > 100
    assert (bits[:, :2] == 0).all() and (bits[:, 2:] & 1).all()
    # no star at all: the pixels within one pixel of the target, background around them
    sky = 100.0 + rng.normal(0, 1.0, (6, 15, 15))
    flat = spoc_aperture(sky, np.ones((15, 15)), (7.0, 7.0))
    assert np.argwhere(flat & 2 > 0).tolist() == [[6, 7], [7, 6], [7, 7], [7, 8], [8, 7]]
    # quality: a flagged frame full of scattered light does not make the aperture
    bright = sky.copy()
    bright[0] += 1e4 * np.exp(-((cols - 2) ** 2 + (rows - 2) ** 2) / 20.0)
    quality = np.array([128, 0, 0, 0, 0, 0])
    same = spoc_aperture(bright, np.ones((15, 15)), (7.0, 7.0), quality=quality)
    np.testing.assert_array_equal(same & 2, flat & 2)


def test_cli_target_with_coords_no_pad_and_cubes_without_sector(tmp_path, capsys):
    astrocut = pytest.importorskip("astrocut")
    maker = pytest.importorskip("astrocut.tests.utils_for_test")
    from cloudlab.io.tess import cube_meta

    cubes = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ffis = maker.create_test_ffis(10, 2, dir_name=str(tmp_path / name))
            cubes.append(astrocut.CubeFactory().make_cube(ffis, str(tmp_path / name / "c.fits"),
                                                          verbose=False))  # fmt: skip
    assert cube_meta(cubes[0]).sector is None  # astrocut's blank SECTOR
    ((ra, dec),) = cube_meta(cubes[0]).wcs.all_pix2world([[0.3, 5.0]], 0)  # at the left edge
    coords = tmp_path / "coords.csv"
    coords.write_text(f"TIC,RA,DEC\n77,{ra},{dec}\n")
    out = tmp_path / "out"
    base = ["--target", "TIC 77", "--coords", str(coords), "--size", "4", "--out", str(out)]
    # two cubes without a sector would give the same file names: refused, naming the options
    code, _, err = _cli([*base, "--cube", *cubes], capsys)
    assert code == 2 and "give one --sector per --cube" in err and not out.exists()
    code, text, err = _cli([*base, "--cube", *cubes, "--sector", "3", "4"], capsys)
    assert code == 0, err
    assert sorted(os.listdir(out)) == [
        "tic77_s0003-1-1_4x4_tpf.fits",
        "tic77_s0004-1-1_4x4_tpf.fits",
    ]
    assert fits.getheader(out / "tic77_s0003-1-1_4x4_tpf.fits")["SECTOR"] == 3
    # --no-pad: the edge target is reported, nothing written, exit 1
    code, text, err = _cli([*base, "--cube", cubes[0], "--no-pad", "--overwrite"], capsys)
    assert code == 1 and "TIC 77: the 4×4 cutout" in err and "reaches off" in err
    assert "--no-pad" in err


def test_keywords_of_a_real_spoc_ffi(tmp_path):
    """A cube astrocut made from a real sector-1 FFI: the TPF's cadence keywords are the FFI's."""
    if not REAL_FFI.exists():
        pytest.skip("real FFI not available")
    astrocut = pytest.importorskip("astrocut")
    from cloudlab.io.tess import cube_meta

    with fits.open(REAL_FFI) as hdul:  # trimmed file: crop flux and uncertainty alike
        n = min(hdul[1].data.shape[1], hdul[2].data.shape[1])
        hdul[1].data, hdul[2].data = hdul[1].data[:, :n], hdul[2].data[:, :n]
        hdul.writeto(tmp_path / "ffi.fits")
        ffi = hdul[1].header
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        url = astrocut.CubeFactory().make_cube(
            [str(tmp_path / "ffi.fits")], str(tmp_path / "cube.fits"), verbose=False
        )
    ((ra, dec),) = cube_meta(url).wcs.all_pix2world([[60.0, 60.0]], 0)
    ds = make_cutouts(pd.DataFrame({"ticid": [1], "ra": [ra], "dec": [dec]}), cube_url=url, size=8)
    (path,) = write_tpfs(ds, str(tmp_path / "tpf"))
    header = fits.getheader(path, 1)
    for key in ("TIMEDEL", "DEADC", "INT_TIME", "READTIME", "FRAMETIM", "NUM_FRM", "TIERRELA",
                "TELAPSE", "LIVETIME", "EXPOSURE", "GAINA", "READNOIA"):  # fmt: skip
        assert header[key] == pytest.approx(ffi[key], rel=1e-9), key
        assert "default" not in header.comments[key]
    primary = fits.getheader(path, 0)
    assert (primary["CAMERA"], primary["CCD"]) == (1, 4)
    assert not isinstance(primary["SECTOR"], int)  # astrocut wrote no sector: left unknown
    assert _read(path).pipeline_mask.any()
