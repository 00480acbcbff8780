"""Cubes made by astrocut's CubeFactory: cloudlab cuts them exactly as astrocut.cube_cut does,
and blank or malformed SECTOR/CAMERA/CCD cards never crash."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits

from cloudlab.cutouts import make_cutouts
from cloudlab.errors import FITSFormatError
from cloudlab.fits import clear_cache
from cloudlab.io.tess import cube_meta

astrocut = pytest.importorskip("astrocut")
ffi_maker = pytest.importorskip("astrocut.tests.utils_for_test")  # astrocut's own FFI generator


@pytest.fixture(autouse=True)
def _sync_scheduler():
    with dask.config.set(scheduler="synchronous"):
        yield


def _make_cube(dest: Path, size: int, frames: int, sector: int | None) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ffis = ffi_maker.create_test_ffis(size, frames, dir_name=str(dest))
        cube = astrocut.CubeFactory().make_cube(
            ffis, str(dest / "cube.fits"), sector=sector, verbose=False
        )
    return str(cube)


# (image size, frames): a tiny cube with few frames, a larger one with more
CUBES = [(9, 2), (26, 11)]


@pytest.fixture(scope="module", params=CUBES, ids=lambda c: f"{c[0]}px-{c[1]}frames")
def cube(request, tmp_path_factory) -> tuple[str, int, int]:
    size, frames = request.param
    url = _make_cube(tmp_path_factory.mktemp("astrocut"), size, frames, sector=7)
    return url, size, frames


def _astrocut_flux(url: str, coord: SkyCoord, ny: int, nx: int) -> np.ndarray:
    """astrocut.cube_cut's FLUX column (its cutout_size is taken as columns, rows)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tpf = astrocut.cube_cut(url, coord, [nx, ny], memory_only=True)
    return np.asarray(tpf[1].data["FLUX"])


@pytest.mark.parametrize("cut", [3, (4, 5)], ids=["3x3", "4x5"])
def test_cutouts_equal_astrocut_cube_cut(cube, cut):
    url, size, frames = cube
    meta = cube_meta(url)
    assert (meta.n_rows, meta.n_cols, meta.n_frames) == (size, size, frames)
    assert meta.sector == 7 and (meta.camera, meta.ccd) == (1, 1)
    # interior, each edge, and the corners (0-based pixel centres, x then y)
    last = size - 1
    pixels = [[size / 2, size / 2 - 0.3], [0.2, size / 2], [size / 2, last - 0.1],
              [0.0, 0.0], [last, last], [last - 0.4, 0.3]]  # fmt: skip
    ra, dec = meta.wcs.all_pix2world(np.asarray(pixels, float), 0).T
    targets = pd.DataFrame({"ticid": np.arange(len(ra)) + 1, "ra": ra, "dec": dec})
    ny, nx = (cut, cut) if np.ndim(cut) == 0 else cut
    ds = make_cutouts(targets, cube_url=url, size=(ny, nx)).compute()
    assert ds["flux"].shape == (len(targets), frames, ny, nx)
    for i in range(len(targets)):
        ref = _astrocut_flux(url, SkyCoord(ra[i], dec[i], unit="deg"), ny, nx)
        np.testing.assert_array_equal(ds["flux"][i].values, ref, err_msg=f"target {pixels[i]}")
    # astrocut's FFIs hold -(a unique value per pixel and frame): the cut values are real pixels
    assert np.nanmax(ds["flux"].values) <= 0 and np.isfinite(ds["flux"][0].values).all()


def _set_primary_card(src: str, dest: Path, card: str) -> str:
    """Copy a cube, replacing its primary SECTOR card by ``card`` (80 characters, raw)."""
    shutil.copy(src, dest)
    raw = bytearray(dest.read_bytes())
    header = raw[:2880].decode("ascii")
    pos = next(i for i in range(0, 2880, 80) if header[i : i + 8] == "SECTOR  ")
    raw[pos : pos + 80] = card.ljust(80).encode("ascii")
    dest.write_bytes(bytes(raw))
    return str(dest)


def test_blank_sector_is_unknown(tmp_path):
    # astrocut writes "SECTOR  =  / Observing sector" (no value) unless given a sector
    url = _make_cube(tmp_path / "blank", 8, 2, sector=None)
    header = fits.getheader(url)
    assert "SECTOR" in header and not isinstance(header["SECTOR"], int)
    meta = cube_meta(url)
    assert meta.sector is None
    assert (meta.camera, meta.ccd) == (1, 1)
    ra, dec = meta.wcs.all_pix2world([[4.0, 4.0]], 0).T
    targets = pd.DataFrame({"ticid": [1], "ra": ra, "dec": dec})
    ds = make_cutouts(targets, cube_url=url, size=3).compute()  # cutting needs no sector
    ref = _astrocut_flux(url, SkyCoord(ra[0], dec[0], unit="deg"), 3, 3)
    np.testing.assert_array_equal(ds["flux"][0].values, ref)


@pytest.mark.parametrize("card", ["SECTOR  = 5x", "SECTOR  = 'five'", "SECTOR  = 2.5"])
def test_unparsable_sector_names_file_and_card(cube, tmp_path, card):
    url = _set_primary_card(cube[0], tmp_path / "bad.fits", card)
    clear_cache()
    with pytest.raises(FITSFormatError, match="SECTOR") as err:
        cube_meta(url)
    assert url in str(err.value)
    assert card.split("=")[1].strip() in str(err.value)


def test_blank_camera_falls_back_to_the_wcs_row(cube, tmp_path):
    url = tmp_path / "cam.fits"
    shutil.copy(cube[0], url)
    with fits.open(url, mode="update") as hdul:
        hdul[0].header["CAMERA"] = None  # blank card: the WCS row (an FFI header) still has it
        del hdul[0].header["CCD"]
    meta = cube_meta(str(url))
    assert (meta.sector, meta.camera, meta.ccd) == (7, 1, 1)


def test_cli_sector_contradicting_the_cube_is_refused_before_work(cube, tmp_path, capsys):
    from cloudlab.cli import main

    url = cube[0]  # SECTOR = 7 in its primary header
    ra, dec = cube_meta(url).wcs.all_pix2world([[2.0, 2.0]], 0)[0]
    out = tmp_path / "out"
    argv = ["cutouts", "--target", "TIC 5", "--ra", str(ra), "--dec", str(dec), "--size", "3",
            "--cube", url, "--out", str(out)]  # fmt: skip
    assert main([*argv, "--sector", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line, no traceback
    assert "--sector 8 contradicts --cube" in err and url in err and "SECTOR = 7" in err
    assert not out.exists()  # refused before anything was written
    assert main([*argv, "--sector", "7"]) == 0
    assert sorted(os.listdir(out)) == ["tic5_s0007-1-1_3x3_tpf.fits"]
