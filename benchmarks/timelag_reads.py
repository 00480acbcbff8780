"""Bytes and requests of a time-lag crop: what ``open_stack`` + ``normalize_exposure`` + ``crop``
fetch from full-size AIA files.

Writes sparse uncompressed 4096x4096 int16 AIA frames (real headers, pixels left as holes: no
disk used), names them against time order (so the ``T_OBS`` sort reorders them), opens them
through a counting filesystem (the local disk under ``countfile://``: every ranged read and its
bytes are counted, as an object store would bill them) and computes the crop after exposure
normalisation, the order ``prepare_channels`` uses. Reports bytes fetched / the crop's bytes,
GETs per frame, and the header scan's requests per file (HEADs counted apart).

Run: ``python benchmarks/timelag_reads.py [--frames 20] [--crop 400] [--overread 0.2]``
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import warnings
from collections import Counter
from pathlib import Path

import dask
import fsspec
import numpy as np
from astropy.io import fits
from fsspec.implementations.local import LocalFileSystem

from cloudlab.io import aia
from cloudlab.simulate import aia_series
from cloudlab.timelag import prepare

SIDE = 4096


class Counting(LocalFileSystem):
    """The local disk, counting ranged reads (GETs), their bytes and per-file HEADs."""

    protocol = "countfile"
    counts: Counter = Counter()
    lock = threading.Lock()
    listing = threading.local()

    def ls(self, path, detail=False, **kwargs):
        self.listing.on = True
        try:
            return super().ls(path, detail=detail, **kwargs)
        finally:
            self.listing.on = False

    def info(self, path, **kwargs):
        if not getattr(self.listing, "on", False) and str(path).endswith(".fits"):
            with self.lock:
                self.counts["head"] += 1
        return super().info(path, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        data = super().cat_file(path, start=start, end=end, **kwargs)
        with self.lock:
            self.counts["get"] += 1
            self.counts["bytes"] += len(data)
        return data

    @classmethod
    def take(cls) -> Counter:
        with cls.lock:
            out = Counter(cls.counts)
            cls.counts.clear()
        return out


def sparse_series(root: Path, n: int) -> Path:
    """``n`` sparse 4096² frames of channel 171, 12 s apart, named against time order."""
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
        with open(out / f"aia_{n - k:05d}.fits", "wb") as f:
            f.write(h.tostring().encode("ascii"))
            f.seek(-(-SIDE * SIDE * 2 // 2880) * 2880, 1)
            f.truncate()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--crop", type=float, default=400.0, help="crop side in arcsec")
    parser.add_argument("--overread", type=float, default=None,
                        help="dask config cloudlab.aia.overread")  # fmt: skip
    args = parser.parse_args()
    fsspec.register_implementation("countfile", Counting, clobber=True)
    warnings.filterwarnings("ignore", message="Invalid 'BLANK' keyword")
    with tempfile.TemporaryDirectory() as tmp:
        folder = sparse_series(Path(tmp), args.frames)
        Counting.take()
        cube = aia.open_stack(f"countfile://{folder}/aia_*.fits")
        scan = Counting.take()
        half = args.crop / 2
        out = prepare.crop(prepare.normalize_exposure(cube), (-400 - half, 50 - half),
                           (-400 + half, 50 + half))  # fmt: skip
        config = {} if args.overread is None else {"cloudlab.aia.overread": args.overread}
        with dask.config.set(scheduler="threads", num_workers=4, **config):
            out.data.compute()
        reads = Counting.take()
    n, ny, nx = out.shape
    crop_bytes = n * ny * nx * 2
    print(f'{n} frames of {SIDE}², crop {ny}x{nx} px ({args.crop:g}"), int16')
    print(f"header scan: {scan['get'] / n:.2f} GET + {scan['head'] / n:.2f} HEAD per file")
    print(f"crop after normalize_exposure: {reads['bytes']:,} B fetched for {crop_bytes:,} B "
          f"of crop (x{reads['bytes'] / crop_bytes:.2f}), {reads['get'] / n:.1f} GET per frame, "
          f"{reads['head'] / n:.2f} HEAD per frame")  # fmt: skip


if __name__ == "__main__":
    main()
