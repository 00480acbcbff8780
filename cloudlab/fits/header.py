"""FITS headers: card parsing, :class:`HDUInfo`, the HDU walk with ranged reads, the header cache.

Only header blocks are read: a few 2880-byte blocks per request until the END card, then a jump
over the data of each HDU before the one asked for. Results are cached per (url, hdu, storage
options) and revalidated against the file's size and modification marker.
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from astropy.io import fits
from dask.base import tokenize

from cloudlab import storage
from cloudlab.errors import FITSFormatError, HDUNotFoundError, InputError, StorageError
from cloudlab.fits.sources import GzipSource, RangedSource, refuse_compression

__all__ = [
    "BITPIX_DTYPES",
    "BLOCK",
    "FITSError",
    "HDUInfo",
    "CardFields",
    "card_fields",
    "cache_records",
    "clear_cache",
    "fingerprint_of",
    "fits_text",
    "hdu_info",
    "hdu_infos",
    "hdu_records",
    "header_int",
    "padded",
    "parse_value",
    "scaled_dtype",
    "with_header",
]

#: FITS block size in bytes.
BLOCK = 2880
_CARD = 80
_FIRST_BLOCKS = 8  # blocks of the first request (a TESS FFI: primary + ext-1 header)
_MAX_BLOCKS = 64  # the request size doubles up to this many blocks
_CACHE_SIZE = 8192

BITPIX_DTYPES = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}

_FINGERPRINT_KEYS = (
    "mtime",
    "LastModified",
    "Last-Modified",
    "ETag",
    "etag",
    "generation",
    "updated",
    "created",
)


FITSError = FITSFormatError  # the name cloudlab.fits has always exported


@dataclass
class HDUInfo:
    """Where an HDU's data lives in its file and how to interpret it.

    Attributes
    ----------
    url : str
        The file.
    index : int
        HDU index (0 = primary).
    name : str
        EXTNAME (``"PRIMARY"`` for the primary HDU, ``""`` when absent).
    header_text : str
        The header cards (80 characters each, concatenated, without END) as in the file; for
        tile-compressed HDUs the image header astropy derives. ``header`` parses it.
    header_offset, data_offset, data_size : int
        Byte offsets of header and data, and the data size without padding (compressed HDUs:
        size of the binary table and heap).
    shape : tuple of int
        numpy order (slowest axis first).
    raw_dtype : numpy.dtype
        Big-endian on-disk dtype.
    dtype : numpy.dtype
        dtype after scaling exactly as astropy returns it (native byte order).
    bitpix : int
        BITPIX of the stored pixels (ZBITPIX for compressed HDUs).
    bscale, bzero : float
        Scaling (``1`` and ``0`` when absent).
    blank : int or None
        BLANK of integer images as astropy honours it.
    compressed : bool
        Tile-compressed image (``ZIMAGE = T``).
    kind : str
        ``"image"``, ``"table"`` or ``"compressed"``.
    storage_options : dict or None
        Filesystem options used to read the file.
    file_size : int or None
        Size of the file (``None`` when unknown).
    gzip : bool
        The whole file is gzip-compressed (data read by decompressing the stream).
    tile_shape : tuple of int or None
        Tile shape of compressed HDUs (numpy order).
    table_bytes : int or None
        Bytes of a compressed HDU's tile table (its binary table's rows, before the heap).
    groups : bool
        A random-groups primary HDU (kind ``"table"``; cloudlab does not read it as an image).
    fingerprint : tuple
        Size and modification marker of the file when it was read (cache validation).
    read_at : float
        ``time.time()`` when the fingerprint was last checked (the header was read or found
        unchanged in the cache).
    """

    url: str
    index: int
    name: str
    header_text: str
    header_offset: int
    data_offset: int
    data_size: int
    shape: tuple[int, ...]
    raw_dtype: np.dtype
    dtype: np.dtype
    bitpix: int = 0
    bscale: float = 1
    bzero: float = 0
    blank: int | None = None
    compressed: bool = False
    kind: str = "image"
    storage_options: dict | None = None
    file_size: int | None = None
    gzip: bool = False
    tile_shape: tuple[int, ...] | None = None
    table_bytes: int | None = None
    groups: bool = False
    fingerprint: tuple = field(default=(), repr=False)
    read_at: float = field(default=0.0, repr=False, compare=False)

    @property
    def header(self) -> fits.Header:
        """The header as an astropy ``Header`` (parsed on first use)."""
        parsed = self.__dict__.get("_header")
        if parsed is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parsed = fits.Header.fromstring(self.header_text)
            self.__dict__["_header"] = parsed
        return parsed

    def get(self, keyword: str, default: Any = None) -> Any:
        """Value of a header keyword (fast path for simple cards, astropy otherwise)."""
        if "_header" not in self.__dict__:
            cards = self.__dict__.get("_cards")
            if cards is None:
                cards = self.__dict__["_cards"] = card_fields(self.header_text)
            key = keyword.upper()
            value_field = cards.get(key)
            if value_field is None:
                if len(key) <= 8 and key.replace("-", "").replace("_", "").isalnum():
                    return default
            else:
                try:
                    return parse_value(value_field)
                except ValueError:
                    pass
        return self.header.get(keyword, default)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_header", "_cards")}

    @property
    def nbytes(self) -> int:
        """Bytes of the uncompressed pixel data."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.raw_dtype.itemsize

    def light(self) -> HDUInfo:
        """A copy without the header, cheap to ship to workers inside a graph."""
        return replace(self, header_text="")


