"""TESS cutout cubes (astrocut/MAST layout): URLs, headers, per-frame table and WCS.

A cube has HDU 1 = big-endian float32 ``(rows, columns, frames, 2)`` (``[..., 0]`` calibrated
flux in e-/s, ``[..., 1]`` its uncertainty) and HDU 2 = one table row per FFI with that FFI's
ext-1 header cards (TSTART/TSTOP in BTJD, BARYCORR, DQUALITY, the WCS, ...) and FFI_FILE.
:func:`cube_meta` reads everything but the pixels; pixels are read through :mod:`cloudlab.fits`
(``fits.open_hdu(url, 1)`` lazily, ``fits.read_regions`` for batches of cutouts).
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass

import dask.config
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from cloudlab import fits as lfits
from cloudlab.errors import FITSFormatError, InputError
from cloudlab.io.tess_ffi import open_ffis  # re-exported: TESS FFI stacks
from cloudlab.tess_detector import (
    FULL_SHAPE,
    SCIENCE_COLUMN_START,
    SCIENCE_COLUMN_STOP,
    SCIENCE_ROW_START,
    SCIENCE_ROW_STOP,
)

__all__ = [
    "CUBE_BASE",
    "FULL_SCIENCE",
    "CubeMeta",
    "cube_meta",
    "cube_url",
    "cube_wcs_header",
    "open_ffis",
]

CUBE_BASE = "s3://stpubdata/tess/public/mast"
"""MAST's public bucket of SPOC cutout cubes."""

FULL_SCIENCE = {
    "col_start": SCIENCE_COLUMN_START,
    "col_stop": SCIENCE_COLUMN_STOP,
    "row_start": SCIENCE_ROW_START,
    "row_stop": SCIENCE_ROW_STOP,
}
"""0-based science region of a full-size SPOC FFI (columns 45–2092, rows 1–2048, 1-based)."""


def cube_url(sector: int, camera: int, ccd: int, base: str | None = None) -> str:
    """URL of the cutout cube of (sector, camera, CCD) under ``base`` (default MAST's bucket).

    Parameters
    ----------
    sector, camera, ccd : int
    base : str, optional
        Directory URL holding ``tess-s{sector:04d}-{camera}-{ccd}-cube.fits`` files; default the
        dask config value ``cloudlab.tess.cube-base``, else :data:`CUBE_BASE`.

    Returns
    -------
    str
    """
    if not (1 <= int(camera) <= 4 and 1 <= int(ccd) <= 4) or int(sector) < 1:
        raise InputError(
            f"bad sector/camera/ccd: {sector}/{camera}/{ccd}; cameras and CCDs are 1-4, "
            "sectors start at 1"
        )
    base = (base or dask.config.get("cloudlab.tess.cube-base", None) or CUBE_BASE).rstrip("/")
    return f"{base}/tess-s{int(sector):04d}-{int(camera)}-{int(ccd)}-cube.fits"


@dataclass(frozen=True)
class CubeMeta:
    """Everything about a cube except its pixels (read once per cube: headers and HDU 2).

    Attributes
    ----------
    url : str
    data_offset : int
        Byte offset of HDU 1's data.
    n_rows, n_cols, n_frames : int
    tstart, tstop, barycorr : numpy.ndarray
        Per frame (BTJD, BTJD, days).
    quality : numpy.ndarray
        DQUALITY per frame.
    ffi_file : numpy.ndarray
        FFI file name per frame.
    wcs_header : str
        The WCS astrocut uses (see :func:`cube_wcs_header`), as header text.
    wcs_row : int
        Table row the WCS comes from.
    primary_header : str
        The cube's primary header text.
    science : dict
        0-based science region ``col_start``, ``col_stop``, ``row_start``, ``row_stop``.
    sector, camera, ccd : int or None
        From the primary header (camera and CCD also from the WCS row); ``None`` (unknown)
        where the keyword is absent or present without a value. Whatever needs them (a TPF's
        SECTOR card) asks for them then.
    """

    url: str
    data_offset: int
    n_rows: int
    n_cols: int
    n_frames: int
    tstart: np.ndarray
    tstop: np.ndarray
    barycorr: np.ndarray
    quality: np.ndarray
    ffi_file: np.ndarray
    wcs_header: str
    wcs_row: int
    primary_header: str
    science: dict
    sector: int | None
    camera: int | None
    ccd: int | None
    file_size: int | None = None

    @property
    def time(self) -> np.ndarray:
        """Mid-exposure times (BTJD)."""
        return 0.5 * (self.tstart + self.tstop)

    @property
    def wcs(self) -> WCS:
        return _wcs_from_text(self.wcs_header)

    def header(self) -> fits.Header:
        """The WCS header as an astropy Header."""
        return fits.Header.fromstring(self.wcs_header, sep="\n")


@functools.lru_cache(maxsize=64)
def _wcs_from_text(text: str) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(fits.Header.fromstring(text, sep="\n"), relax=True)


