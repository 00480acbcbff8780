"""Lazy arrays of FITS images: :func:`open_hdu` (one HDU) and :func:`open_stack` (one HDU of many
equal-shape files), dask arrays whose chunks read only their own bytes through
:func:`cloudlab.fits.regions.read_region`.
"""

from __future__ import annotations

import functools
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import dask.array as da
import dask.config
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.utils import parse_bytes

from cloudlab import storage
from cloudlab.errors import REASON, STATUS, STATUS_OK, InputError, check_on_error
from cloudlab.fits.header import HDUInfo, fits_text, hdu_info
from cloudlab.fits.regions import check_image, normalize_index, read_region
from cloudlab.fits.tables import gather_infos, raise_errors, raise_missing, stack_infos

__all__ = ["FITSArray", "StackArray", "check_chunks", "default_dims", "open_hdu", "open_stack"]


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


def check_chunks(chunks: Any, what: str) -> None:
    """Refuse chunk sizes dask cannot use (0, negative other than -1, non-numbers).

    Raises
    ------
    InputError
        Naming ``chunks`` and the bad value.
    """
    if chunks is None:
        return
    values = chunks.values() if isinstance(chunks, dict) else (
        chunks if isinstance(chunks, (tuple, list)) else [chunks])  # fmt: skip
    for value in values:
        if isinstance(value, str):
            _check_chunk_text(chunks, value, what)
            continue
        if value is None or value == -1:
            continue
        if isinstance(value, (tuple, list)):
            check_chunks(tuple(value), what)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise InputError(
                f"{what}: chunks={chunks!r} has {value!r}; chunk sizes are positive integers "
                "(or -1/None for a whole axis, or 'auto')"
            )


def _check_chunk_text(chunks: Any, value: str, what: str) -> None:
    """Refuse a chunk size given as text unless it is ``"auto"`` or a byte size (``"64MiB"``)."""
    if value == "auto":
        return
    try:
        parse_bytes(value)
    except ValueError as exc:
        raise InputError(
            f"{what}: chunks={chunks!r} has {value!r}; give 'auto', a byte size such as "
            "'64MiB', or positive integers"
        ) from exc


def _chunks_for(info: HDUInfo, chunks: Any) -> Any:
    check_chunks(chunks, info.url)
    if not (isinstance(chunks, str) and chunks == "auto"):
        return chunks
    if info.gzip:  # decompressing means reading from the start: one chunk
        return tuple(max(n, 1) for n in info.shape)
    step0 = info.tile_shape[0] if info.tile_shape else 1
    return _layout_chunks(info.shape, info.dtype.itemsize, step0)


