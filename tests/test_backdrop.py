"""BackDrop: model pieces against explicit formulas, the fit against simulated truth, I/O."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from _paths import REAL_FFI
from astropy.io import fits

from cloudlab import backdrop
from cloudlab.backdrop import basis, kernels, masks
from cloudlab.backdrop.fit import model_grid
from cloudlab.backdrop.solver import (
    SPLINE_PRIOR,
    STRAP_PRIOR,
    _zeroed,
    build_solver,
)
from cloudlab.backend import gpu_available
from cloudlab.io.tess import open_ffis
from cloudlab.simulate.ffis import ffi_stack

SHAPE = (256, 256)
NKNOTS = 16


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Four simulated frames of CCD 2 (boresight at column 0), frame 1 flagged."""
    dest = tmp_path_factory.mktemp("ffis")
    truth = ffi_stack(str(dest), n_frames=4, shape=SHAPE, seed=11, ccd=2, bad_frames=[1])
    return truth, open_ffis(str(dest / "*.fits"))


@pytest.fixture(scope="module")
def weights(stack):
    _, ffis = stack
    with dask.config.set(scheduler="sync"):
        return backdrop.fit(ffis, nknots=NKNOTS, frames_per_batch=3).compute()


def test_knots_are_tess_backdrops():
    k = basis.knots(np.arange(2048), 40, 2)
    assert len(k) == 42
    np.testing.assert_allclose(k[:4], [0, 0, 53.5, 107.5])
    np.testing.assert_allclose(k[-6:], [1888.5, 1941.5, 1994.5, 2047, 2047, 2047])
    b = basis.spline_basis(np.arange(2048), k, 2)
    assert b.shape == (2048, 40)
    np.testing.assert_allclose(b.sum(axis=1), 1.0, atol=1e-12)  # partition of unity
    with pytest.raises(ValueError, match="outside the fitted range"):
        basis.spline_basis(np.array([2048.0]), k, 2)


@pytest.mark.parametrize("ccd", [1, 2, 3, 4])
def test_radial_term_uses_boresight_row_for_every_ccd(ccd):
    rows, cols = np.arange(0, 2048, 97), np.arange(3, 2048, 131)
    w = np.zeros((1, 29))
    w[0, 25] = 1.0  # rho**1 only
    grid = basis.poly_grid(w, rows, cols, 5, 5, ccd)[0]
    bore_row, bore_col = (2048, 2048) if ccd in (1, 3) else (2048, 0)
    expect = np.hypot((rows[:, None] - bore_row) / 2048, (cols[None, :] - bore_col) / 2048)
    np.testing.assert_allclose(grid, expect, rtol=1e-12)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    design = basis.poly_design(rr.ravel(), cc.ravel(), 5, 5, ccd)
    full = np.random.default_rng(ccd).normal(size=(1, 29))
    np.testing.assert_allclose(
        basis.poly_grid(full, rows, cols, 5, 5, ccd)[0].ravel(), design @ full[0], rtol=1e-10
    )


def _assert_same_background(a, b, rows, cols, atol):
    """Weights ``a`` and ``b`` give the same background at ``rows`` x ``cols``."""
    np.testing.assert_allclose(
        backdrop.evaluate(a, rows, cols).values,
        backdrop.evaluate(b, rows, cols).values,
        atol=atol,
    )


def _explicit_solution(mask, frames, solver, poly_w):
    """tess-backdrop's way: explicit design matrix, normal equations solved per frame."""
    n_r, n_c = mask.shape
    br = basis.spline_basis(solver.rows, solver.row_knots, 2)
    bc = basis.spline_basis(solver.columns, solver.column_knots, 2)
    k_r, k_c = br.shape[1], bc.shape[1]
    xs = np.einsum("ri,cj->rcji", br, bc).reshape(n_r * n_c, k_c * k_r)
    xk = np.tile(np.eye(n_c), (n_r, 1))
    x = np.hstack([xs, xk])
    xm = x[mask.ravel()]
    prior = np.r_[np.full(k_c * k_r, SPLINE_PRIOR**-2), np.full(n_c, STRAP_PRIOR**-2)]
    normal = xm.T @ xm + np.diag(prior)
    rr, cc = np.meshgrid(solver.rows, solver.columns, indexing="ij")
    p = basis.poly_design(rr.ravel(), cc.ravel(), solver.npoly, solver.nrad, solver.ccd)
    models = []
    for t in range(len(frames)):
        res = frames[t].astype(float) - (p @ poly_w[t]).reshape(n_r, n_c)
        res[_zeroed(res.astype(np.float32), np)] = 0.0
        w = np.linalg.solve(normal, xm.T @ res.ravel()[mask.ravel()])
        models.append((x @ w).reshape(n_r, n_c))
    return np.array(models)


