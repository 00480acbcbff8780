"""SDO/AIA image stacks as lazy xarray cubes.

Files are JSOC level-1 style (empty primary HDU, RICE-compressed image in HDU 1) or plain images
in HDU 0. A channel's frames become a ``(time, y, x)`` DataArray, one dask chunk per file, with
``time`` the absolute ``T_OBS`` (datetime64), ``exptime``, ``quality`` and ``url`` along time,
``wavelength`` as a scalar coordinate, BLANK pixels as NaN, and the WCS header of the first frame
in ``attrs["fits_header"]``.

Opening reads one header per file (a glob's listing gives the sizes). The cube remembers its
files (:class:`Frames`), so that :mod:`cloudlab.timelag.prepare` selects frames, divides by the
exposure time and crops inside the reads: each task fetches only its window's rows of each file
(:func:`read_window`), and an (all frames x spatial block) chunk is one task reading that block
of every file (:func:`frame_blocks`).

This module only reads. Preparing the cubes for time-lag analysis (exposure normalisation, crop,
common time grid) is :mod:`cloudlab.timelag.steps`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import dask.array as da
import dask.config
import numpy as np
import xarray as xr
from astropy.io import fits as afits
from astropy.wcs import WCS
from dask.base import tokenize

from cloudlab import fits, storage
from cloudlab.errors import (
    REASON,
    STATUS,
    STATUS_OK,
    FITSFormatError,
    HDUNotFoundError,
    InputError,
    NotFoundError,
)
from cloudlab.fits.arrays import FITSArray
from cloudlab.fits.header import HDUInfo
from cloudlab.fits.regions import fetch_ranges, normalize_index, plan_reads, scale
from cloudlab.recipes import Recipes

__all__ = [
    "DEFAULT_OVERREAD",
    "DEFAULT_REQUEST_BYTES",
    "Frames",
    "FramesArray",
    "frame_blocks",
    "frames_of",
    "header_of",
    "image_hdu",
    "open_stack",
    "parse_time",
    "read_window",
    "with_frames",
    "wcs_of",
]

#: header keys kept as per-frame coordinates
_FRAME_KEYS = ("T_OBS", "EXPTIME", "WAVELNTH", "QUALITY")


def parse_time(value: str, url: str = "") -> np.datetime64:
    """Parse an ISO time such as AIA's ``T_OBS`` (``2011-02-15T00:00:01.34Z``) to datetime64."""
    text = str(value).strip().removesuffix("Z")
    try:
        return np.datetime64(text, "ns")
    except ValueError as err:
        raise FITSFormatError(
            f"{url}: cannot parse time {value!r} (expected ISO 8601, e.g. 2011-02-15T00:00:01.34Z)"
        ) from err


def image_hdu(
    url: str, *, storage_options: dict | None = None, file_info: dict | None = None
) -> int:
    """Index of the HDU holding the image: 1 for JSOC files (empty primary), else 0.

    Parameters
    ----------
    url : str
        Any fsspec URL or local path.
    storage_options : dict, optional
        Filesystem options.
    file_info : dict, optional
        The file's listing entry (``fs.info``) when a glob already gave it: saves a request.

    Returns
    -------
    int
        0 or 1.

    Raises
    ------
    FITSFormatError
        If neither HDU 0 nor HDU 1 is a 2-D image (the message says what they are: table,
        random groups, image of another shape, no data), or the file is not FITS or is
        truncated (the reader's own message, naming the file, is kept).
    """
    primary = fits.hdu_info(url, 0, storage_options=storage_options, file_info=file_info)
    if _is_2d_image(primary):
        return 0
    try:
        info = fits.hdu_info(url, 1, storage_options=storage_options, file_info=file_info)
    except HDUNotFoundError as err:
        raise FITSFormatError(
            f"{url}: no 2-D image in HDU 0 ({_kind_of(primary)}) and no HDU 1: "
            "give AIA level-1 files"
        ) from err
    if not _is_2d_image(info):
        raise FITSFormatError(
            f"{url}: neither HDU 0 ({_kind_of(primary)}) nor HDU 1 ({_kind_of(info)}) is a 2-D "
            "image: give AIA level-1 files"
        )
    return 1


def _is_2d_image(info: fits.HDUInfo) -> bool:
    return info.kind in ("image", "compressed") and len(info.shape) == 2 and 0 not in info.shape


