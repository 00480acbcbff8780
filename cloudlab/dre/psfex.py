"""Run PSFEx on a SExtractor FITS_LDAC catalogue and return the constant (order-0) PSF."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from cloudlab.dre.fit import read_psf
from cloudlab.dre.tools import PSFEX_NAMES, ToolError, config_file, find_tool, option_args, run_tool
from cloudlab.errors import NotFoundError
from cloudlab.storage import atomic_write, resolve

__all__ = ["PSFModel", "psfex"]


@dataclass
class PSFModel:
    """A PSFEx result.

    Attributes
    ----------
    url : str
        The ``.psf`` file written.
    psf : numpy.ndarray
        The order-0 PSF, cleaned as DRE does (negatives to 0, unit sum).
    log : str
        PSFEx's own log.
    """

    url: str
    psf: np.ndarray
    log: str


def psfex(
    catalog: str,
    dest: str | None = None,
    *,
    config: str | None = None,
    options: dict[str, object] | None = None,
    storage_options: dict | None = None,
) -> PSFModel:
    """Build a constant PSF from a SExtractor catalogue with PSFEx.

    The catalogue must be FITS_LDAC with ``VIGNET`` (as written by
    :func:`cloudlab.dre.sextract`). The shipped ``default.psfex`` uses ``PSFVAR_DEGREES 0``
    and ``PSF_SAMPLING 1`` so the PSF is at the image pixel scale, as DRE requires.

    Parameters
    ----------
    catalog : str
        fsspec URL of the catalogue.
    dest : str, optional
        URL of the ``.psf`` file to write (DRE: ``PSF/{name}.psf``); next to a temporary copy
        when None.
    config : str, optional
        A PSFEx configuration file to use instead of the shipped one.
    options : dict, optional
        Extra PSFEx parameters, e.g. ``{"PSF_SIZE": "31,31"}``.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    PSFModel

    Raises
    ------
    ToolError
        When PSFEx is missing (naming the ``psfex`` package) or fails (with its own message).
    FileNotFoundError
        When ``catalog`` does not exist.
    """
    binary = find_tool(PSFEX_NAMES, "psfex")
    fs, path = resolve(catalog, storage_options=storage_options)
    if not fs.exists(path):
        raise NotFoundError(
            f"catalog {catalog!r} does not exist; make it with cloudlab.dre.sextract first"
        )
    stem = os.path.basename(path).removesuffix(".fits").removesuffix(".cat")
    if dest is None:
        dest = os.path.join(tempfile.mkdtemp(prefix="cloudlab-psfex-"), f"{stem}.psf")
    with tempfile.TemporaryDirectory(prefix="cloudlab-psfex-") as work:
        local = os.path.join(work, f"{stem}.cat")
        fs.get_file(path, local)
        args = [
            binary,
            local,
            "-c",
            config or config_file("default.psfex"),
            "-PSF_DIR",
            work,
            "-PSF_SUFFIX",
            ".psf",
            "-CHECKPLOT_TYPE",
            "NONE",
            "-CHECKIMAGE_TYPE",
            "NONE",
            "-WRITE_XML",
            "N",
            *option_args(options),
        ]
        log = run_tool("PSFEx", args, cwd=work)
        produced = os.path.join(work, f"{stem}.psf")
        if not os.path.isfile(produced):
            raise ToolError(
                f"PSFEx wrote no PSF file for {catalog!r} (is it FITS_LDAC with VIGNET?): "
                f"{log.strip()[-500:]}"
            )
        psf = read_psf(produced)
        with atomic_write(dest, storage_options=storage_options) as tmp:
            shutil.copyfile(produced, tmp)
    return PSFModel(url=dest, psf=psf, log=log)
