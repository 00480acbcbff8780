"""Lazy FITS core: headers from ranged reads, dask arrays whose chunks read only their bytes.

Public API (see ``docs/architecture.md``): :class:`HDUInfo`, :func:`hdu_info`, :func:`open_hdu`,
:func:`read_region`, :func:`open_stack`, :func:`read_headers`, :func:`read_table`.
"""

from __future__ import annotations

import functools
import os
import socket
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import dask.array as da
import dask.base
import dask.config
import numpy as np
import pandas as pd
import xarray as xr
from astropy.io import fits
from astropy.table import Table
from dask.base import tokenize
from dask.utils import parse_bytes

from cloudlab import storage
from cloudlab.fits_header import (
    FITSError,
    HDUInfo,
    _GzipSource,
    clear_cache,
    fits_text,
    hdu_info,
    padded,
)
from cloudlab.fits_read import FITSArray, StackArray, read_region

__all__ = [
    "FITSError",
    "HDUInfo",
    "clear_cache",
    "default_dims",
    "hdu_info",
    "open_hdu",
    "open_stack",
    "read_headers",
    "read_region",
    "read_table",
]

_MAX_ERRORS_LISTED = 20


def default_dims(ndim: int) -> tuple[str, ...]:
    """Default dimension names: ``("y", "x")``, ``("z", "y", "x")``, else ``dim_0 ...``."""
    if ndim == 2:
        return ("y", "x")
    if ndim == 3:
        return ("z", "y", "x")
    return tuple(f"dim_{i}" for i in range(ndim))


def _chunk_limit() -> int:
    return int(parse_bytes(dask.config.get("array.chunk-size", default="128MiB")))


