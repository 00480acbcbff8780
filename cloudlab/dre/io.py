"""DRE products on any fsspec URL: Summary FITS, χ cubes (zarr, DRE's HDF5), cuts, mosaics.

Every writer goes through :mod:`cloudlab.storage` (:func:`~cloudlab.storage.write_file`,
:func:`~cloudlab.storage.write_zarr`) and follows its overwrite policy: with ``overwrite=False``
(the default) an existing destination is refused, naming it, before anything is computed; with
``overwrite=True`` it is replaced only once the new product is complete. An error never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import io
import sys
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from astropy.io import fits
from astropy.table import Table
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from cloudlab import storage
from cloudlab.backend import asnumpy
from cloudlab.chunking import client_batches, items_per_task, task_outputs
from cloudlab.dre.cuts import CUT_BYTES_PER_PIXEL
from cloudlab.errors import FITSFormatError, InputError
from cloudlab.storage import check_writable, resolve, write_file

__all__ = [
    "COMPRESSION",
    "mosaic_figure",
    "mosaics",
    "read_chi_hdf5",
    "read_chi_zarr",
    "read_cuts_hdf5",
    "read_mosaic",
    "read_summary",
    "write_chi_hdf5",
    "write_chi_zarr",
    "write_cuts_hdf5",
    "write_mosaics",
    "write_summary",
]

#: DRE's HDF5 compression levels.
COMPRESSION: dict[str, dict[str, Any]] = {
    "none": {},
    "low": {"compression": "lzf"},
    "medium": {"compression": "gzip", "compression_opts": 4},
    "high": {"compression": "gzip", "compression_opts": 9},
}


def _compression(level: str) -> dict[str, Any]:
    if level not in COMPRESSION:
        raise InputError(f"compression must be one of {sorted(COMPRESSION)}, got {level!r}")
    return COMPRESSION[level]


def _compute(*collections: Any, progress: bool) -> tuple:
    from cloudlab.cluster import compute

    return compute(*collections, progress=progress)


def write_summary(
    table: Table,
    url: str,
    *,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> str:
    """Write a Summary table as a FITS binary table (DRE: ``Summary/{tile}_dre.fits``).

    Returns
    -------
    str
        ``url``.
    """
    with write_file(url, overwrite=overwrite, storage_options=storage_options) as path:
        table.write(path, format="fits")
    return url


def read_summary(url: str, *, storage_options: dict | None = None) -> Table:
    """Read a Summary table written by :func:`write_summary`."""
    data = storage.read_bytes(url, storage_options=storage_options)
    try:
        return Table.read(io.BytesIO(data), format="fits")
    except (OSError, ValueError) as exc:
        raise FITSFormatError(f"{url}: not a DRE Summary table ({exc})") from exc


def write_chi_hdf5(
    result: xr.Dataset,
    url: str,
    *,
    compression: str = "medium",
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> int:
    """Write χ cubes in DRE's HDF5 layout (DRE: ``Chi/{tile}_chi.h5``).

    One float32 dataset ``(N_n, N_q, N_t, N_r)`` per galaxy at the file root, named ``EE_NNNN``
    (the ``name`` coordinate). Galaxies with a non-zero ``flag`` are left out, as DRE writes
    nothing for failed cuts. χ is computed and written a batch of whole chunks at a time (about
    dask's ``array.chunk-size`` each), so the client never holds every galaxy's χ at once.

    Parameters
    ----------
    result : xarray.Dataset
        Output of :func:`cloudlab.dre.fit`.
    url : str
        Destination URL.
    compression : {'none', 'low', 'medium', 'high'}
        DRE's levels: none, lzf, gzip 4, gzip 9.
    overwrite : bool
        Replace an existing file (else refused before anything is computed).
    storage_options : dict, optional
        fsspec options.
    progress : bool
        Progress bar (stderr) while χ is computed.

    Returns
    -------
    int
        Number of datasets written.
    """
    import h5py

    options = _compression(compression)
    check_writable(url, overwrite=overwrite, storage_options=storage_options)
    names = np.asarray(result["name"].values)
    chi, flag = result["chi"].data, result["flag"].data
    written = 0
    with (
        write_file(url, overwrite=overwrite, storage_options=storage_options) as path,
        h5py.File(path, "w") as h5,
    ):
        for start, stop in _galaxy_batches(result["chi"], progress=progress, what="write χ"):
            block_chi, block_flag = _compute(chi[start:stop], flag[start:stop], progress=False)
            block_chi, block_flag = asnumpy(block_chi), asnumpy(block_flag)
            for i in np.flatnonzero(block_flag == 0):
                data = block_chi[i].astype(np.float32)
                h5.create_dataset(str(names[start + i]), data=data, **options)
                written += 1
    return written


def _galaxy_batches(variable: xr.DataArray, *, progress: bool, what: str):
    """``(start, stop)`` ranges of whole chunks of galaxies of ``variable``
    (:func:`cloudlab.chunking.client_batches`), with a progress bar over galaxies on stderr
    when ``progress``."""
    from tqdm import tqdm

    n = variable.sizes["galaxy"]
    with tqdm(total=n, desc=what, unit="galaxy", file=sys.stderr, disable=not progress) as bar:
        for start, stop in client_batches(variable.data):
            yield start, stop
            bar.update(stop - start)


def read_chi_hdf5(url: str, *, storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """Read a DRE ``_chi.h5`` file as ``{EE_NNNN: χ cube}``."""
    import h5py

    fs, path = resolve(url, storage_options=storage_options)
    with fs.open(path, "rb") as f, h5py.File(f, "r") as h5:
        return {name: np.asarray(h5[name]) for name in h5}


def write_chi_zarr(
    result: xr.Dataset,
    url: str,
    *,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> str:
    """Write ``chi`` and ``flag`` (with all coordinates) to a zarr (v2) store.

    Written by :func:`cloudlab.storage.write_zarr`: refused before any computation when ``url``
    exists and ``overwrite`` is False; never half-written; a previous store survives until the
    new one is complete.

    Returns
    -------
    str
        ``url``.
    """
    ds = result[["chi", "flag"]]
    ds.attrs = {k: v for k, v in ds.attrs.items() if isinstance(v, str | int | float)}
    ds.attrs["dre_header"] = repr(result.attrs.get("dre_header", {}))
    return storage.write_zarr(
        ds,
        url,
        overwrite=overwrite,
        storage_options=storage_options,
        progress=progress,
        zarr_format=2,
    )


def read_chi_zarr(url: str, *, storage_options: dict | None = None) -> xr.Dataset:
    """Open a store written by :func:`write_chi_zarr` (lazily)."""
    ds = storage.read_zarr(url, storage_options=storage_options)
    if "chi" not in ds:
        raise InputError(f"{url}: not a DRE chi store (no 'chi' variable)")
    return ds


def write_cuts_hdf5(
    cuts: xr.Dataset,
    url: str,
    *,
    compression: str = "medium",
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> int:
    """Write cuts in DRE's layout (DRE: ``Cuts/{tile}_cuts.h5``).

    One group ``EE_NNNN`` per galaxy with ``obj`` (float32), ``seg`` (bool) and ``rms``
    (float32). Cuts flagged by :func:`cloudlab.dre.open_cuts` (NaN in the science cut)
    are left out, as DRE does. The cuts are computed a batch of whole chunks at a time (about
    dask's ``array.chunk-size``); an existing
    ``url`` is refused before that unless ``overwrite``. Returns the number of groups written.
    """
    import h5py

    options = _compression(compression)
    check_writable(url, overwrite=overwrite, storage_options=storage_options)
    names = np.asarray(cuts["name"].values)
    written = 0
    variables = ["obj", "seg", "rms"] + (["flag"] if "flag" in cuts else [])
    with (
        write_file(url, overwrite=overwrite, storage_options=storage_options) as path,
        h5py.File(path, "w") as h5,
    ):
        for start, stop in _galaxy_batches(cuts["obj"], progress=False, what="write cuts"):
            (block,) = _compute(cuts[variables].isel(galaxy=slice(start, stop)), progress=False)
            for i in range(stop - start):
                if "flag" in block and int(block["flag"][i]) != 0:
                    continue
                group = h5.create_group(str(names[start + i]))
                group.create_dataset(
                    "obj", data=block["obj"].values[i].astype(np.float32), **options
                )
                group.create_dataset("seg", data=block["seg"].values[i].astype(bool), **options)
                group.create_dataset(
                    "rms", data=block["rms"].values[i].astype(np.float32), **options
                )
                written += 1
    return written


_CUT_VARIABLES = ("obj", "seg", "rms")
_CUT_DTYPES = (np.float32, bool, np.float32)


def _read_cuts_chunk(
    url: str, names: list[str], storage_options: dict | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``obj``, ``seg``, ``rms`` of the groups ``names`` of a cuts file (one open per chunk)."""
    import h5py

    fs, path = resolve(url, storage_options=storage_options)
    try:
        with fs.open(path, "rb") as f, h5py.File(f, "r") as h5:
            shape = (len(names), *h5[names[0]]["obj"].shape)
            obj, seg, rms = (np.empty(shape, dtype) for dtype in _CUT_DTYPES)
            for i, n in enumerate(names):  # each galaxy straight into the outputs
                for out, v in zip((obj, seg, rms), _CUT_VARIABLES, strict=True):
                    out[i] = h5[n][v][()]
    except FileNotFoundError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise InputError(
            f"{url}: cuts of {names[0]}..{names[-1]} unreadable, truncated or changed since "
            f"the file was opened ({err}); rerun `cloudlab dre cuts` for this tile"
        ) from err
    return obj, seg, rms


def read_cuts_hdf5(url: str, *, storage_options: dict | None = None) -> xr.Dataset:
    """Open a DRE ``_cuts.h5`` file lazily in the Dataset layout of ``open_cuts``.

    Only the group names and the stamp shape are read now; each task of 32 galaxies reads
    its own groups, so the graph carries names, not pixels. ``EXT_NUMBER`` and ``NUMBER`` are
    parsed from the group names ``EE_NNNN``.

    Raises
    ------
    InputError
        For a truncated or foreign file, or one without cuts, or a group without ``obj``,
        ``seg`` or ``rms``; the message names the file.
    """
    import h5py

    fs, path = resolve(url, storage_options=storage_options)
    try:
        with fs.open(path, "rb") as f, h5py.File(f, "r") as h5:
            names = sorted(h5)
            lacking = [n for n in names if not all(v in h5[n] for v in _CUT_VARIABLES)]
            shape = h5[names[0]]["obj"].shape if names else ()
    except FileNotFoundError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise InputError(
            f"{url}: not a readable DRE cuts file, truncated, not HDF5 or without obj/seg/rms "
            f"per galaxy ({err}); rerun `cloudlab dre cuts` for this tile"
        ) from err
    if not names:
        raise InputError(f"{url}: no cuts in the file")
    if lacking or len(shape) != 2:
        raise InputError(
            f"{url}: not a readable DRE cuts file, group(s) {lacking[:5] or names[:1]} without "
            "2-D obj/seg/rms; rerun `cloudlab dre cuts` for this tile"
        )
    dims = ("galaxy", "y", "x")
    ext, number = zip(*(map(int, n.split("_")) for n in names), strict=True)
    per_task = items_per_task(CUT_BYTES_PER_PIXEL * int(np.prod(shape)), maximum=len(names))
    parts = [names[lo : lo + per_task] for lo in range(0, len(names), per_task)]
    name = "dre-read-cuts-" + tokenize(url, names, storage_options)
    layer = {
        (name, k): (_read_cuts_chunk, url, part, storage_options) for k, part in enumerate(parts)
    }
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    lengths = [len(part) for part in parts]
    arrays = {
        v: task_outputs(graph, name, k, lengths, tuple(shape), dtype)
        for k, (v, dtype) in enumerate(
            zip(_CUT_VARIABLES, (np.float32, bool, np.float32), strict=True)
        )
    }
    return xr.Dataset(
        {
            **{v: (dims, arrays[v]) for v in _CUT_VARIABLES},
            "flag": ("galaxy", da.zeros(len(names), np.uint8, chunks=(tuple(lengths),))),
        },
        coords={
            "name": ("galaxy", np.array(names)),
            "EXT_NUMBER": ("galaxy", np.array(ext)),
            "NUMBER": ("galaxy", np.array(number)),
            "y": np.arange(shape[0]),
            "x": np.arange(shape[1]),
        },
    )


def mosaics(result: xr.Dataset, cuts: xr.Dataset) -> xr.DataArray:
    """Build (data | mask | model | residual) mosaics for each galaxy (lazily).

    Panels as DRE: the cut, ``seg · F_D / N_seg``, the best model ``s · M_best`` and
    ``data − s · M_best`` over the full stamp (the flux scale comes from the mask). Unlike DRE,
    the panels are not transposed.

    Parameters
    ----------
    result : xarray.Dataset
        Output of :func:`cloudlab.dre.fit` (``chi`` and the convolved ``models``).
    cuts : xarray.Dataset
        The cuts that were fitted.

    Returns
    -------
    xarray.DataArray
        float64 ``(galaxy, y, x)`` with ``x`` of length ``4 · BOXSIZE``; NaN for flagged galaxies.
    """
    b = cuts.sizes["x"]
    obj, seg = (cuts[v].chunk({"y": -1, "x": -1}).data for v in ("obj", "seg"))
    chi = result["chi"].data.rechunk({1: -1, 2: -1, 3: -1, 4: -1}).rechunk({0: obj.chunks[0]})
    models = result["models"].data.rechunk(-1)
    data = da.blockwise(
        _mosaic_block,
        "gyX",
        chi,
        "gnqtr",
        obj,
        "gyx",
        seg,
        "gyx",
        models,
        "nqtryx",
        new_axes={"X": 4 * b},
        dtype=np.float64,
        concatenate=True,
        meta=np.empty((0, 0, 0)),
    )
    return xr.DataArray(
        data,
        dims=("galaxy", "y", "x"),
        coords={k: c for k, c in result.coords.items() if c.dims == ("galaxy",)},
        name="mosaic",
    )


def _mosaic_block(chi, obj, seg, models):
    chi, obj, seg, models = (asnumpy(a) for a in (chi, obj, seg, models))
    g, b = obj.shape[0], obj.shape[-1]
    flat = models.reshape(-1, b, b)
    out = np.full((g, b, 4 * b), np.nan)
    for i in range(g):
        cube = chi[i].reshape(-1)
        if np.all(np.isnan(cube)) or not seg[i].any():
            continue
        model = flat[np.nanargmin(cube)].astype(np.float64)
        data = obj[i].astype(np.float64)
        flux = np.nansum(data[seg[i]])
        scaled = model * (flux / model[seg[i]].sum())
        out[i] = np.hstack([data, seg[i] * flux / seg[i].sum(), scaled, data - scaled])
    return out


def write_mosaics(
    mosaic: xr.DataArray,
    directory: str,
    *,
    prefix: str = "",
    png: bool = True,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> list[str]:
    """Write each galaxy's mosaic as ``{prefix}{EE_NNNN}_mosaic.fits`` (and ``.png``).

    Parameters
    ----------
    mosaic : xarray.DataArray
        Output of :func:`mosaics`.
    directory : str
        Destination directory URL (DRE: ``Mosaics/{tile}``).
    prefix : str
        File name prefix (DRE: ``{tile}_``).
    png : bool
        Also write a PNG rendering (arcsinh stretch per panel row).
    overwrite : bool
        Replace existing files; without it any existing mosaic file of these galaxies is
        refused before anything is computed.
    storage_options : dict, optional
        fsspec options.
    progress : bool
        Progress bar (stderr) while the mosaics are computed and written.

    Returns
    -------
    list of str
        URLs of the FITS files written (flagged galaxies are skipped).
    """
    names = np.asarray(mosaic["name"].values)
    directory = directory.rstrip("/")
    suffixes = ("_mosaic.fits", "_mosaic.png") if png else ("_mosaic.fits",)
    check_writable(
        [f"{directory}/{prefix}{name}{suffix}" for name in names for suffix in suffixes],
        overwrite=overwrite,
        storage_options=storage_options,
    )
    data = mosaic.data if isinstance(mosaic.data, da.Array) else da.from_array(mosaic.data)
    written = da.map_blocks(
        _write_mosaic_block,
        data,
        names=names,
        directory=directory,
        prefix=prefix,
        png=png,
        overwrite=overwrite,
        storage_options=storage_options,
        drop_axis=[1, 2],
        dtype=object,
        meta=np.empty((0,), dtype=object),
    )
    (urls,) = _compute(written, progress=progress)  # one graph: models convolved once
    return [url for url in urls if url]


def read_mosaic(url: str, *, storage_options: dict | None = None) -> np.ndarray:
    """Read one mosaic written by :func:`write_mosaics` (float64 ``(y, 4 · x)``)."""
    data = storage.read_bytes(url, storage_options=storage_options)
    try:
        return np.asarray(fits.getdata(io.BytesIO(data)), np.float64)
    except (OSError, IndexError) as exc:
        raise FITSFormatError(f"{url}: not a mosaic FITS file ({exc})") from exc


def _write_mosaic_block(
    block, names, directory, prefix, png, overwrite, storage_options, block_info=None
) -> np.ndarray:
    block = asnumpy(block)
    start = block_info[0]["array-location"][0][0]
    out = np.full(block.shape[0], "", dtype=object)
    for i, image in enumerate(block):
        if np.all(np.isnan(image)):
            continue
        base = f"{directory}/{prefix}{names[start + i]}_mosaic"
        with write_file(base + ".fits", overwrite=overwrite, storage_options=storage_options) as p:
            fits.PrimaryHDU(image).writeto(p)
        if png:
            _write_png(image, base + ".png", overwrite, storage_options)
        out[i] = base + ".fits"
    return out


def mosaic_figure(image: np.ndarray):
    """A labelled figure of one galaxy's (data | mask | model | residual) mosaic.

    Parameters
    ----------
    image : numpy.ndarray
        One ``(y, 4 · BOXSIZE)`` mosaic from :func:`mosaics`.

    Returns
    -------
    matplotlib.figure.Figure
        asinh-stretched panels with pixel axes and a labelled colour bar.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    b = image.shape[0]
    scale = np.nanpercentile(np.abs(image[:, :b]), 99) or 1.0
    fig = Figure(figsize=(8, 2.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    shown = ax.imshow(np.arcsinh(image / (0.05 * scale)), origin="lower", cmap="gray")
    for k, label in enumerate(("data", "mask", "model", "residual")):
        ax.text(k * b + 3, b - 10, label, color="yellow", fontsize=8)
    ax.set_xlabel("x [pixel] (four panels side by side)")
    ax.set_ylabel("y [pixel]")
    fig.colorbar(shown, ax=ax, label=f"asinh(counts / {0.05 * scale:.3g})", pad=0.01)
    return fig


def _write_png(image: np.ndarray, url: str, overwrite: bool, storage_options: dict | None) -> None:
    fig = mosaic_figure(image)
    with write_file(url, overwrite=overwrite, storage_options=storage_options) as path:
        fig.savefig(
            path, format="png", dpi=100, bbox_inches="tight", metadata={"Software": "cloudlab"}
        )
