"""cloudlab.fits against astropy.io.fits on local files: every BITPIX, scaling, BLANK,
multi-extension, tile compression, gzip, stacks, tables, byte budgets and bad input."""

from __future__ import annotations

import gzip
import io
import pickle
import shutil
import threading
from pathlib import Path

import dask
import fsspec
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from fsspec.implementations.local import LocalFileSystem

from cloudlab import cluster
from cloudlab import fits as cf
from cloudlab.errors import HDUNotFoundError, InputError
from cloudlab.fits.header import BLOCK

RNG = np.random.default_rng(42)


# ------------------------------------------------------------------------------------ helpers
class CountingFileSystem(LocalFileSystem):
    """Local files under ``countfile://``, counting the bytes and calls of every ranged read."""

    protocol = "countfile"
    lock = threading.Lock()
    bytes_read = 0
    cat_ranges_calls = 0
    ranges: list[tuple[int, int]] = []

    @classmethod
    def reset(cls) -> None:
        with cls.lock:
            cls.bytes_read = 0
            cls.cat_ranges_calls = 0
            cls.ranges = []

    def cat_file(self, path, start=None, end=None, **kwargs):
        data = super().cat_file(path, start=start, end=end, **kwargs)
        with self.lock:
            type(self).bytes_read += len(data)
            type(self).ranges.append((start, end))
        return data

    def cat_ranges(self, paths, starts, ends, max_gap=None, on_error="return", **kwargs):
        with self.lock:
            type(self).cat_ranges_calls += 1
        return super().cat_ranges(paths, starts, ends, max_gap, on_error, **kwargs)


fsspec.register_implementation("countfile", CountingFileSystem, clobber=True)


@pytest.fixture(autouse=True)
def _in_process_scheduler():
    """These tests count reads in this process: keep dask (and header reads) here."""
    with dask.config.set(scheduler="sync"):
        cf.clear_cache()
        yield


def write(path: Path, *hdus: fits.hdu.base.ExtensionHDU) -> str:
    hdus = list(hdus)
    if not isinstance(hdus[0], fits.PrimaryHDU):
        hdus.insert(0, fits.PrimaryHDU())
    fits.HDUList(hdus).writeto(path)
    return str(path)


def image_hdu(data: np.ndarray, primary: bool = True, **cards) -> fits.hdu.base.ExtensionHDU:
    hdu = fits.PrimaryHDU(data) if primary else fits.ImageHDU(data)
    for key, value in cards.items():
        hdu.header[key] = value
    return hdu


def assert_same(got: np.ndarray, ref: np.ndarray) -> None:
    """Same values (NaN where astropy has NaN) and the same dtype up to byte order."""
    assert got.dtype == ref.dtype.newbyteorder("="), (got.dtype, ref.dtype)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


REGIONS = [
    (slice(None), slice(None)),
    (slice(3, 9), slice(5, 17)),
    (slice(10, 11), slice(0, 1)),
    (4, slice(2, 30, 3)),
    (slice(None, None, -2), 7),
    ([1, 5, 2], slice(4, 8)),
]


def _integer_image(dtype: str, shape=(23, 37)) -> np.ndarray:
    info = np.iinfo(dtype)
    lo, hi = max(info.min, -(2**40)), min(info.max, 2**40)
    return RNG.integers(lo, hi, shape, endpoint=True).astype(dtype)


# ------------------------------------------------------------------------ values vs astropy
BITPIX_CASES = {
    "bitpix8": lambda: image_hdu(_integer_image("u1")),
    "bitpix16": lambda: image_hdu(_integer_image("i2")),
    "bitpix32": lambda: image_hdu(_integer_image("i4")),
    "bitpix64": lambda: image_hdu(_integer_image("i8")),
    "bitpix-32": lambda: image_hdu(RNG.normal(size=(23, 37)).astype("f4")),
    "bitpix-64": lambda: image_hdu(RNG.normal(size=(23, 37))),
}


def _scaled(dtype: str, bscale, bzero, blank=None, put_blank=True) -> fits.PrimaryHDU:
    data = _integer_image(dtype)
    if blank is not None and put_blank:
        data[2, 3] = blank
        data[7, ::5] = blank
    hdu = fits.PrimaryHDU(data)
    hdu.header["BSCALE"] = bscale
    hdu.header["BZERO"] = bzero
    if blank is not None:
        hdu.header["BLANK"] = blank
    return hdu


SCALED_CASES = {
    "int16-scaled": lambda: _scaled("i2", 0.25, -3.5),
    "int32-scaled": lambda: _scaled("i4", 1.5e-3, 10.0),
    "int64-scaled": lambda: _scaled("i8", 2.0, 1.0),
    "uint8-scaled": lambda: _scaled("u1", 0.5, 100.0),
    "int16-blank-scaled": lambda: _scaled("i2", 0.1, 5.0, blank=-999),
    "int16-blank-unscaled": lambda: _scaled("i2", 1, 0, blank=-32768),
    "int32-blank-unscaled": lambda: _scaled("i4", 1, 0, blank=12345),
    "int16-blank-zero": lambda: _scaled("i2", 1.0, 2.0, blank=0),
    "uint16-bzero": lambda: _scaled("i2", 1, 32768),
    "uint32-bzero": lambda: _scaled("i4", 1, 2**31),
    "uint64-bzero": lambda: _scaled("i8", 1, 2**63),
    "int8-bzero": lambda: _scaled("u1", 1, -128),
    "uint16-bzero-blank": lambda: _scaled("i2", 1, 32768, blank=-1),
    "float32-scaled": lambda: _float_scaled("f4"),
    "float64-scaled": lambda: _float_scaled("f8"),
}


def _float_scaled(dtype: str) -> fits.PrimaryHDU:
    hdu = fits.PrimaryHDU(RNG.normal(size=(23, 37)).astype(dtype))
    hdu.header["BSCALE"] = 3.0
    hdu.header["BZERO"] = -1.25
    return hdu


@pytest.mark.parametrize("case", sorted({**BITPIX_CASES, **SCALED_CASES}))
def test_open_hdu_equals_astropy(tmp_path: Path, case: str) -> None:
    make = {**BITPIX_CASES, **SCALED_CASES}[case]
    # write raw header+data with astropy without rescaling (keeps BSCALE/BZERO/BLANK as given)
    path = write(tmp_path / f"{case}.fits", make())
    ref = fits.getdata(path)
    for chunks in ("auto", 5, (7, 11)):
        arr = cf.open_hdu(path, chunks=chunks)
        assert arr.dims == ("y", "x")
        assert arr.dtype == ref.dtype.newbyteorder("=")
        assert_same(arr.values, ref)
        for region in REGIONS:
            assert_same(arr[region].values, ref[region])
    if "blank" in case and ref.dtype.kind == "f" and "zero" not in case:
        assert np.isnan(ref).sum() > 0  # the case really exercises BLANK -> NaN
        assert np.isnan(arr.values).sum() == np.isnan(ref).sum()


