"""A simulated TESS sector for vetting: TCEs of planets and of their look-alikes, with the truth.

:func:`vetting_sector` writes one CCD's cutout cube (27 days of 30-minute or 200-second frames
over a small pixel area, with :func:`cloudlab.simulate.tess_sector`) and a TCE catalog in the
columns of the TESS TCE bulk CSV. Every TCE has a target star of its own, on a grid 14 pixels
apart (one per 11 × 11 cutout), among faint field stars (Tmag 13–17, one per 150 pixels). The
kinds of TCE, with the labels Astronet-Triage gives them (``positive``: planet or eclipsing binary):

* ``planet`` (positive): Tmag 9–11.5; U-shaped transit (ingress 10–20 % of the duration), depth
  0.1–2 % (log-uniform), duration 1.5–5 h, period 1–9 d; the TCE has the true ephemeris.
* ``eb`` (positive): Tmag 9–12; V-shaped primary eclipse (ingress 30–50 %), depth 5–40 %, a
  secondary eclipse at phase 0.5 with 10–70 % of that depth, period 0.6–8 d, duration 1.5–6 h
  (at most a fifth of the period); the TCE has the primary's ephemeris.
* ``noise``: a quiet star, Tmag 9–12.5; the TCE's ephemeris is made up (period 0.5–12 d,
  duration 1–6 h, depth 100–600 ppm).
* ``variable``: a spotted/pulsating star, Tmag 9–12, ``1 - A (cos φ + h cos 2φ)`` with
  A = 0.2–2 %, h = 0–0.5, period P 0.5–6 d; the TCE is at P/2, P or 2P with its epoch at a
  minimum and a duration of 15 % of its period (1–12 h).
* ``blend``: a quiet star, Tmag 9–11, with an eclipsing binary 1.5–3.5 pixels away and 1–4
  magnitudes fainter whose light leaks into the star's aperture; the TCE has the binary's
  ephemeris and the diluted depth.

A TCE exists only where a search would have found it: planets, binaries and blends are drawn
again until their expected signal-to-noise ratio (photon and background noise of a 3 × 3-pixel
aperture, all transits of the sector) reaches 7.1, the TESS pipeline's threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cloudlab import storage
from cloudlab.errors import InputError
from cloudlab.simulate.stars import draw_tmag, render_stars, tmag_to_flux
from cloudlab.simulate.tess import (
    DEADC,
    READ_NOISE,
    DetectorLayout,
    TessSector,
    sector_start,
    tess_sector,
)

__all__ = [
    "BULK_COLUMNS",
    "KINDS",
    "MIN_SNR",
    "POSITIVE_KINDS",
    "SPACING",
    "VettingSector",
    "separation",
    "vetting_sector",
]

KINDS = ("planet", "eb", "noise", "variable", "blend")
"""Kinds of simulated TCE (see the module docstring)."""
POSITIVE_KINDS = ("planet", "eb")
"""Kinds Astronet-Triage labels positive (PC and EB → 1)."""
BULK_COLUMNS = (
    "tceid",
    "ticid",
    "tce_plnt_num",
    "tce_period",
    "tce_time0bt",
    "tce_duration",
    "tce_depth",
    "ra",
    "dec",
)
"""Columns of the written catalog: the TCE bulk CSV's (period d, epoch BTJD, duration h, depth
ppm) and the targets' coordinates (deg)."""
SPACING = 14
"""Pixels between neighbouring targets."""
MIN_SNR = 7.1
"""Smallest expected signal-to-noise ratio of a simulated transit or eclipse TCE."""

_FIELD_DENSITY = 150.0  # science pixels per field star
_BACKGROUND = 100.0  # e-/s per pixel: typical scattered light of cloudlab.simulate.background
_APERTURE_PIXELS = 9
_TRUTH_COLUMNS = ("kind", "positive", "source_ticid", "snr")


