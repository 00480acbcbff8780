"""Benchmark the lazy FITS core against astropy, side by side in one run.

(a) Cutouts from a full-size TESS cube (astrocut layout: HDU 1 with numpy shape
    (2078, 2136, frames, 2), float32; 3000 frames = 106 GB) stored as a *sparse* file: only the
    headers and the regions read are written. 100 random 10x10xall-frames regions are read with
    cloudlab (lazy xarray slice, ``read_region`` directly, all of them in one ``read_regions``
    call over HTTP) and with astropy's ``section``
    (memory-mapped file, and a plain file object as astropy gets over fsspec). Reports bytes
    fetched / bytes needed and time per region.
(b) Header scan of 2,000 small FITS files: ``open_stack`` on a local cluster (and without one,
    in this process) against ``astropy.io.fits.getheader`` one file after the other.

Usage::

    python benchmarks/fits_io.py            # full size (needs ~0.3 GB of real disk)
    python benchmarks/fits_io.py --quick    # 100 frames, 300 files: a smoke run
    python benchmarks/fits_io.py --only b   # the header scan alone

The sparse file and the small files live in a temporary directory that is always removed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dask
import fsspec
import numpy as np
from astropy.io import fits
from fsspec.implementations.local import LocalFileSystem

from cloudlab import fits as cf
from cloudlab.fits.header import padded

ROWS, COLS = 2078, 2136


class CountingFileSystem(LocalFileSystem):
    """Local files under ``benchcount://`` counting the bytes of every ranged read."""

    protocol = "benchcount"
    lock = threading.Lock()
    bytes_read = 0

    def cat_file(self, path, start=None, end=None, **kwargs):
        data = super().cat_file(path, start=start, end=end, **kwargs)
        with self.lock:
            type(self).bytes_read += len(data)
        return data


class CountingReader(io.RawIOBase):
    """A read-only file object counting the bytes read through it (no fileno: no memmap)."""

    def __init__(self, path: str):
        self._f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, buffer) -> int:
        n = self._f.readinto(buffer)
        self.bytes_read += n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


fsspec.register_implementation("benchcount", CountingFileSystem, clobber=True)


