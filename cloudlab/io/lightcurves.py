"""Light-curve readers: QLP HDF5 (Astronet-Triage), Kepler/TESS SPOC FITS.

``read_qlp`` and ``read_kepler`` return ``(time, flux)`` for one target.  ``read_lightcurves``
opens many targets as one lazy Dataset (target, cadence), one dask task per batch of targets.
Light curves from cutouts are :func:`cloudlab.cutouts.aperture_photometry`.
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from astropy.units import UnitsWarning
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from cloudlab import storage
from cloudlab.chunking import items_per_task
from cloudlab.errors import CloudlabError, InputError, NotFoundError
from cloudlab.fits import hdu_info, hdu_infos, read_table
from cloudlab.fits.tables import REMOTE_THREADS
from cloudlab.recipes import Recipes

__all__ = [
    "LightCurveError",
    "LightCurveFiles",
    "VARIABLES",
    "clean_qlp_magnitudes",
    "files_of",
    "pack_groups",
    "read_batch",
    "read_batch_checked",
    "read_kepler",
    "read_lightcurves",
    "read_qlp",
    "read_qlp_apertures",
    "unpack_groups",
]

MAD_SCALE = 0.6745  # statsmodels' normalised MAD: median|x - median(x)| / 0.6745
#: recipes of the latest read_lightcurves Datasets, by the names of their dask arrays
_RECIPES: Recipes[LightCurveFiles] = Recipes(256)
#: the variables each reader gives a target, in the order of :func:`read_batch`'s first axis
VARIABLES = {
    "qlp": ("time", "flux"),
    "qlp-vetting": ("time", "flux", "flux_small", "flux_big"),
    "kepler": ("time", "flux"),
}


class LightCurveError(InputError):
    """A light-curve file is missing, truncated or not in the expected layout."""


@dataclass(frozen=True, eq=False)
class LightCurveFiles:
    """What a :func:`read_lightcurves` Dataset reads: its recipe.

    Attributes
    ----------
    groups : list of list of str
        The files of each target, in the Dataset's target order.
    reader : str
        File layout.
    length : int
        Cadences of the Dataset.
    storage_options : dict or None
        fsspec options (never written into products).
    """

    groups: list[list[str]]
    reader: str
    length: int
    storage_options: dict | None


def files_of(lightcurves: xr.Dataset) -> LightCurveFiles | None:
    """The recipe of a Dataset whose ``time`` and ``flux`` are still what
    :func:`read_lightcurves` made, so that a task can read any of its targets itself.

    Any operation that changes their values or selects targets gives dask arrays of other
    names, for which this returns ``None``; relabelling the targets keeps the recipe (it is
    indexed by row).
    """
    recipes = []
    for variable in ("time", "flux"):
        data = lightcurves[variable].data if variable in lightcurves.variables else None
        if not isinstance(data, da.Array):
            return None
        recipes.append(_RECIPES.get(data.name))
    recipe = recipes[0]
    if recipe is None or recipes[1] is not recipe:
        return None
    if lightcurves["flux"].dims != ("target", "cadence"):
        return None
    if lightcurves["flux"].shape != (len(recipe.groups), recipe.length):
        return None
    return recipe


def pack_groups(groups: Sequence[Sequence[str]]) -> bytes:
    """The file names of a batch of targets as one compressed string (file names of one
    catalog share most of their characters: a few bytes per name instead of ~100).

    Parameters
    ----------
    groups : sequence of sequence of str
        The files of each target.

    Returns
    -------
    bytes
        What :func:`unpack_groups` turns back into ``groups``.
    """
    text = "\n".join("\0".join(urls) for urls in groups)
    return zlib.compress(f"{len(groups)}\n{text}".encode())


def unpack_groups(packed: bytes) -> list[list[str]]:
    """The groups of file names :func:`pack_groups` packed."""
    count, _, text = zlib.decompress(packed).decode().partition("\n")
    if int(count) == 0:
        return []
    return [line.split("\0") for line in text.split("\n")]


def clean_qlp_magnitudes(time: np.ndarray, mag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference's QLP cleaning after the quality cut: drop non-finite magnitudes, clip
    bright outliers one-sidedly (keep mag > median − 5·MAD) and convert to relative flux.

    Parameters
    ----------
    time, mag : numpy.ndarray
        Times and KSP magnitudes.

    Returns
    -------
    (time, flux)
        Flux = 10^(−(m − median(m))/2.5) of the kept points (median 1).
    """
    keep = np.isfinite(mag) & np.isfinite(time)
    time, mag = time[keep], mag[keep]
    if mag.size == 0:
        return time, mag
    median = np.median(mag)
    mad = np.median(np.abs(mag - median)) / MAD_SCALE
    keep = mag > median - 5 * mad
    time, mag = time[keep], mag[keep]
    flux = 10.0 ** (-(mag - np.median(mag)) / 2.5)
    return time, flux


