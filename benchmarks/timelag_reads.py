"""Bytes and requests of a time-lag crop: what ``open_stack`` + ``normalize_exposure`` + ``crop``
fetch from full-size AIA files.

Writes sparse uncompressed 4096x4096 int16 AIA frames (real headers, pixels left as holes: no
disk used), names them against time order (so the ``T_OBS`` sort reorders them), opens them
through a counting filesystem (the local disk under ``countreads://``: every ranged read and its
bytes are counted, as an object store would bill them) and computes the crop after exposure
normalisation, the order ``prepare_channels`` uses. Reports bytes fetched / the crop's bytes,
GETs per frame, and the header scan's requests per file (HEADs counted apart).

With ``--s3`` the files are objects of a loopback S3 server (s3rver, ``make tools``) behind a
shaped proxy (30 ms per request, 80 MB/s per connection), which counts the HTTP requests and
body bytes, and the crop's read time is reported too (4 threads).

Run: ``python benchmarks/timelag_reads.py [--frames 20] [--crop 400] [--overread 0.2]
[--request-bytes 0] [--s3]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import dask
import numpy as np
from astropy.io import fits

from cloudlab.io import aia
from cloudlab.simulate import aia_series
from cloudlab.testing import sparse_fits
from cloudlab.testing.counting import CountingFileSystem
from cloudlab.timelag import steps

SIDE = 4096


def sparse_series(root: Path, n: int, place=None) -> Path:
    """``n`` sparse 4096² frames of channel 171, 12 s apart, named against time order.

    ``place(name)`` gives the path of a file to write (and is called again with ``None`` after
    each to seal it); default ``root/frames/name``."""
    aia_series(str(root / "seed"), channels=(171,), n_frames=24, shape=(64, 64),
               lag_map=np.zeros((64, 64)), compressed=False)  # fmt: skip
    src = sorted((root / "seed" / "0171").glob("*.fits"))[0]
    header = fits.getheader(src)
    t0 = np.datetime64(header["T_OBS"].rstrip("Z"))
    out = root / "frames"
    out.mkdir()
    for k in range(n):
        h = header.copy()
        h["T_OBS"] = np.datetime_as_string(t0 + np.timedelta64(12 * k, "s"), unit="us") + "Z"
        h["NAXIS1"] = h["NAXIS2"] = SIDE
        h["CRPIX1"] += (SIDE - 64) / 2
        h["CRPIX2"] += (SIDE - 64) / 2
        name = f"aia_{n - k:05d}.fits"
        sparse_fits(out / name if place is None else place(name), [h])
        if place is not None:
            place(name, seal=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--crop", type=float, default=400.0, help="crop side in arcsec")
    parser.add_argument("--request-bytes", type=int, default=None,
                        help="dask config cloudlab.aia.request-bytes")  # fmt: skip
    parser.add_argument("--s3", action="store_true", help="through a shaped loopback S3 server")
    parser.add_argument("--overread", type=float, default=None,
                        help="dask config cloudlab.aia.overread")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke run, tiny size")
    args = parser.parse_args()
    if args.quick:
        args.frames = 2
    warnings.filterwarnings("ignore", message="Invalid 'BLANK' keyword")
    config = {} if args.overread is None else {"cloudlab.aia.overread": args.overread}
    if args.request_bytes is not None:
        config["cloudlab.aia.request-bytes"] = args.request_bytes
    half = args.crop / 2
    corners = ((-400 - half, 50 - half), (-400 + half, 50 + half))
    with tempfile.TemporaryDirectory() as tmp:
        if args.s3:
            scan, reads, seconds, shape = through_s3(Path(tmp), args.frames, corners, config)
        else:
            scan, reads, seconds, shape = through_counter(Path(tmp), args.frames, corners, config)
    n, ny, nx = shape
    crop_bytes = n * ny * nx * 2
    print(f"{n} frames of {SIDE}², crop {ny}x{nx} px ({args.crop:g}\"), int16"
          + (", s3 at 30 ms per request" if args.s3 else ""))  # fmt: skip
    print(f"header scan: {scan['get'] / n:.2f} GET + {scan['head'] / n:.2f} HEAD per file")
    print(f"crop after normalize_exposure: {reads['bytes']:,} B fetched for {crop_bytes:,} B "
          f"of crop (x{reads['bytes'] / crop_bytes:.2f}), {reads['get'] / n:.1f} GET per frame, "
          f"{reads['head'] / n:.2f} HEAD per frame, {seconds:.2f} s")  # fmt: skip


def crop_read(url: str, corners, config: dict, storage_options=None):
    """Open, count the scan; normalise, crop and compute; returns (cube, crop, seconds)."""
    cube = aia.open_stack(url, storage_options=storage_options)
    yield cube
    out = steps.crop(steps.normalize_exposure(cube), *corners)
    start = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=4, **config):
        out.data.compute()
    yield out, time.perf_counter() - start


def through_counter(tmp: Path, n: int, corners, config: dict):
    folder = sparse_series(tmp, n)
    CountingFileSystem.reset()
    steps = crop_read(f"countreads://{folder}/aia_*.fits", corners, config)
    next(steps)
    scan = CountingFileSystem.reset()
    out, seconds = next(steps)
    return scan, CountingFileSystem.reset(), seconds, out.shape


def through_s3(tmp: Path, n: int, corners, config: dict):
    from cloudlab.testing import ObjectStore, Shaper

    with ObjectStore(tmp / "s3", buckets=["data"]) as store:

        def place(name, seal=False):
            if seal:
                store.seal("data", f"aia/{name}")
                return None
            return store.object_path("data", f"aia/{name}")

        sparse_series(tmp, n, place)
        with Shaper(store.port, latency=0.030, bandwidth=80e6) as shaper:
            options = store.storage_options(shaper.endpoint_url)
            steps = crop_read("s3://data/aia/aia_*.fits", corners, config, options)
            shaper.reset()
            next(steps)
            scan = shaper.reset()
            out, seconds = next(steps)
            reads = shaper.reset()
    as_counts = [
        Counter(get=s.requests["GET"], head=s.requests["HEAD"], bytes=s.body_bytes)
        for s in (scan, reads)
    ]
    return as_counts[0], as_counts[1], seconds, out.shape


if __name__ == "__main__":
    main()
