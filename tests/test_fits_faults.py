"""FITS core faults: corrupt compressed tiles, servers that ignore HTTP Range requests, bad
``chunks``, files that vanish or are rewritten between open and compute.

Each fault is tried on a local file, over HTTP (a loopback server started here) and on the S3
emulator where the store can show it; every case ends in a ``CloudlabError`` naming the file.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import dask
import numpy as np
import pytest
from astropy.io import fits

from cloudlab import fits as cf
from cloudlab import storage
from cloudlab.errors import CloudlabError, FITSFormatError, InputError, NotFoundError, StorageError

RNG = np.random.default_rng(11)


# --------------------------------------------------------------------------------------------
# loopback HTTP servers: one honouring Range requests, one ignoring them
# --------------------------------------------------------------------------------------------


class _RangeHandler(SimpleHTTPRequestHandler):
    """Serves a directory; answers ``Range: bytes=a-b`` with 206 and sends an ETag."""

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    #: Send an ETag (else only Last-Modified, as many plain web servers do).
    etag = True

    def _body(self) -> bytes | None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return None
        self._mtime = path.stat().st_mtime
        return path.read_bytes()

    def _headers(self, status: int, body: bytes, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if self.etag:
            self.send_header("ETag", '"' + hashlib.md5(body).hexdigest() + '"')  # noqa: S324
        else:
            self.send_header("Last-Modified", self.date_time_string(int(self._mtime)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
        body = self._body()
        if body is not None:
            self._headers(200, body, {"Accept-Ranges": "bytes"})

    def do_GET(self) -> None:  # noqa: N802
        body = self._body()
        if body is None:
            return
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if not match:
            self._headers(200, body, {})
            self.wfile.write(body)
            return
        start = int(match[1])
        stop = min(int(match[2]) + 1 if match[2] else len(body), len(body))
        part = body[start:stop]
        self._headers(206, part, {"Content-Range": f"bytes {start}-{stop - 1}/{len(body)}"})
        self.wfile.write(part)


class _NoRangeHandler(_RangeHandler):
    """Answers every GET with 200 and the whole file, whatever the Range header asks."""

    def do_GET(self) -> None:  # noqa: N802
        body = self._body()
        if body is not None:
            self._headers(200, body, {})
            self.wfile.write(body)


class _LastModifiedHandler(_RangeHandler):
    """Honours Range requests; marks versions with Last-Modified only (no ETag)."""

    etag = False


def _serve(root: Path, handler: type) -> Iterator[str]:
    class Handler(handler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over loopback HTTP with Range support: (directory, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    yield from ((root, url) for url in _serve(root, _RangeHandler))


@pytest.fixture
def no_range_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served by a server that ignores Range requests: (directory, base URL)."""
    root = tmp_path / "norange"
    root.mkdir()
    yield from ((root, url) for url in _serve(root, _NoRangeHandler))


@pytest.fixture(autouse=True)
def _fresh_headers() -> Iterator[None]:
    cf.clear_cache()
    with dask.config.set(scheduler="sync"):
        yield
    cf.clear_cache()


def _image(path: Path, shape: tuple[int, ...] = (60, 50)) -> np.ndarray:
    data = RNG.normal(size=shape).astype("f4")
    fits.PrimaryHDU(data).writeto(path, overwrite=True)
    return data


# --------------------------------------------------------------------------------------------
# corrupt compressed tiles
# --------------------------------------------------------------------------------------------

TILE = (8, 30)
BAD_ROW = 3  # 1-based table row of the tile that is damaged


def _corrupt_tiled(path: Path, algorithm: str) -> np.ndarray:
    """A tile-compressed image (EXTNAME 'SCI', tiles of 8 rows) whose tile in table row
    ``BAD_ROW`` is overwritten with junk bytes; returns the original pixels."""
    data = RNG.integers(0, 5000, (40, 30)).astype("i4")
    hdu = fits.CompImageHDU(data, compression_type=algorithm, tile_shape=TILE, name="SCI")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    with fits.open(path, disable_image_compression=True) as hdul:
        table = hdul[1]
        heap = table._data_offset + table.header.get(
            "THEAP", table.header["NAXIS1"] * table.header["NAXIS2"]
        )
        descriptors = np.asarray(table.data).view(np.ndarray)["COMPRESSED_DATA"]
        nbytes, offset = (int(v) for v in descriptors[BAD_ROW - 1])
    raw = bytearray(path.read_bytes())
    start = heap + offset + nbytes // 4  # keep the tile's first bytes, damage the rest
    raw[start : heap + offset + nbytes] = bytes(
        RNG.integers(0, 256, heap + offset + nbytes - start, dtype=np.uint8)
    )
    path.write_bytes(bytes(raw))
    return data


