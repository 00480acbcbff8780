"""Compiled per-TCE kernel for the global and local views (numba).

The same algorithm as the NumPy path of :func:`cloudlab.astronet.views.batch_views`, one TCE at a
time in a compiled loop, and bit-for-bit the same result:

* fold τ = ((t + (P/2 − t0)) mod P) − P/2 with NumPy's ``mod`` (``fmod``, then the divisor's sign);
* no sort: every point's bins are found directly.  Bin *i* holds ℓ_i ≤ τ < ℓ_i + w with both edge
  sequences built by repeated addition, so a point belongs to bins b ≤ i < a, where a is the number
  of left edges ≤ τ and b the number of right edges ≤ τ (an arithmetic guess corrected against the
  actual edges); the fluxes are bucketed per bin;
* bin value: the median as ``np.median`` computes it (middle value, or the mean (a + b)/2 of the two
  middle values), found by rank or quickselect: it depends only on the values in the bin, not
  their order;
* sparse guards, empty-bin interpolation (``np.interp``'s arithmetic) or global-median fill, and the
  median/minimum normalisation, as in :func:`cloudlab.astronet.views.binned_view`.

Importing this module requires numba; :mod:`cloudlab.astronet.views` falls back to NumPy without it.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = [
    "ALL_EMPTY",
    "BAD_WIDTH",
    "FEW_IN_WINDOW",
    "FEW_POINTS",
    "LATE_WINDOW",
    "SHORT_COVERAGE",
    "ZERO_MIN",
    "view_rows",
]

# reason codes returned per row and view (0: fine); texts in cloudlab.astronet.views.VIEW_REASONS
FEW_POINTS, BAD_WIDTH, LATE_WINDOW, FEW_IN_WINDOW, SHORT_COVERAGE, ALL_EMPTY, ZERO_MIN = range(1, 8)


_SPLIT = 134217729.0  # 2**27 + 1, Veltkamp's splitting constant for float64


@numba.njit(cache=True)
def _npmod(a: float, b: float) -> float:
    """``np.mod(a, b)`` for floats with b > 0, bit for bit.

    NumPy takes ``fmod`` and, for a negative remainder, adds ``b``.  For a ≥ 0 the remainder
    a − q·b (q = ⌊a/b⌋) is a float, so it is computed exactly without calling ``fmod``: q·b is
    split into an exact sum hi + lo (Dekker's product), a − hi is exact (Sterbenz), and one
    rounding of the exact a − hi − lo returns it.  If q was off by one the result leaves [0, b)
    and ``fmod`` is used instead.
    """
    if a >= 0:
        q = np.floor(a / b)
        hi = q * b
        t = _SPLIT * q
        q_hi = t - (t - q)
        t = _SPLIT * b
        b_hi = t - (t - b)
        q_lo, b_lo = q - q_hi, b - b_hi
        lo = ((q_hi * b_hi - hi) + q_hi * b_lo + q_lo * b_hi) + q_lo * b_lo
        mod = (a - hi) - lo
        if 0 <= mod < b:
            return mod if mod != 0 else 0.0
    mod = np.fmod(a, b)
    if mod != 0.0:
        if (b < 0) != (mod < 0):
            mod += b
    else:
        mod = math.copysign(0.0, b)
    return mod


@numba.njit(cache=True)
def _median(values: np.ndarray, count: int) -> float:
    """Median of ``values[:count]`` as ``np.median`` (reorders ``values``).

    The middle value, or (a + b)/2 of the two middle values: found by rank for a handful of
    values, by quickselect (Hoare partition) otherwise.
    """
    k = count // 2
    if count <= 16:
        # by rank, branch-free: the k-th smallest value is the largest v with #{values < v} <= k
        k_lo = (count - 1) // 2
        low = high = -np.inf
        for i in range(count):
            v = values[i]
            less = 0
            for j in range(count):
                less += values[j] < v
            low = max(low, v if less <= k_lo else -np.inf)
            high = max(high, v if less <= k else -np.inf)
        return (low + high) / 2
    target = (count - 1) // 2
    lo, hi = 0, count - 1
    while hi > lo:
        pivot = values[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:
            while values[i] < pivot:
                i += 1
            while values[j] > pivot:
                j -= 1
            if i <= j:
                values[i], values[j] = values[j], values[i]
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            break
    low = values[target]
    if count % 2:
        return (low + low) / 2
    high = values[k]
    for i in range(k + 1, count):  # everything after the target is >= it
        high = min(high, values[i])
    return (low + high) / 2


@numba.njit(cache=True)
def _edges_at_or_below(edges: np.ndarray, start: float, inv_step: float, x: float) -> int:
    """Number of ``edges`` (increasing) ≤ ``x``: a guess from ``start + k/inv_step``, corrected."""
    num = edges.size
    guess = (x - start) * inv_step
    if guess < 0:
        k = 0
    elif guess >= num:
        k = num
    else:
        k = int(guess) + 1
    while k < num and edges[k] <= x:
        k += 1
    while k > 0 and edges[k - 1] > x:
        k -= 1
    return k


@numba.njit(cache=True)
def _bin_view(
    tau: np.ndarray,
    flux: np.ndarray,
    first: float,
    last: float,
    t_min: float,
    t_max: float,
    width: float,
    median_fill: bool,
    out: np.ndarray,
    work: np.ndarray,
    edges: np.ndarray,
    members: np.ndarray,
    counts: np.ndarray,
) -> int:
    """One view of one TCE into ``out``; returns a reason code (0 when the view is fine).

    ``tau``/``flux`` are the folded points (unsorted) with phases in [``first``, ``last``];
    ``work`` (≥ max(points, bins)), ``edges`` (2, bins), ``members`` (2, points) and ``counts``
    (bins + 1) are scratch space.
    """
    m = tau.size
    num = out.size
    if m < 2:
        return FEW_POINTS
    if not (width > 0) or not (width < t_max - t_min):
        return BAD_WIDTH
    if t_min > last:
        return LATE_WINDOW
    if not median_fill:
        inside = 0
        for j in range(m):
            inside += tau[j] >= t_min and tau[j] <= t_max
        if inside < 5:
            return FEW_IN_WINDOW
        if last - first < (t_max - t_min) / 2:
            return SHORT_COVERAGE
    spacing = (t_max - t_min - width) / (num - 1)
    lo, hi = edges[0, :num], edges[1, :num]
    lo[0], hi[0] = t_min, t_min + width
    for i in range(1, num):
        lo[i] = lo[i - 1] + spacing
        hi[i] = hi[i - 1] + spacing
    # bins b <= i < a of every point, then a bucket of fluxes per bin
    first_bin, end_bin = members[0], members[1]
    counts = counts[: num + 1]
    counts[:] = 0
    inv_step = 1 / spacing
    for j in range(m):
        x = tau[j]
        if x < lo[0] or x >= hi[num - 1]:
            first_bin[j] = end_bin[j] = 0
            continue
        a = _edges_at_or_below(lo, lo[0], inv_step, x)
        b = _edges_at_or_below(hi, hi[0], inv_step, x)
        first_bin[j], end_bin[j] = b, a
        counts[b] += 1  # a difference array of bin occupancy
        counts[a] -= 1
    occupancy = total = 0
    for i in range(num):  # counts[i] becomes the start of bin i in the bucket
        occupancy += counts[i]
        counts[i] = total
        total += occupancy
    bucket = np.empty(total)
    for j in range(m):  # counts[i] advances to the end of bin i while filling
        for i in range(first_bin[j], end_bin[j]):
            bucket[counts[i]] = flux[j]
            counts[i] += 1
    have_any = False
    start = 0
    for i in range(num):
        if counts[i] == start:
            out[i] = np.nan
        else:
            out[i] = _median(bucket[start : counts[i]], counts[i] - start)
            have_any = True
        start = counts[i]
    if median_fill:
        work[:m] = flux
        overall = _median(work, m)
        for i in range(num):
            if np.isnan(out[i]):
                out[i] = overall
    else:
        if not have_any:
            return ALL_EMPTY
        prev = -1
        for i in range(num):
            if np.isnan(out[i]):
                continue
            if prev < 0 and i > 0:
                for k in range(i):  # leading run: the first non-empty value
                    out[k] = out[i]
            elif prev >= 0 and i - prev > 1:
                slope = (out[i] - out[prev]) / (i - prev)
                for k in range(prev + 1, i):
                    out[k] = slope * (k - prev) + out[prev]
            prev = i
        for k in range(prev + 1, num):  # trailing run: the last non-empty value
            out[k] = out[prev]
    # normalise: median 0, minimum -1
    work[:num] = out
    centre = _median(work, num)
    minimum = np.inf
    for i in range(num):
        out[i] -= centre
        minimum = min(minimum, out[i])
    minimum = abs(minimum)
    if minimum == 0:
        return ZERO_MIN
    for i in range(num):
        out[i] /= minimum
    return 0


@numba.njit(cache=True, nogil=True)  # dask threads run batches side by side
def view_rows(
    time: np.ndarray,
    flux: np.ndarray,
    period: np.ndarray,
    t0: np.ndarray,
    duration: np.ndarray,
    ok: np.ndarray,
    num_bins: np.ndarray,
    width_factor: np.ndarray,
    num_durations: np.ndarray,
    median_fill: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Global and local views of every TCE row (rows with ``ok`` False are left NaN).

    Parameters
    ----------
    time, flux : numpy.ndarray
        (n_tce, n_points), non-finite entries ignored.
    period, t0, duration : numpy.ndarray
        (n_tce,) in days.
    ok : numpy.ndarray
        (n_tce,) bool: rows to compute.
    num_bins, width_factor, num_durations : numpy.ndarray
        (2,) geometry of the global and local view; ``num_durations[0]`` is unused (the global
        window is ±P/2), ``width_factor`` multiplies the period (global) or duration (local).
    median_fill : bool
        Upstream Kepler (global-median fill, no sparse guards) instead of Triage.

    Returns
    -------
    (global_view, local_view, global_code, local_code)
        Views (NaN rows where not computed or skipped) and reason codes (0: fine).
    """
    rows, points = time.shape
    global_view = np.full((rows, num_bins[0]), np.nan)
    local_view = np.full((rows, num_bins[1]), np.nan)
    codes = np.zeros((2, rows), np.int64)
    tau = np.empty(points)
    y = np.empty(points)
    work = np.empty(max(points, num_bins[0], num_bins[1]))
    edges = np.empty((2, max(num_bins[0], num_bins[1])))
    members = np.empty((2, points), np.int64)
    counts = np.empty(max(num_bins[0], num_bins[1]) + 1, np.int64)
    for r in range(rows):
        if not ok[r]:
            continue
        p, d = period[r], duration[r]
        half = p / 2
        shift = half - t0[r]
        m = 0
        first, last = np.inf, -np.inf
        for j in range(points):
            t, f = time[r, j], flux[r, j]
            if np.isfinite(t) and np.isfinite(f):
                x = _npmod(t + shift, p) - half
                first = min(first, x)
                last = max(last, x)
                tau[m] = x
                y[m] = f
                m += 1
        scratch = (work, edges, members, counts)
        codes[0, r] = _bin_view(
            tau[:m], y[:m], first, last, -p / 2, p / 2, width_factor[0] * p, median_fill,
            global_view[r], *scratch,
        )  # fmt: skip
        reach = num_durations[1] * d
        codes[1, r] = _bin_view(
            tau[:m], y[:m], first, last, max(-p / 2, -reach), min(p / 2, reach),
            width_factor[1] * d, median_fill, local_view[r], *scratch,
        )  # fmt: skip
        for k in range(2):
            if codes[k, r] != 0:
                view = global_view[r] if k == 0 else local_view[r]
                view[:] = np.nan
    return global_view, local_view, codes[0], codes[1]
