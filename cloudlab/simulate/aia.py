"""Simulated AIA multi-channel FITS series with a known time lag per pixel between channels.

Each pixel's emission is a background plus a few Gaussian pulses at random times. Every channel
sees the same pulses, delayed by its own per-pixel delay, so the time lag between channels A and
B in a pixel is ``delay[B] - delay[A]``. Frames are written as JSOC level-1 files: an empty
primary HDU and a RICE-compressed int16 image in HDU 1 (or, with ``compressed=False``, the int16
image in HDU 0), with ``T_OBS``, ``DATE-OBS``, ``T_REC``, a slightly varying ``EXPTIME``,
``WAVELNTH``, ``QUALITY`` and a helioprojective TAN WCS. Each channel's exposures sit at their
own offset inside the 12 s slot, as on AIA, so channels are not sampled at the same times.

With ``level1=True`` the truth lives on the registered grid of :func:`cloudlab.timelag.prepare`
(the series' ``region`` at its ``reference_time``, 0.6 arcsec/px, north up), in blocks of
``block`` pixels that share their pulses, and each channel's frames are level-1 frames: their own
plate scale, roll angle and reference pixel, larger than the region, with the emission carried
by the rotating solar surface (sunpy's ``propagate_with_solar_surface``).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits

from cloudlab import storage
from cloudlab.errors import InputError, MissingDependencyError

__all__ = ["AIA_CHANNELS", "AIASeries", "aia_series", "default_lag_map", "grid_region"]

#: AIA EUV channels (Å)
AIA_CHANNELS = (94, 131, 171, 193, 211, 335)
#: hot-to-cool order used for the default delays (a later channel peaks later: cooling)
_COOLING_ORDER = (94, 335, 211, 193, 171, 131)
#: mean count rates (DN/s/pixel), scaled up so that int16 rounding does not blur the lags
_BASE_RATE = {94: 400.0, 131: 600.0, 171: 2000.0, 193: 2500.0, 211: 1500.0, 335: 500.0}
#: nominal exposure times (s)
_EXPTIME = {94: 2.901, 131: 2.901, 171: 1.9996, 193: 2.0003, 211: 2.9006, 335: 2.9004}
#: offset of each channel's exposure mid-time inside the 12 s slot (s)
_SLOT_OFFSET = {94: 2.57, 131: 9.07, 171: 0.34, 193: 6.84, 211: 11.62, 335: 3.62}
#: AIA telescope number of each channel
_TELESCOPE = {94: 4, 131: 1, 171: 3, 193: 2, 211: 2, 335: 1}
_BLANK = -32768
#: level-1 plate-scale deviation from 0.6 arcsec/px, roll angle CROTA2 (deg; exaggerated a few
#: times over the instrument's ~0.1 deg so that registration matters) and reference-pixel offset
#: (px) of each channel in the ``level1`` mode
_SCALE_DEVIATION = {94: 0.008, 131: -0.006, 171: 0.004, 193: -0.009, 211: 0.010, 335: -0.003}
_CROTA2 = {94: 0.31, 131: -0.22, 171: 0.14, 193: -0.35, 211: 0.27, 335: -0.12}
_CRPIX_OFFSET = {94: (1.7, -2.3), 131: (-2.9, 0.8), 171: (0.4, 2.6), 193: (-1.2, -1.9),
                 211: (2.8, 1.1), 335: (-0.6, -2.7)}  # fmt: skip
#: plate scale of the registered grid (arcsec/px)
_GRID_SCALE = 0.6


@dataclass
class AIASeries:
    """What :func:`aia_series` wrote, and the truth behind it.

    Attributes
    ----------
    files : dict
        Channel (Å) to its frame URLs in time order.
    delays : dict
        Channel to a ``(ny, nx)`` array of its emission delay in seconds.
    t_obs : dict
        Channel to the ``T_OBS`` of its frames (datetime64[ns]).
    exptime : dict
        Channel to the ``EXPTIME`` of its frames (s).
    start : numpy.datetime64
        The first slot time (``T_REC`` of frame 0).
    cadence_s : float
        Slot cadence in seconds.
    pulse_times, pulse_widths, pulse_amplitudes : numpy.ndarray
        ``(n_pulses, ny, nx)`` pulse centres (s after ``start``, before delays), widths (s) and
        relative amplitudes.
    region : ((Tx, Ty), (Tx, Ty)) or None
        ``level1`` mode: the corners (arcsec) of the grid the truth lives on.
    reference_time : numpy.datetime64 or None
        ``level1`` mode: the time of that grid (the middle of the series).
    """

    files: dict[int, list[str]]
    delays: dict[int, np.ndarray]
    t_obs: dict[int, np.ndarray]
    exptime: dict[int, np.ndarray]
    start: np.datetime64
    cadence_s: float
    pulse_times: np.ndarray = field(repr=False)
    pulse_widths: np.ndarray = field(repr=False)
    pulse_amplitudes: np.ndarray = field(repr=False)
    region: tuple | None = None
    reference_time: np.datetime64 | None = None

    def expected_lag(self, a: int, b: int) -> np.ndarray:
        """The injected time lag (s) of channel ``b`` after channel ``a`` in every pixel."""
        return self.delays[b] - self.delays[a]

    def rate(self, channel: int, times) -> np.ndarray:
        """Noise-free count rate (DN/s) of ``channel`` at absolute ``times`` (datetime64).

        Returns
        -------
        numpy.ndarray
            Shape ``(len(times), ny, nx)``.
        """
        seconds = (np.asarray(times, "datetime64[ns]") - self.start) / np.timedelta64(1, "s")
        shifted = seconds[:, None, None] - self.delays[channel][None]
        pulses = np.zeros(shifted.shape)
        for centre, width, amp in zip(
            self.pulse_times, self.pulse_widths, self.pulse_amplitudes, strict=True
        ):
            pulses += amp * np.exp(-0.5 * ((shifted - centre) / width) ** 2)
        return _BASE_RATE.get(channel, 1000.0) * (1.0 + pulses)


def default_lag_map(shape: tuple[int, int], cadence_s: float) -> np.ndarray:
    """A per-pixel delay step (s): whole cadences from 0 to 3, changing across the field."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    return cadence_s * ((xx * 4) // max(nx, 1) + (yy * 2) // max(ny, 1)) % (4 * cadence_s)


