"""Evaluate fitted BackDrop weights on any pixel grid, and subtract them from cutouts."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from astropy import units as u
from astropy.time import Time

from cloudlab.backdrop import basis
from cloudlab.chunking import items_per_task
from cloudlab.errors import InputError
from cloudlab.tess_detector import SCIENCE_COLUMN_START, SCIENCE_ROW_START

__all__ = [
    "evaluate",
    "frame_index",
    "subtract",
]


def frame_index(weights: xr.Dataset, times: Any = None, *, strict: bool = True) -> np.ndarray:
    """Frame positions for ``times``: ``None`` (all), integer indices, or BTJD times.

    A time matches the frame whose exposure (``tstart``..``tstop``, else within half the median
    cadence of ``time``) contains it.

    Parameters
    ----------
    weights : xarray.Dataset
        Fitted weights with a ``time`` coordinate.
    times : array-like, astropy Time or Quantity, optional
        Frame indices (integers) or BTJD times: floats in days, a ``Quantity`` in any time
        unit (converted to days) or an astropy ``Time`` (converted through its TDB Julian date;
        barycentric times such as lightkurve's ``lc.time``). Datetimes are refused.
    strict : bool
        Raise for unmatched times (default), else return -1 for them.

    Raises
    ------
    InputError
        An index out of range, datetimes or a non-time unit, or (with ``strict``) a time
        outside every frame.
    """
    n_t = weights.sizes["time"]
    if times is None:
        return np.arange(n_t)
    t = _btjd(times)
    if np.issubdtype(t.dtype, np.integer):
        if t.size and (t.min() < -n_t or t.max() >= n_t):
            raise InputError(f"frame index out of range 0..{n_t - 1}: {t[(t < -n_t) | (t >= n_t)]}")
        return t % n_t
    frame_t = weights["time"].values
    if "tstart" in weights.coords and "tstop" in weights.coords:
        lo, hi = weights["tstart"].values, weights["tstop"].values
    else:
        half = np.median(np.diff(frame_t)) / 2 if n_t > 1 else 0.0104
        lo, hi = frame_t - half, frame_t + half
    idx = (
        np.clip(np.searchsorted(frame_t, t), 1, max(n_t - 1, 1))
        if n_t > 1
        else np.zeros(t.size, int)
    )
    if n_t > 1:
        left = idx - 1
        idx = np.where(np.abs(t - frame_t[left]) <= np.abs(t - frame_t[idx]), left, idx)
    ok = (t >= lo[idx] - 1e-6) & (t <= hi[idx] + 1e-6) & np.isfinite(t)
    if strict and not ok.all():
        raise InputError(f"times outside every fitted frame: {t[~ok][:10]}")
    return np.where(ok, idx, -1)


#: BTJD = BJD_TDB - this (TESS's barycentric Julian date offset).
BTJD_OFFSET = 2457000.0


def _btjd(times: Any) -> np.ndarray:
    """``times`` as frame indices (integers) or BTJD days (floats), converting units.

    An astropy ``Quantity`` is converted to days; an astropy ``Time`` to BTJD through its TDB
    Julian date (right for barycentric times such as lightkurve's ``lc.time``). Datetimes and
    time spans carry no barycentric correction or epoch and are refused.
    """
    if isinstance(times, Time):
        tdb = times.tdb
        return np.atleast_1d((tdb.jd1 - BTJD_OFFSET) + tdb.jd2)
    if isinstance(times, u.Quantity):
        if not times.unit.is_equivalent(u.day):
            raise InputError(
                f"times are a Quantity in {times.unit}, not a time unit; give BTJD days "
                "(floats, a Quantity in a time unit, or an astropy Time) or frame indices"
            )
        return np.atleast_1d(times.to_value(u.day))
    t = np.atleast_1d(np.asarray(times))
    if t.dtype.kind in "mMOSU":
        raise InputError(
            f"times of dtype {t.dtype} cannot be matched to frames: give BTJD days (floats, "
            "= BJD_TDB - 2457000, e.g. lightkurve's lc.time.value), an astropy Time or a "
            "Quantity, or integer frame indices; datetimes lack the barycentric correction"
        )
    return t


def _grid_block(
    poly: np.ndarray,
    spline: np.ndarray,
    strap: np.ndarray,
    *,
    rows: np.ndarray,
    columns: np.ndarray,
    br: np.ndarray,
    bc: np.ndarray,
    npoly: int,
    nrad: int,
    ccd: int,
) -> np.ndarray:
    out = basis.poly_grid(poly, rows, columns, npoly, nrad, ccd)
    out += np.einsum("ri,tji,cj->trc", br, spline, bc, optimize=True)
    out += strap[:, None, :]
    return out


def evaluate(weights: xr.Dataset, rows: Any, columns: Any, *, times: Any = None) -> xr.DataArray:
    """The fitted background on the grid ``rows x columns`` for every frame (or ``times``).

    Parameters
    ----------
    weights : xarray.Dataset
        From :func:`cloudlab.backdrop.fit` or :func:`cloudlab.backdrop.read_weights`.
    rows, columns : array-like
        1-D 0-based science coordinates (use :func:`ccd_to_science` for 1-based CCD pixels).
    times : array-like, astropy Time or Quantity, optional
        Integer frame indices or BTJD times (see :func:`frame_index`); default every frame.

    Returns
    -------
    xarray.DataArray
        Lazy ``(time, row, column)`` background in e/s.

    Raises
    ------
    InputError
        Coordinates outside the fitted region, or times outside every frame.
    """
    rows = np.atleast_1d(np.asarray(rows))
    columns = np.atleast_1d(np.asarray(columns))
    if rows.ndim != 1 or columns.ndim != 1:
        raise InputError("rows and columns must be 1-D arrays")
    fitted_cols = weights["column"].values
    pos = np.searchsorted(fitted_cols, columns)
    pos = np.clip(pos, 0, len(fitted_cols) - 1)
    off = fitted_cols[pos] != columns
    if off.any():
        raise InputError(
            f"columns outside the fitted region {fitted_cols[0]}..{fitted_cols[-1]}: "
            f"{columns[off][:10]}"
        )
    fitted_rows = weights["row"].values
    if rows.min() < fitted_rows[0] or rows.max() > fitted_rows[-1]:
        raise InputError(
            f"rows outside the fitted region {fitted_rows[0]}..{fitted_rows[-1]}: "
            f"{rows[(rows < fitted_rows[0]) | (rows > fitted_rows[-1])][:10]}"
        )
    idx = frame_index(weights, times)
    sel = weights.isel(time=idx)
    a = weights.attrs
    degree = int(a["degree"])
    br = basis.spline_basis(rows, weights["row_knots"].values, degree)
    bc = basis.spline_basis(columns, weights["column_knots"].values, degree)

    # frames per task: a frame's model is a float64 image plus the spline term's float64
    # temporary, 16 bytes per pixel (the radial term's three scratch images do not grow)
    per_task = items_per_task(16 * len(rows) * len(columns), maximum=max(len(idx), 1))

    def lazy(x: xr.DataArray) -> da.Array:
        return x.data if isinstance(x.data, da.Array) else da.from_array(x.values)

    poly = lazy(sel["poly_w"]).rechunk({0: per_task})
    spline = lazy(sel["spline_w"]).rechunk({0: poly.chunks[0]})
    strap = lazy(sel["strap_w"]).rechunk({0: poly.chunks[0]})[:, pos].rechunk({1: -1})
    poly = poly.rechunk({1: -1})
    spline = spline.rechunk({1: -1, 2: -1})
    model = da.blockwise(
        _grid_block,
        "trc",
        poly,
        "tp",
        spline,
        "tji",
        strap,
        "tc",
        new_axes={"r": len(rows)},
        concatenate=True,
        dtype=np.float64,
        rows=rows,
        columns=columns,
        br=br,
        bc=bc,
        npoly=int(a["npoly"]),
        nrad=int(a["nrad"]),
        ccd=int(a["ccd"]),
    )
    coords = {"time": sel["time"].values, "row": rows, "column": columns}
    return xr.DataArray(
        model, dims=("time", "row", "column"), coords=coords, name="background",
        attrs={"units": "electron / s"},
    )  # fmt: skip


def _corner(ds: xr.Dataset, name: str) -> np.ndarray:
    if name in ds.variables and ds[name].dims == ("target",):
        return np.asarray(ds[name].values).astype(np.int64)
    raise InputError(
        f"subtract: the cutouts have no per-target {name!r} (0-based CCD pixel of cutout "
        "pixel [0, 0], dims (target,)); pass corner_row=/corner_column= to name it"
    )


def _cutout_background(
    rows0: np.ndarray,
    cols0: np.ndarray,
    w: dict,
    *,
    n_rows: int,
    n_cols: int,
    degree: int,
    npoly: int,
    nrad: int,
    ccd: int,
) -> np.ndarray:
    """Background of a block of targets ``(target, time, row, column)``; NaN off the fit."""
    out = np.full((len(rows0), len(w["poly"]), n_rows, n_cols), np.nan)
    for k, (r0, c0) in enumerate(zip(rows0.ravel(), cols0.ravel(), strict=True)):
        rows = r0 + np.arange(n_rows)
        cols = c0 + np.arange(n_cols)
        rin = (rows >= w["row_range"][0]) & (rows <= w["row_range"][1])
        cin = (cols >= w["column_range"][0]) & (cols <= w["column_range"][1])
        if not rin.any() or not cin.any():
            continue
        br = basis.spline_basis(rows[rin], w["row_knots"], degree)
        bc = basis.spline_basis(cols[cin], w["column_knots"], degree)
        strap = w["strap"][:, cols[cin] - w["column_range"][0]]
        model = _grid_block(
            w["poly"], w["spline"], strap, rows=rows[rin], columns=cols[cin], br=br, bc=bc,
            npoly=npoly, nrad=nrad, ccd=ccd,
        )  # fmt: skip
        out[k][np.ix_(np.ones(len(w["poly"]), bool), rin, cin)] = model
    out[:, w["unmatched"]] = np.nan
    return out


def _weights_for(weights: xr.Dataset, idx: np.ndarray) -> dict:
    sel = weights.isel(time=np.maximum(idx, 0))
    return {
        "poly": np.asarray(sel["poly_w"].values, float),
        "spline": np.asarray(sel["spline_w"].values, float),
        "strap": np.asarray(sel["strap_w"].values, float),
        "row_knots": np.asarray(weights["row_knots"].values, float),
        "column_knots": np.asarray(weights["column_knots"].values, float),
        "row_range": (int(weights["row"].values[0]), int(weights["row"].values[-1])),
        "column_range": (int(weights["column"].values[0]), int(weights["column"].values[-1])),
        "unmatched": idx < 0,
    }


def subtract(
    cutouts: xr.Dataset,
    weights: xr.Dataset,
    *,
    corner_row: str = "corner_row",
    corner_column: str = "corner_column",
    strict: bool = True,
) -> xr.Dataset:
    """Subtract the fitted background from a stack of cutouts (lazily).

    Parameters
    ----------
    cutouts : xarray.Dataset
        As made by :func:`cloudlab.cutouts.make_cutouts`: ``flux`` with dims
        ``(target, time, row, column)``, a BTJD ``time`` coordinate, per-target ``corner_row`` and
        ``corner_column`` (0-based CCD pixel of cutout pixel ``[0, 0]``, virtual columns
        included, i.e. TPF ``2CRV5P - 1``/``1CRV5P - 1``) and optionally ``camera``/``ccd``.
        Science pixel = corner minus the weights' ``image_row_offset``/``image_column_offset``
        (0 and 44 for real FFIs, from the frames' ``SCIROWS``/``SCCSA`` keys).
    weights : xarray.Dataset
        Fitted weights of the same sector/camera/CCD.
    corner_row, corner_column : str
        Names of the corner variables.
    strict : bool
        Raise when a cutout time has no fitted frame (default), else give NaN background there.

    Returns
    -------
    xarray.Dataset
        ``cutouts`` with ``flux`` background-subtracted and a new ``background`` variable.
        Pixels outside the fitted science region (collateral pixels, off the CCD) get NaN.

    Raises
    ------
    InputError
        Missing corner variables, times outside every fitted frame, or a camera/CCD that
        differs from the weights'.
    """
    if "flux" not in cutouts or cutouts["flux"].dims != ("target", "time", "row", "column"):
        raise InputError("subtract: cutouts need flux with dims (target, time, row, column)")
    for key in ("camera", "ccd"):
        if key in cutouts.variables and key in weights.attrs:
            values = np.unique(np.asarray(cutouts[key].values))
            if len(values) and not np.all(values == int(weights.attrs[key])):
                raise InputError(
                    f"subtract: cutouts from {key} {values.tolist()}, weights fitted on {key} "
                    f"{weights.attrs[key]}"
                )
    # corners are 0-based image pixels; the science region starts at the weights' image offsets
    # (rows 0 and columns 44 on real FFIs)
    rows0 = _corner(cutouts, corner_row) - int(
        weights.attrs.get("image_row_offset", SCIENCE_ROW_START)
    )
    cols0 = _corner(cutouts, corner_column) - int(
        weights.attrs.get("image_column_offset", SCIENCE_COLUMN_START)
    )
    n_rows, n_cols = cutouts.sizes["row"], cutouts.sizes["column"]
    idx = frame_index(weights, cutouts["time"].values, strict=strict)
    flux = cutouts["flux"].data
    if not isinstance(flux, da.Array):
        # a target costs its flux, the float64 background, that background cast to the flux's
        # type and the result, at every time and pixel
        pixels = flux.shape[1] * n_rows * n_cols
        per_task = items_per_task(
            pixels * (3 * flux.dtype.itemsize + 8), maximum=max(flux.shape[0], 1)
        )
        flux = da.from_array(flux, chunks=(per_task, -1, -1, -1))
    tchunks = (flux.chunks[0],)
    w = dask.delayed(_weights_for, pure=True)(weights, idx)
    a = weights.attrs
    bkg = da.map_blocks(
        _cutout_background,
        da.from_array(rows0.astype(np.int64), chunks=tchunks),
        da.from_array(cols0.astype(np.int64), chunks=tchunks),
        w,
        n_rows=n_rows,
        n_cols=n_cols,
        degree=int(a["degree"]),
        npoly=int(a["npoly"]),
        nrad=int(a["nrad"]),
        ccd=int(a["ccd"]),
        new_axis=[1, 2, 3],
        chunks=(tchunks[0], (len(idx),), (n_rows,), (n_cols,)),
        dtype=np.float64,
        meta=np.empty((0, 0, 0, 0)),
    )
    bkg = bkg.rechunk(flux.chunks)
    dims = ("target", "time", "row", "column")
    out = cutouts.copy()
    out["background"] = (dims, bkg, {"units": "electron / s", "model": "cloudlab backdrop"})
    out["flux"] = (dims, flux - bkg.astype(flux.dtype), cutouts["flux"].attrs)
    return out
