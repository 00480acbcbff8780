"""The sink of :func:`cloudlab.pipelines.vet_tces`: TPFs, light-curve FITS, a ranked table, plots.

Layout under ``out``::

    tpf/        one target pixel file per TIC (cloudlab.cutouts.write_tpfs; APERTURE bit 2 marks
                the photometric aperture)
    lc/         tic{TIC}-s{SECTOR:04d}_lc.fits, one light curve per TIC (lightkurve.read opens it)
    vetting.csv, vetting.parquet
                one row per TCE, ranked by score (failed TCEs last, with their reason)
    plots/      tce{TCEID}.png per TCE with a light curve
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import dask
import numpy as np
import pandas as pd
import xarray as xr
from astropy.io import fits

from cloudlab import storage
from cloudlab.errors import REASON, STATUS, InputError

__all__ = [
    "TABLE_COLUMNS",
    "lightcurve_fits",
    "product_urls",
    "ranked_table",
    "tce_figure",
    "write_vetting",
]

TABLE_COLUMNS = (
    "rank", "tceid", "ticid", "planet", "period", "t0", "duration_hours", "depth_ppm",
    "prediction", "centroid_offset", "score", STATUS, REASON,
)  # fmt: skip
"""Columns of the ranked table (period d, t0 BTJD)."""

_PIXEL_VARS = (
    "cutout_flux", "cutout_flux_err", "on_image", "aperture", "ra", "dec", "sector", "camera",
    "ccd", "cube_index", "center_column", "center_row", "corner_column", "corner_row",
)  # fmt: skip


def _lc_name(ticid: int, sector: int) -> str:
    return f"tic{int(ticid)}-s{int(sector):04d}_lc.fits"


def _plot_name(tceid: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(tceid))
    return f"tce{safe}.png"


def product_urls(
    ds: xr.Dataset,
    out: str,
    *,
    tpfs: bool = True,
    lightcurves: bool = True,
    table: bool = True,
    plots: bool = True,
) -> dict[str, list[str]]:
    """Every file :func:`write_vetting` would write, known before anything is computed.

    Returns
    -------
    dict
        ``tpf``, ``lc`` (per TIC, ``tic`` order), ``table`` (CSV, Parquet) and ``plot`` (per TCE
        with a light curve, ``tce`` order) URLs; kinds not asked for are empty lists.
    """
    from cloudlab.cutouts.tpf import tpf_name

    out = str(out).rstrip("/")
    size = (ds.sizes["row"], ds.sizes["column"])
    tic = ds["tic"].values
    sectors, cams, ccds = (ds[n].values for n in ("sector", "camera", "ccd"))
    with_lc = ds["tic_index"].values >= 0
    return {
        "tpf": [
            f"{out}/tpf/{tpf_name(int(t), s, c, d, size)}"
            for t, s, c, d in zip(tic, sectors, cams, ccds, strict=True)
        ]
        if tpfs
        else [],
        "lc": [f"{out}/lc/{_lc_name(t, s)}" for t, s in zip(tic, sectors, strict=True)]
        if lightcurves
        else [],
        "table": [f"{out}/vetting.csv", f"{out}/vetting.parquet"] if table else [],
        "plot": [f"{out}/plots/{_plot_name(t)}" for t in ds["tceid"].values[with_lc]]
        if plots
        else [],
    }


def ranked_table(ds: xr.Dataset) -> pd.DataFrame:
    """One row per TCE, highest score first (TCEs without one last, in catalog order).

    The score is the prediction, set to 0 where the difference-image centroid test puts the dip
    on another star (``centroid_offset`` beyond
    :data:`cloudlab.pipelines.centroids.MAX_CENTROID_OFFSET` pixels).

    Parameters
    ----------
    ds : xarray.Dataset
        A computed (or lazy: the small variables are computed) :func:`vet_tces` result.

    Returns
    -------
    pandas.DataFrame
        :data:`TABLE_COLUMNS` (plus ``disposition`` when the catalog had one).
    """
    table = pd.DataFrame(
        {
            "tceid": ds["tceid"].values.astype(str),
            "ticid": ds["ticid"].values.astype(np.int64),
            "planet": ds["planet"].values.astype(int),
            "period": ds["period"].values,
            "t0": ds["t0"].values,
            "duration_hours": ds["duration"].values * 24.0,
            "depth_ppm": ds["depth"].values,
            "prediction": ds["prediction"].values,
            "centroid_offset": ds["centroid_offset"].values,
            "score": ds["score"].values,
            STATUS: ds[STATUS].values.astype(str),
            REASON: ds[REASON].values.astype(str),
        }
    )
    if "disposition" in ds:
        table["disposition"] = ds["disposition"].values.astype(str)
    table = table.sort_values("score", ascending=False, na_position="last", kind="stable")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)


def lightcurve_fits(ds: xr.Dataset, tic: int) -> bytes:
    """The light curve of one TIC as a FITS file lightkurve reads (``lightkurve.read``).

    Only kept cadences are written (good quality, finite flux): ``LIGHTCURVE`` has ``TIME``
    (BTJD), ``FLUX``/``FLUX_ERR`` (median-normalised), ``SAP_FLUX`` (e-/s), ``SAP_BKG``
    (e-/s/pixel) and ``QUALITY``; the primary header has ``TICID``, ``SECTOR``, ``CAMERA``,
    ``CCD``, ``RA_OBJ``, ``DEC_OBJ``.

    Parameters
    ----------
    ds : xarray.Dataset
        A computed :func:`vet_tces` result.
    tic : int
        Position along ``tic``.

    Returns
    -------
    bytes
    """
    one = ds.isel(tic=tic)
    flux = np.asarray(one["flux"].values, float)
    keep = np.isfinite(flux)
    ticid = int(one["tic"].values)
    primary = fits.Header()
    primary["TELESCOP"] = ("TESS", "telescope")
    primary["OBJECT"] = (f"TIC {ticid}", "target")
    primary["TICID"] = (ticid, "TESS Input Catalog identifier")
    primary["SECTOR"] = (int(one["sector"].values), "observing sector")
    primary["CAMERA"] = (int(one["camera"].values), "camera")
    primary["CCD"] = (int(one["ccd"].values), "CCD")
    primary["RA_OBJ"] = (float(one["ra"].values), "[deg] right ascension")
    primary["DEC_OBJ"] = (float(one["dec"].values), "[deg] declination")
    primary["ORIGIN"] = ("cloudlab", "cutout aperture photometry (cloudlab vet)")
    primary["NPIXSAP"] = (int(one["npix"].values), "pixels in the photometric aperture")
    columns = [
        fits.Column("TIME", "D", unit="d", array=ds["time"].values[keep]),
        fits.Column("FLUX", "E", array=flux[keep]),
        fits.Column("FLUX_ERR", "E", array=np.asarray(one["flux_err"].values)[keep]),
        fits.Column("SAP_FLUX", "E", unit="e-/s", array=np.asarray(one["sap_flux"].values)[keep]),
        fits.Column("SAP_BKG", "E", unit="e-/s", array=np.asarray(one["background"].values)[keep]),
        fits.Column("QUALITY", "J", array=np.asarray(one["quality"].values)[keep]),
    ]
    table = fits.BinTableHDU.from_columns(columns, name="LIGHTCURVE")
    table.header["TIMEREF"] = ("SOLARSYSTEM", "barycentric correction applied to times")
    table.header["TIMESYS"] = ("TDB", "time system is Barycentric Dynamical Time")
    table.header["BJDREFI"] = (2457000, "integer part of BTJD reference date")
    table.header["BJDREFF"] = (0.0, "fraction of the day in BTJD reference date")
    table.header["TIMEUNIT"] = ("d", "time unit for TIME")
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(header=primary), table]).writeto(buffer)
    return buffer.getvalue()


def tce_figure(ds: xr.Dataset, tce: int) -> bytes:
    """PNG of one TCE: the light curve with its transits marked, the folded light curve and the
    global and local views, the prediction in the title.

    Parameters
    ----------
    ds : xarray.Dataset
        A computed :func:`vet_tces` result.
    tce : int
        Position along ``tce`` (its TIC must have a light curve).

    Returns
    -------
    bytes
    """
    return _figure_png(_figure_data(ds, tce))


def _figure_data(ds: xr.Dataset, tce: int) -> dict:
    """The few numbers one TCE's figure needs (small enough to ship to a worker)."""
    one = ds.isel(tce=tce)
    k = int(one["tic_index"].values)
    if k < 0:
        raise InputError(f"TCE {one['tceid'].values}: its TIC has no light curve to plot")
    flux = np.asarray(ds["flux"].values[k], float)
    keep = np.isfinite(flux)
    data = {name: float(one[name].values) for name in ("period", "t0", "duration", "prediction")}
    data.update(
        time=ds["time"].values[keep],
        flux=flux[keep],
        global_view=np.asarray(one["global_view"].values, float),
        local_view=np.asarray(one["local_view"].values, float),
        depth=float(one["depth"].values),
        title=f"TCE {one['tceid'].values} (TIC {int(one['ticid'].values)})",
        status=str(one[STATUS].values),
    )
    return data


