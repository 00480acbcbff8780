"""Write and read BackDrop weights: FITS in tess-backdrop's HDU layout, or zarr.

Every writer follows :mod:`cloudlab.storage`'s overwrite policy (``overwrite=False`` refuses an
existing destination before anything is computed; ``overwrite=True`` replaces it only once the new
product is complete) and computes lazy weights through :func:`cloudlab.cluster.compute`.

FITS layout (tess-backdrop 0.1.6, extended compatibly):

====  ==========  ================================================================
HDU   name        content
====  ==========  ================================================================
0     PRIMARY     ``ORIGIN``, ``AUTHOR``, ``VERSION``, ``SECTOR``, ``CAMERA``, ``CCD``,
                  ``NKNOTS``, ``NPOLY``, ``NRAD``, ``DEGREE``; cloudlab adds ``ROW0``,
                  ``COL0``, ``NROWS``, ``NCOLS`` (science region), ``BOREROW``/``BORECOL``
1     (table)     ``T_START`` (primary-header TSTART, TJD), ``QUALITY``; cloudlab adds
                  ``TIME`` (BTJD mid-exposure), ``TSTART``/``TSTOP`` (BTJD)
2     (table)     ``KNOTS`` (column knots; tess-backdrop uses one vector for both axes)
3     SPLINE_W    ``(time, column_knot, row_knot)`` float64
4     STRAP_W     ``(time, column)`` float64
5     POLY_W      ``(time, npoly**2 + nrad - 1)`` float64
6     ROWKNOTS    (table, cloudlab) ``KNOTS`` along rows
====  ==========  ================================================================

The masks and the average image go to a separate file (``STARMASK``, ``SATMASK``, ``AVGIMG``), as
tess-backdrop does.

``save``/``load``/``save_fits``/``save_zarr``/``save_masks_fits`` are deprecated aliases of
:func:`write_weights`, :func:`read_weights`, :func:`write_weights_fits`,
:func:`write_weights_zarr` and :func:`write_masks_fits` (used by a notebook, the docs and the
``backdrop`` command).
"""

from __future__ import annotations

import io as _io

import numpy as np
import xarray as xr
from astropy.io import fits

import cloudlab
from cloudlab import storage
from cloudlab.errors import FITSFormatError, InputError
from cloudlab.tess_detector import SCIENCE_COLUMN_START

__all__ = [
    "default_name",
    "read_masks_fits",
    "read_weights",
    "read_weights_fits",
    "read_weights_zarr",
    "write_masks_fits",
    "write_weights",
    "write_weights_fits",
    "write_weights_zarr",
]

WEIGHT_VARS = ("poly_w", "spline_w", "strap_w")
HEADER_KEYS = ("sector", "camera", "ccd", "nknots", "npoly", "nrad", "degree")


def default_name(weights: xr.Dataset, kind: str = "") -> str:
    """tess-backdrop's file name ``tessbackdrop[_kind]_sector{S}_camera{C}_ccd{D}.fits``."""
    a = weights.attrs
    part = f"_{kind}" if kind else ""
    return f"tessbackdrop{part}_sector{a['sector']}_camera{a['camera']}_ccd{a['ccd']}.fits"


def _computed(ds: xr.Dataset, progress: bool) -> xr.Dataset:
    """``ds`` in memory, computed through :func:`cloudlab.cluster.compute` when lazy."""
    from cloudlab.cluster import compute

    return compute(ds, progress=progress)[0]


def _fits_bytes(hdul: fits.HDUList) -> bytes:
    buf = _io.BytesIO()
    hdul.writeto(buf)
    return buf.getvalue()


def _time_column(weights: xr.Dataset, name: str) -> np.ndarray:
    if name in weights.coords:
        return np.asarray(weights[name].values, dtype=float)
    return np.full(weights.sizes["time"], np.nan)


