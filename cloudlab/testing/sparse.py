"""Sparse FITS files: real headers, data units left as holes (full-size inputs at no cost)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from astropy.io import fits

from cloudlab.errors import InputError

__all__ = ["sparse_fits", "sparse_series"]


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


def sparse_series(
    paths: Sequence[str | os.PathLike],
    headers: list[fits.Header],
    changes: Sequence[Mapping[tuple[int, str], object]],
) -> None:
    """Write many sparse FITS files that differ only in the values of a few cards.

    The headers are rendered once; each file gets that text with its own cards put in place
    (a card image of 80 characters each), so thousands of full-size frames take seconds.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        Local files to write, one per item of ``changes``.
    headers : list of astropy.io.fits.Header
        The template, one header per HDU; every key that ``changes`` names must be in it.
    changes : sequence of mapping
        Per file, ``{(hdu index, key): value}``: the cards to set in that file (the template's
        comments are kept).

    Raises
    ------
    KeyError
        A key the template lacks.
    InputError
        A value whose card would not fit in 80 characters.
    """
    blocks = [header.tostring().encode("ascii") for header in headers]
    sizes = [_data_bytes(header) for header in headers]
    where: dict[tuple[int, str], int] = {}
    for path, change in zip(paths, changes, strict=True):
        parts = [bytearray(block) for block in blocks]
        for (hdu, key), value in change.items():
            if (hdu, key) not in where:
                where[hdu, key] = _card_offset(blocks[hdu], key, hdu)
            image = fits.Card(key, value, headers[hdu].comments[key]).image
            if len(image) != 80:
                raise InputError(
                    f"{path}: HDU {hdu} card {key}={value!r} does not fit in 80 characters; "
                    "give a shorter value"
                )
            at = where[hdu, key]
            parts[hdu][at : at + 80] = image.encode("ascii")
        with open(path, "wb") as f:
            for part, size in zip(parts, sizes, strict=True):
                f.write(part)
                f.seek(size, 1)
            f.truncate()


def _card_offset(block: bytes, key: str, hdu: int) -> int:
    """Offset of the card ``key`` (a value card) in a rendered header."""
    name = f"{key:<8}= ".encode("ascii")
    for at in range(0, len(block), 80):
        if block[at : at + 10] == name:
            return at
    raise KeyError(f"HDU {hdu} of the template has no card {key}: add it to the template header")
