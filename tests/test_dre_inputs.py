"""DRE on bad and foreign input: each mistake is an error naming its culprit, before any χ."""

from __future__ import annotations

import argparse
import shutil
import stat

import dask
import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.table import Table

from cloudlab import dre
from cloudlab.commands import dre as dre_cli
from cloudlab.commands import simulate as simulate_cli
from cloudlab.dre.pipeline import Layout
from cloudlab.dre.tools import PSFEX_NAMES, SEXTRACTOR_NAMES, run_tool
from cloudlab.errors import ExternalToolError, FITSFormatError, InputError
from cloudlab.io.galaxies import read_catalog
from cloudlab.simulate.galaxies import gaussian_psf, truth_url

HAVE_TOOLS = any(map(shutil.which, SEXTRACTOR_NAMES)) and any(map(shutil.which, PSFEX_NAMES))
needs_tools = pytest.mark.skipif(
    not HAVE_TOOLS, reason="needs the Debian packages source-extractor and psfex"
)
AXES = {"ax_ratio": (0.2, 0.2, 3), "angle": (0.0, 45.0, 4), "log_r": (0.2, 0.2, 3)}
B = 32


@pytest.fixture(autouse=True)
def _synchronous():
    with dask.config.set(scheduler="synchronous"):
        yield


