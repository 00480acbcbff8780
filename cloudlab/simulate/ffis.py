"""Simulated TESS calibrated FFI stacks with a known scattered-light background.

The background is deliberately *not* drawn from the BackDrop model family (polynomial + radial
polynomial + quadratic B-spline + column straps): it is made of linear gradients, an exponential
glow about the camera boresight, broad Gaussians, a ripple, per-column strap offsets and a
scattered-light glint that moves across the CCD. Static stars (some saturated, with bleed
columns) and Gaussian noise are added. Files follow the SPOC calibrated-FFI layout: 44 leading
and 44 trailing virtual columns, 30 buffer/smear/virtual rows below the science rows, the
collateral keys (``SCCSA`` ... ``SCIROWE``), ``DQUALITY``, BTJD times in extension 1 and TJD times
in the primary header, an uncertainty image in extension 2.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from astropy.io import fits

from cloudlab import storage
from cloudlab.errors import InputError
from cloudlab.tess_detector import (
    BUFFER_ROWS,
    COLLATERAL_ROWS,
    LEADING_COLUMNS,
    QUALITY_DESAT,
    SCCSA,
    SCIENCE_SIZE,
    SCIROWS,
    SMEAR_ROWS,
    TRAILING_COLUMNS,
)

__all__ = ["FFIStackTruth", "ffi_stack", "pixel_noise"]

CADENCE_DAYS = 1800.0 / 86400.0
BARYCORR_DAYS = 0.0056780875
BTJD_EPOCH = datetime(2014, 12, 8, 12, 0, 0)  # BTJD 0 = JD 2457000 (UTC to within a minute)
SATURATION = 2.0e5
EXPOSURE_S = 1425.6  # effective exposure of a 30-minute FFI (EXPOSURE keyword, deadtime applied)
N_READS = 900  # 2-s frames co-added into one 30-minute FFI
READ_NOISE_E = 10.0  # electrons per 2-s read


@dataclass
class FFIStackTruth:
    """What :func:`ffi_stack` wrote and the background it put into every frame.

    Attributes
    ----------
    urls : list of str
        The frame files, in time order.
    n_frames : int
        Number of frames.
    times : numpy.ndarray
        Mid-exposure times (BTJD) of the frames.
    tstart_tjd : numpy.ndarray
        Primary-header ``TSTART`` (spacecraft TJD) of the frames.
    quality : numpy.ndarray
        ``DQUALITY`` of the frames.
    sector, camera, ccd : int
        Where the frames claim to come from.
    shape : tuple of int
        Science-region shape ``(rows, columns)``.
    strap_columns : numpy.ndarray
        0-based science columns carrying a strap offset.
    strap_offsets : numpy.ndarray
        Offset (e/s) of each strap column at the start of the stack.
    saturated : numpy.ndarray
        ``(n, 2)`` science ``(row, column)`` of the saturated stars.
    stars : numpy.ndarray
        ``(n, 3)`` science ``(row, column, total flux e/s)`` of every star.
    noise : float or None
        Standard deviation (e/s) of the Gaussian noise, or None for shot + read noise.
    """

    urls: list[str]
    n_frames: int
    times: np.ndarray
    tstart_tjd: np.ndarray
    quality: np.ndarray
    sector: int
    camera: int
    ccd: int
    shape: tuple[int, int]
    strap_columns: np.ndarray
    strap_offsets: np.ndarray
    saturated: np.ndarray
    stars: np.ndarray
    noise: float | None
    _gaussians: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 5)))

    def background(
        self,
        frame: int,
        rows: np.ndarray | None = None,
        columns: np.ndarray | None = None,
    ) -> np.ndarray:
        """The true background of one frame on a grid of science pixels.

        Parameters
        ----------
        frame : int
            Frame index (0-based, in time order).
        rows, columns : numpy.ndarray, optional
            1-D arrays of 0-based science rows and columns (default: the whole science region).

        Returns
        -------
        numpy.ndarray
            ``(len(rows), len(columns))`` background in e/s (float64).
        """
        if not 0 <= frame < self.n_frames:
            raise IndexError(f"frame {frame} outside 0..{self.n_frames - 1}")
        n_rows, n_cols = self.shape
        r = np.arange(n_rows) if rows is None else np.asarray(rows)
        c = np.arange(n_cols) if columns is None else np.asarray(columns)
        s = frame / max(self.n_frames - 1, 1)
        v = (r / n_rows)[:, None]
        u = (c / n_cols)[None, :]
        bore_v, bore_u = 1.0, (1.0 if self.ccd in (1, 3) else 0.0)
        rho = np.hypot(u - bore_u, v - bore_v)
        bkg = 80.0 + 8.0 * s + 25.0 * u + 12.0 * (1.0 + 0.5 * s) * v
        bkg = bkg + 60.0 * (1.0 + 0.3 * s) * np.exp(-2.0 * rho)
        for amp, slope, gu, gv, width in self._gaussians:
            g = np.exp(-((u - gu) ** 2 + (v - gv) ** 2) / (2.0 * width**2))
            bkg = bkg + amp * (1.0 + slope * s) * g
        bkg = bkg + 4.0 * np.sin(2.0 * np.pi * (1.3 * v + 0.7 * u) + 0.5 + s)
        glint_u, glint_v = 0.15 + 0.6 * s, 0.8 - 0.5 * s
        glint = np.exp(-((u - glint_u) ** 2 + (v - glint_v) ** 2) / (2.0 * 0.08**2))
        bkg = bkg + 50.0 * np.sin(np.pi * (0.2 + 0.6 * s)) * glint
        strap = np.zeros(n_cols)
        strap[self.strap_columns] = self.strap_offsets * (1.0 + 0.2 * s)
        return np.broadcast_to(bkg + strap[c][None, :], (len(r), len(c))).copy()


def ffi_stack(
    dest: str,
    *,
    n_frames: int = 8,
    shape: tuple[int, int] = (SCIENCE_SIZE, SCIENCE_SIZE),
    seed: int = 0,
    sector: int = 1,
    camera: int = 1,
    ccd: int = 1,
    noise: float | None = None,
    n_stars: int | None = None,
    n_saturated: int | None = None,
    bad_frames: Sequence[int] = (),
    compress: bool = False,
    storage_options: dict | None = None,
) -> FFIStackTruth:
    """Write a stack of simulated calibrated FFIs with a known background.

    Parameters
    ----------
    dest : str
        Directory URL (any fsspec URL or local path) the frames are written to.
    n_frames : int
        Number of frames (30-minute cadences).
    shape : tuple of int
        Science-region shape ``(rows, columns)``; real FFIs have ``(2048, 2048)``. The files carry
        the collateral margins around it, like real frames.
    seed : int
        Seed of the random generator (star field, straps, Gaussians, noise).
    sector, camera, ccd : int
        Written into the headers and file names.
    noise : float, optional
        Standard deviation of Gaussian pixel noise (e/s). Default ``None``: the noise of a real
        30-minute FFI, shot noise over 1425.6 s plus 900 reads of 10 e (about 0.4 e/s on a
        150 e/s sky).
    n_stars, n_saturated : int, optional
        Number of stars and of saturated stars with bleed columns (default: 3000 and 5 per full
        frame, scaled with the area, at least 30 and 1).
    bad_frames : sequence of int
        Frame indices flagged with ``DQUALITY = 32`` (momentum dump).
    compress : bool
        Write gzipped ``.fits.gz`` frames.
    storage_options : dict, optional
        Filesystem keyword arguments for ``dest``.

    Returns
    -------
    FFIStackTruth
        File URLs, times, quality flags, star and strap positions, and the true background.
    """
    n_rows, n_cols = (int(shape[0]), int(shape[1]))
    if n_frames < 1:
        raise InputError(f"n_frames must be >= 1, got {n_frames}")
    if n_rows < 16 or n_cols < 16 or n_rows > SCIENCE_SIZE or n_cols > SCIENCE_SIZE:
        raise InputError(
            f"ffi_stack: shape must lie between (16, 16) and ({SCIENCE_SIZE}, {SCIENCE_SIZE}), "
            f"got {shape}"
        )
    if ccd not in (1, 2, 3, 4) or camera not in (1, 2, 3, 4):
        raise InputError(f"camera and ccd must be 1..4, got camera={camera} ccd={ccd}")
    bad = {int(b) for b in bad_frames}
    if any(not 0 <= b < n_frames for b in bad):
        raise InputError(f"bad_frames {sorted(bad)} outside 0..{n_frames - 1}")
    rng = np.random.default_rng(seed)
    area = n_rows * n_cols / float(SCIENCE_SIZE) ** 2
    n_stars = max(30, int(3000 * area)) if n_stars is None else int(n_stars)
    n_saturated = max(1, int(round(5 * area))) if n_saturated is None else int(n_saturated)

    n_straps = max(2, n_cols // 64)
    strap_columns = np.sort(rng.choice(np.arange(2, n_cols - 2), n_straps, replace=False))
    strap_offsets = rng.uniform(3.0, 6.0, n_straps)
    gaussians = np.column_stack(
        [
            rng.uniform(8.0, 20.0, 3),  # amplitude
            rng.uniform(-0.5, 0.5, 3),  # relative change over the stack
            rng.uniform(0.2, 0.8, 3),  # centre u
            rng.uniform(0.2, 0.8, 3),  # centre v
            rng.uniform(0.12, 0.3, 3),  # width
        ]
    )
    stars_img, stars, saturated = _star_field(rng, n_rows, n_cols, n_stars, n_saturated)

    tstart = 1325.3 + np.arange(n_frames) * CADENCE_DAYS
    quality = np.array([QUALITY_DESAT if k in bad else 0 for k in range(n_frames)], dtype=np.int32)
    truth = FFIStackTruth(
        urls=[],
        n_frames=n_frames,
        times=tstart + CADENCE_DAYS / 2,
        tstart_tjd=tstart - BARYCORR_DAYS,
        quality=quality,
        sector=sector,
        camera=camera,
        ccd=ccd,
        shape=(n_rows, n_cols),
        strap_columns=strap_columns,
        strap_offsets=strap_offsets,
        saturated=saturated,
        stars=stars,
        noise=None if noise is None else float(noise),
        _gaussians=gaussians,
    )
    dest = str(dest).rstrip("/")
    urls = []
    for k in range(n_frames):
        science = truth.background(k).astype(np.float32) + stars_img
        sigma = pixel_noise(science) if noise is None else np.full_like(science, noise)
        science += rng.standard_normal(science.shape, np.float32) * sigma
        data = _frame_bytes(science, sigma, truth, k, rng)
        stamp = (BTJD_EPOCH + timedelta(days=float(tstart[k]))).strftime("%Y%j%H%M%S")
        name = f"tess{stamp}-s{sector:04d}-{camera}-{ccd}-0120-s_ffic.fits"
        if compress:
            name += ".gz"
            data = gzip.compress(data, compresslevel=1)
        url = f"{dest}/{name}"
        storage.write_bytes(url, data, storage_options=storage_options)
        urls.append(url)
    truth.urls = urls
    return truth


def _star_field(
    rng: np.random.Generator, n_rows: int, n_cols: int, n_stars: int, n_saturated: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Static star image (float32), star list and saturated-star positions."""
    img = np.zeros((n_rows, n_cols), np.float32)
    rows = rng.uniform(0, n_rows - 1, n_stars)
    cols = rng.uniform(0, n_cols - 1, n_stars)
    flux = 10 ** rng.uniform(2.0, 5.0, n_stars)
    sigma = 1.2
    half = 7
    for r0, c0, f in zip(rows, cols, flux, strict=True):
        ir, ic = int(round(r0)), int(round(c0))
        r_lo, r_hi = max(ir - half, 0), min(ir + half + 1, n_rows)
        c_lo, c_hi = max(ic - half, 0), min(ic + half + 1, n_cols)
        rr = np.arange(r_lo, r_hi)[:, None] - r0
        cc = np.arange(c_lo, c_hi)[None, :] - c0
        img[r_lo:r_hi, c_lo:c_hi] += (
            f / (2 * np.pi * sigma**2) * np.exp(-(rr**2 + cc**2) / (2 * sigma**2))
        )
    margin = min(40, n_rows // 4, n_cols // 4)
    sat = np.column_stack(
        [
            rng.integers(margin, n_rows - margin, n_saturated),
            rng.integers(margin, n_cols - margin, n_saturated),
        ]
    )
    for r0, c0 in sat:
        length = int(rng.integers(max(4, n_rows // 100), max(5, n_rows // 25)))
        width = int(rng.integers(1, 4))
        r_lo, r_hi = max(r0 - length, 0), min(r0 + length + 1, n_rows)
        c_lo, c_hi = max(c0 - width // 2, 0), min(c0 - width // 2 + width, n_cols)
        img[r_lo:r_hi, c_lo:c_hi] = SATURATION
        rr = np.arange(max(r0 - 12, 0), min(r0 + 13, n_rows))
        cc = np.arange(max(c0 - 12, 0), min(c0 + 13, n_cols))
        halo = 5e4 * np.exp(-((rr[:, None] - r0) ** 2 + (cc[None, :] - c0) ** 2) / (2 * 3.0**2))
        block = img[rr[0] : rr[-1] + 1, cc[0] : cc[-1] + 1]
        np.minimum(block + halo, SATURATION, out=block)
    stars = np.column_stack([rows, cols, flux])
    return img, stars, sat


def pixel_noise(flux: np.ndarray) -> np.ndarray:
    """Noise (e/s) of a 30-minute FFI pixel of mean ``flux`` (e/s): shot plus read noise."""
    electrons = np.maximum(flux, 0) * EXPOSURE_S + N_READS * READ_NOISE_E**2
    return (np.sqrt(electrons) / EXPOSURE_S).astype(np.float32)


def _frame_bytes(
    science: np.ndarray, sigma: np.ndarray, truth: FFIStackTruth, k: int, rng: np.random.Generator
) -> bytes:
    """One calibrated FFI file (primary, calibrated image, uncertainty image) as bytes."""
    n_rows, n_cols = science.shape
    full_shape = (n_rows + COLLATERAL_ROWS, LEADING_COLUMNS + n_cols + TRAILING_COLUMNS)
    full = rng.normal(0.0, 1.0, full_shape).astype(np.float32)
    full[:n_rows, LEADING_COLUMNS : LEADING_COLUMNS + n_cols] = science
    tstart = float(truth.times[k] - CADENCE_DAYS / 2)
    date_obs = (BTJD_EPOCH + timedelta(days=tstart)).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    primary = fits.Header()
    primary["ORIGIN"] = "cloudlab.simulate"
    primary["TELESCOP"] = "TESS"
    primary["SECTOR"] = truth.sector
    primary["CAMERA"] = truth.camera
    primary["CCD"] = truth.ccd
    primary["TSTART"] = (tstart - BARYCORR_DAYS, "observation start time in TJD")
    primary["TSTOP"] = (tstart - BARYCORR_DAYS + CADENCE_DAYS, "observation stop time in TJD")
    primary["DATE-OBS"] = date_obs

    hdr = fits.Header()
    hdr["CAMERA"] = (truth.camera, "Camera number")
    hdr["CCD"] = (truth.ccd, "CCD chip number")
    hdr["TSTART"] = (tstart, "observation start time in BTJD")
    hdr["TSTOP"] = (tstart + CADENCE_DAYS, "observation stop time in BTJD")
    hdr["BARYCORR"] = (BARYCORR_DAYS, "[d] barycentric time correction")
    hdr["TIMEDEL"] = CADENCE_DAYS
    hdr["DATE-OBS"] = date_obs
    hdr["DQUALITY"] = (int(truth.quality[k]), "data quality flags")
    hdr["BUNIT"] = "electrons/s"
    hdr["IMAGTYPE"] = "cal"
    edges = np.linspace(0, n_cols, 5).astype(int)
    for i, out in enumerate("ABCD"):
        hdr[f"SCCS{out}"] = SCCSA + int(edges[i])
        hdr[f"SCCE{out}"] = LEADING_COLUMNS + int(edges[i + 1])
    hdr["SCIROWS"] = SCIROWS
    hdr["SCIROWE"] = n_rows
    hdr["BFROWS"] = n_rows + 1
    hdr["BFROWE"] = n_rows + BUFFER_ROWS
    hdr["SMROWS"] = n_rows + BUFFER_ROWS + 1
    hdr["SMROWE"] = n_rows + BUFFER_ROWS + SMEAR_ROWS
    hdr["VROWS"] = n_rows + BUFFER_ROWS + SMEAR_ROWS + 1
    hdr["VROWE"] = n_rows + COLLATERAL_ROWS
    err_hdr = hdr.copy()
    hdr["EXTNAME"] = f"CAMERA.CCD {truth.camera}.{truth.ccd} cal"
    err_hdr["EXTNAME"] = f"CAMERA.CCD {truth.camera}.{truth.ccd} uncert"
    err = np.zeros(full.shape, np.float32)
    err[:n_rows, LEADING_COLUMNS : LEADING_COLUMNS + n_cols] = sigma
    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(header=primary),
            fits.ImageHDU(full, header=hdr),
            fits.ImageHDU(err, header=err_hdr),
        ]
    )
    buf = io.BytesIO()
    hdul.writeto(buf)
    return buf.getvalue()
