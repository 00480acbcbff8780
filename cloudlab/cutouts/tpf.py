"""Target pixel files in astrocut's layout that ``lightkurve.read`` opens as TessTargetPixelFile.

Differences from astrocut 1.4 (deliberate fixes):

- the column-WCS keywords of the 2-D columns (``1CTYP5`` …, ``1CRV5P``/``2CRV5P``) are written,
  so ``tpf.column``/``tpf.row`` give the 1-based CCD column/row of the cutout's first pixel;
- ``WCS_MSEP``/``WCS_SIG`` compare the linear cutout WCS with the full SIP WCS (astrocut compares
  the linear WCS with itself and always writes 0);
- ``TICID``/``OBJECT`` come from the target list, ``CREATOR`` names a target-pixel exporter, and
  ``BJDREFI``/``TIMESYS`` are in the PIXELS header where lightkurve reads them;
- ``CADENCENO`` counts frames from 1 (astrocut writes zeros);
- the cadence, frame and exposure keywords SPOC TPFs carry (``TIMEDEL``, ``EXPOSURE``,
  ``INT_TIME``, ``FRAMETIM``, ``NUM_FRM``, ``DEADC``, ``TIMEPIXR``, ``TIERRELA``, …) from the
  cube's FFI header, :data:`TESS_FFI_DEFAULTS` marked as such where it lacks them, ``MJDREFI``/
  ``MJDREFF``, ``RADESYS`` and the TIC stellar keywords of the target list;
- APERTURE has SPOC's bits 2 (pipeline aperture) and 4 (background), see
  :func:`spoc_aperture`, and the table ends with an empty ``RESERVED`` column so that
  lightkurve's ``TargetPixelFile.cutout(...).to_fits()`` writes a readable file.
"""

from __future__ import annotations

import io
import re

import dask
import dask.array as da
import numpy as np
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS

from cloudlab import storage
from cloudlab.cutouts.cutout import STELLAR_KEYWORDS
from cloudlab.errors import InputError, StorageError
from cloudlab.io.tess import _wcs_from_text
from cloudlab.sky import gnomonic

__all__ = [
    "APERTURE_BACKGROUND",
    "APERTURE_COLLECTED",
    "APERTURE_PIPELINE",
    "FFI_KEYWORDS",
    "TPFTemplate",
    "TPFWriteError",
    "build_tpf",
    "linear_wcs",
    "TESS_FFI_DEFAULTS",
    "spoc_aperture",
    "tpf_aperture",
    "target_meta",
    "tpf_name",
    "tpf_urls",
    "varying_cards",
    "write_tpfs",
]

APERTURE_COLLECTED = 1
"""APERTURE bit: the pixel is on the detector (its data were collected)."""
APERTURE_PIPELINE = 2
"""APERTURE bit: the pixel is in the optimal (pipeline) aperture (``tpf.pipeline_mask``)."""
APERTURE_BACKGROUND = 4
"""APERTURE bit: the pixel is a background pixel (``tpf.background_mask``)."""

FFI_KEYWORDS = (
    "BACKAPP", "DEADAPP", "VIGNAPP", "DEADC", "INT_TIME", "READTIME", "FRAMETIM", "NUM_FRM",
    "NREADOUT", "TIMEDEL", "TIMEPIXR", "TIERRELA", "FXDOFF", "GAINA", "GAINB", "GAINC", "GAIND",
    "READNOIA", "READNOIB", "READNOIC", "READNOID", "MEANBLCA", "MEANBLCB", "MEANBLCC",
    "MEANBLCD", "TMOFST11", "TMOFST12", "TMOFST13", "TMOFST14", "TMOFST21", "TMOFST22",
    "TMOFST23", "TMOFST24", "TMOFST31", "TMOFST32", "TMOFST33", "TMOFST34", "TMOFST41",
    "TMOFST42", "TMOFST43", "TMOFST44",
)  # fmt: skip
"""Per-FFI keywords copied into the PIXELS header from the cube's WCS row, where it has them
(the FFI's cadence, frame and read-out keywords, as SPOC and astrocut TPFs carry them)."""

_FFI_COMMENTS = {
    "BACKAPP": "background is subtracted",
    "DEADAPP": "deadtime applied",
    "VIGNAPP": "vignetting or collimator correction applied",
    "DEADC": "deadtime correction",
    "INT_TIME": "[s] photon accumulation time per frame",
    "READTIME": "[s] readout time per frame",
    "FRAMETIM": "[s] frame time [INT_TIME + READTIME]",
    "NUM_FRM": "number of frames per time stamp",
    "NREADOUT": "number of read per cadence",
    "TIMEDEL": "[d] time resolution of data",
    "TIMEPIXR": "bin time beginning=0 middle=0.5 end=1",
    "TIERRELA": "[d] relative time error",
    "FXDOFF": "compression fixed offset",
}

_PER_FFI_KEYWORDS = ("CHECKSUM", "DATASUM", "NEXTEND", "FFIINDEX", "SIMDATA")
_INHERITED = (
    "TELESCOP", "INSTRUME", "OBJECT", "TICID", "SECTOR", "CAMERA", "CCD", "RADESYS", "EQUINOX",
    "RA_OBJ", "DEC_OBJ", "TIMEREF", "TASSIGN", "TIMESYS", "BJDREFI", "BJDREFF", "TIMEUNIT",
    "TELAPSE", "TSTART", "TSTOP", "DATE-OBS", "DATE-END",
)  # fmt: skip


TESS_FFI_DEFAULTS = {
    "DEADC": (0.792, "deadtime correction"),
    "INT_TIME": (1.98, "[s] exposure per frame"),
    "READTIME": (0.02, "[s] readout per frame"),
    "FRAMETIM": (2.0, "[s] frame time"),
    "TIERRELA": (1.16e-05, "[d] relative time error"),
}
"""TESS values written where the cube's FFI headers do not have the keyword, their comments
marked ``(TESS default)``: the 2-s frame (1.98 s exposed, 0.02 s read out)
and the FFI deadtime correction 0.8 · 0.99 (cosmic-ray mitigation keeps 8 of 10 frames), as
every SPOC FFI header has them."""

