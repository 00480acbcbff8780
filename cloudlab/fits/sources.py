"""Byte sources of FITS files: ranged reads of plain files, decompressed reads of ``.gz`` files.

The header walk reads through a source (a few blocks per request). Region reads
(:func:`cloudlab.fits.regions.fetch_ranges`) fetch remote files' pixel bytes with one
``storage.cat_ranges`` call and gzip files' with :func:`read_gzip_span`; local uncompressed files
are memory-mapped (:func:`map_local`) and their regions copied straight out of the page cache.
"""

from __future__ import annotations

import gzip
import mmap
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import IO

from cloudlab import storage
from cloudlab.errors import FITSFormatError, NotFoundError, StorageError

__all__ = [
    "UNREAD_COMPRESSIONS",
    "GzipSource",
    "RangedSource",
    "cat_ranges",
    "gone",
    "map_local",
    "release_pages",
    "read_gzip_span",
    "refuse_compression",
]

#: Leading bytes of whole-file compressions cloudlab does not decompress: name and the command
#: that undoes them.
UNREAD_COMPRESSIONS = {
    b"\x1f\x9d": ("Unix compress (.Z, LZW)", "uncompress"),
    b"BZh": ("bzip2 (.bz2)", "bunzip2"),
    b"PK\x03\x04": ("zip (.zip)", "unzip"),
    b"\xfd7zXZ\x00": ("xz (.xz)", "unxz"),
}


def refuse_compression(url: str, magic: bytes) -> None:
    """Raise :class:`FITSFormatError` when ``magic`` (a file's first bytes) marks a whole-file
    compression cloudlab does not read (``.Z``, ``.bz2``, ``.zip``, ``.xz``).

    Raises
    ------
    FITSFormatError
        Naming the file and the format and saying how to decompress it.
    """
    for prefix, (name, command) in UNREAD_COMPRESSIONS.items():
        if magic.startswith(prefix):
            raise FITSFormatError(
                f"{url}: the file is {name} compressed, which cloudlab does not read; "
                f"decompress it first (e.g. `{command}`), or recompress it with gzip (.fits.gz)"
            )


def gone(url: str, exc: BaseException) -> NotFoundError:
    """The error for a file that was opened but is missing when its bytes are read."""
    err = NotFoundError(
        f"{url}: the file is gone (deleted or moved after it was opened): {exc}; "
        "restore it, or open the new location"
    )
    err.__cause__ = exc
    return err


def cat_ranges(
    url: str, starts: Sequence[int], ends: Sequence[int], *, storage_options: dict | None
) -> list[bytes]:
    """``storage.cat_ranges`` that refuses answers longer than asked and names vanished files.

    A server that ignores HTTP Range requests answers ``200 OK`` with the whole file instead of
    ``206 Partial Content``: using those bytes as the range asked for would give wrong pixels.

    Raises
    ------
    StorageError
        A range came back longer than asked (the server ignored the Range header).
    NotFoundError
        The file no longer exists.
    """
    try:
        parts = storage.cat_ranges(url, starts, ends, storage_options=storage_options)
    except NotFoundError:
        raise
    except FileNotFoundError as exc:
        raise gone(url, exc) from exc
    for start, end, part in zip(starts, ends, parts, strict=True):
        if len(part) > int(end) - int(start):
            raise StorageError(
                f"{url}: asked for bytes {start}-{end} ({int(end) - int(start)} bytes) and got "
                f"{len(part)} bytes: the server ignored the HTTP Range request (it answered "
                "200 with the whole file instead of 206 Partial Content); serve the file from a "
                "server or bucket that supports range requests, or download it first"
            )
    return parts


