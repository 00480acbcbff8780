"""Local, page-cached FITS reads: cloudlab against astropy, side by side in one run.

(a) Full frames: a 2048x2048 float32 image and a 2078x2136 TESS-FFI-like image (HDU 1, float32),
    read whole with ``cloudlab.fits.read_region`` (eager) and ``open_hdu(...).values`` (lazy,
    dask), against astropy's memory map converted to native byte order (what a computation
    needs: ``hdul[k].data.astype(native)``). Ratio cloudlab / astropy (goal: <= 1.5).
(b) Small regions (10x10 and 64x64 pixels, all frames) of page-cached cubes: a dense
    2000 x 100 x 100 float32 cube (frames first) and a sparse full-size astrocut-layout cube
    (2078 x 2136 x frames x 2, float32), read with ``read_region`` (eager) and a lazy xarray
    slice of ``open_hdu``, against astropy's ``section`` on an open file (goal: >= 5x faster)
    and, for reference, slicing astropy's memory map.

Every file is read once before timing (page cache warm). Times are the median wall time per read
over ``--repeat`` reads at random positions (astropy ``section``: the first 5 of them, since it
takes seconds per region of a frames-first cube); the machine may be shared, so compare ratios.

Usage::

    python benchmarks/local_reads.py              # 2000-frame sparse cube
    python benchmarks/local_reads.py --quick      # fewer repeats, 200-frame sparse cube

The files live in a temporary directory that is always removed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.io import fits

from cloudlab import fits as cf
from cloudlab.testing import sparse_fits

ROWS, COLS = 2078, 2136


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def _native(data: np.ndarray) -> np.ndarray:
    return data.astype(data.dtype.newbyteorder("="))


def full_frames(workdir: Path, repeat: int) -> list[dict]:
    """Whole-image reads of a 2048² and an FFI-like 2078×2136 frame."""
    rng = np.random.default_rng(1)
    cases = []
    for name, shape, ext in (("2048x2048", (2048, 2048), 0), ("2078x2136 FFI", (ROWS, COLS), 1)):
        path = workdir / f"frame_{ext}.fits"
        data = rng.normal(100, 10, shape).astype(np.float32)
        hdus = [fits.PrimaryHDU(data)] if ext == 0 else [fits.PrimaryHDU(), fits.ImageHDU(data)]
        fits.HDUList(hdus).writeto(path)
        info = cf.hdu_info(str(path), ext)
        lazy = cf.open_hdu(str(path), ext)
        hdul = fits.open(path, memmap=True)
        assert np.array_equal(cf.read_region(info, ()), hdul[ext].data)
        ref = _median_ms(lambda h=hdul, e=ext: _native(h[e].data), repeat)
        eager = _median_ms(lambda i=info: cf.read_region(i, ()), repeat)
        graph = _median_ms(lambda a=lazy: a.values, repeat)
        hdul.close()
        cases.append({"case": name, "astropy": ref, "eager": eager, "lazy": graph})
    return cases


def dense_cube(path: Path) -> None:
    """A 2000×100×100 float32 cube (frames first), fully written."""
    rng = np.random.default_rng(2)
    fits.PrimaryHDU(rng.normal(100, 10, (2000, 100, 100)).astype(np.float32)).writeto(path)


def sparse_cube(path: Path, frames: int) -> None:
    """An astrocut-layout cube (HDU 1: rows, columns, frames, 2) of full size, written sparse."""
    image = fits.ImageHDU()
    header = image.header
    header["BITPIX"] = -32
    header["NAXIS"] = 4
    for key, value in (("NAXIS1", 2), ("NAXIS2", frames), ("NAXIS3", COLS), ("NAXIS4", ROWS)):
        header[key] = value
    sparse_fits(path, [fits.PrimaryHDU().header, header])


def regions(path: Path, ext: int, size: int, repeat: int, frames_first: bool) -> dict:
    """Median time per ``size``×``size``×all-frames region; every reader reads the same
    ``repeat`` random positions (so the same pages), after one warm-up pass over them."""
    info = cf.hdu_info(str(path), ext)
    ny, nx = info.shape[1:3] if frames_first else info.shape[:2]
    rng = np.random.default_rng(size)
    corners = [(int(rng.integers(0, ny - size)), int(rng.integers(0, nx - size)))
               for _ in range(repeat)]  # fmt: skip

    def region(y: int, x: int) -> tuple:
        sy, sx = slice(y, y + size), slice(x, x + size)
        return (slice(None), sy, sx) if frames_first else (sy, sx)

    boxes = [region(y, x) for y, x in corners]
    lazy = cf.open_hdu(str(path), ext)
    hdul = fits.open(path, memmap=True)
    for box in boxes:  # warm the page cache and check the values
        assert np.array_equal(cf.read_region(info, box), hdul[ext].section[box])

    def each(read: Callable[[tuple], object], most: int = repeat) -> float:
        times = []
        for box in boxes[:most]:
            t0 = time.perf_counter()
            read(box)
            times.append(time.perf_counter() - t0)
        return float(np.median(times)) * 1e3

    out = {
        "eager": each(lambda b: cf.read_region(info, b)),
        "lazy": each(lambda b: lazy[b].values),
        "section": each(lambda b: hdul[ext].section[b], 5),  # seconds per read on some cubes
        "memmap": each(lambda b: _native(hdul[ext].data[b])),
    }
    hdul.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 200-frame cube")
    parser.add_argument("--frames", type=int, default=2000, help="frames of the sparse cube")
    parser.add_argument("--repeat", type=int, default=30, help="reads per measurement")
    args = parser.parse_args()
    frames = 200 if args.quick else args.frames
    repeat = 10 if args.quick else args.repeat
    workdir = Path(tempfile.mkdtemp(prefix="cloudlab-local-"))
    try:
        print(f"(a) full frames, median of {repeat} reads (ms); ratio = cloudlab / astropy")
        print(f"{'frame':16} {'astropy memmap':>15} {'read_region':>12} {'ratio':>6} "
              f"{'lazy .values':>13} {'ratio':>6}")  # fmt: skip
        for c in full_frames(workdir, repeat):
            print(f"{c['case']:16} {c['astropy']:15.2f} {c['eager']:12.2f} "
                  f"{c['eager'] / c['astropy']:6.2f} {c['lazy']:13.2f} "
                  f"{c['lazy'] / c['astropy']:6.2f}")  # fmt: skip
        dense, sparse = workdir / "dense.fits", workdir / "sparse.fits"
        dense_cube(dense)
        sparse_cube(sparse, frames)
        cubes = [
            ("2000x100x100 (frames first)", dense, 0, True),
            (f"{ROWS}x{COLS}x{frames}x2 sparse", sparse, 1, False),
        ]
        print(f"\n(b) regions x all frames, median of {repeat} reads (ms); "
              "speed-up = astropy section / cloudlab")  # fmt: skip
        print(f"{'cube':30} {'box':>6} {'section':>9} {'memmap':>8} {'read_region':>12} "
              f"{'x':>6} {'lazy slice':>11} {'x':>6}")  # fmt: skip
        for name, path, ext, first in cubes:
            for size in (10, 64):
                r = regions(path, ext, size, repeat, first)
                print(f"{name:30} {f'{size}x{size}':>6} {r['section']:9.2f} {r['memmap']:8.2f} "
                      f"{r['eager']:12.3f} {r['section'] / r['eager']:6.1f} {r['lazy']:11.2f} "
                      f"{r['section'] / r['lazy']:6.1f}")  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