def _delays(channels, shape, cadence_s, lag_map) -> dict[int, np.ndarray]:
    if lag_map is None:
        lag_map = default_lag_map(shape, cadence_s)
    if isinstance(lag_map, Mapping):
        unknown = set(lag_map) - set(channels)
        if unknown:
            raise InputError(
                f"lag_map names channels {sorted(unknown)} that are not simulated "
                f"({list(channels)}); add them to channels or drop them from lag_map"
            )
        return {
            c: np.broadcast_to(np.asarray(lag_map.get(c, 0.0), float), shape).copy()
            for c in channels
        }
    step = np.broadcast_to(np.asarray(lag_map, float), shape)
    rank = {c: i for i, c in enumerate(_COOLING_ORDER)}
    return {c: rank.get(c, len(rank)) * step for c in channels}


def _pointing(channel, shape, center, level1: bool) -> dict:
    """CDELT1/2, CRPIX1/2 and CROTA2 putting the image centre near ``center`` (arcsec)."""
    ny, nx = shape
    if not level1:
        cdelt = _GRID_SCALE
        return {"CDELT1": cdelt, "CDELT2": cdelt, "CRPIX1": (nx + 1) / 2 - center[0] / cdelt,
                "CRPIX2": (ny + 1) / 2 - center[1] / cdelt, "CROTA2": 0.0}  # fmt: skip
    cdelt = _GRID_SCALE * (1 + _SCALE_DEVIATION.get(channel, 0.0))
    angle = np.deg2rad(_CROTA2.get(channel, 0.0))
    pc = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    offset = pc.T @ (np.asarray(center, float) / cdelt)  # pixels from CRPIX to the centre
    dx, dy = _CRPIX_OFFSET.get(channel, (0.0, 0.0))
    crpix = ((nx + 1) / 2 - offset[0] + dx, (ny + 1) / 2 - offset[1] + dy)
    return {"CDELT1": cdelt, "CDELT2": cdelt, "CRPIX1": crpix[0], "CRPIX2": crpix[1],
            "CROTA2": float(np.rad2deg(angle))}  # fmt: skip


