"""Catalogs: the TESS TCE bulk CSV (``*_dvr-tcestats.csv``), filters, and target coordinates.

The TCE file has no target coordinates. :func:`add_coordinates` takes them from ``ra``/``dec``
columns already present, from a TIC coordinate table (CSV, FITS or Parquet) joined on ``ticid``,
or from a resolver function (:func:`resolve_tic_mast`, online only, needs astroquery).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from cloudlab import storage
from cloudlab.errors import InputError, MissingDependencyError, check_on_error

__all__ = [
    "OLD_TCE_NAMES",
    "TCE_TIME_SYSTEMS",
    "TCE_UNITS",
    "add_coordinates",
    "filter_tces",
    "one_per_tic",
    "position_name",
    "read_coordinate_table",
    "read_tce",
    "resolve_tic_mast",
]

TCE_UNITS = {
    "tce_period": "d",
    "tce_time0bt": "d",
    "tce_time0": "d",
    "tce_duration": "h",
    "tce_depth": "ppm",
    "tce_ingress": "h",
    "tce_prad": "earthRad",
    "tce_sma": "AU",
    "tce_eqt": "K",
    "tce_insol": "1361 W / m2",
    "tce_sradius": "solRad",
    "tce_steff": "K",
    "tce_slogg": "dex(cm / s2)",
    "tce_smet": "dex",
    "tce_sdensity": "g cm-3",
    "tce_dicco_mra": "arcsec",
    "tce_dicco_mdec": "arcsec",
    "tce_dicco_msky": "arcsec",
    "tce_ditco_mra": "arcsec",
    "tce_ditco_mdec": "arcsec",
    "tce_ditco_msky": "arcsec",
    "ra": "deg",
    "dec": "deg",
}
"""Units of the TCE columns (inferred from the data: see docs/cutouts.md), as strings that
``astropy.units.Unit`` parses (``"ppm"`` needs astropy's CDS units: ``format="cds"`` or
``astropy.units.cds.enable()``); ``tce_insol`` is in Earth's insolation (1361 W m⁻²)."""

TCE_TIME_SYSTEMS = {"tce_time0bt": "BTJD (BJD - 2457000), TDB", "tce_time0": "BJD, TDB"}
"""Time systems of the TCE epoch columns (their unit is ``"d"``)."""

OLD_TCE_NAMES = {
    "orbitalPeriodDays": "tce_period",
    "transitEpochBtjd": "tce_time0bt",
    "transitDurationHours": "tce_duration",
    "transitDepthPpm": "tce_depth",
    "starRadiusSolarRadii": "tce_sradius",
    "planetNumber": "tce_plnt_num",
    "planetRadiusEarthRadii": "tce_prad",
    "mes": "tce_max_mult_ev",
}
"""Column names of early-sector TCE files mapped to the current ``tce_*`` names."""

_STRING_COLUMNS = {"tceid": str, "tce_sectors": str, "sectors": str}
_TIC_NAMES = ("ticid", "tic_id", "tic", "id", "ticid_int")
_RA_NAMES = ("ra", "ra_deg", "raj2000", "ra_j2000")
_DEC_NAMES = ("dec", "dec_deg", "dej2000", "decj2000", "dec_j2000")


def _text(url: str, storage_options: dict | None) -> str:
    raw = storage.read_bytes(url, storage_options=storage_options)
    # normalise CR-only and CRLF line endings (some team CSVs use CR only)
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").decode("utf-8", errors="replace")