@dataclass
class VettingSector:
    """What :func:`vetting_sector` wrote, with the truth.

    Attributes
    ----------
    sector : TessSector
        The simulated sector (``cube_url``, ``times``, and the ``stars`` with their signals:
        ``kind`` is the TCE kind of a target, ``"neighbour"`` for a blend's binary and
        ``"field"`` for the other stars).
    tces : pandas.DataFrame
        One row per TCE: :data:`BULK_COLUMNS`, then the truth: ``kind`` (one of :data:`KINDS`),
        ``positive`` (planet or eb), ``source_ticid`` (the star whose light makes the signal: the
        target, a blend's neighbour, 0 for noise) and ``snr`` (expected signal-to-noise ratio
        of the transits or eclipses; NaN for noise and variables).
    catalog_url : str
        The catalog as a TCE bulk CSV (:data:`BULK_COLUMNS` only).
    truth_url : str
        ``tceid`` and the truth columns, as CSV.
    """

    sector: TessSector
    tces: pd.DataFrame
    catalog_url: str
    truth_url: str

    @property
    def cube_url(self) -> str:
        """The cutout cube."""
        return self.sector.cube_url


def _noise_per_cadence(tmag: float, cadence_s: float) -> float:
    """Relative photon, background and read noise of one cadence in a 3 × 3 aperture."""
    exposure = cadence_s * DEADC
    star = float(tmag_to_flux(tmag)) * exposure
    sky = _APERTURE_PIXELS * (_BACKGROUND * exposure + READ_NOISE**2 * max(1.0, cadence_s / 2))
    return math.sqrt(star + sky) / star


def _snr(depth: float, sigma: float, duration: float, period: float, days: float, cadence_s: float):
    """Expected signal-to-noise ratio of every transit of a sector folded together."""
    points = days / period * duration * 86400.0 / cadence_s
    return depth / sigma * math.sqrt(max(points, 0.0))


def _grid_shape(n_targets: int) -> tuple[tuple[int, int], int, int]:
    """FFI shape whose science area holds an ``n_rows × n_cols`` grid of targets."""
    n_cols = max(1, math.ceil(math.sqrt(n_targets)))
    n_rows = max(1, math.ceil(n_targets / n_cols))
    need = (n_rows * SPACING, n_cols * SPACING)
    shape = (need[0] + 1, need[1] + 2)
    while True:
        science = DetectorLayout.for_shape(shape).science_shape
        if science[0] >= need[0] and science[1] >= need[1]:
            return shape, n_rows, n_cols
        shape = (shape[0] + max(0, need[0] - science[0]), shape[1] + max(0, need[1] - science[1]))


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _eclipse(rng: np.random.Generator, start: float, depth: tuple[float, float]) -> dict:
    """An eclipsing binary's signal columns."""
    period = _log_uniform(rng, 0.6, 8.0)
    duration = min(rng.uniform(1.5, 6.0) / 24.0, 0.2 * period)
    primary = rng.uniform(*depth)
    return {
        "period": period,
        "t0": start + rng.uniform(0.0, period),
        "duration": duration,
        "depth": primary,
        "ingress": rng.uniform(0.3, 0.5),
        "secondary_depth": primary * rng.uniform(0.1, 0.7),
    }


