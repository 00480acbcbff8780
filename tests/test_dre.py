"""DRE: model cubes, PSF, convolution, χ² kernels against DRE's formula, summaries, writers."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.table import Table
from scipy.signal import fftconvolve

from cloudlab import dre
from cloudlab.backend import gpu_available
from cloudlab.dre.kernels import chi_block, chi_numba, chi_numpy
from cloudlab.dre.sersic import sersic_stamp
from cloudlab.dre.summary import parabola_log_r, parameters
from cloudlab.simulate.galaxies import gaussian_psf

AXES = {"ax_ratio": (0.2, 0.2, 5), "angle": (0.0, 30.0, 6), "log_r": (0.2, 0.2, 6)}
B = 64


@pytest.fixture(autouse=True)
def _synchronous():
    with dask.config.set(scheduler="synchronous"):
        yield


@pytest.fixture(scope="module")
def grid():
    return dre.model_grid(**AXES, boxsize=B).compute()


def _values(axis):
    start, step, count = axis
    return start + step * np.arange(count)


# ---------------------------------------------------------------- model cubes


def test_model_grid_layout_header_and_roundtrip(tmp_path, grid):
    url = str(tmp_path / "models.fits")
    dre.write_models(grid, url)
    header = fits.getheader(url)
    assert (header["NAXIS1"], header["NAXIS2"], header["NAXIS3"]) == (6 * B, 6 * B, 5)
    assert "NINDEX" not in header
    for key, value in {"NAXRAT": 5, "AXRAT0": 0.2, "DAXRAT": 0.2, "NPOSANG": 6, "POSANG0": 0.0,
                       "DPOSANG": 30.0, "NLOGH": 6, "LOGH0": 0.2, "DLOGH": 0.2,
                       "BOXSIZE": B}.items():  # fmt: skip
        assert header[key] == pytest.approx(value)
    data = fits.getdata(url)
    # stamp (q, t, r) sits at plane q, rows t*B.., columns r*B..
    np.testing.assert_array_equal(data[3, 2 * B : 3 * B, 4 * B : 5 * B], grid.values[0, 3, 2, 4])
    stamp = sersic_stamp(4.0, 0.8, 60.0, 1.0, size=B)
    np.testing.assert_allclose(grid.values[0, 3, 2, 4], stamp, rtol=1e-6, atol=1e-9)
    loaded = dre.load_models(url)
    assert loaded.dims == ("index", "ax_ratio", "angle", "log_r", "y", "x")
    assert loaded.data.numblocks == (1, 5, 1, 1, 1, 1)
    np.testing.assert_allclose(loaded["log_r"], _values(AXES["log_r"]))
    assert loaded["index"].values.tolist() == [4.0]
    np.testing.assert_array_equal(loaded.values, grid.values)


def test_model_grid_with_index_axis(tmp_path):
    url = str(tmp_path / "sersic.fits")
    cube = dre.model_grid(ax_ratio=(0.5, 0.5, 2), angle=(0.0, 90.0, 2), log_r=(0.5, 0.5, 2),
                          index=(1.0, 1.5, 3), boxsize=32, url=url)  # fmt: skip
    header = fits.getheader(url)
    assert (header["NINDEX"], header["INDEX0"], header["DINDEX"]) == (3, 1.0, 1.5)
    assert fits.getdata(url).shape == (3, 2, 64, 64)
    loaded = dre.load_models(url)
    np.testing.assert_allclose(loaded["index"], [1.0, 2.5, 4.0])
    np.testing.assert_array_equal(loaded.values, cube.values)
    # a steeper index concentrates more light in the centre
    centre = loaded.values[:, 0, 0, 0, 16, 16]
    assert centre[0] < centre[1] < centre[2]


def test_load_models_original_modelbulge_layout(tmp_path):
    """A cube as modelbulge.fits: 3-D, no NINDEX and no BOXSIZE key; stamps tagged by index."""
    n_q, n_t, n_r, b = 3, 4, 5, 16
    stamps = np.zeros((n_q, n_t, n_r, b, b), np.float32)
    for q, t, r in np.ndindex(n_q, n_t, n_r):
        stamps[q, t, r] = 100 * q + 10 * t + r
    plane = stamps.transpose(0, 1, 3, 2, 4).reshape(n_q, n_t * b, n_r * b)
    header = fits.Header()
    header.update(NAXRAT=n_q, AXRAT0=0.1, DAXRAT=0.1, NPOSANG=n_t, POSANG0=0.0, DPOSANG=15.0,
                  NLOGH=n_r, LOGH0=-0.7, DLOGH=0.12)  # fmt: skip
    url = str(tmp_path / "modelbulge.fits")
    fits.PrimaryHDU(plane.astype(">f4"), header=header).writeto(url)
    cube = dre.load_models(url)
    assert cube.shape == (1, n_q, n_t, n_r, b, b)
    assert cube["index"].values.tolist() == [4.0]
    np.testing.assert_allclose(cube["log_r"], -0.7 + 0.12 * np.arange(n_r))
    np.testing.assert_array_equal(cube.values[0], stamps)


def test_load_models_header_disagrees(tmp_path):
    url = str(tmp_path / "bad.fits")
    header = fits.Header()
    header.update(NAXRAT=2, AXRAT0=0.1, DAXRAT=0.1, NPOSANG=3, POSANG0=0.0, DPOSANG=15.0,
                  NLOGH=4, LOGH0=0.0, DLOGH=0.1, BOXSIZE=8)  # fmt: skip
    fits.PrimaryHDU(np.zeros((2, 24, 30), np.float32), header=header).writeto(url)
    with pytest.raises(ValueError, match="disagrees with the header"):
        dre.load_models(url)
    del header["NLOGH"]
    fits.PrimaryHDU(np.zeros((2, 24, 32), np.float32), header=header).writeto(url, overwrite=True)
    with pytest.raises(ValueError, match="NLOGH"):
        dre.load_models(url)


# ---------------------------------------------------------------- PSF and convolution


def test_read_psf_cleans_and_rejects_bad_input(tmp_path):
    psf = np.array([[0.0, -1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 2.0, 0.0]])
    out = dre.read_psf(psf)
    assert out.sum() == pytest.approx(1.0) and out.min() == 0.0
    assert out[1, 1] == pytest.approx(0.5)
    url = str(tmp_path / "psf.fits")
    fits.PrimaryHDU(psf.astype(np.float32)).writeto(url)
    np.testing.assert_allclose(dre.read_psf(url), out)
    with pytest.raises(ValueError, match="NaN"):
        dre.read_psf(np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="sums to"):
        dre.read_psf(-np.ones((3, 3)))
    with pytest.raises(ValueError, match="larger than"):
        dre.read_psf(np.ones((9, 9)), boxsize=8)
    with pytest.raises(ValueError, match="2-D"):
        dre.read_psf(np.ones((3, 3, 3)))


@pytest.mark.parametrize("shape", [(7, 7), (6, 9)])
def test_convolution_matches_scipy_same_mode(grid, shape):
    psf = np.random.default_rng(3).random(shape)
    conv = dre.convolve_models(grid, psf).values
    ref = fftconvolve(grid.values.astype(np.float64), (psf / psf.sum())[None, None, None, None],
                      mode="same", axes=(-2, -1))  # fmt: skip
    np.testing.assert_allclose(conv, ref, rtol=0, atol=1e-7 * np.abs(ref).max())
    # stamps split across chunks are reassembled before the FFT
    split = grid.copy(data=dask.array.from_array(grid.values, chunks=(1, 2, 3, 3, 16, 16)))
    np.testing.assert_allclose(dre.convolve_models(split, psf).values, conv, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- χ² against DRE's formula


def _dre_chi(models, psf, obj, seg, rms):
    """DRE's per-cut χ written directly from its formula (float64 numpy)."""
    psf = np.where(psf < 0, 0, psf) / np.where(psf < 0, 0, psf).sum()
    conv = fftconvolve(models.astype(np.float64), psf[None, None, None, None], mode="same",
                       axes=(-2, -1))  # fmt: skip
    out = []
    for d, s, r in zip(obj.astype(np.float64), seg, rms.astype(np.float64), strict=True):
        m = conv[..., s]
        data, var = d[s], r[s] ** 2
        scale = np.nansum(data) / m.sum(axis=-1)
        model = scale[..., None] * m
        out.append(np.nanmean((data - model) ** 2 / (model + var), axis=-1))
    return np.stack(out)