def _check_dims(dims: Sequence[str] | None, ndim: int, what: str) -> tuple[str, ...]:
    if dims is None:
        return default_dims(ndim)
    dims = tuple(dims)
    if len(dims) != ndim:
        raise InputError(f"{what}: dims {dims} do not match the {ndim} axes of the data")
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
        a table HDU, data larger than the file.
    HDUNotFoundError
        No such HDU (a ``FITSError`` and a ``KeyError``).
    """
    url = storage.absolute(url)
    info = hdu_info(url, hdu, storage_options=storage_options)
    check_image(info)
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
    on_error: str = "raise",
    dims: Sequence[str] | None = None,
    storage_options: dict | None = None,
    chunks: Any = None,
    on_missing: str | None = None,
) -> xr.DataArray:
    """Stack the same image HDU of many equal-shape files along a new first dimension.

    Headers are read now (on the cluster when a distributed client exists, otherwise here:
    :func:`cloudlab.fits.tables.map_files`), normally with one ranged read per file. Data stay
    lazy: one chunk per file by default, each reading only its bytes.

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
    on_error : {"raise", "skip"}
        Missing files raise (listing them) or become NaN planes (status ``"missing"`` with a
        reason naming the file, and listed in ``attrs["missing"]``).
    dims : sequence of str, optional
        Names of the image dimensions (default as in :func:`open_hdu`).
    storage_options : dict, optional
        Filesystem keyword arguments.
    chunks : tuple or dict, optional
        Chunks of the image dimensions (default: whole planes); one file per chunk.
    on_missing : {"raise", "nan"}, optional
        Deprecated spelling of ``on_error`` (``"nan"`` is ``on_error="skip"``); warns.

    Returns
    -------
    xarray.DataArray
        dims ``(dim, *dims)``; coordinates ``url``, ``status`` (``"ok"`` or ``"missing"``),
        ``reason`` (empty, or naming the missing file) and one per key along ``dim``; ``attrs``:
        ``fits_header`` of the first file, ``hdu``, ``missing``.

    Raises
    ------
    FileNotFoundError
        Missing files with ``on_error="raise"``, or a glob matching nothing.
    FITSError
        Unreadable files, or shapes/dtypes that differ (naming the offending files).
    """
    if on_missing is not None:
        warnings.warn(
            "open_stack(on_missing=...) is deprecated: use on_error='raise' or 'skip' "
            "(on_missing='nan' is on_error='skip')",
            DeprecationWarning,
            stacklevel=2,
        )
        if on_missing not in ("raise", "nan"):
            raise InputError(f"on_missing must be 'raise' or 'nan', got {on_missing!r}")
        on_error = "skip" if on_missing == "nan" else "raise"
    check_on_error(on_error)
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    entries = storage.expand_detail(urls, storage_options=storage_options)
    if not entries:
        raise InputError("open_stack: no files given")
    what = f"open_stack({len(entries)} files, hdu={hdu!r})"
    results = gather_infos(
        entries, hdu, functools.partial(stack_infos, keys=keys), storage_options=storage_options
    )
    raise_errors([r for r in results if r[0] == "error"], what)
    missing = [r[1] for r in results if r[0] == "missing"]
    if missing and on_error == "raise":
        raise_missing(missing, what)
    infos: list[HDUInfo | None] = [r[1] if r[0] == "ok" else None for r in results]
    good = [i for i in infos if i is not None]
    if not good:
        raise_missing(missing, what)
    for info in good:
        check_image(info)
    layouts = Counter((i.shape, i.dtype.str) for i in good)
    (shape, dtype_str), _ = layouts.most_common(1)[0]
    if len(layouts) > 1:
        odd = [
            (i.url, f"shape {i.shape}, dtype {i.dtype}")
            for i in good
            if (i.shape, i.dtype.str) != (shape, dtype_str)
        ]
        raise_errors(
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
        raise InputError(f"stacking dim {dim!r} is also an image dimension {plane_dims}")
    check_chunks(chunks, what)
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
    ok = [r[0] == "ok" for r in results]
    reasons = ["" if o else f"no file at {u}" for o, u in zip(ok, urls_out, strict=True)]
    coords: dict[str, Any] = {
        "url": (dim, np.asarray(urls_out, dtype=str)),
        STATUS: (dim, np.asarray([STATUS_OK if o else "missing" for o in ok], dtype=str)),
        REASON: (dim, np.asarray(reasons, dtype=str)),
    }
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


# --------------------------------------------------------------------------------------------
# array-likes for dask.array.from_array (picklable; slices are fused into their reads)
# --------------------------------------------------------------------------------------------


class FITSArray:
    """Array-like view of one image HDU; indexing reads only the indexed bytes."""

    def __init__(self, info: HDUInfo):
        self.info = info.light()
        self.shape = tuple(info.shape)
        self.dtype = info.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        return read_region(self.info, index)

    def __dask_tokenize__(self) -> str:
        i = self.info
        return tokenize(
            "cloudlab.FITSArray",
            i.url,
            i.index,
            i.data_offset,
            i.shape,
            str(i.raw_dtype),
            str(i.dtype),
            i.bscale,
            i.bzero,
            i.blank,
            i.kind,
            i.fingerprint,
            i.storage_options,
        )

    def __repr__(self) -> str:
        return f"FITSArray({self.info.url!r}, hdu={self.info.index}, shape={self.shape})"


class StackArray:
    """Array-like stack of equal-shape image HDUs along a new first axis (``None`` = missing,
    read as NaN)."""

    def __init__(self, infos: list[HDUInfo | None], shape: tuple[int, ...], dtype: np.dtype):
        self.infos = [None if i is None else i.light() for i in infos]
        self.shape = (len(infos), *shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        if not isinstance(index, tuple):
            index = (index,)
        if index and index[0] is Ellipsis:
            index = (slice(None), *index)
        first, rest = index[0], index[1:]
        box, local = normalize_index(first, self.shape[:1])
        files = range(box[0][0], box[0][1])
        planes = []
        for k in files:
            info = self.infos[k]
            if info is None:
                plane_shape = np.empty(self.shape[1:], dtype=bool)[rest].shape
                planes.append(np.full(plane_shape, np.nan, dtype=self.dtype))
            else:
                planes.append(read_region(info, rest).astype(self.dtype, copy=False))
        if planes:
            stacked = np.stack(planes)
        else:
            stacked = np.empty((0, *np.empty(self.shape[1:], dtype=bool)[rest].shape), self.dtype)
        return stacked[local]

    def __dask_tokenize__(self) -> str:
        return tokenize(
            "cloudlab.StackArray",
            [None if i is None else FITSArray(i).__dask_tokenize__() for i in self.infos],
            str(self.dtype),
        )

    def __repr__(self) -> str:
        return f"StackArray({len(self.infos)} files, shape={self.shape})"