def _target(kind, rng, start, days, cadence_s, row, col):
    """The target star (and a blend's neighbour) with their signals, and the TCE's ephemeris."""
    quiet = {"depth": 0.0, "period": np.nan, "t0": np.nan, "duration": np.nan}
    neighbour = None
    snr = np.nan
    for _ in range(1000):
        if kind == "planet":
            tmag = rng.uniform(9.0, 11.5)
            period = _log_uniform(rng, 1.0, 9.0)
            star = {
                "period": period,
                "t0": start + rng.uniform(0.0, period),
                "duration": rng.uniform(1.5, 5.0) / 24.0,
                "depth": _log_uniform(rng, 1e-3, 2e-2),
                "ingress": rng.uniform(0.1, 0.2),
            }
            tce = {k: star[k] for k in ("period", "t0", "duration", "depth")}
        elif kind == "eb":
            tmag = rng.uniform(9.0, 12.0)
            star = _eclipse(rng, start, (0.05, 0.4))
            tce = {k: star[k] for k in ("period", "t0", "duration", "depth")}
        elif kind == "noise":
            tmag = rng.uniform(9.0, 12.5)
            star = dict(quiet)
            period = _log_uniform(rng, 0.5, 12.0)
            tce = {
                "period": period,
                "t0": start + rng.uniform(0.0, period),
                "duration": min(rng.uniform(1.0, 6.0) / 24.0, 0.25 * period),
                "depth": rng.uniform(100e-6, 600e-6),
            }
        elif kind == "variable":
            tmag = rng.uniform(9.0, 12.0)
            var_period = rng.uniform(0.5, 6.0)
            amplitude = rng.uniform(0.002, 0.02)
            var_t0 = start + rng.uniform(0.0, var_period)
            star = {
                **quiet,
                "var_amplitude": amplitude,
                "var_period": var_period,
                "var_t0": var_t0,
                "var_harmonic": rng.uniform(0.0, 0.5),
            }
            period = var_period * float(rng.choice([0.5, 1.0, 2.0]))
            tce = {
                "period": period,
                "t0": var_t0,
                "duration": float(np.clip(0.15 * period, 1.0 / 24.0, 0.5)),
                "depth": 2 * amplitude,
            }
        else:  # blend
            tmag = rng.uniform(9.0, 11.0)
            star = dict(quiet)
            angle = rng.uniform(0.0, 2 * np.pi)
            separation = rng.uniform(1.5, 3.5)
            neighbour = {
                "row": row + separation * np.sin(angle),
                "column": col + separation * np.cos(angle),
                "tmag": tmag + rng.uniform(1.0, 4.0),
                **_eclipse(rng, start, (0.1, 0.5)),
            }
            share = _leak(row, col, tmag, neighbour)
            tce = {k: neighbour[k] for k in ("period", "t0", "duration")}
            tce["depth"] = neighbour["depth"] * share
        if kind in ("noise", "variable"):
            break
        sigma = _noise_per_cadence(tmag, cadence_s)
        snr = _snr(tce["depth"], sigma, tce["duration"], tce["period"], days, cadence_s)
        if snr >= MIN_SNR:
            break
    else:  # pragma: no cover - the ranges above make a detectable draw likely
        raise InputError(f"no detectable {kind} TCE drawn; use a longer sector or shorter cadence")
    target = {"row": row, "column": col, "tmag": tmag, "kind": kind, **quiet, **star}
    return target, neighbour, tce, snr


def _leak(row: float, col: float, tmag: float, neighbour: dict) -> float:
    """Share of the neighbour's light in the 3 × 3 pixels around the target."""
    r0, c0 = int(round(row)) - 6, int(round(col)) - 6
    pair = pd.DataFrame(
        {
            "row": [row - r0, neighbour["row"] - r0],
            "column": [col - c0, neighbour["column"] - c0],
            "flux": tmag_to_flux(np.array([tmag, neighbour["tmag"]])),
        }
    )
    box = (slice(5, 8), slice(5, 8))
    target = render_stars((13, 13), pair.iloc[[0]])[box].sum()
    other = render_stars((13, 13), pair.iloc[[1]])[box].sum()
    return float(other / (target + other))