def grid_region(shape: tuple[int, int], center) -> tuple[tuple[float, float], tuple[float, float]]:
    """Corners (arcsec) of the registered ``shape`` grid nearest ``center`` (0.6 arcsec/px,
    solar disk centre at a pixel corner as aiapy's ``register`` lays out AIA images)."""
    ny, nx = shape
    kx = int(round(center[0] / _GRID_SCALE - nx / 2))
    ky = int(round(center[1] / _GRID_SCALE - ny / 2))
    bottom_left = ((kx + 0.5) * _GRID_SCALE, (ky + 0.5) * _GRID_SCALE)
    top_right = ((kx + nx - 0.5) * _GRID_SCALE, (ky + ny - 0.5) * _GRID_SCALE)
    return bottom_left, top_right


def _grid_header(shape, region, reference_time, observer: fits.Header) -> fits.Header:
    """The registered grid's WCS at ``reference_time`` (the corners' pixels are the corners)."""
    (x0, y0), _ = region
    header = fits.Header()
    cards = {"CTYPE1": "HPLN-TAN", "CTYPE2": "HPLT-TAN", "CUNIT1": "arcsec", "CUNIT2": "arcsec",
             "CDELT1": _GRID_SCALE, "CDELT2": _GRID_SCALE, "CRVAL1": 0.0, "CRVAL2": 0.0,
             "CRPIX1": 1 - x0 / _GRID_SCALE, "CRPIX2": 1 - y0 / _GRID_SCALE,
             "NAXIS1": shape[1], "NAXIS2": shape[0],
             "DATE-OBS": np.datetime_as_string(reference_time, unit="us")}  # fmt: skip
    for key in ("HGLN_OBS", "HGLT_OBS", "DSUN_OBS", "RSUN_REF"):
        cards[key] = observer[key]
    for key, value in cards.items():
        header[key] = value
    return header


def _grid_coords(frame_header, frame_shape, grid_header, grid_shape) -> np.ndarray:
    """For each level-1 pixel, the grid pixel ``(x, y)`` of the surface point it sees, carried
    to the grid's time by sunpy's ``propagate_with_solar_surface`` (NaN off the disk)."""
    try:
        import sunpy.map
        from sunpy.coordinates import propagate_with_solar_surface
    except ImportError as err:  # pragma: no cover (sunpy is in the solar extra)
        raise MissingDependencyError(
            "aia_series(level1=True) needs sunpy: pip install 'cloudlab[solar]'"
        ) from err
    frame = sunpy.map.Map(np.zeros(frame_shape, np.float32), frame_header)
    grid = sunpy.map.Map(np.zeros(grid_shape, np.float32), grid_header)
    yy, xx = np.indices(frame_shape)
    with warnings.catch_warnings(), propagate_with_solar_surface():
        warnings.simplefilter("ignore")
        return np.array(grid.wcs.world_to_pixel(frame.wcs.pixel_to_world(xx, yy)))


def _lookup(coords: np.ndarray, grid_shape) -> tuple[np.ndarray, ...]:
    """Nearest grid pixel ``(iy, ix)`` of grid coordinates ``(x, y)``, clipped to the grid (its
    edge blocks continue beyond it), and whether the coordinates are on the disk."""
    on_disk = np.all(np.isfinite(coords), axis=0)
    ix, iy = (np.rint(np.nan_to_num(c)).astype(int) for c in coords)
    return np.clip(iy, 0, grid_shape[0] - 1), np.clip(ix, 0, grid_shape[1] - 1), on_disk


