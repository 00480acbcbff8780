"""The loopback object store (s3rver) and the latency/bandwidth shaper in front of it.

Reads through the shaper are checked byte for byte against the local file, FITS reads against
astropy on the same file, and the shaper's counters against the requests made.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import s3fs
from astropy.io import fits as afits

from cloudlab import fits, storage
from cloudlab.errors import ExternalToolError, InputError
from cloudlab.testing import ObjectStore, Shaper, place_object
from cloudlab.testing.objectstore import find_s3rver


def s3(store: ObjectStore, endpoint: str) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(skip_instance_cache=True, **store.storage_options(endpoint))


def put_local(store: ObjectStore, data: bytes, name: str) -> str:
    """Write an object straight into the store's directory; its key."""
    key = f"{uuid.uuid4().hex[:8]}/{name}"
    store.object_path("data", key).write_bytes(data)
    store.seal("data", key)
    return key


@pytest.fixture
def shaper(object_store: ObjectStore):
    # small latency and a modest bandwidth: every request is delayed and paced, tests stay quick
    with Shaper(object_store.port, latency=0.005, bandwidth=200e6) as proxy:
        yield proxy


def test_nested_keys_are_nested_directories(object_store, tmp_path):
    path = place_object(object_store.root, "data", "a/b/c.fits")
    assert path == object_store.root / "data" / "a" / "b" / "c.fits._S3rver_object"
    path.write_bytes(b"x" * 10)
    object_store.seal("data", "a/b/c.fits")
    fs = s3(object_store, object_store.endpoint_url)
    assert fs.ls("data/a/b") == ["data/a/b/c.fits"]
    assert fs.cat_file("data/a/b/c.fits") == b"x" * 10
    with pytest.raises(InputError, match="key"):
        place_object(object_store.root, "data", "a/../b")


def test_ranged_reads_through_shaper_are_unchanged(object_store, shaper):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 24_000_000, dtype=np.uint8).tobytes()
    key = put_local(object_store, data, "big.bin")
    fs = s3(object_store, shaper.endpoint_url)
    starts = np.sort(rng.integers(0, len(data) - 300_000, 400))
    ends = starts + rng.integers(1, 300_000, 400)
    parts = fs.cat_ranges([f"data/{key}"] * len(starts), starts.tolist(), ends.tolist())
    for part, start, end in zip(parts, starts, ends, strict=True):
        assert part == data[start:end]
    assert fs.cat_file(f"data/{key}") == data  # one large response, paced in many chunks
    assert shaper.snapshot().connections > 1  # served concurrently


def test_uploads_through_shaper(object_store, shaper):
    data = np.random.default_rng(2).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    fs = s3(object_store, shaper.endpoint_url)
    key = f"data/{uuid.uuid4().hex[:8]}/up.bin"
    fs.pipe_file(key, data)
    assert fs.cat_file(key) == data
    assert store_bytes(object_store, key) == data


def store_bytes(store: ObjectStore, key: str) -> bytes:
    bucket, _, name = key.partition("/")
    return store.object_path(bucket, name).read_bytes()


def test_counters_count_requests_and_body_bytes(object_store, shaper):
    data = bytes(range(256)) * 4000
    key = put_local(object_store, data, "count.bin")
    fs = s3(object_store, shaper.endpoint_url)
    fs.info(f"data/{key}")  # HEAD: a request, no body
    before = shaper.reset()
    assert before.requests["HEAD"] == 1
    assert before.body_bytes == 0
    ranges = [(0, 10), (1000, 5000), (100_000, 400_000), (1_000_000, 1_024_000)]
    for start, end in ranges:
        assert fs.cat_file(f"data/{key}", start=start, end=end) == data[start:end]
    stats = shaper.snapshot()
    assert stats.requests == {"GET": len(ranges)}
    assert stats.body_bytes == sum(end - start for start, end in ranges)
    assert stats.wire_bytes > stats.body_bytes  # plus the HTTP headers
    assert shaper.reset().total_requests == len(ranges)
    assert shaper.snapshot().total_requests == 0


def test_fits_reads_through_shaper_equal_astropy(object_store, shaper, tmp_path):
    rng = np.random.default_rng(3)
    cube = rng.normal(100, 10, (40, 30, 50)).astype(">f4")
    image = rng.integers(-3000, 3000, (64, 70)).astype(">i2")
    hdul = afits.HDUList(
        [
            afits.PrimaryHDU(),
            afits.ImageHDU(cube, name="CUBE"),
            afits.ImageHDU(image, name="SCALED"),
        ]
    )
    hdul[2].header["BSCALE"] = 0.5
    hdul[2].header["BZERO"] = 32768.0
    local = tmp_path / "cube.fits"
    hdul.writeto(local)
    key = put_local(object_store, local.read_bytes(), "cube.fits")
    url = f"s3://data/{key}"
    options = object_store.storage_options(shaper.endpoint_url)
    with afits.open(local) as ref:
        want_cube, want_scaled = ref[1].data.copy(), ref[2].data.copy()
    assert np.array_equal(fits.open_hdu(url, 1, storage_options=options).values, want_cube)
    scaled = fits.open_hdu(url, "SCALED", storage_options=options).values
    np.testing.assert_array_equal(scaled, want_scaled)
    info = fits.hdu_info(url, 1, storage_options=options)
    index = (slice(3, 17), slice(5, 9), slice(10, 40))
    np.testing.assert_array_equal(fits.read_region(info, index), want_cube[index])
    boxes = [(slice(0, 40), slice(k, k + 3), slice(k, k + 5)) for k in range(0, 25, 4)]
    shaper.reset()
    got = fits.read_regions(info, boxes)
    for box, part in zip(boxes, got, strict=True):
        np.testing.assert_array_equal(part, want_cube[box])
    assert shaper.snapshot().requests["GET"] >= 1


def test_missing_s3rver_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("CLOUDLAB_S3RVER", str(tmp_path / "nowhere" / "s3rver"))
    with pytest.raises(ExternalToolError, match="CLOUDLAB_S3RVER"):
        find_s3rver()
    monkeypatch.delenv("CLOUDLAB_S3RVER")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("cloudlab.testing.objectstore.TOOLS_BIN", tmp_path / "absent")
    with pytest.raises(ExternalToolError, match="make tools"):
        find_s3rver()


def test_shaper_refuses_bad_settings(object_store):
    with pytest.raises(InputError, match="latency"):
        Shaper(object_store.port, latency=-1)
    with pytest.raises(InputError, match="bandwidth"):
        Shaper(object_store.port, bandwidth=0)


def test_batched_reads_keep_many_requests_in_flight(object_store):
    """storage.cat_ranges on S3 opens more connections than botocore's default pool of 10."""
    data = np.random.default_rng(4).integers(0, 256, 2_000_000, dtype=np.uint8).tobytes()
    key = put_local(object_store, data, "many.bin")
    starts = np.arange(0, 1_990_000, 10_000)
    ends = starts + 1000
    # a long latency keeps every request open while the others are sent
    with Shaper(object_store.port, latency=0.2, bandwidth=None) as slow:
        options = object_store.storage_options(slow.endpoint_url)
        parts = storage.cat_ranges(f"s3://data/{key}", starts, ends, storage_options=options)
        stats = slow.snapshot()
    assert [bytes(p) for p in parts] == [data[a:b] for a, b in zip(starts, ends, strict=True)]
    assert stats.requests["GET"] == len(starts)
    assert 10 < stats.connections <= storage.S3_CONNECTIONS