_CARD_PARTS = re.compile(r"(?s)(.{8})(.{2})(.{70})")
#: the fields of a card: keyword, value indicator (``"= "`` on valued cards), value field
_CARD_DTYPE = np.dtype([("key", "S8"), ("equals", "S2"), ("value", "V70")])
#: characters after which a keyword is not simply space-padded (``str.rstrip`` strips the
#: whitespace among them; numpy's ``S`` strings drop trailing NULs): such headers take the
#: card-by-card path
_ODD_CHARS = "\x00\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"


class CardFields(Mapping[str, str]):
    """Keyword -> value field (text after ``= ``) of the first occurrence of each valued card
    of a header (concatenated 80-character cards; a partial card at the end is ignored).

    The valued cards are found in one numpy pass over the header's bytes and a value field is
    cut from the text only when asked for: a header scan of thousands of files is bound by
    this. Headers with non-ASCII text, NULs or whitespace other than spaces are split card by
    card instead (same result).

    Parameters
    ----------
    text : str
        The header cards.
    """

    __slots__ = ("_fields", "_text", "_where")

    def __init__(self, text: str):
        self._text = text
        self._where: dict[bytes, int] | None = None  # keyword -> card index
        self._fields: dict[str, str] | None = None
        if text.isascii() and not any(c in text for c in _ODD_CHARS):
            n = len(text) - len(text) % _CARD
            cards = np.frombuffer(text[:n].encode("ascii"), _CARD_DTYPE)
            valued = np.flatnonzero(cards["equals"] == b"= ")[::-1]
            self._where = dict(zip(cards["key"][valued].tolist(), valued.tolist(), strict=True))
        else:
            self._fields = {
                key.rstrip(): value
                for key, equals, value in reversed(_CARD_PARTS.findall(text))
                if equals == "= "
            }

    def get(self, key: str, default: Any = None) -> Any:
        """The value field of keyword ``key`` (exactly as stored: upper case, no trailing
        blanks), else ``default``."""
        if self._where is None:
            return self._fields.get(key, default)
        card = self._where.get(_card_key(key))
        return default if card is None else self._text[card * _CARD + 10 : (card + 1) * _CARD]

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        if self._where is None:
            return iter(self._fields)
        return (key.decode("ascii").rstrip() for key in self._where)

    def __len__(self) -> int:
        return len(self._where if self._fields is None else self._fields)


@functools.lru_cache(maxsize=1024)
def _card_key(key: str) -> bytes | None:
    """The 8 bytes of a card holding keyword ``key`` (None: no card can hold it)."""
    if len(key) > 8 or not key.isascii() or key != key.rstrip():
        return None
    return key.ljust(8).encode("ascii")


