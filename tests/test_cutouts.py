"""Batched cube cutouts (equal to astrocut), TPFs lightkurve reads, the CLI."""

from __future__ import annotations

import json
import os

import dask
import fsspec
import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from dask.core import get_deps

from cloudlab import fits as cf
from cloudlab import storage
from cloudlab.cutouts import cutout_wcs, make_cutouts, write_tpfs
from cloudlab.cutouts.cutout import cutout_boxes
from cloudlab.fits import regions
from cloudlab.fits.regions import plan_reads
from cloudlab.io.tess import cube_meta
from cloudlab.simulate import tess_sector

SHAPE = (104, 107)


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("cubes"))
    one = tess_sector(dest, ccd=1, n_frames=12, shape=SHAPE, ffis=False, seed=4)
    two = tess_sector(dest, ccd=2, n_frames=12, shape=SHAPE, ffis=False, seed=5)
    return dest, one, two


@pytest.fixture(autouse=True)
def _sync_scheduler():
    with dask.config.set(scheduler="synchronous"):
        yield


def _targets_at(sim, pixels, first_id=1):
    ra, dec = sim.wcs.all_pix2world(np.asarray(pixels, dtype=float), 0).T
    return pd.DataFrame({"ticid": np.arange(len(ra)) + first_id, "ra": ra, "dec": dec})


def _astrocut(url, ra, dec, size_xy):
    from astrocut import TessCubeCutout

    coord = SkyCoord(ra, dec, unit="deg")
    return TessCubeCutout(url, coordinates=coord, cutout_size=list(size_xy)).cutouts[0]


# centres inside, near each edge and corner, half off the image, and between pixels
PIXELS = [[50.2, 40.7], [0.4, 0.3], [106.6, 103.2], [-0.8, 50.0], [53.5, 103.4], [70.49, 20.51]]


@pytest.mark.parametrize("size", [10, (7, 9), (1, 3)])
def test_values_equal_astrocut(sims, size):
    _, one, _ = sims
    targets = _targets_at(one, PIXELS)
    ds = make_cutouts(targets, cube_url=one.cube_url, size=size).compute()
    ny, nx = (size, size) if np.ndim(size) == 0 else size
    assert ds["flux"].shape == (len(targets), 12, ny, nx)
    for i, t in targets.iterrows():
        ref = _astrocut(one.cube_url, t["ra"], t["dec"], (nx, ny))
        np.testing.assert_array_equal(ds["flux"][i].values, ref.data)
        np.testing.assert_array_equal(ds["flux_err"][i].values, ref.uncertainty)
        np.testing.assert_array_equal(ds["aperture"][i].values, ref.aperture)
        (c0, _), (r0, _) = ref.cutout_lims
        assert (int(ds["corner_column"][i]), int(ds["corner_row"][i])) == (c0, r0)
    assert np.isnan(ds["flux"][3].values[:, :, :2]).all()  # off the left edge: NaN padding
    np.testing.assert_allclose(ds["time"], 0.5 * (one.tstart + one.tstop))
    assert ds["ticid"].values.tolist() == targets["ticid"].tolist()


def test_cutout_wcs_places_target(sims):
    _, one, _ = sims
    targets = _targets_at(one, [[30.3, 60.6]])
    ds = make_cutouts(targets, cube_url=one.cube_url, size=8)
    x, y = cutout_wcs(ds, 0).all_world2pix([[targets["ra"][0], targets["dec"][0]]], 0)[0]
    assert (x + int(ds["corner_column"][0]), y + int(ds["corner_row"][0])) == pytest.approx(
        (30.3, 60.6), abs=1e-6
    )


