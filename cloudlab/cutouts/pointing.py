"""tess-point's focal-plane model, vectorised over targets.

tess-point (``tess_stars2px``) maps sky positions to (camera, CCD, pixel) with one Python loop
iteration per target and camera. This module evaluates the same geometry (the spacecraft pointing
of the sector, the per-camera Euler rotations, the radial optical distortion polynomial, the
per-CCD offsets and rotations of Al Levine's focal-plane geometry) with numpy over all targets at
once. Pointing and geometry parameters are read from the installed tess-point package, so new
sectors arrive with tess-point upgrades. Velocity aberration is ignored, as tess-point does by
default.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from cloudlab.errors import InputError, MissingDependencyError
from cloudlab.tess_detector import SCCED, SCCSA, SCIROWE, SCIROWS

__all__ = [
    "FOV_HALF_DEG",
    "SectorGeometry",
    "known_sectors",
    "radec_to_pixel",
    "sector_geometry",
]

FOV_HALF_DEG = 12.5


@dataclass(frozen=True)
class SectorGeometry:
    """Rotation matrices and focal-plane parameters of one sector (all four cameras)."""

    sector: int
    rmat: np.ndarray  # (4, 3, 3) sky → camera
    optcon: np.ndarray  # (4, 6)
    asymang: np.ndarray  # (4,)
    asymfac: np.ndarray  # (4,)
    ccdxy0: np.ndarray  # (4, 4, 2)
    pixsz: np.ndarray  # (4, 4, 2)
    ccdang: np.ndarray  # (4, 4)


def known_sectors() -> np.ndarray:
    """Sector numbers tess-point has pointings for."""
    import tess_stars2px

    sectors = np.asarray(tess_stars2px.TESS_Spacecraft_Pointing_Data.sectors)
    return sectors[sectors < 1000]


@functools.lru_cache(maxsize=32)
def sector_geometry(sector: int) -> SectorGeometry:
    """Load the pointing and focal-plane geometry of ``sector`` from tess-point.

    Raises
    ------
    InputError
        Unknown sector.
    """
    try:
        import tess_stars2px
    except ImportError as exc:  # pragma: no cover - tess-point is a dependency
        raise MissingDependencyError("the offline pointing model needs tess-point") from exc
    sector = int(sector)
    if sector not in known_sectors():
        raise InputError(
            f"unknown TESS sector {sector}: tess-point {tess_stars2px.max_sector} knows sectors "
            f"1–{tess_stars2px.max_sector}"
        )
    scinfo = tess_stars2px.TESS_Spacecraft_Pointing_Data(trySector=sector)
    fpg = scinfo.fpgObjs[0]
    return SectorGeometry(
        sector=sector,
        rmat=np.array(fpg.rmat4, dtype=float),
        optcon=np.array(fpg.optcon, dtype=float),
        asymang=np.array(fpg.asymang, dtype=float),
        asymfac=np.array(fpg.asymfac, dtype=float),
        ccdxy0=np.array(fpg.ccdxy0, dtype=float),
        pixsz=np.array(fpg.pixsz, dtype=float),
        ccdang=np.array(fpg.ccdang, dtype=float),
    )


def _rotate(angle_deg, x, y):
    ca, sa = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    return ca * x + sa * y, -sa * x + ca * y


def radec_to_pixel(
    ra: np.ndarray, dec: np.ndarray, sector: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Camera, CCD and SPOC FFI pixel of sky positions in ``sector`` (vectorised tess-point).

    Parameters
    ----------
    ra, dec : array_like
        ICRS degrees.
    sector : int

    Returns
    -------
    camera, ccd : numpy.ndarray of int
        1–4, or 0 where the target is not on a science pixel of any CCD.
    column, row : numpy.ndarray of float
        0-based FFI pixel coordinates (collateral columns included, so science columns are
        44–2091 and rows 0–2047); NaN where ``camera == 0``. tess-point's 1-based values are
        these plus one.
    """
    geo = sector_geometry(sector)
    ra = np.atleast_1d(np.asarray(ra, dtype=float))
    dec = np.atleast_1d(np.asarray(dec, dtype=float))
    n = ra.size
    r, d = np.radians(ra), np.radians(dec)
    vec = np.stack([np.cos(r) * np.cos(d), np.sin(r) * np.cos(d), np.sin(d)], axis=0)
    camera = np.zeros(n, dtype=np.int64)
    ccd = np.zeros(n, dtype=np.int64)
    col = np.full(n, np.nan)
    row = np.full(n, np.nan)
    tan_fov = np.tan(np.radians(FOV_HALF_DEG))
    for icam in range(4):
        todo = camera == 0
        if not todo.any():
            break
        cv = geo.rmat[icam] @ vec[:, todo]
        norm = np.sqrt((cv * cv).sum(axis=0))
        lat = np.degrees(np.arcsin(np.clip(cv[2] / norm, -1.0, 1.0)))
        with np.errstate(divide="ignore", invalid="ignore"):
            in_fov = (
                (lat > 70.0)
                & (np.abs(cv[0] / cv[2]) <= tan_fov)
                & (np.abs(cv[1] / cv[2]) <= tan_fov)
            )
        if not in_fov.any():
            continue
        idx = np.flatnonzero(todo)[in_fov]
        cv = cv[:, in_fov]
        lng = np.mod(np.arctan2(cv[1], cv[0]), 2 * np.pi)
        theta = np.pi / 2 - np.radians(lat[in_fov])
        tanth = np.tan(theta)
        oc = geo.optcon[icam]
        rfp = sum(oc[i] * tanth ** (2.0 * (i - 1)) for i in range(1, len(oc)))
        rr = oc[0] * tanth * rfp
        x, y = -np.cos(lng) * rr, -np.sin(lng) * rr
        # azimuthal asymmetry
        xp, yp = _rotate(geo.asymang[icam], x, y)
        x, y = _rotate(-geo.asymang[icam], geo.asymfac[icam] * xp, yp)
        # quadrant → CCD index: (+,+) 0, (-,+) 1, (-,-) 2, (+,-) 3
        iccd = np.where(x >= 0, np.where(y >= 0, 0, 3), np.where(y >= 0, 1, 2))
        x0, y0 = geo.ccdxy0[icam, iccd, 0], geo.ccdxy0[icam, iccd, 1]
        xc, yc = _rotate(geo.ccdang[icam, iccd], x - x0, y - y0)
        # 1-based pixel coordinates and tess-point's on-silicon test
        px = xc / geo.pixsz[icam, iccd, 0] - 0.5 + SCCSA
        py = yc / geo.pixsz[icam, iccd, 1] - 0.5 + SCIROWS
        ok = (px > SCCSA - 1) & (px < SCCED + 1) & (py > SCIROWS - 1) & (py < SCIROWE + 1)
        hit = idx[ok]
        camera[hit] = icam + 1
        ccd[hit] = iccd[ok] + 1
        col[hit] = px[ok] - 1.0
        row[hit] = py[ok] - 1.0
    return camera, ccd, col, row
