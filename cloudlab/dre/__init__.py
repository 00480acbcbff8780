"""DRE galaxy fitting: SExtractor/PSFEx preprocessing, model grids, χ² fits and summaries.

Typical use::

    from cloudlab import dre

    sex = dre.sextract("Tiles/t.fits", "Sextracted/t")
    psf = dre.psfex(sex.catalog, "PSF/t.psf")
    cuts = dre.open_cuts("Tiles/t.fits", sex, max_stellarity=1.0)
    result = dre.fit(cuts, dre.load_models("modelbulge.fits"), psf.url)
    table = dre.summarize(result)

:mod:`cloudlab.dre.pipeline` runs these steps over every tile of DRE's directory layout
(``sextract_tiles``, ``psfex_tiles``, ``cut_tiles``, ``fit_tiles``), as ``cloudlab dre`` does.
"""

from cloudlab.dre.cuts import open_cuts
from cloudlab.dre.fit import FLAGS, convolve_models, fit, read_psf
from cloudlab.dre.io import (
    mosaics,
    read_chi_hdf5,
    read_cuts_hdf5,
    write_chi_hdf5,
    write_chi_zarr,
    write_cuts_hdf5,
    write_mosaics,
    write_summary,
)
from cloudlab.dre.models import check_models, load_models, model_grid, write_models
from cloudlab.dre.pipeline import (
    Layout,
    TileFit,
    cut_tiles,
    fit_tiles,
    join_catalog,
    psfex_tiles,
    sextract_tiles,
)
from cloudlab.dre.psfex import PSFModel, psfex
from cloudlab.dre.sextractor import Sextracted, sextract
from cloudlab.dre.summary import summarize
from cloudlab.dre.tools import ToolError

__all__ = [
    "FLAGS",
    "Layout",
    "PSFModel",
    "Sextracted",
    "TileFit",
    "ToolError",
    "check_models",
    "convolve_models",
    "cut_tiles",
    "fit",
    "fit_tiles",
    "join_catalog",
    "load_models",
    "model_grid",
    "mosaics",
    "open_cuts",
    "psfex",
    "psfex_tiles",
    "read_chi_hdf5",
    "read_cuts_hdf5",
    "read_psf",
    "sextract",
    "sextract_tiles",
    "summarize",
    "write_chi_hdf5",
    "write_chi_zarr",
    "write_cuts_hdf5",
    "write_models",
    "write_mosaics",
    "write_summary",
]