def test_grouped_by_cube_in_input_order(sims):
    dest, one, two = sims
    a = _targets_at(one, [[30, 30], [60, 70], [90, 20]], first_id=100)
    b = _targets_at(two, [[40, 50], [20, 80]], first_id=200)
    targets = pd.concat([a.iloc[[0]], b.iloc[[0]], a.iloc[[1]], b.iloc[[1]], a.iloc[[2]]])
    ds = make_cutouts(targets, sector=55, cube_base=dest, size=6).compute()
    assert ds["ticid"].values.tolist() == [100, 200, 101, 201, 102]
    assert ds["ccd"].values.tolist() == [1, 2, 1, 2, 1]
    for i, t in enumerate(targets.itertuples()):
        url = one.cube_url if ds["ccd"][i] == 1 else two.cube_url
        np.testing.assert_array_equal(
            ds["flux"][i].values, _astrocut(url, t.ra, t.dec, (6, 6)).data
        )


def _interleaved(sims, n):
    """``n`` targets per cube, alternating between the two cubes."""
    dest, one, two = sims
    rng = np.random.default_rng(n)
    parts = [
        _targets_at(sim, rng.uniform(5, 95, (n, 2)), first_id=1000 * (k + 1))
        for k, sim in enumerate((one, two))
    ]
    return pd.concat(parts).sort_index(kind="stable").reset_index(drop=True)