# ----------------------------------------------------------------------------- HTTP server
class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with HTTP range requests, counting requests and bytes sent (``/__stats``,
    ``/__reset``): a stand-in for an object store that both readers reach the same way."""

    protocol_version = "HTTP/1.1"
    stats = {"requests": 0, "bytes": 0}
    lock = threading.Lock()

    def setup(self) -> None:
        super().setup()
        # no Nagle delay between headers and body (keep-alive + delayed ACK = 40 ms stalls)
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        if self.path in ("/__stats", "/__reset"):
            with self.lock:
                body = json.dumps(self.stats).encode()
                if self.path == "/__reset":
                    self.stats.update(requests=0, bytes=0)
            self._reply(200, body, "application/json")
            return
        self._serve(head=False)

    def _reply(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self._reply(404, b"not found")
            return
        size = os.path.getsize(path)
        match = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        if match:
            start = int(match[1])
            end = min(int(match[2]) if match[2] else size - 1, size - 1)
            if start >= size:
                self._reply(416, b"range not satisfiable")
                return
        elif head or size < 2**30:
            start, end = 0, size - 1
        else:
            self._reply(416, b"ranged reads only for large files")
            return
        self.send_response(206 if match else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                piece = f.read(min(left, 2**20))
                self.wfile.write(piece)
                left -= len(piece)
        with self.lock:
            self.stats["requests"] += 1
            self.stats["bytes"] += end - start + 1


def serve(directory: str, port: int) -> None:
    """Run the range-capable HTTP server on 127.0.0.1:``port`` (until terminated)."""
    handler = lambda *a, **k: RangeHandler(*a, directory=directory, **k)  # noqa: E731
    ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()


class HTTPServer:
    """The range server in a subprocess; stopped by PID."""

    def __init__(self, directory: Path):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(directory), "--port", str(self.port)]
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.stats()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.1)

    def stats(self, reset: bool = False) -> dict:
        with urllib.request.urlopen(self.url + ("/__reset" if reset else "/__stats")) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


# ------------------------------------------------------------------------------------ (a)
def cube_headers(frames: int) -> tuple[bytes, int]:
    """Primary and HDU-1 headers of an astrocut-layout cube; returns (bytes, data offset)."""
    primary = fits.PrimaryHDU()
    primary.header["ORIGIN"] = "cloudlab benchmark"
    primary.header["SECTOR"] = 55
    image = fits.ImageHDU()
    header = image.header
    header["BITPIX"] = -32
    header["NAXIS"] = 4
    for key, value in (("NAXIS1", 2), ("NAXIS2", frames), ("NAXIS3", COLS), ("NAXIS4", ROWS)):
        header[key] = value
    blob = primary.header.tostring().encode() + header.tostring().encode()
    return blob, len(blob)


def make_sparse_cube(path: Path, frames: int, regions: list[tuple[int, int]], rng) -> int:
    """Write headers, extend the file to full size without writing, fill the regions."""
    blob, data_offset = cube_headers(frames)
    size = data_offset + padded(ROWS * COLS * frames * 2 * 4)
    pixel = frames * 2 * 4  # bytes of one (row, col) spectrum of frames
    with open(path, "wb") as f:
        f.write(blob)
        f.truncate(size)
        for r, c in regions:
            for row in range(r, r + 10):
                values = rng.normal(100, 10, (10, frames, 2)).astype(">f4")
                f.seek(data_offset + (row * COLS + c) * pixel)
                f.write(values.tobytes())
    return size


def _median_ms(times: list[float]) -> float:
    return float(np.median(times)) * 1e3


def bench_cube(workdir: Path, frames: int, n_regions: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    regions = [
        (int(rng.integers(0, ROWS - 10)), int(rng.integers(0, COLS - 10))) for _ in range(n_regions)
    ]
    path = workdir / "sparse_cube.fits"
    size = make_sparse_cube(path, frames, regions, rng)
    used = os.stat(path).st_blocks * 512
    print(f"(a) sparse cube: {size / 1e9:.1f} GB apparent, {used / 1e6:.0f} MB on disk")
    needed = 10 * 10 * frames * 2 * 4
    out: dict = {"apparent_gb": size / 1e9, "on_disk_mb": used / 1e6, "needed": needed}
    cuts = [(slice(r, r + 10), slice(c, c + 10)) for r, c in regions]

    # ---- local file: bytes through a counting filesystem, then timings
    cf.clear_cache()
    CountingFileSystem.bytes_read = 0
    counted = cf.open_hdu(f"benchcount://{path}", 1)
    out["local_header_bytes"] = CountingFileSystem.bytes_read
    CountingFileSystem.bytes_read = 0
    for cut in cuts:
        counted[cut].compute()
    out["local_ratio"] = CountingFileSystem.bytes_read / (needed * n_regions)

    cube = cf.open_hdu(str(path), 1)
    info = cf.hdu_info(str(path), 1)
    lazy, direct, mapped, plain, results = [], [], [], [], []
    for cut in cuts:
        t0 = time.perf_counter()
        results.append(cube[cut].values)
        lazy.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cf.read_region(info, cut)
        direct.append(time.perf_counter() - t0)
    with fits.open(path) as hdul:
        section = hdul[1].section
        for cut, ours in zip(cuts, results, strict=True):
            t0 = time.perf_counter()
            ref = np.array(section[cut])
            mapped.append(time.perf_counter() - t0)
            np.testing.assert_array_equal(ours, ref)
    reader = CountingReader(str(path))
    with fits.open(reader, memmap=False, lazy_load_hdus=True) as hdul:
        section = hdul[1].section
        before = reader.bytes_read
        for cut in cuts:
            t0 = time.perf_counter()
            np.array(section[cut])
            plain.append(time.perf_counter() - t0)
        out["local_astropy_ratio"] = (reader.bytes_read - before) / (needed * n_regions)
    reader.close()
    out.update(
        local_lazy_ms=_median_ms(lazy),
        local_direct_ms=_median_ms(direct),
        local_astropy_memmap_ms=_median_ms(mapped),
        local_astropy_file_ms=_median_ms(plain),
    )

    # ---- the same file over HTTP range requests (object-store access pattern)
    server = HTTPServer(workdir)
    try:
        url = f"{server.url}/{path.name}"
        server.stats(reset=True)
        cube = cf.open_hdu(url, 1)
        info = cf.hdu_info(url, 1)
        out["http_header_bytes"] = server.stats(reset=True)["bytes"]
        lazy, direct, astro = [], [], []
        for cut, ours in zip(cuts, results, strict=True):
            t0 = time.perf_counter()
            got = cube[cut].values
            lazy.append(time.perf_counter() - t0)
            np.testing.assert_array_equal(got, ours)
        stats = server.stats(reset=True)
        out["http_ratio"] = stats["bytes"] / (needed * n_regions)
        out["http_requests_per_region"] = stats["requests"] / n_regions
        for cut in cuts:
            t0 = time.perf_counter()
            cf.read_region(info, cut)
            direct.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        batch = [dask.delayed(cf.read_region)(info.light(), cut) for cut in cuts]
        dask.compute(*batch, scheduler="threads", num_workers=4)
        out["http_batched_ms"] = (time.perf_counter() - t0) / n_regions * 1e3
        server.stats(reset=True)
        t0 = time.perf_counter()
        many = cf.read_regions(info, cuts)
        out["http_regions_ms"] = (time.perf_counter() - t0) / n_regions * 1e3
        out["http_regions_requests"] = server.stats(reset=True)["requests"]
        for got, ours in zip(many, results, strict=True):
            np.testing.assert_array_equal(got, ours)
        with fits.open(url, use_fsspec=True, lazy_load_hdus=True) as hdul:
            section = hdul[1].section
            opened = server.stats(reset=True)
            for cut, ours in zip(cuts, results, strict=True):
                t0 = time.perf_counter()
                ref = np.array(section[cut])
                astro.append(time.perf_counter() - t0)
                np.testing.assert_array_equal(ref, ours)
        stats = server.stats(reset=True)
        out["http_astropy_header_bytes"] = opened["bytes"]
        out["http_astropy_ratio"] = stats["bytes"] / (needed * n_regions)
        out["http_astropy_requests_per_region"] = stats["requests"] / n_regions
        out.update(
            http_lazy_ms=_median_ms(lazy),
            http_direct_ms=_median_ms(direct),
            http_astropy_ms=_median_ms(astro),
        )
    finally:
        server.stop()
        path.unlink()
    return out


# ------------------------------------------------------------------------------------ (b)
def make_small_files(directory: Path, n: int, rng) -> list[str]:
    """``n`` small two-HDU files with FFI-like headers (~100 cards)."""
    directory.mkdir()
    template = fits.ImageHDU(np.zeros((64, 64), "f4"), name="CAMERA.CCD 1.1 cal")
    for i in range(40):
        template.header[f"WCSKEY{i:02d}"] = (float(i), "a WCS-like card")
    primary = fits.PrimaryHDU()
    for i in range(30):
        primary.header[f"PRIMK{i:02d}"] = i
    paths = []
    for i in range(n):
        template.header["TSTART"] = 3000.0 + i * 200 / 86400
        template.data = rng.normal(size=(64, 64)).astype("f4")
        path = directory / f"ffi_{i:05d}.fits"
        fits.HDUList([primary, template]).writeto(path)
        paths.append(str(path))
    return paths


def bench_headers(workdir: Path, n: int, seed: int, repeats: int = 3) -> dict:
    """Files per second, median of ``repeats`` cold-cache scans (header caches cleared)."""
    from cloudlab.cluster import connect

    paths = make_small_files(workdir / "small", n, np.random.default_rng(seed))
    pattern = str(workdir / "small" / "ffi_*.fits")
    out: dict = {"files": n}

    def rate(scan, cpu_key: str | None = None) -> float:
        """Files per second; the CPU time of this process per file goes to ``out[cpu_key]``."""
        times, cpus = [], []
        for _ in range(repeats):
            cf.clear_cache()
            t0, c0 = time.perf_counter(), time.process_time()
            scan()
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        if cpu_key:
            out[cpu_key] = 1e3 * float(np.median(cpus)) / n
        return n / float(np.median(times))

    ref = [fits.getheader(p, 1)["TSTART"] for p in paths]
    out["astropy_files_per_s"] = rate(lambda: [fits.getheader(p, 1)["TSTART"] for p in paths])

    def scan() -> None:
        stack = cf.open_stack(pattern, 1, dim="time", keys=["TSTART"])
        np.testing.assert_array_equal(stack["TSTART"].values, ref)

    with dask.config.set(scheduler="threads"):
        out["local_files_per_s"] = rate(scan, "local_cpu_ms")

    t0 = time.perf_counter()
    client = connect("local", n_workers=2)
    try:
        client.run(lambda: __import__("cloudlab.fits"))  # workers ready, as in a live session
        out["cluster_start_s"] = time.perf_counter() - t0

        def cluster_scan() -> None:
            client.run(cf.clear_cache)  # the workers' header caches too
            scan()

        out["cluster_files_per_s"] = rate(cluster_scan)
    finally:
        client.close()
    out["load"] = os.getloadavg()[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 frames, 300 files")
    parser.add_argument("--frames", type=int, help="frames of the cube (default 3000)")
    parser.add_argument("--regions", type=int, default=100)
    parser.add_argument("--files", type=int, help="small files for (b) (default 2000)")
    parser.add_argument("--workdir", default=tempfile.gettempdir(), help="where temp files go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["a", "b"], help="run only part (a) or (b)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    frames = args.frames or (100 if args.quick else 3000)
    n_files = args.files or (300 if args.quick else 2000)

    free = shutil.disk_usage(args.workdir).free
    written = (args.only != "b") * args.regions * 10 * 10 * frames * 2 * 4
    written += (args.only != "a") * n_files * 30_000
    print(
        f"free disk in {args.workdir}: {free / 1e9:.1f} GB; this run writes ~{written / 1e6:.0f} MB"
    )
    if free < 2 * written + 1e9:
        raise SystemExit(f"not enough free disk space in {args.workdir}")

    workdir = Path(tempfile.mkdtemp(prefix="cloudlab-bench-", dir=args.workdir))
    try:
        a = None if args.only == "b" else bench_cube(workdir, frames, args.regions, args.seed)
        b = None if args.only == "a" else bench_headers(workdir, n_files, args.seed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert not workdir.exists()

    report(a, b, args.regions, frames)


def _row(label: str, ratio: float | None, ms: float, extra: str = "") -> str:
    ratio_text = "       -" if ratio is None else f"{ratio:8.4f}"
    return f"      {label:34s}{ratio_text}  {ms:9.2f} ms  {extra}"


def report(a: dict | None, b: dict | None, regions: int, frames: int) -> None:
    """Print the figures side by side (of the parts that ran)."""
    if a is not None:
        report_cube(a, regions, frames)
    if b is not None:
        report_headers(b)


def report_cube(a: dict, regions: int, frames: int) -> None:
    """Print the figures of (a)."""
    mb = a["needed"] / 1e6
    print(f"\n(a) {regions} random regions of 10x10x{frames}x2 float32 ({mb:.2f} MB each)")
    print("    local file (page cache)             bytes/needed  median time/region")
    print(_row("cloudlab lazy slice .values", a["local_ratio"], a["local_lazy_ms"]))
    print(_row("cloudlab read_region", a["local_ratio"], a["local_direct_ms"]))
    print(_row("astropy section (memmap)", None, a["local_astropy_memmap_ms"]))
    print(
        _row("astropy section (file object)", a["local_astropy_ratio"], a["local_astropy_file_ms"])
    )
    print("    same file over HTTP range requests")
    reqs = f"({a['http_requests_per_region']:.0f} requests/region)"
    print(_row("cloudlab lazy slice .values", a["http_ratio"], a["http_lazy_ms"], reqs))
    print(_row("cloudlab read_region", a["http_ratio"], a["http_direct_ms"]))
    print(_row(f"cloudlab {regions} regions, 1 compute", None, a["http_batched_ms"]))
    reqs = f"({a['http_regions_requests']} request(s) in all)"
    print(_row(f"cloudlab read_regions, {regions} boxes", None, a["http_regions_ms"], reqs))
    reqs = f"({a['http_astropy_requests_per_region']:.0f} requests/region)"
    print(_row("astropy section (fsspec)", a["http_astropy_ratio"], a["http_astropy_ms"], reqs))
    print(
        f"    header bytes read at open: cloudlab {a['http_header_bytes']}, "
        f"astropy {a['http_astropy_header_bytes']}"
    )
    astro = a["http_astropy_ms"]
    print(
        f"    speed-up over HTTP (astropy / cloudlab): lazy {astro / a['http_lazy_ms']:.1f}x, "
        f"read_region {astro / a['http_direct_ms']:.1f}x, "
        f"batched {astro / a['http_batched_ms']:.1f}x, "
        f"read_regions {astro / a['http_regions_ms']:.1f}x   (goal >= 5x)"
    )
    local = a["local_astropy_memmap_ms"]
    print(
        f"    local file (astropy memmap / cloudlab): lazy {local / a['local_lazy_ms']:.2f}x, "
        f"read_region {local / a['local_direct_ms']:.2f}x"
    )


def report_headers(b: dict) -> None:
    """Print the figures of (b)."""
    print(f"\n(b) header scan of {b['files']} files (HDU 1, key TSTART), median of 3 cold scans")
    print(f"    machine load average during (b): {b['load']:.1f} on {os.cpu_count()} cores")
    print(f"      astropy getheader one by one   {b['astropy_files_per_s']:8.0f} files/s")
    print(
        f"      cloudlab open_stack, no client {b['local_files_per_s']:8.0f} files/s"
        f"   (CPU {b['local_cpu_ms']:.3f} ms a file)"
    )
    print(
        f"      cloudlab open_stack, cluster   {b['cluster_files_per_s']:8.0f} files/s"
        f"   (goal >= 500; cluster start {b['cluster_start_s']:.1f} s not counted)"
    )
    ratio = b["cluster_files_per_s"] / b["astropy_files_per_s"]
    print(f"      cluster / astropy              {ratio:8.2f}x")


if __name__ == "__main__":
    main()