def _layout_chunks(shape: tuple[int, ...], itemsize: int, step0: int = 1) -> tuple[int, ...]:
    """Chunks that keep the fastest axes whole (contiguous bytes), splitting the slowest ones.

    ``step0`` makes the chunk along axis 0 a multiple of it (tile rows of compressed images).
    """
    limit = _chunk_limit()
    chunks = [1] * len(shape)
    inner = itemsize
    for axis in range(len(shape) - 1, -1, -1):
        n = max(shape[axis], 1)
        if inner * n <= limit:
            chunks[axis] = n
            inner *= n
            continue
        chunks[axis] = max(1, limit // inner)
        break
    if shape and step0 > 1 and chunks[0] < shape[0]:
        chunks[0] = min(max(step0, chunks[0] // step0 * step0), shape[0])
    return tuple(chunks)


def _chunks_for(info: HDUInfo, chunks: Any) -> Any:
    if not (isinstance(chunks, str) and chunks == "auto"):
        return chunks
    if info.gzip:  # decompressing means reading from the start: one chunk
        return tuple(max(n, 1) for n in info.shape)
    step0 = info.tile_shape[0] if info.tile_shape else 1
    return _layout_chunks(info.shape, info.dtype.itemsize, step0)


def _check_image(info: HDUInfo) -> None:
    if info.kind == "table":
        raise FITSError(
            f"{info.url}: HDU {info.index} ({info.name or 'unnamed'}) is a "
            f"{info.get('XTENSION', 'table')}, not an image; use read_table"
        )
    if not info.shape or 0 in info.shape:
        raise FITSError(f"{info.url}: HDU {info.index} ({info.name or 'unnamed'}) has no data")


def _check_dims(dims: Sequence[str] | None, ndim: int, what: str) -> tuple[str, ...]:
    if dims is None:
        return default_dims(ndim)
    dims = tuple(dims)
    if len(dims) != ndim:
        raise ValueError(f"{what}: dims {dims} do not match the {ndim} axes of the data")
    return dims


def open_hdu(
    url: str,
    hdu: int | str | tuple = 0,
    *,
    chunks: Any = "auto",
    dims: Sequence[str] | None = None,
    storage_options: dict | None = None,
) -> xr.DataArray:
    """Open an image HDU lazily as a dask-backed DataArray.

    Only header blocks are read now. Each chunk later reads its own bytes with one batched
    request; slicing the result (``da[10:20, 30:40]``) reads only the bytes of that region.

    Parameters
    ----------
    url : str
        Any fsspec URL or local path.
    hdu : int, str or (str, int)
        HDU index, EXTNAME or (EXTNAME, EXTVER).
    chunks : "auto", int, tuple or dict
        dask chunks. ``"auto"`` keeps the fastest-varying axes whole (contiguous reads) and
        splits the slowest one to about dask's ``array.chunk-size``; tile-compressed HDUs are
        split along whole tile rows; whole-file ``.gz`` files are one chunk.
    dims : sequence of str, optional
        Dimension names; default ``("y", "x")``, ``("z", "y", "x")`` or ``dim_0 ...``.
    storage_options : dict, optional
        Filesystem keyword arguments.

    Returns
    -------
    xarray.DataArray
        Values equal to ``astropy.io.fits.getdata(url, hdu)``. ``attrs``: ``fits_header`` (the
        header as FITS text, as ``Header.tostring()`` gives it: ``Header.fromstring(text)``
        reads it back), ``url``, ``hdu`` (index), ``extname``.

    Raises
    ------
    FileNotFoundError, FITSError
        Raised now, naming the file: missing file, not FITS, truncated, header without END,
        HDU out of range, a table HDU, data larger than the file.
    """
    url = os.fspath(url)
    info = hdu_info(url, hdu, storage_options)
    _check_image(info)
    dim_names = _check_dims(dims, len(info.shape), url)
    if isinstance(chunks, dict):
        chunks = {dim_names.index(k) if isinstance(k, str) else k: v for k, v in chunks.items()}
    chunks = _chunks_for(info, chunks)
    arr = FITSArray(info)
    name = "fits-" + tokenize(arr, chunks)
    data = da.from_array(
        arr,
        chunks=chunks,
        name=name,
        asarray=False,
        fancy=True,
        meta=np.empty((0,) * len(info.shape), dtype=info.dtype),
    )
    attrs = {
        "fits_header": fits_text(info.header_text),
        "url": url,
        "hdu": info.index,
        "extname": info.name,
    }
    return xr.DataArray(data, dims=dim_names, attrs=attrs, name=info.name or f"hdu{info.index}")


# --------------------------------------------------------------------------------------------
# many files
# --------------------------------------------------------------------------------------------


def read_infos(
    entries: list[tuple[str, dict | None]], hdu: int | str | tuple, storage_options: dict | None
) -> list[tuple]:
    """Header information of many files (runs on cluster workers or in threads).

    Returns
    -------
    list of tuple
        Per file ``("ok", HDUInfo)``, ``("missing", url, message)`` or ``("error", url, message)``.
    """
    out: list[tuple] = []
    for url, finfo in entries:
        try:
            out.append(("ok", hdu_info(url, hdu, storage_options, file_info=finfo)))
        except FileNotFoundError as exc:
            out.append(("missing", url, str(exc)))
        except (FITSError, OSError, ValueError, TypeError) as exc:
            out.append(("error", url, f"{type(exc).__name__}: {exc}"))
    return out


def stack_infos(
    entries: list[tuple[str, dict | None]],
    hdu: int | str | tuple,
    storage_options: dict | None,
    keys: tuple[str, ...] = (),
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
    for result in read_infos(entries, hdu, storage_options):
        if result[0] != "ok":
            out.append(result)
            continue
        info = result[1]
        values = {key: info.get(key) for key in keys}
        out.append(("ok", info if first else info.light(), values))
        first = False
    return out


def header_rows(
    entries: list[tuple[str, dict | None]], hdu: int | str | tuple, storage_options: dict | None
) -> list[tuple]:
    """Header keywords of many files as dicts (runs on cluster workers or in threads).

    Returns
    -------
    list of tuple
        Per file ``("ok", url, {keyword: value})``, or ``("missing"|"error", url, message)``.
    """
    out: list[tuple] = []
    for result in read_infos(entries, hdu, storage_options):
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


def _get_client():
    """The distributed client when it is the active dask scheduler, else ``None``."""
    try:
        from distributed import get_client

        client = get_client()
    except (ImportError, ValueError):
        return None
    try:
        active = dask.base.get_scheduler()
    except ValueError:
        return None
    return client if active == client.get else None


def _local_hosts() -> set[str]:
    hosts = {"127.0.0.1", "localhost", "::1", socket.gethostname()}
    try:
        hosts.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return hosts


def _workers(client) -> list[str]:
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:
        info = client.scheduler_info()
    return list(info.get("workers", {}))


def _batches(items: list, n: int) -> list[list]:
    n = max(1, min(n, len(items)))
    size = -(-len(items) // n)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _gather_infos(
    entries: list[tuple[str, dict | None]],
    hdu: int | str | tuple,
    storage_options: dict | None,
    func: Any = read_infos,
) -> list[tuple]:
    """Read headers in parallel with ``func`` (:func:`read_infos` or :func:`header_rows`): on
    the cluster when a distributed client is the active scheduler, else in threads."""
    if not entries:
        return []
    client = _get_client()
    workers = _workers(client) if client is not None else []
    if any(u.startswith("memory:") for u, _ in entries):
        workers = []  # an in-memory filesystem lives in this process only
    if workers and any(storage.is_local(u) for u, _ in entries):
        local = _local_hosts()
        if not all(urlparse(w).hostname in local for w in workers):
            workers = []  # remote workers cannot see local files
    if workers and len(entries) > 1:
        batches = _batches(entries, 4 * len(workers))
        futures = client.map(func, batches, hdu=hdu, storage_options=storage_options, pure=False)
        results = client.gather(futures)
    else:
        threads = 4 if all(storage.is_local(u) for u, _ in entries) else 16
        batches = _batches(entries, 4 * threads)
        with ThreadPoolExecutor(max_workers=min(threads, len(batches))) as pool:
            results = list(pool.map(lambda b: func(b, hdu, storage_options), batches))
    return [r for batch in results for r in batch]


def _raise_errors(errors: list[tuple], what: str) -> None:
    if not errors:
        return
    lines = [f"  {url}: {msg}" for _, url, msg in errors[:_MAX_ERRORS_LISTED]]
    more = len(errors) - _MAX_ERRORS_LISTED
    if more > 0:
        lines.append(f"  ... and {more} more")
    raise FITSError(f"{what}: {len(errors)} file(s) could not be read:\n" + "\n".join(lines))


def _raise_missing(missing: list[str], what: str) -> None:
    lines = [f"  {url}" for url in missing[:_MAX_ERRORS_LISTED]]
    if len(missing) > _MAX_ERRORS_LISTED:
        lines.append(f"  ... and {len(missing) - _MAX_ERRORS_LISTED} more")
    raise FileNotFoundError(f"{what}: {len(missing)} file(s) not found:\n" + "\n".join(lines))


def _coordinate(values: list[Any]) -> np.ndarray:
    present = [v for v in values if v is not None]
    numeric = all(
        isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in present
    )
    if present and numeric:
        if len(present) == len(values):
            return np.asarray(values)
        return np.array([np.nan if v is None else v for v in values], dtype=float)
    if present and all(isinstance(v, str) for v in present) and len(present) == len(values):
        return np.asarray(values, dtype=str)
    return np.asarray(values, dtype=object)


def open_stack(
    urls: str | Sequence[str],
    hdu: int | str | tuple = 0,
    *,
    dim: str = "file",
    keys: Sequence[str] = (),
    on_missing: str = "raise",
    dims: Sequence[str] | None = None,
    storage_options: dict | None = None,
    chunks: Any = None,
) -> xr.DataArray:
    """Stack the same image HDU of many equal-shape files along a new first dimension.

    Headers are read now, in parallel (on the cluster when a distributed client exists,
    otherwise in threads), normally with one ranged read per file. Data stay lazy: one chunk
    per file by default, each reading only its bytes.

    Parameters
    ----------
    urls : str or sequence of str
        A glob, a URL or a list (order kept).
    hdu : int, str or (str, int)
        HDU index or EXTNAME.
    dim : str
        Name of the stacking dimension.
    keys : sequence of str
        Header keywords that become coordinates along ``dim`` (named after the keyword).
    on_missing : {"raise", "nan"}
        Missing files raise (listing them) or become NaN planes (listed in
        ``attrs["missing"]``).
    dims : sequence of str, optional
        Names of the image dimensions (default as in :func:`open_hdu`).
    storage_options : dict, optional
        Filesystem keyword arguments.
    chunks : tuple or dict, optional
        Chunks of the image dimensions (default: whole planes); one file per chunk.

    Returns
    -------
    xarray.DataArray
        dims ``(dim, *dims)``; coordinates ``url`` and one per key along ``dim``; ``attrs``:
        ``fits_header`` of the first file, ``hdu``, ``missing``.

    Raises
    ------
    FileNotFoundError
        Missing files with ``on_missing="raise"``, or a glob matching nothing.
    FITSError
        Unreadable files, or shapes/dtypes that differ (naming the offending files).
    """
    if on_missing not in ("raise", "nan"):
        raise ValueError(f"on_missing must be 'raise' or 'nan', got {on_missing!r}")
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    entries = storage.expand_detail(urls, storage_options)
    if not entries:
        raise ValueError("open_stack: no files given")
    what = f"open_stack({len(entries)} files, hdu={hdu!r})"
    results = _gather_infos(
        entries, hdu, storage_options, functools.partial(stack_infos, keys=keys)
    )
    _raise_errors([r for r in results if r[0] == "error"], what)
    missing = [r[1] for r in results if r[0] == "missing"]
    if missing and on_missing == "raise":
        _raise_missing(missing, what)
    infos: list[HDUInfo | None] = [r[1] if r[0] == "ok" else None for r in results]
    good = [i for i in infos if i is not None]
    if not good:
        _raise_missing(missing, what)
    for info in good:
        _check_image(info)
    layouts = Counter((i.shape, i.dtype.str) for i in good)
    (shape, dtype_str), _ = layouts.most_common(1)[0]
    if len(layouts) > 1:
        odd = [
            (i.url, f"shape {i.shape}, dtype {i.dtype}")
            for i in good
            if (i.shape, i.dtype.str) != (shape, dtype_str)
        ]
        _raise_errors(
            [
                ("error", u, f"{m}; expected shape {shape}, dtype {np.dtype(dtype_str)}")
                for u, m in odd
            ],
            f"{what}: files differ in shape or dtype",
        )
    dtype = np.dtype(dtype_str)
    if missing:
        dtype = np.result_type(dtype, np.float32)
    plane_dims = _check_dims(dims, len(shape), what)
    if dim in plane_dims:
        raise ValueError(f"stacking dim {dim!r} is also an image dimension {plane_dims}")
    if chunks is None:
        plane_chunks: tuple = tuple(shape)
    elif isinstance(chunks, dict):
        plane_chunks = tuple(chunks.get(d, n) for d, n in zip(plane_dims, shape, strict=True))
    else:
        plane_chunks = tuple(chunks)
    arr = StackArray(infos, shape, dtype)
    all_chunks = (1, *plane_chunks)
    data = da.from_array(
        arr,
        chunks=all_chunks,
        name="fits-stack-" + tokenize(arr, all_chunks),
        asarray=False,
        fancy=True,
        meta=np.empty((0,) * (len(shape) + 1), dtype=dtype),
    )
    urls_out = [r[1].url if r[0] == "ok" else r[1] for r in results]
    coords: dict[str, Any] = {"url": (dim, np.asarray(urls_out, dtype=str))}
    for key in keys:
        values = [r[2][key] if r[0] == "ok" else None for r in results]
        coords[key] = (dim, _coordinate(values))
    attrs = {
        "fits_header": fits_text(good[0].header_text),
        "hdu": good[0].index,
        "extname": good[0].name,
        "missing": missing,
    }
    name = good[0].name or f"hdu{good[0].index}"
    return xr.DataArray(data, dims=(dim, *plane_dims), coords=coords, attrs=attrs, name=name)


def read_headers(
    urls: str | Sequence[str], hdu: int | str | tuple = 0, storage_options: dict | None = None
) -> pd.DataFrame:
    """Header keywords of many files as a table, read in parallel.

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
    entries = storage.expand_detail(urls, storage_options)
    what = f"read_headers({len(entries)} files, hdu={hdu!r})"
    results = _gather_infos(entries, hdu, storage_options, header_rows)
    _raise_errors([r for r in results if r[0] == "error"], what)
    missing = [r[1] for r in results if r[0] == "missing"]
    if missing:
        _raise_missing(missing, what)
    index = pd.Index([r[1] for r in results], name="url")
    return pd.DataFrame([r[2] for r in results], index=index)


def read_table(url: str, hdu: int | str | tuple = 1, storage_options: dict | None = None) -> Table:
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
        As ``Table.read(url, hdu=hdu)`` gives it.
    """
    url = os.fspath(url)
    info = hdu_info(url, hdu, storage_options)
    if info.kind != "table":
        raise FITSError(f"{url}: HDU {info.index} is not a table (kind {info.kind!r})")
    start = info.header_offset
    end = info.data_offset + padded(info.data_size)
    if info.gzip:
        src = _GzipSource(url, storage_options)
        try:
            blob = src.read(start, end)
        finally:
            src.close()
    else:
        end = min(end, info.file_size) if info.file_size is not None else end
        (blob,) = storage.cat_ranges(url, [start], [end], storage_options)
    if len(blob) < info.data_offset - start + info.data_size:
        raise FITSError(f"{url}: truncated: HDU {info.index} data ends beyond the end of file")
    blob = blob + b"\0" * (padded(len(blob)) - len(blob))
    if info.index > 0:
        primary = fits.PrimaryHDU().header.tostring().encode("ascii")
        blob = primary + b" " * (padded(len(primary)) - len(primary)) + blob
    hdul = fits.HDUList.fromstring(blob)
    target = 0 if info.index == 0 else 1
    table = Table.read(hdul, hdu=target)
    hdul.close()
    return table
