"""DRE's per-tile pipeline over its directory layout: SExtractor, PSFEx, cuts, χ² fit, products.

Every step works on a root URL (any fsspec URL) holding DRE's folders (:class:`Layout`)::

    ROOT/Tiles/{name}.fits                    science tiles
    ROOT/Sextracted/{name}/{name}_*.fits      catalogue (_cat) and check images (_bkg _rms _seg _nb)
    ROOT/PSF/{name}.psf                       PSFEx models
    ROOT/Cuts/{name}_cuts.h5                  cuts (groups EE_NNNN: obj, seg, rms)
    ROOT/Chi/{name}_chi.h5                    χ cubes (datasets EE_NNNN)
    ROOT/Summary/{name}_dre.fits              Summary tables
    ROOT/Mosaics/{name}/{name}_EE_NNNN_mosaic.fits|png

Each step processes the tiles it finds (or the ones named) with a progress bar on stderr and
returns what it made per tile. :func:`fit_tiles` computes through :func:`cloudlab.cluster.compute`,
so it runs on the active cluster when there is one.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import xarray as xr
from astropy.table import Table, join

from cloudlab import storage
from cloudlab.dre import io as products
from cloudlab.dre.cuts import open_cuts
from cloudlab.dre.fit import convolve_models, fit
from cloudlab.dre.models import check_models, load_models
from cloudlab.dre.psfex import PSFModel, psfex
from cloudlab.dre.sextractor import Sextracted, sextract
from cloudlab.dre.summary import summarize
from cloudlab.errors import REASON, STATUS, STATUS_OK, InputError
from cloudlab.io.galaxies import read_catalog

__all__ = [
    "Layout",
    "TileFit",
    "cut_tiles",
    "fit_tiles",
    "join_catalog",
    "psfex_tiles",
    "sextract_tiles",
    "step_products",
]

#: per step: the glob under the root that finds its input tiles, and the suffix to strip
_INPUTS = {
    "sextract": ("Tiles/*.fits", ".fits"),
    "psfex": ("Sextracted/*/*_cat.fits", "_cat.fits"),
    "cuts": ("Tiles/*.fits", ".fits"),
    "fit": ("Cuts/*_cuts.h5", "_cuts.h5"),
}


@dataclass(frozen=True)
class Layout:
    """Where DRE keeps each tile's files under one root URL.

    Parameters
    ----------
    root : str
        Root URL (a trailing ``/`` is ignored).
    """

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", str(self.root).rstrip("/"))

    def tile(self, name: str) -> str:
        """URL of the science tile."""
        return f"{self.root}/Tiles/{name}.fits"

    def sextracted(self, name: str) -> str:
        """Folder of the tile's SExtractor catalogue and check images."""
        return f"{self.root}/Sextracted/{name}"

    def check_image(self, name: str, kind: str) -> str:
        """URL of a SExtractor product: ``kind`` is ``cat``, ``bkg``, ``rms``, ``seg`` or ``nb``."""
        return f"{self.root}/Sextracted/{name}/{name}_{kind}.fits"

    def psf(self, name: str) -> str:
        """URL of the tile's PSFEx model."""
        return f"{self.root}/PSF/{name}.psf"

    def cuts(self, name: str) -> str:
        """URL of the tile's cuts (HDF5)."""
        return f"{self.root}/Cuts/{name}_cuts.h5"

    def chi(self, name: str, extension: str = "h5") -> str:
        """URL of the tile's χ cubes (``h5`` or ``zarr``)."""
        return f"{self.root}/Chi/{name}_chi.{extension}"

    def summary(self, name: str) -> str:
        """URL of the tile's Summary table."""
        return f"{self.root}/Summary/{name}_dre.fits"

    def mosaics(self, name: str) -> str:
        """Folder of the tile's mosaics."""
        return f"{self.root}/Mosaics/{name}"

    def names(
        self,
        step: str,
        tiles: Sequence[str] | None = None,
        *,
        storage_options: dict | None = None,
    ) -> list[str]:
        """Names of the tiles a step works on: ``tiles`` when given, else every one found.

        Parameters
        ----------
        step : str
            ``"sextract"`` and ``"cuts"`` look for ``Tiles/*.fits``, ``"psfex"`` for
            ``Sextracted/*/*_cat.fits``, ``"fit"`` for ``Cuts/*_cuts.h5``.
        tiles : sequence of str, optional
            Tile names to use as they are.
        storage_options : dict, optional
            fsspec options.

        Returns
        -------
        list of str

        Raises
        ------
        InputError
            For an unknown step.
        FileNotFoundError
            When no tile is named and none is found.
        """
        if step not in _INPUTS:
            raise InputError(f"Layout.names: unknown step {step!r}; use one of {sorted(_INPUTS)}")
        if tiles:
            return list(tiles)
        pattern, suffix = _INPUTS[step]
        urls = storage.expand(f"{self.root}/{pattern}", storage_options=storage_options)
        if not urls:
            raise FileNotFoundError(
                f"nothing matches {self.root}/{pattern}: run the earlier DRE steps or check the "
                "root URL"
            )
        return [url.rsplit("/", 1)[-1].removesuffix(suffix) for url in urls]