_DEFAULT_MARK = " (TESS default)"


def _stellar_cards(meta: dict) -> dict[str, tuple]:
    """Primary-header TIC cards of a target: one per stellar column the targets have; an
    unknown value (NaN) leaves the card without a value, as SPOC writes it."""
    out = {}
    for key, value in meta.get("stellar", {}).items():
        value = float(value)
        out[key] = (value if np.isfinite(value) else fits.card.UNDEFINED, STELLAR_KEYWORDS[key][1])
    return out


def _time_cards(meta: dict, cube_wcs: fits.Header) -> dict[str, tuple]:
    """Cadence, frame and exposure cards of the PIXELS header.

    Copied from the cube's FFI header (its WCS row) where it has them; ``TIMEDEL`` otherwise the
    median step of ``TIME``; ``TIMEPIXR`` is 0.5 (``TIME`` is mid-exposure); the frame keywords
    otherwise :data:`TESS_FFI_DEFAULTS`, marked; ``NUM_FRM`` otherwise ``TIMEDEL / FRAMETIM``;
    ``EXPOSURE`` the frames' summed ``TSTOP - TSTART`` times ``DEADC`` and ``LIVETIME``
    ``TELAPSE · DEADC``.
    """
    cards: dict[str, tuple] = {}
    for key in FFI_KEYWORDS:
        if key in cube_wcs and cube_wcs[key] is not None:
            cards[key] = (_scalar(cube_wcs[key]), _FFI_COMMENTS.get(key, "from the FFI header"))
    cards["TIMEPIXR"] = (0.5, "bin time beginning=0 middle=0.5 end=1")
    if "TIMEDEL" not in cards:
        steps = np.diff(np.asarray(meta["time"], dtype=float))
        steps = steps[np.isfinite(steps) & (steps > 0)]
        if len(steps):
            cards["TIMEDEL"] = (float(np.median(steps)), "[d] time resolution (median TIME step)")
    for key, (value, comment) in TESS_FFI_DEFAULTS.items():
        if key not in cards:
            cards[key] = (value, comment + _DEFAULT_MARK)
    if "NUM_FRM" not in cards and "TIMEDEL" in cards:
        frames = round(cards["TIMEDEL"][0] * 86400.0 / float(cards["FRAMETIM"][0]))
        cards["NUM_FRM"] = (int(frames), "frames per time stamp (TIMEDEL/FRAMETIM)")
    tstart = np.asarray(meta["tstart"], dtype=float)
    tstop = np.asarray(meta["tstop"], dtype=float)
    deadc = float(cards["DEADC"][0])
    on_source = float(np.nansum(tstop - tstart)) * deadc
    telapse = float(tstop[-1] - tstart[0])
    cards["TELAPSE"] = (telapse, "[d] TSTOP - TSTART")
    cards["LIVETIME"] = (telapse * deadc, "[d] TELAPSE multiplied by DEADC")
    cards["EXPOSURE"] = (on_source, "[d] time on source (sum of frames x DEADC)")
    return cards


def spoc_aperture(
    flux: np.ndarray,
    collected: np.ndarray,
    center: tuple[float, float],
    *,
    quality: np.ndarray | None = None,
    threshold: float = 3.0,
) -> np.ndarray:
    """APERTURE pixel bits in SPOC's convention for one cutout, from its pixels.

    Bit 1 (:data:`APERTURE_COLLECTED`): the pixel is on the image. Bit 2
    (:data:`APERTURE_PIPELINE`, lightkurve's ``pipeline_mask``): the pixels connected to the
    target's pixel that are more than ``threshold`` robust standard deviations above the median
    of the time-median image, within ``0.3 · min(rows, columns)`` (at least 1.5) pixels of the
    target; where the target's pixel is not that bright, the pixels within 1 pixel of the
    target. Bit 4 (:data:`APERTURE_BACKGROUND`, ``background_mask``): pixels on the image that
    are neither above the threshold nor next to a pixel that is. This is a threshold aperture,
    not SPOC's optimal aperture (which needs the PRF and the TIC).

    Parameters
    ----------
    flux : numpy.ndarray
        ``(time, row, column)``.
    collected : numpy.ndarray
        ``(row, column)``, non-zero on the image.
    center : (float, float)
        0-based (column, row) of the target in the cutout.
    quality : numpy.ndarray, optional
        Per-frame quality flags: only frames with 0 make the median image (all frames when none
        has 0).
    threshold : float, optional
        Robust standard deviations above the median.

    Returns
    -------
    numpy.ndarray
        int32 ``(row, column)``.
    """
    import warnings

    from scipy import ndimage

    on = np.asarray(collected) != 0
    frames = np.asarray(flux, dtype=float)
    if quality is not None and (np.asarray(quality) == 0).any():
        frames = frames[np.asarray(quality) == 0]
    if not len(frames):
        image = np.full(on.shape, np.nan)
    elif np.isfinite(frames).all():
        image = np.median(frames, axis=0)  # ~10× faster than nanmedian
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels off the image
            image = np.nanmedian(frames, axis=0)
    good = on & np.isfinite(image)
    ny, nx = on.shape
    rows, cols = np.mgrid[0:ny, 0:nx]
    distance = np.hypot(cols - center[0], rows - center[1])
    bits = on.astype(np.int32) * APERTURE_COLLECTED
    if not good.any():
        return bits
    sky = float(np.median(image[good]))
    spread = 1.4826 * float(np.median(np.abs(image[good] - sky)))
    if spread == 0:
        spread = float(np.std(image[good]))
    bright = good & (image > sky + threshold * spread) if spread > 0 else np.zeros_like(good)
    seed = (int(np.floor(center[1] + 0.5)), int(np.floor(center[0] + 0.5)))
    inside = 0 <= seed[0] < ny and 0 <= seed[1] < nx
    if inside and bright[seed]:
        labels, _ = ndimage.label(bright, structure=np.ones((3, 3)))
        reach = max(1.5, 0.3 * min(ny, nx))
        pipeline = (labels == labels[seed]) & (distance <= reach)
    else:
        pipeline = good & (distance <= 1.0)
    near_source = ndimage.binary_dilation(bright | pipeline, structure=np.ones((3, 3)))
    background = good & ~near_source
    out = bits | pipeline * APERTURE_PIPELINE | background * APERTURE_BACKGROUND
    return out.astype(np.int32)


