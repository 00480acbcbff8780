"""Sky position → (camera, CCD, pixel) for a whole target list at once, offline."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cloudlab.cutouts.pointing import radec_to_pixel, sector_geometry
from cloudlab.errors import REASON, STATUS, InputError, check_on_error
from cloudlab.io.tess import CubeMeta, cube_meta, cube_url

__all__ = ["OFF_SILICON_STATUS", "OffSilicon", "check_targets", "locate", "wcs_pixels"]

OFF_SILICON_STATUS = {
    "off_silicon": "not on a science pixel of any CCD (or of the cubes found)",
    "collateral": "on a CCD's collateral (non-science) pixels",
    "bad_coordinates": "NaN or out-of-range ra/dec (only with on_error='skip')",
}
"""The ``status`` codes of :class:`OffSilicon` and what they mean."""

_PREFILTER_DEG = 9.0
"""Targets farther than this from a CCD's centre are not tested against its WCS (the CCD's
half-diagonal is ≈ 8.5°)."""


class OffSilicon:
    """The targets :func:`locate` found on no science pixel, with a status and a reason.

    Kept in ``DataFrame.attrs``, which pandas deep-copies and compares on many operations: this
    wrapper is immutable (copies are the same object) so that costs nothing for 100,000 targets.
    """

    def __init__(self, frame: pd.DataFrame):
        self._frame = frame

    def to_frame(self) -> pd.DataFrame:
        """A copy as a DataFrame: ``ticid``, ``ra``, ``dec``, ``status``, ``reason``.

        ``status`` is a code of :data:`OFF_SILICON_STATUS`, ``reason`` a sentence.
        """
        return self._frame.copy()

    def __len__(self) -> int:
        return len(self._frame)

    def __deepcopy__(self, memo) -> OffSilicon:
        return self

    def __eq__(self, other) -> bool:
        return self is other

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"OffSilicon({len(self)} targets)"


def check_targets(targets: pd.DataFrame, *, on_error: str = "raise") -> pd.DataFrame:
    """Validate a target table: ``ticid``, finite ``ra``/``dec`` in range.

    Parameters
    ----------
    targets : pandas.DataFrame
        With ``ticid``, ``ra``, ``dec`` (deg).
    on_error : {"raise", "skip"}
        Raise for targets with bad coordinates, or keep them (the caller reports them).

    Returns
    -------
    pandas.DataFrame
        A copy with a fresh RangeIndex and float ``ra``/``dec``.

    Raises
    ------
    InputError
        Not a DataFrame, missing columns, or (``on_error="raise"``) bad coordinates (the
        message lists the TIC ids).
    """
    check_on_error(on_error)
    if not isinstance(targets, pd.DataFrame):
        raise InputError(
            f"targets must be a pandas DataFrame with ticid, ra, dec; got {type(targets).__name__}"
        )
    missing = [c for c in ("ticid", "ra", "dec") if c not in targets.columns]
    if missing:
        raise InputError(
            f"targets lack column(s) {missing}; they need ticid, ra, dec "
            "(cloudlab.io.catalogs.add_coordinates adds ra and dec)"
        )
    out = targets.reset_index(drop=True).copy()
    out.attrs = dict(targets.attrs)
    out["ra"] = pd.to_numeric(out["ra"], errors="coerce").astype(float)
    out["dec"] = pd.to_numeric(out["dec"], errors="coerce").astype(float)
    bad = _bad_coordinates(out)
    if bad.any() and on_error == "raise":
        ids = out.loc[bad, "ticid"].tolist()
        shown = ", ".join(str(t) for t in ids[:20]) + (" ..." if len(ids) > 20 else "")
        raise InputError(
            f"{len(ids)} target(s) have NaN or out-of-range coordinates: TIC {shown}; "
            "fix them or pass on_error='skip'"
        )
    return out


def _bad_coordinates(targets: pd.DataFrame) -> np.ndarray:
    ra, dec = targets["ra"].to_numpy(), targets["dec"].to_numpy()
    return ~(np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0))


def _sep_deg(ra1, dec1, ra2, dec2):
    r1, d1, r2, d2 = (np.radians(v) for v in (ra1, dec1, ra2, dec2))
    c = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * np.cos(r1 - r2)
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def wcs_pixels(meta: CubeMeta, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel (column, row) of sky positions in a cube's WCS (astrocut's), NaN far away.

    Parameters
    ----------
    meta : CubeMeta
    ra, dec : numpy.ndarray
        Degrees.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``column``, ``row``; NaN for positions more than ~9° from the cube centre or where the
        SIP inversion does not converge.
    """
    wcs = meta.wcs
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    cra, cdec = wcs.all_pix2world([[(meta.n_cols - 1) / 2, (meta.n_rows - 1) / 2]], 0)[0]
    near = _sep_deg(ra, dec, cra, cdec) < _PREFILTER_DEG
    col = np.full(ra.shape, np.nan)
    row = np.full(ra.shape, np.nan)
    if near.any():
        pix = wcs.all_world2pix(np.column_stack([ra[near], dec[near]]), 0, quiet=True)
        col[near], row[near] = pix[:, 0], pix[:, 1]
    return col, row