def test_uint16_written_by_astropy(tmp_path: Path) -> None:
    data = RNG.integers(0, 65535, (40, 50), endpoint=True).astype("u2")
    path = write(tmp_path / "u16.fits", fits.PrimaryHDU(data))
    arr = cf.open_hdu(path)
    assert arr.dtype == np.uint16
    np.testing.assert_array_equal(arr.values, data)
    np.testing.assert_array_equal(arr[5:9, 40:].values, data[5:9, 40:])


def test_multi_extension_by_index_and_name(tmp_path: Path) -> None:
    sci = RNG.normal(size=(4, 6, 9)).astype("f4")
    err = RNG.normal(size=(6, 9))
    table = fits.BinTableHDU.from_columns([fits.Column("flux", "E", array=np.arange(5.0))])
    table.name = "TAB"
    path = write(
        tmp_path / "mef.fits",
        fits.PrimaryHDU(),
        fits.ImageHDU(sci, name="SCI"),
        table,
        fits.ImageHDU(err, name="ERR"),
        fits.ImageHDU(err * 2, name="ERR", ver=2),
        fits.ImageHDU(RNG.integers(0, 9, (3, 2, 2, 5)).astype("i2")),
    )
    assert_same(cf.open_hdu(path, 1).values, fits.getdata(path, 1))
    assert_same(cf.open_hdu(path, "sci").values, sci)
    assert_same(cf.open_hdu(path, "ERR").values, err)
    assert_same(cf.open_hdu(path, ("ERR", 2)).values, err * 2)
    assert_same(cf.open_hdu(path, 5).values, fits.getdata(path, 5))
    arr = cf.open_hdu(path, "SCI")
    assert arr.dims == ("z", "y", "x")
    assert arr.attrs["hdu"] == 1 and arr.attrs["extname"] == "SCI"
    assert fits.Header.fromstring(arr.attrs["fits_header"])["EXTNAME"] == "SCI"
    assert arr.attrs["fits_header"] == fits.getheader(path, "SCI").tostring()
    assert cf.open_hdu(path, 5).dims == ("dim_0", "dim_1", "dim_2", "dim_3")
    info = cf.hdu_info(path, "ERR")
    assert info.index == 3 and info.kind == "image" and info.raw_dtype == np.dtype(">f8")
    with fits.open(path) as hdul:
        assert info.data_offset == hdul[3].fileinfo()["datLoc"]
        assert info.header_offset == hdul[3].fileinfo()["hdrLoc"]


def test_dims_and_chunks_by_name(tmp_path: Path) -> None:
    data = RNG.normal(size=(10, 12)).astype("f4")
    path = write(tmp_path / "a.fits", fits.PrimaryHDU(data))
    arr = cf.open_hdu(path, dims=("row", "column"), chunks={"row": 3})
    assert arr.dims == ("row", "column") and arr.chunks == ((3, 3, 3, 1), (12,))
    assert_same(arr.values, data)
    with pytest.raises(ValueError, match="dims"):
        cf.open_hdu(path, dims=("a",))


def test_auto_chunks_keep_fast_axes_whole(tmp_path: Path) -> None:
    data = RNG.normal(size=(40, 30, 20)).astype("f4")
    path = write(tmp_path / "cube.fits", fits.PrimaryHDU(data))
    with dask.config.set({"array.chunk-size": "10kB"}):
        arr = cf.open_hdu(path)
    assert arr.chunks[1:] == ((30,), (20,)) or arr.chunks[2] == (20,)
    assert len(arr.chunks[0]) > 1
    assert_same(arr.values, data)


def test_graph_is_deterministic_and_picklable(tmp_path: Path) -> None:
    data = RNG.normal(size=(16, 16)).astype("f4")
    path = write(tmp_path / "a.fits", fits.PrimaryHDU(data))
    a = cf.open_hdu(path, chunks=8)
    cf.clear_cache()
    b = cf.open_hdu(path, chunks=8)
    assert a.data.name == b.data.name
    assert cf.open_hdu(path, chunks=4).data.name != a.data.name
    graph = pickle.loads(pickle.dumps(dict(a.data.__dask_graph__())))
    restored = dask.get(graph, a.data.__dask_keys__())
    np.testing.assert_array_equal(np.block([list(row) for row in restored]), data)
    # a rewritten file gets new keys
    write(tmp_path / "b.fits", fits.PrimaryHDU(data[:, :8]))
    shutil.move(tmp_path / "b.fits", path)
    assert cf.open_hdu(path, chunks=8).data.name != a.data.name


# ------------------------------------------------------------------------------ compression
@pytest.mark.parametrize("algorithm", ["RICE_1", "GZIP_1", "GZIP_2", "HCOMPRESS_1"])
def test_tile_compressed_equals_astropy(tmp_path: Path, algorithm: str) -> None:
    data = RNG.integers(-2000, 2000, (64, 48)).astype("i2")
    hdu = fits.CompImageHDU(data, compression_type=algorithm, tile_shape=(8, 48), name="SCI")
    path = write(tmp_path / f"{algorithm}.fits", fits.PrimaryHDU(), hdu)
    ref = fits.getdata(path, "SCI")
    info = cf.hdu_info(path, "SCI")
    assert info.kind == "compressed" and info.compressed and info.tile_shape == (8, 48)
    with dask.config.set({"array.chunk-size": "2kB"}):
        arr = cf.open_hdu(path, "SCI")
    assert all(c % 8 == 0 for c in arr.chunks[0][:-1])  # whole tile rows
    assert_same(arr.values, ref)
    assert_same(arr[5:30, 7:20].values, ref[5:30, 7:20])
    assert_same(cf.open_hdu(path, 1, chunks=(13, 20)).values, ref)


def test_tile_compressed_float_quantized(tmp_path: Path) -> None:
    data = RNG.normal(100, 5, (32, 40)).astype("f4")
    hdu = fits.CompImageHDU(data, compression_type="RICE_1", quantize_level=16.0)
    path = write(tmp_path / "q.fits", fits.PrimaryHDU(), hdu)
    ref = fits.getdata(path, 1)
    assert_same(cf.open_hdu(path, 1).values, ref)
    assert_same(cf.open_hdu(path, 1)[3:9, ::4].values, ref[3:9, ::4])