def read_tce(url: str | os.PathLike, *, storage_options: dict | None = None) -> pd.DataFrame:
    """Read a TESS TCE bulk CSV (``*_dvr-tcestats.csv``).

    Parameters
    ----------
    url : str or path
        Local path or any fsspec URL.
    storage_options : dict, optional

    Returns
    -------
    pandas.DataFrame
        One row per TCE, all columns of the file (123 in sector 55); ``tceid``, ``sectors`` and
        ``tce_sectors`` (a bit string) kept as str, ``ticid`` int64. Early-sector column names
        are renamed to the ``tce_*`` ones (:data:`OLD_TCE_NAMES`). ``attrs``: ``units`` (see
        :data:`TCE_UNITS`: period d, time0bt d, duration h, depth ppm), ``time_systems`` (see
        :data:`TCE_TIME_SYSTEMS`: time0bt is BTJD), ``comments`` (the ``#`` header lines as a
        dict), ``source``.

    Raises
    ------
    InputError
        Empty file or no ``ticid`` column (the message names the file).
    """
    url = os.fspath(url)
    text = _text(url, storage_options)
    comments = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].partition("=")
        if sep:
            comments[key.strip()] = value.strip()
    try:
        df = pd.read_csv(io.StringIO(text), comment="#", dtype=_STRING_COLUMNS)
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{url}: empty TCE file; download it again") from exc
    df = df.rename(columns={k: v for k, v in OLD_TCE_NAMES.items() if k in df.columns})
    lower = {str(c).lower(): c for c in df.columns}
    tic = next((lower[n] for n in _TIC_NAMES if n in lower), None)
    if tic is not None:
        df = df.rename(columns={tic: "ticid"})
        df["ticid"] = _ticids(df["ticid"], url)
    else:
        ra = next((lower[n] for n in _RA_NAMES if n in lower), None)
        dec = next((lower[n] for n in _DEC_NAMES if n in lower), None)
        if ra is None or dec is None:
            raise InputError(
                f"{url}: no 'ticid' column (nor tic_id, TIC or ID, any case) and no ra and dec "
                f"(columns: {list(df)[:8]} ...); pass a *_dvr-tcestats.csv bulk file or a CSV "
                "with one of those columns"
            )
        df = df.rename(columns={ra: "ra", dec: "dec"})
        df["ra"], df["dec"] = _numbers(df["ra"], url, float), _numbers(df["dec"], url, float)
        for column in ("ra", "dec"):
            if df[column].isna().any():
                row = df.index[df[column].isna()][0]
                raise InputError(f"{url}: column {column!r}, row {row} is empty; fill it in")
        names = [position_name(r, d) for r, d in zip(df["ra"], df["dec"], strict=True)]
        df.insert(0, "ticid", names)
    df.attrs = {
        "units": {k: v for k, v in TCE_UNITS.items() if k in df.columns},
        "time_systems": {k: v for k, v in TCE_TIME_SYSTEMS.items() if k in df.columns},
        "comments": comments,
        "source": url,
    }
    return df


def position_name(ra: float, dec: float) -> str:
    """Name of a target known only by position, e.g. ``"J123.4567+12.3456"`` (deg)."""
    return f"J{ra:08.4f}{dec:+08.4f}"


def _ticids(column: pd.Series, source: str) -> pd.Series:
    """TIC ids as int64 from numbers or ``"TIC 123"`` strings; InputError naming a bad row."""
    text = column.astype(str).str.strip().str.replace(r"(?i)^tic[\s_-]*", "", regex=True)
    numbers = pd.to_numeric(text.where(column.notna()), errors="coerce")
    bad = numbers.isna() | (numbers != numbers.round()) | (numbers <= 0)
    if bad.any():
        row = column.index[bad.to_numpy()][0]
        value = column[row]
        what = (
            "is empty" if pd.isna(value) or not str(value).strip() else f"{value!r} is not a TIC id"
        )
        raise InputError(
            f"{source}: column {column.name!r}, row {row}: {what}; fix or remove that row "
            "(TIC ids are positive integers, optionally written 'TIC 123')"
        )
    return numbers.astype(np.int64)


def _between(values: pd.Series, bounds: tuple[float | None, float | None] | None) -> pd.Series:
    ok = pd.Series(True, index=values.index)
    if bounds is None:
        return ok
    lo, hi = bounds
    if lo is not None:
        ok &= values > lo
    if hi is not None:
        ok &= values <= hi
    return ok


def filter_tces(
    df: pd.DataFrame,
    *,
    depth: tuple[float | None, float | None] | None = None,
    snr: tuple[float | None, float | None] | None = None,
    period: tuple[float | None, float | None] | None = None,
    duration: tuple[float | None, float | None] | None = None,
) -> pd.DataFrame:
    """Keep TCEs inside ranges ``(low, high]`` (``None`` = open) of depth, SNR, period, duration.

    Parameters
    ----------
    df : pandas.DataFrame
        From :func:`read_tce`.
    depth : (float, float), optional
        ``tce_depth`` in ppm; ``(1e6, None)`` is the TIKE notebook's ``tce_depth > 1e6``.
    snr : (float, float), optional
        ``tce_model_snr``.
    period : (float, float), optional
        ``tce_period`` in days.
    duration : (float, float), optional
        ``tce_duration`` in hours.

    Returns
    -------
    pandas.DataFrame
        The rows kept (attrs preserved).
    """
    keep = pd.Series(True, index=df.index)
    for column, bounds in (
        ("tce_depth", depth),
        ("tce_model_snr", snr),
        ("tce_period", period),
        ("tce_duration", duration),
    ):
        if bounds is not None:
            if column not in df.columns:
                raise InputError(
                    f"filter_tces: the catalog has no {column!r} column; "
                    "drop that filter or read the file with read_tce"
                )
            keep &= _between(df[column], bounds)
    out = df[keep]
    out.attrs = dict(df.attrs)
    return out