def tpf_aperture(flux: np.ndarray, meta: dict) -> np.ndarray:
    """The APERTURE image of a target's TPF: ``meta["aperture"]`` (1 on the image) with the
    pipeline and background bits of :func:`spoc_aperture` where it has none of its own.

    An aperture that already has bit 2 or bit 4 (one computed by a photometry step) keeps
    it; a missing bit is filled in from :func:`spoc_aperture`, background pixels never
    overlapping the given pipeline aperture.
    """
    given = np.asarray(meta["aperture"], dtype=np.int32)
    has_pipeline = bool((given & APERTURE_PIPELINE).any())
    has_background = bool((given & APERTURE_BACKGROUND).any())
    if has_pipeline and has_background:
        return given
    center = (meta.get("center_column", np.nan), meta.get("center_row", np.nan))
    center = (float(center[0]) - meta["corner_column"], float(center[1]) - meta["corner_row"])
    if not np.all(np.isfinite(center)):
        full = _wcs_from_text(meta["cube_wcs"])
        x, y = full.all_world2pix([[meta["ra"], meta["dec"]]], 0)[0]
        center = (float(x) - meta["corner_column"], float(y) - meta["corner_row"])
    computed = spoc_aperture(flux, given & APERTURE_COLLECTED, center, quality=meta.get("quality"))
    out = given & APERTURE_COLLECTED
    out |= given & APERTURE_PIPELINE if has_pipeline else computed & APERTURE_PIPELINE
    background = computed & APERTURE_BACKGROUND
    if has_background:
        background = given & APERTURE_BACKGROUND
    elif has_pipeline:
        background = np.where(given & APERTURE_PIPELINE, 0, background)
    return (out | background).astype(np.int32)


def tpf_name(ticid, sector: int, camera: int, ccd: int, size: tuple[int, int]) -> str:
    """File name of a target's TPF: ``tic{ticid}_s{sector:04d}-{camera}-{ccd}_{ny}x{nx}_tpf.fits``,
    with anything but letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``."""
    tic = re.sub(r"[^A-Za-z0-9._-]", "_", str(ticid).strip()) or "unknown"
    return f"tic{tic}_s{int(sector):04d}-{int(camera)}-{int(ccd)}_{size[0]}x{size[1]}_tpf.fits"


def tpf_urls(ds: xr.Dataset, dest: str) -> list[str]:
    """The TPF URL of every target of a :func:`~cloudlab.cutouts.make_cutouts` dataset under
    ``dest`` (known before any pixel is read), named by :func:`tpf_name`."""
    dest = str(dest).rstrip("/")
    size = (ds.sizes["row"], ds.sizes["column"])
    columns = (ds[name].values for name in ("ticid", "sector", "camera", "ccd"))
    return [
        f"{dest}/{tpf_name(_scalar(t), s, c, d, size)}" for t, s, c, d in zip(*columns, strict=True)
    ]


LINEAR_WCS_COMMENTS = {
    "WCSAXES": "number of WCS axes",
    "CTYPE1": "right ascension, gnomonic projection",
    "CTYPE2": "declination, gnomonic projection",
    "CUNIT1": "unit of CRVAL1 and CDELT1",
    "CUNIT2": "unit of CRVAL2 and CDELT2",
    "CRVAL1": "[deg] RA at the reference pixel",
    "CRVAL2": "[deg] Dec at the reference pixel",
    "CRPIX1": "reference pixel (the cutout centre)",
    "CRPIX2": "reference pixel (the cutout centre)",
    "CDELT1": "[deg] pixel scale",
    "CDELT2": "[deg] pixel scale",
    "PC1_1": "linear transformation matrix",
    "PC1_2": "linear transformation matrix",
    "PC2_1": "linear transformation matrix",
    "PC2_2": "linear transformation matrix",
}


