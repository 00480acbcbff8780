"""Views and predictions for catalogs of TCEs as lazy, blockwise dask graphs.

Light curves are an xarray Dataset with a ``target`` dimension: either ``flux`` (target, time) with
a 1-D ``time`` coordinate (the cutouts / aperture-photometry layout), or ``time`` and ``flux`` both
(target, cadence), NaN-padded (the layout of :func:`cloudlab.io.lightcurves.read_lightcurves`).
TCEs are a table with one row per TCE; by default the columns of the reference's ``tces.csv``
after :func:`read_tces` (``tic_id``, ``Period``, ``Epoc``, ``Duration`` in days).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from functools import lru_cache

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from cloudlab import storage
from cloudlab.astronet.shipped import SHIPPED, shipped_models
from cloudlab.astronet.views import batch_views, num_bins
from cloudlab.backend import gpu_tasks
from cloudlab.chunking import client_batches, items_per_task, task_outputs
from cloudlab.errors import REASON, STATUS, STATUS_OK, InputError, NotFoundError
from cloudlab.io.lightcurves import (
    VARIABLES,
    files_of,
    pack_groups,
    read_batch_checked,
    unpack_groups,
)

__all__ = [
    "DR24_COLUMNS",
    "INFERENCE_BATCH",
    "REASON_DTYPE",
    "REFERENCE_COLUMNS",
    "STATUS_DTYPE",
    "predict_catalog",
    "read_tces",
    "tces_per_task",
    "views",
    "write_predictions",
]

REASON_DTYPE = "<U96"
#: TCEs the models see at once inside a task (bounds the network's activations)
INFERENCE_BATCH = 256
STATUS_DTYPE = "<U16"
REFERENCE_COLUMNS = [  # the columns generate_input_records keeps (usecols 0-3, 7-13, 18)
    "row_id",
    "tic_id",
    "toi_id",
    "Disposition",
    "Epoc",
    "Period",
    "Duration",
    "Transit_Depth",
    "Sectors",
    "camera",
    "ccd",
    "SN",
]

#: Kepler DR24 TCE column names -> the names read_tces and views use.
DR24_COLUMNS = {
    "kepid": "tic_id",
    "tce_period": "Period",
    "tce_time0bk": "Epoc",
    "tce_duration": "Duration",
    "av_training_set": "Disposition",
}
EPHEMERIS_COLUMNS = ("Period", "Epoc", "Duration")
NUMERIC_COLUMNS = ("tic_id", "Period", "Epoc", "Duration", "Transit_Depth")


def read_tces(
    url: str, *, clean: bool = True, vetting: bool = False, storage_options: dict | None = None
) -> pd.DataFrame:
    """Read an AstroNet TCE table (``tces.csv``, CR-only line endings allowed).

    Parameters
    ----------
    url : str
        CSV URL.
    clean : bool
        Apply the reference's ``create_input_list`` steps: keep the used columns, drop
        duplicates and rows with missing values (except a missing ``Period``, ``Epoc`` or
        ``Duration``: that row stays and :func:`views` skips it as ``bad_ephemeris``), keep
        ``Transit_Depth > 0``, convert ``Duration`` from hours to days, and relabel IS and V
        (Vetting: also O) as J. Kepler DR24 names (``kepid``, ``tce_period``,
        ``tce_time0bk``, ``tce_duration`` in hours, ``av_training_set``) are renamed first
        (:data:`DR24_COLUMNS`).
    vetting : bool
        Keep Vetting's extra columns (``Tmag``, ``Qingress``).
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    InputError
        A cell of a numeric column (``tic_id``, ``Period``, ``Epoc``, ``Duration``,
        ``Transit_Depth``) that is not a number (names the row and column); with
        ``clean=True``, a table without the columns the cleaning needs.
    """
    text = storage.read_bytes(url, storage_options=storage_options).decode("latin-1")
    table = pd.read_csv(io.StringIO(text.replace("\r\n", "\n").replace("\r", "\n")))
    dr24 = "av_training_set" in table.columns
    table = table.rename(columns={k: v for k, v in DR24_COLUMNS.items() if k in table.columns})
    _check_numeric(table, url)
    if not clean:
        return table
    if dr24 and "Transit_Depth" not in table.columns:
        table["Transit_Depth"] = 1.0  # DR24 tables need no depth column; keep every row
    needed = ["tic_id", "Epoc", "Period", "Duration", "Transit_Depth", "Disposition"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise InputError(
            f"{url}: TCE table lacks columns {missing} (has {list(table.columns)}); "
            "pass clean=False to read it as it is"
        )
    columns = [c for c in REFERENCE_COLUMNS if c in table.columns]
    if vetting:
        columns += [c for c in ("Tmag", "Qingress") if c in table.columns]
    table = table[columns].drop_duplicates()
    # a missing ephemeris stays a row: views() skips it with status "bad_ephemeris"
    table = table.dropna(subset=[c for c in columns if c not in EPHEMERIS_COLUMNS])
    table = table[table["Transit_Depth"] > 0].copy()
    table["Duration"] = table["Duration"] / 24
    junk = ["IS", "V", "O"] if vetting else ["IS", "V"]
    table["Disposition"] = table["Disposition"].replace(junk, "J")
    return table.reset_index(drop=True)


def _check_numeric(table: pd.DataFrame, url: str) -> None:
    """Raise InputError naming the first row and column whose cell is not a number."""
    for column in NUMERIC_COLUMNS:
        if column not in table.columns or pd.api.types.is_numeric_dtype(table[column]):
            continue
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() & table[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"{url}: row {row + 2} (data row {row}), column {column!r}: "
                f"{table[column].iloc[row]!r} is not a number; fix or blank that cell"
            )
        table[column] = values


def _light_curve_arrays(lightcurves: xr.Dataset) -> tuple[object, object, np.ndarray]:
    """(time, flux, target labels), without computing.

    ``flux`` is 2-D (target, n); ``time`` is 2-D too, or 1-D (n) when every target shares it.
    """
    if "flux" not in lightcurves or "target" not in lightcurves["flux"].dims:
        raise InputError(
            "lightcurves: no 'flux' variable with a 'target' dimension; "
            "use cloudlab.io.lightcurves.read_lightcurves or rename the variables"
        )
    flux = lightcurves["flux"]
    if flux.ndim != 2:
        raise InputError(f"lightcurves 'flux' must be 2-D (target, time); got dims {flux.dims}")
    other = next(d for d in flux.dims if d != "target")
    flux = flux.transpose("target", other)
    if "time" not in lightcurves.variables:
        raise InputError("lightcurves: no 'time' coordinate or variable; add the cadence times")
    time = lightcurves["time"]
    if time.dims != (other,):
        time = time.transpose("target", other)
    targets = (
        lightcurves["target"].values
        if "target" in lightcurves.coords
        else np.arange(flux.sizes["target"])
    )
    return time.data, flux.data, np.asarray(targets)


def _by_target(values, rows: int) -> da.Array:
    """A (target, n) array as dask chunks of whole light curves (in-memory data wrapped once)."""
    if not isinstance(values, da.Array):
        values = np.asarray(values)
        chunks = -1 if values.ndim == 1 else (max(1, rows), -1)
        values = da.from_array(values, chunks=chunks)
    if values.ndim == 1:  # one time axis shared by every target: a single block
        return values.rechunk(-1)
    return values.rechunk({1: -1})


def _target_blocks(inputs: dict, rows: int) -> dict:
    """The per-target inputs as dask arrays of whole light curves, every 2-D one cut into
    blocks of targets as ``flux`` is."""
    inputs = {k: _by_target(v, rows) for k, v in inputs.items()}
    chunks = inputs["flux"].chunks[0]
    for key, values in inputs.items():
        if values.ndim == 2 and values.chunks[0] != chunks:
            inputs[key] = values.rechunk({0: chunks})
    return inputs


def _block_keys(values: da.Array, blocks: np.ndarray) -> list:
    """The keys of ``values``' blocks ``blocks`` (its one block when 1-D: a shared time axis)."""
    if values.ndim == 1:
        return [(values.name, 0)]
    return [(values.name, int(c), 0) for c in blocks]


