"""DRE model cubes: generate Sérsic grids, write and read them in DRE's FITS layout.

A DRE cube holds one ``BOXSIZE``² stamp per model (index n, axis ratio q, angle t, log radius
r). On disk each 2-D plane ``[n, q]`` is a mosaic with rows of stamps along the angle and
columns along log r, so the flat data reshape in C order to ``(N_n, N_q, N_t, B, N_r, B)``;
swapping the two middle axes gives ``(N_n, N_q, N_t, N_r, B, B)``. Axis values are
``X0 + i·DX`` from the header keys below.
"""

from __future__ import annotations

from math import prod

import dask.array as da
import numpy as np
import xarray as xr
from astropy.io import fits
from dask.base import tokenize

from cloudlab.backend import asnumpy
from cloudlab.cluster import compute
from cloudlab.dre.sersic import sersic_stamp
from cloudlab.errors import FITSFormatError, InputError
from cloudlab.storage import atomic_write

__all__ = [
    "AXES",
    "DEFAULT_INDEX",
    "UNITS",
    "check_models",
    "load_models",
    "model_grid",
    "write_models",
]

#: Model axes in DRE's order, with their (count, start, step) header keys.
AXES: dict[str, tuple[str, str, str]] = {
    "index": ("NINDEX", "INDEX0", "DINDEX"),
    "ax_ratio": ("NAXRAT", "AXRAT0", "DAXRAT"),
    "angle": ("NPOSANG", "POSANG0", "DPOSANG"),
    "log_r": ("NLOGH", "LOGH0", "DLOGH"),
}
#: Units of the model axes.
UNITS = {"index": "", "ax_ratio": "", "angle": "deg", "log_r": "log10(pix)"}
#: Sérsic index DRE assumes for cubes without an index axis (de Vaucouleurs).
DEFAULT_INDEX = 4.0

Axis = tuple[float, float, int]


def _axis_values(start: float, step: float, count: int, name: str) -> np.ndarray:
    try:
        whole = int(count) == count and count >= 1
    except (TypeError, ValueError, OverflowError):  # NaN, inf, strings
        whole = False
    if not whole:
        raise InputError(f"{name}: the number of values must be a positive integer, got {count!r}")
    if count > 1 and not step:
        raise InputError(f"{name}: step must be non-zero when there are several values")
    return float(start) + float(step) * np.arange(int(count))