def test_gzip_whole_file(tmp_path: Path) -> None:
    data = RNG.normal(size=(6, 30, 40)).astype("f4")
    plain = write(tmp_path / "a.fits", fits.PrimaryHDU(), fits.ImageHDU(data, name="SCI"))
    with open(plain, "rb") as src, gzip.open(tmp_path / "a.fits.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    path = str(tmp_path / "a.fits.gz")
    arr = cf.open_hdu(path, "SCI")
    assert arr.data.npartitions == 1  # read whole, once
    assert cf.hdu_info(path, "SCI").gzip
    assert_same(arr.values, fits.getdata(path, "SCI"))
    assert_same(cf.open_hdu(path, 1, chunks=(2, 10, 40))[1:4, 5:25, 3].values, data[1:4, 5:25, 3])


# -------------------------------------------------------------------------------- byte budget
def test_region_reads_only_its_bytes(tmp_path: Path) -> None:
    data = RNG.normal(size=(300, 500)).astype("f4")  # rows of 2000 bytes: gaps never merged
    path = write(tmp_path / "big.fits", fits.PrimaryHDU(data))
    url = f"countfile://{path}"
    CountingFileSystem.reset()
    arr = cf.open_hdu(url, chunks=(100, 250))
    header_bytes = CountingFileSystem.bytes_read
    assert header_bytes <= 8 * BLOCK
    CountingFileSystem.reset()
    np.testing.assert_array_equal(arr[10:20, 30:40].values, data[10:20, 30:40])
    assert CountingFileSystem.bytes_read == 10 * 10 * 4
    assert CountingFileSystem.cat_ranges_calls == 1
    # a region across 4 chunks: one batched call per chunk, still exactly the region's bytes
    CountingFileSystem.reset()
    np.testing.assert_array_equal(arr[95:105, 245:255].values, data[95:105, 245:255])
    assert CountingFileSystem.bytes_read == 10 * 10 * 4
    assert CountingFileSystem.cat_ranges_calls == 4
    # whole rows are one contiguous range
    rows = cf.open_hdu(url, chunks=(100, 500))
    CountingFileSystem.reset()
    np.testing.assert_array_equal(rows[7:9].values, data[7:9])
    assert CountingFileSystem.ranges == [(BLOCK + 7 * 2000, BLOCK + 9 * 2000)]


def test_close_ranges_are_merged(tmp_path: Path) -> None:
    data = RNG.normal(size=(50, 100)).astype("f4")  # rows of 400 bytes
    path = write(tmp_path / "a.fits", fits.PrimaryHDU(data))
    arr = cf.open_hdu(f"countfile://{path}")
    CountingFileSystem.reset()
    np.testing.assert_array_equal(arr[10:15, 20:30].values, data[10:15, 20:30])
    # 5 runs of 40 bytes, 360-byte gaps < merge gap: one range from first to last run
    assert CountingFileSystem.ranges == [(2880 + 10 * 400 + 80, 2880 + 14 * 400 + 120)]
    with dask.config.set({"cloudlab.fits.merge-gap": 0}):
        CountingFileSystem.reset()
        np.testing.assert_array_equal(arr[10:15, 20:30].values, data[10:15, 20:30])
    assert CountingFileSystem.bytes_read == 5 * 40 and len(CountingFileSystem.ranges) == 5


def test_cube_cutout_byte_ratio(tmp_path: Path) -> None:
    """astrocut layout (rows, columns, frames, 2): a 3x3 cutout over all frames."""
    cube = RNG.normal(size=(20, 30, 17, 2)).astype("f4")
    path = write(tmp_path / "cube.fits", fits.PrimaryHDU(), fits.ImageHDU(cube))
    arr = cf.open_hdu(f"countfile://{path}", 1)
    CountingFileSystem.reset()
    np.testing.assert_array_equal(arr[4:7, 10:13].values, cube[4:7, 10:13])
    needed = 3 * 3 * 17 * 2 * 4
    assert CountingFileSystem.bytes_read == needed
    assert CountingFileSystem.cat_ranges_calls == 1


# ------------------------------------------------------------------------ batched multi-box
BOXES = [
    (slice(3, 9), slice(5, 17)),  # interior
    (slice(6, 12), slice(10, 20)),  # overlaps the first
    ((20, 23), (30, 37)),  # the last corner, as (start, stop) pairs
    (slice(0, 1), slice(None)),  # the whole first row
    ((11, 12), (0, 1)),  # one pixel
    (slice(None), slice(36, 37)),  # the last column
    (slice(0, 23),),  # trailing axis left out: whole
]
REGION_CASES = [
    "bitpix8",
    "bitpix16",
    "bitpix64",
    "bitpix-64",
    "int16-scaled",
    "int16-blank-scaled",
    "int32-blank-unscaled",
    "uint16-bzero",
    "uint64-bzero",
    "int8-bzero",
    "float32-scaled",
]


@pytest.mark.parametrize("case", REGION_CASES)
def test_read_regions_equal_astropy_in_one_call(tmp_path: Path, case: str) -> None:
    make = {**BITPIX_CASES, **SCALED_CASES}[case]
    path = write(tmp_path / f"{case}.fits", make())
    ref = fits.getdata(path)
    info = cf.hdu_info(f"countfile://{path}")
    CountingFileSystem.reset()
    got = cf.read_regions(info, BOXES)
    assert CountingFileSystem.cat_ranges_calls == 1
    assert len(got) == len(BOXES)
    for box, cut in zip(BOXES, got, strict=True):
        index = tuple(b if isinstance(b, slice) else slice(*b) for b in box)
        assert_same(cut, ref[index])
    if "blank-scaled" in case:
        assert np.isnan(got[3]).any() or np.isnan(got[6]).any()  # BLANK rows 2 and 7 -> NaN


def test_read_regions_many_cube_boxes_one_request(tmp_path: Path) -> None:
    """Cutouts of an astrocut-layout cube: 40 boxes, one cat_ranges call, overlaps fetched once."""
    cube = RNG.normal(size=(60, 70, 9, 2)).astype("f4")
    path = write(tmp_path / "cube.fits", fits.PrimaryHDU(), fits.ImageHDU(cube))
    info = cf.hdu_info(f"countfile://{path}", 1)
    corners = RNG.integers(0, 55, (40, 2))
    boxes = [(slice(r, r + 5), slice(c, c + 5)) for r, c in corners]
    boxes[1] = boxes[0]  # an identical box
    CountingFileSystem.reset()
    got = cf.read_regions(info, boxes)
    assert CountingFileSystem.cat_ranges_calls == 1
    for box, cut in zip(boxes, got, strict=True):
        assert cut.dtype == np.float32
        np.testing.assert_array_equal(cut, cube[box])
    # merging only overlaps: the bytes fetched are the union of the boxes (repeats fetched once)
    with dask.config.set({"cloudlab.fits.merge-gap": 0}):
        CountingFileSystem.reset()
        cf.read_regions(info, boxes)
    assert CountingFileSystem.cat_ranges_calls == 1
    union = np.zeros(cube.shape[:2], bool)
    for box in boxes:
        union[box] = True
    assert CountingFileSystem.bytes_read == union.sum() * 9 * 2 * 4


@pytest.mark.parametrize("dtype", [">f4", ">i2", ">f8"])
def test_read_regions_repeated_and_overlapping_whole_rows(tmp_path: Path, dtype: str) -> None:
    """Boxes that share bytes (whole rows: contiguous runs) each get their own correct copy."""
    data = (np.arange(60 * 70) % 3000).astype(dtype).reshape(60, 70)
    path = write(tmp_path / "rows.fits", fits.PrimaryHDU(data))
    ref = fits.getdata(path)
    boxes = [(slice(3, 9),), (slice(3, 9),), (slice(5, 12),), (slice(0, 60), slice(0, 70))]
    for url in (path, f"countfile://{path}"):
        cf.clear_cache()
        got = cf.read_regions(cf.hdu_info(url), boxes)
        for box, cut in zip(boxes, got, strict=True):
            assert_same(cut, ref[box])


def test_read_regions_in_memory_filesystem() -> None:
    data = RNG.integers(-500, 500, (30, 40)).astype("i2")
    buf = io.BytesIO()
    hdu = fits.PrimaryHDU(data)
    hdu.header["BSCALE"], hdu.header["BZERO"] = 0.5, 3.0
    hdu.writeto(buf)
    url = "memory://cl-regions/a.fits"
    fsspec.filesystem("memory").pipe_file("/cl-regions/a.fits", buf.getvalue())
    ref = fits.getdata(io.BytesIO(buf.getvalue()))
    got = cf.read_regions(cf.hdu_info(url), [(slice(2, 9), slice(30, 40)), ((0, 1), (0, 1))])
    assert_same(got[0], ref[2:9, 30:40])
    assert_same(got[1], ref[0:1, 0:1])


@pytest.mark.parametrize("algorithm", ["RICE_1", "GZIP_2"])
def test_read_regions_tile_compressed_equal_astropy(tmp_path: Path, algorithm: str) -> None:
    data = RNG.integers(-2000, 2000, (64, 48)).astype("i2")
    hdu = fits.CompImageHDU(data, compression_type=algorithm, tile_shape=(8, 48), name="SCI")
    path = write(tmp_path / f"{algorithm}.fits", fits.PrimaryHDU(), hdu)
    ref = fits.getdata(path, "SCI")
    boxes = [(slice(5, 30), slice(7, 20)), ((63, 64), (47, 48)), (slice(0, 64), slice(0, 48))]
    got = cf.read_regions(cf.hdu_info(path, "SCI"), boxes)
    assert_same(got[0], ref[5:30, 7:20])
    assert_same(got[1], ref[63:64, 47:48])
    assert_same(got[2], ref)


def test_compressed_region_fetches_only_the_tiles_it_touches(tmp_path: Path) -> None:
    """Through a filesystem without ``fileno`` (as for remote files), a box of a RICE image
    with one tile per row costs its rows' compressed bytes, the HDU's header and its tile
    table, no more."""
    from cloudlab.testing.counting import CountingFileSystem

    yy, xx = np.indices((512, 256))
    data = (1000 + 800 * np.sin(yy / 9.0) * np.cos(xx / 7.0)).astype("i2")
    data += RNG.integers(0, 50, data.shape).astype("i2")  # rows of different compressed sizes
    hdu = fits.CompImageHDU(data, compression_type="RICE_1", tile_shape=(1, 256), name="SCI")
    path = write(tmp_path / "rice.fits", fits.PrimaryHDU(), hdu)
    rows, cols = slice(300, 380), slice(40, 90)
    with fits.open(path, disable_image_compression=True) as hdul:
        table = hdul[1]
        header = hdul.fileinfo(1)["datLoc"] - hdul.fileinfo(1)["hdrLoc"]
        descriptors = table.header["NAXIS1"] * table.header["NAXIS2"]
        touched = sum(len(table.data["COMPRESSED_DATA"][r]) for r in range(300, 380))
        heap = int(table.header["PCOUNT"])
    assert touched < heap / 4
    info = cf.hdu_info(f"countreads://{path}", "SCI")
    CountingFileSystem.reset()
    got = cf.read_region(info, (rows, cols))
    counts = CountingFileSystem.reset()
    assert_same(got, fits.getdata(path, "SCI")[rows, cols])
    assert counts["bytes"] <= header + descriptors + touched, (counts, header, touched)


def test_read_regions_gzip_file(tmp_path: Path) -> None:
    data = RNG.normal(size=(6, 30, 40)).astype("f4")
    plain = write(tmp_path / "a.fits", fits.PrimaryHDU(), fits.ImageHDU(data, name="SCI"))
    path = tmp_path / "a.fits.gz"
    path.write_bytes(gzip.compress(Path(plain).read_bytes()))
    info = cf.hdu_info(str(path), "SCI")
    got = cf.read_regions(info, [(slice(1, 3), slice(5, 9)), (slice(5, 6),)])
    np.testing.assert_array_equal(got[0], data[1:3, 5:9])
    np.testing.assert_array_equal(got[1], data[5:6])


def test_read_regions_bad_boxes(tmp_path: Path) -> None:
    path = write(tmp_path / "a.fits", fits.PrimaryHDU(np.ones((10, 12), "f4")))
    info = cf.hdu_info(path)
    assert cf.read_regions(info, []) == []
    assert cf.read_regions(info, [(slice(3, 3), slice(0, 4))])[0].shape == (0, 4)
    with pytest.raises(InputError, match=r"a\.fits.*box 1.*axis 1 spans 10:13, outside 0:12"):
        cf.read_regions(info, [(slice(0, 2),), (slice(0, 2), slice(10, 13))])
    with pytest.raises(InputError, match="step 2"):
        cf.read_regions(info, [(slice(0, 8, 2),)])
    with pytest.raises(InputError, match="3 axes"):
        cf.read_regions(info, [(slice(0, 1), slice(0, 1), slice(0, 1))])
    table = fits.BinTableHDU.from_columns([fits.Column("x", "E", array=np.arange(3.0))])
    tpath = write(tmp_path / "t.fits", fits.PrimaryHDU(), table)
    with pytest.raises(cf.FITSError, match="read_table"):
        cf.read_regions(cf.hdu_info(tpath, 1), [(slice(0, 1),)])


def test_hdu_not_found_is_a_key_error(tmp_path: Path) -> None:
    path = write(tmp_path / "two.fits", fits.PrimaryHDU(), fits.ImageHDU(np.ones((3, 3))))
    for hdu in (2, "NOPE", ("SCI", 2)):
        with pytest.raises(HDUNotFoundError, match="out of range") as err:
            cf.hdu_info(path, hdu)
        assert isinstance(err.value, KeyError) and path in str(err.value)


def test_hdu_infos_one_walk_for_several_hdus(tmp_path: Path) -> None:
    big = np.zeros((300, 400), "f4")
    path = write(
        tmp_path / "m.fits",
        fits.PrimaryHDU(),
        fits.ImageHDU(big, name="SCI"),
        fits.ImageHDU(np.ones((3, 3), "f4"), name="ERR"),
    )
    url = f"countfile://{path}"
    cf.clear_cache()
    CountingFileSystem.reset()
    primary, err, sci, nope = cf.hdu_infos(url, [0, "err", 1, 7], missing_ok=True)
    once = len(CountingFileSystem.ranges)
    assert (primary.index, sci.index, err.index, nope) == (0, 1, 2, None)
    for info in (primary, sci, err):  # the same as one walk per HDU
        alone = cf.hdu_info(path, info.index)
        assert (info.data_offset, info.shape, info.name) == (alone.data_offset, alone.shape,
                                                             alone.name)  # fmt: skip
    cf.clear_cache()
    CountingFileSystem.reset()
    for hdu in (0, 1, 2):
        cf.hdu_info(url, hdu)
    assert once < len(CountingFileSystem.ranges)  # one walk is fewer reads than a walk per HDU
    with pytest.raises(HDUNotFoundError, match="HDU 7 out of range"):
        cf.hdu_infos(path, [1, 7])


def test_header_scan_reads_header_blocks_only(tmp_path: Path) -> None:
    big = np.zeros((500, 600), "f4")
    path = write(
        tmp_path / "m.fits",
        fits.PrimaryHDU(big),
        fits.ImageHDU(big, name="A"),
        fits.ImageHDU(np.ones((3, 3), "f4"), name="B"),
    )
    CountingFileSystem.reset()
    info = cf.hdu_info(f"countfile://{path}", "B")
    assert info.index == 2
    assert CountingFileSystem.bytes_read <= 3 * 8 * BLOCK  # header blocks of 3 HDUs
    assert CountingFileSystem.bytes_read < big.nbytes / 10


def test_header_cache(tmp_path: Path) -> None:
    path = write(tmp_path / "a.fits", fits.PrimaryHDU(np.ones((4, 4), "f4")))
    url = f"countfile://{path}"
    cf.hdu_info(url)
    CountingFileSystem.reset()
    cf.hdu_info(url)
    assert CountingFileSystem.bytes_read == 0


def test_long_header(tmp_path: Path) -> None:
    hdu = fits.PrimaryHDU(np.arange(12, dtype="i4").reshape(3, 4))
    for i in range(600):  # ~17 blocks of header: several growing requests
        hdu.header[f"KEY{i}"] = i
    path = write(tmp_path / "long.fits", hdu)
    arr = cf.open_hdu(path)
    assert fits.Header.fromstring(arr.attrs["fits_header"])["KEY599"] == 599
    assert_same(arr.values, fits.getdata(path))


# ------------------------------------------------------------------------------------ stacks
def _stack_files(tmp_path: Path, n: int = 5, shape=(12, 15)) -> list[str]:
    paths = []
    for i in range(n):
        hdu = fits.ImageHDU(RNG.normal(size=shape).astype("f4"), name="SCI")
        hdu.header["TSTART"] = 1000.0 + i
        hdu.header["CAMERA"] = i % 2 + 1
        hdu.header["OBJECT"] = f"frame{i}"
        paths.append(write(tmp_path / f"f{i:03d}.fits", fits.PrimaryHDU(), hdu))
    return paths


def test_open_stack_equals_astropy(tmp_path: Path) -> None:
    paths = _stack_files(tmp_path)
    ref = np.stack([fits.getdata(p, "SCI") for p in paths])
    stack = cf.open_stack(
        str(tmp_path / "f*.fits"), "SCI", dim="time", keys=["TSTART", "CAMERA", "OBJECT"]
    )
    assert stack.dims == ("time", "y", "x")
    assert stack.chunks[0] == (1,) * 5
    assert_same(stack.values, ref)
    assert_same(stack[1:4, 2:5, 7].values, ref[1:4, 2:5, 7])
    np.testing.assert_array_equal(stack["TSTART"].values, 1000.0 + np.arange(5))
    np.testing.assert_array_equal(stack["CAMERA"].values, [1, 2, 1, 2, 1])
    assert list(stack["OBJECT"].values) == [f"frame{i}" for i in range(5)]
    assert list(stack["url"].values) == paths
    assert stack.attrs["missing"] == []
    # explicit lists keep their order
    rev = cf.open_stack(paths[::-1], 1, keys="TSTART")
    np.testing.assert_array_equal(rev["TSTART"].values, 1004.0 - np.arange(5))
    assert_same(rev.values, ref[::-1])
    # chunked planes
    tiles = cf.open_stack(paths, 1, chunks={"y": 5})
    assert tiles.chunks == ((1,) * 5, (5, 5, 2), (15,))
    assert_same(tiles.values, ref)


def test_open_stack_one_read_per_file(tmp_path: Path) -> None:
    _stack_files(tmp_path, n=4)
    CountingFileSystem.reset()
    cf.open_stack(f"countfile://{tmp_path}/f*.fits", "SCI")
    assert len(CountingFileSystem.ranges) == 4  # primary + SCI header in one read each


def test_open_stack_missing_files(tmp_path: Path) -> None:
    paths = _stack_files(tmp_path, n=3)
    gone = [str(tmp_path / "gone1.fits"), str(tmp_path / "gone2.fits")]
    urls = [paths[0], gone[0], paths[1], gone[1], paths[2]]
    with pytest.raises(FileNotFoundError) as err:
        cf.open_stack(urls, 1)
    assert gone[0] in str(err.value) and gone[1] in str(err.value)
    assert paths[0] not in str(err.value)
    stack = cf.open_stack(urls, 1, on_missing="nan", keys=["TSTART"])
    assert stack.attrs["missing"] == gone
    values = stack.values
    assert np.isnan(values[[1, 3]]).all()
    np.testing.assert_array_equal(values[[0, 2, 4]], [fits.getdata(p, 1) for p in paths])
    assert np.isnan(stack["TSTART"].values[1]) and stack["TSTART"].values[2] == 1001.0
    with pytest.raises(ValueError, match="on_missing"):
        cf.open_stack(urls, 1, on_missing="skip")


def test_open_stack_on_error_skip_marks_missing_files(tmp_path: Path) -> None:
    paths = _stack_files(tmp_path, n=2)
    gone = str(tmp_path / "gone.fits")
    stack = cf.open_stack([paths[0], gone, paths[1]], 1, on_error="skip")
    assert stack["status"].values.tolist() == ["ok", "missing", "ok"]
    assert stack["reason"].values.tolist() == ["", f"no file at {gone}", ""]
    assert stack.attrs["missing"] == [gone]
    assert np.isnan(stack.values[1]).all()
    np.testing.assert_array_equal(stack.values[2], fits.getdata(paths[1], 1))
    with pytest.raises(FileNotFoundError, match="gone.fits"):
        cf.open_stack([paths[0], gone], 1, on_error="raise")
    with pytest.raises(InputError, match="on_error"):
        cf.open_stack(paths, 1, on_error="nan")
    assert cf.open_stack(paths, 1)["status"].values.tolist() == ["ok", "ok"]


def test_open_stack_on_missing_is_a_deprecated_alias(tmp_path: Path) -> None:
    paths = _stack_files(tmp_path, n=1)
    gone = str(tmp_path / "gone.fits")
    with pytest.warns(DeprecationWarning, match="on_error"):
        stack = cf.open_stack([paths[0], gone], 1, on_missing="nan")
    assert stack["status"].values.tolist() == ["ok", "missing"]
    with pytest.warns(DeprecationWarning), pytest.raises(FileNotFoundError, match="gone.fits"):
        cf.open_stack([paths[0], gone], 1, on_missing="raise")


def test_open_stack_missing_int_files_become_float(tmp_path: Path) -> None:
    p = write(tmp_path / "a.fits", fits.PrimaryHDU(np.arange(6, dtype="i2").reshape(2, 3)))
    stack = cf.open_stack([p, str(tmp_path / "b.fits")], on_missing="nan")
    assert stack.dtype == np.float32
    np.testing.assert_array_equal(stack.values[0], np.arange(6).reshape(2, 3))


def test_open_stack_mismatch_names_files(tmp_path: Path) -> None:
    paths = _stack_files(tmp_path, n=3)
    odd_shape = write(tmp_path / "odd.fits", fits.PrimaryHDU(), fits.ImageHDU(np.ones((5, 5))))
    with pytest.raises(cf.FITSError, match="shape") as err:
        cf.open_stack([*paths, odd_shape], 1)
    assert odd_shape in str(err.value) and paths[0] not in str(err.value)
    odd_dtype = write(
        tmp_path / "odd2.fits", fits.PrimaryHDU(), fits.ImageHDU(np.ones((12, 15), "i4"))
    )
    with pytest.raises(cf.FITSError, match="dtype") as err:
        cf.open_stack([*paths, odd_dtype], 1)
    assert odd_dtype in str(err.value)


def test_open_stack_bad_file_named(tmp_path: Path) -> None:
    paths = _stack_files(tmp_path, n=2)
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"hello world" * 400)
    with pytest.raises(cf.FITSError, match="not a FITS file") as err:
        cf.open_stack([*paths, str(junk)], 1)
    assert str(junk) in str(err.value)