@pytest.fixture(scope="module")
def cuts():
    """Three noisy galaxy cuts on grid cells, one with NaN pixels, with DRE-like masks."""
    rng = np.random.default_rng(11)
    psf = gaussian_psf(2.5, 15)
    cells = [(3, 2, 4), (1, 5, 2), (2, 0, 3)]
    obj, seg, rms = [], [], []
    for q, t, r in cells:
        q_, t_, r_ = (_values(AXES[k])[i] for k, i in zip(AXES, (q, t, r), strict=True))
        galaxy = fftconvolve(sersic_stamp(4.0, q_, t_, r_, size=B), psf, mode="same") * 5e4
        sigma = 3.0 + rng.random((B, B))
        obj.append(galaxy + rng.normal(0, 1, (B, B)) * sigma)
        rms.append(sigma)
        seg.append(galaxy > 2.0)
    obj, rms = np.array(obj, np.float32), np.array(rms, np.float32)
    seg = np.array(seg)
    obj[2, 32, 30] = np.nan  # a NaN data pixel inside the mask
    rms[2, 33, 31] = np.nan  # a NaN rms pixel inside the mask
    ds = xr.Dataset(
        {"obj": (("galaxy", "y", "x"), obj), "seg": (("galaxy", "y", "x"), seg),
         "rms": (("galaxy", "y", "x"), rms)},
        coords={"NUMBER": ("galaxy", [1, 2, 3]), "name": ("galaxy", ["00_0001", "00_0002",
                                                                      "00_0003"])},
    ).chunk({"galaxy": 2})  # fmt: skip
    return ds, psf, cells


