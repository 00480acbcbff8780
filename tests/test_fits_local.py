"""The local fast path: uncompressed images of local files read from a read-only memory map.

Values equal astropy's for every BITPIX, with and without BSCALE/BZERO/BLANK; the fast path is
taken for local files (one map per call, no ranged reads), its arrays own their memory, a
rewritten file is mapped again, a truncated file is named, and the file is revalidated at most
once per ``cloudlab.fits.revalidate-seconds``.
"""

from __future__ import annotations

import os
from pathlib import Path

import dask
import numpy as np
import pytest
from astropy.io import fits

from cloudlab import fits as cf
from cloudlab import storage
from cloudlab.errors import FITSFormatError
from cloudlab.fits import regions

RNG = np.random.default_rng(7)


def _ints(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    info = np.iinfo(dtype)
    lo, hi = max(info.min, -(2**40)), min(info.max, 2**40)
    return RNG.integers(lo, hi, shape, endpoint=True).astype(dtype)


def _hdu(dtype: str, shape=(6, 23, 37), bscale=None, bzero=None, blank=None) -> fits.PrimaryHDU:
    data = RNG.normal(size=shape).astype(dtype) if dtype[0] == "f" else _ints(dtype, shape)
    if blank is not None:
        data[1, 2, 3] = blank
        data[4, 7, ::5] = blank
    hdu = fits.PrimaryHDU(data)
    for key, value in (("BSCALE", bscale), ("BZERO", bzero), ("BLANK", blank)):
        if value is not None:
            hdu.header[key] = value
    return hdu


CASES = {
    "bitpix8": lambda: _hdu("u1"),
    "bitpix16": lambda: _hdu("i2"),
    "bitpix32": lambda: _hdu("i4"),
    "bitpix64": lambda: _hdu("i8"),
    "bitpix-32": lambda: _hdu("f4"),
    "bitpix-64": lambda: _hdu("f8"),
    "int8-bzero": lambda: _hdu("u1", bscale=1, bzero=-128),
    "uint8-scaled": lambda: _hdu("u1", bscale=0.5, bzero=100.0),
    "int16-scaled": lambda: _hdu("i2", bscale=0.25, bzero=-3.5),
    "int16-blank-scaled": lambda: _hdu("i2", bscale=0.1, bzero=5.0, blank=-999),
    "int16-blank-unscaled": lambda: _hdu("i2", blank=-32768),
    "uint16-bzero": lambda: _hdu("i2", bscale=1, bzero=32768),
    "uint16-bzero-blank": lambda: _hdu("i2", bscale=1, bzero=32768, blank=-1),
    "int32-scaled": lambda: _hdu("i4", bscale=1.5e-3, bzero=10.0),
    "int32-blank-unscaled": lambda: _hdu("i4", blank=12345),
    "uint32-bzero": lambda: _hdu("i4", bscale=1, bzero=2**31),
    "int64-scaled": lambda: _hdu("i8", bscale=2.0, bzero=1.0),
    "uint64-bzero": lambda: _hdu("i8", bscale=1, bzero=2**63),
    "float32-scaled": lambda: _hdu("f4", bscale=3.0, bzero=-1.25),
    "float64-scaled": lambda: _hdu("f8", bscale=3.0, bzero=-1.25),
}

BOXES = [
    [(0, 6), (0, 23), (0, 37)],  # the whole cube: one contiguous run
    [(2, 4)],  # whole frames
    [(0, 6), (5, 15), (0, 37)],  # whole rows of every frame
    [(1, 5), (3, 13), (4, 14)],  # a 10x10 cutout over four frames
    [(0, 6), (22, 23), (36, 37)],  # the last pixel of every frame
]
INDEXES = [(slice(None), slice(3, 9), slice(5, 17)), (4, slice(2, 30, 3)), (slice(None), [1, 5], 7)]


class Spy:
    """Counts calls of a real function and passes them through."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.fixture(autouse=True)
def _fresh():
    with dask.config.set(scheduler="sync"):
        cf.clear_cache()
        yield


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> dict[str, Spy]:
    """Spies on the memory map of the fast path, ranged reads and revalidation requests."""
    found = {
        "map": Spy(regions.map_local),
        "ranges": Spy(regions.cat_ranges),
        "info": Spy(storage.file_info),
    }
    monkeypatch.setattr(regions, "map_local", found["map"])
    monkeypatch.setattr(regions, "cat_ranges", found["ranges"])
    monkeypatch.setattr(storage, "file_info", found["info"])
    return found


def _write(path: Path, hdu: fits.PrimaryHDU) -> str:
    hdu.writeto(path)
    return str(path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_path_equals_astropy(tmp_path: Path, case: str, spies: dict[str, Spy]) -> None:
    path = _write(tmp_path / f"{case}.fits", CASES[case]())
    ref = fits.getdata(path)
    if "blank" in case and ref.dtype.kind == "f":
        assert np.isnan(ref).sum() > 0  # BLANK -> NaN is really exercised
    info = cf.hdu_info(path, 0)
    got = cf.read_regions(info, BOXES)
    assert spies["map"].calls == 1 and spies["ranges"].calls == 0  # one map, no ranged read
    for box, data in zip(BOXES, got, strict=True):
        ref_box = ref[tuple(slice(a, b) for a, b in box)]
        assert data.dtype == ref.dtype.newbyteorder("=")
        np.testing.assert_array_equal(data, ref_box)
        assert data.flags.writeable and data.flags.owndata or data.base is not None
    for index in INDEXES:
        np.testing.assert_array_equal(cf.read_region(info, index), ref[index])
    np.testing.assert_array_equal(cf.open_hdu(path, chunks=(2, 10, 37)).values, ref)
    assert spies["ranges"].calls == 0


def test_results_own_their_memory(tmp_path: Path) -> None:
    """Arrays read from the map are copies: writing to them leaves the file as it was."""
    data = RNG.normal(size=(20, 30)).astype("f4")
    path = _write(tmp_path / "a.fits", fits.PrimaryHDU(data))
    info = cf.hdu_info(path, 0)
    for box in ([(0, 20)], [(5, 6), (0, 30)], [(3, 9), (4, 8)]):
        (got,) = cf.read_regions(info, [box])
        got[...] = -1
    np.testing.assert_array_equal(cf.read_region(info, ()), data)
    np.testing.assert_array_equal(fits.getdata(path), data)


def test_rewritten_local_file_is_mapped_again(tmp_path: Path) -> None:
    """A file replaced after a read (new inode, size or mtime) is never read through the old
    map: opened again, the new content reads exactly."""
    path = tmp_path / "moved.fits"
    first = RNG.normal(size=(30, 20)).astype("f4")
    fits.PrimaryHDU(first).writeto(path)
    np.testing.assert_array_equal(cf.read_region(cf.hdu_info(str(path), 0), ()), first)
    for shape in ((30, 20), (40, 20)):
        new = RNG.normal(size=shape).astype("f4")
        fits.PrimaryHDU(new).writeto(path, overwrite=True)
        os.utime(path, ns=(os.stat(path).st_mtime_ns + 10**9,) * 2)
        cf.clear_cache()
        with dask.config.set({"cloudlab.fits.revalidate-seconds": -1}):
            np.testing.assert_array_equal(cf.read_region(cf.hdu_info(str(path), 0), ()), new)


def test_truncated_local_file_names_file_and_hdu(tmp_path: Path) -> None:
    """With revalidation off, a file cut short after it was opened is refused by the size check
    (never a fault reading past the end of the map)."""
    data = RNG.normal(size=(100, 100)).astype("f4")
    path = _write(tmp_path / "cut.fits", fits.PrimaryHDU(data))
    info = cf.hdu_info(path, 0)
    with open(path, "r+b") as f:
        f.truncate(2880 + 50 * 400)
    with dask.config.set({"cloudlab.fits.revalidate-seconds": -1}):
        np.testing.assert_array_equal(cf.read_region(info, (slice(10, 20),)), data[10:20])
        with pytest.raises(FITSFormatError, match="truncated") as err:
            cf.read_region(info, (slice(40, 60),))
    assert path in str(err.value) and "HDU 0" in str(err.value)


def test_revalidation_at_most_once_per_interval(tmp_path: Path, spies: dict[str, Spy]) -> None:
    """Many small reads make no revalidation request within ``revalidate-seconds``; with ``0``
    every read checks the file once."""
    path = _write(tmp_path / "cube.fits", fits.PrimaryHDU(RNG.normal(size=(8, 30, 30))))
    ref = fits.getdata(path)
    info = cf.hdu_info(path, 0)
    before = spies["info"].calls
    for k in range(20):
        box = (slice(None), slice(k, k + 10), slice(k, k + 10))
        np.testing.assert_array_equal(cf.read_region(info, box), ref[box])
    assert spies["info"].calls == before
    with dask.config.set({"cloudlab.fits.revalidate-seconds": 0}):
        for k in range(5):
            cf.read_regions(info, [[(0, 8), (k, k + 3), (k, k + 3)], [(1, 2)]])
    assert spies["info"].calls == before + 5
    assert spies["map"].calls == 25 and spies["ranges"].calls == 0


def test_remote_and_gzip_files_keep_ranged_reads(tmp_path: Path, spies: dict[str, Spy]) -> None:
    """Files behind another filesystem (here fsspec's memory filesystem) and gzip files do not
    take the memory map: one batched ranged read, or one decompressed span."""
    data = RNG.normal(size=(12, 40)).astype("f4")
    path = _write(tmp_path / "a.fits", fits.PrimaryHDU(data))
    url = "memory://fits-local/a.fits"
    storage.write_bytes(url, Path(path).read_bytes(), overwrite=True)
    info = cf.hdu_info(url, 0)
    got = cf.read_regions(info, [[(2, 5), (3, 9)], [(7, 8)]])
    np.testing.assert_array_equal(got[0], data[2:5, 3:9])
    np.testing.assert_array_equal(got[1], data[7:8])
    assert spies["ranges"].calls == 1 and spies["map"].calls == 0
