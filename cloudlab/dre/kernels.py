"""χ² kernels: DRE's per-cut formula for a block of cuts against a block of models.

For one cut with data D, background RMS σ and mask pixels P, and one PSF-convolved model M_k,
DRE computes::

    s_k = nansum_P(D) / sum_P(M_k)                      (flux matching inside the mask)
    χ_k = nanmean_P((D − s_k·M_k)² / (s_k·M_k + σ²))

The kernels below evaluate this for every (cut, model) pair of a block without full-size
temporaries: each cut's mask is packed once into runs of consecutive pixels, and every model
stamp is streamed once per block of cuts.

* ``chi_numba``: fused CPU loop (numba): float32 terms summed per run of pixels, runs summed
  in float64 (≈1e-7 relative to a float64 evaluation).
* ``chi_cupy``: a CUDA kernel (CuPy), one thread block per (model, cut).
* ``chi_numpy``: the same arithmetic with numpy over small model blocks (used when numba is
  not installed).
"""

from __future__ import annotations

import warnings
from functools import cache
from types import ModuleType

import numpy as np

from cloudlab.backend import array_module

__all__ = ["chi_block", "chi_cupy", "chi_numba", "chi_numpy", "numba_available", "pack_masks"]

#: Models processed at once by the numpy fallback (bounds its temporaries).
_NUMPY_MODEL_BLOCK = 128