@dataclass
class TileFit:
    """What :func:`fit_tiles` did for one tile.

    Attributes
    ----------
    name : str
        Tile name.
    status : str
        ``"ok"``, or ``"no_psf"`` when the tile was skipped for want of a PSF.
    reason : str
        Why the tile was skipped (empty when ``status`` is ``"ok"``).
    n_chi : int
        χ cubes written to ``Chi/{name}_chi.h5``.
    n_summary : int
        Rows of the Summary table (after the join with the catalogue).
    written : list of str
        URLs of the products written.
    """

    name: str
    status: str = STATUS_OK
    reason: str = ""
    n_chi: int = 0
    n_summary: int = 0
    written: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """The record with the failure-model names ``status`` and ``reason`` as keys."""
        return {
            "name": self.name,
            STATUS: self.status,
            REASON: self.reason,
            "n_chi": self.n_chi,
            "n_summary": self.n_summary,
            "written": list(self.written),
        }


def step_products(
    layout: Layout,
    step: str,
    names: Sequence[str],
    *,
    zarr: bool = False,
    mosaics: bool = False,
) -> list[str]:
    """Every product URL a step writes for ``names`` (checked before any work is done).

    Parameters
    ----------
    layout : Layout
        The DRE root.
    step : str
        ``"sextract"``, ``"psfex"``, ``"cuts"`` or ``"fit"``.
    names : sequence of str
        Tile names.
    zarr, mosaics : bool
        For ``"fit"``: whether ``Chi/{name}_chi.zarr`` and ``Mosaics/{name}`` are written too.

    Returns
    -------
    list of str
    """
    if step not in _INPUTS:
        raise InputError(f"step_products: unknown step {step!r}; use one of {sorted(_INPUTS)}")
    urls = []
    for name in names:
        if step == "sextract":
            urls.append(layout.check_image(name, "cat"))
        elif step == "psfex":
            urls.append(layout.psf(name))
        elif step == "cuts":
            urls.append(layout.cuts(name))
        else:
            urls += [layout.chi(name), layout.summary(name)]
            urls += [layout.chi(name, "zarr")] if zarr else []
            urls += [layout.mosaics(name)] if mosaics else []
    return urls


def _progress(names: Iterable[str], what: str):
    from tqdm import tqdm

    return tqdm(list(names), desc=what, unit="tile", file=sys.stderr)