@pytest.mark.parametrize("use_numba", [False, True])
def test_separable_cholesky_solve_equals_explicit_design_matrix(use_numba, monkeypatch):
    if use_numba and not kernels.AVAILABLE:
        pytest.skip("numba not installed")
    monkeypatch.setattr(kernels, "AVAILABLE", use_numba)
    rng = np.random.default_rng(0)
    n_r, n_c = 48, 56
    mask = rng.random((n_r, n_c)) > 0.25
    solver = build_solver(mask, np.arange(n_r), np.arange(n_c), ccd=4, nknots=7)
    rr = np.arange(n_r)[:, None]
    frames = 100 + 5 * np.sin(rr / 9.0) + rng.normal(0, 1, (3, n_r, n_c))
    frames[0, 10:14, 20] += 3000.0  # zeroed by the |res| > 500 rule
    frames = frames.astype(np.float32)
    poly_w, spline_w, strap_w = solver.fit_frames(frames)
    ours = model_grid(solver, poly_w, spline_w, strap_w) - model_grid(
        solver, poly_w, 0 * spline_w, 0 * strap_w
    )
    reference = _explicit_solution(mask, frames, solver, poly_w)
    np.testing.assert_allclose(ours, reference, atol=2e-3)


def test_numba_and_array_paths_agree(monkeypatch):
    if not kernels.AVAILABLE:
        pytest.skip("numba not installed")
    rng = np.random.default_rng(1)
    mask = rng.random((64, 72)) > 0.2
    solver = build_solver(mask, np.arange(64), np.arange(72), ccd=1, nknots=8)
    frames = (50 + rng.normal(0, 2, (2, 64, 72))).astype(np.float32)
    frames[1, 5, 5] = np.nan
    fast = solver.fit_frames(frames)
    monkeypatch.setattr(kernels, "AVAILABLE", False)
    slow = solver.fit_frames(frames)
    zero = (0 * fast[1], 0 * fast[2])
    np.testing.assert_allclose(  # the polynomial stage alone
        model_grid(solver, fast[0], *zero), model_grid(solver, slow[0], *zero), atol=1e-3
    )
    np.testing.assert_allclose(model_grid(solver, *fast), model_grid(solver, *slow), atol=1e-3)


def test_fit_recovers_the_simulated_background(stack, weights):
    truth, ffis = stack
    assert weights.sizes["time"] == 4
    assert weights["spline_w"].shape == (4, NKNOTS, NKNOTS)
    assert weights["strap_w"].shape == (4, SHAPE[1])
    assert weights["poly_w"].shape == (4, 29)
    np.testing.assert_array_equal(weights["quality"].values, [0, 32, 0, 0])
    model = backdrop.evaluate(weights, ffis.row.values, ffis.column.values).values
    good = weights["star_mask"].values
    assert 0.6 < good.mean() < 0.99
    for k in range(4):  # the flagged frame is fitted too
        err = np.abs(model[k] - truth.background(k))[good]
        assert np.median(err) < 0.15, k
        assert np.percentile(err, 99) < 1.5, k
    # the masks cover the saturated stars
    for r, c in truth.saturated:
        assert not good[r, c]
        assert not weights["sat_mask"].values[r, c]


def test_fit_is_lazy_and_validates_early(stack):
    _, ffis = stack
    lazy = backdrop.fit(ffis, nknots=NKNOTS)
    assert isinstance(lazy["poly_w"].data, da.Array)
    flagged = ffis.assign_coords(quality=ffis["quality"] * 0 + 128)
    with pytest.raises(ValueError, match="bad quality bits"):
        backdrop.fit(flagged)
    with pytest.raises(ValueError, match="spline knots"):
        backdrop.fit(ffis.isel(row=slice(0, 20)), nknots=40)
    with pytest.raises(ValueError, match="ccd must be"):
        backdrop.fit(ffis.assign_attrs(ccd=7))


def test_no_unmasked_pixels_is_an_error():
    with pytest.raises(ValueError, match="no unmasked pixels"):
        build_solver(np.zeros((32, 32), bool), np.arange(32), np.arange(32), ccd=1, nknots=5)