def _kind_of(info: fits.HDUInfo) -> str:
    """What an HDU holds, in words: 'random groups', 'a BINTABLE', 'image of shape (2, 3)'."""
    if info.groups:
        return "random groups, not an image"
    if info.kind == "table":
        return f"a {info.get('XTENSION', 'table')} table"
    if not info.shape or 0 in info.shape:
        return "no data"
    return f"{'compressed ' if info.kind == 'compressed' else ''}image of shape {info.shape}"


def open_stack(
    urls_or_glob: str | Sequence[str],
    *,
    storage_options: dict | None = None,
) -> xr.DataArray:
    """Open one AIA channel's FITS files as a lazy ``(time, y, x)`` cube sorted by ``T_OBS``.

    Parameters
    ----------
    urls_or_glob : str or sequence of str
        File URLs, or a glob (any fsspec protocol).
    storage_options : dict, optional
        Filesystem options.

    Returns
    -------
    xarray.DataArray
        Dask-backed (one chunk per file), with the dtype astropy returns (float32 with NaN for
        BLANK pixels of int16 images), with coordinates ``time``
        (datetime64 of ``T_OBS``), ``exptime`` (s), ``quality``, ``url``, ``status``,
        ``reason`` and scalar ``wavelength`` (Å); ``attrs``: ``fits_header`` (first frame's
        header), ``units`` "DN". Its recipe is :func:`frames_of`.

    Raises
    ------
    FileNotFoundError
        If nothing matches.
    InputError
        If the files mix wavelengths or image shapes, repeat a ``T_OBS`` or lack a header key
        (a :class:`~cloudlab.errors.FITSFormatError` for a file that is not FITS or is
        truncated).
    """
    entries = storage.expand_detail(urls_or_glob, storage_options=storage_options)
    if not entries:
        raise NotFoundError(f"no AIA files match {urls_or_glob!r}")
    hdu = image_hdu(entries[0][0], storage_options=storage_options, file_info=entries[0][1])
    infos, values = _scan(entries, hdu, storage_options)
    urls = [info.url for info in infos]
    for key in _FRAME_KEYS:
        absent = [
            u for u, v in zip(urls, values, strict=True) if v[key] is None or v[key] != v[key]
        ]
        if absent:
            raise FITSFormatError(
                f"header key {key} missing in {absent[:3]}: AIA stacks need "
                f"{', '.join(_FRAME_KEYS)} in every file"
            )
    times = np.array([parse_time(v["T_OBS"], u) for u, v in zip(urls, values, strict=True)])
    order = np.argsort(times, kind="stable")
    times = times[order]
    repeated = np.flatnonzero(np.diff(times) == np.timedelta64(0, "ns"))
    if repeated.size:
        i = repeated[0]
        raise InputError(
            f"{urls[order[i]]} and {urls[order[i + 1]]} have the same T_OBS {times[i]}: "
            "give each frame once"
        )
    try:
        wavelengths = np.unique(np.array([v["WAVELNTH"] for v in values], dtype=float))
    except (TypeError, ValueError) as err:
        raise FITSFormatError(f"WAVELNTH is not a number in some of {urls[:3]}...") from err
    if wavelengths.size != 1:
        raise InputError(
            f"files mix wavelengths {sorted(wavelengths)}: open each channel separately"
        )
    wavelength = int(round(wavelengths[0]))
    listed = dict(entries)
    first = urls[order[0]]
    first_header = fits.hdu_info(
        first, hdu, storage_options=storage_options, file_info=listed.get(first)
    ).header
    infos = [infos[k] for k in order]
    values = [values[k] for k in order]
    ny, nx = infos[0].shape
    frames = Frames(tuple(i.light() for i in infos), ((0, ny), (0, nx)), infos[0].dtype)
    coords = {
        "time": ("time", times),
        "url": ("time", np.asarray([i.url for i in infos], dtype=str)),
        "exptime": ("time", np.array([v["EXPTIME"] for v in values], dtype=float)),
        "quality": ("time", np.array([v["QUALITY"] for v in values], dtype=np.int64)),
        STATUS: ("time", np.full(len(infos), STATUS_OK)),
        REASON: ("time", np.full(len(infos), "")),
        "wavelength": wavelength,
    }
    return xr.DataArray(
        frame_blocks(frames),
        dims=("time", "y", "x"),
        coords=coords,
        attrs={"fits_header": first_header.tostring(), "units": "DN"},
        name=f"aia_{wavelength}",
    )


