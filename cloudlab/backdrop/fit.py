"""Fit the BackDrop model to a lazy FFI stack: one dask graph, the shared solver built once."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import operator
import warnings
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from cloudlab.backdrop import basis, masks
from cloudlab.backdrop.solver import Solver, build_solver
from cloudlab.backend import gpu_tasks
from cloudlab.chunking import items_per_task, task_outputs
from cloudlab.errors import REASON, STATUS, STATUS_OK, InputError
from cloudlab.io.tess_ffi import FrameSource, frame_source
from cloudlab.tess_detector import SCIENCE_COLUMN_START

__all__ = [
    "average_batches",
    "MAX_NAN_FRACTION",
    "STATUS_NAN_FRAME",
    "batch_mean",
    "check_parameters",
    "default_frames_per_batch",
    "fit",
    "frame_sources",
    "MEDIAN_ROW_SHARE",
    "median_rows_per_task",
    "model_grid",
    "prepare_solver",
]

SUBSAMPLE = 16
#: bytes of the batch means stacked at once for their per-pixel median
_MEDIAN_BAND_BYTES = 2**24
#: times a row of the batch means is counted per median task (:func:`median_rows_per_task`)
MEDIAN_ROW_SHARE = 3
MAX_NAN_FRACTION = 0.5
"""A frame with more than this fraction of its unmasked science pixels NaN is not fitted."""
STATUS_NAN_FRAME = "nan_frame"
"""``status`` of a frame left unfitted because it is (mostly) NaN."""
_STATUS_DTYPE = np.dtype("U16")
_REASON_DTYPE = np.dtype("U160")


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    allowed = f">= {low}" if high is None else f"{low}..{high}"
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        raise InputError(
            f"backdrop: {name}={value!r} is out of range; it must be an integer {allowed}"
        )


def check_parameters(
    *,
    npoly: int = 5,
    nrad: int = 5,
    nknots: int = 40,
    degree: int = 2,
    frames_per_batch: int | None = None,
    max_frames: int | None = None,
) -> None:
    """Refuse model sizes the fit cannot use, before any pixel is read.

    Parameters
    ----------
    npoly, nrad, nknots, degree : int
        Model sizes: ``npoly`` and ``nrad`` 1..20, ``degree`` 1..5, ``nknots`` from
        ``degree + 2`` to 1000.
    frames_per_batch, max_frames : int, optional
        ``None`` (the default) or an integer >= 1.

    Raises
    ------
    InputError
        Naming the parameter, its value and the allowed range.
    """
    _check_int("npoly", npoly, 1, 20)
    _check_int("nrad", nrad, 1, 20)
    _check_int("degree", degree, 1, 5)
    _check_int("nknots", nknots, degree + 2, 1000)
    if frames_per_batch is not None:
        _check_int("frames_per_batch", frames_per_batch, 1)
    if max_frames is not None:
        _check_int("max_frames", max_frames, 1)


def batch_mean(frames: list, source: FrameSource | None = None) -> np.ndarray:
    """Mean of frames, each minus the median of its ``[::16, ::16]`` subsample.

    ``frames`` holds one-frame arrays ``(1, rows, columns)``, or URLs read here through
    ``source``, one at a time. Non-finite pixels are left out of the mean (NaN where no frame
    has a finite value).
    """
    acc = count = None
    for item in frames:
        frame = _frame(item, source)
        if acc is None:
            acc = np.zeros(frame.shape, np.float64)
            count = np.zeros(frame.shape, np.int32)
        finite = np.isfinite(frame)
        if not finite.any():
            continue
        level = np.median(frame[::SUBSAMPLE, ::SUBSAMPLE][finite[::SUBSAMPLE, ::SUBSAMPLE]])
        diff = frame - level
        diff[~finite] = 0
        acc += diff
        count += finite
        del frame, finite, diff
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.divide(acc, count, out=acc).astype(np.float32)


def _batch_mean_bands(
    frames: list, source: FrameSource | None, rows_per_band: int
) -> tuple[np.ndarray, ...]:
    """:func:`batch_mean` cut into bands of ``rows_per_band`` rows (copies, so that each band
    is freed on its own once its median is taken)."""
    mean = batch_mean(frames, source)
    return tuple(mean[a : a + rows_per_band].copy() for a in range(0, len(mean), rows_per_band))


def frame_sources(ffis: xr.Dataset, source: FrameSource | None = None) -> list:
    """What each task reads: one frame URL per time step (with ``source``), or one-frame blocks.

    With a :class:`~cloudlab.io.tess_ffi.FrameSource` the tasks read their frames themselves, so
    no frame is held in memory between the average pass and the fit pass; otherwise the
    dataset's ``flux`` chunks are used.
    """
    if source is not None:
        return list(source.urls)
    flux = ffis["flux"].data
    if not isinstance(flux, da.Array):
        flux = da.from_array(np.asarray(flux))
    return list(flux.rechunk((1, *flux.shape[1:])).to_delayed().ravel())


def _frame(item: Any, source: FrameSource | None) -> np.ndarray:
    """One frame as float32: read from its URL through ``source``, or a one-frame block."""
    frame = source.read(item) if isinstance(item, str) else np.asarray(item)[0]
    return frame.astype(np.float32, copy=False)


def _frames(items: list, source: FrameSource | None) -> list[np.ndarray]:
    return [_frame(item, source) for item in items]


def _source_for(
    ffis: xr.Dataset, source: FrameSource | None, storage_options: dict | None
) -> FrameSource | None:
    """``source``, checked against ``ffis``, or the stack's own :func:`frame_source`."""
    if source is None:
        return frame_source(ffis, storage_options=storage_options)
    n_t, n_r, n_c = ffis["flux"].shape
    if len(source.urls) != n_t or tuple(source.box[2:]) != (n_r, n_c):
        raise InputError(
            f"fit: the frame source has {len(source.urls)} frames of {source.box[2:]} pixels but "
            f"the stack has {n_t} of {(n_r, n_c)}; build it with "
            "cloudlab.io.tess_ffi.frame_source(ffis) after any selection"
        )
    return source


