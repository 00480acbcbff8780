"""Robust spline detrending of Kepler light curves, as upstream AstroNet's ``kepler_spline``.

The light curve is cut into segments at gaps longer than 0.75 d.  For each of 20 break-point
spacings, log-spaced from 0.5 to 20 d, every segment gets pydl's B-spline fit
(``pydl.pydlutils.bspline.iterfit``: cubic, break points every *spacing* days placed by pydl,
constant weights, its own 5σ rejection) on time rescaled to [0, 1].  The fit is repeated up to
5 times on the points that the IDL ``robust_mean`` keeps (residuals within 3σ of their median;
σ from the MAD, then twice the trimmed standard deviation with IDL's correction polynomial),
until the kept points stop changing.  A spacing for which pydl fails on any segment is skipped;
a segment with fewer than 4 points gets no spline.  The spacing with the lowest BIC,
N·ln(2πσ²) + SSR/σ² + k·ln N (σ = 1.48·median|Δf|/√2 over all segments, N and SSR over the kept
points, k = Σ(⌊segment length / spacing⌋ + 3)), is kept and the flux divided by its spline.

This is upstream's algorithm with upstream's settings and the same pydl routine, so the chosen
spacing and the detrended flux are those of upstream's ``process_light_curve`` (compared with the
step-by-step transcription in :func:`cloudlab.astronet.reference.kepler_detrend`).  One
difference: upstream also cuts at every file boundary, cloudlab only at gaps (Kepler quarters are
separated by gaps longer than 0.75 d).
"""

from __future__ import annotations

import warnings

import numpy as np

from cloudlab.errors import InputError, MissingDependencyError

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
MIN_POINTS = 4


class SplineError(InputError):
    """A spline could not be fitted with the requested break-point spacing."""


class _TooFewPoints(SplineError):
    """A segment has fewer than 4 points left: it gets no spline, the spacing stays usable."""


def _iterfit():
    try:
        from pydl.pydlutils.bspline import iterfit
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError(
            "Kepler spline detrending needs pydl: pip install 'cloudlab[astronet]'"
        ) from err
    return iterfit


def split_segments(time: np.ndarray, gap: float = GAP) -> list[slice]:
    """Slices of ``time`` (sorted) between gaps longer than ``gap`` days."""
    cuts = np.flatnonzero(np.diff(time) > gap) + 1
    edges = np.r_[0, cuts, time.size]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def robust_mask(residual: np.ndarray, cut: float = 3.0) -> np.ndarray:
    """Points kept by IDL's ``robust_mean`` (within ``cut`` robust σ of the median).

    σ is first 1.4826·MAD (1.253·mean absolute deviation when the MAD is 0); it is then
    re-estimated twice as the standard deviation of the points within ``cut``·σ, divided by
    IDL's correction for the trimming (for ``cut`` ≤ 4.5).
    """
    absdev = np.abs(residual - np.median(residual))
    sigma = 1.4826 * np.median(absdev)
    if sigma < 1e-24:
        sigma = 1.253 * np.mean(absdev)
    sc = max(cut, 1.0)
    correction = -0.15405 + 0.90723 * sc - 0.23584 * sc**2 + 0.020142 * sc**3 if sc <= 4.5 else 1
    for _ in range(2):
        sigma = np.std(residual[absdev <= cut * sigma]) / correction
    return absdev <= cut * sigma