def linear_wcs(
    full: WCS, size: tuple[int, int], corners: np.ndarray
) -> list[tuple[dict, float, float]]:
    """Linear TAN WCS of cutouts (tangent at each cutout's centre) and how far each departs from
    the full WCS, for many cutouts of one image at once.

    The CD matrix is the derivative of the full WCS's tangent-plane coordinates at the cutout
    centre (central differences of ±0.5 px). The departure is measured in that tangent plane over
    every pixel of the cutout.

    Parameters
    ----------
    full : astropy.wcs.WCS
        The full (SIP) WCS of the image the cutouts come from.
    size : (int, int)
        (rows, columns).
    corners : array_like
        ``(n, 2)`` 0-based (column, row) of each cutout's first pixel in ``full``'s image.

    Returns
    -------
    list of (dict, float, float)
        Per cutout: the WCS cards (``CTYPE``, ``CRVAL``, ``CRPIX``, ``CDELT``, ``PC``; comments
        in :data:`LINEAR_WCS_COMMENTS`), the maximum departure (deg) and the root-sum-square of
        the departures (deg).
    """
    ny, nx = size
    corners = np.atleast_2d(np.asarray(corners, dtype=float))
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    h = 0.5
    yy, xx = np.mgrid[0:ny, 0:nx]
    local = np.concatenate(
        [
            [[cx, cy], [cx + h, cy], [cx - h, cy], [cx, cy + h], [cx, cy - h]],
            np.column_stack([xx.ravel(), yy.ravel()]),
        ]
    ).astype(float)
    pix = (local[None, :, :] + corners[:, None, :]).reshape(-1, 2)
    world = full.all_pix2world(pix, 0).reshape(len(corners), len(local), 2)
    ra0, dec0 = world[:, 0, 0], world[:, 0, 1]
    xi, eta = gnomonic(world[..., 0], world[..., 1], ra0[:, None], dec0[:, None])
    cd = np.empty((len(corners), 2, 2))
    cd[:, 0, 0], cd[:, 1, 0] = (xi[:, 1] - xi[:, 2]) / (2 * h), (eta[:, 1] - eta[:, 2]) / (2 * h)
    cd[:, 0, 1], cd[:, 1, 1] = (xi[:, 3] - xi[:, 4]) / (2 * h), (eta[:, 3] - eta[:, 4]) / (2 * h)
    dx, dy = local[5:, 0] - cx, local[5:, 1] - cy
    pred_xi = cd[:, 0, 0, None] * dx + cd[:, 0, 1, None] * dy
    pred_eta = cd[:, 1, 0, None] * dx + cd[:, 1, 1, None] * dy
    sep = np.hypot(xi[:, 5:] - pred_xi, eta[:, 5:] - pred_eta)
    scale = np.sqrt(np.abs(np.linalg.det(cd)))
    out = []
    for i in range(len(corners)):
        cdelt = np.array([-scale[i], scale[i]])
        pc = cd[i] / cdelt[:, None]
        cards = {
            "WCSAXES": 2,
            "CTYPE1": "RA---TAN",
            "CTYPE2": "DEC--TAN",
            "CUNIT1": "deg",
            "CUNIT2": "deg",
            "CRVAL1": float(ra0[i]),
            "CRVAL2": float(dec0[i]),
            "CRPIX1": cx + 1,
            "CRPIX2": cy + 1,
            "CDELT1": float(cdelt[0]),
            "CDELT2": float(cdelt[1]),
            "PC1_1": float(pc[0, 0]),
            "PC1_2": float(pc[0, 1]),
            "PC2_1": float(pc[1, 0]),
            "PC2_2": float(pc[1, 1]),
        }
        out.append((cards, float(sep[i].max()), float(np.sqrt((sep[i] ** 2).sum()))))
    return out


def _column_wcs_cards(n: int, lin: dict, corner: tuple[int, int]) -> list[tuple]:
    """Column-WCS keywords of 2-D column ``n`` (the ones astrocut ≥ 1.0 forgets)."""
    c0, r0 = corner
    return [
        (f"WCAX{n}", 2, "number of WCS axes"),
        (f"1CTYP{n}", lin["CTYPE1"], "right ascension coordinate type"),
        (f"2CTYP{n}", lin["CTYPE2"], "declination coordinate type"),
        (f"1CRPX{n}", lin["CRPIX1"], "[pixel] reference pixel along image axis 1"),
        (f"2CRPX{n}", lin["CRPIX2"], "[pixel] reference pixel along image axis 2"),
        (f"1CRVL{n}", lin["CRVAL1"], "[deg] right ascension at reference pixel"),
        (f"2CRVL{n}", lin["CRVAL2"], "[deg] declination at reference pixel"),
        (f"1CUNI{n}", "deg", "physical unit in column dimension"),
        (f"2CUNI{n}", "deg", "physical unit in row dimension"),
        (f"1CDLT{n}", lin["CDELT1"], "[deg] pixel scale in RA dimension"),
        (f"2CDLT{n}", lin["CDELT2"], "[deg] pixel scale in DEC dimension"),
        (f"11PC{n}", lin["PC1_1"], "coordinate transformation matrix element"),
        (f"12PC{n}", lin["PC1_2"], "coordinate transformation matrix element"),
        (f"21PC{n}", lin["PC2_1"], "coordinate transformation matrix element"),
        (f"22PC{n}", lin["PC2_2"], "coordinate transformation matrix element"),
        (f"WCSN{n}P", "PHYSICAL", "table column WCS name"),
        (f"WCAX{n}P", 2, "table column physical WCS dimensions"),
        (f"1CTY{n}P", "RAWX", "table column physical WCS axis 1 type, CCD col"),
        (f"2CTY{n}P", "RAWY", "table column physical WCS axis 2 type, CCD row"),
        (f"1CUN{n}P", "PIXEL", "table column physical WCS axis 1 unit"),
        (f"2CUN{n}P", "PIXEL", "table column physical WCS axis 2 unit"),
        (f"1CRV{n}P", int(c0) + 1, "table column physical WCS ax 1 ref value"),
        (f"2CRV{n}P", int(r0) + 1, "table column physical WCS ax 2 ref value"),
        (f"1CDL{n}P", 1.0, "table column physical WCS a1 step"),
        (f"2CDL{n}P", 1.0, "table column physical WCS a2 step"),
        (f"1CRP{n}P", 1, "table column physical WCS a1 reference"),
        (f"2CRP{n}P", 1, "table column physical WCS a2 reference"),
    ]


