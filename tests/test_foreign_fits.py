"""FITS files cloudlab did not write: astropy's and sunpy's own test files, compressed files.

Every image HDU reads equal to astropy (or sunpy), and everything cloudlab does not read is refused
with a :class:`~cloudlab.errors.CloudlabError` that names the file, the HDU and the reason.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import warnings
import zipfile
from pathlib import Path

import dask
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from cloudlab import fits as cf
from cloudlab import storage
from cloudlab.errors import CloudlabError, FITSFormatError
from cloudlab.io import aia


@pytest.fixture(autouse=True)
def _threads_in_this_process():
    """Compute here: a session's default cluster client would run the reads in worker processes
    that cannot see this process's ``memory://`` files."""
    with dask.config.set(scheduler="threads"):
        yield


RNG = np.random.default_rng(11)


def _package_dir(module: str, *parts: str) -> Path | None:
    try:
        mod = __import__(module, fromlist=["__file__"])
    except ImportError:
        return None
    path = Path(mod.__file__).parent.joinpath(*parts)
    return path if path.is_dir() else None


ASTROPY_DATA = _package_dir("astropy", "io", "fits", "tests", "data")
SUNPY_DATA = _package_dir("sunpy", "data", "test")


def _files(root: Path | None, patterns: tuple[str, ...]) -> list[Path]:
    if root is None:
        return []
    return sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file()})


ASTROPY_FILES = _files(ASTROPY_DATA, ("*.fits", "*.fits.Z", "invalid/*.fits"))
SUNPY_FILES = _files(SUNPY_DATA, ("*.fits", "*.fits.gz", "*.fts.gz", "*/*.fits", "*.fz"))


# Cases still open (strict xfail: each turns into a failure the day it starts to pass).
OPEN_IMAGES: dict[str, str] = {}
OPEN_SUNPY: dict[str, str] = {}


def _params(paths: list[Path], open_cases: dict[str, str]) -> list:
    return [
        pytest.param(
            p,
            id=p.name,
            marks=[pytest.mark.xfail(strict=True, reason=open_cases[p.name])]
            if p.name in open_cases
            else [],
        )
        for p in paths
    ]


