"""Virtual Zarr references to FITS images: read FITS files with zarr/xarray, byte ranges only.

:func:`references` reads only headers (and, for tile-compressed HDUs, the binary table of heap
descriptors) and returns kerchunk-format references (``{"version": 1, "refs": {...}}``): zarr v2
metadata plus, for every chunk, the ``[url, offset, length]`` of its bytes in the FITS file.
Opened with fsspec's ``reference`` filesystem, zarr and xarray then read each chunk with one
ranged request:

- plain images: chunks along the slowest axis (rows of an image, planes or rows of planes of a
  cube) so that every chunk is one contiguous byte range; big-endian dtype, BSCALE/BZERO/BLANK
  as the :class:`~cloudlab.fits.codecs.FITSScale` filter;
- tile-compressed images: one chunk per tile, decompressed by the
  :class:`~cloudlab.fits.codecs.FITSTile` codec (RICE_1, GZIP_1, GZIP_2, HCOMPRESS_1, PLIO_1);
- many files (``concat_dim``): one array, one file per step along ``concat_dim``.

The codecs are registered with numcodecs by ``import cloudlab.fits``: readers import it first.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cloudlab import storage
from cloudlab.errors import FITSFormatError, InputError
from cloudlab.fits._tiles import tile_table
from cloudlab.fits.arrays import _layout_chunks, check_chunks, default_dims
from cloudlab.fits.codecs import FITSScale
from cloudlab.fits.header import HDUInfo, fits_text
from cloudlab.fits.regions import check_image
from cloudlab.fits.tables import gather_infos, raise_errors, raise_missing

__all__ = ["references", "write_references"]


def references(
    urls: str | Sequence[str],
    hdu: int | str | tuple = 0,
    *,
    chunks: Any = "auto",
    concat_dim: str | None = None,
    name: str = "data",
    dims: Sequence[str] | None = None,
    keys: Sequence[str] = (),
    storage_options: dict | None = None,
) -> dict[str, Any]:
    """Kerchunk-format references to one image HDU of one file or a stack of files.

    Only headers (and the tile table of compressed HDUs) are read. The result opens with
    ``xr.open_dataset("reference://", engine="zarr", backend_kwargs={"consolidated": False,
    "storage_options": {"fo": refs, "remote_protocol": ..., "remote_options": ...}})`` after
    ``import cloudlab.fits`` (which registers the codecs), and gives the values
    :func:`cloudlab.fits.open_hdu` / :func:`cloudlab.fits.open_stack` give.

    Parameters
    ----------
    urls : str or sequence of str
        A URL, a glob or a list (order kept). More than one file needs ``concat_dim``.
    hdu : int, str or (str, int)
        HDU index, EXTNAME or (EXTNAME, EXTVER).
    chunks : "auto", int or tuple
        Plain images: an int is the number of steps along the slowest axis per chunk (rows of
        an image, planes of a cube); a tuple must keep every chunk one contiguous byte range
        (axes after the first split one whole, axes before it of size 1); ``"auto"`` splits the
        slowest axes to about dask's ``array.chunk-size``. Tile-compressed images: always one
        chunk per tile (``"auto"``, or the tile shape).
    concat_dim : str, optional
        Stack the files along this new first dimension (e.g. ``"time"``), one chunk per file.
    name : str
        Name of the array (the variable of the dataset).
    dims : sequence of str, optional
        Names of the image dimensions (default ``("y", "x")``, ``("z", "y", "x")``, ...).
    keys : sequence of str
        With ``concat_dim``: header keywords whose values (one per file, stored inline) become
        coordinates along ``concat_dim``, next to ``url``; e.g. ``("TSTART", "DATE-OBS")``.
    storage_options : dict, optional
        Filesystem keyword arguments used to read the headers; they are not written into the
        references (give them to the reader as ``remote_options``).

    Returns
    -------
    dict
        ``{"version": 1, "refs": {".zgroup": ..., "<name>/.zarray": ..., "<name>/0.0": [url,
        offset, length], ...}}`` (JSON-serialisable).

    Raises
    ------
    InputError
        Bad ``chunks`` (non-contiguous ranges), several files without ``concat_dim``.
    FITSFormatError
        Tables, whole-file gzip, quantized or otherwise unsupported tile compression, files
        whose shapes, dtypes, scaling or compression differ.
    NotFoundError
        Missing files.
    """
    entries = storage.expand_detail(urls, storage_options=storage_options)
    if len(entries) > 1 and concat_dim is None:
        raise InputError(
            f"references: {len(entries)} files ({entries[0][0]}, ...); give concat_dim (e.g. "
            "'time') to stack them into one array, or one file"
        )
    infos = _read_infos(entries, hdu, storage_options)
    first = infos[0]
    for info in infos:
        _check_supported(info)
    image_dims = tuple(dims) if dims is not None else default_dims(len(first.shape))
    if len(image_dims) != len(first.shape):
        raise InputError(f"references: dims {image_dims} do not match the shape {first.shape}")
    with ThreadPoolExecutor(max_workers=min(16, len(infos))) as pool:  # tile tables: I/O
        per_file = list(pool.map(lambda i: _file_refs(i, chunks, storage_options), infos))
    meta = per_file[0][0]
    for info, (other, _) in zip(infos[1:], per_file[1:], strict=True):
        if other != meta:
            raise FITSFormatError(
                f"references: {info.url} HDU {hdu} does not match {first.url}: shape, dtype, "
                "scaling or compression differ; stack only files of the same layout"
            )
    shape, chunk_shape = list(first.shape), list(meta["chunks"])
    all_dims = list(image_dims)
    if concat_dim is not None:
        shape, chunk_shape, all_dims = (
            [len(infos), *shape],
            [1, *chunk_shape],
            [concat_dim, *all_dims],
        )
    zarray = dict(meta, shape=shape, chunks=chunk_shape)
    attrs: dict[str, Any] = {
        "_ARRAY_DIMENSIONS": all_dims,
        "fits_header": fits_text(first.header_text),
    }
    refs: dict[str, Any] = {
        ".zgroup": json.dumps({"zarr_format": 2}),
        ".zattrs": json.dumps({"hdu": str(hdu), "files": len(infos)}),
        f"{name}/.zarray": json.dumps(zarray),
        f"{name}/.zattrs": json.dumps(attrs),
    }
    if concat_dim is not None:
        coords = {"url": [info.url for info in infos]}
        coords.update((key, [info.get(key) for info in infos]) for key in keys)
        for coord, values in coords.items():
            refs.update(_inline_array(coord, values, concat_dim))
        attrs["coordinates"] = " ".join(coords)
        refs[f"{name}/.zattrs"] = json.dumps(attrs)
    elif keys:
        raise InputError("references: keys become coordinates along concat_dim; give concat_dim")
    for step, (_, chunk_refs) in enumerate(per_file):
        for key, ref in chunk_refs.items():
            refs[f"{name}/{step}.{key}" if concat_dim is not None else f"{name}/{key}"] = ref
    return {"version": 1, "refs": refs}


def write_references(
    refs: dict[str, Any],
    url: str,
    *,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> None:
    """Write references from :func:`references` as JSON.

    Parameters
    ----------
    refs : dict
        The references.
    url : str
        Destination (local path or URL), normally ending in ``.json``.
    overwrite : bool
        Replace an existing file (refused otherwise, before anything is written).
    storage_options : dict, optional
        Filesystem keyword arguments of the destination.

    Raises
    ------
    OverwriteError
        ``url`` exists and ``overwrite`` is False.
    """
    storage.check_writable(url, overwrite=overwrite, storage_options=storage_options)
    data = json.dumps(refs, separators=(",", ":")).encode()
    storage.write_bytes(url, data, overwrite=overwrite, storage_options=storage_options)


# --------------------------------------------------------------------------------------------


def _inline_array(name: str, values: list, dim: str) -> dict[str, str]:
    """A small 1-D zarr array stored inline in the references (header values, URLs)."""
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        data = np.asarray(values, dtype="|b1")
    elif all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values):
        data = np.asarray(values, dtype="<f8")
    else:
        data = np.asarray(["" if v is None else str(v) for v in values], dtype=np.str_)
        data = data.astype(data.dtype.newbyteorder("<"))
    zarray = {
        "zarr_format": 2,
        "shape": [len(values)],
        "chunks": [len(values)],
        "dtype": data.dtype.str,
        "compressor": None,
        "filters": None,
        "fill_value": None,
        "order": "C",
        "dimension_separator": ".",
    }
    return {
        f"{name}/.zarray": json.dumps(zarray),
        f"{name}/.zattrs": json.dumps({"_ARRAY_DIMENSIONS": [dim]}),
        f"{name}/0": "base64:" + base64.b64encode(data.tobytes()).decode(),
    }


def _read_infos(entries: list, hdu: Any, storage_options: dict | None) -> list[HDUInfo]:
    results = gather_infos(entries, hdu, storage_options=storage_options)
    missing = [r[1] for r in results if r[0] == "missing"]
    if missing:
        raise_missing(missing, "references")
    raise_errors([r for r in results if r[0] == "error"], "references")
    return [r[1] for r in results]


def _check_supported(info: HDUInfo) -> None:
    check_image(info)
    if info.gzip:
        raise FITSFormatError(
            f"{info.url}: the whole file is gzip-compressed, so its pixels have no byte ranges "
            "to reference; gunzip it (or use cloudlab.fits.open_hdu, which decompresses it)"
        )


def _scale_filter(info: HDUInfo) -> list[dict[str, Any]] | None:
    if info.bscale == 1 and info.bzero == 0 and info.blank is None:
        return None
    codec = FITSScale(
        info.bscale, info.bzero, info.blank, astype=info.raw_dtype.str, dtype=info.dtype.str
    )
    return [codec.get_config()]


def _zarray(info: HDUInfo, chunks: tuple[int, ...], compressor: dict | None) -> dict[str, Any]:
    filters = _scale_filter(info)
    dtype = info.dtype.str if filters else info.raw_dtype.str
    return {
        "zarr_format": 2,
        "shape": list(info.shape),
        "chunks": list(chunks),
        "dtype": dtype,
        "compressor": compressor,
        "filters": filters,
        "fill_value": None,
        "order": "C",
        "dimension_separator": ".",
    }


def _file_refs(info: HDUInfo, chunks: Any, storage_options: dict | None) -> tuple[dict, dict]:
    """The .zarray of one file's HDU (without its concatenation) and its chunk references."""
    url = storage.absolute(info.url) if storage.is_local(info.url) else info.url
    if info.compressed:
        return _compressed_refs(info, url, chunks, storage_options)
    chunk_shape = _image_chunks(info, chunks)
    grid = [range(-(-n // c)) for n, c in zip(info.shape, chunk_shape, strict=True)]
    itemsize = info.raw_dtype.itemsize
    strides = [math.prod(info.shape[a + 1 :]) * itemsize for a in range(len(info.shape))]
    length = math.prod(chunk_shape) * itemsize
    refs: dict[str, Any] = {}
    end_of_data = info.data_offset + info.data_size
    for idx in np.ndindex(*[len(g) for g in grid]):
        offset = info.data_offset + sum(
            i * c * s for i, c, s in zip(idx, chunk_shape, strides, strict=True)
        )
        key = ".".join(map(str, idx))
        if info.file_size is not None and offset + length > info.file_size:
            # the last chunk runs past the end of the file: keep its bytes inline, zero-padded
            (data,) = storage.cat_ranges(
                url, [offset], [end_of_data], storage_options=storage_options
            )
            padded = data + bytes(length - len(data))
            refs[key] = "base64:" + base64.b64encode(padded).decode()
        else:
            refs[key] = [url, int(offset), int(length)]
    return _zarray(info, chunk_shape, None), refs


def _image_chunks(info: HDUInfo, chunks: Any) -> tuple[int, ...]:
    """Chunk shape of a plain image whose every chunk is one contiguous byte range."""
    check_chunks(chunks, info.url)
    shape = info.shape
    if chunks is None or (isinstance(chunks, str) and chunks == "auto"):
        return _layout_chunks(shape, info.raw_dtype.itemsize)
    if isinstance(chunks, (int, np.integer)) and not isinstance(chunks, bool):
        if chunks == -1:
            return tuple(shape)
        return (min(int(chunks), shape[0]), *shape[1:])
    if not isinstance(chunks, (tuple, list)) or len(chunks) != len(shape):
        raise InputError(
            f"{info.url}: chunks={chunks!r}: give 'auto', an int (steps of the slowest axis) or "
            f"a tuple of {len(shape)} sizes for the shape {shape}"
        )
    out = tuple(
        n if c in (None, -1) else min(int(c), n) for c, n in zip(chunks, shape, strict=True)
    )
    partial = [a for a, (c, n) in enumerate(zip(out, shape, strict=True)) if c < n]
    if partial and any(out[a] != 1 for a in range(partial[-1])):
        raise InputError(
            f"{info.url}: chunks={chunks!r} for the shape {shape} would make chunks of "
            "scattered bytes; split only the slowest axis, or whole rows/planes (axes before "
            "the last split one of size 1, axes after it whole)"
        )
    return out


def _compressed_refs(
    info: HDUInfo, url: str, chunks: Any, storage_options: dict | None
) -> tuple[dict, dict]:
    """One chunk reference per tile of a tile-compressed HDU, from its heap descriptors."""
    where = f"{info.url}: compressed HDU {info.index}"
    tile_shape = tuple(info.tile_shape or info.shape)
    auto = chunks is None or (isinstance(chunks, str) and chunks == "auto")
    if not auto and (not isinstance(chunks, (tuple, list)) or tuple(chunks) != tile_shape):
        raise InputError(
            f"{where}: chunks={chunks!r}; a tile-compressed image is referenced one tile per "
            f"chunk (tile shape {tile_shape}): leave chunks='auto'"
        )
    table = tile_table(info, storage_options)
    table.codec.check_edges(where)
    refs = {}
    for row, idx in enumerate(np.ndindex(*table.grid)):
        refs[".".join(map(str, idx))] = [url, int(table.starts[row]), int(table.sizes[row])]
    meta = _zarray(info, tile_shape, table.codec.get_config())
    return meta, refs
