"""Task sizes: one place (cloudlab.chunking) turns bytes per item into items per task, and each
workflow's default follows dask's ``array.chunk-size`` and the workers' memory."""

from __future__ import annotations

import dask
import numpy as np
import pytest

from cloudlab.chunking import items_per_task, plan_spatial_chunks, task_bytes
from cloudlab.errors import InputError

MiB = 2**20
BIG = 2**40  # a worker memory that never caps


def test_task_bytes_is_chunk_size_capped_by_worker_memory():
    with dask.config.set({"array.chunk-size": "1MiB"}):
        assert task_bytes(memory_limit=BIG) == MiB
        assert task_bytes(memory_limit=MiB) == MiB // 2  # half a worker's memory per thread
        assert task_bytes(memory_limit=MiB, fraction=0.25) == MiB // 4
    with dask.config.set({"array.chunk-size": "3 kB"}):
        assert task_bytes(memory_limit=BIG) == 3000
    with pytest.raises(InputError, match="fraction"):
        task_bytes(memory_limit=BIG, fraction=0)


def test_items_per_task_arithmetic():
    with dask.config.set({"array.chunk-size": "1MiB"}):
        assert items_per_task(1000, memory_limit=BIG) == 1048  # 1048576 // 1000
        assert items_per_task(1000, memory_limit=MiB) == 524  # 524288 // 1000
        assert items_per_task(1000, memory_limit=BIG, maximum=100) == 100
        assert items_per_task(3 * MiB, memory_limit=BIG) == 1  # an item bigger than the budget
        assert items_per_task(3 * MiB, memory_limit=BIG, minimum=2) == 2
        assert items_per_task(1000, memory_limit=BIG, maximum=0) == 1
    with dask.config.set({"array.chunk-size": "64MiB"}):
        assert items_per_task(MiB, memory_limit=BIG) == 64
    for bad in ({"bytes_per_item": 0}, {"bytes_per_item": 8, "minimum": 0}):
        with pytest.raises(InputError, match="items_per_task"):
            items_per_task(**bad, memory_limit=BIG)


def test_spatial_chunks_follow_chunk_size():
    with dask.config.set({"array.chunk-size": "1MiB"}):
        # 8 bytes a pixel: 131072 pixels; the longest axis is halved until they fit
        assert plan_spatial_chunks((4096, 4096), 8.0, memory_limit=BIG) == (256, 512)
        assert plan_spatial_chunks((20, 30), 8.0, memory_limit=BIG) == (20, 30)
        # a pixel bigger than the chunk size but within the worker: one pixel per chunk
        assert plan_spatial_chunks((3, 2), 2.0 * MiB, memory_limit=BIG) == (1, 1)
        with pytest.raises(InputError, match="one pixel needs"):
            plan_spatial_chunks((3, 2), 2.0 * MiB, memory_limit=2 * MiB)


def test_backdrop_frames_per_task():
    from cloudlab.backdrop.fit import default_frames_per_batch

    with dask.config.set({"array.chunk-size": "1MiB"}):
        # float32 frames of 100 x 200 pixels: 80000 bytes a frame
        assert default_frames_per_batch(100, 200, 1000) == MiB // 80000 == 13
        assert default_frames_per_batch(100, 200, 5) == 5
        assert default_frames_per_batch(1000, 2000, 5) == 1


def test_ffi_cutouts_frames_per_task(tmp_path):
    from astropy.io import fits

    from cloudlab.cutouts.ffis import ffi_cutout_array
    from cloudlab.fits import hdu_info

    fits.PrimaryHDU(np.zeros((100, 100), np.float32)).writeto(tmp_path / "ffi.fits")
    frames = [(hdu_info(str(tmp_path / "ffi.fits"), 0), None)] * 50
    cols, rows = np.arange(4), np.arange(4)
    with dask.config.set({"array.chunk-size": "64KiB"}):
        cube = ffi_cutout_array(frames, cols, rows, (11, 11))
        # 4 targets x 11 x 11 pixels x 8 bytes (flux, uncertainty) = 3872 bytes a frame
        assert cube.chunks[2] == (16, 16, 16, 2)  # 65536 // 3872 = 16
        assert ffi_cutout_array(frames, cols, rows, (11, 11), frames_per_task=7).chunks[2][0] == 7