def test_interleaved_cubes_one_layer_no_reorder(sims):
    dest, one, two = sims
    layers, tasks = [], []
    for n in (6, 60):
        targets = _interleaved(sims, n)
        ds = make_cutouts(targets, sector=55, cube_base=dest, size=5, batch_size=3)
        graph = ds["flux"].data.__dask_graph__()
        layers.append(len(graph.layers))
        tasks.append(len(graph))
        # no gathering step: every task depends on at most one other (flux of its batch)
        dependencies, _ = get_deps(dict(graph))
        assert max(map(len, dependencies.values())) <= 1
    assert layers[1] == layers[0]
    assert tasks[1] <= 10 * tasks[0] + 2
    # values in the caller's order equal each cube cut on its own
    ds = ds.compute()
    assert ds["ticid"].values.tolist() == targets["ticid"].tolist()
    assert ds["ccd"].values.tolist() == [1, 2] * 60
    for k, sim in enumerate((one, two)):
        rows = np.flatnonzero(targets["ticid"].to_numpy() // 1000 == k + 1)
        alone = make_cutouts(targets.iloc[rows], cube_url=sim.cube_url, size=5).compute()
        for name in ("flux", "flux_err", "aperture"):
            np.testing.assert_array_equal(ds[name].values[rows], alone[name].values)


def test_one_batched_read_per_task_and_lazy(sims, monkeypatch):
    _, one, _ = sims
    calls = []
    real = regions.fetch_ranges

    def counting(info, starts, ends):
        calls.append((len(starts), int(np.sum(np.subtract(ends, starts)))))
        return real(info, starts, ends)

    monkeypatch.setattr(regions, "fetch_ranges", counting)
    # a store read by ranged requests (local files are copied out of a memory map instead)
    url = f"memory://cutouts-batched/{os.path.basename(one.cube_url)}"
    fsspec.filesystem("memory").pipe(url, open(one.cube_url, "rb").read())
    # 10 targets; pairs of neighbours overlap, so their rows merge
    pixels = [[20 + 10 * k + d, 30 + 6 * k] for k in range(5) for d in (0, 2)]
    targets = _targets_at(one, pixels)
    ds = make_cutouts(targets, cube_url=url, size=8, batch_size=4)
    assert calls == []  # nothing read before compute
    ds["flux"].compute()
    assert len(calls) == 3  # ceil(10 / 4) tasks, one batched call each
    meta = cube_meta(url)
    _, boxes = cutout_boxes(
        ds["corner_column"].values, ds["corner_row"].values, (8, 8), n_rows=meta.n_rows,
        n_cols=meta.n_cols,
    )  # fmt: skip
    info = cf.hdu_info(url, 1)
    needed = plan_reads(boxes, info.shape, 4, info.data_offset).needed
    fetched = sum(b for _, b in calls)
    assert fetched < needed  # overlapping neighbours fetched once
    assert sum(n for n, _ in calls) < 10 * 8  # merged ranges


def test_plan_reads_merges_adjacent():
    _, boxes = cutout_boxes(np.array([0, 4]), np.array([0, 0]), (2, 4), n_rows=5, n_cols=10)
    plan = plan_reads(boxes, (5, 10, 3, 2), 4, data_offset=100, gap=0)
    starts, ends, needed = plan.starts, plan.ends, plan.needed
    pieces = [run for run_starts, _ in plan.runs for run in run_starts]
    # two targets side by side: each image row is one merged range of 8 pixels
    assert len(pieces) == 4 and starts.tolist() == [100, 100 + 10 * 24]
    assert (ends - starts).tolist() == [8 * 24, 8 * 24] and needed == 16 * 24


def test_from_s3_equals_local(sims, s3_bucket):
    _, one, _ = sims
    url = f"s3://{s3_bucket}/tess-s0055-1-1-cube.fits"
    fs, path = storage.resolve(url)
    fs.put_file(one.cube_url, path)
    targets = _targets_at(one, PIXELS)
    local = make_cutouts(targets, cube_url=one.cube_url, size=5).compute()
    remote = make_cutouts(targets, cube_url=url, size=5).compute()
    np.testing.assert_array_equal(local["flux"].values, remote["flux"].values)
    np.testing.assert_array_equal(local["flux_err"].values, remote["flux_err"].values)


def test_interleaved_cubes_from_s3_equal_local(sims, s3_bucket):
    """Batches that touch both cubes of an object store read them concurrently, same values."""
    dest, one, two = sims
    for sim in (one, two):
        fs, path = storage.resolve(f"s3://{s3_bucket}/{os.path.basename(sim.cube_url)}")
        fs.put_file(sim.cube_url, path)
    targets = _interleaved(sims, 5)
    local = make_cutouts(targets, sector=55, cube_base=dest, size=5, batch_size=4).compute()
    remote = make_cutouts(
        targets, sector=55, cube_base=f"s3://{s3_bucket}", size=5, batch_size=4
    ).compute()
    assert remote["ccd"].values.tolist() == [1, 2] * 5
    for name in ("flux", "flux_err", "aperture"):
        np.testing.assert_array_equal(local[name].values, remote[name].values)


def test_on_a_cluster(sims, local_client):
    _, one, _ = sims
    targets = _targets_at(one, PIXELS)
    with dask.config.set(scheduler=None):
        ds = make_cutouts(targets, cube_url=one.cube_url, size=5, batch_size=2)
        remote = local_client.compute(ds["flux"].data).result()
    local = make_cutouts(targets, cube_url=one.cube_url, size=5).compute()
    np.testing.assert_array_equal(remote, local["flux"].values)


def test_bad_input(sims, tmp_path):
    dest, one, _ = sims
    targets = _targets_at(one, [[50, 50]])
    for size in (0, -3, (5, 0), 2.5):
        with pytest.raises(ValueError, match="positive integers"):
            make_cutouts(targets, cube_url=one.cube_url, size=size)
    with pytest.raises(ValueError, match="larger than the cube"):
        make_cutouts(targets, cube_url=one.cube_url, size=(200, 5))
    nan = targets.assign(ticid=[42], ra=[np.nan])
    with pytest.raises(ValueError, match="TIC 42"):
        make_cutouts(nan, cube_url=one.cube_url)
    with pytest.raises(ValueError, match="give sector"):
        make_cutouts(targets)
    with pytest.raises(FileNotFoundError):
        make_cutouts(targets, cube_url=str(tmp_path / "nope-cube.fits"))
    far = pd.DataFrame({"ticid": [9], "ra": [100.0], "dec": [80.0]})
    with pytest.raises(ValueError, match="TIC 9: outside the image"):
        make_cutouts(far, cube_url=one.cube_url)
    # unreachable cube when grouped by sector: names the target and the cube
    with pytest.raises(ValueError, match=r"TIC 1: cube .*empty.*tess-s0055-1-1-cube.fits"):
        make_cutouts(targets, sector=55, cube_base=str(tmp_path / "empty"))
    # truncated cube: an error naming the file, at graph build time
    truncated = tmp_path / "tess-s0055-1-1-cube.fits"
    data = open(one.cube_url, "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="tess-s0055-1-1-cube.fits"):
        make_cutouts(targets, cube_url=str(truncated))


def test_skip_lists_failures(sims):
    dest, one, _ = sims
    good = _targets_at(one, [[50, 50], [60, 60]])
    off = pd.DataFrame({"ticid": [77], "ra": [100.0], "dec": [80.0]})
    ds = make_cutouts(pd.concat([good, off]), sector=55, cube_base=dest, on_error="skip")
    assert ds["ticid"].values.tolist() == [1, 2]
    failed = json.loads(ds.attrs["failed"])
    assert failed == [{"ticid": 77, "reason": "not on a science pixel of any CCD in sector 55"}]


def test_status_and_reason_of_every_target(sims):
    from cloudlab.cutouts.cutout import target_status

    dest, one, _ = sims
    good = _targets_at(one, [[50, 50], [60, 60]])
    off = pd.DataFrame({"ticid": [77], "ra": [100.0], "dec": [80.0]})
    ds = make_cutouts(pd.concat([good, off]), sector=55, cube_base=dest, on_error="skip")
    assert ds["status"].values.tolist() == ["ok", "ok"]
    assert ds["reason"].values.tolist() == ["", ""]
    table = target_status(ds)
    assert table["ticid"].tolist() == [1, 2, 77]
    assert table["status"].tolist() == ["ok", "ok", "off_silicon"]
    assert table["reason"].tolist() == ["", "", "not on a science pixel of any CCD in sector 55"]


def test_tpfs_open_in_lightkurve(sims, tmp_path):
    import lightkurve as lk

    _, one, _ = sims
    targets = _targets_at(one, [[50.2, 40.7], [2.0, 3.0]], first_id=1234567)
    ds = make_cutouts(targets, cube_url=one.cube_url, size=(7, 9))
    paths = write_tpfs(ds, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == [
        "tic1234567_s0055-1-1_7x9_tpf.fits", "tic1234568_s0055-1-1_7x9_tpf.fits"
    ]  # fmt: skip
    values = ds.compute()
    for i, path in enumerate(paths):
        tpf = lk.read(path, quality_bitmask="none")
        assert type(tpf).__name__ == "TessTargetPixelFile"
        assert tpf.targetid == 1234567 + i
        assert (tpf.sector, tpf.camera, tpf.ccd) == (55, 1, 1)
        assert tpf.column == int(values["corner_column"][i]) + 1
        assert tpf.row == int(values["corner_row"][i]) + 1
        assert tpf.shape == (12, 7, 9)
        assert tpf.time.format == "btjd"
        np.testing.assert_allclose(tpf.time.value, values["time"].values)
        np.testing.assert_array_equal(tpf.flux.value, values["flux"][i].values)
        np.testing.assert_array_equal(tpf.quality, one.quality)
        assert str(tpf.flux.unit) == "electron / s"
        x, y = tpf.wcs.all_world2pix([[targets["ra"][i], targets["dec"][i]]], 0)[0]
        cx = float(values["center_column"][i] - values["corner_column"][i])
        cy = float(values["center_row"][i] - values["corner_row"][i])
        assert (x, y) == pytest.approx((cx, cy), abs=0.01)
        header = fits.getheader(path, 2)
        assert 0 < header["WCS_MSEP"] < 1e-3  # linear vs SIP: small, but not astrocut's 0.0
        assert len(tpf.to_lightcurve(aperture_mask="all").flux) == 12
    # existing files are skipped unless overwrite=True
    before = os.path.getmtime(paths[0])
    os.utime(paths[0], (before - 100, before - 100))
    write_tpfs(ds, str(tmp_path))
    assert os.path.getmtime(paths[0]) == before - 100
    write_tpfs(ds, str(tmp_path), overwrite=True)
    assert os.path.getmtime(paths[0]) > before - 100
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_tpf_names_sanitised_and_unique(sims, tmp_path):
    _, one, _ = sims
    targets = _targets_at(one, [[50, 50], [60, 60]]).assign(ticid=["a/b c", "a/b c"])
    ds = make_cutouts(targets, cube_url=one.cube_url, size=4)
    with pytest.raises(ValueError, match="same file"):
        write_tpfs(ds, str(tmp_path))
    ds = make_cutouts(targets.iloc[:1], cube_url=one.cube_url, size=4)
    assert os.path.basename(write_tpfs(ds, str(tmp_path))[0]) == "tica_b_c_s0055-1-1_4x4_tpf.fits"


def test_cli(sims, tmp_path, capsys):
    from cloudlab.cli import main

    dest, one, two = sims
    stars = pd.concat([one.stars.iloc[:3], two.stars.iloc[:2]])
    catalog = tmp_path / "catalog.csv"
    rows = stars[["ticid"]].assign(tce_depth=2e6, tce_model_snr=10.0, tce_period=1.0)
    pd.concat([rows, pd.DataFrame({"ticid": [5], "tce_depth": [3e6]})]).to_csv(catalog, index=False)
    coords = tmp_path / "coords.csv"
    pd.concat(
        [stars[["ticid", "ra", "dec"]], pd.DataFrame({"ticid": [5], "ra": [100.0], "dec": [80.0]})]
    ).to_csv(coords, index=False)
    out = tmp_path / "tpfs"
    rc = main(["cutouts", "--catalog", str(catalog), "--sector", "55", "--size", "6",
               "--min-depth", "1e6", "--coords", str(coords), "--cube-base", dest,
               "--out", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    assert "6 targets" in text and "5 TPF(s)" in text
    assert "TIC 5: not on a science pixel" in text
    assert len(list(out.glob("*_tpf.fits"))) == 5


def test_tpf_template_gives_astropy_bytes(sims):
    import io

    from cloudlab.cutouts.tpf import TPFTemplate, build_tpf, target_meta

    _, one, _ = sims
    targets = _targets_at(one, PIXELS).assign(
        ticid=[5, 123456789012, 7, 8, 9, 10],
        Tmag=[np.nan, 9.5, 12.25, 7.0, 1e-3, 15.0],  # stellar cards: unknown, then values
        teff=[5800.0, np.nan, 3100.5, 6000.0, 4000.0, np.nan],
    )
    ds = make_cutouts(targets, cube_url=one.cube_url, size=(5, 6)).compute()
    flux, err = ds["flux"].values, ds["flux_err"].values
    template = TPFTemplate(flux[0], err[0], target_meta(ds, 0))
    for i in range(1, len(targets)):
        meta = target_meta(ds, i)
        buf = io.BytesIO()
        build_tpf(flux[i], err[i], meta=meta).writeto(buf)
        assert template.render(flux[i], err[i], meta) == buf.getvalue()
        header = fits.getheader(io.BytesIO(buf.getvalue()), 0)
        assert header["TESSMAG"] == targets["Tmag"].iloc[i]


def test_cube_urls_meta_and_pixels(sims):
    from cloudlab.io.tess import cube_url

    dest, one, _ = sims
    assert cube_url(55, 1, 2) == "s3://stpubdata/tess/public/mast/tess-s0055-1-2-cube.fits"
    with dask.config.set({"cloudlab.tess.cube-base": dest}):
        assert cube_url(55, 1, 1) == one.cube_url
    with pytest.raises(ValueError, match="bad sector/camera/ccd"):
        cube_url(55, 5, 1)
    meta = cube_meta(cube_url(55, 1, 1, dest))
    pixels = cf.open_hdu(meta.url, 1, dims=("row", "column", "time", "plane"))
    flux = pixels.isel(plane=0).transpose("time", "row", "column")
    assert flux.dims == ("time", "row", "column") and meta.camera == 1
    np.testing.assert_array_equal(meta.quality, one.quality)
    np.testing.assert_allclose(meta.barycorr, one.barycorr)
    np.testing.assert_array_equal(
        flux[:, 3:6, 7:9].values,
        np.moveaxis(fits.getdata(one.cube_url, 1)[3:6, 7:9, :, 0], 2, 0),
    )
