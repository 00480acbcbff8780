"""What AIA cubes read: crops and frame selections go into the reads, headers cost one request.

The files sit behind a counting filesystem (the local disk under the ``countreads://``
protocol), so every request and every byte the library asks for is counted; values are checked
against ``astropy.io.fits.getdata`` of the same files.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import dask
import numpy as np
import pytest
from astropy.io import fits

from cloudlab.io import aia
from cloudlab.simulate import aia_series
from cloudlab.testing.counting import CountingFileSystem
from cloudlab.timelag import steps

N_FRAMES = 10
SHAPE = (96, 128)


@pytest.fixture(autouse=True)
def _synchronous():
    with dask.config.set(scheduler="synchronous"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Invalid 'BLANK' keyword")
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """One uncompressed channel whose file names run against time (the T_OBS sort matters)."""
    root = tmp_path_factory.mktemp("aia")
    series = aia_series(str(root), channels=(171,), shape=SHAPE, n_frames=N_FRAMES,
                        lag_map=np.zeros(SHAPE), pulse_width_s=6.0,
                        compressed=False)  # fmt: skip
    out = []
    for k, name in enumerate(sorted(series.files[171])):
        path = Path(name)
        renamed = path.with_name(f"frame_{N_FRAMES - k:03d}.fits")
        os.rename(path, renamed)
        out.append(renamed)
    return out[::-1]  # in listing order


def counted_glob(files: list[Path]) -> str:
    return f"countreads://{files[0].parent}/frame_*.fits"


def reference(cube, files: list[Path]) -> np.ndarray:
    """The frames of ``cube`` (by url), read whole with astropy, divided by EXPTIME."""
    planes = []
    for url in cube["url"].values:
        path = url.removeprefix("countreads://")
        with fits.open(path) as hdul:
            hdu = hdul[0] if hdul[0].data is not None else hdul[1]
            planes.append(hdu.data.astype(np.float32) / np.float32(hdu.header["EXPTIME"]))
    return np.stack(planes)


def crop_box(cube, cropped) -> tuple[slice, slice]:
    """The pixel box ``crop`` chose, from the reference pixel it moved."""
    before, after = aia.header_of(cube), aia.header_of(cropped)
    left = int(round(before["CRPIX1"] - after["CRPIX1"]))
    bottom = int(round(before["CRPIX2"] - after["CRPIX2"]))
    return slice(bottom, bottom + cropped.sizes["y"]), slice(left, left + cropped.sizes["x"])


def corners(cube, y: slice, x: slice) -> tuple[tuple[float, float], tuple[float, float]]:
    """World corners (arcsec) of the pixel box ``y``, ``x`` of ``cube``."""
    wcs = aia.wcs_of(cube)
    (tx0, tx1), (ty0, ty1) = wcs.pixel_to_world_values([x.start, x.stop - 1], [y.start, y.stop - 1])
    return (tx0 * 3600, ty0 * 3600), (tx1 * 3600, ty1 * 3600)


def test_header_scan_makes_one_request_per_file_and_no_head(files):
    CountingFileSystem.reset()
    cube = aia.open_stack(counted_glob(files))
    counts = CountingFileSystem.reset()
    assert cube.sizes["time"] == N_FRAMES
    assert counts["head"] == 0  # the glob's listing gave every size
    assert counts["get"] <= N_FRAMES + 1  # one ranged read per header (+ the HDU probe)
    assert list(cube["url"].values) == sorted(cube["url"].values, reverse=True)  # by T_OBS


@pytest.mark.parametrize("order", ["normalize-crop", "crop-normalize", "select-normalize-crop"])
def test_crop_after_sort_and_normalize_reads_only_the_crop(files, order):
    cube = aia.open_stack(counted_glob(files))
    y, x = slice(30, 70), slice(40, 72)
    bottom_left, top_right = corners(cube, y, x)
    stages = {
        "normalize": steps.normalize_exposure,
        "crop": lambda c: steps.crop(c, bottom_left, top_right),
        "select": lambda c: steps.select_time(c, every=2),
    }
    out = cube
    for step in order.split("-"):
        out = stages[step](out)
    box = crop_box(cube, out)
    expected = reference(out, files)[:, box[0], box[1]]
    n, ny, nx = expected.shape
    crop_bytes = n * ny * nx * 2  # int16 files
    CountingFileSystem.reset()
    with dask.config.set({"cloudlab.aia.request-bytes": 0}):  # bytes bounded
        np.testing.assert_array_equal(out.values, expected)
    counts = CountingFileSystem.reset()
    assert counts["bytes"] <= 1.2 * crop_bytes, (counts, crop_bytes)
    assert counts["head"] == 0
    np.testing.assert_array_equal(out.values, expected)  # default: one request per frame
    counts = CountingFileSystem.reset()
    assert counts["get"] == n
    assert counts["bytes"] <= n * ((ny - 1) * SHAPE[1] + nx) * 2  # the crop's rows, no more


def test_full_width_crop_is_one_request_per_frame(files):
    cube = steps.normalize_exposure(aia.open_stack(counted_glob(files)))
    band = cube.isel(y=slice(20, 50))  # plain xarray indexing: dask slicing, still correct
    np.testing.assert_array_equal(band.values, reference(cube, files)[:, 20:50])
    bottom_left, top_right = corners(cube, slice(20, 50), slice(0, SHAPE[1]))
    cropped = steps.crop(cube, bottom_left, top_right)
    assert crop_box(cube, cropped)[1] == slice(0, SHAPE[1])
    CountingFileSystem.reset()
    values = cropped.values
    counts = CountingFileSystem.reset()
    assert counts["get"] == N_FRAMES
    np.testing.assert_array_equal(values, reference(cube, files)[:, 20:50])


def test_rows_are_merged_on_remote_files_unless_bytes_are_bounded(files):
    cube = aia.open_stack(counted_glob(files))
    bottom_left, top_right = corners(cube, slice(30, 70), slice(40, 72))
    cropped = steps.crop(cube, bottom_left, top_right)
    CountingFileSystem.reset()
    merged = cropped.values
    assert CountingFileSystem.reset()["get"] == N_FRAMES
    with dask.config.set({"cloudlab.aia.request-bytes": 0}):
        narrow = cropped.values
        assert CountingFileSystem.reset()["get"] == N_FRAMES * cropped.sizes["y"]  # by row
        with dask.config.set({"cloudlab.aia.overread": 10.0}):  # gaps up to 10 rows' bytes
            wide = cropped.values
    assert CountingFileSystem.reset()["get"] == N_FRAMES
    np.testing.assert_array_equal(merged, narrow)
    np.testing.assert_array_equal(wide, narrow)


def test_changed_values_are_never_taken_for_the_files(files):
    cube = aia.open_stack(counted_glob(files))
    doubled = cube * 2
    assert aia.frames_of(cube) is not None
    assert aia.frames_of(doubled) is None
    bottom_left, top_right = corners(cube, slice(30, 70), slice(40, 72))
    cropped = steps.crop(doubled, bottom_left, top_right)
    box = crop_box(cube, cropped)
    expected = 2 * steps.normalize_exposure(cube).values * cube["exptime"].values[:, None, None]
    np.testing.assert_allclose(cropped.values, expected[:, box[0], box[1]], rtol=1e-6)


def test_interpolated_blocks_read_every_frame_once_per_block(files):
    cube = steps.normalize_exposure(aia.open_stack(counted_glob(files)))
    grid = steps.common_time_grid([cube])
    out = steps.interpolate_to_grid(cube, grid, chunks=(48, 64))
    assert out.data.npartitions == 4
    tasks = len(out.data.__dask_graph__())
    assert tasks <= 2 * 4 + 2  # a read and an interpolation per block, nothing per frame
    CountingFileSystem.reset()
    with dask.config.set({"cloudlab.aia.request-bytes": 0}):
        values = out.values
    counts = CountingFileSystem.reset()
    assert counts["bytes"] <= 1.2 * N_FRAMES * SHAPE[0] * SHAPE[1] * 2
    plain = steps.interpolate_to_grid(cube.copy(data=cube.data + 0), grid, chunks=(48, 64))
    np.testing.assert_array_equal(values, plain.values)


def test_maps_of_file_backed_cubes_read_blocks_straight_from_the_files(files):
    from cloudlab.timelag import cross_correlation

    cube = steps.normalize_exposure(aia.open_stack(counted_glob(files)))
    cube = cube.assign_coords(time=12.0 * np.arange(N_FRAMES))  # evenly sampled, same data
    assert aia.frames_of(cube) is not None
    cc = cross_correlation(cube, cube, chunks=(48, 64))
    assert len(cc.data.__dask_graph__()) <= 3 * 4 + 2  # reads, correlation: nothing per frame
    plain = cube.copy(data=cube.data + 0)
    np.testing.assert_array_equal(
        cc.values, cross_correlation(plain, plain, chunks=(48, 64)).values
    )
