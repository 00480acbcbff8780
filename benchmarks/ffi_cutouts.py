"""Benchmark cutouts straight from FFIs against the cube path on a shaped loopback object store.

A sector's FFIs are public weeks before its cube. This measures what cutting from the FFIs
costs: ``make_cutouts(targets, ffis=...)`` against ``make_cutouts(targets, cube_url=...)`` on
the same simulated sector, both full-size (2078 × 2136 pixels per FFI; the cube 2078 × 2136 ×
frames × 2) and *sparse* (real headers, the pixels holes), placed straight into s3rver's
directory behind ``cloudlab.testing.Shaper`` (30 ms first-byte latency per request, 80 MB/s per
connection by default; the settings are printed).

Reported per number of random 10 × 10 targets: cutouts/s for each path (headers read first, as a
session would: the FFI path's header walk is timed separately), HTTP requests per FFI, and bytes
fetched per cutout.

Usage::

    python benchmarks/ffi_cutouts.py                    # 1/10/100 targets over 200 FFIs
    python benchmarks/ffi_cutouts.py --quick            # 1/10 targets over 20 FFIs
    python benchmarks/ffi_cutouts.py --frames 1000 --targets 10,100

Needs s3rver (``make tools``). Everything is written to a temporary directory that is removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import dask
from astropy.io import fits
from cloud_cutouts import random_targets  # the same random 10x10 targets

from cloudlab.cutouts import make_cutouts
from cloudlab.fits import clear_cache
from cloudlab.io.tess import cube_meta, ffi_cube_meta
from cloudlab.simulate import tess_sector
from cloudlab.testing import ObjectStore, Shaper, aws_environment, place_object, sparse_fits

BUCKET = "stpubdata"
PREFIX = "tess/public/ffi/s0055/1-1"
SHAPE = (2078, 2136)


def make_sector(store: ObjectStore, tmp: str, frames: int) -> tuple[str, str]:
    """A sparse cube and ``frames`` sparse FFIs of the same simulated sector, in the store."""
    t0 = time.perf_counter()
    cube = tess_sector(f"{tmp}/cube", shape=SHAPE, n_frames=frames, n_stars=10, cadence_s=200,
                       ffis=False, sparse=True)  # fmt: skip
    dest = store.object_path(BUCKET, "tess/public/mast/tess-s0055-1-1-cube.fits")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(cube.cube_url, dest)
    store.seal(BUCKET, "tess/public/mast/tess-s0055-1-1-cube.fits")
    one = tess_sector(f"{tmp}/ffi", shape=SHAPE, n_frames=1, n_stars=10, cadence_s=200,
                      cube=False)  # fmt: skip
    with fits.open(one.ffi_urls[0]) as hdul:
        headers = [h.header.copy() for h in hdul]
    for k in range(frames):  # the template's headers with each frame's times
        for h in headers[1:]:
            h["TSTART"], h["TSTOP"] = cube.tstart[k], cube.tstop[k]
        key = f"{PREFIX}/tess{k:06d}-s0055-1-1-0120-s_ffic.fits"
        sparse_fits(place_object(store.root, BUCKET, key), headers)
        store.seal(BUCKET, key)
    print(f"sparse sector: cube and {frames} FFIs of {SHAPE[0]}x{SHAPE[1]} in "
          f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    return (f"s3://{BUCKET}/tess/public/mast/tess-s0055-1-1-cube.fits",
            f"s3://{BUCKET}/{PREFIX}/*_ffic.fits")  # fmt: skip


def timed(shaper: Shaper, func) -> tuple[float, object, object]:
    shaper.reset()
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2):
        out = func()
    return time.perf_counter() - t0, shaper.reset(), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="1,10,100", help="comma-separated sizes")
    parser.add_argument("--frames", type=int, default=200, help="FFIs (and cube frames)")
    parser.add_argument("--latency", type=float, default=0.030, help="seconds per request")
    parser.add_argument("--bandwidth", type=float, default=80e6, help="bytes/s per connection")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    args = parser.parse_args()
    if args.quick:
        args.targets, args.frames = "1,10", 20
    sizes = [int(n) for n in args.targets.split(",")]
    tmp = tempfile.mkdtemp(prefix="cloudlab-bench-ffi-")
    try:
        with ObjectStore(Path(tmp, "store"), buckets=[BUCKET]) as store:
            cube, ffis = make_sector(store, tmp, args.frames)
            with Shaper(store.port, latency=args.latency, bandwidth=args.bandwidth) as shaper:
                with aws_environment(shaper.endpoint_url, store.key, store.secret):
                    report(cube, ffis, sizes, args.frames, shaper)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(cube: str, ffis: str, sizes: list[int], frames: int, shaper: Shaper) -> None:
    clear_cache()
    seconds, stats, _ = timed(shaper, lambda: cube_meta(cube))
    print(f"\nshaped endpoint: {shaper.describe()}; {frames} frames, 10x10 cutouts")
    print(f"cube headers + table: {stats.total_requests} requests, {seconds:.2f} s")
    seconds, stats, _ = timed(shaper, lambda: ffi_cube_meta(ffis))
    print(f"FFI headers: {stats.total_requests / frames:.2f} requests per FFI, "
          f"{stats.body_bytes / frames / 1e3:.0f} kB per FFI, {seconds:.2f} s")  # fmt: skip
    print(f"{'targets':>7} {'path':<5} {'cutouts/s':>9} {'req/FFI':>8} {'MB/cutout':>9}")
    for n in sizes:
        targets = random_targets(cube, n, seed=n)
        for path, kwargs in (("cube", {"cube_url": cube}), ("FFIs", {"ffis": ffis})):
            seconds, stats, _ = timed(
                shaper,
                lambda kw=kwargs, t=targets: make_cutouts(t, size=10, **kw)["flux"].compute(),
            )
            print(f"{n:>7} {path:<5} {n / seconds:9.2f} {stats.total_requests / frames:8.2f} "
                  f"{stats.body_bytes / n / 1e6:9.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