@pytest.mark.parametrize("waited", [False, True])
def test_local_header_scan_in_threads_only_when_reads_wait(
    tmp_path: Path, scan_threads, waited: bool
) -> None:
    """Local headers are read one after another; the rest go to threads only when the first
    ones waited on the disk longer than they computed. The stack, its keys, the files marked
    missing and the error naming a bad file are the same either way."""
    from cloudlab.fits import tables

    paths = _stack_files(tmp_path, n=6)
    gone = str(tmp_path / "gone.fits")
    urls = [paths[3], paths[0], gone, *paths[4:], paths[1], paths[2]]
    order = [3, 0, 4, 5, 1, 2]
    readers = scan_threads(tables, "hdu_info", waited)
    stack = cf.open_stack(urls, "SCI", keys=["TSTART", "OBJECT"], on_error="skip")
    assert (readers != {threading.get_ident()}) == waited
    assert list(stack["url"].values) == urls
    assert stack["status"].values.tolist() == ["ok", "ok", "missing", "ok", "ok", "ok", "ok"]
    assert stack.attrs["missing"] == [gone]
    ok = [0, 1, 3, 4, 5, 6]
    np.testing.assert_array_equal(stack["TSTART"].values[ok], 1000.0 + np.array(order))
    assert list(stack["OBJECT"].values[ok]) == [f"frame{i}" for i in order]
    assert_same(stack.values[ok], np.stack([fits.getdata(paths[i], "SCI") for i in order]))
    assert stack.attrs["fits_header"] == fits.getheader(paths[3], "SCI").tostring()
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"hello world" * 400)
    with pytest.raises(cf.FITSError, match="1 file\\(s\\) could not be read") as err:
        cf.open_stack([*paths[:3], str(junk), *paths[3:]], 1)
    assert str(junk) in str(err.value) and "not a FITS file" in str(err.value)


