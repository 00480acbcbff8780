"""A plain, per-TCE implementation of the Astronet-Triage view algorithm, for checking and timing.

Written from the reference description (``../shared/reference/astronet.md`` §1): a Python loop
over bins with pointer-walked edges advanced by repeated addition, ``np.median`` per bin,
``np.interp`` for empty bins (Triage) or the global median (upstream Kepler), then median/minimum
normalisation.  It is deliberately straightforward: :mod:`cloudlab.astronet.views` is the
vectorised implementation, and the tests and ``benchmarks/astronet_views.py`` compare the two.
"""

from __future__ import annotations

import numpy as np

from cloudlab.astronet.views import SparseLightCurveError
from cloudlab.errors import InputError

__all__ = ["median_filter", "normalise", "phase_fold", "views_for"]


def phase_fold(time: np.ndarray, period: float, t0: float) -> np.ndarray:
    """Fold times to [-P/2, P/2) with the transit at 0 (NumPy ``mod`` semantics)."""
    half = period / 2
    folded = np.mod(time + (half - t0), period)
    folded -= half
    return folded


def median_filter(
    x: np.ndarray,
    y: np.ndarray,
    num_bins: int,
    bin_width: float,
    x_min: float,
    x_max: float,
    *,
    fill: str = "interpolate",
) -> np.ndarray:
    """Overlapping median bins over sorted ``x`` (one bin at a time, as the reference does).

    ``fill="interpolate"`` applies the Triage sparse-data guards and fills empty bins by linear
    interpolation in bin index; ``fill="median"`` is upstream's global-median fill without guards.
    """
    n = len(x)
    if n < 2:
        raise SparseLightCurveError("fewer than 2 points")
    if x_min >= x_max or x_min > x[-1]:
        raise InputError(
            f"window [{x_min}, {x_max}) is empty or starts after the last point; "
            "check the ephemeris"
        )
    if bin_width <= 0 or bin_width >= x_max - x_min:
        raise InputError(
            f"bin width {bin_width} does not fit the window [{x_min}, {x_max}); check the duration"
        )
    if fill == "interpolate":
        if np.sum((x >= x_min) & (x <= x_max)) < 5:
            raise SparseLightCurveError("fewer than 5 points in the window")
        if x[-1] - x[0] < (x_max - x_min) / 2:
            raise SparseLightCurveError("folded coverage below half the window")
    spacing = (x_max - x_min - bin_width) / (num_bins - 1)
    result = np.full(num_bins, np.nan) if fill == "interpolate" else np.full(num_bins, np.median(y))
    lo, hi = x_min, x_min + bin_width
    j_start = j_end = 0
    for i in range(num_bins):
        while j_start < n and x[j_start] < lo:
            j_start += 1
        while j_end < n and x[j_end] < hi:
            j_end += 1
        if j_end > j_start:
            result[i] = np.median(y[j_start:j_end])
        lo += spacing
        hi += spacing
    if fill == "interpolate":
        good = np.flatnonzero(np.isfinite(result))
        if good.size == 0:
            raise InputError(f"all {num_bins} bins are empty; check the light curve and window")
        result = np.interp(np.arange(num_bins), good, result[good])
    return result


def normalise(view: np.ndarray) -> np.ndarray:
    """Subtract the median, divide by |minimum| (median 0, minimum -1)."""
    view = view - np.median(view)
    minimum = np.abs(np.min(view))
    if minimum == 0:
        raise SparseLightCurveError("view has zero minimum after median subtraction")
    return view / minimum


def views_for(
    time: np.ndarray,
    flux: np.ndarray,
    period: float,
    t0: float,
    duration: float,
    *,
    kind: str = "triage",
) -> tuple[np.ndarray, np.ndarray]:
    """Global and local views of one TCE, the reference way (``kind`` "triage" or "kepler")."""
    keep = np.isfinite(time) & np.isfinite(flux)
    folded = phase_fold(np.asarray(time, float)[keep], period, t0)
    order = np.argsort(folded)
    x, y = folded[order], np.asarray(flux, float)[keep][order]
    if kind == "triage":
        g_bins, g_width, l_bins, l_durations, fill = 201, 1.2 * period / 201, 61, 2, "interpolate"
    else:
        g_bins, g_width, l_bins, l_durations, fill = 2001, period / 2001, 201, 4, "median"
    global_view = median_filter(x, y, g_bins, g_width, -period / 2, period / 2, fill=fill)
    local_view = median_filter(
        x,
        y,
        l_bins,
        0.16 * duration,
        max(-period / 2, -duration * l_durations),
        min(period / 2, duration * l_durations),
        fill=fill,
    )
    return normalise(global_view), normalise(local_view)
