"""Aperture photometry of cutouts: light curves from a (target, time, row, column) Dataset."""

from __future__ import annotations

import xarray as xr

from cloudlab.errors import InputError

__all__ = ["aperture_photometry"]


def aperture_photometry(
    cutouts: xr.Dataset, *, relative: bool = True, aperture: xr.DataArray | None = None
) -> xr.Dataset:
    """Simple aperture photometry of a cutouts Dataset, lazily.

    Parameters
    ----------
    cutouts : xarray.Dataset
        Dims ``target, time, row, column`` with ``flux`` and a boolean ``aperture``
        (target, row, column) (the layout of :mod:`cloudlab.cutouts`).
    relative : bool
        Divide each target's light curve by its median.
    aperture : xarray.DataArray, optional
        Aperture to use instead of ``cutouts["aperture"]``.

    Returns
    -------
    xarray.Dataset
        ``flux`` (target, time) with the ``time`` coordinate and ``npix`` (pixels per aperture).
        Cadences where every aperture pixel is NaN are NaN.

    Raises
    ------
    InputError
        If ``flux`` or the aperture is missing, or ``flux`` lacks one of the four dims.
    """
    if "flux" not in cutouts:
        raise InputError(
            f"aperture_photometry: cutouts has no 'flux' variable (has {sorted(cutouts.data_vars)})"
            ": pass a Dataset from cloudlab.cutouts.make_cutouts"
        )
    mask = cutouts["aperture"] if aperture is None and "aperture" in cutouts else aperture
    if mask is None:
        raise InputError("aperture_photometry: cutouts has no 'aperture' variable; pass aperture=")
    flux = cutouts["flux"]
    missing = {"target", "time", "row", "column"} - set(flux.dims)
    if missing:
        raise InputError(
            f"aperture_photometry: cutouts 'flux' lacks dims {sorted(missing)}; has {flux.dims}"
        )
    mask = mask.astype(bool)
    inside = flux.where(mask)
    total = inside.sum(("row", "column"), skipna=True, min_count=1)
    if relative:
        if total.chunks:
            total = total.chunk({"time": -1})
        total = total / total.median("time", skipna=True)
    out = xr.Dataset({"flux": total, "npix": mask.sum(("row", "column"))})
    if "time" in cutouts.coords:
        out = out.assign_coords(time=cutouts["time"])
    return out