def _figure_png(data: dict) -> bytes:
    from matplotlib.figure import Figure

    time, flux = data["time"], data["flux"]
    period, t0, duration = data["period"], data["t0"], data["duration"]
    fig = Figure(figsize=(11, 7))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.08, top=0.89, hspace=0.38, wspace=0.22)
    axes = fig.subplots(2, 2)
    ax = axes[0, 0]
    ax.plot(time, flux, ".", ms=2, color="k")
    ephemeris = np.isfinite(period) and period > 0 and np.isfinite(t0)
    if ephemeris and len(time):
        first = np.ceil((time.min() - t0) / period)
        for n in np.arange(first, np.floor((time.max() - t0) / period) + 1):
            ax.axvline(t0 + n * period, color="tab:red", alpha=0.5, lw=1)
    ax.set(xlabel="time [BTJD = BJD - 2457000, d]", ylabel="normalised flux",
           title="light curve (transits marked)")  # fmt: skip
    ax = axes[0, 1]
    if ephemeris:
        phase = ((time - t0 + 0.5 * period) % period - 0.5 * period) * 24.0
        ax.plot(phase, flux, ".", ms=2, color="k")
        ax.axvspan(-12 * duration, 12 * duration, color="tab:red", alpha=0.15)
    ax.set(xlabel="time from mid-transit [h]", ylabel="normalised flux",
           title="folded (transit duration shaded)")  # fmt: skip
    for ax, name, what in ((axes[1, 0], "global_view", "global view (phase -0.5 to 0.5)"),
                           (axes[1, 1], "local_view", "local view (±2 durations)")):  # fmt: skip
        view = data[name]
        ax.plot(np.arange(view.size), view, ".-", ms=3, color="tab:blue")
        ax.set(xlabel="bin", ylabel="normalised flux (median 0, minimum -1)", title=what)
    prediction = data["prediction"]
    verdict = f"prediction {prediction:.3f}" if np.isfinite(prediction) else data["status"]
    fig.suptitle(f"{data['title']}: {verdict}; P = {period:.4f} d, depth {data['depth']:.0f} ppm")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def _write_figure(url: str, data: dict, overwrite: bool, storage_options: dict | None) -> None:
    storage.write_bytes(
        url, _figure_png(data), overwrite=overwrite, storage_options=storage_options
    )