def model_grid(
    *,
    ax_ratio: Axis = (0.1, 0.1, 10),
    angle: Axis = (0.0, 15.0, 13),
    log_r: Axis = (-0.7, 0.12, 21),
    index: Axis | None = None,
    boxsize: int = 128,
    dtype: type = np.float32,
    url: str | None = None,
    storage_options: dict | None = None,
) -> xr.DataArray:
    """Build a PSF-free Sérsic model cube on DRE's axes (lazily, one chunk per (n, q) plane).

    Parameters
    ----------
    ax_ratio, angle, log_r : (start, step, count)
        Axis definitions as DRE's header keys ``X0, DX, N``. Defaults: axis ratio b/a
        0.1–1.0 (×10), angle 0–180° step 15 (×13), log10 R_e −0.70 + 0.12·k (×21).
    index : (start, step, count), optional
        A Sérsic index axis (header ``NINDEX``/``INDEX0``/``DINDEX``). Without it the cube is
        de Vaucouleurs (n = 4) and is written without ``NINDEX``, like ``modelbulge.fits``.
    boxsize : int
        Stamp side in pixels (``BOXSIZE``).
    dtype : numpy dtype
        Pixel type of the cube (DRE's CPU path uses float32).
    url : str, optional
        When given, the cube is computed and written there in DRE's FITS layout
        (see :func:`write_models`).
    storage_options : dict, optional
        fsspec options for ``url``.

    Returns
    -------
    xarray.DataArray
        Dims ``(index, ax_ratio, angle, log_r, y, x)`` with the axis values as coordinates.
        Each stamp has unit flux and is centred on pixel ``(boxsize // 2, boxsize // 2)``.
    """
    values = {
        "index": (
            np.array([DEFAULT_INDEX]) if index is None else _axis_values(*index, name="index")
        ),
        "ax_ratio": _axis_values(*ax_ratio, name="ax_ratio"),
        "angle": _axis_values(*angle, name="angle"),
        "log_r": _axis_values(*log_r, name="log_r"),
    }
    if np.any(values["ax_ratio"] <= 0) or np.any(values["ax_ratio"] > 1 + 1e-9):
        raise InputError(
            f"model_grid: ax_ratio values must lie in (0, 1], got {values['ax_ratio']}"
        )
    if np.any(values["index"] <= 0):
        raise InputError(f"model_grid: Sérsic index values must be > 0, got {values['index']}")
    if not isinstance(boxsize, int | np.integer) or boxsize < 16:
        raise InputError(f"model_grid: boxsize must be an integer of at least 16, got {boxsize!r}")
    n_t, n_r = len(values["angle"]), len(values["log_r"])
    chunks = (
        (1,) * len(values["index"]),
        (1,) * len(values["ax_ratio"]),
        (n_t,),
        (n_r,),
        (boxsize,),
        (boxsize,),
    )
    data = da.map_blocks(
        _render_plane,
        dtype=dtype,
        chunks=chunks,
        meta=np.empty((0,) * 6, dtype),
        values=values,
        boxsize=boxsize,
        name="dre-model-grid-" + tokenize(values, boxsize, np.dtype(dtype).str),
    )
    header = {}
    definitions = {"index": index, "ax_ratio": ax_ratio, "angle": angle, "log_r": log_r}
    for name, (n_key, x0_key, dx_key) in AXES.items():
        if definitions[name] is not None:
            start, step, count = definitions[name]
            header.update({x0_key: float(start), dx_key: float(step), n_key: int(count)})
    header["BOXSIZE"] = int(boxsize)
    cube = _as_dataarray(data, values, header, has_index=index is not None)
    if url is not None:
        write_models(cube, url, storage_options=storage_options)
    return cube


def _render_plane(
    values: dict[str, np.ndarray], boxsize: int, block_info: dict | None = None
) -> np.ndarray:
    info = block_info[None]
    n, q = info["chunk-location"][:2]
    out = np.empty(info["chunk-shape"], dtype=info["dtype"])
    for t, angle in enumerate(values["angle"]):
        for r, log_r in enumerate(values["log_r"]):
            out[0, 0, t, r] = sersic_stamp(
                values["index"][n], values["ax_ratio"][q], angle, log_r, size=boxsize
            )
    return out


def _as_dataarray(
    data: da.Array, values: dict[str, np.ndarray], header: dict, has_index: bool
) -> xr.DataArray:
    boxsize = data.shape[-1]
    coords = {name: (name, v, {"units": UNITS[name]}) for name, v in values.items()}
    coords["y"] = np.arange(boxsize)
    coords["x"] = np.arange(boxsize)
    return xr.DataArray(
        data,
        dims=("index", "ax_ratio", "angle", "log_r", "y", "x"),
        coords=coords,
        name="models",
        attrs={"dre_header": dict(header), "has_index": bool(has_index)},
    )


def _fits_header(cube: xr.DataArray) -> fits.Header:
    header = fits.Header()
    has_index = bool(cube.attrs.get("has_index", cube.sizes["index"] > 1))
    for name, (n_key, x0_key, dx_key) in AXES.items():
        if name == "index" and not has_index:
            continue
        v = np.asarray(cube[name].values, dtype=float)
        step = float(v[1] - v[0]) if v.size > 1 else 0.0
        if v.size > 2 and not np.allclose(np.diff(v), step, rtol=1e-6, atol=1e-9):
            raise InputError(
                f"axis {name!r} is not evenly spaced; DRE's header cannot hold it: write a grid "
                "made by model_grid or load_models"
            )
        header[n_key] = (int(v.size), f"number of {name} values")
        header[x0_key] = (float(v[0]), f"first {name} value")
        header[dx_key] = (step, f"{name} step")
    header["BOXSIZE"] = (int(cube.sizes["x"]), "stamp side [pix]")
    return header