def vetting_sector(
    dest: str,
    *,
    n_planets: int = 4,
    n_ebs: int = 4,
    n_noise: int = 4,
    n_variables: int = 3,
    n_blends: int = 3,
    days: float = 27.0,
    cadence_s: float = 1800.0,
    sector: int = 55,
    camera: int = 1,
    ccd: int = 1,
    seed: int = 0,
    storage_options: dict | None = None,
    progress: bool = False,
) -> VettingSector:
    """Simulate a sector with TCEs of planets, eclipsing binaries and their look-alikes.

    Parameters
    ----------
    dest : str
        Destination directory (any fsspec URL): the cube
        ``tess-s{sector:04d}-{camera}-{ccd}-cube.fits``, the catalog
        ``tess-s{sector:04d}-tcestats.csv`` and the truth ``tess-s{sector:04d}-truth.csv``.
    n_planets, n_ebs, n_noise, n_variables, n_blends : int, optional
        Number of TCEs of each kind (see the module docstring), one per target star.
    days : float, optional
        Length of the sector.
    cadence_s : float, optional
        Cadence in seconds: 1800 (FFIs of sectors 1–26) or 200 (sectors 56 on).
    sector, camera, ccd : int, optional
        Where the CCD points.
    seed : int, optional
        Seed of everything random.
    storage_options : dict, optional
        Filesystem keyword arguments for ``dest``.
    progress : bool, optional
        Show a progress bar while the pixels are written.

    Returns
    -------
    VettingSector
        The sector, the TCEs with their truth, and the catalog's and truth's URLs.

    Raises
    ------
    InputError
        A negative count, no TCE at all, or a sector shorter than a day or a cadence not
        positive.
    """
    counts = dict(zip(KINDS, (n_planets, n_ebs, n_noise, n_variables, n_blends), strict=True))
    negative = {k: n for k, n in counts.items() if n < 0}
    if negative:
        raise InputError(f"negative TCE counts {negative}: use 0 or more of each kind")
    if sum(counts.values()) == 0:
        raise InputError("no TCE requested: give at least one of n_planets, n_ebs, ...")
    if days < 1.0 or cadence_s <= 0:
        raise InputError(f"days={days}, cadence_s={cadence_s}: use days >= 1 and cadence_s > 0")
    rng = np.random.default_rng([seed, 0x7CE])
    kinds = rng.permutation([k for k, n in counts.items() for _ in range(n)])
    shape, grid_rows, grid_cols = _grid_shape(len(kinds))
    layout = DetectorLayout.for_shape(shape)
    sci_r, sci_c = layout.science_rows, layout.science_cols
    start = sector_start(sector)
    n_frames = round(days * 86400.0 / cadence_s)

    targets, neighbours, tces = [], [], []
    for k, kind in enumerate(kinds):
        row = sci_r.start + SPACING * (k // grid_cols + 0.5) + rng.uniform(-1.0, 1.0)
        col = sci_c.start + SPACING * (k % grid_cols + 0.5) + rng.uniform(-1.0, 1.0)
        target, neighbour, tce, snr = _target(str(kind), rng, start, days, cadence_s, row, col)
        targets.append(target)
        tces.append({**tce, "kind": str(kind), "snr": snr, "neighbour": len(neighbours)})
        if neighbour is not None:
            neighbours.append({**neighbour, "kind": "neighbour"})
    n_field = round(layout.science_shape[0] * layout.science_shape[1] / _FIELD_DENSITY)
    field = pd.DataFrame(
        {
            "row": rng.uniform(sci_r.start + 1.0, sci_r.stop - 2.0, n_field),
            "column": rng.uniform(sci_c.start + 1.0, sci_c.stop - 2.0, n_field),
            "tmag": draw_tmag(rng, n_field, 13.0, 17.0),
            "kind": "field",
        }
    )
    stars = pd.concat([pd.DataFrame(targets), pd.DataFrame(neighbours), field], ignore_index=True)
    stars["flux"] = tmag_to_flux(stars["tmag"].to_numpy())
    stars["depth"] = stars["depth"].fillna(0.0)
    simulated = tess_sector(
        dest, sector=sector, camera=camera, ccd=ccd, n_frames=n_frames, shape=shape,
        cadence_s=cadence_s, seed=seed, ffis=False, storage_options=storage_options,
        progress=progress, stars=stars, background="ccd",
    )  # fmt: skip

    table = pd.DataFrame(tces)
    on = simulated.stars
    ticid = on["ticid"].to_numpy()[: len(kinds)]
    neighbour_tic = on["ticid"].to_numpy()[len(kinds) : len(kinds) + len(neighbours)]
    source = np.where(table["kind"] == "noise", 0, ticid)
    blend = (table["kind"] == "blend").to_numpy()
    source[blend] = neighbour_tic[table.loc[blend, "neighbour"].to_numpy()]
    out = pd.DataFrame(
        {
            "tceid": [f"{t:011d}-01" for t in ticid],  # as SPOC writes them
            "ticid": ticid,
            "tce_plnt_num": 1,
            "tce_period": table["period"].to_numpy(),
            "tce_time0bt": table["t0"].to_numpy(),
            "tce_duration": table["duration"].to_numpy() * 24.0,
            "tce_depth": table["depth"].to_numpy() * 1e6,
            "ra": on["ra"].to_numpy()[: len(kinds)],
            "dec": on["dec"].to_numpy()[: len(kinds)],
            "kind": table["kind"].to_numpy(),
            "positive": table["kind"].isin(POSITIVE_KINDS).to_numpy(),
            "source_ticid": source.astype(np.int64),
            "snr": table["snr"].to_numpy(),
        }
    )
    out = out.iloc[rng.permutation(len(out))].reset_index(drop=True)
    dest = dest.rstrip("/")
    catalog_url = f"{dest}/tess-s{sector:04d}-tcestats.csv"
    truth_url = f"{dest}/tess-s{sector:04d}-truth.csv"
    header = f"#Mission = TESS\n#Sectors = s{sector:04d}-s{sector:04d}\n#Simulated = cloudlab\n#\n"
    csv = header + out[list(BULK_COLUMNS)].to_csv(index=False)
    storage.write_bytes(catalog_url, csv.encode(), storage_options=storage_options)
    truth = out[["tceid", *_TRUTH_COLUMNS]].to_csv(index=False)
    storage.write_bytes(truth_url, truth.encode(), storage_options=storage_options)
    return VettingSector(simulated, out, catalog_url, truth_url)


def separation(tces: pd.DataFrame, predictions: pd.Series) -> dict[str, float]:
    """How well predictions separate planets and eclipsing binaries from their look-alikes.

    Parameters
    ----------
    tces : pandas.DataFrame
        :attr:`VettingSector.tces` (``tceid``, ``kind``).
    predictions : pandas.Series
        Probabilities indexed by ``tceid`` (e.g. ``vet_tces``'s ``prediction`` by its
        ``tceid``); TCEs without a finite prediction are left out.

    Returns
    -------
    dict
        ``auc``: ROC AUC of planets and binaries against noise and variables (what
        Astronet-Triage is trained to separate); ``auc_all``: against every other TCE, blends
        included (NaN when a side is empty); ``n``: TCEs scored; and the mean prediction of
        each kind present (``planet``, ``eb``, ...).
    """
    from cloudlab.astronet.train import roc_auc

    scores = predictions.reindex(tces["tceid"]).to_numpy(float)
    scored = np.isfinite(scores)
    kind = tces["kind"].to_numpy()[scored]
    scores = scores[scored]
    positive = np.isin(kind, POSITIVE_KINDS)

    def auc(keep: np.ndarray) -> float:
        labels = positive[keep]
        return roc_auc(labels, scores[keep]) if 0 < labels.sum() < len(labels) else np.nan

    out = {
        "auc": auc(np.isin(kind, (*POSITIVE_KINDS, "noise", "variable"))),
        "auc_all": auc(np.ones(len(kind), bool)),
        "n": int(len(kind)),
    }
    out.update({k: float(scores[kind == k].mean()) for k in KINDS if (kind == k).any()})
    return out