def _cutouts(ds: xr.Dataset, aperture: np.ndarray) -> xr.Dataset:
    """The :func:`cloudlab.cutouts.make_cutouts` layout of the pixels in a vetting result, with
    the computed photometric ``aperture`` as TESS APERTURE bits (1 collected, 2 in aperture)."""
    cube = [name for name in ds.data_vars if name.startswith("cube_")]
    names = [n for n in _PIXEL_VARS if n in ds.variables and n not in ("on_image", "aperture")]
    pixels = ds[[*names, *cube]].drop_vars(["tic"])
    pixels = pixels.rename(tic="target", cutout_flux="flux", cutout_flux_err="flux_err")
    bits = ds["on_image"].values.astype(np.int32) | (np.asarray(aperture, np.int32) * 2)
    pixels["aperture"] = (("target", "row", "column"), bits)
    per_target = [n for n in pixels.data_vars if pixels[n].dims == ("target",)]
    return pixels.set_coords(per_target).assign_coords(
        ticid=("target", ds["tic"].values), time=ds["time"]
    )


def _computed(ds: xr.Dataset, progress: bool) -> xr.Dataset:
    """``ds`` with every dask variable computed in one pass (as a list of arrays: one graph)."""
    from cloudlab.cluster import compute

    lazy = [name for name, var in ds.variables.items() if var.chunks is not None]
    values = compute(*(ds[name].data for name in lazy), progress=progress)
    return ds.copy(data=None).assign(
        {
            name: (ds[name].dims, value, ds[name].attrs)
            for name, value in zip(lazy, values, strict=True)
        }
    )