def _gather(blocks: list, picks: list) -> np.ndarray:
    """The rows ``picks[k]`` of ``blocks[k]``, concatenated (a shared 1-D array as it is)."""
    if np.ndim(blocks[0]) == 1:
        return np.asarray(blocks[0], float)
    return np.concatenate(
        [np.asarray(block, float)[pick] for block, pick in zip(blocks, picks, strict=True)]
    )


def _views_of(time, flux, apertures, rows, ephemeris, extra, found, missing, kind, distance):
    """Views of one batch of TCEs (``rows``: each TCE's light-curve row in ``flux``)."""
    time = np.repeat(time[None, :], len(rows), axis=0) if time.ndim == 1 else time[rows]
    qingress = None
    if apertures is not None:
        apertures, qingress = tuple(a[rows] for a in apertures), extra
    period, t0, duration = ephemeris
    out = batch_views(
        time,
        flux[rows],
        np.where(found, period, np.nan),
        t0,
        duration,
        kind=kind,
        max_epoch_distance=distance,
        apertures=apertures,
        qingress=qingress,
    )
    out[STATUS], out[REASON] = _reasons(out[STATUS], out[REASON], found, missing)
    return out


def _block(time, flux, apertures, picks, *args):
    """Views of one batch of TCEs from the light-curve blocks it needs (``picks``: the rows of
    each block it takes, ``args``: as for :func:`_views_of` after ``apertures``)."""
    if apertures is not None:
        apertures = tuple(_gather(blocks, picks) for blocks in apertures)
    return _views_of(_gather(time, picks), _gather(flux, picks), apertures, *args)