def _blocky(values: np.ndarray, block: int) -> np.ndarray:
    """``(n, ny, nx)`` values made constant in ``block`` x ``block`` squares."""
    ny, nx = values.shape[1:]
    rows = (np.arange(ny) // block) * block
    cols = (np.arange(nx) // block) * block
    return values[:, rows][:, :, cols]


def _level1_padding(shape, duration_s: float) -> int:
    """Pixels added around the grid in level-1 frames: solar rotation over half the series
    (< 0.005 px/s at 0.6 arcsec/px), pointing offsets and plate-scale differences."""
    return int(np.ceil(0.005 * duration_s / 2 + 0.01 * max(shape) + 6))


def _header(channel, frame_time, t_rec, exptime, shape, center, level1=False) -> fits.Header:
    half_exposure = np.timedelta64(int(round(exptime / 2 * 1e9)), "ns")
    header = fits.Header()
    cards = {
        "TELESCOP": "SDO/AIA",
        "INSTRUME": f"AIA_{_TELESCOPE.get(channel, 1)}",
        "ORIGIN": "cloudlab.simulate",
        "LVL_NUM": 1.0 if level1 else 1.5,
        "T_REC": np.datetime_as_string(t_rec, unit="s") + "Z",
        "T_OBS": np.datetime_as_string(frame_time, unit="us") + "Z",
        "DATE-OBS": np.datetime_as_string(frame_time - half_exposure, unit="us"),
        "EXPTIME": exptime,
        "WAVELNTH": channel,
        "WAVEUNIT": "angstrom",
        "QUALITY": 0,
        "BUNIT": "DN",
        "PIXLUNIT": "DN",
        "CTYPE1": "HPLN-TAN",
        "CTYPE2": "HPLT-TAN",
        "CUNIT1": "arcsec",
        "CUNIT2": "arcsec",
        "CRVAL1": 0.0,
        "CRVAL2": 0.0,
        **_pointing(channel, shape, center, level1),
        "DSUN_OBS": 147_724_815_127.0,
        "DSUN_REF": 149_597_870_691.0,
        "RSUN_REF": 696_000_000.0,
        "RSUN_OBS": 971.8,
        "HGLN_OBS": 0.0,
        "HGLT_OBS": -6.82,
        "CRLN_OBS": 117.3,
        "CRLT_OBS": -6.82,
    }
    for key, value in cards.items():
        header[key] = value
    return header


def _level1_coords(series, headers, frame_shape, grid_shape, t_obs) -> list[np.ndarray]:
    """Grid coordinates of every level-1 pixel for each frame of a channel: exact (sunpy) at
    the first and last frame, linear in time between (solar rotation is uniform in time; the
    error is far below the nearest-pixel rounding that follows)."""
    grid_header = _grid_header(grid_shape, series.region, series.reference_time, headers[0])
    first, last = (_grid_coords(h, frame_shape, grid_header, grid_shape)
                   for h in (headers[0], headers[-1]))  # fmt: skip
    weight = (t_obs - t_obs[0]) / (t_obs[-1] - t_obs[0])
    return [first + w * (last - first) for w in weight]


def _encode(data: np.ndarray, header: fits.Header, compressed: bool) -> bytes:
    buffer = io.BytesIO()
    if compressed:
        image = fits.CompImageHDU(
            data, header, compression_type="RICE_1", tile_shape=(1, data.shape[1])
        )
        image.header["BLANK"] = _BLANK
        hdus = fits.HDUList([fits.PrimaryHDU(), image])
    else:
        primary = fits.PrimaryHDU(data, header)
        primary.header["BLANK"] = _BLANK
        hdus = fits.HDUList([primary])
    hdus.writeto(buffer)
    return buffer.getvalue()


def aia_series(
    dest: str,
    *,
    channels: Sequence[int] = AIA_CHANNELS,
    shape: tuple[int, int] = (32, 32),
    n_frames: int = 120,
    cadence_s: float = 12.0,
    lag_map=None,
    compressed: bool = True,
    seed: int = 0,
    start: str = "2011-02-13T15:00:00",
    center: tuple[float, float] = (-400.0, 50.0),
    n_pulses: int = 3,
    pulse_width_s: float | None = None,
    level1: bool = False,
    block: int = 8,
    storage_options: dict | None = None,
) -> AIASeries:
    """Write a multi-channel AIA level-1-like FITS series with known per-pixel time lags.

    Parameters
    ----------
    dest : str
        Directory URL (any fsspec URL); channel ``c`` is written to ``dest/<c:04d>/``.
    channels : sequence of int
        Wavelengths (Å).
    shape : (ny, nx)
        Image shape (``level1``: the registered grid's shape; frames are larger).
    n_frames : int
        Frames per channel.
    cadence_s : float
        Slot cadence (12 s for AIA EUV).
    lag_map : array, mapping or None
        Either a ``(ny, nx)`` delay step in seconds (channel ``i`` in the hot-to-cool order
        94, 335, 211, 193, 171, 131 is delayed by ``i * lag_map``), or a mapping of channel to
        its delay map (missing channels: 0). Default: :func:`default_lag_map` (whole cadences).
    compressed : bool
        RICE-compressed image in HDU 1 (as JSOC serves it); else int16 in HDU 0.
    seed : int
        Random seed for pulses, exposure jitter and timing jitter.
    start : str
        ISO time of the first slot.
    center : (Tx, Ty)
        Helioprojective coordinates of the image centre in arcsec.
    n_pulses : int
        Gaussian pulses per pixel.
    pulse_width_s : float, optional
        Pulse width (sigma) in seconds; default 2 cadences.
    level1 : bool
        Write level-1 frames (per-channel plate scale, roll and reference pixel, solar
        rotation) whose truth is on the grid ``series.region`` at ``series.reference_time``.
    block : int
        ``level1``: pulses are shared by ``block`` x ``block`` pixels of the grid, so that
        interpolation inside a block recovers them.
    storage_options : dict, optional
        Filesystem options for ``dest``.

    Returns
    -------
    AIASeries
        The file lists and the truth (delays, times, exposure times, pulses).
    """
    if n_frames < 2:
        raise InputError(f"n_frames={n_frames}: simulate at least 2 frames")
    if len(shape) != 2 or min(shape) < 1:
        raise InputError(f"shape={shape}: give (ny, nx) with positive sizes")
    channels = [int(c) for c in channels]
    if not channels:
        raise InputError(f"channels is empty: name at least one of {AIA_CHANNELS}")
    rng = np.random.default_rng(seed)
    delays = _delays(channels, shape, cadence_s, lag_map)
    duration = (n_frames - 1) * cadence_s
    width = 2 * cadence_s if pulse_width_s is None else float(pulse_width_s)
    max_delay = max(float(np.max(d)) for d in delays.values())
    margin = 3 * width
    if duration - 2 * margin - max_delay <= 0:
        raise InputError(
            f"n_frames={n_frames}: frames at {cadence_s} s are too short for pulses of width "
            f"{width} s and delays up to {max_delay} s: use more frames"
        )
    pulse_shape = (n_pulses, *shape)
    pulse_times = rng.uniform(margin, duration - margin - max_delay, pulse_shape)
    pulse_widths = width * rng.uniform(0.8, 1.2, pulse_shape)
    pulse_amplitudes = rng.uniform(0.5, 2.0, pulse_shape)
    if level1:
        pulse_times, pulse_widths, pulse_amplitudes = (
            _blocky(v, block) for v in (pulse_times, pulse_widths, pulse_amplitudes)
        )
    start64 = np.datetime64(start, "ns")
    slots = start64 + (np.arange(n_frames) * cadence_s * 1e9).astype("timedelta64[ns]")
    series = AIASeries({}, delays, {}, {}, start64, float(cadence_s),
                       pulse_times, pulse_widths, pulse_amplitudes)  # fmt: skip
    frame_shape = shape
    if level1:
        series.region = grid_region(shape, center)
        series.reference_time = slots[0] + (slots[-1] - slots[0]) // 2
        pad = _level1_padding(shape, duration)
        frame_shape = (shape[0] + 2 * pad, shape[1] + 2 * pad)
    base = dest.rstrip("/")
    for channel in channels:
        offset = _SLOT_OFFSET.get(channel, 0.0) + rng.uniform(-0.005, 0.005, n_frames)
        t_obs = (slots + (offset * 1e9).astype("timedelta64[ns]")).astype("datetime64[us]")
        t_obs = t_obs.astype("datetime64[ns]")  # as precise as the T_OBS header value
        exptime = _EXPTIME.get(channel, 2.0) * rng.uniform(0.995, 1.005, n_frames)
        files = []
        headers = [_header(channel, t_obs[k], slots[k], float(exptime[k]), frame_shape, center,
                           level1) for k in range(n_frames)]  # fmt: skip
        if level1:
            coords = _level1_coords(series, headers, frame_shape, shape, t_obs)
        for k, header in enumerate(headers):
            rate = series.rate(channel, t_obs[k : k + 1])[0]
            if level1:
                iy, ix, on_disk = _lookup(coords[k], shape)
                rate = np.where(on_disk, rate[iy, ix], _BASE_RATE.get(channel, 1000.0))
            data = np.clip(np.rint(rate * exptime[k]), _BLANK + 1, 32767).astype(np.int16)
            stamp = str(t_obs[k].astype("datetime64[ms]")).replace("-", "_").replace(":", "_")
            url = f"{base}/{channel:04d}/aia_lev1_{channel}a_{stamp.lower()}z_image_lev1.fits"
            data_k = _encode(data, header, compressed)
            storage.write_bytes(url, data_k, storage_options=storage_options)
            files.append(url)
        series.files[channel] = files
        series.t_obs[channel] = t_obs
        series.exptime[channel] = exptime
    return series