def _scan(
    entries: list[tuple[str, dict | None]], hdu: int, storage_options: dict | None
) -> tuple[list[HDUInfo], list[dict[str, Any]]]:
    """Every file's image HDU and frame keys, read in parallel: one request per listed file."""
    from cloudlab.fits.regions import check_image
    from cloudlab.fits.tables import gather_infos, raise_errors, raise_missing, stack_infos

    what = f"open_stack({len(entries)} AIA files, hdu={hdu})"
    read = functools.partial(stack_infos, keys=_FRAME_KEYS)
    results = gather_infos(entries, hdu, read, storage_options=storage_options)
    raise_errors([r for r in results if r[0] == "error"], what)
    missing = [r[1] for r in results if r[0] == "missing"]
    if missing:
        raise_missing(missing, what)
    infos = [r[1] for r in results]
    for info in infos:
        check_image(info)
    layout = (infos[0].shape, infos[0].dtype.str)
    odd = [
        ("error", i.url, f"shape {i.shape}, dtype {i.dtype}; expected shape {layout[0]}, "
         f"dtype {infos[0].dtype}")
        for i in infos
        if (i.shape, i.dtype.str) != layout
    ]  # fmt: skip
    raise_errors(odd, f"{what}: files differ in shape or dtype")
    return infos, [r[2] for r in results]


def header_of(cube: xr.DataArray) -> afits.Header:
    """The FITS header kept in ``attrs["fits_header"]`` (raises if there is none)."""
    text = cube.attrs.get("fits_header")
    if not text:
        raise InputError(
            f"{cube.name!r} carries no FITS header (attrs['fits_header']): open it with "
            "cloudlab.io.aia.open_stack or keep its attrs"
        )
    return afits.Header.fromstring(text) if isinstance(text, str) else afits.Header(text)


_UNIT_NAMES = {"degree": "deg", "degrees": "deg", "arcsecs": "arcsec", "arcseconds": "arcsec"}
_HELIOPROJECTIVE_NAMES = ("solar-x", "solar_x", "solar-y", "solar_y", "arcsec")


def _solar_header(header: afits.Header) -> afits.Header:
    """Spellings older solar headers use (EIT's ``Solar-X``, RHESSI's ``CTYPE = 'arcsec'``,
    ``CUNIT = 'degree'``) made standard, as sunpy's map sources do: helioprojective axes are
    ``HPLN-TAN``/``HPLT-TAN`` in arcsec unless the header says otherwise."""
    for axis, ctype in ((1, "HPLN-TAN"), (2, "HPLT-TAN")):
        unit = str(header.get(f"CUNIT{axis}", "")).strip()
        if unit.lower() in _UNIT_NAMES:
            header[f"CUNIT{axis}"] = _UNIT_NAMES[unit.lower()]
        kind = str(header.get(f"CTYPE{axis}", "")).strip().lower()
        if kind in _HELIOPROJECTIVE_NAMES:
            header[f"CTYPE{axis}"] = ctype
        if str(header.get(f"CTYPE{axis}", "")).startswith(("HPLN", "HPLT")) and not unit:
            header[f"CUNIT{axis}"] = "arcsec"
    return header


def wcs_of(cube: xr.DataArray) -> WCS:
    """The celestial WCS of a cube or map (from ``attrs["fits_header"]``; EIT's, RHESSI's and
    other older solar spellings of the axes and units read as sunpy reads them)."""
    header = _solar_header(header_of(cube))
    header["NAXIS"] = 2
    header["NAXIS1"] = cube.sizes["x"]
    header["NAXIS2"] = cube.sizes["y"]
    return WCS(header, naxis=2)


# --------------------------------------------------------------------------------------------
# file-backed frames: selection, crop and exposure scaling pushed into the reads
# --------------------------------------------------------------------------------------------

#: Share of extra bytes a crop may always fetch: two rows of a crop are read as one range when
#: the bytes between them are at most this fraction of a row's bytes (dask config
#: ``cloudlab.aia.overread``).
DEFAULT_OVERREAD = 0.2

#: What one request to a remote file costs, in bytes: two rows closer than this are read as one
#: range too (dask config ``cloudlab.aia.request-bytes``; 0 bounds the bytes of a crop by
#: :data:`DEFAULT_OVERREAD`). Local files: 0.
DEFAULT_REQUEST_BYTES = 2**20

_RECIPES: Recipes[Frames] = Recipes(4096)


