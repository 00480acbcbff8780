"""Seeded star fields: catalogs, PSF rendering, saturation bleed and injected transits."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import erf

from cloudlab.errors import InputError

__all__ = [
    "TMAG_ZERO_FLUX",
    "bleed_columns",
    "draw_tmag",
    "psf_stamp",
    "render_stars",
    "star_catalog",
    "tmag_to_flux",
    "transit_factor",
]

TMAG_ZERO_FLUX = 15000.0
"""TESS flux of a Tmag = 10 star in electron / s (TESS Instrument Handbook)."""


def tmag_to_flux(tmag: np.ndarray) -> np.ndarray:
    """Flux in electron / s of stars of TESS magnitude ``tmag``."""
    return TMAG_ZERO_FLUX * 10.0 ** (-0.4 * (np.asarray(tmag, dtype=float) - 10.0))


def draw_tmag(
    rng: np.random.Generator, n: int, bright: float = 6.0, faint: float = 16.0
) -> np.ndarray:
    """TESS magnitudes between ``bright`` and ``faint`` with counts rising as ``10^(0.3 m)``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator (one uniform draw per star).
    n : int
        Number of magnitudes.
    bright, faint : float, optional
        Magnitude range.

    Returns
    -------
    numpy.ndarray
        ``n`` magnitudes (many faint, few bright: the cumulative count ``N(<m) ∝ 10^(0.3 m)``).
    """
    u = rng.uniform(0.0, 1.0, n)
    lo, hi = 10.0 ** (0.3 * bright), 10.0 ** (0.3 * faint)
    return np.log10(lo + u * (hi - lo)) / 0.3


def star_catalog(
    n_stars: int,
    *,
    rows: tuple[float, float],
    columns: tuple[float, float],
    seed: int = 0,
    n_transiting: int = 3,
    times: tuple[float, float] = (0.0, 1.0),
) -> pd.DataFrame:
    """Draw a star catalog uniformly over a pixel box.

    Magnitudes follow a rising power law between Tmag 6 and 16 (many faint, few bright stars).
    The brightest stars are guaranteed to include one at Tmag 5 so that saturation bleed appears.

    Parameters
    ----------
    n_stars : int
        Number of stars.
    rows, columns : (float, float)
        0-based pixel ranges ``[start, stop)`` where star centres may fall.
    seed : int, optional
        Random seed.
    n_transiting : int, optional
        Number of stars (among the bright half) with an injected box transit.
    times : (float, float), optional
        Time span (days) in which each transiting star has at least one transit.

    Returns
    -------
    pandas.DataFrame
        Columns ``row``, ``column`` (0-based pixel of the PSF centre), ``tmag``,
        ``flux`` (electron / s), ``period`` (days), ``t0`` (days), ``depth`` (fraction),
        ``duration`` (days); non-transiting stars have ``depth = 0`` and NaN period/t0/duration.
    """
    if n_stars < 0:
        raise InputError(f"n_stars={n_stars}: use 0 or more stars")
    rng = np.random.default_rng([seed, 0x57A5])
    row = rng.uniform(rows[0], rows[1], n_stars)
    col = rng.uniform(columns[0], columns[1], n_stars)
    tmag = draw_tmag(rng, n_stars)
    if n_stars:
        tmag[np.argmin(tmag)] = 5.0
    period = np.full(n_stars, np.nan)
    t0 = np.full(n_stars, np.nan)
    depth = np.zeros(n_stars)
    duration = np.full(n_stars, np.nan)
    bright = np.argsort(tmag)[1 : max(1, n_stars // 2)]
    chosen = rng.permutation(bright)[: min(n_transiting, len(bright))]
    span = max(times[1] - times[0], 1e-3)
    period[chosen] = rng.uniform(0.4, 1.0, len(chosen)) * span
    t0[chosen] = times[0] + rng.uniform(0.1, 0.5, len(chosen)) * span
    depth[chosen] = rng.uniform(0.01, 0.05, len(chosen))
    duration[chosen] = rng.uniform(0.05, 0.12, len(chosen)) * span
    return pd.DataFrame(
        {
            "row": row,
            "column": col,
            "tmag": tmag,
            "flux": tmag_to_flux(tmag),
            "period": period,
            "t0": t0,
            "depth": depth,
            "duration": duration,
        }
    )


def transit_factor(stars: pd.DataFrame, times: np.ndarray) -> np.ndarray:
    """Relative brightness ``(star, time)`` of the stars' injected signals.

    The columns of :func:`star_catalog` give a box transit (``1 - depth`` in transit, else 1);
    optional columns add the other signals of a vetting sector (absent or 0/NaN: none):

    * ``ingress``: ingress (= egress) time as a fraction of ``duration``, at most 0.5: the
      transit is a trapezoid (0.1: a planet's U-ish shape; 0.5: an eclipsing binary's V);
    * ``secondary_depth``: a second eclipse of that depth at phase 0.5 (same duration and shape);
    * ``var_amplitude``, ``var_period``, ``var_t0``, ``var_harmonic``: rotational (spotted) or
      pulsational variability, a factor ``1 - A (cos φ + h cos 2φ)`` with
      ``φ = 2π (t - var_t0) / var_period``, faintest at ``var_t0``.

    Parameters
    ----------
    stars : pandas.DataFrame
        ``depth`` (fraction), ``period``, ``t0`` and ``duration`` (days), and the optional
        columns above.
    times : numpy.ndarray
        Times (days, the system of ``t0``).

    Returns
    -------
    numpy.ndarray
        ``(star, time)`` float64, 1 where a star shows no signal.
    """
    times = np.atleast_1d(np.asarray(times, dtype=float))
    n = len(stars)

    def column(name: str) -> np.ndarray:
        values = stars[name].to_numpy(float) if name in stars else np.zeros(n)
        return np.nan_to_num(values)

    depth, secondary = column("depth"), column("secondary_depth")
    out = np.ones((n, len(times)))
    idx = np.flatnonzero((depth > 0) | (secondary > 0))
    if len(idx):
        p = stars["period"].to_numpy(float)[idx, None]
        t0 = stars["t0"].to_numpy(float)[idx, None]
        half = stars["duration"].to_numpy(float)[idx, None] / 2
        ramp = column("ingress")[idx, None] * 2 * half
        for shift, eclipse in ((0.0, depth[idx]), (0.5, secondary[idx])):
            phase = np.abs((times[None, :] - t0 - shift * p + 0.5 * p) % p - 0.5 * p)
            trapezoid = np.clip((half - phase) / np.where(ramp > 0, ramp, 1.0), 0.0, 1.0)
            shape = np.where(ramp > 0, trapezoid, phase <= half)
            out[idx] -= eclipse[:, None] * shape
    amplitude = column("var_amplitude")
    var = np.flatnonzero(amplitude > 0)
    if len(var):
        phi = (
            2
            * np.pi
            * (times[None, :] - stars["var_t0"].to_numpy(float)[var, None])
            / stars["var_period"].to_numpy(float)[var, None]
        )
        harmonic = column("var_harmonic")[var, None]
        out[var] *= 1.0 - amplitude[var, None] * (np.cos(phi) + harmonic * np.cos(2 * phi))
    return out


def psf_stamp(row: float, column: float, sigma: float, radius: int) -> tuple[int, int, np.ndarray]:
    """Pixel-integrated Gaussian PSF of unit flux centred at 0-based (row, column).

    Returns
    -------
    (int, int, numpy.ndarray)
        Row and column of the stamp's first pixel and the ``(2r+1, 2r+1)`` stamp.
    """
    r0 = int(np.round(row)) - radius
    c0 = int(np.round(column)) - radius
    # pixel k spans [k - 0.5, k + 0.5] (pixel centres at integers, as in astropy's origin=0)
    edges_r = np.arange(r0, r0 + 2 * radius + 2) - 0.5 - row
    edges_c = np.arange(c0, c0 + 2 * radius + 2) - 0.5 - column
    scale = sigma * np.sqrt(2.0)
    pr = np.diff(0.5 * erf(edges_r / scale))
    pc = np.diff(0.5 * erf(edges_c / scale))
    return r0, c0, np.outer(pr, pc)


def _add_stamp(image: np.ndarray, r0: int, c0: int, stamp: np.ndarray) -> None:
    n_rows, n_cols = image.shape
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + stamp.shape[0], n_rows), min(c0 + stamp.shape[1], n_cols)
    if rs < re and cs < ce:
        image[rs:re, cs:ce] += stamp[rs - r0 : re - r0, cs - c0 : ce - c0]


def render_stars(
    shape: tuple[int, int],
    stars: pd.DataFrame,
    *,
    sigma: float = 0.9,
    fluxes: np.ndarray | None = None,
) -> np.ndarray:
    """Image of ``stars`` with a Gaussian PSF.

    Parameters
    ----------
    shape : (int, int)
        Image shape.
    stars : pandas.DataFrame
        With ``row``, ``column``, ``flux`` (0-based pixel centres, electron / s).
    sigma : float, optional
        PSF sigma in pixels.
    fluxes : numpy.ndarray, optional
        Fluxes to use instead of ``stars["flux"]``.

    Returns
    -------
    numpy.ndarray
        float64 image in electron / s.
    """
    image = np.zeros(shape)
    flux = stars["flux"].to_numpy() if fluxes is None else np.asarray(fluxes)
    for r, c, f in zip(stars["row"].to_numpy(), stars["column"].to_numpy(), flux, strict=True):
        # wider stamps for bright stars so their wings are not truncated
        radius = int(np.clip(np.ceil(sigma * np.sqrt(2 * np.log(max(f, 1.0)))), 3, 12))
        r0, c0, stamp = psf_stamp(r, c, sigma, radius)
        _add_stamp(image, r0, c0, f * stamp)
    return image


def bleed_columns(image: np.ndarray, saturation: float) -> np.ndarray:
    """Spread charge above ``saturation`` up and down each column, as a saturated CCD does.

    The excess of every saturated pixel is moved to its column neighbours (alternating up and
    down) until every pixel is at or below ``saturation``; total charge is conserved where the
    column is long enough.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image (electron / s); not modified.
    saturation : float
        Full-well level in the image's units.

    Returns
    -------
    numpy.ndarray
        A new image with bleed trails.
    """
    out = image.copy()
    n_rows = out.shape[0]
    for col in np.flatnonzero((out > saturation).any(axis=0)):
        column = out[:, col]
        for row in np.flatnonzero(column > saturation):
            excess = column[row] - saturation
            if excess <= 0:
                continue
            column[row] = saturation
            step = 1
            while excess > 0 and step < n_rows:
                for target in (row - step, row + step):
                    if excess <= 0 or not 0 <= target < n_rows:
                        continue
                    room = saturation - column[target]
                    if room > 0:
                        moved = min(room, excess / 2 if target == row - step else excess)
                        column[target] += moved
                        excess -= moved
                step += 1
    return out
