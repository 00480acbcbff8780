"""PSF handling, model convolution and the blockwise χ² fit of galaxy cuts against a model grid."""

from __future__ import annotations

import warnings
from typing import Any

import dask.array as da
import numpy as np
import scipy.fft
import xarray as xr
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from cloudlab.backend import array_module, asnumpy
from cloudlab.dre.kernels import chi_block
from cloudlab.dre.models import AXES, check_models
from cloudlab.errors import REASON, STATUS, STATUS_OK, FITSFormatError, InputError
from cloudlab.storage import read_bytes

__all__ = [
    "FLAGS",
    "FLAG_REASONS",
    "MODEL_DIMS",
    "convolve_models",
    "fit",
    "flag_reasons",
    "flag_status",
    "read_psf",
]

#: Bits of the per-galaxy ``flag``: why a galaxy has no usable χ (each name is also the
#: galaxy's ``status`` code, the lowest bit set winning).
FLAGS = {1: "nan_in_cut", 2: "empty_mask", 4: "chi_all_nan"}
#: The sentence of each ``flag`` bit, as written to the ``reason`` variable.
FLAG_REASONS = {
    1: "the cut has NaN pixels (it touches the tile's edge or a masked area)",
    2: "the galaxy's segmentation mask in the cut is empty",
    4: "chi is NaN for every model (rms or model values are not usable)",
}
MODEL_DIMS = tuple(AXES)
STATUS_DTYPE = "<U16"
REASON_DTYPE = "<U160"


def flag_reasons(flag: int) -> str:
    """Return the comma-separated reasons encoded in a ``flag`` value ('' when 0)."""
    return ",".join(reason for bit, reason in FLAGS.items() if int(flag) & bit)


