"""DRE χ² benchmark: cloudlab's fused kernel against DRE's reference approach, side by side.

The reference is a direct numpy implementation of DRE's per-cut formula (from the maths in
``shared/reference/dre.md``, float32 cube as DRE's CPU path): gather the mask pixels of every
model, ``s = nansum(D) / sum(M)``, ``χ = nanmean((D − sM)² / (sM + σ²))``, one cut at a time.
cloudlab evaluates the same χ with its fused kernel over blocks of cuts. Both run on one core;
times are CPU seconds of this process (``time.process_time``), which stay meaningful on a shared
machine; wall-clock figures are printed beside them.

Usage::

    python benchmarks/dre.py [--cuts 64] [--ref-cuts 8] [--radius 20] [--small]

``--small`` uses a 60-model grid (a quick smoke run); the default is DRE's 2,730-model grid
(10 axis ratios × 13 angles × 21 radii, 128² stamps).
"""

from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import time  # noqa: E402

import dask  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from scipy.signal import fftconvolve  # noqa: E402

from cloudlab import dre  # noqa: E402
from cloudlab.backend import gpu_available  # noqa: E402
from cloudlab.dre.kernels import chi_block  # noqa: E402
from cloudlab.simulate.galaxies import gaussian_psf, sersic_stamp  # noqa: E402


class Timer:
    """CPU and wall-clock time of a ``with`` block."""

    def __enter__(self):
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu = time.process_time() - self.cpu
        self.wall = time.perf_counter() - self.wall


def reference_chi(conv: np.ndarray, obj: np.ndarray, seg: np.ndarray, rms: np.ndarray):
    """DRE's formula for one cut, as DRE evaluates it (gather, then whole-array numpy)."""
    pix = np.nonzero(seg.ravel())[0]
    m = conv[:, pix]
    data, var = obj.ravel()[pix], rms.ravel()[pix] ** 2
    scale = np.nansum(data) / m.sum(axis=1)
    model = scale[:, None] * m
    return np.nanmean((data - model) ** 2 / (model + var), axis=1)


