"""Lazy registration of AIA level-1 stacks onto one helioprojective grid, with derotation.

:func:`prepare` turns the cubes of :func:`cloudlab.io.aia.open_stack` (level-1 frames, each with
its own plate scale, roll angle and reference pixel) into cubes on one common grid, as aiapy's
``register`` would make them and then crop them, optionally following the solar surface to a
reference time as sunpy's ``propagate_with_solar_surface`` does. Each frame is one dask task that
reads only the input rows the region touches (compressed tile rows for RICE files) and
interpolates them.

Interpolation: cubic B-spline (``scipy.ndimage.map_coordinates`` with ``order=3`` and the spline
prefilter), as aiapy's ``register`` (``Map.rotate(order=3, method="scipy")``, which calls
``scipy.ndimage.affine_transform`` with ``order=3``) and reproject's ``order="bicubic"``. The
prefilter is global, so each task reads ``margin`` extra pixels around what it samples; the
difference to a whole-image filter decays as ``0.268**margin``.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace

import dask.array as da
import numpy as np
import xarray as xr
from astropy.io import fits as afits
from astropy.wcs import WCS
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from scipy import interpolate, ndimage

from cloudlab import fits
from cloudlab.errors import FITSFormatError, InputError, MissingDependencyError
from cloudlab.fits.header import HDUInfo
from cloudlab.io.aia import frames_of, image_hdu
from cloudlab.timelag import calibration, geometry
from cloudlab.timelag.steps import align_channels, check_channel_label, drop_bad_frames

__all__ = [
    "Frame",
    "Grid",
    "MAP_STEPS",
    "MAP_TOLERANCE",
    "fast_pixel_map",
    "frame_of",
    "grid_for",
    "hgs_axis_drift",
    "observers",
    "pixel_map",
    "prepare",
    "register_frame",
]

#: WCS keywords a level-1 frame must carry (CROTA2 may be replaced by a PC matrix)
_WCS_KEYS = ("CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2", "CDELT1", "CDELT2", "CRPIX1", "CRPIX2",
             "CRVAL1", "CRVAL2")  # fmt: skip
_ROTATION_KEYS = ("CROTA2", "PC1_1", "PC1_2", "PC2_1", "PC2_2")
_OBSERVER_KEYS = ("HGLN_OBS", "HGLT_OBS", "DSUN_OBS")
_HAE_KEYS = ("HAEX_OBS", "HAEY_OBS", "HAEZ_OBS")
_ARCSEC = np.pi / 180 / 3600
#: grid pixels between the nodes where :func:`fast_pixel_map` computes the exact map, tried in
#: turn (coarsest first)
MAP_STEPS = (256, 32)
#: largest error (input pixels) :func:`fast_pixel_map` accepts at its check points
MAP_TOLERANCE = 1e-3
#: default solar radius (m) when RSUN_REF is absent (AIA's value)
_RSUN_REF = 696_000_000.0


@dataclass(frozen=True)
class Frame:
    """What one registration task needs to know about one level-1 frame (small, picklable).

    Attributes
    ----------
    info : HDUInfo
        Where the image is (header text dropped).
    cards : tuple
        ``(key, value)`` WCS cards of the frame.
    exptime : float
        Exposure time (s).
    seconds : float
        ``T_OBS`` minus the reference time (s).
    observer : geometry.Observer or None
        The frame's observer (needed for derotation).
    axis_drift : float
        Turn of the HGS axes from the reference time to ``T_OBS`` (rad).
    degradation : float
        Degradation factor the image is divided by (1: no correction).
    """

    info: HDUInfo
    cards: tuple
    exptime: float
    seconds: float
    observer: geometry.Observer | None
    axis_drift: float = 0.0
    degradation: float = 1.0


@dataclass(frozen=True)
class Grid:
    """The common output grid: its WCS cards, shape and the reference observer.

    Attributes
    ----------
    cards : tuple
        ``(key, value)`` header cards of the grid (TAN, north up, ``scale`` arcsec/px).
    shape : (ny, nx)
        Grid shape.
    observer : geometry.Observer or None
        Observer at the reference time.
    rsun : float
        Radius (m) of the sphere the derotation follows.
    derotate : bool
        Follow the solar surface from the reference time to each frame's ``T_OBS``.
    model : str
        Differential-rotation model (see :data:`cloudlab.timelag.geometry.ROTATION_MODELS`).
    margin : int
        Extra input pixels read around the sampled area (spline prefilter support).
    """

    cards: tuple
    shape: tuple[int, int]
    observer: geometry.Observer | None
    rsun: float
    derotate: bool
    model: str = "howard"
    margin: int = 16

    def header(self) -> afits.Header:
        """The grid as a FITS header."""
        header = afits.Header()
        for key, value in self.cards:
            header[key] = value
        return header


@functools.lru_cache(maxsize=256)
def _wcs(cards: tuple) -> WCS:
    header = afits.Header()
    for key, value in cards:
        header[key] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return WCS(header, naxis=2)


def _value(info: HDUInfo, key: str, kind=float):
    """A header value converted with ``kind``; FITSFormatError naming file and key if not."""
    value = info.get(key)
    if value is None or value == "":
        raise FITSFormatError(
            f"{info.url}: header key {key} is missing: AIA level-1 frames need it"
        )
    try:
        return kind(value)
    except (TypeError, ValueError) as err:
        raise FITSFormatError(
            f"{info.url}: header key {key} = {value!r} is not a {kind.__name__}"
        ) from err


def _wcs_cards(info: HDUInfo) -> tuple:
    """The frame's WCS cards, checked: a buildable celestial WCS with a roll angle."""
    cards = [(k, _value(info, k, str if k.startswith(("CTYPE", "CUNIT")) else float))
             for k in _WCS_KEYS]  # fmt: skip
    rotation = [(k, float(info.get(k))) for k in _ROTATION_KEYS if info.get(k) is not None]
    if not rotation:
        raise FITSFormatError(
            f"{info.url}: header key CROTA2 (or a PCi_j matrix) is missing: the roll angle of a "
            "level-1 frame must be known to register it"
        )
    cards = (("NAXIS", 2), ("NAXIS1", info.shape[1]), ("NAXIS2", info.shape[0]), *cards, *rotation)
    try:
        wcs = _wcs(cards)
        ok = wcs.has_celestial and np.all(np.isfinite(wcs.wcs.cdelt))
    except Exception as err:  # noqa: BLE001 (wcslib raises many types)
        raise FITSFormatError(f"{info.url}: cannot build its WCS: {err}") from err
    if not ok:
        raise FITSFormatError(
            f"{info.url}: its WCS (CTYPE1/2 {dict(cards)['CTYPE1']!r}, {dict(cards)['CTYPE2']!r}) "
            "is not a celestial (helioprojective) WCS"
        )
    return cards


