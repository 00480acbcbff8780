"""TCE vetting as one lazy graph: catalog → cutouts → background → photometry → views → predictions.

:func:`vet_tces` chains the cutouts, BackDrop and AstroNet workflows. Nothing is read but the
catalog, the cube headers (and the BackDrop weights and model checkpoints, when given) until the
caller computes the result or hands it to :func:`cloudlab.pipelines.write_vetting`.

Per target (one cutout per TIC, however many TCEs it has):

1. **background**: with BackDrop weights, the fitted scattered-light model of the sector/camera/
   CCD is subtracted from every pixel (:func:`cloudlab.backdrop.evaluate.subtract`); without
   them, a per-cutout estimate: per cadence, the median of the cutout's *background pixels*,
   the pixels that are on the image, outside the aperture grown by one pixel, and no brighter
   (in the median image) than the cutout's median pixel;
2. **aperture**: ``"threshold"`` picks the pixels of the median image (good cadences) at least
   3 robust standard deviations (1.4826 · MAD) above its median and keeps the contiguous region
   nearest the target (lightkurve's ``create_threshold_mask(threshold=3)`` with the target as
   reference pixel); that region must come within 2 pixels of the target. An integer ``n`` is an
   ``n × n`` box around the target's pixel;
3. **light curve**: background-subtracted aperture sum, cadences flagged in the cube's quality
   (:data:`cloudlab.tess_detector.BAD_QUALITY_BITS`) or without finite flux removed (NaN),
   divided by its median;
4. **views and predictions** for every TCE of the TIC (AstroNet-Triage global/local views, mean
   probability of the model ensemble).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from cloudlab import storage
from cloudlab.astronet.catalog import (
    REASON_DTYPE,
    STATUS_DTYPE,
    predict_catalog,
    read_tces,
    views,
)
from cloudlab.cutouts import aperture_photometry, make_cutouts
from cloudlab.cutouts.cutout import target_status
from cloudlab.cutouts.pointing import radec_to_pixel
from cloudlab.errors import (
    REASON,
    STATUS,
    STATUS_OK,
    InputError,
    check_on_error,
)
from cloudlab.io.catalogs import add_coordinates, read_tce
from cloudlab.pipelines.centroids import MAX_CENTROID_OFFSET, centroid_offsets
from cloudlab.tess_detector import BAD_QUALITY_BITS

__all__ = [
    "APERTURE_THRESHOLD",
    "CATALOG_COLUMNS",
    "MAX_APERTURE_OFFSET",
    "default_models",
    "read_catalog",
    "threshold_aperture",
    "vet_tces",
]

APERTURE_THRESHOLD = 3.0
"""Robust standard deviations above the median image for the ``"threshold"`` aperture."""
MAX_APERTURE_OFFSET = 2.0
"""The threshold region must come this close (pixels) to the target, else ``no_aperture``."""
CATALOG_COLUMNS = ("tceid", "ticid", "planet", "period", "t0", "duration", "depth")
"""Columns of :func:`read_catalog` (period, t0 BTJD and duration in days, depth in ppm)."""

_VIEW_DIMS = {"global_view": "global_bin", "local_view": "local_bin"}


# ------------------------------------------------------------------------------------- catalog


def read_catalog(
    tces: str | os.PathLike | pd.DataFrame,
    *,
    coords: str | os.PathLike | pd.DataFrame | None = None,
    storage_options: dict | None = None,
) -> pd.DataFrame:
    """A TCE catalog in the columns :func:`vet_tces` uses.

    Parameters
    ----------
    tces : str, path or pandas.DataFrame
        A TESS TCE bulk CSV (``*_dvr-tcestats.csv``, read with
        :func:`cloudlab.io.catalogs.read_tce`) or an AstroNet ``tces.csv`` (read with
        :func:`cloudlab.astronet.read_tces`), as a URL or as the DataFrame those readers return,
        or a table this function returned.
    coords : str, path or pandas.DataFrame, optional
        TIC coordinate table for targets without ``ra``/``dec`` (see
        :func:`cloudlab.io.catalogs.add_coordinates`); TICs still without coordinates get the
        status ``no_coordinates``.
    storage_options : dict, optional
        fsspec options for ``tces`` and ``coords``.

    Returns
    -------
    pandas.DataFrame
        :data:`CATALOG_COLUMNS` (``tceid`` str, ``ticid`` int64, ``planet`` int, ``period``
        d, ``t0`` BTJD, ``duration`` d, ``depth`` ppm), ``ra``/``dec`` (deg, NaN where unknown)
        and ``disposition`` when the catalog has one.

    Raises
    ------
    InputError
        A table in neither format, or an empty one.
    """
    if isinstance(tces, str | os.PathLike):
        url = os.fspath(tces)
        head = storage.read_bytes(url, storage_options=storage_options)[:65536]
        bulk = b"tce_period" in head or b"orbitalPeriodDays" in head
        reader = read_tce if bulk else read_tces
        table = reader(url, storage_options=storage_options)
        source = url
    elif isinstance(tces, pd.DataFrame):
        table, source = tces, "the TCE table"
    else:
        raise InputError(
            f"tces must be a URL or a pandas DataFrame, got {type(tces).__name__}; read the "
            "catalog with cloudlab.io.catalogs.read_tce or cloudlab.astronet.read_tces"
        )
    if set(CATALOG_COLUMNS) <= set(table.columns):  # already read_catalog's output
        out = table[[c for c in (*CATALOG_COLUMNS, "disposition") if c in table]].copy()
    elif "tce_period" in table.columns:
        out = _from_bulk(table, source)
    elif {"tic_id", "Period", "Epoc", "Duration"} <= set(table.columns):
        out = _from_astronet(table)
    else:
        raise InputError(
            f"{source}: neither a TESS TCE bulk table (ticid, tce_period, tce_time0bt, "
            "tce_duration) nor an AstroNet tces.csv (tic_id, Period, Epoc, Duration); columns: "
            f"{list(table.columns)[:10]}"
        )
    if out.empty:
        raise InputError(f"{source}: no TCEs")
    for column in ("ra", "dec"):
        out[column] = (
            pd.to_numeric(table[column], errors="coerce").to_numpy() if column in table else np.nan
        )
    if coords is not None or out[["ra", "dec"]].isna().any().any():
        out = add_coordinates(out, coords=coords, on_error="skip", storage_options=storage_options)
    return out.reset_index(drop=True)


def _from_bulk(table: pd.DataFrame, source: str) -> pd.DataFrame:
    missing = [c for c in ("ticid", "tce_time0bt", "tce_duration") if c not in table.columns]
    if missing:
        raise InputError(f"{source}: TCE bulk table lacks columns {missing}")
    ticid = table["ticid"].to_numpy().astype(np.int64)
    planet = (
        table["tce_plnt_num"].fillna(0).to_numpy().astype(int)
        if "tce_plnt_num" in table
        else np.ones(len(table), int)
    )
    tceid = (
        table["tceid"].astype(str).to_numpy()
        if "tceid" in table
        else np.array([f"{t}-{p:02d}" for t, p in zip(ticid, planet, strict=True)])
    )
    depth = table["tce_depth"].to_numpy(float) if "tce_depth" in table else np.nan
    return pd.DataFrame(
        {
            "tceid": tceid,
            "ticid": ticid,
            "planet": planet,
            "period": table["tce_period"].to_numpy(float),
            "t0": table["tce_time0bt"].to_numpy(float),
            "duration": table["tce_duration"].to_numpy(float) / 24.0,
            "depth": depth,
        }
    )


def _from_astronet(table: pd.DataFrame) -> pd.DataFrame:
    ticid = table["tic_id"].to_numpy().astype(np.int64)
    planet = pd.Series(ticid).groupby(ticid).cumcount().to_numpy() + 1
    out = pd.DataFrame(
        {
            "tceid": [f"{t}-{p:02d}" for t, p in zip(ticid, planet, strict=True)],
            "ticid": ticid,
            "planet": planet,
            "period": table["Period"].to_numpy(float),
            "t0": table["Epoc"].to_numpy(float),
            "duration": table["Duration"].to_numpy(float),
            "depth": table["Transit_Depth"].to_numpy(float) if "Transit_Depth" in table else np.nan,
        }
    )
    if "Disposition" in table:
        out["disposition"] = table["Disposition"].astype(str).to_numpy()
    return out


# -------------------------------------------------------------------------------------- models


def default_models() -> list:
    """The models :func:`vet_tces` uses when none are given: the AstroNet-Triage ensemble shipped
    with cloudlab (:func:`cloudlab.astronet.shipped_models`).

    Returns
    -------
    list of keras.Model
    """
    from cloudlab.astronet import shipped_models

    return list(shipped_models())


def _models(models) -> list | None:
    """Checkpoint URLs or keras models; None for the shipped ensemble (loaded on the workers)."""
    if models is None:
        return None
    models = (
        [models]
        if isinstance(models, str | os.PathLike) or not isinstance(models, Sequence)
        else list(models)
    )
    if not models:
        raise InputError("models=[]: give at least one checkpoint URL or keras model")
    return [os.fspath(m) if isinstance(m, os.PathLike) else m for m in models]


# ------------------------------------------------------------------------------------ aperture


def threshold_aperture(
    image: np.ndarray,
    reference: tuple[float, float],
    *,
    threshold: float = APERTURE_THRESHOLD,
    max_offset: float = MAX_APERTURE_OFFSET,
) -> np.ndarray:
    """The contiguous region of bright pixels nearest a target.

    Pixels whose value is at least ``median + threshold · 1.4826 · MAD`` of the finite pixels
    (NaN counts as 0) are labelled into 4-connected regions; the region holding the pixel
    nearest ``reference`` is returned (lightkurve's ``create_threshold_mask``), provided that
    pixel lies within ``max_offset`` pixels of ``reference``.

    Parameters
    ----------
    image : numpy.ndarray
        (row, column) median image.
    reference : (float, float)
        0-based (row, column) of the target in ``image``.
    threshold : float
        Robust standard deviations above the median.
    max_offset : float
        Largest allowed distance (pixels) between the target and the region.

    Returns
    -------
    numpy.ndarray
        Boolean mask; all False when no region qualifies.
    """
    image = np.asarray(image, float)
    values = image[np.isfinite(image)]
    if values.size == 0:
        return np.zeros(image.shape, bool)
    level = np.median(values)
    cut = level + threshold * 1.4826 * np.median(np.abs(values - level))
    above = np.nan_to_num(image) >= cut
    labels = ndimage.label(above)[0]
    pixels = np.argwhere(labels > 0)
    if not len(pixels):
        return above
    distance = np.hypot(pixels[:, 0] - reference[0], pixels[:, 1] - reference[1])
    nearest = int(np.argmin(distance))
    if distance[nearest] > max_offset:
        return np.zeros(image.shape, bool)
    return labels == labels[tuple(pixels[nearest])]


def _median_image(flux: np.ndarray, good: np.ndarray) -> np.ndarray:
    """(target, row, column) median over good cadences; NaN where no good cadence is finite."""
    out = np.full((flux.shape[0], *flux.shape[2:]), np.nan)
    for k in range(flux.shape[0]):
        frames = flux[k][good[k]]
        finite = np.isfinite(frames).any(axis=0)
        if finite.any():
            out[k][finite] = np.nanmedian(frames[:, finite], axis=0)
    return out


def _aperture_block(flux, good, ref_row, ref_col, aperture):
    """Photometric aperture of a block of cutouts: (target, row, column) bool."""
    images = _median_image(flux, good)
    out = np.zeros(images.shape, bool)
    for k, image in enumerate(images):
        if aperture == "threshold":
            out[k] = threshold_aperture(image, (ref_row[k], ref_col[k]))
        else:
            half = (aperture - 1) / 2
            r0 = int(np.floor(ref_row[k] + 0.5 - half))
            c0 = int(np.floor(ref_col[k] + 0.5 - half))
            out[k, max(r0, 0) : max(r0 + aperture, 0), max(c0, 0) : max(c0 + aperture, 0)] = True
            out[k] &= np.isfinite(image)
    return out


def _background_block(flux, good, aperture):
    """Per-cadence median of each cutout's background pixels: (target, time) float64."""
    images = _median_image(flux, good)
    out = np.full(flux.shape[:2], np.nan)
    for k, image in enumerate(images):
        grown = ndimage.binary_dilation(aperture[k])
        outside = np.isfinite(image) & ~grown
        if not outside.any():
            continue
        values = image[outside]
        level = np.median(values)
        spread = 1.4826 * np.median(np.abs(values - level))
        sky = outside & (image < level + APERTURE_THRESHOLD * spread)  # no other stars
        if sky.any():
            with warnings.catch_warnings():  # NaN frames: all-NaN slices give NaN, as wanted
                warnings.simplefilter("ignore", RuntimeWarning)
                out[k] = np.nanmedian(flux[k][:, sky], axis=1)
    return out


def _check_aperture(aperture) -> str | int:
    if aperture == "threshold":
        return aperture
    if isinstance(aperture, bool) or not isinstance(aperture, int | np.integer) or aperture < 1:
        raise InputError(
            f"aperture={aperture!r}: use 'threshold' or a positive box width in pixels"
        )
    return int(aperture)


# ---------------------------------------------------------------------------------- light curves


def _row_medians(values: np.ndarray) -> np.ndarray:
    """NaN-ignoring median of each row; NaN for rows without a finite value."""
    out = np.full(values.shape[0], np.nan)
    finite = np.isfinite(values).any(axis=1)
    out[finite] = np.nanmedian(values[finite], axis=1)
    return out


def _lc_status(npix, n_good, median, background_ok, has_pixels):
    status = np.full(npix.shape, STATUS_OK, dtype=STATUS_DTYPE)
    status[~background_ok] = "no_background"
    status[~(median > 0)] = "no_flux"
    status[n_good == 0] = "no_data"
    status[npix == 0] = "no_aperture"
    status[~has_pixels] = "no_pixels"
    return status


_LC_REASONS = {
    STATUS_OK: "",
    "no_background": "no background pixel in the cutout (outside the aperture, at or below its "
    "median); use a larger size=",
    "no_flux": "the median background-subtracted aperture flux is not positive",
    "no_data": "no cadence with good quality and finite flux in the aperture",
    "no_pixels": "every pixel of the cutout is NaN at every good cadence",
    "no_aperture": f"no pixel within {MAX_APERTURE_OFFSET:g} px of the target is "
    f"{APERTURE_THRESHOLD:g} robust sigma above the cutout's median image",
}


def _lc_reason(status):
    return np.array([_LC_REASONS[s] for s in status.tolist()], dtype=REASON_DTYPE).reshape(
        status.shape
    )


def _cutout_frames(cut: xr.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per target: its frames' quality flags, which frames are good, and its position in its
    cutout (0-based row and column)."""
    quality = np.asarray(cut["cube_quality"].values)[cut["cube_index"].values]
    good = (quality & BAD_QUALITY_BITS) == 0
    ref_row = cut["center_row"].values - cut["corner_row"].values
    ref_col = cut["center_column"].values - cut["corner_column"].values
    return quality, good, ref_row, ref_col


def _light_curves(cut: xr.Dataset, aperture: str | int, local_background: bool) -> xr.Dataset:
    """Aperture photometry of every cutout, lazily: one Dataset on the ``target`` dim."""
    flux = cut["flux"].data
    tchunks = (flux.chunks[0],)
    quality, good, ref_row, ref_col = _cutout_frames(cut)
    good_d = da.from_array(good, chunks=(tchunks[0], -1))
    mask = da.blockwise(
        _aperture_block, "tyx", flux, "tfyx", good_d, "tf",
        da.from_array(ref_row, chunks=tchunks), "t", da.from_array(ref_col, chunks=tchunks), "t",
        aperture, None, dtype=bool, concatenate=True,
    )  # fmt: skip
    dims4 = ("target", "time", "row", "column")
    if local_background:
        level = da.blockwise(
            _background_block, "tf", flux, "tfyx", good_d, "tf", mask, "tyx",
            dtype=float, concatenate=True,
        )  # fmt: skip
        corrected = flux - level[:, :, None, None].astype(flux.dtype)
        background_ok = da.isfinite(level).any(axis=1)
    else:  # BackDrop already subtracted; report its mean level in the aperture
        model = cut["background"].data
        inside = da.where(mask[:, None], model, np.nan)
        level = da.nanmean(inside.reshape(inside.shape[:2] + (-1,)), axis=2)
        corrected = flux
        background_ok = da.ones(len(ref_row), dtype=bool, chunks=tchunks)
    apertures = xr.DataArray(mask, dims=("target", "row", "column"))
    sap = aperture_photometry(
        xr.Dataset({"flux": (dims4, corrected)}), aperture=apertures, relative=False
    )["flux"].data
    err = da.sqrt(da.where(mask[:, None], cut["flux_err"].data.astype(float) ** 2, 0).sum((2, 3)))
    keep = good_d & da.isfinite(sap)
    sap = da.where(keep, sap, np.nan)
    median = da.map_blocks(_row_medians, sap.rechunk({1: -1}), drop_axis=1, dtype=float)
    n_good = keep.sum(axis=1)
    npix = mask.sum((1, 2))
    has_pixels = (da.isfinite(flux).any(axis=(2, 3)) & good_d).any(axis=1)
    status = da.map_blocks(
        _lc_status, npix, n_good, median, background_ok, has_pixels, dtype=STATUS_DTYPE
    )
    scale = da.where(median > 0, median, np.nan)[:, None]
    return xr.Dataset(
        {
            "flux": (("target", "time"), sap / scale, {"units": "", "normalised": "median"}),
            "flux_err": (("target", "time"), da.where(keep, err, np.nan) / scale),
            "sap_flux": (("target", "time"), sap, {"units": "electron / s"}),
            "background": (("target", "time"), level, {"units": "electron / s / pixel"}),
            "quality": (("target", "time"), quality.astype(np.int32)),
            "aperture": (("target", "row", "column"), mask),
            "npix": ("target", npix),
            STATUS: ("target", status),
            REASON: ("target", da.map_blocks(_lc_reason, status, dtype=REASON_DTYPE)),
        },
        coords={"target": cut["ticid"].values, "time": cut["time"]},
    )


# ------------------------------------------------------------------------------------- cubes


def _cube_source(cubes, sector):
    """(cube_url, cube_base, allowed (camera, ccd) set or None) for make_cutouts."""
    if cubes is None:
        return None, None, None
    listed = [cubes] if isinstance(cubes, str | os.PathLike) else list(cubes)
    listed = [os.fspath(u).rstrip("/") for u in listed]
    if not listed:
        raise InputError("cubes=[]: give a cube URL, a list of cube URLs or a cube directory")
    if len(listed) == 1:
        one = listed[0]
        return (one, None, None) if one.lower().endswith(".fits") else (None, one, None)
    if sector is None:
        raise InputError(
            "several cubes= need sector= (targets are assigned to cubes by camera/CCD)"
        )
    allowed, bases = set(), set()
    for url in listed:
        base, _, name = url.rpartition("/")
        parts = name.split("-")
        if (
            len(parts) != 5
            or parts[0] != "tess"
            or parts[1] != f"s{sector:04d}"
            or parts[4] != "cube.fits"
        ):
            raise InputError(
                f"cube {url}: name it tess-s{sector:04d}-CAMERA-CCD-cube.fits (MAST's layout) "
                "to list several cubes, or pass their directory as cubes="
            )
        allowed.add((int(parts[2]), int(parts[3])))
        bases.add(base)
    if len(bases) > 1:
        raise InputError(f"cubes= lie in several directories {sorted(bases)}: keep them in one")
    return None, bases.pop(), allowed


# --------------------------------------------------------------------------------------- main


def vet_tces(
    tces: str | os.PathLike | pd.DataFrame,
    *,
    sector: int | None = None,
    cubes: str | Sequence[str] | None = None,
    weights: str | xr.Dataset | None = None,
    models: Sequence | str | None = None,
    size: int | tuple[int, int] = 11,
    aperture: str | int = "threshold",
    coords: str | os.PathLike | pd.DataFrame | None = None,
    on_error: str = "skip",
    batch_size: int | None = None,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Planet-candidate probabilities for a TCE catalog, as one lazy graph.

    Parameters
    ----------
    tces : str, path or pandas.DataFrame
        TCE catalog (see :func:`read_catalog`): the TESS bulk CSV format or AstroNet's
        ``tces.csv``; targets need ``ra``/``dec`` (or ``coords=``).
    sector : int, optional
        TESS sector: targets are assigned to camera/CCD offline and cut from that sector's
        cubes. Needed unless ``cubes`` is a single cube.
    cubes : str or sequence of str, optional
        One cube URL (every target cut from it), several cube URLs named as MAST names them
        (``tess-s0055-1-1-cube.fits``; targets on other CCDs get the status ``no_cube``), or
        the directory of the cubes. Default: MAST's public S3 bucket.
    weights : str or xarray.Dataset, optional
        BackDrop weights of the sector/camera/CCD (URL or Dataset, see
        :func:`cloudlab.backdrop.read_weights`): subtract the fitted scattered light. Targets on
        other CCDs get the status ``no_weights``. Default: the per-cutout background of the
        module docstring.
    models : str or sequence, optional
        AstroNet checkpoint URLs or keras models (their mean probability is the prediction).
        Default: the shipped ensemble (:func:`default_models`), loaded once per worker
        rather than sent with the graph.
    size : int or (int, int)
        Cutout size in pixels (rows, columns).
    aperture : "threshold" or int
        Photometric aperture (see the module docstring).
    coords : str, path or pandas.DataFrame, optional
        TIC coordinate table for catalogs without ``ra``/``dec``.
    on_error : {"skip", "raise"}
        TCEs whose target cannot be cut (no coordinates, off silicon, cube missing, no weights)
        get a status and reason (``"skip"``), or stop the call with one error listing them
        (``"raise"``). Failures found while computing (no aperture, no good cadence, a
        light curve too sparse for the views) are always statuses.
    batch_size : int, optional
        Targets per cutout task (default: :func:`cloudlab.cutouts.make_cutouts`'s).
    storage_options : dict, optional
        fsspec options for the catalog, cubes, weights and checkpoints.

    Returns
    -------
    xarray.Dataset
        Lazy. Per TCE (dim ``tce``, in catalog order): ``prediction`` (NaN unless ``status`` is
        ``"ok"``), ``status``/``reason``, ``global_view`` (``global_bin``), ``local_view``
        (``local_bin``), the :func:`read_catalog` columns and ``tic_index`` (position along
        ``tic``, -1 when the TIC has no cutout). Per TIC with a cutout (dim ``tic``, the TIC
        ids): ``flux`` and ``flux_err`` (median-normalised, NaN at removed cadences),
        ``sap_flux`` (e-/s), ``background``, ``quality`` (``tic, time``), ``aperture`` (``tic,
        row, column``), ``npix``, the cutout's pixels ``cutout_flux``/``cutout_flux_err`` and
        its cube metadata (what :func:`cloudlab.cutouts.write_tpfs` needs), and ``time`` (BTJD).

    Raises
    ------
    InputError
        Bad catalog, size, aperture, cube list or ``on_error``, no target that can be cut,
        or (``on_error="raise"``) TCEs whose target cannot be cut.
    NotFoundError
        A model checkpoint does not exist.
    """
    check_on_error(on_error)
    aperture = _check_aperture(aperture)
    catalog = read_catalog(tces, coords=coords, storage_options=storage_options)
    model_list = _models(models)
    cube_url, cube_base, allowed = _cube_source(cubes, sector)
    tics = catalog.drop_duplicates("ticid")[["ticid", "ra", "dec"]].reset_index(drop=True)
    status = pd.Series(STATUS_OK, index=tics["ticid"].to_numpy(), dtype=object)
    reason = pd.Series("", index=status.index, dtype=object)
    located = np.isfinite(tics["ra"].to_numpy()) & np.isfinite(tics["dec"].to_numpy())
    for tic in tics["ticid"][~located]:
        status[tic], reason[tic] = "no_coordinates", f"TIC {tic} has no ra/dec; pass coords="
    wanted = located.copy()
    if allowed is not None:
        cam, ccd, _, _ = radec_to_pixel(
            tics["ra"].to_numpy()[located], tics["dec"].to_numpy()[located], sector
        )
        for i, c, d in zip(np.flatnonzero(located), cam, ccd, strict=True):
            if c > 0 and (int(c), int(d)) not in allowed:
                tic = tics["ticid"].iloc[i]
                status[tic] = "no_cube"
                reason[tic] = f"on sector {sector} camera {c} CCD {d}, whose cube is not in cubes="
                wanted[i] = False
    if not wanted.any():
        raise InputError(f"no target can be cut: {_listing(status, reason)}")
    cut = make_cutouts(
        tics[wanted], sector=sector, size=size, cube_url=cube_url, cube_base=cube_base,
        batch_size=batch_size, on_error="skip", storage_options=storage_options,
    )  # fmt: skip
    failed = target_status(cut).iloc[cut.sizes["target"] :]
    for tic, code, why in failed[["ticid", STATUS, REASON]].itertuples(index=False):
        status[tic], reason[tic] = code, why
    if weights is not None:
        cut = _subtract_weights(cut, weights, status, reason, storage_options)
    if on_error == "raise" and (status != STATUS_OK).any():
        raise InputError(f"TCE targets cannot be vetted: {_listing(status, reason)}")
    lcs = _light_curves(cut, aperture, local_background=weights is None)
    columns = [c for c in (*CATALOG_COLUMNS, "disposition") if c in catalog]
    table = catalog[columns]
    names = {"target": "ticid", "period": "period", "t0": "t0", "duration": "duration"}
    if model_list is None or all(isinstance(m, str) for m in model_list):
        # checkpoints (or the shipped ensemble) are loaded once per worker, not shipped in the
        # graph
        ds = predict_catalog(lcs, table, model_list, kind="triage", **names)
    else:
        ds = views(lcs, table, kind="triage", **names)
        ds["prediction"] = ("tce", _predict_in_memory(ds, model_list))
    used = ["shipped Astronet-Triage ensemble"] if model_list is None else model_list
    return _assemble(ds, catalog, lcs, cut, status, reason, used, weights is not None, aperture)


def _listing(status: pd.Series, reason: pd.Series) -> str:
    bad = status[status != STATUS_OK]
    shown = "; ".join(f"TIC {t}: {reason[t]}" for t in bad.index[:10])
    return shown + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")


def _subtract_weights(cut, weights, status, reason, storage_options):
    from cloudlab.backdrop.evaluate import subtract
    from cloudlab.backdrop.io import read_weights

    if not isinstance(weights, xr.Dataset):
        weights = read_weights(os.fspath(weights), storage_options=storage_options)
    same = np.ones(cut.sizes["target"], bool)
    for key in ("camera", "ccd"):
        if key in weights.attrs:
            same &= cut[key].values == int(weights.attrs[key])
    for i in np.flatnonzero(~same):
        tic = cut["ticid"].values[i]
        status[tic] = "no_weights"
        reason[tic] = (
            f"on camera {cut['camera'].values[i]} CCD {cut['ccd'].values[i]}; the weights are "
            f"for camera {weights.attrs.get('camera')} CCD {weights.attrs.get('ccd')}"
        )
    if not same.any():
        raise InputError(f"no target lies on the weights' CCD: {_listing(status, reason)}")
    return subtract(cut.isel(target=np.flatnonzero(same)), weights, strict=False)


def _predict_block(global_view, local_view, valid, models):
    from cloudlab.astronet.train import predict

    out = np.full(len(valid), np.nan)
    if valid.any():
        views_ds = xr.Dataset(
            {
                "global_view": (("tce", "global_bin"), global_view[valid]),
                "local_view": (("tce", "local_bin"), local_view[valid]),
            }
        )
        out[valid] = predict(list(models), views_ds)
    return out


def _predict_in_memory(ds: xr.Dataset, models: list) -> da.Array:
    return da.blockwise(
        _predict_block, "i",
        ds["global_view"].data, "ij", ds["local_view"].data, "ik", ds["valid"].data, "i",
        tuple(models), None, concatenate=True, dtype=float, meta=np.array((), dtype=float),
    )  # fmt: skip


def _centroid_offsets(catalog: pd.DataFrame, position: np.ndarray, cut: xr.Dataset) -> da.Array:
    """Per TCE (catalog order), the difference-image centroid offset from its target (pixels;
    NaN for TCEs without a cutout)."""
    n_tic = cut.sizes["target"]
    cut_pos = np.where(position >= 0, position, n_tic)  # TCEs without a cutout: a spare row
    slot = pd.Series(cut_pos).groupby(cut_pos).cumcount().to_numpy()
    slots = int(slot.max()) + 1 if len(slot) else 1
    ephemeris = {}
    for name in ("period", "t0", "duration"):
        table = np.full((n_tic + 1, slots), np.nan)
        table[cut_pos, slot] = catalog[name].to_numpy(float)
        ephemeris[name] = table[:n_tic]
    _, good, ref_row, ref_col = _cutout_frames(cut)
    offsets = centroid_offsets(
        cut["flux"].data, good, np.asarray(cut["time"].values, float), ephemeris, ref_row, ref_col
    )
    flat = np.where(position >= 0, cut_pos * slots + slot, -1)
    where = da.from_array(flat, chunks=1_000_000)
    return da.blockwise(
        _take, "i", offsets.reshape(-1).rechunk(-1), "j", where, "i", np.nan, None,
        concatenate=True, dtype=float, meta=np.array((), dtype=float),
    )  # fmt: skip


def _take(values: np.ndarray, position: np.ndarray, fill: str) -> np.ndarray:
    """``values[position]``, ``fill`` where the position is -1."""
    out = np.full(len(position), fill, dtype=values.dtype)
    found = position >= 0
    out[found] = values[position[found]]
    return out


def _assemble(ds, catalog, lcs, cut, status, reason, models, backdrop, aperture) -> xr.Dataset:
    tic_ids = lcs["target"].values
    position = pd.Index(tic_ids).get_indexer(catalog["ticid"].to_numpy())
    static_status = status.reindex(catalog["ticid"].to_numpy()).to_numpy().astype(STATUS_DTYPE)
    # reasons known before computing (cube errors naming URLs) keep their full length
    static_reason = reason.reindex(catalog["ticid"].to_numpy()).to_numpy().astype(str)
    reason_dtype = np.promote_types(static_reason.dtype, REASON_DTYPE)
    where = da.from_array(position, chunks=ds[STATUS].data.chunks)
    lc_status, lc_reason = (
        da.blockwise(
            _take,
            "i",
            lcs[name].data.rechunk(-1),
            "j",
            where,
            "i",
            fill,
            None,
            concatenate=True,
            dtype=dtype,
            meta=np.array((), dtype=dtype),
        )  # fmt: skip
        for name, fill, dtype in ((STATUS, STATUS_OK, STATUS_DTYPE), (REASON, "", REASON_DTYPE))
    )
    final = da.where(static_status != STATUS_OK, static_status,
                     da.where(lc_status != STATUS_OK, lc_status, ds[STATUS].data))  # fmt: skip
    why = da.where(static_status != STATUS_OK, static_reason,
                   da.where(lc_status != STATUS_OK, lc_reason, ds[REASON].data))  # fmt: skip
    ds[STATUS] = ("tce", final.astype(STATUS_DTYPE))
    ds[REASON] = ("tce", why.astype(reason_dtype))
    ds["valid"] = ("tce", final == STATUS_OK)
    ds["prediction"] = ("tce", da.where(final == STATUS_OK, ds["prediction"].data, np.nan))
    offset = _centroid_offsets(catalog, position, cut)
    ds["centroid_offset"] = ("tce", da.where(final == STATUS_OK, offset, np.nan), {
        "units": "pixel",
        "description": "difference-image centroid minus the target's position (21 arcsec "
        "pixels); NaN with too few frames in or around transit",
    })  # fmt: skip
    on_target = ~(offset > MAX_CENTROID_OFFSET)  # NaN (no test possible) keeps the prediction
    ds["score"] = ("tce", da.where(on_target, ds["prediction"].data, 0.0), {
        "description": f"prediction, 0 where the dip is more than {MAX_CENTROID_OFFSET:g} "
        "pixel from the target (a neighbour's signal); the ranking",
    })  # fmt: skip
    ds["tic_index"] = ("tce", position.astype(np.int64))
    ds["t0"].attrs["units"] = "BTJD (BJD - 2457000), TDB"
    ds["depth"].attrs["units"] = "ppm"
    per_tic = lcs.drop_vars(["target", "time"]).rename(target="tic")
    per_tic = per_tic.rename({STATUS: "lc_status", REASON: "lc_reason"})
    pixels = cut.reset_coords(drop=False).drop_vars([STATUS, REASON, "time", "ticid", "aperture"])
    if "background" in pixels:
        pixels = pixels.rename(background="cutout_background")
    pixels = pixels.rename(flux="cutout_flux", flux_err="cutout_flux_err").rename(target="tic")
    pixels["on_image"] = (("tic", "row", "column"), cut["aperture"].values)
    out = xr.merge([ds, per_tic, pixels], compat="override", combine_attrs="drop_conflicts")
    out = out.assign_coords(tic=tic_ids, time=cut["time"])
    out["time"].attrs.update(units="BTJD (BJD - 2457000), TDB, mid-exposure")
    out.attrs = {
        "kind": "triage",
        "background": "backdrop" if backdrop else "cutout median",
        "aperture": aperture if isinstance(aperture, str) else f"{aperture}x{aperture} box",
        "models": [m if isinstance(m, str) else getattr(m, "name", "keras model") for m in models],
        "size": list(cut.attrs["size"]),
    }
    return out