class RangedSource:
    """Ranged reads of a plain file with a small read-ahead buffer.

    A local file is opened once, on the first read, and read from that handle until
    :meth:`close` (a header walk costs one open, not one per read); other files are read with
    one :func:`cat_ranges` call per read.

    Parameters
    ----------
    url : str
        Any fsspec URL or local path.
    storage_options : dict or None
        Filesystem keyword arguments.
    size : int
        File size in bytes (reads stop there).
    """

    def __init__(self, url: str, storage_options: dict | None, size: int):
        self.url = url
        self.storage_options = storage_options
        self.size = size
        self._start = 0
        self._buf = b""
        self._path = storage.local_path(url, storage_options=storage_options)
        self._file: IO[bytes] | None = None

    def read(self, start: int, end: int, readahead: int = 0) -> bytes:
        """Bytes ``[start, end)`` (short at end of file); fetches at least ``readahead`` bytes."""
        end = min(end, self.size)
        if start >= end:
            return b""
        if self._start <= start and end <= self._start + len(self._buf):
            return self._buf[start - self._start : end - self._start]
        stop = min(max(end, start + readahead), self.size)
        if self._path is None:
            (data,) = cat_ranges(self.url, [start], [stop], storage_options=self.storage_options)
        else:
            data = storage.retry(lambda: self._read_local(start, stop), what=self.url)
        self._start, self._buf = start, data
        return data[: end - start]

    def _read_local(self, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of the local file (short at its end), opened on first use."""
        try:
            if self._file is None:
                self._file = open(self._path, "rb")  # closed by close()
            self._file.seek(start)
            return self._file.read(stop - start)
        except FileNotFoundError as exc:
            raise gone(self.url, exc) from exc

    def read_some(self, start: int, want: int, at_least: int) -> bytes:
        """Up to ``want`` bytes from ``start``: what the buffer holds when it holds at least
        ``at_least`` bytes there, else a new read of ``want`` bytes (short only at end of file)."""
        offset = start - self._start
        if 0 <= offset and offset + at_least <= len(self._buf):
            return self._buf[offset : offset + want]
        return self.read(start, start + want, readahead=want)

    def close(self) -> None:
        """Drop the buffer and close the local file."""
        self._buf = b""
        if self._file is not None:
            self._file.close()
            self._file = None


class GzipSource:
    """Sequential reads of a gzip-compressed file, at decompressed offsets.

    Reading backwards restarts the decompression from the beginning of the file.
    """

    def __init__(self, url: str, storage_options: dict | None):
        self.url = url
        self.storage_options = storage_options
        self._file: gzip.GzipFile | None = None
        self._raw: IO[bytes] | None = None

    def read(self, start: int, end: int, readahead: int = 0) -> bytes:
        """Decompressed bytes ``[start, end)`` (short at the end of the stream)."""
        if self._file is None or self._file.tell() > start:
            self.close()
            fs, path = storage.resolve(self.url, storage_options=self.storage_options)
            try:
                self._raw = fs.open(path, "rb")
            except FileNotFoundError as exc:
                raise gone(self.url, exc) from exc
            self._file = gzip.GzipFile(fileobj=self._raw)
        try:
            self._file.seek(start)
            return self._file.read(end - start)
        except (OSError, EOFError) as exc:
            raise FITSFormatError(
                f"{self.url}: corrupt gzip stream: {exc}; check the file or re-download it"
            ) from exc

    def read_some(self, start: int, want: int, at_least: int) -> bytes:
        """``want`` decompressed bytes from ``start`` (``at_least`` is not needed here)."""
        return self.read(start, start + want)

    def close(self) -> None:
        """Close the decompressor and the underlying file."""
        if self._file is not None:
            self._file.close()
        if self._raw is not None:
            self._raw.close()
        self._file = self._raw = None


def read_gzip_span(url: str, start: int, end: int, *, storage_options: dict | None = None) -> bytes:
    """Decompress a gzip-compressed file from its start up to ``end`` and keep ``[start, end)``.

    Parameters
    ----------
    url : str
        Any fsspec URL or local path of a ``.gz`` FITS file.
    storage_options : dict or None
        Filesystem keyword arguments.
    start, end : int
        Decompressed byte range.

    Returns
    -------
    bytes
        Short when the stream ends before ``end``.

    Raises
    ------
    FITSFormatError
        A corrupt or truncated gzip stream.
    """
    fs, path = storage.resolve(url, storage_options=storage_options)

    def read() -> bytes:
        with fs.open(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as f:
            f.seek(start)
            return f.read(end - start)

    try:
        return storage.retry(read, what=url)
    except NotFoundError:
        raise
    except FileNotFoundError as exc:
        raise gone(url, exc) from exc
    except (EOFError, gzip.BadGzipFile) as exc:
        raise FITSFormatError(
            f"{url}: corrupt or truncated gzip stream: {exc}; check the file or re-download it"
        ) from exc


#: Memory maps of local files kept open (most recently used last), keyed by path; an entry is
#: used only while the file's inode, size and mtime are those it was mapped with.
_MAPS: OrderedDict[str, tuple[tuple[int, int, int], mmap.mmap]] = OrderedDict()
_MAPS_MAX = 64
_MAPS_LOCK = threading.Lock()


def map_local(path: str, end: int, what: str) -> mmap.mmap:
    """A read-only memory map of a local file, after checking that it holds its first ``end``
    bytes.

    Maps are kept open (up to 64 files, least recently used dropped first), so that repeated
    reads of a page-cached file touch mapped pages only; each call checks the file's inode,
    size and mtime with one ``stat`` and maps it again when any changed.

    Parameters
    ----------
    path : str
        Local file path.
    end : int
        Bytes the caller will read (one past the last byte).
    what : str
        Start of the truncation message (file and HDU).

    Returns
    -------
    mmap.mmap
        The whole file, read-only (shared: do not close it).

    Raises
    ------
    NotFoundError
        The file is gone.
    FITSFormatError
        The file is shorter than ``end`` bytes (truncated).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise gone(path, exc) from exc
    if st.st_size < end:
        raise FITSFormatError(
            f"{what}: truncated: asked for bytes up to {end}, the file has {st.st_size} bytes; "
            "the file is shorter than its header says"
        )
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    with _MAPS_LOCK:
        hit = _MAPS.get(path)
        if hit is not None and hit[0] == key:
            _MAPS.move_to_end(path)
            return hit[1]
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except FileNotFoundError as exc:
        raise gone(path, exc) from exc
    try:
        st = os.fstat(fd)
        if st.st_size < end:
            raise FITSFormatError(
                f"{what}: truncated: asked for bytes up to {end}, the file has {st.st_size} "
                "bytes; the file is shorter than its header says"
            )
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    with _MAPS_LOCK:
        _MAPS[path] = ((st.st_ino, st.st_size, st.st_mtime_ns), mapped)
        _MAPS.move_to_end(path)
        while len(_MAPS) > _MAPS_MAX:  # dropped maps close once no array uses them
            _MAPS.popitem(last=False)
    return mapped


def release_pages(mapped: mmap.mmap, start: int, end: int) -> None:
    """In a dask worker, drop the pages of bytes ``start:end`` of a read-only file map from the
    process's resident memory once they have been copied out.

    A worker's memory manager counts the resident set, mapped file pages included, and cannot
    free those: page-cached FFIs made workers pause and spill. The pages stay in the operating
    system's page cache (the next read maps them again for a minor fault). Outside a worker,
    and where ``madvise`` is not available, nothing is done, so that repeated interactive reads
    of a file touch pages that are already mapped.
    """
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None or end <= start or not _in_dask_worker():
        return
    first = start - start % mmap.PAGESIZE
    last = min(len(mapped), end)
    try:
        mapped.madvise(advice, first, last - first)
    except (OSError, ValueError):  # an unmapped or shrunken range: nothing resident to drop
        pass


def _in_dask_worker() -> bool:
    """Whether this thread runs a task of a ``distributed`` worker."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True
