"""Outputs of time-lag maps: sunpy Maps, zarr stores, FITS files and PNG plots.

Every writer follows :mod:`cloudlab.storage`'s overwrite policy: with ``overwrite=False`` (the
default) an existing destination is refused before anything is computed; with ``overwrite=True``
it is replaced only once the new product is complete. No product is ever half-written.
Pair files (``timelag_<a>_<b>.fits``, ``max_correlation_<a>_<b>.fits``, ``timelag_<a>_<b>.png``)
of an earlier run with other pairs are never left beside new ones: without ``overwrite`` they are
refused before anything is computed, with it they are removed once this run's files are written.
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
    "pair_figure",
    "pair_urls",
    "plot_maps",
    "read_fits",
    "read_zarr",
    "refuse_stale",
    "remove_files",
    "stale_pair_files",
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
    """FITS header for a 2-D map: the input's WCS and observer, units, and what was measured.

    The WCS, date and observer keys of the input frames are kept (so sunpy builds a
    helioprojective map from the header); the keys of the frames' data (``WAVELNTH``,
    ``EXPTIME``, scaling...) are dropped. ``BUNIT`` is the map's unit (``s`` for lags),
    ``BTYPE`` and ``MEASRMNT`` say what was measured, ``CHAN_A``/``CHAN_B`` the channel pair,
    and ``DETECTOR``, from which sunpy builds ``Map.name`` and plot titles, reads e.g.
    ``AIA 94-335 time lag [s]``.
    """
    text = arr.attrs.get("fits_header", "")
    header = fits.Header.fromstring(text) if isinstance(text, str) else fits.Header(text)
    detector = str(header.get("DETECTOR", "")).strip()
    for key in _DROP_KEYS:
        header.remove(key, ignore_missing=True, remove_all=True)
    ny, nx = arr.shape[-2:]
    header["NAXIS"] = 2
    header["NAXIS1"] = nx
    header["NAXIS2"] = ny
    units = str(arr.attrs.get("units", ""))
    measurement = str(arr.name or arr.attrs.get("long_name", ""))
    long_name = str(arr.attrs.get("long_name", measurement))
    header["BUNIT"] = units
    header["BTYPE"] = long_name
    header["MEASRMNT"] = measurement
    pair = ""
    if all(key in arr.coords and arr[key].ndim == 0 for key in ("channel_a", "channel_b")):
        channels = [arr[key].item() for key in ("channel_a", "channel_b")]
        for key, channel in zip(("CHAN_A", "CHAN_B"), channels, strict=True):
            header[key] = channel
        pair = "-".join(str(c) for c in channels)
    title = [detector, pair, long_name, f"[{units}]" if units else ""]
    header["DETECTOR"] = " ".join(part for part in title if part)
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


def pair_urls(
    pairs, directory: str, *, prefix: str = "timelag", suffix: str = ".fits"
) -> list[str]:
    """``<directory>/<prefix>_<a>_<b><suffix>`` for every pair (``"94-335"`` or ``(94, 335)``).

    These are the files :func:`write_fits` (``prefix`` the variable) and :func:`plot_maps`
    (``prefix="timelag"``, ``suffix=".png"``) write.
    """
    base = directory.rstrip("/")
    names = ["_".join(map(str, p)) if isinstance(p, tuple) else str(p) for p in pairs]
    return [f"{base}/{prefix}_{name.replace('-', '_')}{suffix}" for name in names]


def stale_pair_files(
    directory: str,
    keep: list[str],
    *,
    prefix: str = "timelag",
    suffix: str = ".fits",
    storage_options: dict | None = None,
) -> list[str]:
    """Pair files ``<prefix>_<a>_<b><suffix>`` in ``directory`` other than those in ``keep``.

    They are what an earlier run with other pairs left there (an absent directory has none).
    """
    fs, path = storage.resolve(directory, storage_options=storage_options)
    path = path.rstrip("/")
    fs.invalidate_cache(path)
    try:
        listing = storage.retry(lambda: fs.ls(path, detail=False), what=directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    pattern = re.compile(rf"{re.escape(prefix)}_[^_/]+_[^_/]+{re.escape(suffix)}")
    names = {p.rstrip("/").rpartition("/")[2] for p in listing}
    ours = {url.rpartition("/")[2] for url in keep}
    base = directory.rstrip("/")
    return [f"{base}/{n}" for n in sorted(names - ours) if pattern.fullmatch(n)]


def refuse_stale(stale: list[str], overwrite: bool) -> None:
    """Raise :class:`~cloudlab.errors.OverwriteError` naming ``stale`` unless ``overwrite``."""
    if stale and not overwrite:
        more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
        raise OverwriteError(
            f"{', '.join(stale[:3])}{more}: pair files of an earlier run that this run would "
            "leave beside its own; pass overwrite=True (CLI: --overwrite) to replace them all, "
            "or choose another directory"
        )


def _stale_pairs(
    urls: list[str],
    directory: str,
    prefix: str,
    suffix: str,
    overwrite: bool,
    storage_options: dict | None,
) -> list[str]:
    """Pair files in ``directory`` that an earlier run wrote and this one does not (refused
    without ``overwrite``)."""
    stale = stale_pair_files(
        directory, urls, prefix=prefix, suffix=suffix, storage_options=storage_options
    )
    refuse_stale(stale, overwrite)
    return stale


def remove_files(urls: list[str], *, storage_options: dict | None = None) -> None:
    """Delete files of an earlier run once this run's products are in place."""
    for url in urls:
        fs, path = storage.resolve(url, storage_options=storage_options)
        storage.retry(lambda fs=fs, path=path: fs.rm_file(path), what=url)


