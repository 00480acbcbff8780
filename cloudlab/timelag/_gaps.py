"""Frames missing from a channel: gaps that interpolation onto the common grid would bridge."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping

import numpy as np
import xarray as xr

from cloudlab.errors import InputError

__all__ = [
    "DEFAULT_MAX_GAP",
    "check_gaps",
    "find_gaps",
]

#: the longest gap (in cadences of the common grid) bridged by interpolation without asking
DEFAULT_MAX_GAP = 3.0


def find_gaps(
    cube: xr.DataArray, grid: np.ndarray, max_gap: float = DEFAULT_MAX_GAP
) -> list[tuple[np.datetime64, np.datetime64]]:
    """Gaps of ``cube`` inside the span of ``grid`` longer than ``max_gap`` grid steps.

    A gap is two consecutive frames further apart than ``max_gap + 0.5`` steps of ``grid``
    (the half step absorbs timing jitter, so two missing frames are a gap of 3 cadences).

    Returns
    -------
    list of (datetime64, datetime64)
        The times of the frames before and after each gap.
    """
    times = cube["time"].values
    step = (grid[1] - grid[0]) / np.timedelta64(1, "ns")
    spacing = np.diff(times) / np.timedelta64(1, "ns")
    inside = (times[1:] > grid[0]) & (times[:-1] < grid[-1])
    where = np.flatnonzero(inside & (spacing > (float(max_gap) + 0.5) * step))
    return [(times[i], times[i + 1]) for i in where]


def _describe(name: Hashable, gap: tuple[np.datetime64, np.datetime64], step_s: float) -> str:
    before, after = gap
    seconds = (after - before) / np.timedelta64(1, "s")
    return (
        f"channel {name!r} has no frame for {seconds:g} s between {before} and {after} "
        f"({seconds / step_s:.1f} cadences of {step_s:g} s)"
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
        The common time grid the channels are interpolated onto (its step is the cadence).
    max_gap : float
        Longest gap, in steps of ``grid``, bridged without asking.
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
    step_s = (grid[1] - grid[0]) / np.timedelta64(1, "s")
    found = [
        (name, gap) for name, cube in channels.items() for gap in find_gaps(cube, grid, max_gap)
    ]
    if not found:
        return
    first = _describe(*found[0], step_s)
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
