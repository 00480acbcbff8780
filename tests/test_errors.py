"""One failure model: the error hierarchy, messages that name the culprit, per-item status and
reason, astropy-parseable units, and the CLI's one-line errors."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import astropy.units as u
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from astropy.units import cds

import cloudlab
from cloudlab import errors
from cloudlab.astronet import views, views_for
from cloudlab.astronet.views import STATUS_CODES, batch_views
from cloudlab.cutouts import locate
from cloudlab.cutouts.locate import OFF_SILICON_STATUS
from cloudlab.dre import fit
from cloudlab.dre.fit import FLAG_REASONS, MODEL_DIMS, flag_status, read_psf
from cloudlab.dre.tools import ToolError, config_file, find_tool
from cloudlab.errors import REASON, STATUS, CloudlabError, ExternalToolError, InputError
from cloudlab.io.catalogs import add_coordinates, read_coordinate_table, read_tce
from cloudlab.simulate import lightcurves

ROOT = Path(__file__).resolve().parents[1]
CLOUDLAB = Path(sys.executable).parent / "cloudlab"
TCE_CSV = (
    "# a comment\nticid,tce_period,tce_time0bt,tce_depth,tce_prad,tce_slogg\n"
    "1,2.5,1500.1,800,1.2,4.4\n"
)


def _public_modules():
    for info in pkgutil.walk_packages(cloudlab.__path__, "cloudlab."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        try:
            yield importlib.import_module(info.name)
        except ImportError:  # an optional extra (TensorFlow, numba, ...) is not installed
            continue


def test_every_public_error_class_derives_from_cloudlab_error():
    found = set()
    for module in _public_modules():
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__.startswith("cloudlab")
                and not name.startswith("_")
            ):
                found.add(obj)
                assert issubclass(obj, CloudlabError), f"{module.__name__}.{name}"
    names = {cls.__name__ for cls in found}
    assert {"InputError", "SparseLightCurveError", "SplineError", "ExternalToolError"} <= names
    assert ToolError is ExternalToolError
    assert issubclass(errors.HDUNotFoundError, KeyError)
    assert issubclass(errors.StorageError, OSError)


def _light_curve():
    time = np.arange(0.0, 27.0, 0.02)
    flux = 1 - 0.01 * (np.abs(((time - 1.0 + 1.5) % 3.0) - 1.5) < 0.05)
    return time, flux


def test_bad_kind_and_bad_period_name_the_parameter():
    time, flux = _light_curve()
    with pytest.raises(InputError, match=r"kind='nope'"):
        views_for(time, flux, 3.0, 1.0, 0.1, kind="nope")
    with pytest.raises(InputError, match=r"period=-3.0.*period must be positive"):
        views_for(time, flux, -3.0, 1.0, 0.1)
    with pytest.raises(InputError, match=r"engine='gpu'"):
        batch_views(time[None], flux[None], [3.0], [1.0], [0.1], engine="gpu")


def test_bad_catalog_row_and_column_are_named(tmp_path):
    table = tmp_path / "coords.csv"
    table.write_text("ticid,ra,dec\n11,10.0,-1.0\n22,ten,-2.0\n")
    with pytest.raises(InputError, match=r"coords.csv: column 'ra', row 1: 'ten' is not a number"):
        read_coordinate_table(table)
    table.write_text("ticid,right_ascension,dec\n11,10.0,-1.0\n")
    with pytest.raises(InputError, match=r"coords.csv: no RA column.*right_ascension"):
        read_coordinate_table(table)
    tces = tmp_path / "tces.csv"
    tces.write_text("name,period\n1,2\n")  # "tic" is a TIC column name people use
    with pytest.raises(InputError, match=r"tces.csv: no 'ticid' column"):
        read_tce(tces)


def test_bad_on_error_value_is_refused_before_any_work():
    targets = pd.DataFrame({"ticid": [1], "ra": [1.0], "dec": [0.0]})
    with pytest.raises(InputError, match=r"on_error='ignore'"):
        locate(targets, sector=55, on_error="ignore")
    with pytest.raises(InputError, match=r"on_error='continue'"):
        add_coordinates(targets, on_error="continue")


def test_missing_tool_and_config_name_what_to_install():
    with pytest.raises(ExternalToolError, match=r"no-such-tool.*apt-get install some-package"):
        find_tool(("no-such-tool",), "some-package")
    with pytest.raises(InputError, match=r"'nothere.sex'.*default.sex"):
        config_file("nothere.sex")


def test_bad_psf_names_the_problem():
    with pytest.raises(InputError, match=r"PSF array: PSF contains NaN"):
        read_psf(np.full((3, 3), np.nan))
    with pytest.raises(InputError, match=r"larger than the 4-px stamps"):
        read_psf(np.ones((5, 5)), boxsize=4)


def test_views_report_status_and_reason_per_tce():
    lc, tces = lightcurves(2, 1, 1, seed=3)
    tces = tces.copy()
    tces.loc[1, "Period"] = -1.0
    extra = tces.iloc[[0]].assign(tic_id=999_999)
    tces = pd.concat([tces, extra], ignore_index=True)
    ds = views(lc, tces, batch_size=2).compute()
    status, reason = ds[STATUS].values, ds[REASON].values
    assert status[1] == "bad_ephemeris" and "period" in reason[1]
    assert status[-1] == "no_lightcurve" and "999999" in reason[-1]
    assert set(status) <= set(STATUS_CODES)
    np.testing.assert_array_equal(ds["valid"].values, status == "ok")
    assert all((r == "") == (s == "ok") for s, r in zip(status, reason, strict=True))


def test_view_status_codes_of_sparse_and_empty_light_curves():
    time, flux = _light_curve()
    out = batch_views(
        np.stack([time, time, np.full_like(time, np.nan)]),
        np.stack([flux, np.where(time < 0.3, flux, np.nan), flux]),
        [3.0, 3.0, 3.0],
        [1.0, 1.0, 1.0],
        [0.1, 0.1, 0.1],
        engine="numpy",
    )
    assert out[STATUS].tolist() == ["ok", "sparse", "empty"]
    assert out[REASON][0] == "" and "coverage" in out[REASON][1] and "empty" in out[REASON][2]


def test_dre_status_is_derived_from_the_flag_bits():
    status, reason = flag_status(np.array([0, 1, 2, 3, 4], np.uint8))
    assert status.tolist() == ["ok", "nan_in_cut", "empty_mask", "nan_in_cut", "chi_all_nan"]
    assert reason[0] == "" and reason[1] == FLAG_REASONS[1]
    assert reason[3] == f"{FLAG_REASONS[1]}; {FLAG_REASONS[2]}"


def test_dre_fit_carries_status_and_reason():
    rng = np.random.default_rng(0)
    axes = {"index": [1.0], "ax_ratio": [1.0], "angle": [0.0], "log_r": [0.1, 0.2]}
    models = xr.DataArray(
        rng.uniform(1, 2, (1, 1, 1, 2, 8, 8)).astype(np.float32),
        dims=(*MODEL_DIMS, "y", "x"),
        coords=axes,
    )
    seg = np.ones((3, 8, 8), bool)
    seg[1] = False
    cuts = xr.Dataset(
        {
            "obj": (("galaxy", "y", "x"), rng.uniform(1, 2, (3, 8, 8)).astype(np.float32)),
            "seg": (("galaxy", "y", "x"), seg),
            "rms": (("galaxy", "y", "x"), np.ones((3, 8, 8), np.float32)),
            "flag": ("galaxy", np.array([1, 0, 0], np.uint8)),
        }
    )
    result = fit(cuts, models, None).compute()
    assert result["flag"].values.tolist() == [1, 2, 0]
    assert result[STATUS].values.tolist() == ["nan_in_cut", "empty_mask", "ok"]
    assert result[REASON].values.tolist() == [FLAG_REASONS[1], FLAG_REASONS[2], ""]


def test_locate_reports_status_and_reason_off_silicon():
    targets = pd.DataFrame({"ticid": [1, 2], "ra": [np.nan, 100.0], "dec": [0.0, 80.0]})
    with pytest.raises(InputError, match=r"TIC 1;.*on_error='skip'"):
        locate(targets, sector=55)
    res = locate(targets, sector=55, on_error="skip")
    off = res.attrs["off_silicon"].to_frame().set_index("ticid")
    assert len(res) == 0
    assert off.loc[1, STATUS] == "bad_coordinates" and "ra/dec" in off.loc[1, REASON]
    assert off.loc[2, STATUS] == "off_silicon"
    assert set(off[STATUS]) <= set(OFF_SILICON_STATUS)


def _all_units(obj) -> list[str]:
    if isinstance(obj, pd.DataFrame):
        return list(obj.attrs.get("units", {}).values())
    found = [obj.attrs["units"]] if "units" in obj.attrs else []
    return found + [v.attrs["units"] for v in obj.variables.values() if "units" in v.attrs]


def test_every_unit_string_parses_with_astropy(tmp_path):
    path = tmp_path / "tces.csv"
    path.write_text(TCE_CSV)
    df = read_tce(path)
    assert df.attrs["time_systems"]["tce_time0bt"].startswith("BTJD")
    lc, tces = lightcurves(1, 1, 0, seed=1)
    ds = views(lc, tces)
    units = _all_units(df) + _all_units(ds)
    assert {"d", "ppm", "earthRad", "dex(cm / s2)"} <= set(units)
    with u.add_enabled_units([cds.ppm]):  # "ppm" is one of astropy's CDS units
        for text in units:
            u.Unit(text)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [str(CLOUDLAB), *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_cli_prints_one_line_for_an_os_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = _run("simulate", "tess", str(blocker / "sector"), "--frames", "2", "--shape", "8x8")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cloudlab simulate: error: ")
    assert "Traceback" not in result.stderr
    missing = tmp_path / "missing.csv"
    result = _run("cutouts", "--catalog", str(missing), "--sector", "55", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("cloudlab cutouts: error: ")
    assert "missing.csv" in result.stderr and "Traceback" not in result.stderr


def test_cli_prints_one_line_for_a_cloudlab_error_and_a_traceback_with_debug(tmp_path):
    args = ("simulate", "aia", str(tmp_path / "aia"), "--channels", "171", "--frames", "1")
    result = _run(*args)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "cloudlab simulate: error: n_frames=1: simulate at least 2 frames"
    )
    result = _run("--debug", *args)
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "InputError: n_frames=1" in result.stderr
