"""Lazy preparation of AIA cubes for time-lag analysis.

These steps prepare cubes that are already on one pixel grid; level-1 stacks are first
registered onto one grid by :func:`cloudlab.timelag.prepare` (:mod:`cloudlab.timelag.register`).

The steps chain and stay lazy: :func:`drop_bad_frames`, :func:`normalize_exposure`,
:func:`crop`, :func:`select_time`, then :func:`align_channels` puts every channel on one uniform
time grid built from absolute times (:func:`common_time_grid`, :func:`interpolate_to_grid`).
:func:`prepare_channels` runs the whole chain on cubes from :func:`cloudlab.io.aia.open_stack`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import replace

import dask.array as da
import numpy as np
import xarray as xr

from cloudlab.backend import array_module
from cloudlab.chunking import plan_spatial_chunks
from cloudlab.errors import InputError
from cloudlab.io.aia import frame_blocks, frames_of, header_of, wcs_of, with_frames
from cloudlab.timelag._gaps import DEFAULT_MAX_GAP, check_gaps
from cloudlab.timelag.kernels import timelag_bytes_per_pixel
from cloudlab.timelag.maps import check_channel_label, to_seconds

__all__ = [
    "align_channels",
    "check_channel_label",
    "common_time_grid",
    "crop",
    "drop_bad_frames",
    "interpolate_to_grid",
    "nominal_cadence",
    "normalize_exposure",
    "prepare_channels",
    "select_time",
]


def drop_bad_frames(cube: xr.DataArray) -> xr.DataArray:
    """Drop frames whose ``QUALITY`` is not 0 (raises if none is left)."""
    good = cube["quality"].values == 0
    if not good.any():
        raise InputError(
            f"{cube.name!r}: every frame has QUALITY != 0: pass drop_bad=False to keep them"
        )
    return _select_frames(cube, np.flatnonzero(good))


def _select_frames(cube: xr.DataArray, index: np.ndarray) -> xr.DataArray:
    """``cube.isel(time=index)``; file-backed cubes keep reading only the frames selected."""
    frames = frames_of(cube)
    if frames is None:
        return cube.isel(time=index)
    coords = cube.coords.to_dataset().isel(time=index).coords  # no per-frame dask graph
    return xr.DataArray(
        frame_blocks(frames.select(index)), dims=cube.dims, coords=coords,
        attrs=dict(cube.attrs), name=cube.name,
    )  # fmt: skip


def normalize_exposure(cube: xr.DataArray) -> xr.DataArray:
    """Divide each frame by its exposure time (lazy): DN -> DN/s.

    Raises
    ------
    InputError
        If an ``EXPTIME`` is not positive (the message names the file).
    """
    exptime = cube["exptime"].values
    bad = np.flatnonzero(~(exptime > 0))
    if bad.size:
        where = cube["url"].values[bad[0]] if "url" in cube.coords else f"frame {bad[0]}"
        raise InputError(f"{where}: EXPTIME {exptime[bad[0]]} is not positive: drop that frame")
    dtype = np.result_type(cube.dtype, np.float32)
    out = cube.astype(dtype) / cube["exptime"].astype(dtype)
    out.attrs = {**cube.attrs, "units": "DN / s"}
    out.name = cube.name
    frames = frames_of(cube)
    if frames is not None and frames.divisors is None:  # divide in the reads, crop stays cheap
        frames = replace(frames, dtype=np.dtype(dtype), divisors=tuple(exptime.tolist()))
        out = with_frames(out, frames)
    return out


def _corner_pixels(cube: xr.DataArray, bottom_left, top_right) -> np.ndarray:
    """Pixel coordinates (x, y) of the four corners of the world rectangle, as ``submap``."""
    wcs = wcs_of(cube)
    if hasattr(bottom_left, "frame"):
        import sunpy.map
        from astropy.coordinates import SkyCoord

        # sunpy's WCS (observer from the HAE keys, CROTA2 as a PC matrix), as submap uses
        empty = np.broadcast_to(np.float32(0), (cube.sizes["y"], cube.sizes["x"]))
        wcs = sunpy.map.Map(empty, header_of(cube)).wcs

        frame = bottom_left.frame
        bl = bottom_left.transform_to(frame)
        tr = top_right.transform_to(frame)
        lon = [bl.spherical.lon, bl.spherical.lon, tr.spherical.lon, tr.spherical.lon]
        lat = [bl.spherical.lat, tr.spherical.lat, tr.spherical.lat, bl.spherical.lat]
        corners = SkyCoord(lon, lat, frame=frame)
        return np.array(wcs.world_to_pixel(corners), dtype=float)
    tx = [_arcsec(bottom_left[0]), _arcsec(top_right[0])]
    ty = [_arcsec(bottom_left[1]), _arcsec(top_right[1])]
    import astropy.units as u

    lon = u.Quantity([tx[0], tx[0], tx[1], tx[1]], u.arcsec)
    lat = u.Quantity([ty[0], ty[1], ty[1], ty[0]], u.arcsec)
    lon_unit, lat_unit = (u.Unit(unit) for unit in wcs.world_axis_units)
    return np.array(wcs.world_to_pixel_values(lon.to_value(lon_unit), lat.to_value(lat_unit)))


def _arcsec(value) -> float:
    if hasattr(value, "unit"):
        import astropy.units as u

        return float(value.to_value(u.arcsec))
    return float(value)


def crop(cube: xr.DataArray, bottom_left, top_right) -> xr.DataArray:
    """Crop to the pixels covering a world-coordinate rectangle, exactly as ``Map.submap``.

    Parameters
    ----------
    cube : xarray.DataArray
        A cube or map with ``y``, ``x`` dims and a WCS header.
    bottom_left, top_right : SkyCoord or (Tx, Ty)
        Opposite corners; ``(Tx, Ty)`` pairs are helioprojective arcsec (floats or Quantities).

    Returns
    -------
    xarray.DataArray
        The lazy crop, with ``CRPIX1/2`` and ``NAXIS1/2`` of the header updated.

    Raises
    ------
    InputError
        If a corner is not finite in pixel space (off the disk) or the crop is empty.
    """
    pixels = _corner_pixels(cube, bottom_left, top_right)
    if not np.all(np.isfinite(pixels)):
        raise InputError(
            f"corners {bottom_left}, {top_right} do not map to pixels of {cube.name!r} "
            "(off-disk coordinates need a 3-D assumption)"
        )
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    left = int(np.clip(np.floor(pixels[0].min() + 0.5), 0, nx))
    bottom = int(np.clip(np.floor(pixels[1].min() + 0.5), 0, ny))
    right = int(np.clip(np.ceil(pixels[0].max() - 0.5) + 1, 0, nx))
    top = int(np.clip(np.ceil(pixels[1].max() - 0.5) + 1, 0, ny))
    if right <= left or top <= bottom:
        raise InputError(
            f"the crop is empty on {cube.name!r}: its corners map to pixels "
            f"x {pixels[0].min():.1f}..{pixels[0].max():.1f}, "
            f"y {pixels[1].min():.1f}..{pixels[1].max():.1f}, outside the {nx}x{ny} image"
        )
    header = header_of(cube)
    header["CRPIX1"] = float(header["CRPIX1"]) - left
    header["CRPIX2"] = float(header["CRPIX2"]) - bottom
    header["NAXIS1"] = right - left
    header["NAXIS2"] = top - bottom
    out = cube.isel(y=slice(bottom, top), x=slice(left, right))
    frames = frames_of(cube)
    if frames is not None:  # read only the crop's pixels of each file
        out = with_frames(out, frames.crop((bottom, top), (left, right)))
    out.attrs = {**cube.attrs, "fits_header": header.tostring()}
    return out


def _as_datetime(value, option: str) -> np.datetime64:
    """``value`` as datetime64[ns]; an InputError naming ``option`` (and ``--option``) if not."""
    try:
        return np.datetime64(value, "ns")
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"{option} (--{option}): cannot read {value!r} as a time; use ISO format, "
            "e.g. 2011-02-15T00:00:00"
        ) from exc


def select_time(cube: xr.DataArray, start=None, end=None, every: int = 1) -> xr.DataArray:
    """Keep frames with ``start <= time <= end`` and then every ``every``-th one (lazy).

    Raises
    ------
    InputError
        If ``every < 1``, ``start``/``end`` is not a time, or no frame is left.
    """
    if int(every) < 1:
        raise InputError(f"select_time: every must be >= 1, got {every}")
    times = cube["time"].values
    keep = np.ones(times.size, bool)
    if start is not None:
        keep &= times >= _as_datetime(start, "start")
    if end is not None:
        keep &= times <= _as_datetime(end, "end")
    index = np.flatnonzero(keep)[:: int(every)]
    if index.size == 0:
        raise InputError(
            f"{cube.name!r} has no frame between {start} and {end}: widen the time range"
        )
    return _select_frames(cube, index)


def nominal_cadence(cube: xr.DataArray) -> float:
    """A channel's cadence in seconds, robust to timing jitter and to missing frames.

    The median step gives the number of nominal steps between consecutive frames (so gaps count
    as several); the span divided by the total number of steps averages the jitter out, and the
    result is rounded to the millisecond.
    """
    times = cube["time"].values
    if times.size < 2:
        raise InputError(f"{cube.name!r} has fewer than 2 frames: a cadence needs two")
    step = np.diff(times) / np.timedelta64(1, "s")
    n_steps = np.maximum(np.rint(step / np.median(step)), 1).sum()
    return round(float((times[-1] - times[0]) / np.timedelta64(1, "s")) / n_steps, 3)


def common_time_grid(
    cubes: Sequence[xr.DataArray] | Mapping[Hashable, xr.DataArray],
    cadence=None,
) -> np.ndarray:
    """One uniform time grid (datetime64[ns]) covering the span that every cube observes.

    The grid starts at the latest first ``T_OBS`` and stays within the earliest last one, so no
    channel is extrapolated; all times are absolute, so the offsets between channels are kept.

    Parameters
    ----------
    cubes : sequence or mapping of xarray.DataArray
        Channels with a datetime64 ``time`` coordinate.
    cadence : float seconds, Quantity or timedelta64, optional
        Grid step; default the coarsest :func:`nominal_cadence` among the channels.

    Returns
    -------
    numpy.ndarray
        datetime64[ns] grid.
    """
    cubes = list(cubes.values()) if isinstance(cubes, Mapping) else list(cubes)
    if not cubes:
        raise InputError("common_time_grid: no channels given")
    for cube in cubes:
        if cube.sizes.get("time", 0) < 2:
            raise InputError(
                f"{cube.name!r} has fewer than 2 frames: a time grid needs two per channel"
            )
    first = max(c["time"].values[0] for c in cubes)
    last = min(c["time"].values[-1] for c in cubes)
    step_s = max(nominal_cadence(c) for c in cubes) if cadence is None else to_seconds(cadence)
    if not step_s > 0:
        raise InputError(f"common_time_grid: cadence must be positive, got {cadence}")
    step = np.timedelta64(int(round(step_s * 1e9)), "ns")
    if last <= first:
        raise InputError(
            f"the channels do not overlap in time ({first} is after {last}): give files that "
            "cover a common span"
        )
    n = int((last - first) // step) + 1
    if n < 2:
        raise InputError(
            f"the common time span {first} - {last} holds fewer than 2 samples at a "
            f"{step_s} s cadence: use a shorter cadence or a longer series"
        )
    return first + step * np.arange(n)


def _interpolation_weights(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, ...]:
    src = (source - target[0]) / np.timedelta64(1, "s")
    dst = (target - target[0]) / np.timedelta64(1, "s")
    if dst[0] < src[0] or dst[-1] > src[-1]:
        raise InputError(
            f"the target grid {target[0]} - {target[-1]} reaches outside the observed times "
            f"{source[0]} - {source[-1]} (no extrapolation): use common_time_grid"
        )
    left = np.clip(np.searchsorted(src, dst, side="right") - 1, 0, src.size - 2)
    weight = (dst - src[left]) / (src[left + 1] - src[left])
    return left, weight


def _interpolate_block(block, left: np.ndarray, weight: np.ndarray):
    xp = array_module(block)
    dtype = block.dtype if block.dtype.kind == "f" else np.float64
    left = xp.asarray(left)
    w = xp.asarray(weight, dtype=dtype).reshape((-1,) + (1,) * (block.ndim - 1))
    return block[left] * (1 - w) + block[left + 1] * w


def interpolate_to_grid(
    cube: xr.DataArray, grid: np.ndarray, chunks: Sequence[int] | None = None
) -> xr.DataArray:
    """Linearly interpolate a cube along absolute time onto ``grid`` (lazy, any backend).

    Parameters
    ----------
    cube : xarray.DataArray
        ``(time, y, x)`` with datetime64 ``time``.
    grid : numpy.ndarray
        Target datetime64 times inside the observed span.
    chunks : (cy, cx), optional
        Spatial chunks; time is always one chunk. Default: planned for worker memory.

    Returns
    -------
    xarray.DataArray
        ``(time, y, x)`` on ``grid``; per-frame coordinates are dropped.
    """
    grid = np.asarray(grid, "datetime64[ns]")
    left, weight = _interpolation_weights(cube["time"].values, grid)
    if chunks is None:  # planned for the time-lag step over the six AIA EUV channels
        per_pixel = timelag_bytes_per_pixel(grid.size, 6, 8)
        chunks = plan_spatial_chunks((cube.sizes["y"], cube.sizes["x"]), per_pixel)
    frames = frames_of(cube)
    if frames is not None:  # each (all frames x spatial block) read straight from the files
        data = with_frames(cube, frames, chunks).data
    else:
        data = cube.transpose("time", "y", "x").data
        if not isinstance(data, da.Array):
            data = da.from_array(data)
        data = data.rechunk((-1, *chunks))
    dtype = data.dtype if data.dtype.kind == "f" else np.dtype(np.float64)
    out = data.map_blocks(
        _interpolate_block,
        left,
        weight,
        chunks=((grid.size,), *data.chunks[1:]),
        dtype=dtype,
        meta=array_module(data).empty((0, 0, 0), dtype=dtype),
    )
    per_frame = [n for n, c in cube.coords.items() if c.dims == ("time",) and n != "time"]
    coords = {k: v for k, v in cube.drop_vars(per_frame).coords.items() if "time" not in v.dims}
    return xr.DataArray(
        out, dims=("time", "y", "x"), coords={**coords, "time": grid},
        attrs=dict(cube.attrs), name=cube.name,
    )  # fmt: skip


def align_channels(
    channels: Mapping[Hashable, xr.DataArray],
    *,
    cadence=None,
    chunks: Sequence[int] | None = None,
    max_gap: float = DEFAULT_MAX_GAP,
    allow_gaps: bool = False,
) -> dict[Hashable, xr.DataArray]:
    """Interpolate every channel onto one common uniform grid of absolute times.

    Parameters
    ----------
    channels : mapping
        Channel name to ``(time, y, x)`` cube (datetime64 times, same pixel grid).
    cadence : optional
        Grid step (see :func:`common_time_grid`).
    chunks : (cy, cx), optional
        Spatial chunks for every channel; default planned from the workers' memory for the
        time-lag step, so no further rechunk is needed.
    max_gap : float
        Longest gap between frames, in cadences (the grid step, or the channel's own frame
        spacing when longer), that interpolation may bridge (default 3).
    allow_gaps : bool
        Interpolate across longer gaps too (with a warning naming them) instead of refusing.

    Returns
    -------
    dict
        Channel name to its interpolated cube; all share the ``time`` coordinate.

    Raises
    ------
    InputError
        If a channel misses frames for longer than ``max_gap`` cadences inside the common span
        and ``allow_gaps`` is False (the message names the channel and the times).
    """
    grid = common_time_grid(channels, cadence)
    check_gaps(channels, grid, max_gap=max_gap, allow_gaps=allow_gaps)
    shapes = {k: (c.sizes["y"], c.sizes["x"]) for k, c in channels.items()}
    if len(set(shapes.values())) > 1:
        raise InputError(
            f"channels have different image shapes: {shapes}: crop them to the same region"
        )
    if chunks is None:
        shape = next(iter(shapes.values()))
        chunks = plan_spatial_chunks(shape, timelag_bytes_per_pixel(grid.size, len(channels)))
    return {k: interpolate_to_grid(c, grid, chunks) for k, c in channels.items()}


def prepare_channels(
    channels: Mapping[Hashable, xr.DataArray],
    *,
    bottom_left=None,
    top_right=None,
    start=None,
    end=None,
    every: int = 1,
    cadence=None,
    drop_bad: bool = True,
    chunks: Sequence[int] | None = None,
    max_gap: float = DEFAULT_MAX_GAP,
    allow_gaps: bool = False,
) -> dict[Hashable, xr.DataArray]:
    """The whole lazy preparation: quality filter, exposure, crop, time range, common grid.

    Parameters
    ----------
    channels : mapping
        Channel name to its cube from :func:`cloudlab.io.aia.open_stack`.
    bottom_left, top_right : SkyCoord or (Tx, Ty), optional
        Crop corners (both or neither).
    start, end : optional
        Time range (anything ``numpy.datetime64`` parses).
    every : int
        Keep every ``every``-th frame of each channel.
    cadence : optional
        Common grid step (default: the coarsest channel's median cadence).
    drop_bad : bool
        Drop frames with ``QUALITY != 0``.
    chunks : (cy, cx), optional
        Spatial chunks of the result.
    max_gap, allow_gaps
        Gaps (after dropping bad frames and selecting times) longer than ``max_gap`` cadences
        are refused unless ``allow_gaps`` (see :func:`align_channels`).

    Returns
    -------
    dict
        Channel name to its prepared cube (DN/s, common time grid).
    """
    if (bottom_left is None) != (top_right is None):
        raise InputError("prepare_channels: give both bottom_left and top_right, or neither")
    for name, cube in channels.items():
        check_channel_label(name, cube)
    prepared = {}
    for name, cube in channels.items():
        if drop_bad:
            cube = drop_bad_frames(cube)
        cube = normalize_exposure(cube)
        if bottom_left is not None:
            cube = crop(cube, bottom_left, top_right)
        prepared[name] = select_time(cube, start, end, every)
    return align_channels(
        prepared, cadence=cadence, chunks=chunks, max_gap=max_gap, allow_gaps=allow_gaps
    )