def write_weights_fits(
    weights: xr.Dataset,
    url: str,
    *,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> str:
    """Write the weights as a tess-backdrop-layout FITS file (in one step).

    Parameters
    ----------
    weights : xarray.Dataset
        From :func:`cloudlab.backdrop.fit` (computed here if lazy).
    url : str
        Destination URL or path.
    overwrite : bool
        Replace an existing file (else :class:`~cloudlab.errors.OverwriteError`, raised before
        anything is computed).
    storage_options : dict, optional
        Filesystem keyword arguments.
    progress : bool
        Progress bar (stderr) while lazy weights are computed.

    Returns
    -------
    str
        ``url``.
    """
    storage.check_writable(url, overwrite=overwrite, storage_options=storage_options)
    w = _computed(weights[list(WEIGHT_VARS) + ["row_knots", "column_knots"]], progress)
    a = weights.attrs
    primary = fits.PrimaryHDU()
    h = primary.header
    h["ORIGIN"] = "cloudlab"
    h["AUTHOR"] = "cloudlab backdrop"
    h["VERSION"] = cloudlab.__version__
    for key in HEADER_KEYS:
        h[key.upper()] = int(a[key])
    h["ROW0"] = (int(weights["row"].values[0]), "first 0-based science row fitted")
    h["COL0"] = (int(w["column"].values[0]), "first 0-based science column fitted")
    h["NROWS"] = (weights.sizes["row"], "science rows fitted")
    h["NCOLS"] = (w.sizes["column"], "science columns fitted")
    h["IMGROW0"] = (int(a.get("image_row_offset", 0)), "0-based image row of science row 0")
    h["IMGCOL0"] = (
        int(a.get("image_column_offset", SCIENCE_COLUMN_START)),
        "0-based image column of science col 0",
    )
    h["BOREROW"] = (float(a["bore_row"]), "boresight science row")
    h["BORECOL"] = (float(a["bore_column"]), "boresight science column")
    quality = _time_column(weights, "quality")
    quality = np.where(np.isnan(quality), 0, quality)
    times = fits.BinTableHDU.from_columns(
        [
            fits.Column(
                "T_START", "D", unit="BJD - 2457000", array=_time_column(weights, "tstart_tjd")
            ),
            fits.Column("QUALITY", "D", array=quality),
            fits.Column("TIME", "D", unit="BTJD", array=np.asarray(w["time"].values, float)),
            fits.Column("TSTART", "D", unit="BTJD", array=_time_column(weights, "tstart")),
            fits.Column("TSTOP", "D", unit="BTJD", array=_time_column(weights, "tstop")),
        ]
    )
    knots = fits.BinTableHDU.from_columns(
        [fits.Column("KNOTS", "D", array=w["column_knots"].values)]
    )
    row_knots = fits.BinTableHDU.from_columns(
        [fits.Column("KNOTS", "D", array=w["row_knots"].values)], name="ROWKNOTS"
    )
    hdul = fits.HDUList(
        [
            primary,
            times,
            knots,
            fits.ImageHDU(w["spline_w"].values.astype(np.float64), name="SPLINE_W"),
            fits.ImageHDU(w["strap_w"].values.astype(np.float64), name="STRAP_W"),
            fits.ImageHDU(w["poly_w"].values.astype(np.float64), name="POLY_W"),
            row_knots,
        ]
    )
    storage.write_bytes(
        url, _fits_bytes(hdul), overwrite=overwrite, storage_options=storage_options
    )
    return url


def write_masks_fits(
    weights: xr.Dataset,
    url: str,
    *,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> str:
    """Write ``STARMASK``, ``SATMASK`` (uint8) and ``AVGIMG`` (float32) like tess-backdrop.

    Parameters and overwrite rule as :func:`write_weights_fits`; returns ``url``.
    """
    storage.check_writable(url, overwrite=overwrite, storage_options=storage_options)
    m = _computed(weights[["star_mask", "sat_mask", "average_image"]], progress)
    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(m["star_mask"].values.astype(np.uint8), name="STARMASK"),
            fits.ImageHDU(m["sat_mask"].values.astype(np.uint8), name="SATMASK"),
            fits.ImageHDU(m["average_image"].values.astype(np.float32), name="AVGIMG"),
        ]
    )
    storage.write_bytes(
        url, _fits_bytes(hdul), overwrite=overwrite, storage_options=storage_options
    )
    return url


def read_masks_fits(url: str, *, storage_options: dict | None = None) -> xr.Dataset:
    """Read a file written by :func:`write_masks_fits` (or tess-backdrop's masks file).

    Returns
    -------
    xarray.Dataset
        ``star_mask``, ``sat_mask`` (bool) and ``average_image`` (float32), dims ``(row, column)``.

    Raises
    ------
    FITSFormatError
        ``url`` is not a FITS file or lacks ``STARMASK``/``SATMASK``/``AVGIMG``.
    """
    data = storage.read_bytes(url, storage_options=storage_options)
    try:
        with fits.open(_io.BytesIO(data)) as hdul:
            star, sat, avg = (np.asarray(hdul[n].data) for n in ("STARMASK", "SATMASK", "AVGIMG"))
    except (OSError, KeyError) as exc:
        raise FITSFormatError(
            f"{url}: not a BackDrop masks file ({exc}); expected STARMASK, SATMASK, AVGIMG HDUs"
        ) from exc
    dims = ("row", "column")
    return xr.Dataset(
        {
            "star_mask": (dims, star.astype(bool)),
            "sat_mask": (dims, sat.astype(bool)),
            "average_image": (dims, avg.astype(np.float32), {"units": "electron / s"}),
        }
    )


