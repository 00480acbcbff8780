"""Outputs of time-lag maps: sunpy Maps, zarr stores, FITS files and PNG plots.

Every writer follows :mod:`cloudlab.storage`'s overwrite policy: with ``overwrite=False`` (the
default) an existing destination is refused before anything is computed; with ``overwrite=True``
it is replaced only once the new product is complete. No product is ever half-written.
Pair files (``timelag_<a>_<b>.fits``/``.png``) of an earlier run with other pairs are never left
beside new ones: without ``overwrite`` they are refused before anything is computed, with it they
are removed once this run's files are written.
"""

from __future__ import annotations

import io
import re

import numpy as np
import xarray as xr
from astropy.io import fits

from cloudlab import storage
from cloudlab.backend import asnumpy
from cloudlab.errors import FITSFormatError, InputError, OverwriteError

__all__ = [
    "map_header",
    "on_host",
    "plot_maps",
    "read_fits",
    "read_zarr",
    "to_map",
    "write_fits",
    "write_zarr",
]

#: header keys that describe the original frames' data, not a derived map
_DROP_KEYS = ("BLANK", "BSCALE", "BZERO", "BITPIX", "DATAMEAN", "DATAMIN", "DATAMAX", "ZBLANK",
              "XTENSION", "PCOUNT", "GCOUNT", "EXTNAME", "INSTRUME", "WAVELNTH", "WAVEUNIT",
              "EXPTIME", "QUALITY", "CHECKSUM", "DATASUM")  # fmt: skip


def on_host(results: xr.Dataset, *, progress: bool = False) -> xr.Dataset:
    """Compute a result Dataset and bring its arrays to host memory (from CuPy if needed).

    Lazy results are computed by :func:`cloudlab.cluster.compute` (progress bar on stderr when
    ``progress``).
    """
    from cloudlab.cluster import compute

    (results,) = compute(results, progress=progress and _is_lazy(results))
    return results.copy(data={name: asnumpy(var.data) for name, var in results.data_vars.items()})


def map_header(arr: xr.DataArray) -> fits.Header:
    """FITS header for a 2-D map: the input's WCS and observer, units, and what was measured."""
    text = arr.attrs.get("fits_header", "")
    header = fits.Header.fromstring(text) if isinstance(text, str) else fits.Header(text)
    for key in _DROP_KEYS:
        header.remove(key, ignore_missing=True, remove_all=True)
    ny, nx = arr.shape[-2:]
    header["NAXIS"] = 2
    header["NAXIS1"] = nx
    header["NAXIS2"] = ny
    header["BUNIT"] = arr.attrs.get("units", "")
    header["MEASRMNT"] = str(arr.name or arr.attrs.get("long_name", ""))
    for key in ("channel_a", "channel_b"):
        if key in arr.coords and arr[key].ndim == 0:
            header[key.upper().replace("CHANNEL", "CHAN")] = int(arr[key])
    return header


def to_map(obj: xr.DataArray | xr.Dataset):
    """Turn time-lag results into sunpy Maps (computing them).

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        A 2-D map, a map with a ``pair`` dimension, or the Dataset of :func:`timelag_maps`.

    Returns
    -------
    sunpy.map.GenericMap or dict
        One Map for a 2-D input; ``{pair: Map}`` for a DataArray with ``pair``;
        ``{variable: {pair: Map}}`` for a Dataset.
    """
    import sunpy.map

    if isinstance(obj, xr.Dataset):
        return {name: to_map(obj[name]) for name in obj.data_vars}
    if "pair" in obj.dims:
        return {str(p): to_map(obj.sel(pair=p)) for p in obj["pair"].values}
    if obj.ndim != 2:
        raise InputError(f"to_map needs a 2-D map, got dims {obj.dims}; select one pair first")
    arr = obj.compute()
    return sunpy.map.Map(asnumpy(arr.data), map_header(arr))


def _is_lazy(results: xr.Dataset) -> bool:
    return any(var.chunks is not None for var in results.variables.values())


def _pair_maps(results: xr.Dataset):
    for pair in results["pair"].values:
        yield str(pair), results.sel(pair=pair)


