"""A local filesystem that counts what an object store would be asked for."""

from __future__ import annotations

import threading
from collections import Counter

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["CountingFileSystem"]


class CountingFileSystem(LocalFileSystem):
    """The local disk under ``countreads://``, counting the requests an object store would get.

    Counts (class-wide, thread-safe): ``list`` (directory listings), ``head`` (``info`` of one
    ``.fits`` file outside a listing: a glob's listing gives sizes for free), ``get`` (ranged
    reads) and ``bytes`` (what those reads returned). :meth:`reset` returns and clears them.
    Registered with fsspec when this module is imported.
    """

    protocol = "countreads"
    counts: Counter = Counter()
    lock = threading.Lock()
    listing = threading.local()

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
        data = super().cat_file(path, start=start, end=end, **kwargs)
        self._count("get")
        self._count("bytes", len(data))
        return data

    @classmethod
    def reset(cls) -> Counter:
        """The counts so far, which are then cleared."""
        with cls.lock:
            before = Counter(cls.counts)
            cls.counts.clear()
        return before


fsspec.register_implementation("countreads", CountingFileSystem, clobber=True)
