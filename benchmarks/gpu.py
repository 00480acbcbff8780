"""Benchmark: every workflow's GPU path against its CPU path, side by side in one run.

Each workflow runs the same inputs twice, once with numpy chunks on the CPU (dask's threaded
scheduler, all cores) and once with CuPy chunks on one GPU (or TensorFlow on the GPU for
AstroNet), checks that the two results agree, and reports the throughput of each and their
ratio:

* BackDrop: ``backdrop.fit`` on simulated full-size 2048 x 2048 FFIs (frames/s);
* DRE: ``dre.fit`` of galaxy cuts against the default 2,730-model grid (cuts/s);
* timelag: ``timelag_maps`` of a 6-channel cube, 15 pairs (pixel-pairs/s);
* AstroNet: inference of the shipped Triage ensemble on views (TCEs/s).

Without a CUDA GPU (or with ``--cpu-only``) only the CPU column is filled, which makes the
script testable anywhere. ``benchmarks/device_check.sh`` runs it on a GPU machine.

Usage::

    python benchmarks/gpu.py [--quick] [--cpu-only] [--out summary.md]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import dask
import numpy as np

SIZES = {
    "full": {"frames": 24, "cuts": 1024, "lag_shape": (300, 256, 256), "tces": 20000},
    "quick": {"frames": 2, "cuts": 16, "lag_shape": (60, 32, 32), "tces": 500},
}


def _timed(func: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    """Seconds of one call after a warm-up call (compilation, CUDA context, caches)."""
    func()
    start = time.perf_counter()
    out = func()
    return time.perf_counter() - start, out


def _host(x) -> np.ndarray:
    return x.get() if hasattr(x, "get") else np.asarray(x)


def backdrop_case(n_frames: int, workdir: str, gpu: bool):
    from cloudlab import backdrop
    from cloudlab.io.tess_ffi import open_ffis
    from cloudlab.simulate import ffi_stack

    dest = os.path.join(workdir, "ffis")
    if not os.path.isdir(dest):
        ffi_stack(dest, n_frames=n_frames, seed=7, ccd=1)
    ffis = open_ffis(os.path.join(dest, "*.fits"))

    def run():
        weights = backdrop.fit(ffis, frames_per_batch=min(n_frames, 6), gpu=gpu)
        return weights["poly_w"].values

    return n_frames, run


def dre_case(n_cuts: int, gpu: bool):
    import dask.array as da
    import xarray as xr

    from cloudlab import dre
    from cloudlab.backend import to_gpu
    from cloudlab.simulate.galaxies import gaussian_psf

    box = 64
    rng = np.random.default_rng(5)
    grid = dre.model_grid(boxsize=box).compute()
    psf = gaussian_psf(2.5, 15)
    flat = grid.values.reshape(-1, box, box)
    pick = rng.integers(0, flat.shape[0], n_cuts)
    obj = (flat[pick] * 5e4 + rng.normal(0, 3, (n_cuts, box, box))).astype(np.float32)
    rms = np.full_like(obj, 3.0)
    seg = flat[pick] > 1e-3
    chunk = {"galaxy": 32}
    cuts = xr.Dataset(
        {"obj": (("galaxy", "y", "x"), obj), "seg": (("galaxy", "y", "x"), seg),
         "rms": (("galaxy", "y", "x"), rms)},
        coords={"NUMBER": ("galaxy", np.arange(n_cuts) + 1)},
    ).chunk(chunk)  # fmt: skip
    models = grid
    if gpu:
        for var in ("obj", "seg", "rms"):
            cuts[var] = cuts[var].copy(data=to_gpu(cuts[var].data))
        models = grid.copy(data=to_gpu(da.from_array(grid.values, chunks=-1)))

    def run():
        return _host(dre.fit(cuts, models, psf)["chi"].data.compute())

    return n_cuts, run


def timelag_case(shape: tuple[int, int, int], gpu: bool):
    import dask.array as da
    import xarray as xr

    from cloudlab.backend import to_gpu
    from cloudlab.timelag import timelag_maps

    rng = np.random.default_rng(3)
    walk = rng.normal(size=shape).cumsum(axis=0)
    times = np.arange(shape[0]) * 12.0
    channels = (94, 131, 171, 193, 211, 335)
    cubes = {}
    for k, channel in enumerate(channels):
        values = np.roll(walk, k, axis=0) + 0.3 * rng.normal(size=shape)
        data = da.from_array(values, chunks=(shape[0], 64, 64))
        cubes[channel] = xr.DataArray(
            to_gpu(data) if gpu else data, dims=("time", "y", "x"), coords={"time": times}
        )
    pairs = len(channels) * (len(channels) - 1) // 2

    def run():
        return _host(timelag_maps(cubes)["timelag"].data.compute())

    return pairs * shape[1] * shape[2], run


def astronet_case(n_tces: int, gpu: bool):
    import tensorflow as tf

    from cloudlab.astronet import shipped_models
    from cloudlab.astronet.train import predict

    rng = np.random.default_rng(9)
    import xarray as xr

    views = xr.Dataset(
        {
            "global_view": (("tce", "global_bin"), rng.normal(0, 0.3, (n_tces, 201))),
            "local_view": (("tce", "local_bin"), rng.normal(0, 0.3, (n_tces, 61))),
        }
    )
    models = shipped_models()
    device = "/GPU:0" if gpu else "/CPU:0"

    def run():
        with tf.device(device):
            return predict(models, views, batch_size=1024)

    return n_tces, run


def _gpu_present() -> bool:
    from cloudlab.backend import gpu_available

    return gpu_available()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU column")
    parser.add_argument("--only", nargs="+", choices=["backdrop", "dre", "timelag", "astronet"])
    parser.add_argument("--out", help="also write the summary table (Markdown) here")
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    use_gpu = not args.cpu_only and _gpu_present()
    units = {"backdrop": "frames/s", "dre": "cuts/s", "timelag": "pixel-pairs/s",
             "astronet": "TCEs/s"}  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="cloudlab-gpu-bench-") as workdir:
        cases = {
            "backdrop": lambda gpu: backdrop_case(size["frames"], workdir, gpu),
            "dre": lambda gpu: dre_case(size["cuts"], gpu),
            "timelag": lambda gpu: timelag_case(size["lag_shape"], gpu),
            "astronet": lambda gpu: astronet_case(size["tces"], gpu),
        }
        for name, make in cases.items():
            if args.only and name not in args.only:
                continue
            items, run = make(False)
            with dask.config.set(scheduler="threads"):
                cpu_s, cpu_out = _timed(run)
            row = {"workflow": name, "items": items, "cpu": items / cpu_s}
            if use_gpu:
                items, run = make(True)
                with dask.config.set(scheduler="sync"):
                    gpu_s, gpu_out = _timed(run)
                row["gpu"] = items / gpu_s
                both = np.isfinite(cpu_out) & np.isfinite(gpu_out)
                scale = np.nanmax(np.abs(cpu_out)) or 1.0
                row["max_diff"] = float(np.max(np.abs(cpu_out - gpu_out)[both]) / scale)
            rows.append(row)
            print(f"{name}: {row}", flush=True)
    head = "| workflow | items | CPU | GPU | GPU/CPU | max rel. diff |"
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        unit = units[r["workflow"]]
        gpu_rate = f"{r['gpu']:.4g} {unit}" if "gpu" in r else "no GPU"
        ratio = f"{r['gpu'] / r['cpu']:.1f}×" if "gpu" in r else "–"
        diff = f"{r['max_diff']:.1e}" if "max_diff" in r else "–"
        lines.append(
            f"| {r['workflow']} | {r['items']} | {r['cpu']:.4g} {unit} | {gpu_rate} | {ratio} "
            f"| {diff} |"
        )
    table = "\n".join(lines)
    print(f"\n{os.cpu_count()} CPU cores; GPU: {'yes' if use_gpu else 'none used'}\n\n{table}")
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