def test_chi_equals_dre_formula(grid, cuts):
    ds, psf, cells = cuts
    result = dre.fit(ds, grid, psf)
    chi = result["chi"].values
    assert result["chi"].dims == ("galaxy", "index", "ax_ratio", "angle", "log_r")
    assert chi.dtype == np.float32 and chi.shape == (3, 1, 5, 6, 6)
    ref = _dre_chi(grid.values, psf, ds["obj"].values, ds["seg"].values, ds["rms"].values)
    np.testing.assert_allclose(chi, ref, rtol=1e-3)
    for g in range(3):
        best = np.nanargmin(ref[g])
        assert np.nanargmin(chi[g]) == best
        assert chi[g].ravel()[best] == pytest.approx(ref[g].ravel()[best], rel=1e-5)
        # bright, resolved galaxies: the true grid cell is the best model
        assert np.unravel_index(best, ref[g].shape) == (0, *cells[g])
    assert result["flag"].values.tolist() == [0, 0, 0]


def test_kernels_agree_and_handle_empty_masks():
    rng = np.random.default_rng(5)
    models = rng.random((40, 256), dtype=np.float32) + 0.1
    obj = rng.random((3, 256), dtype=np.float32) * 50
    rms = rng.random((3, 256), dtype=np.float32) + 0.5
    seg = rng.random((3, 256)) > 0.4
    seg[1] = False
    obj[2, np.nonzero(seg[2])[0][:3]] = np.nan
    a, b = chi_numba(models, obj, seg, rms), chi_numpy(models, obj, seg, rms)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert np.all(np.isnan(a[1])) and np.all(np.isfinite(a[[0, 2]]))
    np.testing.assert_array_equal(chi_block(models, obj, seg, rms), a)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU with CuPy")
