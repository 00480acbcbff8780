"""Benchmark TESS cube cutouts on a shaped loopback object store: cloudlab against astrocut.

The published protocol (1, 10, 100, 1,000 random 10×10 cutouts of a full-size sector cube) on
an S3 endpoint that behaves like an object store in a cloud region: s3rver on 127.0.0.1 behind
``cloudlab.testing.Shaper`` (30 ms first-byte latency per request, 80 MB/s per connection, by
default; the settings are printed beside every figure).

The cube has the full geometry of a TESS sector cube as astrocut's ``CubeFactory`` writes it
(2078 × 2136 pixels × 3,705 frames × 2 float32 planes, 131 GB): it is written as a *sparse* file
(headers and the HDU 2 table written, the pixels a hole) straight into s3rver's directory, so
nothing is uploaded.  Both tools read the same ``s3://`` URL through the same shaper, one after
the other, in one run:

- cloudlab: ``make_cutouts(targets, cube_url=...)`` computed with dask threads (every target's
  rows read by batched ranged requests);
- astrocut: ``cube_cut(url, coordinate, 10, threads="auto", memory_only=True)`` once per target
  (on at most ``--astrocut`` targets per size; its rate is per cutout).

Reported per size: cutouts/s for both and their ratio, HTTP requests per cutout, bytes fetched
(response bodies through the shaper) over bytes needed (the cutouts' pixels, both planes), and
peak resident memory above the starting level (sampled every 10 ms).

Usage::

    python benchmarks/cloud_cutouts.py                    # 1/10/100/1000 targets, 3,705 frames
    python benchmarks/cloud_cutouts.py --quick            # a smoke run (100 frames)
    python benchmarks/cloud_cutouts.py --latency 0.03 --bandwidth 80e6 --astrocut 10

Everything is written to a temporary directory that is always removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import psutil

from cloudlab.cutouts import make_cutouts
from cloudlab.io.tess import cube_meta
from cloudlab.simulate import tess_sector
from cloudlab.testing import ObjectStore, Shaper, aws_environment

BUCKET = "stpubdata"
KEY = "tess/public/mast/tess-s0030-1-1-cube.fits"


class PeakRSS:
    """Peak resident memory of this process above its level at entry (sampled every 10 ms)."""

    def __enter__(self) -> PeakRSS:
        self._proc = psutil.Process()
        self.base = self._proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 1e6


def random_targets(url: str, n: int, seed: int) -> pd.DataFrame:
    """``n`` random positions on the science pixels, at least 5 pixels from the edges."""
    meta = cube_meta(url)
    sci = meta.science
    rng = np.random.default_rng(seed)
    col = rng.uniform(sci["col_start"] + 5, sci["col_stop"] - 5, n)
    row = rng.uniform(sci["row_start"] + 5, sci["row_stop"] - 5, n)
    ra, dec = meta.wcs.all_pix2world(col, row, 0)
    return pd.DataFrame({"ticid": np.arange(n) + 1_000_000, "ra": ra, "dec": dec})


def run_cloudlab(url: str, targets: pd.DataFrame, size: int, shaper: Shaper) -> dict:
    shaper.reset()
    with PeakRSS() as mem, dask.config.set(scheduler="threads", num_workers=2):
        t0 = time.perf_counter()
        ds = make_cutouts(targets, cube_url=url, size=size).compute()
        elapsed = time.perf_counter() - t0
    stats = shaper.reset()
    return {"rate": len(targets) / elapsed, "stats": stats, "mem": mem.mb, "ds": ds}


def run_astrocut(url: str, targets: pd.DataFrame, size: int, shaper: Shaper) -> dict:
    from astrocut import cube_cut
    from astropy.coordinates import SkyCoord
    from astropy.io import fits as afits

    shaper.reset()
    cuts = []
    with PeakRSS() as mem, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        for t in targets.itertuples():
            coord = SkyCoord(t.ra, t.dec, unit="deg")
            hdul = cube_cut(url, coord, size, threads="auto", memory_only=True)
            hdul = hdul if isinstance(hdul, afits.HDUList) else hdul[0]
            cuts.append(np.asarray(hdul[1].data["FLUX"]))
        elapsed = time.perf_counter() - t0
    stats = shaper.reset()
    return {"rate": len(targets) / elapsed, "stats": stats, "mem": mem.mb, "cuts": cuts}


def make_cube(store: ObjectStore, tmp: str, frames: int) -> str:
    """A sparse full-geometry cube placed straight into the store; its ``s3://`` URL."""
    t0 = time.perf_counter()
    sim = tess_sector(os.path.join(tmp, "sim"), shape=(2078, 2136), n_frames=frames, n_stars=10,
                      cadence_s=600, ffis=False, sparse=True)  # fmt: skip
    dest = store.object_path(BUCKET, KEY)
    os.replace(sim.cube_url, dest)  # same file system: stays sparse
    store.seal(BUCKET, KEY)
    print(f"sparse cube 2078x2136x{frames}x2 ({dest.stat().st_size / 1e9:.0f} GB, "
          f"{dest.stat().st_blocks * 512 / 1e6:.0f} MB on disk) made in "
          f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    return f"s3://{BUCKET}/{KEY}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="1,10,100,1000", help="comma-separated sizes")
    parser.add_argument("--astrocut", type=int, default=10, help="most targets cut by astrocut")
    parser.add_argument("--frames", type=int, default=3705)
    parser.add_argument("--size", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.030, help="seconds per request")
    parser.add_argument(
        "--bandwidth", type=float, default=80e6, help="bytes/s per connection (0: unlimited)"
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    args = parser.parse_args()
    if args.quick:
        args.targets, args.astrocut, args.frames = "1,10", 2, 100
    sizes = [int(n) for n in args.targets.split(",")]
    tmp = tempfile.mkdtemp(prefix="cloudlab-bench-cloud-")
    try:
        with ObjectStore(Path(tmp, "store"), buckets=[BUCKET]) as store:
            url = make_cube(store, tmp, args.frames)
            bandwidth = args.bandwidth or None
            with Shaper(store.port, latency=args.latency, bandwidth=bandwidth) as shaper:
                # every s3:// client (s3fs for cloudlab, astropy+fsspec for astrocut) goes here
                with aws_environment(shaper.endpoint_url, store.key, store.secret):
                    report(url, sizes, args, shaper)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(url: str, sizes: list[int], args: argparse.Namespace, shaper: Shaper) -> None:
    cube_meta(url)  # the cube's headers and table, read once as any session would
    needed_per_cut = args.size * args.size * args.frames * 2 * 4
    shaping = shaper.describe()
    print(f"\nshaped endpoint: {shaping}")
    print(f"cube 2078x2136x{args.frames}, {args.size}x{args.size} cutouts, dask threads x2, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    head = (f"{'targets':>7} {'tool':<9} {'cutouts/s':>9} {'req/cut':>8} {'fetched/needed':>14} "
            f"{'peak MB':>8}")  # fmt: skip
    print(head)
    for n in sizes:
        targets = random_targets(url, n, seed=n)
        ours = run_cloudlab(url, targets, args.size, shaper)
        line(n, "cloudlab", ours, needed_per_cut)
        k = min(n, args.astrocut)
        if k:
            ref = run_astrocut(url, targets.iloc[:k], args.size, shaper)
            line(k, "astrocut", ref, needed_per_cut)
            same = all(
                np.array_equal(c, ours["ds"]["flux"].values[i], equal_nan=True)
                for i, c in enumerate(ref["cuts"])
            )
            print(f"{'':>7} ratio {ours['rate'] / ref['rate']:8.1f}x  (astrocut on {k} of {n} "
                  f"targets; values identical: {same}; {shaping})")  # fmt: skip


def line(n: int, tool: str, res: dict, needed_per_cut: int) -> None:
    stats = res["stats"]
    print(f"{n:>7} {tool:<9} {res['rate']:9.2f} {stats.total_requests / n:8.1f} "
          f"{stats.body_bytes / (needed_per_cut * n):14.2f} {res['mem']:8.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