def build_tpf(
    flux: np.ndarray,
    flux_err: np.ndarray,
    *,
    meta: dict,
    linear: tuple[dict, float, float] | None = None,
) -> fits.HDUList:
    """One target's TPF as an HDUList.

    Parameters
    ----------
    flux, flux_err : numpy.ndarray
        ``(time, row, column)`` e-/s.
    meta : dict
        From :func:`target_meta`.
    linear : (dict, float, float), optional
        The target's :func:`linear_wcs` result, when already computed.

    Returns
    -------
    astropy.io.fits.HDUList
        PRIMARY, PIXELS (astrocut's 12 columns in its order, then an empty RESERVED
        column), APERTURE.
    """
    from cloudlab import __version__

    n_t, ny, nx = flux.shape
    meta = {**meta, "aperture": tpf_aperture(flux, meta)}
    primary = fits.Header.fromstring(meta["primary"], sep="\n")
    for key in _PER_FFI_KEYWORDS:
        primary.remove(key, ignore_missing=True, remove_all=True)
    tstart, tstop = meta["tstart"], meta["tstop"]
    ticid = meta["ticid"]
    primary["EXTNAME"] = "PRIMARY"
    primary.setdefault("TELESCOP", "TESS")
    primary["CREATOR"] = (
        "cloudlab TargetPixelExporter",
        "program that made this file",
    )
    primary["PROCVER"] = (str(__version__), "cloudlab version")
    primary["FFI_TYPE"] = ("SPOC", "type of FFI the cube was made from")
    for key, comment in (("SECTOR", "Observing sector"), ("CAMERA", "Camera number"),
                         ("CCD", "CCD chip number")):  # fmt: skip
        value = int(meta[key.lower()])
        primary[key] = (
            (value, comment) if value > 0 else (fits.card.UNDEFINED, comment + " unknown")
        )
    primary["OBJECT"] = (f"TIC {ticid}", "string version of target id")
    primary["TICID"] = (_ticid_value(ticid), "unique TESS target identifier")
    primary["RA_OBJ"] = (float(meta["ra"]), "[deg] right ascension")
    primary["DEC_OBJ"] = (float(meta["dec"]), "[deg] declination")
    primary["TIMEREF"] = ("SOLARSYSTEM", "barycentric correction applied to times")
    primary["TASSIGN"] = ("SPACECRAFT", "where time is assigned")
    primary["TIMESYS"] = ("TDB", "time system is Barycentric Dynamical Time (TDB)")
    primary["BJDREFI"] = (2457000, "integer part of BTJD reference date")
    primary["BJDREFF"] = (0.0, "fraction of the day in BTJD reference date")
    primary["TIMEUNIT"] = ("d", "time unit for TIME, TSTART and TSTOP")
    primary["MJDREFI"] = (56999, "MJD of BTJD reference date, integer part")
    primary["MJDREFF"] = (0.5, "MJD of BTJD reference date, fraction")
    primary["TSTART"] = (float(tstart[0]), "observation start time in BTJD of first frame")
    primary["TSTOP"] = (float(tstop[-1]), "observation stop time in BTJD of last frame")
    primary["TELAPSE"] = (float(tstop[-1] - tstart[0]), "[d] TSTOP - TSTART")
    cube_wcs = fits.Header.fromstring(meta["cube_wcs"], sep="\n")
    primary["RADESYS"] = (str(cube_wcs.get("RADESYS", "ICRS")), "reference frame of coordinates")
    if "EQUINOX" in cube_wcs:
        primary["EQUINOX"] = (float(cube_wcs["EQUINOX"]), "equinox of celestial coordinates")
    for key, card in _stellar_cards(meta).items():
        primary[key] = card

    corner = (meta["corner_column"], meta["corner_row"])
    if linear is None:
        linear = linear_wcs(_wcs_from_text(meta["cube_wcs"]), (ny, nx), [corner])[0]
    lin, msep, sig = linear
    dim = f"({nx},{ny})"
    n_pix = nx * ny
    zeros = np.zeros((n_t, ny, nx), dtype=np.float32)
    ffi = np.asarray(meta["ffi_file"]).astype(str)
    width = max(1, max(len(s) for s in ffi))
    columns = [
        fits.Column("TIME", "D", unit="BJD - 2457000, days", array=meta["time"]),
        fits.Column("TIMECORR", "E", unit="d", array=meta["barycorr"]),
        fits.Column("CADENCENO", "J", array=np.arange(1, n_t + 1, dtype=np.int32)),
        fits.Column(
            "RAW_CNTS",
            f"{n_pix}J",
            unit="count",
            dim=dim,
            null=-1,
            array=np.full((n_t, ny, nx), -1, dtype=np.int32),
        ),  # fmt: skip
        fits.Column("FLUX", f"{n_pix}E", unit="e-/s", dim=dim, array=flux.astype(np.float32)),
        fits.Column(
            "FLUX_ERR", f"{n_pix}E", unit="e-/s", dim=dim, array=flux_err.astype(np.float32)
        ),  # fmt: skip
        fits.Column("FLUX_BKG", f"{n_pix}E", unit="e-/s", dim=dim, array=zeros),
        fits.Column("FLUX_BKG_ERR", f"{n_pix}E", unit="e-/s", dim=dim, array=zeros),
        fits.Column("QUALITY", "J", disp="B16.16", array=meta["quality"].astype(np.int32)),
        fits.Column("POS_CORR1", "E", unit="pixel", array=np.zeros(n_t, np.float32)),
        fits.Column("POS_CORR2", "E", unit="pixel", array=np.zeros(n_t, np.float32)),
        fits.Column("FFI_FILE", f"{width}A", unit="pixel", array=ffi),
        # no data: lightkurve's TargetPixelFile.cutout gives the last column the shape
        # (0, columns), which corrupts the table it writes unless that column is empty
        fits.Column("RESERVED", "0E", array=np.zeros((n_t, 0), np.float32)),
    ]
    pixels = fits.BinTableHDU.from_columns(columns, name="PIXELS")
    ph = pixels.header
    ph["INHERIT"] = (True, "inherit the primary header")
    for key in _INHERITED:
        if key in primary:
            ph[key] = (primary[key], primary.comments[key])
    for key, (value, comment) in _time_cards(meta, cube_wcs).items():
        ph[key] = (value, comment)
    ph["WCS_FFI"] = (meta["wcs_ffi"], "FFI of cutout WCS")
    for n in range(4, 9):
        for key, value, comment in _column_wcs_cards(n, lin, corner):
            ph[key] = (value, comment)

    aperture = fits.ImageHDU(meta["aperture"].astype(np.int32), name="APERTURE")
    ah = aperture.header
    ah["INHERIT"] = (True, "inherit the primary header")
    for key, value in lin.items():
        ah[key] = (value, LINEAR_WCS_COMMENTS[key])
    for key, value, comment in _physical_cards(corner):
        ah[key] = (value, comment)
    for header, cards in zip((primary, ph, ah), varying_cards(meta, lin, msep, sig), strict=True):
        for key, value in cards.items():
            header[key] = value
    return fits.HDUList([fits.PrimaryHDU(header=primary), pixels, aperture])


