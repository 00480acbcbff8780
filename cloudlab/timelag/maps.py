"""Lazy cross-correlation, time-lag and maximum-correlation maps of xarray light-curve cubes."""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence

import dask.array as da
import numpy as np
import xarray as xr

from cloudlab.backend import array_module
from cloudlab.chunking import plan_spatial_chunks
from cloudlab.errors import InputError
from cloudlab.io.aia import frames_of, with_frames
from cloudlab.timelag import kernels

__all__ = [
    "HOT_TO_COOL",
    "bounds_indices",
    "check_channel_label",
    "cross_correlation",
    "default_pairs",
    "lags_from_times",
    "max_correlation_map",
    "time_seconds",
    "timelag_map",
    "timelag_maps",
    "to_seconds",
]

#: AIA EUV channels ordered hot to cool, so that a positive lag means cooling
HOT_TO_COOL = (94, 335, 211, 193, 171, 131)

#: header keys that must agree between channels for their maps to be comparable
_WCS_KEYS = tuple(
    "NAXIS1 NAXIS2 CTYPE1 CTYPE2 CUNIT1 CUNIT2 CDELT1 CDELT2 CRPIX1 CRPIX2 CRVAL1 CRVAL2 "
    "CROTA2 PC1_1 PC1_2 PC2_1 PC2_2".split()
)


def time_seconds(time, *, name: str = "time") -> np.ndarray:
    """Times as float seconds since the first sample, honouring the coordinate's unit.

    Parameters
    ----------
    time
        A one-dimensional time coordinate: ``datetime64`` / pandas datetimes, ``timedelta64``,
        an astropy ``Time`` or ``Quantity`` (any time unit), or bare numbers. Bare numbers are
        seconds unless ``time.attrs["units"]`` (for a DataArray) names another time unit, which
        is then converted with astropy.units.
    name
        The coordinate's name, used in error messages.

    Raises
    ------
    InputError
        If the coordinate is empty or not one-dimensional, its unit is not a time unit or cannot
        be parsed, or its values are not times.
    """
    import astropy.units as u

    units = None
    if isinstance(time, xr.DataArray):
        units = time.attrs.get("units")
        time = time.values
    if type(time).__name__ == "Time" and hasattr(time, "jd1"):
        values = np.atleast_1d((time - time[0]).to_value(u.s))
    elif isinstance(time, u.Quantity):
        try:
            values = np.atleast_1d(time.to_value(u.s))
        except u.UnitConversionError as exc:
            raise InputError(
                f"coordinate {name!r} has unit {time.unit}, which is not a time unit; "
                "give times in seconds, minutes, ... or as datetimes"
            ) from exc
    else:
        values = np.asarray(time)
    if values.ndim != 1 or values.size == 0:
        raise InputError(f"the {name!r} coordinate must be one-dimensional and non-empty")
    if np.issubdtype(values.dtype, np.datetime64) or np.issubdtype(values.dtype, np.timedelta64):
        ns = (values - values[0]).astype("timedelta64[ns]").astype(np.int64)
        return ns / 1e9
    if not np.issubdtype(values.dtype, np.number):
        raise InputError(
            f"coordinate {name!r} has dtype {values.dtype}; give datetime64, timedelta64, "
            "an astropy Time or Quantity, or numbers in seconds"
        )
    scale = 1.0
    if units not in (None, ""):
        try:
            scale = u.Unit(str(units)).to(u.s)
        except (ValueError, u.UnitConversionError) as exc:
            raise InputError(
                f"coordinate {name!r} has attrs['units'] = {units!r}, which is not a time unit "
                "astropy can read; use e.g. 's', 'min', 'h' or 'd'"
            ) from exc
    values = values.astype(np.float64)
    return (values - values[0]) * scale


def lags_from_times(seconds: np.ndarray) -> np.ndarray:
    """The ``2N - 1`` lags (seconds) of an evenly sampled series, built as sunkit-image does.

    Raises
    ------
    InputError
        If the samples are not evenly spaced, or there are fewer than two.
    """
    if seconds.size < 2:
        raise InputError(f"need at least 2 time samples, got {seconds.size}")
    step = np.diff(seconds)
    if not np.allclose(step, step[0]) or step[0] <= 0:
        raise InputError(
            "times must be evenly sampled and increasing; interpolate the channels onto a common "
            "uniform grid first (cloudlab.timelag.align_channels)"
        )
    positive = np.cumsum(step)
    return np.concatenate([-positive[::-1], [0.0], positive])


