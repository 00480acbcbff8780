"""Reading regions of FITS HDUs: byte-range planning, batched fetches, astropy-exact scaling.

This is the one place where FITS bytes become numbers. A box of an image HDU maps to one byte
range per contiguous run in C order; the runs of every box asked for at once are merged when they
overlap or lie closer than a small gap, fetched with one batched request (:func:`fetch_ranges`:
one ``storage.cat_ranges`` call, one open of a local file, or one decompressed span of a gzip
file), cut back into boxes and scaled exactly as astropy scales them.
Tile-compressed HDUs fetch only the heap bytes of the tiles a box touches (their tile table is
read once per file), decoded with astropy's decompression functions; tiles one codec cannot
decode (quantized floating point...) are read through astropy's ``section``.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask.config
import numpy as np
from astropy.io import fits

from cloudlab import storage
from cloudlab.errors import FITSFormatError, InputError, NotFoundError, StorageError
from cloudlab.fits._tiles import TileTable, UnsupportedTiles, tile_table
from cloudlab.fits.header import HDUInfo, fingerprint_of, padded
from cloudlab.fits.sources import cat_ranges, gone, map_local, read_gzip_span, release_pages

__all__ = [
    "DEFAULT_MERGE_GAP",
    "DEFAULT_REVALIDATE_SECONDS",
    "ReadPlan",
    "check_image",
    "check_unchanged",
    "fetch_ranges",
    "merge_ranges",
    "normalize_index",
    "plan_ranges",
    "plan_reads",
    "read_local_boxes",
    "read_region",
    "read_regions",
    "scale",
]

#: Ranges separated by at most this many bytes are fetched as one (dask config
#: ``cloudlab.fits.merge-gap``).
DEFAULT_MERGE_GAP = 1024

Box = list[tuple[int, int]]


#: A file's size and modification marker (mtime, ETag, generation) are checked again before its
#: bytes are read when the last check is older than this many seconds (dask config
#: ``cloudlab.fits.revalidate-seconds``; ``0`` checks before every read, a negative value never).
DEFAULT_REVALIDATE_SECONDS = 60.0

_validated: dict[tuple, float] = {}  # (url, fingerprint) -> time.time() of the last check here
_VALIDATED_MAX = 100_000


def merge_gap() -> int:
    """The configured merge gap in bytes (dask config ``cloudlab.fits.merge-gap``)."""
    return int(dask.config.get("cloudlab.fits.merge-gap", default=DEFAULT_MERGE_GAP))


def check_unchanged(info: HDUInfo) -> None:
    """Raise when ``info``'s file was rewritten or removed since its header was read.

    Cheap: at most one ``info`` request per file every ``cloudlab.fits.revalidate-seconds``
    (dask config, default :data:`DEFAULT_REVALIDATE_SECONDS`) per process, counted from when the
    header was read; ``0`` checks before every read, a negative value never checks.

    Raises
    ------
    NotFoundError
        The file is gone.
    StorageError
        Its size or modification marker (mtime, ETag, generation) changed: the byte offsets
        read from the old header may no longer hold the pixels.
    """
    every = float(dask.config.get("cloudlab.fits.revalidate-seconds",
                                  default=DEFAULT_REVALIDATE_SECONDS))  # fmt: skip
    if every < 0 or not info.fingerprint:
        return
    key = (info.url, info.fingerprint)
    now = time.time()
    if every > 0 and now - _validated.get(key, info.read_at) < every:
        return
    try:
        finfo = storage.file_info(info.url, storage_options=info.storage_options)
    except FileNotFoundError as exc:
        raise gone(info.url, exc) from exc
    now_print = fingerprint_of(finfo)
    if now_print != info.fingerprint:
        raise StorageError(
            f"{info.url}: the file changed after it was opened (size and modification marker "
            f"were {info.fingerprint}, are {now_print}); its byte layout may differ: open it "
            "again (cloudlab.fits.clear_cache() forgets old headers)"
        )
    if len(_validated) >= _VALIDATED_MAX:
        _validated.clear()
    _validated[key] = now


# --------------------------------------------------------------------------------------------
# index normalisation
# --------------------------------------------------------------------------------------------


def normalize_index(index: Any, shape: tuple[int, ...]) -> tuple[list[tuple[int, int]], tuple]:
    """Split an index into a bounding box and the index to apply inside that box.

    Parameters
    ----------
    index : int, slice, list, array, Ellipsis or tuple of them
        A numpy index of an array of ``shape`` (no ``None``/newaxis).
    shape : tuple of int
        Array shape.

    Returns
    -------
    box : list of (start, stop)
        Bounding box per axis.
    local : tuple
        Index that, applied to the box, gives ``array[index]``.
    """
    if not isinstance(index, tuple):
        index = (index,)
    if any(i is None for i in index):
        raise IndexError("newaxis (None) is not supported when reading FITS regions")
    n_ellipsis = sum(i is Ellipsis for i in index)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis")
    if n_ellipsis:
        pos = next(k for k, i in enumerate(index) if i is Ellipsis)
        fill = len(shape) - (len(index) - 1)
        index = index[:pos] + (slice(None),) * fill + index[pos + 1 :]
    if len(index) > len(shape):
        raise IndexError(f"too many indices for an array of shape {shape}")
    index = index + (slice(None),) * (len(shape) - len(index))
    box: list[tuple[int, int]] = []
    local: list[Any] = []
    for key, n in zip(index, shape, strict=True):
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            count = len(range(start, stop, step))
            if count == 0:
                box.append((0, 0))
                local.append(slice(0, 0))
            elif step > 0:
                last = start + (count - 1) * step
                box.append((start, last + 1))
                local.append(slice(0, last + 1 - start, step))
            else:
                last = start + (count - 1) * step
                box.append((last, start + 1))
                local.append(slice(start - last, None, step))
        elif isinstance(key, (int, np.integer)):
            k = int(key)
            if not -n <= k < n:
                raise IndexError(f"index {k} is out of bounds for axis with size {n}")
            k %= n
            box.append((k, k + 1))
            local.append(0)
        else:
            arr = np.asarray(key)
            if arr.dtype == bool:
                if arr.shape != (n,):
                    raise IndexError(f"boolean index of shape {arr.shape} for axis of size {n}")
                arr = np.flatnonzero(arr)
            if arr.dtype.kind not in "iu":
                raise IndexError(f"unsupported index {key!r}")
            if arr.size == 0:
                box.append((0, 0))
                local.append(arr.astype(np.intp))
                continue
            if arr.min() < -n or arr.max() >= n:
                raise IndexError(f"index out of bounds for axis with size {n}")
            arr = arr % n
            lo = int(arr.min())
            box.append((lo, int(arr.max()) + 1))
            local.append(arr - lo)
    return box, tuple(local)


# --------------------------------------------------------------------------------------------
# byte ranges
# --------------------------------------------------------------------------------------------


def plan_ranges(
    box: list[tuple[int, int]], shape: tuple[int, ...], itemsize: int, data_offset: int
) -> tuple[np.ndarray, int]:
    """Byte offsets of the contiguous runs covering ``box`` in a C-ordered array.

    Parameters
    ----------
    box : list of (start, stop)
        Region per axis (non-empty).
    shape : tuple of int
        Array shape.
    itemsize : int
        Bytes per element.
    data_offset : int
        Byte offset of element 0 in the file.

    Returns
    -------
    starts : numpy.ndarray of int64
        Byte offset of each run, ascending.
    run_bytes : int
        Length of every run in bytes.
    """
    ndim = len(shape)
    strides = [int(np.prod(shape[i + 1 :], dtype=np.int64)) for i in range(ndim)]
    d = ndim - 1
    while d > 0 and box[d] == (0, shape[d]):
        d -= 1
    run_elems = (box[d][1] - box[d][0]) * strides[d]
    base = np.array([box[d][0] * strides[d]], dtype=np.int64)
    for i in range(d - 1, -1, -1):
        outer = np.arange(box[i][0], box[i][1], dtype=np.int64) * strides[i]
        base = (outer[:, None] + base[None, :]).ravel()
    return data_offset + base * itemsize, run_elems * itemsize


def merge_ranges(starts: np.ndarray, ends: np.ndarray, gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge byte ranges that overlap or lie at most ``gap`` bytes apart.

    Parameters
    ----------
    starts, ends : numpy.ndarray
        Ranges ``[start, end)`` in any order (they may overlap).
    gap : int
        Largest distance in bytes between two ranges fetched as one.

    Returns
    -------
    mstarts, mends : numpy.ndarray of int64
        Merged ranges, sorted and disjoint.
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    if len(starts) <= 1:
        return starts, ends
    if np.all(starts[1:] >= starts[:-1]):
        s, e = starts, ends
    else:
        order = np.argsort(starts, kind="stable")
        s, e = starts[order], ends[order]
    reach = np.maximum.accumulate(e)
    new = np.ones(len(s), dtype=bool)
    new[1:] = s[1:] > reach[:-1] + gap
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, len(s) - 1)
    return s[first], reach[last]


@dataclass(frozen=True)
class ReadPlan:
    """The byte ranges that read a set of boxes of one HDU.

    Attributes
    ----------
    starts, ends : numpy.ndarray of int64
        Merged ranges ``[start, end)`` fetched in one batched call (sorted, disjoint).
    runs : list of (numpy.ndarray, int)
        Per box: the start of each contiguous run (ascending) and the bytes of every run.
    """

    starts: np.ndarray
    ends: np.ndarray
    runs: list[tuple[np.ndarray, int]]

    @property
    def needed(self) -> int:
        """Bytes the boxes hold (overlapping boxes counted once each)."""
        return int(sum(len(s) * n for s, n in self.runs))

    @property
    def fetched(self) -> int:
        """Bytes of the merged ranges."""
        return int((self.ends - self.starts).sum())


def plan_reads(
    boxes: Sequence[Box],
    shape: tuple[int, ...],
    itemsize: int,
    data_offset: int,
    gap: int | None = None,
) -> ReadPlan:
    """Plan the byte ranges that read several non-empty boxes of a C-ordered array.

    Parameters
    ----------
    boxes : sequence of sequences of (start, stop)
        Non-empty boxes inside the array, one (start, stop) per leading axis; axes left out
        are whole.
    shape : tuple of int
        Array shape.
    itemsize : int
        Bytes per element.
    data_offset : int
        Byte offset of element 0 in the file.
    gap : int, optional
        Merge gap in bytes (default :func:`merge_gap`).

    Returns
    -------
    ReadPlan
    """
    full = [[*box, *((0, n) for n in shape[len(box) :])] for box in boxes]
    runs = [plan_ranges(box, shape, itemsize, data_offset) for box in full]
    if not runs:
        empty = np.empty(0, dtype=np.int64)
        return ReadPlan(empty, empty, [])
    if len(runs) == 1:
        starts, ends = runs[0][0], runs[0][0] + runs[0][1]
    else:
        starts = np.concatenate([s for s, _ in runs])
        ends = np.concatenate([s + n for s, n in runs])
    mstarts, mends = merge_ranges(starts, ends, merge_gap() if gap is None else gap)
    return ReadPlan(mstarts, mends, runs)


def _assemble(
    buf: np.ndarray,
    offsets: np.ndarray,
    mstarts: np.ndarray,
    starts: np.ndarray,
    run_bytes: int,
    alone: bool,
) -> np.ndarray:
    """A box's runs as one contiguous byte buffer of its own.

    ``offsets[k]`` is where merged range ``k`` (starting at file byte ``mstarts[k]``) lies in
    ``buf``. A box read ``alone`` whose runs lie back to back in ``buf`` is a view of it (no
    copy); boxes read together are copies, since scaling may swap bytes in place and boxes may
    share bytes.
    """
    where = np.searchsorted(mstarts, starts, side="right") - 1
    pos = offsets[where] + (starts - mstarts[where])
    n = len(pos)
    steps = np.diff(pos)
    if n == 1 or np.all(steps == run_bytes):
        view = buf[pos[0] : pos[0] + n * run_bytes]
        return view if alone else view.copy()
    if np.all(steps == steps[0]) and steps[0] > 0:
        strided = np.lib.stride_tricks.as_strided(
            buf[pos[0] :], shape=(n, run_bytes), strides=(int(steps[0]), 1), writeable=False
        )
        return strided.copy().reshape(-1)
    out = np.empty((n, run_bytes), dtype=np.uint8)
    for k, p in enumerate(pos.tolist()):
        out[k] = buf[p : p + run_bytes]
    return out.reshape(-1)


def fetch_ranges(
    info: HDUInfo, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fetch merged byte ranges of ``info``'s file with one batched request.

    Remote (and local) files: one ``storage.cat_ranges`` call; gzip files: one decompressed span
    from the first start to the last end. Region reads of local uncompressed files do not come
    here: they copy straight out of a memory map (:func:`read_local_boxes`).

    Parameters
    ----------
    info : HDUInfo
        The HDU (its file, storage options and whether it is gzip-compressed).
    starts, ends : numpy.ndarray
        Sorted, disjoint byte ranges ``[start, end)``.

    Returns
    -------
    buf : numpy.ndarray
        uint8 buffer holding every range.
    offsets : numpy.ndarray of int64
        Where each range starts in ``buf``.

    Raises
    ------
    FITSFormatError
        The file is shorter than a range (truncated).
    StorageError
        The server answered a range request with more bytes than asked (it ignores HTTP Range
        requests), or the file changed since it was opened (:func:`check_unchanged`).
    NotFoundError
        The file is gone.
    """
    check_unchanged(info)
    sizes = ends - starts
    if info.gzip:
        first, last = int(starts[0]), int(ends[-1])
        buf = np.frombuffer(
            read_gzip_span(info.url, first, last, storage_options=info.storage_options), np.uint8
        )
        offsets = starts - first
        got = np.clip(len(buf) - offsets, 0, sizes)
    else:
        raw = cat_ranges(
            info.url, starts.tolist(), ends.tolist(), storage_options=info.storage_options
        )
        got = np.array([len(part) for part in raw], dtype=np.int64)
        joined = raw[0] if len(raw) == 1 else bytearray().join(raw)
        buf = np.frombuffer(joined, dtype=np.uint8)
        offsets = np.cumsum(got) - got
    short = np.flatnonzero(got != sizes)
    if len(short):
        k = short[0]
        raise FITSFormatError(
            f"{info.url}: truncated: asked for bytes {starts[k]}-{ends[k]} of HDU {info.index}, "
            f"got {got[k]} bytes; the file is shorter than its header says"
        )
    return buf, offsets