def varying_cards(meta: dict, lin: fits.Header, msep: float, sig: float) -> list[dict]:
    """The cards that differ between targets of one cube, per HDU (key → (value, comment))."""
    ticid = meta["ticid"]
    ident = {
        "OBJECT": (f"TIC {ticid}", "string version of target id"),
        "TICID": (_ticid_value(ticid), "unique TESS target identifier"),
        "RA_OBJ": (float(meta["ra"]), "[deg] right ascension"),
        "DEC_OBJ": (float(meta["dec"]), "[deg] declination"),
    }
    corner = (meta["corner_column"], meta["corner_row"])
    columns = {}
    for n in range(4, 9):
        for key, value, comment in _column_wcs_cards(n, lin, corner):
            columns[key] = (value, comment)
    aperture = {key: (value, LINEAR_WCS_COMMENTS[key]) for key, value in lin.items()}
    aperture.update({key: (value, comment) for key, value, comment in _physical_cards(corner)})
    ap = np.asarray(meta["aperture"])
    aperture["NPIXMISS"] = (int((ap == 0).sum()), "number of pixels off the detector")
    aperture["NPIXSAP"] = (
        int((ap & APERTURE_PIPELINE > 0).sum()),
        "number of pixels in the aperture (bit 2)",
    )
    aperture["WCS_MSEP"] = (msep, "[deg] max offset between cutout WCS and FFI WCS")
    aperture["WCS_SIG"] = (sig, "[deg] error measurement of cutout WCS fit")
    return [{**ident, **_stellar_cards(meta)}, {**ident, **columns}, aperture]


def _physical_cards(corner: tuple[int, int]) -> list[tuple]:
    """RAWX/RAWY physical WCS cards of a cutout: 1-based CCD column/row of its first pixel."""
    c0, r0 = corner
    return [
        ("WCSNAMEP", "PHYSICAL", "name of world coordinate system alternate P"),
        ("WCSAXESP", 2, "number of WCS physical axes"),
        ("CTYPE1P", "RAWX", "physical WCS axis 1 type CCD col"),
        ("CUNIT1P", "PIXEL", "physical WCS axis 1 unit"),
        ("CRPIX1P", 1, "reference CCD column"),
        ("CRVAL1P", int(c0) + 1, "value at reference CCD column"),
        ("CDELT1P", 1.0, "physical WCS axis 1 step"),
        ("CTYPE2P", "RAWY", "physical WCS axis 2 type CCD row"),
        ("CUNIT2P", "PIXEL", "physical WCS axis 2 units"),
        ("CRPIX2P", 1, "reference CCD row"),
        ("CRVAL2P", int(r0) + 1, "value at reference CCD row"),
        ("CDELT2P", 1.0, "physical WCS axis 2 step"),
    ]


def _scalar(value):
    return value.item() if isinstance(value, np.generic) else value


def _ticid_value(ticid):
    try:
        return int(ticid)
    except (TypeError, ValueError):
        return str(ticid)


def target_meta(ds: xr.Dataset, target: int) -> dict:
    """Everything but the pixels that a target's TPF needs, from a :func:`make_cutouts` dataset."""
    k = int(ds["cube_index"].values[target])
    return {
        "ticid": _scalar(ds["ticid"].values[target]),
        "ra": float(ds["ra"].values[target]),
        "dec": float(ds["dec"].values[target]),
        "sector": int(ds["sector"].values[target]),
        "camera": int(ds["camera"].values[target]),
        "ccd": int(ds["ccd"].values[target]),
        "corner_column": int(ds["corner_column"].values[target]),
        "corner_row": int(ds["corner_row"].values[target]),
        "primary": str(ds["cube_primary"].values[k]),
        "cube_index": k,
        "cube_wcs": str(ds["cube_wcs"].values[k]),
        "wcs_ffi": str(ds["cube_wcs_ffi"].values[k]),
        "time": ds["cube_time"].values[k],
        "tstart": ds["cube_tstart"].values[k],
        "tstop": ds["cube_tstop"].values[k],
        "barycorr": ds["cube_barycorr"].values[k],
        "quality": ds["cube_quality"].values[k],
        "ffi_file": ds["cube_ffi_file"].values[k],
        "aperture": ds["aperture"].values[target],
        "center_column": _coordinate(ds, "center_column", target),
        "center_row": _coordinate(ds, "center_row", target),
        "stellar": {
            key: float(ds[key.lower()].values[target])
            for key in STELLAR_KEYWORDS
            if key.lower() in ds.variables
        },
    }


def _coordinate(ds: xr.Dataset, name: str, target: int) -> float:
    """A per-target float of ``ds`` (NaN where the dataset does not have it)."""
    return float(ds[name].values[target]) if name in ds.variables else np.nan


class TPFWriteError(StorageError):
    """Some TPFs could not be written; the others were.

    Attributes
    ----------
    urls : list of str
        Every target's TPF URL, in target order.
    failed : dict
        URL → error message of the files not written.
    """

    def __init__(self, urls: list[str], failed: dict[str, str]):
        self.urls = urls
        self.failed = failed
        shown = "; ".join(f"{u}: {e}" for u, e in list(failed.items())[:5])
        super().__init__(f"{len(failed)} TPF(s) not written: {shown}")


