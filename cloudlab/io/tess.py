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
from cloudlab import storage
from cloudlab.errors import FITSFormatError, InputError
from cloudlab.fits.tables import map_files
from cloudlab.io.tess_ffi import (
    _frame_hdus,
    open_ffis,  # re-exported: TESS FFI stacks
)
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
    "ffi_cube_meta",
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
    if key not in table.colnames:
        raise FITSFormatError(f"cube table has no {key} column: no WCS")
    i = _wcs_row(table[key], value)
    if i is None:
        raise FITSFormatError(f"no row of the cube table has {key} = {value!r}: no WCS")
    row = table[i]
    return _header_from((name, row[name]) for name in table.colnames), i


def _wcs_row(values, value: str = "DEC--TAN-SIP") -> int | None:
    """astrocut's choice of WCS row: the first at or after ``len(values) // 2`` (wrapping to
    row 0) whose value (``CTYPE2``) is ``value``; None when there is none."""
    n = len(values)
    for k in range(n):
        i = (n // 2 + k) % n
        cell = values[i]
        cell = cell.decode() if isinstance(cell, bytes) else str(cell)
        if cell.strip() == value:
            return i
    return None


def _header_from(items) -> fits.Header:
    """A header of ``(keyword, value)`` pairs (the first of repeated keywords), bytes decoded,
    NaN values left out."""
    header = fits.Header()
    for name, val in items:
        if isinstance(val, bytes):
            val = val.decode()
        elif isinstance(val, np.generic):
            val = val.item()
        if name in header or (isinstance(val, float) and np.isnan(val)):
            continue
        header[name] = val
    return header


def _science_region(first: dict, n_rows: int, n_cols: int) -> dict:
    """0-based science region from the SPOC collateral keywords of the first frame's header
    (a cube table's first row), or the full-size default."""
    if {"SCCSA", "SCCED", "SCIROWE"} <= first.keys():
        row_start = int(first["SCIROWS"]) - 1 if "SCIROWS" in first else 0
        return {
            "col_start": int(first["SCCSA"]) - 1,
            "col_stop": int(first["SCCED"]),
            "row_start": row_start,
            "row_stop": int(first["SCIROWE"]),
        }
    if (n_rows, n_cols) == FULL_SHAPE:
        return dict(FULL_SCIENCE)
    return {"col_start": 0, "col_stop": n_cols, "row_start": 0, "row_stop": n_rows}


_SCIENCE_KEYS = ("SCCSA", "SCCED", "SCIROWS", "SCIROWE")


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
        science=_science_region(
            {k: table[k][0] for k in _SCIENCE_KEYS if k in table.colnames and len(table)},
            n_rows,
            n_cols,
        ),
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


def _ffi_headers(
    found: list[tuple[str, dict | None]], storage_options: dict | None
) -> list[tuple[str, lfits.HDUInfo, lfits.HDUInfo, lfits.HDUInfo | None]]:
    """Primary, image and uncertainty header of every FFI: one walk (two requests) per file
    (:func:`cloudlab.fits.tables.map_files`: in threads where the reads wait on storage)."""

    def one(item: tuple[str, dict | None]):
        url, file_info = item
        primary, image, err = _frame_hdus(url, storage_options, file_info)
        if image.kind != "image" or len(image.shape) != 2:
            raise FITSFormatError(
                f"{url}: HDU 1 is not a 2-D image (kind {image.kind}, shape {image.shape}); "
                "give calibrated FFIs (*_ffic.fits)"
            )
        return url, primary, image, err

    return map_files(one, found, remote_threads=32)


def _load_header_index(
    index: str, found: list[tuple[str, dict | None]], storage_options: dict | None
) -> int:
    """Put the FFI headers of a header index into the header cache (those of files unchanged
    since it was written); the number of HDUs taken from it."""
    import io

    import pandas as pd

    try:
        data = storage.read_bytes(index, storage_options=storage_options)
    except FileNotFoundError:
        return 0
    try:
        records = pd.read_parquet(io.BytesIO(data)).to_dict("records")
    except (OSError, ValueError) as exc:  # a damaged cache is rebuilt, not fatal
        warnings.warn(f"{index}: unreadable FFI header index ({exc}); rebuilding it", stacklevel=3)
        return 0
    listed = {url: info for url, info in found if info is not None}
    return lfits.cache_records(records, listed, storage_options=storage_options)


def _write_header_index(index: str, rows: list, storage_options: dict | None) -> None:
    import io

    import pandas as pd

    infos = [h for _, *hdus in rows for h in hdus if h is not None]
    buf = io.BytesIO()
    pd.DataFrame(lfits.hdu_records(infos)).to_parquet(buf, index=False)
    storage.write_bytes(index, buf.getvalue(), storage_options=storage_options)


def ffi_cube_meta(
    urls_or_glob: str | list[str],
    *,
    storage_options: dict | None = None,
    index: str | None = None,
) -> tuple[CubeMeta, list[tuple[lfits.HDUInfo, lfits.HDUInfo | None]]]:
    """What the cutout cube of these FFIs would hold, from the FFIs' headers alone.

    The frames are ordered by ``TSTART`` and the WCS is chosen as astrocut's ``CubeFactory``
    and :func:`cube_wcs_header` choose them, so cutouts read straight from the FFIs equal those
    read from the cube astrocut would build.

    Parameters
    ----------
    urls_or_glob : str or list of str
        Calibrated FFIs of one sector, camera and CCD: a glob, a URL or a list.
    storage_options : dict, optional
        Filesystem keyword arguments.
    index : str, optional
        A header index (Parquet): headers of FFIs listed unchanged since it was written (same
        size and modification marker) are taken from it instead of the files; it is written,
        or rewritten, when it lacks any. A cache: deleting it only costs a new header scan.

    Returns
    -------
    (CubeMeta, list of (HDUInfo, HDUInfo or None))
        The metadata (``url`` is ``urls_or_glob`` as given, or the first FFI of a list), and
        each FFI's calibrated-image (1) and uncertainty (2, None where absent) HDUs, in frame
        order: what reading the pixels needs, with no further request.

    Raises
    ------
    FileNotFoundError
        A glob matching nothing or a missing file.
    FITSFormatError
        A file that is not an FFI; FFIs of different shapes, sectors, cameras or CCDs.
    """
    found = storage.expand_detail(urls_or_glob, storage_options=storage_options)
    if not found:
        raise InputError(f"no FFIs given: {urls_or_glob!r}")
    cached = 0 if index is None else _load_header_index(index, found, storage_options)
    rows = _ffi_headers(found, storage_options)
    if index is not None and cached < sum(1 for _, *hdus in rows for h in hdus if h is not None):
        _write_header_index(index, rows, storage_options)
    starts = []
    for url, _, image, _ in rows:
        value = image.get("TSTART")
        if not isinstance(value, int | float):
            raise FITSFormatError(f"{url}: HDU 1 has no numeric TSTART; is this a TESS FFI?")
        starts.append(float(value))
    rows = [rows[i] for i in np.argsort(starts, kind="stable")]
    shapes = {tuple(image.shape) for _, _, image, _ in rows}
    if len(shapes) > 1:
        raise FITSFormatError(
            f"FFIs of different shapes {sorted(shapes)} in {urls_or_glob!r}: give one sector, "
            "camera and CCD"
        )
    ids = {
        tuple(lfits.header_int(image.header, k, url) for k in ("CAMERA", "CCD"))
        + (lfits.header_int(primary.header, "SECTOR", url),)
        for url, primary, image, _ in rows
    }
    if len(ids) > 1:
        raise FITSFormatError(
            f"FFIs of different (camera, CCD, sector) {sorted(ids, key=str)} in "
            f"{urls_or_glob!r}: give one sector, camera and CCD"
        )
    n = len(rows)
    headers = [image.header for _, _, image, _ in rows]
    wcs_row = _wcs_row([str(h.get("CTYPE2", "")) for h in headers])
    if wcs_row is None:
        raise FITSFormatError(f"no FFI in {urls_or_glob!r} has CTYPE2 = 'DEC--TAN-SIP': no WCS")
    wcs_header = _header_from(
        (card.keyword, card.value)
        for card in headers[wcs_row].cards
        if card.keyword not in ("", "COMMENT", "HISTORY")
    )

    def column(key: str, default: float, dtype) -> np.ndarray:
        values = [h.get(key, default) for h in headers]
        return np.array([default if v is None else v for v in values], dtype=dtype)

    n_rows, n_cols = shapes.pop()
    first = {k: headers[0][k] for k in _SCIENCE_KEYS if isinstance(headers[0].get(k), int)}
    science = _science_region(first, n_rows, n_cols)
    url0, primary0, _, _ = rows[0]
    camera, ccd, sector = ids.pop()
    meta = CubeMeta(
        url=urls_or_glob if isinstance(urls_or_glob, str) else url0,
        data_offset=0,
        n_rows=int(n_rows),
        n_cols=int(n_cols),
        n_frames=n,
        tstart=column("TSTART", np.nan, float),
        tstop=column("TSTOP", np.nan, float),
        barycorr=column("BARYCORR", np.nan, float),
        quality=column("DQUALITY", 0, np.int32),
        ffi_file=np.array([url.rsplit("/", 1)[-1] for url, _, _, _ in rows]),
        wcs_header=wcs_header.tostring(sep="\n"),
        wcs_row=int(wcs_row),
        primary_header=primary0.header.tostring(sep="\n"),
        science=science,
        sector=sector,
        camera=camera,
        ccd=ccd,
    )
    return meta, [(image, err) for _, _, image, err in rows]
