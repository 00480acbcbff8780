"""Every workflow's lazy graph over sparse inputs of any size, and what shipping it costs.

The builders write *sparse* files (real headers written by cloudlab's simulators, then copied
with the geometry and times of the size asked for; the pixels are holes), so a full-size input
costs no disk and no writing time, then build the workflow's graph as a user would. Nothing is
computed. ``tests/test_scale.py`` checks that the graphs grow linearly; ``benchmarks/scale.py``
times them at production size, up to the scheduler accepting them.

Each ``setup_*`` function takes a directory to write into and ``n``, the workflow's size
(targets, frames per channel or per CCD, galaxies, TCEs), writes the inputs and returns a
function that builds the graph from them (opening the inputs, headers read, to the lazy result,
a list of the collections a user would compute), so that the two can be timed apart;
:func:`build` does both.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.table import Table
from dask._expr import FinalizeCompute
from dask.base import collections_to_expr
from dask.highlevelgraph import HighLevelGraph
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.protocol import serialize, to_serialize
from distributed.utils import nbytes

from cloudlab.cluster import submitted_parts
from cloudlab.testing.sparse import sparse_series

__all__ = [
    "CCDS",
    "LINKS_PER_FILE",
    "SETUPS",
    "AcceptanceClock",
    "Graph",
    "build",
    "graph_layers",
    "graph_size",
    "headers_of",
    "setup_astronet",
    "setup_astronet_memory",
    "setup_backdrop",
    "setup_cutouts",
    "setup_dre",
    "setup_dre_hdf5",
    "setup_timelag",
    "sparse_tile",
]

#: light-curve files made as hard links to one written file (``cadences_known``)
LINKS_PER_FILE = 50_000

#: what a ``setup_*`` function returns: builds the graph over the inputs it wrote
Graph = Callable[[], list]

#: (camera, CCD) of a sector's 16 CCDs, in the order the builders take them
CCDS = tuple((camera, ccd) for camera in (1, 2, 3, 4) for ccd in (1, 2, 3, 4))


def graph_layers(collections: list) -> int:
    """Layers of the collections' high-level graph, as built (before optimisation).

    Parameters
    ----------
    collections : list
        Dask collections (xarray objects included).

    Returns
    -------
    int
        Number of layers (a layer per batch would be a graph per batch).
    """
    return len(HighLevelGraph.merge(*(c.__dask_graph__() for c in collections)).layers)


def graph_size(collections: list) -> tuple[int, int]:
    """(tasks, shipped bytes) of ``collections`` as :func:`cloudlab.cluster.compute` sends them.

    That is what ``distributed.Client.compute`` sends for their dask-backed parts
    (:func:`cloudlab.cluster.submitted_parts`: xarray objects' in-memory variables stay on the
    client): the client optimises the expression and serialises it (what it ships, the figure it
    warns about past ``distributed.admin.large-graph-warning-threshold``); the scheduler
    materialises it into the tasks counted here.

    Parameters
    ----------
    collections : list
        Dask collections (xarray objects included).

    Returns
    -------
    tuple of int
        Tasks on the scheduler and bytes the client ships.
    """
    parts, _ = submitted_parts(collections)
    expr = FinalizeCompute(collections_to_expr(parts, optimize_graph=True)).optimize()
    shipped = serialize(to_serialize(expr), on_error="raise")
    return len(expr.__dask_graph__()), sum(map(nbytes, [shipped[0], *shipped[1]]))


def headers_of(path: str | Path) -> list[fits.Header]:
    """Copies of every header of a FITS file (tile-compressed HDUs as stored).

    Parameters
    ----------
    path : str or pathlib.Path
        Local FITS file.

    Returns
    -------
    list of astropy.io.fits.Header
    """
    with fits.open(path, disable_image_compression=True) as hdul:
        return [hdu.header.copy() for hdu in hdul]


class AcceptanceClock(SchedulerPlugin):
    """Scheduler plugin that notes when each graph has entered the scheduler.

    Register it with ``client.register_plugin``; :meth:`accepted` (run on the scheduler with
    ``client.run_on_scheduler``) gives the wall-clock time (``time.time``) and the number of
    tasks of every graph the scheduler has taken in, once its tasks exist and before any is
    scheduled.
    """

    name = "cloudlab-acceptance-clock"

    def __init__(self) -> None:
        self.graphs: list[tuple[float, int]] = []

    def update_graph(self, scheduler, *, tasks, **kwargs) -> None:  # noqa: ANN001
        """Note the time and the task count of a graph the scheduler has just taken in."""
        self.graphs.append((time.time(), len(tasks)))

    @staticmethod
    def accepted(dask_scheduler) -> list[tuple[float, int]]:  # noqa: ANN001
        """(time, tasks) of every graph taken in so far (run on the scheduler)."""
        return list(dask_scheduler.plugins[AcceptanceClock.name].graphs)


# ------------------------------------------------------------------------------------------
# builders
# ------------------------------------------------------------------------------------------


def _split(n: int, parts: int) -> list[int]:
    """``n`` items over ``parts`` as evenly as possible."""
    return [n // parts + (k < n % parts) for k in range(parts)]


def _targets(sector: int, camera: int, ccd: int, shape: tuple[int, int], n: int, seed: int):
    """``n`` targets (``ticid``, ``ra``, ``dec``) spread uniformly over a CCD's science pixels,
    placed on the sky with the WCS the simulator gives that CCD."""
    from astropy.wcs import WCS

    from cloudlab.simulate.tess import DetectorLayout, sector_wcs

    layout = DetectorLayout.for_shape(shape)
    cards, _ = sector_wcs(sector, camera, ccd, layout)
    rng = np.random.default_rng([seed, camera, ccd])
    rows, cols = layout.science_rows, layout.science_cols
    row = rng.uniform(rows.start + 10, rows.stop - 11, n)
    column = rng.uniform(cols.start + 10, cols.stop - 11, n)
    ra, dec = WCS(cards, relax=True).all_pix2world(column, row, 0)
    ticid = 10_000_000 * (4 * camera + ccd) + np.arange(n)
    return pd.DataFrame({"ticid": ticid, "ra": ra % 360.0, "dec": dec})


def setup_cutouts(
    tmp: Path,
    n: int,
    *,
    cubes: int = 2,
    n_frames: int = 40,
    shape: tuple[int, int] = (208, 214),
    cube_dir: Path | None = None,
) -> Graph:
    """``n`` targets on ``cubes`` CCDs of one sector (one sparse cube each), interleaved,
    4 targets per task, 10 × 10 pixels.

    Parameters
    ----------
    tmp : pathlib.Path
        Directory to write the cubes into.
    n : int
        Targets in all (as evenly as possible over the CCDs).
    cubes : int
        CCDs (1 to 16, taken in :data:`CCDS` order), one cube of ``n_frames`` each.
    n_frames : int
        Frames per cube.
    shape : (int, int)
        FFI shape (rows, columns) of the cubes; (2078, 2136) is a real FFI.
    cube_dir : pathlib.Path, optional
        Where the cubes are (default ``tmp``): cubes already there are used as they are, so
        that several sizes share them.

    Returns
    -------
    callable
        Builds the cutouts Dataset (in a list).
    """
    from cloudlab.cutouts import make_cutouts
    from cloudlab.simulate import tess_sector

    sector = 55
    base = tmp if cube_dir is None else cube_dir
    stars = []
    for (camera, ccd), count in zip(CCDS[:cubes], _split(n, cubes), strict=True):
        if not (base / f"tess-s{sector:04d}-{camera}-{ccd}-cube.fits").exists():
            tess_sector(str(base), sector=sector, camera=camera, ccd=ccd, n_frames=n_frames,
                        shape=shape, n_stars=10, ffis=False, cube=True, sparse=True)  # fmt: skip
        stars.append(_targets(sector, camera, ccd, shape, count, seed=n))
    targets = pd.concat(stars).sort_index(kind="stable").reset_index(drop=True)
    return lambda: [
        make_cutouts(targets, sector=sector, cube_base=str(base), size=10, batch_size=4)
    ]


def _aia_files(tmp: Path, n: int, channels: Sequence[int]) -> dict[int, list[str]]:
    """``n`` sparse 4096² frames per channel, 12 s apart."""
    from cloudlab.simulate import aia_series

    aia_series(str(tmp / "seed"), channels=channels, n_frames=24, shape=(64, 64),
               lag_map=np.zeros((64, 64)), compressed=False)  # fmt: skip
    files: dict[int, list[str]] = {}
    for channel in channels:
        src = sorted((tmp / "seed" / f"{channel:04d}").glob("*.fits"))[0]
        (header,) = headers_of(src)
        t0 = np.datetime64(header["T_OBS"].rstrip("Z"))
        d0 = np.datetime64(header["DATE-OBS"])
        header["NAXIS1"] = header["NAXIS2"] = 4096
        header["CRPIX1"] += (4096 - 64) / 2
        header["CRPIX2"] += (4096 - 64) / 2
        out = tmp / f"{channel:04d}"
        out.mkdir()
        paths = [str(out / f"aia_{channel}_{k:05d}.fits") for k in range(n)]
        steps = [np.timedelta64(12 * k, "s") for k in range(n)]
        changes = [
            {
                (0, "T_OBS"): np.datetime_as_string(t0 + step, unit="us") + "Z",
                (0, "DATE-OBS"): np.datetime_as_string(d0 + step, unit="us"),
            }
            for step in steps
        ]
        sparse_series(paths, [header], changes)
        files[channel] = paths
    return files


def setup_timelag(
    tmp: Path, n: int, *, channels: Sequence[int] = (171, 193), crop: float = 200.0
) -> Graph:
    """``n`` full-disk frames per channel, a ``crop``″ square, every pair's time-lag maps.

    Parameters
    ----------
    tmp : pathlib.Path
        Directory to write the frames into.
    n : int
        Frames per channel (4096² uncompressed, 12 s apart).
    channels : sequence of int
        AIA channels (Å).
    crop : float
        Side of the crop in arcseconds (from (-500″, -50″)).

    Returns
    -------
    callable
        Opens the frames and builds the time-lag maps Dataset (in a list).
    """
    from cloudlab.io import aia
    from cloudlab.timelag import prepare_channels, timelag_maps

    files = _aia_files(tmp, n, channels)

    def graph() -> list:
        cubes = {c: aia.open_stack(urls) for c, urls in files.items()}
        prepared = prepare_channels(cubes, bottom_left=(-500, -50),
                                    top_right=(-500 + crop, -50 + crop))  # fmt: skip
        return [timelag_maps(prepared)]

    return graph


def setup_backdrop(tmp: Path, n: int, *, ccds: int = 1) -> Graph:
    """``n`` full 2078 × 2136 FFIs on each of ``ccds`` CCDs, 4 frames per task.

    Parameters
    ----------
    tmp : pathlib.Path
        Directory to write the frames into.
    n : int
        Frames per CCD (200 s apart).
    ccds : int
        CCDs (1 to 16, taken in :data:`CCDS` order); each is opened and fitted on its own, as
        ``cloudlab backdrop fit`` does.

    Returns
    -------
    callable
        Opens the frames and builds one weights Dataset per CCD (in a list).
    """
    from cloudlab import backdrop
    from cloudlab.io.tess import open_ffis
    from cloudlab.simulate import tess_sector

    cadence = 200 / 86400
    dirs = []
    for camera, ccd in CCDS[:ccds]:
        sim = tess_sector(str(tmp / f"seed-{camera}-{ccd}"), camera=camera, ccd=ccd, n_frames=1,
                          shape=(2078, 2136), n_stars=10, ffis=True, cube=False)  # fmt: skip
        (src,) = sorted(Path(sim.ffi_urls[0]).parent.glob("*_ffic.fits"))
        headers = headers_of(src)
        timed = [(i, key) for i, h in enumerate(headers) for key in ("TSTART", "TSTOP") if key in h]
        for h in headers:
            if "DQUALITY" in h:
                h["DQUALITY"] = 0
        out = tmp / f"ffis-{camera}-{ccd}"
        out.mkdir()
        paths = [str(out / f"tess{k:013d}-s0001-{camera}-{ccd}-0120-s_ffic.fits") for k in range(n)]
        changes = [
            {(i, key): float(headers[i][key]) + k * cadence for i, key in timed} for k in range(n)
        ]
        sparse_series(paths, headers, changes)
        dirs.append(out)
    return lambda: [
        backdrop.fit(open_ffis(str(out / "*_ffic.fits")), frames_per_batch=4) for out in dirs
    ]


def _dre_fit(cuts):  # noqa: ANN001, ANN202
    from cloudlab.dre import fit, model_grid
    from cloudlab.simulate.galaxies import gaussian_psf

    models = model_grid(ax_ratio=(0.5, 0.5, 1), angle=(0.0, 90.0, 2), log_r=(0.4, 0.3, 2),
                        boxsize=cuts.sizes["x"])  # fmt: skip
    return fit(cuts, models, gaussian_psf(2.5, 9))


def sparse_tile(tmp: Path, n: int, *, side: int = 4096) -> tuple[dict[str, str], Table]:
    """A sparse survey tile with its background, RMS and segmentation maps, and a catalog of
    ``n`` galaxies at random positions at least 100 pixels inside it.

    Parameters
    ----------
    tmp : pathlib.Path
        Directory to write the four maps into.
    n : int
        Galaxies in the catalog.
    side : int
        Pixels on a side.

    Returns
    -------
    urls : dict
        ``tile``, ``bkg``, ``rms`` and ``seg`` to their paths.
    catalog : astropy.table.Table
        ``NUMBER``, ``X_IMAGE``, ``Y_IMAGE`` and ``CLASS_STAR`` (0).
    """
    header = fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 2, "NAXIS1": side,
                          "NAXIS2": side})  # fmt: skip
    urls = {kind: str(tmp / f"{kind}.fits") for kind in ("tile", "bkg", "rms", "seg")}
    sparse_series(list(urls.values()), [header], [{}] * len(urls))
    rng = np.random.default_rng(0)
    catalog = Table(
        {
            "NUMBER": np.arange(1, n + 1),
            "X_IMAGE": rng.uniform(100, side - 100, n),
            "Y_IMAGE": rng.uniform(100, side - 100, n),
            "CLASS_STAR": np.zeros(n),
        }
    )
    return urls, catalog


def setup_dre(tmp: Path, n: int, *, chunk_size: int | None = 32) -> Graph:
    """``n`` galaxies of a sparse 4096² tile (with background, RMS and segmentation maps), 32²
    cuts, a small model grid.

    Parameters
    ----------
    tmp : pathlib.Path
        Directory to write the maps into.
    n : int
        Galaxies (the catalog, in memory).
    chunk_size : int or None
        Galaxies per task (``open_cuts``'s ``chunk_size``; ``None``: the library's default).

    Returns
    -------
    callable
        Builds the fit Dataset (in a list) with ``open_cuts``.
    """
    from cloudlab.dre import open_cuts

    urls, catalog = sparse_tile(tmp, n)

    def graph() -> list:
        cuts = open_cuts(urls["tile"], catalog, size=32, margin=40, background=urls["bkg"],
                         rms=urls["rms"], segmentation=urls["seg"],
                         chunk_size=chunk_size)  # fmt: skip
        return [_dre_fit(cuts)]

    return graph


def setup_dre_hdf5(tmp: Path, n: int) -> Graph:
    """The CLI path (``cloudlab dre fit``): ``n`` 32² cuts read back from ``Cuts/{tile}_cuts.h5``.

    Parameters
    ----------
    tmp : pathlib.Path
        Directory to write the HDF5 file into.
    n : int
        Galaxies (groups of the file; their datasets are never written to).

    Returns
    -------
    callable
        Opens the file and builds the fit Dataset (in a list).
    """
    import h5py

    from cloudlab.dre.io import read_cuts_hdf5

    path = tmp / "tile_cuts.h5"
    with h5py.File(path, "w") as h5:
        for k in range(n):
            group = h5.create_group(f"00_{k + 1:04d}")
            for name, dtype in (("obj", "f4"), ("seg", "?"), ("rms", "f4")):
                group.create_dataset(name, shape=(32, 32), dtype=dtype, chunks=(32, 32))
    return lambda: [_dre_fit(read_cuts_hdf5(str(path)))]


def _lightcurve_files(tmp: Path, n: int, *, links: bool = False) -> tuple[dict[int, str], int]:
    """``n`` sparse Kepler light-curve files, one per target (``KEPLERID`` 1000 on), and their
    cadence count; with ``links`` the files are hard links to one file in
    :data:`LINKS_PER_FILE` (with its ``KEPLERID``: for graphs that name the files without
    opening them)."""
    from cloudlab.simulate import lightcurves

    lightcurves(1, 0, 0, dest=str(tmp / "seed"), fmt="fits")
    (src,) = sorted((tmp / "seed").glob("*.fits"))
    headers = headers_of(src)
    cadences = int(next(h["NAXIS2"] for h in headers if h.get("EXTNAME") == "LIGHTCURVE"))
    urls = {1000 + k: str(tmp / f"{1000 + k}.fits") for k in range(n)}
    key = [(0, "KEPLERID")] if "KEPLERID" in headers[0] else []
    if links:
        for k, (tic, path) in enumerate(urls.items()):
            if k % LINKS_PER_FILE == 0:  # file systems cap the links to one file (ext4: 65,000)
                sparse_series([path], headers, [dict.fromkeys(key, tic)])
                source = path
            else:
                os.link(source, path)
    else:
        sparse_series(list(urls.values()), headers, [dict.fromkeys(key, tic) for tic in urls])
    return urls, cadences


def _tces(targets, seed: int = 0) -> pd.DataFrame:  # noqa: ANN001
    """One TCE per target given, in random order (as catalogs come)."""
    rng = np.random.default_rng(seed)
    tics = rng.permutation(np.asarray(targets))
    return pd.DataFrame({"tic_id": tics, "Period": 3.0, "Epoc": 1.0, "Duration": 0.1})


def setup_astronet(
    tmp: Path, n: int, *, batch_size: int | None = 16, cadences_known: bool = False
) -> Graph:
    """``n`` TCEs, one per target, not sorted by target; light curves read lazily from sparse
    Kepler FITS files, 16 per task.

    Parameters
    ----------
    tmp : pathlib.Path
        Directory to write the light curves into.
    n : int
        Targets (files) and TCEs.
    batch_size : int or None
        Light curves and TCEs per task (``None``: the library's defaults).
    cadences_known : bool
        Give ``read_lightcurves`` the cadence count (no file is opened while the graph is
        built); the files are then hard links to one sparse file, so that 10⁶ of them cost
        seconds to make.

    Returns
    -------
    callable
        Opens the light curves and builds the views Dataset (in a list).
    """
    from cloudlab.astronet import views
    from cloudlab.io.lightcurves import read_lightcurves

    urls, cadences = _lightcurve_files(tmp, n, links=cadences_known)
    tces = _tces(list(urls))
    known = cadences if cadences_known else None

    def graph() -> list:
        per_task = {} if batch_size is None else {"batch_size": batch_size}
        lcs = read_lightcurves(urls, reader="kepler", cadences=known, **per_task)
        return [views(lcs, tces, **per_task)]

    return graph


def setup_astronet_memory(tmp: Path, n: int, *, cadences: int = 1000) -> Graph:
    """``n`` light curves already in memory (numpy), three TCEs per target.

    Parameters
    ----------
    tmp : pathlib.Path
        Unused (nothing is written); for a signature like the other set-ups.
    n : int
        Targets.
    cadences : int
        Cadences per light curve.

    Returns
    -------
    callable
        Builds the views Dataset (in a list).
    """
    import xarray as xr

    from cloudlab.astronet import views

    lcs = xr.Dataset(
        {
            "time": (("target", "cadence"), np.tile(np.linspace(0, 27, cadences), (n, 1))),
            "flux": (("target", "cadence"), np.ones((n, cadences))),
        },
        coords={"target": np.arange(n)},
    )
    tces = _tces(np.repeat(np.arange(n), 3))
    return lambda: [views(lcs, tces, batch_size=16)]


#: every workflow's set-up, by name
SETUPS: dict[str, Callable[..., Graph]] = {
    "cutouts": setup_cutouts,
    "timelag": setup_timelag,
    "backdrop": setup_backdrop,
    "dre": setup_dre,
    "dre-hdf5": setup_dre_hdf5,
    "astronet": setup_astronet,
    "astronet-memory": setup_astronet_memory,
}


def build(name: str, tmp: Path, n: int, **options) -> list:  # noqa: ANN003
    """Write the inputs of workflow ``name`` at size ``n`` into ``tmp`` and build its graph.

    Parameters
    ----------
    name : str
        A key of :data:`SETUPS`.
    tmp : pathlib.Path
        Directory to write the inputs into.
    n : int
        The workflow's size.
    **options
        Keyword arguments of the workflow's ``setup_*`` function.

    Returns
    -------
    list
        The collections a user would compute.
    """
    return SETUPS[name](tmp, n, **options)()