def _file_block(packed, files, apertures, *args):
    """Views of one batch of TCEs whose light curves the task reads itself (``packed``: the
    files of the targets it needs, :func:`~cloudlab.io.lightcurves.pack_groups`; ``files``:
    reader, cadences and storage options).  The TCEs of a target whose files cannot be read
    get status ``unreadable`` and the reason, naming the file; the others go on."""
    groups = unpack_groups(packed)
    reader, length, storage_options = files
    if groups:
        arrays, errors = read_batch_checked(groups, reader, length, storage_options)
    else:  # no TCE of the batch has a light curve
        arrays, errors = np.full((len(VARIABLES[reader]), 1, length), np.nan), [None]
    out = _views_of(arrays[0], arrays[1], (arrays[2], arrays[3]) if apertures else None, *args)
    rows, found = args[0], args[3]
    for target, err in enumerate(errors):
        if err is not None:
            hit = found & (rows == target)
            out[STATUS][hit] = "unreadable"
            out[REASON][hit] = _short_reason(str(err), groups[target])
    return out


def _short_reason(message: str, urls: list[str]) -> str:
    """``message`` with the folders of ``urls`` left out when it is too long for a reason."""
    if len(message) <= int(REASON_DTYPE[2:]):
        return message
    for url in urls:
        message = message.replace(url, url.rsplit("/", 1)[-1])
    return message