def one_per_tic(df: pd.DataFrame, *, keep: str = "first") -> pd.DataFrame:
    """One row per TIC.

    Parameters
    ----------
    df : pandas.DataFrame
    keep : {"first", "deepest", "snr"}
        The first row of each TIC in file order (as the TIKE notebook's ``drop_duplicates``),
        the deepest TCE, or the one with the highest ``tce_model_snr``.

    Returns
    -------
    pandas.DataFrame
    """
    if keep == "first":
        out = df.drop_duplicates("ticid", keep="first")
    elif keep in ("deepest", "snr"):
        column = "tce_depth" if keep == "deepest" else "tce_model_snr"
        order = df.sort_values(column, ascending=False, kind="stable")
        out = order.drop_duplicates("ticid", keep="first").sort_index()
    else:
        raise InputError(f"one_per_tic: keep={keep!r}; use 'first', 'deepest' or 'snr'")
    out.attrs = dict(df.attrs)
    return out


def _pick(columns: Sequence[str], names: Sequence[str], what: str, source: str) -> str:
    lower = {c.lower(): c for c in columns}
    for name in names:
        if name in lower:
            return lower[name]
    raise InputError(
        f"{source}: no {what} column (looked for {', '.join(names)}; has {list(columns)}); "
        "rename the column"
    )


def read_coordinate_table(
    url: str | os.PathLike, *, storage_options: dict | None = None
) -> pd.DataFrame:
    """Read a TIC coordinate table (CSV, FITS or Parquet) as ``ticid``, ``ra``, ``dec``.

    Column names are matched case-insensitively: ``ticid``/``tic_id``/``tic``/``id``,
    ``ra``/``ra_deg``/``raj2000``, ``dec``/``dec_deg``/``dej2000``.

    Parameters
    ----------
    url : str or path
        ``.csv``/``.txt`` (CR, LF or CRLF line ends), ``.fits``/``.fit``, ``.parquet``/``.pq``.
    storage_options : dict, optional

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    InputError
        No TIC id, RA or Dec column, or a row whose values are not numbers (the message names
        the file, the column and the row).
    """
    url = os.fspath(url)
    lower = url.lower()
    if lower.endswith((".parquet", ".pq")):
        df = pd.read_parquet(io.BytesIO(storage.read_bytes(url, storage_options=storage_options)))
    elif lower.endswith((".fits", ".fit", ".fits.gz")):
        from astropy.table import Table

        data = storage.read_bytes(url, storage_options=storage_options)
        table = Table.read(io.BytesIO(data), format="fits")
        names = [n for n in table.colnames if len(table[n].shape) <= 1]
        df = table[names].to_pandas()
    else:
        df = pd.read_csv(io.StringIO(_text(url, storage_options)), comment="#")
    tic = _pick(df.columns, _TIC_NAMES, "TIC id", url)
    ra = _pick(df.columns, _RA_NAMES, "RA", url)
    dec = _pick(df.columns, _DEC_NAMES, "Dec", url)
    out = pd.DataFrame(
        {
            "ticid": _numbers(df[tic], url, np.int64),
            "ra": _numbers(df[ra], url, float),
            "dec": _numbers(df[dec], url, float),
        }
    )
    return out.drop_duplicates("ticid")


def _numbers(column: pd.Series, source: str, dtype: type) -> pd.Series:
    """``column`` as ``dtype``; InputError naming the first row that is not a number."""
    try:
        return column.astype(dtype)
    except (TypeError, ValueError) as exc:
        numeric = pd.to_numeric(column, errors="coerce")
        bad = column[numeric.isna() & column.notna()] if dtype is float else column[numeric.isna()]
        row, value = (bad.index[0], bad.iloc[0]) if len(bad) else ("?", "?")
        raise InputError(
            f"{source}: column {column.name!r}, row {row}: {value!r} is not a number; "
            "fix or remove that row"
        ) from exc


