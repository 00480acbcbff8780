"""Real data in ``../shared/data`` read by more than one test module (tests skip when absent)."""

from __future__ import annotations

from pathlib import Path

REAL_FFI = (
    Path(__file__).parents[2]
    / "shared"
    / "data"
    / "tess"
    / "ffi"
    / "tess2018206192942-s0001-1-4-0120-s_ffic.fits"
)
"""A real SPOC FFI (sector 1, camera 1, CCD 4) trimmed to 128 rows."""
