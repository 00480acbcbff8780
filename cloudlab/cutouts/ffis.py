"""Cutouts straight from calibrated FFIs, with no cube: one batched read per FFI for all targets.

A sector's FFIs are public long before its cutout cube. :func:`make_cutouts` with ``ffis=``
reads every FFI's headers once (:func:`cloudlab.io.tess.ffi_cube_meta`: frame order, times,
quality and the WCS exactly as the cube astrocut would build), then each task reads a batch of
frames: for every frame, the rows of *all* targets from the calibrated image (HDU 1) and the
uncertainty image (HDU 2) with one batched ranged read per HDU (one byte range per target).
The result is the array the cube path gives, pixel for pixel.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from cloudlab import fits, storage
from cloudlab.chunking import items_per_task
from cloudlab.cutouts.cutout import BYTES_PER_PIXEL_FRAME, cutout_boxes

__all__ = ["ffi_cutout_array", "read_ffi_cutouts"]


def _cut_frame(
    info: fits.HDUInfo, corners: np.ndarray, size: tuple[int, int], out: np.ndarray
) -> None:
    """Fill ``out`` (target, row, column) with the targets' boxes of one 2-D image HDU.

    Each target's rows are read whole (one contiguous byte range per target, merged where
    targets share rows) rather than one short range per cutout row: on an object store a
    request costs far more than the extra bytes of a row.
    """
    n_rows, n_cols = info.shape
    corner_col, corner_row = corners
    on, boxes = cutout_boxes(corner_col, corner_row, size, n_rows=n_rows, n_cols=n_cols)
    bands = [(rows, (0, n_cols)) for rows, _ in boxes]
    for t, box, band in zip(on.tolist(), boxes, fits.read_regions(info, bands), strict=True):
        (r0, r1), (c0, c1) = box
        rows = slice(r0 - corner_row[t], r1 - corner_row[t])
        cols = slice(c0 - corner_col[t], c1 - corner_col[t])
        out[t, rows, cols] = band[:, c0:c1]


def read_ffi_cutouts(
    images: list[fits.HDUInfo],
    errors: list[fits.HDUInfo | None],
    corners: np.ndarray,
    size: tuple[int, int],
) -> np.ndarray:
    """Every target's cutout from a batch of FFIs.

    Parameters
    ----------
    images, errors : list of cloudlab.fits.HDUInfo
        HDU 1 (calibrated flux) and HDU 2 (uncertainty, or None) of each FFI, in frame order.
    corners : numpy.ndarray
        ``(2, target)``: 0-based first column and row of each cutout (may lie off the image).
    size : (int, int)
        (rows, columns).

    Returns
    -------
    numpy.ndarray
        float32 ``(2, target, frame, row, column)``: flux then uncertainty; NaN off the image
        (and for the uncertainty of an FFI without HDU 2).
    """
    ny, nx = size
    out = np.full((2, corners.shape[1], len(images), ny, nx), np.nan, dtype=np.float32)
    jobs = [(info, plane, f) for f, pair in enumerate(zip(images, errors, strict=True))
            for plane, info in enumerate(pair) if info is not None]  # fmt: skip
    # each read waits on the store, not the CPU: keep every FFI's request in flight at once
    local = all(storage.is_local(info.url) for info, _, _ in jobs)
    with ThreadPoolExecutor(max_workers=max(1, min(2 if local else 32, len(jobs)))) as pool:
        list(pool.map(lambda j: _cut_frame(j[0], corners, size, out[j[1], :, j[2]]), jobs))
    return out


def ffi_cutout_array(
    frames: list[tuple[fits.HDUInfo, fits.HDUInfo | None]],
    corner_col: np.ndarray,
    corner_row: np.ndarray,
    size: tuple[int, int],
    *,
    frames_per_task: int | None = None,
) -> da.Array:
    """The cutouts of all targets from a stack of FFIs as one lazy array, in one graph layer.

    Parameters
    ----------
    frames : list of (HDUInfo, HDUInfo or None)
        Each FFI's calibrated-image and uncertainty HDUs, in frame order, as
        :func:`cloudlab.io.tess.ffi_cube_meta` gives them (they carry the storage options).
    corner_col, corner_row : numpy.ndarray
        0-based first column and row of each target's cutout, in the caller's target order.
    size : (int, int)
        (rows, columns).
    frames_per_task : int, optional
        FFIs per task (default: :func:`cloudlab.chunking.items_per_task`, as many as keep a
        task's output within dask's ``array.chunk-size``, capped by the workers' memory).

    Returns
    -------
    dask.array.Array
        float32 ``(2, target, frame, row, column)``, chunked along frames only.
    """
    ny, nx = size
    n_targets, n_frames = len(corner_col), len(frames)
    if frames_per_task is None:
        # per frame: every target's float32 flux + uncertainty cutout (the row bands of one
        # frame per reading thread come on top, whatever the number of frames)
        per_frame = max(1, n_targets * ny * nx * BYTES_PER_PIXEL_FRAME)
        frames_per_task = items_per_task(per_frame, maximum=n_frames)
    images = [image.light() for image, _ in frames]
    errors = [None if err is None else err.light() for _, err in frames]
    corners = np.stack([np.asarray(corner_col, np.int64), np.asarray(corner_row, np.int64)])
    token = tokenize([i.url for i in images], corners, size, frames_per_task)
    name, data = f"ffi-cutouts-{token}", f"ffi-corners-{token}"
    starts = list(range(0, n_frames, frames_per_task))
    layer: dict = {data: corners}
    for j, a in enumerate(starts):
        b = min(a + frames_per_task, n_frames)
        layer[(name, 0, 0, j, 0, 0)] = (read_ffi_cutouts, images[a:b], errors[a:b], data, size)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())
    chunks = ((2,), (n_targets,), tuple(min(frames_per_task, n_frames - a) for a in starts),
              (ny,), (nx,))  # fmt: skip
    meta = np.empty((0, 0, 0, 0, 0), dtype=np.float32)
    return da.Array(graph, name, chunks, dtype=np.float32, meta=meta)
