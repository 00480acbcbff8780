"""A local filesystem that counts what an object store would be asked for."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["CountingFileSystem"]


class CountingFileSystem(LocalFileSystem):
    """The local disk under ``countreads://``, counting the requests an object store would get.

    Counts (class-wide, thread-safe): ``list`` (directory listings), ``head`` (``info`` of one
    ``.fits`` file outside a listing: a glob's listing gives sizes for free), ``get`` (ranged
    reads), ``open`` (files opened for reading, as astropy reads them) and ``bytes`` (what the
    ranged reads returned plus what was read through opened files, read-ahead included) and
    ``most_in_flight`` (the most ranged reads under way at once). :meth:`reset` returns and
    clears them. Set the class attribute ``latency`` (seconds) to hold every ranged read back
    as an object store's first-byte latency does. Registered with fsspec when this module is
    imported.
    """

    protocol = "countreads"
    counts: Counter = Counter()
    lock = threading.Lock()
    listing = threading.local()
    ranged = threading.local()
    latency = 0.0
    _in_flight = 0

    def _count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def ls(self, path, detail=False, **kwargs):
        self._count("list")
        self.listing.active = True
        try:
            return super().ls(path, detail=detail, **kwargs)
        finally:
            self.listing.active = False

    def info(self, path, **kwargs):
        if not getattr(self.listing, "active", False) and str(path).endswith(".fits"):
            self._count("head")
        return super().info(path, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        cls = type(self)
        with self.lock:
            cls._in_flight += 1
            self.counts["most_in_flight"] = max(self.counts["most_in_flight"], cls._in_flight)
        self.ranged.active = True  # counted below, not again by the file it opens
        try:
            if self.latency:
                time.sleep(self.latency)
            data = super().cat_file(path, start=start, end=end, **kwargs)
        finally:
            self.ranged.active = False
            with self.lock:
                cls._in_flight -= 1
        self._count("get")
        self._count("bytes", len(data))
        return data

    def _open(self, path, mode="rb", **kwargs):
        if "r" not in mode or "+" in mode or getattr(self.ranged, "active", False):
            return super()._open(path, mode=mode, **kwargs)
        self._count("open")
        return io.BufferedReader(_CountingReader(self, super()._open(path, mode="rb")))

    @classmethod
    def reset(cls) -> Counter:
        """The counts so far, which are then cleared."""
        with cls.lock:
            before = Counter(cls.counts)
            cls.counts.clear()
        return before


class _CountingReader(io.RawIOBase):
    """A read-only file counting into its filesystem the bytes read through it."""

    def __init__(self, fs: CountingFileSystem, raw) -> None:
        self._fs, self._raw = fs, raw

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer)
        self._fs._count("bytes", n)
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


fsspec.register_implementation("countreads", CountingFileSystem, clobber=True)