def sextract_tiles(
    root: str,
    *,
    tiles: Sequence[str] | None = None,
    config: str | None = None,
    options: Mapping[str, object] | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> dict[str, Sextracted]:
    """Run SExtractor on ``ROOT/Tiles/{name}.fits`` into ``ROOT/Sextracted/{name}/``.

    Parameters
    ----------
    root : str
        DRE root URL.
    tiles : sequence of str, optional
        Tile names (default: every ``Tiles/*.fits``).
    config : str, optional
        SExtractor configuration file instead of cloudlab's.
    options : mapping, optional
        SExtractor parameters.
    overwrite : bool
        Replace existing catalogues; without it an existing ``{name}_cat.fits`` is refused
        (:class:`~cloudlab.errors.OverwriteError`) before SExtractor runs on any tile.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    dict
        Tile name to its :class:`cloudlab.dre.Sextracted`.
    """
    layout = Layout(root)
    names = layout.names("sextract", tiles, storage_options=storage_options)
    storage.check_writable(
        step_products(layout, "sextract", names),
        overwrite=overwrite,
        storage_options=storage_options,
    )
    return {
        name: sextract(
            layout.tile(name),
            layout.sextracted(name),
            name=name,
            config=config,
            options=dict(options or {}),
            storage_options=storage_options,
        )
        for name in _progress(names, "sextract")
    }


def psfex_tiles(
    root: str,
    *,
    tiles: Sequence[str] | None = None,
    config: str | None = None,
    options: Mapping[str, object] | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> dict[str, PSFModel]:
    """Run PSFEx on ``ROOT/Sextracted/{name}/{name}_cat.fits`` into ``ROOT/PSF/{name}.psf``.

    Parameters
    ----------
    root : str
        DRE root URL.
    tiles : sequence of str, optional
        Tile names (default: every ``Sextracted/*/*_cat.fits``).
    config : str, optional
        PSFEx configuration file instead of cloudlab's.
    options : mapping, optional
        PSFEx parameters.
    overwrite : bool
        Replace existing PSF models; without it an existing ``PSF/{name}.psf`` is refused
        (:class:`~cloudlab.errors.OverwriteError`) before PSFEx runs on any tile.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    dict
        Tile name to its :class:`cloudlab.dre.PSFModel`.
    """
    layout = Layout(root)
    names = layout.names("psfex", tiles, storage_options=storage_options)
    storage.check_writable(
        step_products(layout, "psfex", names), overwrite=overwrite, storage_options=storage_options
    )
    return {
        name: psfex(
            layout.check_image(name, "cat"),
            layout.psf(name),
            config=config,
            options=dict(options or {}),
            storage_options=storage_options,
        )
        for name in _progress(names, "psfex")
    }


def cut_tiles(
    root: str,
    *,
    tiles: Sequence[str] | None = None,
    size: int = 128,
    margin: int = 80,
    max_stellarity: float = 1.0,
    filters: Mapping[str, tuple[float, float]] | None = None,
    compression: str = "medium",
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> dict[str, tuple[int, int]]:
    """Cut the selected galaxies of each tile into ``ROOT/Cuts/{name}_cuts.h5``.

    The tile, its SExtractor catalogue and check images (background, rms, segmentation) come
    from the layout; the selection is :func:`cloudlab.dre.cuts.open_cuts`'s.

    Parameters
    ----------
    root : str
        DRE root URL.
    tiles : sequence of str, optional
        Tile names (default: every ``Tiles/*.fits``).
    size : int
        Cut side in pixels (the model ``BOXSIZE``).
    margin : int
        Edge margin in pixels.
    max_stellarity : float
        Keep objects with ``CLASS_STAR`` below this.
    filters : mapping, optional
        Extra ``{column: (min, max)}`` cuts.
    compression : str
        HDF5 compression: ``none``, ``low``, ``medium`` or ``high``.
    overwrite : bool
        Replace existing cuts files; without it any existing ``Cuts/{name}_cuts.h5`` is refused
        (:class:`~cloudlab.errors.OverwriteError`) before any tile is read.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    dict
        Tile name to ``(cuts written, galaxies selected)``.
    """
    layout = Layout(root)
    names = layout.names("cuts", tiles, storage_options=storage_options)
    storage.check_writable(
        step_products(layout, "cuts", names), overwrite=overwrite, storage_options=storage_options
    )
    done = {}
    for name in _progress(names, "cuts"):
        cuts = open_cuts(
            layout.tile(name),
            layout.check_image(name, "cat"),
            size=size,
            margin=margin,
            max_stellarity=max_stellarity,
            background=layout.check_image(name, "bkg"),
            rms=layout.check_image(name, "rms"),
            segmentation=layout.check_image(name, "seg"),
            filters=dict(filters or {}),
            storage_options=storage_options,
        )
        written = products.write_cuts_hdf5(
            cuts,
            layout.cuts(name),
            compression=compression,
            overwrite=overwrite,
            storage_options=storage_options,
        )
        done[name] = (written, cuts.sizes["galaxy"])
    return done


def _persisted(*collections):
    """Compute dask collections once on the active cluster, keeping them chunked."""
    from cloudlab.cluster import compute

    return compute(*collections, persist=True)


def _to_gpu(cuts: xr.Dataset, models: xr.DataArray) -> tuple[xr.Dataset, xr.DataArray]:
    from cloudlab.backend import to_gpu

    cuts = cuts.copy()
    for var in ("obj", "seg", "rms", "flag"):
        cuts[var] = cuts[var].copy(data=to_gpu(cuts[var].data))
    return cuts, models.copy(data=to_gpu(models.data))


def _gpu_routing():
    """Annotate GPU work for GPU workers when a cluster is active (a no-op on threads)."""
    from cloudlab.backend import gpu_tasks
    from cloudlab.cluster import active_client

    return gpu_tasks() if active_client() is not None else nullcontext()


def fit_tiles(
    root: str,
    models: str | xr.DataArray,
    *,
    tiles: Sequence[str] | None = None,
    psf: str | None = None,
    gpu: bool = False,
    mosaics: bool = False,
    zarr: bool = False,
    compression: str = "medium",
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> dict[str, TileFit]:
    """Fit each tile's cuts against a model cube and write χ cubes, Summary and extras.

    Per tile: read ``Cuts/{name}_cuts.h5``, fit with the tile's PSF (``PSF/{name}.psf``), compute
    χ once (persisted on the active cluster, with a progress bar on stderr), write
    ``Chi/{name}_chi.h5`` and ``Summary/{name}_dre.fits`` (the summary inner-joined with the
    tile's SExtractor catalogue, as DRE does), and optionally ``Chi/{name}_chi.zarr`` and the
    mosaics. A tile without a PSF is not fitted: its record has status ``"no_psf"`` (a failure,
    which ``cloudlab dre fit`` counts in its summary line and exit status) and a warning is
    issued. The model cube is checked once, before any tile (see
    :func:`cloudlab.dre.models.check_models`).

    Parameters
    ----------
    root : str
        DRE root URL.
    models : str or xarray.DataArray
        Model cube (URL or :func:`cloudlab.dre.load_models` result).
    tiles : sequence of str, optional
        Tile names (default: every ``Cuts/*_cuts.h5``).
    psf : str, optional
        One PSF (PSFEx ``.psf`` or FITS image URL) for every tile; the grid is then convolved
        once and shared, as DRE does.
    gpu : bool
        Evaluate χ² with CuPy; on an active cluster the GPU tasks are routed to GPU workers
        (connect with ``gpu=True``).
    mosaics : bool
        Also write ``Mosaics/{name}/``.
    zarr : bool
        Also write ``Chi/{name}_chi.zarr``.
    compression : str
        HDF5 compression of the χ cubes: ``none``, ``low``, ``medium`` or ``high``.
    overwrite : bool
        Replace existing products; without it any existing product of any tile is refused
        (:class:`~cloudlab.errors.OverwriteError`) before the models are read.
    storage_options : dict, optional
        fsspec options for every URL.

    Returns
    -------
    dict
        Tile name to its :class:`TileFit`.
    """
    layout = Layout(root)
    names = layout.names("fit", tiles, storage_options=storage_options)
    storage.check_writable(
        step_products(layout, "fit", names, zarr=zarr, mosaics=mosaics),
        overwrite=overwrite,
        storage_options=storage_options,
    )
    if isinstance(models, str):
        models = load_models(models, storage_options=storage_options)
    check_models(models)  # once, before any tile (NaN or all-zero models)
    shared = None
    if psf:  # one PSF for every tile: convolve the grid once
        (shared,) = _persisted(convolve_models(models, psf, storage_options=storage_options))
    done = {}
    for name in _progress(names, "fit"):
        tile_psf = psf or layout.psf(name)
        fs, path = storage.resolve(tile_psf, storage_options=storage_options)
        if not fs.exists(path):
            reason = f"no PSF at {tile_psf}: run psfex_tiles or pass psf="
            warnings.warn(f"{name}: {reason}; tile skipped", stacklevel=2)
            done[name] = TileFit(name, status="no_psf", reason=reason)
            continue
        cuts = products.read_cuts_hdf5(layout.cuts(name), storage_options=storage_options)
        tile_models, tile_psf = (models, tile_psf) if shared is None else (shared, None)
        with _gpu_routing() if gpu else nullcontext():
            if gpu:
                cuts, tile_models = _to_gpu(cuts, tile_models)
            result = fit(cuts, tile_models, tile_psf, storage_options=storage_options)
        chi, flag = _persisted(result["chi"], result["flag"])  # χ computed once
        result = result.assign(chi=chi, flag=flag)
        record = TileFit(name)
        record.n_chi = products.write_chi_hdf5(
            result,
            layout.chi(name),
            compression=compression,
            overwrite=overwrite,
            storage_options=storage_options,
        )
        table = join_catalog(
            summarize(result), layout.check_image(name, "cat"), storage_options=storage_options
        )
        products.write_summary(
            table, layout.summary(name), overwrite=overwrite, storage_options=storage_options
        )
        record.n_summary = len(table)
        record.written += [layout.chi(name), layout.summary(name)]
        if zarr:
            zarr_url = layout.chi(name, "zarr")
            products.write_chi_zarr(
                result, zarr_url, overwrite=overwrite, storage_options=storage_options
            )
            record.written.append(zarr_url)
        if mosaics:
            record.written += products.write_mosaics(
                products.mosaics(result, cuts),
                layout.mosaics(name),
                prefix=f"{name}_",
                overwrite=overwrite,
                storage_options=storage_options,
            )
        done[name] = record
    return done


def join_catalog(table: Table, catalog: str, *, storage_options: dict | None = None) -> Table:
    """Inner-join a Summary table with the tile's SExtractor catalogue, as DRE does.

    Vector columns (``VIGNET``) are dropped; columns the summary already has are taken from it.

    Parameters
    ----------
    table : astropy.table.Table
        Summary from :func:`cloudlab.dre.summarize`.
    catalog : str
        URL of the SExtractor catalogue; the summary is returned unchanged when it is absent.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    astropy.table.Table
        The joined table, on ``EXT_NUMBER`` and ``NUMBER``.
    """
    fs, path = storage.resolve(catalog, storage_options=storage_options)
    if not fs.exists(path):
        return table
    columns = read_catalog(catalog, storage_options=storage_options)
    columns.remove_columns([c for c in columns.colnames if columns[c].ndim > 1])
    keys = [k for k in ("EXT_NUMBER", "NUMBER") if k in columns.colnames]
    columns.remove_columns([c for c in columns.colnames if c in table.colnames and c not in keys])
    return join(table, columns, keys=keys, join_type="inner")