def read_weights_fits(url: str, *, storage_options: dict | None = None) -> xr.Dataset:
    """Read weights written by :func:`write_weights_fits` (or by tess-backdrop itself).

    tess-backdrop files carry no region keys: they load with rows ``0..2047`` and columns
    ``0..n-1`` in *their* pixel grid (one column off from the true science columns), and with
    ``time`` set to their ``T_START`` (TJD).

    Raises
    ------
    FITSFormatError
        The file is not FITS, or lacks one of the BackDrop HDUs or header keys.
    """
    data = storage.read_bytes(url, storage_options=storage_options)
    try:
        hdul = fits.open(_io.BytesIO(data))
    except OSError as exc:
        raise FITSFormatError(f"{url}: not a FITS file: {exc}") from exc
    with hdul:
        h = hdul[0].header
        try:
            attrs = {k: int(h[k.upper()]) for k in HEADER_KEYS}
            table = hdul[1].data
            col_knots = np.asarray(hdul[2].data["KNOTS"], float)
            spline = np.asarray(hdul["SPLINE_W"].data, float)
            strap = np.asarray(hdul["STRAP_W"].data, float)
            poly = np.asarray(hdul["POLY_W"].data, float)
        except (KeyError, IndexError, TypeError) as exc:
            raise FITSFormatError(
                f"{url}: not a BackDrop weights file ({exc}); write one with write_weights_fits"
            ) from exc
        names = [n.upper() for n in table.columns.names]
        row_knots = (
            np.asarray(hdul["ROWKNOTS"].data["KNOTS"], float) if "ROWKNOTS" in hdul else col_knots
        )
        row0, col0 = int(h.get("ROW0", 0)), int(h.get("COL0", 0))
        n_rows = int(h.get("NROWS", round(row_knots[-1] - row_knots[0]) + 1))
        n_cols = int(h.get("NCOLS", strap.shape[1]))

        def col(name: str) -> np.ndarray:
            return np.asarray(table[name], float) if name in names else np.full(len(table), np.nan)

        time = col("TIME") if "TIME" in names else col("T_START")
        coords = {
            "time": time,
            "quality": ("time", np.nan_to_num(col("QUALITY")).astype(np.int32)),
            "tstart_tjd": ("time", col("T_START")),
            "row": np.arange(row0, row0 + n_rows),
            "column": np.arange(col0, col0 + n_cols),
        }
        if "TSTART" in names:
            coords["tstart"] = ("time", col("TSTART"))
            coords["tstop"] = ("time", col("TSTOP"))
        attrs["origin"] = str(h.get("ORIGIN", ""))
        attrs["image_row_offset"] = int(h.get("IMGROW0", 0))
        attrs["image_column_offset"] = int(h.get("IMGCOL0", SCIENCE_COLUMN_START))
    from cloudlab.backdrop.basis import boresight

    attrs["bore_row"], attrs["bore_column"] = boresight(attrs["ccd"])
    return xr.Dataset(
        {
            "poly_w": (("time", "poly_term"), poly),
            "spline_w": (("time", "column_knot", "row_knot"), spline),
            "strap_w": (("time", "column"), strap),
            "row_knots": ("row_knot_edge", row_knots),
            "column_knots": ("column_knot_edge", col_knots),
        },
        coords=coords,
        attrs=attrs,
    )


def write_weights_zarr(
    weights: xr.Dataset,
    url: str,
    *,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> str:
    """Write the weights (and masks/average image, when present) as a zarr store.

    Written by :func:`cloudlab.storage.write_zarr`: refused before any computation when ``url``
    exists and ``overwrite`` is False; never half-written; a previous store survives until the
    new one is complete. Only scalar attributes are kept.

    Returns
    -------
    str
        ``url``.
    """
    ds = weights.copy()
    ds.attrs = {k: v for k, v in ds.attrs.items() if isinstance(v, (int, float, str))}
    return storage.write_zarr(
        ds, url, overwrite=overwrite, storage_options=storage_options, progress=progress
    )


def read_weights_zarr(url: str, *, storage_options: dict | None = None) -> xr.Dataset:
    """Open weights written by :func:`write_weights_zarr` (lazily).

    Raises
    ------
    FileNotFoundError
        No store at ``url``.
    InputError
        The store lacks the weight variables.
    """
    ds = storage.read_zarr(url, storage_options=storage_options)
    missing = [v for v in WEIGHT_VARS if v not in ds]
    if missing:
        raise InputError(f"{url}: not a BackDrop weights store (missing {missing})")
    return ds


def _is_zarr(url: str) -> bool:
    return url.rstrip("/").endswith(".zarr")


def write_weights(
    weights: xr.Dataset,
    url: str,
    *,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> str:
    """Write weights as FITS (``.fits``) or zarr (``.zarr``), chosen by the URL's extension.

    Raises
    ------
    InputError
        ``url`` ends in neither.
    OverwriteError
        ``url`` exists and ``overwrite`` is False.
    """
    kwargs = {"overwrite": overwrite, "storage_options": storage_options, "progress": progress}
    if _is_zarr(url):
        return write_weights_zarr(weights, url, **kwargs)
    if url.endswith((".fits", ".fits.gz", ".fit")):
        return write_weights_fits(weights, url, **kwargs)
    raise InputError(f"cannot tell the format of {url!r}: use a .fits or .zarr name")


def read_weights(url: str, *, storage_options: dict | None = None) -> xr.Dataset:
    """Read weights written as FITS or zarr (chosen by the URL's extension)."""
    if _is_zarr(url):
        return read_weights_zarr(url, storage_options=storage_options)
    return read_weights_fits(url, storage_options=storage_options)


# deprecated names (a notebook, the docs and the ``backdrop`` command use them)
save = write_weights
load = read_weights
save_fits = write_weights_fits
save_zarr = write_weights_zarr
save_masks_fits = write_masks_fits
