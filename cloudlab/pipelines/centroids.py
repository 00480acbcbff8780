"""Difference-image centroid test: is a TCE's dip on its target or on a neighbour?

A light curve cannot tell a planet from a neighbour's eclipsing binary whose light leaks into the
aperture: the dip has the right shape either way. The pixels can. For each TCE the out-of-transit
image minus the in-transit image (medians over the frames within 1–3 transit durations of the
transit, and within half a duration of its middle) is bright where the flux dropped. Its
centroid (flux-weighted over the 3 × 3 pixels around its brightest pixel) lies on the target for
a planet or a binary, and on the neighbour for a blend. This is the difference-image centroid
test of the Kepler and TESS data-validation reports, on the pipeline's own cutouts.

:func:`centroid_offsets` gives, per TIC and TCE slot, the offset in pixels between that centroid
and the target's catalogue position; :func:`cloudlab.pipelines.vet_tces` turns it into the
per-TCE ``centroid_offset`` and the ``score`` it ranks by.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

__all__ = ["MAX_CENTROID_OFFSET", "centroid_offsets", "difference_offset"]

MAX_CENTROID_OFFSET = 1.0
"""Offset (pixels, 21″ each) beyond which a dip is taken to come from another star."""


def difference_offset(
    pixels: np.ndarray,
    good: np.ndarray,
    time: np.ndarray,
    period: float,
    t0: float,
    duration: float,
    ref_row: float,
    ref_col: float,
) -> float:
    """Offset (pixels) of one TCE's difference-image centroid from the target.

    Parameters
    ----------
    pixels : numpy.ndarray
        The target's cutout ``(time, row, column)`` (NaN where off the image).
    good : numpy.ndarray
        Frames to use (good quality).
    time : numpy.ndarray
        Frame times (BTJD).
    period, t0, duration : float
        The TCE's ephemeris (days, BTJD, days).
    ref_row, ref_col : float
        The target's position in the cutout (0-based pixels).

    Returns
    -------
    float
        The offset, NaN when fewer than two frames fall in transit or out of it (or the
        ephemeris is not finite).
    """
    if not (np.isfinite(period) and period > 0 and np.isfinite(t0) and duration > 0):
        return np.nan
    usable = good & np.isfinite(pixels).any(axis=(1, 2))
    away = np.abs((((time - t0) / period + 0.5) % 1.0 - 0.5) * period)  # days from mid-transit
    during = usable & (away < 0.5 * duration)
    around = usable & (away > duration) & (away < 3.0 * duration)
    if during.sum() < 2 or around.sum() < 2:
        return np.nan
    diff = np.nanmedian(pixels[around], axis=0) - np.nanmedian(pixels[during], axis=0)
    if not np.isfinite(diff).any():
        return np.nan
    y, x = np.unravel_index(np.nanargmax(diff), diff.shape)
    rows = slice(max(y - 1, 0), min(y + 2, diff.shape[0]))
    cols = slice(max(x - 1, 0), min(x + 2, diff.shape[1]))
    weight = np.clip(np.nan_to_num(diff[rows, cols]), 0.0, None)
    yy, xx = np.mgrid[rows, cols]
    total = weight.sum()
    if total <= 0:
        return np.nan
    cy, cx = (weight * yy).sum() / total, (weight * xx).sum() / total
    return float(np.hypot(cy - ref_row, cx - ref_col))


def _offsets_block(pixels, good, period, t0, duration, ref_row, ref_col, time):
    out = np.full(period.shape, np.nan)
    for i in range(period.shape[0]):
        for s in range(period.shape[1]):
            out[i, s] = difference_offset(pixels[i], good[i], time, period[i, s], t0[i, s],
                                          duration[i, s], ref_row[i], ref_col[i])  # fmt: skip
    return out


def centroid_offsets(
    pixels: da.Array,
    good: np.ndarray,
    time: np.ndarray,
    ephemeris: dict[str, np.ndarray],
    ref_row: np.ndarray,
    ref_col: np.ndarray,
) -> da.Array:
    """Difference-image centroid offsets of every TCE, one task per block of targets.

    Parameters
    ----------
    pixels : dask.array.Array
        Cutouts ``(target, time, row, column)``.
    good : numpy.ndarray
        ``(target, time)`` frames to use.
    time : numpy.ndarray
        Frame times (BTJD).
    ephemeris : dict
        ``period``, ``t0``, ``duration`` (days), each ``(target, slot)``: the TCEs of each
        target, NaN in unused slots.
    ref_row, ref_col : numpy.ndarray
        Each target's position in its cutout (0-based pixels).

    Returns
    -------
    dask.array.Array
        ``(target, slot)`` offsets in pixels (NaN in unused slots or without enough frames).
    """
    rows = pixels.chunks[0]

    def per_target(values: np.ndarray) -> da.Array:
        return da.from_array(values, chunks=(rows, *values.shape[1:]))

    period, t0, duration = (per_target(ephemeris[k]) for k in ("period", "t0", "duration"))
    return da.blockwise(
        _offsets_block, "ts",
        pixels.rechunk({1: -1, 2: -1, 3: -1}), "tfyx",
        per_target(good), "tf",
        period, "ts", t0, "ts", duration, "ts",
        per_target(ref_row), "t", per_target(ref_col), "t",
        time=time, concatenate=True, dtype=float,
    )  # fmt: skip
