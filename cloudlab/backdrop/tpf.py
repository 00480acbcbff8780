"""Background subtraction for target pixel files: one TPF's bytes in, corrected bytes out."""

from __future__ import annotations

import io

import numpy as np
import xarray as xr
from astropy.io import fits

from cloudlab.backdrop.evaluate import subtract
from cloudlab.errors import FITSFormatError, InputError

__all__ = ["correct_tpf"]


def correct_tpf(data: bytes, weights: xr.Dataset, *, name: str = "TPF") -> bytes:
    """Subtract the background from one TPF (bytes in, bytes out).

    ``FLUX`` loses the background, ``FLUX_BKG`` (when present) gains it; the corner comes from the
    ``1CRV{n}P``/``2CRV{n}P`` keywords of the ``FLUX`` column (1-based CCD pixels), the frames from
    ``TIME`` (BTJD). Cadences without a fitted frame and pixels outside the fitted region are set
    to NaN.

    Parameters
    ----------
    data : bytes
        The TPF file's content (astrocut or TESSCut layout).
    weights : xarray.Dataset
        Fitted weights, from :func:`cloudlab.backdrop.fit` or :func:`cloudlab.backdrop.load`
        (loaded into memory for speed when correcting many TPFs).
    name : str
        What to call the file in error messages, e.g. its URL.

    Returns
    -------
    bytes
        The corrected TPF, with ``BKGMODEL = 'cloudlab backdrop'`` in the table header.

    Raises
    ------
    FITSFormatError
        If the file is not a target pixel file (HDU 1 is not a table with ``FLUX`` and ``TIME``
        and the ``FLUX`` column's corner keywords).
    InputError
        If the TPF comes from another CCD than the weights.
    """
    with fits.open(io.BytesIO(data)) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
        raise FITSFormatError(
            f"{name}: not a target pixel file: HDU 1 is not a binary table; give an astrocut "
            "or TESSCut TPF"
        )
    table = hdul[1]
    names = [c.upper() for c in table.columns.names]
    if "FLUX" not in names or "TIME" not in names:
        raise FITSFormatError(
            f"{name}: not a target pixel file: the HDU 1 table has columns {names}, without "
            "FLUX or TIME"
        )
    n = names.index("FLUX") + 1
    head = table.header
    keys = (f"1CRV{n}P", f"2CRV{n}P")
    if any(k not in head for k in keys):
        raise FITSFormatError(
            f"{name} lacks the corner keywords {keys} of its FLUX column (column {n}): cannot "
            "place its pixels on the CCD"
        )
    ccd = hdul[0].header.get("CCD")
    if ccd is not None and int(ccd) != int(weights.attrs["ccd"]):
        raise InputError(
            f"{name} is from CCD {ccd}, weights fitted on CCD {weights.attrs['ccd']}: use the "
            "weights of the TPF's sector, camera and CCD"
        )
    flux = np.asarray(table.data["FLUX"], dtype=np.float64)
    cutouts = xr.Dataset(
        {"flux": (("target", "time", "row", "column"), flux[None])},
        coords={
            "time": np.asarray(table.data["TIME"], float),
            "corner_row": ("target", [int(head[keys[1]]) - 1]),
            "corner_column": ("target", [int(head[keys[0]]) - 1]),
        },
    )
    bkg = subtract(cutouts, weights, strict=False)["background"].values[0]
    table.data["FLUX"] = (flux - bkg).astype(table.data["FLUX"].dtype)
    if "FLUX_BKG" in names:
        table.data["FLUX_BKG"] = (table.data["FLUX_BKG"] + bkg).astype(table.data["FLUX"].dtype)
    head["BKGMODEL"] = ("cloudlab backdrop", "scattered-light background subtracted")
    out = io.BytesIO()
    hdul.writeto(out)
    return out.getvalue()
