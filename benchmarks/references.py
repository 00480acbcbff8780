"""Bytes fetched / bytes needed for a 10x10xall-frames region of a cube, read three ways.

A TESS-cube-like file (astrocut layout: HDU 1 of numpy shape (rows, cols, frames, 2), float32)
is read through a filesystem that counts every byte it returns:

- cloudlab virtual Zarr references (:func:`cloudlab.fits.references`) opened with xarray's zarr
  engine, with chunks of one row, and of one row cut into 16-pixel pieces;
- :func:`cloudlab.fits.open_hdu` (the lazy FITS core, reading only the region's bytes);
- kerchunk's own ``kerchunk.fits.process_file`` references (one chunk for the whole HDU).

Every read is checked against astropy. Header reads are counted too.

Usage::

    python benchmarks/references.py             # 256 x 256 pixels, 200 frames (105 MB)
    python benchmarks/references.py --quick     # 64 x 64 pixels, 50 frames
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from pathlib import Path

import fsspec
import numpy as np
import xarray as xr
from astropy.io import fits
from fsspec.implementations.local import LocalFileSystem

from cloudlab import fits as cf


class CountingFileSystem(LocalFileSystem):
    """Local files under the ``counted://`` protocol, counting the bytes and requests served."""

    protocol = "counted"
    lock = threading.Lock()
    nbytes = 0
    requests = 0

    def cat_file(self, path, start=None, end=None, **kwargs):  # noqa: D102
        data = super().cat_file(path, start=start, end=end, **kwargs)
        with self.lock:
            CountingFileSystem.nbytes += len(data)
            CountingFileSystem.requests += 1
        return data

    @classmethod
    def reset(cls) -> None:
        cls.nbytes = cls.requests = 0


def _open_refs(refs: dict, name: str) -> xr.DataArray:
    ds = xr.open_dataset(
        "reference://",
        engine="zarr",
        chunks=None,
        backend_kwargs={
            "consolidated": False,
            "storage_options": {"fo": refs, "remote_protocol": "counted"},
        },
    )
    return ds[name]


def _open_zarr(refs: dict, name: str):
    """The array through zarr directly (kerchunk writes no ``_ARRAY_DIMENSIONS`` for 4 axes)."""
    import zarr

    fs = fsspec.filesystem("reference", fo=refs, remote_protocol="counted")
    return zarr.open_array(fs.get_mapper(name), mode="r", zarr_format=2)


def _as_counted(refs: dict) -> dict:
    """The references with their file URLs on the counting filesystem."""
    out = {}
    for key, value in refs["refs"].items() if "refs" in refs else refs.items():
        if isinstance(value, bytes):  # kerchunk's metadata documents; fsspec wants text
            value = value.decode()
        if isinstance(value, list) and value:
            value = [f"counted://{value[0].removeprefix('file://')}", *value[1:]]
        out[key] = value
    return {"version": 1, "refs": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small cube (smoke run)")
    args = parser.parse_args()
    rows, cols, frames = (64, 64, 50) if args.quick else (256, 256, 200)
    fsspec.register_implementation("counted", CountingFileSystem, clobber=True)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cube.fits"
        cube = rng.normal(size=(rows, cols, frames, 2)).astype("f4")
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(cube)]).writeto(path)
        y0, x0 = rows // 3, cols // 3
        region = (slice(y0, y0 + 10), slice(x0, x0 + 10))
        truth = cube[region]
        needed = truth.nbytes
        url = f"counted://{path}"
        print(f"cube {rows}x{cols}x{frames}x2 float32 ({path.stat().st_size / 1e6:.0f} MB), "
              f"region 10x10x{frames}x2: {needed:,} bytes needed")  # fmt: skip
        print(f"{'method':<44} {'fetched':>13} {'requests':>8} {'fetched/needed':>15}")

        def report(label: str, read) -> None:
            CountingFileSystem.reset()
            values = read()
            np.testing.assert_array_equal(values, truth)
            ratio = CountingFileSystem.nbytes / needed
            print(f"{label:<44} {CountingFileSystem.nbytes:>13,} "
                  f"{CountingFileSystem.requests:>8} {ratio:>15.2f}")  # fmt: skip

        for label, chunks in (
            ("cloudlab references, chunks of 1 row", 1),
            ("cloudlab references, chunks of 1x16 pixels", (1, 16, frames, 2)),
        ):
            report(label, lambda c=chunks: _open_refs(
                cf.references(url, 1, chunks=c), "data")[region].values)  # fmt: skip
        report("cloudlab.fits.open_hdu", lambda: cf.open_hdu(url, 1)[region].values)
        try:
            import kerchunk.fits
        except ImportError:
            print("kerchunk not installed: its references are not measured")
            return
        theirs = _as_counted(kerchunk.fits.process_file(str(path), extension=1))
        (name,) = {key.split("/")[0] for key in theirs["refs"] if "/" in key}
        report("kerchunk.fits.process_file (one chunk)", lambda: _open_zarr(theirs, name)[
            region])  # fmt: skip


if __name__ == "__main__":
    main()