@pytest.mark.parametrize("algorithm", ["GZIP_1", "RICE_1"])
@pytest.mark.parametrize("where", ["local", "http", "s3"])
def test_corrupt_tile_names_file_hdu_and_row(
    tmp_path: Path, http_root: tuple[Path, str], s3_bucket: str, algorithm: str, where: str
) -> None:
    local = tmp_path / "tiles.fits"
    data = _corrupt_tiled(local, algorithm)
    url = {
        "local": str(local),
        "http": f"{http_root[1]}/tiles.fits",
        "s3": f"s3://{s3_bucket}/tiles.fits",
    }[where]
    if where == "http":
        (http_root[0] / "tiles.fits").write_bytes(local.read_bytes())
    elif where == "s3":
        storage.write_bytes(url, local.read_bytes())
    arr = cf.open_hdu(url, "SCI")
    # the tiles before the damaged one still read exactly
    np.testing.assert_array_equal(
        arr[: (BAD_ROW - 1) * TILE[0]].compute(), data[: (BAD_ROW - 1) * TILE[0]]
    )
    with pytest.raises(FITSFormatError) as err:
        arr.compute()
    message = str(err.value)
    assert url in message
    assert "HDU 1 (SCI)" in message
    assert f"table row {BAD_ROW} " in message
    lo = (BAD_ROW - 1) * TILE[0]
    assert f"[{lo}:{lo + TILE[0]}, 0:30]" in message


# --------------------------------------------------------------------------------------------
# servers that ignore Range requests
# --------------------------------------------------------------------------------------------


def test_range_ignoring_server_is_detected(
    tmp_path: Path, http_root: tuple[Path, str], no_range_root: tuple[Path, str]
) -> None:
    """A server answering 200 with the whole file instead of 206 is named, never read as the
    asked range; the same file from a Range-honouring server reads exactly."""
    data = _image(http_root[0] / "img.fits", (60, 50))
    (no_range_root[0] / "img.fits").write_bytes((http_root[0] / "img.fits").read_bytes())
    good = cf.open_hdu(f"{http_root[1]}/img.fits", chunks=(20, 50))
    np.testing.assert_array_equal(good.compute(), data)

    url = f"{no_range_root[1]}/img.fits"
    with pytest.raises(StorageError) as err:
        cf.open_hdu(url, chunks=(20, 50)).compute()
    message = str(err.value)
    assert url in message
    assert "ignored the HTTP Range request" in message
    assert "206 Partial Content" in message


# --------------------------------------------------------------------------------------------
# chunks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunks", [0, (0, 10), (10, -3), {"x": 0}, 2.5, (10, "big"), "big"], ids=str
)
def test_bad_chunks_refused_before_reading(tmp_path: Path, chunks: object) -> None:
    path = tmp_path / "img.fits"
    _image(path, (30, 20))
    with pytest.raises(InputError, match=r"chunks=") as err:
        cf.open_hdu(path, chunks=chunks)
    assert str(path) in str(err.value)
    paths = [tmp_path / f"s{i}.fits" for i in range(3)]
    for p in paths:
        _image(p, (30, 20))
    stack_chunks = {"y": 0} if isinstance(chunks, dict) else chunks
    if isinstance(stack_chunks, (tuple, dict)):
        with pytest.raises(InputError, match=r"chunks="):
            cf.open_stack([str(p) for p in paths], chunks=stack_chunks)


def test_good_chunks_still_accepted(tmp_path: Path) -> None:
    path = tmp_path / "img.fits"
    data = _image(path, (30, 20))
    for chunks in (7, (7, -1), (7, None), {"y": 7}, "auto", "1KiB", (7, "auto")):
        arr = cf.open_hdu(path, chunks=chunks)
        np.testing.assert_array_equal(arr.compute(), data)
    assert cf.open_hdu(path, chunks=(7, -1)).chunks == ((7, 7, 7, 7, 2), (20,))


