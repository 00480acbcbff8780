"""Solar geometry for registering AIA frames, vectorised in numpy (no astropy Quantities).

The maths follow sunpy's frames: helioprojective (HPC) coordinates of an observer become a point
on the sphere of radius ``rsun`` (the nearest intersection of the line of sight, as sunpy's
``Helioprojective.make_3d``), then Stonyhurst heliographic (HGS) longitude and latitude through
the heliocentric-Cartesian (HCC) frame of Thompson (2006). Differential rotation changes the HGS
longitude by the sidereal rate of sunpy's ``differential_rotation`` models; the change of the HGS
axes between two observation times (Earth's motion) is a rotation about the solar pole given in
radians by the caller (see :func:`cloudlab.timelag.register.hgs_axis_drift`).

All angles are radians and distances metres unless a name says otherwise.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "ROTATION_MODELS",
    "Observer",
    "hgs_to_hpc",
    "hpc_to_hgs",
    "rotation_rate",
    "rotate_hpc",
]

#: sidereal rotation-rate coefficients A, B, C (rad/s) of ``A + B sin^2(lat) + C sin^4(lat)``,
#: as in sunpy.sun.models.differential_rotation
ROTATION_MODELS = {
    "howard": (2.894e-6, -0.428e-6, -0.370e-6),
    "snodgrass": (2.851e-6, -0.343e-6, -0.474e-6),
    "allen": tuple(np.deg2rad([14.44, -3.0, 0.0]) / 86400.0),
    "rigid": (np.deg2rad(14.1844) / 86400.0, 0.0, 0.0),
}


class Observer(NamedTuple):
    """An observer in Stonyhurst heliographic coordinates: ``lon``, ``lat`` (rad), ``dist`` (m)."""

    lon: float
    lat: float
    dist: float


def rotation_rate(lat: np.ndarray, model: str = "howard") -> np.ndarray:
    """Sidereal rotation rate (rad/s) at heliographic latitude ``lat`` (rad)."""
    a, b, c = ROTATION_MODELS[model]
    s2 = np.sin(lat) ** 2
    return a + b * s2 + c * s2 * s2


def hpc_to_hgs(
    tx: np.ndarray, ty: np.ndarray, observer: Observer, rsun: float
) -> tuple[np.ndarray, np.ndarray]:
    """Helioprojective ``(Tx, Ty)`` (rad) to HGS ``(lon, lat)`` (rad) on the sphere ``rsun``.

    Lines of sight that miss the sphere give NaN.
    """
    d = observer.dist
    cos_ty = np.cos(ty)
    along = d * cos_ty * np.cos(tx)
    with np.errstate(invalid="ignore"):
        rho = along - np.sqrt(along * along - (d * d - rsun * rsun))
    x = rho * cos_ty * np.sin(tx)
    y = rho * np.sin(ty)
    z = d - rho * cos_ty * np.cos(tx)
    sin_b, cos_b = np.sin(observer.lat), np.cos(observer.lat)
    lat = np.arcsin(np.clip((y * cos_b + z * sin_b) / rsun, -1.0, 1.0))
    lon = observer.lon + np.arctan2(x, z * cos_b - y * sin_b)
    return lon, np.where(np.isfinite(rho), lat, np.nan)


def hgs_to_hpc(
    lon: np.ndarray, lat: np.ndarray, observer: Observer, rsun: float
) -> tuple[np.ndarray, np.ndarray]:
    """HGS ``(lon, lat)`` (rad) on the sphere ``rsun`` to helioprojective ``(Tx, Ty)`` (rad).

    Points on the far side of the Sun (hidden from the observer) give NaN.
    """
    sin_b, cos_b = np.sin(observer.lat), np.cos(observer.lat)
    dlon = lon - observer.lon
    x = rsun * np.cos(lat) * np.sin(dlon)
    y = rsun * (np.sin(lat) * cos_b - np.cos(lat) * np.cos(dlon) * sin_b)
    z = rsun * (np.sin(lat) * sin_b + np.cos(lat) * np.cos(dlon) * cos_b)
    depth = observer.dist - z
    tx = np.arctan2(x, depth)
    ty = np.arcsin(y / np.sqrt(x * x + y * y + depth * depth))
    hidden = z * observer.dist < rsun * rsun  # behind the limb seen from the observer
    return np.where(hidden, np.nan, tx), np.where(hidden, np.nan, ty)


def rotate_hpc(
    tx: np.ndarray,
    ty: np.ndarray,
    *,
    source: Observer,
    target: Observer,
    duration_s: float,
    axis_drift: float,
    rsun: float,
    model: str = "howard",
) -> tuple[np.ndarray, np.ndarray]:
    """Move helioprojective points with the solar surface over ``duration_s`` seconds.

    As sunpy's ``propagate_with_solar_surface``: the point on the sphere seen by ``source`` is
    rotated in HGS longitude by the sidereal differential rotation over ``duration_s``, the HGS
    axes turn by ``axis_drift`` (rad, the change of HGS longitude of a fixed inertial direction
    between the two times), and the point is seen by ``target``.

    Returns
    -------
    tuple of numpy.ndarray
        ``(Tx, Ty)`` (rad) seen by ``target``; NaN off the disk of either observer.
    """
    lon, lat = hpc_to_hgs(tx, ty, source, rsun)
    lon = lon + rotation_rate(lat, model) * duration_s + axis_drift
    return hgs_to_hpc(lon, lat, target, rsun)