def to_seconds(value) -> float:
    """One lag bound as float seconds (float seconds, astropy Quantity or numpy timedelta64)."""
    if hasattr(value, "unit"):
        import astropy.units as u

        return float(u.Quantity(value).to_value(u.s))
    if isinstance(value, np.timedelta64):
        return float(value / np.timedelta64(1, "ns")) * 1e-9
    return float(value)


def bounds_indices(lags: np.ndarray, lag_bounds) -> tuple[int, int]:
    """Positions ``start, stop`` of the lags inside the inclusive ``lag_bounds`` (seconds).

    Raises
    ------
    InputError
        If the bounds are reversed, reach beyond the longest lag of the series by more than half
        a step, or select no lag.
    """
    if lag_bounds is None:
        return 0, lags.size
    if hasattr(lag_bounds, "unit") and np.ndim(lag_bounds) == 1:
        lag_bounds = list(lag_bounds)
    if len(lag_bounds) != 2:
        raise InputError(f"lag_bounds must be (lower, upper), got {lag_bounds!r}")
    lower, upper = (to_seconds(v) for v in lag_bounds)
    if not lower <= upper:
        raise InputError(f"lag_bounds lower {lower} s is above upper {upper} s")
    step = lags[1] - lags[0]
    if lower < lags[0] - step / 2 or upper > lags[-1] + step / 2:
        raise InputError(
            f"lag_bounds ({lower} s, {upper} s) reach outside the series: its lags run from "
            f"{lags[0]} s to {lags[-1]} s"
        )
    inside = np.flatnonzero((lags >= lower) & (lags <= upper))
    if inside.size == 0:
        raise InputError(
            f"lag_bounds ({lower} s, {upper} s) select no lag: the series allows lags from "
            f"{lags[0]} s to {lags[-1]} s in steps of {lags[1] - lags[0]} s"
        )
    return int(inside[0]), int(inside[-1]) + 1


def _wcs_signature(arr: xr.DataArray) -> dict[str, object] | None:
    text = arr.attrs.get("fits_header")
    if not text:
        return None
    from astropy.io import fits

    header = fits.Header.fromstring(text) if isinstance(text, str) else fits.Header(text)
    return {k: header[k] for k in _WCS_KEYS if k in header}


def _wavelength(cube: xr.DataArray) -> float | None:
    """The channel's wavelength (Å): its ``wavelength`` coordinate, else the header's WAVELNTH."""
    if "wavelength" in cube.coords and cube["wavelength"].size == 1:
        return float(cube["wavelength"].values)
    text = cube.attrs.get("fits_header")
    if not text:
        return None
    from astropy.io import fits

    header = fits.Header.fromstring(text) if isinstance(text, str) else fits.Header(text)
    value = header.get("WAVELNTH")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def check_channel_label(name: Hashable, cube: xr.DataArray) -> None:
    """Refuse a numeric channel label that contradicts the files' ``WAVELNTH``.

    The wavelength is the cube's ``wavelength`` coordinate (:func:`cloudlab.io.aia.open_stack`
    sets it from ``WAVELNTH``) or, failing that, ``WAVELNTH`` in ``attrs["fits_header"]``.
    Labels that are not numbers (e.g. ``"hot"``) are not checked.

    Raises
    ------
    InputError
        Naming the first file (when the cube still knows its files), the label, the WAVELNTH
        and what to do.
    """
    try:
        label = float(str(name))
    except ValueError:
        return
    wavelength = _wavelength(cube)
    if wavelength is None or np.isclose(label, wavelength):
        return
    if "url" in cube.coords and cube["url"].size:
        where = f"{np.ravel(cube['url'].values)[0]} (and the other files of channel {name!r})"
    else:
        where = f"the data of channel {name!r} (attrs['fits_header'])"
    raise InputError(
        f"{where} has WAVELNTH {wavelength:g} Å but is labelled {name!r}: label the channel "
        f"{wavelength:g} (CLI: --channel {wavelength:g}=FILES) or give the {name} Å files"
    )


