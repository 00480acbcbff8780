"""Galaxy cut stacks (cloudlab.dre.cuts), SExtractor catalogues (cloudlab.io.galaxies) and the
galaxy tile simulator."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.table import Table
from scipy import ndimage

import cloudlab.dre.cuts as galaxy_cuts
from cloudlab.dre.cuts import clean_mask, open_cuts
from cloudlab.io.galaxies import read_catalog
from cloudlab.simulate import galaxy_tile
from cloudlab.simulate.galaxies import gaussian_psf, sersic_stamp

SHAPE = (300, 320)


@pytest.fixture(autouse=True)
def _synchronous():
    with dask.config.set(scheduler="synchronous"):
        yield


@pytest.fixture
def images(tmp_path):
    """A tile whose pixel values encode their position, a background, rms and segmentation."""
    rows, cols = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    tile = (rows * 1000 + cols).astype(np.float32)
    background = np.full(SHAPE, 7.0, np.float32)
    rms = (1.0 + rows / 1000.0).astype(np.float32)
    seg = np.zeros(SHAPE, np.int32)
    seg[100:120, 150:170] = 3  # object 3 around (x=160, y=110), 1-based ~ (161, 111)
    seg[200:215, 100:130] = 5
    paths = {}
    for name, data in (("tile", tile), ("bkg", background), ("rms", rms), ("seg", seg)):
        paths[name] = str(tmp_path / f"{name}.fits")
        fits.PrimaryHDU(data).writeto(paths[name])
    catalog = Table(
        {
            "NUMBER": [3, 5, 7, 8, 9],
            "X_IMAGE": [160.7, 115.0, 40.0, 200.0, 150.0],
            "Y_IMAGE": [110.2, 207.0, 150.0, 150.0, 90.0],
            "CLASS_STAR": [0.1, 0.3, 0.1, 0.9, 0.2],
            "FLUX_AUTO": [10.0, 20.0, 30.0, 40.0, 50.0],
            "VIGNET": np.zeros((5, 3, 3)),
        }
    )
    return paths, catalog, tile


def test_clean_mask_follows_dre_rules():
    seg = np.zeros((32, 32), bool)
    seg[10:22, 12:20] = True  # the object, touching the centre (16, 16)
    seg[14:16, 14:16] = False  # a hole
    seg[2:4, 2:4] = True  # a detached piece of the same segment
    out = clean_mask(seg)
    expected = seg.copy()
    expected[2:4, 2:4] = False
    expected[14:16, 14:16] = True
    expected = ndimage.binary_dilation(expected, iterations=4)
    np.testing.assert_array_equal(out, expected)
    # a segment that misses the centre leaves only the dilated central 4x4 block
    only_block = np.zeros((32, 32), bool)
    only_block[14:18, 14:18] = True
    far = np.zeros((32, 32), bool)
    far[0:3, 0:3] = True
    np.testing.assert_array_equal(
        clean_mask(far), ndimage.binary_dilation(only_block, iterations=4)
    )


def test_open_cuts_geometry_values_and_selection(images):
    paths, catalog, tile = images
    cuts = open_cuts(
        paths["tile"],
        catalog,
        size=64,
        margin=40,
        max_stellarity=0.5,
        background=paths["bkg"],
        rms=paths["rms"],
        segmentation=paths["seg"],
        chunk_size=2,
    )
    # x=40 is on the margin (strict test), CLASS_STAR 0.9 is too stellar
    assert list(cuts["NUMBER"].values) == [3, 5, 9]
    assert list(cuts["name"].values) == ["00_0003", "00_0005", "00_0009"]
    assert "VIGNET" not in cuts.coords
    assert cuts["obj"].chunks[0] == (2, 1)
    out = cuts.compute()
    for i, row in enumerate(catalog[[0, 1, 4]]):
        ref = Cutout2D(tile, (row["X_IMAGE"] - 1, row["Y_IMAGE"] - 1), 64, mode="trim")
        np.testing.assert_array_equal(out["obj"].values[i], ref.data - 7.0)
    assert out["rms"].dtype == np.float32 and out["seg"].dtype == bool
    assert out["flag"].values.tolist() == [0, 0, 0]
    # object 3: its own segment (cleaned) is in the mask, object 5's segment is not
    seg3 = out["seg"].values[0]
    r0, c0 = int(np.ceil(110.2 - 1 - 32)), int(np.ceil(160.7 - 1 - 32))
    own = np.zeros(SHAPE, bool)
    own[100:120, 150:170] = True
    expected = clean_mask(own[r0 : r0 + 64, c0 : c0 + 64])
    np.testing.assert_array_equal(seg3, expected)
    # object 9 has no segment pixels: the mask is the dilated central block only
    assert out["seg"].values[2].sum() == clean_mask(np.zeros((64, 64), bool)).sum()


def test_open_cuts_filters_constant_rms_and_nan_flag(images, tmp_path):
    paths, catalog, tile = images
    bad = tile.copy()
    bad[135, 130] = np.nan
    nan_tile = str(tmp_path / "nan.fits")
    fits.PrimaryHDU(bad).writeto(nan_tile)
    cuts = open_cuts(
        nan_tile,
        catalog,
        size=64,
        margin=40,
        max_stellarity=1.0,
        rms=2.5,
        segmentation=paths["seg"],
        filters={"FLUX_AUTO": (15.0, 45.0)},
    )
    assert list(cuts["NUMBER"].values) == [5, 8]
    out = cuts.compute()
    assert np.all(out["rms"].values == 2.5)
    assert out["flag"].values.tolist() == [0, 0]
    all_cuts = open_cuts(nan_tile, catalog, size=64, margin=40, rms=2.5, segmentation=paths["seg"])
    assert all_cuts["flag"].values.tolist() == [1, 0, 0]  # object 3's cut touches the NaN


def test_open_cuts_reads_only_its_windows(images, monkeypatch):
    paths, catalog, _ = images
    calls = []
    original = galaxy_cuts.read_regions

    def counting(info, boxes):
        calls.extend((info.url, box) for box in boxes)
        return original(info, boxes)

    monkeypatch.setattr(galaxy_cuts, "read_regions", counting)
    cuts = open_cuts(
        paths["tile"],
        catalog,
        size=64,
        margin=40,
        background=paths["bkg"],
        rms=paths["rms"],
        segmentation=paths["seg"],
        chunk_size=1,
    )
    assert calls == []  # building the dataset reads no pixels
    cuts["obj"][1].compute()
    assert len(calls) == 4  # tile, background, rms, segmentation windows of galaxy 1 only
    assert all(index[0].stop - index[0].start == 64 for _, index in calls)


def test_open_cuts_reads_each_image_once_per_chunk(images, monkeypatch):
    paths, catalog, tile = images
    calls = []
    original = galaxy_cuts.read_regions

    def counting(info, boxes):
        calls.append((info.url, len(boxes)))
        return original(info, boxes)

    monkeypatch.setattr(galaxy_cuts, "read_regions", counting)
    cuts = open_cuts(paths["tile"], catalog, size=64, margin=40, max_stellarity=1.0,
                     background=paths["bkg"], rms=paths["rms"], segmentation=paths["seg"],
                     chunk_size=8)  # fmt: skip
    out = cuts.compute()
    n = out.sizes["galaxy"]
    assert n >= 2
    # one batched read per image for the one chunk, each holding every galaxy's window
    assert sorted(calls) == sorted((paths[k], n) for k in ("tile", "bkg", "rms", "seg"))
    for i in range(n):
        r0 = int(np.ceil(out["Y_IMAGE"].values[i] - 1 - 32))
        c0 = int(np.ceil(out["X_IMAGE"].values[i] - 1 - 32))
        np.testing.assert_array_equal(out["obj"].values[i], tile[r0 : r0 + 64, c0 : c0 + 64] - 7)


def test_open_cuts_bad_input(images, tmp_path):
    paths, catalog, _ = images
    with pytest.raises(ValueError, match="CLASS_STAR"):
        open_cuts(paths["tile"], catalog[["NUMBER", "X_IMAGE", "Y_IMAGE"]], rms=1.0,
                  segmentation=paths["seg"])  # fmt: skip
    with pytest.raises(ValueError, match="rms="):
        open_cuts(paths["tile"], catalog, segmentation=paths["seg"])
    small = str(tmp_path / "small.fits")
    fits.PrimaryHDU(np.zeros((10, 10), np.float32)).writeto(small)
    with pytest.raises(ValueError, match="shape"):
        open_cuts(paths["tile"], catalog, rms=small, segmentation=paths["seg"])
    with pytest.raises(ValueError, match="filter column"):
        open_cuts(paths["tile"], catalog, rms=1.0, segmentation=paths["seg"],
                  filters={"NOPE": (0, 1)})  # fmt: skip


def test_read_catalog_stacks_ldac_objects(tmp_path):
    hdus = [fits.PrimaryHDU()]
    for n in (1, 2):
        hdus.append(
            fits.BinTableHDU(np.zeros(1, dtype=[("LDAC_IMHEAD", "S10")]), name="LDAC_IMHEAD")
        )
        table = Table({"NUMBER": [1, 2], "EXT_NUMBER": [n, n]})
        hdus.append(fits.BinTableHDU(table, name="LDAC_OBJECTS"))
    path = str(tmp_path / "cat.fits")
    fits.HDUList(hdus).writeto(path)
    out = read_catalog(path)
    assert len(out) == 4 and list(out["EXT_NUMBER"]) == [1, 1, 2, 2]


def test_sersic_stamp_half_light_radius_and_angle():
    stamp = sersic_stamp(1.0, 0.5, 30.0, np.log10(6.0), size=128)
    assert stamp.sum() == pytest.approx(1.0)
    rows, cols = np.mgrid[0:128, 0:128] - 64.0
    theta = np.deg2rad(30.0)
    major = cols * np.cos(theta) + rows * np.sin(theta)
    minor = -cols * np.sin(theta) + rows * np.cos(theta)
    inside = np.hypot(major, minor / 0.5) <= 6.0
    assert stamp[inside].sum() == pytest.approx(0.5, abs=0.03)
    # the second moments put the major axis at 30 deg from +x towards +y (rows)
    mxx, myy, mxy = (stamp * cols**2).sum(), (stamp * rows**2).sum(), (stamp * cols * rows).sum()
    assert np.rad2deg(0.5 * np.arctan2(2 * mxy, mxx - myy)) == pytest.approx(30.0, abs=0.5)


def test_galaxy_tile_truth(tmp_path):
    url = str(tmp_path / "tile.fits")
    sim = galaxy_tile(url, shape=(400, 400), n_galaxies=4, n_stars=3, seed=7, margin=70,
                      min_separation=50, noise=0.0, sky=10.0)  # fmt: skip
    again = galaxy_tile(shape=(400, 400), n_galaxies=4, n_stars=3, seed=7, margin=70,
                        min_separation=50, noise=0.0, sky=10.0)  # fmt: skip
    np.testing.assert_array_equal(sim.image, again.image)
    np.testing.assert_array_equal(fits.getdata(url), sim.image)
    truth = sim.truth
    assert list(truth["KIND"]).count("galaxy") == 4 and list(truth["KIND"]).count("star") == 3
    x, y = truth["X_IMAGE"] - 1, truth["Y_IMAGE"] - 1
    assert np.all((x > 70) & (x < 330) & (y > 70) & (y < 330))
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None]) + np.eye(7) * 1e9
    assert d.min() >= 50
    # noiseless: the image minus sky holds the injected flux (galaxy stamps truncate wings)
    total = (sim.image - 10.0).sum()
    assert 0.9 * truth["FLUX"].sum() < total <= truth["FLUX"].sum() * 1.0001
    stars = galaxy_tile(shape=(300, 300), n_galaxies=0, n_stars=2, seed=1, noise=0.0, sky=0.0)
    star = stars.truth[0]
    sx, sy = int(star["X_IMAGE"] - 1), int(star["Y_IMAGE"] - 1)
    np.testing.assert_allclose(
        stars.image[sy - 12 : sy + 13, sx - 12 : sx + 13],
        gaussian_psf(2.5, 25) * star["FLUX"],
        rtol=1e-5,
        atol=1e-3,
    )
    with pytest.raises(ValueError, match="cannot place"):
        galaxy_tile(shape=(200, 200), n_galaxies=30, margin=60)