def write_vetting(
    ds: xr.Dataset,
    out: str,
    *,
    tpfs: bool = True,
    lightcurves: bool = True,
    table: bool = True,
    plots: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    storage_options: dict | None = None,
) -> pd.DataFrame:
    """Compute a :func:`vet_tces` result and write its products under ``out`` (a sink).

    Existing products are refused (:class:`~cloudlab.errors.OverwriteError`) before anything is
    computed unless ``overwrite``. The light curves, views and predictions are computed in one
    pass; the TPFs read the cutout pixels once more, writing from the workers.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`cloudlab.pipelines.vet_tces` (lazy).
    out : str
        Output directory (local path or URL).
    tpfs, lightcurves, table, plots : bool
        Which products to write (see the module docstring).
    overwrite : bool
        Replace existing products.
    progress : bool
        Show progress bars.
    storage_options : dict, optional
        fsspec options for ``out``.

    Returns
    -------
    pandas.DataFrame
        The ranked table (:func:`ranked_table`).

    Raises
    ------
    OverwriteError
        Some products exist and ``overwrite`` is False.
    """
    from cloudlab.cluster import compute
    from cloudlab.cutouts import write_tpfs

    urls = product_urls(ds, out, tpfs=tpfs, lightcurves=lightcurves, table=table, plots=plots)
    everything: Sequence[str] = [u for group in urls.values() for u in group]
    storage.check_writable(everything, overwrite=overwrite, storage_options=storage_options)
    small = ds.drop_vars([n for n in ds.data_vars if n.startswith("cutout_")])
    done = _computed(small, progress)
    if tpfs:
        write_tpfs(
            _cutouts(ds, done["aperture"].values), f"{str(out).rstrip('/')}/tpf",
            overwrite=overwrite, skip_existing=False, progress=progress,
            storage_options=storage_options,
        )  # fmt: skip
    options = {"overwrite": overwrite, "storage_options": storage_options}
    for k, url in enumerate(urls["lc"]):
        storage.write_bytes(url, lightcurve_fits(done, k), **options)
    ranked = ranked_table(done)
    if table:
        storage.write_bytes(urls["table"][0], ranked.to_csv(index=False).encode(), **options)
        buffer = io.BytesIO()
        ranked.to_parquet(buffer, index=False)
        storage.write_bytes(urls["table"][1], buffer.getvalue(), **options)
    if plots:  # rendered and written by the workers
        with_lc = np.flatnonzero(done["tic_index"].values >= 0)
        tasks = [
            dask.delayed(_write_figure, pure=False)(
                url, _figure_data(done, int(tce)), overwrite, storage_options
            )
            for tce, url in zip(with_lc, urls["plot"], strict=True)
        ]
        compute(*tasks, progress=progress)
    return ranked
