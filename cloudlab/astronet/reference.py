"""A plain, per-TCE implementation of the AstroNet view algorithms, for checking and timing.

Views: a Python loop over bins with pointer-walked edges advanced by repeated addition,
``np.median`` per bin, ``np.interp`` for empty bins (Triage) or the global median (upstream
Kepler), then median/minimum normalisation.

Kepler detrending (:func:`kepler_detrend`): upstream exoplanet-ml's ``process_light_curve`` step
by step, on the light curve as a list of per-file arrays: every file is cut at gaps > 0.75 d;
for each of 20 log-spaced break-point spacings (0.5–20 d) every piece gets a spline from pydl's
``bspline.iterfit`` on time rescaled to [0, 1], refitted up to 5 times on the points that
``robust_mean`` (3σ, two trimmed-σ passes) keeps; the spacing with the lowest BIC wins and the
flux is divided by its spline.

It is deliberately straightforward: :mod:`cloudlab.astronet.views` and
:mod:`cloudlab.astronet.spline` are the implementations used by cloudlab, and the tests and
``benchmarks/astronet_views.py`` compare the two.
"""

from __future__ import annotations

import numpy as np

from cloudlab.astronet.views import SparseLightCurveError
from cloudlab.errors import InputError

__all__ = [
    "kepler_detrend",
    "kepler_spline",
    "median_filter",
    "normalise",
    "phase_fold",
    "robust_mean",
    "split_on_gaps",
    "views_for",
]


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


def robust_mean(y: np.ndarray, cut: float) -> tuple[float, float, np.ndarray]:
    """IDL ``robust_mean`` as upstream: (mean, its standard deviation, mask of kept points).

    σ starts as 1.4826·MAD (1.253·mean absolute deviation if that is zero); then twice: keep
    |y − median| ≤ cut·σ, σ ← std of the kept points divided by IDL's trimming correction.
    """
    absdev = np.abs(y - np.median(y))
    sigma = 1.4826 * np.median(absdev)
    if sigma < 1.0e-24:
        sigma = 1.253 * np.mean(absdev)
    sc = max(cut, 1.0)
    correction = -0.15405 + 0.90723 * sc - 0.23584 * sc**2 + 0.020142 * sc**3
    for _ in range(2):
        mask = absdev <= cut * sigma
        sigma = np.std(y[mask])
        if sc <= 4.5:
            sigma /= correction
    mask = absdev <= cut * sigma
    return float(np.mean(y[mask])), float(sigma / np.sqrt(len(y) - 1.0)), mask


class _TooFewPoints(Exception):
    pass


class _BadSpacing(Exception):
    pass


def kepler_spline(
    time: np.ndarray, flux: np.ndarray, bkspace: float, maxiter: int = 5, outlier_cut: float = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Upstream ``kepler_spline``: robust spline of one light-curve piece (values, mask)."""
    import warnings

    from pydl.pydlutils import bspline

    if len(time) < 4:
        raise _TooFewPoints
    t_min, t_max = np.min(time), np.max(time)
    scaled = (time - t_min) / (t_max - t_min)
    bkspace = bkspace / (t_max - t_min)
    spline, mask = None, np.ones(len(time), bool)
    for _ in range(maxiter):
        if spline is not None:
            new_mask = robust_mean(flux - spline, cut=outlier_cut)[2]
            if np.all(new_mask == mask):
                break
            mask = new_mask
        if np.sum(mask) < 4:
            raise _TooFewPoints
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                curve = bspline.iterfit(scaled[mask], flux[mask], bkspace=bkspace)[0]
            spline = curve.value(scaled)[0]
        except (IndexError, TypeError) as err:
            raise _BadSpacing from err
    return spline, mask


def split_on_gaps(
    all_time: list[np.ndarray], all_flux: list[np.ndarray], gap_width: float = 0.75
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Cut every (time, flux) array pair wherever consecutive times differ by > ``gap_width``."""
    out_time, out_flux = [], []
    for time, flux in zip(all_time, all_flux, strict=True):
        start = 0
        for end in range(1, len(time) + 1):
            if end == len(time) or time[end] - time[end - 1] > gap_width:
                out_time.append(time[start:end])
                out_flux.append(flux[start:end])
                start = end
    return out_time, out_flux


def kepler_detrend(
    all_time: list[np.ndarray], all_flux: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Upstream ``process_light_curve``: (time, flux / spline, chosen spacing) from per-file arrays.

    Points where no spline could be fitted are dropped; the spacing is NaN when none worked.
    """
    pieces_t, pieces_f = split_on_gaps(all_time, all_flux)
    diffs = [np.diff(f) / np.sqrt(2) for f in pieces_f]
    sigma = np.median(np.abs(np.concatenate(diffs))) * 1.48
    best, best_bic, best_spacing = None, None, np.nan
    for bkspace in np.logspace(np.log10(0.5), np.log10(20), num=20):
        nparams = npoints = 0
        ssr = 0.0
        splines = []
        try:
            for time, flux in zip(pieces_t, pieces_f, strict=True):
                try:
                    piece, mask = kepler_spline(time, flux, bkspace)
                except _TooFewPoints:
                    splines.append(np.full(len(flux), np.nan))
                    continue
                splines.append(piece)
                nparams += int((np.max(time) - np.min(time)) / bkspace) + 1 + 3 - 1
                npoints += np.sum(mask)
                ssr += np.sum((flux[mask] - piece[mask]) ** 2)
        except _BadSpacing:
            continue
        if not npoints:
            continue
        bic = npoints * np.log(2 * np.pi * sigma**2) + ssr / sigma**2 + nparams * np.log(npoints)
        if best is None or bic < best_bic:
            best, best_bic, best_spacing = splines, bic, float(bkspace)
    time, flux = np.concatenate(pieces_t), np.concatenate(pieces_f)
    if best is None:
        return time[:0], flux[:0], best_spacing
    spline = np.concatenate(best)
    finite = np.isfinite(spline)
    return time[finite], flux[finite] / spline[finite], best_spacing
