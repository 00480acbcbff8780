"""Frames missing from a channel: gaps that interpolation onto the common grid would bridge."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping

import numpy as np
import xarray as xr

from cloudlab.errors import InputError

__all__ = [
    "DEFAULT_MAX_GAP",
    "cadence_ns",
    "check_gaps",
    "find_gaps",
]

#: the longest gap (in cadences of the common grid) bridged by interpolation without asking
DEFAULT_MAX_GAP = 3.0


def cadence_ns(cube: xr.DataArray, grid: np.ndarray) -> float:
    """The cadence gaps are measured in (ns): the grid step, or the channel's median frame
    spacing when that is longer (a grid finer than the frames must not make every step a gap)."""
    step = (grid[1] - grid[0]) / np.timedelta64(1, "ns")
    spacing = np.diff(cube["time"].values) / np.timedelta64(1, "ns")
    return float(max(step, np.median(spacing))) if spacing.size else float(step)


def find_gaps(
    cube: xr.DataArray, grid: np.ndarray, max_gap: float = DEFAULT_MAX_GAP
) -> list[tuple[np.datetime64, np.datetime64]]:
    """Gaps of ``cube`` inside the span of ``grid`` longer than ``max_gap`` cadences.

    A gap is two consecutive frames further apart than ``max_gap + 0.5`` cadences (the half
    cadence absorbs timing jitter, so two missing frames are a gap of 3 cadences); the cadence
    is :func:`cadence_ns`.

    Returns
    -------
    list of (datetime64, datetime64)
        The times of the frames before and after each gap.
    """
    times = cube["time"].values
    spacing = np.diff(times) / np.timedelta64(1, "ns")
    inside = (times[1:] > grid[0]) & (times[:-1] < grid[-1])
    too_long = spacing > (float(max_gap) + 0.5) * cadence_ns(cube, grid)
    return [(times[i], times[i + 1]) for i in np.flatnonzero(inside & too_long)]


def _describe(name: Hashable, cube: xr.DataArray, grid: np.ndarray, gap) -> str:
    before, after = gap
    seconds = (after - before) / np.timedelta64(1, "s")
    cadence_s = cadence_ns(cube, grid) / 1e9
    return (
        f"channel {name!r} has no frame for {seconds:.4g} s between {before} and {after} "
        f"({seconds / cadence_s:.1f} cadences of {cadence_s:.4g} s)"
    )


def check_gaps(
    channels: Mapping[Hashable, xr.DataArray],
    grid: np.ndarray,
    *,
    max_gap: float = DEFAULT_MAX_GAP,
    allow_gaps: bool = False,
) -> None:
    """Refuse (or, with ``allow_gaps``, warn about) gaps longer than ``max_gap`` cadences.

    Parameters
    ----------
    channels : mapping
        Channel name to its cube, with a datetime64 ``time`` coordinate.
    grid : numpy.ndarray
        The common time grid the channels are interpolated onto.
    max_gap : float
        Longest gap, in cadences (the grid step, or the channel's frame spacing when longer),
        bridged without asking.
    allow_gaps : bool
        Interpolate across longer gaps too, with a warning naming them.

    Raises
    ------
    InputError
        If a channel has a longer gap and ``allow_gaps`` is False; the message names the channel,
        the times around the gap and ``allow_gaps=True`` / ``--allow-gaps``.
    """
    if not float(max_gap) > 0:
        raise InputError(
            f"max_gap (--max-gap) must be a positive number of cadences, got {max_gap}"
        )
    found = [
        (name, gap) for name, cube in channels.items() for gap in find_gaps(cube, grid, max_gap)
    ]
    if not found:
        return
    name, gap = found[0]
    first = _describe(name, channels[name], grid, gap)
    others = sorted({str(name) for name, _ in found[1:]})
    more = f" and {len(found) - 1} more gap(s) (channels {', '.join(others)})" if others else ""
    if allow_gaps:
        warnings.warn(
            f"{first}{more}: interpolated across, so the light curves there are invented "
            "straight lines (allow_gaps=True)",
            stacklevel=3,
        )
        return
    raise InputError(
        f"{first}{more}, longer than max_gap={max_gap:g} cadences: interpolation would invent "
        "the missing frames; choose a time range without the gap (--start/--end), or pass "
        "allow_gaps=True (CLI: --allow-gaps) to interpolate across it"
    )