def _check_wcs(names: Sequence[Hashable], arrays: Sequence[xr.DataArray]) -> None:
    reference = None
    for name, arr in zip(names, arrays, strict=True):
        signature = _wcs_signature(arr)
        if signature is None:
            continue
        if reference is None:
            reference = (name, signature)
            continue
        ref_name, ref = reference
        for key in set(ref) | set(signature):
            a, b = ref.get(key), signature.get(key)
            same = (
                np.isclose(a, b, rtol=1e-6, atol=1e-6)
                if isinstance(a, int | float) and isinstance(b, int | float)
                else a == b
            )
            if not same:
                raise InputError(
                    f"channels {ref_name!r} and {name!r} have different WCS ({key}: {a!r} vs "
                    f"{b!r}); crop or reproject them onto the same pixel grid first"
                )


def _existing_chunks(
    arrays: Sequence[xr.DataArray], spatial: tuple[Hashable, ...]
) -> tuple[int, ...] | None:
    """The spatial chunks the channels already share, if time is already one chunk."""
    found = set()
    for arr in arrays:
        values = arr.transpose("time", *spatial).data
        if not isinstance(values, da.Array) or len(values.chunks[0]) != 1:
            return None
        found.add(tuple(c[0] for c in values.chunks[1:]))
    return found.pop() if len(found) == 1 else None


def _inputs(
    names: Sequence[Hashable],
    arrays: Sequence[xr.DataArray],
    chunks: Sequence[int] | None,
) -> tuple[list[da.Array], tuple[Hashable, ...], np.ndarray, xr.DataArray]:
    """Validate the channels and return their dask data (time one chunk), spatial dims, times."""
    first = arrays[0]
    for name, arr in zip(names, arrays, strict=True):
        if not isinstance(arr, xr.DataArray):
            raise TypeError(f"channel {name!r} must be an xarray.DataArray, not {type(arr)}")
        if "time" not in arr.dims or "time" not in arr.coords:
            raise InputError(f"channel {name!r} has no 'time' dimension with a coordinate")
        if arr.sizes["time"] == 0:
            raise InputError(f"channel {name!r} has no frames")
    spatial = tuple(d for d in first.dims if d != "time")
    for name, arr in zip(names, arrays, strict=True):
        if set(arr.dims) != set(first.dims):
            raise InputError(f"channel {name!r} has dims {arr.dims}, expected {first.dims}")
        shape = tuple(arr.sizes[d] for d in spatial)
        if shape != tuple(first.sizes[d] for d in spatial):
            raise InputError(
                f"channel {name!r} has spatial shape {shape}, channel {names[0]!r} has "
                f"{tuple(first.sizes[d] for d in spatial)}"
            )
        if not np.array_equal(arr["time"].values, first["time"].values):
            raise InputError(
                f"channels {names[0]!r} and {name!r} are not sampled at the same times; "
                "interpolate them onto one common grid first (cloudlab.timelag.align_channels)"
            )
    _check_wcs(names, arrays)
    seconds = time_seconds(first["time"])
    shape = tuple(first.sizes[d] for d in spatial)
    if chunks is None:
        chunks = _existing_chunks(arrays, spatial)
    if chunks is None:
        itemsize = max(np.dtype(a.dtype).itemsize for a in arrays)
        per_pixel = kernels.timelag_bytes_per_pixel(seconds.size, len(arrays), itemsize)
        chunks = plan_spatial_chunks(shape, per_pixel)
    if len(chunks) != len(spatial):
        raise InputError(f"chunks {tuple(chunks)} do not match the spatial dims {spatial}")
    data = []
    for arr in arrays:
        frames = frames_of(arr)
        if frames is not None:  # file-backed frames: each block read straight from the files
            data.append(with_frames(arr, frames, tuple(chunks)).data)
            continue
        values = arr.transpose("time", *spatial).data
        if not isinstance(values, da.Array):
            values = da.from_array(values, chunks=(-1, *chunks))
        data.append(values.rechunk((-1, *chunks)))
    return data, spatial, seconds, first


def _template(first: xr.DataArray, spatial: tuple[Hashable, ...]) -> xr.DataArray:
    """Spatial coordinates and attrs (WCS) that the output maps keep (not per-channel ones)."""
    template = first.isel(time=0, drop=True).transpose(*spatial)
    scalar = [name for name, coord in template.coords.items() if not coord.dims]
    return template.drop_vars(scalar)


