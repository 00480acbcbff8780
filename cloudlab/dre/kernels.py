"""χ² kernels: DRE's per-cut formula for a block of cuts against a block of models.

For one cut with data D, background RMS σ and mask pixels P, and one PSF-convolved model M_k,
DRE computes::

    s_k = nansum_P(D) / sum_P(M_k)                      (flux matching inside the mask)
    χ_k = nanmean_P((D − s_k·M_k)² / (s_k·M_k + σ²))

The kernels below evaluate this for every (cut, model) pair of a block without full-size
temporaries: each cut's mask is packed once into runs of consecutive pixels, and every model
stamp is streamed once per block of cuts.

* ``chi_numba``: fused CPU loop (numba), float64 arithmetic on float32 inputs.
* ``chi_cupy``: a CUDA kernel (CuPy), one thread block per (model, cut).
* ``chi_numpy``: the same arithmetic with numpy over small model blocks (used when numba is
  not installed).
"""

from __future__ import annotations

from functools import cache
from types import ModuleType

import numpy as np

from cloudlab.backend import array_module

#: Models processed at once by the numpy fallback (bounds its temporaries).
_NUMPY_MODEL_BLOCK = 128


def pack_masks(
    obj: np.ndarray, seg: np.ndarray, rms: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pack the mask pixels of a block of cuts into runs of consecutive (row-major) pixels.

    Parameters
    ----------
    obj, seg, rms : numpy.ndarray
        ``(G, npix)`` data, boolean mask and background RMS of G flattened cuts.

    Returns
    -------
    run_start, run_len : numpy.ndarray
        int64 flat pixel index and length of each run, all cuts concatenated.
    cut_runs : numpy.ndarray
        int64 ``(G + 1,)`` offsets of each cut's runs in ``run_start``.
    data, var : numpy.ndarray
        float64 D and σ² of the mask pixels in run order, all cuts concatenated.
    flux : numpy.ndarray
        float64 ``(G,)`` nansum of D over each mask.
    """
    g = obj.shape[0]
    padded = np.zeros((g, seg.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = seg
    edges = np.diff(padded, axis=1)
    cut_s, start = np.nonzero(edges == 1)
    _, stop = np.nonzero(edges == -1)
    cut_runs = np.zeros(g + 1, dtype=np.int64)
    np.cumsum(np.bincount(cut_s, minlength=g), out=cut_runs[1:])
    cut_p, pix = np.nonzero(seg)
    data = obj[cut_p, pix].astype(np.float64)
    var = rms[cut_p, pix].astype(np.float64) ** 2
    flux = np.zeros(g)
    np.add.at(flux, cut_p, np.where(np.isnan(data), 0.0, data))
    return start.astype(np.int64), (stop - start).astype(np.int64), cut_runs, data, var, flux


@cache
def _numba_kernel():
    import numba

    @numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
    def kernel(models, run_start, run_len, cut_runs, data, var, flux, out):
        n_models = models.shape[0]
        n_cuts = cut_runs.size - 1
        for k in range(n_models):
            row = models[k]
            pixel0 = 0
            for g in range(n_cuts):
                first, last = cut_runs[g], cut_runs[g + 1]
                total = 0.0
                for i in range(first, last):
                    stamp = row[run_start[i] : run_start[i] + run_len[i]]
                    for j in range(stamp.size):
                        total += stamp[j]
                scale = flux[g] / total
                acc = 0.0
                count = 0.0
                p = pixel0
                for i in range(first, last):
                    n = run_len[i]
                    stamp = row[run_start[i] : run_start[i] + n]
                    d = data[p : p + n]
                    v = var[p : p + n]
                    for j in range(n):
                        m = scale * stamp[j]
                        r = d[j] - m
                        t = r * r / (m + v[j])
                        ok = t == t
                        acc += t if ok else 0.0
                        count += 1.0 if ok else 0.0
                    p += n
                out[g, k] = acc / count if count else np.nan
                pixel0 = p
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
    _numba_kernel()(np.ascontiguousarray(models), *packed, out)
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
            with np.errstate(invalid="ignore", divide="ignore"):
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
    flux = cupy.zeros(g, dtype=cupy.float64)
    cupy.add.at(flux, cut, cupy.where(cupy.isnan(data), 0.0, data))
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
