"""Galaxy cut stacks for DRE: lazy 128×128 windows of a tile and its SExtractor check images.

Cuts follow DRE's ``Cutter``: a window of ``size`` pixels around ``(X_IMAGE − 1, Y_IMAGE − 1)``
(astropy ``Cutout2D`` geometry), a strict margin test, ``CLASS_STAR < max_stellarity``, and a
mask made from the segmentation map by DRE's cleaning rules (see :func:`clean_mask`). Each dask
chunk of galaxies reads its windows of each image with one :func:`cloudlab.fits.read_regions`
call (one batched request per image per chunk).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from astropy.table import Table
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from scipy import ndimage

from cloudlab.chunking import items_per_task, task_outputs
from cloudlab.errors import InputError
from cloudlab.fits import HDUInfo, hdu_info, read_regions
from cloudlab.io.galaxies import read_catalog

__all__ = ["CUT_BYTES_PER_PIXEL", "NAN_IN_CUT", "REQUIRED_COLUMNS", "clean_mask", "open_cuts"]

#: Catalogue columns DRE needs.
REQUIRED_COLUMNS = ("NUMBER", "X_IMAGE", "Y_IMAGE", "CLASS_STAR")
#: Bit of ``flag`` set when the science cut contains NaN (DRE skips such cuts).
NAN_IN_CUT = 1
#: Peak bytes per cut pixel of a task reading cuts: obj and rms (float32), seg (bool), and one
#: image's windows as read (up to float64) at a time.
CUT_BYTES_PER_PIXEL = 4 + 4 + 1 + 8


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Clean an object's segment as DRE does.

    The central 4×4 block is forced on, only the 4-connected component containing the centre
    pixel is kept, holes are filled, and the result is dilated 4 times with the cross.

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean ``(size, size)`` ``segmentation == NUMBER``.

    Returns
    -------
    numpy.ndarray
        The cleaned boolean mask.
    """
    mask = np.array(mask, dtype=bool)
    c = mask.shape[0] // 2
    mask[c - 2 : c + 2, c - 2 : c + 2] = True
    labels, _ = ndimage.label(mask)
    mask = labels == labels[c, c]
    mask = ndimage.binary_fill_holes(mask)
    return ndimage.binary_dilation(mask, iterations=4)


def _as_table(catalog: Any, storage_options: dict | None) -> Table:
    if isinstance(catalog, str):
        return read_catalog(catalog, storage_options=storage_options)
    if isinstance(catalog, pd.DataFrame):
        return Table.from_pandas(catalog)
    if isinstance(catalog, Table):
        return catalog
    raise InputError(
        "catalog must be a URL, an astropy Table, a pandas DataFrame or a cloudlab.dre.sextract "
        f"result, got {type(catalog).__name__}"
    )


def _native(values: np.ndarray) -> np.ndarray:
    return values.astype(values.dtype.newbyteorder("="), copy=False)


def _window(center: np.ndarray, size: int) -> np.ndarray:
    # Cutout2D at (X_IMAGE - 1): first pixel ceil(x0 - size / 2), as astropy's trim mode.
    return np.ceil(center - 1.0 - size / 2.0).astype(np.int64)