def card_fields(text: str) -> CardFields:
    """Keyword -> value field (text after ``= ``) of the first occurrence of each valued card
    in ``text`` (concatenated 80-character cards): a :class:`CardFields`."""
    return CardFields(text)


@functools.lru_cache(maxsize=4096)
def parse_value(field: str) -> Any:
    """Value of a card's value field as astropy reads it (strings, logicals, ints, floats).

    Cached (the values are immutable): the headers of a series of files repeat most cards.

    Raises
    ------
    ValueError
        For anything else (complex values, malformed fields): use astropy then.
    """
    stripped = field.lstrip()
    if stripped.startswith("'"):
        parts = []
        i = 1
        while (close := stripped.find("'", i)) >= 0:
            parts.append(stripped[i:close])
            if stripped[close + 1 : close + 2] != "'":
                return "".join(parts).rstrip()
            parts.append("'")  # a doubled quote stands for one
            i = close + 2
        raise ValueError("unterminated string")
    value = stripped.split("/", 1)[0].strip()
    if value == "T":
        return True
    if value == "F":
        return False
    if not value:
        raise ValueError("undefined value")
    if value.lstrip("+-").isdigit():
        return int(value)
    return float(value.replace("D", "E"))


def padded(nbytes: int) -> int:
    """``nbytes`` rounded up to whole FITS blocks."""
    return -(-nbytes // BLOCK) * BLOCK


def fingerprint_of(finfo: dict[str, Any]) -> tuple:
    """A file's size and modification marker (mtime, ETag, generation, ...) from ``fs.info``."""
    size = finfo.get("size")
    marks = tuple(str(finfo[k]) for k in _FINGERPRINT_KEYS if finfo.get(k) is not None)
    return (size, *marks)


# --------------------------------------------------------------------------------------------
# header parsing
# --------------------------------------------------------------------------------------------


_END_CARD = b"END".ljust(_CARD)


def _find_end(block: bytes) -> int:
    """Index of the END card (``END`` and 77 blanks) within ``block`` (a whole number of
    cards), or -1."""
    pos = block.find(_END_CARD)
    while pos > 0 and pos % _CARD:  # not on a card boundary: look further
        pos = block.find(_END_CARD, pos + 1)
    return pos


def _read_header(src, url: str, offset: int, index: int) -> tuple[str, int]:
    """Read the header starting at ``offset``; return its cards (without END) as text and the
    offset where its data starts."""
    chunks = []
    pos = offset
    nblocks = _FIRST_BLOCKS
    while True:
        data = src.read_some(pos, nblocks * BLOCK, BLOCK)
        whole = len(data) - len(data) % BLOCK
        if whole == 0:
            where = f"header of HDU {index} starting at byte {offset}"
            if not chunks and not data:
                raise FITSError(f"{url}: {where}: file ends there")
            raise FITSError(f"{url}: {where} has no END card (file truncated or not a FITS header)")
        data = data[:whole]
        end = _find_end(data)
        if end >= 0:
            chunks.append(data[:end])
            header_len = pos - offset + padded(end + _CARD)
            break
        chunks.append(data)
        pos += whole
        nblocks = min(nblocks * 2, _MAX_BLOCKS)
    try:
        text = b"".join(chunks).decode("ascii")
    except UnicodeDecodeError as exc:
        raise FITSError(
            f"{url}: header of HDU {index} at byte {offset} has non-ASCII bytes: {exc}"
        ) from exc
    return text, offset + header_len


def fits_text(header_text: str) -> str:
    """Header cards plus END, padded to whole blocks: what ``Header.tostring()`` gives."""
    text = header_text + "END".ljust(_CARD)
    return text + " " * (padded(len(text)) - len(text))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def scaled_dtype(bitpix: int, bscale: float, bzero: float, blank: int | None) -> np.dtype:
    """dtype astropy gives an image with these scaling keywords (``uint=True``, the default)."""
    raw = np.dtype(BITPIX_DTYPES[bitpix]).newbyteorder("=")
    if bzero == 0 and bscale == 1 and blank is None:
        return raw
    converted = _pseudo_dtype(bitpix, bscale, bzero)
    return converted if converted is not None else raw


def _pseudo_dtype(bitpix: int, bscale: float, bzero: float) -> np.dtype | None:
    """astropy's ``_dtype_for_bitpix``: the dtype integer data is converted to when scaled."""
    if bscale == 1:
        if bitpix == 8 and bzero == -128:
            return np.dtype("int8")
        for bits, name in ((16, "uint16"), (32, "uint32"), (64, "uint64")):
            if bitpix == bits and bzero == 1 << (bits - 1):
                return np.dtype(name)
    if bitpix > 16:
        return np.dtype("float64")
    if bitpix > 0:
        return np.dtype("float32")
    return None


def _value(cards: Mapping[str, str], key: str, default: Any, url: str, index: int) -> Any:
    field_ = cards.get(key)
    if field_ is None:
        return default
    try:
        return parse_value(field_)
    except ValueError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            card = fits.Card.fromstring(f"{key:8}= {field_}")
            try:
                return card.value
            except (ValueError, fits.VerifyError) as exc:
                raise FITSError(f"{url}: HDU {index}: cannot read {key} = {field_!r}") from exc


def _info_from_header(
    text: str, url: str, index: int, header_offset: int, data_offset: int
) -> HDUInfo:
    """Describe the HDU whose header cards are ``text``."""
    cards = card_fields(text)

    def get(key: str, default: Any = None) -> Any:
        return _value(cards, key, default, url, index)

    xtension = str(get("XTENSION", "PRIMARY")).strip().upper()
    try:
        bitpix = int(get("BITPIX"))
        naxis = int(get("NAXIS"))
        axes = [int(get(f"NAXIS{i}")) for i in range(1, naxis + 1)]
    except (ValueError, TypeError) as exc:
        raise FITSError(f"{url}: HDU {index}: missing or invalid BITPIX/NAXIS keyword") from exc
    if bitpix not in BITPIX_DTYPES:
        raise FITSError(f"{url}: HDU {index}: invalid BITPIX = {bitpix}")
    if any(n < 0 for n in axes):
        raise FITSError(f"{url}: HDU {index}: negative NAXISn in {axes}")
    gcount = int(get("GCOUNT", 1))
    pcount = int(get("PCOUNT", 0))
    groups = bool(get("GROUPS", False)) and naxis > 0 and axes[0] == 0
    npix = math.prod(axes[1:] if groups else axes) if naxis else 0
    data_size = abs(bitpix) // 8 * gcount * (pcount + npix) if naxis else 0
    name = str(get("EXTNAME", "PRIMARY" if index == 0 else "")).strip()
    common = dict(
        url=url,
        index=index,
        name=name,
        header_text=text,
        header_offset=header_offset,
        data_offset=data_offset,
        data_size=data_size,
    )
    if xtension == "BINTABLE" and get("ZIMAGE", False) is True:
        return _compressed_info(text, common)
    # a primary with GROUPS = T is random groups even when its NAXIS is malformed (astropy
    # reads it as a GroupsHDU)
    groups = groups or (index == 0 and get("GROUPS", False) is True)
    if xtension in ("BINTABLE", "TABLE") or groups:
        return HDUInfo(
            **common,
            shape=tuple(reversed(axes)),
            raw_dtype=np.dtype("u1"),
            dtype=np.dtype("u1"),
            bitpix=bitpix,
            kind="table",
            groups=groups,
        )
    info = HDUInfo(**common, **_image_fields(get, bitpix, axes))
    info.__dict__["_cards"] = cards  # reused by info.get()
    return info


def _image_fields(get: Callable[..., Any], bitpix: int, axes: list[int]) -> dict[str, Any]:
    """HDUInfo fields of an image HDU: shape, raw and scaled dtypes, BSCALE/BZERO/BLANK.

    ``get(key, default)`` reads a keyword (BLANK counts only for integer images).
    """
    bscale = get("BSCALE", 1)
    bzero = get("BZERO", 0)
    blank = get("BLANK")
    if not _is_int(blank) or bitpix < 0:
        blank = None
    return dict(
        shape=tuple(reversed(axes)),
        raw_dtype=np.dtype(BITPIX_DTYPES[bitpix]),
        dtype=scaled_dtype(bitpix, bscale, bzero, blank),
        bitpix=bitpix,
        bscale=bscale,
        bzero=bzero,
        blank=blank,
    )


def _drop_default_extnames(header: fits.Header) -> None:
    """Drop the default ``EXTNAME = 'COMPRESSED_IMAGE'`` cards of a compressed HDU's table
    header when another EXTNAME names the image (files from CFHT carry both), as astropy does."""
    where = [i for i, card in enumerate(header.cards) if card.keyword == "EXTNAME"]
    if len(where) < 2:
        return
    default = [i for i in where if str(header[i]).strip() == "COMPRESSED_IMAGE"]
    if len(default) == len(where):
        default = default[1:]
    for i in reversed(default):
        del header[i]


def _compressed_info(text: str, common: dict) -> HDUInfo:
    """Describe a tile-compressed image HDU from its binary-table header cards."""
    from astropy.io.fits.hdu.compressed.header import _bintable_header_to_image_header

    url, index = common["url"], common["index"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bintable_header = fits.Header.fromstring(text)
        try:
            zbitpix = int(bintable_header["ZBITPIX"])
            znaxis = int(bintable_header["ZNAXIS"])
            axes = [int(bintable_header[f"ZNAXIS{i}"]) for i in range(1, znaxis + 1)]
        except (KeyError, ValueError, TypeError) as exc:
            raise FITSError(f"{url}: compressed HDU {index}: invalid Z keywords: {exc}") from exc
        if zbitpix not in BITPIX_DTYPES:
            raise FITSError(f"{url}: compressed HDU {index}: invalid ZBITPIX = {zbitpix}")
        tiles = [
            int(bintable_header.get(f"ZTILE{i}", axes[0] if i == 1 else 1))
            for i in range(1, znaxis + 1)
        ]
        table_bytes = int(bintable_header.get("NAXIS1", 0)) * int(bintable_header.get("NAXIS2", 0))
        _drop_default_extnames(bintable_header)
        header = _bintable_header_to_image_header(bintable_header)
    common = dict(
        common,
        header_text=header.tostring(endcard=False, padding=False),
        name=str(header.get("EXTNAME", bintable_header.get("EXTNAME", ""))).strip(),
    )
    return HDUInfo(
        **common,
        **_image_fields(header.get, zbitpix, axes),
        compressed=True,
        kind="compressed",
        tile_shape=tuple(reversed(tiles)),
        table_bytes=table_bytes,
    )


def _matches(target: int | str | tuple, info: HDUInfo) -> bool:
    if isinstance(target, tuple):
        name, ver = target
        return info.name.upper() == str(name).upper() and int(info.get("EXTVER", 1)) == ver
    if isinstance(target, str):
        return info.name.upper() == target.upper()
    return info.index == target


def _describe(target: int | str | tuple) -> str:
    return f"HDU {target}" if isinstance(target, int) else f"HDU named {target!r}"


def _walk(
    url: str, target: int | str | tuple, storage_options: dict | None, finfo: dict
) -> HDUInfo:
    """Walk the headers of ``url`` up to the HDU ``target``."""
    (info,) = _walk_many(url, [target], storage_options, finfo, missing_ok=False)
    assert info is not None
    return info


def _walk_many(
    url: str,
    targets: list[int | str | tuple],
    storage_options: dict | None,
    finfo: dict,
    *,
    missing_ok: bool,
) -> list[HDUInfo | None]:
    """Walk the headers of ``url`` once, up to the last of ``targets`` found.

    Returns one :class:`HDUInfo` per target (``None`` for those the file lacks when
    ``missing_ok``; otherwise the first missing one raises :class:`HDUNotFoundError`).
    """
    size = finfo.get("size")
    if size == 0:
        raise FITSError(f"{url}: not a FITS file (empty file)")
    src: Any = RangedSource(url, storage_options, size if size is not None else 2**62)
    magic = src.read(0, 9, readahead=_FIRST_BLOCKS * BLOCK)
    is_gzip = magic[:2] == b"\x1f\x8b"
    if is_gzip:
        src = GzipSource(url, storage_options)
        magic = src.read(0, 9)
    if magic != b"SIMPLE  =":
        refuse_compression(url, magic)
        kind = "gzip stream " if is_gzip else ""
        raise FITSError(
            f"{url}: not a FITS file ({kind}starts with {bytes(magic[:9])!r}, expected SIMPLE =)"
        )
    found: list[HDUInfo | None] = [None] * len(targets)
    names: list[str] = []
    fingerprint = fingerprint_of(finfo)
    offset = 0
    index = 0

    def missing(extra: str = "") -> list[HDUInfo | None]:
        if missing_ok:
            return found
        first = next(t for t, f in zip(targets, found, strict=True) if f is None)
        raise HDUNotFoundError(
            f"{url}: {_describe(first)} out of range: the file has {len(names)} HDU(s) "
            f"{names}{extra}; ask for one of those"
        )

    try:
        while True:
            if index > 0:
                start = src.read(offset, offset + 9, readahead=_FIRST_BLOCKS * BLOCK)
                if start != b"XTENSION=":
                    return missing("" if not start else " (followed by bytes that are not an HDU)")
            text, data_offset = _read_header(src, url, offset, index)
            info = _info_from_header(text, url, index, offset, data_offset)
            names.append(info.name)
            data_end = data_offset + info.data_size
            hits = [k for k, t in enumerate(targets) if found[k] is None and _matches(t, info)]
            if hits:
                if not is_gzip and size is not None and data_end > size:
                    raise FITSError(
                        f"{url}: truncated: HDU {index} data (shape {info.shape}, "
                        f"{info.data_size} bytes from byte {data_offset}) ends at byte "
                        f"{data_end}, but the file has {size} bytes"
                    )
                info.storage_options = storage_options
                info.file_size = None if is_gzip else size
                info.gzip = is_gzip
                info.fingerprint = fingerprint
                for k in hits:
                    found[k] = info
                if all(f is not None for f in found):
                    return found
            offset = data_offset + padded(info.data_size)
            if not is_gzip and size is not None and offset >= size:
                if data_end > size:
                    raise FITSError(
                        f"{url}: truncated: HDU {index} data ends at byte {data_end}, but the "
                        f"file has {size} bytes"
                    )
                return missing()
            index += 1
    finally:
        src.close()


# --------------------------------------------------------------------------------------------
# cached entry point
# --------------------------------------------------------------------------------------------

_cache: OrderedDict[tuple, HDUInfo] = OrderedDict()
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Forget all cached header information."""
    with _cache_lock:
        _cache.clear()


def _normalize_target(hdu: int | str | tuple) -> int | str | tuple:
    if isinstance(hdu, (bool, np.bool_)):
        raise TypeError(f"hdu must be an index or an EXTNAME, not {hdu!r}")
    if isinstance(hdu, (int, np.integer)):
        if hdu < 0:
            raise InputError(f"hdu index must be >= 0, got {hdu}")
        return int(hdu)
    if isinstance(hdu, str):
        return hdu
    if isinstance(hdu, tuple) and len(hdu) == 2:
        return (str(hdu[0]), int(hdu[1]))
    raise TypeError(f"hdu must be an index, an EXTNAME or (EXTNAME, EXTVER), not {hdu!r}")


def hdu_info(
    url: str,
    hdu: int | str | tuple = 0,
    *,
    storage_options: dict | None = None,
    file_info: dict | None = None,
) -> HDUInfo:
    """Locate an HDU by reading header blocks only.

    Parameters
    ----------
    url : str
        Any fsspec URL or local path.
    hdu : int, str or (str, int)
        HDU index, EXTNAME (case-insensitive), or (EXTNAME, EXTVER).
    storage_options : dict, optional
        Filesystem keyword arguments.
    file_info : dict, optional
        ``fs.info`` of the file when already known (saves a request).

    Returns
    -------
    HDUInfo
        Cached per (url, hdu, storage options) and revalidated against the file's size and
        modification marker.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    FITSError
        Not FITS, truncated, header without END, data larger than the file.
    HDUNotFoundError
        No such HDU (a ``FITSError`` and a ``KeyError``); the message lists the file's HDUs.
    InputError
        A negative HDU index.
    """
    url = str(url)
    target = _normalize_target(hdu)
    if file_info is None:
        file_info = storage.file_info(url, storage_options=storage_options)
    finfo = file_info
    key = (url, target, tokenize(storage_options) if storage_options else None)
    fingerprint = fingerprint_of(finfo)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None and cached.fingerprint == fingerprint:
            _cache.move_to_end(key)
            cached.read_at = time.time()
            return cached
    info = _walk(url, target, storage_options, finfo)
    info.read_at = time.time()
    with _cache_lock:
        _cache[key] = info
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return info


def with_header(info: HDUInfo) -> HDUInfo:
    """``info`` with its header, for a copy made by :meth:`HDUInfo.light`.

    The header comes from this process's cache when it holds the same HDU of the same file
    with the same size and modification marker: no request. Otherwise the file's headers are
    read again.

    Parameters
    ----------
    info : HDUInfo
        An HDU description, with or without its header.

    Returns
    -------
    HDUInfo
        The same HDU with ``header_text``.

    Raises
    ------
    StorageError
        The file was rewritten since ``info`` was made (its byte layout may differ).
    NotFoundError
        The file is gone.
    """
    if info.header_text:
        return info
    options = info.storage_options
    key = (info.url, int(info.index), tokenize(options) if options else None)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None and cached.fingerprint == info.fingerprint:
        return cached
    fresh = hdu_info(info.url, int(info.index), storage_options=options)
    if info.fingerprint and fresh.fingerprint != info.fingerprint:
        raise StorageError(
            f"{info.url}: the file changed after it was opened (size and modification marker "
            f"were {info.fingerprint}, are {fresh.fingerprint}); open it again"
        )
    return fresh


def hdu_infos(
    url: str,
    hdus: list[int | str | tuple],
    *,
    storage_options: dict | None = None,
    file_info: dict | None = None,
    missing_ok: bool = False,
) -> list[HDUInfo | None]:
    """Locate several HDUs of one file with a single walk of its headers.

    Reading the primary, image and uncertainty headers of a TESS FFI this way costs two
    requests (the first covers the primary and first extension headers) instead of one walk,
    and its requests, per HDU.

    Parameters
    ----------
    url : str
        Any fsspec URL or local path.
    hdus : list of int, str or (str, int)
        HDU indices or EXTNAMEs, as for :func:`hdu_info`.
    storage_options : dict, optional
        Filesystem keyword arguments.
    file_info : dict, optional
        ``fs.info`` of the file when already known (for example from a glob listing).
    missing_ok : bool
        Give ``None`` for HDUs the file lacks instead of raising.

    Returns
    -------
    list of HDUInfo or None
        One per entry of ``hdus``, each cached as :func:`hdu_info` caches it.

    Raises
    ------
    HDUNotFoundError
        An HDU the file lacks (unless ``missing_ok``); other errors as :func:`hdu_info`.
    """
    url = str(url)
    targets = [_normalize_target(h) for h in hdus]
    if file_info is None:
        file_info = storage.file_info(url, storage_options=storage_options)
    fingerprint = fingerprint_of(file_info)
    options_key = tokenize(storage_options) if storage_options else None
    keys = [(url, t, options_key) for t in targets]
    with _cache_lock:
        cached = [_cache.get(k) for k in keys]
    if all(c is not None and c.fingerprint == fingerprint for c in cached):
        return cached
    infos = _walk_many(url, targets, storage_options, file_info, missing_ok=missing_ok)
    now = time.time()
    with _cache_lock:
        for key, info in zip(keys, infos, strict=True):
            if info is not None:
                info.read_at = now
                _cache[key] = info
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return infos


def hdu_records(infos: list[HDUInfo]) -> list[dict[str, Any]]:
    """What rebuilds these HDUs' descriptions without reading their files (a header index).

    Parameters
    ----------
    infos : list of HDUInfo
        From :func:`hdu_info` / :func:`hdu_infos` (whole-file gzip HDUs are left out).

    Returns
    -------
    list of dict
        Per HDU: ``url``, ``index``, ``header_text``, ``header_offset``, ``data_offset``,
        ``file_size`` and ``fingerprint`` (the file's size and modification marker, as JSON),
        plain values a table (Parquet, CSV) can hold.
    """
    return [
        {
            "url": info.url,
            "index": int(info.index),
            "header_text": info.header_text,
            "header_offset": int(info.header_offset),
            "data_offset": int(info.data_offset),
            "file_size": -1 if info.file_size is None else int(info.file_size),
            "fingerprint": json.dumps(list(info.fingerprint)),
        }
        for info in infos
        if not info.gzip
    ]


def cache_records(
    records: list[dict[str, Any]],
    file_infos: dict[str, dict],
    *,
    storage_options: dict | None = None,
) -> int:
    """Put the HDUs of :func:`hdu_records` into the header cache, for files unchanged since.

    A record is used only when its file's current ``fs.info`` (``file_infos``, from a listing)
    has the size and modification marker it was made with; others are left out, so their
    headers are read again.

    Parameters
    ----------
    records : list of dict
        From :func:`hdu_records` (for example read back from an index file).
    file_infos : dict
        URL to its current ``fs.info``.
    storage_options : dict, optional
        The options the HDUs will be read with (part of the cache key).

    Returns
    -------
    int
        Records put into the cache.
    """
    options_key = tokenize(storage_options) if storage_options else None
    now = time.time()
    used = 0
    for record in records:
        url = str(record["url"])
        current = file_infos.get(url)
        if current is None or json.dumps(list(fingerprint_of(current))) != record["fingerprint"]:
            continue
        index = int(record["index"])
        offsets = int(record["header_offset"]), int(record["data_offset"])
        info = _info_from_header(str(record["header_text"]), url, index, *offsets)
        info.storage_options = storage_options
        info.file_size = None if int(record["file_size"]) < 0 else int(record["file_size"])
        info.fingerprint = fingerprint_of(current)
        info.read_at = now
        with _cache_lock:
            _cache[(url, index, options_key)] = info
        used += 1
    with _cache_lock:
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return used


def header_int(header: Any, key: str, url: str, default: int | None = None) -> int | None:
    """An integer keyword that may be absent, blank or malformed in files from other tools.

    Parameters
    ----------
    header : astropy.io.fits.Header, HDUInfo or mapping
        Where to look (anything with ``get``).
    key : str
        Keyword, e.g. ``"SECTOR"``.
    url : str
        The file (named in the error).
    default : int, optional
        Returned when the keyword is absent.

    Returns
    -------
    int or None
        The value; ``None`` for a card present without a value (``SECTOR  =``, unknown), and
        ``default`` when the card is absent. Integral floats (``5.0``) are accepted.

    Raises
    ------
    FITSFormatError
        A value that is not an integer (``SECTOR = 5x``, ``'five'``, ``5.5``, ``T``), naming
        the file and the card.
    """
    missing = object()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = header.get(key, missing)
        except (ValueError, fits.VerifyError) as exc:
            raise _bad_int(url, key, _card_text(header, key, "?")) from exc
    if value is missing:
        return default
    if value is None or isinstance(value, fits.card.Undefined):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError as exc:
            raise _bad_int(url, key, _card_text(header, key, value)) from exc
    if _is_int(value):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise _bad_int(url, key, _card_text(header, key, value))


def _card_text(header: Any, key: str, value: Any) -> str:
    """The card as written in the file where the header has it, else ``KEY = value``."""
    try:
        card = header.cards[key]
        return repr(str(getattr(card, "_image", None) or card.image).rstrip())
    except (AttributeError, KeyError, ValueError, fits.VerifyError):
        return repr(f"{key} = {value!r}")


def _bad_int(url: str, key: str, shown: str) -> FITSFormatError:
    return FITSFormatError(
        f"{url}: header card {shown} is not an integer {key}; fix the card (e.g. "
        f"{key} = 5) or give the value another way"
    )