@dataclass(frozen=True)
class Frames:
    """What a file-backed AIA cube holds: which frames, which pixels, which scaling.

    Cubes from :func:`open_stack` remember this recipe (keyed by their dask array's name, which
    changes whenever the data do), so that :mod:`cloudlab.timelag.prepare` can select frames,
    crop and divide by the exposure time in the reads themselves: each task then reads only the
    rows and columns of its window from each file, whatever order the steps were called in.

    Attributes
    ----------
    infos : tuple of HDUInfo
        One image HDU per frame, in time order (headers dropped).
    window : ((y0, y1), (x0, x1))
        The pixels of every frame, as half-open ranges of the file's image.
    dtype : numpy.dtype
        Dtype of the cube's values.
    divisors : tuple of float, optional
        Per-frame divisor (the exposure time) applied in ``dtype`` after reading.
    """

    infos: tuple[HDUInfo, ...]
    window: tuple[tuple[int, int], tuple[int, int]]
    dtype: np.dtype
    divisors: tuple[float, ...] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(frames, y, x)`` of the cube the recipe makes."""
        (y0, y1), (x0, x1) = self.window
        return (len(self.infos), y1 - y0, x1 - x0)

    def select(self, index: np.ndarray) -> Frames:
        """The frames at ``index`` (integer positions), in that order."""
        index = np.asarray(index, dtype=np.int64)
        divisors = None if self.divisors is None else tuple(np.asarray(self.divisors)[index])
        return replace(self, infos=tuple(self.infos[k] for k in index), divisors=divisors)

    def crop(self, y: tuple[int, int], x: tuple[int, int]) -> Frames:
        """The window ``y``, ``x`` (half-open, relative to the current window)."""
        (y0, _), (x0, _) = self.window
        return replace(self, window=((y0 + y[0], y0 + y[1]), (x0 + x[0], x0 + x[1])))

    def __dask_tokenize__(self) -> str:
        return tokenize(
            "cloudlab.aia.Frames",
            [FITSArray(i).__dask_tokenize__() for i in self.infos],
            self.window,
            str(self.dtype),
            self.divisors,
        )


def _row_gap(info: HDUInfo, row_bytes: int) -> int:
    """Bytes between two rows below which they are fetched as one range."""
    overread = float(dask.config.get("cloudlab.aia.overread", default=DEFAULT_OVERREAD))
    local = storage.local_path(info.url, storage_options=info.storage_options) is not None
    request = 0 if local else DEFAULT_REQUEST_BYTES
    request = int(dask.config.get("cloudlab.aia.request-bytes", default=request))
    return max(int(overread * row_bytes), request)


def read_window(info: HDUInfo, box: list[tuple[int, int]]) -> np.ndarray:
    """Read one box of an image HDU: its rows with one batched request.

    Uncompressed images: two rows of the box are fetched as one range when the bytes between
    them are at most ``cloudlab.aia.overread`` (default :data:`DEFAULT_OVERREAD`) of a row's
    bytes, or, for remote files, fewer than ``cloudlab.aia.request-bytes`` (default
    :data:`DEFAULT_REQUEST_BYTES`: on an object store a request costs about as much time as a
    megabyte, so a crop's rows come in one request per frame). With ``request-bytes`` 0 a crop
    fetches at most ``1 + overread`` times its bytes. Compressed images: the tiles the box
    touches (:func:`cloudlab.fits.read_regions`).

    Returns
    -------
    numpy.ndarray
        ``astropy.io.fits.getdata(url, hdu)[box]``, scaled as astropy scales it.
    """
    if info.kind == "compressed" or info.gzip:
        (data,) = fits.read_regions(info, [box])
        return data
    itemsize = info.raw_dtype.itemsize
    (y0, y1), (x0, x1) = box
    run = (x1 - x0) * itemsize
    plan = plan_reads([box], info.shape, itemsize, info.data_offset, gap=_row_gap(info, run))
    buf, offsets = fetch_ranges(info, plan.starts, plan.ends)
    starts, run_bytes = plan.runs[0]
    where = np.searchsorted(plan.starts, starts, side="right") - 1
    pos = offsets[where] + (starts - plan.starts[where])
    if len(pos) == 1 or np.all(np.diff(pos) == run_bytes):  # rows back to back: a view
        rows = buf[pos[0] : pos[0] + len(pos) * run_bytes]
    else:  # rows inside merged ranges: copy them out, gaps left behind
        rows = np.empty((len(pos), run_bytes), dtype=np.uint8)
        for k, p in enumerate(pos.tolist()):
            rows[k] = buf[p : p + run_bytes]
    raw = rows.reshape(-1).view(info.raw_dtype).reshape(y1 - y0, x1 - x0)
    return scale(raw, info)


class FramesArray:
    """Array-like of a :class:`Frames` recipe; indexing reads only the indexed pixels of the
    indexed frames (several frames in threads for remote files)."""

    def __init__(self, frames: Frames):
        self.frames = frames
        self.shape = frames.shape
        self.dtype = np.dtype(frames.dtype)
        self.ndim = 3

    def _frame(self, k: int, box: list[tuple[int, int]]) -> np.ndarray:
        frames = self.frames
        data = read_window(frames.infos[k], box).astype(self.dtype, copy=False)
        if frames.divisors is not None:
            data = data / np.asarray(frames.divisors[k]).astype(self.dtype)
        return data

    def __getitem__(self, index: Any) -> np.ndarray:
        box, local = normalize_index(index, self.shape)
        (t0, t1), (a, b), (c, d) = box
        (y0, _), (x0, _) = self.frames.window
        inner = [(y0 + a, y0 + b), (x0 + c, x0 + d)]
        out = np.empty((t1 - t0, b - a, d - c), dtype=self.dtype)
        if out.size:
            remote = not all(storage.is_local(i.url) for i in self.frames.infos[t0:t1])
            if remote and t1 - t0 > 1:
                with ThreadPoolExecutor(max_workers=min(16, t1 - t0)) as pool:
                    planes = pool.map(lambda k: self._frame(k, inner), range(t0, t1))
                    for n, plane in enumerate(planes):
                        out[n] = plane
            else:
                for n, k in enumerate(range(t0, t1)):
                    out[n] = self._frame(k, inner)
        return out[local]

    def __dask_tokenize__(self) -> str:
        return tokenize("cloudlab.aia.FramesArray", self.frames)

    def __repr__(self) -> str:
        return f"FramesArray({len(self.frames.infos)} frames, shape={self.shape})"


def frame_blocks(frames: Frames, chunks: Sequence[int] | None = None) -> da.Array:
    """A dask array reading ``frames`` straight from the files.

    Parameters
    ----------
    frames : Frames
        The recipe.
    chunks : (cy, cx), optional
        Spatial chunks with every frame in one chunk (one task per spatial block reads that
        block of every file); default one chunk per frame, its whole window.

    Returns
    -------
    dask.array.Array
        ``(time, y, x)``; its name is remembered so that :func:`frames_of` finds the recipe.
    """
    n, ny, nx = frames.shape
    all_chunks = (1, ny, nx) if chunks is None else (n, *chunks)
    arr = FramesArray(frames)
    name = "aia-frames-" + tokenize(arr, all_chunks)
    data = da.from_array(
        arr,
        chunks=all_chunks,
        name=name,
        asarray=False,
        fancy=False,
        meta=np.empty((0, 0, 0), dtype=arr.dtype),
    )
    _RECIPES.remember([data.name], frames)
    return data


def frames_of(cube: xr.DataArray) -> Frames | None:
    """The recipe of a cube whose data are still exactly what :func:`frame_blocks` made.

    Any operation that changes the values (arithmetic, indexing with xarray, ``where``...)
    gives a dask array of another name, for which this returns ``None``.
    """
    data = cube.data
    if not isinstance(data, da.Array) or cube.dims != ("time", "y", "x"):
        return None
    frames = _RECIPES.get(data.name)
    if frames is None or frames.shape != data.shape or np.dtype(frames.dtype) != data.dtype:
        return None
    return frames


def with_frames(
    cube: xr.DataArray, frames: Frames, chunks: Sequence[int] | None = None
) -> xr.DataArray:
    """``cube`` (same coordinates and attrs) with its data read through ``frames``.

    Parameters
    ----------
    cube : xarray.DataArray
        ``(time, y, x)`` cube of the recipe's shape.
    frames : Frames
        What to read.
    chunks : (cy, cx), optional
        As in :func:`frame_blocks`.

    Raises
    ------
    InputError
        If the recipe's shape is not the cube's.
    """
    data = frame_blocks(frames, chunks)
    if data.shape != cube.shape:
        raise InputError(f"recipe of shape {data.shape} does not fit cube {cube.shape}")
    return cube.copy(data=data)
