"""AIA level-1 registration: cloudlab.timelag.prepare vs aiapy register + sunpy derotation + submap.

Writes simulated full-size (4096x4096) level-1 frames, RICE-compressed in HDU 1 as JSOC serves
them (each with its own plate scale, roll angle and reference pixel), then, side by side in one
run and on one core (dask's synchronous scheduler):

- cloudlab: ``prepare`` of a 400"x400" region with derotation (one task per frame reading only
  the tile rows the region touches), and of the full disk without derotation;
- reference: per frame ``aiapy.calibrate.register``, then ``submap`` around the region and
  ``reproject_to`` the same grid under ``propagate_with_solar_surface`` (bicubic); for the full
  disk, ``register`` alone.

Reports frames/s and the speed-up (wall clock, and CPU time, which a loaded machine disturbs
less), the largest relative difference between the two in the region's interior, and bytes
read / file bytes for the region against those needed.

Run: ``python benchmarks/aia_prep.py [--frames 3] [--size 4096] [--s3] [--no-full-disk]``
(``--s3`` needs s3rver: ``make tools``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import dask
import numpy as np
from astropy.io import fits
from scipy import ndimage

from cloudlab.io import aia
from cloudlab.testing.counting import CountingFileSystem
from cloudlab.timelag import prepare

REGION = ((-450.0, -50.0), (-50.0, 350.0))  # 400" x 400"


def _sun(size: int, seed: int) -> np.ndarray:
    """A limb-darkened disk with smooth structure, DN (int16) at 0.6"/px."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size), dtype=np.float32)
    r = np.hypot(xx - size / 2, yy - size / 2) / (960 / 0.6 * size / 4096)
    disk = np.where(r < 1, 0.4 + 0.6 * np.sqrt(np.clip(1 - r * r, 0, 1)), 0.02)
    texture = ndimage.zoom(rng.uniform(0.5, 1.5, (size // 64, size // 64)), 64, order=3)
    return np.clip(3000 * disk * texture[:size, :size], 0, 32000).astype(np.int16)


def write_frames(dest: Path, n: int, size: int) -> list[str]:
    """``n`` level-1 frames, 12 s apart, each with its own scale, roll and reference pixel."""
    urls = []
    for k in range(n):
        header = fits.Header()
        t_obs = np.datetime64("2011-02-15T00:00:01.340") + np.timedelta64(12 * k, "s")
        cards = {
            "TELESCOP": "SDO/AIA", "INSTRUME": "AIA_3", "WAVELNTH": 171, "WAVEUNIT": "angstrom",
            "LVL_NUM": 1.0, "QUALITY": 0, "EXPTIME": 2.0, "T_OBS": f"{t_obs}Z",
            "DATE-OBS": str(t_obs - np.timedelta64(1, "s")), "CTYPE1": "HPLN-TAN",
            "CTYPE2": "HPLT-TAN", "CUNIT1": "arcsec", "CUNIT2": "arcsec",
            "CDELT1": 0.6 * (1 + 0.003 * (k - 1)), "CDELT2": 0.6 * (1 + 0.003 * (k - 1)),
            "CRPIX1": size / 2 + 0.5 + 1.7 * k, "CRPIX2": size / 2 + 0.5 - 1.3 * k,
            "CRVAL1": 0.0, "CRVAL2": 0.0, "CROTA2": 0.1 + 0.05 * k, "HGLN_OBS": 0.0,
            "HGLT_OBS": -6.82, "DSUN_OBS": 1.47724815e11, "RSUN_REF": 696000000.0,
            "RSUN_OBS": 971.8,
        }  # fmt: skip
        for key, value in cards.items():
            header[key] = value
        hdu = fits.CompImageHDU(_sun(size, k), header, compression_type="RICE_1",
                                tile_shape=(1, size))  # fmt: skip
        path = dest / f"aia_lev1_171a_{k:03d}.fits"
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
        urls.append(str(path))
    return urls


def run_cloudlab(urls: list[str], region, derotate: bool) -> tuple[float, float, np.ndarray]:
    """Wall and CPU seconds per frame and the result, in DN (headers read first, outside the
    timing, and sunpy's coordinates imported first, as the reference's imports are)."""
    import sunpy.coordinates  # noqa: F401

    cube = aia.open_stack(urls)
    t0, c0 = time.perf_counter(), time.process_time()
    with dask.config.set(scheduler="synchronous"):
        values = prepare({171: cube}, region=region, derotate=derotate, align=False)[171].values
    n = len(urls)
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n, values * 2.0


def bytes_read(urls: list[str], region) -> tuple[int, int]:
    """Bytes read to prepare ``region`` through a file object without ``fileno``, as for
    remote files (fsspec), headers included; and the bytes needed: the headers, the tile table
    and the compressed rows of the window each frame reads (recorded as it is read)."""
    from cloudlab import fits as cf

    windows = []
    read_region = cf.read_region

    def recording(info, index):
        windows.append((info.url.removeprefix("countreads://"), index[0]))
        return read_region(info, index)

    CountingFileSystem.reset()
    cube = aia.open_stack([f"countreads://{u}" for u in urls])
    cf.read_region = recording
    try:
        with dask.config.set(scheduler="synchronous"):
            prepare({171: cube}, region=region, derotate=False, align=False)[171].compute()
    finally:
        cf.read_region = read_region
    counted = CountingFileSystem.reset()["bytes"]
    needed = 0
    for path, rows in windows:
        with fits.open(path, disable_image_compression=True) as hdul:
            table = hdul[1]
            descriptors = table.data["COMPRESSED_DATA"]
            needed += hdul.fileinfo(1)["datLoc"] + table.header["NAXIS1"] * table.header["NAXIS2"]
            needed += sum(len(descriptors[r]) for r in range(rows.start, rows.stop))
    return counted, needed


def s3_read(urls: list[str], region, root: Path) -> tuple[float, int, int]:
    """Frames/s, response body bytes and requests to prepare ``region`` from a loopback S3
    store (s3rver) behind a proxy adding 30 ms per request (``cloudlab.testing.objectstore``);
    headers are read first, outside the counts."""
    import shutil

    from cloudlab.testing.objectstore import ObjectStore, Shaper

    with ObjectStore(root, buckets=["aia"]) as store, Shaper(store.port) as shaper:
        keys = [Path(u).name for u in urls]
        for url, key in zip(urls, keys, strict=True):
            shutil.copyfile(url, store.object_path("aia", key))
            store.seal("aia", key)
        options = store.storage_options(shaper.endpoint_url)
        cube = aia.open_stack([f"s3://aia/{k}" for k in keys], storage_options=options)
        shaper.reset()
        t0 = time.perf_counter()
        with dask.config.set(scheduler="synchronous"):
            prepare({171: cube}, region=region, align=False, storage_options=options)[171].compute()
        seconds = time.perf_counter() - t0
        stats = shaper.reset()
    return len(urls) / seconds, stats.body_bytes, stats.total_requests


def run_reference(urls: list[str], target_header, region, derotate: bool):
    """aiapy register (+ submap + derotating reproject) per frame: wall and CPU seconds per
    frame, result."""
    import astropy.units as u
    import sunpy.map
    from aiapy.calibrate import register
    from astropy.coordinates import SkyCoord
    from sunpy.coordinates import propagate_with_solar_surface

    results = []
    t0, c0 = time.perf_counter(), time.process_time()
    for url in urls:
        level1 = sunpy.map.Map(url)
        registered = register(sunpy.map.Map(level1.data.astype(np.float64), level1.meta))
        if region is None:
            results.append(registered.data)
            continue
        (x0, y0), (x1, y1) = region
        frame = registered.coordinate_frame
        sub = registered.submap(SkyCoord((x0 - 30) * u.arcsec, (y0 - 30) * u.arcsec, frame=frame),
                                top_right=SkyCoord((x1 + 30) * u.arcsec, (y1 + 30) * u.arcsec,
                                                   frame=frame))  # fmt: skip
        target = sunpy.map.Map(np.zeros((target_header["NAXIS2"], target_header["NAXIS1"])),
                               target_header)  # fmt: skip
        if derotate:
            with propagate_with_solar_surface():
                out = sub.reproject_to(target.wcs, algorithm="interpolation", order="bicubic")
        else:
            out = sub.reproject_to(target.wcs, algorithm="interpolation", order="bicubic")
        results.append(out.data)
    n = len(urls)
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n, results


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    inner = (slice(None), slice(2, -2), slice(2, -2))
    a, b = a[inner], b[inner]
    ok = np.isfinite(a) & np.isfinite(b) & (np.abs(b) > 0)
    return float(np.max(np.abs(a[ok] - b[ok]) / np.abs(b[ok])))


def main() -> None:
    """Run both cases and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--no-full-disk", action="store_true")
    parser.add_argument("--s3", action="store_true", help="also read the region from loopback S3")
    parser.add_argument("--quick", action="store_true", help="smoke run, tiny size")
    args = parser.parse_args()
    if args.quick:
        args.frames, args.no_full_disk = 1, True
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        urls = write_frames(Path(tmp), args.frames, args.size)
        file_bytes = sum(Path(u).stat().st_size for u in urls)
        sec, cpu, ours = run_cloudlab(urls, REGION, derotate=True)
        nbytes, needed = bytes_read(urls, REGION)
        header = fits.Header.fromstring(
            prepare({171: aia.open_stack(urls)}, region=REGION, align=False)[171].attrs[
                "fits_header"
            ]
        )
        ref_sec, ref_cpu, ref = run_reference(urls, header, REGION, derotate=True)
        ref = np.array(ref)
        print(f"{args.frames} frames {args.size}x{args.size} RICE, one core")
        print(f"region 400x400 arcsec ({ours.shape[2]}x{ours.shape[1]} px), derotated:")
        print(f"  cloudlab prepare        : {1 / sec:8.2f} frames/s")
        print(f"  register+derotate+submap: {1 / ref_sec:8.2f} frames/s")
        print(f"  speed-up                : {ref_sec / sec:8.1f}x")
        print(f"  CPU s/frame, speed-up   : {cpu:.3f} vs {ref_cpu:.3f}, {ref_cpu / cpu:.1f}x")
        print(f"  max relative difference : {_max_rel(ours, ref):.2e}")
        print(f"  bytes read / file bytes : {nbytes / file_bytes:8.3f} (file object, no fileno)")
        print(f"  needed / file bytes     : {needed / file_bytes:8.3f} (headers, tile tables and "
              "the compressed rows read)")  # fmt: skip
        if args.s3:
            rate, body, requests = s3_read(urls, REGION, Path(tmp) / "store")
            print(f"region from loopback S3 (30 ms a request), derotated: {rate:.2f} frames/s, "
                  f"bytes / file bytes {body / file_bytes:.3f}, {requests / len(urls):.1f} "
                  "requests per frame")  # fmt: skip
        if not args.no_full_disk:
            sec, cpu, ours = run_cloudlab(urls, None, derotate=False)
            ref_sec, ref_cpu, ref = run_reference(urls, None, None, derotate=False)
            print("full disk, no derotation:")
            print(f"  cloudlab prepare        : {1 / sec:8.2f} frames/s")
            print(f"  aiapy register          : {1 / ref_sec:8.2f} frames/s")
            print(f"  speed-up                : {ref_sec / sec:8.1f}x")
            print(f"  CPU s/frame, speed-up   : {cpu:.3f} vs {ref_cpu:.3f}, {ref_cpu / cpu:.1f}x")
            print(f"  shapes                  : {ours.shape[1:]} vs {[r.shape for r in ref]}")


if __name__ == "__main__":
    main()
