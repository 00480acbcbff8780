"""Robust spline detrending of Kepler light curves (upstream AstroNet's ``kepler_spline``).

The light curve is cut into segments at gaps longer than 0.75 d.  For each of 20 break-point
spacings, log-spaced from 0.5 to 20 d, every segment gets a least-squares cubic B-spline with
break points every *spacing* days, refitted up to 5 times after dropping points whose residual
lies beyond 3σ of the IDL ``robust_mean`` (σ from the MAD, then a trimmed standard deviation with
IDL's correction polynomial).  The spacing with the lowest BIC,
N·ln(2πσ²) + SSR/σ² + k·ln N (σ = 1.48·median|Δf|/√2, k = Σ(breakpoints + 2)), is kept and the
flux divided by its spline.

The B-spline fit uses ``scipy.interpolate.make_lsq_spline`` instead of pydl's ``iterfit``:
same model (cubic, uniform break points), so the chosen spacing and the detrended flux agree
with upstream to the accuracy of the least-squares solution, not bit for bit.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import make_lsq_spline

from cloudlab.errors import InputError

__all__ = [
    "GAP",
    "SPACINGS",
    "SplineError",
    "detrend",
    "detrend_rows",
    "fit_segment",
    "robust_mask",
    "split_segments",
]

SPACINGS = np.logspace(np.log10(0.5), np.log10(20.0), 20)
GAP = 0.75


class SplineError(InputError):
    """A spline could not be fitted with the requested break-point spacing."""


def split_segments(time: np.ndarray, gap: float = GAP) -> list[slice]:
    """Slices of ``time`` (sorted) between gaps longer than ``gap`` days."""
    cuts = np.flatnonzero(np.diff(time) > gap) + 1
    edges = np.r_[0, cuts, time.size]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def robust_mask(residual: np.ndarray, cut: float = 3.0) -> np.ndarray:
    """Points within ``cut`` robust σ of the median (IDL ``robust_mean``)."""
    absdev = np.abs(residual - np.median(residual))
    sigma = 1.4826 * np.median(absdev)
    if sigma < 1e-24:
        sigma = 1.253 * np.mean(absdev)
    inside = absdev <= cut * sigma
    if inside.sum() > 1:
        sigma = np.std(residual[inside])
        sc = max(cut, 1.0)
        if sc <= 4.5:
            sigma /= -0.15405 + 0.90723 * sc - 0.23584 * sc**2 + 0.020142 * sc**3
    return absdev <= cut * sigma


def _fit(time: np.ndarray, flux: np.ndarray, spacing: float):
    lo, hi = time[0], time[-1]
    interior = lo + spacing * np.arange(1, int(np.floor((hi - lo) / spacing)) + 1)
    interior = interior[interior < hi - 1e-9]
    # drop break points that leave an interval without data (keeps the fit well posed)
    counts = np.histogram(time, np.r_[lo, interior, hi])[0]
    if (counts == 0).any():
        keep = np.ones(interior.size, bool)
        for i in np.flatnonzero(counts == 0):
            keep[min(i, interior.size - 1)] = False
        interior = interior[keep]
    knots = np.r_[[lo] * 4, interior, [hi] * 4]
    try:
        spline = make_lsq_spline(time, flux, knots, k=3)
    except (ValueError, np.linalg.LinAlgError) as err:
        raise SplineError(f"spacing {spacing:.3g} d: {err}") from err
    return spline, interior.size + 4


def fit_segment(
    time: np.ndarray, flux: np.ndarray, spacing: float, maxiter: int = 5
) -> tuple[np.ndarray, np.ndarray, int]:
    """Robust cubic B-spline of one segment.

    Returns
    -------
    (spline, mask, n_params)
        Spline values at every point, the points kept by the last iteration and the number of
        spline coefficients.
    """
    mask = np.ones(time.size, bool)
    model, params = None, 0
    for _ in range(maxiter):
        if model is not None:
            new = robust_mask(flux - model)
            if np.array_equal(new, mask):
                break
            mask = new
        if mask.sum() < 4:
            raise SplineError(
                f"spacing {spacing:.3g} d: fewer than 4 points left in the segment after clipping"
            )
        spline, params = _fit(time[mask], flux[mask], spacing)
        model = spline(time)
    return model, mask, params


def detrend(time: np.ndarray, flux: np.ndarray) -> tuple[np.ndarray, float]:
    """Divide a light curve by its BIC-chosen robust spline.

    Parameters
    ----------
    time, flux : numpy.ndarray
        Sorted times (days) and fluxes, finite.

    Returns
    -------
    (detrended, spacing)
        Flux / spline (NaN where no spline could be fitted) and the chosen spacing (days).
    """
    segments = [s for s in split_segments(time) if s.stop - s.start >= 4]
    if not segments:
        raise SplineError(
            f"no segment with at least 4 points (gaps > {GAP} d split the light curve); "
            "the light curve is too sparse to detrend"
        )
    diffs = np.concatenate([np.diff(flux[s]) / np.sqrt(2) for s in segments])
    sigma = 1.48 * np.median(np.abs(diffs))
    if not sigma > 0:
        raise SplineError("flux has no point-to-point scatter; check that it is not constant")
    best = (np.inf, None, np.nan)
    for spacing in SPACINGS:
        model = np.full(flux.size, np.nan)
        params = points = 0
        ssr = 0.0
        try:
            for s in segments:
                values, mask, k = fit_segment(time[s], flux[s], spacing)
                model[s] = values
                params += k
                points += int(mask.sum())
                ssr += float(np.sum((flux[s][mask] - values[mask]) ** 2))
        except SplineError:
            continue
        bic = points * np.log(2 * np.pi * sigma**2) + ssr / sigma**2 + params * np.log(points)
        if bic < best[0]:
            best = (bic, model, spacing)
    if best[1] is None:
        raise SplineError(
            f"none of the {SPACINGS.size} break-point spacings gave a spline; "
            "the light curve is too sparse or too gappy to detrend"
        )
    return flux / best[1], float(best[2])


def detrend_rows(time: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """:func:`detrend` for every row of NaN-padded (n, points) arrays; failures give NaN rows."""
    out = np.full(flux.shape, np.nan)
    for i in range(len(flux)):
        keep = np.isfinite(time[i]) & np.isfinite(flux[i])
        order = np.argsort(time[i][keep], kind="stable")
        t, f = time[i][keep][order], flux[i][keep][order]
        try:
            detrended, _ = detrend(t, f)
        except SplineError:
            continue
        row = np.full(keep.sum(), np.nan)
        row[order] = detrended
        out[i, np.flatnonzero(keep)] = row
    return out