def _pairs_peaks(
    data: list[da.Array],
    pairs: Sequence[tuple[int, int]],
    lags: np.ndarray,
    start: int,
    stop: int,
) -> da.Array:
    """One task per spatial block: all pairs' time lag and maximum correlation."""
    ndim = data[0].ndim - 1
    spatial_index = "".join(chr(ord("a") + i) for i in range(ndim))
    args = []
    for values in data:
        args += [values, "t" + spatial_index]
    meta = array_module(data[0]).empty((0,) * (ndim + 2), dtype=np.float64)
    return da.blockwise(
        kernels.pairs_block,
        "pq" + spatial_index,
        *args,
        new_axes={"p": len(pairs), "q": 2},
        concatenate=True,
        dtype=np.float64,
        meta=meta,
        pairs=tuple(pairs),
        lags=lags[start:stop],
        start=start,
        stop=stop,
    )


def cross_correlation(
    a: xr.DataArray,
    b: xr.DataArray,
    *,
    lag_bounds=None,
    chunks: Sequence[int] | None = None,
) -> xr.DataArray:
    """Cross-correlation of two light-curve cubes at every lag (sunkit-image's maths).

    Parameters
    ----------
    a, b : xarray.DataArray
        Cubes with a ``time`` dimension and coordinate (datetime64 or seconds), evenly sampled
        at the same times, and the same spatial dims.
    lag_bounds : (lower, upper), optional
        Inclusive lag range in seconds (floats or astropy Quantities).
    chunks : sequence of int, optional
        Spatial chunk sizes; default the chunks the inputs already share when their time axis
        is one chunk, else planned by :func:`cloudlab.chunking.plan_spatial_chunks`.

    Returns
    -------
    xarray.DataArray
        Dask-backed, dims ``("lag", *spatial)``, ``lag`` in seconds. A positive lag means ``b``
        peaks after ``a``. Pixels with a NaN sample or a flat light curve are NaN.
    """
    data, spatial, seconds, first = _inputs(("a", "b"), (a, b), chunks)
    lags = lags_from_times(seconds)
    start, stop = bounds_indices(lags, lag_bounds)
    spatial_index = "".join(chr(ord("a") + i) for i in range(len(spatial)))
    cc = da.blockwise(
        kernels.cross_correlation_block,
        "l" + spatial_index,
        data[0],
        "t" + spatial_index,
        data[1],
        "t" + spatial_index,
        new_axes={"l": stop - start},
        concatenate=True,
        dtype=np.float64,
        meta=array_module(data[0]).empty((0,) * (len(spatial) + 1), dtype=np.float64),
        start=start,
        stop=stop,
    )
    template = _template(first, spatial)
    lag = xr.DataArray(lags[start:stop], dims="lag", attrs={"units": "s"})
    return xr.DataArray(
        cc,
        dims=("lag", *spatial),
        coords={"lag": lag, **template.coords},
        attrs={**template.attrs, "long_name": "cross-correlation", "units": ""},
        name="cross_correlation",
    )


def _pair_map(a, b, lag_bounds, chunks, which: int) -> xr.DataArray:
    data, spatial, seconds, first = _inputs(("a", "b"), (a, b), chunks)
    lags = lags_from_times(seconds)
    start, stop = bounds_indices(lags, lag_bounds)
    peaks = _pairs_peaks(data, [(0, 1)], lags, start, stop)[0, which]
    template = _template(first, spatial)
    name, attrs = _OUTPUTS[which]
    return xr.DataArray(
        peaks,
        dims=spatial,
        coords=template.coords,
        attrs={**template.attrs, **attrs},
        name=name,
    )


_OUTPUTS = (
    ("timelag", {"units": "s", "long_name": "time lag"}),
    ("max_correlation", {"units": "", "long_name": "maximum cross-correlation"}),
)


def timelag_map(a: xr.DataArray, b: xr.DataArray, *, lag_bounds=None, chunks=None) -> xr.DataArray:
    """Per-pixel time lag (seconds) at which the cross-correlation of ``a`` and ``b`` peaks.

    Same arguments as :func:`cross_correlation`. Ties go to the most negative lag, as in
    sunkit-image; pixels with a NaN sample or a flat light curve are NaN.

    Returns
    -------
    xarray.DataArray
        Dask-backed map in seconds (``attrs["units"] == "s"``), keeping ``a``'s WCS header.
    """
    return _pair_map(a, b, lag_bounds, chunks, 0)


def max_correlation_map(
    a: xr.DataArray, b: xr.DataArray, *, lag_bounds=None, chunks=None
) -> xr.DataArray:
    """Per-pixel maximum of the cross-correlation of ``a`` and ``b`` over the allowed lags.

    Same arguments as :func:`cross_correlation`.

    Returns
    -------
    xarray.DataArray
        Dask-backed dimensionless map, keeping ``a``'s WCS header.
    """
    return _pair_map(a, b, lag_bounds, chunks, 1)