# --------------------------------------------------------------------------------------------
# files that vanish or change between open and compute
# --------------------------------------------------------------------------------------------


def _places(tmp_path: Path, http_root: tuple[Path, str], s3_bucket: str, name: str):
    """(url, write(bytes), remove()) for a local file, an HTTP file and an S3 object."""
    local = tmp_path / name
    http_file = http_root[0] / name
    s3_url = f"s3://{s3_bucket}/{name}"

    def s3_remove() -> None:
        fs, path = storage.resolve(s3_url)
        fs.rm(path)

    return {
        "local": (str(local), local.write_bytes, local.unlink),
        "http": (f"{http_root[1]}/{name}", http_file.write_bytes, http_file.unlink),
        "s3": (s3_url, lambda b: storage.write_bytes(s3_url, b), s3_remove),
    }


def _fits_bytes(data: np.ndarray) -> bytes:
    buf = BytesIO()
    fits.PrimaryHDU(data).writeto(buf)
    return buf.getvalue()


@pytest.mark.parametrize("revalidate", [0, 60], ids=["check-each-read", "default"])
@pytest.mark.parametrize("where", ["local", "http", "s3"])
def test_vanished_file_names_url(
    tmp_path: Path, http_root: tuple[Path, str], s3_bucket: str, where: str, revalidate: int
) -> None:
    url, write, remove = _places(tmp_path, http_root, s3_bucket, "gone.fits")[where]
    write(_fits_bytes(RNG.normal(size=(30, 20)).astype("f4")))
    with dask.config.set({"cloudlab.fits.revalidate-seconds": revalidate}):
        arr = cf.open_hdu(url)
        remove()
        with pytest.raises(NotFoundError) as err:
            arr.compute()
    assert isinstance(err.value, CloudlabError)
    assert url in str(err.value) or os.path.abspath(url) in str(err.value)
    assert "gone" in str(err.value)


@pytest.mark.parametrize("same_size", [True, False], ids=["same-size", "new-size"])
@pytest.mark.parametrize("where", ["local", "http", "s3"])
def test_rewritten_file_is_detected(
    tmp_path: Path, http_root: tuple[Path, str], s3_bucket: str, where: str, same_size: bool
) -> None:
    """A file rewritten after its header was read is refused (size, mtime or ETag changed),
    never read at the old header's byte offsets."""
    url, write, _ = _places(tmp_path, http_root, s3_bucket, "moved.fits")[where]
    write(_fits_bytes(RNG.normal(size=(30, 20)).astype("f4")))
    with dask.config.set({"cloudlab.fits.revalidate-seconds": 0}):
        arr = cf.open_hdu(url)
        new = RNG.normal(size=(30, 20) if same_size else (40, 20)).astype("f4")
        write(_fits_bytes(new))
        if where == "local":  # a filesystem with coarse timestamps: make the change visible
            os.utime(url, (1_000_000_000, 1_000_000_000))
        with pytest.raises(StorageError, match="changed after it was opened") as err:
            arr.compute()
    assert url in str(err.value)
    # opened again, the new content reads exactly
    cf.clear_cache()
    np.testing.assert_array_equal(cf.open_hdu(url).compute(), new)


def test_rewrite_seen_through_last_modified(tmp_path: Path) -> None:
    """A same-size rewrite on an HTTP server that sends Last-Modified but no ETag is detected."""
    root = tmp_path / "lm"
    root.mkdir()
    path = root / "img.fits"
    path.write_bytes(_fits_bytes(RNG.normal(size=(30, 20)).astype("f4")))
    os.utime(path, (1_000_000_000, 1_000_000_000))
    for base in _serve(root, _LastModifiedHandler):
        url = f"{base}/img.fits"
        with dask.config.set({"cloudlab.fits.revalidate-seconds": 0}):
            arr = cf.open_hdu(url)
            path.write_bytes(_fits_bytes(RNG.normal(size=(30, 20)).astype("f4")))
            os.utime(path, (1_000_000_100, 1_000_000_100))
            with pytest.raises(StorageError, match="changed after it was opened") as err:
                arr.compute()
        assert url in str(err.value)
