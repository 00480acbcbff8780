"""``cloudlab backdrop fit|apply`` end to end on a small simulated stack."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pytest
from astropy.io import fits

from cloudlab import backdrop
from cloudlab.commands import backdrop as command
from cloudlab.errors import FITSFormatError, InputError
from cloudlab.io.tess import open_ffis
from cloudlab.simulate.ffis import ffi_stack


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cloudlab")
    command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _write_tpf(path, flux, times, corner_row, corner_column, ccd):
    """A minimal astrocut-style TPF: FLUX is table column 5, so its corner keys are *5P."""
    n_t, n_r, n_c = flux.shape
    fmt = f"{n_r * n_c}E"
    cols = [
        fits.Column("TIME", "D", array=times),
        fits.Column("TIMECORR", "E", array=np.zeros(n_t)),
        fits.Column("CADENCENO", "J", array=np.arange(n_t)),
        fits.Column("RAW_CNTS", fmt, dim=f"({n_c},{n_r})", array=flux),
        fits.Column("FLUX", fmt, dim=f"({n_c},{n_r})", array=flux),
        fits.Column("FLUX_BKG", fmt, dim=f"({n_c},{n_r})", array=np.zeros_like(flux)),
    ]
    table = fits.BinTableHDU.from_columns(cols)
    table.header["1CRV5P"] = corner_column + 1
    table.header["2CRV5P"] = corner_row + 1
    primary = fits.PrimaryHDU()
    primary.header["CCD"] = ccd
    fits.HDUList([primary, table]).writeto(path)


def test_fit_then_apply(tmp_path, capsys):
    truth = ffi_stack(str(tmp_path / "in"), n_frames=3, shape=(128, 128), seed=4, ccd=1)
    out = tmp_path / "out"
    code = _run(
        ["backdrop", "fit", "--in-dir", str(tmp_path / "in"), "--out-dir", str(out),
         "--nknots", "10", "--format", "both", "--masks", "--max-frames", "3", "--verbose"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "3 frames of sector 1 camera 1 ccd 1" in printed
    weights_url = out / "tessbackdrop_sector1_camera1_ccd1.fits"
    assert weights_url.exists() and (out / "tessbackdrop_sector1_camera1_ccd1.zarr").exists()
    with fits.open(out / "tessbackdrop_masks_sector1_camera1_ccd1.fits") as hdul:
        assert hdul["STARMASK"].data.shape == (128, 128)

    corner_row, corner_column = 30, 44 + 50  # 0-based CCD pixel of TPF pixel [0, 0]
    frames = np.stack([fits.getdata(u, 1) for u in truth.urls])
    flux = frames[:, corner_row : corner_row + 9, corner_column : corner_column + 11]
    times = np.append(truth.times, truth.times[-1] + 1.0)  # the last cadence has no frame
    flux = np.concatenate([flux, flux[-1:]])
    tpf = tmp_path / "tess-s0001-1-1_10_10_9x11_astrocut.fits"
    _write_tpf(tpf, flux.astype(np.float32), times, corner_row, corner_column, ccd=1)
    code = _run(
        ["backdrop", "apply", "--weights", str(weights_url), "--tpf", str(tpf),
         "--out-dir", str(tmp_path / "corrected")]
    )  # fmt: skip
    assert code == 0
    corrected = tmp_path / "corrected" / "tess-s0001-1-1_10_10_9x11_astrocut_bkgsub.fits"
    with fits.open(corrected) as hdul:
        new_flux = hdul[1].data["FLUX"]
        bkg = hdul[1].data["FLUX_BKG"]
        assert hdul[1].header["BKGMODEL"] == "cloudlab backdrop"
    weights = backdrop.load(str(weights_url))
    expect = backdrop.evaluate(weights, np.arange(30, 39), np.arange(50, 61)).values
    np.testing.assert_allclose(bkg[:3], expect, atol=1e-3)
    np.testing.assert_allclose(new_flux[:3], flux[:3] - expect, atol=1e-3)
    assert np.isnan(new_flux[3]).all()
    true = np.array([truth.background(k, np.arange(30, 39), np.arange(50, 61)) for k in range(3)])
    assert np.median(np.abs(bkg[:3] - true)) < 0.5


def test_apply_reports_bad_tpfs(tmp_path, capsys):
    truth = ffi_stack(str(tmp_path / "in"), n_frames=2, shape=(64, 64), seed=1, ccd=3)
    out = tmp_path / "out"
    assert _run(["backdrop", "fit", "--in-dir", str(tmp_path / "in"), "--out-dir", str(out),
                 "--nknots", "6"]) == 0  # fmt: skip
    bad = tmp_path / "bad.fits"
    fits.PrimaryHDU().writeto(bad)
    other_ccd = tmp_path / "other.fits"
    _write_tpf(other_ccd, np.ones((2, 3, 3), np.float32), truth.times, 5, 50, ccd=1)
    code = _run(
        ["backdrop", "apply", "--weights", str(out / "tessbackdrop_sector1_camera1_ccd3.fits"),
         "--tpf", str(bad), str(other_ccd), "--out-dir", str(tmp_path / "c")]
    )  # fmt: skip
    assert code == 1
    printed = capsys.readouterr().out
    assert "0 of 2 TPFs corrected" in printed


def test_fit_refuses_an_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no files match"):
        _run(["backdrop", "fit", "--in-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")])


def test_correct_tpf_subtracts_the_evaluated_background(tmp_path):
    """The library call behind ``backdrop apply``: bytes in, corrected bytes out."""
    truth = ffi_stack(str(tmp_path / "in"), n_frames=2, shape=(64, 64), seed=2, ccd=2)
    weights = backdrop.fit(open_ffis(f"{tmp_path / 'in'}/*_ffic.fits*"), nknots=6).compute()
    corner_row, corner_column = 10, 44 + 20
    frames = np.stack([fits.getdata(u, 1) for u in truth.urls])
    flux = frames[:, corner_row : corner_row + 5, corner_column : corner_column + 4]
    tpf = tmp_path / "tpf.fits"
    _write_tpf(tpf, flux.astype(np.float32), truth.times, corner_row, corner_column, ccd=2)
    corrected = backdrop.correct_tpf(tpf.read_bytes(), weights)
    with fits.open(io.BytesIO(corrected)) as hdul:
        expect = backdrop.evaluate(weights, np.arange(10, 15), np.arange(20, 24)).values
        np.testing.assert_allclose(hdul[1].data["FLUX_BKG"], expect, atol=1e-3)
        np.testing.assert_allclose(hdul[1].data["FLUX"], flux - expect, atol=1e-3)
    with pytest.raises(FITSFormatError, match="odd.fits: not a target pixel file"):
        backdrop.correct_tpf(_primary_only(), weights, name="odd.fits")
    other = tmp_path / "other.fits"
    _write_tpf(other, flux.astype(np.float32), truth.times, corner_row, corner_column, ccd=4)
    with pytest.raises(InputError, match="from CCD 4, weights fitted on CCD 2"):
        backdrop.correct_tpf(other.read_bytes(), weights)


def _primary_only() -> bytes:
    out = io.BytesIO()
    fits.PrimaryHDU().writeto(out)
    return out.getvalue()


def test_detector_facts_match_the_simulated_ffis_and_the_tpf_corners(tmp_path):
    """One module holds the TESS geometry: the simulated FFIs and the TPF conversions agree."""
    from cloudlab import tess_detector as det

    columns = det.LEADING_COLUMNS + det.SCIENCE_SIZE + det.TRAILING_COLUMNS
    assert det.FULL_SHAPE == (det.SCIENCE_SIZE + det.COLLATERAL_ROWS, columns)
    assert det.SCIENCE_KEYWORDS == {"SCIROWS": 1, "SCIROWE": 2048, "SCCSA": 45, "SCCED": 2092}
    assert det.BAD_QUALITY_BITS == 2048 | 175
    assert backdrop.science_to_ccd(0, 0) == (1, 45)
    science = backdrop.ccd_to_science([1, 2048], [45, 2092])
    np.testing.assert_array_equal(science, [[0, 2047], [0, 2047]])
    truth = ffi_stack(str(tmp_path), n_frames=1, shape=(32, 40), seed=0, bad_frames=[0])
    with fits.open(truth.urls[0]) as hdul:
        header = hdul[1].header
        assert hdul[1].data.shape == (32 + det.COLLATERAL_ROWS, det.LEADING_COLUMNS + 40 + 44)
        assert (header["SCIROWS"], header["SCCSA"]) == (det.SCIROWS, det.SCCSA)
        assert header["VROWE"] == 32 + det.COLLATERAL_ROWS
        assert header["DQUALITY"] == det.QUALITY_DESAT
