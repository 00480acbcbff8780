"""Sparse FITS files: real headers, data units left as holes (full-size inputs at no cost)."""

from __future__ import annotations

import os

import numpy as np
from astropy.io import fits

__all__ = ["sparse_fits"]


def _data_bytes(header: fits.Header) -> int:
    """Bytes of the (padded) data unit that follows ``header``."""
    bitpix = abs(int(header["BITPIX"]))
    n = int(np.prod([int(header[f"NAXIS{i}"]) for i in range(1, int(header["NAXIS"]) + 1)]))
    n = n if int(header["NAXIS"]) else 0
    size = bitpix // 8 * int(header.get("GCOUNT", 1)) * (int(header.get("PCOUNT", 0)) + n)
    return -(-size // 2880) * 2880


def sparse_fits(path: str | os.PathLike, headers: list[fits.Header]) -> None:
    """Write ``headers`` as a FITS file whose data units are holes (nothing written).

    Parameters
    ----------
    path : str or os.PathLike
        Local file to write (a sparse file on file systems that support them).
    headers : list of astropy.io.fits.Header
        One per HDU, in order.
    """
    with open(path, "wb") as f:
        for header in headers:
            f.write(header.tostring().encode("ascii"))
            f.seek(_data_bytes(header), 1)
        f.truncate()
