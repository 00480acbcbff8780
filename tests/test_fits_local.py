"""The local fast path of cloudlab.fits: page-cached files read from a memory map.

Values are checked against astropy on the same files; the path is checked by making the
ranged-read path unusable and reading anyway.
"""

from __future__ import annotations

import os
from pathlib import Path

import dask
import numpy as np
import pytest
from astropy.io import fits

from cloudlab import fits as cf
from cloudlab.errors import FITSFormatError, StorageError
from cloudlab.fits import regions, sources

RNG = np.random.default_rng(7)

CASES = {
    "u8": (np.uint8, {}),
    "u8-scaled": (np.uint8, {"BSCALE": 0.5, "BZERO": 3.0}),
    "i16": (np.int16, {}),
    "i16-blank": (np.int16, {"BSCALE": 2.0, "BZERO": -7.5, "BLANK": -32768}),
    "u16": (np.int16, {"BZERO": 32768}),
    "i32": (np.int32, {}),
    "i32-blank": (np.int32, {"BSCALE": 1.5, "BLANK": 99}),
    "u32": (np.int32, {"BZERO": 2**31}),
    "i64": (np.int64, {}),
    "f32": (np.float32, {}),
    "f32-scaled": (np.float32, {"BSCALE": 3.0, "BZERO": 1.0}),
    "f64": (np.float64, {}),
}