class TPFTemplate:
    """The bytes of one TPF, re-used for every target of the same cube and size.

    astropy spends ~50 ms building a TPF's headers and table; all targets of a cube share all of
    it except the cards of :func:`varying_cards` and the pixel data. :meth:`render` copies the
    template and overwrites those 80-byte cards and the FLUX, FLUX_ERR and APERTURE bytes in
    place, giving the same bytes as :func:`build_tpf` (tested).
    """

    def __init__(self, flux: np.ndarray, flux_err: np.ndarray, meta: dict, linear=None):
        buf = io.BytesIO()
        build_tpf(flux, flux_err, meta=meta, linear=linear).writeto(buf)
        self.blob = buf.getvalue()
        self.shape = flux.shape
        with fits.open(io.BytesIO(self.blob)) as hdul:
            infos = [hdu.fileinfo() for hdu in hdul]
            self.row_dtype = hdul[1].data.dtype  # the on-disk (big-endian) record layout
            table_bytes = len(hdul[1].data) * hdul[1].data.itemsize
        self.slots = [self._card_slots(info["hdrLoc"], info["datLoc"]) for info in infos]
        self.table_offset = infos[1]["datLoc"]
        self.aperture_offset = infos[2]["datLoc"]
        if self.row_dtype.itemsize * self.shape[0] != table_bytes:
            raise InputError(
                "TPF template: the PIXELS table does not have build_tpf's layout "
                "(FLUX, FLUX_ERR columns, APERTURE image)"
            )

    def _card_slots(self, start: int, stop: int) -> dict[str, int]:
        slots = {}
        for pos in range(start, stop, 80):
            key = self.blob[pos : pos + 8].decode("ascii").strip()
            if key and key not in slots and self.blob[pos + 8 : pos + 10] == b"= ":
                slots[key] = pos
        return slots

    def render(self, flux: np.ndarray, flux_err: np.ndarray, meta: dict, linear=None) -> bytes:
        """The TPF of another target of the same cube and size, as bytes."""
        if flux.shape != self.shape:
            raise InputError(
                f"TPF template is for cutouts of {self.shape}, got {flux.shape}: "
                "use one template per cube and cutout size"
            )
        if linear is None:
            corner = (meta["corner_column"], meta["corner_row"])
            linear = linear_wcs(_wcs_from_text(meta["cube_wcs"]), self.shape[1:], [corner])[0]
        lin, msep, sig = linear
        meta = {**meta, "aperture": tpf_aperture(flux, meta)}
        buf = bytearray(self.blob)
        for slots, cards in zip(self.slots, varying_cards(meta, lin, msep, sig), strict=True):
            for key, (value, comment) in cards.items():
                image = _card_image(key, value, comment)
                if key not in slots:
                    raise InputError(f"TPF template: card {key} is not in the template header")
                buf[slots[key] : slots[key] + 80] = image
        rows = np.frombuffer(
            buf, dtype=self.row_dtype, count=self.shape[0], offset=self.table_offset
        )
        rows["FLUX"] = flux.astype(np.float32).reshape(rows["FLUX"].shape)
        rows["FLUX_ERR"] = flux_err.astype(np.float32).reshape(rows["FLUX_ERR"].shape)
        n_pix = self.shape[1] * self.shape[2]
        aperture = np.frombuffer(buf, dtype=">i4", count=n_pix, offset=self.aperture_offset)
        aperture[:] = np.asarray(meta["aperture"], dtype=np.int32).ravel()
        return bytes(buf)


def _card_image(key: str, value, comment: str) -> bytes:
    """The 80-byte image astropy writes for a short card (astropy's own formatting rules);
    falls back to ``fits.Card`` for anything unusual (astropy's Card is ~30 µs per card)."""
    if isinstance(value, str):
        text = "''" if value == "" else f"'{value.replace(chr(39), chr(39) * 2):8}'"
        field = f"{text:20}"
    elif isinstance(value, bool | np.bool_):
        field = f"{'T' if value else 'F':>20}"
    elif isinstance(value, int | np.integer):
        field = f"{int(value):>20d}"
    elif isinstance(value, float | np.floating):
        text = str(float(value)).replace("e", "E")
        if len(text) > 20:
            cut = text.find("E")
            text = text[:20] if cut < 0 else text[: 20 - (len(text) - cut)] + text[cut:]
        field = f"{text:>20}"
    else:
        field = None
    image = None
    if field is not None and len(key) <= 8:
        image = f"{key.upper():8}= {field}" + (f" / {comment}" if comment else "")
    if image is None or len(image) > 80:
        image = fits.Card(key, value, comment).image
        if len(image) != 80:
            raise InputError(f"TPF card {key}={value!r} does not fit in 80 characters")
    return f"{image:80}".encode("ascii")


def _render(templates: dict, flux, flux_err, meta: dict, linear) -> bytes:
    """One TPF's bytes: from the cube's template, or through astropy where it does not fit."""
    k = meta["cube_index"]
    try:
        if k not in templates:
            templates[k] = TPFTemplate(flux, flux_err, meta, linear)
        return templates[k].render(flux, flux_err, meta, linear)
    except ValueError:
        buf = io.BytesIO()
        build_tpf(flux, flux_err, meta=meta, linear=linear).writeto(buf)
        return buf.getvalue()


def _linear_for(metas: list[dict], size: tuple[int, int]) -> list[tuple[dict, float, float]]:
    """:func:`linear_wcs` of every target, one vectorised call per cube."""
    out: list = [None] * len(metas)
    by_cube: dict[int, list[int]] = {}
    for i, meta in enumerate(metas):
        by_cube.setdefault(meta["cube_index"], []).append(i)
    for members in by_cube.values():
        full = _wcs_from_text(metas[members[0]]["cube_wcs"])
        corners = [(metas[i]["corner_column"], metas[i]["corner_row"]) for i in members]
        for i, lin in zip(members, linear_wcs(full, size, corners), strict=True):
            out[i] = lin
    return out


