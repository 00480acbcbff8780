"""Local reads against astropy, side by side in one run, reported as ratios.

(a) Full frames: one 2048x2048 float32 primary HDU and one FFI-like 2078x2136 float32 HDU 1
    (BSCALE/BZERO-free, as TESS calibrated FFIs) read whole with ``cloudlab.fits.read_region``
    and with ``open_hdu(path, hdu).values``, against ``astropy.io.fits.open(path,
    memmap=True)[hdu].data`` copied into a native numpy array.
(b) Small regions: 10x10 and 64x64 pixels x all frames of a page-cached cube (500 frames x
    200x200 float32) read with ``read_region``, with one ``read_regions`` call for many boxes
    (time per box) and with a lazy slice ``open_hdu(path)[region].values``, against astropy's
    ``hdul[0].section[region]`` on an already open file.

Every figure is CPU time per read (``time.process_time``, best of several repeats, the files
page-cached by a first read). Ratios above 1 mean cloudlab is faster.

Usage::

    python benchmarks/local_reads.py            # the sizes above
    python benchmarks/local_reads.py --quick    # 100 frames: a smoke run

The files live in a temporary directory that is always removed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.io import fits

from cloudlab import fits as cf


def best(fn: Callable[[], object], repeat: int) -> float:
    """Least CPU seconds of ``repeat`` calls of ``fn`` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def per_call(fn: Callable[[], object], calls: int, repeat: int) -> float:
    """Least CPU seconds per call over ``repeat`` loops of ``calls`` calls."""

    def loop() -> None:
        for _ in range(calls):
            fn()

    return best(loop, repeat) / calls


def write_files(tmp: Path, frames: int) -> dict[str, Path]:
    """The 2048x2048 frame, the FFI-like HDU 1 and the cube, written to ``tmp``."""
    rng = np.random.default_rng(0)
    paths = {"frame": tmp / "frame.fits", "ffi": tmp / "ffi.fits", "cube": tmp / "cube.fits"}
    fits.PrimaryHDU(rng.normal(size=(2048, 2048)).astype(np.float32)).writeto(paths["frame"])
    ffi = fits.ImageHDU(rng.normal(size=(2078, 2136)).astype(np.float32), name="CAMERA.CCD")
    fits.HDUList([fits.PrimaryHDU(), ffi]).writeto(paths["ffi"])
    cube = rng.normal(size=(frames, 200, 200)).astype(np.float32)
    fits.PrimaryHDU(cube).writeto(paths["cube"])
    return paths


def full_frames(paths: dict[str, Path], repeat: int) -> list[dict]:
    """Part (a): whole-frame reads, cloudlab against astropy's memory map."""
    rows = []
    for label, hdu in (("frame", 0), ("ffi", 1)):
        path = str(paths[label])
        info = cf.hdu_info(path, hdu)

        def astropy_memmap(path: str = path, hdu: int = hdu) -> np.ndarray:
            with fits.open(path, memmap=True) as hdul:
                data = hdul[hdu].data
                return np.array(data, dtype=data.dtype.newbyteorder("="))

        def region(info: cf.HDUInfo = info) -> np.ndarray:
            return cf.read_region(info, ())

        def values(path: str = path, hdu: int = hdu) -> np.ndarray:
            return cf.open_hdu(path, hdu).values

        ref = best(astropy_memmap, repeat)
        for how, fn in (("read_region", region), ("open_hdu(...).values", values)):
            assert np.array_equal(fn(), astropy_memmap())
            took = best(fn, repeat)
            rows.append({
                "part": "full frame",
                "file": f"{label} {'x'.join(map(str, info.shape))} HDU {hdu}",
                "cloudlab": how,
                "cloudlab_ms": round(took * 1e3, 3),
                "astropy_memmap_ms": round(ref * 1e3, 3),
                "memmap_over_cloudlab": round(ref / took, 2),
            })  # fmt: skip
    return rows


def regions(path: Path, repeat: int, calls: int) -> list[dict]:
    """Part (b): small regions of a page-cached cube, cloudlab against astropy's ``section``."""
    info = cf.hdu_info(str(path), 0)
    lazy = cf.open_hdu(str(path), 0)
    rng = np.random.default_rng(1)
    rows = []
    with fits.open(path, memmap=True) as hdul:
        section = hdul[0].section
        for size in (10, 64):
            y, x = (int(v) for v in rng.integers(0, 200 - size, 2))
            region = (slice(None), slice(y, y + size), slice(x, x + size))
            boxes = [
                (slice(None), slice(int(a), int(a) + size), slice(int(b), int(b) + size))
                for a, b in rng.integers(0, 200 - size, (100, 2))
            ]

            def astropy_section(region: tuple = region) -> np.ndarray:
                return section[region]

            def one(region: tuple = region) -> np.ndarray:
                return cf.read_region(info, region)

            def many(boxes: list = boxes) -> list[np.ndarray]:
                return cf.read_regions(info, boxes)

            def sliced(region: tuple = region) -> np.ndarray:
                return lazy[region].values

            assert np.array_equal(one(), astropy_section())
            assert np.array_equal(sliced(), astropy_section())
            ref = per_call(astropy_section, calls, repeat)
            for how, took in (
                ("read_region", per_call(one, calls, repeat)),
                ("read_regions (100 boxes, per box)", per_call(many, 1, repeat) / len(boxes)),
                ("open_hdu(...)[region].values", per_call(sliced, calls, repeat)),
            ):
                rows.append({
                    "part": "region",
                    "file": f"cube {'x'.join(map(str, info.shape))}, {size}x{size} x all frames",
                    "cloudlab": how,
                    "cloudlab_ms": round(took * 1e3, 4),
                    "astropy_section_ms": round(ref * 1e3, 4),
                    "section_over_cloudlab": round(ref / took, 2),
                })  # fmt: skip
    return rows


def main() -> None:
    """Run both parts and print one table (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 frames, fewer repeats")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args()
    frames, repeat, calls = (100, 3, 20) if args.quick else (500, 7, 100)
    tmp = Path(tempfile.mkdtemp(prefix="cloudlab-local-reads-"))
    try:
        paths = write_files(tmp, frames)
        rows = full_frames(paths, repeat) + regions(paths["cube"], repeat, calls)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"CPU ms per read, best of {repeat}; ratio = astropy / cloudlab (above 1: faster)")
    for row in rows:
        ref = row.get("astropy_memmap_ms", row.get("astropy_section_ms"))
        ratio = row.get("memmap_over_cloudlab", row.get("section_over_cloudlab"))
        print(f"{row['file']:<45} {row['cloudlab']:<36} {row['cloudlab_ms']:>9} ms "
              f"astropy {ref:>8} ms  ratio {ratio}")  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