def write_models(cube: xr.DataArray, url: str, *, storage_options: dict | None = None) -> None:
    """Write a model cube in DRE's FITS layout (atomically).

    The primary HDU holds ``(N_q, N_t·B, N_r·B)`` (``(N_n, N_q, N_t·B, N_r·B)`` with an index
    axis) and the header keys ``NAXRAT/AXRAT0/DAXRAT``, ``NPOSANG/POSANG0/DPOSANG``,
    ``NLOGH/LOGH0/DLOGH``, ``BOXSIZE`` and, for index cubes, ``NINDEX/INDEX0/DINDEX``.

    Parameters
    ----------
    cube : xarray.DataArray
        Dims ``(index, ax_ratio, angle, log_r, y, x)`` as made by :func:`model_grid` or
        :func:`load_models`.
    url : str
        fsspec URL of the FITS file.
    storage_options : dict, optional
        fsspec options.
    """
    expected = ("index", "ax_ratio", "angle", "log_r", "y", "x")
    if tuple(cube.dims) != expected:
        raise InputError(
            f"{url}: model cube dims must be {expected}, got {tuple(cube.dims)}: use a cube "
            "from model_grid or load_models"
        )
    if cube.sizes["x"] != cube.sizes["y"]:
        raise InputError(
            f"{url}: model stamps must be square, got {cube.sizes['y']}x{cube.sizes['x']}"
        )
    header = _fits_header(cube)
    n_n, n_q, n_t, n_r, b, _ = cube.shape
    data = np.asarray(cube.data.compute() if hasattr(cube.data, "compute") else cube.data)
    data = data.swapaxes(-2, -3).reshape(n_n, n_q, n_t * b, n_r * b)
    if "NINDEX" not in header:
        data = data[0]
    with atomic_write(url, storage_options=storage_options) as path:
        fits.PrimaryHDU(data, header=header).writeto(path)


def _header_axes(header: fits.Header, url: str) -> tuple[dict[str, np.ndarray], bool]:
    values = {}
    for name, keys in AXES.items():
        if name == "index" and "NINDEX" not in header:
            values[name] = np.array([DEFAULT_INDEX])
            continue
        missing = [k for k in keys if k not in header]
        if missing:
            raise FITSFormatError(f"{url}: DRE model cube header lacks {', '.join(missing)}")
        n_key, x0_key, dx_key = keys
        values[name] = _axis_values(
            float(header[x0_key]), float(header[dx_key]), int(header[n_key]), f"{url} {name}"
        )
    return values, "NINDEX" in header


def load_models(url: str, *, hdu: int = 0, storage_options: dict | None = None) -> xr.DataArray:
    """Open a DRE-layout model cube lazily (headers now, one ranged read per (n, q) plane later).

    Works for the original ``modelbulge.fits`` (no ``NINDEX``: n = 4 is assumed, as DRE does)
    and for cubes with a Sérsic index axis, at any ``BOXSIZE`` (inferred from ``NAXIS1`` /
    ``NLOGH`` when the key is absent).

    Parameters
    ----------
    url : str
        fsspec URL of the FITS cube.
    hdu : int
        HDU holding the cube.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    xarray.DataArray
        Dims ``(index, ax_ratio, angle, log_r, y, x)``, dask-backed, with the parameter axes
        as coordinates and the DRE header keys in ``attrs["dre_header"]``.

    Raises
    ------
    FITSFormatError
        When the header lacks DRE's keys or disagrees with the data shape.
    """
    from cloudlab.fits import hdu_info

    info = hdu_info(url, hdu, storage_options=storage_options)
    header = info.header
    values, has_index = _header_axes(header, url)
    n_n, n_q, n_t, n_r = (len(values[k]) for k in AXES)
    shape = tuple(info.shape)
    if len(shape) < 2:
        raise FITSFormatError(f"{url}: HDU {hdu} has shape {shape}; a DRE cube has at least 2 axes")
    if "BOXSIZE" in header:
        boxsize = int(header["BOXSIZE"])
    else:
        boxsize = shape[-1] // n_r
    leading = prod(shape[:-2])
    if shape[-2:] != (n_t * boxsize, n_r * boxsize) or leading != n_n * n_q:
        raise FITSFormatError(
            f"{url}: data shape {shape} disagrees with the header "
            f"(NINDEX={n_n}, NAXRAT={n_q}, NPOSANG={n_t}, NLOGH={n_r}, BOXSIZE={boxsize} "
            f"imply {n_n * n_q} planes of {(n_t * boxsize, n_r * boxsize)})"
        )
    chunks = ((1,) * n_n, (1,) * n_q, (n_t,), (n_r,), (boxsize,), (boxsize,))
    data = da.map_blocks(
        _read_plane,
        dtype=info.dtype,
        chunks=chunks,
        meta=np.empty((0,) * 6, info.dtype),
        info=info,
        n_q=n_q,
        name="dre-models-" + tokenize(url, hdu, str(header), info.data_offset),
    )
    keys = {k: header[k] for keys in AXES.values() for k in keys if k in header}
    keys["BOXSIZE"] = boxsize
    cube = _as_dataarray(data, values, keys, has_index)
    cube.attrs["url"] = url
    return cube


