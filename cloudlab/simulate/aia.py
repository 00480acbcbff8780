"""Simulated AIA multi-channel FITS series with a known time lag per pixel between channels.

Each pixel's emission is a background plus a few Gaussian pulses at random times. Every channel
sees the same pulses, delayed by its own per-pixel delay, so the time lag between channels A and
B in a pixel is ``delay[B] - delay[A]``. Frames are written as JSOC level-1 files: an empty
primary HDU and a RICE-compressed int16 image in HDU 1 (or, with ``compressed=False``, the int16
image in HDU 0), with ``T_OBS``, ``DATE-OBS``, ``T_REC``, a slightly varying ``EXPTIME``,
``WAVELNTH``, ``QUALITY`` and a helioprojective TAN WCS. Each channel's exposures sit at their
own offset inside the 12 s slot, as on AIA, so channels are not sampled at the same times.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits

from cloudlab import storage
from cloudlab.errors import InputError

__all__ = ["AIA_CHANNELS", "AIASeries", "aia_series", "default_lag_map"]

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


def _header(channel, frame_time, t_rec, exptime, shape, center) -> fits.Header:
    ny, nx = shape
    cdelt = 0.6
    half_exposure = np.timedelta64(int(round(exptime / 2 * 1e9)), "ns")
    header = fits.Header()
    cards = {
        "TELESCOP": "SDO/AIA",
        "INSTRUME": f"AIA_{_TELESCOPE.get(channel, 1)}",
        "ORIGIN": "cloudlab.simulate",
        "LVL_NUM": 1.5,
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
        "CDELT1": cdelt,
        "CDELT2": cdelt,
        "CRVAL1": 0.0,
        "CRVAL2": 0.0,
        "CRPIX1": (nx + 1) / 2 - center[0] / cdelt,
        "CRPIX2": (ny + 1) / 2 - center[1] / cdelt,
        "CROTA2": 0.0,
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
        Image shape.
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
    start64 = np.datetime64(start, "ns")
    slots = start64 + (np.arange(n_frames) * cadence_s * 1e9).astype("timedelta64[ns]")
    series = AIASeries({}, delays, {}, {}, start64, float(cadence_s),
                       pulse_times, pulse_widths, pulse_amplitudes)  # fmt: skip
    base = dest.rstrip("/")
    for channel in channels:
        offset = _SLOT_OFFSET.get(channel, 0.0) + rng.uniform(-0.005, 0.005, n_frames)
        t_obs = (slots + (offset * 1e9).astype("timedelta64[ns]")).astype("datetime64[us]")
        t_obs = t_obs.astype("datetime64[ns]")  # as precise as the T_OBS header value
        exptime = _EXPTIME.get(channel, 2.0) * rng.uniform(0.995, 1.005, n_frames)
        counts = series.rate(channel, t_obs) * exptime[:, None, None]
        data = np.clip(np.rint(counts), _BLANK + 1, 32767).astype(np.int16)
        files = []
        for k in range(n_frames):
            header = _header(channel, t_obs[k], slots[k], float(exptime[k]), shape, center)
            stamp = str(t_obs[k].astype("datetime64[ms]")).replace("-", "_").replace(":", "_")
            url = f"{base}/{channel:04d}/aia_lev1_{channel}a_{stamp.lower()}z_image_lev1.fits"
            data_k = _encode(data[k], header, compressed)
            storage.write_bytes(url, data_k, storage_options=storage_options)
            files.append(url)
        series.files[channel] = files
        series.t_obs[channel] = t_obs
        series.exptime[channel] = exptime
    return series