#: bytes of float64 temporaries pack_masks makes at once for the masks' flux
_FLUX_BLOCK_BYTES = 2**22


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of consecutive True pixels per row of a ``(G, npix)`` mask: start, length, offsets."""
    g = mask.shape[0]
    padded = np.zeros((g, mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    cut, start = np.nonzero(edges == 1)
    _, stop = np.nonzero(edges == -1)
    offsets = np.zeros(g + 1, dtype=np.int64)
    np.cumsum(np.bincount(cut, minlength=g), out=offsets[1:])
    return start.astype(np.int64), (stop - start).astype(np.int64), offsets


def pack_masks(obj: np.ndarray, seg: np.ndarray, rms: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pack the mask pixels of a block of cuts into runs of consecutive (row-major) pixels.

    Two sets of runs are made: all mask pixels (for the model flux ``sum_P(M)``) and the mask
    pixels where both D and σ are finite (the pixels ``nanmean`` keeps). NaN pixels thus drop
    out of the χ loop up front, which keeps it free of branches.

    Parameters
    ----------
    obj, seg, rms : numpy.ndarray
        ``(G, npix)`` data, boolean mask and background RMS of G flattened cuts.

    Returns
    -------
    tuple of numpy.ndarray
        ``flux_start, flux_len, flux_offsets`` (runs over the masks), ``term_start, term_len,
        term_offsets`` (runs over the finite mask pixels), ``data`` and ``var`` (float32 D and
        σ² of the finite mask pixels in run order), ``flux`` (float64 ``nansum`` of D over each
        mask) and ``count`` (float64 number of finite mask pixels per cut).
    """
    finite = seg & np.isfinite(obj) & np.isfinite(rms)
    cut, pix = np.nonzero(finite)
    data = obj[cut, pix].astype(np.float32)
    var = (rms[cut, pix].astype(np.float64) ** 2).astype(np.float32)
    flux = np.empty(obj.shape[0])
    step = max(1, _FLUX_BLOCK_BYTES // (8 * max(obj.shape[1], 1)))
    for a in range(0, obj.shape[0], step):  # float64 copies of a few cuts at a time, not all
        d = np.nan_to_num(obj[a : a + step].astype(np.float64), nan=0.0)
        flux[a : a + step] = np.where(seg[a : a + step], d, 0.0).sum(axis=1)
    count = finite.sum(axis=1).astype(np.float64)
    return (*_runs(seg), *_runs(finite), data, var, flux, count)


@cache
def _numba_kernel():
    import numba

    @numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
    def kernel(models, f_start, f_len, f_off, t_start, t_len, t_off, data, var, flux, count, out):
        zero = np.float32(0.0)
        for k in range(models.shape[0]):
            row = models[k]
            pixel = 0
            for g in range(f_off.size - 1):
                total = 0.0
                for i in range(f_off[g], f_off[g + 1]):
                    stamp = row[f_start[i] : f_start[i] + f_len[i]]
                    part = zero
                    for j in range(stamp.size):
                        part += stamp[j]
                    total += part
                scale = np.float32(flux[g] / total)
                acc = 0.0
                for i in range(t_off[g], t_off[g + 1]):
                    n = t_len[i]
                    stamp = row[t_start[i] : t_start[i] + n]
                    d = data[pixel : pixel + n]
                    v = var[pixel : pixel + n]
                    part = zero
                    for j in range(n):
                        m = scale * stamp[j]
                        r = d[j] - m
                        part += r * r / (m + v[j])
                    acc += part
                    pixel += n
                out[g, k] = acc / count[g] if count[g] > 0 else np.nan
        return out

    return kernel


def numba_available() -> bool:
    """Whether the fused CPU kernel (numba) can be used."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def chi_numba(models: np.ndarray, obj: np.ndarray, seg: np.ndarray, rms: np.ndarray) -> np.ndarray:
    """DRE χ for G cuts × K models with the fused numba loop.

    Parameters
    ----------
    models : numpy.ndarray
        ``(K, npix)`` PSF-convolved model stamps, flattened.
    obj, seg, rms : numpy.ndarray
        ``(G, npix)`` cuts, flattened (seg boolean).

    Returns
    -------
    numpy.ndarray
        float32 ``(G, K)``; NaN for cuts with an empty mask.
    """
    packed = pack_masks(obj, seg, rms)
    out = np.empty((obj.shape[0], models.shape[0]), dtype=np.float64)
    models = np.ascontiguousarray(models, dtype=np.float32)
    _numba_kernel()(models, *packed, out)
    return out.astype(np.float32)


def chi_numpy(models: np.ndarray, obj: np.ndarray, seg: np.ndarray, rms: np.ndarray) -> np.ndarray:
    """DRE χ for G cuts × K models with numpy, blocked over models (no numba needed).

    Same parameters and result as :func:`chi_numba`.
    """
    out = np.full((obj.shape[0], models.shape[0]), np.nan, dtype=np.float32)
    for g in range(obj.shape[0]):
        (pix,) = np.nonzero(seg[g])
        if pix.size == 0:
            continue
        data = obj[g, pix].astype(np.float64)
        var = rms[g, pix].astype(np.float64) ** 2
        flux = np.nansum(data)
        for k0 in range(0, models.shape[0], _NUMPY_MODEL_BLOCK):
            m = models[k0 : k0 + _NUMPY_MODEL_BLOCK, pix].astype(np.float64)
            m *= (flux / m.sum(axis=1))[:, None]
            term = (data - m) ** 2
            m += var
            term /= m
            with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN
                out[g, k0 : k0 + _NUMPY_MODEL_BLOCK] = np.nanmean(term, axis=1)
    return out


_CUDA_SOURCE = r"""
extern "C" __global__
void dre_chi(const float* models, const long long npix, const long long n_models,
             const long long* pix, const double* data, const double* var,
             const long long* offsets, const double* flux, float* out)
{
    const long long k = blockIdx.x;
    const long long g = blockIdx.y;
    const long long first = offsets[g], last = offsets[g + 1];
    const float* row = models + k * npix;
    __shared__ double s_sum[256];
    __shared__ double s_acc[256];
    __shared__ int s_cnt[256];
    double total = 0.0;
    for (long long j = first + threadIdx.x; j < last; j += blockDim.x) total += row[pix[j]];
    s_sum[threadIdx.x] = total;
    __syncthreads();
    for (int h = blockDim.x / 2; h > 0; h >>= 1) {
        if (threadIdx.x < h) s_sum[threadIdx.x] += s_sum[threadIdx.x + h];
        __syncthreads();
    }
    const double scale = flux[g] / s_sum[0];
    double acc = 0.0;
    int count = 0;
    for (long long j = first + threadIdx.x; j < last; j += blockDim.x) {
        const double m = scale * row[pix[j]];
        const double r = data[j] - m;
        const double t = r * r / (m + var[j]);
        if (!isnan(t)) { acc += t; count += 1; }
    }
    s_acc[threadIdx.x] = acc;
    s_cnt[threadIdx.x] = count;
    __syncthreads();
    for (int h = blockDim.x / 2; h > 0; h >>= 1) {
        if (threadIdx.x < h) {
            s_acc[threadIdx.x] += s_acc[threadIdx.x + h];
            s_cnt[threadIdx.x] += s_cnt[threadIdx.x + h];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[g * n_models + k] = s_cnt[0] ? s_acc[0] / s_cnt[0] : nanf("");
}
"""


@cache
def _cuda_kernel():
    import cupy

    return cupy.RawKernel(_CUDA_SOURCE, "dre_chi")


def chi_cupy(models, obj, seg, rms):
    """DRE χ for G cuts × K models on the GPU (CuPy arrays in, CuPy float32 ``(G, K)`` out).

    Same parameters as :func:`chi_numba`, as CuPy arrays.
    """
    import cupy

    g = obj.shape[0]
    cut, pix = cupy.nonzero(seg)
    offsets = cupy.zeros(g + 1, dtype=cupy.int64)
    cupy.cumsum(cupy.bincount(cut, minlength=g), out=offsets[1:])
    data = obj[cut, pix].astype(cupy.float64)
    var = rms[cut, pix].astype(cupy.float64) ** 2
    flux = cupy.bincount(cut, weights=cupy.nan_to_num(data, nan=0.0), minlength=g)
    models = cupy.ascontiguousarray(models, dtype=cupy.float32)
    out = cupy.empty((g, models.shape[0]), dtype=cupy.float32)
    _cuda_kernel()(
        (models.shape[0], g),
        (256,),
        (
            models,
            np.int64(models.shape[1]),
            np.int64(models.shape[0]),
            pix.astype(cupy.int64),
            data,
            var,
            offsets,
            flux,
            out,
        ),
    )
    return out


def chi_block(models, obj, seg, rms):
    """Dispatch to the GPU kernel for CuPy inputs, else numba (or numpy without numba).

    Parameters
    ----------
    models : array
        ``(K, npix)`` flattened PSF-convolved models (numpy or CuPy).
    obj, seg, rms : array
        ``(G, npix)`` flattened cuts.

    Returns
    -------
    array
        float32 ``(G, K)`` χ values of the same array type as the inputs.
    """
    xp: ModuleType = array_module(obj)
    if xp is not np:
        return chi_cupy(xp.asarray(models), obj, seg, rms)
    models = np.asarray(models)
    if numba_available():
        return chi_numba(models, obj, seg, rms)
    return chi_numpy(models, obj, seg, rms)