def fit_segment(
    time: np.ndarray, flux: np.ndarray, spacing: float, maxiter: int = 5
) -> tuple[np.ndarray, np.ndarray, int]:
    """Robust cubic B-spline of one segment (pydl ``iterfit`` with upstream's settings).

    Parameters
    ----------
    time, flux : numpy.ndarray
        The segment's sorted times (days) and fluxes.
    spacing : float
        Break-point spacing (days).
    maxiter : int
        Fits at most, each on the points the previous fit's ``robust_mean`` kept.

    Returns
    -------
    (spline, mask, n_params)
        Spline values at every point, the points kept for the last fit and the number of
        free parameters counted by the BIC (⌊length / spacing⌋ + 3).

    Raises
    ------
    SplineError
        pydl could not fit this spacing, or fewer than 4 points are left.
    """
    iterfit = _iterfit()
    if time.size < MIN_POINTS:
        raise _TooFewPoints(f"a segment has {time.size} points; a spline needs {MIN_POINTS}")
    span = time[-1] - time[0]
    scaled = (time - time[0]) / span
    mask = np.ones(time.size, bool)
    model = None
    for _ in range(maxiter):
        if model is not None:
            new = robust_mask(flux - model)
            if np.array_equal(new, mask):
                break
            mask = new
        if mask.sum() < MIN_POINTS:
            raise _TooFewPoints(
                f"spacing {spacing:.3g} d: fewer than {MIN_POINTS} points left in a segment "
                "after clipping"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                curve = iterfit(scaled[mask], flux[mask], bkspace=spacing / span)[0]
            model = curve.value(scaled)[0]
        except (IndexError, TypeError) as err:  # pydl's failures on ill-posed break points
            raise SplineError(
                f"spacing {spacing:.3g} d: the B-spline fit failed ({err}); the spacing is too "
                "small for the data in some interval"
            ) from err
    return model, mask, int(span / spacing) + 3


def detrend(time: np.ndarray, flux: np.ndarray) -> tuple[np.ndarray, float]:
    """Divide a light curve by its BIC-chosen robust spline.

    Parameters
    ----------
    time, flux : numpy.ndarray
        Sorted times (days) and fluxes, finite.

    Returns
    -------
    (detrended, spacing)
        Flux / spline (NaN in segments without a spline) and the chosen spacing (days).

    Raises
    ------
    SplineError
        The flux has no point-to-point scatter, or no spacing gave a spline.
    """
    time = np.asarray(time, float)
    flux = np.asarray(flux, float)
    segments = split_segments(time)
    diffs = np.concatenate([np.diff(flux[s]) for s in segments] + [np.zeros(0)]) / np.sqrt(2)
    if not diffs.size:
        raise SplineError("the light curve has no two consecutive points closer than the gap")
    sigma = 1.48 * np.median(np.abs(diffs))
    if not sigma > 0:
        raise SplineError("flux has no point-to-point scatter; check that it is not constant")
    best_bic, best_model, best_spacing = np.inf, None, np.nan
    for spacing in SPACINGS:
        model = np.full(flux.size, np.nan)
        params = points = 0
        ssr = 0.0
        try:
            for s in segments:
                try:
                    values, mask, k = fit_segment(time[s], flux[s], spacing)
                except _TooFewPoints:
                    continue
                model[s] = values
                params += k
                points += int(mask.sum())
                ssr += float(np.sum((flux[s][mask] - values[mask]) ** 2))
        except SplineError:
            continue
        if not points:
            continue
        bic = points * np.log(2 * np.pi * sigma**2) + ssr / sigma**2 + params * np.log(points)
        if best_model is None or bic < best_bic:
            best_bic, best_model, best_spacing = bic, model, spacing
    if best_model is None:
        raise SplineError(
            f"none of the {SPACINGS.size} break-point spacings gave a spline; "
            "the light curve is too sparse or too gappy to detrend"
        )
    return flux / best_model, float(best_spacing)


def detrend_rows(time: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """:func:`detrend` for every row of NaN-padded (n, points) arrays; failures give NaN rows.

    Rows holding the same light curve (several TCEs of one star) are detrended once.
    """
    out = np.full(flux.shape, np.nan)
    done: dict[bytes, np.ndarray] = {}
    for i in range(len(flux)):
        keep = np.isfinite(time[i]) & np.isfinite(flux[i])
        order = np.argsort(time[i][keep], kind="stable")
        t, f = time[i][keep][order], flux[i][keep][order]
        key = t.tobytes() + f.tobytes()
        if key not in done:
            try:
                done[key] = detrend(t, f)[0]
            except SplineError:
                done[key] = np.full(t.size, np.nan)
        row = np.full(keep.sum(), np.nan)
        row[order] = done[key]
        out[i, np.flatnonzero(keep)] = row
    return out
