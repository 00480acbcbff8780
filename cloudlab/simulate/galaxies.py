"""Synthetic galaxy tiles: Sérsic galaxies of known parameters, stars, a PSF, sky and noise.

Galaxies are drawn with :func:`cloudlab.dre.sersic.sersic_stamp`, the renderer that
:func:`cloudlab.dre.model_grid` uses to build DRE model cubes, so a galaxy drawn on a grid cell is
exactly (up to PSF, noise and neighbours) the model of that cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from scipy.signal import fftconvolve

from cloudlab.dre.sersic import sersic_stamp
from cloudlab.errors import InputError
from cloudlab.storage import atomic_write

__all__ = ["GalaxyTile", "galaxy_tile", "gaussian_psf", "truth_url"]


def truth_url(dest: str) -> str:
    """Where the truth table of the tile written to ``dest`` goes.

    Beside the tile (``name_truth.fits``), except for a tile in a DRE ``Tiles/`` folder: there
    the truth goes to the sibling ``Truth/`` folder, so that ``cloudlab dre sextract ROOT``
    (which runs on every ``ROOT/Tiles/*.fits``) does not take the table for a tile.

    Parameters
    ----------
    dest : str
        URL or path of the tile.

    Returns
    -------
    str
        URL or path of the truth table.
    """
    folder, _, filename = dest.rstrip("/").rpartition("/")
    name = filename.removesuffix(".fits") + "_truth.fits"
    parent, _, last = folder.rpartition("/")
    if last == "Tiles":
        return f"{parent}/Truth/{name}" if parent or folder.startswith("/") else f"Truth/{name}"
    return f"{folder}/{name}" if folder or dest.startswith("/") else name


def gaussian_psf(fwhm: float, size: int = 25) -> np.ndarray:
    """Return a circular Gaussian PSF of unit sum on an odd ``size`` × ``size`` stamp.

    Parameters
    ----------
    fwhm : float
        Full width at half maximum, pixels.
    size : int
        Odd stamp side in pixels.

    Returns
    -------
    numpy.ndarray
        float64 ``(size, size)`` stamp summing to 1, centred on pixel ``size // 2``.

    Raises
    ------
    InputError
        If ``size`` is even or below 3, or ``fwhm`` is not positive.
    """
    if size % 2 == 0 or size < 3:
        raise InputError(f"gaussian_psf: PSF size must be odd and >= 3, got {size!r}")
    if not fwhm > 0:
        raise InputError(f"gaussian_psf: fwhm must be > 0, got {fwhm!r}")
    sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    y, x = np.mgrid[0:size, 0:size] - size // 2
    psf = np.exp(-(x**2 + y**2) / (2.0 * sigma**2))
    return psf / psf.sum()


@dataclass
class GalaxyTile:
    """A simulated galaxy tile and its truth.

    Attributes
    ----------
    url : str or None
        Where the FITS tile was written (None when not written).
    image : numpy.ndarray
        The tile (float32, numpy order ``(y, x)``).
    truth : astropy.table.Table
        One row per injected source: ``ID``, ``KIND`` ('galaxy' | 'star'), ``X_IMAGE``,
        ``Y_IMAGE`` (1-based, SExtractor convention), ``FLUX``, ``INDEX``, ``AX_RATIO``,
        ``ANGLE``, ``LOGR`` (NaN for stars) and the grid cell ``I_INDEX``, ``I_AX_RATIO``,
        ``I_ANGLE``, ``I_LOGR`` of each galaxy (-1 for stars).
    psf : numpy.ndarray
        The PSF used (unit sum).
    sky, noise : float
        Sky level and Gaussian noise σ (image units).
    """

    url: str | None
    image: np.ndarray
    truth: Table
    psf: np.ndarray
    sky: float
    noise: float


def _axis(values: Any, name: str) -> np.ndarray:
    out = np.atleast_1d(np.asarray(values, dtype=float))
    if out.ndim != 1 or out.size == 0 or not np.all(np.isfinite(out)):
        raise InputError(
            f"galaxy_tile: {name} must be a non-empty 1-D sequence of finite numbers, "
            f"got {values!r}"
        )
    return out


def galaxy_tile(
    dest: str | None = None,
    *,
    shape: tuple[int, int] = (512, 512),
    n_galaxies: int = 12,
    n_stars: int = 6,
    index: Any = (4.0,),
    ax_ratio: Any = (0.3, 0.5, 0.7),
    angle: Any = (0.0, 45.0, 90.0, 135.0),
    log_r: Any = (0.4, 0.7, 1.0),
    flux: tuple[float, float] = (2e4, 6e4),
    star_flux: tuple[float, float] = (5e3, 5e4),
    psf_fwhm: float = 2.5,
    psf_size: int = 25,
    sky: float = 100.0,
    noise: float = 5.0,
    margin: int = 80,
    min_separation: float = 60.0,
    stamp: int = 128,
    seed: int = 0,
    storage_options: dict | None = None,
) -> GalaxyTile:
    """Simulate a FITS tile with Sérsic galaxies on grid cells, stars, a PSF, sky and noise.

    Galaxy parameters are drawn from the given axis values (grid cells), centred on integer
    pixels, rendered with :func:`sersic_stamp`, convolved with a Gaussian PSF and placed at
    least ``min_separation`` pixels apart and ``margin`` pixels from the edges.

    Parameters
    ----------
    dest : str, optional
        fsspec URL of the FITS file to write (atomically); nothing is written when None.
    shape : (int, int)
        Tile shape ``(ny, nx)``.
    n_galaxies, n_stars : int
        Number of galaxies and point sources.
    index, ax_ratio, angle, log_r : sequence of float
        Grid values the galaxy parameters are drawn from (axis ratio > 1 is rejected).
    flux, star_flux : (float, float)
        Uniform ranges of total fluxes (image units).
    psf_fwhm, psf_size : float, int
        Gaussian PSF FWHM (pixels) and stamp size.
    sky, noise : float
        Constant sky level and Gaussian noise σ.
    margin : int
        Minimum distance of every source from the tile edges.
    min_separation : float
        Minimum distance between any two sources.
    stamp : int
        Side of the stamp each galaxy is rendered on.
    seed : int
        Random seed: the same seed gives the same tile.
    storage_options : dict, optional
        Passed to fsspec when writing.

    Returns
    -------
    GalaxyTile
        The image, the truth table and the PSF.
    """
    axes = [_axis(v, n) for v, n in ((index, "index"), (ax_ratio, "ax_ratio"))]
    axes += [_axis(v, n) for v, n in ((angle, "angle"), (log_r, "log_r"))]
    if np.any(axes[1] <= 0) or np.any(axes[1] > 1):
        raise InputError(f"galaxy_tile: ax_ratio values must be in (0, 1], got {axes[1]}")
    ny, nx = shape
    if min(ny, nx) <= 2 * margin:
        raise InputError(
            f"galaxy_tile: shape {shape} leaves no room inside a {margin}-pixel margin"
        )
    rng = np.random.default_rng(seed)
    psf = gaussian_psf(psf_fwhm, psf_size)

    positions: list[tuple[int, int]] = []
    n_total = n_galaxies + n_stars
    for _ in range(200 * max(n_total, 1)):
        if len(positions) == n_total:
            break
        y = int(rng.integers(margin + 1, ny - margin - 1))
        x = int(rng.integers(margin + 1, nx - margin - 1))
        if all((y - py) ** 2 + (x - px) ** 2 >= min_separation**2 for py, px in positions):
            positions.append((y, x))
    if len(positions) < n_total:
        raise InputError(
            f"galaxy_tile: cannot place {n_total} sources {min_separation} px apart in a "
            f"{shape} tile; use a larger shape or fewer sources"
        )

    image = np.zeros(shape)
    half = stamp // 2
    rows: list[dict[str, Any]] = []
    for i, (y, x) in enumerate(positions):
        galaxy = i < n_galaxies
        row: dict[str, Any] = {"ID": i + 1, "KIND": "galaxy" if galaxy else "star"}
        if galaxy:
            cell = [int(rng.integers(len(a))) for a in axes]
            params = [float(a[c]) for a, c in zip(axes, cell, strict=True)]
            total = float(rng.uniform(*flux))
            model = fftconvolve(sersic_stamp(*params, size=stamp), psf, mode="same") * total
            y0, x0 = y - half, x - half
            ys = slice(max(y0, 0), min(y0 + stamp, ny))
            xs = slice(max(x0, 0), min(x0 + stamp, nx))
            image[ys, xs] += model[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        else:
            cell = [-1, -1, -1, -1]
            params = [np.nan] * 4
            total = float(rng.uniform(*star_flux))
            p = psf_size // 2
            image[y - p : y + p + 1, x - p : x + p + 1] += psf * total
        row.update(X_IMAGE=x + 1.0, Y_IMAGE=y + 1.0, FLUX=total)
        for key, value in zip(("INDEX", "AX_RATIO", "ANGLE", "LOGR"), params, strict=True):
            row[key] = value
        for key, value in zip(("I_INDEX", "I_AX_RATIO", "I_ANGLE", "I_LOGR"), cell, strict=True):
            row[key] = value
        rows.append(row)

    image += sky + rng.normal(0.0, noise, size=shape)
    image = image.astype(np.float32)
    truth = Table(rows=rows) if rows else Table()
    if dest is not None:
        header = fits.Header()
        header["SKYLEVEL"] = (sky, "simulated sky level")
        header["NOISE"] = (noise, "simulated Gaussian noise sigma")
        header["PSFFWHM"] = (psf_fwhm, "simulated Gaussian PSF FWHM [pix]")
        header["SEED"] = (seed, "cloudlab.simulate.galaxy_tile seed")
        with atomic_write(dest, storage_options=storage_options) as path:
            fits.PrimaryHDU(image, header=header).writeto(path)
    return GalaxyTile(dest, image, truth, psf, sky, noise)