def _targets_needed(row_of: np.ndarray, batch: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one batch of TCEs: the light-curve rows it needs (sorted, unique), where each TCE's
    light curve lands among them, and whether it has one."""
    rows = row_of[batch]
    found = rows >= 0
    need = np.unique(rows[found])
    local = np.zeros(rows.size, dtype=np.min_scalar_type(max(need.size - 1, 0)))
    local[found] = np.searchsorted(need, rows[found])
    return need, local, found


def _block_picks(need: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, list]:
    """The target blocks holding light-curve rows ``need`` and the rows to take from each."""
    if not need.size:
        need = np.array([0])
    chunk = np.searchsorted(starts, need, side="right") - 1
    blocks = np.unique(chunk)
    return blocks, [need[chunk == c] - starts[c] for c in blocks]


def tces_per_task(n_cadences: int, kind: str, n_tces: int, *, extra: bool = False) -> int:
    """TCEs per views (and inference) task, from :func:`cloudlab.chunking.items_per_task`.

    A TCE costs a task the light-curve rows it reads (time and flux, as the input blocks hold
    them and as the float64 copy the views are made from: 32 bytes per cadence, twice that with
    the vetting apertures ``flux_small``/``flux_big``) and its float64 views.

    Parameters
    ----------
    n_cadences : int
        Samples per light curve.
    kind : str
        View algorithm (sets the view lengths).
    n_tces : int
        TCEs in the catalog (the most one task holds).
    extra : bool
        Whether the small- and big-aperture fluxes come too (vetting ``depth_change``).

    Returns
    -------
    int
        TCEs per task.
    """
    per_cadence = 2 * 2 * 8 * (2 if extra else 1)
    per_tce = per_cadence * max(n_cadences, 1) + 8 * sum(num_bins(kind).values())
    return items_per_task(per_tce, maximum=n_tces)


def views(
    lightcurves: xr.Dataset,
    tces: pd.DataFrame,
    *,
    kind: str = "triage",
    batch_size: int | None = None,
    target: str = "tic_id",
    period: str = "Period",
    t0: str = "Epoc",
    duration: str = "Duration",
    max_epoch_distance: float = 1000.0,
    qingress: str = "Qingress",
) -> xr.Dataset:
    """Views of many TCEs, lazily, one dask task per batch of TCEs.

    Parameters
    ----------
    lightcurves : xarray.Dataset
        Light curves with a ``target`` dimension (see the module docstring).  Straight from
        :func:`~cloudlab.io.lightcurves.read_lightcurves`, each task reads its own TCEs' files
        (:func:`~cloudlab.io.lightcurves.files_of`); otherwise tasks take the rows they need
        from the light curves' blocks.
    tces : pandas.DataFrame
        One row per TCE; ``target`` values must match ``lightcurves.target``.
    kind : {"triage", "vetting", "kepler"}
        View algorithm (see :func:`cloudlab.astronet.views_for`).
    batch_size : int, optional
        TCEs per task (default: :func:`tces_per_task`, from dask's ``array.chunk-size``).
    target, period, t0, duration : str
        Column names (period, epoch and duration in days, epoch in the light curves' time
        system).
    max_epoch_distance : float
        Epochs further than this (days) outside a light curve are skipped with a reason.
    qingress : str
        Vetting: ingress-fraction column for ``depth_change`` (0 where the column is absent).
        ``depth_change`` is made when ``lightcurves`` has ``flux_small`` and ``flux_big``.

    Returns
    -------
    xarray.Dataset
        Dims ``tce``, ``global_bin``, ``local_bin`` (and ``secondary_bin``): ``global_view``,
        ``local_view`` (``secondary_view``), ``status`` (``"ok"`` or a code of
        :data:`cloudlab.astronet.views.STATUS_CODES`, ``"no_lightcurve"`` for a target missing
        from ``lightcurves``), ``reason`` (why a TCE was skipped, '' when ok), ``valid``
        (``status == "ok"``), and every column of ``tces`` as a ``tce`` variable.  Nothing is
        computed.

    Raises
    ------
    InputError
        Missing TCE columns, a bad ``batch_size`` or ``kind``, or light curves without unique
        targets.
    """
    missing = [c for c in (target, period, t0, duration) if c not in tces.columns]
    if missing:
        raise InputError(
            f"TCE table lacks columns {missing} (has {list(tces.columns)}); "
            "name the right ones with target=, period=, t0=, duration="
        )
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size={batch_size}: use a positive number of TCEs per task")
    time, flux, labels = _light_curve_arrays(lightcurves)
    with_depth = kind == "vetting" and {"flux_small", "flux_big"} <= set(lightcurves.data_vars)
    if batch_size is None:
        batch_size = tces_per_task(flux.shape[1], kind, max(len(tces), 1), extra=with_depth)
    lookup = pd.Index(labels)
    if not lookup.is_unique:
        dup = lookup[lookup.duplicated()].unique()[:5].tolist()
        raise InputError(f"lightcurves: target labels repeat ({dup}); give each target one row")
    tce_targets = tces[target].to_numpy()
    row_of = lookup.get_indexer(tce_targets)
    n = len(tces)
    ephemeris = np.stack([tces[c].to_numpy(float) for c in (period, t0, duration)])
    tce_q = tces[qingress].to_numpy(float) if with_depth and qingress in tces else np.zeros(n)
    files = files_of(lightcurves)
    if files is not None and (not with_depth or files.reader == "qlp-vetting"):
        inputs: dict = {}
        read = (files.reader, files.length, files.storage_options)
        names = [flux.name]  # read_lightcurves' name: its files, reader and cadences
    else:
        inputs = {"time": time, "flux": flux}
        if with_depth:
            inputs["small"] = lightcurves["flux_small"].transpose("target", ...).data
            inputs["big"] = lightcurves["flux_big"].transpose("target", ...).data
        inputs = _target_blocks(inputs, batch_size)
        starts = np.cumsum((0, *inputs["flux"].chunks[0]))[:-1]
        names = [values.name for values in inputs.values()]
    token = tokenize(names, tces, kind, batch_size, max_epoch_distance, target, period, t0,
                     duration, qingress)  # fmt: skip
    name = f"astronet-views-{token}"
    graph: dict = {}
    lengths = []
    for b, lo in enumerate(range(0, n, batch_size)):
        sl = slice(lo, min(n, lo + batch_size))
        need, local, found = _targets_needed(row_of, sl)
        args = (local, ephemeris[:, sl], tce_q[sl] if with_depth else None, found,
                tce_targets[sl][~found], kind, max_epoch_distance)  # fmt: skip
        if not inputs:
            packed = pack_groups([files.groups[r] for r in need])
            graph[(name, b)] = (_file_block, packed, read, with_depth, *args)
        else:
            blocks, picks = _block_picks(need, starts)
            keys = {k: _block_keys(v, blocks) for k, v in inputs.items()}
            apertures = [keys["small"], keys["big"]] if with_depth else None
            graph[(name, b)] = (_block, keys["time"], keys["flux"], apertures, picks, *args)
        lengths.append(sl.stop - sl.start)
    batches = HighLevelGraph.from_collections(name, graph, dependencies=list(inputs.values()))
    outputs = {variable: (bins, float) for variable, bins in num_bins(kind).items()}
    outputs["valid"] = (None, bool)
    if with_depth:
        outputs["depth_change"] = (None, float)
    outputs[STATUS] = (None, STATUS_DTYPE)
    outputs[REASON] = (None, REASON_DTYPE)
    data = {}
    for variable, (bins, dtype) in outputs.items():
        dims = ("tce",) if bins is None else ("tce", variable.replace("_view", "_bin"))
        inner = () if bins is None else (bins,)
        data[variable] = (dims, task_outputs(batches, name, variable, lengths, inner, dtype))
    ds = xr.Dataset(data)
    for column in tces.columns:
        values = tces[column].to_numpy()
        if values.dtype == object:
            values = values.astype(str)
        ds[column] = ("tce", values)
    for column in (period, t0, duration):
        ds[column].attrs["units"] = "d"
    ds.attrs.update(kind=kind, period=period, t0=t0, duration=duration, target=target)
    return ds


def _reasons(
    status: np.ndarray, reason: np.ndarray, found: np.ndarray, missing: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Status and reason with ``no_lightcurve`` for the TCEs not ``found`` (``missing``: their
    targets, in order)."""
    status = np.asarray(status, dtype=object).copy()
    reason = np.asarray(reason, dtype=object).copy()
    for i, label in zip(np.flatnonzero(~found), missing, strict=True):
        status[i] = "no_lightcurve"
        reason[i] = f"no light curve for target {label}"
    return status.astype(STATUS_DTYPE), reason.astype(REASON_DTYPE)


def _exists(url: str) -> bool:
    fs, path = storage.resolve(url)
    return fs.exists(path)


@lru_cache(maxsize=8)
def _cached_models(checkpoints: tuple[str, ...]):
    from cloudlab.astronet.train import load

    return [load(url) for url in checkpoints]


def _models(checkpoints: tuple[str, ...]) -> list:
    """The checkpoints' models, or the shipped ensemble when there are none."""
    if not checkpoints:
        return shipped_models()
    return _cached_models(checkpoints)


def _predict_block(global_view, local_view, valid, checkpoints, batch_size):
    from cloudlab.astronet.train import predict

    out = np.full(len(valid), np.nan)
    if valid.any():
        ds = xr.Dataset(
            {
                "global_view": (("tce", "global_bin"), global_view[valid]),
                "local_view": (("tce", "local_bin"), local_view[valid]),
            }
        )
        out[valid] = predict(_models(tuple(checkpoints)), ds, batch_size=batch_size)
    return out


def predict_catalog(
    lightcurves: xr.Dataset,
    tces: pd.DataFrame,
    checkpoints: str | Sequence[str] | None = None,
    *,
    kind: str = "triage",
    batch_size: int | None = None,
    gpu: bool = False,
    **columns: str,
) -> xr.Dataset:
    """Ensemble predictions for a TCE catalog as one lazy graph.

    Views are made on the workers, batch by batch, and each batch's inference runs in the same
    worker (the models are loaded once per worker process and cached).

    Parameters
    ----------
    lightcurves, tces
        As for :func:`views`.
    checkpoints : str or sequence of str, optional
        Model checkpoint URLs; their mean probability is returned.  ``None`` (default): the
        Triage ensemble shipped with cloudlab (:func:`cloudlab.astronet.shipped.shipped_models`),
        which takes ``kind="triage"`` views only.
    kind : str
        View algorithm.
    batch_size : int, optional
        TCEs per task (views and inference; default :func:`tces_per_task`).
    gpu : bool
        Annotate the inference tasks with the GPU resource (``cloudlab.cluster.gpu_tasks``) so
        they run on GPU workers, where TensorFlow uses the device; views stay on CPU workers.
    **columns
        Column names passed to :func:`views` (``target``, ``period``, ``t0``, ``duration``).

    Returns
    -------
    xarray.Dataset
        The views Dataset plus ``prediction`` (tce): NaN where ``status`` is not ``"ok"``.
        Nothing is computed.

    Raises
    ------
    InputError
        ``kind="vetting"``, an empty list of checkpoints, or ``kind="kepler"`` without
        checkpoints.
    FileNotFoundError
        A checkpoint does not exist (or the shipped weights are missing).
    """
    if kind not in ("triage", "kepler"):
        raise InputError(
            f"predict_catalog: kind={kind!r}; it supports the global/local models "
            "('triage', 'kepler')"
        )
    if checkpoints is None:
        if kind != "triage":
            raise InputError(
                f"predict_catalog: the shipped ensemble takes Triage views, not kind={kind!r}; "
                "pass checkpoints of a model trained on those views"
            )
        if not SHIPPED.exists():
            raise NotFoundError(
                f"the trained AstroNet ensemble is missing from this installation ({SHIPPED}); "
                "reinstall cloudlab or pass checkpoints"
            )
        checkpoints = []
    elif isinstance(checkpoints, str):
        checkpoints = [checkpoints]
    else:
        checkpoints = list(checkpoints)
        if not checkpoints:
            raise InputError(
                "predict_catalog: empty list of checkpoints; pass at least one model URL, "
                "or None for the shipped ensemble"
            )
    missing = [url for url in checkpoints if not _exists(url)]
    if missing:
        raise NotFoundError(
            f"AstroNet checkpoints not found: {missing}; train one with "
            "'cloudlab astronet train' or check the URLs"
        )
    ds = views(lightcurves, tces, kind=kind, batch_size=batch_size, **columns)
    with gpu_tasks() if gpu else nullcontext():
        prediction = da.blockwise(
            _predict_block,
            "i",
            ds["global_view"].data,
            "ij",
            ds["local_view"].data,
            "ik",
            ds["valid"].data,
            "i",
            tuple(checkpoints),
            None,
            INFERENCE_BATCH,
            None,
            concatenate=True,
            dtype=float,
            meta=np.array((), dtype=float),
        )
    ds["prediction"] = ("tce", prediction)
    return ds


def write_predictions(
    ds: xr.Dataset,
    url: str,
    *,
    columns: Sequence[str] | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Write the predictions of :func:`predict_catalog` without gathering them on the client.

    A ``url`` ending in ``.zarr`` gets a zarr (v2) store written by
    :func:`cloudlab.storage.write_zarr`: on a cluster each worker writes the chunks of its own
    batches, so the predictions never pass through the client. Any other ``url`` gets a CSV
    table, computed and appended a range of whole batches at a time
    (:func:`cloudlab.chunking.client_batches`, about dask's ``array.chunk-size`` of rows), so
    the client holds one range, not the catalog. Either way the product is put in place only
    once complete (an existing one is refused unless ``overwrite``, before any computation).

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`predict_catalog` (lazy).
    url : str
        Destination: ``*.zarr`` for a store, else a CSV file.
    columns : sequence of str, optional
        TCE columns to write before ``prediction``, ``status`` and ``reason`` (default: every
        TCE column of the catalog).
    overwrite : bool
        Replace an existing product.
    storage_options : dict, optional
        fsspec options for ``url``.
    progress : bool
        Progress bar on stderr.

    Returns
    -------
    dict
        ``{"written": TCEs with a prediction, "skipped": TCEs without one}``.

    Raises
    ------
    InputError
        ``ds`` has no ``prediction``, a column is not in ``ds``, or (CSV) every TCE was skipped:
        then nothing is written.
    OverwriteError
        ``url`` exists and ``overwrite`` is False.
    """
    if "prediction" not in ds:
        raise InputError(
            "write_predictions: no 'prediction' variable; pass predict_catalog's result"
        )
    if columns is None:
        columns = [c for c in ds.data_vars if ds[c].dims == ("tce",) and not _is_lazy(ds[c])]
    missing = [c for c in columns if c not in ds]
    if missing:
        raise InputError(f"write_predictions: columns {missing} are not in the predictions")
    names = [*columns, "prediction", STATUS, REASON]
    storage.check_writable(url, overwrite=overwrite, storage_options=storage_options)
    if url.rstrip("/").endswith(".zarr"):
        out = ds[names]
        out.attrs = {k: v for k, v in ds.attrs.items() if isinstance(v, str | int | float)}
        storage.write_zarr(
            out, url, overwrite=overwrite, storage_options=storage_options, progress=progress,
            zarr_format=2,
        )  # fmt: skip
        status = storage.read_zarr(url, storage_options=storage_options)[STATUS].values
        ok = int((status == STATUS_OK).sum())
        return {"written": ok, "skipped": int(status.size - ok)}
    return _write_predictions_csv(ds, url, columns, overwrite, storage_options, progress)


def _is_lazy(variable: xr.DataArray) -> bool:
    return isinstance(variable.data, da.Array)


def _write_predictions_csv(ds, url, columns, overwrite, storage_options, progress):
    """The CSV table of :func:`write_predictions`, one range of whole batches at a time."""
    from tqdm import tqdm

    from cloudlab.cluster import compute

    lazy = [ds[v].data for v in ("prediction", STATUS, REASON)]
    counts = {"written": 0, "skipped": 0}
    first_reason = ""
    bar = tqdm(total=ds.sizes["tce"], desc="predict", unit="TCE", file=sys.stderr,
               disable=not progress)  # fmt: skip
    with (
        bar,
        storage.write_file(url, overwrite=overwrite, storage_options=storage_options) as path,
        open(path, "w", newline="") as f,
    ):
        for start, stop in client_batches(ds[REASON].data):
            prediction, status, reason = compute(*(v[start:stop] for v in lazy), progress=False)
            table = pd.DataFrame({c: ds[c].values[start:stop] for c in columns})
            table["prediction"] = prediction
            table[STATUS] = status
            table[REASON] = reason
            table.to_csv(f, header=start == 0, index=False)
            ok = int((status == STATUS_OK).sum())
            counts["written"] += ok
            counts["skipped"] += stop - start - ok
            if not first_reason and ok < stop - start:
                first_reason = str(reason[status != STATUS_OK][0])
            bar.update(stop - start)
        if not counts["written"]:
            raise InputError(
                f"all {counts['skipped']} TCEs were skipped, nothing written to {url}; the "
                f"first reason: {first_reason}"
            )
    return counts