def _read_qlp_h5(
    url: str, apertures: list[int | None], flux_key: str, storage_options: dict | None
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None]:
    """BJD, the ``flux_key`` magnitudes of ``apertures`` (None: the file's ``bestap``) and QFLAG
    (None when the file has none) of a QLP HDF5 light curve, unfiltered."""
    import h5py

    fs, path = storage.resolve(url, storage_options=storage_options)
    if not fs.exists(path):
        raise NotFoundError(f"QLP light curve not found: {url}")
    try:
        with fs.open(path, "rb") as handle, h5py.File(handle, "r") as h5:
            lc = h5["LightCurve"]
            phot = lc["AperturePhotometry"]
            numbers = [int(phot.attrs["bestap"]) if k is None else int(k) for k in apertures]
            mags = [np.asarray(phot[f"Aperture_{k:03d}"][flux_key][()], float) for k in numbers]
            time = np.asarray(lc["BJD"][()], float)
            quality = np.asarray(lc["QFLAG"][()]) if "QFLAG" in lc else None
    except (OSError, KeyError) as err:
        raise LightCurveError(f"{url}: not a readable QLP light curve ({err})") from err
    return time, mags, quality


def read_qlp(
    url: str,
    *,
    flux_key: str = "KSPMagnitude",
    aperture: int | None = None,
    storage_options: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a QLP HDF5 light curve as Astronet-Triage does.

    Layout: ``LightCurve/BJD`` (BTJD days), ``LightCurve/QFLAG`` (optional),
    ``LightCurve/AperturePhotometry`` with attribute ``bestap`` = *k* and the magnitudes in
    ``Aperture_%03d(k)/KSPMagnitude``.  Cadences with QFLAG ≠ 0 and non-finite magnitudes are
    dropped, bright outliers clipped and magnitudes converted to relative flux
    (:func:`clean_qlp_magnitudes`).

    Parameters
    ----------
    url : str
        File URL (any fsspec URL).
    flux_key : str
        Magnitude dataset inside the aperture group.
    aperture : int, optional
        Aperture index; the file's ``bestap`` by default.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    (time, flux)
        float64 arrays.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    LightCurveError
        The file is not an HDF5 file or lacks the QLP datasets.
    """
    time, (mag,), quality = _read_qlp_h5(url, [aperture], flux_key, storage_options)
    if time.shape != mag.shape:
        raise LightCurveError(f"{url}: BJD has {time.size} cadences but {flux_key} {mag.size}")
    if quality is not None:
        if quality.shape != time.shape:
            raise LightCurveError(f"{url}: QFLAG length {quality.size} != {time.size} cadences")
        good = quality == 0
        time, mag = time[good], mag[good]
    return clean_qlp_magnitudes(time, mag)


def read_qlp_apertures(
    url: str, *, storage_options: dict | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read a QLP HDF5 light curve as Astronet-Vetting does: best, small and big apertures.

    Cadences are kept where QFLAG == 0 and all three apertures (``bestap``, ``Aperture_002``,
    ``Aperture_003``) are finite and below 50 mag; the bright-outlier clip of the best aperture
    removes the same cadences from all three; each aperture becomes relative flux about its own
    median.

    Returns
    -------
    (time, flux, flux_small, flux_big)
    """
    time, mags, quality = _read_qlp_h5(url, [None, 2, 3], "KSPMagnitude", storage_options)
    if quality is None:
        quality = np.zeros(time.size)
    if any(m.shape != time.shape for m in mags) or quality.shape != time.shape:
        raise LightCurveError(f"{url}: apertures, BJD and QFLAG lengths differ")
    with np.errstate(invalid="ignore"):
        keep = (quality == 0) & np.isfinite(time)
        for m in mags:
            keep &= np.isfinite(m) & (m < 50)
    time, mags = time[keep], [m[keep] for m in mags]
    if time.size:
        median = np.median(mags[0])
        mad = np.median(np.abs(mags[0] - median)) / MAD_SCALE
        clip = mags[0] > median - 5 * mad
        time, mags = time[clip], [m[clip] for m in mags]
    fluxes = [10.0 ** (-(m - np.median(m)) / 2.5) if m.size else m for m in mags]
    return time, fluxes[0], fluxes[1], fluxes[2]


def read_kepler(
    urls: str | Sequence[str],
    *,
    flux_column: str = "PDCSAP_FLUX",
    storage_options: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read Kepler/TESS SPOC light-curve FITS files, quarters/sectors concatenated in time order.

    Non-finite times and fluxes are dropped (upstream ``kepler_io.read_kepler_light_curve``).
    Each file's flux stays in its own units (PDCSAP electrons/s); the Kepler pipeline's spline
    detrending normalises each segment.

    Parameters
    ----------
    urls : str or sequence of str
        One file, several files or a glob.
    flux_column : str
        Flux column of the ``LIGHTCURVE`` HDU.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    (time, flux)
        float64 arrays sorted by time.
    """
    files = storage.expand(urls, storage_options=storage_options)
    if not files:
        raise NotFoundError(f"no light-curve files match {urls!r}")
    times, fluxes = [], []
    for url in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnitsWarning)
                table = read_table(url, "LIGHTCURVE", storage_options=storage_options)
        except FileNotFoundError:
            raise
        except Exception as err:  # astropy/FITS errors of many kinds
            raise LightCurveError(f"{url}: not a readable light-curve FITS file ({err})") from err
        for column in ("TIME", flux_column):
            if column not in table.colnames:
                raise LightCurveError(f"{url}: LIGHTCURVE HDU has no {column} column")
        time = np.asarray(table["TIME"], float)
        flux = np.asarray(table[flux_column], float)
        keep = np.isfinite(time) & np.isfinite(flux)
        times.append(time[keep])
        fluxes.append(flux[keep])
    time, flux = np.concatenate(times), np.concatenate(fluxes)
    order = np.argsort(time, kind="stable")
    return time[order], flux[order]


def _cadences(urls: Sequence[str], reader: str, storage_options: dict | None) -> int:
    """Raw number of cadences of a target's files (metadata only)."""
    if reader == "kepler":
        return sum(
            int(hdu_info(u, "LIGHTCURVE", storage_options=storage_options).shape[0]) for u in urls
        )
    import h5py

    total = 0
    for url in urls:
        fs, path = storage.resolve(url, storage_options=storage_options)
        if not fs.exists(path):
            raise NotFoundError(f"QLP light curve not found: {url}")
        try:
            with fs.open(path, "rb") as handle, h5py.File(handle, "r") as h5:
                total += int(h5["LightCurve"]["BJD"].shape[0])
        except (OSError, KeyError) as err:
            raise LightCurveError(f"{url}: not a readable QLP light curve ({err})") from err
    return total


def _read_target(urls: Sequence[str], reader: str, storage_options: dict | None) -> list:
    """The parts (one per file: time, flux[, flux_small, flux_big]) of one target."""
    if reader == "kepler":
        return [read_kepler(list(urls), storage_options=storage_options)]
    if reader == "qlp-vetting":
        return [read_qlp_apertures(u, storage_options=storage_options) for u in urls]
    return [read_qlp(u, storage_options=storage_options) for u in urls]


def read_batch_checked(
    groups: Sequence[Sequence[str]], reader: str, length: int, storage_options: dict | None
) -> tuple[np.ndarray, list[CloudlabError | None]]:
    """Read the light curves of a batch of targets, keeping going past the unreadable ones.

    Parameters
    ----------
    groups, reader, length, storage_options
        As for :func:`read_batch`.

    Returns
    -------
    (numpy.ndarray, list)
        The array of :func:`read_batch`, and for each target ``None`` or the error that left
        its rows NaN: its files missing or unreadable, or a light curve longer than ``length``
        (refused by name, never cut short).
    """
    arrays = np.full((len(VARIABLES[reader]), len(groups), length), np.nan)
    remote = any(not storage.is_local(u) for urls in groups for u in urls)
    threads = max(1, min(REMOTE_THREADS if remote else 1, len(groups)))

    def read(urls: Sequence[str]) -> list | CloudlabError:
        try:
            return _read_target(urls, reader, storage_options)
        except CloudlabError as err:
            return err

    with ThreadPoolExecutor(max_workers=threads) as pool:
        targets = list(pool.map(read, groups))
    errors: list[CloudlabError | None] = []
    for i, (urls, parts) in enumerate(zip(groups, targets, strict=True)):
        longest = 0 if isinstance(parts, CloudlabError) else sum(p[0].size for p in parts)
        if longest > length:
            parts = LightCurveError(
                f"{', '.join(map(str, urls))}: {longest} cadences, more than the "
                f"cadences={length} given to read_lightcurves; give the longest light "
                "curve's length, or leave cadences out to have every file read for it"
            )
        if isinstance(parts, CloudlabError):
            errors.append(parts)
            continue
        errors.append(None)
        for k in range(len(arrays)):
            values = np.concatenate([p[k] for p in parts])
            arrays[k, i, : values.size] = values
    return arrays, errors


def read_batch(
    groups: Sequence[Sequence[str]], reader: str, length: int, storage_options: dict | None
) -> np.ndarray:
    """Read the light curves of a batch of targets into one NaN-padded array.

    Parameters
    ----------
    groups : sequence of sequence of str
        The files of each target (several are concatenated).
    reader : {"qlp", "qlp-vetting", "kepler"}
        File layout, as for :func:`read_lightcurves`.
    length : int
        Cadences of the output (at least the longest light curve).
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    numpy.ndarray
        Shape (2 or 4, targets, length): time, flux (and ``flux_small``, ``flux_big`` with
        ``reader="qlp-vetting"``), NaN after each light curve's last point.  Remote files are
        read in threads.

    Raises
    ------
    LightCurveError
        A light curve longer than ``length`` (named by its files), or an unreadable file.
    NotFoundError
        A file is missing.
    """
    arrays, errors = read_batch_checked(groups, reader, length, storage_options)
    first = next((err for err in errors if err is not None), None)
    if first is not None:
        raise first
    return arrays


def _metadata(func: Callable[[Any], Any], items: list) -> list:
    """``func(item)`` for every item (a URL or a list of URLs), in client threads: metadata
    reads wait on the store, not the CPU. Results in order; the first error is raised."""
    urls = [u for item in items for u in ([item] if isinstance(item, str) else item)]
    threads = 4 if all(storage.is_local(u) for u in urls) else 32
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(items)))) as pool:
        return list(pool.map(func, items))