def test_cupy_kernel_matches_cpu(grid, cuts):
    import cupy

    from cloudlab.backend import to_gpu

    ds, psf, _ = cuts
    cpu = dre.fit(ds, grid, psf)["chi"].values
    gpu_ds = ds.copy()
    for var in ("obj", "seg", "rms"):
        gpu_ds[var] = gpu_ds[var].copy(data=to_gpu(ds[var].data))
    models = grid.copy(data=to_gpu(dask.array.from_array(grid.values, chunks=-1)))
    out = dre.fit(gpu_ds, models, psf)["chi"].data.compute()
    assert isinstance(out, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(out), cpu, rtol=1e-5)


def test_flagged_galaxies_do_not_crash_the_batch(grid, cuts):
    ds, psf, _ = cuts
    ds = ds.compute()
    seg = ds["seg"].values.copy()
    seg[1] = False  # empty mask
    ds["seg"] = (("galaxy", "y", "x"), seg)
    ds["flag"] = ("galaxy", np.array([1, 0, 0], np.uint8))  # NaN in the science cut
    result = dre.fit(ds, grid, psf)
    assert result["flag"].values.tolist() == [1, 2, 0]
    chi = result["chi"].values
    assert np.all(np.isnan(chi[:2])) and np.all(np.isfinite(chi[2]))
    table = dre.summarize(result)
    assert list(table["REASON"]) == ["nan_in_cut", "empty_mask", ""]
    assert list(table["MODEL_IDX"][0]) == [-1, -1, -1, -1] and np.isnan(table["CHI"][1])
    assert np.isfinite(table["CHI"][2])


def test_fit_rejects_mismatched_inputs(grid, cuts):
    ds, psf, _ = cuts
    with pytest.raises(ValueError, match="BOXSIZE"):
        dre.fit(ds.isel(y=slice(0, 32), x=slice(0, 32)), grid, psf)
    with pytest.raises(ValueError, match="larger than"):
        dre.fit(ds, grid, np.ones((65, 65)))
    with pytest.raises(ValueError, match="lack"):
        dre.fit(ds[["obj", "seg"]], grid, psf)


# ---------------------------------------------------------------- summary


def test_parameters_follow_dre_definitions():
    log_r = np.linspace(-0.7, 1.7, 21)
    chi = np.full((1, 2, 3, 21), 50.0)
    x0, a = 0.55, 40.0
    chi[0, 1, 2] = np.exp(a * (log_r - x0) ** 2)  # ln χ is an exact parabola
    axes = {"index": np.array([4.0]), "ax_ratio": np.array([0.5, 1.0]),
            "angle": np.array([0.0, 60.0, 120.0]), "log_r": log_r}  # fmt: skip
    out = parameters(chi, axes)
    r_best = int(np.argmin(np.abs(log_r - x0)))
    assert tuple(out["MODEL_IDX"]) == (0, 1, 2, r_best)
    assert out["CHI"] == chi[0, 1, 2, r_best]
    assert out["CHI_STD"] == pytest.approx(np.std(chi))
    assert out["LOGR_PARAB"] == pytest.approx(x0)
    assert out["LOGR_STD"] == pytest.approx(1 / np.sqrt(2 * a))
    w, radius = 1 / chi, 10**log_r
    mean = (w * radius).sum() / w.sum()
    assert out["LOGR_CHI"] == pytest.approx(np.log10(mean))
    assert out["LOGR_VAR"] == pytest.approx(
        np.log10((w * (radius - radius[r_best]) ** 2).sum() / w.sum())
    )
    assert out["LOGR_CHI_VAR"] == pytest.approx(
        np.log10((w * (radius - mean) ** 2).sum() / w.sum())
    )
    assert (out["INDEX"], out["AX_RATIO"], out["ANGLE"]) == (4.0, 1.0, 120.0)
    assert out["LOGR"] == log_r[r_best]