def frame_of(info: HDUInfo, t_obs, exptime: float, reference_time) -> Frame:
    """Check one frame's header and collect what its task needs (observer filled in later).

    Raises
    ------
    FITSFormatError
        Missing or malformed WCS keys, no roll angle (``CROTA2``) or a non-positive
        ``EXPTIME``, naming the file and the key.
    """
    if not exptime > 0:
        raise FITSFormatError(f"{info.url}: EXPTIME {exptime} is not positive: drop that frame")
    cards = _wcs_cards(info)
    seconds = float((np.datetime64(t_obs, "ns") - reference_time) / np.timedelta64(1, "s"))
    return Frame(info.light(), cards, float(exptime), seconds, None)


def _sunpy():
    try:
        import astropy.units as u
        from astropy.coordinates import SkyCoord
        from astropy.time import Time
        from sunpy.coordinates import frames, transform_with_sun_center
    except ImportError as err:  # pragma: no cover (sunpy is in the solar extra)
        raise MissingDependencyError(
            "derotation needs sunpy: pip install 'cloudlab[solar]' or pass derotate=False"
        ) from err
    return u, SkyCoord, Time, frames, transform_with_sun_center


def hgs_axis_drift(reference_time, times) -> np.ndarray:
    """Turn (rad) of Stonyhurst heliographic axes from ``reference_time`` to each of ``times``.

    The HGS longitude, at each time, of the inertial direction that has longitude 0 at the
    reference time (computed with sunpy, ignoring the motion of the Sun's centre as
    ``propagate_with_solar_surface`` does).
    """
    u, SkyCoord, Time, frames, transform_with_sun_center = _sunpy()
    times = Time(np.asarray(times, "datetime64[ns]"))
    start = frames.HeliographicStonyhurst(obstime=Time(np.datetime64(reference_time, "ns")))
    zero = SkyCoord(0 * u.deg, 0 * u.deg, 1 * u.km, frame=start)
    with transform_with_sun_center():
        moved = zero.transform_to(frames.HeliographicStonyhurst(obstime=times))
    return np.atleast_1d(moved.lon.wrap_at(180 * u.deg).to_value(u.rad))


