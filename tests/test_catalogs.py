"""TCE catalog reader, filters and target coordinates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cloudlab.io.catalogs import (
    add_coordinates,
    filter_tces,
    one_per_tic,
    read_coordinate_table,
    read_tce,
)

S55 = (
    Path(__file__).resolve().parents[2]
    / "shared/data/tess/tce/tess2022217141447-s0055-s0055_dvr-tcestats.csv"
)
TIKE_13 = [76872824, 117918110, 164781040, 193545440, 219739349, 271547901, 1102441603,
           1718312312, 1882909457, 1943324398, 1946361753, 1947381728, 1951845946]  # fmt: skip

SMALL = """#Select Statistics Per TCE From the Data Validation XML Files
#Mission = TESS
#Search = tess2099000000000
#Sectors = s0060-s0060
#Created Date = 2099-01-01
#
tceid,ticid,tce_plnt_num,sectors,tce_period,tce_time0bt,tce_duration,tce_depth,tce_model_snr,tce_sectors
00000000011-01,11,1,s0060,1.5,3000.1,2.0,500.0,9.0,0000001
00000000011-02,11,2,s0060,3.0,3001.1,3.0,2000.0,20.0,0000001
00000000022-01,22,1,s0060,10.0,3002.0,5.0,1500000.0,50.0,0000001
00000000033-01,33,1,s0060,0.5,3000.5,1.0,800.0,7.5,0000001
"""


@pytest.fixture()
def small_csv(tmp_path):
    path = tmp_path / "small_dvr-tcestats.csv"
    path.write_text(SMALL)
    return path


@pytest.mark.skipif(not S55.exists(), reason=f"real S55 TCE file not found at {S55}")
def test_real_s55_file():
    df = read_tce(S55)
    assert df.shape == (2294, 123)
    assert df["ticid"].nunique() == 1601
    assert df["tceid"].iloc[0] == "00010987644-01"
    assert df["tce_sectors"].str.len().eq(56).all() and df["tce_sectors"].iloc[0].endswith("01")
    assert ((df["tce_time0"] - df["tce_time0bt"]) == 2457000.0).all()
    assert df.attrs["units"]["tce_depth"] == "ppm"
    assert df.attrs["units"]["tce_duration"] == "h"
    assert df.attrs["comments"]["Sectors"] == "s0055-s0055"
    targets = one_per_tic(filter_tces(df, depth=(1e6, None)))
    assert sorted(targets["ticid"]) == TIKE_13


def test_small_file_types_and_comments(small_csv):
    df = read_tce(small_csv)
    assert len(df) == 4 and df["tceid"].iloc[0] == "00000000011-01"
    assert df["tce_sectors"].iloc[0] == "0000001"
    assert df["ticid"].dtype == np.int64
    assert df.attrs["comments"]["Search"] == "tess2099000000000"


def test_cr_line_endings_and_old_names(tmp_path):
    header = "ticid,transitDepthPpm,orbitalPeriodDays,transitDurationHours"
    text = f"#c\r#d\r{header}\r5,100,2.5,3\r6,7,1,1\r"
    path = tmp_path / "old.csv"
    path.write_bytes(text.encode())
    df = read_tce(path)
    assert list(df.columns) == ["ticid", "tce_depth", "tce_period", "tce_duration"]
    assert df["tce_depth"].tolist() == [100, 7]


def test_bad_files(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="x.csv.*no 'ticid'"):
        read_tce(path)
    empty = tmp_path / "empty.csv"
    empty.write_text("#only comments\n")
    with pytest.raises(ValueError, match="empty.csv"):
        read_tce(empty)
    with pytest.raises(FileNotFoundError):
        read_tce(tmp_path / "missing.csv")


def test_filters(small_csv):
    df = read_tce(small_csv)
    assert filter_tces(df, depth=(1e6, None))["ticid"].tolist() == [22]
    assert filter_tces(df, snr=(8.0, 25.0))["ticid"].tolist() == [11, 11]
    assert filter_tces(df, period=(None, 1.5))["ticid"].tolist() == [11, 33]
    assert filter_tces(df, duration=(1.0, 3.0))["tce_plnt_num"].tolist() == [1, 2]
    assert one_per_tic(df)["tce_plnt_num"].tolist() == [1, 1, 1]
    deepest = one_per_tic(df, keep="deepest")
    assert deepest.set_index("ticid").loc[11, "tce_plnt_num"] == 2
    assert filter_tces(df, depth=(1e6, None)).attrs["units"]["tce_depth"] == "ppm"
    with pytest.raises(ValueError, match="keep"):
        one_per_tic(df, keep="last")
    with pytest.raises(ValueError, match="tce_model_snr"):
        filter_tces(df.drop(columns="tce_model_snr"), snr=(1, None))


COORDS = pd.DataFrame({"TIC_ID": [11, 22, 33], "RA": [10.0, 20.0, 30.0], "Dec": [-1.0, -2.0, -3.0]})


def test_coordinates_from_tables(small_csv, tmp_path):
    from astropy.table import Table

    df = one_per_tic(read_tce(small_csv))
    csv = tmp_path / "tic.csv"
    COORDS.to_csv(csv, index=False)
    fits_path = tmp_path / "tic.fits"
    Table.from_pandas(COORDS).write(fits_path)
    parquet = tmp_path / "tic.parquet"
    pytest.importorskip("pyarrow")
    COORDS.to_parquet(parquet)
    for source in (csv, fits_path, parquet):
        table = read_coordinate_table(source)
        assert table.columns.tolist() == ["ticid", "ra", "dec"]
        out = add_coordinates(df, coords=source)
        assert out["ra"].tolist() == [10.0, 20.0, 30.0]
        assert out["dec"].tolist() == [-1.0, -2.0, -3.0]
        assert out["tceid"].tolist() == df["tceid"].tolist()


def test_coordinates_from_columns_and_resolver(small_csv):
    df = one_per_tic(read_tce(small_csv))
    df["ra"] = [1.0, np.nan, 3.0]
    df["dec"] = [4.0, np.nan, 6.0]
    asked = []

    def resolver(ticids):
        asked.extend(ticids)
        return pd.DataFrame({"ticid": [22], "ra": [2.0], "dec": [5.0]})

    out = add_coordinates(df, resolver=resolver)
    assert asked == [22]
    assert out["ra"].tolist() == [1.0, 2.0, 3.0]


def test_missing_coordinates_listed(small_csv):
    df = one_per_tic(read_tce(small_csv))
    with pytest.raises(ValueError, match=r"3 target\(s\): TIC 11, 22, 33"):
        add_coordinates(df)
    partial = pd.DataFrame({"ticid": [22], "ra": [2.0], "dec": [5.0]})
    with pytest.raises(ValueError, match=r"2 target\(s\): TIC 11, 33"):
        add_coordinates(df, coords=partial)


def test_missing_coordinates_skipped_on_request(small_csv):
    df = one_per_tic(read_tce(small_csv))
    partial = pd.DataFrame({"ticid": [22], "ra": [2.0], "dec": [5.0]})
    out = add_coordinates(df, coords=partial, on_error="skip")
    assert out["ticid"].tolist() == [11, 22, 33]
    np.testing.assert_array_equal(out["ra"], [np.nan, 2.0, np.nan])
    with pytest.raises(ValueError, match="on_error='keep'"):
        add_coordinates(df, coords=partial, on_error="keep")