def _cli(register, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def _cuts(n: int = 2) -> xr.Dataset:
    rng = np.random.default_rng(1)
    obj = rng.normal(10.0, 1.0, (n, B, B)).astype(np.float32)
    seg = np.zeros((n, B, B), bool)
    seg[:, 12:20, 12:20] = True
    rms = np.ones((n, B, B), np.float32)
    dims = ("galaxy", "y", "x")
    return xr.Dataset(
        {"obj": (dims, obj), "seg": (dims, seg), "rms": (dims, rms)},
        coords={
            "EXT_NUMBER": ("galaxy", np.zeros(n, int)),
            "NUMBER": ("galaxy", np.arange(1, n + 1)),
            "name": ("galaxy", [f"00_{i + 1:04d}" for i in range(n)]),
        },
    )


# ------------------------------------------------ simulate -> sextract -> psfex -> cuts -> fit


def test_simulated_truth_is_outside_tiles(tmp_path):
    root = tmp_path / "run"
    dest = str(root / "Tiles" / "t1.fits")
    assert _cli(simulate_cli.register, "simulate", "galaxies", dest, "--galaxies", "3",
                "--stars", "2") == 0  # fmt: skip
    assert truth_url(dest) == str(root / "Truth" / "t1_truth.fits")
    assert len(Table.read(root / "Truth" / "t1_truth.fits")) == 5
    assert sorted(p.name for p in (root / "Tiles").iterdir()) == ["t1.fits"]
    assert Layout(str(root)).names("sextract") == ["t1"]
    # outside a Tiles/ folder the truth stays beside the tile
    assert truth_url("s3://b/x/tile.fits") == "s3://b/x/tile_truth.fits"
    assert truth_url("s3://b/r/Tiles/a.fits") == "s3://b/r/Truth/a_truth.fits"


@needs_tools
def test_documented_cli_path_runs_as_written(tmp_path, capsys):
    """``cloudlab simulate galaxies ROOT/Tiles/t1.fits`` then sextract, psfex, cuts, models, fit."""
    root = str(tmp_path / "run")
    models = str(tmp_path / "models.fits")
    assert _cli(simulate_cli.register, "simulate", "galaxies", f"{root}/Tiles/t1.fits",
                "--galaxies", "6", "--stars", "6") == 0  # fmt: skip
    for step in ("sextract", "psfex", "cuts"):
        assert _cli(dre_cli.register, "dre", step, root) == 0
    assert _cli(dre_cli.register, "dre", "models", models, "--ax-ratio", "0.2", "0.2", "5",
                "--angle", "0", "30", "6", "--log-r", "0", "0.2", "5") == 0  # fmt: skip
    assert _cli(dre_cli.register, "dre", "fit", root, "--models", models) == 0
    assert "1 of 1 tiles fitted, 0 failed" in capsys.readouterr().out
    summary = Table.read(f"{root}/Summary/t1_dre.fits")
    n_cuts = dre.read_cuts_hdf5(f"{root}/Cuts/t1_cuts.h5").sizes["galaxy"]
    assert len(summary) == n_cuts > 0 and "CLASS_STAR" in summary.colnames


# ------------------------------------------------------------------------ model cubes


def test_models_with_nan_or_zero_stamps_are_refused_naming_cube_and_models(tmp_path):
    url = str(tmp_path / "models.fits")
    dre.model_grid(**AXES, boxsize=B, url=url)
    with fits.open(url, mode="update") as hdul:  # planes [q] of (angle*B, log_r*B) mosaics
        data = hdul[0].data
        data[1, 2 * B + 5, 0 * B + 7] = np.nan  # model (q=1, t=2, r=0)
        data[2, 3 * B : 4 * B, 1 * B : 2 * B] = 0.0  # model (q=2, t=3, r=1)
    models = dre.load_models(url)
    with pytest.raises(InputError) as err:
        dre.fit(_cuts(), models, gaussian_psf(2.0, 9))
    message = str(err.value)
    assert url in message
    assert "2 of 36 models" in message and "1 with NaN" in message and "1 all zero" in message
    assert "[0, 1, 2, 0] (index=4, ax_ratio=0.4, angle=90, log_r=0.2)" in message
    assert "[0, 2, 3, 1]" in message
    # the pipeline refuses it before any tile (a tile is there, so only the models can fail)
    (tmp_path / "run" / "Cuts").mkdir(parents=True)
    (tmp_path / "run" / "Cuts" / "a_cuts.h5").write_bytes(b"")
    with pytest.raises(InputError, match="2 of 36 models"):
        dre.fit_tiles(str(tmp_path / "run"), url)
    # an in-memory cube is checked too; a clean one passes and gives finite χ
    bad = dre.model_grid(**AXES, boxsize=B).compute()
    bad[0, 0, 0, 0] = 0.0
    with pytest.raises(InputError, match=r"the model cube: 1 of 36 .*\[0, 0, 0, 0\]"):
        dre.fit(_cuts(), bad, None)
    good = dre.model_grid(**AXES, boxsize=B)
    assert np.isfinite(dre.fit(_cuts(), good, gaussian_psf(2.0, 9))["chi"].values).all()


# ----------------------------------------------------------- unreadable product files


def test_truncated_cuts_file_is_named(tmp_path):
    url = str(tmp_path / "t_cuts.h5")
    dre.write_cuts_hdf5(_cuts(), url)
    data = (tmp_path / "t_cuts.h5").read_bytes()
    (tmp_path / "t_cuts.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=f"{url}: not a readable DRE cuts file"):
        dre.read_cuts_hdf5(url)
    (tmp_path / "x_cuts.h5").write_bytes(b"SIMPLE  =                    T")
    with pytest.raises(InputError, match="x_cuts.h5: not a readable DRE cuts file"):
        dre.read_cuts_hdf5(str(tmp_path / "x_cuts.h5"))


def test_non_fits_psf_is_named(tmp_path):
    path = tmp_path / "t1.psf"
    path.write_text("PSFEx crashed before writing this file\n")
    with pytest.raises(FITSFormatError, match=f"{path}: not a readable FITS file"):
        dre.read_psf(str(path))
    with pytest.raises(FITSFormatError, match=f"{path}: not a readable FITS file"):
        dre.fit(_cuts(), dre.model_grid(**AXES, boxsize=B), str(path))


def test_empty_or_unreadable_catalog_is_named(tmp_path):
    tile = tmp_path / "t.fits"
    fits.PrimaryHDU(np.zeros((300, 300), np.float32)).writeto(tile)
    columns = ["NUMBER", "EXT_NUMBER", "X_IMAGE", "Y_IMAGE", "CLASS_STAR"]
    empty = tmp_path / "t_cat.fits"
    Table({c: np.zeros(0) for c in columns}).write(empty)
    assert len(read_catalog(str(empty))) == 0
    with pytest.raises(InputError, match=f"catalog {empty} of tile {tile} is empty"):
        dre.open_cuts(str(tile), str(empty), rms=1.0, segmentation=str(tile))
    with pytest.raises(InputError, match="the catalog of tile .* is empty"):
        dre.open_cuts(str(tile), Table({c: np.zeros(0) for c in columns}), rms=1.0,
                      segmentation=str(tile))  # fmt: skip
    full = tmp_path / "full_cat.fits"
    Table({c: np.ones(3) for c in columns}).write(full)
    data = full.read_bytes()
    truncated = tmp_path / "cut_cat.fits"
    truncated.write_bytes(data[: len(data) - 2880])
    with pytest.raises(FITSFormatError, match=f"{truncated}: not a readable FITS catalogue"):
        read_catalog(str(truncated))
    (tmp_path / "empty_cat.fits").write_bytes(b"")
    with pytest.raises(FITSFormatError, match="empty_cat.fits: not a readable FITS catalogue"):
        read_catalog(str(tmp_path / "empty_cat.fits"))


# ------------------------------------------------------------ failures are counted


def test_tile_without_psf_is_a_counted_failure(tmp_path, capsys):
    root = tmp_path / "run"
    models = str(tmp_path / "models.fits")
    dre.model_grid(**AXES, boxsize=B, url=models)
    dre.write_cuts_hdf5(_cuts(), str(root / "Cuts" / "a_cuts.h5"))
    dre.write_cuts_hdf5(_cuts(), str(root / "Cuts" / "b_cuts.h5"))
    fits.PrimaryHDU(gaussian_psf(2.0, 9)).writeto(root / "a.psf")
    (root / "PSF").mkdir()
    (root / "PSF" / "a.psf").write_bytes((root / "a.psf").read_bytes())
    with pytest.warns(UserWarning, match="b: no PSF"):
        done = dre.fit_tiles(str(root), models)
    assert {k: v.status for k, v in done.items()} == {"a": "ok", "b": "no_psf"}
    assert (root / "Summary" / "a_dre.fits").exists()
    with pytest.warns(UserWarning, match="b: no PSF"):
        status = _cli(dre_cli.register, "dre", "fit", str(root), "--models", models, "--tile", "b")
    out = capsys.readouterr().out
    assert status == 1
    assert f"b: FAILED, no_psf (no PSF at {root}/PSF/b.psf" in out
    assert "0 of 1 tiles fitted, 1 failed" in out


# ------------------------------------------------------------------- tool messages


def test_tool_error_has_no_terminal_escape_codes(tmp_path):
    tool = tmp_path / "fake-sextractor"
    tool.write_text(
        "#!/bin/sh\n"
        "printf '\\033[1M> Setting catalog parameters\\n\\033[1A' >&2\n"
        "printf '\\033[1M> \\033[31mError\\033[0m: SATUR_LEVEL keyword out of range\\n' >&2\n"
        "exit 1\n"
    )
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(ExternalToolError) as err:
        run_tool("SExtractor", [str(tool)], str(tmp_path))
    message = str(err.value)
    assert "\x1b" not in message and "[1M" not in message and "[31m" not in message
    assert "SExtractor failed (exit status 1): > Error: SATUR_LEVEL keyword out of range" in message


# ------------------------------------------------------------------ integer options


@pytest.mark.parametrize(
    ("option", "value"), [("--ax-ratio", "2.5"), ("--angle", "nan"), ("--log-r", "0")]
)
def test_non_integer_count_is_refused_naming_the_option(tmp_path, option, value):
    dest = tmp_path / "models.fits"
    with pytest.raises(InputError, match=f"{option} START STEP N: N must be a positive integer"):
        _cli(dre_cli.register, "dre", "models", str(dest), option, "0.1", "0.1", value)
    assert not dest.exists()
    with pytest.raises(InputError, match="ax_ratio: the number of values must be a positive"):
        dre.model_grid(ax_ratio=(0.1, 0.1, float(value)))
    with pytest.raises(InputError, match="boxsize must be an integer"):
        dre.model_grid(boxsize=32.5)
