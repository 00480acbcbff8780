"""TESS calibrated full-frame images (``*_ffic.fits[.gz]``) as one lazy frame stack.

Only the science region is exposed: 0-based image rows ``SCIROWS-1 .. SCIROWE-1`` and columns
``SCCSA-1 .. SCCED-1`` (rows 0-2047, columns 44-2091 in a full frame), cut to the image actually
stored (trimmed test files are smaller). Coordinates ``row`` and ``column`` are 0-based *science*
pixels; ``ccd_row``/``ccd_column`` give the 1-based CCD pixels that TPF headers use
(``ccd_column = column + SCCSA``, ``ccd_row = row + SCIROWS``).

Algorithms that re-read frames inside their own tasks (BackDrop) do not dig into attributes:
:func:`frame_source` turns a stack's documented coordinates (``url``, ``ccd_row``,
``ccd_column``) and the caller's storage options into a :class:`FrameSource`, the explicit
contract between this reader and them. Storage options never enter a dataset's ``attrs``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.highlevelgraph import HighLevelGraph

from cloudlab import fits, storage
from cloudlab.errors import (
    REASON,
    STATUS,
    STATUS_OK,
    InputError,
    NotFoundError,
    check_on_error,
)
from cloudlab.fits.tables import map_files
from cloudlab.tess_detector import FULL_SHAPE, SCIENCE_KEYWORDS

__all__ = [
    "FFIError",
    "FrameSource",
    "frame_source",
    "open_ffis",
    "read_science",
]

SECTOR_RE = re.compile(r"-s(\d{4})-")
DEFAULT_GEOMETRY = SCIENCE_KEYWORDS


class FFIError(InputError):
    """A frame stack that cannot be opened (mixed CCDs, bad headers, unreadable frames)."""


def _frame_hdus(
    url: str, storage_options: dict | None, file_info: dict | None = None
) -> tuple[fits.HDUInfo, fits.HDUInfo, fits.HDUInfo | None]:
    """Primary, calibrated-image and uncertainty HDUs of one frame (None: no uncertainty HDU),
    read with one walk of its headers: two requests, none more when ``file_info`` (from the
    glob listing) is given. A frame without HDU 1 raises, listing the HDUs it has."""
    primary, cal, err = fits.hdu_infos(
        url, [0, 1, 2], storage_options=storage_options, file_info=file_info, missing_ok=True
    )
    if cal is None:
        cal = fits.hdu_info(url, 1, storage_options=storage_options, file_info=file_info)
    return primary, cal, err


def _frame_meta(url: str, storage_options: dict | None, file_info: dict | None = None) -> dict:
    """Header information of one frame (primary, calibrated image, uncertainty image)."""
    primary, cal, err = _frame_hdus(url, storage_options, file_info)
    if cal.kind != "image" or len(cal.shape) != 2:
        raise FFIError(f"{url}: HDU 1 is not a 2-D image (kind {cal.kind}, shape {cal.shape})")
    # HDUInfo.get reads single cards without parsing the whole header with astropy (the
    # header scan of a sector's 48,000 FFIs is bound by that parsing)
    values = {k: cal.get(k) for k in ("CAMERA", "CCD", "TSTART", "TSTOP", "DQUALITY")}
    missing = [k for k in ("CAMERA", "CCD", "TSTART", "TSTOP") if values[k] is None]
    if missing:
        raise FFIError(f"{url}: calibrated-image header lacks {', '.join(missing)}")
    sector = primary.get("SECTOR")
    if sector is None:
        match = SECTOR_RE.search(url.rsplit("/", 1)[-1])
        if match is None:
            raise FFIError(f"{url}: no SECTOR in the primary header and none in the file name")
        sector = int(match.group(1))
    geometry = {k: cal.get(k) for k in DEFAULT_GEOMETRY}
    if any(v is None for v in geometry.values()):
        if tuple(cal.shape) != FULL_SHAPE:
            raise FFIError(
                f"{url}: no science-region keys (SCIROWS/SCIROWE/SCCSA/SCCED) and a "
                f"non-standard image shape {cal.shape}"
            )
        geometry = dict(DEFAULT_GEOMETRY)
    return {
        "url": url,
        "sector": int(sector),
        "camera": int(values["CAMERA"]),
        "ccd": int(values["CCD"]),
        "tstart": float(values["TSTART"]),
        "tstop": float(values["TSTOP"]),
        "tstart_tjd": float(primary.get("TSTART", np.nan)),
        "quality": int(values["DQUALITY"] or 0),
        "shape": tuple(cal.shape),
        "err_shape": None if err is None else tuple(err.shape),
        "geometry": {k: int(v) for k, v in geometry.items()},
    }


def _read_all(
    found: list[tuple[str, dict | None]], storage_options: dict | None
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Header information of every frame (:func:`cloudlab.fits.tables.map_files`) and the
    unreadable ones with the reason."""

    def one(item: tuple[str, dict | None]) -> dict | tuple[str, str]:
        url, file_info = item
        try:
            return _frame_meta(url, storage_options, file_info)
        except FileNotFoundError as exc:
            return (url, f"missing ({exc})")
        except (fits.FITSError, OSError, ValueError, KeyError, TypeError) as exc:
            return (url, f"{type(exc).__name__}: {exc}")

    results = map_files(one, found)
    metas = [r for r in results if isinstance(r, dict)]
    bad = [r for r in results if isinstance(r, tuple)]
    return metas, bad


