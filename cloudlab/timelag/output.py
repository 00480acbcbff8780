"""Outputs of time-lag maps: sunpy Maps, zarr stores, FITS files and PNG plots (all atomic)."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import uuid
import warnings

import numpy as np
import xarray as xr
from astropy.io import fits

from cloudlab import storage
from cloudlab.backend import asnumpy

#: header keys that describe the original frames' data, not a derived map
_DROP_KEYS = ("BLANK", "BSCALE", "BZERO", "BITPIX", "DATAMEAN", "DATAMIN", "DATAMAX", "ZBLANK",
              "XTENSION", "PCOUNT", "GCOUNT", "EXTNAME", "INSTRUME", "WAVELNTH", "WAVEUNIT",
              "EXPTIME", "QUALITY", "CHECKSUM", "DATASUM")  # fmt: skip


def on_host(results: xr.Dataset) -> xr.Dataset:
    """Compute a result Dataset and bring its arrays to host memory (from CuPy if needed)."""
    results = results.compute()
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
        raise ValueError(f"to_map needs a 2-D map, got dims {obj.dims}")
    arr = obj.compute()
    return sunpy.map.Map(asnumpy(arr.data), map_header(arr))


def _pair_maps(results: xr.Dataset):
    for pair in results["pair"].values:
        yield str(pair), results.sel(pair=pair)


def write_fits(results: xr.Dataset, directory: str, storage_options: dict | None = None) -> list:
    """Write one FITS file per pair: time lag (s) in HDU 0, maximum correlation in HDU 1.

    Each file is written atomically as ``<directory>/timelag_<a>_<b>.fits``.

    Returns
    -------
    list of str
        The URLs written.
    """
    results = on_host(results)
    written = []
    for pair, maps in _pair_maps(results):
        timelag, maxcc = maps["timelag"], maps["max_correlation"]
        timelag.name, maxcc.name = "timelag", "max_correlation"
        primary = fits.PrimaryHDU(timelag.values.astype(np.float64), map_header(timelag))
        second = fits.ImageHDU(maxcc.values.astype(np.float64), map_header(maxcc))
        second.header["EXTNAME"] = "MAX_CORRELATION"
        buffer = io.BytesIO()
        fits.HDUList([primary, second]).writeto(buffer)
        url = f"{directory.rstrip('/')}/timelag_{pair.replace('-', '_')}.fits"
        storage.write_bytes(url, buffer.getvalue(), storage_options)
        written.append(url)
    return written


def _to_zarr(results: xr.Dataset, path: str) -> None:
    with warnings.catch_warnings():  # consolidated metadata is not in the zarr v3 spec (yet)
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        results.to_zarr(path, mode="w", consolidated=True)


def write_zarr(results: xr.Dataset, url: str, storage_options: dict | None = None) -> str:
    """Write results to a zarr store so that it never appears half-written.

    The (small) maps are computed first. Locally the store is written under a temporary name
    and renamed into place; on object stores it is uploaded with its metadata last and removed
    again if anything fails.

    Returns
    -------
    str
        ``url``.
    """
    results = on_host(results)
    if "pair" in results.coords:  # variable-length strings have a zarr v3 specification
        results = results.assign_coords(pair=results["pair"].values.astype(object))
    fs, path = storage.resolve(url, storage_options)
    if storage.is_local(url):
        parent = os.path.dirname(os.path.abspath(path)) or "."
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            _to_zarr(results, tmp)
            if os.path.exists(path):
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return url
    with tempfile.TemporaryDirectory(prefix="cloudlab-zarr-") as tmpdir:
        local = os.path.join(tmpdir, "store.zarr")
        _to_zarr(results, local)
        files = [os.path.join(d, f) for d, _, names in os.walk(local) for f in names]
        metadata = [f for f in files if os.path.basename(f) in ("zarr.json", ".zmetadata")]
        try:
            for f in [f for f in files if f not in metadata] + sorted(metadata, key=len)[::-1]:
                target = f"{path.rstrip('/')}/{os.path.relpath(f, local)}"
                storage.retry(lambda f=f, t=target: fs.put_file(f, t), what=target)
        except BaseException:
            if fs.exists(path):
                fs.rm(path, recursive=True)
            raise
    return url


def plot_maps(
    results: xr.Dataset,
    directory: str,
    *,
    vmax_s: float | None = None,
    storage_options: dict | None = None,
) -> list:
    """Save a PNG per pair: the time-lag map (diverging colours) beside its correlation map.

    Parameters
    ----------
    results : xarray.Dataset
        Output of :func:`cloudlab.timelag.timelag_maps`.
    directory : str
        Where ``timelag_<a>_<b>.png`` files go (atomic writes).
    vmax_s : float, optional
        Colour range of the lag maps (symmetric); default the largest absolute lag.

    Returns
    -------
    list of str
        The URLs written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = on_host(results)
    if vmax_s is None:
        finite = np.abs(results["timelag"].values[np.isfinite(results["timelag"].values)])
        vmax_s = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    written = []
    for pair, maps in _pair_maps(results):
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
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        url = f"{directory.rstrip('/')}/timelag_{pair.replace('-', '_')}.png"
        storage.write_bytes(url, buffer.getvalue(), storage_options)
        written.append(url)
    return written
