"""DRE end to end with the real SExtractor and PSFEx on a simulated tile, and the CLI."""

from __future__ import annotations

import argparse
import shutil

import dask
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from cloudlab import dre
from cloudlab.commands import dre as dre_cli
from cloudlab.dre.cuts import open_cuts
from cloudlab.dre.tools import PSFEX_NAMES, SEXTRACTOR_NAMES
from cloudlab.simulate import galaxy_tile

HAVE_TOOLS = any(map(shutil.which, SEXTRACTOR_NAMES)) and any(map(shutil.which, PSFEX_NAMES))
needs_tools = pytest.mark.skipif(
    not HAVE_TOOLS, reason="needs the Debian packages source-extractor and psfex"
)
AXES = {"ax_ratio": (0.2, 0.2, 5), "angle": (0.0, 30.0, 6), "log_r": (0.2, 0.2, 6)}
B = 64


def _values(axis):
    start, step, count = axis
    return start + step * np.arange(count)


@pytest.fixture(autouse=True)
def _synchronous():
    with dask.config.set(scheduler="synchronous"):
        yield


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    root = tmp_path_factory.mktemp("dre")
    sim = galaxy_tile(
        str(root / "Tiles" / "t1.fits"),
        shape=(600, 600),
        n_galaxies=10,
        n_stars=10,
        seed=3,
        ax_ratio=_values(AXES["ax_ratio"])[:4],
        angle=_values(AXES["angle"]),
        log_r=_values(AXES["log_r"])[1:5],
        stamp=B,
        margin=40,
        min_separation=70,
    )
    return root, sim


@needs_tools
def test_sextract_psfex_fit_recovers_true_cells(tile):
    root, sim = tile
    sex = dre.sextract(str(root / "Tiles" / "t1.fits"), str(root / "Sextracted" / "t1"))
    for url in (sex.catalog, sex.background, sex.rms, sex.segmentation, sex.subtracted):
        assert url.startswith(str(root / "Sextracted" / "t1" / "t1_"))
    table = sex.table
    assert {"NUMBER", "X_IMAGE", "Y_IMAGE", "CLASS_STAR", "VIGNET"} <= set(table.colnames)
    truth = sim.truth
    # every injected source is detected within half a pixel
    d = np.hypot(
        table["X_IMAGE"][:, None] - truth["X_IMAGE"][None],
        table["Y_IMAGE"][:, None] - truth["Y_IMAGE"][None],
    )
    assert len(table) == len(truth) and np.all(d.min(axis=0) < 0.5)
    # check images: background near the sky level, rms near the noise, -BACKGROUND = tile - bkg
    bkg, rms = fits.getdata(sex.background), fits.getdata(sex.rms)
    assert np.median(bkg) == pytest.approx(sim.sky, abs=1.0)
    assert np.median(rms) == pytest.approx(sim.noise, rel=0.1)
    np.testing.assert_allclose(fits.getdata(sex.subtracted), sim.image - bkg, atol=1e-3)
    # stars are classified as stars
    match = d.argmin(axis=0)
    stars = truth["KIND"] == "star"
    assert np.all(table["CLASS_STAR"][match[stars]] > 0.8)

    psf = dre.psfex(sex.catalog, str(root / "PSF" / "t1.psf"))
    assert psf.psf.shape == (25, 25)
    np.testing.assert_allclose(psf.psf, sim.psf, atol=0.02 * sim.psf.max())
    np.testing.assert_allclose(dre.read_psf(psf.url), psf.psf)

    # fit with the true integer centres, SExtractor's NUMBER, segmentation, background and rms
    galaxies = truth[truth["KIND"] == "galaxy"]
    j = d.argmin(axis=0)[truth["KIND"] == "galaxy"]
    catalog = Table(
        {
            "NUMBER": table["NUMBER"][j],
            "X_IMAGE": galaxies["X_IMAGE"],
            "Y_IMAGE": galaxies["Y_IMAGE"],
            "CLASS_STAR": table["CLASS_STAR"][j],
        }
    )
    cuts = open_cuts(str(root / "Tiles" / "t1.fits"), catalog, size=B, margin=40,
                     max_stellarity=1.0, background=sex.background, rms=sex.rms,
                     segmentation=sex.segmentation)  # fmt: skip
    result = dre.fit(cuts, dre.model_grid(**AXES, boxsize=B), psf.url)
    summary = dre.summarize(result)
    for row, true in zip(summary, galaxies, strict=True):
        assert row["FLAG"] == 0
        assert row["AX_RATIO"] == pytest.approx(true["AX_RATIO"])
        assert row["ANGLE"] == pytest.approx(true["ANGLE"])
        assert row["LOGR"] == pytest.approx(true["LOGR"])
        assert abs(row["LOGR_PARAB"] - true["LOGR"]) < 0.1