def resolve_tic_mast(ticids: Sequence[int]) -> pd.DataFrame:
    """Coordinates of TIC ids from MAST's TIC (online; needs astroquery).

    Parameters
    ----------
    ticids : sequence of int

    Returns
    -------
    pandas.DataFrame
        ``ticid``, ``ra``, ``dec`` (deg, J2000 at epoch 2000) of the ids MAST knows.
    """
    try:
        from astroquery.mast import Catalogs
    except ImportError as exc:
        raise MissingDependencyError(
            "resolve_tic_mast needs astroquery: pip install astroquery, or pass a coordinate table"
        ) from exc
    ids = [int(t) for t in ticids]
    result = Catalogs.query_criteria(catalog="Tic", ID=ids)
    return pd.DataFrame(
        {
            "ticid": np.asarray(result["ID"]).astype(np.int64),
            "ra": np.asarray(result["ra"], dtype=float),
            "dec": np.asarray(result["dec"], dtype=float),
        }
    )


def add_coordinates(
    df: pd.DataFrame,
    *,
    coords: str | os.PathLike | pd.DataFrame | None = None,
    resolver: Callable[[Sequence[int]], pd.DataFrame] | None = None,
    on_error: str = "raise",
    storage_options: dict | None = None,
) -> pd.DataFrame:
    """Give every target ``ra`` and ``dec`` (deg).

    Sources, in order: ``ra``/``dec`` columns already in ``df`` (kept where finite), then the
    ``coords`` table joined on ``ticid``, then ``resolver`` for the TICs still missing.

    Parameters
    ----------
    df : pandas.DataFrame
        With ``ticid``.
    coords : str, path or pandas.DataFrame, optional
        A TIC coordinate table (see :func:`read_coordinate_table`) or a DataFrame with
        ``ticid``, ``ra``, ``dec``.
    resolver : callable, optional
        ``resolver(ticids) -> DataFrame(ticid, ra, dec)``, e.g. :func:`resolve_tic_mast`.
    on_error : {"raise", "skip"}
        What to do with targets that still have no coordinates: raise, or keep them with NaN
        ``ra``/``dec`` (:func:`cloudlab.cutouts.locate` with ``on_error="skip"`` then reports
        them with status ``"no_coordinates"``).
    storage_options : dict, optional

    Returns
    -------
    pandas.DataFrame
        ``df`` with float ``ra`` and ``dec`` columns, same rows and order.

    Raises
    ------
    InputError
        No ``ticid`` column, a bad ``on_error``, or (``on_error="raise"``) targets that still
        have no (finite) coordinates; the message lists their TIC ids.
    """
    check_on_error(on_error)
    if "ticid" not in df.columns:
        raise InputError(
            f"add_coordinates: the targets have no 'ticid' column (columns: {list(df.columns)})"
        )
    out = df.copy()
    out.attrs = dict(df.attrs)
    ra = out["ra"].astype(float) if "ra" in out.columns else pd.Series(np.nan, index=out.index)
    dec = out["dec"].astype(float) if "dec" in out.columns else pd.Series(np.nan, index=out.index)

    def fill(table: pd.DataFrame) -> None:
        lookup = table.drop_duplicates("ticid").set_index("ticid")
        missing = ~(np.isfinite(ra) & np.isfinite(dec))
        ids = out.loc[missing, "ticid"]
        ra.loc[missing] = ids.map(lookup["ra"]).astype(float).to_numpy()
        dec.loc[missing] = ids.map(lookup["dec"]).astype(float).to_numpy()

    if coords is not None:
        table = (
            coords
            if isinstance(coords, pd.DataFrame)
            else read_coordinate_table(coords, storage_options=storage_options)
        )
        fill(table)
    missing = ~(np.isfinite(ra) & np.isfinite(dec))
    if resolver is not None and missing.any():
        fill(resolver(sorted(set(out.loc[missing, "ticid"].tolist()))))
    out["ra"], out["dec"] = ra, dec
    bad = out.loc[~(np.isfinite(ra) & np.isfinite(dec)), "ticid"].tolist()
    if bad and on_error == "raise":
        shown = ", ".join(str(t) for t in bad[:20])
        more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise InputError(
            f"no coordinates for {len(bad)} target(s): TIC {shown}{more}; give ra and dec "
            "columns in the catalog, a coordinate table with ticid, ra, dec (--coords / "
            "coords=), resolve them at MAST (--resolve / resolver=resolve_tic_mast, online), "
            "or skip them (on_error='skip')"
        )
    return out
