"""Fit the BackDrop model to a lazy FFI stack: one dask graph, the shared solver built once."""

from __future__ import annotations

import contextlib
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from cloudlab.backdrop import basis, masks
from cloudlab.backdrop.solver import Solver, build_solver
from cloudlab.cluster import gpu_tasks

BATCH_BYTES = 128 * 2**20
SUBSAMPLE = 16


def _frame_levels(block: np.ndarray) -> np.ndarray:
    """Subtract from every frame the median of its ``[::16, ::16]`` subsample."""
    level = np.nanmedian(block[:, ::SUBSAMPLE, ::SUBSAMPLE].reshape(len(block), -1), axis=1)
    return (block - level[:, None, None].astype(block.dtype)).astype(np.float32)


def average_image(flux: da.Array, good: np.ndarray) -> da.Array:
    """tess-backdrop's average image, lazily.

    The good frames, each minus the median of a 16x16 subsample, are split into at most 20
    batches; the batch means are stacked and their per-pixel median taken (in
    :func:`prepare_solver`, which also subtracts the result's own median).

    Parameters
    ----------
    flux : dask.array.Array
        ``(time, rows, columns)`` frames.
    good : numpy.ndarray
        Boolean per frame: frames that may enter the average.

    Returns
    -------
    dask.array.Array
        ``(n_batches, rows, columns)`` batch means (float32).
    """
    idx = np.flatnonzero(good)
    levelled = flux.map_blocks(_frame_levels, dtype=np.float32)
    means = [levelled[idx[b]].mean(axis=0, dtype=np.float32) for b in masks.frame_batches(len(idx))]
    return da.stack(means)


def prepare_solver(
    batch_means: np.ndarray,
    rows: np.ndarray,
    columns: np.ndarray,
    *,
    ccd: int,
    npoly: int,
    nrad: int,
    nknots: int,
    degree: int,
) -> Solver:
    """Average image, masks, normal matrix and its factor; then the average's own smooth part.

    The average image is fitted with the same model and its polynomial, spline and strap parts are
    removed, so that it keeps only fine (stellar) structure and the weights fitted to
    ``frame - average`` describe the whole background, constant included.
    """
    avg = np.nanmedian(batch_means, axis=0)
    avg = (avg - np.nanmedian(avg)).astype(np.float32)
    star_mask, sat_mask = masks.background_mask(avg)
    solver = build_solver(
        star_mask, rows, columns, ccd=ccd, npoly=npoly, nrad=nrad, nknots=nknots, degree=degree
    )
    clean = np.where(np.isfinite(avg), avg, 0).astype(np.float32)
    poly_w, spline_w, strap_w = solver.fit_frames(clean[None])
    smooth = model_grid(solver, poly_w, spline_w, strap_w)[0]
    solver.average = (clean - smooth).astype(np.float32)
    solver.saturation = sat_mask
    solver._device.clear()
    return solver


def model_grid(
    solver: Solver, poly_w: np.ndarray, spline_w: np.ndarray, strap_w: np.ndarray
) -> np.ndarray:
    """Model images ``(time, rows, columns)`` of fitted weights on the solver's whole region."""
    out = basis.poly_grid(
        poly_w, solver.rows, solver.columns, solver.npoly, solver.nrad, solver.ccd
    )
    br = solver.br.astype(float)
    bc = solver.bc.astype(float)
    out += np.einsum("ri,tji,cj->trc", br, spline_w, bc, optimize=True)
    out += strap_w[:, None, :]
    return out


def _fit_block(blocks: list[np.ndarray], solver: Solver, gpu: bool) -> tuple:
    """Fit the frames of a list of one-frame blocks (no concatenation copy)."""
    frames = [b[0] for b in blocks]
    if gpu:
        import cupy

        frames = [cupy.asarray(f) for f in frames]
    return solver.fit_frames(frames)