def _kepler_id(url: str, storage_options: dict | None) -> int:
    # one walk reads (and caches) the primary and LIGHTCURVE headers: one request per file
    # besides the file's info, and none more when the cadences are counted
    primary, _ = hdu_infos(url, [0, "LIGHTCURVE"], storage_options=storage_options)
    kepid = primary.get("KEPLERID")
    if kepid is None:
        raise LightCurveError(
            f"{url}: primary header has no KEPLERID; pass a {{kepid: [files]}} mapping"
        )
    return int(kepid)


def _kepler_targets(urls: Sequence[str], storage_options: dict | None) -> dict[int, list[str]]:
    """Group Kepler files by the ``KEPLERID`` of their primary header (not their names)."""
    groups: dict[int, list[str]] = {}
    for url, kepid in zip(
        urls, _metadata(lambda u: _kepler_id(u, storage_options), list(urls)), strict=True
    ):
        groups.setdefault(kepid, []).append(url)
    return groups


def read_lightcurves(
    urls: Mapping[object, str | Sequence[str]] | Sequence[str],
    *,
    reader: str = "qlp",
    batch_size: int | None = None,
    cadences: int | None = None,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Open many light curves lazily as a (target, cadence) Dataset, one task per batch.

    Parameters
    ----------
    urls : mapping or sequence
        ``{target: url or [urls]}`` (several files of one target are concatenated), or a list
        of files whose stems become the targets (integers where they are numeric, e.g. TIC IDs);
        with ``reader="kepler"`` a list is grouped by each file's ``KEPLERID`` header instead.
    reader : {"qlp", "qlp-vetting", "kepler"}
        File layout (:func:`read_qlp`, :func:`read_qlp_apertures` — adds ``flux_small`` and
        ``flux_big`` for Vetting's ``depth_change`` — or :func:`read_kepler`).
    batch_size : int, optional
        Targets per task; by default as many as fit dask's ``array.chunk-size``
        (:func:`cloudlab.chunking.items_per_task`).
    cadences : int, optional
        Length of the cadence axis when it is known (the longest light curve, e.g. a sector's
        cadence count): no file is opened now (otherwise every file's length is read first, a
        request per file). A task whose light curve is longer raises :class:`LightCurveError`
        naming its files. With ``reader="kepler"`` give ``urls`` as a mapping: a list is
        grouped by the files' headers, which reads them anyway.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    xarray.Dataset
        ``time`` and ``flux`` (target, cadence), NaN-padded to the longest raw file (or to
        ``cadences``); only file metadata is read now.

    Raises
    ------
    InputError
        An unknown reader, no files, ``cadences`` below 1 or ``batch_size`` below 1.

    Notes
    -----
    :func:`cloudlab.astronet.views` reads each batch of TCEs' light curves straight from these
    files (:func:`files_of`) as long as ``time`` and ``flux`` are unchanged.
    """
    if reader not in VARIABLES:
        raise InputError(f"reader must be 'qlp', 'qlp-vetting' or 'kepler', got {reader!r}")
    if cadences is not None and int(cadences) < 1:
        raise InputError(f"cadences must be at least 1 (or None to read it), got {cadences}")
    if batch_size is not None and int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1 target per task, got {batch_size}")
    if not isinstance(urls, Mapping) and reader == "kepler":
        urls = _kepler_targets(urls, storage_options)
    elif not isinstance(urls, Mapping):
        stems = [PurePosixPath(str(u)).name.split(".")[0] for u in urls]
        keys = [int(s) if s.isdigit() else s for s in stems]
        urls = dict(zip(keys, urls, strict=True))
    targets = list(urls)
    if not targets:
        raise InputError("read_lightcurves needs at least one file")
    groups = [
        [storage.absolute(u)]
        if isinstance(u, str | os.PathLike)
        else [storage.absolute(v) for v in u]
        for u in urls.values()
    ]
    if cadences is None:
        length = max(_metadata(lambda g: _cadences(g, reader, storage_options), groups))
    else:
        length = int(cadences)
    names = VARIABLES[reader]
    count = len(names)
    if batch_size is None:
        batch_size = items_per_task(count * 8 * length, maximum=len(groups))
    name = "read-lightcurves-" + tokenize(groups, reader, length, batch_size, storage_options)
    parts = [groups[lo : lo + batch_size] for lo in range(0, len(groups), batch_size)]
    layer = {
        (name, 0, b, 0): (read_batch, part, reader, length, storage_options)
        for b, part in enumerate(parts)
    }  # one layer, one task per batch of targets
    chunks = ((count,), tuple(len(part) for part in parts), (length,))
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    data = da.Array(graph, name, chunks, dtype=float, meta=np.empty((0, 0, 0)))
    ds = xr.Dataset(
        {name: (("target", "cadence"), data[k]) for k, name in enumerate(names)},
        coords={"target": np.asarray(targets)},
        attrs={"reader": reader},
    )
    recipe = LightCurveFiles(groups, reader, length, storage_options)
    _RECIPES.remember([ds[variable].data.name for variable in names], recipe)
    return ds