def average_batches(
    ffis: xr.Dataset,
    good: np.ndarray,
    source: FrameSource | None = None,
    *,
    storage_options: dict | None = None,
) -> list:
    """tess-backdrop's average-image batches, lazily: one task per batch of good frames.

    Parameters
    ----------
    ffis : xarray.Dataset
        The frames (``flux``, dims ``time, row, column``).
    good : numpy.ndarray
        Boolean per frame: frames that may enter the average.
    source : FrameSource, optional
        Where tasks read the frames; default :func:`~cloudlab.io.tess_ffi.frame_source` of
        ``ffis`` (with ``storage_options``).
    storage_options : dict, optional
        Filesystem keyword arguments for the frames.

    Returns
    -------
    list of dask.delayed.Delayed
        Batch means (float32 images); :func:`prepare_solver` takes their per-pixel median.
    """
    source = _source_for(ffis, source, storage_options)
    return _mean_tasks(ffis, good, source)


def _mean_tasks(
    ffis: xr.Dataset, good: np.ndarray, source: FrameSource | None, rows_per_band: int = 0
) -> list:
    """One task per batch of good frames: its mean (:func:`batch_mean`), or with
    ``rows_per_band`` that mean in bands of rows (:func:`_batch_mean_bands`)."""
    idx = np.flatnonzero(good)
    args, frames = _task_frames(ffis, source)
    reader = _shared(source)
    reader_arg = None if reader is None else reader.key
    batches = masks.frame_batches(len(idx))
    name = "backdrop-mean-" + tokenize(args, reader_arg, batches, rows_per_band)
    extra = (rows_per_band,) if rows_per_band else ()
    task = _batch_mean_bands if rows_per_band else batch_mean
    layer = {
        (name, j): (task, [args[k] for k in idx[b]], reader_arg, *extra)
        for j, b in enumerate(batches)
    }
    dependencies = [*frames, *([] if reader is None else [reader])]
    graph = HighLevelGraph.from_collections(name, layer, dependencies=dependencies)
    return [Delayed((name, j), graph, layer=name) for j in range(len(batches))]


def _task_frames(ffis: xr.Dataset, source: FrameSource | None) -> tuple[list, list]:
    """The frames as task arguments (URLs, or the keys of one-frame blocks) and the collection
    those keys come from (none for URLs)."""
    items = frame_sources(ffis, source)
    if source is not None:
        return items, []
    return [item.key for item in items], items[:1]