def test_parabola_edge_rules():
    log_r = np.arange(5) * 0.5
    # minimum at the first cell: centre clamped to 1, vertex left of the axis -> NaN, NaN
    chi = np.exp((log_r + 0.3) ** 2)[None, None, None]
    assert np.all(np.isnan(parabola_log_r(chi, (0, 0, 0, 0), log_r)))
    # minimum at the last cell: vertex right of the axis -> NaN, NaN
    chi = np.exp((log_r - 2.4) ** 2)[None, None, None]
    assert np.all(np.isnan(parabola_log_r(chi, (0, 0, 0, 4), log_r)))
    # minimum at the first cell with the vertex inside the first step -> the vertex
    chi = np.exp((log_r - 0.1) ** 2)[None, None, None]
    assert parabola_log_r(chi, (0, 0, 0, 0), log_r)[0] == pytest.approx(0.1)
    # a concave parabola (a < 0) -> NaN, NaN
    chi = np.exp(-((log_r - 1.0) ** 2))[None, None, None]
    assert np.all(np.isnan(parabola_log_r(chi, (0, 0, 0, 2), log_r)))


# ---------------------------------------------------------------- writers


def test_writers(tmp_path, grid, cuts):
    import h5py

    ds, psf, _ = cuts
    result = dre.fit(ds, grid, psf)
    table = dre.summarize(result)
    assert table.colnames[:15] == ["ROW", "MODEL_IDX", "CHI", "CHI_STD", "LOGR_CHI", "LOGR_VAR",
                                   "LOGR_CHI_VAR", "LOGR_PARAB", "LOGR_STD", "INDEX", "LOGR",
                                   "AX_RATIO", "ANGLE", "EXT_NUMBER", "NUMBER"]  # fmt: skip
    dre.write_summary(table, str(tmp_path / "Summary" / "t_dre.fits"))
    back = Table.read(tmp_path / "Summary" / "t_dre.fits")
    np.testing.assert_array_equal(back["MODEL_IDX"], table["MODEL_IDX"])

    chi_url = str(tmp_path / "Chi" / "t_chi.h5")
    assert dre.write_chi_hdf5(result, chi_url, compression="high") == 3
    with h5py.File(chi_url) as h5:
        assert sorted(h5) == ["00_0001", "00_0002", "00_0003"]
        assert h5["00_0002"].dtype == np.float32 and h5["00_0002"].shape == (1, 5, 6, 6)
        assert h5["00_0002"].compression == "gzip"
    np.testing.assert_array_equal(dre.read_chi_hdf5(chi_url)["00_0003"], result["chi"].values[2])

    zarr_url = str(tmp_path / "Chi" / "t_chi.zarr")
    dre.write_chi_zarr(result, zarr_url)
    np.testing.assert_array_equal(xr.open_zarr(zarr_url)["chi"].values, result["chi"].values)

    cuts_url = str(tmp_path / "Cuts" / "t_cuts.h5")
    assert dre.write_cuts_hdf5(ds, cuts_url) == 3
    back_cuts = dre.read_cuts_hdf5(cuts_url)
    np.testing.assert_array_equal(back_cuts["obj"].values, ds["obj"].values)
    assert back_cuts["seg"].dtype == bool and list(back_cuts["NUMBER"].values) == [1, 2, 3]

    mosaic = dre.mosaics(result, ds)
    assert mosaic.shape == (3, B, 4 * B)
    image = mosaic.values[0]
    np.testing.assert_allclose(image[:, :B] - image[:, 2 * B : 3 * B], image[:, 3 * B :])
    files = dre.write_mosaics(mosaic, str(tmp_path / "Mosaics" / "t"), prefix="t_")
    assert len(files) == 3 and (tmp_path / "Mosaics" / "t" / "t_00_0001_mosaic.png").exists()
    np.testing.assert_allclose(fits.getdata(files[0]), image)
    with pytest.raises(ValueError, match="compression"):
        dre.write_chi_hdf5(result, chi_url, compression="max")


