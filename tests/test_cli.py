"""The cloudlab command line: info and demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dask
import pytest

from cloudlab.cli import main

CLOUDLAB = Path(sys.executable).parent / "cloudlab"


def test_info_reports_versions_cluster_and_gpu(capsys):
    with dask.config.set({"gateway.address": None}):
        assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "dask " in out and "astropy" in out
    assert "connect()     -> embedded LocalCluster" in out
    assert "GPU" in out


def test_info_names_the_configured_gateway(capsys):
    with dask.config.set({"gateway.address": "http://127.0.0.1:9"}):
        assert main(["info"]) == 0
    assert "dask-gateway at http://127.0.0.1:9" in capsys.readouterr().out


def test_every_workflow_has_a_command_group(capsys):
    for group in ("simulate", "cutouts", "timelag", "backdrop", "dre", "astronet", "vet"):
        with pytest.raises(SystemExit) as exit_info:
            main([group, "--help"])
        assert exit_info.value.code == 0
        assert f"cloudlab {group}" in capsys.readouterr().out


def test_demo_runs_end_to_end_as_a_console_script(tmp_path):
    result = subprocess.run(
        [str(CLOUDLAB), "demo", "fits", "--frames", "8", "--dest", str(tmp_path / "sector")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "opened lazily (headers only)" in result.stdout
    assert "frames: 8" in result.stdout
    assert len(list((tmp_path / "sector").glob("*ffic.fits"))) == 8


def test_simulate_kinds_write_what_the_readers_open(tmp_path, capsys):
    from astropy.table import Table

    from cloudlab.astronet.catalog import read_tces
    from cloudlab.io.aia import open_stack
    from cloudlab.io.tess_ffi import open_ffis

    assert main(["simulate", "aia", str(tmp_path / "aia"), "--channels", "171", "--frames", "60",
                 "--cadence", "24"]) == 0  # fmt: skip
    cube = open_stack(str(tmp_path / "aia" / "0171" / "*.fits"))
    assert cube.sizes["time"] == 60 and int(cube["wavelength"]) == 171

    assert main(["simulate", "ffis", str(tmp_path / "ffis"), "--frames", "2",
                 "--shape", "96x100"]) == 0  # fmt: skip
    ffis = open_ffis(str(tmp_path / "ffis" / "*.fits"))
    assert dict(ffis["flux"].sizes) == {"time": 2, "row": 96, "column": 100}

    tile = tmp_path / "tile.fits"
    assert main(["simulate", "galaxies", str(tile), "--galaxies", "3", "--stars", "2"]) == 0
    truth = Table.read(tmp_path / "tile_truth.fits")
    assert len(truth) == 5 and (truth["KIND"] == "galaxy").sum() == 3

    assert main(["simulate", "lightcurves", str(tmp_path / "lc"), "--planets", "2", "--ebs", "1",
                 "--junk", "0"]) == 0  # fmt: skip
    assert len(read_tces(str(tmp_path / "lc" / "tces.csv"), clean=False)) == 3
    assert len(list((tmp_path / "lc").glob("*.h5"))) == 3