def _shared(source: FrameSource | None) -> Any:
    """One graph key holding the source's reader (its box, HDU and options), not its URLs."""
    if source is None:
        return None
    return dask.delayed(dataclasses.replace(source, urls=()), pure=True)


def _median_image(batch_means: list[np.ndarray]) -> np.ndarray:
    """Per-pixel median of the batch means (NaN-aware where any is NaN), a band of rows at a
    time: the stack of every mean and the copy the median sorts are a band's, not the whole
    image's."""
    if len(batch_means) == 1:
        return batch_means[0]
    finite = all(bool(np.isfinite(m).all()) for m in batch_means)
    median = np.median if finite else np.nanmedian
    n_rows, n_cols = batch_means[0].shape
    band = max(1, _MEDIAN_BAND_BYTES // (len(batch_means) * n_cols * batch_means[0].itemsize))
    with warnings.catch_warnings():  # a pixel NaN in every mean stays NaN: that is expected
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        bands = [
            median(np.stack([m[a : a + band] for m in batch_means]), axis=0)
            for a in range(0, n_rows, band)
        ]
    return np.concatenate(bands)


def median_rows_per_task(n_batches: int, n_cols: int, n_rows: int) -> int:
    """Rows of the average image per median task, from :func:`cloudlab.chunking.items_per_task`.

    A median task fetches one band of every batch mean (float32, 4 bytes per pixel) while its
    worker keeps its share of every other band until that band's median is taken, so a band's
    row is counted :data:`MEDIAN_ROW_SHARE` times (the median itself sorts 16 MB at a time).
    The rows are then evened out over the bands that makes (no band a sliver of a few rows), so
    a band is at most as large as that count allows.

    Parameters
    ----------
    n_batches : int
        Batch means (:func:`cloudlab.backdrop.masks.frame_batches`).
    n_cols, n_rows : int
        Science pixels of one frame.

    Returns
    -------
    int
        Rows per task, 1 to ``n_rows``.
    """
    rows = items_per_task(MEDIAN_ROW_SHARE * 4 * n_batches * n_cols, maximum=n_rows)
    bands = -(-n_rows // rows)
    return -(-n_rows // bands)


def prepare_solver(
    batch_means: list[np.ndarray],
    rows: np.ndarray,
    columns: np.ndarray,
    *,
    ccd: int,
    npoly: int,
    nrad: int,
    nknots: int,
    degree: int,
    names: tuple[str, ...] = (),
) -> Solver:
    """Average image, masks, normal matrix and its factor; then the average's own smooth part.

    The average image is the per-pixel median of ``batch_means``. ``names`` (the frames' files
    or times) name the input when every frame is NaN. The average image is fitted with the same
    model and its polynomial, spline and strap parts are removed, so that it keeps only fine
    (stellar) structure and the weights fitted to ``frame - average`` describe the whole
    background, constant included.
    """
    return _solver_from_median(
        _median_image(batch_means), rows, columns, ccd=ccd, npoly=npoly, nrad=nrad,
        nknots=nknots, degree=degree, names=names,
    )  # fmt: skip


def _solver_from_bands(bands: list[np.ndarray], *args: Any, **kwargs: Any) -> Solver:
    """:func:`prepare_solver` from the median image in bands of rows (each the
    :func:`_median_image` of one band of every batch mean)."""
    return _solver_from_median(np.concatenate(bands), *args, **kwargs)


def _solver_from_median(
    avg: np.ndarray,
    rows: np.ndarray,
    columns: np.ndarray,
    *,
    ccd: int,
    npoly: int,
    nrad: int,
    nknots: int,
    degree: int,
    names: tuple[str, ...] = (),
) -> Solver:
    """:func:`prepare_solver` from the per-pixel median of the batch means."""
    finite = np.isfinite(avg)
    if not finite.any():  # NaN in the median only where every batch mean is NaN
        where = f" ({len(names)} frames, the first {names[0]})" if names else ""
        raise InputError(
            f"fit: every frame is NaN{where}: no pixel has a value to build the average image; "
            "check the files and the HDU they are read from"
        )
    median = np.median if finite.all() else np.nanmedian
    del finite
    avg = (avg - median(avg)).astype(np.float32)
    star_mask, sat_mask = masks.background_mask(avg)
    solver = build_solver(
        star_mask, rows, columns, ccd=ccd, npoly=npoly, nrad=nrad, nknots=nknots, degree=degree
    )
    clean = np.where(np.isfinite(avg), avg, 0).astype(np.float32)
    del avg
    weights = solver.fit_frames(clean[None])
    # the average less its smooth part, a band of rows at a time (float64 model temporaries)
    band = max(1, _MEDIAN_BAND_BYTES // (8 * len(columns)))
    for a in range(0, len(rows), band):
        part = clean[a : a + band]
        part[...] = part - _model_rows(solver, *weights, a, a + band)[0]
    solver.average = clean
    solver.saturation = sat_mask
    solver._device.clear()
    return solver


def model_grid(
    solver: Solver, poly_w: np.ndarray, spline_w: np.ndarray, strap_w: np.ndarray
) -> np.ndarray:
    """Model images ``(time, rows, columns)`` of fitted weights on the solver's whole region."""
    return _model_rows(solver, poly_w, spline_w, strap_w, 0, len(solver.rows))


def _model_rows(
    solver: Solver, poly_w: np.ndarray, spline_w: np.ndarray, strap_w: np.ndarray, a: int, b: int
) -> np.ndarray:
    """:func:`model_grid` on rows ``a:b`` of the solver's region (float64)."""
    out = basis.poly_grid(
        poly_w, solver.rows[a:b], solver.columns, solver.npoly, solver.nrad, solver.ccd
    )
    br = solver.br[a:b].astype(float)
    bc = solver.bc.astype(float)
    out += np.einsum("ri,tji,cj->trc", br, spline_w, bc, optimize=True)
    out += strap_w[:, None, :]
    return out


def _fit_block(
    items: list, solver: Solver, gpu: bool, source: FrameSource | None, labels: list[str]
) -> tuple:
    """Read (URLs) or take (one-frame blocks) a batch of frames and fit them.

    Frames with more than :data:`MAX_NAN_FRACTION` of the unmasked pixels NaN are not fitted:
    their weights are NaN, their status :data:`STATUS_NAN_FRAME`, and a warning names them.
    """
    frames = _frames(items, source)
    n = len(frames)
    status = np.full(n, STATUS_OK, _STATUS_DTYPE)
    reason = np.full(n, "", _REASON_DTYPE)
    used = max(int(solver.mask.sum()), 1)
    for k, frame in enumerate(frames):
        frac = float(np.count_nonzero(~np.isfinite(frame[solver.mask]))) / used
        if frac > MAX_NAN_FRACTION:
            status[k] = STATUS_NAN_FRAME
            reason[k] = (
                f"{frac:.0%} of the unmasked science pixels are NaN "
                f"(more than {MAX_NAN_FRACTION:.0%}); frame not fitted"
            )
            warnings.warn(f"backdrop fit: {labels[k]}: {reason[k]}", stacklevel=2)
    fitted = [f for f, s in zip(frames, status, strict=True) if s == STATUS_OK]
    n_poly = solver.npoly**2 + solver.nrad - 1
    poly = np.full((n, n_poly), np.nan)
    spline = np.full((n, solver.bc.shape[1], solver.br.shape[1]), np.nan)
    strap = np.full((n, len(solver.columns)), np.nan)
    if fitted:
        if gpu:
            import cupy

            fitted = [cupy.asarray(f) for f in fitted]
        ok = status == STATUS_OK
        poly[ok], spline[ok], strap[ok] = solver.fit_frames(fitted)
    return poly, spline, strap, status, reason


def default_frames_per_batch(n_rows: int, n_cols: int, n_frames: int) -> int:
    """Frames per fit task, from :func:`cloudlab.chunking.items_per_task` (dask's
    ``array.chunk-size`` capped by the workers' memory), at least one frame.

    A task holds its frames as float32 (4 bytes per pixel); the fit's temporaries (one frame's
    residual and weights at a time) and the shared solver do not grow with the batch.

    Parameters
    ----------
    n_rows, n_cols : int
        Science pixels of one frame.
    n_frames : int
        Frames in the stack (the most one task can hold).

    Returns
    -------
    int
        Frames per task.
    """
    return items_per_task(4 * n_rows * n_cols, maximum=n_frames)


def fit(
    ffis: xr.Dataset,
    *,
    npoly: int = 5,
    nrad: int = 5,
    nknots: int = 40,
    degree: int = 2,
    frames_per_batch: int | None = None,
    gpu: bool = False,
    source: FrameSource | None = None,
    storage_options: dict | None = None,
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
        Frames per time chunk (right-hand sides solved together); default
        :func:`default_frames_per_batch`.
    gpu : bool
        Run the per-chunk kernels on CuPy (tasks ask for the ``GPU`` resource).
    source : cloudlab.io.tess_ffi.FrameSource, optional
        Where the tasks read the frames; default :func:`cloudlab.io.tess_ffi.frame_source` of
        ``ffis``.
    storage_options : dict, optional
        Filesystem keyword arguments for reading the frames (give the same as to ``open_ffis``;
        they stay in the tasks, never in the result's ``attrs``).

    Notes
    -----
    For stacks from :func:`cloudlab.io.tess.open_ffis` the tasks read their frames through the
    :class:`~cloudlab.io.tess_ffi.FrameSource` themselves (one ranged read of the science region
    per frame), so no frame is kept in memory between the average-image pass and the fit pass;
    any other Dataset is used through its ``flux`` chunks. The weights' ``image_row_offset`` and
    ``image_column_offset`` (image pixel of science pixel 0) come from the source's box, else
    from ``ffis.attrs``, else the full-frame values 0 and ``SCIENCE_COLUMN_START`` (44).

    Returns
    -------
    xarray.Dataset
        Dask-backed: ``poly_w (time, poly_term)``, ``spline_w (time, column_knot, row_knot)``
        (tess-backdrop's axis order), ``strap_w (time, column)``, the ``average_image`` and
        ``star_mask``/``sat_mask`` (row, column), knot vectors, ``status``/``reason``
        (time; ``"ok"`` or :data:`STATUS_NAN_FRAME`), and the time coordinates of ``ffis``.
        Bad frames (quality bits) are left out of the average image and masks but fitted like
        the others. A frame with more than :data:`MAX_NAN_FRACTION` (50 %) of its unmasked
        science pixels NaN is not fitted: its weights are NaN, its status ``"nan_frame"``, and
        computing it warns with the frame's file (or index and time).

    Raises
    ------
    InputError
        Parameters out of range (see :func:`check_parameters`), before anything else; missing
        variables, every frame flagged, every frame NaN (at compute), a region too small for
        ``nknots``, a ``source`` that does not match ``ffis``.
    RuntimeError
        ``gpu=True`` without a usable GPU.
    """
    check_parameters(
        npoly=npoly, nrad=nrad, nknots=nknots, degree=degree, frames_per_batch=frames_per_batch
    )
    if "flux" not in ffis:
        raise InputError("fit: the dataset has no 'flux' variable; open the frames with open_ffis")
    flux = ffis["flux"]
    if flux.dims != ("time", "row", "column"):
        raise InputError(f"fit: flux must have dims (time, row, column), got {flux.dims}")
    ccd = int(ffis.attrs.get("ccd", 0))
    basis.boresight(ccd)  # validates the CCD number
    if gpu:
        from cloudlab.backend import _require_cupy

        _require_cupy()
    n_t, n_r, n_c = flux.shape
    quality = ffis["quality"].values if "quality" in ffis.coords else np.zeros(n_t, int)
    good = masks.good_frames(quality)
    if not good.any():
        raise InputError(
            f"fit: all {n_t} frames carry bad quality bits ({masks.BAD_QUALITY_BITS}); "
            "no frame can build the average image"
        )
    rows = np.asarray(ffis["row"].values)
    columns = np.asarray(ffis["column"].values)
    row_knots = basis.knots(rows, nknots, degree)
    column_knots = basis.knots(columns, nknots, degree)
    fpb = frames_per_batch or default_frames_per_batch(n_r, n_c, n_t)

    source = _source_for(ffis, source, storage_options)
    if source is not None:
        labels = [str(u) for u in source.urls]
    else:
        labels = [f"frame {k} (time {t})" for k, t in enumerate(np.asarray(ffis["time"].values))]
    # the average image: the batch means in bands of rows, the median of each band on its own
    # task, so no worker holds every mean; the solver task gets the median image only
    n_batches = len(masks.frame_batches(int(good.sum())))
    band_rows = median_rows_per_task(n_batches, n_c, n_r)
    means = _mean_tasks(ffis, good, source, band_rows)
    bands = range(0, -(-n_r // band_rows))
    mean_name = means[0].key[0]
    piece_name = "backdrop-mean-band-" + tokenize(mean_name, band_rows)
    pieces = {
        (piece_name, j, b): (operator.getitem, (mean_name, j), b)
        for j in range(n_batches)
        for b in bands
    }
    median_name = "backdrop-median-" + tokenize(piece_name)
    medians = {
        (median_name, b): (_median_image, [(piece_name, j, b) for j in range(n_batches)])
        for b in bands
    }
    prepare = functools.partial(
        _solver_from_bands, rows=rows, columns=columns, ccd=ccd, npoly=npoly, nrad=nrad,
        nknots=nknots, degree=degree, names=tuple(labels[k] for k in np.flatnonzero(good)),
    )  # fmt: skip
    solver_name = "prepare_solver-" + tokenize(prepare, median_name)
    solver_graph = HighLevelGraph(
        {**means[0].dask.layers, piece_name: pieces, median_name: medians,
         solver_name: {solver_name: (prepare, list(medians))}},
        {**means[0].dask.dependencies, piece_name: {mean_name}, median_name: {piece_name},
         solver_name: {median_name}},
    )  # fmt: skip
    solver = Delayed(solver_name, solver_graph, layer=solver_name)
    n_poly = npoly * npoly + nrad - 1
    args, frames = _task_frames(ffis, source)
    reader = _shared(source)
    reader_arg = None if reader is None else reader.key
    starts = list(range(0, n_t, fpb))
    name = "backdrop-fit-" + tokenize(args, solver.key, gpu, reader_arg, labels, fpb)
    layer = {
        (name, j): (_fit_block, args[a : a + fpb], solver.key, gpu, reader_arg,
                    labels[a : a + fpb])
        for j, a in enumerate(starts)
    }  # fmt: skip
    lengths = [min(fpb, n_t - a) for a in starts]
    outputs = (((n_poly,), np.float64), ((nknots, nknots), np.float64), ((n_c,), np.float64),
               ((), _STATUS_DTYPE), ((), _REASON_DTYPE))  # fmt: skip
    with gpu_tasks() if gpu else contextlib.nullcontext():
        dependencies = [solver, *frames, *([] if reader is None else [reader])]
        graph = HighLevelGraph.from_collections(name, layer, dependencies=dependencies)
        poly, spline, strap, status, reason = (
            task_outputs(graph, name, k, lengths, inner, dtype)
            for k, (inner, dtype) in enumerate(outputs)
        )
    average = da.from_delayed(_attr(solver, "average"), (n_r, n_c), np.float32)
    star_mask = da.from_delayed(_attr(solver, "mask"), (n_r, n_c), bool)
    sat_mask = da.from_delayed(_attr(solver, "saturation"), (n_r, n_c), bool)

    time_coords = {k: v for k, v in ffis.coords.items() if v.dims == ("time",)}
    if source is not None:  # image pixel of science pixel 0
        row_offset, column_offset = source.box[0] - int(rows[0]), source.box[1] - int(columns[0])
    else:
        row_offset = int(ffis.attrs.get("image_row_offset", 0))
        column_offset = int(ffis.attrs.get("image_column_offset", SCIENCE_COLUMN_START))
    ds = xr.Dataset(
        {
            "poly_w": (("time", "poly_term"), poly),
            "spline_w": (("time", "column_knot", "row_knot"), spline),
            "strap_w": (("time", "column"), strap),
            STATUS: ("time", status),
            REASON: ("time", reason),
            "average_image": (("row", "column"), average, {"units": "electron / s"}),
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
            "image_row_offset": row_offset,
            "image_column_offset": column_offset,
            "bore_row": basis.boresight(ccd)[0],
            "bore_column": basis.boresight(ccd)[1],
            "model": "tess-backdrop: poly+radial on 8x8 block means; B-spline + column straps",
        },
    )
    return ds


def _attr(obj: Any, name: str) -> Any:
    return dask.delayed(getattr, pure=True)(obj, name)
