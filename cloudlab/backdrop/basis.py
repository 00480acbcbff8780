"""Basis functions of the BackDrop model (tess-backdrop's parameterisation).

All coordinates are 0-based science pixels: science row ``r`` (0..2047) and science column
``c`` (0..2047, i.e. image column ``c + 44``).
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import BSpline

from cloudlab.errors import InputError
from cloudlab.tess_detector import SCIENCE_SIZE

__all__ = [
    "boresight",
    "knots",
    "poly_axes",
    "poly_design",
    "poly_grid",
    "radius",
    "spline_basis",
]


def boresight(ccd: int) -> tuple[float, float]:
    """Science ``(row, column)`` of the camera boresight, the corner where the four CCDs meet.

    Parameters
    ----------
    ccd : int
        CCD number 1..4.

    Returns
    -------
    tuple of float
        ``(2048, 2048)`` for CCDs 1 and 3, ``(2048, 0)`` for CCDs 2 and 4.
    """
    if ccd in (1, 3):
        return (float(SCIENCE_SIZE), float(SCIENCE_SIZE))
    if ccd in (2, 4):
        return (float(SCIENCE_SIZE), 0.0)
    raise InputError(f"ccd must be 1, 2, 3 or 4, got {ccd!r}")


def knots(coords: np.ndarray, nknots: int, degree: int) -> np.ndarray:
    """tess-backdrop's knot vector for pixel coordinates ``coords``.

    The sorted coordinates are split into ``nknots - degree`` near-equal chunks; each interior knot
    sits halfway between neighbouring chunks. ``min`` is repeated ``degree`` times at the start and
    ``max`` ``degree + 1`` times at the end (42 knots for 2048 pixels, 40 knots, degree 2).

    Parameters
    ----------
    coords : numpy.ndarray
        1-D pixel coordinates along one axis.
    nknots : int
        Number of basis functions along the axis.
    degree : int
        Spline degree.

    Returns
    -------
    numpy.ndarray
        Knot vector of length ``nknots + 2`` (float64).
    """
    x = np.sort(np.asarray(coords, dtype=float))
    if nknots <= degree + 1:
        raise InputError(f"nknots must exceed degree + 1 = {degree + 1}, got {nknots}")
    if len(x) < nknots - degree:
        raise InputError(f"{len(x)} pixels cannot carry {nknots} spline knots")
    chunks = np.array_split(x, nknots - degree)
    interior = [(a[-1] + b[0]) / 2 for a, b in zip(chunks[:-1], chunks[1:], strict=True)]
    return np.array([x[0]] * degree + interior + [x[-1]] * (degree + 1), dtype=float)


def spline_basis(x: np.ndarray, knot_vector: np.ndarray, degree: int) -> np.ndarray:
    """Clamped B-spline basis on tess-backdrop's knot vector.

    Parameters
    ----------
    x : numpy.ndarray
        1-D coordinates inside ``[knot_vector[0], knot_vector[-1]]``.
    knot_vector : numpy.ndarray
        Knots as returned by :func:`knots`.
    degree : int
        Spline degree.

    Returns
    -------
    numpy.ndarray
        ``(len(x), len(knot_vector) - 2)`` dense basis (float64).
    """
    x = np.asarray(x, dtype=float)
    lo, hi = float(knot_vector[0]), float(knot_vector[-1])
    if x.size and (x.min() < lo or x.max() > hi):
        raise InputError(
            f"coordinates {x.min():g}..{x.max():g} lie outside the fitted range {lo:g}..{hi:g}"
        )
    t = np.concatenate([[lo], knot_vector])
    xc = np.minimum(x, np.nextafter(hi, -np.inf))
    return BSpline.design_matrix(xc, t, degree).toarray()


def poly_axes(rows: np.ndarray, columns: np.ndarray, npoly: int) -> tuple[np.ndarray, np.ndarray]:
    """Vandermonde factors of the separable 2-D polynomial.

    Term ``i * npoly + j`` is ``x**i * y**j`` with ``x = c/2048 - 0.5`` (column) and
    ``y = r/2048 - 0.5`` (row).

    Returns
    -------
    vr, vc : numpy.ndarray
        ``(len(rows), npoly)`` powers of ``y`` and ``(len(columns), npoly)`` powers of ``x``.
    """
    y = np.asarray(rows, float) / SCIENCE_SIZE - 0.5
    x = np.asarray(columns, float) / SCIENCE_SIZE - 0.5
    return y[:, None] ** np.arange(npoly), x[:, None] ** np.arange(npoly)


def radius(rows: np.ndarray, columns: np.ndarray, ccd: int) -> np.ndarray:
    """Normalised distance ``rho`` of every pixel of the grid from the camera boresight.

    Returns
    -------
    numpy.ndarray
        ``(len(rows), len(columns))`` array, ``hypot(dr, dc) / 2048`` (float64).
    """
    bore_row, bore_col = boresight(ccd)
    dr = (np.asarray(rows, float) - bore_row) / SCIENCE_SIZE
    dc = (np.asarray(columns, float) - bore_col) / SCIENCE_SIZE
    return np.hypot(dr[:, None], dc[None, :])


def poly_design(
    rows: np.ndarray, columns: np.ndarray, npoly: int, nrad: int, ccd: int
) -> np.ndarray:
    """Dense polynomial + radial design matrix at the pixels ``(rows[k], columns[k])``.

    Parameters
    ----------
    rows, columns : numpy.ndarray
        1-D arrays of equal length: the pixel list.
    npoly, nrad : int
        Polynomial order (``npoly**2`` terms) and radial order (``nrad - 1`` terms).
    ccd : int
        CCD number (boresight position).

    Returns
    -------
    numpy.ndarray
        ``(len(rows), npoly**2 + nrad - 1)`` design matrix.
    """
    rows = np.asarray(rows, float)
    columns = np.asarray(columns, float)
    y = rows / SCIENCE_SIZE - 0.5
    x = columns / SCIENCE_SIZE - 0.5
    terms = [x**i * y**j for i in range(npoly) for j in range(npoly)]
    bore_row, bore_col = boresight(ccd)
    rho = np.hypot((rows - bore_row) / SCIENCE_SIZE, (columns - bore_col) / SCIENCE_SIZE)
    terms += [rho**k for k in range(1, nrad)]
    return np.column_stack(terms)


def poly_grid(
    w: np.ndarray, rows: np.ndarray, columns: np.ndarray, npoly: int, nrad: int, ccd: int
) -> np.ndarray:
    """Evaluate polynomial + radial weights on the grid ``rows x columns`` for many frames.

    Parameters
    ----------
    w : numpy.ndarray
        ``(ntime, npoly**2 + nrad - 1)`` weights.
    rows, columns : numpy.ndarray
        1-D science coordinates.

    Returns
    -------
    numpy.ndarray
        ``(ntime, len(rows), len(columns))`` model.
    """
    w = np.atleast_2d(np.asarray(w, float))
    vr, vc = poly_axes(rows, columns, npoly)
    coef = w[:, : npoly * npoly].reshape(-1, npoly, npoly)  # [t, i (column power), j (row power)]
    out = np.einsum("rj,tij,ci->trc", vr, coef, vc, optimize=True)
    rho = radius(rows, columns, ccd)
    power = np.ones_like(rho)
    term = np.empty_like(rho)  # one image of scratch, whatever the number of frames
    for k in range(1, nrad):
        np.multiply(power, rho, out=power)
        for t in range(len(w)):
            np.multiply(w[t, npoly * npoly + k - 1], power, out=term)
            out[t] += term
    return out