def _write_group(flux, flux_err, metas, urls, overwrite, storage_options) -> dict[str, str]:
    """Write a chunk of TPFs; one failure does not stop the others. Returns URL → error.

    ``overwrite`` is a bool, or the set of URLs that may be replaced (damaged existing files).
    """
    failed = {}
    templates: dict[int, TPFTemplate] = {}
    linears = _linear_for(metas, flux.shape[2:])
    for i, (meta, url) in enumerate(zip(metas, urls, strict=True)):
        replace = overwrite if isinstance(overwrite, bool) else url in overwrite
        try:
            data = _render(templates, flux[i], flux_err[i], meta, linears[i])
            storage.write_bytes(url, data, overwrite=replace, storage_options=storage_options)
        except Exception as exc:  # noqa: BLE001 - reported per file to the caller
            failed[url] = f"{type(exc).__name__}: {exc}"
    return failed


def write_tpfs(
    ds: xr.Dataset,
    dest: str,
    *,
    overwrite: bool = False,
    skip_existing: bool = True,
    storage_options: dict | None = None,
    progress: bool = False,
) -> list[str]:
    """Write one TPF per target of ``ds`` under ``dest`` (a sink: computes the cutouts).

    Each task computes one chunk of targets and writes their files from the worker, so on a
    cluster the pixels never pass through the client. Each TPF is written in one step
    (:func:`cloudlab.storage.write_bytes`), so none is ever half-written.

    A TPF directory is a collection of per-target products, so by default a run resumes: TPFs
    that exist are kept and their targets are not computed again. With ``skip_existing=False``
    the storage module's policy applies to the whole set: existing TPFs are refused (an
    :class:`~cloudlab.errors.OverwriteError` naming them) before anything is computed.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`cloudlab.cutouts.make_cutouts`.
    dest : str
        Directory URL or local path.
    overwrite : bool, optional
        Rewrite files that exist (each replaced only once its new bytes are complete).
    skip_existing : bool, optional
        Without ``overwrite``: keep existing TPFs and skip their targets (default), or refuse.
    storage_options : dict, optional
    progress : bool, optional
        Show a progress bar (``distributed.progress`` on a cluster, else dask's ProgressBar).

    Returns
    -------
    list of str
        The TPF URL of every target, in ``ds.target`` order (existing ones included).

    Raises
    ------
    InputError
        Several targets map to the same file name.
    OverwriteError
        ``skip_existing=False`` and some TPFs exist (raised before any computation).
    TPFWriteError
        Some files could not be written (after all others were); it carries the URLs and the
        error of each failed file.
    """
    urls = tpf_urls(ds, dest)
    size = (ds.sizes["row"], ds.sizes["column"])
    if len(set(urls)) != len(urls):
        dupes = sorted({u for u in urls if urls.count(u) > 1})
        raise InputError(
            f"write_tpfs: several targets map to the same file: {dupes[:5]}; "
            "give each target a distinct ticid"
        )
    done: set[str] = set()
    damaged: set[str] = set()
    blocked: dict[str, str] = {}
    if overwrite:
        todo = list(range(len(urls)))
    elif skip_existing:
        shape = (ds.sizes["time"], *size)
        for url in storage.existing(urls, storage_options=storage_options):
            problem = _tpf_problem(url, shape, storage_options)
            if problem is None:
                done.add(url)
            elif problem.startswith("a directory"):
                blocked[url] = f"{problem}; remove it or write elsewhere"
            else:
                damaged.add(url)
        todo = [i for i, url in enumerate(urls) if url not in done and url not in blocked]
    else:
        storage.check_writable(urls, overwrite=False, storage_options=storage_options)
        todo = list(range(len(urls)))
    if not todo:
        if blocked:
            raise TPFWriteError(urls, blocked)
        return urls
    sub = ds.isel(target=todo)
    flux, flux_err = (_as_dask(sub[name].data) for name in ("flux", "flux_err"))
    flux_blocks = flux.to_delayed().ravel()
    err_blocks = flux_err.to_delayed().ravel()
    bounds = np.cumsum((0, *flux.chunks[0]))
    tasks = []
    for b, (fb, eb) in enumerate(zip(flux_blocks, err_blocks, strict=True)):
        idx = range(bounds[b], bounds[b + 1])
        metas = [target_meta(sub, j) for j in idx]
        group_urls = [urls[todo[j]] for j in idx]
        tasks.append(
            dask.delayed(_write_group)(
                fb, eb, metas, group_urls, overwrite or damaged, storage_options
            )
        )
    from cloudlab.cluster import compute

    results = compute(*tasks, progress=progress)
    failed = dict(blocked)
    failed.update((u, e) for group in results for u, e in group.items())
    if failed:
        raise TPFWriteError(urls, failed)
    return urls


def _tpf_problem(url: str, shape: tuple[int, int, int], storage_options: dict | None) -> str | None:
    """Why the existing file at ``url`` is not a complete TPF of ``shape`` (None when it is)."""
    fs, path = storage.resolve(url, storage_options=storage_options)
    if fs.isdir(path):
        return "a directory is in the way of the TPF"
    try:
        with fs.open(path, "rb") as f, fits.open(f, lazy_load_hdus=True) as hdul:
            header = hdul[1].header
            flux = hdul[1].columns["FLUX"]
            dims = flux.dim.strip("()").split(",") if isinstance(flux.dim, str) else ()
            found = (header.get("NAXIS2"), *(int(d) for d in reversed(dims)))
    except Exception as exc:  # noqa: BLE001 - any reason to distrust the file means rewrite it
        return f"damaged ({type(exc).__name__}: {exc})"
    if tuple(found) != tuple(shape):
        return f"shape {found}, not {shape}"
    return None


def _as_dask(data) -> da.Array:
    """Computed (numpy) cutouts are written in chunks of 64 targets too."""
    if isinstance(data, da.Array):
        return data.rechunk({1: -1, 2: -1, 3: -1})
    return da.from_array(data, chunks=(64, -1, -1, -1))