def _read_plane(info, n_q: int, block_info: dict | None = None) -> np.ndarray:
    from cloudlab.fits import read_region

    n, q = block_info[None]["chunk-location"][:2]
    _, _, n_t, n_r, b, _ = block_info[None]["chunk-shape"]
    lead = np.unravel_index(n * n_q + q, info.shape[:-2]) if len(info.shape) > 2 else ()
    region = tuple(slice(int(i), int(i) + 1) for i in lead) + (slice(None), slice(None))
    plane = np.asarray(read_region(info, region)).reshape(n_t, b, n_r, b)
    return plane.swapaxes(1, 2)[None, None]


#: dask names of model cubes already found clean (a lazily read cube is checked once).
_CHECKED: set[str] = set()


def check_models(models: xr.DataArray) -> None:
    """Refuse a model cube holding models with NaN/infinite pixels or no non-zero pixel.

    Such a model gives a NaN or meaningless χ for every galaxy (flux matching divides by the
    model's sum). A lazily read cube (:func:`load_models`) is read once for the check, when
    :func:`cloudlab.dre.fit` prepares its graph, and remembered by its dask name, so fitting
    many tiles against the same cube checks it once.

    Parameters
    ----------
    models : xarray.DataArray
        Cube with the stamp dims ``(y, x)`` last; ``attrs["url"]`` names it in the message.

    Raises
    ------
    InputError
        Naming the cube, how many models are bad and the first few by index and axis values.
    """
    data = models.data
    key = data.name if isinstance(data, da.Array) else None
    if key in _CHECKED:
        return
    stamp = (-2, -1)
    if isinstance(data, da.Array):
        not_finite = ~da.isfinite(data).all(axis=stamp)
        empty = ~(data != 0).any(axis=stamp)
        not_finite, empty = compute(not_finite, empty, progress=False)
    else:
        values = np.asarray(asnumpy(data))
        not_finite = ~np.isfinite(values).all(axis=stamp)
        empty = ~(values != 0).any(axis=stamp)
    not_finite, empty = np.asarray(asnumpy(not_finite)), np.asarray(asnumpy(empty))
    bad = not_finite | empty
    if bad.any():
        dims = models.dims[:-2]
        first = []
        for where in np.argwhere(bad)[:5]:
            axes = ", ".join(
                f"{d}={models[d].values[i]:g}" if d in models.coords else f"{d}={i}"
                for d, i in zip(dims, where, strict=True)
            )
            first.append(f"{list(map(int, where))} ({axes})")
        name = models.attrs.get("url", "the model cube")
        raise InputError(
            f"{name}: {int(bad.sum())} of {bad.size} models are unusable "
            f"({int(not_finite.sum())} with NaN/infinite pixels, {int(empty.sum())} all zero); "
            f"first at {list(dims)} = {'; '.join(first)}; regenerate the cube with "
            "`cloudlab dre models` or drop those models"
        )
    if key is not None:
        _CHECKED.add(key)