def _tile_boxes(info: HDUInfo, box: Box) -> list[tuple[int, Box]]:
    """The tiles of a compressed HDU that ``box`` touches: (0-based table row, tile box)."""
    tiles = info.tile_shape or info.shape
    grid = [-(-n // t) for n, t in zip(info.shape, tiles, strict=True)]
    ranges = [range(a // t, -(-b // t)) for (a, b), t in zip(box, tiles, strict=True)]
    out = []
    for idx in itertools.product(*ranges):
        row = int(np.ravel_multi_index(idx, grid))  # FITS axis 1 (numpy's last) varies fastest
        spans = zip(idx, tiles, info.shape, strict=True)
        tile = [(i * t, min((i + 1) * t, n)) for i, t, n in spans]
        out.append((row, tile))
    return out


def _corrupt_tile(info: HDUInfo, section: Any, box: Box, exc: BaseException) -> FITSFormatError:
    """The error for a box whose tiles do not decompress, naming the first bad tile."""
    where = f"{info.url}: HDU {info.index} ({info.name or 'unnamed'})"
    for row, tile in _tile_boxes(info, box):
        try:
            section[tuple(slice(a, b) for a, b in tile)]
        except Exception as tile_exc:  # noqa: BLE001 (astropy/cfitsio raise plain Exceptions)
            pixels = ", ".join(f"{a}:{b}" for a, b in tile)
            return FITSFormatError(
                f"{where}: compressed tile in table row {row + 1} (pixels [{pixels}]) does not "
                f"decompress: {tile_exc}; the file is corrupt: re-download or re-create it"
            )
    return FITSFormatError(f"{where}: compressed tiles do not decompress: {exc}")


def _gzip_hdul(info: HDUInfo) -> fits.HDUList:
    """A gzip file's compressed HDU decompressed into memory, as HDU 1 after a dummy primary."""
    end = info.data_offset + padded(info.data_size)
    blob = read_gzip_span(info.url, info.header_offset, end, storage_options=info.storage_options)
    if len(blob) < info.data_offset - info.header_offset + info.data_size:
        raise FITSFormatError(
            f"{info.url}: truncated: HDU {info.index} data ends beyond the end of the gzip stream"
        )
    primary = fits.PrimaryHDU().header.tostring().encode("ascii")
    return fits.HDUList.fromstring(primary + blob + b"\0" * (padded(len(blob)) - len(blob)))


def _tile_error(info: HDUInfo, row: int, tile: Box, exc: BaseException) -> FITSFormatError:
    pixels = ", ".join(f"{a}:{b}" for a, b in tile)
    return FITSFormatError(
        f"{info.url}: HDU {info.index} ({info.name or 'unnamed'}): compressed tile in table row "
        f"{row + 1} (pixels [{pixels}]) does not decompress: {exc}; the file is corrupt: "
        "re-download or re-create it"
    )


def _read_tiles(info: HDUInfo, table: TileTable, boxes: Sequence[Box]) -> list[np.ndarray]:
    """Read boxes of a tile-compressed HDU fetching only the heap bytes of the tiles they touch
    (one batched request, tiles adjacent in the heap merged), each tile decoded once."""
    touched = {box_k: _tile_boxes(info, box) for box_k, box in enumerate(boxes)}
    rows = np.unique([row for tiles in touched.values() for row, _ in tiles])
    starts, ends = merge_ranges(
        table.starts[rows], table.starts[rows] + table.sizes[rows], merge_gap()
    )
    buf, offsets = fetch_ranges(info, starts, ends)
    where = np.searchsorted(starts, table.starts[rows], side="right") - 1
    at = dict(zip(rows.tolist(), (offsets[where] + table.starts[rows] - starts[where]).tolist(),
                  strict=True))  # fmt: skip
    dtype = info.raw_dtype.newbyteorder("=")
    decoded: dict[int, np.ndarray] = {}
    out = []
    for box_k, box in enumerate(boxes):
        raw = np.empty([b - a for a, b in box], dtype=dtype)
        for row, tile in touched[box_k]:
            if row not in decoded:
                first, size = at[row], int(table.sizes[row])
                shape = tuple(b - a for a, b in tile)
                try:
                    values = table.codec.decode_tile(buf[first : first + size], shape)
                except (OSError, MemoryError):
                    raise
                except Exception as exc:  # noqa: BLE001 (the decompressors raise plain Exceptions)
                    raise _tile_error(info, row, tile, exc) from exc
                if table.zblank is not None and values.dtype.kind == "f":
                    values = np.where(values == table.zblank, np.nan, values)
                decoded[row] = values
            cut = tuple(
                slice(max(a, ta), min(b, tb)) for (a, b), (ta, tb) in zip(box, tile, strict=True)
            )
            inside = tuple(
                slice(c.start - ta, c.stop - ta) for c, (ta, _) in zip(cut, tile, strict=True)
            )
            into = tuple(slice(c.start - a, c.stop - a) for c, (a, _) in zip(cut, box, strict=True))
            raw[into] = decoded[row][inside]
        out.append(scale(raw, info))
    return out


def _read_compressed(info: HDUInfo, boxes: Sequence[Box]) -> list[np.ndarray]:
    """Read boxes of a tile-compressed HDU: only the tiles they touch (:func:`_read_tiles`),
    or, for tiles one codec cannot decode (quantized floating point...), through astropy's
    ``section`` (one open; a gzip file's HDU is decompressed once into memory)."""
    check_unchanged(info)
    if not info.gzip:
        try:
            table = tile_table(info)
        except UnsupportedTiles:
            pass
        else:
            return _read_tiles(info, table, boxes)

    def cut(section: Any) -> list[np.ndarray]:
        out = []
        for box in boxes:
            try:
                data = section[tuple(slice(a, b) for a, b in box)]
            except (OSError, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 (cfitsio raises plain Exceptions)
                raise _corrupt_tile(info, section, box, exc) from exc
            out.append(np.array(data, dtype=data.dtype.newbyteorder("=")))
        return out

    def read() -> list[np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if info.gzip:
                with _gzip_hdul(info) as hdul:
                    return cut(hdul[1].section)
            fs, path = storage.resolve(info.url, storage_options=info.storage_options)
            with (
                fs.open(path, "rb", block_size=2**20, cache_type="readahead") as f,
                fits.open(f, memmap=False, lazy_load_hdus=True) as hdul,
            ):
                return cut(hdul[info.index].section)

    try:
        return storage.retry(read, what=info.url)
    except NotFoundError:
        raise
    except FileNotFoundError as exc:
        raise gone(info.url, exc) from exc


def read_local_boxes(info: HDUInfo, path: str, boxes: Sequence[Box]) -> list[np.ndarray]:
    """Scaled pixels of non-empty boxes of a local uncompressed HDU, copied from a memory map.

    The fast path of local files: the file is mapped read-only (the map is kept for the next
    read, :func:`~cloudlab.fits.sources.map_local`), each box is one strided numpy view of the
    mapped bytes, and scaling (:func:`scale`) makes the one copy that converts to
    native byte order, so a page-cached region costs what numpy's copy costs. The file's size is
    checked first (a truncated file raises instead of faulting), and :func:`check_unchanged`
    runs as for every read.

    Parameters
    ----------
    info : HDUInfo
        An uncompressed image HDU of a local file.
    path : str
        The file's local path.
    boxes : sequence of boxes
        Non-empty (start, stop) per axis, inside the image.

    Returns
    -------
    list of numpy.ndarray
        One array per box, equal to ``astropy.io.fits.getdata(path, hdu)[box]``.

    Raises
    ------
    FITSFormatError
        The file is shorter than the boxes need (truncated).
    NotFoundError, StorageError
        The file is gone or was rewritten after it was opened.
    """
    check_unchanged(info)
    itemsize = info.raw_dtype.itemsize
    last = max(int(np.ravel_multi_index([b - 1 for _, b in box], info.shape)) for box in boxes)
    end = info.data_offset + (last + 1) * itemsize
    mapped = map_local(path, end, f"{info.url}: HDU {info.index}")
    # only the elements up to the boxes' last one need be in the file (a file cut short after
    # it was opened still reads what it holds): a flat view of those, strided to the HDU's shape
    flat = np.frombuffer(mapped, dtype=info.raw_dtype, count=last + 1, offset=info.data_offset)
    strides = tuple(int(np.prod(info.shape[k + 1 :], dtype=np.int64)) * itemsize
                    for k in range(len(info.shape)))  # fmt: skip
    whole = np.lib.stride_tricks.as_strided(flat, info.shape, strides, writeable=False)
    out = []
    for box in boxes:
        data = scale(whole[tuple(slice(a, b) for a, b in box)], info)
        out.append(np.array(data) if np.may_share_memory(data, whole) else data)
    release_pages(mapped, info.data_offset, end)
    return out


def _read_boxes(info: HDUInfo, boxes: Sequence[Box]) -> list[np.ndarray]:
    """Scaled pixels of valid boxes (empty boxes allowed), in the order given."""
    out: list[np.ndarray | None] = [None] * len(boxes)
    todo = []
    for k, box in enumerate(boxes):
        if any(a == b for a, b in box):
            out[k] = np.empty([b - a for a, b in box], dtype=info.dtype)
        else:
            todo.append(k)
    if not todo:
        return out
    if info.kind == "compressed":
        for k, data in zip(todo, _read_compressed(info, [boxes[k] for k in todo]), strict=True):
            out[k] = data
        return out
    local = None
    if not info.gzip:
        local = storage.local_path(info.url, storage_options=info.storage_options)
    if local is not None:
        found = read_local_boxes(info, local, [boxes[k] for k in todo])
        for k, data in zip(todo, found, strict=True):
            out[k] = data
        return out
    plan = plan_reads([boxes[k] for k in todo], info.shape, info.raw_dtype.itemsize,
                      info.data_offset)  # fmt: skip
    buf, offsets = fetch_ranges(info, plan.starts, plan.ends)
    alone = len(todo) == 1
    for k, (starts, run_bytes) in zip(todo, plan.runs, strict=True):
        counts = tuple(b - a for a, b in boxes[k])
        raw = _assemble(buf, offsets, plan.starts, starts, run_bytes, alone).view(info.raw_dtype)
        out[k] = scale(raw.reshape(counts), info)
    return out


def check_image(info: HDUInfo) -> None:
    """Raise unless ``info`` is an image HDU with data (naming the file and HDU)."""
    if info.groups:
        raise FITSFormatError(
            f"{info.url}: HDU {info.index} is a random-groups HDU (GROUPS = T, interferometer "
            "visibilities), which cloudlab does not read as an image; read it with "
            "astropy.io.fits (its .data is a GroupData table) or convert it to an image or table"
        )
    if info.kind == "table":
        raise FITSFormatError(
            f"{info.url}: HDU {info.index} ({info.name or 'unnamed'}) is a "
            f"{info.get('XTENSION', 'table')}, not an image; use read_table"
        )
    if not info.shape:
        raise FITSFormatError(
            f"{info.url}: HDU {info.index} ({info.name or 'unnamed'}) has no data"
        )
    if 0 in info.shape:
        empty = [f"NAXIS{len(info.shape) - k} = 0" for k, n in enumerate(info.shape) if n == 0]
        raise FITSFormatError(
            f"{info.url}: HDU {info.index} ({info.name or 'unnamed'}) has no data: a zero-size "
            f"image ({', '.join(empty)}, shape {info.shape}); nothing to read"
        )


def _as_box(box: Any, shape: tuple[int, ...], info: HDUInfo, k: int) -> Box:
    """A box given as slices (step 1) or (start, stop) pairs, one per leading axis."""
    where = f"{info.url}: HDU {info.index}: box {k}"
    if isinstance(box, slice):
        box = (box,)
    if len(box) > len(shape):
        raise InputError(f"{where} has {len(box)} axes, the image has {len(shape)} {shape}")
    out: Box = []
    for axis, (item, n) in enumerate(zip(box, shape, strict=False)):
        if isinstance(item, slice):
            if item.step not in (None, 1):
                raise InputError(f"{where}: axis {axis} has step {item.step}; boxes take step 1")
            a = 0 if item.start is None else int(item.start)
            b = n if item.stop is None else int(item.stop)
        else:
            try:
                a, b = (int(v) for v in item)
            except (TypeError, ValueError) as exc:
                raise InputError(
                    f"{where}: axis {axis} is {item!r}; give a slice or a (start, stop) pair"
                ) from exc
        if not 0 <= a <= b <= n:
            raise InputError(
                f"{where}: axis {axis} spans {a}:{b}, outside 0:{n} (image shape {shape}); "
                "clip the box to the image"
            )
        out.append((a, b))
    out.extend((0, n) for n in shape[len(out) :])
    return out


def read_regions(info: HDUInfo, boxes: Sequence[Any]) -> list[np.ndarray]:
    """Read many boxes of one image HDU with one batched request, scaled exactly as astropy does.

    The contiguous byte runs of all boxes are merged where they overlap or lie closer than the
    merge gap (dask config ``cloudlab.fits.merge-gap``, default 1024 bytes) and fetched with one
    batched request (:func:`fetch_ranges`: a single ``storage.cat_ranges`` call for remote files;
    tile-compressed HDUs: the compressed bytes of the tiles the boxes touch, after the tile table
    on the first read of a file).

    Parameters
    ----------
    info : HDUInfo
        From :func:`cloudlab.fits.hdu_info`.
    boxes : sequence of boxes
        Each box is a sequence with one ``slice`` (step 1) or ``(start, stop)`` pair per leading
        axis; axes left out are read whole. Boxes must lie inside the image and may overlap.

    Returns
    -------
    list of numpy.ndarray
        One array per box, shaped like the box (no axis dropped), equal to
        ``astropy.io.fits.getdata(url, hdu)[box]``.

    Raises
    ------
    FITSFormatError
        A table HDU, an HDU without data, or a file shorter than its header says.
    InputError
        A box outside the image, with a step, or with more axes than the image.
    """
    check_image(info)
    checked = [_as_box(box, info.shape, info, k) for k, box in enumerate(boxes)]
    return _read_boxes(info, checked)


def read_region(info: HDUInfo, index: Any) -> np.ndarray:
    """Read one region of an image HDU, scaled exactly as astropy does.

    Parameters
    ----------
    info : HDUInfo
        From :func:`cloudlab.fits.hdu_info`.
    index : tuple of slices (or any basic/integer-array numpy index)
        The region.

    Returns
    -------
    numpy.ndarray
        ``astropy.io.fits.getdata(url, hdu)[index]``: the bounding box of ``index`` is read like
        one box of :func:`read_regions`, then ``index`` is applied inside it.
    """
    check_image(info)
    box, local = normalize_index(index, info.shape)
    (data,) = _read_boxes(info, [box])
    return data[local]


# --------------------------------------------------------------------------------------------
# scaling exactly as astropy.io.fits does it
# --------------------------------------------------------------------------------------------


def scale(raw: np.ndarray, info: HDUInfo) -> np.ndarray:
    """Apply BSCALE/BZERO/BLANK to raw big-endian pixels the way astropy does (``uint=True``).

    Parameters
    ----------
    raw : numpy.ndarray
        Pixels in the on-disk dtype.
    info : HDUInfo
        Scaling keywords and the resulting dtype.

    Returns
    -------
    numpy.ndarray
        Native byte order, dtype ``info.dtype``.
    """
    bscale, bzero, blank = info.bscale, info.bzero, info.blank
    if bzero == 0 and bscale == 1 and blank is None:
        if raw.dtype.isnative or raw.dtype.itemsize == 1:
            return raw.view(info.dtype)
        if raw.flags.writeable:  # swap in place: no copy
            return raw.byteswap(inplace=True).view(info.dtype)
        return raw.astype(info.dtype)
    if info.dtype.kind == "u" and raw.dtype.kind == "i":  # pseudo-unsigned integers
        data = np.array(raw, dtype=info.dtype)
        data -= np.uint64(1 << (info.dtype.itemsize * 8 - 1))
        return data
    blanks = raw == blank if blank is not None and raw.dtype.kind in "iu" else None
    data = np.array(raw, dtype=info.dtype)
    if bscale != 1:
        np.multiply(data, bscale, data)
    if bzero != 0:
        data += bzero
    if blank and blanks is not None and data.dtype.kind == "f":
        data[blanks] = np.nan
    return data
