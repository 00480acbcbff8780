"""Run SExtractor on a tile: FITS_LDAC catalogue and DRE's check images."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

from astropy.table import Table

from cloudlab.dre.tools import (
    SEXTRACTOR_NAMES,
    ToolError,
    config_file,
    find_nnw,
    find_tool,
    option_args,
    run_tool,
)
from cloudlab.errors import NotFoundError
from cloudlab.io.galaxies import read_catalog
from cloudlab.storage import atomic_write, is_local, resolve

__all__ = ["CHECK_IMAGES", "Sextracted", "sextract"]

#: Check images produced for DRE, and the file suffix of each.
CHECK_IMAGES = {
    "BACKGROUND": "bkg",
    "BACKGROUND_RMS": "rms",
    "SEGMENTATION": "seg",
    "-BACKGROUND": "nb",
}


@dataclass
class Sextracted:
    """The products of :func:`sextract` (URLs) and the catalogue itself.

    Attributes
    ----------
    catalog : str
        FITS_LDAC catalogue ``{name}_cat.fits``.
    background, rms, segmentation, subtracted : str
        Check images ``BACKGROUND`` (``_bkg``), ``BACKGROUND_RMS`` (``_rms``),
        ``SEGMENTATION`` (``_seg``) and ``-BACKGROUND`` (``_nb``, the tile minus background).
    table : astropy.table.Table
        The catalogue (``NUMBER``, ``X_IMAGE``, ``Y_IMAGE``, ``CLASS_STAR`` …).
    log : str
        SExtractor's own log (standard error).
    """

    catalog: str
    background: str
    rms: str
    segmentation: str
    subtracted: str
    table: Table
    log: str


def _local_copy(url: str, directory: str, storage_options: dict | None) -> str:
    if is_local(url):
        path = resolve(url, storage_options=storage_options)[1]
        if not os.path.isfile(path):
            raise NotFoundError(f"tile {url!r} does not exist; check the path")
        return path
    fs, path = resolve(url, storage_options=storage_options)
    local = os.path.join(directory, os.path.basename(path))
    fs.get_file(path, local)
    return local


def _publish(local: str, url: str, storage_options: dict | None) -> None:
    with atomic_write(url, storage_options=storage_options) as tmp:
        shutil.copyfile(local, tmp)


def sextract(
    tile: str,
    dest: str | None = None,
    *,
    name: str | None = None,
    config: str | None = None,
    options: dict[str, object] | None = None,
    storage_options: dict | None = None,
) -> Sextracted:
    """Run SExtractor on a FITS tile with cloudlab's DRE configuration.

    Parameters
    ----------
    tile : str
        fsspec URL of the FITS tile (copied to a temporary directory when remote).
    dest : str, optional
        Directory URL for the products (DRE: ``Sextracted/{name}``); a new temporary directory
        when None.
    name : str, optional
        Product prefix; defaults to the tile's file name without ``.fits``.
    config : str, optional
        A SExtractor configuration file to use instead of the shipped ``default.sex``.
    options : dict, optional
        Extra SExtractor parameters, e.g. ``{"DETECT_THRESH": 3, "SEEING_FWHM": 1.0}``.
    storage_options : dict, optional
        fsspec options for the tile and ``dest``.

    Returns
    -------
    Sextracted
        URLs of ``{name}_cat.fits`` (FITS_LDAC), ``{name}_bkg.fits``, ``{name}_rms.fits``,
        ``{name}_seg.fits``, ``{name}_nb.fits``, and the catalogue table.

    Raises
    ------
    ToolError
        When SExtractor is missing (naming the ``source-extractor`` package) or fails (with its
        own message).
    """
    binary = find_tool(SEXTRACTOR_NAMES, "source-extractor")
    base = os.path.basename(resolve(tile, storage_options=storage_options)[1])
    name = name or base.removesuffix(".gz").removesuffix(".fits").removesuffix(".fit")
    dest = dest if dest is not None else tempfile.mkdtemp(prefix="cloudlab-sextract-")
    with tempfile.TemporaryDirectory(prefix="cloudlab-sex-") as work:
        local_tile = _local_copy(tile, work, storage_options)
        outputs = {kind: os.path.join(work, f"{name}_{s}.fits") for kind, s in CHECK_IMAGES.items()}
        catalog = os.path.join(work, f"{name}_cat.fits")
        args = [
            binary,
            local_tile,
            "-c",
            config or config_file("default.sex"),
            "-PARAMETERS_NAME",
            config_file("default.param"),
            "-FILTER_NAME",
            config_file("default.conv"),
            "-STARNNW_NAME",
            find_nnw(),
            "-CATALOG_TYPE",
            "FITS_LDAC",
            "-CATALOG_NAME",
            catalog,
            "-CHECKIMAGE_TYPE",
            ",".join(outputs),
            "-CHECKIMAGE_NAME",
            ",".join(outputs.values()),
            *option_args(options),
        ]
        log = run_tool("SExtractor", args, cwd=work)
        missing = [p for p in [catalog, *outputs.values()] if not os.path.isfile(p)]
        if missing:
            raise ToolError(
                f"SExtractor wrote no {', '.join(map(os.path.basename, missing))} for {tile!r}; "
                f"its log ends: {log.strip()[-300:]}"
            )
        table = read_catalog(catalog)
        urls = {}
        for local in [catalog, *outputs.values()]:
            url = f"{dest.rstrip('/')}/{os.path.basename(local)}"
            _publish(local, url, storage_options)
            urls[local] = url
    return Sextracted(
        catalog=urls[catalog],
        background=urls[outputs["BACKGROUND"]],
        rms=urls[outputs["BACKGROUND_RMS"]],
        segmentation=urls[outputs["SEGMENTATION"]],
        subtracted=urls[outputs["-BACKGROUND"]],
        table=table,
        log=log,
    )