def test_evaluate_subgrid_times_and_errors(stack, weights):
    _, ffis = stack
    full = backdrop.evaluate(weights, ffis.row.values, ffis.column.values).values
    rows, cols = np.array([3, 40, 41, 200]), np.array([0, 17, 255])
    sub = backdrop.evaluate(weights, rows, cols, times=[2, 0])
    assert sub.dims == ("time", "row", "column")
    np.testing.assert_allclose(sub.values, full[[2, 0]][:, rows][:, :, cols], atol=1e-9)
    by_time = backdrop.evaluate(weights, rows, cols, times=weights["time"].values[[3]] + 0.005)
    np.testing.assert_allclose(by_time.values[0], full[3][rows][:, cols], atol=1e-9)
    with pytest.raises(ValueError, match="columns outside"):
        backdrop.evaluate(weights, rows, np.array([256]))
    with pytest.raises(ValueError, match="rows outside"):
        backdrop.evaluate(weights, np.array([-1]), cols)
    with pytest.raises(ValueError, match="outside every fitted frame"):
        backdrop.evaluate(weights, rows, cols, times=[1000.0])
    with pytest.raises(ValueError, match="out of range"):
        backdrop.evaluate(weights, rows, cols, times=[9])


def test_ccd_science_coordinates():
    r, c = backdrop.ccd_to_science(np.array([1, 2048]), np.array([45, 2092]))
    np.testing.assert_array_equal(r, [0, 2047])
    np.testing.assert_array_equal(c, [0, 2047])
    np.testing.assert_array_equal(backdrop.science_to_ccd(r, c)[1], [45, 2092])


def test_fits_roundtrip_in_tess_backdrop_layout(tmp_path, stack, weights):
    _, ffis = stack
    url = str(tmp_path / "tessbackdrop_sector1_camera1_ccd2.fits")
    backdrop.save(weights, url)
    with fits.open(url) as hdul:
        assert [h.name for h in hdul][3:6] == ["SPLINE_W", "STRAP_W", "POLY_W"]
        head = hdul[0].header
        assert (head["NKNOTS"], head["NPOLY"], head["NRAD"], head["DEGREE"]) == (NKNOTS, 5, 5, 2)
        assert (head["SECTOR"], head["CAMERA"], head["CCD"]) == (1, 1, 2)
        assert "T_START" in hdul[1].columns.names and "QUALITY" in hdul[1].columns.names
        assert len(hdul[2].data["KNOTS"]) == NKNOTS + 2
        assert hdul["SPLINE_W"].data.shape == (4, NKNOTS, NKNOTS)
        np.testing.assert_allclose(hdul[1].data["T_START"], ffis["tstart_tjd"].values)
    loaded = backdrop.load(url)
    _assert_same_background(loaded, weights, np.arange(0, 256, 7), np.arange(1, 256, 5), 1e-10)
    np.testing.assert_array_equal(loaded["quality"].values, weights["quality"].values)
    bad = tmp_path / "bad.fits"
    fits.PrimaryHDU().writeto(bad)
    with pytest.raises(ValueError, match="not a BackDrop weights file"):
        backdrop.load(str(bad))


def test_zarr_roundtrip(tmp_path, weights):
    url = str(tmp_path / "w.zarr")
    backdrop.save(weights, url)
    loaded = backdrop.load(url)
    _assert_same_background(loaded, weights, np.arange(0, 256, 9), np.arange(0, 256, 11), 1e-10)
    np.testing.assert_array_equal(loaded["star_mask"].values, weights["star_mask"].values)
    with pytest.raises(FileExistsError):
        backdrop.save(weights, url)
    with pytest.raises(ValueError, match="cannot tell the format"):
        backdrop.save(weights, str(tmp_path / "w.npz"))


