"""Smooth TESS-like scattered-light background with straps.

The model is defined in normalised detector coordinates (``y = row / n_rows``,
``x = column / n_cols``) so that the same seed gives the same *look* at any image size, and it is
evaluated frame by frame from the frame time, so any subset of times or rows gives values identical
to the full evaluation.

Components (all in electron / s per pixel):

* a sky pedestal ``A0`` (zodiacal light), constant over the sector;
* a planar gradient whose amplitude follows the orbit: scattered Earth/Moon light rises as a
  Gaussian in orbital phase around perigee (the 13.7-day TESS orbit);
* a radial glow from one corner of the CCD (the side nearest the camera boresight), sharing the
  orbital modulation;
* straps: a few narrow column bands where the light reflected off the CCD straps raises the
  background by a few per cent (a multiplicative factor per column).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cloudlab.errors import InputError

__all__ = [
    "ORBIT_DAYS",
    "BackgroundParams",
    "background_params",
    "orbital_modulation",
    "scattered_light",
    "strap_profile",
]

ORBIT_DAYS = 13.7
"""Length of a TESS orbit in days (two orbits per sector)."""


@dataclass(frozen=True)
class BackgroundParams:
    """Parameters of one scattered-light realisation (drawn from a seed)."""

    pedestal: float
    gradient: tuple[float, float]
    glow_amplitude: float
    glow_corner: tuple[float, float]
    glow_scale: float
    perigee_phase: float
    perigee_width: float
    perigee_boost: float
    strap_centres: tuple[float, ...]
    strap_widths: tuple[float, ...]
    strap_gains: tuple[float, ...]


def background_params(seed: int) -> BackgroundParams:
    """Draw the scattered-light parameters for ``seed``.

    Parameters
    ----------
    seed : int
        Seed of the realisation.

    Returns
    -------
    BackgroundParams
    """
    rng = np.random.default_rng([seed, 0xB6])
    n_straps = int(rng.integers(4, 9))
    centres = np.sort(rng.uniform(0.05, 0.95, n_straps))
    return BackgroundParams(
        pedestal=float(rng.uniform(20.0, 60.0)),
        gradient=(float(rng.uniform(-15.0, 15.0)), float(rng.uniform(-15.0, 15.0))),
        glow_amplitude=float(rng.uniform(30.0, 120.0)),
        glow_corner=(float(rng.integers(0, 2)), float(rng.integers(0, 2))),
        glow_scale=float(rng.uniform(0.25, 0.6)),
        perigee_phase=float(rng.uniform(0.0, 1.0)),
        perigee_width=float(rng.uniform(0.04, 0.1)),
        perigee_boost=float(rng.uniform(2.0, 6.0)),
        strap_centres=tuple(float(c) for c in centres),
        strap_widths=tuple(float(w) for w in rng.uniform(0.002, 0.006, n_straps)),
        strap_gains=tuple(float(g) for g in rng.uniform(0.02, 0.08, n_straps)),
    )


def orbital_modulation(times: np.ndarray, params: BackgroundParams) -> np.ndarray:
    """Multiplier of the scattered light at ``times`` (days): 1 far from perigee.

    Parameters
    ----------
    times : array_like
        Frame times in days (BTJD).
    params : BackgroundParams

    Returns
    -------
    numpy.ndarray
        One factor per time, ``1 + boost * exp(-dphase² / 2w²)``.
    """
    phase = np.mod(np.asarray(times, dtype=float) / ORBIT_DAYS, 1.0)
    dphase = (phase - params.perigee_phase + 0.5) % 1.0 - 0.5
    return 1.0 + params.perigee_boost * np.exp(-0.5 * (dphase / params.perigee_width) ** 2)


def strap_profile(n_cols: int, params: BackgroundParams) -> np.ndarray:
    """Multiplicative strap factor per column (1 outside the straps).

    Parameters
    ----------
    n_cols : int
        Number of image columns.
    params : BackgroundParams

    Returns
    -------
    numpy.ndarray
        ``(n_cols,)`` factors ≥ 1.
    """
    x = (np.arange(n_cols) + 0.5) / n_cols
    factor = np.ones(n_cols)
    for centre, width, gain in zip(
        params.strap_centres, params.strap_widths, params.strap_gains, strict=True
    ):
        half = max(width / 2, 0.5 / n_cols)
        factor += gain * (np.abs(x - centre) <= half)
    return factor


def scattered_light(
    shape: tuple[int, int],
    times: np.ndarray,
    *,
    seed: int = 0,
    rows: slice | None = None,
    within: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> np.ndarray:
    """Scattered-light background for frames at ``times``.

    Parameters
    ----------
    shape : (int, int)
        Image shape ``(n_rows, n_cols)``.
    times : array_like
        Frame times in days (BTJD); one frame per time.
    seed : int, optional
        Seed of the realisation (same seed, same background).
    rows : slice, optional
        Evaluate only these rows (``step`` must be 1); the values equal the corresponding rows of
        the full evaluation.
    within : ((int, int), (int, int)), optional
        ``(full_shape, offset)``: the image is a window of a larger image of ``full_shape``
        whose pixel ``offset`` (row, column) is this image's first pixel; the values are the
        larger image's there, so the structure keeps the larger image's scale (a small window
        of a whole CCD sees a nearly flat background). Default: the image itself.

    Returns
    -------
    numpy.ndarray
        float32 array ``(time, row, column)`` in electron / s per pixel.
    """
    n_rows, n_cols = (int(s) for s in shape)
    if n_rows <= 0 or n_cols <= 0:
        raise InputError(f"scattered_light: shape={shape}; give positive (rows, columns)")
    (full_rows, full_cols), (off_r, off_c) = within or ((n_rows, n_cols), (0, 0))
    if not (0 <= off_r <= full_rows - n_rows and 0 <= off_c <= full_cols - n_cols):
        raise InputError(
            f"scattered_light: a {shape} window at {(off_r, off_c)} does not fit in "
            f"{(full_rows, full_cols)}; give within=(full_shape, offset) that contains it"
        )
    row_idx = np.arange(n_rows)[rows if rows is not None else slice(None)]
    params = background_params(seed)
    y = ((off_r + row_idx + 0.5) / full_rows)[:, None]
    x = ((off_c + np.arange(n_cols) + 0.5) / full_cols)[None, :]
    cy, cx = params.glow_corner
    glow = params.glow_amplitude * np.exp(-np.hypot(y - cy, x - cx) / params.glow_scale)
    ramp = params.gradient[0] * (y - 0.5) + params.gradient[1] * (x - 0.5)
    straps = strap_profile(full_cols, params)[None, off_c : off_c + n_cols]
    varying = ((glow + ramp + np.abs(params.gradient).sum()) * straps).astype(np.float32)
    pedestal = np.float32(params.pedestal)
    mod = orbital_modulation(np.atleast_1d(times), params).astype(np.float32)
    return pedestal + mod[:, None, None] * varying[None, :, :]
