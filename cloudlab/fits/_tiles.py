"""The tile table of a tile-compressed image HDU: where each tile's bytes lie in the heap and
how to decode them.

Reading it costs two ranged requests, the binary-table header and the descriptor table (8 or 16
bytes a tile), never the heap. :func:`cloudlab.fits.read_regions` then fetches only the heap
bytes of the tiles a box touches, and :func:`cloudlab.fits.references` turns the table into one
chunk reference per tile.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.io import fits

from cloudlab.errors import FITSFormatError
from cloudlab.fits.codecs import COMPRESSIONS, FITSTile
from cloudlab.fits.header import HDUInfo
from cloudlab.fits.sources import cat_ranges

__all__ = ["TileTable", "UnsupportedTiles", "tile_table"]

_HEAP_TYPES = {"B": "u1", "I": ">i2", "J": ">i4", "K": ">i8"}
_TFORM = re.compile(r"^\s*(\d*)([A-Z])(.*)$")
#: tile tables kept per process, keyed by file, HDU and fingerprint (size and modification)
_CACHE_MAX = 64
_cache: dict[tuple, TileTable] = {}


class UnsupportedTiles(FITSFormatError):
    """A compressed HDU whose tiles one codec cannot decode (quantized floating point, tiles
    stored gzip-compressed or raw instead, per-tile ZBLANK): astropy reads those."""


@dataclass(frozen=True)
class TileTable:
    """Where the tiles of a compressed HDU lie and how to decode them.

    Attributes
    ----------
    codec : FITSTile
        The decoder of one tile (lossless tiles only).
    starts, sizes : numpy.ndarray of int64
        Absolute byte offset in the file and byte length of each tile, in table-row order
        (FITS axis 1 varies fastest).
    grid : tuple of int
        Tiles along each axis (numpy order).
    zblank : float or None
        ZBLANK (else BLANK) of the table: floating-point pixels equal to it are NaN, as astropy
        reads them (integer pixels keep it).
    """

    codec: FITSTile
    starts: np.ndarray
    sizes: np.ndarray
    grid: tuple[int, ...]
    zblank: float | None = None


def _fetch(info: HDUInfo, start: int, end: int, storage_options: dict | None, what: str) -> bytes:
    (data,) = cat_ranges(info.url, [start], [end], storage_options=storage_options)
    if len(data) < end - start:
        raise FITSFormatError(
            f"{info.url}: truncated: compressed HDU {info.index} {what} ends at byte {end}, the "
            f"file gives {start + len(data)}; re-download or re-create it"
        )
    return data


def _rows(info: HDUInfo, table: fits.Header, names: list[str], data: bytes) -> dict[str, Any]:
    """Columns of the binary table (descriptors as ``(count, offset)`` pairs)."""
    from astropy.io.fits.column import _ColumnFormat

    fields = []
    for i, name in enumerate(names, start=1):
        fmt = _ColumnFormat(str(table[f"TFORM{i}"]))
        fields.append((name or f"col{i}", np.dtype(fmt.dtype).newbyteorder(">")))
    dtype = np.dtype(fields)
    width, nrows = int(table["NAXIS1"]), int(table["NAXIS2"])
    if dtype.itemsize != width:
        raise FITSFormatError(
            f"{info.url}: compressed HDU {info.index}: row width {width} != {dtype.itemsize}"
        )
    records = np.frombuffer(data, dtype=dtype, count=nrows)
    return {name: np.asarray(records[name]) for name in dtype.names}


def _codec(info: HDUInfo, table: fits.Header, ctype: str, heap_type: str) -> FITSTile:
    zvals = {}
    i = 1
    while f"ZNAME{i}" in table:
        zvals[str(table[f"ZNAME{i}"]).strip().upper()] = table.get(f"ZVAL{i}")
        i += 1
    settings: dict[str, Any] = {}
    if ctype in ("RICE_1", "RICE_ONE"):
        settings = {
            "blocksize": int(zvals.get("BLOCKSIZE", 32)),
            "bytepix": int(zvals.get("BYTEPIX", 4)),
        }
    elif ctype == "HCOMPRESS_1":
        settings = {"scale": int(zvals.get("SCALE", 0)), "smooth": int(zvals.get("SMOOTH", 0))}
    tile_shape = tuple(info.tile_shape or info.shape)
    return FITSTile(
        ctype, tile_shape, info.bitpix, shape=info.shape, heap_dtype=heap_type, **settings
    )


def _read_table(info: HDUInfo, storage_options: dict | None) -> TileTable:
    where = f"{info.url}: compressed HDU {info.index}"
    # the header and the table's rows in one request when the rows' size is known
    end = info.data_offset + (info.table_bytes or 0)
    first = _fetch(info, info.header_offset, end, storage_options, "header")
    header_bytes = info.data_offset - info.header_offset
    table = fits.Header.fromstring(first[:header_bytes].decode("ascii"))
    ctype = str(table.get("ZCMPTYPE", "")).strip()
    if ctype not in COMPRESSIONS:
        raise UnsupportedTiles(f"{where}: compression {ctype!r} is not one of {COMPRESSIONS}")
    names = [
        str(table.get(f"TTYPE{i}", "")).strip().upper() for i in range(1, table["TFIELDS"] + 1)
    ]
    if "ZSCALE" in names or "ZZERO" in names:
        raise UnsupportedTiles(
            f"{where}: quantized floating-point tiles (ZQUANTIZ {table.get('ZQUANTIZ', '')!r}, "
            "ZSCALE/ZZERO per tile) cannot be described by one zarr codec; read the HDU with "
            "cloudlab.fits.open_hdu, or rewrite it losslessly (quantize_level=0)"
        )
    if "COMPRESSED_DATA" not in names:
        raise FITSFormatError(f"{where}: no COMPRESSED_DATA column")
    width, nrows = int(table["NAXIS1"]), int(table["NAXIS2"])
    theap = int(table.get("THEAP", width * nrows))
    data = first[header_bytes : header_bytes + width * nrows]
    if len(data) < width * nrows:
        data += _fetch(info, info.data_offset + len(data), info.data_offset + width * nrows,
                       storage_options, "tile table")  # fmt: skip
    rows = _rows(info, table, names, data)
    column = rows["COMPRESSED_DATA"]
    if np.any(column[:, 0] == 0):
        raise UnsupportedTiles(
            f"{where}: some tiles have no COMPRESSED_DATA (stored gzip-compressed or raw "
            "instead), which one codec cannot describe; read it with cloudlab.fits.open_hdu"
        )
    zblank = table.get("ZBLANK", info.get("BLANK"))
    if "ZBLANK" in names and (zblank is None or np.any(rows["ZBLANK"] != zblank)):
        raise UnsupportedTiles(
            f"{where}: a ZBLANK column with values other than the header's ZBLANK/BLANK "
            f"({zblank}), which one codec cannot describe; read it with cloudlab.fits.open_hdu"
        )
    tform = str(table[f"TFORM{names.index('COMPRESSED_DATA') + 1}"]).upper()
    match = _TFORM.match(tform)
    if not match or match.group(2) not in ("P", "Q") or match.group(3)[:1] not in _HEAP_TYPES:
        raise FITSFormatError(f"{where}: COMPRESSED_DATA has the unexpected format {tform!r}")
    heap_type = _HEAP_TYPES[match.group(3)[0]]
    tile_shape = tuple(info.tile_shape or info.shape)
    grid = tuple(-(-n // t) for n, t in zip(info.shape, tile_shape, strict=True))
    if math.prod(grid) != nrows:
        raise FITSFormatError(f"{where}: {nrows} table rows for a grid of {list(grid)} tiles")
    counts, offsets = (column[:, k].astype(np.int64) for k in (0, 1))
    sizes = counts * np.dtype(heap_type).itemsize
    starts = info.data_offset + theap + offsets
    codec = _codec(info, table, ctype, heap_type)
    return TileTable(codec, starts, sizes, grid, zblank)


def tile_table(info: HDUInfo, storage_options: dict | None = None) -> TileTable:
    """The tile table of a compressed HDU (read once per file and fingerprint in a process).

    Parameters
    ----------
    info : HDUInfo
        A tile-compressed image HDU (``info.compressed``), not in a gzip-compressed file.
    storage_options : dict, optional
        Filesystem options (default: ``info.storage_options``).

    Raises
    ------
    UnsupportedTiles
        Tiles one codec cannot decode (quantized, stored uncompressed, per-tile ZBLANK).
    FITSFormatError
        A malformed or truncated table.
    """
    options = info.storage_options if storage_options is None else storage_options
    key = (info.url, info.index, info.fingerprint)
    found = _cache.get(key) if info.fingerprint else None
    if found is not None:
        return found
    table = _read_table(info, options)
    if info.fingerprint:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[key] = table
    return table
