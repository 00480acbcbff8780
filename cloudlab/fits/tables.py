"""FITS tables and header scans: :func:`read_table`, :func:`read_headers` and the parallel
header pass that :func:`cloudlab.fits.open_stack` uses.

Header scans of many files run on the workers of the active distributed client when they can
read the files (:func:`cloudlab.cluster.reading_workers`), otherwise here (:func:`map_files`:
remote files in threads, local ones one after another unless they wait on the disk).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pandas as pd
from astropy.io import fits
from astropy.table import Table

from cloudlab import storage
from cloudlab.errors import FITSFormatError, NotFoundError
from cloudlab.fits.header import hdu_info, padded
from cloudlab.fits.sources import GzipSource, cat_ranges

__all__ = [
    "LOCAL_THREADS",
    "PROBE_FILES",
    "REMOTE_THREADS",
    "WAIT_RATIO",
    "gather_infos",
    "header_rows",
    "map_files",
    "raise_errors",
    "raise_missing",
    "read_headers",
    "read_infos",
    "read_table",
    "stack_infos",
]

_MAX_ERRORS_LISTED = 20


#: Header requests in flight at once for remote files: per scan in this process, per batch on a
#: cluster worker (each request mostly waits on the store's latency).
REMOTE_THREADS = 16
#: local files read one after another before deciding whether threads would help
PROBE_FILES = 32
#: local files read at once when the first ones waited on the disk
LOCAL_THREADS = 4
#: the first files waited on the disk when their wall time exceeds this many times the CPU
#: time they took
WAIT_RATIO = 1.5

T = TypeVar("T")


def map_files(
    func: Callable[[tuple[str, dict | None]], T],
    entries: list[tuple[str, dict | None]],
    *,
    threads: int | None = None,
    remote_threads: int = REMOTE_THREADS,
) -> list[T]:
    """``func`` of every ``(url, file info)`` of ``entries`` (a header read), in that order.

    With ``threads=None`` the files decide. Remote files are read in ``remote_threads`` threads
    (each request waits on the store). Local files are read one after another while their
    headers come from memory: the Python work of a file costs more than its reads then, and
    threads would only contend for the GIL (twice as slow on two cores). When the first
    :data:`PROBE_FILES` files waited on the disk more than they computed (a cold cache, a
    network file system), the rest are read in :data:`LOCAL_THREADS` threads.

    Parameters
    ----------
    func : callable
        Reads one file's headers from ``(url, file info or None)``.
    entries : list of (str, dict or None)
        The files, as :func:`cloudlab.storage.expand_detail` lists them.
    threads : int, optional
        Files read at once, whatever they are (1: one after another); None: as above.
    remote_threads : int
        Files read at once when they are not local (with ``threads=None``).

    Returns
    -------
    list
        ``func``'s results; the error of the first file (in ``entries``' order) that raised one
        is raised, one after another or in threads alike.
    """
    results: list[T] = []
    rest = entries
    if threads is None and all(storage.is_local(u) for u, _ in entries):
        wall, cpu = time.perf_counter(), time.thread_time()
        results = [func(entry) for entry in entries[:PROBE_FILES]]
        waited = time.perf_counter() - wall > WAIT_RATIO * (time.thread_time() - cpu)
        rest, threads = entries[PROBE_FILES:], LOCAL_THREADS if waited else 1
    elif threads is None:
        threads = remote_threads
    if threads <= 1 or len(rest) <= 1:
        return results + [func(entry) for entry in rest]
    with ThreadPoolExecutor(max_workers=min(threads, len(rest))) as pool:
        return results + list(pool.map(func, rest))


def read_infos(
    entries: list[tuple[str, dict | None]],
    hdu: int | str | tuple,
    *,
    storage_options: dict | None,
    threads: int | None = 1,
) -> list[tuple]:
    """Header information of many files (runs on cluster workers or here).

    Parameters
    ----------
    entries : list of (url, file info or None)
        The files, with their ``fs.info`` when a listing gave it.
    hdu : int, str or (str, int)
        The HDU to describe.
    storage_options : dict or None
        Filesystem options.
    threads : int or None
        Files read at once (a batch on a cluster worker reads remote files in threads); None:
        as :func:`map_files` chooses.

    Returns
    -------
    list of tuple
        Per file ``("ok", HDUInfo)``, ``("missing", url, message)`` or ``("error", url, message)``.
    """

    def one(entry: tuple[str, dict | None]) -> tuple:
        url, finfo = entry
        try:
            return ("ok", hdu_info(url, hdu, storage_options=storage_options, file_info=finfo))
        except FileNotFoundError as exc:
            return ("missing", url, str(exc))
        except (OSError, ValueError, TypeError) as exc:
            return ("error", url, f"{type(exc).__name__}: {exc}")

    return map_files(one, entries, threads=threads)


def stack_infos(
    entries: list[tuple[str, dict | None]],
    hdu: int | str | tuple,
    *,
    storage_options: dict | None,
    keys: tuple[str, ...] = (),
    threads: int | None = 1,
) -> list[tuple]:
    """Like :func:`read_infos`, plus the values of ``keys``; headers are dropped (except the
    first one) to keep results small when they travel back from cluster workers.

    Returns
    -------
    list of tuple
        Per file ``("ok", HDUInfo, {key: value})`` or ``("missing"|"error", url, message)``.
    """
    out: list[tuple] = []
    first = True
    for result in read_infos(entries, hdu, storage_options=storage_options, threads=threads):
        if result[0] != "ok":
            out.append(result)
            continue
        info = result[1]
        values = {key: info.get(key) for key in keys}
        out.append(("ok", info if first else info.light(), values))
        first = False
    return out


def header_rows(
    entries: list[tuple[str, dict | None]],
    hdu: int | str | tuple,
    *,
    storage_options: dict | None,
    threads: int | None = 1,
) -> list[tuple]:
    """Header keywords of many files as dicts (runs on cluster workers or here).

    Returns
    -------
    list of tuple
        Per file ``("ok", url, {keyword: value})``, or ``("missing"|"error", url, message)``.
    """
    out: list[tuple] = []
    for result in read_infos(entries, hdu, storage_options=storage_options, threads=threads):
        if result[0] != "ok":
            out.append(result)
            continue
        info = result[1]
        row: dict[str, Any] = {}
        for card in info.header.cards:
            key = card.keyword
            if key in ("", "COMMENT", "HISTORY", "CONTINUE") or key in row:
                continue
            row[key] = card.value
        out.append(("ok", info.url, row))
    return out


def _batches(items: list, n: int) -> list[list]:
    n = max(1, min(n, len(items)))
    size = -(-len(items) // n)
    return [items[i : i + size] for i in range(0, len(items), size)]


def gather_infos(
    entries: list[tuple[str, dict | None]],
    hdu: int | str | tuple,
    func: Callable[..., list[tuple]] = read_infos,
    *,
    storage_options: dict | None = None,
) -> list[tuple]:
    """Read headers with ``func`` (:func:`read_infos`, :func:`stack_infos` or
    :func:`header_rows`): in batches on the cluster's workers when they can read the files
    (remote files in :data:`REMOTE_THREADS` threads a batch), else here (:func:`map_files`).

    Returns
    -------
    list of tuple
        ``func``'s results, in the order of ``entries``.
    """
    if not entries:
        return []
    from cloudlab.cluster import reading_workers  # lazy: cluster imports dask_gateway

    client, workers = reading_workers([u for u, _ in entries])
    if workers and len(entries) > 1:
        local = all(storage.is_local(u) for u, _ in entries)
        batches = _batches(entries, 4 * len(workers))
        futures = client.map(func, batches, hdu=hdu, storage_options=storage_options,
                             threads=1 if local else REMOTE_THREADS, pure=False)  # fmt: skip
        results = client.gather(futures)
        return [r for batch in results for r in batch]
    return func(entries, hdu=hdu, storage_options=storage_options, threads=None)


def raise_errors(errors: list[tuple], what: str) -> None:
    if not errors:
        return
    lines = [f"  {url}: {msg}" for _, url, msg in errors[:_MAX_ERRORS_LISTED]]
    more = len(errors) - _MAX_ERRORS_LISTED
    if more > 0:
        lines.append(f"  ... and {more} more")
    raise FITSFormatError(f"{what}: {len(errors)} file(s) could not be read:\n" + "\n".join(lines))


def raise_missing(missing: list[str], what: str) -> None:
    lines = [f"  {url}" for url in missing[:_MAX_ERRORS_LISTED]]
    if len(missing) > _MAX_ERRORS_LISTED:
        lines.append(f"  ... and {len(missing) - _MAX_ERRORS_LISTED} more")
    raise NotFoundError(f"{what}: {len(missing)} file(s) not found:\n" + "\n".join(lines))


def read_headers(
    urls: str | Sequence[str], hdu: int | str | tuple = 0, *, storage_options: dict | None = None
) -> pd.DataFrame:
    """Header keywords of many files as a table (on the cluster when a distributed client
    exists, otherwise here: :func:`map_files`).

    Parameters
    ----------
    urls : str or sequence of str
        A glob, a URL or a list.
    hdu : int, str or (str, int)
        HDU index or EXTNAME.
    storage_options : dict, optional
        Filesystem keyword arguments.

    Returns
    -------
    pandas.DataFrame
        One row per file (index ``url``), one column per keyword (COMMENT/HISTORY left out;
        a repeated keyword keeps its first value; absent keywords are missing values).
    """
    entries = storage.expand_detail(urls, storage_options=storage_options)
    what = f"read_headers({len(entries)} files, hdu={hdu!r})"
    results = gather_infos(entries, hdu, header_rows, storage_options=storage_options)
    raise_errors([r for r in results if r[0] == "error"], what)
    missing = [r[1] for r in results if r[0] == "missing"]
    if missing:
        raise_missing(missing, what)
    index = pd.Index([r[1] for r in results], name="url")
    return pd.DataFrame([r[2] for r in results], index=index)


def read_table(
    url: str, hdu: int | str | tuple = 1, *, storage_options: dict | None = None
) -> Table:
    """Read one table HDU, fetching only that HDU's header and data bytes.

    Parameters
    ----------
    url : str
        Any fsspec URL or local path.
    hdu : int, str or (str, int)
        HDU index or EXTNAME.
    storage_options : dict, optional
        Filesystem keyword arguments.

    Returns
    -------
    astropy.table.Table
        As ``Table.read(url, hdu=hdu)`` gives it (text columns as bytes).

    Raises
    ------
    FITSFormatError
        Not a table, truncated, or a table astropy cannot read (naming the file and HDU).
    """
    url = os.fspath(url)
    info = hdu_info(url, hdu, storage_options=storage_options)
    if info.kind != "table":
        raise FITSFormatError(
            f"{url}: HDU {info.index} is not a table (kind {info.kind!r}); use open_hdu for images"
        )
    start = info.header_offset
    end = info.data_offset + padded(info.data_size)
    if info.gzip:
        src = GzipSource(url, storage_options)
        try:
            blob = src.read(start, end)
        finally:
            src.close()
    else:
        end = min(end, info.file_size) if info.file_size is not None else end
        (blob,) = cat_ranges(url, [start], [end], storage_options=storage_options)
    if len(blob) < info.data_offset - start + info.data_size:
        raise FITSFormatError(
            f"{url}: truncated: HDU {info.index} data ends beyond the end of file"
        )
    blob = blob + b"\0" * (padded(len(blob)) - len(blob))
    if info.index > 0:
        primary = fits.PrimaryHDU().header.tostring().encode("ascii")
        blob = primary + b" " * (padded(len(primary)) - len(primary)) + blob
    hdul = fits.HDUList.fromstring(blob, character_as_bytes=True)  # as Table.read(path) gives
    target = 0 if info.index == 0 else 1
    try:
        return Table.read(hdul, hdu=target)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise FITSFormatError(
            f"{url}: HDU {info.index} ({info.name or 'unnamed'}): astropy cannot read this "
            f"table either ({type(exc).__name__}: {exc}); fix the table's column definitions"
        ) from exc
    finally:
        hdul.close()