def test_astronet_tces_per_task():
    from cloudlab.astronet import views
    from cloudlab.astronet.catalog import tces_per_task
    from cloudlab.astronet.views import num_bins
    from cloudlab.simulate import lightcurves as simulate_lightcurves

    lc, tces = simulate_lightcurves(6, 6, 4, seed=3)
    n_cadences = lc["flux"].sizes[next(d for d in lc["flux"].dims if d != "target")]
    per_tce = 32 * n_cadences + 8 * sum(num_bins("triage").values())
    with dask.config.set({"array.chunk-size": f"{5 * per_tce}B"}):
        assert tces_per_task(n_cadences, "triage", 100) == 5
        ds = views(lc, tces)
        n = len(tces)
        assert ds["global_view"].data.chunks[0] == (5,) * (n // 5) + (n % 5,) * (n % 5 > 0)
        assert views(lc, tces, batch_size=4)["valid"].data.chunks[0] == (4,) * (n // 4)


def test_dre_galaxies_per_task(tmp_path):
    from astropy.io import fits
    from astropy.nddata import Cutout2D
    from astropy.table import Table

    from cloudlab.dre import open_cuts
    from cloudlab.dre.cuts import CUT_BYTES_PER_PIXEL, clean_mask
    from cloudlab.dre.io import read_cuts_hdf5, write_cuts_hdf5

    size, n = 16, 7
    rng = np.random.default_rng(1)
    image = rng.normal(size=(64, 300)).astype(np.float32)
    segments = np.zeros((64, 300), np.int32)
    x = 20.0 + 36 * np.arange(n)  # 1-based centres
    for k, c in enumerate(x):
        segments[28:36, int(c) - 4 : int(c) + 4] = k + 1
    tile, seg = str(tmp_path / "tile.fits"), str(tmp_path / "seg.fits")
    fits.PrimaryHDU(image).writeto(tile)
    fits.PrimaryHDU(segments).writeto(seg)
    catalog = Table({"NUMBER": np.arange(1, n + 1), "X_IMAGE": x, "Y_IMAGE": np.full(n, 32.0),
                     "CLASS_STAR": np.zeros(n)})  # fmt: skip
    per_galaxy = CUT_BYTES_PER_PIXEL * size * size
    with dask.config.set({"array.chunk-size": f"{3 * per_galaxy}B"}):
        cuts = open_cuts(tile, catalog, size=size, margin=size // 2, rms=0.5, segmentation=seg)
        assert cuts["obj"].data.chunks[0] == (3, 3, 1)
        explicit = open_cuts(tile, catalog, size=size, margin=8, rms=0.5, segmentation=seg,
                             chunk_size=2)  # fmt: skip
        assert explicit["obj"].data.chunks[0] == (2, 2, 2, 1)
        for k, c in enumerate(x):  # each cut is astropy's Cutout2D window, read a chunk at a time
            window = Cutout2D(image, (c - 1, 31.0), size, mode="strict").data
            np.testing.assert_array_equal(cuts["obj"].values[k], window)
            label = Cutout2D(segments, (c - 1, 31.0), size, mode="strict").data == k + 1
            np.testing.assert_array_equal(cuts["seg"].values[k], clean_mask(label))
        np.testing.assert_array_equal(cuts["rms"].values, 0.5)
        write_cuts_hdf5(cuts, str(tmp_path / "cuts.h5"))
        back = read_cuts_hdf5(str(tmp_path / "cuts.h5"))
        assert back["obj"].data.chunks[0] == (3, 3, 1)
        np.testing.assert_array_equal(back["obj"].values, cuts["obj"].values)
        np.testing.assert_array_equal(back["seg"].values, cuts["seg"].values)


def test_cutouts_targets_per_task(tmp_path):
    from cloudlab.cutouts import make_cutouts
    from cloudlab.simulate import tess_sector

    sim = tess_sector(str(tmp_path), n_frames=10, n_stars=12, ffis=False, cube=True, sparse=True)
    targets = sim.stars[["ticid", "ra", "dec"]].head(12).reset_index(drop=True)
    # a target: 5 x 5 pixels x 10 frames x 8 bytes (flux, uncertainty), counted twice: 4000 B
    with dask.config.set({"array.chunk-size": "20000B"}):
        ds = make_cutouts(targets, sector=sim.sector, cube_base=str(tmp_path), size=5)
        n = ds.sizes["target"]
        assert n > 5
        assert ds["flux"].data.chunks[0] == (5,) * (n // 5) + (n % 5,) * (n % 5 > 0)
        explicit = make_cutouts(targets, sector=sim.sector, cube_base=str(tmp_path), size=5,
                                batch_size=3)  # fmt: skip
        assert max(explicit["flux"].data.chunks[0]) == 3
