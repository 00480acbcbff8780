"""TESS detector facts: full-frame geometry, the science region and the quality-flag bits.

A SPOC calibrated full-frame image (FFI) of one CCD is 2078 rows × 2136 columns. Columns
0–43 and 2092–2135 (0-based) are collateral (serial-register and virtual columns), rows
2048–2077 are buffer, smear and virtual rows (10 each); the science region is the 2048 × 2048
block rows 0–2047, columns 44–2091. SPOC headers give the science region 1-based and inclusive
(``SCIROWS``/``SCIROWE``, ``SCCSA``/``SCCED``); TPFs give their corner 1-based (``1CRV5P``,
``2CRV5P``). Every module that needs one of these numbers takes it from here.

Quality bits are those of the SPOC ``QUALITY``/``DQUALITY`` flags (TESS Science Data Products
Description, table 28).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "BAD_QUALITY_BITS",
    "BUFFER_ROWS",
    "COLLATERAL_ROWS",
    "FULL_SHAPE",
    "LEADING_COLUMNS",
    "QUALITY_ATTITUDE_TWEAK",
    "QUALITY_COARSE_POINT",
    "QUALITY_DESAT",
    "QUALITY_EARTH_POINT",
    "QUALITY_MANUAL_EXCLUDE",
    "QUALITY_SAFE_MODE",
    "QUALITY_STRAYLIGHT",
    "SCCED",
    "SCCSA",
    "SCIENCE_COLUMN_START",
    "SCIENCE_COLUMN_STOP",
    "SCIENCE_KEYWORDS",
    "SCIENCE_ROW_START",
    "SCIENCE_ROW_STOP",
    "SCIENCE_SIZE",
    "SCIROWE",
    "SCIROWS",
    "SMEAR_ROWS",
    "TRAILING_COLUMNS",
    "VIRTUAL_ROWS",
    "ccd_to_science",
    "science_to_ccd",
]

FULL_SHAPE = (2078, 2136)
"""Rows × columns of a SPOC calibrated FFI of one CCD."""
SCIENCE_SIZE = 2048
"""Side of the square science region, pixels."""
LEADING_COLUMNS = 44
"""Collateral columns before the science region (serial-register columns)."""
TRAILING_COLUMNS = 44
"""Collateral columns after the science region (virtual columns)."""
BUFFER_ROWS = 10
"""Buffer rows just above the science region."""
SMEAR_ROWS = 10
"""Smear rows above the buffer rows."""
VIRTUAL_ROWS = 10
"""Virtual rows at the top of the frame."""
COLLATERAL_ROWS = BUFFER_ROWS + SMEAR_ROWS + VIRTUAL_ROWS
"""Rows above the science region (30)."""

SCIENCE_ROW_START = 0
"""0-based first science row of a full frame."""
SCIENCE_ROW_STOP = SCIENCE_ROW_START + SCIENCE_SIZE
"""0-based end (exclusive) of the science rows (2048)."""
SCIENCE_COLUMN_START = LEADING_COLUMNS
"""0-based first science column of a full frame (44)."""
SCIENCE_COLUMN_STOP = SCIENCE_COLUMN_START + SCIENCE_SIZE
"""0-based end (exclusive) of the science columns (2092)."""

SCIROWS = SCIENCE_ROW_START + 1
"""1-based first science row (header keyword ``SCIROWS``)."""
SCIROWE = SCIENCE_ROW_STOP
"""1-based last science row, inclusive (header keyword ``SCIROWE``)."""
SCCSA = SCIENCE_COLUMN_START + 1
"""1-based first science column (header keyword ``SCCSA``, 45)."""
SCCED = SCIENCE_COLUMN_STOP
"""1-based last science column, inclusive (header keyword ``SCCED``, 2092)."""
SCIENCE_KEYWORDS = {"SCIROWS": SCIROWS, "SCIROWE": SCIROWE, "SCCSA": SCCSA, "SCCED": SCCED}
"""The science-region keywords of a full frame, as SPOC writes them."""

QUALITY_ATTITUDE_TWEAK = 1
QUALITY_SAFE_MODE = 2
QUALITY_COARSE_POINT = 4
QUALITY_EARTH_POINT = 8
QUALITY_DESAT = 32
"""Reaction-wheel desaturation (momentum dump)."""
QUALITY_MANUAL_EXCLUDE = 128
QUALITY_STRAYLIGHT = 2048
"""Scattered light from the Earth or Moon in the camera's field."""

BAD_QUALITY_BITS = (
    QUALITY_ATTITUDE_TWEAK
    | QUALITY_SAFE_MODE
    | QUALITY_COARSE_POINT
    | QUALITY_EARTH_POINT
    | QUALITY_DESAT
    | QUALITY_MANUAL_EXCLUDE
    | QUALITY_STRAYLIGHT
)
"""Frames with any of these bits are left out of background fits (tess-backdrop's rule, 2223)."""


def ccd_to_science(ccd_row: Any, ccd_column: Any) -> tuple[np.ndarray, np.ndarray]:
    """Convert 1-based CCD pixel coordinates (a TPF's ``2CRV5P``/``1CRV5P``) to science pixels.

    Parameters
    ----------
    ccd_row, ccd_column : array-like
        1-based CCD row and column.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        0-based science row and column.
    """
    return np.asarray(ccd_row) - SCIROWS, np.asarray(ccd_column) - SCCSA


def science_to_ccd(row: Any, column: Any) -> tuple[np.ndarray, np.ndarray]:
    """Convert 0-based science pixels to 1-based CCD pixel coordinates.

    Parameters
    ----------
    row, column : array-like
        0-based science row and column.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        1-based CCD row and column.
    """
    return np.asarray(row) + SCIROWS, np.asarray(column) + SCCSA