def flag_status(flag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-galaxy ``status`` and ``reason`` from ``flag`` values.

    Parameters
    ----------
    flag : numpy.ndarray
        ``flag`` bitmask values (see :data:`FLAGS`).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``status``: ``"ok"`` where the flag is 0, else the name of its lowest bit;
        ``reason``: '' or the sentences of all bits set, joined by "; ".
    """
    flag = np.asarray(asnumpy(flag)).astype(np.uint8)
    status = np.full(flag.shape, STATUS_OK, dtype=STATUS_DTYPE)
    reason = np.full(flag.shape, "", dtype=object)
    for bit in sorted(FLAGS, reverse=True):  # the lowest bit set is the status
        status[(flag & bit) != 0] = FLAGS[bit]
    for bit in sorted(FLAGS):
        has = (flag & bit) != 0
        reason[has] = [f"{r}; {FLAG_REASONS[bit]}" if r else FLAG_REASONS[bit] for r in reason[has]]
    return status, reason.astype(REASON_DTYPE)


def _psf_from_fits(url: str, storage_options: dict | None) -> np.ndarray:
    import io

    data = read_bytes(url, storage_options=storage_options)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)  # truncation is raised below
            with fits.open(io.BytesIO(data)) as hdul:
                primary = hdul[0].data
                tables = [
                    (h.header.get("ACCEPTED", 0), h.data["PSF_MASK"])
                    for h in hdul[1:]
                    if isinstance(h, fits.BinTableHDU) and "PSF_MASK" in h.columns.names
                ]
    except (OSError, ValueError, IndexError, TypeError) as err:
        raise FITSFormatError(
            f"{url}: not a readable FITS file, truncated or not FITS ({err}); give a PSFEx .psf "
            "file or a FITS image"
        ) from err
    if not tables:
        if primary is None:
            raise FITSFormatError(
                f"{url}: no PSF image in the primary HDU and no PSFEx table; "
                "pass a PSFEx .psf file or a FITS image"
            )
        return np.asarray(primary)
    for accepted, mask in tables:
        if accepted != 0:
            return np.asarray(mask[0][0])
    raise InputError(
        f"{url}: no PSFEx extension with ACCEPTED != 0 (PSFEx kept no star); "
        "loosen the SExtractor/PSFEx selection or pass another PSF"
    )


def read_psf(
    psf: Any, *, boxsize: int | None = None, storage_options: dict | None = None
) -> np.ndarray:
    """Load and clean a PSF as DRE does: negative pixels set to 0, normalised to unit sum.

    Parameters
    ----------
    psf : array-like or str
        A 2-D array, or the URL of a PSFEx ``.psf`` file (the order-0 component of the first
        extension with ``ACCEPTED != 0``) or of a FITS image (primary HDU).
    boxsize : int, optional
        Model stamp size; a PSF larger than it is rejected.
    storage_options : dict, optional
        fsspec options for URLs.

    Returns
    -------
    numpy.ndarray
        float64 2-D PSF of unit sum.

    Raises
    ------
    InputError
        For a PSF that is not 2-D, larger than the stamps, contains NaN/inf or sums to ≤ 0.
    FITSFormatError
        For a FITS file with neither a PSF image nor a PSFEx table.
    """
    name = psf if isinstance(psf, str) else "PSF array"
    if isinstance(psf, str):
        psf = _psf_from_fits(psf, storage_options)
    psf = np.asarray(psf, dtype=np.float64)
    if psf.ndim != 2 or min(psf.shape) < 1:
        raise InputError(f"{name}: a PSF must be a 2-D image, got shape {psf.shape}")
    if boxsize is not None and max(psf.shape) > boxsize:
        raise InputError(
            f"{name}: PSF of shape {psf.shape} is larger than the {boxsize}-px stamps; "
            "crop the PSF or use a model grid with larger stamps"
        )
    if not np.all(np.isfinite(psf)):
        raise InputError(f"{name}: PSF contains NaN or infinite pixels; replace them first")
    psf = np.where(psf < 0, 0.0, psf)
    total = psf.sum()
    if not total > 0:
        raise InputError(
            f"{name}: PSF sums to {total} after clipping negative pixels; it needs a positive peak"
        )
    return psf / total


def _convolve_block(block, psf, out_dtype):
    xp = array_module(block)
    fft = scipy.fft if xp is np else xp.fft
    b = block.shape[-1]
    p = np.asarray(psf.shape)
    fshape = [scipy.fft.next_fast_len(int(n), real=True) for n in b + p - 1]
    kernel = fft.rfft2(xp.asarray(psf), s=fshape)
    y0, x0 = (p - 1) // 2
    stamps = block.reshape(-1, b, b)
    out = xp.empty(stamps.shape, dtype=out_dtype)
    # one stamp at a time stays in cache on CPUs; a GPU takes the whole block at once
    step = 1 if xp is np else stamps.shape[0]
    for i in range(0, stamps.shape[0], step):
        spec = fft.rfft2(stamps[i : i + step].astype(xp.float64), s=fshape, axes=(-2, -1))
        full = fft.irfft2(spec * kernel, s=fshape, axes=(-2, -1))
        out[i : i + step] = full[..., y0 : y0 + b, x0 : x0 + b]
    return out.reshape(block.shape)


def convolve_models(models: xr.DataArray, psf: Any, **kwargs: Any) -> xr.DataArray:
    """Convolve every model stamp with the PSF (lazily, chunk by chunk).

    Linear (zero-padded) FFT convolution with ``mode='same'`` semantics: the central window
    of the full convolution starting at ``(P - 1) // 2``, no clipping, computed in float64 and
    stored in the cube's dtype.

    Parameters
    ----------
    models : xarray.DataArray
        Cube with dims ``(..., y, x)`` (numpy or CuPy chunks).
    psf : array-like or str
        PSF or its URL (see :func:`read_psf`).
    **kwargs
        Passed to :func:`read_psf` (``storage_options``).

    Returns
    -------
    xarray.DataArray
        The convolved cube, same dims, coordinates and chunks.
    """
    psf = read_psf(psf, boxsize=models.sizes["x"], **kwargs)
    data = models.data
    if not isinstance(data, da.Array):  # in memory: one chunk per leading (n, q) plane
        chunks = (1,) * max(data.ndim - 4, 0) + (-1,) * min(data.ndim, 4)
        data = da.from_array(data, chunks=chunks, name=False)  # no hashing of a 179 MB cube
    data = data.rechunk({data.ndim - 2: -1, data.ndim - 1: -1})  # whole stamps per block
    conv = data.map_blocks(
        _convolve_block, psf=psf, out_dtype=models.dtype, dtype=models.dtype, meta=data._meta
    )
    out = models.copy(data=conv)
    out.name = "convolved_models"
    out.attrs["psf_shape"] = list(psf.shape)
    return out


def _fit_block(obj, seg, rms, flag, models):
    g, b = obj.shape[0], obj.shape[-1]
    xp = array_module(obj)
    shape = models.shape[:-2]
    flat = models.reshape(-1, b * b)
    seg = seg.reshape(g, b * b) & (flag == 0)[:, None]
    chi = chi_block(flat, obj.reshape(g, b * b), seg, rms.reshape(g, b * b))
    return xp.asarray(chi).reshape((g, *shape))


def _flag_block(chi, seg, flag):
    xp = array_module(chi)
    empty = ~seg.any(axis=(1, 2))
    all_nan = xp.isnan(chi).all(axis=(1, 2, 3, 4))
    out = flag.astype(np.uint8) | (empty * np.uint8(2)).astype(np.uint8)
    return out | ((all_nan & (out == 0)) * np.uint8(4)).astype(np.uint8)


def _status_block(flag):
    return flag_status(flag)[0]


def _reason_block(flag):
    return flag_status(flag)[1]


def _check_cuts(cuts: xr.Dataset, boxsize: int) -> None:
    missing = [v for v in ("obj", "seg", "rms") if v not in cuts]
    if missing:
        raise InputError(f"cuts lack the variable(s) {missing}; use cloudlab.dre.open_cuts")
    for name in ("obj", "seg", "rms"):
        if cuts[name].dims != ("galaxy", "y", "x"):
            raise InputError(
                f"cuts[{name!r}] must have dims (galaxy, y, x), got {cuts[name].dims}; transpose it"
            )
    if (cuts.sizes["y"], cuts.sizes["x"]) != (boxsize, boxsize):
        raise InputError(
            f"cuts are {cuts.sizes['y']}×{cuts.sizes['x']} but the model stamps are "
            f"{boxsize}×{boxsize} (BOXSIZE); cut the galaxies with size={boxsize}"
        )


def fit(
    cuts: xr.Dataset,
    models: xr.DataArray,
    psf: Any | None,
    *,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Fit every galaxy cut against every PSF-convolved model with DRE's χ² (lazily).

    The grid is convolved with the PSF once per graph (chunk by chunk) and each
    convolved chunk is shared by all galaxy chunks; χ is evaluated blockwise over galaxy chunks
    by a fused kernel (numba on CPU, a CUDA kernel when the cuts hold CuPy arrays).

    Parameters
    ----------
    cuts : xarray.Dataset
        ``obj``, ``seg``, ``rms`` with dims ``(galaxy, y, x)`` and optionally ``flag``
        ``(galaxy)`` (as made by :func:`cloudlab.dre.open_cuts`).
    models : xarray.DataArray
        Model cube ``(index, ax_ratio, angle, log_r, y, x)``.
    psf : array-like, str or None
        PSF (array or PSFEx/FITS URL); None when ``models`` is already convolved.
    storage_options : dict, optional
        fsspec options for a PSF URL.

    Returns
    -------
    xarray.Dataset
        ``chi`` (float32, dims ``galaxy, index, ax_ratio, angle, log_r``), ``flag`` (uint8
        bitmask, see :data:`FLAGS`), ``status`` and ``reason`` (galaxy; derived from ``flag``
        by :func:`flag_status`: ``"ok"`` and '' for a usable χ) and ``models`` (the convolved
        cube), with the galaxy coordinates of ``cuts`` and the model axes as coordinates.

    Raises
    ------
    InputError
        Models or cuts with the wrong dims or stamp size, models with NaN/infinite pixels or
        all zero (see :func:`cloudlab.dre.models.check_models`; a lazily read cube is read once
        here for that check, before the χ graph is built), or a bad PSF (see :func:`read_psf`).
    """
    if tuple(models.dims) != (*MODEL_DIMS, "y", "x"):
        raise InputError(
            f"models must have dims {(*MODEL_DIMS, 'y', 'x')}, got {models.dims}; "
            "use cloudlab.dre.load_models or model_grid"
        )
    boxsize = models.sizes["x"]
    _check_cuts(cuts, boxsize)
    check_models(models)
    conv = models if psf is None else convolve_models(models, psf, storage_options=storage_options)
    conv = conv.chunk({"index": 1, "ax_ratio": -1, "angle": -1, "log_r": -1, "y": -1, "x": -1})
    obj, seg, rms = (
        cuts[v].chunk({"y": -1, "x": -1}).data for v in ("obj", "seg", "rms")
    )  # one chunk per galaxy block
    if "flag" in cuts:
        flag = cuts["flag"].data
    else:
        flag = da.zeros(cuts.sizes["galaxy"], dtype=np.uint8, chunks=obj.chunks[0])
    flag = da.asarray(flag).rechunk((obj.chunks[0],))
    chi = da.blockwise(
        _fit_block,
        "gnqtr",
        obj,
        "gyx",
        seg,
        "gyx",
        rms,
        "gyx",
        flag,
        "g",
        conv.data,
        "nqtryx",
        dtype=np.float32,
        concatenate=True,
        meta=obj._meta.astype(np.float32).reshape((0,) * 5),
    )
    flags = da.blockwise(
        _flag_block,
        "g",
        chi,
        "gnqtr",
        seg,
        "gyx",
        flag,
        "g",
        dtype=np.uint8,
        concatenate=True,
        meta=flag._meta.astype(np.uint8),
    )
    status = flags.map_blocks(_status_block, dtype=STATUS_DTYPE, meta=np.array((), STATUS_DTYPE))
    reason = flags.map_blocks(_reason_block, dtype=REASON_DTYPE, meta=np.array((), REASON_DTYPE))
    galaxy_coords = {k: c for k, c in cuts.coords.items() if c.dims == ("galaxy",)}
    model_coords = {k: conv.coords[k] for k in (*MODEL_DIMS, "y", "x")}
    result = xr.Dataset(
        {
            "chi": (("galaxy", *MODEL_DIMS), chi),
            "flag": ("galaxy", flags),
            STATUS: ("galaxy", status),
            REASON: ("galaxy", reason),
            "models": conv.variable,
        },
        coords={**galaxy_coords, **model_coords},
        attrs={"dre_header": dict(models.attrs.get("dre_header", {}))},
    )
    result["chi"].attrs["long_name"] = "DRE chi: mean over the mask of (D - sM)^2 / (sM + rms^2)"
    result["flag"].attrs["flag_meanings"] = ", ".join(f"{b}: {r}" for b, r in FLAGS.items())
    return result