def _same(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    assert got.dtype == ref.dtype.newbyteorder("=")  # same dtype after scaling, native order
    np.testing.assert_array_equal(got, ref)  # NaN equals NaN


def _astropy_hdus(path: Path) -> list | None:
    """``(index, name, data or None, hdu type)`` of each HDU, or None where astropy refuses."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with fits.open(path) as hdul:
                out = []
                for i, hdu in enumerate(hdul):
                    image = isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
                    image = image and not isinstance(hdu, fits.GroupsHDU)
                    data = hdu.data if image else None
                    out.append((i, hdu.name, None if data is None else np.array(data), hdu))
                return out
        except (OSError, ImportError, ValueError):
            return None


def _refused(path: Path, index: int | None) -> pytest.ExceptionInfo:
    with pytest.raises(CloudlabError) as err:
        cf.open_hdu(str(path), 0 if index is None else index).compute()
    assert str(path) in str(err.value)
    if index is not None:
        assert f"HDU {index}" in str(err.value)
    return err


# ------------------------------------------------------------------------------ astropy's files
@pytest.mark.skipif(not ASTROPY_FILES, reason="astropy's FITS test files are not installed")
@pytest.mark.parametrize("path", _params(ASTROPY_FILES, OPEN_IMAGES))
def test_astropy_test_files(path: Path) -> None:
    hdus = _astropy_hdus(path)
    if hdus is None:  # astropy cannot open it (.Z needs an extra package): refused with a reason
        _refused(path, None)
        return
    names = [name for _, name, _, _ in hdus]
    for index, name, ref, hdu in hdus:
        if ref is None:  # no data, a table, random groups: not an image
            err = _refused(path, index)
            if isinstance(hdu, fits.GroupsHDU) and hdu.header["NAXIS"] > 0:
                assert "random-groups" in str(err.value)
            continue
        if ref.size == 0:  # astropy gives an empty array; cloudlab refuses, naming the axis
            err = _refused(path, index)
            zero = [i for i in range(1, ref.ndim + 1) if hdu.header[f"NAXIS{i}"] == 0]
            assert "zero-size" in str(err.value)
            assert all(f"NAXIS{i} = 0" in str(err.value) for i in zero)
            continue
        _same(cf.open_hdu(str(path), index).values, ref)
        info = cf.hdu_info(str(path), index)
        box = tuple(slice(n // 3, max(n // 3 + 1, n - 1)) for n in ref.shape)
        _same(cf.read_region(info, box), ref[box])
        # several chunks along every axis (not one pixel each: a tile-compressed image would
        # decompress a tile per pixel)
        chunks = tuple(max(1, n // 4) for n in ref.shape)
        _same(cf.open_hdu(str(path), index, chunks=chunks)[box].values, ref[box])
        if names.count(name) == 1:  # compressed HDUs too: found by the EXTNAME astropy reports
            assert cf.hdu_info(str(path), name.lower()).index == index


@pytest.mark.skipif(not ASTROPY_FILES, reason="astropy's FITS test files are not installed")
@pytest.mark.parametrize("path", _params(ASTROPY_FILES, {}))
def test_astropy_test_tables(path: Path) -> None:
    hdus = _astropy_hdus(path) or []
    for index, _, _, hdu in hdus:
        if not isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)) or isinstance(
            hdu, fits.CompImageHDU
        ):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ref = Table.read(path, hdu=index)
            except (TypeError, ValueError) as exc:  # astropy refuses: so does cloudlab, clearly
                with pytest.raises(FITSFormatError, match=f"HDU {index}") as err:
                    cf.read_table(str(path), index)
                assert str(path) in str(err.value) and type(exc).__name__ in str(err.value)
                continue
            got = cf.read_table(str(path), index)
        assert got.colnames == ref.colnames and len(got) == len(ref)
        for col in ref.colnames:
            a, b = np.asarray(got[col]), np.asarray(ref[col])
            if a.dtype.kind in "fc":
                np.testing.assert_array_equal(a, b)
            elif a.dtype.kind != "O":
                assert (a == b).all(), col


def _small_fits() -> bytes:
    buf = io.BytesIO()
    fits.PrimaryHDU(RNG.normal(size=(8, 9)).astype("f4")).writeto(buf)
    return buf.getvalue()


def _zipped(raw: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.fits", raw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "suffix, pack, name",
    [
        (".fits.bz2", bz2.compress, "bzip2"),
        (".fits.zip", _zipped, "zip"),
        (".fits.xz", lzma.compress, "xz"),
    ],
)
def test_unread_compressions_say_so(tmp_path: Path, suffix, pack, name) -> None:
    path = tmp_path / f"a{suffix}"
    path.write_bytes(pack(_small_fits()))
    with pytest.raises(FITSFormatError, match=f"{name}.*decompress it first") as err:
        cf.open_hdu(str(path))
    assert str(path) in str(err.value)


@pytest.mark.skipif(ASTROPY_DATA is None, reason="astropy's FITS test files are not installed")
def test_lzw_z_file_says_so() -> None:
    path = ASTROPY_DATA / "lzw.fits.Z"
    if not path.is_file():
        pytest.skip("lzw.fits.Z not in this astropy")
    with pytest.raises(FITSFormatError, match=r"\.Z.*uncompress") as err:
        cf.hdu_info(str(path))
    assert str(path) in str(err.value)


@pytest.mark.skipif(ASTROPY_DATA is None, reason="astropy's FITS test files are not installed")
def test_aia_image_hdu_names_what_it_found() -> None:
    with pytest.raises(FITSFormatError, match="random groups") as err:
        aia.image_hdu(str(ASTROPY_DATA / "random_groups.fits"))
    assert "random_groups.fits" in str(err.value)
    with pytest.raises(FITSFormatError, match="BINTABLE table"):
        aia.image_hdu(str(ASTROPY_DATA / "tb.fits"))
    assert aia.image_hdu(str(ASTROPY_DATA / "comp.fits")) == 1  # RICE image in HDU 1


# -------------------------------------------------------------------------------- sunpy's files
def _sunpy_map(path: Path):
    """sunpy's map of ``path``; None where sunpy finds no map, or the exception where the file
    holds an image whose header lacks the coordinate metadata sunpy requires."""
    import sunpy.map
    from sunpy.map.mapbase import MapMetaValidationError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return sunpy.map.Map(str(path))
        except MapMetaValidationError as exc:
            return exc
        except Exception:  # noqa: BLE001 (sunpy raises many kinds: no map in this file)
            return None


@pytest.mark.skipif(not SUNPY_FILES, reason="sunpy's test files are not installed")
@pytest.mark.parametrize("path", _params(SUNPY_FILES, OPEN_SUNPY))
def test_sunpy_test_files(path: Path) -> None:
    smap = _sunpy_map(path)
    if smap is None:  # sunpy finds no 2-D map here (tables, not FITS): cloudlab says why
        with pytest.raises(FITSFormatError) as err:
            aia.image_hdu(str(path))
        assert str(path) in str(err.value)
        assert any(w in str(err.value) for w in ("table", "not a FITS file", "no data"))
        return
    if isinstance(smap, Exception):  # an image without coordinates: pixels read as astropy's
        hdu = aia.image_hdu(str(path))
        _same(cf.open_hdu(str(path), hdu).values, fits.getdata(path, hdu))
        return
    hdu = aia.image_hdu(str(path))
    arr = cf.open_hdu(str(path), hdu)
    np.testing.assert_array_equal(arr.values, smap.data)
    header = fits.Header.fromstring(arr.attrs["fits_header"])
    for key in ("DATE-OBS", "T_OBS"):  # times come through as written
        if key.lower() in smap.meta:
            assert str(header[key]) == str(smap.meta[key.lower()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = aia.wcs_of(arr.rename(dict(zip(arr.dims, ("y", "x"), strict=True))))
    pix = np.array([[0.0, 0.0], [10.5, 7.25], [smap.data.shape[1] - 1, smap.data.shape[0] - 1]])
    np.testing.assert_allclose(wcs.pixel_to_world_values(pix[:, 0], pix[:, 1]),
                               smap.wcs.pixel_to_world_values(pix[:, 0], pix[:, 1]))  # fmt: skip


@pytest.mark.skipif(SUNPY_DATA is None, reason="sunpy's test files are not installed")
def test_sunpy_aia_file_as_a_stack() -> None:
    path = SUNPY_DATA / "aia_171_level1.fits"
    smap = _sunpy_map(path)
    cube = aia.open_stack([str(path)])
    np.testing.assert_array_equal(cube.values[0], smap.data)
    # AIA's reference time is T_OBS (DATE-OBS is the start of the exposure)
    assert cube["time"].values[0] == np.datetime64(smap.reference_date.isot, "ns")
    assert int(cube["wavelength"]) == int(smap.wavelength.value)
    np.testing.assert_allclose(
        aia.wcs_of(cube).pixel_to_world_values([3, 60], [5, 90]),
        smap.wcs.pixel_to_world_values([3, 60], [5, 90]),
    )


# ------------------------------------------------------- whole-file gzip holding a RICE image
def _gzipped_rice() -> tuple[bytes, np.ndarray]:
    data = RNG.integers(0, 4000, (50, 36)).astype("i2")
    buf = io.BytesIO()
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(np.ones((3, 4), "f4"), name="FIRST"),
            fits.CompImageHDU(data, name="ccd00", compression_type="RICE_1", tile_shape=(8, 36)),
        ]
    ).writeto(buf)
    return gzip.compress(buf.getvalue()), data


def _check_gzipped_rice(url: str, data: np.ndarray) -> None:
    arr = cf.open_hdu(url, "ccd00")  # the EXTNAME astropy reports
    assert arr.attrs["hdu"] == 2 and arr.attrs["extname"] == "CCD00"
    np.testing.assert_array_equal(arr.values, data)
    np.testing.assert_array_equal(arr[7:31, 5:20].values, data[7:31, 5:20])
    got = cf.read_regions(cf.hdu_info(url, "CCD00"), [(slice(0, 9),), (slice(40, 50),)])
    np.testing.assert_array_equal(got[1], data[40:50])


def test_gzipped_compressed_hdu_from_memory() -> None:
    blob, data = _gzipped_rice()
    url = "memory://cl-foreign/rice.fits.gz"
    storage.write_bytes(url, blob, overwrite=True)
    _check_gzipped_rice(url, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(io.BytesIO(gzip.decompress(blob))) as hdul:
            np.testing.assert_array_equal(hdul["ccd00"].data, data)


def test_gzipped_compressed_hdu_from_s3(s3_bucket: str) -> None:
    blob, data = _gzipped_rice()
    url = f"s3://{s3_bucket}/rice.fits.gz"
    storage.write_bytes(url, blob)
    _check_gzipped_rice(url, data)