def _on_science(meta: CubeMeta, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(on the image, on a science pixel) masks, pixel centres at integers."""
    c, r = np.round(col), np.round(row)
    sci = meta.science
    with np.errstate(invalid="ignore"):
        on_image = (c >= 0) & (c < meta.n_cols) & (r >= 0) & (r < meta.n_rows)
        on_science = (
            (c >= sci["col_start"])
            & (c < sci["col_stop"])
            & (r >= sci["row_start"])
            & (r < sci["row_stop"])
        )
    return on_image, on_science


def locate(
    targets: pd.DataFrame,
    *,
    sector: int,
    method: str = "auto",
    cube_base: str | None = None,
    on_error: str = "raise",
    storage_options: dict | None = None,
) -> pd.DataFrame:
    """Find the camera, CCD and pixel of every target in ``sector``.

    Parameters
    ----------
    targets : pandas.DataFrame
        With ``ticid``, ``ra``, ``dec`` (deg); other columns are carried along.
    sector : int
        TESS sector.
    method : {"auto", "wcs", "pointing"}
        ``"wcs"``: the cubes' own WCS (HDU 2 of each of the sector's 16 cubes under
        ``cube_base``, read once; cubes that do not exist are skipped), exact and identical to
        astrocut's. ``"pointing"``: tess-point's focal-plane model, vectorised (no I/O, ~1–2 px).
        ``"auto"``: ``"wcs"`` when ``cube_base`` is given, else ``"pointing"``.
    cube_base : str, optional
        Directory URL of the cubes (MAST layout file names).
    on_error : {"raise", "skip"}
        Targets with NaN or out-of-range coordinates: raise, or report them among the
        off-silicon targets with status ``"bad_coordinates"``.
    storage_options : dict, optional

    Returns
    -------
    pandas.DataFrame
        One row per target on a science pixel, in ``targets`` order: the input columns plus
        ``sector``, ``camera``, ``ccd``, ``column``, ``row`` (0-based FFI pixel, collateral
        columns included) and, for ``"wcs"``, ``cube_url``. ``attrs["off_silicon"]`` is an
        :class:`OffSilicon` listing the other targets (``.to_frame()``: ``ticid``, ``ra``,
        ``dec``, ``status``, ``reason``); ``attrs["method"]`` the method.

    Raises
    ------
    InputError
        Unknown sector, method or ``on_error``, bad target coordinates (with
        ``on_error="raise"``), or (``"wcs"``) no cube reachable.
    """
    targets = check_targets(targets, on_error=on_error)
    sector_geometry(sector)  # validates the sector
    if method == "auto":
        method = "wcs" if cube_base is not None else "pointing"
    if method not in ("wcs", "pointing"):
        raise InputError(f"locate: method={method!r}; use 'auto', 'wcs' or 'pointing'")
    n = len(targets)
    camera = np.zeros(n, dtype=np.int64)
    ccd = np.zeros(n, dtype=np.int64)
    col = np.full(n, np.nan)
    row = np.full(n, np.nan)
    nowhere = "not on a science pixel of any CCD"
    reason = np.full(n, nowhere, dtype=object)
    status = np.full(n, "off_silicon", dtype=object)
    urls = np.full(n, "", dtype=object)
    bad = _bad_coordinates(targets)
    ra = np.where(bad, 0.0, targets["ra"].to_numpy())
    dec = np.where(bad, 0.0, targets["dec"].to_numpy())
    if method == "pointing":
        camera, ccd, col, row = radec_to_pixel(ra, dec, sector)
    elif method == "wcs":
        reachable = 0
        missing_cubes = []
        for cam in range(1, 5):
            for chip in range(1, 5):
                url = cube_url(sector, cam, chip, cube_base)
                try:
                    meta = cube_meta(url, storage_options=storage_options)
                except FileNotFoundError:
                    missing_cubes.append(url)
                    continue
                reachable += 1
                todo = np.flatnonzero(camera == 0)
                c, r = wcs_pixels(meta, ra[todo], dec[todo])
                on_image, on_science = _on_science(meta, c, r)
                reason[todo[on_image & ~on_science]] = (
                    f"collateral pixels of camera {cam} CCD {chip}"
                )
                status[todo[on_image & ~on_science]] = "collateral"
                hit = todo[on_science]
                camera[hit], ccd[hit] = cam, chip
                col[hit], row[hit] = c[on_science], r[on_science]
                urls[hit] = url
        if not reachable:
            raise InputError(
                f"locate: no cube of sector {sector} is reachable under {cube_base!r} "
                f"(tried {missing_cubes[0]} ...); check cube_base or use method='pointing'"
            )
        if missing_cubes:
            unplaced = (camera == 0) & (reason == nowhere)
            reason[unplaced] = f"not on a science pixel of the {reachable} cube(s) found"
    camera[bad] = 0
    status[bad] = "bad_coordinates"
    reason[bad] = "NaN or out-of-range ra/dec"
    found = camera > 0
    out = targets.loc[found].copy()
    out["sector"] = int(sector)
    out["camera"] = camera[found]
    out["ccd"] = ccd[found]
    out["column"] = col[found]
    out["row"] = row[found]
    if method == "wcs":
        out["cube_url"] = urls[found].astype(str)
    off = targets.loc[~found, ["ticid", "ra", "dec"]].copy()
    off[STATUS] = status[~found]
    off[REASON] = reason[~found]
    out.attrs = {k: v for k, v in targets.attrs.items() if k not in ("off_silicon", "method")}
    out = out.reset_index(drop=True)
    out.attrs["off_silicon"] = OffSilicon(off.reset_index(drop=True))
    out.attrs["method"] = method
    return out