def test_open_stack_glob_matching_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no files match"):
        cf.open_stack(str(tmp_path / "none*.fits"))


def test_read_headers(tmp_path: Path) -> None:
    paths = _stack_files(tmp_path, n=4)
    df = cf.read_headers(str(tmp_path / "f*.fits"), "SCI")
    assert list(df.index) == paths
    assert df.index.name == "url"
    np.testing.assert_array_equal(df["TSTART"].to_numpy(), 1000.0 + np.arange(4))
    assert list(df["OBJECT"]) == [f"frame{i}" for i in range(4)]
    assert (df["NAXIS1"] == 15).all()
    with pytest.raises(FileNotFoundError, match="nope"):
        cf.read_headers([paths[0], str(tmp_path / "nope.fits")])


def test_open_stack_on_local_cluster(tmp_path: Path, local_client) -> None:
    """Headers read by the cluster's workers, chunks computed there (graph is picklable)."""
    paths = _stack_files(tmp_path, n=6)
    ref = np.stack([fits.getdata(p, 1) for p in paths])
    with dask.config.set(scheduler=local_client.get):
        assert cluster.active_client() is local_client
        stack = cf.open_stack(str(tmp_path / "f*.fits"), 1, keys=["TSTART"])
        got = local_client.compute(stack.data).result()
        cut = local_client.compute(stack.data[:, 3:5, 2:9]).result()
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(cut, ref[:, 3:5, 2:9])
    np.testing.assert_array_equal(stack["TSTART"].values, 1000.0 + np.arange(6))


