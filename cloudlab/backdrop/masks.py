"""Pixel and frame masks of the BackDrop fit (tess-backdrop's rules).

A pixel takes part in the spline/strap fit when the average image is smooth there (no star
gradient) and it is far from saturated stars and their bleed columns. A frame takes part in the
average image when none of the bad-quality bits is set.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cloudlab.tess_detector import BAD_QUALITY_BITS

__all__ = [
    "BAD_QUALITY_BITS",
    "MAX_SATURATION_RADIUS",
    "SATURATED_GRADIENT",
    "SATURATED_VALUE",
    "STAR_GRADIENT",
    "WHISKER_WIDTH",
    "background_mask",
    "frame_batches",
    "good_frames",
    "saturation_mask",
    "star_gradient_mask",
]

STAR_GRADIENT = 10.0
SATURATED_GRADIENT = 1.0e4
SATURATED_VALUE = 1.0e5
WHISKER_WIDTH = 40
MAX_SATURATION_RADIUS = 70


def good_frames(quality: np.ndarray, bits: int = BAD_QUALITY_BITS) -> np.ndarray:
    """Boolean array, True for frames whose quality flags have none of ``bits`` set."""
    return (np.asarray(quality).astype(np.int64) & bits) == 0


def frame_batches(n_good: int, max_batches: int = 20, min_batch_size: int = 5) -> list[np.ndarray]:
    """Split ``n_good`` frame positions into the batches averaged for the average image.

    ``max_batches`` batches, or ``n_good // min_batch_size`` when that gives batches smaller than
    ``min_batch_size`` (at least one batch).
    """
    n_batches = max_batches
    if n_good < max_batches * min_batch_size:
        n_batches = max(n_good // min_batch_size, 1)
    return [b for b in np.array_split(np.arange(n_good), n_batches) if len(b)]


def star_gradient_mask(average: np.ndarray, threshold: float = STAR_GRADIENT) -> np.ndarray:
    """Pixels on stars: ``hypot(gradient(average)) > threshold``, grown once.

    A pixel with at least three of its four neighbours flagged is flagged too.

    Returns
    -------
    numpy.ndarray
        Boolean image, True on stars.
    """
    grad_r, grad_c = np.gradient(np.asarray(average, float))
    soft = np.hypot(grad_r, grad_c, out=grad_r) > threshold
    del grad_r, grad_c
    kernel = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    neighbours = ndimage.convolve(soft.astype(np.int8), kernel, mode="constant", cval=0)
    return soft | (neighbours >= 3)


def saturation_mask(average: np.ndarray, whisker_width: int = WHISKER_WIDTH) -> np.ndarray:
    """Pixels away from saturated stars, their bleed columns and their "whiskers".

    Seeds are pixels brighter than 1e5 e/s or with a column gradient above 1e4 e/s/pixel. Every
    contiguous run of seeds in a column gives a centre (its mean row) and a radius (half its
    length). The seed mask is grown by one pixel along rows and four along columns; a 4-row,
    ``whisker_width``-column bar and a disc of radius ``min(radius, 70)`` are added about every run.
    Images without saturated pixels give an all-True mask.

    Returns
    -------
    numpy.ndarray
        Boolean image, True where *not* saturated.
    """
    avg = np.asarray(average, float)
    n_rows, n_cols = avg.shape
    gradient = np.gradient(avg, axis=1)
    seeds = (np.abs(gradient, out=gradient) > SATURATED_GRADIENT) | (avg > SATURATED_VALUE)
    del gradient
    if not seeds.any():
        return np.ones_like(seeds)
    sat = ndimage.binary_dilation(seeds, structure=np.ones((3, 1), bool), iterations=1)
    sat = ndimage.binary_dilation(sat, structure=np.ones((1, 3), bool), iterations=4)
    # runs of seeds along each column: transpose so nonzero() walks column by column
    edges = np.diff(np.pad(seeds.T.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    start_col, start_row = np.nonzero(edges == 1)
    _, end_row = np.nonzero(edges == -1)
    centres = (start_row + end_row - 1) / 2.0
    radii = (end_row - start_row) / 2.0
    half = whisker_width // 2
    for col, centre, rad in zip(start_col, centres, radii, strict=True):
        ir = int(round(centre))
        sat[max(ir - 2, 0) : max(ir + 2, 0), max(col - half, 0) : max(col + half, 0)] = True
        r = min(rad, MAX_SATURATION_RADIUS)
        r_lo, r_hi = max(int(centre - r), 0), min(int(centre + r) + 1, n_rows)
        c_lo, c_hi = max(int(col - r), 0), min(int(col + r) + 1, n_cols)
        rr = np.arange(r_lo, r_hi)[:, None] - centre
        cc = np.arange(c_lo, c_hi)[None, :] - col
        sat[r_lo:r_hi, c_lo:c_hi] |= np.hypot(rr, cc) <= r
    return ~sat


def background_mask(average: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels usable for the background fit, from the average image.

    Returns
    -------
    star_mask : numpy.ndarray
        True where the pixel is used (finite, not on a star, not near saturation).
    sat_mask : numpy.ndarray
        True where not saturated (tess-backdrop's ``SATMASK``).
    """
    filled = np.array(average, float)  # a copy: NaN are set to zero in place
    finite = np.isfinite(filled)
    filled[~finite] = 0.0
    sat_ok = saturation_mask(filled)
    return finite & ~star_gradient_mask(filled) & sat_ok, sat_ok