def write_fits(
    results: xr.Dataset,
    directory: str,
    *,
    variable: str = "timelag",
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> list[str]:
    """Write one single-image FITS file per pair of one variable (``timelag`` by default).

    Each file is ``<directory>/<variable>_<a>_<b>.fits``, written in one step, and opens as one
    sunpy Map (``sunpy.map.Map(url)``) with the inputs' helioprojective WCS and observer, and a
    title naming the pair, the measurement and its unit (see :func:`map_header`).

    Parameters
    ----------
    results : xarray.Dataset
        Output of :func:`cloudlab.timelag.timelag_maps` (computed here if lazy).
    directory : str
        Destination directory URL or path.
    variable : str
        ``"timelag"`` (seconds) or ``"max_correlation"``; call once per variable to write both.
    overwrite : bool
        Replace existing files and remove files of this variable for pairs that this run does
        not write (once this run's files are written); without it any of them is refused before
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
    if variable not in results.data_vars:
        raise InputError(
            f"write_fits: no variable {variable!r} in the results; choose one of "
            f"{sorted(map(str, results.data_vars))}"
        )
    urls = pair_urls(results["pair"].values, directory, prefix=variable, suffix=".fits")
    storage.check_writable(urls, overwrite=overwrite, storage_options=storage_options)
    stale = _stale_pairs(urls, directory, variable, ".fits", overwrite, storage_options)
    results = on_host(results[[variable]], progress=progress)
    for url, (_, maps) in zip(urls, _pair_maps(results), strict=True):
        arr = maps[variable]
        arr.name = variable
        buffer = io.BytesIO()
        fits.PrimaryHDU(arr.values.astype(np.float64), map_header(arr)).writeto(buffer)
        storage.write_bytes(
            url, buffer.getvalue(), overwrite=overwrite, storage_options=storage_options
        )
    remove_files(stale, storage_options=storage_options)
    return urls


def read_fits(url: str, *, storage_options: dict | None = None) -> xr.Dataset:
    """Read one file written by :func:`write_fits`.

    Returns
    -------
    xarray.Dataset
        One variable, named after the file's ``MEASRMNT`` (``timelag`` in s or
        ``max_correlation``), dims ``(y, x)``, with its FITS header in ``attrs["fits_header"]``;
        scalar coordinates ``channel_a``/``channel_b`` when the header has them.

    Raises
    ------
    FITSFormatError
        Not a FITS file, or no image in HDU 0.
    """
    data = storage.read_bytes(url, storage_options=storage_options)
    try:
        with fits.open(io.BytesIO(data)) as hdul:
            values, header = hdul[0].data, hdul[0].header
            values = None if values is None else np.asarray(values)
    except OSError as exc:
        raise FITSFormatError(
            f"{url}: not a time-lag map file ({exc}); write one with write_fits"
        ) from exc
    if values is None or values.ndim != 2:
        raise FITSFormatError(f"{url}: HDU 0 holds no 2-D map; write one with write_fits")
    name = str(header.get("MEASRMNT", "timelag")) or "timelag"
    attrs = {"units": header.get("BUNIT", ""), "fits_header": header.tostring()}
    coords = {
        coord: header[key]
        for coord, key in (("channel_a", "CHAN_A"), ("channel_b", "CHAN_B"))
        if key in header
    }
    return xr.Dataset({name: xr.Variable(("y", "x"), values, attrs)}, coords=coords)


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


def _is_helioprojective(header: fits.Header) -> bool:
    return str(header.get("CTYPE1", "")).startswith("HPLN") and str(
        header.get("CTYPE2", "")
    ).startswith("HPLT")


def _panel(fig, position: int, arr: xr.DataArray, **imshow):
    """One map in a panel: helioprojective WCSAxes when the header has such a WCS, else pixels.

    Returns the axes and the image.
    """
    header = map_header(arr)
    if _is_helioprojective(header):
        import astropy.units as u
        import sunpy.map

        smap = sunpy.map.Map(arr.values, header)
        ax = fig.add_subplot(1, 2, position, projection=smap)
        image = smap.plot(axes=ax, title=False, **imshow)
        for coord, label in zip(ax.coords, ("Longitude", "Latitude"), strict=False):
            coord.set_format_unit(u.arcsec, decimal=True)
            coord.set_axislabel(f"Helioprojective {label} [arcsec]")
        return ax, image
    ax = fig.add_subplot(1, 2, position)
    image = ax.imshow(arr.values, origin="lower", **imshow)
    ax.set_xlabel("x [pixel]")
    ax.set_ylabel("y [pixel]")
    return ax, image


def pair_figure(maps: xr.Dataset, vmax_s: float):
    """The figure of one pair: time lag (diverging colours, ±``vmax_s``) beside the correlation.

    Parameters
    ----------
    maps : xarray.Dataset
        One pair of :func:`cloudlab.timelag.timelag_maps` (``results.sel(pair=...)``), computed.
    vmax_s : float
        Colour range of the lag map in seconds.

    Returns
    -------
    matplotlib.figure.Figure
        Axes are helioprojective (``WCSAxes``, arcsec) when the maps carry a helioprojective
        WCS header, pixels otherwise; each colour bar names the measurement and its unit.
    """
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(11, 4.4), layout="constrained")
    pair = f"{maps['pair'].item()} Å" if "pair" in maps.coords else ""
    panels = (
        ("timelag", {"cmap": "RdBu_r", "vmin": -vmax_s, "vmax": vmax_s}),
        ("max_correlation", {"cmap": "viridis", "vmin": 0, "vmax": 1}),
    )
    for position, (name, imshow) in enumerate(panels, start=1):
        arr = maps[name]
        arr.name = name
        ax, image = _panel(fig, position, arr, **imshow)
        measurement = str(arr.attrs.get("long_name", name))
        units = str(arr.attrs.get("units", ""))
        fig.colorbar(image, ax=ax, label=f"{measurement} [{units}]" if units else measurement)
        ax.set_title(f"{measurement} {pair}".strip())
    return fig


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

    Axes are helioprojective longitude and latitude in arcsec when the maps carry the inputs'
    WCS (see :func:`pair_figure`).

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

    urls = pair_urls(results["pair"].values, directory, prefix="timelag", suffix=".png")
    storage.check_writable(urls, overwrite=overwrite, storage_options=storage_options)
    stale = _stale_pairs(urls, directory, "timelag", ".png", overwrite, storage_options)
    results = on_host(results, progress=progress)
    if vmax_s is None:
        finite = np.abs(results["timelag"].values[np.isfinite(results["timelag"].values)])
        vmax_s = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    for url, (_, maps) in zip(urls, _pair_maps(results), strict=True):
        fig = pair_figure(maps, vmax_s)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100, metadata={"Software": "cloudlab"})
        plt.close(fig)
        storage.write_bytes(
            url, buffer.getvalue(), overwrite=overwrite, storage_options=storage_options
        )
    remove_files(stale, storage_options=storage_options)
    return urls