def cube_wcs_header(
    table, key: str = "CTYPE2", value: str = "DEC--TAN-SIP"
) -> tuple[fits.Header, int]:
    """The WCS astrocut uses for a cube: the first row at or after ``len(table) // 2`` (wrapping
    to row 0) whose ``CTYPE2`` is ``DEC--TAN-SIP``; NaN values are skipped.

    Parameters
    ----------
    table : astropy.table.Table
        HDU 2 of the cube.

    Returns
    -------
    (astropy.io.fits.Header, int)
        The header built from that row, and the row index.
    """
    n = len(table)
    if key not in table.colnames:
        raise FITSFormatError(f"cube table has no {key} column: no WCS")
    for k in range(n):
        i = (n // 2 + k) % n
        cell = table[key][i]
        cell = cell.decode() if isinstance(cell, bytes) else str(cell)
        if cell.strip() == value:
            break
    else:
        raise FITSFormatError(f"no row of the cube table has {key} = {value!r}: no WCS")
    header = fits.Header()
    row = table[i]
    for name in table.colnames:
        val = row[name]
        if isinstance(val, bytes):
            val = val.decode()
        elif isinstance(val, np.generic):
            val = val.item()
        if not isinstance(val, str) and np.isnan(val):
            continue
        header[name] = val
    return header, i


def _science_region(table, n_rows: int, n_cols: int) -> dict:
    """0-based science region from the SPOC collateral keywords, or the full-size default."""
    names = set(table.colnames)
    if {"SCCSA", "SCCED", "SCIROWE"} <= names:
        row_start = int(table["SCIROWS"][0]) - 1 if "SCIROWS" in names else 0
        return {
            "col_start": int(table["SCCSA"][0]) - 1,
            "col_stop": int(table["SCCED"][0]),
            "row_start": row_start,
            "row_stop": int(table["SCIROWE"][0]),
        }
    if (n_rows, n_cols) == FULL_SHAPE:
        return dict(FULL_SCIENCE)
    return {"col_start": 0, "col_stop": n_cols, "row_start": 0, "row_stop": n_rows}


@functools.lru_cache(maxsize=128)
def _cube_meta_cached(url: str, options_key: str) -> CubeMeta:
    storage_options = json.loads(options_key) or None
    primary = lfits.hdu_info(url, 0, storage_options=storage_options)
    info = lfits.hdu_info(url, 1, storage_options=storage_options)
    if info.kind != "image" or len(info.shape) != 4 or info.shape[3] != 2:
        raise FITSFormatError(
            f"{url}: HDU 1 is not a cutout cube (expected (rows, columns, frames, 2), "
            f"got {info.kind} {info.shape})"
        )
    if info.raw_dtype != np.dtype(">f4"):
        raise FITSFormatError(f"{url}: HDU 1 must be big-endian float32, got {info.raw_dtype}")
    n_rows, n_cols, n_frames, _ = info.shape
    if info.file_size is not None and info.data_offset + info.data_size > info.file_size:
        raise FITSFormatError(f"{url}: truncated cube: data end beyond the end of the file")
    table = lfits.read_table(url, 2, storage_options=storage_options)
    if len(table) != n_frames:
        raise FITSFormatError(f"{url}: HDU 2 has {len(table)} rows for {n_frames} frames")
    for col in ("TSTART", "TSTOP"):
        if col not in table.colnames:
            raise FITSFormatError(f"{url}: HDU 2 lacks the {col} column")
    try:
        wcs_header, wcs_row = cube_wcs_header(table)
    except FITSFormatError as exc:
        raise FITSFormatError(f"{url}: HDU 2: {exc}") from exc

    def column(name, default, dtype):
        if name in table.colnames:
            return np.asarray(table[name]).astype(dtype)
        return np.full(n_frames, default, dtype=dtype)

    ffi = column("FFI_FILE", "", str)
    ph = primary.header

    def number(key: str) -> int | None:
        """The primary header's integer ``key``, else the WCS row's (None when unknown)."""
        value = lfits.header_int(ph, key, f"{url} (primary header)")
        if value is None:
            value = lfits.header_int(wcs_header, key, f"{url} (HDU 2, row {wcs_row})")
        return value

    return CubeMeta(
        url=url,
        data_offset=int(info.data_offset),
        n_rows=int(n_rows),
        n_cols=int(n_cols),
        n_frames=int(n_frames),
        tstart=column("TSTART", np.nan, float),
        tstop=column("TSTOP", np.nan, float),
        barycorr=column("BARYCORR", np.nan, float),
        quality=column("DQUALITY", 0, np.int32),
        ffi_file=np.array([s.strip() for s in ffi]),
        wcs_header=wcs_header.tostring(sep="\n"),
        wcs_row=int(wcs_row),
        primary_header=ph.tostring(sep="\n"),
        science=_science_region(table, n_rows, n_cols),
        sector=lfits.header_int(ph, "SECTOR", f"{url} (primary header)"),
        camera=number("CAMERA"),
        ccd=number("CCD"),
        file_size=info.file_size,
    )


def cube_meta(url: str, *, storage_options: dict | None = None) -> CubeMeta:
    """Headers, per-frame table and WCS of a cube, read once and cached per URL.

    Parameters
    ----------
    url : str
        Cube URL (any fsspec URL or local path).
    storage_options : dict, optional

    Returns
    -------
    CubeMeta

    Raises
    ------
    FileNotFoundError
        The cube does not exist (the message names it).
    FITSFormatError
        Not a cutout cube, truncated, no WCS, or a SECTOR/CAMERA/CCD card whose value is not
        an integer (naming the file and the card); blank ones give ``None``.
    """
    key = json.dumps(storage_options or {}, sort_keys=True, default=str)
    return _cube_meta_cached(str(url), key)
