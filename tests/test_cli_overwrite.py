"""One overwrite policy for every ``cloudlab`` command that writes products.

Without ``--overwrite`` an existing product is refused with one line naming it (exit 2) before
any input is read or anything is computed; with it the products are replaced.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from astropy.io import fits

from cloudlab import cluster
from cloudlab.cli import main


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under ``root``: size, mtime and content hash (directories: zeros)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            out[str(path.relative_to(root))] = (0, 0, "")
        else:
            stat = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns, digest)
    return out


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if anything is computed (every command computes through this sink)."""

    def refuse(*args, **kwargs):
        raise AssertionError("computed although the command should have refused first")

    monkeypatch.setattr(cluster, "compute", refuse)


def _refused(argv: list[str], root: Path, product: Path, capsys, more: int = 0) -> None:
    """Run ``argv`` and check it refused with one line naming ``product`` (and ``more`` others),
    changing nothing."""
    capsys.readouterr()
    before = _snapshot(root)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    command = " ".join(argv[:1])
    what = f"{product} and {more} more exist" if more else f"{product} exists"
    end = "them" if more else "it"
    assert err == [f"cloudlab {command}: error: {what}; pass --overwrite to replace {end}"]
    assert _snapshot(root) == before  # no staging/temporary entries, products untouched