def default_pairs(channels: Sequence[Hashable]) -> list[tuple[Hashable, Hashable]]:
    """All pairs of ``channels``, each ordered hot before cool (AIA order 94, 335, 211, 193, 171,
    131; other channels after, in the order given)."""
    rank = {c: i for i, c in enumerate(HOT_TO_COOL)}
    ordered = sorted(channels, key=lambda c: (rank.get(_as_int(c), len(rank)),))
    return list(itertools.combinations(ordered, 2))


def _as_int(key: Hashable) -> Hashable:
    try:
        return int(key)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return key


def timelag_maps(
    channels: Mapping[Hashable, xr.DataArray],
    *,
    pairs: Sequence[tuple[Hashable, Hashable]] | None = None,
    lag_bounds=None,
    chunks: Sequence[int] | None = None,
    min_correlation: float | None = None,
) -> xr.Dataset:
    """Time-lag and maximum-correlation maps of many channel pairs in one graph.

    Each spatial block is one task that standardises and Fourier-transforms every channel once
    and then correlates every pair, so each channel is read and normalised once.

    Parameters
    ----------
    channels : mapping
        Channel name (e.g. wavelength in Å) to its cube, all on one common time grid and pixel
        grid (see :func:`cloudlab.timelag.align_channels`).
    pairs : sequence of (a, b), optional
        Pairs to correlate; default every pair ordered hot to cool (15 pairs for the six AIA EUV
        channels), so that positive lags mean cooling.
    lag_bounds : (lower, upper), optional
        Inclusive lag range in seconds (floats or astropy Quantities).
    chunks : sequence of int, optional
        Spatial chunk sizes; default planned from the workers' memory.
    min_correlation : float, optional
        Pixels whose maximum correlation is below this (in ``[-1, 1]``) get a NaN lag.

    Returns
    -------
    xarray.Dataset
        ``timelag`` (seconds) and ``max_correlation``, dims ``("pair", *spatial)``, with
        coordinates ``pair`` ("94-335"), ``channel_a`` and ``channel_b``.

    Raises
    ------
    InputError
        Among others, if a numeric channel label contradicts its data's ``WAVELNTH``
        (:func:`check_channel_label`).
    """
    if not channels:
        raise InputError("no channels given")
    if min_correlation is not None and not -1.0 <= float(min_correlation) <= 1.0:
        raise InputError(
            f"min_correlation (--min-correlation) must lie in [-1, 1], got {min_correlation!r}"
        )
    names = list(channels)
    pairs = default_pairs(names) if pairs is None else [tuple(p) for p in pairs]
    if not pairs:
        raise InputError("no channel pairs to correlate (need at least two channels)")
    for pair in pairs:
        if len(pair) != 2 or any(c not in channels for c in pair):
            raise InputError(f"pair {pair!r} names a channel not in {names}")
    used = [n for n in names if any(n in p for p in pairs)]
    for name in used:
        check_channel_label(name, channels[name])
    data, spatial, seconds, first = _inputs(used, [channels[n] for n in used], chunks)
    lags = lags_from_times(seconds)
    start, stop = bounds_indices(lags, lag_bounds)
    index = {n: i for i, n in enumerate(used)}
    peaks = _pairs_peaks(data, [(index[a], index[b]) for a, b in pairs], lags, start, stop)
    template = _template(first, spatial)
    coords = {
        "pair": [f"{a}-{b}" for a, b in pairs],
        "channel_a": ("pair", [_as_int(a) for a, _ in pairs]),
        "channel_b": ("pair", [_as_int(b) for _, b in pairs]),
        **template.coords,
    }
    dims = ("pair", *spatial)
    variables = {
        name: xr.DataArray(peaks[:, which], dims=dims, attrs={**template.attrs, **attrs})
        for which, (name, attrs) in enumerate(_OUTPUTS)
    }
    attrs = {"lag_bounds_s": [float(lags[start]), float(lags[stop - 1])]}
    if min_correlation is not None:
        weak = variables["max_correlation"] < float(min_correlation)
        variables["timelag"] = variables["timelag"].where(~weak)
        attrs["min_correlation"] = float(min_correlation)
    return xr.Dataset(variables, coords=coords, attrs=attrs)