def test_header_scan_on_workers_keeps_requests_in_flight(tmp_path: Path, monkeypatch) -> None:
    """A cluster worker reads its batch of remote headers in threads (one worker thread still
    keeps many requests waiting on the store at once, as the client's threads do); the stack
    equals astropy's."""
    from distributed import Client, LocalCluster

    from cloudlab.testing.counting import CountingFileSystem

    paths = _stack_files(tmp_path, n=24)
    monkeypatch.setattr(CountingFileSystem, "latency", 0.05)  # an object store's round trip
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as one_thread:
        with Client(one_thread) as client, dask.config.set(scheduler=client.get):
            cf.clear_cache()
            CountingFileSystem.reset()
            stack = cf.open_stack(f"countreads://{tmp_path}/f*.fits", 1, keys=["TSTART"])
            counts = CountingFileSystem.reset()
            got = stack.data.compute()
    assert counts["get"] == 24 and counts["head"] == 0, counts
    assert counts["most_in_flight"] >= 4, counts  # before: 1 (a batch read file by file)
    np.testing.assert_array_equal(got, np.stack([fits.getdata(p, 1) for p in paths]))
    np.testing.assert_array_equal(stack["TSTART"].values, 1000.0 + np.arange(24))


# ------------------------------------------------------------------------------------- tables
def test_read_table_equals_astropy(tmp_path: Path) -> None:
    cols = [
        fits.Column("TIME", "D", array=np.linspace(0, 1, 50), unit="d"),
        fits.Column("FLUX", "E", array=RNG.normal(size=50).astype("f4")),
        fits.Column("Q", "J", array=np.arange(50)),
        fits.Column("NAME", "8A", array=[f"s{i}" for i in range(50)]),
        fits.Column("VEC", "3E", array=RNG.normal(size=(50, 3)).astype("f4")),
    ]
    tab = fits.BinTableHDU.from_columns(cols, name="LC")
    big = fits.ImageHDU(np.zeros((300, 300), "f4"), name="IMG")
    path = write(tmp_path / "t.fits", fits.PrimaryHDU(), big, tab)
    ref = Table.read(path, hdu="LC")
    CountingFileSystem.reset()
    got = cf.read_table(f"countfile://{path}", "LC")
    assert got.colnames == ref.colnames
    for name in ref.colnames:
        np.testing.assert_array_equal(got[name], ref[name])
    assert got["TIME"].unit == ref["TIME"].unit
    assert CountingFileSystem.bytes_read < big.data.nbytes / 4  # the image was skipped
    with pytest.raises(cf.FITSError, match="not a table"):
        cf.read_table(path, "IMG")


