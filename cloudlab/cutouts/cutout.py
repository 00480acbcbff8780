"""Batched cube cutouts: one task per batch of consecutive targets, one batched ranged read per
cube the batch touches.

In a cube (numpy shape ``(rows, columns, frames, 2)``, big-endian float32) the pixels of one
cutout row are contiguous over all frames and both planes, so a ``ny × nx`` cutout is ``ny`` byte
ranges of ``8 · nx · n_frames`` bytes. A task hands the boxes of all its targets to
:func:`cloudlab.fits.read_regions`, which merges overlapping or nearby ranges and fetches them with
a single ``cat_ranges`` call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from astropy.io import fits as afits
from astropy.wcs import WCS
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from cloudlab import fits, storage
from cloudlab.chunking import items_per_task
from cloudlab.cutouts.locate import check_targets, wcs_pixels
from cloudlab.cutouts.pointing import radec_to_pixel, sector_geometry
from cloudlab.errors import REASON, STATUS, STATUS_OK, InputError, check_on_error
from cloudlab.io.tess import CubeMeta, cube_meta, ffi_cube_meta
from cloudlab.io.tess import cube_url as make_cube_url

__all__ = [
    "BYTES_PER_PIXEL_FRAME",
    "STELLAR_KEYWORDS",
    "TESS_PIXEL_ARCSEC",
    "cutout_boxes",
    "cutout_header",
    "cutout_limits",
    "cutout_wcs",
    "make_cutouts",
    "parse_size",
    "read_cutouts",
    "target_status",
]

BYTES_PER_PIXEL_FRAME = 8
"""Flux and uncertainty, float32 each."""


STELLAR_KEYWORDS = {
    "TESSMAG": (("tessmag", "tmag"), "[mag] TESS magnitude"),
    "TEFF": (("teff", "tce_steff"), "[K] Effective temperature"),
    "LOGG": (("logg", "tce_slogg"), "[cm/s2] log10 surface gravity"),
    "MH": (("mh", "feh", "tce_smet"), "[log10([M/H])] Metallicity"),
    "RADIUS": (("radius", "rad", "tce_sradius"), "[solar radii] Stellar radius"),
    "PMRA": (("pmra",), "[mas/yr] RA proper motion"),
    "PMDEC": (("pmdec",), "[mas/yr] Dec proper motion"),
}
"""TIC stellar keywords of a TPF's primary header: catalog column names (any case, first found
wins) and the card comment. :func:`make_cutouts` keeps the columns a target list has as
coordinates named after the keyword in lower case (``tessmag``, ``teff``, …)."""

TESS_PIXEL_ARCSEC = 21.0
"""Nominal TESS pixel scale (arcsec per pixel) used to turn angular cutout sizes into pixels."""


def _pixels(value) -> int:
    """One axis of a cutout size in pixels: a positive integer, or an angle (astropy Quantity or
    text such as ``"2arcmin"``, ``"90 arcsec"``, ``"0.1deg"``) rounded up to whole pixels."""
    from astropy import units as u

    if isinstance(value, str):
        text = value.strip()
        try:
            return _pixels(int(text))
        except ValueError:
            pass
        try:
            value = u.Quantity(text)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"cutout size {text!r} is neither a number of pixels nor an angle "
                "(e.g. 10, 2arcmin, 90arcsec)"
            ) from exc
    if isinstance(value, u.Quantity):
        if value.unit in (u.pix, u.dimensionless_unscaled):
            return _pixels(float(value.value))
        if value.unit.physical_type != "angle":
            raise InputError(f"cutout size {value} is neither pixels nor an angle")
        pixels = float(value.to_value(u.arcsec)) / TESS_PIXEL_ARCSEC
        if not np.isfinite(pixels) or pixels <= 0:
            raise InputError(f"cutout size must be a positive angle, got {value}")
        # a hair below an integer (an exact number of pixels in floating point) is that integer
        return max(1, int(np.ceil(pixels - 1e-9)))
    if isinstance(value, bool) or not np.isfinite(float(value)) or not float(value).is_integer():
        raise InputError(f"cutout size must be positive integers, got {value!r}")
    if int(value) <= 0:
        raise InputError(f"cutout size must be positive integers, got {value!r}")
    return int(value)


def parse_size(size) -> tuple[int, int]:
    """``size`` as (rows, columns) of positive ints.

    Parameters
    ----------
    size : int, str, astropy.units.Quantity or pair of them
        Pixels, or an angle (a Quantity, or text such as ``"2arcmin"``), for a square cutout or
        as (rows, columns); ``"ROWSxCOLS"`` text too. An angle becomes the smallest number of
        TESS pixels (:data:`TESS_PIXEL_ARCSEC`) that covers it: 2 arcmin → 6 pixels.

    Returns
    -------
    (int, int)

    Raises
    ------
    InputError
        Non-positive or non-integer pixel counts, angles that are not positive, other units.
    """
    from astropy import units as u

    if isinstance(size, str) and "x" in size.lower() and not size.strip()[-1:].isalpha():
        size = tuple(size.lower().split("x"))
    if isinstance(size, u.Quantity) and size.isscalar:
        size = (size, size)
    elif isinstance(size, str | int | float | np.number):
        size = (size, size)
    if not isinstance(size, list | tuple | np.ndarray | u.Quantity) or len(size) != 2:
        raise InputError(f"size must be an int or (rows, columns), got {size!r}")
    try:
        return _pixels(size[0]), _pixels(size[1])
    except InputError as exc:
        raise InputError(f"{exc} (size={size!r})") from None


def cutout_limits(
    column: np.ndarray, row: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """First 0-based (column, row) of cutouts centred as astrocut centres them.

    astrocut takes ``round(centre - n/2)`` and ``round(centre + n/2)`` per axis (numpy rounding,
    pixel centres at integers); the cutout spans ``n`` pixels from the lower limit.

    Parameters
    ----------
    column, row : numpy.ndarray
        0-based pixel positions of the targets.
    size : (int, int)
        (rows, columns).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``corner_column``, ``corner_row`` (int64; may be negative or beyond the image).
    """
    ny, nx = size
    c0 = np.round(np.asarray(column, dtype=float) - nx / 2).astype(np.int64)
    r0 = np.round(np.asarray(row, dtype=float) - ny / 2).astype(np.int64)
    return c0, r0


def cutout_boxes(
    corner_col: np.ndarray,
    corner_row: np.ndarray,
    size: tuple[int, int],
    *,
    n_rows: int,
    n_cols: int,
) -> tuple[np.ndarray, list[tuple[tuple[int, int], tuple[int, int]]]]:
    """The part of each cutout that lies on the image, as (rows, columns) boxes of the cube.

    Parameters
    ----------
    corner_col, corner_row : numpy.ndarray
        0-based first column and row of each cutout (may lie off the image).
    size : (int, int)
        (rows, columns).
    n_rows, n_cols : int
        Image size of the cube.

    Returns
    -------
    (numpy.ndarray, list)
        Positions of the cutouts that touch the image, and their boxes
        ``((row_start, row_stop), (col_start, col_stop))`` clipped to the image.
    """
    ny, nx = size
    corner_col = np.asarray(corner_col, dtype=np.int64)
    corner_row = np.asarray(corner_row, dtype=np.int64)
    rs, re = np.clip(corner_row, 0, n_rows), np.clip(corner_row + ny, 0, n_rows)
    cs, ce = np.clip(corner_col, 0, n_cols), np.clip(corner_col + nx, 0, n_cols)
    on = np.flatnonzero((re > rs) & (ce > cs))
    boxes = [((int(rs[t]), int(re[t])), (int(cs[t]), int(ce[t]))) for t in on]
    return on, boxes


def read_cutouts(
    info: fits.HDUInfo,
    corner_col: np.ndarray,
    corner_row: np.ndarray,
    size: tuple[int, int],
) -> np.ndarray:
    """Read a batch of cutouts from one cube with one batched read (:func:`fits.read_regions`).

    Parameters
    ----------
    info : cloudlab.fits.HDUInfo
        HDU 1 of the cube (``fits.hdu_info(url, 1)``): shape ``(rows, columns, frames, 2)``.
    corner_col, corner_row : numpy.ndarray
        0-based first column and row of each cutout (may lie off the image).
    size : (int, int)
        (rows, columns).

    Returns
    -------
    numpy.ndarray
        float32 ``(2, target, frame, row, column)``: flux then uncertainty; NaN off the image.
    """
    ny, nx = size
    n_rows, n_cols, n_frames, _ = info.shape
    corner_col = np.asarray(corner_col, dtype=np.int64)
    corner_row = np.asarray(corner_row, dtype=np.int64)
    out = np.empty((2, len(corner_col), n_frames, ny, nx), dtype=np.float32)
    partial = (
        (corner_col < 0)
        | (corner_col + nx > n_cols)
        | (corner_row < 0)
        | (corner_row + ny > n_rows)
    )
    out[:, partial] = np.nan  # NaN padding only where a cutout leaves the image
    on, boxes = cutout_boxes(corner_col, corner_row, size, n_rows=n_rows, n_cols=n_cols)
    for t, box, cut in zip(on.tolist(), boxes, fits.read_regions(info, boxes), strict=True):
        (r0, r1), (c0, c1) = box
        rows = slice(r0 - corner_row[t], r1 - corner_row[t])
        cols = slice(c0 - corner_col[t], c1 - corner_col[t])
        out[:, t, :, rows, cols] = cut.transpose(3, 2, 0, 1)  # (rows, cols, frames, 2)
    return out


def _failures_message(failed: list[dict]) -> str:
    shown = "; ".join(f"TIC {f['ticid']}: {f[REASON]}" for f in failed[:10])
    more = f"; and {len(failed) - 10} more" if len(failed) > 10 else ""
    return f"{len(failed)} target(s) cannot be cut: {shown}{more}"


def _assign_cubes(t, sector, cube_url, cube_base, failed):
    """Cube URL per target (empty string where none)."""
    urls = np.full(len(t), "", dtype=object)
    if cube_url is not None:
        urls[:] = str(cube_url)
        return urls
    if sector is None:
        raise InputError("make_cutouts: give sector (targets are grouped by cube) or cube_url")
    sector_geometry(sector)
    cam, ccd, _, _ = radec_to_pixel(t["ra"].to_numpy(), t["dec"].to_numpy(), sector)
    for i in np.flatnonzero(cam == 0):
        failed.append(
            {"index": int(i), "ticid": t["ticid"].iloc[i], STATUS: "off_silicon",
             REASON: f"not on a science pixel of any CCD in sector {sector}"}
        )  # fmt: skip
    for i in np.flatnonzero(cam > 0):
        urls[i] = make_cube_url(sector, cam[i], ccd[i], cube_base)
    return urls


def make_cutouts(
    targets: pd.DataFrame,
    *,
    sector: int | None = None,
    size: int | tuple[int, int] = 10,
    cube_url: str | None = None,
    cube_base: str | None = None,
    batch_size: int | None = None,
    on_error: str = "raise",
    storage_options: dict | None = None,
    pad: bool = True,
    ffis: str | Sequence[str] | None = None,
    ffi_index: str | None = None,
) -> xr.Dataset:
    """Cut every target out of its sector cube, or straight out of the FFIs, lazily, as one
    dask graph.

    Parameters
    ----------
    targets : pandas.DataFrame
        With ``ticid``, ``ra``, ``dec`` (deg).
    sector : int, optional
        TESS sector: targets are grouped by (camera, CCD) with the offline pointing model and cut
        from ``{cube_base}/tess-s{sector:04d}-{camera}-{ccd}-cube.fits``. With ``cube_url``, the
        cube's sector when its primary header has no (or a blank) ``SECTOR``; one that
        contradicts the header is refused.
    size : int, str, Quantity or pair of them, optional
        Cutout size in pixels, or (rows, columns); an angle (``2 * u.arcmin``, ``"2arcmin"``)
        becomes the smallest number of 21-arcsec TESS pixels covering it (:func:`parse_size`).
        astrocut's ``cutout_size=(a, b)`` is (columns, rows): pass ``size=(b, a)`` for the same
        cutout.
    cube_url : str, optional
        Cut all targets from this cube instead.
    cube_base : str, optional
        Directory of the cubes (default MAST's ``s3://stpubdata/tess/public/mast``).
    batch_size : int, optional
        Targets per task (default: :func:`cloudlab.chunking.items_per_task`, as many as fit
        dask's ``array.chunk-size`` capped by the workers' memory).
    on_error : {"raise", "skip"}
        What to do with targets that cannot be cut (off silicon, cube missing or unreadable,
        coordinates outside the cube's WCS): raise one error listing them all, or leave them
        out and list them in ``attrs["failed"]`` (JSON ``ticid``/``reason``) with their
        failure codes in ``attrs["failed_status"]``; :func:`target_status` tabulates both.
    storage_options : dict, optional
    pad : bool, optional
        Cutouts that reach off the image are NaN-padded as astrocut pads them, with ``aperture``
        0 there (default). With ``pad=False`` such targets fail with status ``"off_edge"``
        (raised, or left out with ``on_error="skip"``).
    ffis : str or sequence of str, optional
        Cut from these calibrated FFIs of one sector, camera and CCD (a glob, a URL or a list)
        instead of a cube: each FFI's headers are read once, then every task reads a batch of
        FFIs, each with one batched ranged read per HDU for all targets. The result equals the
        cube path on the cube astrocut's ``CubeFactory`` would build from the same FFIs
        (``cube_url`` is then the glob, or the first FFI of a list).
    ffi_index : str, optional
        With ``ffis``: a Parquet header index to read the FFIs' headers from (for FFIs
        unchanged since) and to write, so that the next session makes no header request
        (:func:`cloudlab.io.tess.ffi_cube_meta`).

    Returns
    -------
    xarray.Dataset
        Dims ``target, time, row, column`` (and ``cube``), targets in input order:

        - ``flux``, ``flux_err`` (float32, e-/s; NaN off the image), lazy;
        - ``aperture`` (int32: 1 on the image, 0 off it);
        - coords ``ticid``, ``ra``, ``dec``, ``camera``, ``ccd``, ``cube_index``,
          ``center_column``/``center_row`` (0-based pixel of the target in the cube's WCS),
          ``corner_column``/``corner_row`` (0-based CCD pixel of cutout pixel ``[0, 0]``),
          ``time`` (BTJD mid-exposure of the first cube), ``status``/``reason`` (``"ok"`` and
          ``""`` for every target cut), ``sector`` (0 where the cube does not say and
          ``sector`` was not given; ``camera``/``ccd`` 0 where the cube does not say), and
          the TIC stellar columns the targets have (:data:`STELLAR_KEYWORDS`: ``tessmag``,
          ``teff``, ``logg``, ``mh``, ``radius``, ``pmra``, ``pmdec``);
        - per cube: ``cube_url``, ``cube_wcs`` (the WCS header astrocut uses), ``cube_primary``
          (primary header), ``cube_time``, ``cube_quality``, ``cube_barycorr``, ``cube_ffi_file``
          (``cube, time``).

        :func:`cutout_wcs` gives a target's WCS. The values equal astrocut's ``TessCubeCutout``
        for the same coordinates and size.

    Raises
    ------
    InputError
        Bad size (≤ 0, larger than the CCD), bad coordinates, missing sector, cubes with
        different frame counts, or (``on_error="raise"``) targets that cannot be cut.
    """
    check_on_error(on_error)
    ny, nx = parse_size(size)
    t = check_targets(targets)
    failed: list[dict] = []
    ffi_frames = None  # the FFIs' image and uncertainty HDUs, in frame order, when cutting FFIs
    if ffis is not None:
        if cube_url is not None:
            raise InputError("make_cutouts: give cube_url or ffis, not both")
        ffi_meta, ffi_frames = ffi_cube_meta(ffis, storage_options=storage_options, index=ffi_index)
        cube_url = ffi_meta.url
    urls = _assign_cubes(t, sector, cube_url, cube_base, failed)
    metas: dict[str, CubeMeta] = {}
    sectors: dict[str, int] = {}
    center_col = np.full(len(t), np.nan)
    center_row = np.full(len(t), np.nan)
    ra, dec = t["ra"].to_numpy(), t["dec"].to_numpy()
    for url in dict.fromkeys(u for u in urls if u):
        members = np.flatnonzero(urls == url)
        try:
            if ffi_frames is None:
                meta = cube_meta(url, storage_options=storage_options)
            else:
                meta = ffi_meta
        except (OSError, ValueError) as exc:
            if cube_url is not None:
                raise
            for i in members:
                failed.append({"index": int(i), "ticid": t["ticid"].iloc[i],
                               STATUS: "cube_error", REASON: f"cube {url}: {exc}"})  # fmt: skip
            urls[members] = ""
            continue
        if ny > meta.n_rows or nx > meta.n_cols:
            raise InputError(
                f"cutout size {ny}×{nx} is larger than the cube {url} ({meta.n_rows}×{meta.n_cols})"
            )
        sectors[url] = _cube_sector(meta, sector if cube_url is not None else None)
        metas[url] = meta
        c, r = wcs_pixels(meta, ra[members], dec[members])
        c0, r0 = cutout_limits(np.nan_to_num(c, nan=-1e9), np.nan_to_num(r, nan=-1e9), (ny, nx))
        outside = ~np.isfinite(c) | (c0 + nx <= 0) | (c0 >= meta.n_cols) | (r0 + ny <= 0)
        outside |= r0 >= meta.n_rows
        for i in members[outside]:
            failed.append({"index": int(i), "ticid": t["ticid"].iloc[i], STATUS: "off_image",
                           REASON: f"outside the image of cube {url}"})  # fmt: skip
        edge = ~outside & (
            (c0 < 0) | (c0 + nx > meta.n_cols) | (r0 < 0) | (r0 + ny > meta.n_rows)
        )  # fmt: skip
        if not pad:
            for i, cc, rr in zip(members[edge], c0[edge], r0[edge], strict=True):
                failed.append({"index": int(i), "ticid": t["ticid"].iloc[i], STATUS: "off_edge",
                               REASON: f"the {ny}×{nx} cutout (first column {cc}, row {rr}) "
                               f"reaches off the {meta.n_rows}×{meta.n_cols} image of cube "
                               f"{url}; NaN-pad it with pad=True (the CLI without "
                               "--no-pad) or give a smaller size"})  # fmt: skip
            outside |= edge
        urls[members[outside]] = ""
        center_col[members[~outside]] = c[~outside]
        center_row[members[~outside]] = r[~outside]
    if failed and on_error == "raise":
        raise InputError(_failures_message(failed))
    if not metas or not (urls != "").any():
        raise InputError(_failures_message(failed) if failed else "make_cutouts: no targets")
    frames = {m.n_frames for m in metas.values()}
    if len(frames) > 1:
        listing = ", ".join(f"{u} ({m.n_frames})" for u, m in metas.items())
        raise InputError(f"cubes have different numbers of frames: {listing}")
    n_frames = frames.pop()
    keep = np.flatnonzero(urls != "")
    cube_list = [u for u in metas if (urls[keep] == u).any()]
    cube_index = np.array([cube_list.index(u) for u in urls[keep]], dtype=np.int64)
    corner_col, corner_row = cutout_limits(center_col[keep], center_row[keep], (ny, nx))
    if ffi_frames is not None:
        from cloudlab.cutouts.ffis import ffi_cutout_array

        flux_err = ffi_cutout_array(ffi_frames, corner_col, corner_row, (ny, nx))
    else:
        flux_err = _build_graph(
            cube_list, cube_index, corner_col, corner_row, (ny, nx), n_frames, batch_size,
            storage_options,
        )  # fmt: skip
    aperture = _aperture(cube_list, metas, cube_index, corner_col, corner_row, (ny, nx))
    kept = t.iloc[keep]
    first = metas[cube_list[0]]
    per_cube = [metas[u] for u in cube_list]
    ds = xr.Dataset(
        {
            "flux": (("target", "time", "row", "column"), flux_err[0], {"units": "electron / s"}),
            "flux_err": (
                ("target", "time", "row", "column"),
                flux_err[1],
                {"units": "electron / s"},
            ),  # fmt: skip
            "aperture": (("target", "row", "column"), aperture),
            "cube_url": ("cube", np.array(cube_list, dtype=str)),
            "cube_wcs": ("cube", np.array([m.wcs_header for m in per_cube], dtype=str)),
            "cube_primary": ("cube", np.array([m.primary_header for m in per_cube], dtype=str)),
            "cube_time": (
                ("cube", "time"),
                np.stack([m.time for m in per_cube]),
                {"units": "BTJD"},
            ),  # fmt: skip
            "cube_tstart": (("cube", "time"), np.stack([m.tstart for m in per_cube])),
            "cube_tstop": (("cube", "time"), np.stack([m.tstop for m in per_cube])),
            "cube_quality": (("cube", "time"), np.stack([m.quality for m in per_cube])),
            "cube_barycorr": (
                ("cube", "time"),
                np.stack([m.barycorr for m in per_cube]),
                {"units": "d"},
            ),  # fmt: skip
            "cube_ffi_file": (("cube", "time"), np.stack([m.ffi_file for m in per_cube])),
            "cube_wcs_ffi": (
                "cube",
                np.array([m.ffi_file[m.wcs_row] for m in per_cube], dtype=str),
            ),  # fmt: skip
        },
        coords={
            "ticid": ("target", kept["ticid"].to_numpy()),
            "ra": ("target", kept["ra"].to_numpy(), {"units": "deg"}),
            "dec": ("target", kept["dec"].to_numpy(), {"units": "deg"}),
            "sector": ("target", np.array([sectors[u] for u in cube_list])[cube_index]),
            "camera": ("target", np.array([m.camera or 0 for m in per_cube])[cube_index]),
            "ccd": ("target", np.array([m.ccd or 0 for m in per_cube])[cube_index]),
            "cube_index": ("target", cube_index),
            "center_column": ("target", center_col[keep]),
            "center_row": ("target", center_row[keep]),
            "corner_column": ("target", corner_col),
            "corner_row": ("target", corner_row),
            STATUS: ("target", np.full(len(keep), STATUS_OK)),
            REASON: ("target", np.full(len(keep), "")),
            "time": ("time", first.time, {"units": "BTJD (BJD - 2457000), TDB, mid-exposure"}),
        },
        attrs={
            "size": [ny, nx],
            "failed": json.dumps(
                [{"ticid": _jsonable(f["ticid"]), "reason": f[REASON]} for f in failed]
            ),
            "failed_status": json.dumps([f[STATUS] for f in failed]),
        },
    )
    for name, values in _stellar_columns(kept).items():
        ds = ds.assign_coords({name: ("target", values)})
    return ds


def _cube_sector(meta: CubeMeta, given: int | None) -> int:
    """The sector of a cube: its header's, else ``given``, else 0 (unknown)."""
    known = meta.sector if isinstance(meta.sector, int | np.integer) and meta.sector > 0 else None
    if given is not None:
        given = int(given)
        if given < 1:
            raise InputError(f"sector must be a positive integer, got {given}")
        if known is not None and known != given:
            raise InputError(
                f"sector {given} contradicts the cube {meta.url} (SECTOR = {known} in its "
                "primary header); give the cube's sector or leave sector out"
            )
        return given
    return int(known) if known is not None else 0


def _stellar_columns(targets: pd.DataFrame) -> dict[str, np.ndarray]:
    """The TIC stellar columns (:data:`STELLAR_KEYWORDS`) a target list has, as float arrays."""
    by_lower = {str(c).lower(): c for c in targets.columns}
    out = {}
    for key, (names, _) in STELLAR_KEYWORDS.items():
        column = next((by_lower[n] for n in names if n in by_lower), None)
        if column is not None:
            values = pd.to_numeric(targets[column], errors="coerce").to_numpy(dtype=float)
            out[key.lower()] = values
    return out


def target_status(ds: xr.Dataset) -> pd.DataFrame:
    """Every target of a :func:`make_cutouts` result with its status and reason.

    Targets that were cut have status ``"ok"`` (the ``status``/``reason`` coordinates along
    ``target``); targets dropped with ``on_error="skip"`` follow with their failure code
    (``"off_silicon"``, ``"cube_error"``, ``"off_image"`` or, with ``pad=False``,
    ``"off_edge"``) and the reason naming the sector or cube.

    Parameters
    ----------
    ds : xarray.Dataset
        Output of :func:`make_cutouts`.

    Returns
    -------
    pandas.DataFrame
        Columns ``ticid``, ``status``, ``reason``: the cut targets first, then the dropped ones.
    """
    failed = json.loads(ds.attrs.get("failed", "[]"))
    codes = json.loads(ds.attrs.get("failed_status", "[]")) or ["failed"] * len(failed)
    cut = pd.DataFrame(
        {"ticid": ds["ticid"].values, STATUS: ds[STATUS].values, REASON: ds[REASON].values}
    )
    dropped = pd.DataFrame(
        {
            "ticid": [f["ticid"] for f in failed],
            STATUS: codes,
            REASON: [f["reason"] for f in failed],
        }
    )
    return pd.concat([cut, dropped], ignore_index=True) if failed else cut


def _jsonable(value):
    return value.item() if isinstance(value, np.generic) else value


def _aperture(cube_list, metas, cube_index, corner_col, corner_row, size):
    ny, nx = size
    n_rows = np.array([metas[u].n_rows for u in cube_list])[cube_index]
    n_cols = np.array([metas[u].n_cols for u in cube_list])[cube_index]
    rows = corner_row[:, None] + np.arange(ny)[None, :]
    cols = corner_col[:, None] + np.arange(nx)[None, :]
    in_r = (rows >= 0) & (rows < n_rows[:, None])
    in_c = (cols >= 0) & (cols < n_cols[:, None])
    return (in_r[:, :, None] & in_c[:, None, :]).astype(np.int32)


def _read_batch(
    infos: list[fits.HDUInfo],
    which: np.ndarray,
    corner_col: np.ndarray,
    corner_row: np.ndarray,
    size: tuple[int, int],
) -> np.ndarray:
    """The cutouts of a batch of targets, in the batch's order, read from the cubes they lie on.

    ``which`` gives each target's position in ``infos``; every cube the batch touches is read
    once (:func:`read_cutouts`, the cubes of an object store concurrently) and its rows are
    placed where its targets stand.
    """
    which = np.asarray(which)
    if len(infos) == 1:
        return read_cutouts(infos[0], corner_col, corner_row, size)
    out = np.empty((2, len(which), infos[0].shape[2], *size), dtype=np.float32)
    members = [np.flatnonzero(which == k) for k in range(len(infos))]

    def cut(k: int) -> None:
        rows = members[k]
        out[:, rows] = read_cutouts(infos[k], corner_col[rows], corner_row[rows], size)

    # each read waits on the store, not the CPU: keep every cube's request in flight at once
    local = all(storage.is_local(info.url) for info in infos)
    with ThreadPoolExecutor(max_workers=1 if local else min(len(infos), 16)) as pool:
        list(pool.map(cut, range(len(infos))))
    return out


def _build_graph(
    cube_list, cube_index, corner_col, corner_row, size, n_frames, batch_size, storage_options
):  # fmt: skip
    """Every target's cutouts as one lazy array in one graph layer, targets in input order.

    Each task cuts a run of consecutive targets: it reads each cube the run touches once, so
    the output needs no re-ordering (no step that gathers every batch) whatever the number of
    cubes or how their targets interleave.
    """
    ny, nx = size
    n_targets = len(corner_col)
    if batch_size is None:
        # per target: the float32 flux + uncertainty cutout, and the same again for the regions
        # read_regions returns for the whole batch before they are placed
        per_target = 2 * ny * nx * max(n_frames, 1) * BYTES_PER_PIXEL_FRAME
        batch_size = items_per_task(per_target, maximum=n_targets)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    # HDU 1 of each cube: cached by cube_meta, so no file is read again here
    infos = [fits.hdu_info(u, 1, storage_options=storage_options).light() for u in cube_list]
    corner_col = np.asarray(corner_col, dtype=np.int64)
    corner_row = np.asarray(corner_row, dtype=np.int64)
    name = "cutouts-" + tokenize(cube_list, cube_index, corner_col, corner_row, size, batch_size)
    starts = list(range(0, n_targets, batch_size))
    layer: dict = {}
    for j, a in enumerate(starts):
        b = min(a + batch_size, n_targets)
        touched, which = np.unique(cube_index[a:b], return_inverse=True)
        layer[(name, 0, j, 0, 0, 0)] = (
            _read_batch, [infos[k] for k in touched], which, corner_col[a:b], corner_row[a:b],
            size,
        )  # fmt: skip
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())
    chunks = ((2,), tuple(min(batch_size, n_targets - a) for a in starts), (n_frames,), (ny,),
              (nx,))  # fmt: skip
    meta = np.empty((0, 0, 0, 0, 0), dtype=np.float32)
    return da.Array(graph, name, chunks, dtype=np.float32, meta=meta)


def cutout_wcs(ds: xr.Dataset, target: int) -> WCS:
    """The full (SIP) WCS of one cutout: the cube's WCS shifted to the cutout's corner.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`make_cutouts`.
    target : int
        Position along ``target``.

    Returns
    -------
    astropy.wcs.WCS
    """
    return WCS(cutout_header(ds, target), relax=True)


def cutout_header(ds: xr.Dataset, target: int) -> afits.Header:
    """WCS header of one cutout (SIP WCS with CRPIX shifted, plus the physical RAWX/RAWY WCS
    giving 1-based CCD pixels), as astrocut builds it before its linear fit."""
    k = int(ds["cube_index"].values[target])
    header = afits.Header.fromstring(str(ds["cube_wcs"].values[k]), sep="\n")
    c0 = int(ds["corner_column"].values[target])
    r0 = int(ds["corner_row"].values[target])
    ny, nx = ds.sizes["row"], ds.sizes["column"]
    out = afits.Header()
    out["WCSAXES"] = 2
    wcs_keys = ("RADESYS", "EQUINOX", "CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2", "CRVAL1", "CRVAL2",
                "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2", "PC1_1", "PC1_2", "PC2_1",
                "PC2_2", "CDELT1", "CDELT2", "A_ORDER", "B_ORDER", "AP_ORDER", "BP_ORDER",
                "A_DMAX", "B_DMAX")  # fmt: skip
    for key in wcs_keys:
        if key in header:
            out[key] = header[key]
    for key in header:
        if key.split("_")[0] in ("A", "B", "AP", "BP") and key[-1].isdigit() and "_" in key:
            out[key] = header[key]
    out["NAXIS1"], out["NAXIS2"] = nx, ny
    out["CRPIX1"] = header["CRPIX1"] - c0
    out["CRPIX2"] = header["CRPIX2"] - r0
    out["WCSNAMEP"] = ("PHYSICAL", "name of world coordinate system alternate P")
    out["WCSAXESP"] = (2, "number of WCS physical axes")
    out["CTYPE1P"] = ("RAWX", "physical WCS axis 1 type CCD col")
    out["CUNIT1P"] = ("PIXEL", "physical WCS axis 1 unit")
    out["CRPIX1P"] = (1, "reference CCD column")
    out["CRVAL1P"] = (c0 + 1, "value at reference CCD column")
    out["CDELT1P"] = (1.0, "physical WCS axis 1 step")
    out["CTYPE2P"] = ("RAWY", "physical WCS axis 2 type CCD row")
    out["CUNIT2P"] = ("PIXEL", "physical WCS axis 2 units")
    out["CRPIX2P"] = (1, "reference CCD row")
    out["CRVAL2P"] = (r0 + 1, "value at reference CCD row")
    out["CDELT2P"] = (1.0, "physical WCS axis 2 step")
    return out