def _write(path: Path, dtype: type, keys: dict, shape: tuple = (6, 20, 30)) -> str:
    """An image HDU 1 of raw values of ``dtype`` with scaling keywords written as given."""
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is None:
        raw = RNG.normal(0, 100, shape).astype(dtype)
        raw.flat[::17] = np.nan
    else:
        raw = RNG.integers(max(info.min, -(2**40)), min(info.max, 2**40), shape).astype(dtype)
        if "BLANK" in keys:
            raw.flat[::13] = keys["BLANK"]
    hdu = fits.ImageHDU(do_not_scale_image_data=True)
    hdu.data = raw
    for key, value in keys.items():
        hdu.header[key] = value
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    return str(path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_local_values_equal_astropy(tmp_path: Path, case: str) -> None:
    dtype, keys = CASES[case]
    path = _write(tmp_path / f"{case}.fits", dtype, keys)
    with fits.open(path) as hdul:
        truth = hdul[1].data.copy()
    assert not np.all(truth == truth.flat[0])
    info = cf.hdu_info(path, 1)
    whole = cf.read_region(info, ())
    assert whole.dtype == truth.dtype.newbyteorder("=") and whole.dtype.isnative
    np.testing.assert_array_equal(whole, truth)
    box = (slice(1, 5), slice(3, 17), slice(2, 29, 3))
    np.testing.assert_array_equal(cf.read_region(info, box), truth[box])
    np.testing.assert_array_equal(cf.open_hdu(path, 1)[:, 4:9, ::-2].values, truth[:, 4:9, ::-2])
    parts = cf.read_regions(info, [[(0, 2), (5, 9)], [(1, 6), (0, 20), (10, 11)]])
    np.testing.assert_array_equal(parts[0], truth[0:2, 5:9])
    np.testing.assert_array_equal(parts[1], truth[1:6, :, 10:11])


def test_local_reads_use_the_memory_map(tmp_path: Path, monkeypatch) -> None:
    """With the ranged-read path made unusable, local files are still read (from the map)."""
    path = _write(tmp_path / "a.fits", np.float32, {})
    truth = fits.getdata(path, 1)
    info = cf.hdu_info(path, 1)  # headers are read by ranged reads
    lazy = cf.open_hdu(path, 1)

    def refuse(*args, **kwargs):
        raise AssertionError("ranged reads used for a local file")

    monkeypatch.setattr(regions, "fetch_ranges", refuse)
    monkeypatch.setattr(sources.storage, "cat_ranges", refuse)
    got = cf.read_region(info, (slice(None), slice(2, 7)))
    np.testing.assert_array_equal(got, truth[:, 2:7])
    assert os.path.abspath(path) in sources._MAPS
    np.testing.assert_array_equal(lazy.values, truth)


def test_local_reads_are_copies(tmp_path: Path) -> None:
    """An unscaled byte image comes back writeable and not sharing the mapped file."""
    path = _write(tmp_path / "b.fits", np.uint8, {})
    data = cf.read_region(cf.hdu_info(path, 1), ())
    mapped = sources._MAPS[os.path.abspath(path)][1]
    assert data.flags.writeable
    assert not np.may_share_memory(data, np.frombuffer(mapped, dtype=np.uint8))
    data[:] = 0
    assert fits.getdata(path, 1).any()


def test_rewritten_local_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.fits", np.float32, {})
    info = cf.hdu_info(path, 1)
    cf.read_region(info, ())
    _write(tmp_path / "new.fits", np.float32, {}, shape=(6, 20, 31))
    os.replace(tmp_path / "new.fits", path)
    with dask.config.set({"cloudlab.fits.revalidate-seconds": 0}):
        with pytest.raises(StorageError, match="changed after it was opened") as err:
            cf.read_region(info, ())
    assert path in str(err.value)


def test_truncated_local_file_raises_instead_of_faulting(tmp_path: Path) -> None:
    """A file cut short after its header was read: an error naming it, never a bus error."""
    path = _write(tmp_path / "d.fits", np.float64, {}, shape=(40, 50))
    info = cf.hdu_info(path, 1)
    cf.read_region(info, (slice(0, 2),))
    with open(path, "r+b") as f:
        f.truncate(info.data_offset + 100)
    with dask.config.set({"cloudlab.fits.revalidate-seconds": -1}):  # skip the fingerprint
        with pytest.raises(FITSFormatError, match="truncated") as err:
            cf.read_region(info, (slice(30, 40),))
    assert path in str(err.value) and "HDU 1" in str(err.value)


def test_map_follows_a_replaced_file(tmp_path: Path) -> None:
    """A new file at the same path is mapped again, not read through the old map."""
    path = _write(tmp_path / "e.fits", np.int16, {})
    cf.read_region(cf.hdu_info(path, 1), ())
    _write(tmp_path / "f.fits", np.int16, {"BZERO": 32768})
    os.replace(tmp_path / "f.fits", path)
    cf.clear_cache()
    np.testing.assert_array_equal(cf.open_hdu(path, 1).values, fits.getdata(path, 1))


def test_truncated_local_file_still_reads_what_it_holds(tmp_path: Path) -> None:
    """Regions inside the bytes a cut-short file still holds read exactly (the map is shorter
    than the HDU); one past them is refused naming file and HDU."""
    data = RNG.normal(size=(100, 100)).astype(">f4")
    path = str(tmp_path / "cut.fits")
    fits.PrimaryHDU(data).writeto(path)
    info = cf.hdu_info(path, 0)
    with open(path, "r+b") as f:
        f.truncate(info.data_offset + 50 * 400)
    with dask.config.set({"cloudlab.fits.revalidate-seconds": -1}):
        np.testing.assert_array_equal(cf.read_region(info, (slice(10, 20),)), data[10:20])
        got = cf.read_regions(info, [[(0, 50), (3, 9)], [(49, 50)]])
        np.testing.assert_array_equal(got[0], data[:50, 3:9])
        np.testing.assert_array_equal(got[1], data[49:50])
        with pytest.raises(FITSFormatError, match="truncated") as err:
            cf.read_region(info, (slice(40, 60),))
    assert path in str(err.value) and "HDU 0" in str(err.value)


def test_revalidation_at_most_once_per_interval(tmp_path: Path, monkeypatch) -> None:
    """Small local reads ask for the file's size and modification marker at most once per
    ``cloudlab.fits.revalidate-seconds`` (``0``: once per read)."""
    from cloudlab import storage

    asked = []
    real = storage.file_info
    monkeypatch.setattr(storage, "file_info", lambda *a, **k: asked.append(a) or real(*a, **k))
    path = str(tmp_path / "cube.fits")
    fits.PrimaryHDU(RNG.normal(size=(8, 30, 30))).writeto(path)
    ref = fits.getdata(path)
    info = cf.hdu_info(path, 0)
    before = len(asked)
    for k in range(20):
        box = (slice(None), slice(k, k + 10), slice(k, k + 10))
        np.testing.assert_array_equal(cf.read_region(info, box), ref[box])
    assert len(asked) == before
    with dask.config.set({"cloudlab.fits.revalidate-seconds": 0}):
        for k in range(5):
            cf.read_regions(info, [[(0, 8), (k, k + 3), (k, k + 3)], [(1, 2)]])
    assert len(asked) == before + 5


def test_other_filesystems_keep_ranged_reads(tmp_path: Path, monkeypatch) -> None:
    """A file behind another fsspec filesystem (here the memory filesystem) takes one batched
    ranged read, never the memory map."""
    from cloudlab import storage

    calls = {"map": 0, "ranges": 0}
    real_map, real_ranges = regions.map_local, regions.cat_ranges

    def counted(name, fn):
        def call(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return call

    monkeypatch.setattr(regions, "map_local", counted("map", real_map))
    monkeypatch.setattr(regions, "cat_ranges", counted("ranges", real_ranges))
    data = RNG.normal(size=(12, 40)).astype(">f4")
    fits.PrimaryHDU(data).writeto(tmp_path / "a.fits")
    url = "memory://fits-local-test/a.fits"
    storage.write_bytes(url, (tmp_path / "a.fits").read_bytes(), overwrite=True)
    got = cf.read_regions(cf.hdu_info(url, 0), [[(2, 5), (3, 9)], [(7, 8)]])
    np.testing.assert_array_equal(got[0], data[2:5, 3:9])
    np.testing.assert_array_equal(got[1], data[7:8])
    assert calls == {"map": 0, "ranges": 1}


def _mapped_resident_kb(path: str) -> int:
    """Resident kB of this process's maps of ``path`` (Linux ``/proc/self/smaps``)."""
    total, ours = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                ours = fields[-1] == path
            elif ours and fields[0] == "Rss:":
                total += int(fields[1])
    return total


def _read_twice(path: str) -> tuple[np.ndarray, list[int]]:
    """Read HDU 1 of ``path`` whole, twice; the mapped kB left resident after each read."""
    info = cf.hdu_info(path, 1)
    resident = []
    for _ in range(2):
        data = cf.read_region(info, ())
        resident.append(_mapped_resident_kb(path))
    return data, resident


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_read_pages_leave_a_workers_resident_set(tmp_path: Path) -> None:
    """In a dask worker, the file's mapped pages no longer count in the resident memory after a
    region is copied out (the worker's memory manager counts it: page-cached FFIs made workers
    pause and spill); outside a worker they stay mapped for the next read. Values equal astropy."""
    from distributed import Client, LocalCluster

    path = os.path.realpath(_write(tmp_path / "big.fits", np.float32, {}, shape=(4, 1024, 1024)))
    ref = fits.getdata(path, 1, memmap=False)  # astropy's own map would count too
    data, resident = _read_twice(path)
    np.testing.assert_array_equal(data, ref)
    assert min(resident) > 8 * 1024  # interactive reads keep the pages mapped
    sources._MAPS.clear()
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1) as cluster:
        with Client(cluster) as client:
            data, resident = client.submit(_read_twice, path, pure=False).result()
    np.testing.assert_array_equal(data, ref)
    assert max(resident) < 1024, f"{resident} kB of mapped pages left resident in the worker"