def observers(infos: Sequence[HDUInfo], times) -> list[geometry.Observer]:
    """The observers of frames as sunpy's ``AIAMap`` reads them, at their ``T_OBS``.

    ``HAEX_OBS``/``HAEY_OBS``/``HAEZ_OBS`` (heliocentric mean ecliptic) when a frame has them,
    else ``HGLN_OBS``/``HGLT_OBS``/``DSUN_OBS``.

    Raises
    ------
    FITSFormatError
        A frame with neither set complete, naming the file and the missing key.
    """
    u, SkyCoord, Time, frames, _ = _sunpy()
    from astropy.coordinates import HeliocentricMeanEcliptic

    hae = [all(i.get(k) is not None for k in _HAE_KEYS) for i in infos]
    out: list[geometry.Observer | None] = [None] * len(infos)
    for use_hae, keys in ((True, _HAE_KEYS), (False, _OBSERVER_KEYS)):
        index = [k for k, h in enumerate(hae) if h == use_hae]
        if not index:
            continue
        values = np.array([[_value(infos[k], key) for key in keys] for k in index])
        obstime = Time(np.asarray(times, "datetime64[ns]")[index])
        if use_hae:
            coord = SkyCoord(*values.T * u.m, representation_type="cartesian",
                             frame=HeliocentricMeanEcliptic(obstime=obstime))  # fmt: skip
            coord = coord.transform_to(frames.HeliographicStonyhurst(obstime=obstime))
            lon, lat, dist = (
                coord.lon.to_value(u.rad),
                coord.lat.to_value(u.rad),
                coord.radius.to_value(u.m),
            )
        else:
            lon, lat, dist = np.deg2rad(values[:, 0]), np.deg2rad(values[:, 1]), values[:, 2]
        for j, k in enumerate(index):
            out[k] = geometry.Observer(float(lon[j]), float(lat[j]), float(dist[j]))
    return out


def _arcsec(value) -> float:
    if hasattr(value, "unit"):
        import astropy.units as u

        return float(value.to_value(u.arcsec))
    return float(value)


