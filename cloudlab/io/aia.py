"""SDO/AIA image stacks as lazy xarray cubes.

Files are JSOC level-1 style (empty primary HDU, RICE-compressed image in HDU 1) or plain images
in HDU 0. A channel's frames become a ``(time, y, x)`` DataArray, one dask chunk per file, with
``time`` the absolute ``T_OBS`` (datetime64), ``exptime``, ``quality`` and ``url`` along time,
``wavelength`` as a scalar coordinate, BLANK pixels as NaN, and the WCS header of the first frame
in ``attrs["fits_header"]``.

This module only reads. Preparing the cubes for time-lag analysis (exposure normalisation, crop,
common time grid) is :mod:`cloudlab.timelag.steps`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from astropy.io import fits as afits
from astropy.wcs import WCS

from cloudlab import fits, storage
from cloudlab.errors import FITSFormatError, HDUNotFoundError, InputError, NotFoundError

__all__ = ["header_of", "image_hdu", "open_stack", "parse_time", "wcs_of"]

#: header keys kept as per-frame coordinates
_FRAME_KEYS = ("T_OBS", "EXPTIME", "WAVELNTH", "QUALITY")


def parse_time(value: str, url: str = "") -> np.datetime64:
    """Parse an ISO time such as AIA's ``T_OBS`` (``2011-02-15T00:00:01.34Z``) to datetime64."""
    text = str(value).strip().removesuffix("Z")
    try:
        return np.datetime64(text, "ns")
    except ValueError as err:
        raise FITSFormatError(
            f"{url}: cannot parse time {value!r} (expected ISO 8601, e.g. 2011-02-15T00:00:01.34Z)"
        ) from err


def image_hdu(url: str, *, storage_options: dict | None = None) -> int:
    """Index of the HDU holding the image: 1 for JSOC files (empty primary), else 0.

    Parameters
    ----------
    url : str
        Any fsspec URL or local path.
    storage_options : dict, optional
        Filesystem options.

    Returns
    -------
    int
        0 or 1.

    Raises
    ------
    FITSFormatError
        If neither HDU 0 nor HDU 1 is a 2-D image (the message says what they are: table,
        random groups, image of another shape, no data), or the file is not FITS or is
        truncated (the reader's own message, naming the file, is kept).
    """
    primary = fits.hdu_info(url, 0, storage_options=storage_options)
    if _is_2d_image(primary):
        return 0
    try:
        info = fits.hdu_info(url, 1, storage_options=storage_options)
    except HDUNotFoundError as err:
        raise FITSFormatError(
            f"{url}: no 2-D image in HDU 0 ({_kind_of(primary)}) and no HDU 1: "
            "give AIA level-1 files"
        ) from err
    if not _is_2d_image(info):
        raise FITSFormatError(
            f"{url}: neither HDU 0 ({_kind_of(primary)}) nor HDU 1 ({_kind_of(info)}) is a 2-D "
            "image: give AIA level-1 files"
        )
    return 1


def _is_2d_image(info: fits.HDUInfo) -> bool:
    return info.kind in ("image", "compressed") and len(info.shape) == 2 and 0 not in info.shape


def _kind_of(info: fits.HDUInfo) -> str:
    """What an HDU holds, in words: 'random groups', 'a BINTABLE', 'image of shape (2, 3)'."""
    if info.groups:
        return "random groups, not an image"
    if info.kind == "table":
        return f"a {info.get('XTENSION', 'table')} table"
    if not info.shape or 0 in info.shape:
        return "no data"
    return f"{'compressed ' if info.kind == 'compressed' else ''}image of shape {info.shape}"


def open_stack(
    urls_or_glob: str | Sequence[str],
    *,
    storage_options: dict | None = None,
) -> xr.DataArray:
    """Open one AIA channel's FITS files as a lazy ``(time, y, x)`` cube sorted by ``T_OBS``.

    Parameters
    ----------
    urls_or_glob : str or sequence of str
        File URLs, or a glob (any fsspec protocol).
    storage_options : dict, optional
        Filesystem options.

    Returns
    -------
    xarray.DataArray
        Dask-backed (one chunk per file), with the dtype astropy returns (float32 with NaN for
        BLANK pixels of int16 images), with coordinates ``time``
        (datetime64 of ``T_OBS``), ``exptime`` (s), ``quality``, ``url`` and scalar
        ``wavelength`` (Å); ``attrs``: ``fits_header`` (first frame's header), ``units`` "DN".

    Raises
    ------
    FileNotFoundError
        If nothing matches.
    InputError
        If the files mix wavelengths or image shapes, repeat a ``T_OBS`` or lack a header key
        (a :class:`~cloudlab.errors.FITSFormatError` for a file that is not FITS or is
        truncated).
    """
    urls = storage.expand(urls_or_glob, storage_options=storage_options)
    if not urls:
        raise NotFoundError(f"no AIA files match {urls_or_glob!r}")
    hdu = image_hdu(urls[0], storage_options=storage_options)
    cube = fits.open_stack(
        urls, hdu, dim="time", keys=_FRAME_KEYS, dims=("y", "x"), storage_options=storage_options
    )
    urls = list(cube["url"].values)
    for key in _FRAME_KEYS:
        values = cube[key].values
        absent = [u for u, v in zip(urls, values, strict=True) if v is None or v != v]
        if absent:
            raise FITSFormatError(
                f"header key {key} missing in {absent[:3]}: AIA stacks need "
                f"{', '.join(_FRAME_KEYS)} in every file"
            )
    times = np.array([parse_time(t, u) for u, t in zip(urls, cube["T_OBS"].values, strict=True)])
    order = np.argsort(times, kind="stable")
    times = times[order]
    repeated = np.flatnonzero(np.diff(times) == np.timedelta64(0, "ns"))
    if repeated.size:
        i = repeated[0]
        raise InputError(
            f"{urls[order[i]]} and {urls[order[i + 1]]} have the same T_OBS {times[i]}: "
            "give each frame once"
        )
    wavelengths = np.unique(cube["WAVELNTH"].values.astype(float))
    if wavelengths.size != 1:
        raise InputError(
            f"files mix wavelengths {sorted(wavelengths)}: open each channel separately"
        )
    wavelength = int(round(wavelengths[0]))
    first_header = fits.hdu_info(urls[order[0]], hdu, storage_options=storage_options).header
    cube = cube.isel(time=order)
    cube = cube.assign_coords(
        time=("time", times),
        exptime=("time", cube["EXPTIME"].values.astype(float)),
        quality=("time", cube["QUALITY"].values.astype(np.int64)),
        wavelength=wavelength,
    ).drop_vars(list(_FRAME_KEYS))
    cube.attrs = {"fits_header": first_header.tostring(), "units": "DN"}
    cube.name = f"aia_{wavelength}"
    return cube


def header_of(cube: xr.DataArray) -> afits.Header:
    """The FITS header kept in ``attrs["fits_header"]`` (raises if there is none)."""
    text = cube.attrs.get("fits_header")
    if not text:
        raise InputError(
            f"{cube.name!r} carries no FITS header (attrs['fits_header']): open it with "
            "cloudlab.io.aia.open_stack or keep its attrs"
        )
    return afits.Header.fromstring(text) if isinstance(text, str) else afits.Header(text)


def wcs_of(cube: xr.DataArray) -> WCS:
    """The celestial WCS of a cube or map (from ``attrs["fits_header"]``)."""
    header = header_of(cube)
    header["NAXIS"] = 2
    header["NAXIS1"] = cube.sizes["x"]
    header["NAXIS2"] = cube.sizes["y"]
    return WCS(header, naxis=2)