def _pair_urls(results: xr.Dataset, directory: str, suffix: str) -> list[str]:
    """``<directory>/timelag_<a>_<b><suffix>`` for every pair (known without computing)."""
    base = directory.rstrip("/")
    return [f"{base}/timelag_{str(p).replace('-', '_')}{suffix}" for p in results["pair"].values]


def _stale_pairs(
    urls: list[str], directory: str, suffix: str, overwrite: bool, storage_options: dict | None
) -> list[str]:
    """Pair files in ``directory`` that an earlier run wrote and this one does not.

    Raises :class:`~cloudlab.errors.OverwriteError` naming them when ``overwrite`` is False.
    """
    fs, path = storage.resolve(directory, storage_options=storage_options)
    path = path.rstrip("/")
    fs.invalidate_cache(path)
    try:
        listing = storage.retry(lambda: fs.ls(path, detail=False), what=directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    pattern = re.compile(rf"timelag_[^_/]+_[^_/]+{re.escape(suffix)}")
    names = {p.rstrip("/").rpartition("/")[2] for p in listing}
    ours = {url.rpartition("/")[2] for url in urls}
    base = directory.rstrip("/")
    stale = [f"{base}/{n}" for n in sorted(names - ours) if pattern.fullmatch(n)]
    if stale and not overwrite:
        more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
        raise OverwriteError(
            f"{', '.join(stale[:3])}{more}: pair files of an earlier run that this run would "
            "leave beside its own; pass overwrite=True (CLI: --overwrite) to replace them all, "
            "or choose another directory"
        )
    return stale


def _remove(urls: list[str], storage_options: dict | None) -> None:
    """Delete files of an earlier run once this run's products are in place."""
    for url in urls:
        fs, path = storage.resolve(url, storage_options=storage_options)
        storage.retry(lambda fs=fs, path=path: fs.rm_file(path), what=url)


def write_fits(
    results: xr.Dataset,
    directory: str,
    *,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> list[str]:
    """Write one FITS file per pair: time lag (s) in HDU 0, maximum correlation in HDU 1.

    Each file is ``<directory>/timelag_<a>_<b>.fits``, written in one step.

    Parameters
    ----------
    results : xarray.Dataset
        Output of :func:`cloudlab.timelag.timelag_maps` (computed here if lazy).
    directory : str
        Destination directory URL or path.
    overwrite : bool
        Replace existing files and remove pair files of an earlier run that this run does not
        write (once this run's files are written); without it any of them is refused before
        computing.
    storage_options : dict, optional
        Filesystem keyword arguments.
    progress : bool
        Progress bar (stderr) while lazy results are computed.

    Returns
    -------
    list of str
        The URLs written.
    """
    urls = _pair_urls(results, directory, ".fits")
    storage.check_writable(urls, overwrite=overwrite, storage_options=storage_options)
    stale = _stale_pairs(urls, directory, ".fits", overwrite, storage_options)
    results = on_host(results, progress=progress)
    for url, (_, maps) in zip(urls, _pair_maps(results), strict=True):
        timelag, maxcc = maps["timelag"], maps["max_correlation"]
        timelag.name, maxcc.name = "timelag", "max_correlation"
        primary = fits.PrimaryHDU(timelag.values.astype(np.float64), map_header(timelag))
        second = fits.ImageHDU(maxcc.values.astype(np.float64), map_header(maxcc))
        second.header["EXTNAME"] = "MAX_CORRELATION"
        buffer = io.BytesIO()
        fits.HDUList([primary, second]).writeto(buffer)
        storage.write_bytes(
            url, buffer.getvalue(), overwrite=overwrite, storage_options=storage_options
        )
    _remove(stale, storage_options)
    return urls


def read_fits(url: str, *, storage_options: dict | None = None) -> xr.Dataset:
    """Read one file written by :func:`write_fits`.

    Returns
    -------
    xarray.Dataset
        ``timelag`` (s) and ``max_correlation`` with dims ``(y, x)``, each with its FITS header
        in ``attrs["fits_header"]``; scalar coordinates ``channel_a``/``channel_b`` when the
        header has them.

    Raises
    ------
    FITSFormatError
        Not a FITS file, or no ``MAX_CORRELATION`` HDU.
    """
    data = storage.read_bytes(url, storage_options=storage_options)
    try:
        with fits.open(io.BytesIO(data)) as hdul:
            lag, lag_header = np.asarray(hdul[0].data), hdul[0].header
            cc, cc_header = np.asarray(hdul["MAX_CORRELATION"].data), hdul["MAX_CORRELATION"].header
    except (OSError, KeyError) as exc:
        raise FITSFormatError(
            f"{url}: not a time-lag map file ({exc}); write one with write_fits"
        ) from exc

    def variable(values: np.ndarray, header: fits.Header) -> xr.Variable:
        attrs = {"units": header.get("BUNIT", ""), "fits_header": header.tostring()}
        return xr.Variable(("y", "x"), values, attrs)

    coords = {
        name: int(lag_header[key])
        for name, key in (("channel_a", "CHAN_A"), ("channel_b", "CHAN_B"))
        if key in lag_header
    }
    return xr.Dataset(
        {"timelag": variable(lag, lag_header), "max_correlation": variable(cc, cc_header)},
        coords=coords,
    )


def write_zarr(
    results: xr.Dataset,
    url: str,
    *,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> str:
    """Write results to a zarr store with :func:`cloudlab.storage.write_zarr`.

    The (small) maps are computed first (after the destination was checked) and brought to host
    memory; the store never appears half-written and a previous one survives until the new one
    is complete.

    Returns
    -------
    str
        ``url``.
    """
    storage.check_writable(url, overwrite=overwrite, storage_options=storage_options)
    results = on_host(results, progress=progress)
    return storage.write_zarr(
        results, url, overwrite=overwrite, storage_options=storage_options, progress=False
    )


def read_zarr(url: str, *, storage_options: dict | None = None) -> xr.Dataset:
    """Open a store written by :func:`write_zarr` (lazily)."""
    return storage.read_zarr(url, storage_options=storage_options)


def plot_maps(
    results: xr.Dataset,
    directory: str,
    *,
    vmax_s: float | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> list[str]:
    """Save a PNG per pair: the time-lag map (diverging colours) beside its correlation map.

    Parameters
    ----------
    results : xarray.Dataset
        Output of :func:`cloudlab.timelag.timelag_maps`.
    directory : str
        Where ``timelag_<a>_<b>.png`` files go (each written in one step).
    vmax_s : float, optional
        Colour range of the lag maps (symmetric); default the largest absolute lag.
    overwrite : bool
        Replace existing files and remove pair files of an earlier run that this run does not
        write (once this run's files are written); without it any of them is refused before
        computing.
    storage_options : dict, optional
        Filesystem keyword arguments.
    progress : bool
        Progress bar (stderr) while lazy results are computed.

    Returns
    -------
    list of str
        The URLs written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    urls = _pair_urls(results, directory, ".png")
    storage.check_writable(urls, overwrite=overwrite, storage_options=storage_options)
    stale = _stale_pairs(urls, directory, ".png", overwrite, storage_options)
    results = on_host(results, progress=progress)
    if vmax_s is None:
        finite = np.abs(results["timelag"].values[np.isfinite(results["timelag"].values)])
        vmax_s = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    for url, (pair, maps) in zip(urls, _pair_maps(results), strict=True):
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
        image = left.imshow(
            maps["timelag"].values, origin="lower", cmap="RdBu_r", vmin=-vmax_s, vmax=vmax_s
        )
        fig.colorbar(image, ax=left, label="time lag [s]")
        left.set_title(f"time lag {pair} Å")
        image = right.imshow(maps["max_correlation"].values, origin="lower", vmin=0, vmax=1)
        fig.colorbar(image, ax=right, label="max cross-correlation")
        right.set_title(f"max correlation {pair} Å")
        for ax in (left, right):
            ax.set_xlabel("x [pixel]")
            ax.set_ylabel("y [pixel]")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100, metadata={"Software": "cloudlab"})
        plt.close(fig)
        storage.write_bytes(
            url, buffer.getvalue(), overwrite=overwrite, storage_options=storage_options
        )
    _remove(stale, storage_options)
    return urls
