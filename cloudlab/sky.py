"""Sky geometry shared by the simulators and the cutout writer."""

from __future__ import annotations

import numpy as np

__all__ = ["gnomonic"]


def gnomonic(ra, dec, ra0, dec0) -> tuple[np.ndarray, np.ndarray]:
    """Tangent-plane (gnomonic) coordinates of (ra, dec) about (ra0, dec0), as FITS TAN defines.

    Parameters
    ----------
    ra, dec : array_like
        Sky positions in degrees.
    ra0, dec0 : array_like
        Tangent point(s) in degrees (broadcast against ``ra``, ``dec``).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Standard coordinates ``xi``, ``eta`` in degrees.
    """
    ra, dec, ra0, dec0 = (np.radians(v) for v in (ra, dec, ra0, dec0))
    cosc = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    xi = np.cos(dec) * np.sin(ra - ra0) / cosc
    eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cosc
    return np.degrees(xi), np.degrees(eta)
