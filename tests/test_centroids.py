"""The difference-image centroid test on pixels with known truth."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from cloudlab.pipelines.centroids import centroid_offsets, difference_offset

TIME = np.arange(0.0, 20.0, 0.02)  # 20 days, 29-minute frames
PERIOD, T0, DURATION = 3.0, 1.1, 0.15


def _star(shape, row, col, flux, sigma=0.8):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return flux * np.exp(-((yy - row) ** 2 + (xx - col) ** 2) / (2 * sigma**2))


def _cube(neighbour_dips: bool, seed=0) -> np.ndarray:
    """A target at (6, 6) and a fainter neighbour at (6.4, 8.7); one of them dips by 2 %."""
    rng = np.random.default_rng(seed)
    shape = (13, 13)
    during = np.abs(((TIME - T0) / PERIOD + 0.5) % 1.0 - 0.5) * PERIOD < DURATION / 2
    target, neighbour = _star(shape, 6, 6, 5000.0), _star(shape, 6.4, 8.7, 2000.0)
    dip = 1 - 0.02 * during
    frames = (target[None] * (1 if neighbour_dips else dip[:, None, None])
              + neighbour[None] * (dip[:, None, None] if neighbour_dips else 1))  # fmt: skip
    return frames + rng.normal(0, 1.0, frames.shape) + 100.0


@pytest.mark.parametrize(("neighbour", "expected"), [(False, 0.0), (True, np.hypot(0.4, 2.7))])
def test_offset_points_at_the_star_that_dips(neighbour, expected):
    good = np.ones(len(TIME), bool)
    offset = difference_offset(_cube(neighbour), good, TIME, PERIOD, T0, DURATION, 6.0, 6.0)
    assert offset == pytest.approx(expected, abs=0.35)


def test_no_frames_in_transit_gives_nan_and_blocks_keep_slots():
    cube = _cube(False)
    good = np.ones(len(TIME), bool)
    none = np.zeros(len(TIME), bool)
    assert np.isnan(difference_offset(cube, none, TIME, PERIOD, T0, DURATION, 6.0, 6.0))
    assert np.isnan(difference_offset(cube, good, TIME, np.nan, T0, DURATION, 6.0, 6.0))
    # two targets (the second a blend), two TCE slots each (one unused): one task per target
    pixels = da.from_array(np.stack([cube, _cube(True, seed=1)]), chunks=(1, -1, -1, -1))
    eph = {k: np.array([[v, np.nan], [v, np.nan]]) for k, v in
           (("period", PERIOD), ("t0", T0), ("duration", DURATION))}  # fmt: skip
    got = centroid_offsets(pixels, np.ones((2, len(TIME)), bool), TIME, eph,
                           np.array([6.0, 6.0]), np.array([6.0, 6.0])).compute()  # fmt: skip
    assert got.shape == (2, 2) and np.isnan(got[:, 1]).all()
    assert got[0, 0] < 0.35 and abs(got[1, 0] - np.hypot(0.4, 2.7)) < 0.35