def _refusal_cases(tmp: Path) -> list[tuple[list[str], Path]]:
    """Each command with inputs that do not exist and one product that does."""
    from cloudlab.astronet.tfrecords import split_indices

    missing = str(tmp / "missing")
    out = tmp / "out"
    shard = next(iter(split_indices(1, (0.8, 0.1, 0.1), 123)))
    return [
        (["backdrop", "apply", "--weights", f"{missing}/w.fits", "--tpf", f"{missing}/a.fits",
          "--out-dir", str(out)], out / "a_bkgsub.fits"),
        (["dre", "sextract", str(out), "--tile", "t1"], out / "Sextracted/t1/t1_cat.fits"),
        (["dre", "psfex", str(out), "--tile", "t1"], out / "PSF/t1.psf"),
        (["dre", "cuts", str(out), "--tile", "t1"], out / "Cuts/t1_cuts.h5"),
        (["dre", "fit", str(out), "--tile", "t1", "--models", f"{missing}/m.fits"],
         out / "Summary/t1_dre.fits"),
        (["astronet", "views", "--lightcurves", f"{missing}/*.fits", "--tces", f"{missing}.csv",
          "--dest", str(out)], out / shard),
        (["astronet", "train", "--data", missing, "--out", str(out / "model.keras")],
         out / "model.keras"),
        (["astronet", "predict", "--checkpoints", f"{missing}.keras", "--data", missing,
          "--out", str(out / "predictions.csv")], out / "predictions.csv"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", range(8))
def test_existing_product_is_refused_before_inputs_are_read(case, tmp_path, capsys, no_compute):
    argv, product = _refusal_cases(tmp_path)[case]
    product.parent.mkdir(parents=True, exist_ok=True)
    product.write_bytes(b"previous product")
    _refused(argv, tmp_path, product, capsys)
    # with --overwrite the check passes and the command goes on to its (missing) inputs
    assert main([*argv, "--overwrite"]) != 0
    assert "pass --overwrite" not in capsys.readouterr().err
    assert product.read_bytes() == b"previous product"  # a failed run leaves it alone


def test_timelag_refuses_then_replaces(tmp_path, capsys, monkeypatch):
    sim, out = tmp_path / "sim", tmp_path / "out"
    assert main(["timelag", "simulate", str(sim), "--channels", "94,335", "--shape", "6x8",
                 "--frames", "30"]) == 0  # fmt: skip
    argv = ["timelag", "--channel", f"94={sim}/0094/*.fits", "--channel",
            f"335={sim}/0335/*.fits", "--out", str(out), "--no-png"]  # fmt: skip
    assert main([*argv, "--lag-bounds", "0s", "0s"]) == 0
    first = xr.open_zarr(out / "timelag_maps.zarr").compute()
    assert (first["timelag"].values == 0).all()
    with monkeypatch.context() as patch:
        patch.setattr(cluster, "compute", lambda *a, **k: pytest.fail("computed"))
        _refused(argv, tmp_path, out / "timelag_maps.zarr", capsys, more=2)
    # only the FITS products left: they alone are named
    shutil.rmtree(out / "timelag_maps.zarr")
    _refused(argv, tmp_path, out / "fits" / "timelag_94_335.fits", capsys, more=1)
    assert main([*argv, "--overwrite"]) == 0
    maps = xr.open_zarr(out / "timelag_maps.zarr").compute()
    assert (maps["timelag"].values != 0).any()  # all lags allowed now: the product changed
    with fits.open(out / "fits" / "timelag_94_335.fits") as hdul:
        np.testing.assert_array_equal(hdul[0].data, maps["timelag"].sel(pair="94-335").values)


def test_dre_models_refuses_then_replaces(tmp_path, capsys, no_compute):
    dest = tmp_path / "models.fits"
    axes = ["--ax-ratio", "0.5", "0.1", "1", "--angle", "0", "15", "1", "--log-r", "0", "0.1", "2"]
    assert main(["dre", "models", str(dest), *axes, "--boxsize", "16"]) == 0
    assert fits.getdata(dest).shape[-2] == 16
    _refused(["dre", "models", str(dest), *axes, "--boxsize", "20"], tmp_path, dest, capsys)
    assert main(["dre", "models", str(dest), *axes, "--boxsize", "20", "--overwrite"]) == 0
    assert fits.getdata(dest).shape[-2] == 20


def test_backdrop_fit_refuses_then_replaces(tmp_path, capsys):
    from cloudlab.simulate.ffis import ffi_stack

    ffi_stack(str(tmp_path / "in"), n_frames=2, shape=(96, 96), seed=1, ccd=1)
    out = tmp_path / "out"
    argv = ["backdrop", "fit", "--in-dir", str(tmp_path / "in"), "--out-dir", str(out),
            "--npoly", "2", "--nrad", "2"]  # fmt: skip
    assert main([*argv, "--nknots", "6"]) == 0
    product = out / "tessbackdrop_sector1_camera1_ccd1.fits"
    before = product.read_bytes()
    _refused([*argv, "--nknots", "8"], tmp_path, product, capsys)
    assert main([*argv, "--nknots", "8", "--overwrite"]) == 0
    assert product.read_bytes() != before  # refitted with 8 knots


def test_cutouts_refuse_then_replace(tmp_path, capsys):
    from cloudlab.simulate import tess_sector

    cubes = str(tmp_path / "cubes")
    sim = tess_sector(cubes, ccd=1, n_frames=4, shape=(64, 64), ffis=False, seed=2)
    ra, dec = sim.wcs.all_pix2world([[30.0, 30.0]], 0).T
    catalog = tmp_path / "catalog.csv"
    pd.DataFrame({"ticid": [7], "ra": ra, "dec": dec}).to_csv(catalog, index=False)
    out = tmp_path / "tpfs"
    argv = ["cutouts", "--catalog", str(catalog), "--cube", sim.cube_url, "--out", str(out)]
    assert main([*argv, "--size", "5"]) == 0
    (product,) = out.glob("*_tpf.fits")
    assert product.name == "tic7_s0055-1-1_5x5_tpf.fits"
    _refused([*argv, "--size", "5"], tmp_path, product, capsys)
    os.utime(product, ns=(0, 0))
    assert main([*argv, "--size", "5", "--overwrite"]) == 0
    assert product.stat().st_mtime_ns > 0  # rewritten
    with fits.open(product) as hdul:
        assert hdul[1].data["FLUX"].shape == (4, 5, 5)
