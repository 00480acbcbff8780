"""Background subtraction for target pixel files: one TPF's bytes in, corrected bytes out."""

from __future__ import annotations

import io

import numpy as np
import xarray as xr
from astropy.io import fits

from cloudlab.backdrop.evaluate import subtract
from cloudlab.errors import FITSFormatError, InputError

__all__ = ["CORRECTED_KEYWORD", "correct_tpf"]

CORRECTED_KEYWORD = "BKGMODEL"
"""Table-header keyword marking a TPF corrected by cloudlab (value ``'cloudlab backdrop'``)."""
_CORRECTED_VALUE = "cloudlab backdrop"


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
        If the TPF comes from another sector, camera or CCD than the weights, has no time inside
        the weights' time range, was already corrected (``BKGMODEL`` keyword), or would come out
        all NaN.
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
    if str(head.get(CORRECTED_KEYWORD, "")).strip() == _CORRECTED_VALUE:
        raise InputError(
            f"{name} was already background-corrected ({CORRECTED_KEYWORD} = "
            f"'{_CORRECTED_VALUE}'); give the original TPF"
        )
    _check_same_detector(hdul[0].header, weights, name)
    flux = np.asarray(table.data["FLUX"], dtype=np.float64)
    _check_time_range(np.asarray(table.data["TIME"], float), weights, name)
    cutouts = xr.Dataset(
        {"flux": (("target", "time", "row", "column"), flux[None])},
        coords={
            "time": np.asarray(table.data["TIME"], float),
            "corner_row": ("target", [int(head[keys[1]]) - 1]),
            "corner_column": ("target", [int(head[keys[0]]) - 1]),
        },
    )
    bkg = subtract(cutouts, weights, strict=False)["background"].values[0]
    corrected = flux - bkg
    if not np.isfinite(corrected).any():
        raise InputError(
            f"{name}: the corrected flux would be NaN everywhere (no cadence or pixel inside the "
            "fitted frames and region); nothing written for it"
        )
    table.data["FLUX"] = corrected.astype(table.data["FLUX"].dtype)
    if "FLUX_BKG" in names:
        table.data["FLUX_BKG"] = (table.data["FLUX_BKG"] + bkg).astype(table.data["FLUX"].dtype)
    head[CORRECTED_KEYWORD] = (_CORRECTED_VALUE, "scattered-light background subtracted")
    out = io.BytesIO()
    hdul.writeto(out)
    return out.getvalue()


def _check_same_detector(header: fits.Header, weights: xr.Dataset, name: str) -> None:
    """Refuse a TPF whose SECTOR/CAMERA/CCD differ from the weights' (where both are known)."""
    tpf, fitted = [], []
    for key, label in (("SECTOR", "sector"), ("CAMERA", "camera"), ("CCD", "CCD")):
        value = header.get(key)
        known = weights.attrs.get(key.lower())
        if value in (None, "") or known in (None, 0) or int(value) == int(known):
            continue
        tpf.append(f"{label} {int(value)}")
        fitted.append(f"{label} {int(known)}")
    if tpf:
        raise InputError(
            f"{name} is from {', '.join(tpf)}, weights fitted on {', '.join(fitted)}: use the "
            "weights of the TPF's sector, camera and CCD"
        )


def _check_time_range(times: np.ndarray, weights: xr.Dataset, name: str) -> None:
    """Refuse a TPF none of whose cadences lies in the weights' fitted time range.

    A TPF that overlaps the range only in part is corrected where it overlaps (its other
    cadences are NaN, as :func:`correct_tpf` documents).
    """
    fitted = np.asarray(weights["time"].values, float)
    t = times[np.isfinite(times)]
    if not len(t) or not len(fitted):
        return
    lo, hi = float(fitted.min()), float(fitted.max())
    if len(fitted) > 1:
        step = float(np.median(np.diff(np.sort(fitted))))
        lo, hi = lo - step / 2, hi + step / 2
    if not ((t >= lo) & (t <= hi)).any():
        raise InputError(
            f"{name} covers times {t.min():.5f}..{t.max():.5f} (BTJD) but the weights cover "
            f"{lo:.5f}..{hi:.5f}: use weights fitted on the frames of the TPF's whole time range"
        )
