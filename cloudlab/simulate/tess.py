"""Synthetic TESS sector: SPOC-like calibrated FFIs and the astrocut-layout cutout cube.

Geometry
--------
A real SPOC FFI is 2078 rows × 2136 columns: columns 1–44 and 2093–2136 (1-based) are collateral
(serial-register and virtual columns), rows 2049–2078 are buffer/smear/virtual rows, the science
area is the 2048 × 2048 block in between. For a smaller ``shape`` the collateral is scaled in
proportion: ``lead = trail = round(44 · n_cols / 2136)`` columns on each side and
``round(30 · n_rows / 2078)`` rows on top (at least one of each), see :class:`DetectorLayout`.
The science area of a small image is the *central* window of the real CCD's science area, so its
sky position matches the real sector/camera/CCD.

The WCS is a TAN-SIP fit (order 3, with the inverse AP/BP polynomials, CD matrix, as SPOC writes)
to tess-point's focal-plane model of the requested sector, camera and CCD, so that the simulated
sky lands where tess-point (and ``cloudlab.cutouts.locate``) expects it. Each frame's WCS carries a
small CRVAL jitter (≲ 0.02 px) like the per-frame SPOC fits; the star positions are exact in the
WCS of the middle frame (the one astrocut and cloudlab use).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from cloudlab import storage
from cloudlab.errors import InputError, MissingDependencyError
from cloudlab.simulate.background import scattered_light
from cloudlab.simulate.stars import bleed_columns, render_stars, star_catalog, transit_factor
from cloudlab.sky import gnomonic
from cloudlab.tess_detector import (
    COLLATERAL_ROWS,
    FULL_SHAPE,
    LEADING_COLUMNS,
    QUALITY_DESAT,
    QUALITY_MANUAL_EXCLUDE,
    QUALITY_SAFE_MODE,
    QUALITY_STRAYLIGHT,
    SCCSA,
    SCIENCE_SIZE,
    SCIROWS,
)

__all__ = [
    "DEADC",
    "DEFAULT_SHAPE",
    "DetectorLayout",
    "READ_NOISE",
    "SATURATION",
    "TessSector",
    "fit_sip_header",
    "sector_start",
    "sector_wcs",
    "tess_sector",
]

DEFAULT_SHAPE = (208, 214)
"""A tenth of the real FFI in each direction: ``make demo`` runs in seconds."""

SATURATION = 1.0e5
"""Full well expressed in e-/s (≈ 200,000 e- per 2-s frame)."""
READ_NOISE = 10.0
"""Read noise per 2-s frame in electrons."""
DEADC = 0.792
"""Dead-time correction (fraction of the cadence spent integrating)."""


@dataclass(frozen=True)
class DetectorLayout:
    """Science and collateral regions of an FFI of a given shape (0-based, Python slices)."""

    n_rows: int
    n_cols: int
    lead_cols: int
    trail_cols: int
    top_rows: int

    @classmethod
    def for_shape(cls, shape: tuple[int, int]) -> DetectorLayout:
        """Layout of an FFI of ``shape``, collateral scaled from the real 2078 × 2136 one."""
        n_rows, n_cols = (int(s) for s in shape)
        if n_rows > FULL_SHAPE[0] or n_cols > FULL_SHAPE[1]:
            raise InputError(f"shape {shape} is larger than a TESS FFI {FULL_SHAPE}")
        lead = max(1, round(LEADING_COLUMNS * n_cols / FULL_SHAPE[1]))
        top = max(1, round(COLLATERAL_ROWS * n_rows / FULL_SHAPE[0]))
        layout = cls(n_rows, n_cols, lead, lead, top)
        if layout.science_shape[0] < 8 or layout.science_shape[1] < 8:
            raise InputError(f"shape {shape} is too small: the science area must be ≥ 8 × 8")
        return layout

    @property
    def science_rows(self) -> slice:
        return slice(0, self.n_rows - self.top_rows)

    @property
    def science_cols(self) -> slice:
        return slice(self.lead_cols, self.n_cols - self.trail_cols)

    @property
    def science_shape(self) -> tuple[int, int]:
        return (self.n_rows - self.top_rows, self.n_cols - self.lead_cols - self.trail_cols)

    @property
    def window_offset(self) -> tuple[int, int]:
        """0-based offset of this science area inside the real 2048 × 2048 science area."""
        return (
            (SCIENCE_SIZE - self.science_shape[0]) // 2,
            (SCIENCE_SIZE - self.science_shape[1]) // 2,
        )

    def to_spoc(self, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """0-based pixel of this image → 1-based SPOC FFI (column, row) of the real CCD."""
        off_r, off_c = self.window_offset
        return (
            np.asarray(col) - self.lead_cols + off_c + SCCSA,
            np.asarray(row) + off_r + SCIROWS,
        )

    def science_mask(self) -> np.ndarray:
        mask = np.zeros((self.n_rows, self.n_cols), dtype=bool)
        mask[self.science_rows, self.science_cols] = True
        return mask


@dataclass
class TessSector:
    """What :func:`tess_sector` wrote, with the truth.

    Attributes
    ----------
    dest : str
        Destination directory URL.
    sector, camera, ccd : int
    shape : (int, int)
        FFI shape (rows, columns).
    layout : DetectorLayout
    ffi_urls : list of str
        One calibrated FFI per frame, in time order (empty when ``ffis=False``).
    cube_url : str or None
        The astrocut-layout cube (None when ``cube=False``).
    stars : pandas.DataFrame
        ``ticid``, ``ra``, ``dec`` (deg), ``row``, ``column`` (0-based pixel of the PSF centre in
        the middle frame's WCS), ``tmag``, ``flux`` (e-/s), and the injected transits ``period``,
        ``t0`` (BTJD), ``depth``, ``duration`` (days).
    tstart, tstop : numpy.ndarray
        Frame start and stop, BTJD.
    quality : numpy.ndarray
        DQUALITY per frame.
    barycorr : numpy.ndarray
        BARYCORR per frame (days).
    wcs_header : astropy.io.fits.Header
        The TAN-SIP WCS of the middle frame.
    background_seed : int
        Seed of :func:`cloudlab.simulate.background.scattered_light`; :meth:`background` gives the
        true background.
    nan_frames : list of int
        Frames whose pixels are all NaN.
    background_within : ((int, int), (int, int)) or None
        ``within=`` of :func:`cloudlab.simulate.background.scattered_light`: the full CCD's shape
        and this image's offset in it (``background="ccd"``), or None (``"image"``).
    """

    dest: str
    sector: int
    camera: int
    ccd: int
    shape: tuple[int, int]
    layout: DetectorLayout
    ffi_urls: list[str]
    cube_url: str | None
    stars: pd.DataFrame
    tstart: np.ndarray
    tstop: np.ndarray
    quality: np.ndarray
    barycorr: np.ndarray
    wcs_header: fits.Header
    background_seed: int
    nan_frames: list[int] = field(default_factory=list)
    background_within: tuple[tuple[int, int], tuple[int, int]] | None = None

    @property
    def times(self) -> np.ndarray:
        """Mid-exposure times (BTJD)."""
        return 0.5 * (self.tstart + self.tstop)

    @property
    def wcs(self) -> WCS:
        return WCS(self.wcs_header, relax=True)

    def background(self, frames: slice | list[int] | None = None) -> np.ndarray:
        """True scattered-light background (e-/s) of ``frames``, science pixels only.

        Returns
        -------
        numpy.ndarray
            ``(time, row, column)``; collateral pixels are 0.
        """
        times = self.times if frames is None else self.times[frames]
        bg = scattered_light(
            self.shape, times, seed=self.background_seed, within=self.background_within
        )
        return bg * self.layout.science_mask()


# --------------------------------------------------------------------------- pointing and WCS


def _pointing(sector: int):
    try:
        import tess_stars2px
    except ImportError as exc:  # pragma: no cover - tess-point is a core dependency
        raise MissingDependencyError(
            "simulate.tess_sector needs tess-point: pip install tess-point"
        ) from exc
    known = np.asarray(tess_stars2px.TESS_Spacecraft_Pointing_Data.sectors)
    if sector not in known[known < 1000]:
        raise InputError(
            f"unknown TESS sector {sector}: tess-point knows sectors 1–{tess_stars2px.max_sector}"
        )
    return tess_stars2px, tess_stars2px.TESS_Spacecraft_Pointing_Data(trySector=sector)


def _poly_terms(u, v, order, start):
    return [(p, q) for total in range(start, order + 1) for p in range(total, -1, -1)
            for q in [total - p]], lambda p, q: u**p * v**q  # fmt: skip


def _fit_poly(u, v, target, order, start, scale):
    terms, basis = _poly_terms(u / scale, v / scale, order, start)
    design = np.stack([basis(p, q) for p, q in terms], axis=1)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    return {(p, q): c / scale ** (p + q) for (p, q), c in zip(terms, coef, strict=True)}


def fit_sip_header(
    pix_x: np.ndarray,
    pix_y: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    crpix: tuple[float, float],
    crval: tuple[float, float],
    order: int = 3,
) -> fits.Header:
    """Fit a TAN-SIP WCS (CD matrix, A/B and inverse AP/BP polynomials) to matched points.

    Parameters
    ----------
    pix_x, pix_y : numpy.ndarray
        1-based FITS pixel coordinates (column, row).
    ra, dec : numpy.ndarray
        Sky positions (deg) of those pixels.
    crpix, crval : (float, float)
        Reference pixel (1-based) and its sky position.
    order : int, optional
        SIP order.

    Returns
    -------
    astropy.io.fits.Header
        WCS cards in the order SPOC writes them.
    """
    u, v = pix_x - crpix[0], pix_y - crpix[1]
    xi, eta = gnomonic(ra, dec, *crval)
    scale = max(np.abs(u).max(), np.abs(v).max(), 1.0)
    fx = _fit_poly(u, v, xi, order, 1, scale)
    fy = _fit_poly(u, v, eta, order, 1, scale)
    cd = np.array([[fx[1, 0], fx[0, 1]], [fy[1, 0], fy[0, 1]]])
    cd_inv = np.linalg.inv(cd)
    high = [k for k in fx if sum(k) >= 2]
    a = {k: cd_inv[0, 0] * fx[k] + cd_inv[0, 1] * fy[k] for k in high}
    b = {k: cd_inv[1, 0] * fx[k] + cd_inv[1, 1] * fy[k] for k in high}
    big_u = u + sum(c * u**p * v**q for (p, q), c in a.items())
    big_v = v + sum(c * u**p * v**q for (p, q), c in b.items())
    ap = _fit_poly(big_u, big_v, u - big_u, order, 1, scale)
    bp = _fit_poly(big_u, big_v, v - big_v, order, 1, scale)
    h = fits.Header()
    h["RADESYS"] = ("ICRS", "reference frame of celestial coordinates")
    h["EQUINOX"] = (2000.0, "equinox of celestial coordinate system")
    h["WCSAXES"] = (2, "number of WCS axes")
    h["CTYPE1"] = ("RA---TAN-SIP", "Gnomonic projection + SIP distortions")
    h["CTYPE2"] = ("DEC--TAN-SIP", "Gnomonic projection + SIP distortions")
    h["CRVAL1"] = (float(crval[0]), "RA at CRPIX1, CRPIX2")
    h["CRVAL2"] = (float(crval[1]), "DEC at CRPIX1, CRPIX2")
    h["CRPIX1"] = (float(crpix[0]), "X reference pixel")
    h["CRPIX2"] = (float(crpix[1]), "Y reference pixel")
    for i in range(2):
        for j in range(2):
            h[f"CD{i + 1}_{j + 1}"] = (float(cd[i, j]), "Transformation matrix")
    for name, coefs, inverse in (
        ("A", a, False),
        ("B", b, False),
        ("AP", ap, True),
        ("BP", bp, True),
    ):
        h[f"{name}_ORDER"] = (order, ("Inv polynomial" if inverse else "Polynomial") + " order")
        for (p, q), c in coefs.items():
            h[f"{name}_{p}_{q}"] = (
                float(c),
                ("inv " if inverse else "") + "distortion coefficient",
            )
    h["A_DMAX"] = (float(np.abs(big_u - u).max()), "maximum distortion, axis 1")
    h["B_DMAX"] = (float(np.abs(big_v - v).max()), "maximum distortion, axis 2")
    return h


def sector_wcs(
    sector: int, camera: int, ccd: int, layout: DetectorLayout
) -> tuple[fits.Header, dict]:
    """TAN-SIP header of ``layout``'s image placed on (sector, camera, CCD) by tess-point.

    Returns
    -------
    (astropy.io.fits.Header, dict)
        The WCS cards, and the spacecraft/camera pointing (``RA_NOM``, ``DEC_NOM``, ``ROLL_NOM``,
        ``midtime`` in JD).
    """
    t2p, scinfo = _pointing(sector)
    n = 9
    rows = np.linspace(0, layout.n_rows - 1, n)
    cols = np.linspace(0, layout.n_cols - 1, n)
    rr, cc = (g.ravel() for g in np.meshgrid(rows, cols, indexing="ij"))
    spoc_col, spoc_row = layout.to_spoc(rr, cc)
    radec = np.array(
        [
            t2p.tess_stars2px_reverse_function_entry(sector, camera, ccd, c, r, scInfo=scinfo)[:2]
            for c, r in zip(spoc_col, spoc_row, strict=True)
        ]
    )
    crpix = ((layout.n_cols + 1) / 2.0, (layout.n_rows + 1) / 2.0)
    c_col, c_row = layout.to_spoc(np.array(crpix[1] - 1), np.array(crpix[0] - 1))
    crval = t2p.tess_stars2px_reverse_function_entry(
        sector, camera, ccd, float(c_col), float(c_row), scInfo=scinfo
    )[:2]
    header = fit_sip_header(cc + 1, rr + 1, radec[:, 0], radec[:, 1], crpix, crval)
    pointing = {
        "RA_NOM": float(scinfo.camRa[camera - 1, 0]),
        "DEC_NOM": float(scinfo.camDec[camera - 1, 0]),
        "ROLL_NOM": float(scinfo.rolls[0]),
        "midtime": float(scinfo.midtimes[0]),
    }
    return header, pointing


def _first_frame(midtime_jd: float) -> float:
    """The sector starts half a sector (≈ 13.7 d) before tess-point's mid time (BTJD)."""
    return round(midtime_jd - 2457000.0 - 13.7, 4)


def sector_start(sector: int) -> float:
    """BTJD of the first frame :func:`tess_sector` simulates for ``sector``.

    Parameters
    ----------
    sector : int
        TESS sector known to tess-point.

    Returns
    -------
    float
        Start of the first frame (BTJD), half a sector before tess-point's mid time.
    """
    _, scinfo = _pointing(sector)
    return _first_frame(float(scinfo.midtimes[0]))


# --------------------------------------------------------------------------- headers


def _utc_strings(btjd: np.ndarray) -> list[str]:
    t = Time(np.asarray(btjd) + 2457000.0, format="jd", scale="tdb").utc
    return [s + "Z" for s in t.isot]


def _primary_header(
    sector, camera, ccd, tjd_start, tjd_stop, date_obs, date_end, ffi_index
) -> fits.Header:
    h = fits.Header()
    h["SIMPLE"] = (True, "conforms to FITS standards")
    h["BITPIX"] = (8, "array data type")
    h["NAXIS"] = (0, "number of array dimensions")
    h["EXTEND"] = (True, "file contains extensions")
    h["NEXTEND"] = (2, "number of standard extensions")
    h["EXTNAME"] = ("PRIMARY", "name of extension")
    h["EXTVER"] = (1, "extension version number (not format version)")
    h["SIMDATA"] = (True, "file is based on simulated data")
    h["ORIGIN"] = ("NASA/Ames", "institution responsible for this file")
    h["DATE"] = ("2026-01-01", "file creation date.")
    h["TSTART"] = (float(tjd_start), "observation start time in TJD")
    h["TSTOP"] = (float(tjd_stop), "observation stop time in TJD")
    h["DATE-OBS"] = (date_obs, "TSTART as UTC calendar date")
    h["DATE-END"] = (date_end, "TSTOP as UTC calendar date")
    h["CREATOR"] = ("cloudlab.simulate", "program used to produce this file")
    h["PROCVER"] = ("cloudlab-sim", "SW version")
    h["FILEVER"] = ("1.0", "file format version")
    h["TIMVERSN"] = ("OGIP/93-003", "OGIP memo number for file format")
    h["TELESCOP"] = ("TESS", "telescope")
    h["INSTRUME"] = ("TESS Photometer", "detector type")
    h["DATA_REL"] = (1, "data release version number")
    h["SECTOR"] = (sector, "Observing sector")
    h["CAMERA"] = (camera, "Camera number")
    h["CCD"] = (ccd, "CCD chip number")
    h["RADESYS"] = ("ICRS", "reference frame of celestial coordinates")
    h["EQUINOX"] = (2000.0, "equinox of celestial coordinate system")
    h["FFIINDEX"] = (int(ffi_index), "number of FFI cadence interval")
    return h


def _collateral_cards(layout: DetectorLayout) -> list[tuple[str, object, str]]:
    """SPOC's per-output collateral keywords, scaled to ``layout`` (1-based, inclusive)."""
    sci0, sci1 = layout.science_cols.start + 1, layout.science_cols.stop
    width = sci1 - sci0 + 1
    edges = [sci0 + round(k * width / 4) for k in range(5)]
    trail0 = sci1 + 1
    cards = []
    for k, out in enumerate("ABCD"):
        lead_edges = [1 + round(k * layout.lead_cols / 4), round((k + 1) * layout.lead_cols / 4)]
        trail_edges = [
            trail0 + round(k * layout.trail_cols / 4),
            trail0 + round((k + 1) * layout.trail_cols / 4) - 1,
        ]
        cards += [
            (f"LVCS{out}", lead_edges[0], f"serial register col start, output {out}"),
            (f"LVCE{out}", lead_edges[1], f"serial register col end (incl.), output {out}"),
            (f"TVCS{out}", trail_edges[0], f"trailing virtual column start, output {out}"),
            (f"TVCE{out}", trail_edges[1], f"trailing virtual col end (inclusive), output {out}"),
            (f"SCCS{out}", edges[k], f"science col start, output {out}"),
            (f"SCCE{out}", edges[k + 1] - 1, f"science col end (inclusive), output {out}"),
            (f"SCICOLH{out}", k % 2 == 0, "T: science cols read in increasing order"),
        ]
    top0 = layout.science_rows.stop + 1
    cards += [
        ("SCIROWS", SCIROWS, "science rows start"),
        ("SCIROWE", layout.science_rows.stop, "science rows end (inclusive)"),
        ("BFROWS", top0, "buffer rows start"),
        ("BFROWE", layout.n_rows, "buffer/smear/virtual rows end (inclusive)"),
    ]
    return cards


def _image_header(
    *,
    extname: str,
    imagtype: str,
    shape: tuple[int, int],
    camera: int,
    ccd: int,
    tstart: float,
    tstop: float,
    date_obs: str,
    date_end: str,
    barycorr: float,
    dquality: int,
    cadence_s: float,
    wcs_cards: fits.Header,
    pointing: dict,
    layout: DetectorLayout,
) -> fits.Header:
    telapse = tstop - tstart
    n_frm = max(1, round(cadence_s / 2.0))
    h = fits.Header()
    h["XTENSION"] = ("IMAGE", "Image extension")
    h["BITPIX"] = (-32, "array data type")
    h["NAXIS"] = (2, "number of array dimensions")
    h["NAXIS1"] = shape[1]
    h["NAXIS2"] = shape[0]
    h["PCOUNT"] = (0, "number of parameters")
    h["GCOUNT"] = (1, "number of groups")
    h["INHERIT"] = (True, "inherit the primary header")
    h["EXTNAME"] = (extname, "name of extension")
    h["EXTVER"] = (1, "extension version number (not format version)")
    h["SIMDATA"] = (True, "file is based on simulated data")
    h["TELESCOP"] = ("TESS", "telescope")
    h["INSTRUME"] = ("TESS Photometer", "detector type")
    h["CAMERA"] = (camera, "Camera number")
    h["CCD"] = (ccd, "CCD chip number")
    h["EXPOSURE"] = (telapse * DEADC, "[d] time on source")
    h["TIMEREF"] = ("SOLARSYSTEM", "barycentric correction applied to times")
    h["TASSIGN"] = ("SPACECRAFT", "where time is assigned")
    h["TIMESYS"] = ("TDB", "time system is Barycentric Dynamical Time (TDB)")
    h["BJDREFI"] = (2457000, "integer part of BTJD reference date")
    h["BJDREFF"] = (0.0, "fraction of the day in BTJD reference date")
    h["TIMEUNIT"] = ("d", "time unit for TIME, TSTART and TSTOP")
    h["TELAPSE"] = (telapse, "[d] TSTOP - TSTART")
    h["LIVETIME"] = (telapse * DEADC, "[d] TELAPSE multiplied by DEADC")
    h["TSTART"] = (tstart, "observation start time in BTJD")
    h["TSTOP"] = (tstop, "observation stop time in BTJD")
    h["DATE-OBS"] = (date_obs, "TSTART as UTC calendar date")
    h["DATE-END"] = (date_end, "TSTOP as UTC calendar date")
    h["DEADC"] = (DEADC, "deadtime correction")
    h["TIMEPIXR"] = (0.5, "bin time beginning=0 middle=0.5 end=1")
    h["TIERRELA"] = (1.16e-05, "[d] relative time error")
    h["BUNIT"] = ("electrons/s", "physical units of image data")
    h["BARYCORR"] = (barycorr, "[d] barycentric time correction")
    h["INT_TIME"] = (1.98, "[s] photon accumulation time per frame")
    h["READTIME"] = (0.02, "[s] readout time per frame")
    h["FRAMETIM"] = (2.0, "[s] frame time (INT_TIME + READTIME)")
    h["NUM_FRM"] = (n_frm, "number of frames per time stamp")
    h["TIMEDEL"] = (cadence_s / 86400.0, "[d] time resolution of data")
    h["BACKAPP"] = (False, "background is subtracted")
    h["DEADAPP"] = (True, "deadtime applied")
    h["VIGNAPP"] = (True, "vignetting or collimator correction applied")
    for out, gain in zip("ABCD", (5.35, 5.22, 5.22, 5.18), strict=True):
        h[f"GAIN{out}"] = (gain, f"[electrons/count] CCD output {out} gain")
    for out in "ABCD":
        h[f"READNOI{out}"] = (READ_NOISE, f"[electrons] read noise CCD output {out}")
    h["NREADOUT"] = (int(n_frm * 0.8), "number of read per cadence")
    for key, value, comment in _collateral_cards(layout):
        h[key] = (value, comment)
    h.extend(wcs_cards.cards)
    h["WCSNAMEP"] = ("PHYSICAL", "name of world coordinate system alternate P")
    h["WCSAXESP"] = (2, "number of WCS physical axes")
    for ax, name in ((1, "RAWX"), (2, "RAWY")):
        h[f"CTYPE{ax}P"] = (name, f"physical WCS axis {ax} type CCD {'col' if ax == 1 else 'row'}")
        h[f"CUNIT{ax}P"] = ("PIXEL", f"physical WCS axis {ax} unit")
        h[f"CRPIX{ax}P"] = (1, "reference CCD pixel")
        h[f"CRVAL{ax}P"] = (1, "value at reference CCD pixel")
        h[f"CDELT{ax}P"] = (1.0, f"physical WCS axis {ax} step")
    h["RA_NOM"] = (pointing["RA_NOM"], "[deg] RA of camera boresight")
    h["DEC_NOM"] = (pointing["DEC_NOM"], "[deg] DEC of camera boresight")
    h["ROLL_NOM"] = (pointing["ROLL_NOM"], "[deg] roll angle of spacecraft")
    h["DQUALITY"] = (dquality, "data quality flags")
    h["IMAGTYPE"] = (imagtype, "FFI image type: raw, cal, uncert")
    return h


# --------------------------------------------------------------------------- pixels


class _PixelModel:
    """Deterministic pixels of the sector, generated in row blocks over all frames."""

    def __init__(self, layout, stars, times, cadence_s, seed, nan_frames, within):
        self.layout = layout
        self.within = within
        self.shape = (layout.n_rows, layout.n_cols)
        self.times = times
        self.seed = seed
        self.nan_frames = nan_frames
        self.texp = cadence_s * DEADC
        self.read_var = READ_NOISE**2 * max(1.0, cadence_s / 2.0)
        self.mask = layout.science_mask()
        static = render_stars(self.shape, stars)
        self.static = bleed_columns(static, SATURATION) * self.mask
        factor = transit_factor(stars, times)
        self.variable = []
        for i in np.flatnonzero((factor != 1.0).any(axis=1)):
            star = stars.iloc[[i]]
            image = render_stars(self.shape, star) * self.mask
            rows = np.flatnonzero(image.any(axis=1))
            self.variable.append((rows, image, factor[i] - 1.0))

    def block(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        """Flux and uncertainty of rows ``r0:r1``, all frames: two float32 ``(time, row, col)``."""
        signal = scattered_light(
            self.shape, self.times, seed=self.seed, rows=slice(r0, r1), within=self.within
        )
        signal *= self.mask[r0:r1]
        signal += self.static[r0:r1].astype(np.float32)
        for rows, image, dfac in self.variable:
            if rows[0] < r1 and rows[-1] >= r0:
                signal += dfac[:, None, None].astype(np.float32) * image[r0:r1].astype(np.float32)
        err = np.sqrt(np.maximum(signal, 0) * self.texp + self.read_var) / self.texp
        rng = np.random.default_rng([self.seed, 0x0015E, r0])
        flux = signal + err * rng.standard_normal(signal.shape, dtype=np.float32)
        flux[self.nan_frames] = np.nan
        err[self.nan_frames] = np.nan
        return flux.astype(np.float32), err.astype(np.float32)


# --------------------------------------------------------------------------- writers


def _table_hdu_bytes(headers: list[fits.Header], ffi_names: list[str]) -> bytes:
    """HDU 2 of the cube: one column per card of the template ext-1 header, plus FFI_FILE."""
    template = headers[0]
    cols = []
    seen = set()
    for card in template.cards:
        key, value = card.keyword, card.value
        if key in seen or not key:
            continue
        seen.add(key)
        values = [h.get(key) for h in headers]
        if isinstance(value, str):
            width = max(len(value), 1)
            arr = np.array([(v if isinstance(v, str) else "")[:width] for v in values], f"S{width}")
            fmt = f"{width}A"
        elif isinstance(value, int):
            arr = np.array([int(v) if v is not None else 0 for v in values], np.int32)
            fmt = "J"
        else:
            arr = np.array([float(v) if v is not None else np.nan for v in values], np.float64)
            fmt = "D"
        cols.append((fits.Column(name=key, format=fmt, array=arr), card.comment))
    width = max(len(n) for n in ffi_names)
    names = np.array(ffi_names, f"S{width}")
    cols.append((fits.Column(name="FFI_FILE", format=f"{width}A", array=names), "FFI file name"))
    table = fits.BinTableHDU.from_columns([c for c, _ in cols])
    for i, (_, comment) in enumerate(cols, start=1):
        table.header.comments[f"TTYPE{i}"] = comment[:40]
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(buf)
    primary_size = len(fits.PrimaryHDU().header.tostring())
    return buf.getvalue()[primary_size:]


def _cube_primary(ffi_primary: fits.Header, last_image: fits.Header, sector, camera, ccd):
    h = ffi_primary.copy()
    h.remove("CHECKSUM", ignore_missing=True)
    h["ORIGIN"] = ("STScI/MAST", "institution responsible for this file")
    h["DATE"] = ("2026-01-01", "FFI cube creation date")
    h["CAMERA"] = (camera, "Camera number")
    h["CCD"] = (ccd, "CCD chip number")
    h["SECTOR"] = (sector, "Observing sector")
    h["DATE-END"] = (last_image["DATE-END"], "TSTOP as UTC calendar date")
    h["TSTOP"] = (last_image["TSTOP"], "observation stop time in BTJD")
    h["EXTNAME"] = "PRIMARY"
    return h


def _write_cube_local(path, primary, n_rows, n_cols, n_frames, model, table_bytes, progress):
    h0 = fits.PrimaryHDU(header=primary).header.tostring().encode("ascii")
    h1 = (
        fits.Header(
            [
                ("XTENSION", "IMAGE", "Image extension"),
                ("BITPIX", -32, "array data type"),
                ("NAXIS", 4, "number of array dimensions"),
                ("NAXIS1", 2, "flux, uncertainty"),
                ("NAXIS2", n_frames, "frames"),
                ("NAXIS3", n_cols, "columns"),
                ("NAXIS4", n_rows, "rows"),
                ("PCOUNT", 0, "number of parameters"),
                ("GCOUNT", 1, "number of groups"),
            ]
        )
        .tostring()
        .encode("ascii")
    )
    data_offset = len(h0) + len(h1)
    data_size = n_rows * n_cols * n_frames * 2 * 4
    padded = -(-data_size // 2880) * 2880
    with open(path, "wb") as f:
        f.write(h0)
        f.write(h1)
        f.truncate(data_offset + padded)
        f.seek(data_offset + padded)
        f.write(table_bytes)
    if model is None:  # sparse: the data stay a hole of zeros
        progress(n_rows)
        return data_offset
    cube = np.memmap(path, dtype=">f4", mode="r+", offset=data_offset,
                     shape=(n_rows, n_cols, n_frames, 2))  # fmt: skip
    rows_per_block = max(1, int(4e6 // max(1, n_cols * n_frames)))
    for r0 in range(0, n_rows, rows_per_block):
        r1 = min(n_rows, r0 + rows_per_block)
        flux, err = model.block(r0, r1)
        cube[r0:r1, :, :, 0] = flux.transpose(1, 2, 0)
        cube[r0:r1, :, :, 1] = err.transpose(1, 2, 0)
        progress(r1 - r0)
    cube.flush()
    del cube
    return data_offset


def tess_sector(
    dest: str,
    *,
    sector: int = 55,
    camera: int = 1,
    ccd: int = 1,
    n_frames: int = 48,
    shape: tuple[int, int] = DEFAULT_SHAPE,
    n_stars: int | None = None,
    cadence_s: float = 200.0,
    seed: int = 0,
    ffis: bool = True,
    cube: bool = True,
    storage_options: dict | None = None,
    progress: bool = False,
    sparse: bool = False,
    stars: pd.DataFrame | None = None,
    background: str = "image",
) -> TessSector:
    """Simulate one TESS sector/camera/CCD and write its FFIs and cutout cube to ``dest``.

    Parameters
    ----------
    dest : str
        Destination directory: any fsspec URL or local path.
    sector, camera, ccd : int, optional
        Where the CCD points (tess-point's pointing model of that sector).
    n_frames : int, optional
        Number of FFIs (cadences).
    shape : (int, int), optional
        FFI shape (rows, columns), at most the real (2078, 2136); collateral scales with it.
    n_stars : int, optional
        Number of stars; default one per 150 science pixels.
    cadence_s : float, optional
        Cadence in seconds (200 s from sector 56 on, 600 s in sectors 27–55).
    seed : int, optional
        Seed of everything random (stars, background, noise, quality flags).
    ffis, cube : bool, optional
        Write the calibrated FFIs / the astrocut-layout cube.
    storage_options : dict, optional
        Filesystem keyword arguments for ``dest``.
    progress : bool, optional
        Show a tqdm progress bar.
    sparse : bool, optional
        Write headers and the HDU 2 table but leave the cube's pixel data as a hole (zeros, a
        sparse file on local disks): full-geometry cubes of ~100 GB in seconds, for I/O
        benchmarks. Needs ``cube=True`` and ``ffis=False``; the star catalog is still returned
        but the stars are not in the pixels.
    stars : pandas.DataFrame, optional
        The stars to place instead of drawing ``n_stars`` with
        :func:`cloudlab.simulate.stars.star_catalog`: its columns (``row``, ``column`` 0-based
        in the full image, ``tmag``, ``flux``, ``depth``, ``period``, ``t0``, ``duration``) and
        any optional signal columns of :func:`cloudlab.simulate.stars.transit_factor`; ``ticid``,
        ``ra`` and ``dec`` are added.
    background : {"image", "ccd"}, optional
        Scale of the scattered light's structure (glow, gradient, straps): spread over this
        image (``"image"``: a small image shows it all, as BackDrop needs), or that of the
        full CCD seen through this image's window (``"ccd"``: a small image sees a nearly flat
        background that changes with time, as a real cutout does).

    Returns
    -------
    TessSector
        Paths and truth: star catalog (TIC ids, RA/Dec, true pixel positions, fluxes, transits),
        times, quality flags, WCS and the background model.

    Notes
    -----
    Files: ``tess{YYYYDDDHHMMSS}-s{sector:04d}-{camera}-{ccd}-0120-s_ffic.fits`` (primary with
    TELESCOP/SECTOR/CAMERA/CCD and TJD times, ext 1 calibrated flux float32 in e-/s with the WCS,
    BARYCORR, DQUALITY and BTJD times, ext 2 uncertainty) and
    ``tess-s{sector:04d}-{camera}-{ccd}-cube.fits`` (astrocut's layout: HDU 1 ``(rows, columns,
    frames, 2)`` big-endian float32, HDU 2 one row per FFI with its ext-1 header cards and
    FFI_FILE).
    """
    if not 1 <= camera <= 4 or not 1 <= ccd <= 4:
        raise InputError(f"camera and ccd must be 1–4, got camera={camera}, ccd={ccd}")
    if n_frames < 1:
        raise InputError(f"n_frames must be >= 1, got {n_frames}")
    if cadence_s <= 0:
        raise InputError(f"cadence_s must be > 0, got {cadence_s}")
    if not (ffis or cube):
        raise InputError("nothing to write: ffis and cube are both False")
    if sparse and (ffis or not cube):
        raise InputError("sparse=True writes only the cube: use ffis=False, cube=True")
    if background not in ("image", "ccd"):
        raise InputError(f"background={background!r}: use 'image' or 'ccd'")
    if stars is not None:
        missing = sorted({"row", "column", "tmag", "flux", "depth"} - set(stars.columns))
        if missing:
            raise InputError(f"stars lacks the columns {missing}: see star_catalog's columns")
    layout = DetectorLayout.for_shape(shape)
    shape = (layout.n_rows, layout.n_cols)
    wcs_cards, pointing = sector_wcs(sector, camera, ccd, layout)
    rng = np.random.default_rng([seed, 0x7E55])

    dt = cadence_s / 86400.0
    t0 = _first_frame(pointing["midtime"])
    tstart = t0 + dt * np.arange(n_frames)
    tstop = tstart + dt
    barycorr = 0.0057 + 0.0004 * np.sin(2 * np.pi * (tstart - t0) / 27.4 + seed)
    quality = np.zeros(n_frames, dtype=np.int32)
    n_flag = max(1, n_frames // 20)
    flagged = rng.choice(n_frames, size=min(n_frames, n_flag + 2), replace=False)
    quality[flagged[:n_flag]] |= QUALITY_DESAT
    nan_frames: list[int] = []
    if len(flagged) > n_flag:
        quality[flagged[n_flag]] |= QUALITY_STRAYLIGHT
    if len(flagged) > n_flag + 1 and n_frames >= 10 and flagged[n_flag + 1] != n_frames // 2:
        quality[flagged[n_flag + 1]] |= QUALITY_SAFE_MODE | QUALITY_MANUAL_EXCLUDE
        nan_frames.append(int(flagged[n_flag + 1]))

    # stars, placed in the middle frame's WCS
    sci_r, sci_c = layout.science_rows, layout.science_cols
    if stars is not None:
        stars = stars.drop(columns=["ticid", "ra", "dec"], errors="ignore").reset_index(drop=True)
        n_stars = len(stars)
    else:
        if n_stars is None:
            n_stars = max(10, round(layout.science_shape[0] * layout.science_shape[1] / 150))
        stars = star_catalog(
            n_stars,
            rows=(sci_r.start + 1.0, sci_r.stop - 2.0),
            columns=(sci_c.start + 1.0, sci_c.stop - 2.0),
            seed=seed,
            times=(tstart[0], tstop[-1]),
        )
    wcs = WCS(wcs_cards, relax=True)
    ra, dec = wcs.all_pix2world(stars["column"].to_numpy(), stars["row"].to_numpy(), 0)
    ticid = np.unique(rng.integers(10_000_000, 2_000_000_000, 2 * n_stars + 10))
    stars.insert(0, "ticid", rng.permutation(ticid)[:n_stars].astype(np.int64))
    stars.insert(1, "ra", ra % 360.0)
    stars.insert(2, "dec", dec)

    # per-frame headers (CRVAL jitter ~0.02 px; middle frame exact)
    tjd_start, tjd_stop = tstart - barycorr, tstop - barycorr
    utc_start, utc_end = _utc_strings(tstart), _utc_strings(tstop)
    ptj_start, ptj_end = _utc_strings(tjd_start), _utc_strings(tjd_stop)
    jitter = rng.normal(0.0, 0.02 * 21.0 / 3600.0, (n_frames, 2))
    jitter[n_frames // 2] = 0.0
    stamps = Time([t[:-1] for t in ptj_start], format="isot", scale="utc").strftime("%Y%j%H%M%S")
    names = [f"tess{stamp}-s{sector:04d}-{camera}-{ccd}-0120-s_ffic.fits" for stamp in stamps]
    # frame 0's headers are built card by card; the others are copies with the per-frame cards
    # changed (astropy builds headers slowly: this keeps 1000s of frames to seconds)
    base_primary = _primary_header(
        sector, camera, ccd, tjd_start[0], tjd_stop[0], ptj_start[0], ptj_end[0], 0
    )
    base_cal = _image_header(
        extname=f"CAMERA.CCD {camera}.{ccd} cal", imagtype="cal", shape=shape, camera=camera,
        ccd=ccd, tstart=float(tstart[0]), tstop=float(tstop[0]), date_obs=utc_start[0],
        date_end=utc_end[0], barycorr=float(barycorr[0]), dquality=int(quality[0]),
        cadence_s=cadence_s, wcs_cards=wcs_cards, pointing=pointing, layout=layout,
    )  # fmt: skip
    primaries, cal_headers, unc_headers = [], [], []
    for i in range(n_frames):
        primary = base_primary.copy()
        primary["TSTART"], primary["TSTOP"] = float(tjd_start[i]), float(tjd_stop[i])
        primary["DATE-OBS"], primary["DATE-END"] = ptj_start[i], ptj_end[i]
        primary["FFIINDEX"] = round(tjd_start[i] * 86400.0 / cadence_s)
        primaries.append(primary)
        telapse = float(tstop[i] - tstart[i])
        cal = base_cal.copy()
        cal["TSTART"], cal["TSTOP"] = float(tstart[i]), float(tstop[i])
        cal["DATE-OBS"], cal["DATE-END"] = utc_start[i], utc_end[i]
        cal["TELAPSE"], cal["EXPOSURE"], cal["LIVETIME"] = telapse, telapse * DEADC, telapse * DEADC
        cal["BARYCORR"], cal["DQUALITY"] = float(barycorr[i]), int(quality[i])
        cal["CRVAL1"] = wcs_cards["CRVAL1"] + jitter[i, 0]
        cal["CRVAL2"] = wcs_cards["CRVAL2"] + jitter[i, 1]
        cal_headers.append(cal)
        unc = cal.copy()
        unc["EXTNAME"], unc["IMAGTYPE"] = f"CAMERA.CCD {camera}.{ccd} uncert", "uncert"
        unc_headers.append(unc)

    within = None
    if background == "ccd":
        off_r, off_c = layout.window_offset
        within = (FULL_SHAPE, (off_r, off_c + LEADING_COLUMNS - layout.lead_cols))
    model = (
        None
        if sparse
        else _PixelModel(layout, stars, 0.5 * (tstart + tstop), cadence_s, seed, nan_frames, within)
    )
    dest = dest.rstrip("/")
    cube_url = f"{dest}/tess-s{sector:04d}-{camera}-{ccd}-cube.fits"
    ffi_urls = [f"{dest}/{name}" for name in names] if ffis else []
    bar = _progress_bar(progress, layout.n_rows + (n_frames if ffis else 0))
    try:
        with (
            storage.atomic_write(cube_url, storage_options=storage_options)
            if cube
            else _scratch() as path
        ):
            primary = _cube_primary(primaries[0], cal_headers[-1], sector, camera, ccd)
            table = _table_hdu_bytes(cal_headers, names)
            offset = _write_cube_local(
                path, primary, layout.n_rows, layout.n_cols, n_frames, model, table, bar.update
            )
            if ffis:
                pixels = np.memmap(path, dtype=">f4", mode="r", offset=offset,
                                   shape=(layout.n_rows, layout.n_cols, n_frames, 2))  # fmt: skip
                for i, url in enumerate(ffi_urls):
                    _write_ffi(url, primaries[i], cal_headers[i], unc_headers[i],
                               pixels[:, :, i, 0], pixels[:, :, i, 1], storage_options)  # fmt: skip
                    bar.update(1)
                del pixels
    finally:
        bar.close()
    return TessSector(
        dest=dest, sector=sector, camera=camera, ccd=ccd, shape=shape, layout=layout,
        ffi_urls=ffi_urls, cube_url=cube_url if cube else None, stars=stars, tstart=tstart,
        tstop=tstop, quality=quality, barycorr=barycorr, wcs_header=wcs_cards,
        background_seed=seed, nan_frames=nan_frames, background_within=within,
    )  # fmt: skip


class _scratch:
    """Context manager giving a temporary local file path, removed afterwards."""

    def __enter__(self) -> str:
        self.dir = tempfile.mkdtemp(prefix="cloudlab-sim-")
        return os.path.join(self.dir, "cube.fits")

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _write_ffi(url, primary, cal_header, unc_header, flux, err, storage_options) -> None:
    hdus = fits.HDUList(
        [
            fits.PrimaryHDU(header=primary),
            fits.ImageHDU(np.ascontiguousarray(flux, dtype=np.float32), header=cal_header),
            fits.ImageHDU(np.ascontiguousarray(err, dtype=np.float32), header=unc_header),
        ]
    )
    with storage.atomic_write(url, storage_options=storage_options) as path:
        hdus.writeto(path)


def _progress_bar(enabled: bool, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc="simulate tess", unit="px-row/ffi")