def test_subtract_cutouts(stack, weights):
    truth, ffis = stack
    corners = np.array([[10, 44 + 20], [100, 44 + 250], [250, 44 + 5]])  # 0-based CCD pixels
    size = 12
    flux = []
    for r0, c0 in corners:
        r = np.clip(np.arange(r0, r0 + size), 0, SHAPE[0] - 1)
        c = np.clip(np.arange(c0, c0 + size) - 44, 0, SHAPE[1] - 1)
        flux.append(ffis["flux"].values[:, r][:, :, c])
    cutouts = xr.Dataset(
        {"flux": (("target", "time", "row", "column"), np.array(flux))},
        coords={
            "time": ffis["time"].values,
            "corner_row": ("target", corners[:, 0]),
            "corner_column": ("target", corners[:, 1]),
            "ccd": ("target", [2, 2, 2]),
        },
    )
    out = backdrop.subtract(cutouts, weights)
    bkg = out["background"].values
    r0, c0 = corners[0]
    expect = backdrop.evaluate(
        weights, np.arange(r0, r0 + size), np.arange(c0 - 44, c0 - 44 + size)
    ).values
    np.testing.assert_allclose(bkg[0], expect, atol=1e-9)
    true0 = np.array([truth.background(k, np.arange(r0, r0 + size)) for k in range(4)])
    true0 = true0[:, :, c0 - 44 : c0 - 44 + size]
    assert np.median(np.abs(bkg[0] - true0)) < 0.3
    np.testing.assert_allclose(out["flux"].values, cutouts["flux"].values - bkg, atol=1e-3)
    assert np.isnan(bkg[1][:, :, -6:]).all()  # columns past the science region
    assert np.isfinite(bkg[1][:, :, :6]).all()
    assert np.isnan(bkg[2][:, -6:]).all()  # rows past the fitted region
    with pytest.raises(ValueError, match="ccd"):
        backdrop.subtract(cutouts.assign_coords(ccd=("target", [1, 1, 1])), weights)
    with pytest.raises(ValueError, match="corner_row"):
        backdrop.subtract(cutouts.drop_vars("corner_row"), weights)


def test_saturation_mask_rules():
    img = np.zeros((200, 200))
    assert masks.saturation_mask(img).all()  # no saturated pixel: no crash
    img[80:121, 100] = 2e5  # a 41-pixel bleed column
    ok = masks.saturation_mask(img)
    assert not ok[80:121, 96:105].any()  # the column grown 4 px sideways
    assert not ok[98:102, 80:120].any()  # the whisker about the run centre (row 100)
    assert ok[100, 125] and ok[10, 10]
    star = np.zeros((50, 50))
    star[25, 25] = 100.0
    soft = masks.star_gradient_mask(star)
    assert soft[24, 25] and soft[25, 24] and not soft[0, 0]


def test_frame_batches():
    assert [len(b) for b in masks.frame_batches(12)] == [6, 6]
    assert len(masks.frame_batches(400)) == 20
    assert [len(b) for b in masks.frame_batches(3)] == [3]
    np.testing.assert_array_equal(masks.good_frames([0, 32, 2048, 4096, 1, 64]), [1, 0, 0, 1, 0, 1])


@pytest.mark.gpu
def test_gpu_fit_matches_cpu(stack, weights):
    if not gpu_available():
        pytest.skip("no GPU")
    _, ffis = stack
    with dask.config.set(scheduler="sync"):
        on_gpu = backdrop.fit(ffis, nknots=NKNOTS, frames_per_batch=2, gpu=True).compute()
    _assert_same_background(on_gpu, weights, ffis.row.values, ffis.column.values, 1e-2)


@pytest.mark.skipif(not REAL_FFI.exists(), reason=f"real trimmed FFI not found at {REAL_FFI}")
def test_fit_on_the_real_trimmed_ffi():
    """CCD 4 (boresight at column 0), 128 x 129 science pixels, fitted as tess-backdrop's test."""
    ffis = open_ffis(str(REAL_FFI))
    with dask.config.set(scheduler="sync"):
        weights = backdrop.fit(ffis, nknots=5).compute()
    assert weights.attrs["bore_column"] == 0.0
    model = backdrop.evaluate(weights, ffis.row.values, ffis.column.values).values[0]
    data = ffis["flux"].values[0]
    good = weights["star_mask"].values
    assert 0.3 < good.mean() < 0.95
    sky = data[good]
    assert abs(np.median(model[good]) - np.median(sky)) < 3.0  # ~150 e/s sky
    assert np.percentile(sky, 1) < model.min() and model.max() < np.percentile(sky, 99)


def test_in_memory_stack_with_a_blank_frame(stack):
    truth, ffis = stack
    mem = ffis.drop_vars("url").compute()  # a copy: the fixture stays lazy
    mem["flux"][2] = np.nan
    mem["flux"][0, 10:20, 30:40] = np.nan
    with dask.config.set(scheduler="sync"):
        w = backdrop.fit(mem, nknots=NKNOTS).compute()
    assert np.isnan(w["poly_w"].values[2]).all() and np.isnan(w["strap_w"].values[2]).all()
    assert np.isfinite(w["spline_w"].values[[0, 1, 3]]).all()
    model = backdrop.evaluate(w, mem.row.values, mem.column.values, times=[0]).values[0]
    good = w["star_mask"].values
    assert np.median(np.abs(model - truth.background(0))[good]) < 0.15