@needs_tools
def test_tool_failures_surface_their_message(tmp_path, monkeypatch):
    not_fits = tmp_path / "broken.fits"
    not_fits.write_bytes(b"this is not a FITS file" * 200)
    with pytest.raises(dre.ToolError, match="SExtractor failed"):
        dre.sextract(str(not_fits), str(tmp_path / "out"))
    image = tmp_path / "flat.fits"
    fits.PrimaryHDU(np.zeros((64, 64), np.float32)).writeto(image)
    with pytest.raises(dre.ToolError, match="DETECT_THRESH"):
        dre.sextract(str(image), str(tmp_path / "out"), options={"DETECT_THRESH": "-5,x,y"})
    catalog = tmp_path / "cat.fits"
    Table({"NUMBER": [1]}).write(catalog)
    with pytest.raises(dre.ToolError, match="PSFEx"):
        dre.psfex(str(catalog), str(tmp_path / "p.psf"))
    assert not (tmp_path / "p.psf").exists()
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(dre.ToolError, match="apt-get install source-extractor"):
        dre.sextract(str(image))
    with pytest.raises(dre.ToolError, match="apt-get install psfex"):
        dre.psfex(str(catalog))


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    dre_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["dre", *argv])
    return args.func(args)


@needs_tools
def test_cli_runs_dre_layout(tmp_path):
    root = tmp_path / "run"
    galaxy_tile(str(root / "Tiles" / "a.fits"), shape=(400, 400), n_galaxies=4, n_stars=8,
                seed=5, stamp=B, margin=40, min_separation=60)  # fmt: skip
    models = str(tmp_path / "models.fits")
    assert _cli("models", models, "--ax-ratio", "0.2", "0.2", "5", "--angle", "0", "30", "6",
                "--log-r", "0.2", "0.2", "6", "--boxsize", str(B)) == 0  # fmt: skip
    assert _cli("sextract", str(root)) == 0
    assert _cli("psfex", str(root)) == 0
    assert _cli("cuts", str(root), "--size", str(B), "--margin", "40") == 0
    assert _cli("fit", str(root), "--models", models, "--mosaics", "--zarr") == 0
    summary = Table.read(root / "Summary" / "a_dre.fits")
    n_cuts = len(dre.read_cuts_hdf5(str(root / "Cuts" / "a_cuts.h5"))["galaxy"])
    assert len(summary) == n_cuts > 0
    assert {"MODEL_IDX", "LOGR_PARAB", "X_IMAGE", "CLASS_STAR"} <= set(summary.colnames)
    assert "VIGNET" not in summary.colnames
    assert len(dre.read_chi_hdf5(str(root / "Chi" / "a_chi.h5"))) == n_cuts
    assert (root / "Chi" / "a_chi.zarr").is_dir()
    assert len(list((root / "Mosaics" / "a").glob("*_mosaic.png"))) == n_cuts
    # one PSF for every tile (convolved once) gives the same chi
    first = dre.read_chi_hdf5(str(root / "Chi" / "a_chi.h5"))
    assert (
        _cli(
            "fit",
            str(root),
            "--models",
            models,
            "--overwrite",
            "--psf",
            str(root / "PSF" / "a.psf"),
        )
        == 0
    )
    again = dre.read_chi_hdf5(str(root / "Chi" / "a_chi.h5"))
    assert sorted(again) == sorted(first)
    for key, value in first.items():
        np.testing.assert_array_equal(again[key], value)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        _cli("sextract", str(root), "--option", "DETECT_THRESH")


@needs_tools
def test_remote_urls_and_cluster(tile, s3_bucket, local_client):
    """Tile, products and model cube on S3 (moto); the fit graph runs on a LocalCluster."""
    import fsspec

    root, sim = tile
    base = f"s3://{s3_bucket}/dre"
    fs = fsspec.filesystem("s3")
    fs.put_file(str(root / "Tiles" / "t1.fits"), f"{base}/Tiles/t1.fits")
    sex = dre.sextract(f"{base}/Tiles/t1.fits", f"{base}/Sextracted/t1")
    assert sex.catalog == f"{base}/Sextracted/t1/t1_cat.fits" and fs.exists(sex.segmentation)
    psf = dre.psfex(sex.catalog, f"{base}/PSF/t1.psf")
    np.testing.assert_allclose(psf.psf, sim.psf, atol=0.02 * sim.psf.max())
    dre.model_grid(**AXES, boxsize=B, url=f"{base}/models.fits")
    cuts = open_cuts(f"{base}/Tiles/t1.fits", sex, size=B, margin=40, max_stellarity=1.0,
                     chunk_size=8)  # fmt: skip
    # read the cuts once, one request per window (rows 2 KB apart are merged)
    with dask.config.set({"cloudlab.fits.merge-gap": 2**16}):
        cuts = cuts.compute().chunk({"galaxy": 8})
    result = dre.fit(cuts, dre.load_models(f"{base}/models.fits"), psf.url)
    chi = local_client.compute(result["chi"]).result()  # models and PSF read on the workers
    with dask.config.set(scheduler="synchronous"):
        local = dre.fit(cuts, dre.model_grid(**AXES, boxsize=B), psf.psf)["chi"].values
    np.testing.assert_allclose(chi.values, local, rtol=1e-5)
    assert chi.shape == (cuts.sizes["galaxy"], 1, 5, 6, 6)
    dre.write_summary(dre.summarize(result), f"{base}/Summary/t1_dre.fits")
    dre.write_chi_hdf5(result, f"{base}/Chi/t1_chi.h5")
    assert len(dre.read_chi_hdf5(f"{base}/Chi/t1_chi.h5")) == cuts.sizes["galaxy"]