def _science_box(meta: dict) -> tuple[slice, slice]:
    g = meta["geometry"]
    n_rows, n_cols = meta["shape"]
    r0, r1 = g["SCIROWS"] - 1, min(g["SCIROWE"], n_rows)
    c0, c1 = g["SCCSA"] - 1, min(g["SCCED"], n_cols)
    if r1 <= r0 or c1 <= c0:
        raise FFIError(f"{meta['url']}: the image {meta['shape']} holds no science pixels")
    return slice(r0, r1), slice(c0, c1)


def open_ffis(
    urls_or_glob: str | Sequence[str],
    *,
    on_error: str = "raise",
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Open calibrated TESS FFIs of one sector/camera/CCD as a lazy frame stack.

    Headers are read now (:func:`cloudlab.fits.tables.map_files`: remote frames in threads,
    local ones one after another unless they wait on the disk); pixel data stay lazy, one chunk
    per frame, each reading only the science-region bytes (``.fits.gz`` frames are decompressed
    whole).

    Parameters
    ----------
    urls_or_glob : str or sequence of str
        A glob, a URL or a list of URLs (any fsspec protocol).
    on_error : {"raise", "skip"}
        What to do with missing or corrupt frames: raise an error naming them, or warn and
        leave them out (their URLs are listed in ``attrs["skipped"]``).
    storage_options : dict, optional
        Filesystem keyword arguments.

    Returns
    -------
    xarray.Dataset
        ``flux`` and ``flux_err`` (float32, electron / s) with dims ``(time, row, column)``;
        ``status``/``reason`` along ``time`` (``"ok"``, or ``"no_uncertainty"`` where the frame
        has no uncertainty HDU and ``flux_err`` is NaN); coordinates ``time`` (BTJD
        mid-exposure), ``tstart``/``tstop`` (BTJD), ``tstart_tjd`` (primary-header ``TSTART``,
        spacecraft TJD), ``quality`` (``DQUALITY``), ``url``, ``row``/``column`` (0-based science
        pixels) and ``ccd_row``/``ccd_column`` (1-based CCD pixels, the image pixel plus one);
        attrs ``sector``, ``camera``, ``ccd``, ``image_row_offset``/``image_column_offset``
        (0-based image pixel of science pixel 0) and ``skipped`` (URLs left out with
        ``on_error="skip"``). Frames are sorted by time. :func:`frame_source` gives what tasks
        need to re-read the frames.

    Raises
    ------
    FileNotFoundError
        A glob matching nothing, or missing frames with ``on_error="raise"``.
    FFIError
        Corrupt frames (with ``on_error="raise"``), frames from different sectors/cameras/CCDs
        or with different shapes, or no readable frame at all.
    """
    check_on_error(on_error)
    found = storage.expand_detail(urls_or_glob, storage_options=storage_options)
    if not found:
        raise NotFoundError(f"no frames given: {urls_or_glob!r}")
    urls = [url for url, _ in found]
    metas, bad = _read_all(found, storage_options)
    if bad:
        listing = "\n".join(f"  {u}: {m}" for u, m in bad[:20])
        if on_error == "raise":
            if all(m.startswith("missing") for _, m in bad):
                raise NotFoundError(f"{len(bad)} frame(s) not found:\n{listing}")
            raise FFIError(f"{len(bad)} frame(s) could not be read:\n{listing}")
        warnings.warn(f"skipping {len(bad)} unreadable frame(s):\n{listing}", stacklevel=2)
    if not metas:
        raise FFIError("no readable frames among " + ", ".join(urls[:5]))
    ids = {(m["sector"], m["camera"], m["ccd"]) for m in metas}
    if len(ids) > 1:
        first = {}
        for m in metas:
            first.setdefault((m["sector"], m["camera"], m["ccd"]), m["url"])
        listing = "\n".join(
            f"  sector {s} camera {c} ccd {d}: e.g. {u}" for (s, c, d), u in first.items()
        )
        raise FFIError(f"frames of different sector/camera/CCD mixed:\n{listing}")
    shapes = {(m["shape"], m["err_shape"], tuple(m["geometry"].items())) for m in metas}
    if len(shapes) > 1:
        odd = [m["url"] for m in metas if m["shape"] != metas[0]["shape"]][:5]
        raise FFIError(f"frames differ in shape or science-region keys, e.g. {odd}")
    metas.sort(key=lambda m: m["tstart"])
    good_urls = [m["url"] for m in metas]
    rows, cols = _science_box(metas[0])
    g = metas[0]["geometry"]

    n_rows, n_cols = rows.stop - rows.start, cols.stop - cols.start
    box = (rows.start, cols.start, n_rows, n_cols)
    flux = _stack(good_urls, 1, box, storage_options)
    no_err = metas[0]["err_shape"] is None
    if no_err:
        flux_err = da.full((len(good_urls), n_rows, n_cols), np.nan, np.float32, chunks=flux.chunks)
    else:
        flux_err = _stack(good_urls, 2, box, storage_options)

    sector, camera, ccd = next(iter(ids))
    science_rows = np.arange(n_rows)
    science_cols = np.arange(n_cols)
    times = np.array([(m["tstart"] + m["tstop"]) / 2 for m in metas])
    coords = {
        "time": ("time", times, {"units": "BTJD (BJD - 2457000), mid-exposure"}),
        "tstart": ("time", np.array([m["tstart"] for m in metas]), {"units": "BTJD"}),
        "tstop": ("time", np.array([m["tstop"] for m in metas]), {"units": "BTJD"}),
        "tstart_tjd": ("time", np.array([m["tstart_tjd"] for m in metas]), {"units": "TJD"}),
        "quality": ("time", np.array([m["quality"] for m in metas], np.int32)),
        "url": ("time", np.array(good_urls, dtype=str)),
        "row": ("row", science_rows, {"units": "pixel", "description": "0-based science row"}),
        "column": (
            "column",
            science_cols,
            {"units": "pixel", "description": "0-based science column"},
        ),
        "ccd_row": ("row", science_rows + g["SCIROWS"], {"description": "1-based CCD row"}),
        "ccd_column": ("column", science_cols + g["SCCSA"], {"description": "1-based CCD column"}),
    }
    attrs = {
        "sector": sector,
        "camera": camera,
        "ccd": ccd,
        "image_row_offset": rows.start,
        "image_column_offset": cols.start,
        "skipped": [u for u, _ in bad],
    }
    dims = ("time", "row", "column")
    status = np.full(len(metas), "no_uncertainty" if no_err else STATUS_OK, dtype=object)
    reason = np.full(
        len(metas), "the frame has no uncertainty HDU (2); flux_err is NaN" if no_err else ""
    )
    return xr.Dataset(
        {
            "flux": (dims, flux, {"units": "electron / s"}),
            "flux_err": (dims, flux_err, {"units": "electron / s"}),
            STATUS: ("time", status.astype(str)),
            REASON: ("time", reason.astype(str)),
        },
        coords=coords,
        attrs=attrs,
    )


@dataclass(frozen=True)
class FrameSource:
    """Where the frames of a stack live: what a task needs to re-read them itself.

    This is the public contract between :func:`open_ffis` and algorithms that read frames inside
    their own tasks (so that no frame stays in memory between passes). Build it with
    :func:`frame_source`. ``storage_options`` travel with the tasks, never into ``attrs`` or
    products, and are left out of ``repr``.

    Attributes
    ----------
    urls : tuple of str
        One frame per time step, in the stack's order.
    box : (int, int, int, int)
        ``(row0, column0, rows, columns)``: 0-based image pixel of the stack's first row and
        column, and the region's size.
    hdu : int
        HDU holding the pixels (1: calibrated flux).
    storage_options : dict, optional
        Filesystem keyword arguments for reading ``urls``.
    """

    urls: tuple[str, ...]
    box: tuple[int, int, int, int]
    hdu: int = 1
    storage_options: dict | None = field(default=None, repr=False, compare=False)

    def read(self, url: str) -> np.ndarray:
        """The ``box`` of frame ``url`` as a 2-D float32 array (NaN beyond a trimmed image)."""
        return read_science(url, self.hdu, self.box, storage_options=self.storage_options)[0]


def _contiguous(values: np.ndarray) -> bool:
    return bool(len(values) and np.all(np.diff(values) == 1))


def frame_source(
    ffis: xr.Dataset, *, hdu: int = 1, storage_options: dict | None = None
) -> FrameSource | None:
    """The :class:`FrameSource` of a stack from :func:`open_ffis` (any time/pixel selection).

    Built from the stack's documented coordinates: ``url`` (per time), ``ccd_row`` and
    ``ccd_column`` (1-based, so the 0-based image pixel is one less).

    Parameters
    ----------
    ffis : xarray.Dataset
        A stack from :func:`open_ffis`, possibly sliced with ``isel``/``sel``.
    hdu : int
        HDU to read (1: flux, 2: uncertainty).
    storage_options : dict, optional
        Filesystem keyword arguments for the frames (the same as given to :func:`open_ffis`).

    Returns
    -------
    FrameSource or None
        ``None`` when the dataset lacks those coordinates or its rows/columns are not contiguous
        (then its ``flux`` chunks are the only source).
    """
    if not all(name in ffis.coords for name in ("url", "ccd_row", "ccd_column")):
        return None
    rows, cols = np.asarray(ffis["ccd_row"].values), np.asarray(ffis["ccd_column"].values)
    if not (_contiguous(rows) and _contiguous(cols)):
        return None
    return FrameSource(
        urls=tuple(str(u) for u in ffis["url"].values),
        box=(int(rows[0]) - 1, int(cols[0]) - 1, len(rows), len(cols)),
        hdu=hdu,
        storage_options=storage_options,
    )


def read_science(
    url: str,
    hdu: int,
    box: tuple[int, int, int, int],
    *,
    storage_options: dict | None = None,
) -> np.ndarray:
    """Read the image box ``(row0, col0, rows, cols)`` of one HDU as ``(1, rows, cols)`` float32.

    Only the bytes of the box are fetched; where the stored image is smaller than the box (trimmed
    files) the missing pixels are NaN.
    """
    info = fits.hdu_info(url, hdu, storage_options=storage_options)
    r0, c0, n_r, n_c = box
    out = np.full((1, n_r, n_c), np.nan, np.float32)
    r1, c1 = min(r0 + n_r, info.shape[0]), min(c0 + n_c, info.shape[1])
    if r1 > r0 and c1 > c0:
        out[0, : r1 - r0, : c1 - c0] = fits.read_region(info, (slice(r0, r1), slice(c0, c1)))
    return out


def _read_frame(
    url: str, hdu: int, box: tuple[int, int, int, int], storage_options: dict | None
) -> np.ndarray:
    return read_science(url, hdu, box, storage_options=storage_options)


def _stack(
    urls: list[str], hdu: int, box: tuple[int, int, int, int], storage_options: dict | None
) -> da.Array:
    """Lazy ``(time, rows, cols)`` stack, one chunk (one ranged read) per frame, in one graph
    layer (a few small tuples per frame: nothing per frame is built on the client but its task)."""
    name = "ffi-stack-" + dask.base.tokenize(urls, hdu, box, storage_options)
    layer = {
        (name, k, 0, 0): (_read_frame, url, hdu, box, storage_options) for k, url in enumerate(urls)
    }
    chunks = ((1,) * len(urls), (box[2],), (box[3],))
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    return da.Array(graph, name, chunks, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))
