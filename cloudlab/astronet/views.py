"""Global and local views of TCEs, vectorised across TCEs.

The Astronet-Triage algorithm (``kind="triage"``, reference §1):

1. fold to τ = ((t + (P/2 − t0)) mod P) − P/2 and sort by τ;
2. overlapping median bins: bin *i* holds the points with ℓ_i ≤ τ < ℓ_i + w, the edges advanced
   by repeated addition of the spacing s = (t_max − t_min − w)/(N − 1);
   global: N = 201, w = 1.2·P/201 over [−P/2, P/2); local: N = 61, w = 0.16·D over
   [max(−P/2, −2D), min(P/2, 2D));
3. sparse guards (fewer than 2 points; fewer than 5 in [t_min, t_max]; folded coverage below half
   the window) skip the TCE with its reason; empty bins are interpolated linearly in bin index;
4. each view is normalised to median 0 and minimum −1.

``kind="vetting"`` adds Astronet-Vetting's secondary-eclipse view; ``kind="kepler"`` is the upstream
Kepler pipeline (robust spline detrending, 2001/201 bins, ±4 durations, global-median fill).

Every step works on a batch of TCEs at once: light curves are padded into a 2-D array (one row per
TCE, +∞ phases after the last point), the bin boundaries of every bin of every TCE are found by
one arithmetic estimate plus exact comparisons with the repeatedly-added edges, and the medians of
all bins are taken by sorting padded gathers grouped by bin occupancy.  There is no Python loop
over bins or over TCEs.  When numba is installed, :func:`batch_views` computes the global and local
views with the compiled per-TCE kernel of :mod:`cloudlab.astronet.numba_views` instead (identical
results); this NumPy path is the fallback, and still makes the Vetting secondary view.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from cloudlab.errors import REASON, STATUS, STATUS_OK, InputError

__all__ = [
    "ENGINES",
    "KINDS",
    "SECONDARY_BINS",
    "SPECS",
    "STATUS_CODES",
    "VIEW_REASONS",
    "VIEW_STATUS",
    "Binned",
    "EmptyLightCurveError",
    "SparseLightCurveError",
    "ViewSpec",
    "batch_views",
    "bin_edges",
    "binned_view",
    "check_parameters",
    "count_below",
    "depth_change",
    "eclipse_depths",
    "fill_empty",
    "fold_and_sort",
    "normalise",
    "num_bins",
    "phase_fold",
    "secondary_views",
    "segment_medians",
    "views_for",
]

try:
    from cloudlab.astronet import numba_views
except ImportError:  # numba absent: the NumPy path below does all the work
    numba_views = None

KINDS = ("triage", "vetting", "kepler")
ENGINES = ("auto", "numba", "numpy")
# texts of numba_views' reason codes 1..7, in the order binned_view checks them
VIEW_REASONS = (
    "fewer than 2 points",
    "bin width not inside the window",
    "window starts after the last point",
    "fewer than 5 points in the window",
    "folded coverage below half the window",
    "all bins empty",
    "zero minimum after subtracting the median",
)
# status code of each of VIEW_REASONS
VIEW_STATUS = ("sparse", "bad_window", "bad_window", "sparse", "sparse", "bad_window", "sparse")
#: Per-TCE status codes (the ``status`` variable) and what they mean.
STATUS_CODES = {
    STATUS_OK: "views made",
    "bad_ephemeris": "period, epoch or duration impossible (not finite, not positive, D >= P)",
    "empty": "the light curve has no finite points",
    "epoch_outside": "the epoch lies far outside the light curve (time-system mix-up?)",
    "sparse": "too few points for a view (the reference's SparseLightCurveError)",
    "bad_window": "the view window or bin width does not fit the data",
    "no_depth_change": "Vetting's depth_change is not finite",
    "no_lightcurve": "no light curve for the TCE's target",
    "unreadable": "the target's light-curve file is missing or unreadable (the reason names it)",
}


class SparseLightCurveError(InputError):
    """A TCE has too little data for a view (the reference's ``SparseLightCurveError``)."""


class EmptyLightCurveError(InputError):
    """A light curve has no finite points."""


@dataclass(frozen=True)
class ViewSpec:
    """Geometry of one view.

    Attributes
    ----------
    num_bins : int
        Number of bins.
    width_factor : float
        Bin width as a multiple of the period (global) or duration (local).
    num_durations : float or None
        Half-width of the local window in durations; None for the global view (±P/2).
    """

    num_bins: int
    width_factor: float
    num_durations: float | None = None


SPECS = {
    "triage": {"global_view": ViewSpec(201, 1.2 / 201), "local_view": ViewSpec(61, 0.16, 2)},
    "kepler": {"global_view": ViewSpec(2001, 1 / 2001), "local_view": ViewSpec(201, 0.16, 4)},
}
SPECS["vetting"] = SPECS["triage"]
SECONDARY_BINS = 61


def num_bins(kind: str = "triage") -> dict[str, int]:
    """Number of bins of each view produced for ``kind``."""
    _check_kind(kind)
    out = {name: spec.num_bins for name, spec in SPECS[kind].items()}
    if kind == "vetting":
        out["secondary_view"] = SECONDARY_BINS
    return out


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InputError(f"kind={kind!r}: use one of {KINDS}")


# ----------------------------------------------------------------------------------------------
# folding


def phase_fold(time: np.ndarray, period: np.ndarray, t0: np.ndarray) -> np.ndarray:
    """Fold times to [−P/2, P/2) with the epoch at phase 0.

    Parameters
    ----------
    time : numpy.ndarray
        Times (days); broadcast against ``period`` and ``t0``.
    period, t0 : numpy.ndarray or float
        Period and epoch (days).

    Returns
    -------
    numpy.ndarray
        Phase in days, ((t + (P/2 − t0)) mod P) − P/2 (the reference's operation order).
    """
    half = np.asarray(period) / 2
    return np.mod(time + (half - t0), period) - half


def fold_and_sort(
    time: np.ndarray, flux: np.ndarray, period: np.ndarray, t0: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fold rows of light curves and sort each row by phase.

    Parameters
    ----------
    time, flux : numpy.ndarray
        Shape (n_tce, n_points); non-finite entries are padding.
    period, t0 : numpy.ndarray
        Shape (n_tce,).

    Returns
    -------
    (x, y, n)
        Sorted phases (+∞ after each row's last point), the matching fluxes (0 in padding) and
        the number of finite points per row.
    """
    valid = np.isfinite(time) & np.isfinite(flux)
    with np.errstate(invalid="ignore"):
        tau = phase_fold(time, period[:, None], t0[:, None])
    tau = np.where(valid, tau, np.inf)
    order = np.argsort(tau, axis=1)
    order += np.arange(len(tau))[:, None] * tau.shape[1]
    x = tau.ravel()[order]
    y = np.where(valid, flux, 0.0).ravel()[order]
    return x, y, valid.sum(axis=1)


# ----------------------------------------------------------------------------------------------
# binning kernel


def bin_edges(start: np.ndarray, step: np.ndarray, n: int) -> np.ndarray:
    """Edges ``start, start+step, (start+step)+step, …`` built by repeated addition, per row."""
    steps = np.broadcast_to(np.asarray(step, float)[:, None], (len(start), n)).copy()
    steps[:, 0] = start
    return np.cumsum(steps, axis=1)


def count_below(
    x: np.ndarray, edges: np.ndarray, first: np.ndarray, step: np.ndarray
) -> np.ndarray:
    """For every row and edge, the number of ``x`` values strictly below the edge.

    Equivalent to ``np.searchsorted(x[r], edges[r], "left")`` for every row ``r``, exactly.

    Parameters
    ----------
    x : numpy.ndarray
        (rows, n) sorted per row, +∞ padding allowed.
    edges : numpy.ndarray
        (rows, m) increasing per row, approximately ``first + k·step``.
    first, step : numpy.ndarray
        (rows,) the arithmetic approximation of the edges, used for a first guess.

    Returns
    -------
    numpy.ndarray
        (rows, m) integer counts.
    """
    rows, m = edges.shape
    # only points in [edges[0], edges[-1]) need work: those below count for every edge, those
    # above for none; the window is narrow for local views
    below_first = np.sum(x < edges[:, :1], axis=1)
    width = int((np.sum(x < edges[:, -1:], axis=1) - below_first).max(initial=0))
    if width < x.shape[1] // 2:
        index = below_first[:, None] + np.arange(width)
        inside = index < np.sum(x < edges[:, -1:], axis=1)[:, None]
        flat_index = np.minimum(index, x.shape[1] - 1) + np.arange(rows)[:, None] * x.shape[1]
        x = np.where(inside, x.ravel()[flat_index], np.inf)
    else:
        below_first = np.zeros(rows, np.intp)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        guess = np.floor((x - first[:, None]) / step[:, None])
    guess += 1
    guess[np.isnan(guess)] = 0  # rows without data (inf − inf); the loop below corrects any guess
    np.clip(guess, 0, m, out=guess)
    limit = np.isfinite(edges).sum(axis=1)[:, None]  # trailing +inf edges are unused slots
    c = np.minimum(guess.astype(np.intp), limit)  # c[r, j] ≈ #{k : edges[r, k] <= x[r, j]}
    ext = np.empty((rows, m + 2))
    ext[:, 0], ext[:, -1], ext[:, 1:-1] = -np.inf, np.inf, edges
    ext = ext.ravel()
    # exact correction against the actual edges; after the first pass only moved entries
    c, x_flat = c.ravel(), x.ravel()
    pos = (np.arange(rows)[:, None] * (m + 2) + c.reshape(rows, -1)).ravel()
    todo = None
    while todo is None or todo.size:
        p = pos if todo is None else pos[todo]
        xv = x_flat if todo is None else x_flat[todo]
        cv = c if todo is None else c[todo]
        move = (ext[p + 1] <= xv) & (cv < m)
        move = move.astype(np.intp) - (ext[p] > xv)
        moved = np.flatnonzero(move)
        todo = moved if todo is None else todo[moved]
        c[todo] += move[moved]
        pos[todo] += move[moved]
    flat = (np.arange(rows)[:, None] * (m + 1) + c.reshape(rows, -1)).ravel()
    hist = np.bincount(flat, minlength=rows * (m + 1)).reshape(rows, m + 1)
    return np.cumsum(hist, axis=1)[:, :m] + below_first[:, None]


def segment_medians(y: np.ndarray, start: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Medians of ``y[r, start:start+count]`` for every (row, bin); NaN where ``count`` is 0.

    The segments are gathered into padded blocks grouped by occupancy (powers of two), sorted
    along the last axis, and the middle one or two values averaged, as ``np.median`` does.
    """
    out = np.full(start.shape, np.nan)
    rows, bins = np.nonzero(count > 0)
    if rows.size == 0:
        return out
    c = count[rows, bins]
    s = start[rows, bins]
    group = np.ceil(np.log2(c)).astype(int)
    last = y.shape[1] - 1
    for g in np.unique(group):
        sel = np.flatnonzero(group == g)
        cs = c[sel]
        width = int(cs.max())
        offsets = np.arange(width)
        index = np.minimum(s[sel, None] + offsets, last)
        block = np.where(offsets < cs[:, None], y[rows[sel, None], index], np.inf)
        block.sort(axis=1)
        k = np.arange(sel.size)
        out[rows[sel], bins[sel]] = (block[k, (cs - 1) // 2] + block[k, cs // 2]) / 2
    return out


def fill_empty(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill NaN bins by linear interpolation in bin index (``np.interp``'s arithmetic).

    Leading and trailing runs take the nearest non-empty value.

    Returns
    -------
    (filled, all_empty)
        The filled values and a per-row flag for rows with no non-empty bin.
    """
    rows, n = values.shape
    have = np.isfinite(values)
    index = np.arange(n)
    prev = np.maximum.accumulate(np.where(have, index, -1), axis=1)
    nxt = np.minimum.accumulate(np.where(have, index, n)[:, ::-1], axis=1)[:, ::-1]
    all_empty = ~have.any(axis=1)
    r = np.arange(rows)[:, None]
    v_prev = values[r, np.clip(prev, 0, n - 1)]
    v_next = values[r, np.clip(nxt, 0, n - 1)]
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (v_next - v_prev) / (nxt - prev)
        inner = slope * (index - prev) + v_prev
    filled = np.where(have, values, np.where(prev < 0, v_next, np.where(nxt >= n, v_prev, inner)))
    return filled, all_empty


def normalise(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subtract each row's median, then divide by |minimum| (median 0, minimum −1).

    Returns
    -------
    (normalised, zero_min)
        Rows whose minimum is 0 after the subtraction are flagged (the reference skips them).
    """
    centred = values - np.median(values, axis=1, keepdims=True)
    minimum = np.abs(np.min(centred, axis=1, keepdims=True))
    zero = minimum[:, 0] == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return centred / minimum, zero


@dataclass
class Binned:
    """One view for a batch of TCEs: values (rows, bins), a status and a reason per row.

    ``status`` is ``"ok"`` or a code of :data:`STATUS_CODES`; ``reason`` is '' where it is ok.
    """

    values: np.ndarray
    reason: np.ndarray
    status: np.ndarray


def binned_view(
    x: np.ndarray,
    y: np.ndarray,
    n: np.ndarray,
    t_min: np.ndarray,
    t_max: np.ndarray,
    width: np.ndarray,
    num: int,
    *,
    fill: str = "interpolate",
    name: str = "view",
) -> Binned:
    """Median-binned, filled and normalised view for every row.

    Parameters
    ----------
    x, y, n : numpy.ndarray
        Sorted phases, fluxes and point counts from :func:`fold_and_sort`.
    t_min, t_max, width : numpy.ndarray
        Per-row window and bin width.
    num : int
        Number of bins.
    fill : {"interpolate", "median"}
        Triage (sparse guards, interpolation) or upstream (global-median fill, no guards).
    name : str
        View name used in reasons.

    Returns
    -------
    Binned
    """
    rows = len(x)
    reason = np.full(rows, "", dtype=object)
    status = np.full(rows, STATUS_OK, dtype=object)
    spacing = (t_max - t_min - width) / (num - 1)
    r = np.arange(rows)
    last = x[r, np.maximum(n - 1, 0)]

    def flag(mask, code):
        new = mask & (reason == "")
        reason[new] = f"{name}: {VIEW_REASONS[code]}"
        status[new] = VIEW_STATUS[code]

    flag(n < 2, 0)
    flag(~(width > 0) | ~(width < t_max - t_min), 1)
    flag(t_min > last, 2)
    if fill == "interpolate":
        inside = np.sum((x >= t_min[:, None]) & (x <= t_max[:, None]), axis=1)
        flag(inside < 5, 3)
        with np.errstate(invalid="ignore"):
            short = last - x[:, 0] < (t_max - t_min) / 2
        flag(short, 4)
    ok = reason == ""
    safe_step = np.where(ok, spacing, 1.0)
    lo = bin_edges(np.where(ok, t_min, 0.0), safe_step, num)
    hi = bin_edges(np.where(ok, t_min + width, 1.0), safe_step, num)
    start = count_below(x, lo, lo[:, 0], safe_step)
    end = count_below(x, hi, hi[:, 0], safe_step)
    values = segment_medians(y, start, np.where(ok[:, None], end - start, 0))
    if fill == "interpolate":
        values, empty = fill_empty(values)
        flag(empty & ok, 5)
    else:
        padded = np.where(np.arange(x.shape[1]) < n[:, None], y, np.nan)
        with np.errstate(invalid="ignore"), _quiet():
            overall = np.nanmedian(padded, axis=1)
        values = np.where(np.isfinite(values), values, overall[:, None])
    values, zero = normalise(values)
    flag(zero, 6)
    values[reason != ""] = np.nan
    return Binned(values, reason, status)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence NumPy's all-NaN-slice RuntimeWarnings (rows without data are flagged anyway)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# ----------------------------------------------------------------------------------------------
# secondary eclipse (Astronet-Vetting)


def secondary_views(
    x: np.ndarray,
    y: np.ndarray,
    n: np.ndarray,
    period: np.ndarray,
    duration: np.ndarray,
) -> tuple[Binned, np.ndarray]:
    """Astronet-Vetting's secondary-eclipse view for every row.

    The primary (|τ| within the mask) is removed, phases are mapped to [0, P), the strongest
    dip is found by a grid search over trial centres c (steps of 0.1·D, statistic
    −s|s|/(r(1 − r)) with r = (n_in + 1)/N, s = Σ_in(f − f̄)/N), and 61 median bins are taken
    over [max(c − P/2, c − 4D, τ_first), min(c + P/2, c + 4D, τ_last)).

    Returns
    -------
    (Binned, centre)
        The normalised view and the secondary's phase (days after the primary).
    """
    rows = len(x)
    reason = np.full(rows, "", dtype=object)
    mask_width = np.where((period < 1) | (duration > period / 2), 1.0, 2.0)
    finite = np.arange(x.shape[1]) < n[:, None]
    keep = (
        finite
        & (np.abs(x) > (mask_width * duration / 2)[:, None])
        & (np.abs(x) > (0.1 * period)[:, None])
    )
    x2 = np.where(keep, np.where(x < 0, x + period[:, None], x), np.inf)
    order = np.argsort(x2, axis=1)
    x2 = np.take_along_axis(x2, order, axis=1)
    y2 = np.take_along_axis(np.where(keep, y, 0.0), order, axis=1)
    m = keep.sum(axis=1)
    reason[m < 5] = "secondary_view: fewer than 5 points outside the primary"
    msafe = np.maximum(m, 1)
    inside = np.arange(x.shape[1]) < m[:, None]
    mean = np.where(inside, y2, 0.0).sum(axis=1) / msafe
    f = np.where(inside, y2 - mean[:, None], 0.0)
    r = np.arange(rows)
    first, last = x2[:, 0], x2[r, msafe - 1]
    step = 0.1 * duration
    with np.errstate(invalid="ignore", over="ignore"):
        span = (last - duration) - (first + duration)
        trials = np.where(reason == "", np.ceil(span / step), 0)
    trials = np.clip(np.nan_to_num(trials), 0, None).astype(int)
    centre = period / 2
    width_k = int(trials.max()) if rows else 0
    if width_k > 0:
        k = np.arange(width_k)
        c = (first + duration)[:, None] + k * step[:, None]
        live = k < trials[:, None]
        c = np.where(live, c, np.inf)
        csum = np.concatenate([np.zeros((rows, 1)), np.cumsum(f, axis=1)], axis=1)

        def below(edges, offset):
            return count_below(x2, edges, first + duration + offset, step)

        near = below(c + duration[:, None], duration) - below(c - duration[:, None], -duration)
        i_hi = below(c + duration[:, None] / 2, duration / 2)
        i_lo = below(c - duration[:, None] / 2, -duration / 2)
        n_in = i_hi - i_lo
        frac = (n_in + 1) / msafe[:, None]
        s = (csum[r[:, None], i_hi] - csum[r[:, None], i_lo]) / msafe[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            stat = -s * np.abs(s) / (frac * (1 - frac))
        stat = np.where(live & (near >= 5) & np.isfinite(stat), stat, -np.inf)
        best = np.argmax(stat, axis=1)
        found = stat[r, best] > 0
        centre = np.where(found, c[r, np.minimum(best, width_k - 1)], centre)
    t_min = np.maximum.reduce([centre - period / 2, centre - 4 * duration, first])
    t_max = np.minimum.reduce([centre + period / 2, centre + 4 * duration, last])
    window = t_max - t_min
    width = np.where(0.16 * duration >= window, window / 40, 0.16 * duration)
    binned = binned_view(
        np.where(inside, x2, np.inf),
        np.where(inside, f + mean[:, None], 0.0),
        m,
        np.where(reason == "", t_min, 0.0),
        np.where(reason == "", t_max, 1.0),
        np.where(reason == "", width, 0.1),
        SECONDARY_BINS,
        name="secondary_view",
    )
    bad = reason != ""
    binned.reason[bad] = reason[bad]
    binned.status[bad] = "sparse"
    binned.values[bad] = np.nan
    return binned, centre


def eclipse_depths(
    tau: np.ndarray, flux: np.ndarray, duration: np.ndarray, qingress: np.ndarray
) -> np.ndarray:
    """Astronet-Vetting's ``measure_eclipse_depth`` for every row (NaN-padded rows allowed).

    depth = mean(f where |τ| ≥ D/2) − mean(f where |τ| < D(1 − 2Q)/2), Q = clip(Qingress, 0, 0.4);
    with fewer than 4 points in that core, the in-transit points are |τ| < D/2.
    """
    finite = np.isfinite(tau) & np.isfinite(flux)
    half = duration[:, None] / 2
    q = np.clip(np.nan_to_num(qingress), 0, 0.4)[:, None]
    core = finite & (np.abs(tau) < duration[:, None] * (1 - 2 * q) / 2)
    wide = finite & (np.abs(tau) < half)
    inside = np.where((core.sum(axis=1) < 4)[:, None], wide, core)
    outside = finite & (np.abs(tau) >= half)
    f = np.where(finite, flux, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (f * outside).sum(1) / outside.sum(1) - (f * inside).sum(1) / inside.sum(1)


def depth_change(
    time: np.ndarray,
    flux_small: np.ndarray,
    flux_big: np.ndarray,
    period: np.ndarray,
    t0: np.ndarray,
    duration: np.ndarray,
    qingress: np.ndarray,
) -> np.ndarray:
    """Astronet-Vetting's ``depth_change``: (depth_big − depth_small) / std(small, out of transit).

    Parameters
    ----------
    time, flux_small, flux_big : numpy.ndarray
        (n_tce, n_points) light curves of the small (``Aperture_002``) and big (``Aperture_003``)
        apertures, NaN-padded.
    period, t0, duration, qingress : numpy.ndarray
        (n_tce,) ephemerides (days) and the BLS ingress fraction.

    Returns
    -------
    numpy.ndarray
        One value per TCE; NaN when undefined (the reference skips such TCEs).
    """
    with np.errstate(invalid="ignore"):
        tau = phase_fold(time, period[:, None], t0[:, None])
    small = eclipse_depths(tau, flux_small, duration, qingress)
    big = eclipse_depths(tau, flux_big, duration, qingress)
    out = np.isfinite(tau) & np.isfinite(flux_small) & (np.abs(tau) > duration[:, None] / 2)
    with _quiet():
        scatter = np.nanstd(np.where(out, flux_small, np.nan), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (big - small) / scatter


# ----------------------------------------------------------------------------------------------
# one batch of TCEs


def check_parameters(period: np.ndarray, t0: np.ndarray, duration: np.ndarray) -> np.ndarray:
    """Per-TCE reasons ('' when fine) for impossible ephemerides."""
    reason = np.full(len(period), "", dtype=object)
    with np.errstate(invalid="ignore"):
        reason[~np.isfinite(t0)] = "epoch is not finite"
        reason[~(duration > 0) & (reason == "")] = "duration must be positive and finite"
        reason[~(period > 0) & (reason == "")] = "period must be positive and finite"
        reason[~np.isfinite(period) & (reason == "")] = "period must be positive and finite"
        reason[~(duration < period) & (reason == "")] = "duration must be shorter than the period"
    return reason


def batch_views(
    time: np.ndarray,
    flux: np.ndarray,
    period: np.ndarray,
    t0: np.ndarray,
    duration: np.ndarray,
    *,
    kind: str = "triage",
    max_epoch_distance: float = 1000.0,
    apertures: tuple[np.ndarray, np.ndarray] | None = None,
    qingress: np.ndarray | None = None,
    engine: str = "auto",
) -> dict[str, np.ndarray]:
    """Views for a batch of TCEs, one light curve row per TCE.

    Parameters
    ----------
    time, flux : numpy.ndarray
        (n_tce, n_points), NaN-padded.  For ``kind="kepler"`` the flux is spline-detrended here.
    period, t0, duration : numpy.ndarray
        (n_tce,) in days.
    kind : {"triage", "vetting", "kepler"}
        Algorithm.
    max_epoch_distance : float
        TCEs whose epoch lies further than this (days) outside their light curve's time span are
        skipped (usually a time-system mix-up, e.g. BJD against BTJD).
    apertures : (flux_small, flux_big), optional
        Vetting only: small- and big-aperture fluxes on the same cadences, for ``depth_change``.
    qingress : numpy.ndarray, optional
        Vetting only: BLS ingress fraction per TCE (0 when absent).
    engine : {"auto", "numba", "numpy"}
        Global and local views from the compiled per-TCE kernel (:mod:`numba_views`) or the
        vectorised NumPy path; "auto" is numba when it is installed.  Both give identical views.
        The Vetting secondary view always uses the NumPy path.

    Returns
    -------
    dict
        ``global_view``, ``local_view`` (and ``secondary_view``, ``secondary_phase``,
        ``depth_change`` for vetting with apertures) with NaN rows for skipped TCEs,
        ``status`` (``"ok"`` or a code of :data:`STATUS_CODES`), ``reason`` (a sentence, ''
        when ok) and ``valid`` (bool, ``status == "ok"``).

    Raises
    ------
    InputError
        Unknown ``kind`` or ``engine``, or arrays whose shapes do not match.
    """
    _check_kind(kind)
    if engine not in ENGINES:
        raise InputError(f"engine={engine!r}: use one of {ENGINES}")
    if engine == "numba" and numba_views is None:
        raise InputError("engine='numba' needs numba: pip install numba, or use engine='numpy'")
    compiled = engine != "numpy" and numba_views is not None
    time = np.atleast_2d(np.asarray(time, float))
    flux = np.atleast_2d(np.asarray(flux, float))
    if time.shape != flux.shape:
        raise InputError(
            f"time and flux shapes differ: {time.shape} vs {flux.shape}; pass one flux per cadence"
        )
    period, t0, duration = (np.atleast_1d(np.asarray(v, float)) for v in (period, t0, duration))
    if not len(period) == len(t0) == len(duration) == len(time):
        raise InputError(
            f"{len(time)} light-curve rows but {len(period)} periods, {len(t0)} epochs and "
            f"{len(duration)} durations: pass one of each per TCE"
        )
    if time.shape[1] == 0:  # no cadences at all: one NaN column keeps the arrays 2-D
        time = np.full((len(time), 1), np.nan)
        flux = time.copy()
    reason = check_parameters(period, t0, duration)
    status = np.where(reason == "", STATUS_OK, "bad_ephemeris").astype(object)
    finite = np.isfinite(time) & np.isfinite(flux)
    has_data = finite.any(axis=1)
    _mark(status, reason, ~has_data, "empty", "empty light curve (no finite points)")
    masked = np.where(finite, time, np.nan)
    t_lo, t_hi = np.fmin.reduce(masked, axis=1), np.fmax.reduce(masked, axis=1)  # NaN: no data
    outside = np.maximum(t_lo - t0, t0 - t_hi)
    far = has_data & (outside > max_epoch_distance)
    texts = np.array([f"epoch is {d:.0f} d outside the light curve" for d in outside], object)
    _mark(status, reason, far, "epoch_outside", texts)
    ok = reason == ""
    if kind == "kepler" and ok.any():
        from cloudlab.astronet.spline import detrend_rows

        flux = flux.copy()
        flux[ok] = detrend_rows(time[ok], flux[ok])
    safe_p = np.where(ok, period, 1.0)
    safe_t0 = np.where(ok, t0, 0.0)
    safe_d = np.where(ok, duration, 0.1)
    if compiled:
        out = _compiled_views(time, flux, safe_p, safe_t0, safe_d, ok, kind)
        for name in SPECS[kind]:
            code = out.pop(f"{name}_code")
            texts = np.array([""] + [f"{name}: {text}" for text in VIEW_REASONS], dtype=object)
            codes = np.array([STATUS_OK, *VIEW_STATUS], dtype=object)
            _mark(status, reason, code > 0, codes[code], texts[code])
    if not compiled or kind == "vetting":
        x, y, n = fold_and_sort(
            np.where(ok[:, None], time, np.nan),
            np.where(ok[:, None], flux, np.nan),
            safe_p,
            safe_t0,
        )
    if not compiled:
        out = {}
        fill = "median" if kind == "kepler" else "interpolate"
        for name, spec in SPECS[kind].items():
            if spec.num_durations is None:
                t_min, t_max, width = -safe_p / 2, safe_p / 2, spec.width_factor * safe_p
            else:
                reach = spec.num_durations * safe_d
                t_min = np.maximum(-safe_p / 2, -reach)
                t_max = np.minimum(safe_p / 2, reach)
                width = spec.width_factor * safe_d
            view = binned_view(x, y, n, t_min, t_max, width, spec.num_bins, fill=fill, name=name)
            out[name] = view.values
            _mark(status, reason, view.reason != "", view.status, view.reason)
    if kind == "vetting":
        view, centre = secondary_views(x, y, n, safe_p, safe_d)
        out["secondary_view"] = view.values
        out["secondary_phase"] = centre
        _mark(status, reason, view.reason != "", view.status, view.reason)
        if apertures is not None:
            small, big = (np.atleast_2d(np.asarray(a, float)) for a in apertures)
            if small.shape != time.shape or big.shape != time.shape:
                raise InputError(
                    f"aperture fluxes have shapes {small.shape} and {big.shape} but time/flux "
                    f"{time.shape}: pass small- and big-aperture fluxes on the same cadences"
                )
            q = np.zeros(len(time)) if qingress is None else np.asarray(qingress, float)
            change = depth_change(time, small, big, safe_p, safe_t0, safe_d, q)
            _mark(
                status,
                reason,
                ~np.isfinite(change),
                "no_depth_change",
                "depth_change is not finite",
            )
            out["depth_change"] = change
    valid = reason == ""
    for values in out.values():
        values[~valid] = np.nan
    out["valid"] = valid
    out[STATUS] = status.astype(str)
    out[REASON] = reason.astype(str)
    return out


def _mark(
    status: np.ndarray,
    reason: np.ndarray,
    mask: np.ndarray,
    code: str | np.ndarray,
    text: str | np.ndarray,
) -> None:
    """Record a failure (``code``, ``text``) for the rows in ``mask`` that have none yet."""
    new = mask & (reason == "")
    status[new] = code if isinstance(code, str) else code[new]
    reason[new] = text if isinstance(text, str) else text[new]


def _compiled_views(
    time: np.ndarray,
    flux: np.ndarray,
    period: np.ndarray,
    t0: np.ndarray,
    duration: np.ndarray,
    ok: np.ndarray,
    kind: str,
) -> dict[str, np.ndarray]:
    """Global and local views (and ``<name>_code``, 0 or 1 + index of VIEW_REASONS, per view)."""
    specs = list(SPECS[kind].items())
    global_view, local_view, *codes = numba_views.view_rows(
        np.ascontiguousarray(time),
        np.ascontiguousarray(flux),
        period,
        t0,
        duration,
        ok,
        np.array([spec.num_bins for _, spec in specs]),
        np.array([spec.width_factor for _, spec in specs]),
        np.array([spec.num_durations or 0.0 for _, spec in specs], float),
        kind == "kepler",
    )
    out = {"global_view": global_view, "local_view": local_view}
    for (name, _), code in zip(specs, codes, strict=True):
        out[f"{name}_code"] = np.asarray(code)
    return out


def views_for(
    time: Sequence[float] | np.ndarray,
    flux: Sequence[float] | np.ndarray,
    period: float,
    t0: float,
    duration: float,
    *,
    kind: str = "triage",
) -> tuple[np.ndarray, ...]:
    """Global and local views of one TCE.

    Parameters
    ----------
    time, flux : array-like
        The light curve (days, relative flux); non-finite points are dropped.
    period, t0, duration : float
        Period (days), epoch (same time system as ``time``) and duration (days).
    kind : {"triage", "vetting", "kepler"}
        ``"triage"``: Astronet-Triage (201/61 bins); ``"vetting"``: also returns the secondary
        view; ``"kepler"``: upstream Kepler (spline detrending, 2001/201 bins).

    Returns
    -------
    tuple of numpy.ndarray
        ``(global_view, local_view)``, plus ``secondary_view`` for ``kind="vetting"``.

    Raises
    ------
    SparseLightCurveError
        Too little data for a view (the reference skips such TCEs).
    EmptyLightCurveError
        No finite points.
    InputError
        Impossible parameters (period ≤ 0 or NaN, duration ≥ period, …) or an unknown ``kind``.
    """
    _check_kind(kind)
    time = np.asarray(time, float).ravel()
    flux = np.asarray(flux, float).ravel()
    if time.shape != flux.shape:
        raise InputError(
            f"time and flux lengths differ: {time.size} vs {flux.size}; pass one flux per time"
        )
    result = batch_views(
        time[None], flux[None], np.array([period]), np.array([t0]), np.array([duration]), kind=kind
    )
    status, reason = str(result[STATUS][0]), str(result[REASON][0])
    if status != STATUS_OK:
        where = f"TCE with period={period}, t0={t0}, duration={duration}: {reason}"
        if status == "empty":
            raise EmptyLightCurveError(where)
        if status == "sparse":
            raise SparseLightCurveError(where)
        raise InputError(f"{where}; check the ephemeris and the light curve's time system")
    names = list(num_bins(kind))
    return tuple(result[name][0] for name in names)