def _region_arcsec(region) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(bottom_left, top_right)`` as helioprojective arcsec pairs (SkyCoords or pairs)."""
    try:
        bottom_left, top_right = region
    except (TypeError, ValueError) as err:
        raise InputError(f"region={region!r}: give (bottom_left, top_right)") from err
    corners = []
    for corner in (bottom_left, top_right):
        if hasattr(corner, "frame"):
            corners.append((_arcsec(corner.Tx), _arcsec(corner.Ty)))
        else:
            corners.append((_arcsec(corner[0]), _arcsec(corner[1])))
    (x0, y0), (x1, y1) = corners
    if not (x1 > x0 and y1 > y0):
        raise InputError(f"region={region!r}: top_right must lie right of and above bottom_left")
    return corners[0], corners[1]


def grid_for(reference: Frame, region, scale: float, shape: tuple[int, int], t_ref, rsun: float,
             derotate: bool, model: str, margin: int) -> Grid:  # fmt: skip
    """The common grid: ``scale`` arcsec/px, north up, ``CRVAL`` of the reference frame at a
    pixel corner (as aiapy's ``register`` lays out even-sized images), cropped to ``region``
    with ``Map.submap``'s rounding; ``region=None`` keeps ``shape`` pixels centred on ``CRVAL``.
    """
    crval = dict(reference.cards)
    base = (("CTYPE1", "HPLN-TAN"), ("CTYPE2", "HPLT-TAN"), ("CUNIT1", "arcsec"),
            ("CUNIT2", "arcsec"), ("CDELT1", scale), ("CDELT2", scale),
            ("CRVAL1", crval["CRVAL1"]), ("CRVAL2", crval["CRVAL2"]))  # fmt: skip
    if region is None:
        left, bottom, nx, ny = -(shape[1] // 2), -(shape[0] // 2), shape[1], shape[0]
    else:
        (x0, y0), (x1, y1) = _region_arcsec(region)
        wcs = _wcs((("NAXIS", 2), *base, ("CRPIX1", 0.5), ("CRPIX2", 0.5)))
        px, py = wcs.world_to_pixel_values(np.array([x0, x0, x1, x1]) / 3600,
                                           np.array([y0, y1, y1, y0]) / 3600)  # fmt: skip
        left, bottom = int(np.floor(px.min() + 0.5)), int(np.floor(py.min() + 0.5))
        nx = int(np.ceil(px.max() - 0.5)) + 1 - left
        ny = int(np.ceil(py.max() - 0.5)) + 1 - bottom
    cards = [("NAXIS", 2), ("NAXIS1", nx), ("NAXIS2", ny), *base,
             ("CRPIX1", 0.5 - left), ("CRPIX2", 0.5 - bottom)]  # fmt: skip
    stamp = np.datetime_as_string(np.datetime64(t_ref, "us"), unit="us")
    cards += [("DATE-OBS", stamp), ("DATE-AVG", stamp), ("T_OBS", stamp + "Z"),
              ("RSUN_REF", rsun), ("LVL_NUM", 1.5), ("BUNIT", "DN/s")]  # fmt: skip
    observer = reference.observer
    if observer is not None:
        lon, lat = (float(np.rad2deg(v)) for v in (observer.lon, observer.lat))
        cards += [("HGLN_OBS", lon), ("HGLT_OBS", lat), ("DSUN_OBS", observer.dist)]
    return Grid(tuple(cards), (ny, nx), observer, rsun, derotate, model, margin)


def pixel_map(frame: Frame, grid: Grid, rows: np.ndarray, cols: np.ndarray):
    """Input pixel coordinates ``(x, y)`` (0-based) in ``frame`` of grid pixels ``(rows, cols)``.

    Grid pixel -> helioprojective (reference time) -> [solar rotation to the frame's ``T_OBS``]
    -> frame pixel through the frame's own WCS. NaN where derotation leaves the disk.
    """
    lon, lat = _wcs(grid.cards).pixel_to_world_values(cols, rows)
    if grid.derotate:
        tx, ty = geometry.rotate_hpc(
            np.deg2rad(lon), np.deg2rad(lat), source=grid.observer, target=frame.observer,
            duration_s=frame.seconds, axis_drift=frame.axis_drift, rsun=grid.rsun,
            model=grid.model,
        )  # fmt: skip
        lon, lat = np.rad2deg(tx), np.rad2deg(ty)
    return _wcs(frame.cards).world_to_pixel_values(lon, lat)


def _spline_weights(n: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes every ``step`` pixels of ``0..n-1`` (the last pixel included) and the ``(n, nodes)``
    matrix whose product with values at the nodes is their not-a-knot cubic spline at every
    pixel."""
    nodes = np.unique(np.append(np.arange(0, n, step), n - 1))
    weights = interpolate.CubicSpline(nodes, np.eye(len(nodes)), bc_type="not-a-knot")
    return nodes, weights(np.arange(n))


def _coarse_map(frame: Frame, grid: Grid, step: int, tolerance: float, out: np.ndarray) -> bool:
    """Fill ``out`` (``(2, ny, nx)``: input ``y``, ``x``) with the map interpolated from nodes
    every ``step`` grid pixels; False (``out`` untouched) when a check point is off by more than
    ``tolerance`` pixels, a node is undefined, or the grid is under ``4 * step`` pixels."""
    if min(grid.shape) < 4 * step:
        return False
    (rows, wy), (cols, wx) = (_spline_weights(n, step) for n in grid.shape)
    coarse = pixel_map(frame, grid, *np.meshgrid(rows, cols, indexing="ij"))
    mid_y, mid_x = (rows[:-1] + rows[1:]) // 2, (cols[:-1] + cols[1:]) // 2
    exact = pixel_map(frame, grid, *np.meshgrid(mid_y, mid_x, indexing="ij"))
    for values, check in zip(coarse, exact, strict=True):
        approx = wy[mid_y] @ values @ wx[mid_x].T
        if not np.all(np.abs(approx - check) <= tolerance):  # also NaN anywhere
            return False
    for k, values in enumerate(reversed(coarse)):
        np.matmul(wy @ values, wx.T, out=out[k])
    return True


def _map_coordinates(frame: Frame, grid: Grid, steps: Sequence[int] = MAP_STEPS,
                     tolerance: float = MAP_TOLERANCE) -> np.ndarray:  # fmt: skip
    """Input ``(y, x)`` of every grid pixel as one ``(2, ny, nx)`` array (as
    ``scipy.ndimage.map_coordinates`` takes them): see :func:`fast_pixel_map`."""
    out = np.empty((2, *grid.shape))
    for step in steps:
        if _coarse_map(frame, grid, step, tolerance, out):
            return out
    out[1], out[0] = pixel_map(frame, grid, *np.indices(grid.shape, dtype=np.float64))
    return out


def fast_pixel_map(frame: Frame, grid: Grid, steps: Sequence[int] = MAP_STEPS,
                   tolerance: float = MAP_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """:func:`pixel_map` of every grid pixel, from exact values on a coarse grid.

    For each node spacing of ``steps`` in turn (coarsest first), the exact map is computed every
    ``step`` grid pixels along each axis (and at the last row and column) and interpolated with
    a separable not-a-knot cubic spline (two small matrix products). It is also computed exactly
    at the centre of every coarse cell, where the interpolation error of a smooth map is
    largest: if all of those agree with the interpolation to ``tolerance`` input pixels, the
    interpolation is kept. When no spacing passes (or the map is undefined at a node: NaN, a
    derotated region reaching off the disk), or the grid is smaller than four spacings, every
    pixel is computed exactly. The result is thus within ``tolerance`` pixels of
    :func:`pixel_map` at every checked point; on AIA geometry the largest error found over all
    pixels is 1e-5 pixel with derotation, 1e-9 without.

    Returns
    -------
    x, y : numpy.ndarray
        Input pixel coordinates (0-based), shape ``grid.shape``.
    """
    y, x = _map_coordinates(frame, grid, steps, tolerance)
    return x, y


def _window(x: np.ndarray, y: np.ndarray, inside: np.ndarray, shape, margin: int):
    """The input box (y0, y1, x0, x1) holding every sample ``inside`` plus ``margin``, or None."""
    if not inside.any():
        return None
    ny, nx = shape
    every = inside.all()
    low = [v.min() if every else v.min(where=inside, initial=np.inf) for v in (x, y)]
    high = [v.max() if every else v.max(where=inside, initial=-np.inf) for v in (x, y)]
    x0, y0 = (max(int(np.floor(v)) - margin, 0) for v in low)
    x1, y1 = (min(int(np.ceil(v)) + margin + 1, n) for v, n in zip(high, (nx, ny), strict=True))
    return (y0, y1, x0, x1) if x1 > x0 and y1 > y0 else None


def _interpolate(window: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Cubic-spline samples (float32) of ``window`` at ``coords`` (``(2, ...)``: y, x); NaN where
    a NaN pixel is in reach."""
    bad = ~np.isfinite(window) if window.dtype.kind == "f" else None
    if bad is not None and bad.any():
        window = np.where(bad, 0.0, window)
    else:
        bad = None
    coeffs = ndimage.spline_filter(window, order=3, output=np.float64, mode="mirror")
    out = ndimage.map_coordinates(coeffs, coords, np.float32, order=3, mode="mirror",
                                  prefilter=False)  # fmt: skip
    if bad is not None:
        reach = ndimage.binary_dilation(bad, np.ones((3, 3), bool)).astype(np.float32)
        out[ndimage.map_coordinates(reach, coords, order=1, mode="nearest") > 0] = np.nan
    return out


def register_frame(frame: Frame, grid: Grid) -> np.ndarray:
    """One frame on the grid, in DN/s: shape ``(1, ny, nx)``, float32, NaN outside the frame."""
    coords = _map_coordinates(frame, grid)
    y, x = coords
    shape = frame.info.shape
    inside = (x >= -0.5) & (x <= shape[1] - 0.5) & (y >= -0.5) & (y <= shape[0] - 0.5)
    box = _window(x, y, inside, shape, grid.margin)
    if box is None:
        return np.full((1, *grid.shape), np.nan, np.float32)
    y0, y1, x0, x1 = box
    window = fits.read_region(frame.info, (slice(y0, y1), slice(x0, x1)))
    every = inside.all()  # else sample the outside at the window's corner, then blank it
    y -= y0
    x -= x0
    if not every:
        coords[:, ~inside] = 0.0
    out = _interpolate(window, coords)
    out /= np.float32(frame.exptime * frame.degradation)
    if not every:
        out[~inside] = np.nan
    return out[None]


def _check_coverage(frame: Frame, grid: Grid, whole_field: bool = False) -> None:
    """Refuse, before computing, a region off the disk or reaching outside ``frame`` (with
    ``whole_field``, the grid is the frame's own field: its corners may fall outside, as
    aiapy's ``register`` fills them)."""
    ny, nx = grid.shape
    rows = np.array([0, 0, ny - 1, ny - 1, (ny - 1) / 2], float)
    cols = np.array([0, nx - 1, nx - 1, 0, (nx - 1) / 2], float)
    x, y = pixel_map(frame, grid, rows, cols)
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.any():
        raise InputError(
            f"{frame.info.url}: the region lies off the solar disk, where derotation is "
            "undefined: choose an on-disk region or pass derotate=False"
        )
    if whole_field:
        return
    height, width = frame.info.shape
    out = ~((x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)) & finite
    if out.any():
        raise InputError(
            f"{frame.info.url}: the region reaches outside this {width}x{height} frame (its "
            f"corners fall at pixels x {np.nanmin(x):.1f}..{np.nanmax(x):.1f}, "
            f"y {np.nanmin(y):.1f}..{np.nanmax(y):.1f}): choose a region inside every frame"
        )


def _with_pointing(frame: Frame, update: Mapping[str, float]) -> Frame:
    """``frame`` with its WCS cards replaced by ``update`` (a roll as CROTA2, no PC matrix)."""
    cards = [(k, update.get(k, v)) for k, v in frame.cards if k not in _ROTATION_KEYS]
    return replace(frame, cards=(*cards, ("CROTA2", update["CROTA2"])))


def _date_obs(info: HDUInfo, t_obs) -> np.datetime64:
    """``DATE-OBS`` (the exposure start, the time aiapy's ``correct_degradation`` uses for an
    AIA map), else ``T_OBS``."""
    value = info.get("DATE-OBS")
    if value is None or value == "":
        return np.datetime64(t_obs, "ns")
    try:
        return np.datetime64(str(value).strip().rstrip("Z"), "ns")
    except ValueError as err:
        raise FITSFormatError(f"{info.url}: header key DATE-OBS = {value!r} is not a time") from err


def _calibrated(frames: list[Frame], infos: Sequence[HDUInfo], times, wavelength: int,
                tables: Mapping[str, object]) -> list[Frame]:  # fmt: skip
    """Frames with the pointing update and the degradation factors of ``tables``."""
    urls = [i.url for i in infos]
    if "pointing" in tables:
        table, name = tables["pointing"]
        frames = [_with_pointing(f, calibration.pointing(table, wavelength, t, i, url=i.url,
                                                         shape=i.shape, name=name))
                  for f, i, t in zip(frames, infos, times, strict=True)]  # fmt: skip
    if "degradation" in tables:
        table, name = tables["degradation"]
        starts = [_date_obs(i, t) for i, t in zip(infos, times, strict=True)]
        factors = calibration.degradation(table, wavelength, starts, url=urls, name=name)
        frames = [replace(f, degradation=float(d)) for f, d in zip(frames, factors, strict=True)]
    return frames


def _frames(cube: xr.DataArray, reference_time, derotate: bool, storage_options,
            wavelength: int, tables: Mapping[str, object]) -> list[Frame]:  # fmt: skip
    """The checked frames of one channel (calibrated with ``tables``), with observers and axis
    turns when derotating."""
    recipe = frames_of(cube)
    if recipe is not None:  # the HDUs open_stack read: their headers are still in the cache
        infos = [fits.with_header(info) for info in recipe.infos]
    else:
        urls = [str(u) for u in cube["url"].values]
        hdu = image_hdu(urls[0], storage_options=storage_options)
        infos = [fits.hdu_info(url, hdu, storage_options=storage_options) for url in urls]
    times, exptimes = cube["time"].values, cube["exptime"].values
    frames = [frame_of(i, t, float(e), reference_time)
              for i, t, e in zip(infos, times, exptimes, strict=True)]  # fmt: skip
    frames = _calibrated(frames, infos, times, wavelength, tables)
    if not derotate:
        return frames
    drift = hgs_axis_drift(reference_time, times)
    seen = observers(infos, times)
    return [replace(f, axis_drift=float(d), observer=o)
            for f, d, o in zip(frames, drift, seen, strict=True)]  # fmt: skip


def _frames_array(frames: Sequence[Frame], grid: Grid) -> da.Array:
    """A ``(time, y, x)`` dask array with one :func:`register_frame` task per frame."""
    name = "aia-register-" + tokenize(list(frames), grid)
    graph = {(name, k, 0, 0): (register_frame, frame, grid) for k, frame in enumerate(frames)}
    layer = HighLevelGraph.from_collections(name, graph, dependencies=())
    chunks = ((1,) * len(frames), (grid.shape[0],), (grid.shape[1],))
    return da.Array(layer, name, chunks, dtype=np.float32)


def _reference_time(channels: Mapping[Hashable, xr.DataArray], reference_time) -> np.datetime64:
    if reference_time is not None:
        try:
            return np.datetime64(reference_time, "ns")
        except (TypeError, ValueError) as err:
            raise InputError(
                f"reference_time={reference_time!r} is not a time: use ISO format"
            ) from err
    first = min(c["time"].values[0] for c in channels.values())
    last = max(c["time"].values[-1] for c in channels.values())
    return first + (last - first) // 2


def _channel_cube(cube: xr.DataArray, frames: list[Frame], grid: Grid) -> xr.DataArray:
    header = grid.header()
    if "wavelength" in cube.coords:
        header["WAVELNTH"] = int(cube["wavelength"].values)
    per_frame = {
        k: ("time", cube[k].values) for k in ("exptime", "quality", "url") if k in cube.coords
    }
    coords = {"time": cube["time"].values, **per_frame}
    if "wavelength" in cube.coords:
        coords["wavelength"] = cube["wavelength"].values
    attrs = {"fits_header": header.tostring(), "units": "DN / s"}
    return xr.DataArray(_frames_array(frames, grid), dims=("time", "y", "x"), coords=coords,
                        attrs=attrs, name=cube.name)  # fmt: skip


def _tables(correct_degradation, pointing_table) -> dict[str, tuple]:
    """The calibration tables, each read once, with its name for errors."""
    tables = {}
    for key, option, source, columns in (
        ("degradation", "correct_degradation", correct_degradation,
         calibration.CORRECTION_COLUMNS),
        ("pointing", "pointing_table", pointing_table, ("T_START", "T_STOP")),
    ):  # fmt: skip
        if source is not None:
            name = f"{option}={source}" if isinstance(source, str | os.PathLike) else option
            tables[key] = (calibration.read_table(source, columns, option), name)
    return tables


def _wavelength(name: Hashable, cube: xr.DataArray) -> int:
    """The channel's wavelength (angstrom): its ``wavelength`` coordinate, else its name."""
    value = cube["wavelength"].values if "wavelength" in cube.coords else name
    try:
        return int(np.asarray(value).item())
    except (TypeError, ValueError) as err:
        raise InputError(
            f"channel {name!r}: its wavelength is unknown (no 'wavelength' coordinate and the "
            "name is not a number): the calibration tables are per channel"
        ) from err


def prepare(
    channels: Mapping[Hashable, xr.DataArray],
    *,
    region=None,
    reference_time=None,
    scale: float = 0.6,
    derotate: bool = True,
    rotation_model: str = "howard",
    drop_bad: bool = True,
    align: bool = True,
    cadence=None,
    chunks: Sequence[int] | None = None,
    margin: int = 16,
    correct_degradation=None,
    pointing_table=None,
    storage_options: dict | None = None,
) -> dict[Hashable, xr.DataArray]:
    """Register level-1 AIA stacks onto one helioprojective grid, lazily (one task per frame).

    Parameters
    ----------
    channels : mapping
        Channel name to its cube from :func:`cloudlab.io.aia.open_stack` (level-1 frames; RICE
        in HDU 1 or plain).
    region : (bottom_left, top_right), optional
        Helioprojective corners at the reference time (SkyCoords or ``(Tx, Ty)`` arcsec pairs),
        cropped as ``Map.submap`` does. Default: the reference frame's full field.
    reference_time : optional
        Time of the output grid (default: the middle of the series).
    scale : float
        Plate scale of the grid (arcsec/px).
    derotate : bool
        Follow the solar surface from the reference time to each frame's ``T_OBS``
        (``propagate_with_solar_surface``); off-disk pixels are then NaN.
    rotation_model : str
        ``"howard"`` (sunpy's default), ``"snodgrass"``, ``"allen"`` or ``"rigid"``.
    drop_bad : bool
        Drop frames with ``QUALITY != 0``.
    align : bool
        Interpolate the channels onto one uniform time grid
        (:func:`cloudlab.timelag.align_channels`); ``False`` keeps each frame's ``T_OBS``.
    cadence : optional
        Common time step when aligning.
    chunks : (cy, cx), optional
        Spatial chunks after aligning.
    margin : int
        Extra input pixels read around each frame's sampled area (spline prefilter support).
    correct_degradation : path or astropy Table, optional
        A local degradation (``aia.response``) table in aiapy's format: each frame is divided by
        its channel's degradation factor at its ``T_OBS`` (:mod:`cloudlab.timelag.calibration`).
    pointing_table : path or astropy Table, optional
        A local master pointing table (``aia.master_pointing3h``) in aiapy's format:
        ``CRPIX``, ``CDELT`` and ``CROTA2`` of each full 4096x4096 frame are replaced by the
        table's row covering its ``T_OBS``, as aiapy's ``update_pointing``.
    storage_options : dict, optional
        Filesystem options used to open the files.

    Returns
    -------
    dict
        Channel name to a ``(time, y, x)`` DN/s cube on the common grid (``attrs["fits_header"]``
        holds its WCS, identical for all channels).

    Raises
    ------
    InputError
        Bad parameters, a region off the disk or outside a frame, frames whose headers lack
        ``CROTA2``, WCS or observer keys (naming the file and key), tables that do not cover a
        frame's time (naming the table, the time and the file); all before computation.
    """
    if not channels:
        raise InputError("prepare: no channels given")
    if rotation_model not in geometry.ROTATION_MODELS:
        raise InputError(
            f"rotation_model={rotation_model!r}: use one of {sorted(geometry.ROTATION_MODELS)}"
        )
    if not float(scale) > 0:
        raise InputError(f"scale={scale}: the plate scale (arcsec/px) must be positive")
    for name, cube in channels.items():
        check_channel_label(name, cube)
        if "url" not in cube.coords:
            raise InputError(f"channel {name!r} has no 'url' coordinate: open it with open_stack")
    cubes = {k: drop_bad_frames(c) if drop_bad else c for k, c in channels.items()}
    t_ref = _reference_time(cubes, reference_time)
    tables = _tables(correct_degradation, pointing_table)
    frames = {k: _frames(c, t_ref, derotate, storage_options,
                         _wavelength(k, c) if tables else 0, tables)
              for k, c in cubes.items()}  # fmt: skip
    first = next(iter(cubes))
    nearest = int(np.argmin(np.abs(cubes[first]["time"].values - t_ref)))
    reference = frames[first][nearest]
    rsun = float(reference.info.get("RSUN_REF") or _RSUN_REF) if derotate else _RSUN_REF
    shape = tuple(reference.info.shape)
    grid = grid_for(reference, region, float(scale), shape, t_ref, rsun, derotate,
                    rotation_model, int(margin))  # fmt: skip
    for channel_frames in frames.values():
        for frame in channel_frames:
            _check_coverage(frame, grid, whole_field=region is None)
    out = {k: _channel_cube(cubes[k], frames[k], grid) for k in cubes}
    return align_channels(out, cadence=cadence, chunks=chunks) if align else out
