"""Pure array kernels of the FFT cross-correlation (numpy or CuPy blocks).

The maths is sunkit-image's ``time_lag``: each pixel's light curve is standardised with the
population standard deviation, signal A is reversed, both are zero-padded to at least ``2N - 1``
samples, multiplied in Fourier space, transformed back and divided by ``N``. Reversing A and
padding is the same as multiplying by the complex conjugate of A's spectrum and reading the
circular result at the right offsets, which lets each channel's spectrum be computed once and
reused for every pair it belongs to.

The block functions take dask blocks with time on axis 0. Internally the light curves are laid
out as contiguous rows ``(pixels, time)``, so every FFT, reduction and argmax runs along the
last, contiguous axis (about twice as fast as transforming along axis 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft

from cloudlab.backend import array_module

__all__ = [
    "FLAT_EPS_FACTOR",
    "FLAT_TOLERANCE",
    "flat_tolerance",
    "correlate_spectra",
    "cross_correlation_block",
    "fft_length",
    "from_rows",
    "lag_indices",
    "pairs_block",
    "peak_from_correlation",
    "spectrum",
    "standardize",
    "timelag_bytes_per_pixel",
    "to_rows",
]

#: a pixel whose standard deviation is below this many machine epsilons (of the input dtype)
#: times its mean is called flat
FLAT_EPS_FACTOR = 64
#: the flatness tolerance for float64 input (see :func:`flat_tolerance`)
FLAT_TOLERANCE = FLAT_EPS_FACTOR * np.finfo(np.float64).eps


def flat_tolerance(dtype) -> float:
    """Fraction of a pixel's mean below which its standard deviation counts as flat.

    Scaled by the precision of the input ``dtype`` (float32 data that is constant up to
    round-off is flat); integer and float64 input use float64's epsilon.
    """
    dtype = np.dtype(dtype)
    eps = np.finfo(dtype).eps if np.issubdtype(dtype, np.floating) else np.finfo(np.float64).eps
    return float(FLAT_EPS_FACTOR * max(eps, np.finfo(np.float64).eps))


def fft_length(n_time: int) -> int:
    """Return the FFT length used for ``n_time`` samples: the next fast size ``>= 2 n_time - 1``.

    Parameters
    ----------
    n_time : int
        Number of time samples ``N``.

    Returns
    -------
    int
        A 5-smooth length at least ``2N - 1`` (any such length gives the same linear correlation).
    """
    return scipy.fft.next_fast_len(2 * n_time - 1, real=True)


def timelag_bytes_per_pixel(n_time: int, n_channels: int, input_itemsize: int = 8) -> float:
    """Peak bytes per pixel of one cross-correlation task over ``n_channels`` channels.

    Counts the channel blocks, their float64 standardised copies and spectra, and one pair's
    product, circular correlation and selected lags (``(2N - 1) x 8`` bytes and friends). Pass it
    to :func:`cloudlab.chunking.plan_spatial_chunks` to size the spatial chunks.

    Parameters
    ----------
    n_time : int
        Number of time samples ``N`` per channel.
    n_channels : int
        Number of channels one task holds.
    input_itemsize : int
        Bytes per input sample (8 for float64 blocks).

    Returns
    -------
    float
        Bytes one task needs per spatial pixel.
    """
    nfft = fft_length(n_time)
    spectrum_bytes = 16 * (nfft // 2 + 1)
    inputs = n_channels * n_time * input_itemsize
    standardised = 2 * n_time * 8
    spectra = n_channels * spectrum_bytes
    pair = spectrum_bytes + 8 * nfft + 8 * (2 * n_time - 1)
    return float(inputs + standardised + spectra + pair)


def to_rows(block):
    """A block with time on axis 0, as contiguous float64 rows ``(pixels, time)``."""
    xp = array_module(block)
    rows = block.reshape(block.shape[0], -1).T
    return xp.ascontiguousarray(rows, dtype=xp.float64)


def from_rows(rows, spatial_shape: tuple[int, ...]):
    """Rows ``(pixels, k)`` back to a block of shape ``(k, *spatial_shape)``."""
    xp = array_module(rows)
    return xp.ascontiguousarray(rows.T).reshape((rows.shape[1], *spatial_shape))


def standardize(rows, tolerance: float = FLAT_TOLERANCE):
    """Standardise light curves laid out as rows ``(pixels, time)`` (``ddof=0``).

    ``tolerance`` is the flatness threshold relative to the mean (:func:`flat_tolerance` of
    the data's original dtype).

    Returns
    -------
    z : array
        ``(x - mean) / std`` per row, with zeros where the pixel is invalid.
    valid : array of bool
        False where the pixel has a NaN/inf sample or is flat (std ~ 0).
    """
    xp = array_module(rows)
    mean = rows.mean(axis=1, keepdims=True)
    centred = rows - mean
    std = xp.sqrt((centred * centred).mean(axis=1, keepdims=True))
    valid = xp.isfinite(std) & (std > tolerance * xp.abs(mean))
    z = xp.where(valid, centred / xp.where(valid, std, 1.0), 0.0)
    return z, valid[:, 0]


def spectrum(z, nfft: int):
    """Real FFT of standardised rows, zero-padded to ``nfft`` samples."""
    xp = array_module(z)
    return xp.fft.rfft(z, n=nfft, axis=1)


def lag_indices(n_time: int, start: int, stop: int, nfft: int) -> np.ndarray:
    """Map lag positions ``start..stop-1`` of the ``2N - 1`` lags to circular-correlation indices.

    Lag position ``j`` is the lag ``(j - (N - 1)) * dt``; the circular correlation of length
    ``nfft`` holds lag ``k`` at index ``k mod nfft``.
    """
    return (np.arange(start, stop) - (n_time - 1)) % nfft


def correlate_spectra(spec_a, spec_b, n_time: int, nfft: int, start: int, stop: int):
    """Cross-correlation at lag positions ``start..stop-1`` from two channels' spectra.

    Parameters
    ----------
    spec_a, spec_b : array
        Spectra of the standardised rows of A and B (see :func:`spectrum`).
    n_time : int
        Number of time samples ``N``.
    nfft : int
        FFT length the spectra were computed with.
    start, stop : int
        Range of lag positions (``0 .. 2N - 1``) to return.

    Returns
    -------
    array
        Rows ``(pixels, stop - start)``: ``C[j] = (1/N) sum_m zA[m] zB[m + j - (N - 1)]``.
    """
    xp = array_module(spec_a)
    circular = xp.fft.irfft(xp.conj(spec_a) * spec_b, n=nfft, axis=1)
    index = xp.asarray(lag_indices(n_time, start, stop, nfft))
    return xp.take(circular, index, axis=1) / n_time


def cross_correlation_block(a, b, start: int, stop: int):
    """Cross-correlation of two blocks (time on axis 0) at lag positions ``start..stop-1``.

    Returns
    -------
    array
        Shape ``(stop - start, *spatial)``; invalid pixels (a NaN sample, or flat) are NaN.
    """
    xp = array_module(a)
    n_time = a.shape[0]
    nfft = fft_length(n_time)
    za, valid_a = standardize(to_rows(a), flat_tolerance(a.dtype))
    zb, valid_b = standardize(to_rows(b), flat_tolerance(b.dtype))
    cc = correlate_spectra(spectrum(za, nfft), spectrum(zb, nfft), n_time, nfft, start, stop)
    cc = xp.where((valid_a & valid_b)[:, None], cc, xp.nan)
    return from_rows(cc, a.shape[1:])


def peak_from_correlation(cc, lags, valid):
    """Time lag (first maximum) and maximum of correlation rows ``(pixels, L)``.

    Parameters
    ----------
    cc : array
        Rows ``(pixels, L)``, the correlation at ``L`` lags.
    lags : array
        The ``L`` lags in seconds (host or device array).
    valid : array of bool
        Pixels to report; the others are NaN in both outputs.

    Returns
    -------
    array
        Shape ``(2, pixels)``: the lag in seconds at the first maximum, and the maximum.
    """
    xp = array_module(cc)
    lags = xp.asarray(lags, dtype=xp.float64)
    lag = lags[xp.argmax(cc, axis=1)]
    peak = cc.max(axis=1)
    return xp.stack([xp.where(valid, lag, xp.nan), xp.where(valid, peak, xp.nan)])


def pairs_block(
    *blocks,
    pairs: Sequence[tuple[int, int]],
    lags,
    start: int,
    stop: int,
):
    """Time lag and maximum correlation of several channel pairs over one spatial block.

    Every channel is standardised and Fourier-transformed once; each pair then costs one
    product and one inverse FFT.

    Parameters
    ----------
    *blocks : array
        One block per channel, all of shape ``(N, ...)``.
    pairs : sequence of (int, int)
        Indices into ``blocks`` of signal A and signal B for each pair.
    lags : array
        The ``stop - start`` selected lags in seconds.
    start, stop : int
        Selected lag positions among the ``2N - 1``.

    Returns
    -------
    array
        Shape ``(len(pairs), 2, ...)``: time lag (s) and maximum cross-correlation per pair.
    """
    xp = array_module(blocks[0])
    n_time = blocks[0].shape[0]
    spatial = blocks[0].shape[1:]
    nfft = fft_length(n_time)
    used = sorted({i for pair in pairs for i in pair})
    spectra, valid = {}, {}
    for i in used:
        z, valid[i] = standardize(to_rows(blocks[i]), flat_tolerance(blocks[i].dtype))
        spectra[i] = spectrum(z, nfft)
        del z
    out = []
    for ia, ib in pairs:
        cc = correlate_spectra(spectra[ia], spectra[ib], n_time, nfft, start, stop)
        out.append(peak_from_correlation(cc, lags, valid[ia] & valid[ib]))
        del cc
    return xp.stack(out).reshape((len(pairs), 2, *spatial))
