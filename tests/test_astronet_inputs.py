"""AstroNet on real mistakes and foreign inputs: NaN ephemerides, junk cells, DR24, TF logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cloudlab.astronet import read_tces, views
from cloudlab.cli import main
from cloudlab.errors import InputError
from cloudlab.io.lightcurves import read_lightcurves
from cloudlab.simulate import lightcurves as simulate_lightcurves

CLOUDLAB = Path(sys.executable).with_name("cloudlab")


@pytest.fixture
def catalog(tmp_path):
    """Three simulated planets as QLP files plus their tces.csv."""
    src = tmp_path / "lc"
    simulate_lightcurves(3, 0, 0, dest=str(src), noise=5e-4, seed=21)
    return src


def _edit(src: Path, **cells) -> Path:
    """Rewrite tces.csv with {column: {row: value}} replaced (as text)."""
    table = pd.read_csv(src / "tces.csv", dtype=str, keep_default_na=False)
    for column, rows in cells.items():
        for row, value in rows.items():
            table.loc[row, column] = value
    table.to_csv(src / "tces.csv", index=False)
    return src / "tces.csv"


def test_nan_period_is_a_skipped_row_not_a_vanished_one(catalog, tmp_path, capsys):
    tces = read_tces(str(_edit(catalog, Period={1: ""})))
    assert len(tces) == 3 and np.isnan(tces.loc[1, "Period"])
    lc = read_lightcurves(sorted(str(p) for p in catalog.glob("*.h5")))
    out = views(lc, tces).compute()
    assert out.sizes["tce"] == 3
    assert list(out["status"].values) == ["ok", "bad_ephemeris", "ok"]
    assert "period" in out["reason"].values[1]
    assert np.isnan(out["global_view"].values[1]).all()
    dest = tmp_path / "records"
    args = ["astronet", "views", "--lightcurves", str(catalog / "*.h5"), "--tces",
            str(catalog / "tces.csv"), "--dest", str(dest)]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"skipped TIC {tces.loc[1, 'tic_id']}: " in captured.err
    assert '"skipped": 1' in captured.out


def test_all_tces_skipped_exits_nonzero_and_writes_nothing(catalog, tmp_path, capsys):
    _edit(catalog, Epoc={0: "", 1: "", 2: ""})
    dest = tmp_path / "records"
    args = ["astronet", "views", "--lightcurves", str(catalog / "*.h5"), "--tces",
            str(catalog / "tces.csv"), "--dest", str(dest)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "all 3 TCEs were skipped" in err and "epoch is not finite" in err
    assert not dest.exists()


JUNK = [("Period", "3.2d"), ("tic_id", "TIC x"), ("Epoc", "1326;5"), ("Duration", "two")]


@pytest.mark.parametrize(("column", "value"), JUNK)
def test_non_numeric_cell_names_row_and_column(catalog, column, value):
    path = _edit(catalog, **{column: {2: value}})
    with pytest.raises(InputError, match=rf"row 4 \(data row 2\), column '{column}'") as err:
        read_tces(str(path))
    assert str(path) in str(err.value) and repr(value) in str(err.value)


def test_kepler_dr24_column_names(tmp_path):
    # Kepler-90 (KIC 11442793) h, g and i; DR24 durations are in hours
    dr24 = tmp_path / "dr24.csv"
    dr24.write_text(
        "kepid,tce_plnt_num,tce_period,tce_time0bk,tce_duration,av_training_set\n"
        "11442793,1,331.6,140.5,15.2,PC\n"
        "11442793,2,210.6,113.6,12.5,PC\n"
        "11442793,3,14.44912,2.2,2.704,PC\n"
    )
    tces = read_tces(str(dr24))
    assert list(tces["tic_id"]) == [11442793] * 3
    np.testing.assert_allclose(tces["Period"], [331.6, 210.6, 14.44912])
    np.testing.assert_allclose(tces["Epoc"], [140.5, 113.6, 2.2])
    np.testing.assert_allclose(tces["Duration"], [15.2 / 24, 12.5 / 24, 2.704 / 24])
    assert list(tces["Disposition"]) == ["PC"] * 3


def test_kepler_reader_targets_from_headers_in_the_cli(shared_data, tmp_path, capsys):
    kepler90 = shared_data / "kepler" / "kepler90"
    if not any(kepler90.glob("*.fits")):
        pytest.skip(f"no Kepler-90 files in {kepler90}")
    lc = read_lightcurves(sorted(str(p) for p in kepler90.glob("*.fits")), reader="kepler")
    assert list(lc["target"].values) == [11442793]  # KEPLERID, one target for all quarters
    tces = tmp_path / "dr24.csv"
    tces.write_text(
        "kepid,tce_period,tce_time0bk,tce_duration,av_training_set\n"
        "11442793,14.44912,2.2,2.704,PC\n11442793,14.44912,2.2,2.704,AFP\n"
    )
    dest = tmp_path / "records"
    args = ["astronet", "views", "--lightcurves", str(kepler90 / "*.fits"), "--reader", "kepler",
            "--kind", "kepler", "--tces", str(tces), "--dest", str(dest)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert '"skipped": 0' in capsys.readouterr().out


def test_tensorflow_startup_lines_silenced_unless_debug(catalog, tmp_path):
    dest = tmp_path / "records"
    assert main(["astronet", "views", "--lightcurves", str(catalog / "*.h5"), "--tces",
                 str(catalog / "tces.csv"), "--dest", str(dest)]) == 0  # fmt: skip
    missing = tmp_path / "missing.keras"
    command = ["astronet", "evaluate", "--data", str(dest / "*"), "--checkpoints", str(missing)]
    # a user who exported no TF_CPP_MIN_LOG_LEVEL (the in-process run above set it here)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run(
        [str(CLOUDLAB), *command], capture_output=True, text=True, timeout=300, env=env
    )
    assert quiet.returncode == 2
    assert quiet.stderr.splitlines() == [
        f"cloudlab astronet: error: AstroNet checkpoint not found: {missing}"
    ]
    plain = subprocess.run(
        [sys.executable, "-c", "import keras"], capture_output=True, text=True, timeout=300, env=env
    )
    loud = subprocess.run(
        [str(CLOUDLAB), "--debug", *command], capture_output=True, text=True, timeout=300, env=env
    )
    assert loud.returncode != 0 and "Traceback" in loud.stderr
    for line in plain.stderr.splitlines()[:1]:  # TensorFlow's own lines on this machine
        assert line.split("]")[-1] in loud.stderr


def test_tfrecord_flipped_byte_names_shard_and_record(shared_data, tmp_path):
    import struct

    from cloudlab.astronet import read_tfrecords

    shard = shared_data / "astronet" / "triage" / "test-00000-of-00001"
    if not shard.exists():
        pytest.skip(f"no Astronet-Triage test shard at {shard}")
    data = bytearray(shard.read_bytes())
    real = read_tfrecords(str(shard))  # the real shard reads with CRC checks on
    assert real.sizes["tce"] > 100 and real["global_view"].shape[1] == 201
    pos = 0
    for _ in range(5):  # skip records 0..4: length, its CRC, payload, payload CRC
        pos += 12 + struct.unpack_from("<Q", data, pos)[0] + 4
    data[pos + 12 + 40] ^= 0x01  # one bit inside record 5's payload
    damaged = tmp_path / "test-00000-of-00001"
    damaged.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"test-00000-of-00001: .*checksum mismatch at record 5"):
        read_tfrecords(str(damaged))