def default_frames_per_batch(n_rows: int, n_cols: int, n_frames: int) -> int:
    """Frames per time chunk: about 128 MiB of float32 pixels, at least one frame."""
    return int(max(1, min(n_frames, BATCH_BYTES // (4 * n_rows * n_cols))))


def fit(
    ffis: xr.Dataset,
    *,
    npoly: int = 5,
    nrad: int = 5,
    nknots: int = 40,
    degree: int = 2,
    frames_per_batch: int | None = None,
    gpu: bool = False,
) -> xr.Dataset:
    """Fit tess-backdrop's background model to every frame of an FFI stack (lazily).

    Parameters
    ----------
    ffis : xarray.Dataset
        From :func:`cloudlab.io.tess.open_ffis`: ``flux`` with dims ``(time, row, column)``,
        coordinates ``quality``, ``row``, ``column`` (0-based science pixels), attrs ``ccd``.
    npoly : int
        The 2-D polynomial has ``npoly**2`` terms.
    nrad : int
        The radial polynomial about the boresight has ``nrad - 1`` terms.
    nknots : int
        B-spline basis functions per axis.
    degree : int
        B-spline degree.
    frames_per_batch : int, optional
        Frames per time chunk (right-hand sides solved together); default about 128 MiB.
    gpu : bool
        Run the per-chunk kernels on CuPy (tasks ask for the ``GPU`` resource).

    Returns
    -------
    xarray.Dataset
        Dask-backed: ``poly_w (time, poly_term)``, ``spline_w (time, column_knot, row_knot)``
        (tess-backdrop's axis order), ``strap_w (time, column)``, the ``average_image`` and
        ``star_mask``/``sat_mask`` (row, column), knot vectors, and the time coordinates of
        ``ffis``. Bad frames (quality bits) are left out of the average image and masks but
        fitted like the others.

    Raises
    ------
    ValueError
        Missing variables, every frame flagged, a region too small for ``nknots``.
    RuntimeError
        ``gpu=True`` without a usable GPU.
    """
    for name in ("flux",):
        if name not in ffis:
            raise ValueError(f"fit: the dataset has no {name!r} variable")
    flux = ffis["flux"]
    if flux.dims != ("time", "row", "column"):
        raise ValueError(f"fit: flux must have dims (time, row, column), got {flux.dims}")
    ccd = int(ffis.attrs.get("ccd", 0))
    basis.boresight(ccd)  # validates the CCD number
    if gpu:
        from cloudlab.backend import _require_cupy

        _require_cupy()
    n_t, n_r, n_c = flux.shape
    quality = ffis["quality"].values if "quality" in ffis.coords else np.zeros(n_t, int)
    good = masks.good_frames(quality)
    if not good.any():
        raise ValueError(
            f"fit: all {n_t} frames carry bad quality bits ({masks.BAD_QUALITY_BITS}); "
            "no frame can build the average image"
        )
    rows = np.asarray(ffis["row"].values)
    columns = np.asarray(ffis["column"].values)
    row_knots = basis.knots(rows, nknots, degree)
    column_knots = basis.knots(columns, nknots, degree)
    fpb = frames_per_batch or default_frames_per_batch(n_r, n_c, n_t)
    if fpb < 1:
        raise ValueError(f"frames_per_batch must be >= 1, got {frames_per_batch}")

    data = flux.data if isinstance(flux.data, da.Array) else da.from_array(flux.values)
    data = data.astype(np.float32)
    means = average_image(data, good)
    solver = dask.delayed(prepare_solver, pure=True)(
        means, rows, columns, ccd=ccd, npoly=npoly, nrad=nrad, nknots=nknots, degree=degree
    )
    n_poly = npoly * npoly + nrad - 1
    blocks = list(data.rechunk((1, n_r, n_c)).to_delayed().ravel())
    poly, spline, strap = [], [], []
    with gpu_tasks() if gpu else contextlib.nullcontext():
        for start in range(0, n_t, fpb):
            group = blocks[start : start + fpb]
            n = len(group)
            out = dask.delayed(_fit_block, nout=3, pure=True)(group, solver, gpu)
            poly.append(da.from_delayed(out[0], (n, n_poly), np.float64))
            spline.append(da.from_delayed(out[1], (n, nknots, nknots), np.float64))
            strap.append(da.from_delayed(out[2], (n, n_c), np.float64))
    average = da.from_delayed(_attr(solver, "average"), (n_r, n_c), np.float32)
    star_mask = da.from_delayed(_attr(solver, "mask"), (n_r, n_c), bool)
    sat_mask = da.from_delayed(_attr(solver, "saturation"), (n_r, n_c), bool)

    time_coords = {k: v for k, v in ffis.coords.items() if v.dims == ("time",)}
    ds = xr.Dataset(
        {
            "poly_w": (("time", "poly_term"), da.concatenate(poly)),
            "spline_w": (("time", "column_knot", "row_knot"), da.concatenate(spline)),
            "strap_w": (("time", "column"), da.concatenate(strap)),
            "average_image": (("row", "column"), average, {"units": "electrons/s"}),
            "star_mask": (("row", "column"), star_mask),
            "sat_mask": (("row", "column"), sat_mask),
            "row_knots": ("row_knot_edge", row_knots),
            "column_knots": ("column_knot_edge", column_knots),
        },
        coords={**time_coords, "row": rows, "column": columns},
        attrs={
            "sector": int(ffis.attrs.get("sector", 0)),
            "camera": int(ffis.attrs.get("camera", 0)),
            "ccd": ccd,
            "npoly": npoly,
            "nrad": nrad,
            "nknots": nknots,
            "degree": degree,
            "bore_row": basis.boresight(ccd)[0],
            "bore_column": basis.boresight(ccd)[1],
            "model": "tess-backdrop: poly+radial on 8x8 block means; B-spline + column straps",
        },
    )
    return ds


def _attr(obj: Any, name: str) -> Any:
    return dask.delayed(getattr, pure=True)(obj, name)
