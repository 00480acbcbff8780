"""Benchmark the metadata cost of opening a stack of TESS FFIs on a shaped loopback S3 store.

``open_ffis`` reads the primary, calibrated-image and uncertainty headers of every frame before
the graph exists. On an object store each request costs a round trip, so the figure that matters
is requests (and bytes) per frame. The frames are simulated FFIs (the full 44-row/44-column
collateral margins and real header sizes; the science region is small to keep the upload quick:
header costs do not depend on it), uploaded to s3rver on 127.0.0.1 behind
``cloudlab.testing.Shaper`` (30 ms first-byte latency per request by default).

Reported: requests per frame (the glob listing included), header bytes per frame, and the wall
time of ``open_ffis`` with its client threads; then the same for computing the frames' science
pixels (one ranged read per frame, no revalidation).

Usage::

    python benchmarks/metadata.py                  # 100 frames
    python benchmarks/metadata.py --quick          # 12 frames
    python benchmarks/metadata.py --frames 400 --latency 0.03

Needs s3rver (``make tools``). Everything is written to a temporary directory that is removed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import dask

from cloudlab.fits import clear_cache
from cloudlab.io.tess import open_ffis
from cloudlab.simulate.ffis import ffi_stack
from cloudlab.testing import ObjectStore, Shaper
from cloudlab.testing.objectstore import ShaperStats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100, help="FFIs in the stack")
    parser.add_argument("--latency", type=float, default=0.030, help="seconds per request")
    parser.add_argument("--quick", action="store_true", help="a smoke run (12 frames)")
    args = parser.parse_args()
    n = 12 if args.quick else args.frames
    tmp = tempfile.mkdtemp(prefix="cloudlab-metadata-")
    try:
        with (
            ObjectStore(f"{tmp}/s3", buckets=["data"]) as store,
            Shaper(store.port, latency=args.latency) as shaper,
        ):
            options = store.storage_options(shaper.endpoint_url)
            ffi_stack("s3://data/ffis", n_frames=n, shape=(64, 64), storage_options=options)
            print(f"{n} FFIs on {shaper.describe()}")
            clear_cache()
            shaper.reset()
            t0 = time.perf_counter()
            ds = open_ffis("s3://data/ffis/*.fits", storage_options=options)
            seconds = time.perf_counter() - t0
            opened = shaper.reset()
            print(
                f"open_ffis: {opened.total_requests / n:.2f} requests per frame "
                f"({dict(opened.requests)} with the listing), "
                f"{opened.body_bytes / n / 1e3:.1f} kB per frame, {seconds:.2f} s"
            )
            t0 = time.perf_counter()
            with dask.config.set(scheduler="threads"):
                ds["flux"].compute()
            seconds = time.perf_counter() - t0
            read = shaper.reset()
            print(
                f"flux compute: {read.total_requests / n:.2f} requests per frame "
                f"({dict(read.requests)}), {seconds:.2f} s"
            )
            scan_on_workers(options, n, shaper)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def scan_on_workers(options: dict, n: int, shaper: Shaper) -> None:
    """The header scan of ``cloudlab.fits.open_stack`` over the same FFIs (image HDU), with the
    client's threads and then on the workers of a 2-worker LocalCluster (one thread each)."""
    from distributed import Client, LocalCluster

    from cloudlab.fits import open_stack

    def scan() -> tuple[float, ShaperStats]:
        """Seconds and requests of one header scan, nothing cached beforehand here."""
        clear_cache()
        shaper.reset()
        t0 = time.perf_counter()
        open_stack("s3://data/ffis/*.fits", 1, storage_options=options)
        return time.perf_counter() - t0, shaper.reset()

    threads, scanned = scan()
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1") as cluster,
        Client(cluster) as client,
        dask.config.set(scheduler=client.get),
    ):
        client.run(clear_cache)
        workers, on_workers = scan()
    print(
        f"header scan (open_stack): client threads {n / threads:.0f} files/s "
        f"({scanned.total_requests / n:.2f} requests per file); 2 workers x 1 thread "
        f"{n / workers:.0f} files/s ({on_workers.total_requests / n:.2f} requests per file)"
    )


if __name__ == "__main__":
    main()