def test_write_read_pairs_and_overwrite_policy(tmp_path, weights):
    from cloudlab.errors import OverwriteError

    url = str(tmp_path / "w.fits")
    assert backdrop.write_weights_fits(weights, url) == url
    back = backdrop.read_weights_fits(url)
    np.testing.assert_allclose(back["strap_w"].values, weights["strap_w"].values)
    with pytest.raises(OverwriteError, match="w.fits already exists"):
        backdrop.write_weights(weights, url)
    backdrop.write_weights(weights.isel(time=[0]), url, overwrite=True)
    assert backdrop.read_weights(url).sizes["time"] == 1
    masks_url = str(tmp_path / "masks.fits")
    backdrop.write_masks_fits(weights, masks_url)
    masks = backdrop.read_masks_fits(masks_url)
    np.testing.assert_array_equal(masks["star_mask"].values, weights["star_mask"].values)
    np.testing.assert_allclose(masks["average_image"].values, weights["average_image"].values)
    with pytest.raises(ValueError, match="not a BackDrop masks file"):
        backdrop.read_masks_fits(url)
    assert backdrop.save is backdrop.write_weights and backdrop.load is backdrop.read_weights


def test_zarr_overwrite_keeps_previous_weights_when_the_fit_fails(tmp_path, stack, weights):
    _, ffis = stack
    url = str(tmp_path / "w.zarr")
    backdrop.write_weights_zarr(weights, url)

    def lost(block):
        raise RuntimeError("worker lost")

    broken = weights.copy()
    strap = da.from_array(weights["strap_w"].values, chunks=(1, -1))
    broken["strap_w"] = (("time", "column"), strap.map_blocks(lost, dtype=float))
    with pytest.raises(RuntimeError, match="worker lost"):
        backdrop.write_weights_zarr(broken, url, overwrite=True, progress=False)
    np.testing.assert_array_equal(
        backdrop.read_weights_zarr(url)["strap_w"].values, weights["strap_w"].values
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.zarr"]


def test_fit_takes_an_explicit_frame_source(stack, weights):
    from cloudlab.errors import InputError
    from cloudlab.io.tess_ffi import frame_source

    _, ffis = stack
    source = frame_source(ffis)
    assert source.box == (0, 44, SHAPE[0], SHAPE[1])
    with dask.config.set(scheduler="sync"):
        again = backdrop.fit(ffis, nknots=NKNOTS, frames_per_batch=3, source=source).compute()
    np.testing.assert_allclose(again["poly_w"].values, weights["poly_w"].values, rtol=1e-10)
    assert (again.attrs["image_row_offset"], again.attrs["image_column_offset"]) == (0, 44)
    with pytest.raises(InputError, match="frame source has 4 frames"):
        backdrop.fit(ffis.isel(time=[0, 2, 3]), nknots=NKNOTS, source=source)


@pytest.mark.parametrize("in_memory", [False, True])
def test_graph_layers_do_not_grow_with_batches(stack, weights, in_memory):
    """A task per batch of frames, all in one layer: batching changes tasks, not layers."""
    _, ffis = stack
    if in_memory:  # frames taken from the dataset's chunks, not read from the files
        ffis = ffis.drop_vars("url").compute()
    layers = []
    for fpb in (4, 1, 3):
        fitted = backdrop.fit(ffis, nknots=NKNOTS, frames_per_batch=fpb)
        layers.append(len(fitted.__dask_graph__().layers))
        assert fitted["poly_w"].data.numblocks[0] == -(-4 // fpb)
    assert layers[1:] == layers[:1] * 2
    with dask.config.set(scheduler="sync"):
        fitted = fitted.compute()
    for name in ("poly_w", "spline_w", "strap_w", "average_image", "star_mask"):
        np.testing.assert_allclose(fitted[name].values, weights[name].values, rtol=1e-6, atol=1e-9)
    assert fitted["status"].values.tolist() == weights["status"].values.tolist()


def test_average_image_median_in_bands_of_rows(stack):
    """With a small task size the batch means' per-pixel median is taken in bands of rows, a
    task per band, and the solver task gets the median image only: the fit is the same, bit for
    bit, as with one band, and the average image is prepare_solver's on the whole means."""
    from cloudlab.backdrop.fit import (
        MEDIAN_ROW_SHARE,
        average_batches,
        median_rows_per_task,
        prepare_solver,
    )

    _, ffis = stack
    four = ffis.drop_vars("url").compute()
    copies = []  # 20 frames, 15 good (3 batch means of 5)
    for k in range(5):
        copy = four.assign_coords(time=four["time"] + k)
        copy["flux"] = copy["flux"] * (1 + 0.01 * k)
        copies.append(copy)
    ffis20 = xr.concat(copies, "time", coords="minimal", compat="override")
    ffis20["flux"][[0, 2, 3, 4, 6], 10:20, 30:40] = np.nan  # NaN in the first batch's mean
    ffis20["flux"][:, 100:102, 100:102] = np.nan  # and in every mean
    ffis20["flux"] = ffis20["flux"].chunk({"time": 1})

    def median_tasks(result):
        layers = result.__dask_graph__().layers
        return sum(
            len(layer) for name, layer in layers.items() if name.startswith("backdrop-median-")
        )

    one = backdrop.fit(ffis20, nknots=NKNOTS, frames_per_batch=4)
    assert median_tasks(one) == 1
    row_bytes = MEDIAN_ROW_SHARE * 4 * 3 * SHAPE[1]
    with dask.config.set({"array.chunk-size": 20 * row_bytes}):
        assert median_rows_per_task(3, SHAPE[1], SHAPE[0]) == 20
        banded = backdrop.fit(ffis20, nknots=NKNOTS, frames_per_batch=4)
    assert median_tasks(banded) == -(-SHAPE[0] // 20)
    with dask.config.set(scheduler="sync"):
        one, banded = dask.compute(one, banded)
        means = dask.compute(average_batches(ffis20, masks.good_frames(ffis20["quality"].values)))
    assert len(means[0]) == 3
    assert np.isnan(means[0][0]).sum() == 104 and np.isnan(means[0][1]).sum() == 4
    assert np.isnan(banded["average_image"].values).sum() == 0
    for name in ("poly_w", "spline_w", "strap_w", "average_image", "star_mask", "sat_mask"):
        np.testing.assert_array_equal(banded[name].values, one[name].values)
    solver = prepare_solver(
        means[0], ffis20["row"].values, ffis20["column"].values, ccd=2, npoly=5, nrad=5,
        nknots=NKNOTS, degree=2,
    )  # fmt: skip
    np.testing.assert_array_equal(banded["average_image"].values, solver.average)
    np.testing.assert_array_equal(banded["star_mask"].values, solver.mask)


def test_evaluate_and_subtract_task_sizes_follow_the_chunk_size(stack, weights):
    """Frames per evaluate task (16 bytes per model pixel) and targets per subtract task (the
    flux, a float64 background, its cast and the result) come from items_per_task; the values
    do not depend on them."""
    _, ffis = stack
    rows, cols = ffis.row.values, ffis.column.values
    whole = backdrop.evaluate(weights, rows, cols)
    assert whole.data.numblocks[0] == 1
    with dask.config.set({"array.chunk-size": 2 * 16 * SHAPE[0] * SHAPE[1]}):
        split = backdrop.evaluate(weights, rows, cols)
    assert split.data.chunks[0] == (2, 2)
    np.testing.assert_array_equal(split.values, whole.values)

    size = 12
    flux = np.stack([ffis["flux"].values[:, r : r + size, c : c + size] for r, c in
                     [(10, 20), (100, 200), (30, 40)]])  # fmt: skip
    cutouts = xr.Dataset(
        {"flux": (("target", "time", "row", "column"), flux)},
        coords={"time": ffis["time"].values, "corner_row": ("target", [10, 100, 30]),
                "corner_column": ("target", [64, 244, 84])},
    )  # fmt: skip
    one = backdrop.subtract(cutouts, weights)
    assert one["flux"].data.numblocks[0] == 1
    per_target = 4 * size * size * (3 * 4 + 8)
    with dask.config.set({"array.chunk-size": 2 * per_target}):
        two = backdrop.subtract(cutouts, weights)
    assert two["flux"].data.chunks[0] == (2, 1)
    np.testing.assert_array_equal(two["background"].values, one["background"].values)
    np.testing.assert_array_equal(two["flux"].values, one["flux"].values)
    np.testing.assert_allclose(one["background"].values[0], whole.values[:, 10:22, 20:32])
