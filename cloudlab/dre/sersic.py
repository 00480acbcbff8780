"""Elliptical Sérsic profiles rendered on pixel stamps: the shape of every DRE model.

:func:`sersic_stamp` draws a unit-flux profile; :func:`cloudlab.dre.model_grid` tiles it over a
grid of (index, axis ratio, angle, log radius), and :mod:`cloudlab.simulate.galaxies` draws
synthetic galaxies with it, so a simulated galaxy on a grid cell is exactly that cell's model.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaincinv

from cloudlab.errors import InputError

__all__ = ["sersic_bn", "sersic_profile", "sersic_stamp"]

#: Sub-pixel sampling used in the central part of a stamp, where the profile is steep.
_OVERSAMPLE = 7
#: Half-width (pixels) of the centrally oversampled region.
_CORE = 4


def sersic_bn(index: float) -> float:
    """Return the Sérsic ``b_n`` that makes ``R_e`` the half-light radius.

    Parameters
    ----------
    index : float
        Sérsic index ``n`` (> 0).

    Returns
    -------
    float
        ``b_n`` solving ``γ(2n, b_n) = Γ(2n) / 2``.
    """
    if not index > 0:
        raise InputError(f"sersic_bn: the Sérsic index must be > 0, got {index!r}")
    return float(gammaincinv(2.0 * index, 0.5))


def sersic_profile(
    dx: np.ndarray, dy: np.ndarray, index: float, ax_ratio: float, angle: float, radius: float
) -> np.ndarray:
    """Evaluate an elliptical Sérsic profile, normalised to 1 at the effective radius.

    Parameters
    ----------
    dx, dy : numpy.ndarray
        Offsets from the centre along columns (+x) and rows (+y), pixels.
    index : float
        Sérsic index ``n`` (> 0).
    ax_ratio : float
        Axis ratio ``b/a`` in (0, 1].
    angle : float
        Position angle of the major axis in degrees, counter-clockwise from +x towards +y.
    radius : float
        Effective (half-light) radius along the major axis, pixels.

    Returns
    -------
    numpy.ndarray
        ``exp(-b_n ((r / R_e)^(1/n) - 1))`` at each offset, with ``r`` the elliptical radius.
    """
    theta = np.deg2rad(angle)
    cos, sin = np.cos(theta), np.sin(theta)
    major = dx * cos + dy * sin
    minor = -dx * sin + dy * cos
    r = np.sqrt(major**2 + (minor / ax_ratio) ** 2)
    return np.exp(-sersic_bn(index) * ((r / radius) ** (1.0 / index) - 1.0))


def sersic_stamp(
    index: float,
    ax_ratio: float,
    angle: float,
    log_r: float,
    size: int = 128,
    center: tuple[float, float] | None = None,
) -> np.ndarray:
    """Render a unit-flux elliptical Sérsic profile on a square stamp.

    Parameters
    ----------
    index : float
        Sérsic index ``n`` (4 is de Vaucouleurs).
    ax_ratio : float
        Axis ratio ``b/a`` in (0, 1].
    angle : float
        Position angle of the major axis in degrees, counter-clockwise from +x (columns)
        towards +y (increasing row index), as SExtractor's ``THETA_IMAGE``.
    log_r : float
        log10 of the effective (half-light) radius along the major axis, in pixels.
    size : int
        Stamp side in pixels.
    center : (float, float), optional
        ``(row, column)`` of the profile centre in 0-based pixel coordinates; defaults to
        ``(size // 2, size // 2)``, where an integer catalogue position lands in a DRE cut.

    Returns
    -------
    numpy.ndarray
        float64 array ``(size, size)`` whose pixels sum to 1. The central ``2*4+1`` pixels are
        integrated with 7×7 sub-pixels, the rest sampled at pixel centres.

    Raises
    ------
    InputError
        If ``index`` is not positive, ``ax_ratio`` is outside (0, 1] or ``size`` is below 9.
    """
    if not 0 < ax_ratio <= 1:
        raise InputError(f"sersic_stamp: ax_ratio must be in (0, 1], got {ax_ratio!r}")
    if size < 2 * _CORE + 1:
        raise InputError(f"sersic_stamp: size must be at least {2 * _CORE + 1}, got {size!r}")
    cy, cx = (size // 2, size // 2) if center is None else center
    radius = 10.0**log_r
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    image = sersic_profile(cols - cx, rows - cy, index, ax_ratio, angle, radius)
    # integrate the steep core with sub-pixels
    r0, c0 = int(round(cy)), int(round(cx))
    rs = slice(max(r0 - _CORE, 0), min(r0 + _CORE + 1, size))
    cs = slice(max(c0 - _CORE, 0), min(c0 + _CORE + 1, size))
    sub = (np.arange(_OVERSAMPLE) + 0.5) / _OVERSAMPLE - 0.5
    core_r = rows[rs, cs][..., None, None] + sub[:, None]
    core_c = cols[rs, cs][..., None, None] + sub[None, :]
    core = sersic_profile(core_c - cx, core_r - cy, index, ax_ratio, angle, radius)
    image[rs, cs] = core.mean(axis=(-2, -1))
    return image / image.sum()