def test_chi_hdf5_is_written_a_bounded_batch_at_a_time(tmp_path, grid, cuts):
    """χ never reaches the client whole: the HDF5 writer and the Summary compute one batch of
    about array.chunk-size at a time."""
    from dask.callbacks import Callback

    ds, psf, _ = cuts
    result = dre.fit(ds.chunk(galaxy=1), grid, psf)  # three chunks of one galaxy
    one = result["chi"].data[:1].nbytes
    truth = result["chi"].values

    def computes(limit, url):
        runs = []
        with dask.config.set({"array.chunk-size": limit}), Callback(start=runs.append):
            assert dre.write_chi_hdf5(result, str(tmp_path / url), progress=False) == 3
        back = dre.read_chi_hdf5(str(tmp_path / url))
        for i, name in enumerate(["00_0001", "00_0002", "00_0003"]):
            np.testing.assert_array_equal(back[name], truth[i].astype(np.float32))
        return len(runs)

    whole = computes(100 * one, "all.h5")  # every galaxy in one compute
    assert computes(one, "one.h5") == whole + 2  # a compute per chunk
    assert computes(2 * one, "two.h5") == whole + 1  # two chunks, then one

    def summary(limit):
        runs = []
        with dask.config.set({"array.chunk-size": limit}), Callback(start=runs.append):
            return dre.summarize(result), len(runs)

    table, whole = summary(100 * one)
    for limit, more in ((one, 2), (2 * one, 1)):  # the Summary is built batch by batch too
        batched, n = summary(limit)
        assert n == whole + more
        for column in ("MODEL_IDX", "CHI", "LOGR_PARAB", "FLAG", "REASON"):
            np.testing.assert_array_equal(batched[column], table[column])


def test_no_selected_galaxy_gives_empty_products(tmp_path, grid):
    from cloudlab.dre.cuts import open_cuts

    tile, seg = str(tmp_path / "tile.fits"), str(tmp_path / "seg.fits")
    fits.PrimaryHDU(np.zeros((200, 200), np.float32)).writeto(tile)
    fits.PrimaryHDU(np.zeros((200, 200), np.int32)).writeto(seg)
    catalog = Table({"NUMBER": [1], "X_IMAGE": [10.0], "Y_IMAGE": [10.0], "CLASS_STAR": [0.1]})
    cuts = open_cuts(tile, catalog, size=B, margin=40, rms=1.0, segmentation=seg)
    assert cuts.sizes["galaxy"] == 0
    result = dre.fit(cuts, grid, gaussian_psf(2.0, 9))
    assert result["chi"].shape == (0, 1, 5, 6, 6)
    assert len(dre.summarize(result)) == 0
    assert dre.write_chi_hdf5(result, str(tmp_path / "chi.h5")) == 0


def test_load_models_reads_one_plane_per_chunk(tmp_path, grid, monkeypatch):
    import cloudlab.fits

    url = str(tmp_path / "models.fits")
    dre.write_models(grid, url)
    calls = []
    original = cloudlab.fits.read_region
    monkeypatch.setattr(
        cloudlab.fits,
        "read_region",
        lambda info, index: calls.append(index) or original(info, index),
    )
    cube = dre.load_models(url)
    assert calls == []  # opening reads the header only
    stamp = cube[0, 2, 1, 3].values
    assert len(calls) == 1 and calls[0][0] == slice(2, 3)  # plane q = 2 only
    np.testing.assert_array_equal(stamp, grid.values[0, 2, 1, 3])