def make_cuts(n: int, size: int, radius: float, seed: int = 0):
    """Noisy galaxies with circular masks of the given radius (≈ π r² pixels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] - size // 2
    mask = np.hypot(yy, xx) < radius
    psf = gaussian_psf(2.5, 25)
    galaxy = fftconvolve(sersic_stamp(4.0, 0.6, 45.0, 0.8, size=size), psf, mode="same") * 4e4
    obj = (galaxy + rng.normal(0, 5, (n, size, size))).astype(np.float32)
    rms = np.full((n, size, size), 5.0, np.float32)
    seg = np.broadcast_to(mask, (n, size, size)).copy()
    return obj, seg, rms, psf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuts", type=int, default=64, help="cuts timed for cloudlab")
    parser.add_argument("--ref-cuts", type=int, default=8, help="cuts timed for the reference")
    parser.add_argument("--radius", type=float, default=20.0, help="mask radius (20 ≈ 1250 px)")
    parser.add_argument("--small", action="store_true", help="60-model grid smoke run")
    parser.add_argument("--quick", action="store_true", help="smoke run, tiny size")
    args = parser.parse_args()
    if args.quick:
        args.cuts, args.ref_cuts, args.small = 8, 2, True

    axes = (
        {"ax_ratio": (0.2, 0.2, 5), "angle": (0.0, 45.0, 4), "log_r": (0.0, 0.4, 3)}
        if args.small
        else {"ax_ratio": (0.1, 0.1, 10), "angle": (0.0, 15.0, 13), "log_r": (-0.7, 0.12, 21)}
    )
    size = 128
    with dask.config.set(scheduler="synchronous"):
        t0 = time.perf_counter()
        models = dre.model_grid(**axes, boxsize=size).compute()
        t_grid = time.perf_counter() - t0
        n_models = int(np.prod(models.shape[:4]))
        obj, seg, rms, psf = make_cuts(args.cuts, size, args.radius)
        print(f"grid: {n_models} models of {size}², built in {t_grid:.1f} s; "
              f"mask: {seg[0].sum()} px; PSF {psf.shape}")  # fmt: skip

        # -- convolution: DRE's per-stamp scipy fftconvolve vs cloudlab's blockwise FFT
        flat = models.values.reshape(n_models, size, size)
        n_ref_conv = min(n_models, 273)
        with Timer() as conv_ref:
            for k in range(n_ref_conv):
                fftconvolve(flat[k], psf.astype(np.float32), mode="same")
        with Timer() as conv_fast:
            conv = dre.convolve_models(models, psf).data.persist()  # chunks, no concatenation
        conv = np.asarray(conv)
        conv_flat = conv.reshape(n_models, size * size)
        scale = n_models / n_ref_conv

        # -- χ per cut
        ref = []
        with Timer() as chi_ref:
            for g in range(args.ref_cuts):
                ref.append(reference_chi(conv_flat, obj[g], seg[g], rms[g]))
        flat_cuts = [a.reshape(args.cuts, -1) for a in (obj, seg, rms)]
        chi_block(conv_flat[:2], *(a[:2] for a in flat_cuts))  # compile the kernel once
        with Timer() as chi_fast:
            chi = chi_block(conv_flat, *flat_cuts)
        err = np.max(np.abs(chi[: args.ref_cuts] / np.array(ref) - 1))
        same_best = np.array_equal(chi[: args.ref_cuts].argmin(1), np.array(ref).argmin(1))

        # -- the whole lazy pipeline (convolution + fit graph), synchronous on one core
        cuts = xr.Dataset(
            {"obj": (("galaxy", "y", "x"), obj), "seg": (("galaxy", "y", "x"), seg),
             "rms": (("galaxy", "y", "x"), rms)}
        ).chunk({"galaxy": 32})  # fmt: skip
        with Timer() as pipe:
            dre.fit(cuts, models, psf)["chi"].compute()

    rows = [
        ("convolve grid [s]", conv_ref.cpu * scale, conv_fast.cpu, conv_ref.wall * scale,
         conv_fast.wall),
        ("chi per cut [ms]", chi_ref.cpu / args.ref_cuts * 1e3, chi_fast.cpu / args.cuts * 1e3,
         chi_ref.wall / args.ref_cuts * 1e3, chi_fast.wall / args.cuts * 1e3),
        ("cuts/s per core", args.ref_cuts / chi_ref.cpu, args.cuts / chi_fast.cpu,
         args.ref_cuts / chi_ref.wall, args.cuts / chi_fast.wall),
    ]  # fmt: skip
    print(f"{'CPU time':>46s}{'':16s}{'wall clock':>16s}")
    print(f"{'':22s}{'reference':>12s}{'cloudlab':>12s}{'ratio':>8s}"
          f"{'reference':>12s}{'cloudlab':>12s}")  # fmt: skip
    for name, ref_cpu, fast_cpu, ref_wall, fast_wall in rows:
        ratio = fast_cpu / ref_cpu if name.startswith("cuts") else ref_cpu / fast_cpu
        print(f"{name:22s}{ref_cpu:12.2f}{fast_cpu:12.2f}{ratio:7.1f}x"
              f"{ref_wall:12.2f}{fast_wall:12.2f}")  # fmt: skip
    print(f"pipeline fit() incl. convolution, {args.cuts} cuts: {pipe.cpu:.2f} s CPU, "
          f"{pipe.wall:.2f} s wall ({args.cuts / pipe.cpu:.1f} cuts/s per core)")  # fmt: skip
    print(f"max relative difference cloudlab vs reference: {err:.2e}; same best model: {same_best}")
    if gpu_available():
        gpu_figures(conv_flat, *flat_cuts, chi)
    else:
        print("GPU: not available (CuPy/CUDA), GPU kernel not timed")


def gpu_figures(models, obj, seg, rms, cpu_chi) -> None:
    """Time the CUDA kernel on device-resident cuts and models (cuts/s on one GPU)."""
    import cupy

    from cloudlab.dre.kernels import chi_cupy

    d_models, d_obj, d_seg, d_rms = (cupy.asarray(a) for a in (models, obj, seg, rms))
    chi_cupy(d_models, d_obj[:2], d_seg[:2], d_rms[:2])  # compile
    cupy.cuda.Device().synchronize()
    t0 = time.perf_counter()
    out = chi_cupy(d_models, d_obj, d_seg, d_rms)
    cupy.cuda.Device().synchronize()
    wall = time.perf_counter() - t0
    err = float(np.max(np.abs(cupy.asnumpy(out) / cpu_chi - 1)))
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"GPU ({name}): {obj.shape[0] / wall:.0f} cuts/s; "
          f"max relative difference vs CPU kernel {err:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