# ---------------------------------------------------------------------------------- bad input
def _good_bytes(tmp_path: Path) -> bytes:
    path = write(tmp_path / "good.fits", fits.PrimaryHDU(np.ones((40, 40), "f4")))
    return Path(path).read_bytes()


def test_not_fits(tmp_path: Path) -> None:
    path = tmp_path / "notes.fits"
    path.write_text("this is not a FITS file\n" * 300)
    with pytest.raises(cf.FITSError, match="not a FITS file") as err:
        cf.open_hdu(str(path))
    assert str(path) in str(err.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.fits"
    path.write_bytes(b"")
    with pytest.raises(cf.FITSError, match="empty") as err:
        cf.open_hdu(str(path))
    assert str(path) in str(err.value)


def test_truncated_data(tmp_path: Path) -> None:
    path = tmp_path / "cut.fits"
    path.write_bytes(_good_bytes(tmp_path)[: 2880 + 3000])
    with pytest.raises(cf.FITSError, match="truncated") as err:
        cf.open_hdu(str(path))
    assert str(path) in str(err.value)


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "cut.fits"
    path.write_bytes(_good_bytes(tmp_path)[:1000])
    with pytest.raises(cf.FITSError, match="no END") as err:
        cf.open_hdu(str(path))
    assert str(path) in str(err.value)


def test_header_without_end(tmp_path: Path) -> None:
    cards = [f"{'SIMPLE':8}= {'T':>20}", f"{'BITPIX':8}= {-32:>20}", f"{'NAXIS':8}= {0:>20}"]
    text = "".join(c.ljust(80) for c in cards).ljust(5 * 2880)
    path = tmp_path / "noend.fits"
    path.write_bytes(text.encode("ascii"))
    with pytest.raises(cf.FITSError, match="no END card") as err:
        cf.open_hdu(str(path))
    assert str(path) in str(err.value)


def test_hdu_out_of_range(tmp_path: Path) -> None:
    path = write(tmp_path / "two.fits", fits.PrimaryHDU(), fits.ImageHDU(np.ones((3, 3))))
    with pytest.raises(cf.FITSError, match="out of range") as err:
        cf.open_hdu(path, 2)
    assert path in str(err.value) and "2 HDU" in str(err.value)
    with pytest.raises(cf.FITSError, match="'NOPE' out of range"):
        cf.open_hdu(path, "NOPE")
    with pytest.raises(ValueError, match=">= 0"):
        cf.open_hdu(path, -1)
    with pytest.raises(TypeError):
        cf.open_hdu(path, 1.5)


def test_naxis_larger_than_file(tmp_path: Path) -> None:
    hdu = fits.PrimaryHDU(np.ones((10, 10), "f4"))
    path = write(tmp_path / "a.fits", hdu)
    data = bytearray(Path(path).read_bytes())
    card = data.find(b"NAXIS2  =")
    data[card : card + 80] = f"{'NAXIS2':8}= {100000:>20}".ljust(80).encode("ascii")
    bad = tmp_path / "big.fits"
    bad.write_bytes(bytes(data))
    with pytest.raises(cf.FITSError, match="truncated") as err:
        cf.open_hdu(str(bad))
    assert str(bad) in str(err.value) and "100000" in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.fits"):
        cf.open_hdu(str(tmp_path / "nothing.fits"))


def test_table_and_empty_hdu_are_not_images(tmp_path: Path) -> None:
    tab = fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.arange(3.0))])
    path = write(tmp_path / "t.fits", fits.PrimaryHDU(), tab)
    with pytest.raises(cf.FITSError, match="read_table"):
        cf.open_hdu(path, 1)
    with pytest.raises(cf.FITSError, match="no data"):
        cf.open_hdu(path, 0)


def test_corrupt_gzip(tmp_path: Path) -> None:
    data = np.ones((50, 50), "f4")
    plain = write(tmp_path / "a.fits", fits.PrimaryHDU(data))
    blob = gzip.compress(Path(plain).read_bytes())
    path = tmp_path / "a.fits.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(cf.FITSError, match="gzip") as err:
        cf.open_hdu(str(path)).compute()
    assert str(path) in str(err.value)