def _read_chunk(
    tile: HDUInfo,
    background: HDUInfo | None,
    rms: HDUInfo | float,
    segmentation: HDUInfo,
    rows: np.ndarray,
    cols: np.ndarray,
    numbers: np.ndarray,
    size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cuts of one chunk of galaxies: one batched read of all their windows per image."""
    n = len(rows)
    windows = [
        (slice(int(r0), int(r0) + size), slice(int(c0), int(c0) + size))
        for r0, c0 in zip(rows, cols, strict=True)
    ]
    obj = np.empty((n, size, size), np.float32)
    seg = np.empty((n, size, size), bool)
    noise = np.empty((n, size, size), np.float32)
    # one image's windows at a time, each placed in the outputs and let go before the next read
    for i, cut in enumerate(read_regions(tile, windows)):
        obj[i] = cut
    flag = np.where(np.isnan(obj.sum(axis=(1, 2))), np.uint8(NAN_IN_CUT), np.uint8(0))
    if background is not None:
        for i, cut in enumerate(read_regions(background, windows)):
            obj[i] -= cut.astype(np.float32)
    if isinstance(rms, float):
        noise[:] = rms
    else:
        for i, cut in enumerate(read_regions(rms, windows)):
            noise[i] = cut
    for i, (cut, number) in enumerate(
        zip(read_regions(segmentation, windows), numbers, strict=True)
    ):
        seg[i] = clean_mask(cut == number)
    return obj, seg, noise, flag


def _info(
    url: str, hdu: int, what: str, shape: tuple[int, ...], storage_options: dict | None
) -> HDUInfo:
    info = hdu_info(url, hdu, storage_options=storage_options)
    if tuple(info.shape) != shape:
        raise InputError(
            f"{what} {url!r} has shape {tuple(info.shape)}, the tile has {shape}; give the "
            "check image SExtractor made from this tile"
        )
    return info


def open_cuts(
    tile: str,
    catalog: Any,
    *,
    size: int = 128,
    margin: int = 80,
    max_stellarity: float = 0.5,
    background: str | None = None,
    rms: str | float | None = None,
    segmentation: str | None = None,
    filters: dict[str, tuple[float, float]] | None = None,
    hdu: int = 0,
    chunk_size: int | None = None,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Open DRE galaxy cuts of a tile lazily: each chunk of galaxies reads only its windows.

    Parameters
    ----------
    tile : str
        fsspec URL of the science FITS tile (``Tiles/{name}.fits``).
    catalog : str, astropy.table.Table, pandas.DataFrame or sextract result
        SExtractor catalogue with ``NUMBER``, ``X_IMAGE``, ``Y_IMAGE``, ``CLASS_STAR`` (1-based
        positions). A :func:`cloudlab.dre.sextract` result also supplies the check images.
    size : int
        Cut side in pixels (the model ``BOXSIZE``).
    margin : int
        Objects need ``margin < X_IMAGE < NAXIS1 − margin`` (same for Y), strictly.
    max_stellarity : float
        Objects need ``CLASS_STAR < max_stellarity``.
    background : str, optional
        URL of the SExtractor ``BACKGROUND`` check image; ``obj = tile − background``. Without
        it the tile is taken as already background-subtracted.
    rms : str or float
        URL of the ``BACKGROUND_RMS`` check image, or a constant σ.
    segmentation : str
        URL of the ``SEGMENTATION`` check image.
    filters : dict, optional
        Extra ``{column: (min, max)}`` cuts, each applied as ``min < value < max``.
    hdu : int
        HDU of the tile and check images.
    chunk_size : int, optional
        Galaxies per dask chunk (default: :func:`cloudlab.chunking.items_per_task`, as many
        galaxies' cuts as fit dask's ``array.chunk-size`` capped by the workers' memory).
    storage_options : dict, optional
        fsspec options for every URL.

    Returns
    -------
    xarray.Dataset
        ``obj`` (float32), ``seg`` (bool, the cleaned mask), ``rms`` (float32) with dims
        ``(galaxy, y, x)`` and ``flag`` (uint8, bit 1: the science cut contains NaN) with dim
        ``galaxy``; scalar catalogue columns and ``name`` (``EE_NNNN``) as galaxy coordinates.
    """
    if hasattr(catalog, "catalog") and hasattr(catalog, "segmentation"):
        background = catalog.background if background is None else background
        rms = catalog.rms if rms is None else rms
        segmentation = catalog.segmentation if segmentation is None else segmentation
        catalog = catalog.catalog
    if rms is None or segmentation is None:
        raise InputError(
            "open_cuts needs rms= (BACKGROUND_RMS image or a constant) and segmentation= "
            "(SEGMENTATION image), or a cloudlab.dre.sextract result as catalog"
        )
    if size < 8 or size % 2:
        raise InputError(f"size must be an even number >= 8, got {size!r}")
    if chunk_size is not None and chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size!r}")
    table = _as_table(catalog, storage_options)
    source = f"catalog {catalog}" if isinstance(catalog, str) else "the catalog"
    if len(table) == 0:
        raise InputError(
            f"{source} of tile {tile} is empty (SExtractor found no source); check the tile, "
            "or lower DETECT_THRESH in the SExtractor options"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in table.colnames]
    if missing:
        raise InputError(
            f"{source} lacks the required column(s) {missing}; add them to the SExtractor "
            "parameter file"
        )
    if margin < size // 2:
        raise InputError(f"margin {margin} is smaller than half the cut size {size}")

    tile_info = hdu_info(tile, hdu, storage_options=storage_options)
    if len(tile_info.shape) != 2:
        raise InputError(f"tile {tile!r} HDU {hdu} is not a 2-D image: shape {tile_info.shape}")
    shape = tuple(tile_info.shape)
    ny, nx = shape
    bkg_info = (
        None if background is None else _info(background, hdu, "background", shape, storage_options)
    )
    rms_info = (
        float(rms)
        if isinstance(rms, int | float)
        else _info(rms, hdu, "rms", shape, storage_options)
    )
    seg_info = _info(segmentation, hdu, "segmentation", shape, storage_options)

    x = np.asarray(table["X_IMAGE"], dtype=float)
    y = np.asarray(table["Y_IMAGE"], dtype=float)
    keep = (x > margin) & (x < nx - margin) & (y > margin) & (y < ny - margin)
    keep &= np.asarray(table["CLASS_STAR"], dtype=float) < max_stellarity
    for column, (low, high) in (filters or {}).items():
        if column not in table.colnames:
            raise InputError(
                f"filter column {column!r} is not in the catalog (columns: {table.colnames})"
            )
        value = np.asarray(table[column], dtype=float)
        keep &= (value > low) & (value < high)
    selected = table[keep]
    rows, cols = _window(y[keep], size), _window(x[keep], size)
    numbers = np.asarray(selected["NUMBER"], dtype=np.int64)

    n = len(selected)
    if chunk_size is None:
        chunk_size = items_per_task(CUT_BYTES_PER_PIXEL * size * size, maximum=n)
    starts = range(0, n, chunk_size)
    lengths = [min(chunk_size, n - s) for s in starts]
    name = "dre-cuts-" + tokenize(
        tile_info, bkg_info, rms_info, seg_info, rows, cols, numbers, size, chunk_size
    )
    layer = {
        (name, k): (
            _read_chunk,
            tile_info,
            bkg_info,
            rms_info,
            seg_info,
            rows[s : s + chunk_size],
            cols[s : s + chunk_size],
            numbers[s : s + chunk_size],
            size,
        )
        for k, s in enumerate(starts)
    }  # one layer: one task per chunk of galaxies reads all its windows
    chunks = HighLevelGraph.from_collections(name, layer, dependencies=[])
    arrays = {
        variable: task_outputs(
            chunks, name, k, lengths, () if variable == "flag" else (size, size), dtype
        )
        for k, (variable, dtype) in enumerate(
            (("obj", np.float32), ("seg", bool), ("rms", np.float32), ("flag", np.uint8))
        )
    }

    ext = (
        np.asarray(selected["EXT_NUMBER"], dtype=int)
        if "EXT_NUMBER" in selected.colnames
        else np.zeros(n, dtype=int)
    )
    coords: dict[str, Any] = {
        name: ("galaxy", _native(np.asarray(selected[name])))
        for name in selected.colnames
        if selected[name].ndim == 1
    }
    names = [f"{e:02d}_{k:04d}" for e, k in zip(ext, numbers, strict=True)]
    coords["name"] = ("galaxy", np.array(names, dtype=str))
    coords["y"] = np.arange(size)
    coords["x"] = np.arange(size)
    dims = ("galaxy", "y", "x")
    ds = xr.Dataset(
        {
            "obj": (dims, arrays["obj"]),
            "seg": (dims, arrays["seg"]),
            "rms": (dims, arrays["rms"]),
            "flag": ("galaxy", arrays["flag"]),
        },
        coords=coords,
        attrs={"tile": tile, "size": size, "margin": margin, "max_stellarity": max_stellarity},
    )
    ds["flag"].attrs["flag_meanings"] = f"{NAN_IN_CUT}: nan_in_cut"
    return ds