def _sextracted_layout(root, name, sim):
    """What SExtractor and PSFEx would leave for a simulated tile, built from its truth.

    Catalogue from the true positions (stars with CLASS_STAR 0.99), constant background and rms
    images at the true sky and noise, a segmentation of 25-px disks labelled by NUMBER, and the
    true PSF as a FITS image.
    """
    ny, nx = sim.image.shape
    truth = sim.truth
    numbers = np.arange(1, len(truth) + 1)
    folder = root / "Sextracted" / name
    folder.mkdir(parents=True)
    Table(
        {
            "NUMBER": numbers,
            "X_IMAGE": truth["X_IMAGE"],
            "Y_IMAGE": truth["Y_IMAGE"],
            "CLASS_STAR": np.where(truth["KIND"] == "star", 0.99, 0.01),
        }
    ).write(folder / f"{name}_cat.fits")
    fits.PrimaryHDU(np.full((ny, nx), sim.sky, np.float32)).writeto(folder / f"{name}_bkg.fits")
    fits.PrimaryHDU(np.full((ny, nx), sim.noise, np.float32)).writeto(folder / f"{name}_rms.fits")
    rows, cols = np.mgrid[0:ny, 0:nx]
    seg = np.zeros((ny, nx), np.int32)
    for number, x, y in zip(numbers, truth["X_IMAGE"], truth["Y_IMAGE"], strict=True):
        seg[(rows - (y - 1)) ** 2 + (cols - (x - 1)) ** 2 < 25**2] = number
    fits.PrimaryHDU(seg).writeto(folder / f"{name}_seg.fits")
    (root / "PSF").mkdir(exist_ok=True)
    fits.PrimaryHDU(sim.psf).writeto(root / "PSF" / f"{name}.psf")


def test_pipeline_cuts_and_fits_tiles_without_the_tools(tmp_path):
    """cut_tiles and fit_tiles on DRE's layout recover the simulated galaxies' grid cells."""
    from cloudlab.dre.pipeline import Layout, cut_tiles, fit_tiles

    root = tmp_path / "run"
    sim = galaxy_tile(str(root / "Tiles" / "a.fits"), shape=(400, 400), n_galaxies=4, n_stars=2,
                      seed=5, ax_ratio=_values(AXES["ax_ratio"])[:4], angle=_values(AXES["angle"]),
                      log_r=_values(AXES["log_r"])[1:5], stamp=B, margin=40,
                      min_separation=60)  # fmt: skip
    _sextracted_layout(root, "a", sim)
    models = str(tmp_path / "models.fits")
    dre.model_grid(**AXES, boxsize=B, url=models)

    assert Layout(str(root) + "/").names("cuts") == ["a"]
    assert cut_tiles(str(root), size=B, margin=40, max_stellarity=0.5) == {"a": (4, 4)}
    (root / "Cuts" / "b_cuts.h5").write_bytes((root / "Cuts" / "a_cuts.h5").read_bytes())
    with pytest.warns(UserWarning, match="b: no PSF at .*b.psf"):
        done = fit_tiles(str(root), models, zarr=True)
    assert (
        done["b"].as_dict()["status"] == "no_psf" and not (root / "Summary" / "b_dre.fits").exists()
    )
    assert done["a"].status == "ok" and done["a"].n_chi == done["a"].n_summary == 4
    assert (root / "Chi" / "a_chi.zarr").is_dir()
    summary = Table.read(root / "Summary" / "a_dre.fits")
    assert {"MODEL_IDX", "LOGR_PARAB", "X_IMAGE", "CLASS_STAR"} <= set(summary.colnames)
    by_number = {i + 1: row for i, row in enumerate(sim.truth)}
    assert sorted(summary["NUMBER"]) == [n for n, t in by_number.items() if t["KIND"] == "galaxy"]
    for row in summary:
        true = by_number[int(row["NUMBER"])]
        assert row["FLAG"] == 0
        assert row["AX_RATIO"] == pytest.approx(true["AX_RATIO"])
        assert row["ANGLE"] == pytest.approx(true["ANGLE"])
        assert row["LOGR"] == pytest.approx(true["LOGR"])
    # the CLI runs the same pipeline; one PSF for every tile (convolved once) gives the same chi
    first = dre.read_chi_hdf5(str(root / "Chi" / "a_chi.h5"))
    assert _cli("fit", str(root), "--models", models, "--tile", "a", "--overwrite",
                "--psf", str(root / "PSF" / "a.psf")) == 0  # fmt: skip
    again = dre.read_chi_hdf5(str(root / "Chi" / "a_chi.h5"))
    assert sorted(again) == sorted(first)
    for key, value in first.items():
        np.testing.assert_allclose(again[key], value, rtol=1e-6)