def test_fast_card_values_equal_astropy(tmp_path: Path) -> None:
    hdu = fits.PrimaryHDU(np.zeros((2, 2), "f4"))
    cards = {
        "STR": "a string",
        "QUOTE": "it's here",
        "TRAIL": "spaces   ",
        "EMPTY": "",
        "INT": -42,
        "BIG": 2**62,
        "FLT": 1.5e-7,
        "NEGF": -0.0,
        "TRUE": True,
        "FALSE": False,
        "SLASH": "a/b",
    }
    for key, value in cards.items():
        hdu.header[key] = (value, "with a comment")
    path = write(tmp_path / "cards.fits", hdu)
    raw = Path(path).read_bytes()
    exp = raw.replace(b"FLT     = ", b"DEXP    = ").replace(b"E-07", b"D-07")
    Path(path).write_bytes(exp)  # a D exponent as some writers use
    info = cf.hdu_info(path)
    header = fits.getheader(path)
    for key in [*cards, "DEXP", "BITPIX", "NAXIS1", "ABSENT"]:
        if key == "FLT":
            continue
        assert info.get(key, "default") == header.get(key, "default"), key
        assert type(info.get(key)) is type(header.get(key)), key
    assert info.header == header


def _card_by_card(text: str) -> dict[str, str]:
    """Keyword -> value field of the first valued card of each keyword, one card at a time."""
    fields: dict[str, str] = {}
    for at in range(0, len(text) - len(text) % 80, 80):
        key, equals, value = text[at : at + 8], text[at + 8 : at + 10], text[at + 10 : at + 80]
        if equals == "= ":
            fields.setdefault(key.rstrip(), value)
    return fields


@pytest.mark.parametrize(
    "odd",
    ["", "TAB\t    = 3", "NUL\x00    = 4", "NONASCII= 'caf\u00e9'", "lower   = 5"],
)
def test_card_fields_equal_a_card_by_card_reading(odd: str) -> None:
    """The value fields found in one pass over a header are those of reading it card by card:
    the first of repeated keywords, no commentary cards, odd keywords as they are stored."""
    from cloudlab.fits.header import card_fields

    cards = [
        "SIMPLE  =                    T",
        "NAXIS   =                    2 / first",
        "COMMENT = not a value: commentary cards keep columns 9-10 as text",
        "HISTORY   NAXIS   = 9",
        "NAXIS   =                    7 / repeated: the first counts",
        "        = 'blank keyword'",
        "NOEQUAL   12",
        "LONGVAL = 'x' / " + "y" * 60,
        odd,
    ]
    text = "".join(card.ljust(80)[:80] for card in cards) + "PARTIAL = 1"  # a partial card
    fields = card_fields(text)
    truth = _card_by_card(text)
    assert dict(fields) == truth and sorted(fields) == sorted(truth) and len(fields) == len(truth)
    for key in [*truth, "NAXIS ", "NOEQUAL", "ABSENT", "PARTIAL", "TOOLONGKEY", "caf\u00e9"]:
        assert fields.get(key) == truth.get(key), repr(key)
    with pytest.raises(KeyError):
        fields["ABSENT"]


def test_end_card_found_on_a_card_boundary_only(tmp_path: Path) -> None:
    """A card ending in ``END`` followed by a blank card holds ``END`` and 77 blanks across the
    two cards: the header goes on to its real END card."""
    cards = ["SIMPLE  =                    T", "BITPIX  =                  -32",
             "NAXIS   =                    2", "NAXIS1  =                    3",
             "NAXIS2  =                    2", "COMMENT " + "x" * 69 + "END", "",
             "AFTER   =                    5", "END"]  # fmt: skip
    header = "".join(card.ljust(80) for card in cards).ljust(BLOCK).encode("ascii")
    data = np.arange(6, dtype=">f4").tobytes()
    path = tmp_path / "end.fits"
    path.write_bytes(header + data + bytes(BLOCK - len(data)))
    assert header.find(b"END" + b" " * 77) == 6 * 80 - 3  # across two cards
    info = cf.hdu_info(path)
    assert info.get("AFTER") == 5 and info.header == fits.getheader(path)
    np.testing.assert_array_equal(cf.read_region(info, ()), fits.getdata(path))


def test_real_tess_ffi(shared_data: Path) -> None:
    """A real SPOC FFI cut-down from ../shared/data: values equal astropy, one read per header."""
    files = sorted((shared_data / "tess" / "ffi").glob("*.fits"))
    if not files:
        pytest.skip(f"no FFI in {shared_data / 'tess' / 'ffi'}")
    path = str(files[0])
    CountingFileSystem.reset()
    info = cf.hdu_info(f"countfile://{path}", 1)
    assert len(CountingFileSystem.ranges) == 1  # primary + ext-1 headers in one request
    ref = fits.getdata(path, 1)
    arr = cf.open_hdu(path, 1, chunks=(50, 64))
    assert_same(arr.values, ref)
    assert_same(arr[10:40, 100:].values, ref[10:40, 100:])
    assert info.get("CAMERA") == fits.getheader(path, 1)["CAMERA"]
    stack = cf.open_stack([path, path], 2, keys=["EXTNAME"])
    assert_same(stack.values[1], fits.getdata(path, 2))


def test_memory_stack_stays_in_process(local_client) -> None:
    """memory:// files exist only in this process: their headers are never read on workers."""
    from cloudlab import storage

    data = np.arange(12, dtype=">f4").reshape(3, 4)
    buf = io.BytesIO()
    fits.PrimaryHDU(data).writeto(buf)
    for i in range(3):
        storage.write_bytes(f"memory://cl-stack/m{i}.fits", buf.getvalue())
    with dask.config.set(scheduler=local_client.get):
        stack = cf.open_stack("memory://cl-stack/m*.fits")
    assert stack.shape == (3, 3, 4) and stack.attrs["missing"] == []
    np.testing.assert_array_equal(stack.data.compute(scheduler="sync")[2], data)


def test_read_table_from_gzip_file(tmp_path: Path) -> None:
    tab = fits.BinTableHDU.from_columns(
        [fits.Column("X", "D", array=np.linspace(0, 1, 30))], name="T"
    )
    plain = write(tmp_path / "t.fits", fits.PrimaryHDU(np.ones((20, 20), "f4")), tab)
    path = tmp_path / "t.fits.gz"
    path.write_bytes(gzip.compress(Path(plain).read_bytes()))
    np.testing.assert_array_equal(cf.read_table(str(path), "T")["X"], np.linspace(0, 1, 30))
