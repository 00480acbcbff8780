"""Benchmark TCE cutouts: cloudlab's batched graph against astrocut, side by side in one run.

(a) Local disk, full-geometry cube (2078 × 2136 × FRAMES × 2 float32, a *sparse* file: headers and
    the HDU 2 table are written, the pixels are a hole of zeros): N targets × 10×10. cloudlab
    (``make_cutouts(...).compute()``, threads; then also ``write_tpfs``) against astrocut's
    ``TessCubeCutout`` called once per target (on a subset, as a rate), both with the page cache
    warm (an untimed pass reads every cutout first). Values are compared on the subset. Bytes
    fetched (merged ranges) against bytes needed (the cutouts' pixels).
(b) S3 (moto_server on 127.0.0.1, started and stopped here): a cube with a real frame count but a
    small image (104 × 107 × FRAMES × 2; moto keeps objects in memory and its cost per ranged GET
    grows with the object's size, ~0.1 s per request for a 100 MB object, served one at a time),
    so this part compares the number and size of requests: cloudlab against astrocut
    ``threads="auto"`` on the ``s3://`` URL, one target at a time (astrocut re-reads the HDU 2
    table, ~1.4 kB per frame, in 10 kB blocks on every call).
(c) ``locate``: 100,000 random sky positions with the vectorised pointing model against
    tess-point's own ``tess_stars2px_function_entry`` (on a subset, as a rate).

Usage::

    python benchmarks/cutouts.py                 # 1,000 targets, 1282 frames, 100 via astrocut
    python benchmarks/cutouts.py --quick         # a smoke run

Everything is written to a temporary directory that is always removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import dask
import numpy as np
import pandas as pd

from cloudlab import fits, storage
from cloudlab.cutouts import locate, make_cutouts, write_tpfs
from cloudlab.cutouts.cutout import cutout_boxes
from cloudlab.cutouts.pointing import radec_to_pixel
from cloudlab.fits import regions
from cloudlab.fits.regions import plan_reads
from cloudlab.io.tess import cube_meta
from cloudlab.simulate import tess_sector
from cloudlab.testing.objectstore import aws_environment, free_port


class ReadCounter:
    """Wraps ``fits.regions.fetch_ranges`` (the batched request of ``fits.read_regions``) to count
    calls and bytes."""

    def __init__(self):
        self.calls = 0
        self.bytes = 0
        self._real = regions.fetch_ranges

    def __call__(self, info, starts, ends):
        self.calls += 1
        self.bytes += int(np.sum(np.subtract(ends, starts)))
        return self._real(info, starts, ends)

    def __enter__(self):
        regions.fetch_ranges = self
        return self

    def __exit__(self, *exc):
        regions.fetch_ranges = self._real


def random_targets(cube_url: str, n: int, seed: int = 0) -> pd.DataFrame:
    meta = cube_meta(cube_url)
    sci = meta.science
    rng = np.random.default_rng(seed)
    col = rng.uniform(sci["col_start"] + 5, sci["col_stop"] - 5, n)
    row = rng.uniform(sci["row_start"] + 5, sci["row_stop"] - 5, n)
    ra, dec = meta.wcs.all_pix2world(col, row, 0)
    return pd.DataFrame({"ticid": np.arange(n) + 1_000_000, "ra": ra, "dec": dec})


def astrocut_rate(url: str, targets: pd.DataFrame, size: int, **kwargs) -> tuple[float, list]:
    from astrocut import TessCubeCutout
    from astropy.coordinates import SkyCoord

    cuts = []
    t0 = time.perf_counter()
    for t in targets.itertuples():
        coord = SkyCoord(t.ra, t.dec, unit="deg")
        cuts.append(TessCubeCutout(url, coordinates=coord, cutout_size=size, **kwargs).cutouts[0])
    return len(targets) / (time.perf_counter() - t0), cuts


def bench_local(tmp: str, n_targets: int, n_astrocut: int, frames: int, size: int) -> dict:
    t0 = time.perf_counter()
    sim = tess_sector(tmp, shape=(2078, 2136), n_frames=frames, n_stars=10, cadence_s=600,
                      ffis=False, sparse=True)  # fmt: skip
    print(f"sparse cube {os.path.getsize(sim.cube_url) / 1e9:.1f} GB made in "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    targets = random_targets(sim.cube_url, n_targets)
    cube_meta(sim.cube_url)  # read once, as any session would
    with dask.config.set(scheduler="threads", num_workers=2):
        # untimed pass: page cache warm for both tools (astrocut later reads the same rows)
        make_cutouts(targets, cube_url=sim.cube_url, size=size).compute()
    with dask.config.set(scheduler="threads", num_workers=2), ReadCounter() as counter:
        t0 = time.perf_counter()
        ds = make_cutouts(targets, cube_url=sim.cube_url, size=size).compute()
        t_cut = time.perf_counter() - t0
    meta = cube_meta(sim.cube_url)
    _, boxes = cutout_boxes(
        ds["corner_column"].values, ds["corner_row"].values, (size, size), n_rows=meta.n_rows,
        n_cols=meta.n_cols,
    )  # fmt: skip
    info = fits.hdu_info(sim.cube_url, 1)
    needed = plan_reads(boxes, info.shape, info.raw_dtype.itemsize, info.data_offset).needed
    out = os.path.join(tmp, "tpfs")
    with dask.config.set(scheduler="threads", num_workers=2):
        t0 = time.perf_counter()
        write_tpfs(make_cutouts(targets, cube_url=sim.cube_url, size=size), out)
        t_tpf = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    sub = targets.iloc[:n_astrocut]
    rate_ac, cuts = astrocut_rate(sim.cube_url, sub, size)
    same = all(
        np.array_equal(c.data, ds["flux"].values[i], equal_nan=True) for i, c in enumerate(cuts)
    )
    return {
        "frames": frames,
        "targets": n_targets,
        "cloudlab_cutouts_per_s": n_targets / t_cut,
        "cloudlab_tpfs_per_s": n_targets / t_tpf,
        "astrocut_per_s": rate_ac,
        "astrocut_targets": len(sub),
        "identical": same,
        "read_calls": counter.calls,
        "bytes_fetched": counter.bytes,
        "bytes_needed": needed,
    }


def bench_s3(tmp: str, n_targets: int, n_astrocut: int, frames: int, size: int) -> dict:
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        with aws_environment(f"http://127.0.0.1:{port}", "bench", "bench"):
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            local = os.path.join(tmp, "s3src")
            sim = tess_sector(local, shape=(104, 107), n_frames=frames, n_stars=10, cadence_s=600,
                              ffis=False, sparse=True)  # fmt: skip
            fs, _ = storage.resolve("s3://bench/x")
            fs.mkdir("bench")
            url = "s3://bench/tess-s0055-1-1-cube.fits"
            fs.put_file(sim.cube_url, "bench/tess-s0055-1-1-cube.fits")
            # astrocut reads s3:// anonymously: make the object public
            fs.chmod("bench/tess-s0055-1-1-cube.fits", acl="public-read")
            targets = random_targets(url, n_targets, seed=1)
            cube_meta(url)
            with dask.config.set(scheduler="threads", num_workers=2):
                t0 = time.perf_counter()
                ds = make_cutouts(targets, cube_url=url, size=size).compute()
                t_cut = time.perf_counter() - t0
            sub = targets.iloc[:n_astrocut]
            rate_ac, cuts = astrocut_rate(url, sub, size, threads="auto")
            flux = ds["flux"].values
            same = all(np.array_equal(c.data, flux[i], equal_nan=True) for i, c in enumerate(cuts))
            return {
                "cube": f"104x107x{frames}",
                "targets": n_targets,
                "cloudlab_cutouts_per_s": n_targets / t_cut,
                "astrocut_per_s": rate_ac,
                "astrocut_targets": len(sub),
                "identical": same,
            }
    finally:
        proc.terminate()
        proc.wait(10)


def bench_locate(n: int, n_tess_point: int) -> dict:
    import tess_stars2px

    rng = np.random.default_rng(3)
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    targets = pd.DataFrame({"ticid": np.arange(n), "ra": ra, "dec": dec})
    radec_to_pixel(ra[:10], dec[:10], 55)  # load the sector geometry once
    t0 = time.perf_counter()
    res = locate(targets, sector=55)
    t_ours = time.perf_counter() - t0
    scinfo = tess_stars2px.TESS_Spacecraft_Pointing_Data(trySector=55)
    t0 = time.perf_counter()
    tess_stars2px.tess_stars2px_function_entry(
        targets["ticid"][:n_tess_point], ra[:n_tess_point], dec[:n_tess_point], scInfo=scinfo
    )
    per_target = (time.perf_counter() - t0) / n_tess_point
    return {
        "targets": n,
        "on_silicon": len(res),
        "cloudlab_s": t_ours,
        "tess_point_s_per_target": per_target,
        "tess_point_s_extrapolated": per_target * n,
    }


def report_local(a: dict, args) -> None:
    print(f"\n(a) local, 2078x2136x{a['frames']} cube, {a['targets']} targets x "
          f"{args.size}x{args.size}")  # fmt: skip
    print(f"  cloudlab make_cutouts : {a['cloudlab_cutouts_per_s']:8.1f} cutouts/s")
    print(f"  cloudlab + write_tpfs : {a['cloudlab_tpfs_per_s']:8.1f} TPFs/s")
    print(f"  astrocut one by one   : {a['astrocut_per_s']:8.1f} cutouts/s "
          f"({a['astrocut_targets']} targets)")  # fmt: skip
    print(f"  ratio (cutouts)       : {a['cloudlab_cutouts_per_s'] / a['astrocut_per_s']:8.1f}x")
    print(f"  ratio (with TPFs)     : {a['cloudlab_tpfs_per_s'] / a['astrocut_per_s']:8.1f}x")
    print(f"  values identical      : {a['identical']}")
    print(f"  read calls            : {a['read_calls']}")
    print(f"  bytes fetched/needed  : {a['bytes_fetched'] / a['bytes_needed']:8.3f}")


def report_s3(b: dict) -> None:
    print(f"\n(b) S3 emulator, {b['cube']} cube, {b['targets']} targets")
    print(f"  cloudlab make_cutouts : {b['cloudlab_cutouts_per_s']:8.1f} cutouts/s")
    print(f"  astrocut threads=auto : {b['astrocut_per_s']:8.1f} cutouts/s "
          f"({b['astrocut_targets']} targets)")  # fmt: skip
    print(f"  ratio                 : {b['cloudlab_cutouts_per_s'] / b['astrocut_per_s']:8.1f}x")
    print(f"  values identical      : {b['identical']}")


def report_locate(c: dict) -> None:
    print(f"\n(c) locate {c['targets']} targets (sector 55)")
    print(f"  cloudlab locate       : {c['cloudlab_s']:8.3f} s ({c['on_silicon']} on silicon)")
    print(f"  tess-point            : {c['tess_point_s_per_target'] * 1e3:8.3f} ms/target "
          f"-> {c['tess_point_s_extrapolated']:.0f} s for all")  # fmt: skip
    print(f"  ratio                 : {c['tess_point_s_extrapolated'] / c['cloudlab_s']:8.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--astrocut", type=int, default=100, help="targets cut by astrocut")
    parser.add_argument("--frames", type=int, default=1282)
    parser.add_argument("--s3-frames", type=int, default=1282)
    parser.add_argument("--s3-targets", type=int, default=50)
    parser.add_argument("--s3-astrocut", type=int, default=3)
    parser.add_argument("--size", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--parts", default="abc", help="which parts to run (default abc)")
    args = parser.parse_args()
    if args.quick:
        args.targets, args.astrocut, args.frames = 50, 10, 100
        args.s3_frames, args.s3_targets, args.s3_astrocut = 100, 10, 2
    tmp = tempfile.mkdtemp(prefix="cloudlab-bench-cutouts-")
    try:
        if "a" in args.parts:
            report_local(
                bench_local(tmp, args.targets, args.astrocut, args.frames, args.size), args
            )
        if "b" in args.parts:
            report_s3(bench_s3(tmp, args.s3_targets, args.s3_astrocut, args.s3_frames, args.size))
        if "c" in args.parts:
            report_locate(bench_locate(100_000, 200 if not args.quick else 50))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
