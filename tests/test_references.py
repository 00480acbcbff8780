"""Virtual Zarr references (cloudlab.fits.references) read through fsspec's reference filesystem,
zarr and xarray equal cloudlab.fits.open_hdu / open_stack (which equal astropy) exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import xarray as xr
from _paths import REAL_FFI
from astropy.io import fits

from cloudlab import fits as cf
from cloudlab import storage
from cloudlab.cli import main
from cloudlab.errors import FITSFormatError, InputError, OverwriteError

RNG = np.random.default_rng(11)


def _open(refs: dict, name: str = "data", **options) -> xr.DataArray:
    ds = xr.open_dataset(
        "reference://",
        engine="zarr",
        backend_kwargs={"consolidated": False, "storage_options": {"fo": refs, **options}},
        chunks=None,
    )
    return ds[name]


def _same(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    # same type and size; byte order may differ (zarr and astropy may keep big-endian values)
    assert got.dtype.newbyteorder("=") == expected.dtype.newbyteorder("="), (
        got.dtype,
        expected.dtype,
    )
    np.testing.assert_array_equal(got, expected)  # NaN-aware: NaNs must sit at the same pixels


def _write(path: Path, hdu: fits.hdu.base.ExtensionHDU) -> Path:
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    return path


def _image(bitpix: int, shape: tuple[int, ...]) -> np.ndarray:
    if bitpix < 0:
        data = RNG.normal(size=shape).astype({-32: "f4", -64: "f8"}[bitpix])
        data.flat[::37] = np.nan
        return data
    dtype = {8: "u1", 16: "i2", 32: "i4", 64: "i8"}[bitpix]
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


# ------------------------------------------------------------------------------ plain images

PLAIN = {
    # name: (bitpix, shape, header keywords, chunks)
    "u8": (8, (13, 17), {}, "auto"),
    "i16-rows": (16, (13, 17), {}, 4),
    "i32-cube-planes": (32, (5, 9, 11), {}, 2),
    "i64-cube-rows": (64, (3, 9, 11), {}, (1, 4, 11)),
    "f32-cube": (-32, (4, 10, 12), {}, 3),
    "f64": (-64, (21, 10), {}, 8),
    "i16-scaled-blank": (16, (12, 15), {"BSCALE": 0.25, "BZERO": 100.0, "BLANK": 7}, 5),
    "i32-scaled-blank": (32, (12, 15), {"BSCALE": 1.5, "BZERO": -3.0, "BLANK": -2}, "auto"),
    "u8-scaled-blank": (8, (12, 15), {"BSCALE": 2.0, "BZERO": 1.0, "BLANK": 255}, 5),
    "i64-bscale": (64, (6, 7), {"BSCALE": 3.0}, 2),
    "f32-bzero": (-32, (6, 7), {"BZERO": 1000.0, "BSCALE": 2.0}, 4),
    "uint16": (16, (10, 9), {"BZERO": 32768}, 3),
    "uint32": (32, (10, 9), {"BZERO": 2147483648}, 3),
    "uint64": (64, (10, 9), {"BZERO": 9223372036854775808}, 3),
    "int8": (8, (10, 9), {"BZERO": -128}, 3),
    "i16-blank-only": (16, (10, 9), {"BLANK": 3}, -1),
}


def _plain_file(path: Path, case: str) -> Path:
    bitpix, shape, keywords, _ = PLAIN[case]
    data = _image(bitpix, shape)
    if "BLANK" in keywords:
        data.flat[::5] = keywords["BLANK"]
    hdu = fits.ImageHDU()
    hdu.data = data
    for key, value in keywords.items():
        hdu.header[key] = value
    return _write(path, hdu)


@pytest.mark.parametrize("case", sorted(PLAIN))
def test_plain_images_equal_open_hdu(tmp_path: Path, case: str) -> None:
    path = _plain_file(tmp_path / f"{case}.fits", case)
    chunks = PLAIN[case][3]
    refs = cf.references(str(path), 1, chunks=chunks)
    json.dumps(refs)  # JSON-serialisable as written
    zarray = json.loads(refs["refs"]["data/.zarray"])
    assert zarray["zarr_format"] == 2
    assert zarray["filters"] is None or zarray["filters"][0]["id"] == "cloudlab.fits_scale"
    if zarray["filters"] is None:  # raw pixels: the on-disk big-endian dtype
        assert zarray["dtype"] in ("|u1", ">i2", ">i4", ">i8", ">f4", ">f8")
    expected = cf.open_hdu(str(path), 1).values
    _same(_open(refs).values, expected)
    _same(expected, fits.getdata(path, 1))


def test_chunk_ranges_are_the_chunks_bytes(tmp_path: Path) -> None:
    """Every chunk reference is the byte range of exactly its pixels in the file."""
    path = _plain_file(tmp_path / "cube.fits", "i32-cube-planes")
    refs = cf.references(str(path), 1, chunks=(1, 3, 11))["refs"]
    raw = path.read_bytes()
    with fits.open(path) as hdul:
        cube = hdul[1].data
    for key, ref in refs.items():
        if key.endswith((".zarray", ".zattrs", ".zgroup")) or isinstance(ref, str):
            continue
        url, offset, length = ref
        assert url == str(path)
        plane, row, _ = (int(k) for k in key.split("/")[1].split("."))
        pixels = cube[plane, row * 3 : row * 3 + 3]
        assert raw[offset : offset + pixels.nbytes] == pixels.astype(">i4").tobytes()


def test_last_chunk_past_end_of_file_is_inline(tmp_path: Path) -> None:
    """A last chunk whose full length would run past the end of the file is kept inline."""
    data = _image(-64, (5, 720))  # 28800 bytes: the data end at the end of the file
    path = tmp_path / "tight.fits"
    fits.PrimaryHDU(data).writeto(path)
    refs = cf.references(str(path), 0, chunks=2)
    assert refs["refs"]["data/2.0"].startswith("base64:")
    assert isinstance(refs["refs"]["data/1.0"], list)
    _same(_open(refs).values, fits.getdata(path))


@pytest.mark.parametrize("chunks", [(2, 3, 11), (2, 9, 5), (1, 2, 5)])
def test_scattered_chunks_are_refused(tmp_path: Path, chunks: tuple) -> None:
    path = _plain_file(tmp_path / "cube.fits", "i32-cube-planes")
    with pytest.raises(InputError, match="scattered bytes"):
        cf.references(str(path), 1, chunks=chunks)


# ------------------------------------------------------------------------- tile compression

COMPRESSED = {
    # name: (data bitpix, compression, tile shape or None, header keywords, quantize_level)
    "rice-i16": (16, "RICE_1", None, {}, None),
    "rice-i32-tiles": (32, "RICE_1", (4, 15), {}, None),
    "rice-u8": (8, "RICE_1", None, {}, None),
    "gzip1-i32": (32, "GZIP_1", None, {}, None),
    "gzip1-i64": (64, "GZIP_1", (4, 15), {}, None),
    "gzip1-f32-lossless": (-32, "GZIP_1", None, {}, 0.0),
    "gzip1-edge-tiles": (16, "GZIP_1", (7, 15), {}, None),
    "gzip2-i16": (16, "GZIP_2", None, {}, None),
    "gzip2-f64-lossless": (-64, "GZIP_2", (5, 15), {}, 0.0),
    "hcompress-i16": (16, "HCOMPRESS_1", None, {}, None),
    "hcompress-i32-edge": (32, "HCOMPRESS_1", (8, 15), {}, None),
    "plio-i16": (16, "PLIO_1", None, {}, None),
    "rice-f32-q0": (-32, "RICE_1", None, {}, 0.0),
    "rice-scaled-blank": (16, "RICE_1", None, {"BSCALE": 0.5, "BZERO": 10.0, "BLANK": -9}, None),
    "gzip2-uint16": (16, "GZIP_2", None, {"BZERO": 32768}, None),
}


def _compressed_file(path: Path, case: str) -> Path:
    bitpix, ctype, tiles, keywords, quantize = COMPRESSED[case]
    shape = (20, 15)
    if ctype == "PLIO_1":  # PLIO keeps 24-bit non-negative values
        data = RNG.integers(0, 2**12, shape).astype("i2")
    elif ctype == "HCOMPRESS_1" or bitpix > 0:
        data = RNG.integers(-3000, 3000, shape).astype({8: "u1", 16: "i2", 32: "i4", 64: "i8"}[
            bitpix]) if bitpix != 8 else RNG.integers(0, 255, shape).astype("u1")  # fmt: skip
    else:
        data = _image(bitpix, shape)
    if "BLANK" in keywords:
        data.flat[::6] = keywords["BLANK"]
    kwargs = {"compression_type": ctype}
    if tiles:
        kwargs["tile_shape"] = tiles
    if quantize is not None:
        kwargs["quantize_level"] = quantize
    hdu = fits.CompImageHDU(data, **kwargs)
    for key, value in keywords.items():
        hdu.header[key] = value
    return _write(path, hdu)


@pytest.mark.parametrize("case", sorted(COMPRESSED))
def test_compressed_images_equal_open_hdu(tmp_path: Path, case: str) -> None:
    path = _compressed_file(tmp_path / f"{case}.fits", case)
    refs = cf.references(str(path), 1)
    zarray = json.loads(refs["refs"]["data/.zarray"])
    assert zarray["compressor"]["id"] == "cloudlab.fits_tile"
    assert zarray["compressor"]["compression"] == COMPRESSED[case][1]
    with fits.open(path) as hdul:
        tiles = -(-20 // hdul[1].tile_shape[0]) * -(-15 // hdul[1].tile_shape[1])
    assert sum(1 for key in refs["refs"] if key[len("data/") :][:1].isdigit()) == tiles
    expected = cf.open_hdu(str(path), 1).values
    _same(_open(refs).values, expected)
    _same(expected, fits.getdata(path, 1))


def test_quantized_floats_are_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "q.fits",
        fits.CompImageHDU(_image(-32, (20, 15)), compression_type="RICE_1", quantize_level=16),
    )
    with pytest.raises(FITSFormatError, match="quantized floating-point tiles"):
        cf.references(str(path), 1)


def test_rice_tiles_not_dividing_the_image_are_refused(tmp_path: Path) -> None:
    data = RNG.integers(0, 100, (20, 15)).astype("i2")
    path = _write(tmp_path / "r.fits", fits.CompImageHDU(data, tile_shape=(7, 15)))
    with pytest.raises(FITSFormatError, match="do not divide the image"):
        cf.references(str(path), 1)


def test_codecs_registered_and_round_trip() -> None:
    """``import cloudlab.fits`` registers the codecs; encode/decode invert each other."""
    scale = numcodecs.get_codec(
        {
            "id": "cloudlab.fits_scale",
            "bscale": 0.5,
            "bzero": 3.0,
            "blank": -1,
            "astype": ">i2",
            "dtype": "<f4",
        }  # fmt: skip
    )
    raw = np.array([0, 5, -1, 100], dtype=">i2")
    physical = scale.decode(raw.tobytes())
    np.testing.assert_array_equal(physical, np.array([3.0, 5.5, np.nan, 53.0], dtype="f4"))
    assert scale.encode(physical) == raw.tobytes()
    tile = numcodecs.get_codec({"id": "cloudlab.fits_tile", "compression": "RICE_1",
                                "tile_shape": [4, 6], "bitpix": 16, "bytepix": 2})  # fmt: skip
    pixels = RNG.integers(-500, 500, (4, 6)).astype(">i2")
    np.testing.assert_array_equal(tile.decode(tile.encode(pixels)), pixels.reshape(-1))


# ------------------------------------------------------------------------------------ stacks


def _ffis(tmp_path: Path, n: int = 4) -> list[Path]:
    """TESS-FFI-like files: a primary HDU and a scaled int16 image with BLANK in HDU 1."""
    paths = []
    for i in range(n):
        data = RNG.integers(-1000, 1000, (16, 18)).astype("i2")
        data[i, :3] = -32768
        hdu = fits.ImageHDU(data, name="CAL")
        hdu.header.update(BSCALE=0.5, BZERO=2000.0, BLANK=-32768, TSTART=float(i))
        paths.append(_write(tmp_path / f"ffi_{i:02d}.fits", hdu))
    return paths


def test_stack_of_ffis_equals_open_stack(tmp_path: Path) -> None:
    paths = _ffis(tmp_path)
    refs = cf.references(
        str(tmp_path / "ffi_*.fits"), "CAL", concat_dim="time", chunks=-1, keys=("TSTART",)
    )
    assert json.loads(refs["refs"]["data/.zarray"])["chunks"] == [1, 16, 18]
    assert refs["refs"]["data/2.0.0"][0] == str(paths[2])
    got = _open(refs)
    assert got.dims == ("time", "y", "x")
    stack = cf.open_stack([str(p) for p in paths], "CAL", dim="time", keys=("TSTART",))
    expected = stack.values
    _same(got.values, expected)
    np.testing.assert_array_equal(got["TSTART"].values, stack["TSTART"].values)
    assert list(got["url"].values) == [str(p) for p in paths]
    lazy = xr.open_dataset(
        "reference://",
        engine="zarr",
        chunks={},
        backend_kwargs={"consolidated": False, "storage_options": {"fo": refs}},
    )["data"]
    assert lazy.chunks == ((1, 1, 1, 1), (16,), (18,))  # one dask chunk per file
    _same(lazy[1:3, 2:9].values, expected[1:3, 2:9])


def test_stack_of_compressed_images_equals_open_stack(tmp_path: Path) -> None:
    """AIA-like: RICE_1-compressed int16 images with BLANK, stacked along time."""
    paths = []
    for i in range(3):
        data = RNG.integers(-200, 3000, (24, 20)).astype("i2")
        data[i, :4] = -32768
        hdu = fits.CompImageHDU(data, compression_type="RICE_1", tile_shape=(4, 20))
        hdu.header.update(BLANK=-32768, BSCALE=1.0, BZERO=0.0)
        paths.append(_write(tmp_path / f"aia_{i}.fits", hdu))
    refs = cf.references([str(p) for p in paths], 1, concat_dim="time")
    assert json.loads(refs["refs"]["data/.zarray"])["chunks"] == [1, 4, 20]
    expected = cf.open_stack([str(p) for p in paths], 1, dim="time").values
    assert np.isnan(expected).sum() == 12
    _same(_open(refs).values, expected)


def test_stack_errors(tmp_path: Path) -> None:
    paths = _ffis(tmp_path, 2)
    with pytest.raises(InputError, match="concat_dim"):
        cf.references([str(p) for p in paths], 1)
    with pytest.raises(InputError, match="concat_dim"):
        cf.references(str(paths[0]), 1, keys=("TSTART",))
    other = _write(tmp_path / "other.fits", fits.ImageHDU(np.zeros((16, 17), "i2")))
    with pytest.raises(FITSFormatError, match="does not match"):
        cf.references([str(paths[0]), str(other)], 1, concat_dim="time")


def test_unsupported_inputs_are_refused(tmp_path: Path) -> None:
    table = fits.BinTableHDU.from_columns([fits.Column("A", "D", array=np.arange(3.0))])
    path = _write(tmp_path / "t.fits", table)
    with pytest.raises(FITSFormatError, match="not an image"):
        cf.references(str(path), 1)
    gz = tmp_path / "img.fits.gz"
    fits.PrimaryHDU(np.zeros((4, 4), "f4")).writeto(gz)
    with pytest.raises(FITSFormatError, match="gzip"):
        cf.references(str(gz), 0)


@pytest.mark.skipif(not REAL_FFI.exists(), reason="real TESS FFI not available")
def test_real_ffi_stack(tmp_path: Path) -> None:
    """A real SPOC FFI (float32 calibrated image in HDU 1), three copies stacked along time."""
    copies = []
    for i in range(3):
        copies.append(tmp_path / f"ffi_{i}.fits")
        copies[-1].write_bytes(REAL_FFI.read_bytes())
    refs = cf.references([str(p) for p in copies], 1, concat_dim="time", chunks=16)
    got = _open(refs)[:, 20:60, 100:180].values
    expected = cf.open_stack([str(p) for p in copies], 1, dim="time")[:, 20:60, 100:180].values
    _same(got, expected)
    _same(got[1], fits.getdata(REAL_FFI, 1)[20:60, 100:180])


def test_docs_quick_start_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (Path(__file__).parent.parent / "docs" / "references.md").read_text()
    section = text[text.index("## Quick start") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/references.md quick start", "exec"), namespace)
    np.testing.assert_array_equal(namespace["plane"], namespace["raw"][2] * 0.5 + 100.0)
    assert (tmp_path / "cube.json").exists()


# ------------------------------------------------------------------------------------ remote


def test_references_to_s3_files(tmp_path: Path, s3_server, s3_bucket: str) -> None:
    local = {
        "plain.fits": _plain_file(tmp_path / "plain.fits", "i16-scaled-blank"),
        "rice.fits": _compressed_file(tmp_path / "rice.fits", "rice-scaled-blank"),
        "hc.fits": _compressed_file(tmp_path / "hc.fits", "hcompress-i32-edge"),
    }
    for name, path in local.items():
        storage.write_bytes(f"s3://{s3_bucket}/{name}", path.read_bytes())
    (tmp_path / "ffis").mkdir()
    for i, path in enumerate(_ffis(tmp_path / "ffis")):
        storage.write_bytes(f"s3://{s3_bucket}/ffi/{i}.fits", path.read_bytes())
    options = {
        "remote_protocol": "s3",
        "remote_options": {
            "key": s3_server.key,
            "secret": s3_server.secret,
            "endpoint_url": s3_server.endpoint_url,
            "asynchronous": True,  # xarray's zarr opens the reference filesystem asynchronously
        },  # fmt: skip
    }
    for name, path in local.items():
        refs = cf.references(
            f"s3://{s3_bucket}/{name}",
            1,
            storage_options={"key": s3_server.key, "secret": s3_server.secret},
        )
        assert s3_server.secret not in json.dumps(refs)  # credentials never enter references
        first = next(v for k, v in refs["refs"].items() if k.endswith("0.0"))
        assert first[0] == f"s3://{s3_bucket}/{name}"
        _same(_open(refs, **options).values, cf.open_hdu(str(path), 1).values)
    refs = cf.references(f"s3://{s3_bucket}/ffi/*.fits", 1, concat_dim="time")
    expected = cf.open_stack(f"s3://{s3_bucket}/ffi/*.fits", 1, dim="time").values
    _same(_open(refs, **options).values, expected)


# --------------------------------------------------------------------------------------- CLI


def test_cli_writes_references(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = _ffis(tmp_path, 3)
    out = tmp_path / "refs.json"
    args = ["references", str(tmp_path / "ffi_*.fits"), "--hdu", "CAL", "--concat-dim", "time",
            "--keys", "TSTART", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "shape (3, 16, 18)" in capsys.readouterr().out
    refs = json.loads(out.read_text())
    expected = cf.open_stack([str(p) for p in paths], "CAL", dim="time").values
    _same(_open(refs).values, expected)
    np.testing.assert_array_equal(_open(refs)["TSTART"].values, [0.0, 1.0, 2.0])
    with pytest.raises(OverwriteError):
        cf.write_references(refs, str(out))
    assert main(args) != 0  # refused before any work
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--chunks", "8,18"]) == 0
    assert json.loads(json.loads(out.read_text())["refs"]["data/.zarray"])["chunks"] == [1, 8, 18]


# ---------------------------------------------------------------------------------- kerchunk


KERCHUNK_SCALED = pytest.mark.xfail(
    strict=True,
    raises=ValueError,
    reason="kerchunk.fits describes BSCALE/BZERO as numcodecs.FixedScaleOffset(dtype=float) on an "
    "integer array: zarr cannot reshape the decoded chunk (and FixedScaleOffset divides by scale)",
)


@pytest.mark.parametrize(
    "case",
    [
        "i16-rows",
        "f32-cube",
        "f64",
        "u8",
        pytest.param("i32-scaled-blank", marks=KERCHUNK_SCALED),
        pytest.param("uint16", marks=KERCHUNK_SCALED),
    ],
)
def test_kerchunk_process_file_agrees(tmp_path: Path, case: str) -> None:
    """kerchunk's own FITS references (one chunk per HDU) give the same values as ours."""
    kfits = pytest.importorskip("kerchunk.fits")
    path = _plain_file(tmp_path / f"{case}.fits", case)
    theirs = kfits.process_file(str(path), extension=1)
    ours = cf.references(str(path), 1, chunks=PLAIN[case][3])
    theirs = theirs if "refs" in theirs else {"version": 1, "refs": theirs}
    (their_name,) = {k.split("/")[0] for k in theirs["refs"] if "/" in k}
    their_values = _open(theirs, their_name).values
    our_values = _open(ours).values
    np.testing.assert_array_equal(our_values, their_values.astype(our_values.dtype))
