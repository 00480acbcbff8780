"""Synthetic TESS light curves with injected transits and eclipses of known ephemerides.

Three kinds of TCE, labelled as in the Astronet-Triage catalog:

* ``PC`` planets: trapezoidal transits (ingress 10 % of the duration), depth 0.2–2 %;
* ``EB`` eclipsing binaries: deep V-shaped primary eclipses (5–40 %) and a secondary eclipse at
  phase 0.5 with 0–60 % of the primary depth;
* ``J`` junk: no eclipse at the TCE ephemeris; sinusoidal variability plus noise.

Light curves are returned as a (target, cadence) Dataset and can be written as QLP HDF5 files
(the layout :func:`cloudlab.io.lightcurves.read_qlp` reads, with bad-quality cadences, NaNs
and bright outliers that the reader must remove) or SPOC-like FITS (``LIGHTCURVE`` HDU with
``TIME``, ``PDCSAP_FLUX``, ``QUALITY``), together with a ``tces.csv`` in the reference's columns.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import xarray as xr

from cloudlab import storage
from cloudlab.errors import InputError

__all__ = ["START", "TMAG", "lightcurves", "trapezoid"]

START = 1325.3  # BTJD of sector 1's first cadence
TMAG = 10.0


def trapezoid(phase: np.ndarray, duration: float, ingress: float) -> np.ndarray:
    """Transit shape, 1 in full transit and 0 outside, linear over the ingress and egress.

    Parameters
    ----------
    phase : numpy.ndarray
        Time from mid-transit (days).
    duration : float
        Total duration, first to fourth contact (days).
    ingress : float
        Ingress duration (days), at most half the duration.
    """
    half = duration / 2
    ingress = min(max(ingress, 1e-9), half)
    return np.clip((half - np.abs(phase)) / ingress, 0.0, 1.0)


def _fold(time: np.ndarray, period: float, t0: float) -> np.ndarray:
    return np.mod(time - t0 + period / 2, period) - period / 2


def _signal(kind: str, time: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    if kind == "PC":
        period = rng.uniform(1.0, 9.0)
        duration = rng.uniform(0.08, 0.25)
        depth = rng.uniform(0.002, 0.02)
        t0 = START + rng.uniform(0.5, period)
        flux = 1 - depth * trapezoid(_fold(time, period, t0), duration, 0.1 * duration)
        extra = {"secondary_depth": 0.0}
    elif kind == "EB":
        period = rng.uniform(0.8, 8.0)
        duration = rng.uniform(0.1, 0.3)
        depth = rng.uniform(0.05, 0.4)
        t0 = START + rng.uniform(0.5, period)
        secondary = depth * rng.uniform(0.0, 0.6)
        flux = 1 - depth * trapezoid(_fold(time, period, t0), duration, duration / 2)
        flux -= secondary * trapezoid(_fold(time, period, t0 + period / 2), duration, duration / 2)
        extra = {"secondary_depth": secondary}
    else:
        period = rng.uniform(0.5, 9.0)
        duration = rng.uniform(0.05, 0.25)
        depth = 0.0
        t0 = START + rng.uniform(0.5, period)
        amplitude = rng.uniform(0.0, 0.01)
        flux = 1 + amplitude * np.sin(2 * np.pi * time / rng.uniform(0.5, 10) + rng.uniform(0, 6))
        extra = {"secondary_depth": 0.0}
    truth = {"Period": period, "Epoc": t0, "Duration": duration, "depth": depth, **extra}
    return flux, truth


def lightcurves(
    n_planets: int = 4,
    n_ebs: int = 4,
    n_junk: int = 4,
    *,
    dest: str | None = None,
    fmt: str = "qlp",
    days: float = 27.0,
    cadence_minutes: float = 30.0,
    noise: float = 1e-3,
    seed: int = 0,
    storage_options: dict | None = None,
) -> tuple[xr.Dataset, pd.DataFrame]:
    """Simulate light curves with known transits/eclipses, and their TCE table.

    Parameters
    ----------
    n_planets, n_ebs, n_junk : int
        Number of targets of each kind (one TCE each).
    dest : str, optional
        Directory URL to write ``<tic_id>.h5`` (``fmt="qlp"``) or ``<tic_id>.fits``
        (``fmt="fits"``) files and ``tces.csv`` (CR line endings, Duration in hours, as the
        reference's file).
    fmt : {"qlp", "fits"}
        File layout when ``dest`` is given.
    days, cadence_minutes : float
        Baseline and cadence; a 1-day data gap sits in the middle (TESS orbit downlink).
    noise : float
        Gaussian noise per cadence (relative flux).
    seed : int
        Random seed.
    storage_options : dict, optional
        fsspec options for ``dest``.

    Returns
    -------
    (xarray.Dataset, pandas.DataFrame)
        Light curves ``time`` and ``flux`` (target, cadence), relative flux of the clean
        cadences (the files' readers return the same up to division by the median), and the
        TCE table (``tic_id``, ``Period``, ``Epoc``, ``Duration`` in days, ``Transit_Depth``
        in ppm, ``Disposition``, ``depth``, ``secondary_depth``, and the reference's other
        columns).
    """
    if fmt not in ("qlp", "fits"):
        raise InputError(f"fmt={fmt!r}: use 'qlp' or 'fits'")
    rng = np.random.default_rng(seed)
    time = START + np.arange(0, days, cadence_minutes / 1440)
    middle = START + days / 2
    time = time[np.abs(time - middle) > 0.5]
    kinds = ["PC"] * n_planets + ["EB"] * n_ebs + ["J"] * n_junk
    rows, fluxes = [], []
    for i, kind in enumerate(kinds):
        flux, truth = _signal(kind, time, rng)
        flux = flux + rng.normal(0, noise, time.size)
        tic = 100000000 + 1000 * seed + i
        rows.append(
            {
                "row_id": i,
                "tic_id": tic,
                "toi_id": 0.01,
                "Disposition": kind,
                "Transit_Depth": max(truth["depth"], 1e-4) * 1e6,
                "Sectors": 1,
                "camera": 1,
                "ccd": 1,
                "SN": truth["depth"] / max(noise, 1e-6) * np.sqrt(truth["Duration"] * 48),
                **truth,
            }
        )
        fluxes.append(flux)
        # the big aperture (Aperture_003) sees a blended EB's eclipse deeper than the small one
        rows[-1]["big_aperture_ratio"] = rng.uniform(1.3, 2.0) if kind == "EB" else 1.0
    tces = pd.DataFrame(rows)
    flux = np.array(fluxes)
    ratio = tces["big_aperture_ratio"].to_numpy()[:, None]
    flux_big = 1 - ratio * (1 - flux)
    lc = xr.Dataset(
        {
            "time": (("target", "cadence"), np.broadcast_to(time, flux.shape).copy()),
            "flux": (("target", "cadence"), flux),
            "flux_small": (("target", "cadence"), flux),
            "flux_big": (("target", "cadence"), flux_big),
        },
        coords={"target": tces["tic_id"].to_numpy()},
    )
    if dest is not None:
        dest = dest.rstrip("/")
        for tic, f, big in zip(tces["tic_id"], flux, flux_big, strict=True):
            if fmt == "qlp":
                data = _qlp_bytes(time, f, big, rng)
                storage.write_bytes(f"{dest}/{tic}.h5", data, storage_options=storage_options)
            else:
                data = _fits_bytes(time, f, tic)
                storage.write_bytes(f"{dest}/{tic}.fits", data, storage_options=storage_options)
        csv = tces.assign(Duration=tces["Duration"] * 24).to_csv(index=False, lineterminator="\r")
        storage.write_bytes(f"{dest}/tces.csv", csv.encode(), storage_options=storage_options)
    return lc, tces


def _qlp_bytes(
    time: np.ndarray, flux: np.ndarray, flux_big: np.ndarray, rng: np.random.Generator
) -> bytes:
    """A QLP-layout HDF5 file; the reader returns ``(time, flux / median(flux))``.

    ``bestap`` is 2 (also Vetting's small aperture); ``Aperture_003`` holds ``flux_big``.

    Extra cadences are inserted that the reader must drop: QFLAG ≠ 0 (with garbage values),
    non-finite magnitudes, and bright (upward) outliers.
    """
    import h5py

    mag = TMAG - 2.5 * np.log10(flux)
    n_bad = max(3, time.size // 100)
    spacing = np.median(np.diff(time))
    bad_time = time[rng.choice(time.size, n_bad, replace=False)] + spacing / 3
    bad_mag = np.full(n_bad, TMAG - 3.0)  # flagged, and far too bright
    bad_mag[: n_bad // 3] = np.nan
    flags = np.r_[np.zeros(time.size, np.int32), np.r_[np.ones(n_bad - 2), [0, 0]]]
    bad_mag[-2:] = [np.nan, TMAG - 5.0]  # one non-finite and one bright outlier with QFLAG 0
    all_time = np.r_[time, bad_time]
    all_mag = np.r_[mag, bad_mag]
    all_big = np.r_[TMAG - 2.5 * np.log10(np.abs(flux_big)), bad_mag]
    order = np.argsort(all_time, kind="stable")
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        lc = h5.create_group("LightCurve")
        lc["BJD"] = all_time[order]
        lc["QFLAG"] = flags[order]
        phot = lc.create_group("AperturePhotometry")
        phot.attrs["bestap"] = 2
        for k in range(1, 4):
            aperture = phot.create_group(f"Aperture_{k:03d}")
            # best (2) and small (2) apertures: the target; 3: big, with the blend; 1: offset
            values = {1: all_mag + 0.01, 2: all_mag, 3: all_big}[k][order]
            aperture["KSPMagnitude"] = values
    return buffer.getvalue()


def _fits_bytes(time: np.ndarray, flux: np.ndarray, tic: int) -> bytes:
    from astropy.io import fits

    quality = np.zeros(time.size, np.int32)
    pdcsap = flux * 1e4
    primary = fits.PrimaryHDU()
    primary.header["TICID"] = int(tic)
    primary.header["TELESCOP"] = "TESS"
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column("TIME", "D", array=time),
            fits.Column("PDCSAP_FLUX", "E", array=pdcsap.astype(np.float32)),
            fits.Column("QUALITY", "J", array=quality),
        ],
        name="LIGHTCURVE",
    )
    buffer = io.BytesIO()
    fits.HDUList([primary, table]).writeto(buffer)
    return buffer.getvalue()
